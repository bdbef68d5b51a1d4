"""Deterministic "random" draws.

Each draw is a hash of (seed, purpose, key, ordinal) rather than the next value of a shared
RNG, so the outcome for one task or one retry does not depend on the order in which
concurrent requests happen to arrive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def draw(seed: int, purpose: str, key: str, ordinal: int = 0) -> float:
    """A uniform number in [0, 1) fixed by its arguments."""
    digest = hashlib.sha256(f"{seed}\x1f{purpose}\x1f{key}\x1f{ordinal}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose(options: Sequence[T], seed: int, purpose: str, key: str, ordinal: int = 0) -> T:
    return options[int(draw(seed, purpose, key, ordinal) * len(options))]


def triangular(low: float, high: float, mode: float, u: float) -> float:
    """Inverse CDF of the triangular distribution, from a uniform `u`."""
    cut = (mode - low) / (high - low)
    if u < cut:
        return low + ((high - low) * (mode - low) * u) ** 0.5
    return high - ((high - low) * (high - mode) * (1 - u)) ** 0.5


def token(seed: int, purpose: str, key: str, ordinal: int, length: int) -> str:
    """An id-like string of Crockford base32 characters fixed by its arguments."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    digest = hashlib.sha256(f"{seed}\x1f{purpose}\x1f{key}\x1f{ordinal}".encode()).digest()
    number = int.from_bytes(digest, "big")
    chars = []
    for _ in range(length):
        number, index = divmod(number, 32)
        chars.append(alphabet[index])
    return "".join(chars)
