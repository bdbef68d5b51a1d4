"""Digests of files and of requests, kept free of Prefect and pyarrow: `videobatch status` and
the shard planner import this without paying for the flow machinery."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from apimart.models import VideoRequest


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file's bytes, read in 1 MiB chunks (videos do not fit in memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def request_hash(request: VideoRequest) -> str:
    """A stable fingerprint of what a row asks for (images by content, not by bytes stored)."""
    payload = request.to_payload()
    payload["image_urls"] = [hashlib.sha256(u.encode()).hexdigest() for u in request.image_urls]
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
