"""What the Prefect server records of a run's task runs: row ids and labels, never the runtime."""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from flowkit import (
    API_KEY,
    CANARY_FORMS,
    fast_options,
    in_process_flow,
    in_process_sandbox,
    write_manifest,
)

pytestmark = pytest.mark.usefixtures("prefect_api")

# A task-run record is its name, ids, state and bookkeeping: a few kilobytes at most. One that
# carried a manifest row's inlined image would be larger than this by itself.
MAX_RECORD_BYTES = 8_000


def tiny_png(width: int = 64, height: int = 48) -> bytes:
    """A valid RGB PNG of one colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\x20\x90\xc0" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


async def task_run_records(flow_run_id: UUID, count: int, timeout: float = 60.0) -> list[str]:
    """The flow run's task runs as the server stores them, once all `count` are final there
    (the server records them a little after the flow reports them)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            runs: list[Any] = []
            while True:  # the API answers at most 200 a page
                page = await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                    offset=len(runs),
                    limit=200,
                )
                runs.extend(page)
                if len(page) < 200:
                    break
            if len(runs) >= count and all(r.state and r.state.is_final() for r in runs):
                return [run.model_dump_json() for run in runs]
            assert time.monotonic() < deadline, f"{len(runs)} of {count} task runs recorded"
            await asyncio.sleep(0.2)


async def test_task_run_records_hold_no_key_no_client_and_no_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task runs the server records for a run hold no form of the key, no inlined image
    and no client, so the runtime handed to each task never reached the server."""
    monkeypatch.setenv("APIMART_API_KEY", API_KEY)
    (tmp_path / "logo.png").write_bytes(tiny_png())
    rows = [
        {"id": f"pic-{i}", "prompt": f"a framed logo {i}", "duration": 4, "image_urls": "logo.png"}
        for i in range(3)
    ]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    sandbox = in_process_sandbox()
    options = fast_options(manifest, tmp_path / "out", sandbox.url)

    state = await in_process_flow(sandbox)(options=options, return_state=True)
    outcome = await state.result()  # type: ignore[misc]
    assert outcome["completed"] == 3
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None

    records = await task_run_records(flow_run_id, count=3)
    for record in records:
        assert len(record) < MAX_RECORD_BYTES, record[:500]
        for needle in (*CANARY_FORMS, "data:image", "base64", "Runtime", "APIMartClient"):
            assert needle not in record, f"{needle!r} reached a task-run record: {record[:500]}"
