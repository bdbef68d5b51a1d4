"""The submit step's run-wide brakes, through real `generate-videos` runs.

A real Prefect API (the session's), the sandbox over real HTTP, and, where the sandbox cannot
count (a POST to a route it does not have), a counting HTTP proxy in front of it.
"""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.manifests import prompt_rows, write_manifest
from support.outputs import ledger_rows, results
from support.runs import fast_options

from apimart import retry
from apimart.sandbox import FaultRule, Faults, RunningSandbox, SandboxConfig, run_in_thread
from flows.generate import generate_videos
from tasks.run.gate import RunStopped
from tasks.store.ledger import DOUBTFUL, RowRecord, State

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

KEY = "sk-submit-runs-canary-8b0c"
# Headers that belong to one hop, not to the request the proxy passes on.
_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    with retry.no_waits():
        yield


@contextmanager
def sandbox(faults: Faults | None = None) -> Iterator[RunningSandbox]:
    config = SandboxConfig(api_key=KEY, time_scale=0.004, faults=faults or Faults())
    with run_in_thread(config) as sb:
        yield sb


@contextmanager
def counting_proxy(target: str) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """An HTTP proxy in front of `target` that records every request's method and path."""
    seen: list[tuple[str, str]] = []
    upstream = httpx.Client(base_url=target, timeout=30)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self) -> None:
            seen.append((self.command, self.path))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            answer = upstream.request(self.command, self.path, content=body, headers=headers)
            self.send_response(answer.status_code)
            for name, value in answer.headers.items():
                if name.lower() not in _HOP | {"content-length", "content-encoding"}:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = forward

        def log_message(self, *args: Any) -> None:
            pass  # the test reads `seen`, not a log

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        upstream.close()


def manifest_of(path: Path, prompts: list[str]) -> Path:
    return write_manifest(path, prompt_rows(prompts))


async def test_a_wrong_base_url_costs_one_post_and_leaves_every_row_never_sent(
    tmp_path: Path,
) -> None:
    """Base URL ending in /v1: the run stops at the first 404, naming the URL; one POST only."""
    manifest = manifest_of(tmp_path / "m.csv", [f"row {i}" for i in range(5)])
    out = tmp_path / "out"
    with sandbox() as sb, counting_proxy(sb.url) as (proxy, seen):
        wrong = f"{proxy}/v1"
        with pytest.raises(RunStopped, match=f"{wrong}/v1/videos/generations"):
            await generate_videos(options=fast_options(manifest, out, wrong, concurrency=5))
        assert seen == [("POST", "/v1/v1/videos/generations")]
        rows = ledger_rows(out)
        assert {r.state for r in rows.values()} == {State.PENDING}
        assert not [r for r in rows.values() if r.state in DOUBTFUL]
        assert {r["status"] for r in results(out).values()} == {"not_submitted"}
        assert sb.state.counters.snapshot()["tasks_created"] == 0

        outcome = await generate_videos(options=fast_options(manifest, out, proxy, concurrency=5))
        assert outcome["completed"] == 5
        created = sb.state.counters.snapshot()["tasks_created_by_prompt"]
        assert created == {f"row {i}": 1 for i in range(5)}


async def _wait_for_ledger(out: Path, until: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rows = ledger_rows(out)
        except FileNotFoundError:
            rows = {}
        if until(rows):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout}s; ledger: {ledger_rows(out)}")


async def test_an_hour_long_retry_after_stops_sending_while_in_flight_tasks_finish(
    tmp_path: Path,
) -> None:
    """Retry-After 3600: no row waits an hour; unsent rows stay pending, in-flight ones finish."""
    out = tmp_path / "out"
    with sandbox(Faults(hold_tasks=True, retry_after_s=3600)) as sb:
        # A first run leaves r0's task running (held) and its id in the ledger.
        first = manifest_of(tmp_path / "first.csv", ["in flight"])
        await generate_videos(options=fast_options(first, out, sb.url, poll_timeout=0.3))
        assert ledger_rows(out)["r0"].state == State.TIMEOUT

        sb.config.faults.submit_429 = FaultRule(rate=1.0, prompt_contains="THROTTLE")
        manifest = manifest_of(tmp_path / "m.csv", ["in flight", "THROTTLE a", "THROTTLE b"])
        before = sb.state.counters.snapshot()["submit_requests"]
        started = time.monotonic()
        run = asyncio.ensure_future(generate_videos(options=fast_options(manifest, out, sb.url)))

        def closed(rows: dict[str, RowRecord]) -> bool:
            return all(
                (r := rows.get(i)) is not None
                and r.state == State.PENDING
                and r.error_code == "rate_limited"
                for i in ("r1", "r2")
            )

        try:
            await _wait_for_ledger(out, closed, "rows left pending by the 429")
            assert ledger_rows(out)["r0"].state == State.TIMEOUT  # still held, still polled
            sb.config.faults.hold_tasks = False
            outcome = await asyncio.wait_for(run, timeout=60)
        finally:
            run.cancel()
        assert time.monotonic() - started < 60
        got = results(out)
        assert got["r0"]["status"] == "completed" and (out / got["r0"]["video_path"]).is_file()
        for row_id in ("r1", "r2"):
            assert got[row_id]["status"] == "not_submitted"
            assert "run again after" in got[row_id]["error_message"]
        assert outcome["completed"] == 1
        assert sb.state.counters.snapshot()["submit_requests"] - before == 1

        sb.config.faults.submit_429 = FaultRule()
        outcome = await generate_videos(options=fast_options(manifest, out, sb.url))
        assert outcome["completed"] == 3
        created = sb.state.counters.snapshot()["tasks_created_by_prompt"]
        assert created == {"in flight": 1, "THROTTLE a": 1, "THROTTLE b": 1}
