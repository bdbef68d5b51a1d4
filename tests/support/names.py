"""Names no other test uses, so per-prompt counters of a shared sandbox belong to one test."""

from __future__ import annotations

import uuid


def unique(text: str = "a red fox running through snow", *, digits: int = 12) -> str:
    """`text` with a random suffix: a prompt (or key) no other test sends."""
    return f"{text} #{uuid.uuid4().hex[:digits]}"
