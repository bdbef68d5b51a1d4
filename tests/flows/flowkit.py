"""Helpers shared by the flow tests (a plain module: tests/ is not a package).

Manifests and fast run options come from tests/support/ and are re-exported here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support.manifests import write_manifest as write_manifest
from support.runs import fast_options as fast_options

from apimart.redact import secret_forms

API_KEY = "sk-CANARY-flow-7c2e91d04b"
# Every form the canary can take in text (raw, repr, JSON, percent-encoded, base64 of the key
# and of `Bearer <key>`): a grep for the raw key alone misses a leak of any other.
CANARY_FORMS = tuple(secret_forms(API_KEY))


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
