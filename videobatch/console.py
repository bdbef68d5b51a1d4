"""What each command prints, and the exit code it returns.

Imports stay lazy here, each inside the command that needs it: `videobatch --help` and `status`
import neither Prefect nor pandas, `validate` and `results` not Prefect, so the read-only
commands answer at once (tests/cli/test_startup_budget.py pins it; bench/startup.py times it).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rich.console import Console

# Light (the standard library only): every command may import them.
from tasks.errors import (
    InboxRefused,
    LayoutMismatch,
    LedgerLocked,
    ManifestError,
    RunRefused,
    RunStopped,
    ShardPlanError,
    TaskNotRecorded,
    VideobatchError,
)
from tasks.run import environment  # RunOptions and pydantic, no Prefect
from tasks.store.states import DONE, DOUBTFUL

if TYPE_CHECKING:
    from tasks.run.duration import DurationModel
    from tasks.run.options import RunOptions
    from tasks.store.ledger import Ledger
    from tasks.store.manifest import Manifest

EXIT_OK, EXIT_INCOMPLETE, EXIT_STOPPED = 0, 1, 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
SANDBOX_TIME_SCALE = 0.04
SANDBOX_POLL_S = 1.0

# soft_wrap: a message is one line however narrow the terminal (and 80 columns in a pipe),
# so logs and `grep` see each row's problem whole.
out_console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


# --- the application's errors at the boundary: one line each, and an exit code ------------

# What the command line says of each error of tasks/errors.py (see its tree): the words the
# line starts with, the rest of the line, and the exit code. The first class that matches wins,
# so subclasses (ManifestConflict is a RunRefused) come before what they derive from.
_FAILURES: tuple[tuple[type[VideobatchError], str, str, int], ...] = (
    (RunStopped, "stopped", "{exc}. Results so far are in {out}.", EXIT_STOPPED),
    (TaskNotRecorded, "stopped", "{exc}. Results so far are in {out}.", EXIT_STOPPED),
    (ManifestError, "cannot read the manifest", "{exc}", EXIT_STOPPED),
    (RunRefused, "not started", "{exc}", EXIT_STOPPED),
    (LedgerLocked, "not started", "{exc}", EXIT_STOPPED),
    (LayoutMismatch, "not started", "{exc}", EXIT_STOPPED),
    (ShardPlanError, "not started", "{exc}", EXIT_STOPPED),
    (InboxRefused, "not started", "{exc}", EXIT_STOPPED),
    (VideobatchError, "stopped", "{exc}", EXIT_STOPPED),
)


def failure(exc: BaseException, out: str | Path = "") -> tuple[str, int] | None:
    """The one line the command line prints for an application error, and its exit code;
    None for anything else (a bug, whose traceback should show)."""
    for cls, words, rest, code in _FAILURES:
        if isinstance(exc, cls):
            return f"{words}: {rest.format(exc=exc, out=out)}", code
    return None


def _report(exc: BaseException, out: str | Path = "") -> int | None:
    """Print an application error's one line and return its exit code; None (nothing
    printed) for anything else."""
    said = failure(exc, out)
    if said is None:
        return None
    line, code = said
    words, _, rest = line.partition(": ")
    err.print(f"[bold red]{words}:[/] {rest}", highlight=False)
    return code


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """While a flow runs in this process, keep Prefect's own report of an error we report in
    one line off the console.

    The engine logs the exception that ends a task run or the flow run (traceback and all,
    then "Finished in state Failed(...)") at ERROR. For the application's errors, and for the
    API errors that stop a run (401/403, no such route, an unsendable request), the boundary
    says it in one line instead. Only the console handlers are filtered: the Prefect API (and
    its UI) still gets every record, and any other error still shows with its traceback.
    """
    from apimart.errors import AuthenticationError, EndpointNotFound, UnsendableRequest

    stops_the_run = (AuthenticationError, EndpointNotFound, UnsendableRequest)

    def reported(exc: BaseException) -> bool:
        return failure(exc) is not None or isinstance(exc, stops_the_run)

    names = _class_names(VideobatchError)
    for base in stops_the_run:
        names |= _class_names(base)
    engine = ("prefect.flow_runs", "prefect.task_runs")

    def keep(record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and reported(record.exc_info[1]):
            return False
        if (
            record.name.startswith(engine)
            and record.msg
            and str(record.msg).startswith("Finished in state")
        ):
            text = record.getMessage()
            return not any(f"{name}:" in text for name in names)
        return True

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


def _class_names(cls: type[BaseException]) -> set[str]:
    """The names of `cls` and of every class derived from it."""
    names = {cls.__name__}
    for sub in cls.__subclasses__():
        names |= _class_names(sub)
    return names


def _manifest_or_exit(path: str, assets: str | None) -> Manifest | None:
    from tasks.store.manifest import read_manifest

    try:
        return read_manifest(path, assets=assets)
    except ManifestError as exc:
        _report(exc)
        return None


def dry_run(options: RunOptions) -> int:
    from tasks.run.estimate import estimate_run

    manifest = _manifest_or_exit(options.manifest, options.assets)
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
    if environment.api_key():
        return True
    if not environment.prefect_api_url():
        return False  # no server to hold a block; do not start one just to look
    return environment.resolve_api_key() is not None


@contextmanager
def _sandbox_if_needed(options: RunOptions, forced: bool) -> Iterator[tuple[RunOptions, bool]]:
    """With --sandbox, or with neither a key nor an endpoint, run against the emulator.

    Yields the options to run with and whether they point at the emulator.
    """
    no_endpoint = not (options.base_url or environment.base_url())
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
        # The API's 8 s polling pace would make the emulator's fast tasks wait: poll every
        # second instead, unless the user chose a pace (a flag or VIDEOBATCH_POLL_*), even
        # one equal to the default: "not set" is told from "set to 8" by the fields set.
        update: dict[str, object] = {"base_url": sandbox.url}
        for name in ("poll_initial_delay", "poll_interval"):
            if name not in options.model_fields_set:
                update[name] = SANDBOX_POLL_S
        # The run reads its key from the process environment, as with a real key.
        with environment.exported({environment.API_KEY: config.api_key}):
            yield options.model_copy(update=update), True


def _run_ledger_readonly(out: str) -> Ledger:
    """The ledger a run into `out` writes, opened read-only: the batch of the shared ledger
    named by VIDEOBATCH_LEDGER_URL, the staging folder's file for a store location, else
    `OUT/ledger.sqlite`. (Heavy imports only here: a run has loaded them already.)"""
    from tasks.store.ledger import Ledger, connect_ledger

    url = environment.ledger_url()
    if url:
        from tasks.run.lifecycle import batch_name

        return connect_ledger(url, batch=batch_name(out), readonly=True)
    from tasks.store.storage import is_url

    if is_url(out):
        from tasks.run.lifecycle import staging_root
        from tasks.store.storage import staging_folder

        return Ledger(staging_folder(out, staging_root()), readonly=True)
    return Ledger(out, readonly=True)


def _ledger_place(out: str) -> str:
    """Where a person finds the run's ledger, in words (never the URL: it may hold a password)."""
    if environment.ledger_url():
        return f"the shared ledger ({environment.LEDGER_URL}), batch {out}"
    return f"{out}/ledger.sqlite"


# The progress line's ETA reads the submission times of the tasks in flight at most this
# often, and never more than 1/ETA_READ_SHARE of the time (a 100,000-row ledger is slow to read).
ETA_READ_EVERY_S = 5.0
ETA_READ_SHARE = 0.05
# A plain progress line whose counts did not change (only its ETA did) is printed again at
# most this often: a log of an hours-long run is not one line per 5 s.
PLAIN_REPEAT_S = 30.0


class _LedgerEta:
    """The run's ETA as the progress artifact has it (`tasks.run.polling.eta_seconds`: the
    duration model, the rows left, the concurrency cap), from what the ledger holds: the
    model the run keeps in its meta (the configured prior until a task has finished), the
    rows not yet done, and the submission times of the tasks in flight."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self._stored: str | None = None
        self._model: DurationModel | None = None
        self._submitted: list[float] = []
        self._read_after = -float("inf")

    def seconds(self, ledger: Ledger, counts: dict[str, int], total: int) -> float | None:
        """None when the ledger cannot say (it is a window: never worth an error)."""
        from tasks.run.duration import DurationModel
        from tasks.run.polling import eta_seconds, stored_model
        from tasks.store.states import State

        try:
            stored = ledger.meta(DurationModel.META_KEY)
            if self._model is None or stored != self._stored:
                self._model, self._stored = stored_model(stored, self.options), stored
            started = time.monotonic()
            if started >= self._read_after:
                self._submitted = [
                    r.submitted_at
                    for r in ledger.all().values()
                    if r.state == State.SUBMITTED and r.submitted_at is not None
                ]
                took = time.monotonic() - started
                self._read_after = started + max(ETA_READ_EVERY_S, took / ETA_READ_SHARE)
            # Rows whose task completed are only being downloaded: no task left to wait for.
            done = sum(counts.get(s, 0) for s in DONE) + counts.get(State.COMPLETED, 0)
            now = time.time()
            return eta_seconds(
                self._model,
                unfinished=max(0, total - done),
                running=[now - at for at in self._submitted],
                concurrency=self.options.concurrency,
            )
        except Exception:
            return None


class _Watcher:
    """Shows progress by reading the ledger (read-only) beside the running flow: the rows by
    state and, given the run's options, the ETA (`_LedgerEta`)."""

    # `Ledger.counts()` groups every row: every 0.5 s it took 3.6 % of a 100,000-row run's
    # CPU (bench/scale-profile.md). A bar moving every 2 s still reads as live.
    BAR_EVERY_S = 2.0
    PLAIN_EVERY_S = 5.0

    def __init__(self, out: str | Path, total: int, *, options: RunOptions | None = None) -> None:
        self.out, self.total = str(out), total
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._ledger: Ledger | None = None
        self._eta = _LedgerEta(options) if options is not None else None

    def _counts(self) -> dict[str, int]:
        try:
            # Opened once it exists, then kept: a shared ledger is a connection pool.
            self._ledger = self._ledger or _run_ledger_readonly(self.out)
            return self._ledger.counts()
        except Exception:
            return {}

    def _loop(self) -> None:
        if sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

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
                while not self._stop.wait(self.BAR_EVERY_S):
                    counts = self._counts()
                    bar.update(job, completed=self._done(counts), description=self._line(counts))
            return
        last, last_counts, printed = "", "", -float("inf")
        while not self._stop.wait(self.PLAIN_EVERY_S):
            counts = self._counts()
            line, now = self._line(counts), time.monotonic()
            if not line or line == last:
                continue
            if self._states(counts) == last_counts and now - printed < PLAIN_REPEAT_S:
                continue  # only the ETA moved
            err.print(f"progress: {line}", highlight=False)
            last, last_counts, printed = line, self._states(counts), now

    def _done(self, counts: dict[str, int]) -> int:
        return sum(counts.get(s, 0) for s in DONE)

    def _states(self, counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)

    def _line(self, counts: dict[str, int]) -> str:
        """e.g. "downloaded 12, submitted 8, eta 4m10s"."""
        line = self._states(counts)
        if line and self._eta is not None and self._ledger is not None:
            seconds = self._eta.seconds(self._ledger, counts, self.total)
            if seconds is not None:
                from tasks.run.polling import eta_clock

                line += f", eta {eta_clock(seconds)}"
        return line

    def __enter__(self) -> _Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._ledger is not None and not self._thread.is_alive():
            self._ledger.close()


def run(options: RunOptions, *, sandbox: bool) -> int:
    manifest = _manifest_or_exit(options.manifest, options.assets)
    if manifest is None:
        return EXIT_STOPPED
    refusal = _refusal_before_start(options, manifest, sandbox=sandbox)
    if refusal:
        # The flow refuses too (for deployment runs); said here, it is said before Prefect
        # starts, in one line and without a traceback.
        err.print(f"[bold red]not started:[/] {refusal}", highlight=False)
        return EXIT_STOPPED
    for row in manifest.invalid_rows:
        err.print(f"[red]invalid, not sent:[/] {row.message}", highlight=False)
    import asyncio

    from flows.generate import generate_videos

    try:
        with _sandbox_if_needed(options, sandbox) as (effective, emulated):
            try:
                watcher = _Watcher(effective.out, len(manifest.valid_rows), options=effective)
                with watcher, _one_line_errors():
                    outcome = asyncio.run(generate_videos(options=effective))
            except Exception as exc:
                code = _report(exc, effective.out)
                if code is None:
                    raise
                return code
    except KeyboardInterrupt:
        mid_post = _results_after_interrupt(options, manifest)
        err.print(
            "[bold yellow]interrupted.[/] Nothing paid is lost: every task id sent so far is in "
            f"{_ledger_place(options.out)}. Run the same command again to resume"
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
    held = outcome.get("held") or []
    if held:
        _print_rows(
            f"[bold red]{len(held)} rows held[/] (not sent, not relabelled: their paid task was "
            "made from another version of the row; status `conflict` in the results):",
            [f"held: {message}" for message in held],
            "Nothing is paid twice: give a changed row a new id (it is then sent as a new row), "
            "or restore it (its task is then polled and downloaded).",
        )
    if emulated:
        # Also on stdout: whoever reads only the results must not take them for real videos.
        out_console.print(
            f"[bold yellow]SANDBOX run: these videos come from the offline emulator. "
            f"{SANDBOX_NOTICE}[/]"
        )
    if held:
        return EXIT_INCOMPLETE
    return EXIT_OK if outcome["completed"] == outcome["rows"] else EXIT_INCOMPLETE


def _refusal_before_start(options: RunOptions, manifest: Manifest, *, sandbox: bool) -> str | None:
    """What the flow would refuse the run for, checked without starting Prefect: the folder's
    layout, a key that cannot be sent, a folder that belongs to another manifest."""
    from apimart.client import check_api_key
    from apimart.errors import AuthenticationError

    out = Path(options.out)
    refusal = _layout_refusal(out, "plain")
    if refusal:
        return refusal
    key = environment.api_key()
    if key and not sandbox:
        try:
            check_api_key(key)
        except AuthenticationError as exc:
            return f"{exc}. Nothing was sent."
    from tasks.store.conflicts import ledger_conflicts
    from tasks.store.ledger import LEDGER_FILE, Ledger

    if not (out / LEDGER_FILE).exists():
        return None
    try:
        with Ledger(out, readonly=True) as ledger:
            records = ledger.all()
    except Exception:
        return None  # the run itself opens the ledger and says what is wrong with it
    return ledger_conflicts(manifest, records).refusal(out)


def _layout_refusal(out: Path, want: Literal["plain", "sharded"] | None) -> str | None:
    """Why OUT cannot be used as `want` (None: as whatever it holds), or None when it can."""
    from tasks.store.layout import folder_layout, require_layout

    try:
        if want is None:
            folder_layout(out)
        else:
            require_layout(out, want)
    except LayoutMismatch as exc:
        return str(exc)
    return None


def _results_after_interrupt(options: RunOptions, manifest: Manifest) -> int | None:
    """Write the results table from the ledger as it stands when a run is cut short; return
    how many rows were mid-POST (None when there was nothing to write from)."""
    from tasks.store.conflicts import ledger_conflicts, records_for_results
    from tasks.store.results import build_results, with_video_urls, write_results
    from tasks.store.storage import RemoteOutput, open_output

    try:
        with _run_ledger_readonly(options.out) as ledger:
            records = ledger.all()
        check = ledger_conflicts(manifest, records)
        if check.refusal(options.out):
            return None  # the folder belongs to another manifest: leave its results alone
        table = build_results(
            manifest,
            records_for_results(check, records),
            prices=options.prices,
            held=check.held_messages,
        )
        output = open_output(options.out)
        if isinstance(output, RemoteOutput):
            table = with_video_urls(table, output)
        write_results(table, output)
    except Exception:
        return None
    return sum(1 for r in records.values() if r.state in DOUBTFUL)


def _print_rows(headline: str, rows: list[str], advice: str) -> None:
    """A problem on stderr: what happened, one indented line per row, what to do."""
    err.print(headline, highlight=False)
    for row in rows:
        err.print(f"  {row}", highlight=False)
    err.print(advice, highlight=False)


def _print_statuses(statuses: dict[str, int], *, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("status")
    table.add_column("rows", justify="right")
    for name, count in sorted(statuses.items(), key=lambda kv: -kv[1]):
        table.add_row(name, str(count))
    out_console.print(table)


def _is_sharded(out: Path) -> bool:
    """OUT holds a sharded run (callers have already refused a folder holding both)."""
    from tasks.store.layout import folder_layout

    return folder_layout(out) == "sharded"


def _ledger_folders(out: Path) -> list[Path]:
    """OUT itself, or the shard folders of a sharded run into OUT."""
    if not _is_sharded(out):
        return [out]
    # From tasks.store.layout, not tasks.run.shards: `status` must not import pyarrow and Prefect.
    from tasks.store.layout import LEDGER_FILE, SHARDS_DIR

    return sorted(p for p in (out / SHARDS_DIR).glob("shard-*") if (p / LEDGER_FILE).exists())


def status(out: Path) -> int:
    from collections import Counter

    from tasks.store.ledger import LOCK_FILE, Ledger

    refusal = _layout_refusal(out, None)
    if refusal:
        err.print(f"[bold red]cannot read {out}:[/] {refusal}", highlight=False)
        return EXIT_STOPPED
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
    from tasks.store.conflicts import ledger_conflicts, records_for_results
    from tasks.store.ledger import Ledger
    from tasks.store.results import build_results, write_results

    refusal = _layout_refusal(out, None)
    if refusal:
        err.print(f"[bold red]cannot read {out}:[/] {refusal}", highlight=False)
        return EXIT_STOPPED
    if _is_sharded(out):
        from tasks.run.shards import merge_shards, saved_plan

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
        manifest = _manifest_or_exit(path, ledger.meta("assets") or None)
        if manifest is None:
            return EXIT_STOPPED
        records = ledger.all()
    # The same check as `run`: a row whose paid task was made from another version of it
    # would be labelled with a prompt its video was not made from.
    check = ledger_conflicts(manifest, records)
    if check.held or check.moved:
        conflicts = [*check.moved, *check.held]
        _print_rows(
            f"[bold red]results not rebuilt:[/] {len(conflicts)} rows of {out} have a paid "
            f"task made from another version of the row in {manifest.path}; their videos "
            "would be labelled with a request they were not made from. Nothing was written.",
            [conflict.message for conflict in conflicts],
            "Restore those rows (or pass --manifest with the manifest that was run); a run "
            "of the changed manifest holds them and marks them `conflict` in its results.",
        )
        return EXIT_STOPPED
    table = build_results(manifest, records_for_results(check, records))
    parquet, csv = write_results(table, out)
    out_console.print(f"wrote {parquet} and {csv} ({table.num_rows} rows)")
    return EXIT_OK


def report(out: Path) -> int:
    from tasks.present.report import write_report

    refusal = _layout_refusal(out, None)
    if refusal:
        err.print(f"[bold red]cannot read {out}:[/] {refusal}", highlight=False)
        return EXIT_STOPPED
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
