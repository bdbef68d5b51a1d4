"""What each command prints, and the exit code it returns. Imports of Prefect stay lazy here:
`videobatch --help` and `videobatch validate` should not pay for starting it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tasks.options import RunOptions

if TYPE_CHECKING:
    from tasks.manifest import Manifest

EXIT_OK, EXIT_INCOMPLETE, EXIT_STOPPED = 0, 1, 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
SANDBOX_TIME_SCALE = 0.04
SANDBOX_POLL_S = 1.0

# soft_wrap: a message is one line however narrow the terminal (and 80 columns in a pipe),
# so logs and `grep` see each row's problem whole.
out_console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# Ledger states that need no more work in this run.
_DONE_STATES = (
    "downloaded",
    "failed",
    "cancelled",
    "rejected",
    "download_failed",
    "skipped_budget",
    "skipped_payment",
    "unknown",
    "timeout",
)


def _manifest_or_exit(path: str) -> Manifest | None:
    from tasks.manifest import ManifestError, read_manifest

    try:
        return read_manifest(path)
    except ManifestError as exc:
        err.print(f"[bold red]cannot read the manifest:[/] {exc}")
        return None


def dry_run(options: RunOptions) -> int:
    from tasks.run import estimate_run

    manifest = _manifest_or_exit(options.manifest)
    if manifest is None:
        return EXIT_STOPPED
    for row in manifest.invalid_rows:
        out_console.print(f"[red]✗[/] {row.message}", highlight=False)
    est = estimate_run(manifest, options)
    out_console.print(
        f"{est.rows} rows: [green]{est.valid} valid[/], [red]{est.invalid} invalid[/]. "
        f"{est.valid} video{'' if est.valid == 1 else 's'}, estimated cost {est.cost:.2f} "
        f"(price table is an estimate), about {est.minutes_low:.0f}-{est.minutes_high:.0f} min "
        f"at concurrency {options.concurrency}. Nothing was sent."
    )
    return EXIT_OK if est.invalid == 0 else EXIT_INCOMPLETE


SANDBOX_NOTICE = "No real videos are made and nothing is paid."


def _key_configured() -> bool:
    """A key in the environment, or in the Secret block of a configured Prefect server."""
    if os.environ.get("APIMART_API_KEY"):
        return True
    if not os.environ.get("PREFECT_API_URL"):
        return False  # no server to hold a block; do not start one just to look
    from tasks.runtime import resolve_api_key

    return resolve_api_key() is not None


@contextmanager
def _sandbox_if_needed(options: RunOptions, forced: bool) -> Iterator[tuple[RunOptions, bool]]:
    """With --sandbox, or with neither a key nor an endpoint, run against the emulator.

    Yields the options to run with and whether they point at the emulator.
    """
    no_endpoint = not (options.base_url or os.environ.get("APIMART_BASE_URL"))
    if not forced and (not no_endpoint or _key_configured()):
        yield options, False
        return
    from apimart.sandbox import SandboxConfig, run_in_thread

    config = SandboxConfig(api_key="sk-sandbox-local", time_scale=SANDBOX_TIME_SCALE)
    with run_in_thread(config) as sandbox:
        err.print(
            "[bold yellow]SANDBOX: no API key and no endpoint given, so this run uses the "
            f"offline emulator at {sandbox.url}. {SANDBOX_NOTICE}[/]"
        )
        previous = os.environ.get("APIMART_API_KEY")
        os.environ["APIMART_API_KEY"] = config.api_key
        # The API's 8 s polling pace would make the emulator's fast tasks wait: poll every
        # second instead, unless the user chose a pace (a flag or VIDEOBATCH_POLL_*).
        update: dict[str, object] = {"base_url": sandbox.url}
        for name in ("poll_initial_delay", "poll_interval"):
            if getattr(options, name) == RunOptions.model_fields[name].default:
                update[name] = SANDBOX_POLL_S
        try:
            yield options.model_copy(update=update), True
        finally:
            if previous is None:
                os.environ.pop("APIMART_API_KEY", None)
            else:
                os.environ["APIMART_API_KEY"] = previous


class _Watcher:
    """Shows progress by reading the ledger (read-only) beside the running flow."""

    def __init__(self, out: Path, total: int) -> None:
        self.out, self.total = out, total
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _counts(self) -> dict[str, int]:
        from tasks.ledger import Ledger

        try:
            with Ledger(self.out, readonly=True) as ledger:
                return ledger.counts()
        except Exception:
            return {}

    def _loop(self) -> None:
        if sys.stderr.isatty():
            with Progress(
                TextColumn("[bold]videos"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            ) as bar:
                job = bar.add_task("", total=self.total)
                while not self._stop.wait(0.5):
                    counts = self._counts()
                    bar.update(job, completed=self._done(counts), description=self._line(counts))
            return
        last = ""
        while not self._stop.wait(5.0):
            line = self._line(self._counts())
            if line and line != last:
                err.print(f"progress: {line}", highlight=False)
                last = line

    def _done(self, counts: dict[str, int]) -> int:
        return sum(counts.get(s, 0) for s in _DONE_STATES)

    def _line(self, counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)

    def __enter__(self) -> _Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run(options: RunOptions, *, sandbox: bool) -> int:
    from tasks.gate import RunStopped
    from tasks.ledger import LedgerLocked
    from tasks.run import RunRefused

    manifest = _manifest_or_exit(options.manifest)
    if manifest is None:
        return EXIT_STOPPED
    for row in manifest.invalid_rows:
        err.print(f"[red]invalid, not sent:[/] {row.message}", highlight=False)
    from flows.generate import generate_videos

    try:
        with _sandbox_if_needed(options, sandbox) as (effective, emulated):
            try:
                with _Watcher(Path(effective.out), len(manifest.valid_rows)):
                    outcome = asyncio.run(generate_videos(options=effective))
            except (RunRefused, LedgerLocked) as exc:
                err.print(f"[bold red]not started:[/] {exc}")
                return EXIT_STOPPED
            except RunStopped as exc:
                err.print(f"[bold red]stopped:[/] {exc}. Results so far are in {effective.out}.")
                return EXIT_STOPPED
    except KeyboardInterrupt:
        mid_post = _results_after_interrupt(options, manifest)
        err.print(
            "[bold yellow]interrupted.[/] Nothing paid is lost: every task id sent so far is in "
            f"{options.out}/ledger.sqlite. Run the same command again to resume"
            + (
                f"; results so far are in {options.out}/results.parquet."
                if mid_post is not None
                else "."
            )
        )
        if mid_post:
            err.print(
                f"{mid_post} rows were cut off mid-POST: their outcome is unknown, so the next "
                "run holds them until you pass --resubmit-unknown."
            )
        return EXIT_INTERRUPTED
    _print_statuses(outcome["statuses"], title=f"videobatch {effective.out}")
    out_console.print(f"results: {effective.out}/results.parquet and results.csv")
    if emulated:
        # Also on stdout: whoever reads only the results must not take them for real videos.
        out_console.print(
            f"[bold yellow]SANDBOX run: these videos come from the offline emulator. "
            f"{SANDBOX_NOTICE}[/]"
        )
    return EXIT_OK if outcome["completed"] == outcome["rows"] else EXIT_INCOMPLETE


def _results_after_interrupt(options: RunOptions, manifest: Manifest) -> int | None:
    """Write the results table from the ledger as it stands when a run is cut short; return
    how many rows were mid-POST (None when there was nothing to write from)."""
    from tasks.ledger import DOUBTFUL, Ledger
    from tasks.results import build_results, write_results

    try:
        with Ledger(options.out, readonly=True) as ledger:
            records = ledger.all()
        table = build_results(manifest, records, prices=options.prices)
        write_results(table, Path(options.out))
    except Exception:
        return None
    return sum(1 for r in records.values() if r.state in DOUBTFUL)


def _print_statuses(statuses: dict[str, int], *, title: str) -> None:
    table = Table(title=title)
    table.add_column("status")
    table.add_column("rows", justify="right")
    for name, count in sorted(statuses.items(), key=lambda kv: -kv[1]):
        table.add_row(name, str(count))
    out_console.print(table)


def _is_sharded(out: Path) -> bool:
    """OUT holds a sharded run's plan and no ledger of its own."""
    from tasks.ledger import LEDGER_FILE
    from tasks.shards import PLAN_FILE

    return not (out / LEDGER_FILE).exists() and (out / PLAN_FILE).exists()


def _ledger_folders(out: Path) -> list[Path]:
    """OUT itself, or the shard folders of a sharded run into OUT."""
    if not _is_sharded(out):
        return [out]
    from tasks.ledger import LEDGER_FILE
    from tasks.shards import SHARDS_DIR

    return sorted(p for p in (out / SHARDS_DIR).glob("shard-*") if (p / LEDGER_FILE).exists())


def status(out: Path) -> int:
    from collections import Counter

    from tasks.ledger import DOUBTFUL, LOCK_FILE, Ledger

    counts: Counter[str] = Counter()
    spent = at_risk = 0.0
    unknown = 0
    holders = []
    for folder in _ledger_folders(out):
        try:
            ledger = Ledger(folder, readonly=True)
        except FileNotFoundError as exc:
            err.print(str(exc))
            return EXIT_STOPPED
        with ledger:
            counts.update(ledger.counts())
            spent += ledger.spent()
            at_risk += ledger.committed_cost()
            unknown += sum(r.state in DOUBTFUL for r in ledger.all().values())
        lock = folder / LOCK_FILE
        if lock.exists() and lock.read_text().strip():
            holders.append(lock.read_text().strip())
    _print_statuses(dict(counts), title=f"ledger of {out}")
    out_console.print(
        f"spent {spent:.2f}; spent or reserved {at_risk:.2f}; "
        f"{unknown} rows with an unknown POST outcome"
        + (f"; last run: {', '.join(sorted(set(holders)))}" if holders else "")
    )
    return EXIT_OK


def rebuild_results(out: Path, manifest_path: Path | None) -> int:
    from tasks.ledger import Ledger
    from tasks.results import build_results, write_results

    if _is_sharded(out):
        from tasks.shards import merge_shards, saved_plan

        plan = saved_plan(out)
        assert plan is not None
        table = merge_shards(plan)
        out_console.print(f"merged {len(plan.shards)} shards into {out} ({table.num_rows} rows)")
        return EXIT_OK
    try:
        ledger = Ledger(out, readonly=True)
    except FileNotFoundError as exc:
        err.print(str(exc))
        return EXIT_STOPPED
    with ledger:
        path = str(manifest_path) if manifest_path else ledger.meta("manifest")
        if not path:
            err.print("the ledger does not name its manifest: pass --manifest")
            return EXIT_STOPPED
        manifest = _manifest_or_exit(path)
        if manifest is None:
            return EXIT_STOPPED
        table = build_results(manifest, ledger.all())
    parquet, csv = write_results(table, out)
    out_console.print(f"wrote {parquet} and {csv} ({table.num_rows} rows)")
    return EXIT_OK


def report(out: Path) -> int:
    from tasks.report import write_report

    if not (out / "results.parquet").exists():
        err.print(f"no results in {out}: run `videobatch results {out}` first")
        return EXIT_STOPPED
    out_console.print(f"wrote {write_report(out)}")
    return EXIT_OK


def serve_sandbox(
    *,
    host: str,
    port: int,
    api_key: str,
    time_scale: float,
    seed: int,
    faults: str | None,
    submit_shape: str,
    url_shape: str,
) -> int:
    from apimart.sandbox import config_from_options, serve

    try:
        config = config_from_options(
            api_key=api_key,
            time_scale=time_scale,
            seed=seed,
            faults=faults,
            submit_shape=submit_shape,  # type: ignore[arg-type]
            url_shape=url_shape,  # type: ignore[arg-type]
        )
    except ValueError as exc:
        err.print(f"[bold red]bad sandbox options:[/] {exc}")
        return EXIT_STOPPED
    err.print(f"sandbox on http://{host}:{port} (key {api_key!r}); Ctrl-C stops it")
    started = time.monotonic()
    serve(config, host=host, port=port)
    err.print(f"sandbox stopped after {time.monotonic() - started:.0f}s")
    return EXIT_OK
