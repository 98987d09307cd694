"""Hosted fallback: where a workload may run when this host cannot, and which providers the policy allows.

Nothing here holds a secret: an API key is named by reference (a file or an environment variable) and the
reconciler only checks that the reference resolves. Errors about references never repeat what was written,
since what was written may be the key itself.
"""

from __future__ import annotations

import ipaddress
import re
from enum import Enum
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import ConfigDict, Field, field_validator, model_validator

from reconciler.api.container import is_loopback
from reconciler.api.meta import DNS_1123_LABEL, Spec, empty_list

ANY_REGION = "*"
INLINE_REFUSED = "apiKey must reference a secret ({file: PATH} or {env: NAME}); inline keys are refused and not shown"
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_REGION = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_DEFAULT_PORTS = {"https": 443, "http": 80}
_DNS_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


class Context(str, Enum):
    """What may leave this machine when a workload is hosted elsewhere."""

    prompts = "prompts"
    completions = "completions"
    documents = "documents"
    embeddings = "embeddings"
    tool_results = "tool-results"


_CONTEXT_ORDER = list(Context)


class SecretRef(Spec):
    """Where an API key lives: exactly one of an absolute file path or an environment variable name."""

    # pydantic's own rendering of an error (str(ValidationError)) shows the input unless the model validated
    # at the top says not to: these say so for themselves; a model that contains them must say so too.
    model_config = ConfigDict(hide_input_in_errors=True)

    file: str | None = Field(None, description="An absolute path to a file holding only the key.")
    env: str | None = Field(None, description="The name of an environment variable of the reconciler holding the key.")

    @model_validator(mode="before")
    @classmethod
    def _a_reference(cls, value: Any) -> Any:
        """Every refusal is a plain value error with a fixed message: pydantic's own errors (a wrong type, a
        pattern) would let the loader append the input, and a key pasted in the wrong place would be shown."""
        if isinstance(value, SecretRef):
            return value
        if not isinstance(value, dict):
            raise ValueError(INLINE_REFUSED)
        given = [name for name in ("file", "env") if value.get(name) is not None]
        if len(given) != 1:
            raise ValueError(f"apiKey needs exactly one of file or env (got {', '.join(given) or 'neither'})")
        text = value[given[0]]
        if not isinstance(text, str):
            raise ValueError(f"apiKey.{given[0]} must be a string (the value is not shown)")
        if given[0] == "file" and (not text.startswith("/") or "\0" in text):
            raise ValueError("apiKey.file must be an absolute path (the value is not shown: it may be the key)")
        if given[0] == "env" and not _ENV_NAME.match(text):
            raise ValueError("apiKey.env must be an environment variable name such as OPENAI_API_KEY "
                             "([A-Z_][A-Z0-9_]*; the value is not shown: it may be the key)")
        return value

    def describe(self) -> str:
        """Where the key is, never what it is: 'file /etc/keys/openai' or 'env OPENAI_API_KEY'."""
        return f"file {self.file}" if self.file is not None else f"env {self.env}"


class Fallback(Spec):
    """A hosted provider to serve this workload while this host cannot; used only if the policy allows it."""

    model_config = ConfigDict(hide_input_in_errors=True)

    provider: str = Field(pattern=DNS_1123_LABEL, max_length=63, description="A provider the policy lists by name.")
    base_url: str = Field(description="The provider's API base URL: https://, or http:// on loopback only.")
    model: str = Field(min_length=1, description="The provider's model name.")
    region: str = Field(pattern=_REGION, description="Where the provider serves it (e.g. eu, us-east-1).")
    context: list[Context] = Field(
        min_length=1, description="What may leave this machine: prompts, completions, documents, embeddings, tool-results.",
    )
    api_key: SecretRef = Field(description="The key, by reference: {file: PATH} or {env: NAME}; never inline.")

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return base_url(value)

    @field_validator("context")
    @classmethod
    def _context(cls, items: list[Context]) -> list[Context]:
        return canonical_context(items)


class HostedProvider(Spec):
    """One provider workloads may fall back to, where, through which URLs, with what, and on whose say-so."""

    name: str = Field(pattern=DNS_1123_LABEL, max_length=63, description="What a Workload's fallback.provider names.")
    regions: list[str] = Field(min_length=1, description="Regions allowed ('*': any).")
    base_urls: list[str] = Field(
        default_factory=empty_list, description="Allowed base URL prefixes, whole path segments; empty: any https:// URL.",
    )
    context: list[Context] = Field(
        default_factory=lambda: [Context.prompts, Context.completions],
        description="What workloads may send it. Default: prompts and completions.",
    )
    consent_required: bool = Field(
        True, description="Whether each workload's fallback waits for `reconciler approve NAME` (for its exact spec).",
    )

    @field_validator("regions")
    @classmethod
    def _regions(cls, regions: list[str]) -> list[str]:
        odd = [str(index) for index, region in enumerate(regions) if region != ANY_REGION and not re.match(_REGION, region)]
        if odd:
            raise ValueError(f"item {', '.join(odd)}: expected a region name (letters, digits, '-', '_', '.') or '*'")
        return sorted(set(regions))

    @field_validator("base_urls")
    @classmethod
    def _base_urls(cls, urls: list[str]) -> list[str]:
        return sorted({base_url(url) for url in urls})

    @field_validator("context")
    @classmethod
    def _context(cls, items: list[Context]) -> list[Context]:
        return canonical_context(items)


class HostedPolicy(Spec):
    """Which hosted providers workloads may fall back to. Default: none, so nothing leaves this host."""

    providers: list[HostedProvider] = Field(default_factory=empty_list, description="None by default: no hosted fallback.")

    @field_validator("providers")
    @classmethod
    def _unique(cls, providers: list[HostedProvider]) -> list[HostedProvider]:
        names = [provider.name for provider in providers]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"provider {', '.join(map(repr, twice))} is listed more than once: merge the entries")
        return providers

    def provider(self, name: str) -> HostedProvider | None:
        return next((provider for provider in self.providers if provider.name == name), None)


def canonical_context(items: list[Context]) -> list[Context]:
    """Once each, in the vocabulary's order: a reordered list is the same consent, and hashes the same."""
    return sorted(set(items), key=_CONTEXT_ORDER.index)


def base_url(value: str) -> str:
    """A base URL in one spelling (lower-case scheme and host, no default port, no trailing '/'), so that a
    prefix test on whole path segments is exact. Credentials, queries and fragments are refused unshown:
    they are where keys get pasted."""
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError("baseUrl must not contain spaces or control characters (the value is not shown)")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError("baseUrl is not a URL: its host or port cannot be read (the value is not shown)") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.netloc:
        raise ValueError("baseUrl must be an https:// URL, or http:// on loopback (the value is not shown)")
    if "@" in parts.netloc:
        raise ValueError("baseUrl must not carry credentials (user:password@): reference the key with apiKey; "
                         "the URL is not shown")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError("baseUrl must not have a query or fragment (keys do not belong in URLs); the URL is not shown")
    host = _host(parts.hostname or "")
    if host is None:
        raise ValueError("baseUrl names no host: expected a DNS name or an IP address")
    if scheme == "http" and not is_loopback(host):
        raise ValueError("baseUrl uses http:// beyond loopback: use https:// (the value is not shown)")
    if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
        raise ValueError("baseUrl has a '.' or '..' path segment: write the path it resolves to")
    shown = f"[{host}]" if ":" in host else host
    netloc = shown if port in (None, _DEFAULT_PORTS[scheme]) else f"{shown}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def _host(host: str) -> str | None:
    """An IP address in its canonical spelling, or a DNS name; None for anything else (empty, percent-encoded)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host if _DNS_NAME.match(host) else None
