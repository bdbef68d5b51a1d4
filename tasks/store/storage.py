"""Where a run's files go: a local folder or an object store (`s3://`, `gs://`, `az://`).

`open_output(location)` gives an `Output` for a location; every file under it is named by a
*key*, a relative POSIX path such as `results.parquet` or `videos/<id>.mp4`. The same calls
work on both kinds:

    write(key, fn) / write_bytes / write_text   the file appears whole or not at all
    put_file(local_path, key, sha256=...)       upload (or copy) a finished local file
    read_bytes, open_input, exists, size, list, delete, list_temps, url

A local folder behaves exactly as before: every write goes through `tasks.store.atomic`
(temporary file beside the target, fsync, rename, fsync of the folder).

An object store has no rename, and an interrupted upload must never leave an object that looks
finished. So every write goes to a hidden, unique temporary key beside the target
(`<dir>/.<name>.<32 hex>.upload`), whose size is checked against what was sent; only then is it
copied (server side, one request: the target appears whole or not at all) to its key, and the
temporary key is deleted whatever happened. A process killed mid-upload leaves at most an
unfinished multipart upload (invisible; a bucket lifecycle rule `AbortIncompleteMultipartUpload`
reclaims it) or a temporary key that `list_temps` shows and `delete` removes; never a partial
object under a real key. The temporary key is needed because pyarrow's output stream has no
abort: closing it, also while an exception unwinds, completes the upload. (Deleting the
temporary makes pyarrow keep its parent as a zero-byte folder marker, `prefix/`, as the S3
console does; `list` never shows folders.)

The library: pyarrow's own filesystems (`pyarrow.fs`). pyarrow is already a required dependency
(results are Arrow tables), so object storage costs zero new dependencies; its
`open_output_stream` on S3 is a multipart upload fed part by part, so memory stays flat whatever
the file's size, once pyarrow's background writes are off: with them on it queues every part
in memory without limit (a 50 MiB upload to the loopback test server grew the peak RSS by
46 MiB; with them off, by 2 MiB: tests/tasks/test_storage_memory.py). The same
interface covers S3, GCS and Azure, and pyarrow's Parquet and CSV writers write straight into it.
fsspec + s3fs or obstore would each add packages for nothing this needs.

Credentials never pass through videobatch: pyarrow's S3 client uses the AWS SDK's default chain
(`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, then the profile named by
`AWS_PROFILE` in ~/.aws/credentials and ~/.aws/config, then web identity and the EC2/ECS
instance role). Two settings it does NOT take from the environment when a filesystem is built
directly (`pyarrow.fs.S3FileSystem()`; apache/arrow#49643): the endpoint, which Arrow reads
from `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` only inside `FileSystem.from_uri`, and which
we therefore read here, in `_s3_filesystem`, with the same precedence, and pass as
`endpoint_override` (so a loopback S3 server such as moto just works); and the region, taken
from `AWS_REGION` or `AWS_DEFAULT_REGION`, else asked of the bucket itself
(`pyarrow.fs.resolve_s3_region`), else `us-east-1` behind a custom endpoint. A caller that holds
credentials from elsewhere (a Prefect Secret block) passes `S3Credentials`; nothing takes them
from a URL: `s3://key:secret@bucket` is refused. Every error from the store is re-raised as
`StorageError` with each credential in the environment (and any given) scrubbed from its text
and its cause dropped, so no secret reaches a log, a traceback, the ledger or a results file.

`gs://bucket/prefix` goes through `pyarrow.fs.FileSystem.from_uri` (Google's default
credentials: `GOOGLE_APPLICATION_CREDENTIALS`, gcloud, the metadata server). `az://container/
prefix` uses the account in `AZURE_STORAGE_ACCOUNT_NAME` (the name fsspec's adlfs reads too)
with `AZURE_STORAGE_ACCOUNT_KEY` if set, else Azure's default credential chain; pyarrow's own
`abfs[s]://container@account.dfs.core.windows.net/prefix` URIs work as well.

Not verified: the S3 ETag. pyarrow does not expose it, and its meaning depends on the bucket
(an MD5 for plain uploads, not for SSE-KMS or multipart ones), so the size is what is checked;
`put_file(..., sha256=...)` also proves the bytes sent are the bytes the caller verified.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from apimart.redact import scrub
from tasks.errors import StorageError
from tasks.store.atomic import write_atomically
from tasks.store.locations import is_url as is_url

__all__ = [
    "LocalOutput",
    "Output",
    "RemoteOutput",
    "S3Credentials",
    "StorageError",
    "download",
    "is_url",
    "open_output",
    "staged_preview",
    "staging_folder",
]

SCHEMES: Final = ("s3", "gs", "az", "abfs", "abfss")
CHUNK: Final = 1 << 20
# Environment variables whose values are credentials: scrubbed from every storage error.
SECRET_ENV: Final = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
)
_REMOTE_TEMP: Final = re.compile(r"^\..+\.[0-9a-f]{32}\.upload$")
# What tasks.store.atomic leaves behind for a moment (mkstemp: `.<name>.<random>.tmp`).
_LOCAL_TEMP: Final = re.compile(r"^\..+\.tmp$")


@dataclass(frozen=True)
class S3Credentials:
    """Credentials handed over by a caller (a Prefect Secret block), never shown by repr."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def secrets(self) -> tuple[str | None, ...]:
        return (self.access_key, self.secret_key, self.session_token)


def open_output(
    location: str | Path | Output, *, credentials: S3Credentials | None = None
) -> Output:
    """The `Output` for a local folder (Path, path string, `file://` URL) or a store URL."""
    if isinstance(location, Output):
        return location
    if not is_url(location):
        return LocalOutput(Path(location))
    text = str(location)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{text}: a file:// URL must name a local path")
        return LocalOutput(Path(parts.path))
    if scheme not in SCHEMES:
        raise ValueError(
            f"{_without_userinfo(text)}: unsupported location scheme {scheme!r}; use a local "
            "folder, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix"
        )
    if parts.password is not None or ("@" in parts.netloc and scheme in ("s3", "gs", "az")):
        raise ValueError(
            f"{_without_userinfo(text)}: credentials in the URL are refused (they would show in "
            "logs and results); give them as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile "
            "(AWS_PROFILE), or the store's own default credentials"
        )
    if parts.query or parts.fragment:
        raise ValueError(
            f"{_without_userinfo(text)}: a location takes no query or fragment; settings come "
            "from the environment (AWS_REGION, AWS_ENDPOINT_URL, ...)"
        )
    if not parts.netloc:
        raise ValueError(f"{text}: no bucket named (expected {scheme}://bucket/prefix)")
    prefix = parts.path.strip("/")
    secrets: tuple[str | None, ...] = credentials.secrets() if credentials else ()
    if scheme == "s3":
        filesystem: pafs.FileSystem = _s3_filesystem(parts.netloc, credentials)
        root = "/".join(p for p in (parts.netloc, prefix) if p)
    elif scheme == "az":
        filesystem = _azure_filesystem()
        root = "/".join(p for p in (parts.netloc, prefix) if p)
    else:
        try:
            filesystem, root = pafs.FileSystem.from_uri(text)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise StorageError(f"{_without_userinfo(text)}: {_scrubbed(exc, secrets)}") from None
        root = root.strip("/")
    location_url = f"{scheme}://{parts.netloc}" + (f"/{prefix}" if prefix else "")
    return RemoteOutput(location_url, filesystem, root, secrets)


def staging_folder(location: str | Path | Output, root: Path) -> Path:
    """A local folder under `root` that is this location's own, the same on every call: where
    videos wait for their upload (and anything else that must be local) for a store URL; for
    a local location, the location itself."""
    if not isinstance(location, Output) and (
        not is_url(location) or urlsplit(str(location)).scheme.lower() == "file"
    ):
        location = open_output(location)
    if isinstance(location, LocalOutput):
        return location.root
    if isinstance(location, Output):
        url = location.location
    else:
        # From the URL alone: no store is contacted just to name a local folder.
        parts = urlsplit(str(location))
        url = f"{parts.scheme.lower()}://{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", url.split("://", 1)[1])[:60]
    return root / f"{label}-{digest}"


# The width of a staged video's preview: the report's thumbnail width, so the report's own
# thumbnail of the preview loses nothing.
PREVIEW_WIDTH: Final = 240


def staged_preview(video: Path) -> Path:
    """Where the first frame of a staged video (`videos/<id>.mp4` in a staging folder) stays
    as a small JPEG once the video itself is in the store and its local copy deleted: hidden
    and not an .mp4, so it is never taken for the video. PyAV reads it as it reads the video
    (`probe.first_frame_thumbnail` of it is the thumbnail), so a contact sheet needs no video."""
    return video.with_name(f".{video.name}.preview.jpg")


def download(location: str, folder: Path, *, max_bytes: int | None = None) -> Path:
    """Copy the object at URL `location` (a manifest, say) to `folder/<its name>`, streamed and
    replaced atomically; a local path is returned as it is. Its name (and so its suffix) is
    kept, so readers that choose a format by suffix still can."""
    if not is_url(location):
        return Path(location)
    parts = urlsplit(location)
    key = PurePosixPath(parts.path).name
    parent = location[: len(location) - len(key)].rstrip("/")
    if not key:
        raise ValueError(f"{_without_userinfo(location)}: names a folder, not a file")
    source = open_output(parent)
    target = Path(folder) / key
    if isinstance(source, LocalOutput):
        return source.root / key
    with source.open_input(key) as stream:
        copied = 0

        def copy(handle: IO[bytes]) -> None:
            nonlocal copied
            while chunk := stream.read(CHUNK):
                copied += len(chunk)
                if max_bytes is not None and copied > max_bytes:
                    raise StorageError(
                        f"{source.url(key)}: larger than the limit of {max_bytes} bytes"
                    )
                handle.write(chunk)

        write_atomically(target, copy)
    return target


# --------------------------------------------------------------------------- the interface


class Output:
    """A place files are written to; see the module docstring."""

    location: str

    def url(self, key: str) -> str:
        """Where `key` is, to show a person or store in the results table."""
        raise NotImplementedError

    def write(self, key: str, write: Callable[[Any], object]) -> Path | str:
        """Write `key` through `write(stream)`; readers see the old file or the whole new one.
        Returns the written file's path (local) or URL (store)."""
        raise NotImplementedError

    def put_file(self, source: Path, key: str, *, sha256: str | None = None) -> Path | str:
        """Store a finished local file as `key` (the source stays). With `sha256`, the bytes
        sent must hash to it, or nothing is stored."""
        raise NotImplementedError

    def open_input(self, key: str) -> Any:
        """A seekable binary stream of `key` (a context manager); FileNotFoundError if none."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        """The size of the file `key`, or None when there is none."""
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """Every finished file's key under `prefix` (temporaries left out), sorted."""
        raise NotImplementedError

    def list_temps(self, prefix: str = "") -> builtins.list[str]:
        """Keys of temporaries an interrupted write left behind, sorted (for `delete`)."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove `key` (a file or a temporary); nothing happens when it is already gone."""
        raise NotImplementedError

    def write_bytes(self, key: str, data: bytes) -> Path | str:
        return self.write(key, lambda handle: handle.write(data))

    def write_text(self, key: str, text: str) -> Path | str:
        return self.write_bytes(key, text.encode("utf-8"))

    def read_bytes(self, key: str) -> bytes:
        with self.open_input(key) as stream:
            data: bytes = stream.read()
            return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    def __str__(self) -> str:
        return self.location


class LocalOutput(Output):
    """A local folder: `tasks.store.atomic` does every write, exactly as before."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def path(self, key: str) -> Path:
        return self.root.joinpath(*_key_parts(key))

    def url(self, key: str) -> str:
        return str(self.path(key).resolve())

    def write(self, key: str, write: Callable[[Any], object]) -> Path:
        return write_atomically(self.path(key), write)

    def put_file(self, source: Path, key: str, *, sha256: str | None = None) -> Path:
        def copy(handle: IO[bytes]) -> None:
            digest = _copy_hashing(Path(source), handle.write)
            if sha256 is not None and digest != sha256.lower():
                raise StorageError(_changed(source, sha256, digest))

        return write_atomically(self.path(key), copy)

    @contextmanager
    def open_input(self, key: str) -> Iterator[IO[bytes]]:
        with self.path(key).open("rb") as handle:
            yield handle

    def size(self, key: str) -> int | None:
        path = self.path(key)
        return path.stat().st_size if path.is_file() else None

    def _files(self, prefix: str) -> Iterator[tuple[str, str]]:
        base = self.path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        for path in base.rglob("*"):
            if path.is_file():
                yield path.relative_to(self.root).as_posix(), path.name

    def list(self, prefix: str = "") -> list[str]:
        return sorted(k for k, name in self._files(prefix) if not _LOCAL_TEMP.match(name))

    def list_temps(self, prefix: str = "") -> builtins.list[str]:
        return sorted(k for k, name in self._files(prefix) if _LOCAL_TEMP.match(name))

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


class RemoteOutput(Output):
    """A prefix in an object store, through a pyarrow filesystem."""

    def __init__(
        self,
        location: str,
        filesystem: pafs.FileSystem,
        root: str,
        secrets: tuple[str | None, ...] = (),
    ) -> None:
        self.location = location
        self.filesystem = filesystem
        self.root = root
        self._secrets = secrets

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from the location alone: credentials a caller handed over stay in this
        # process (a pickled task argument would otherwise carry them to Prefect's storage).
        return (open_output, (self.location,))

    def _full(self, key: str) -> str:
        return f"{self.root}/{'/'.join(_key_parts(key))}"

    def url(self, key: str) -> str:
        return f"{self.location}/{'/'.join(_key_parts(key))}"

    @contextmanager
    def _errors(self, doing: str, key: str) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except FileNotFoundError:
            raise FileNotFoundError(f"{doing} {self.url(key)}: no such object") from None
        except (pa.ArrowException, OSError) as exc:
            raise StorageError(
                f"{doing} {self.url(key)}: {_scrubbed(exc, self._secrets)}"
            ) from None

    def write(self, key: str, write: Callable[[Any], object]) -> str:
        return self._commit(key, write)

    def put_file(self, source: Path, key: str, *, sha256: str | None = None) -> str:
        source = Path(source)
        expected = source.stat().st_size

        def send(stream: Any) -> None:
            digest = _copy_hashing(source, stream.write)
            if sha256 is not None and digest != sha256.lower():
                raise StorageError(_changed(source, sha256, digest))

        return self._commit(key, send, expected_size=expected)

    def _commit(
        self, key: str, write: Callable[[Any], object], *, expected_size: int | None = None
    ) -> str:
        parts = _key_parts(key)
        temp = "/".join([*parts[:-1], f".{parts[-1]}.{uuid.uuid4().hex}.upload"])
        try:
            with self._errors("uploading", key):
                with self.filesystem.open_output_stream(self._full(temp)) as stream:
                    write(stream)
                    sent = stream.tell()
                # Closing completed the upload of the temporary; is all of it there?
                stored = self.filesystem.get_file_info(self._full(temp)).size
                if stored != sent or (expected_size is not None and sent != expected_size):
                    raise StorageError(
                        f"uploading {self.url(key)}: the store holds {stored} bytes of "
                        f"{expected_size if expected_size is not None else sent} sent; "
                        "nothing was stored under the key"
                    )
                self.filesystem.copy_file(self._full(temp), self._full(key))
                final = self.filesystem.get_file_info(self._full(key)).size
                if final != sent:
                    raise StorageError(
                        f"uploading {self.url(key)}: the copy holds {final} bytes of {sent}"
                    )
        finally:
            with suppress(Exception):
                self.filesystem.delete_file(self._full(temp))
        return self.url(key)

    @contextmanager
    def open_input(self, key: str) -> Iterator[Any]:
        with self._errors("reading", key):
            stream = self.filesystem.open_input_file(self._full(key))
        try:
            yield stream
        finally:
            stream.close()

    def read_bytes(self, key: str) -> bytes:
        with (
            self._errors("reading", key),
            self.filesystem.open_input_stream(self._full(key)) as stream,
        ):
            data: bytes = stream.read()
            return data

    def size(self, key: str) -> int | None:
        with self._errors("looking up", key):
            info = self.filesystem.get_file_info(self._full(key))
        return info.size if info.type == pafs.FileType.File else None

    def _files(self, prefix: str) -> Iterator[tuple[str, str]]:
        base = self._full(prefix) if prefix else self.root
        with self._errors("listing", prefix or "."):
            infos = self.filesystem.get_file_info(
                pafs.FileSelector(base, recursive=True, allow_not_found=True)
            )
        start = len(self.root) + 1
        for info in infos:
            if info.type == pafs.FileType.File:
                yield info.path[start:], info.base_name

    def list(self, prefix: str = "") -> list[str]:
        return sorted(k for k, name in self._files(prefix) if not _REMOTE_TEMP.match(name))

    def list_temps(self, prefix: str = "") -> builtins.list[str]:
        return sorted(k for k, name in self._files(prefix) if _REMOTE_TEMP.match(name))

    def delete(self, key: str) -> None:
        with self._errors("deleting", key):
            try:
                self.filesystem.delete_file(self._full(key))
            except FileNotFoundError:
                return


# --------------------------------------------------------------------------- the stores


def _s3_filesystem(bucket: str, credentials: S3Credentials | None) -> pafs.S3FileSystem:
    """The one place S3 settings are read (see the module docstring for why here)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        region = "us-east-1" if endpoint else _bucket_region(bucket)
    # Background writes queue every part in memory and upload them behind the caller's back,
    # with no limit: a 50 MiB upload to a slower store grew the peak RSS by 46 MiB. Written
    # in the foreground, a part is sent before the next is filled, so memory stays one part.
    options: dict[str, Any] = {"region": region, "background_writes": False}
    if endpoint:
        options["endpoint_override"] = endpoint
        if endpoint.lower().startswith("http://"):
            options["scheme"] = "http"
    if credentials is not None:
        options.update(
            access_key=credentials.access_key,
            secret_key=credentials.secret_key,
            session_token=credentials.session_token,
        )
    try:
        return pafs.S3FileSystem(**options)
    except (pa.ArrowException, OSError, ValueError) as exc:
        secrets = credentials.secrets() if credentials else ()
        raise StorageError(f"s3://{bucket}: {_scrubbed(exc, secrets)}") from None


def _bucket_region(bucket: str) -> str:
    try:
        return str(pafs.resolve_s3_region(bucket))
    except (pa.ArrowException, OSError) as exc:
        raise StorageError(
            f"s3://{bucket}: cannot find the bucket's region ({_scrubbed(exc, ())}); set AWS_REGION"
        ) from None


def _azure_filesystem() -> pafs.FileSystem:
    account = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
    if not account:
        raise ValueError(
            "az:// locations need the storage account in AZURE_STORAGE_ACCOUNT_NAME (or use "
            "abfss://container@account.dfs.core.windows.net/prefix)"
        )
    key = os.environ.get("AZURE_STORAGE_ACCOUNT_KEY") or None
    try:
        return pafs.AzureFileSystem(account_name=account, account_key=key)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StorageError(f"az:// account {account}: {_scrubbed(exc, ())}") from None


# --------------------------------------------------------------------------- helpers


def _key_parts(key: str) -> list[str]:
    parts = key.split("/")
    if not key or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"{key!r} is not a key: use a relative path of names joined by '/', "
            "without '.', '..', empty parts or backslashes"
        )
    return parts


def _copy_hashing(source: Path, write: Callable[[bytes], object]) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            write(chunk)
    return digest.hexdigest()


def _changed(source: Path, expected: str, actual: str) -> str:
    return (
        f"{source}: its SHA-256 is {actual}, not the {expected} it was verified with (the file "
        "changed); nothing was stored"
    )


def _scrubbed(exc: BaseException, secrets: tuple[str | None, ...]) -> str:
    known = [os.environ.get(name) for name in SECRET_ENV]
    return scrub(str(exc), [*known, *secrets])


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"<credentials>@{host}", query="", fragment="").geturl()
