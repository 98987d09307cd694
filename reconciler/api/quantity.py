"""Kubernetes-style resource quantities ("8Gi", "512M", "1.5G") as plain byte counts."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_SUFFIXES = {
    "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
QUANTITY_PATTERN = r"^\d+(\.\d+)?([KMGTPE]i|[kMGTPE])?$"
_QUANTITY = re.compile(r"^(?P<number>\d+(\.\d+)?)(?P<suffix>[KMGTPE]i|[kMGTPE])?$")


def parse_bytes(value: Any) -> int:
    """Turn 8Gi / 512M / 1024 into a whole number of bytes; reject anything else."""
    if isinstance(value, bool):
        raise ValueError("expected a quantity like 8Gi")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("expected a non-negative quantity like 8Gi")
        return value
    match = _QUANTITY.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise ValueError("expected a quantity like 8Gi")
    return math.ceil(Decimal(match["number"]) * _SUFFIXES[match["suffix"] or ""])  # Kubernetes rounds up too


def format_bytes(count: int) -> str:
    """The shortest exact binary spelling, so a value round-trips through YAML unchanged."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _SUFFIXES[suffix]
        if count and count % unit == 0:
            return f"{count // unit}{suffix}"
    return str(count)


ByteQuantity = Annotated[
    int,
    BeforeValidator(parse_bytes),
    PlainSerializer(format_bytes, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": QUANTITY_PATTERN},
                {"type": "integer", "minimum": 0},
            ],
            "description": "A byte quantity: an integer, or a number with a suffix such as 512Mi or 8Gi.",
        }
    ),
]
