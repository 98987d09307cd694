"""Byte counts as people read them in reasons and tables."""

from __future__ import annotations

GIB = 1024 ** 3


def gib(count: int) -> str:
    return f"{count / GIB:.1f} GiB"
