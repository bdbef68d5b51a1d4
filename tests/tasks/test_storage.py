"""Outputs in object storage, against a real S3 server on loopback (moto, signatures checked):
round trips, uploads that appear whole or not at all, and errors that carry no secret.

What our code wrote is read back with boto3, an independent client, wherever it matters.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import traceback
from pathlib import Path
from urllib.parse import quote

import pytest
from support import s3 as s3kit
from support.net import free_port
from support.s3 import S3Server

from tasks.store.storage import S3Credentials, StorageError, download, open_output

pytestmark = pytest.mark.slow  # starts moto_server once per session
s3_server, s3_out = s3kit.s3_server, s3kit.s3_out

CANARY = "CANARY-s3cr3t/Value+42"


def _prefix(url: str) -> str:
    return url.split("/", 3)[3]


def _files(server: S3Server, url: str) -> dict[str, int]:
    """Objects under `url`, without the zero-byte folder markers pyarrow leaves."""
    return {k: v for k, v in server.objects(_prefix(url)).items() if k and not k.endswith("/")}


def test_bytes_round_trip_list_and_delete(s3_out: str, s3_server: S3Server) -> None:
    """Bytes written to a key read back the same, are listed, sized, and deleted."""
    output = open_output(s3_out)
    assert output.write_bytes("a/one.txt", b"one") == f"{s3_out}/a/one.txt"
    output.write_text("two.txt", "twö")
    assert s3_server.get(f"{_prefix(s3_out)}/a/one.txt") == b"one"
    assert output.read_bytes("two.txt") == "twö".encode()
    assert output.list() == ["a/one.txt", "two.txt"]
    assert output.list("a") == ["a/one.txt"]
    assert (output.size("a/one.txt"), output.exists("two.txt")) == (3, True)
    assert (output.size("missing"), output.exists("missing")) == (None, False)
    output.delete("a/one.txt")
    output.delete("a/one.txt")  # already gone: nothing happens
    assert _files(s3_server, s3_out) == {"two.txt": len("twö".encode())}
    with pytest.raises(FileNotFoundError, match="no such object"):
        output.read_bytes("a/one.txt")


def test_a_write_replaces_the_object(s3_out: str, s3_server: S3Server) -> None:
    """Writing an existing key replaces it, leaving no temporary or unfinished upload."""
    output = open_output(s3_out)
    output.write_bytes("r.bin", b"old")
    output.write_bytes("r.bin", b"newer")
    assert s3_server.get(f"{_prefix(s3_out)}/r.bin") == b"newer"
    assert _files(s3_server, s3_out) == {"r.bin": 5}
    assert s3_server.unfinished_uploads(_prefix(s3_out)) == []


def test_put_file_uploads_a_verified_file(s3_out: str, s3_server: S3Server, tmp_path: Path) -> None:
    """A local file uploaded with its hash lands byte for byte; the local file stays."""
    data = os.urandom(12 * 2**20 + 7)  # several multipart parts and a ragged end
    source = tmp_path / "v.mp4"
    source.write_bytes(data)
    output = open_output(s3_out)
    url = output.put_file(source, "videos/v.mp4", sha256=hashlib.sha256(data).hexdigest())
    assert url == f"{s3_out}/videos/v.mp4"
    assert s3_server.get(f"{_prefix(s3_out)}/videos/v.mp4") == data
    assert _files(s3_server, s3_out) == {"videos/v.mp4": len(data)}
    assert output.list_temps() == []
    assert source.read_bytes() == data


def test_a_file_that_changed_since_it_was_verified_is_not_stored(
    s3_out: str, s3_server: S3Server, tmp_path: Path
) -> None:
    """A file whose bytes no longer match the verified hash leaves no object at all."""
    source = tmp_path / "v.mp4"
    source.write_bytes(b"x" * 100_000)
    with pytest.raises(StorageError, match="changed"):
        open_output(s3_out).put_file(source, "videos/v.mp4", sha256="0" * 64)
    assert _files(s3_server, s3_out) == {}


def test_a_write_that_fails_part_way_leaves_the_old_object(
    s3_out: str, s3_server: S3Server
) -> None:
    """A write that fails after sending parts leaves the old object and no temporary."""
    output = open_output(s3_out)
    output.write_bytes("results.parquet", b"old table")

    def broken(stream: object) -> None:
        stream.write(os.urandom(11 * 2**20))  # type: ignore[attr-defined]
        raise OSError("disk read error")

    with pytest.raises(OSError, match="disk read error"):
        output.write("results.parquet", broken)
    assert s3_server.get(f"{_prefix(s3_out)}/results.parquet") == b"old table"
    assert _files(s3_server, s3_out) == {"results.parquet": 9}
    assert output.list_temps() == []


def test_a_wrong_secret_is_refused_without_showing_it(
    s3_out: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused upload (wrong secret) says why and names the object, never the secret."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARY)
    source = tmp_path / "v.mp4"
    source.write_bytes(b"video")
    with pytest.raises(StorageError) as caught:
        open_output(s3_out).put_file(source, "videos/v.mp4")
    text = "".join(traceback.format_exception(caught.value))
    assert "SIGNATURE_DOES_NOT_MATCH" in text and f"{s3_out}/videos/v.mp4" in text
    assert CANARY not in text and CANARY not in repr(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert _files(s3_server, s3_out) == {}


def test_a_missing_bucket_is_named_without_any_credential(s3_out: str, s3_server: S3Server) -> None:
    """An upload to a bucket that does not exist names it; no credential is in the message."""
    with pytest.raises(StorageError) as caught:
        open_output("s3://no-such-bucket-here/run").write_bytes("results.csv", b"a,b\n")
    text = "".join(traceback.format_exception(caught.value))
    assert "s3://no-such-bucket-here/run/results.csv" in text and "NO_SUCH_BUCKET" in text
    assert s3_server.secret_key not in text and s3_server.access_key not in text


def test_given_credentials_never_show_or_pickle(
    s3_out: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials handed over by a caller work, and are in no repr, error or pickle."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    given = S3Credentials(s3_server.access_key, s3_server.secret_key)
    output = open_output(s3_out, credentials=given)
    output.write_bytes("k.txt", b"ok")
    assert s3_server.get(f"{_prefix(s3_out)}/k.txt") == b"ok"
    shown = repr(given) + repr(output) + str(output)
    assert s3_server.secret_key not in shown and s3_server.access_key not in shown
    assert s3_server.secret_key.encode() not in pickle.dumps(output)
    wrong = S3Credentials(s3_server.access_key, CANARY)
    with pytest.raises(StorageError) as caught:
        open_output(s3_out, credentials=wrong).write_bytes("k.txt", b"no")
    assert CANARY not in "".join(traceback.format_exception(caught.value))


def test_the_s3_specific_endpoint_variable_wins(
    s3_out: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_ENDPOINT_URL_S3 is preferred over AWS_ENDPOINT_URL, as the AWS SDKs do."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    open_output(s3_out).write_bytes("e.txt", b"endpoint")
    assert s3_server.get(f"{_prefix(s3_out)}/e.txt") == b"endpoint"


def test_a_manifest_url_is_downloaded_under_its_name(
    s3_out: str, s3_server: S3Server, tmp_path: Path
) -> None:
    """A manifest at a URL is fetched to a local file of the same name (suffix kept)."""
    text = "id,prompt\na,a cat\n"
    s3_server.client().put_object(
        Bucket=s3_server.bucket, Key=f"{_prefix(s3_out)}/in/batch.csv", Body=text.encode()
    )
    local = download(f"{s3_out}/in/batch.csv", tmp_path / "manifests")
    assert local == tmp_path / "manifests" / "batch.csv"
    assert local.read_text() == text
    with pytest.raises(StorageError, match="limit of 5 bytes"):
        download(f"{s3_out}/in/batch.csv", tmp_path / "small", max_bytes=5)
    assert not (tmp_path / "small" / "batch.csv").exists()


def test_an_error_quoting_a_credential_is_scrubbed(
    s3_out: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever quotes a credential while writing (raw or percent-encoded), the error does not."""
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", CANARY)
    secret = s3_server.secret_key

    def leaky(stream: object) -> None:
        raise OSError(f"request failed: key={CANARY} secret={secret} sig={quote(secret, safe='')}")

    with pytest.raises(StorageError) as caught:
        open_output(s3_out).write("leak.txt", leaky)
    text = "".join(traceback.format_exception(caught.value))
    assert "request failed" in text and f"{s3_out}/leak.txt" in text
    assert CANARY not in text and secret not in text and quote(secret, safe="") not in text
    assert _files(s3_server, s3_out) == {}
