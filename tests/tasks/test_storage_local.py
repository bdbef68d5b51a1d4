"""Locations without a server: a local folder behaves as `tasks.store.atomic` always did, and a
URL is parsed into the right store or refused with a clear message that repeats no secret."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tasks.store.storage import (
    LocalOutput,
    RemoteOutput,
    StorageError,
    is_url,
    open_output,
    staging_folder,
)

CANARY = "CANARY-secret-in-url"


def test_a_local_folder_writes_atomically_and_lists_finished_files(tmp_path: Path) -> None:
    """Local keys are files under the folder; temporaries are listed apart, never as files."""
    output = open_output(tmp_path / "out")
    assert isinstance(output, LocalOutput)
    assert output.write_bytes("videos/a.mp4", b"a") == tmp_path / "out" / "videos" / "a.mp4"
    output.write_text("results.csv", "id\n")
    (tmp_path / "out" / ".results.csv.x1y2.tmp").write_bytes(b"half")  # a crash's leftover
    assert output.list() == ["results.csv", "videos/a.mp4"]
    assert output.list_temps() == [".results.csv.x1y2.tmp"]
    assert output.url("videos/a.mp4") == str((tmp_path / "out" / "videos" / "a.mp4").resolve())
    output.delete(".results.csv.x1y2.tmp")
    output.delete("missing.txt")
    assert output.list_temps() == []
    assert output.read_bytes("results.csv") == b"id\n"
    assert output.size("videos/a.mp4") == 1 and output.size("nope") is None


def test_a_local_put_file_checks_the_hash_and_keeps_the_old_file(tmp_path: Path) -> None:
    """A local copy whose bytes do not match the verified hash leaves the old file alone."""
    source = tmp_path / "v.mp4"
    source.write_bytes(b"new video")
    output = open_output(tmp_path / "out")
    output.write_bytes("videos/v.mp4", b"old video")
    with pytest.raises(StorageError, match="changed"):
        output.put_file(source, "videos/v.mp4", sha256="0" * 64)
    assert (tmp_path / "out/videos/v.mp4").read_bytes() == b"old video"
    assert output.list_temps() == []
    good = hashlib.sha256(b"new video").hexdigest()
    assert output.put_file(source, "videos/v.mp4", sha256=good) == tmp_path / "out/videos/v.mp4"
    assert (tmp_path / "out/videos/v.mp4").read_bytes() == b"new video"


@pytest.mark.parametrize("key", ["", "/abs", "../up", "a/../b", "a//b", "./a", "a\\b", "a/"])
def test_a_key_that_could_escape_the_location_is_refused(tmp_path: Path, key: str) -> None:
    """Keys are relative names joined by '/': no '..', '.', empty parts or backslashes."""
    with pytest.raises(ValueError, match="is not a key"):
        open_output(tmp_path).write_bytes(key, b"x")


def test_urls_and_paths_are_told_apart(tmp_path: Path) -> None:
    """Only scheme:// strings are URLs; file:// is a local folder; a Path is always local."""
    assert is_url("s3://b/p") and is_url("gs://b") and not is_url("out/demo")
    assert not is_url(Path("s3://b/p")) and not is_url("C:\\out")
    local = open_output(f"file://{tmp_path}")
    assert isinstance(local, LocalOutput) and local.root == tmp_path


def test_credentials_in_a_url_are_refused_without_repeating_them() -> None:
    """s3://key:secret@bucket is refused, and the message does not contain the secret."""
    with pytest.raises(ValueError, match="credentials in the URL are refused") as caught:
        open_output(f"s3://AKIAEXAMPLE:{CANARY}@bucket/prefix")
    assert CANARY not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("s3://bucket/p?endpoint_override=x", "no query"),
        ("http://example.com/out", "unsupported location scheme"),
        ("s3:///prefix", "no bucket"),
    ],
)
def test_a_location_breaking_a_rule_is_refused_by_name(url: str, rule: str) -> None:
    """A URL with a query, an unknown scheme or no bucket is refused, saying which rule."""
    with pytest.raises(ValueError, match=rule):
        open_output(url)


def test_gs_and_az_locations_use_pyarrows_filesystems(monkeypatch: pytest.MonkeyPatch) -> None:
    """gs:// maps to GcsFileSystem and az:// to AzureFileSystem of the named account."""
    gcs = open_output("gs://bucket/runs/a/")
    assert isinstance(gcs, RemoteOutput) and isinstance(gcs.filesystem, pafs.GcsFileSystem)
    assert gcs.url("results.csv") == "gs://bucket/runs/a/results.csv"
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_NAME", raising=False)
    with pytest.raises(ValueError, match="AZURE_STORAGE_ACCOUNT_NAME"):
        open_output("az://container/runs")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "videobatchtest")
    azure = open_output("az://container/runs")
    assert isinstance(azure, RemoteOutput) and isinstance(azure.filesystem, pafs.AzureFileSystem)
    assert (azure.root, azure.url("v.mp4")) == ("container/runs", "az://container/runs/v.mp4")


def test_a_url_gets_its_own_stable_staging_folder(tmp_path: Path) -> None:
    """Each store location has one local staging folder, the same on every call."""
    first = staging_folder("s3://bucket/run-a", tmp_path)
    assert first == staging_folder("s3://bucket/run-a/", tmp_path)
    assert first != staging_folder("s3://bucket/run-b", tmp_path)
    assert first.parent == tmp_path
    assert staging_folder(tmp_path / "out", tmp_path / "elsewhere") == tmp_path / "out"
