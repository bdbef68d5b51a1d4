"""What the benchmarks share: a sandbox in its own process, manifests, resource readings.

The sandbox runs as a separate process so that the CPU a benchmark reports is the client's
(and Prefect's) alone, never the emulated vendor's.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_manifest(path: Path, rows: int, *, duration: int = 4, resolution: str = "720p") -> Path:
    """A CSV manifest of `rows` distinct prompts, all of one size (so videos can be shared)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt", "duration", "resolution"])
        for i in range(rows):
            writer.writerow([f"b{i:06d}", f"benchmark clip {i}", duration, resolution])
    return path


@dataclass(frozen=True)
class Sandbox:
    url: str
    pid: int

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/_sandbox/stats", timeout=30).json())


@contextlib.contextmanager
def sandbox_process(*, time_scale: float, shared_videos: bool = True) -> Iterator[Sandbox]:
    """A sandbox on a free loopback port in its own process, until exit."""
    port = free_port()
    config = {"api_key": API_KEY, "time_scale": time_scale, "shared_videos": shared_videos}
    code = (
        "import json, sys\n"
        "from apimart.sandbox import SandboxConfig\n"
        "from apimart.sandbox.server import serve\n"
        f"serve(SandboxConfig.from_mapping(json.loads(sys.argv[1])), port={port})\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/_sandbox/stats", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the sandbox did not start") from None
                time.sleep(0.1)
        yield Sandbox(url=url, pid=proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def peak_rss_mb(pid: int) -> float:
    """The high-water mark of a running process's resident memory (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def print_table(rows: list[dict[str, Any]]) -> None:
    """Rows as a markdown table, columns in first-seen order (a missing cell stays empty)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
