"""A manifest named by a URL of an object store (moto's S3 server on loopback)."""

from __future__ import annotations

import pytest
from support import s3 as s3kit

from tasks.errors import ManifestError
from tasks.store.manifest import read_manifest

s3_server, s3_out = s3kit.s3_server, s3kit.s3_out
pytestmark = pytest.mark.slow


def test_a_manifest_url_is_read_from_the_store(s3_server: s3kit.S3Server, s3_out: str) -> None:
    """An s3:// manifest is copied locally, keeping its suffix, and validated as any other."""
    key = s3_out.removeprefix(f"s3://{s3_server.bucket}/") + "/batch.jsonl"
    body = b'{"id": "a", "prompt": "from the bucket"}\n{"id": "b", "prompt": ""}\n'
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key, Body=body)
    manifest = read_manifest(f"{s3_out}/batch.jsonl")
    assert [r.id for r in manifest.valid_rows] == ["a"]
    assert [r.id for r in manifest.invalid_rows] == ["b"]
    assert manifest.path.suffix == ".jsonl"


def test_a_missing_manifest_url_is_a_clear_manifest_error(s3_out: str) -> None:
    """A URL naming no object is refused as a manifest error naming the URL."""
    with pytest.raises(ManifestError, match="no such object") as caught:
        read_manifest(f"{s3_out}/absent.csv")
    assert f"{s3_out}/absent.csv" in str(caught.value)
