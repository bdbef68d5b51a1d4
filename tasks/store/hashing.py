"""Digests of files and of requests, kept free of Prefect and pyarrow: `videobatch status` and
the shard planner import this without paying for the flow machinery."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from apimart.models import LocalImage, VideoRequest, image_sources


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file's bytes, read in 1 MiB chunks (videos do not fit in memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def request_hash(request: VideoRequest) -> str:
    """A stable fingerprint of what a row asks for (images by content, not by bytes stored).

    Ledgers keep these, so the value never changes between versions: each image counts as the
    SHA-256 of the data URI (or URL) sent, and a local file as the digest of the data URI it
    became when it was checked, which is the same number without reading the file again.
    """
    payload = request.to_payload(images=False)
    payload["image_urls"] = [image_digest(source) for source in image_sources(request.image_urls)]
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def image_digest(source: str | LocalImage) -> str:
    """The SHA-256 of the text an image entry is sent as."""
    if isinstance(source, LocalImage):
        return source.sha256
    return hashlib.sha256(source.encode()).hexdigest()
