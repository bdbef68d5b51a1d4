"""Scale: manifests of 1k, 10k, 100k rows through `videobatch run`, against the floor.

For each size: `videobatch validate` time; one `videobatch run` (a fresh process, as a person
would start it) reporting to a Prefect server started by `videobatch server`, against a sandbox
in its own process (time compressed, shared small videos); then `bench/floor.py`'s plain
asyncio + httpx doing the same calls. Prints wall time, CPU (the run's process plus the
Prefect server's, the sandbox's), peak RSS per process, task runs, queries per video, and
whether the server logged that its in-memory message queues dropped anything; asserts nothing.
While a run goes, a progress line (rows downloaded, RSS so far, rate) is printed every
`--progress-every` seconds, so a run that cannot finish still says how far it got.

    uv run python bench/scale.py --rows 1000 10000 --concurrency 200 --poll 0.5
    uv run python bench/scale.py --rows 2000 --no-floor --profile /tmp/prof   # py-spy the run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    API_KEY,
    ROOT,
    free_port,
    peak_rss_mb,
    print_table,
    process_cpu_seconds,
    sandbox_process,
    write_manifest,
)
from floor import floor

# What Prefect 3.8 logs when a full in-memory queue loses a message or an event
# (prefect/server/utilities/messaging/memory.py, prefect/server/events/services/event_persister.py).
DROPPED_MARKERS = ("queue is full, dropping", "dropping event", "events that failed to flush",
                   "Max flush retries")  # fmt: skip


def current_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def videobatch(
    *args: str,
    env: dict[str, str],
    profile: Path | None = None,
    on_start: Any = None,
) -> tuple[float, float, float, int]:
    """Run `videobatch ARGS` to the end: (wall s, CPU s, peak RSS MiB, exit code).

    With `profile`, the run goes under `py-spy record` (every thread, native frames off) and
    the flame data lands there; CPU and RSS then include py-spy's own small share.
    """
    command = [sys.executable, "-m", "videobatch.cli", *args]
    if profile is not None:
        command = ["py-spy", "record", "--threads", "--rate", "200", "--format", "raw",
                   "-o", str(profile), "--", *command]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if on_start is not None:
        on_start(proc.pid)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        print(stderr.decode(errors="replace")[-2000:], file=sys.stderr)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode


class PrefectServer:
    """`videobatch server` on a free port, in its own process group."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        env = dict(os.environ, PREFECT_HOME=str(home))
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / "server.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "videobatch.cli", "server", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.api = f"http://127.0.0.1:{self.port}/api"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Prefect server did not start")
            time.sleep(0.5)

    def pids(self) -> list[int]:
        """The server's processes (the CLI, prefect, uvicorn workers)."""
        found = subprocess.run(
            ["pgrep", "-g", str(self.proc.pid)], capture_output=True, text=True
        ).stdout.split()
        return [int(p) for p in found]

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(p) for p in self.pids() if Path(f"/proc/{p}").exists())

    def peak_rss_mb(self) -> float:
        return max(peak_rss_mb(p) for p in self.pids() if Path(f"/proc/{p}").exists())

    def current_rss_mb(self) -> float:
        return max(current_rss_mb(p) for p in self.pids() if Path(f"/proc/{p}").exists())

    def dropped_lines(self) -> list[str]:
        """Server log lines saying a full in-memory queue dropped a message or an event."""
        text = self.log.read_text(errors="replace")
        return [line for line in text.splitlines() if any(m in line for m in DROPPED_MARKERS)]

    def task_runs(self) -> int:
        return int(httpx.post(f"{self.api}/task_runs/count", json={}, timeout=60).json())

    def stop(self) -> None:
        os.killpg(self.proc.pid, 15)
        self.proc.wait(timeout=60)


def queries(stats: dict[str, Any]) -> int:
    return sum(stats["queries_by_task"].values())


class Progress(threading.Thread):
    """Prints, every `every` seconds, how far a run got: videos served, RSS, rate."""

    def __init__(self, sandbox: Any, server: PrefectServer, rows: int, every: float) -> None:
        super().__init__(daemon=True)
        self.sandbox, self.server, self.rows, self.every = sandbox, server, rows, every
        self.pid: int | None = None
        self.done = threading.Event()
        before = sandbox.stats()
        self.start_downloads = len(before["downloads_by_task"])
        self.start_submits = before["submit_requests"]
        self.peak_run = 0.0

    def run(self) -> None:
        started = time.monotonic()
        while not self.done.wait(self.every):
            try:
                stats = self.sandbox.stats()
                got = len(stats["downloads_by_task"]) - self.start_downloads
                run_rss = current_rss_mb(self.pid) if self.pid else float("nan")
                run_cpu = process_cpu_seconds(self.pid) if self.pid else float("nan")
                elapsed = time.monotonic() - started
                print(
                    f"  [{elapsed:7.0f} s] downloaded {got}/{self.rows} "
                    f"({got / elapsed:.1f} rows/s), "
                    f"submitted {stats['submit_requests'] - self.start_submits}, "
                    f"run RSS {run_rss:.0f} MiB (CPU {run_cpu:.0f} s), "
                    f"server RSS {self.server.current_rss_mb():.0f} MiB, "
                    f"sandbox RSS {current_rss_mb(self.sandbox.pid):.0f} MiB, "
                    f"dropped-event lines {len(self.server.dropped_lines())}",
                    flush=True,
                )
            except (OSError, httpx.HTTPError, ValueError) as exc:  # a process just ended
                print(f"  progress: {exc!r}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--poll", type=float, default=0.5, help="fixed poll interval, s")
    parser.add_argument("--time-scale", type=float, default=0.01)
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--floor-max-rows", type=int, default=10_000,
                        help="skip the floor for larger sizes")  # fmt: skip
    parser.add_argument("--progress-every", type=float, default=60.0, help="s between lines")
    parser.add_argument("--profile", type=Path, help="py-spy each run into DIR/run-<rows>.txt")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vb-scale-"))
    server = PrefectServer(work / "prefect")
    rows_out: list[dict[str, Any]] = []
    try:
        with sandbox_process(time_scale=args.time_scale) as sandbox:
            env = dict(
                os.environ,
                APIMART_API_KEY=API_KEY,
                PREFECT_API_URL=server.api,
                PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING",
            )
            for rows in args.rows:
                manifest = write_manifest(work / f"m{rows}.csv", rows)
                validate_s, _, validate_rss, _ = videobatch("validate", str(manifest), env=env)
                before_stats, before_runs = sandbox.stats(), server.task_runs()
                before_cpu = server.cpu_seconds()
                before_sandbox_cpu = process_cpu_seconds(sandbox.pid)
                poll = str(args.poll)
                progress = Progress(sandbox, server, rows, args.progress_every)

                def started(pid: int, progress: Progress = progress) -> None:
                    progress.pid = pid
                    progress.start()

                profile = None
                if args.profile is not None:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    profile = args.profile / f"run-{rows}.txt"
                print(f"{rows} rows: validated in {validate_s:.1f} s; running", flush=True)
                wall, cpu, rss, code = videobatch(
                    "run", str(manifest), "--out", str(work / f"out{rows}"),
                    "--base-url", sandbox.url, "--concurrency", str(args.concurrency),
                    "--submit-rate", "1000", "--poll-interval", poll,
                    "--poll-initial-delay", poll, "--max-queries-per-s", "1000",
                    "--no-report", env=env, profile=profile, on_start=started,
                )  # fmt: skip
                progress.done.set()
                after = sandbox.stats()
                dropped = server.dropped_lines()
                made = after["tasks_created"] - before_stats["tasks_created"]
                row: dict[str, Any] = {
                    "rows": rows,
                    "validate s": round(validate_s, 1),
                    "validate MiB": round(validate_rss),
                    "run wall s": round(wall, 1),
                    "exit": code,
                    "tasks made": made,
                    "task runs": server.task_runs() - before_runs,
                    "queries/video": round((queries(after) - queries(before_stats)) / made, 2),
                    "run CPU s": round(cpu, 1),
                    "server CPU s": round(server.cpu_seconds() - before_cpu, 1),
                    "run peak MiB": round(rss),
                    "server peak MiB": round(server.peak_rss_mb()),
                    "sandbox CPU s": round(
                        process_cpu_seconds(sandbox.pid) - before_sandbox_cpu, 1
                    ),
                    "sandbox peak MiB": round(peak_rss_mb(sandbox.pid)),
                    "dropped-event lines": len(dropped),
                }
                for line in dropped[:5]:
                    print(f"  server: {line}", flush=True)
                if not args.no_floor and rows <= args.floor_max_rows:
                    base = asyncio.run(floor(sandbox.url, rows, args.concurrency, args.poll))
                    row["floor wall s"] = base["wall_s"]
                    row["floor CPU s"] = base["client_cpu_s"]
                    row["wall x floor"] = round(wall / base["wall_s"], 2)
                    total = cpu + row["server CPU s"]
                    row["CPU x floor"] = round(total / max(base["client_cpu_s"], 0.01), 1)
                rows_out.append(row)
                print(row, flush=True)
    finally:
        server.stop()
    print()
    print_table(rows_out)


if __name__ == "__main__":
    main()
