"""How long the read-only commands take to answer: prints seconds, asserts nothing.

uv run python bench/startup.py [OUT]

OUT is a run's output folder (default: a folder with a real ledger of the demo manifest, made
in a temporary directory); `status` also reads a sharded folder of two such ledgers. Each
command runs as a fresh process, as a person would type it; the best of a few runs is printed
(the others measure the machine's load), and the import time of the heaviest modules each one
pulled in (`python -X importtime`).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "manifests" / "demo.csv"
TRIES = 3
WATCHED = ("prefect", "pandas", "pyarrow", "httpx", "pydantic", "typer", "rich")


def demo_folder(out: Path) -> Path:
    """A folder holding a real ledger of the demo manifest: every row known, none sent."""
    from tasks.store.ledger import Ledger
    from tasks.store.manifest import read_manifest

    manifest = read_manifest(str(DEMO))
    with Ledger(out) as ledger:
        ledger.set_meta("manifest", str(DEMO))
        ledger.set_meta("assets", "")
        for row in manifest.valid_rows:
            ledger.ensure(row.id, row.index)
    return out


def sharded_folder(out: Path) -> Path:
    """A folder as a sharded run leaves it: shards.json and one ledger per shard."""
    for k in range(2):
        demo_folder(out / "shards" / f"shard-{k}")
    (out / "shards.json").write_text("{}", encoding="utf-8")
    return out


def best_seconds(args: list[str]) -> float:
    times = []
    for _ in range(TRIES):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "videobatch.cli", *args], capture_output=True)
        times.append(time.perf_counter() - started)
    return min(times)


def heavy_imports(args: list[str]) -> str:
    """The watched top-level packages the command imported, with their cumulative ms."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "videobatch.cli", *args],
        capture_output=True,
        text=True,
    )
    found = {}
    for line in done.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] in WATCHED:
            found[parts[2]] = int(parts[1]) / 1000
    return ", ".join(f"{name} {ms:.0f} ms" for name, ms in found.items()) or "none of them"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(sys.argv[1]) if len(sys.argv) > 1 else demo_folder(Path(tmp) / "out")
        commands = [
            ["--help"],
            ["status", str(out)],
            ["status", str(sharded_folder(Path(tmp) / "sharded"))],
            ["validate", str(DEMO)],
            ["results", str(out)],
        ]
        # What any Python process costs here, to set the commands' times beside.
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        print(f"{'python -c pass':<28} {time.perf_counter() - started:5.2f} s")
        for args in commands:
            name = " ".join(Path(a).name if "/" in a else a for a in args)
            print(f"videobatch {name:<17} {best_seconds(args):5.2f} s   {heavy_imports(args)}")


if __name__ == "__main__":
    main()
