"""Helpers shared by the flow tests (a plain module: tests/ is not a package)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def fast_options(manifest: Path, out: Path, sandbox_url: str, **extra: Any) -> Any:
    from tasks.options import RunOptions

    values: dict[str, Any] = {
        "manifest": str(manifest),
        "out": str(out),
        "base_url": sandbox_url,
        "poll_initial_delay": 0.1,
        "poll_interval": 0.1,
        "submit_rate": 200.0,
        "report": False,
    }
    values.update(extra)
    return RunOptions(**values)
