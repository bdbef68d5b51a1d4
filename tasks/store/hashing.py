"""File digests, kept free of Prefect and pyarrow: `videobatch status` and the shard planner
import this without paying for the flow machinery."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file's bytes, read in 1 MiB chunks (videos do not fit in memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
