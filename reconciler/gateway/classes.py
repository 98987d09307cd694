"""Which `fallback.context` classes a request would send to a hosted provider, read from its path and body. Pure.

A request is refused unless every class it needs is allowed, so what cannot be classified needs a class nothing
grants: an unknown path is never forwarded to a provider by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.api.fallback import Context

UNCLASSIFIED = "unclassified"  # what a path the gateway cannot classify would send: no fallback allows it
_CONVERSATION = (Context.prompts, Context.completions)
_TOOL_ROLES = frozenset({"tool", "function"})
_DOCUMENT_PARTS = frozenset({"file", "input_file", "document"})


def classes_sent(tail: str, payload: Mapping[str, Any]) -> tuple[str, ...]:
    """The classes (Context values, or UNCLASSIFIED) a request to /v1/`tail` with this JSON body sends, in the
    vocabulary's order: chat and completions send prompts and completions; embeddings send embeddings; a tool's
    message sends tool-results; a file or document part of a message sends documents."""
    if tail == "embeddings":
        needed = {Context.embeddings}
    elif tail == "completions":
        needed = set(_CONVERSATION)
    elif tail == "chat/completions":
        needed = set(_CONVERSATION) | _message_classes(payload.get("messages"))
    else:
        return (UNCLASSIFIED,)
    return tuple(item.value for item in Context if item in needed)


def _message_classes(messages: Any) -> set[Context]:
    found: set[Context] = set()
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, Mapping):
            continue
        if message.get("role") in _TOOL_ROLES:
            found.add(Context.tool_results)
        content = message.get("content")
        parts = content if isinstance(content, list) else ()
        if any(isinstance(part, Mapping) and part.get("type") in _DOCUMENT_PARTS for part in parts):
            found.add(Context.documents)
    return found


def refused_classes(needed: tuple[str, ...], allowed: list[Context]) -> tuple[str, ...]:
    granted = {item.value for item in allowed}
    return tuple(item for item in needed if item not in granted)
