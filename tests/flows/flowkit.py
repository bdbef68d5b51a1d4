"""Helpers shared by the flow tests (a plain module: tests/ is not a package).

Manifests and fast run options come from tests/support/ and are re-exported here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prefect import Flow, flow
from support.manifests import write_manifest as write_manifest
from support.runs import fast_options as fast_options

from apimart.redact import secret_forms
from apimart.sandbox import Faults, SandboxConfig, SandboxState, create_app
from flows.generate import generate
from tasks.run.options import RunOptions

API_KEY = "sk-CANARY-flow-7c2e91d04b"
# Every form the canary can take in text (raw, repr, JSON, percent-encoded, base64 of the key
# and of `Bearer <key>`): a grep for the raw key alone misses a leak of any other.
CANARY_FORMS = tuple(secret_forms(API_KEY))


# What an in-process client calls the sandbox: never dialled (the transport carries every
# request), but loopback, so the client allows plain http and the sandbox's CDN links.
IN_PROCESS_URL = "http://127.0.0.1:9"


@dataclass
class InProcessSandbox:
    """The sandbox app without a server: requests go through `transport`, in this process."""

    url: str
    state: SandboxState
    config: SandboxConfig
    transport: httpx.ASGITransport


def in_process_sandbox(faults: Faults | None = None, **options: Any) -> InProcessSandbox:
    """The sandbox app behind an `httpx.ASGITransport` (time compressed unless told)."""
    options.setdefault("time_scale", 0.004)
    config = SandboxConfig(api_key=API_KEY, faults=faults or Faults(), **options)
    state = SandboxState()
    return InProcessSandbox(
        IN_PROCESS_URL, state, config, httpx.ASGITransport(app=create_app(config, state))
    )


def in_process_flow(sandbox: InProcessSandbox) -> Flow[..., Any]:
    """`generate-videos`' own body as a flow whose client talks to `sandbox` in process; the
    transport is closed over, since a flow's parameters are stored on the Prefect server."""

    @flow(name="generate-videos", log_prints=False, validate_parameters=True)
    async def generate_in_process(options: RunOptions) -> dict[str, Any]:
        return await generate(options, transport=sandbox.transport)

    return generate_in_process


def assert_no_canary(texts: Iterable[str | bytes], where: str = "the output") -> None:
    """No text (or file content) holds the canary key in any of its forms."""
    for text in texts:
        for form in CANARY_FORMS:
            needle: str | bytes = form.encode() if isinstance(text, bytes) else form
            assert needle not in text, f"the API key ({form!r}) leaked into {where}"


def assert_no_canary_in_files(folder: Path) -> None:
    """No file under `folder` (ledger, WAL, results, report, videos) holds the canary."""
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert files, f"nothing to check under {folder}"
    for path in files:
        assert_no_canary([path.read_bytes()], str(path))


@contextmanager
def debug_logs_to_prefect() -> Iterator[None]:
    """Within the block our loggers (apimart, videobatch) and the run loggers log at DEBUG to
    the Prefect API, as a run with PREFECT_LOGGING_EXTRA_LOGGERS would: a debug record that
    leaked the key would then be in `read_logs`. Levels and handlers are restored after."""
    from prefect.logging.handlers import APILogHandler

    api = [
        h for h in logging.getLogger("prefect.flow_runs").handlers if isinstance(h, APILogHandler)
    ]
    names = ("apimart", "videobatch", "prefect.flow_runs", "prefect.task_runs")
    saved = {name: logging.getLogger(name).level for name in names}
    added = [(name, h) for name in ("apimart", "videobatch") for h in api[:1]]
    for name, handler in added:
        logging.getLogger(name).addHandler(handler)
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for name, handler in added:
            logging.getLogger(name).removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def settle(path: Path) -> Path:
    """Date the file back past the inbox's settling time, as a finished copy would be."""
    past = time.time() - 60
    os.utime(path, (past, past))
    return path


def drop(box: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    """A manifest of `rows` that arrived in the inbox folder `box` a minute ago."""
    box.mkdir(parents=True, exist_ok=True)
    return settle(write_manifest(box / name, rows))


def inbox_rows(prefix: str, n: int) -> list[dict[str, Any]]:
    """`n` cheap rows `PREFIX-0`, ... whose prompts (`PREFIX inbox clip I`) no other has."""
    return [
        {"id": f"{prefix}-{i}", "prompt": f"{prefix} inbox clip {i}", "duration": 4}
        for i in range(n)
    ]
