"""Read a batch manifest (CSV, Parquet or JSON Lines) into validated rows.

One row asks for one video. Reading never spends money and never stops at a bad row: every
row comes back as a `ManifestRow`, either with a ready `VideoRequest` or with `problems`
(column -> rule broken) that say exactly what to fix. Only a manifest that cannot be read at
all (missing, unparseable, empty, no `prompt` column) raises `ManifestError`.

Columns are matched case-insensitively after stripping surrounding spaces:

    id            optional; without the column rows are named row-00001, row-00002, ...
    prompt        required
    duration      seconds; 6, 6.0, "6" and " 6 " all mean 6
    resolution    720p, 1080p or 4k, any case
    aspect_ratio  16:9 or 9:16; `size` is accepted as its legacy alias
    image_urls    a list (Parquet, JSONL), or in CSV a JSON array or a `|`-separated string;
                  entries are http(s) URLs, data:image URIs, or local image files
    video_urls    a list of at most one public URL, same cell forms as image_urls
    model         defaults to Omni-Flash-Ext

An empty cell means "use the API default". Every other column is carried through unchanged in
`ManifestRow.extra`, so the results table can show whatever the user keyed the batch on.

Local image paths are resolved against the manifest's folder, checked by their magic bytes
(not their suffix: a renamed text file would otherwise cost a failed paid call) and sent as
data URIs. Each distinct file is read once per manifest, to check it and to take the SHA-256
of the data URI it becomes (streamed: the URI itself is never built here), and the row keeps
only an `apimart.models.LocalImage` (path, kind, size, that digest): a 100,000-row manifest
of distinct images would otherwise hold gigabytes of base64 for the whole run. The file is
read again when its row is sent, and a file that changed since is refused then (see
`tasks.steps.submit`). Data URIs and URLs written in the manifest are kept as given.

A manifest may only send files from inside its own folder or the folder given as `assets`
(`--assets DIR`): the path is judged after following every symlink, so neither `../` nor a
link inside the folder reaches a file elsewhere (a manifest dropped into an inbox must not
mail out ~/.ssh).

http(s) URLs in `image_urls` and `video_urls` are handed to the vendor to fetch, so they must
name a public host (apimart.netguard's rule; loopback is refused too, since the vendor cannot
reach our loopback anyway). Literal hosts are judged as written. Names are resolved once
each per read, all at once in a thread pool, after the rows are parsed: a name resolving to a
non-public address is refused, and one that does not resolve here is left for the vendor (a
machine without DNS must still validate a manifest of public URLs).

Ids become file names and the key under which a paid task is remembered, so they are
validated and never rewritten: a rewritten id would no longer match the user's manifest on a
re-run, and the run could pay twice for one row. For the same reason a duplicated id keeps its
first occurrence and marks every later one invalid ("duplicate of row N"): rejecting all copies
would hold back rows that are fine, and accepting all would give two tasks one output file.
First-wins is also stable when rows are appended to a manifest that already ran. Ids differing
only in case count as duplicates, since they collide on case-insensitive file systems.

Rows are numbered from 1 in messages ("row 1" is the first data row); `index` is 0-based.

A manifest may also be named by a URL (`s3://bucket/manifests/big.csv`, `gs://`, `az://`): it is
first copied, whole, to a local folder of its own (`manifest_cache`, one per URL, so a rerun
replaces the same file) through `tasks.store.storage.download`, keeping its name and so its
suffix. Local image paths in such a manifest are relative to that copy's folder, where none
are: its images must be URLs, data URIs, or files under `assets`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import math
import os
import re
import socket
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from apimart import netguard, spec
from apimart.errors import RequestValidationError
from apimart.models import LocalImage, VideoRequest
from tasks.errors import ManifestError, StorageError
from tasks.store import storage

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "ID_PATTERN",
    "KNOWN_COLUMNS",
    "SUFFIXES",
    "Manifest",
    "ManifestError",
    "ManifestRow",
    "read_manifest",
]

DEFAULT_MAX_IMAGE_BYTES: Final = 10 * 2**20
# Always used with fullmatch: `$` would also match before a final newline ("a\n" once passed).
ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
KNOWN_COLUMNS: Final = (
    "id",
    "prompt",
    "duration",
    "resolution",
    "aspect_ratio",
    "size",
    "image_urls",
    "video_urls",
    "model",
)
SUFFIXES: Final = (".csv", ".parquet", ".jsonl", ".ndjson")

# Problems are reported in this order so messages read like the manifest's columns.
_PROBLEM_ORDER: Final = {name: n for n, name in enumerate(KNOWN_COLUMNS)}
_ID_RULE: Final = (
    "must be 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit "
    "(it becomes a file name)"
)
# Windows cannot hold a file named CON.mp4 (nor con.x.mp4): a video paid for would be lost on
# a copy to such a share, so these stems are refused whatever their case.
_RESERVED_STEMS: Final = frozenset(
    {"con", "prn", "aux", "nul"} | {f"{d}{n}" for d in ("com", "lpt") for n in range(10)}
)
# [0-9], not \d: \d also matches Arabic-Indic and fullwidth digits, which float() accepts.
_INTEGRAL: Final = re.compile(r"[+-]?[0-9]+(?:\.0*)?")
# Any scheme://: left to VideoRequest, whose rule explains that only http(s) is accepted.
# A prefix test by design (match, not fullmatch): it only sorts URLs from file paths.
_URL_SCHEME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Stands in for an entry that failed our checks, so VideoRequest still judges the count.
_PLACEHOLDER_URL: Final = "https://placeholder.invalid/image"
_PLACEHOLDER_VIDEO: Final = "https://placeholder.invalid/video"
_INSIDE_RULE: Final = "must be inside the manifest's folder or --assets"
# Other URL parsers (browsers, the vendor's) drop or reinterpret these, and may then read
# another host than urlsplit does: `http://127.0.0.1\@cdn.example/` is 127.0.0.1 to a browser.
_URL_UNSAFE_CHARS: Final = re.compile(r"[\x00-\x20\x7f\\]")
_RESOLVE_WORKERS: Final = 32
# A multiple of 3, so the base64 of each chunk is the base64 of the whole file piece by piece.
_DIGEST_CHUNK: Final = 3 * 2**16
# Written by pandas.to_parquet for a non-default index: not a manifest column.
_PANDAS_INDEX: Final = re.compile(r"__index_level_[0-9]+__")


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row: a valid request, or the problems that keep it from being one."""

    index: int
    id: str
    request: VideoRequest | None
    problems: dict[str, str]
    fields: dict[str, Any]
    extra: dict[str, Any]

    @property
    def valid(self) -> bool:
        return self.request is not None and not self.problems

    @property
    def number(self) -> int:
        """1-based row number, as messages show it."""
        return self.index + 1

    @property
    def message(self) -> str:
        """e.g. "row 3 (id 'cat-01'): duration: must be one of [4, 6, 8, 10] seconds, got 5"."""
        name = f"id {self.id!r}" if self.id else "no id"
        if not self.problems:
            return f"row {self.number} ({name}): valid"
        detail = "; ".join(f"{column}: {rule}" for column, rule in self.problems.items())
        return f"row {self.number} ({name}): {detail}"


@dataclass(frozen=True)
class Manifest:
    """Every row of one manifest, in order. `path` is absolute."""

    path: Path
    rows: tuple[ManifestRow, ...]
    extra_columns: tuple[str, ...]

    @property
    def valid_rows(self) -> tuple[ManifestRow, ...]:
        return tuple(row for row in self.rows if row.valid)

    @property
    def invalid_rows(self) -> tuple[ManifestRow, ...]:
        return tuple(row for row in self.rows if not row.valid)


def manifest_cache(url: str) -> Path:
    """The local folder a manifest URL is copied into: its own, the same on every read."""
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "videobatch-manifests" / digest


def read_manifest(
    path: str | Path,
    *,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    assets: str | Path | None = None,
) -> Manifest:
    """Read and validate a manifest; raise ManifestError only when it cannot be read at all.

    Local image files must lie inside the manifest's folder or inside `assets` (symlinks
    followed); relative paths are relative to the manifest's folder either way. A URL is
    copied to `manifest_cache(url)` first and read from there (see the module).
    """
    if storage.is_url(path) and not str(path).lower().startswith("file:"):
        url = str(path)
        try:
            path = storage.download(url, manifest_cache(url))
        except FileNotFoundError:
            raise ManifestError(f"{url}: no such object") from None
        except (StorageError, ValueError) as exc:
            raise ManifestError(f"{url}: the manifest cannot be fetched: {exc}") from None
    source = Path(path).expanduser().resolve()
    suffix = source.suffix.lower()
    if suffix not in SUFFIXES:
        raise ManifestError(
            f"{source}: unsupported manifest format {source.suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(SUFFIXES)}"
        )
    if not source.exists():
        raise ManifestError(f"{source}: no such file")
    if not source.is_file():
        raise ManifestError(f"{source}: not a file")

    reader = _READERS[suffix]
    header, records = reader(source)
    columns = _map_columns(source, header, records)
    if not records:
        raise ManifestError(f"{source}: the manifest has no rows")
    if "prompt" not in columns.known:
        found = ", ".join(repr(name) for name in header) or "none"
        raise ManifestError(f"{source}: no 'prompt' column (columns found: {found})")

    roots = [source.parent]
    if assets is not None:
        folder = Path(assets).expanduser().resolve()
        if not folder.is_dir():
            raise ManifestError(f"--assets {folder}: no such folder")
        roots.append(folder)
    images = _ImageResolver(source.parent, tuple(roots), max_image_bytes)
    hosts = _HostJudge()
    rows = [_parse_row(n, record, columns, images, hosts) for n, record in enumerate(records)]
    rows = hosts.judge_names(rows)
    rows = _mark_duplicates(rows)
    return Manifest(
        path=source,
        rows=tuple(rows),
        extra_columns=tuple(name for _, name in columns.extra),
    )


# --- reading the three formats: each returns (header, rows as lists aligned with header) ---

_Table = tuple[list[str], list[list[Any]]]


def _read_csv(source: Path) -> _Table:
    try:
        # header=None keeps duplicate column names as written (pandas would rename them "x.1"),
        # and na_filter=False keeps every cell the string it is ("NA" is a word, "" is empty).
        frame = pd.read_csv(
            source,
            header=None,
            dtype=str,
            na_filter=False,
            encoding="utf-8-sig",
            skip_blank_lines=True,
        )
    except pd.errors.EmptyDataError:
        raise ManifestError(f"{source}: the file is empty") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"{source}: not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV"
        ) from None
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        detail = str(exc).strip().removeprefix("Error tokenizing data. C error: ")
        raise ManifestError(f"{source}: cannot parse CSV: {detail}") from None
    table: list[list[Any]] = frame.to_numpy(dtype=object).tolist()
    header = [str(name) for name in table[0]]
    return header, table[1:]


def _read_parquet(source: Path) -> _Table:
    try:
        table = pq.read_table(source)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ManifestError(f"{source}: cannot read Parquet: {exc}") from None
    keep = [i for i, name in enumerate(table.column_names) if not _PANDAS_INDEX.fullmatch(name)]
    header = [table.column_names[i] for i in keep]
    # Column-wise to_pylist is fast and gives plain Python values (lists stay lists).
    columns = [table.column(i).to_pylist() for i in keep]
    return header, [list(values) for values in zip(*columns, strict=True)]


def _read_jsonl(source: Path) -> _Table:
    header: list[str] = []
    position: dict[str, int] = {}
    objects: list[dict[str, Any]] = []
    try:
        with source.open(encoding="utf-8-sig") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ManifestError(
                        f"{source}, line {line_number}: not valid JSON ({exc.msg}, "
                        f"column {exc.colno})"
                    ) from None
                if not isinstance(value, dict):
                    raise ManifestError(
                        f"{source}, line {line_number}: expected a JSON object, "
                        f"got {type(value).__name__}"
                    )
                for key in value:
                    if key not in position:
                        position[key] = len(header)
                        header.append(key)
                objects.append(value)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ManifestError(f"{source}: cannot read: {exc}") from None
    return header, [[obj.get(key) for key in header] for obj in objects]


_READERS: Final[dict[str, Callable[[Path], _Table]]] = {
    ".csv": _read_csv,
    ".parquet": _read_parquet,
    ".jsonl": _read_jsonl,
    ".ndjson": _read_jsonl,
}


@dataclass(frozen=True)
class _Columns:
    known: dict[str, int]  # canonical name -> position
    extra: list[tuple[int, str]]  # (position, name as written) of carried-through columns


def _map_columns(source: Path, header: list[str], records: list[list[Any]]) -> _Columns:
    known: dict[str, int] = {}
    extra: list[tuple[int, str]] = []
    extra_names: set[str] = set()
    for position, raw in enumerate(header):
        name = raw.strip().lower()
        if not name:
            # Spreadsheets export trailing separators as nameless, empty columns: harmless.
            if all(_blank(record[position]) for record in records):
                continue
            raise ManifestError(f"{source}: column {position + 1} has values but no name")
        if name in KNOWN_COLUMNS:
            if name in known:
                first = header[known[name]]
                raise ManifestError(
                    f"{source}: columns {first!r} and {raw!r} both mean {name!r}; keep one"
                )
            known[name] = position
        else:
            if raw in extra_names:
                raise ManifestError(f"{source}: column {raw!r} appears twice")
            extra_names.add(raw)
            extra.append((position, raw))
    return _Columns(known=known, extra=extra)


# --- one row ---


def _blank(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return not value.strip()
    return False


def _duration(value: object) -> tuple[object, str | None]:
    """(duration for VideoRequest, problem): integral ints, floats and strings become ints."""
    if _blank(value):
        return None, None
    number: object = value
    if isinstance(value, str) and _INTEGRAL.fullmatch(value.strip()):
        number = int(float(value.strip()))
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    if isinstance(number, int) and not isinstance(number, bool):
        return number, None  # VideoRequest judges whether it is an allowed duration
    return None, f"must be one of {list(spec.DURATIONS)} seconds, got {value!r}"


def _text(value: object) -> object:
    """Strings stripped (spreadsheets pad cells); anything else left for VideoRequest to judge."""
    if _blank(value):
        return None
    return value.strip() if isinstance(value, str) else value


def _url_list(value: object) -> tuple[list[object] | None, str | None]:
    """(entries, problem) from a list cell, a JSON array string or a `|`-separated string."""
    if _blank(value):
        return None, None
    if isinstance(value, list | tuple):
        return list(value), None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                return None, f"looks like a JSON array but is not valid JSON ({exc.msg})"
            if not isinstance(parsed, list):
                return None, "must be a JSON array of strings"
            return parsed, None
        return [part.strip() for part in text.split("|") if part.strip()], None
    return None, f"must be a list of URLs or file paths, got {type(value).__name__}"


def _is_http(text: str) -> bool:
    return text[:8].lower().startswith(("http://", "https://"))


class _HostJudge:
    """Whether the hosts of the http(s) URLs we would forward are public, each judged once.

    `literal` runs while rows are parsed and needs no network. Names it cannot judge are
    collected and resolved together by `judge_names`, which then refuses the rows naming a
    host that resolved to a non-public address.
    """

    def __init__(self) -> None:
        self._literal: dict[str, str | None] = {}
        self._resolved: dict[str, str | None] = {}
        # (row index, column, entry number, host) of every name awaiting resolution.
        self._asked: list[tuple[int, str, int, str]] = []

    def literal(self, url: str, index: int, column: str, number: int) -> str | None:
        """Why this http(s) URL must not be forwarded, judged as written, or None."""
        if _URL_UNSAFE_CHARS.search(url):
            return (
                f"entry {number}: URL contains a space, control character or backslash; "
                "percent-encode it"
            )
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            _ = parts.port  # raises ValueError for a port no client could use
        except ValueError:
            return f"entry {number}: not a valid URL (its host or port cannot be read)"
        if not host:
            return None  # VideoRequest's rule names a URL without a host
        if host not in self._literal:
            self._literal[host] = netguard.host_problem(host, allow_loopback=False)
        problem = self._literal[host]
        if problem:
            return _host_rule(column, number, host, problem)
        if not _is_ip_literal(host):
            self._asked.append((index, column, number, host))
        return None

    def judge_names(self, rows: list[ManifestRow]) -> list[ManifestRow]:
        """Resolve every distinct name once, concurrently; refuse rows naming a bad one."""
        names = sorted({host for *_, host in self._asked} - set(self._resolved))
        if names:
            with ThreadPoolExecutor(min(_RESOLVE_WORKERS, len(names))) as pool:
                for name, problem in zip(names, pool.map(_resolve_problem, names), strict=True):
                    self._resolved[name] = problem
        found: dict[int, dict[str, str]] = {}
        for index, column, number, host in self._asked:
            problem = self._resolved[host]
            if problem:
                _add(found.setdefault(index, {}), column, _host_rule(column, number, host, problem))
        self._asked.clear()
        if not found:
            return rows
        marked = []
        for row in rows:
            extra = found.get(row.index)
            if extra is None:
                marked.append(row)
                continue
            problems = dict(row.problems)
            for column, rule in extra.items():
                _add(problems, column, rule)
            marked.append(replace(row, request=None, problems=_ordered(problems)))
        return marked


def _host_rule(column: str, number: int, host: str, problem: str) -> str:
    kind = "image" if column == "image_urls" else "video"
    return f"entry {number}: host {host} is {problem}; {kind} URLs must name a public host"


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolve_problem(host: str) -> str | None:
    """Why a name must not be forwarded after resolving it, or None (also when it does not
    resolve here: the vendor resolves it on its own network, and we never fetch it)."""
    try:
        # The port does not change the addresses: one look-up per name.
        infos = socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        problem = netguard.address_problem(address, allow_loopback=False)
        if problem:
            return f"a name that resolves to {problem} ({address})"
    return None


class _ImageResolver:
    """Turns image_urls entries into what a request holds, checking each local file once.

    A local file becomes a `LocalImage` (a reference with the digest of its data URI), not
    the data URI itself: see the module.
    """

    _KINDS: Final = "PNG, JPEG or WEBP"

    def __init__(self, folder: Path, roots: tuple[Path, ...], max_bytes: int) -> None:
        self._folder = folder
        self._roots = roots
        self._max_bytes = max_bytes
        self._cache: dict[Path, tuple[LocalImage | None, str | None]] = {}
        # By the entry as written too: a 100,000-row manifest repeating one logo resolves once.
        self._by_text: dict[str, tuple[object, str | None]] = {}
        self._outside = f"{_INSIDE_RULE} ({' or '.join(str(root) for root in roots)})"

    def resolve(self, entry: object) -> tuple[object, str | None]:
        """(value the request holds, problem). URLs and non-strings pass through to
        VideoRequest; a local file becomes a LocalImage."""
        if not isinstance(entry, str) or not entry.strip():
            return entry, None
        text = entry.strip()
        if text[:5].lower() == "data:" or _URL_SCHEME.match(text):
            return text, None
        if text not in self._by_text:
            self._by_text[text] = self._local(text)
        return self._by_text[text]

    def _local(self, text: str) -> tuple[object, str | None]:
        path = Path(text)
        try:
            resolved = (path if path.is_absolute() else self._folder / path).resolve()
        except (OSError, ValueError, RuntimeError):
            # A NUL byte or a symlink loop: no such file can be opened.
            return None, "not a usable file path"
        # Judged before the file is looked at: nothing is said about files outside.
        if not any(resolved.is_relative_to(root) for root in self._roots):
            return None, self._outside
        if resolved not in self._cache:
            self._cache[resolved] = self._check(resolved)
        return self._cache[resolved]

    def _check(self, path: Path) -> tuple[LocalImage | None, str | None]:
        # `path` has no symlinks left; O_NOFOLLOW keeps a link swapped in since from being read.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return None, f"file not found ({path})"
        except (OSError, ValueError) as exc:
            return None, f"cannot read the file ({getattr(exc, 'strerror', None) or exc})"
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None, f"is not a file ({path})"
            if info.st_size > self._max_bytes:
                return (
                    None,
                    f"file is {info.st_size} bytes, over the limit of {self._max_bytes} bytes",
                )
            with os.fdopen(fd, "rb", closefd=False) as handle:
                return self._digest(path, handle)
        except (OSError, ValueError) as exc:
            return None, f"cannot read the file ({getattr(exc, 'strerror', None) or exc})"
        finally:
            os.close(fd)

    def _digest(self, path: Path, handle: Any) -> tuple[LocalImage | None, str | None]:
        """Judge the open file by its first bytes and hash the data URI it becomes, streamed:
        the digest equals hashlib.sha256(data_uri.encode()) without the URI ever built."""
        data: bytes = handle.read(_DIGEST_CHUNK)
        kind = _image_kind(data)
        if kind is None:
            return None, f"not a {self._KINDS} image (judged by its content, not its name)"
        digest = hashlib.sha256(f"data:image/{kind};base64,".encode())
        size = 0
        left = b""  # the 0-2 bytes of the last read that do not fill a base64 quantum
        while data:
            size += len(data)
            if size > self._max_bytes:  # it grew since fstat
                return None, f"file is over the limit of {self._max_bytes} bytes"
            block = left + data if left else data
            cut = len(block) - len(block) % 3
            digest.update(base64.b64encode(block[:cut]))
            left = block[cut:]
            data = handle.read(_DIGEST_CHUNK)
        digest.update(base64.b64encode(left))
        return LocalImage(path=str(path), kind=kind, size=size, sha256=digest.hexdigest()), None


def _image_kind(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    # GIF is left out: the vendor never names it, and an animated one has no clear meaning.
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _parse_row(
    index: int, record: list[Any], columns: _Columns, images: _ImageResolver, hosts: _HostJudge
) -> ManifestRow:
    def cell(name: str) -> object:
        position = columns.known.get(name)
        return None if position is None else record[position]

    problems: dict[str, str] = {}

    if "id" in columns.known:
        raw_id = cell("id")
        if _blank(raw_id):
            row_id = ""
            problems["id"] = "is empty; every row needs an id when the manifest has an id column"
        else:
            row_id = _id_text(raw_id)
            why = _id_problem(row_id)
            if why:
                problems["id"] = why
    else:
        row_id = f"row-{index + 1:05d}"

    prompt = cell("prompt")
    prompt = None if _blank(prompt) else prompt

    duration, why = _duration(cell("duration"))
    if why:
        problems["duration"] = why

    resolution = _text(cell("resolution"))
    if isinstance(resolution, str):
        resolution = resolution.lower()
    aspect_ratio = _text(cell("aspect_ratio"))
    size = _text(cell("size"))

    entries, why = _url_list(cell("image_urls"))
    image_cell_unreadable = why is not None
    send_images: list[object] | None = None
    if why:
        problems["image_urls"] = why
    elif entries is not None:
        send_images = []
        image_problems: list[str] = []
        for number, entry in enumerate(entries, start=1):
            value, why = images.resolve(entry)
            if why:
                image_problems.append(f"entry {number} ({entry!r}): {why}")
                value = _PLACEHOLDER_URL
            elif isinstance(value, str) and _is_http(value):
                # The URL itself is not echoed: a signed link carries its credential.
                why = hosts.literal(value, index, "image_urls", number)
                if why:
                    image_problems.append(why)
                    value = _PLACEHOLDER_URL
            send_images.append(value)
        if image_problems:
            problems["image_urls"] = "; ".join(image_problems)

    videos, why = _url_list(cell("video_urls"))
    if why:
        problems["video_urls"] = why
    if videos is not None:
        videos = [v.strip() if isinstance(v, str) else v for v in videos]
        video_problems: list[str] = []
        for number, video in enumerate(videos, start=1):
            if isinstance(video, str) and _is_http(video):
                why = hosts.literal(video, index, "video_urls", number)
                if why:
                    video_problems.append(why)
                    videos[number - 1] = _PLACEHOLDER_VIDEO
        if video_problems:
            _add(problems, "video_urls", "; ".join(video_problems))

    model = _text(cell("model"))

    request: VideoRequest | None = None
    try:
        request = VideoRequest.build(
            prompt=prompt,
            duration=duration,
            resolution=resolution,
            aspect_ratio=aspect_ratio,
            size=size,
            image_urls=send_images,
            video_urls=videos,
            model=model,
        )
    except RequestValidationError as exc:
        for column, rule in exc.problems.items():
            if column == "aspect_ratio" and aspect_ratio is None and size is not None:
                column = "size"  # name the column the user actually filled in
            _add(problems, column, rule)

    if problems:
        request = None
    if request is not None:
        fields: dict[str, Any] = {
            "prompt": request.prompt,
            "duration": request.duration,
            "resolution": request.resolution,
            "aspect_ratio": request.aspect_ratio,
            "image_count": len(request.image_urls),
        }
    else:
        # Defaults where the cell was empty, the value as written where it could not be read.
        raw_duration = cell("duration")
        if duration is None:
            duration = spec.DEFAULT_DURATION if _blank(raw_duration) else raw_duration
        ratio = aspect_ratio if aspect_ratio is not None else size
        fields = {
            "prompt": prompt,
            "duration": duration,
            "resolution": spec.DEFAULT_RESOLUTION if resolution is None else resolution,
            "aspect_ratio": spec.DEFAULT_ASPECT_RATIO if ratio is None else ratio,
            "image_count": None
            if entries is None and image_cell_unreadable
            else len(entries or ()),
        }
    extra = {name: record[position] for position, name in columns.extra}
    return ManifestRow(
        index=index,
        id=row_id,
        request=request,
        problems=_ordered(problems),
        fields=fields,
        extra=extra,
    )


def _id_problem(row_id: str) -> str | None:
    if not ID_PATTERN.fullmatch(row_id):
        return f"{_ID_RULE}, got {row_id!r}"
    if row_id.split(".", 1)[0].lower() in _RESERVED_STEMS:
        return (
            f"{row_id!r} is a reserved device name on Windows (CON, PRN, AUX, NUL, COM0-9, "
            "LPT0-9, with or without a suffix), so it cannot be a file name"
        )
    return None


def _id_text(value: object) -> str:
    """Parquet and JSON may hold ids as numbers; a float id 7.0 is the 7 the user typed."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else str(value)


def _add(problems: dict[str, str], column: str, rule: str) -> None:
    """Keep every rule a column breaks: our parsing and VideoRequest may each find one."""
    current = problems.get(column)
    if current is None:
        problems[column] = rule
    elif rule not in current:
        problems[column] = f"{current}; {rule}"


def _ordered(problems: Mapping[str, str]) -> dict[str, str]:
    return dict(
        sorted(problems.items(), key=lambda item: _PROBLEM_ORDER.get(item[0], len(KNOWN_COLUMNS)))
    )


def _mark_duplicates(rows: Iterable[ManifestRow]) -> list[ManifestRow]:
    first_seen: dict[str, ManifestRow] = {}
    marked: list[ManifestRow] = []
    for row in rows:
        if not row.id:
            marked.append(row)
            continue
        key = row.id.casefold()
        first = first_seen.setdefault(key, row)
        if first is row:
            marked.append(row)
            continue
        rule = f"duplicate of row {first.number}"
        if first.id != row.id:
            rule += f" (id {first.id!r}; ids differing only in case collide as file names)"
        problems = dict(row.problems)
        _add(problems, "id", rule)
        marked.append(replace(row, request=None, problems=_ordered(problems)))
    return marked
