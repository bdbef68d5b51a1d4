"""Helpers shared by the command-line tests (a plain module: tests/ is not a package).

Every command runs as a real subprocess (`python -m videobatch.cli`), against the session's
Prefect API and an in-process sandbox, with its output captured to files. Every finished
command is checked for the canary API keys, in every form a key can take in text, in its
stdout and stderr, so no test can forget it. Every command logs at DEBUG to the Prefect API
(the console stays at WARNING), so a key leaked by a debug record is caught there too.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import av
import pyarrow as pa
import pyarrow.parquet as pq
from support.manifests import write_manifest as write_manifest
from support.net import free_port as free_port
from support.outputs import ledger_rows as ledger_rows
from support.outputs import results as results

from apimart.redact import secret_forms
from apimart.sandbox import Faults, RunningSandbox, SandboxConfig, run_in_thread
from tasks.store.ledger import Ledger

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
DEMO = DATA / "manifests" / "demo.csv"
INVALID = DATA / "manifests" / "invalid.csv"

# The sandbox accepts CANARY_KEY; WRONG_KEY is refused (401). Neither may ever be written down.
CANARY_KEY = "sk-CANARY-cli-4e1f0b9d27c3a6"
WRONG_KEY = "sk-CANARY-cli-wrong-8a6c5d3e1f"
# What the greps look for: each key in every form it can take in text (raw, repr, JSON,
# percent-encoded, base64 of the key and of `Bearer <key>`), not only as itself.
CANARIES = tuple(form for key in (CANARY_KEY, WRONG_KEY) for form in secret_forms(key))

CLI = (sys.executable, "-m", "videobatch.cli")
# Fast polling for every run, through the environment (itself a feature under test).
FAST_ENV = {
    "VIDEOBATCH_POLL_INITIAL_DELAY": "0.1",
    "VIDEOBATCH_POLL_INTERVAL": "0.2",
    "VIDEOBATCH_SUBMIT_RATE": "100",
}
RUN_TIMEOUT_S = 150.0

_seeds = itertools.count(900)

# The `make_sandbox` fixture: start a sandbox (options as for SandboxConfig) for this test.
MakeSandbox = Callable[..., RunningSandbox]


# --- manifests ----------------------------------------------------------------------------


def clip_rows(n: int, prefix: str = "clip", **extra: Any) -> list[dict[str, Any]]:
    """`n` cheap rows (4 s, 720p), each with a prompt no other row has."""
    return [
        {
            "id": f"{prefix}-{i}",
            "prompt": f"{prefix}-{i}: a red ball rolls across a wooden table; static shot",
            "duration": 4,
            "resolution": "720p",
            **extra,
        }
        for i in range(n)
    ]


# --- the sandbox --------------------------------------------------------------------------


@contextlib.contextmanager
def sandbox(faults: Faults | None = None, **options: Any) -> Iterator[RunningSandbox]:
    """An in-process sandbox that accepts CANARY_KEY (fast tasks unless told otherwise)."""
    options.setdefault("seed", next(_seeds))
    options.setdefault("time_scale", 0.004)
    config = SandboxConfig(api_key=CANARY_KEY, faults=faults or Faults(), **options)
    with run_in_thread(config) as running:
        yield running


def counters(sb: RunningSandbox) -> dict[str, Any]:
    return sb.state.counters.snapshot()


def settled_counters(sb: RunningSandbox, quiet_s: float = 0.3, limit_s: float = 5.0) -> dict:
    """Counters once no request has changed them for `quiet_s` (a killed client's last POST
    may still be inside the sandbox when the process dies)."""
    deadline = time.monotonic() + limit_s
    last = counters(sb)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = counters(sb)
        if now == last:
            return now
        last = now
    return last


def no_calls(snapshot: Mapping[str, Any]) -> bool:
    return snapshot["submit_requests"] == 0 and snapshot["tasks_created"] == 0


# --- running the command line ---------------------------------------------------------------


@dataclass
class Done:
    """A finished command: exit code and everything it printed."""

    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return (
            f"`videobatch {' '.join(self.args)}` exited {self.code} after {self.seconds:.1f}s\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )


def assert_no_canary_text(text: str, where: str) -> None:
    for canary in CANARIES:
        assert canary not in text, f"the API key leaked into {where} (as {canary!r})"
    for key in (CANARY_KEY, WRONG_KEY):
        # The key's distinctive tail too, in case something printed a cut-down key.
        assert key[-12:] not in text, f"part of the API key leaked into {where}"


class Running:
    """A command started in the background; its output goes to files until it ends."""

    def __init__(self, args: tuple[str, ...], env: dict[str, str], cwd: Path, logs: Path):
        self.args = args
        logs.mkdir(parents=True, exist_ok=True)
        stem = f"{time.monotonic_ns()}-{args[0] if args else 'videobatch'}"
        self._out_path, self._err_path = logs / f"{stem}.out", logs / f"{stem}.err"
        self._out, self._err = self._out_path.open("wb"), self._err_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [*CLI, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> tuple[str, str]:
        return (
            self._out_path.read_text(encoding="utf-8", errors="replace"),
            self._err_path.read_text(encoding="utf-8", errors="replace"),
        )

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> Done:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            out, err = self.output()
            raise AssertionError(
                f"`videobatch {' '.join(self.args)}` still running after {timeout}s; killed\n"
                f"--- stdout ---\n{out[-3000:]}\n--- stderr ---\n{err[-5000:]}"
            ) from None
        return self._done(code)

    def kill9(self) -> Done:
        """`kill -9` this process (only ever the one this object started)."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait(timeout=30)
        return self._done(code)

    def interrupt(self, timeout: float = 20.0) -> Done:
        """Ctrl-C: SIGINT to this process, then wait for it to end."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGINT)
        return self.wait(timeout)

    def _done(self, code: int) -> Done:
        for handle in (self._out, self._err):
            if not handle.closed:
                handle.close()
        out, err = self.output()
        done = Done(self.args, code, out, err, time.monotonic() - self.started)
        assert_no_canary_text(out, f"stdout of {done.args}")
        assert_no_canary_text(err, f"stderr of {done.args}")
        return done


class Cli:
    """Runs `videobatch` with a clean, fast environment aimed at the session's Prefect API."""

    def __init__(self, base_env: Mapping[str, str], cwd: Path, logs: Path) -> None:
        self.base_env, self.cwd, self.logs = dict(base_env), cwd, logs
        self.started: list[Running] = []

    def env(
        self,
        sb: RunningSandbox | None = None,
        *,
        key: str | None = CANARY_KEY,
        extra: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        env = dict(self.base_env)
        if sb is not None:
            env["APIMART_BASE_URL"] = sb.url
            if key is not None:
                env["APIMART_API_KEY"] = key
        env.update(extra or {})
        return env

    def start(
        self,
        *args: str | Path,
        sb: RunningSandbox | None = None,
        key: str | None = CANARY_KEY,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Running:
        running = Running(
            tuple(str(a) for a in args),
            self.env(sb, key=key, extra=env),
            cwd or self.cwd,
            self.logs,
        )
        self.started.append(running)
        return running

    def run(self, *args: str | Path, timeout: float = RUN_TIMEOUT_S, **options: Any) -> Done:
        return self.start(*args, **options).wait(timeout)

    def stop_all(self) -> None:
        """At teardown: kill -9 whatever this test started and left running."""
        for running in self.started:
            if running.alive():
                running.kill9()


def base_env(prefect_api: str, prefect_home: Path) -> dict[str, str]:
    """This process's environment without any API or videobatch settings, plus fast polling."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("APIMART_", "VIDEOBATCH_")) and k not in ("PREFECT_API_URL",)
    }
    env.update(
        PREFECT_API_URL=prefect_api,
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        **FAST_ENV,
        **DEBUG_LOGGING_ENV,
    )
    return env


# Every record at DEBUG, ours (apimart, videobatch) included, reaches the Prefect API, which
# `prefect_texts` reads back; the console keeps WARNING, so the command's output is unchanged.
DEBUG_LOGGING_ENV = {
    "PREFECT_LOGGING_LEVEL": "DEBUG",
    "PREFECT_LOGGING_ROOT_LEVEL": "DEBUG",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "apimart,videobatch",
    # Our loggers also log outside runs (the CLI's own steps): no warning about it on stderr.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


# --- the ledger, read-only, as a bystander ------------------------------------------------


def ledger_counts(out: Path) -> dict[str, int]:
    """States and their row counts, or {} while there is no readable ledger yet."""
    try:
        with Ledger(out, readonly=True) as ledger:
            return ledger.counts()
    except (FileNotFoundError, sqlite3.Error):
        return {}


def wait_for_ledger(
    out: Path,
    running: Running,
    until: Callable[[dict[str, int]], bool],
    *,
    what: str,
    on_disk: Callable[[Path], bool] | None = None,
    timeout: float = 180.0,  # a loaded CI machine: only a failing test waits it out
    every: float = 0.01,
) -> dict[str, int]:
    """Watch the ledger until `until(counts)` (and `on_disk(out)`, if given) holds; fail if
    the run ends first or time runs out."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, int]] = []
    while time.monotonic() < deadline:
        counts = ledger_counts(out)
        if counts and (not seen or seen[-1] != counts):
            seen.append(counts)
        if counts and until(counts) and (on_disk is None or on_disk(out)):
            return counts
        if not running.alive():
            done = running.wait()
            raise AssertionError(f"the run ended before {what}; ledger went {seen}\n{done}")
        time.sleep(every)
    raise AssertionError(f"no {what} within {timeout}s; ledger went {seen}")


# --- results and videos ---------------------------------------------------------------------


def results_table(out: Path) -> pa.Table:
    return pq.read_table(out / "results.parquet")


def statuses(out: Path) -> dict[str, str]:
    return {row_id: r["status"] for row_id, r in results(out).items()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream))


def assert_videos_intact(out: Path, ids: list[str] | None = None) -> None:
    """Every completed row's video is on disk, matches its recorded size and hash, decodes."""
    table = results(out)
    for row_id in ids if ids is not None else list(table):
        row = table[row_id]
        assert row["status"] == "completed", (row_id, row["status"], row["error_message"])
        path = out / row["video_path"]
        assert path.is_file(), f"{row_id}: no video at {path}"
        assert path.stat().st_size == row["video_bytes"], row_id
        assert sha256(path) == row["video_sha256"], f"{row_id}: hash differs from results"
        assert decoded_frames(path) > 0, f"{row_id}: video decodes to no frame"


def assert_no_canary_in_files(folder: Path) -> None:
    """No file under `folder` (ledger, WAL, results, report, videos, lock) holds a key."""
    checked = 0
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for canary in CANARIES:
                assert canary.encode() not in data, f"the API key is written in {path}"
            checked += 1
    assert checked, f"nothing to check under {folder}"


def prefect_texts(since: float) -> list[str]:
    """Log lines, flow-run parameters and state messages the Prefect API holds since `since`
    (epoch seconds): what a person with access to the Prefect UI could read."""
    from datetime import datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterStartTime,
        LogFilter,
        LogFilterTimestamp,
    )

    after = datetime.fromtimestamp(since, tz=UTC)
    texts: list[str] = []
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            logs = client.read_logs(
                log_filter=LogFilter(timestamp=LogFilterTimestamp(after_=after)),
                limit=200,
                offset=offset,
            )
            texts.extend(log.message for log in logs)
            if len(logs) < 200:
                break
            offset += 200
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=after)),
            limit=200,
        )
        for run in runs:
            texts.append(repr(run.parameters))
            if run.state is not None:
                texts.append(str(run.state.message))
    return texts
