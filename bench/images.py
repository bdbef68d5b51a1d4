"""Memory and time of reading a manifest whose every row has its own local image.

Writes ROWS distinct PNGs of about KB kilobytes each (noise, so they do not compress) next to
a CSV manifest, then measures, each in a fresh process:

* `read_manifest`: wall time, peak RSS (ru_maxrss of the child), and the bytes of text the
  rows' requests hold in their image entries (what the run would keep for its whole length);
* `videobatch validate`: wall time and peak RSS.

Numbers only, no asserts. `uv run python bench/images.py --rows 2000 --kb 200`

Measured on the 2-core machine, 2 December 2026, load average 10-13 (so wall times are upper
bounds; CPU seconds are the fairer comparison), 2,000 rows of distinct ~200 KiB PNGs (391 MiB):

| | read peak RSS | base64 held | read CPU | validate peak RSS | validate CPU / wall |
|---|---|---|---|---|---|
| data URIs held (before) | 654 MiB | 520.8 MiB | 6.4-7.1 s | 668 MiB | 5.6-7.8 s / 18-32 s |
| references (now) | 134 MiB | 0 | 4.4-5.0 s | 148-151 MiB | 4.5-5.2 s / 15-19 s |
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_READ = """
import json, resource, sys, time
started = time.perf_counter()
from tasks.store.manifest import read_manifest
manifest = read_manifest(sys.argv[1])
wall = time.perf_counter() - started
held = sum(len(u) if isinstance(u, str) else 0
           for r in manifest.rows if r.request is not None
           for u in getattr(r.request.image_urls, "sources", r.request.image_urls))
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall_s": wall, "rss_mib": rss, "valid": len(manifest.valid_rows),
                  "image_text_bytes": held}))
"""


def png(seed: int, kb: int) -> bytes:
    """A valid RGB PNG of about `kb` KiB of noise (zlib cannot shrink it)."""
    side = max(1, int((kb * 1024 / 3) ** 0.5))
    raw = b"".join(b"\x00" + os.urandom(side * 3) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    del seed  # distinct by its noise; the seed only names the file
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 1))
        + chunk(b"IEND", b"")
    )


def write_manifest(folder: Path, rows: int, kb: int) -> Path:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    path = folder / "m.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt", "duration", "image_urls"])
        for i in range(rows):
            name = f"images/p{i:06d}.png"
            (folder / name).write_bytes(png(i, kb))
            writer.writerow([f"r{i:06d}", f"clip {i}", 4, name])
    return path


def _child(command: list[str]) -> tuple[str, float, float, float, int]:
    """(stdout, wall s, CPU s, peak RSS MiB, exit code) of a fresh process, waited with wait4:
    on a shared machine CPU seconds say more than wall time."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    cpu = usage.ru_utime + usage.ru_stime
    return out, wall, cpu, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def measure_read(manifest: Path) -> dict[str, float]:
    out, _, cpu, _, _ = _child([sys.executable, "-c", _READ, str(manifest)])
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    result["cpu_s"] = cpu
    return result


def measure_validate(manifest: Path) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS MiB, exit code) of `videobatch validate MANIFEST`."""
    _, wall, cpu, rss, code = _child(
        [sys.executable, "-m", "videobatch.cli", "validate", str(manifest)]
    )
    return wall, cpu, rss, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--kb", type=int, default=200)
    parser.add_argument("--folder", type=Path, default=None, help="reuse or keep the files here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-images-") as scratch:
        folder = args.folder or Path(scratch)
        manifest = folder / "m.csv"
        if not manifest.exists():
            started = time.perf_counter()
            write_manifest(folder, args.rows, args.kb)
            took = time.perf_counter() - started
            print(f"wrote {args.rows} images of ~{args.kb} KiB in {took:.1f} s")
        size = sum(p.stat().st_size for p in (folder / "images").iterdir())
        print(f"images on disk: {size / 2**20:.0f} MiB")
        read = measure_read(manifest)
        print(
            f"read_manifest: {read['wall_s']:.2f} s wall, {read['cpu_s']:.2f} s CPU (process), "
            f"peak RSS {read['rss_mib']:.0f} MiB, "
            f"{read['valid']:.0f} valid rows, "
            f"image text held {read['image_text_bytes'] / 2**20:.1f} MiB"
        )
        wall, cpu, rss, code = measure_validate(manifest)
        print(
            f"videobatch validate: {wall:.2f} s wall, {cpu:.2f} s CPU, "
            f"peak RSS {rss:.0f} MiB (exit {code})"
        )


if __name__ == "__main__":
    main()
