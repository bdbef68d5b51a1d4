"""Local images are checked when the manifest is read and read again only when their row is sent.

The manifest keeps a reference per local file (path, kind, size, digest of its data URI), so a
run never holds the base64 of its images; the fingerprint in the ledger is what earlier versions
wrote; the sandbox receives the data URI it always did; and a file that changed between the
check and the send keeps its row never-sent.
"""

from __future__ import annotations

import base64
import dataclasses
import gc
import hashlib
import http.server
import json
import threading
import types
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.manifests import write_manifest

from apimart import retry
from apimart.sandbox import FaultRule, Faults, RunningSandbox, SandboxConfig, run_in_thread
from tasks.run.lifecycle import open_run
from tasks.run.options import RunOptions
from tasks.run.runtime import Runtime
from tasks.steps.submit import submit_row
from tasks.store.hashing import request_hash
from tasks.store.ledger import State
from tasks.store.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "data" / "manifests" / "images"
KEY = "sk-lazy-images-canary-41c7"
# A "JPEG" by its magic bytes, several digest chunks long and not a multiple of 3 bytes long.
BIG_JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 3000 + b"\x01\x02"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    with retry.no_waits():
        yield


def data_uri(data: bytes, kind: str = "png") -> str:
    """The data URI earlier versions built for a local file, and the API receives."""
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"


def pinned_manifest(folder: Path) -> Path:
    """Local PNGs (one reused within a row), a multi-chunk JPEG, a URL, an inline data URI."""
    for name in ("sunrise.png", "logo.png", "palette.png"):
        (folder / name).write_bytes((IMAGES / name).read_bytes())
    (folder / "big.jpg").write_bytes(BIG_JPEG)
    inline = data_uri((IMAGES / "product.png").read_bytes())
    path = folder / "m.csv"
    path.write_text(
        "id,prompt,duration,resolution,image_urls\n"
        "one,A sunrise over the sea,4,720p,sunrise.png\n"
        'three,Three references,6,1080p,"[""logo.png"", ""https://cdn.example.com/b.png"", '
        '""big.jpg""]"\n'
        f'inline,An inline image,8,720p,"{inline}"\n'
        "none,No image at all,4,720p,\n"
        "again,The same file twice,4,720p,sunrise.png|palette.png|sunrise.png\n",
        encoding="utf-8",
    )
    return path


# The values earlier versions (which held every image as a data URI) wrote into ledgers for
# these rows; a different value would make every paid row of an existing folder a conflict.
PINNED_HASHES = {
    "one": "3b05cdbdb2ab08d0517ec1ebf78c0615bda27a15cd466ecdfa1eb2ec202e4f23",
    "three": "9f49201c49d86f717d07a0c36684546d7baf4000bca2bb5a7f276ae703f06517",
    "inline": "0f36cae28cf5722491a1ae06131de21140243c7a269e8e26ca880667dd6ab63d",
    "none": "3ef9f9bc06e4486842b11e047ed5146c1b19ca4e4233805199c00262152dd1f4",
    "again": "238f89306023010d0456e8693d5af4381e1f639aa414434d1683bcf5a933b81e",
}


def test_request_hash_of_local_images_is_the_value_earlier_versions_wrote(
    tmp_path: Path,
) -> None:
    """request_hash of rows with local images equals, literally, what older ledgers hold."""
    manifest = read_manifest(pinned_manifest(tmp_path))
    assert all(row.valid for row in manifest.rows), [row.message for row in manifest.rows]
    got = {row.id: request_hash(row.request) for row in manifest.rows if row.request is not None}
    assert got == PINNED_HASHES


def test_a_local_image_is_held_as_a_reference_with_the_digest_of_its_data_uri(
    tmp_path: Path,
) -> None:
    """The row holds path, kind, size and the streamed digest of the data URI, not the URI."""
    from apimart.models import LocalImage  # here: earlier versions have none, see the others

    manifest = read_manifest(pinned_manifest(tmp_path))
    three = next(row for row in manifest.rows if row.id == "three")
    assert three.request is not None
    sources = three.request.image_urls.sources  # type: ignore[attr-defined]
    big = sources[2]
    assert isinstance(big, LocalImage)
    assert (big.path, big.kind, big.size) == (str(tmp_path / "big.jpg"), "jpeg", len(BIG_JPEG))
    assert big.sha256 == hashlib.sha256(data_uri(BIG_JPEG, "jpeg").encode()).hexdigest()
    assert sources[1] == "https://cdn.example.com/b.png"  # URLs are kept as given
    inline = next(row for row in manifest.rows if row.id == "inline")
    assert inline.request is not None
    assert inline.request.image_urls == (data_uri((IMAGES / "product.png").read_bytes()),)


def test_a_copy_of_a_request_keeps_its_references_and_reads_no_file(tmp_path: Path) -> None:
    """dataclasses.replace of a request with local images neither reads nor inlines them."""
    from apimart.models import LocalImage

    manifest = read_manifest(pinned_manifest(tmp_path))
    one = next(row for row in manifest.rows if row.id == "one")
    assert one.request is not None
    (tmp_path / "sunrise.png").unlink()  # reading it now would fail
    longer = dataclasses.replace(one.request, duration=8)
    (source,) = longer.image_urls.sources  # type: ignore[attr-defined]
    assert isinstance(source, LocalImage) and source == one.request.image_urls.sources[0]  # type: ignore[attr-defined]


def _text_reachable(root: object) -> int:
    """Characters and bytes of every str/bytes reachable from `root` through real references
    (classes, modules and functions are not walked: they are shared by everything)."""
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, str | bytes | bytearray):
            total += len(obj)
            continue
        stack.extend(gc.get_referents(obj))
    return total


def test_rows_with_distinct_local_images_do_not_hold_their_bytes(tmp_path: Path) -> None:
    """A manifest of N rows, each with its own image, holds no image bytes or base64."""
    rows = 40
    noise = bytes(range(256)) * 80  # 20 KiB per image, each made distinct below
    for i in range(rows):
        (tmp_path / f"p{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + i.to_bytes(4, "big") + noise)
    manifest = read_manifest(
        write_manifest(
            tmp_path / "m.csv",
            [
                {"id": f"r{i}", "prompt": f"clip {i}", "image_urls": f"p{i}.png"}
                for i in range(rows)
            ],
        )
    )
    assert len(manifest.valid_rows) == rows, [r.message for r in manifest.invalid_rows]
    held = _text_reachable(manifest.rows)
    images = rows * len(noise)
    # Ids, prompts, paths and digests: a few hundred characters a row, against 27 KiB of base64.
    assert held < rows * 500, f"the rows hold {held} characters for {images} bytes of images"


@contextmanager
def recording_proxy(target: str) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP proxy in front of the sandbox that keeps the JSON body of every POST."""
    bodies: list[dict[str, Any]] = []
    upstream = httpx.Client(base_url=target, timeout=30)
    hop = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.command == "POST":
                bodies.append(json.loads(body))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
            answer = upstream.request(self.command, self.path, content=body, headers=headers)
            self.send_response(answer.status_code)
            for name, value in answer.headers.items():
                if name.lower() not in hop | {"content-encoding"}:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = forward

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()
        upstream.close()


@contextmanager
def sandbox(faults: Faults | None = None) -> Iterator[RunningSandbox]:
    config = SandboxConfig(api_key=KEY, time_scale=0.002, faults=faults or Faults())
    with run_in_thread(config) as sb:
        yield sb


@asynccontextmanager
async def a_run(manifest: Path, out: Path, base_url: str, **extra: Any) -> AsyncIterator[Runtime]:
    """A run as the flow opens it: the manifest is read (and its images checked) here."""
    options = RunOptions(
        manifest=str(manifest),
        out=str(out),
        base_url=base_url,
        poll_initial_delay=0.05,
        poll_interval=0.05,
        submit_rate=1000,
        **extra,
    )
    async with open_run(options) as runtime:
        yield runtime


async def test_the_sandbox_receives_the_data_uris_earlier_versions_sent(tmp_path: Path) -> None:
    """The POST carries each local file as the very data URI it always did, URLs as given."""
    manifest = pinned_manifest(tmp_path)
    with sandbox() as sb, recording_proxy(sb.url) as (url, bodies):
        async with a_run(manifest, tmp_path / "out", url) as rt:
            for row_id in ("one", "three", "again"):
                assert await submit_row(rt, row_id) == State.SUBMITTED
                record = rt.ledger.get(row_id)
                assert record is not None and record.request_hash == PINNED_HASHES[row_id]
        sunrise, logo, palette = (
            (IMAGES / name).read_bytes() for name in ("sunrise.png", "logo.png", "palette.png")
        )
        sent = {body["prompt"]: body["image_urls"] for body in bodies}
        assert sent == {
            "A sunrise over the sea": [data_uri(sunrise)],
            "Three references": [
                data_uri(logo),
                "https://cdn.example.com/b.png",
                data_uri(BIG_JPEG, "jpeg"),
            ],
            "The same file twice": [data_uri(sunrise), data_uri(palette), data_uri(sunrise)],
        }
        tasks = list(sb.state.tasks.values())
        assert sorted(t.image for t in tasks if t.image is not None) == sorted(
            [sunrise, logo, sunrise]
        )


@pytest.mark.parametrize("change", ["rewritten", "deleted", "same size"])
async def test_an_image_changed_after_the_check_leaves_its_row_never_sent(
    tmp_path: Path, change: str
) -> None:
    """A file changed between the manifest check and the POST: row pending, named, unpaid."""
    (tmp_path / "a.png").write_bytes((IMAGES / "sunrise.png").read_bytes())
    (tmp_path / "b.png").write_bytes((IMAGES / "logo.png").read_bytes())
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            {"id": "r0", "prompt": "changed image", "duration": 4, "image_urls": "a.png"},
            {"id": "r1", "prompt": "steady image", "duration": 4, "image_urls": "b.png"},
        ],
    )
    with sandbox() as sb:
        async with a_run(manifest, tmp_path / "out", sb.url) as rt:
            image = tmp_path / "a.png"
            if change == "rewritten":
                image.write_bytes((IMAGES / "palette.png").read_bytes())
            elif change == "deleted":
                image.unlink()
            else:  # one byte flipped, same length: only the digest can tell
                data = bytearray(image.read_bytes())
                data[-1] ^= 0xFF
                image.write_bytes(bytes(data))
            assert await submit_row(rt, "r0") == State.PENDING
            record = rt.ledger.get("r0")
            assert record is not None
            assert record.state == State.PENDING
            assert record.error_code == "image_changed"
            message = record.error_message or ""
            assert "row 1 (id 'r0')" in message, message
            assert str(image) in message, message
            assert "the image changed after the manifest was checked" in message, message
            assert record.idempotency_key is None and record.request_hash is None  # no intent
            assert rt.budget.committed == 0 and rt.ledger.committed_cost() == 0
            # The run goes on: the next row is sent.
            assert await submit_row(rt, "r1") == State.SUBMITTED
        stats = sb.state.stats()
        assert stats["tasks_created_by_prompt"] == {"steady image": 1}
        assert stats["submit_requests"] == 1


async def test_a_resend_of_a_doubtful_row_whose_image_changed_stays_unknown(
    tmp_path: Path,
) -> None:
    """--resubmit-unknown with the image changed since the check: not resent, still counted."""
    (tmp_path / "a.png").write_bytes((IMAGES / "sunrise.png").read_bytes())
    manifest = write_manifest(
        tmp_path / "m.csv",
        [{"id": "r0", "prompt": "doubtful", "duration": 4, "image_urls": "a.png"}],
    )
    out = tmp_path / "out"
    with sandbox(Faults(submit_drop_after_create=FaultRule(rate=1.0))) as sb:
        async with a_run(manifest, out, sb.url) as rt:
            assert await submit_row(rt, "r0") == State.UNKNOWN  # created and billed, id lost
        sb.config.faults.submit_drop_after_create = FaultRule()
        async with a_run(manifest, out, sb.url, resubmit_unknown=True) as rt:
            first = rt.ledger.get("r0")
            assert first is not None
            (tmp_path / "a.png").write_bytes((IMAGES / "logo.png").read_bytes())
            assert await submit_row(rt, "r0") == State.UNKNOWN
            record = rt.ledger.get("r0")
            assert record is not None
            assert record.error_code == "image_changed"
            assert "the image changed after the manifest was checked" in (
                record.error_message or ""
            )
            # The first POST is still money at risk; the refused resend reserved nothing.
            assert record.idempotency_key == first.idempotency_key
            assert rt.ledger.committed_cost() == pytest.approx(first.estimated_cost)
            assert rt.budget.committed == pytest.approx(first.estimated_cost)
        assert sb.state.stats()["tasks_created"] == 1
