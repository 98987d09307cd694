"""Credentials in URLs, hidden from every text a person or a log pipeline sees: messages, status, log lines.

One rule for git remotes and model sources alike. `user:password@` keeps a non-web user (`ssh://git@host`) and
hides the password; on http(s) the whole userinfo goes, since a user alone is often a token. Query values are
hidden too (`?token=***`): signed URLs (S3's X-Amz-Signature, Hugging Face's tokens) carry their secret there, and
no list of parameter names would be complete.
"""

from __future__ import annotations

import logging
import re

HIDDEN = "***"
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*)(?P<password>:[^/@\s]*)?@")
# a web URL, or a path with a query as an HTTP library logs its request line ("GET /m.gguf?token=... HTTP/1.1")
_WEB_URL = re.compile(r"(?:\bhttps?://|(?<![\w/.~-])/)[^\s'\"<>]+", re.IGNORECASE)
_QUERY_VALUE = re.compile(r"(?P<name>[?&][^=&#\s]*=)[^&#\s)]*")  # a URL quoted in parentheses keeps its ')'



def redact(text: str) -> str:
    """`text` with the credentials of every URL in it hidden; a bare URL is a text too."""

    def userinfo(match: re.Match[str]) -> str:
        if match["scheme"].lower().startswith("http"):
            return f"{match['scheme']}{HIDDEN}@"
        if match["password"] is not None:
            return f"{match['scheme']}{match['user']}:{HIDDEN}@"
        return match[0]

    text = _USERINFO.sub(userinfo, text)
    return _WEB_URL.sub(lambda url: _QUERY_VALUE.sub(_hidden_value, url[0]), text)


def _hidden_value(match: re.Match[str]) -> str:
    # punctuation that ends a sentence after a URL ("...?token=x: failed") is not part of the value
    value = match[0][len(match["name"]):]
    return match["name"] + HIDDEN + value[len(value.rstrip(":,;.")):]


def scrub(text: str, url: str) -> str:
    """An error's text about `url`, hidden as `redact` hides it, also where a library quotes the URL in parts
    (urllib3 names the host, then 'with url: /path?token=...')."""
    userinfo = url.partition("://")[2].partition("/")[0].rpartition("@")[0]
    for secret in (userinfo, *_query_values(url)):
        if secret:
            text = text.replace(secret, HIDDEN)
    return redact(text)


def _query_values(url: str) -> list[str]:
    query = url.partition("?")[2].partition("#")[0]
    return [value for pair in query.split("&") if (value := pair.partition("=")[2])]


class RedactingFilter(logging.Filter):
    """Hides URL credentials in every log line, whichever code wrote it: a safety net under the messages that
    redact their URLs themselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = redact(message)
        if hidden != message:
            record.msg, record.args = hidden, None
        if record.exc_info and not record.exc_text:  # a traceback quotes the exception's text too
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True
