"""Opening and closing one run: the plain-Python halves the flow wires its tasks between.

`open_run` reads the manifest (every row validated before anything is spent), locks the output
folder, opens the ledger, builds the client and hands back the runtime the steps share.
`finish_run` rebuilds the results table from the ledger, so it is the same whether the run
ended well, stopped, or is rebuilt later by `videobatch results`.

Where things live, by the output location (`--out`) and `VIDEOBATCH_LEDGER_URL`:

* A local folder, no ledger URL (the default, unchanged): `OUT/ledger.sqlite` under the folder
  lock (a second run on the folder is refused), videos and results in the folder.
* An object store (`s3://bucket/prefix`, `gs://`, `az://`): videos are fetched and verified in
  the location's local staging folder (`storage.staging_folder(out, staging_root())`, the same
  folder on every run of this machine), recorded, then uploaded; results.parquet, results.csv
  and report.html are written to the bucket, and the results table's `video_path` is each
  video's URL. With no ledger URL the SQLite ledger lives in that staging folder, on this
  machine only (the run says so in its log): the bucket holds no ledger, and another machine
  writing to the same location would not see it. A shared ledger needs PostgreSQL.
* A local folder as a member of a shared batch (`share_batch="folder"`: the K runs
  `generate-sharded` starts on one machine): the same `OUT/ledger.sqlite`, the folder lock
  taken shared (members) rather than exclusive (a plain run), so members work together and
  a plain run never joins them; the ledger is `shared`, so every rule of a shared batch below
  applies. An object-store location has no folder to share: a member into one needs a ledger
  URL.
* A ledger URL (`postgresql://...`): the run opens one batch of the shared ledger, named by
  `batch_name(out)` (the normalised output location), instead of a folder's file. No folder
  lock: several runs share the batch by claiming rows with leases (`tasks.steps.chunk`), the
  budget is the ledger's atomic reservation and a 401/402 stops every run of the batch. The
  URL may hold a password: it is read from the environment only, and never reaches a flow
  parameter, a log line, an error or a results file (`tasks.store.ledger_postgres` redacts it).

Every run on a shared ledger beats a heartbeat (`Ledger.beat`, `member:<run id>` in the
ledger's meta) every `MEMBER_BEAT_S` from a thread of its own, which lives exactly as long as
its process: `generate-sharded` reads it to tell a live member from one whose worker was
killed while the server still shows it Running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Literal

import httpx
import pyarrow as pa

from apimart.client import AsyncAPIMartClient, check_api_key
from apimart.errors import AuthenticationError
from tasks.errors import ManifestConflict, RunRefused
from tasks.run.environment import ledger_url, resolve_api_key
from tasks.run.estimate import TASK_MINUTES as TASK_MINUTES
from tasks.run.estimate import Estimate as Estimate
from tasks.run.estimate import estimate_run as estimate_run
from tasks.run.gate import Budget, LedgerBudget, SubmitGate
from tasks.run.options import RunOptions
from tasks.run.runtime import (
    Runtime,
    install_redaction,
    new_run_id,
    run_logger,
)
from tasks.steps.download import remote_output, stored_sizes, video_relpath
from tasks.steps.submit import send_decision, shares_batch

# The ledger check and the estimate live in Prefect-free modules (the read-only commands use
# them); they are re-exported here, where the flows have always imported them from.
from tasks.store.conflicts import Conflict as Conflict
from tasks.store.conflicts import LedgerCheck, ledger_conflicts, records_for_results, renewed_record
from tasks.store.conflicts import holds_money as holds_money
from tasks.store.layout import (
    LEDGER_MARK,
    LayoutMismatch,
    ledger_mark,
    mark_database_ledger,
    require_layout,
)
from tasks.store.ledger import (
    LEDGER_FILE,
    WITH_TASK,
    FolderLock,
    Ledger,
    RowRecord,
    State,
    connect_ledger,
    open_ledger,
)
from tasks.store.manifest import Manifest, read_manifest
from tasks.store.results import build_results, with_video_urls, write_results
from tasks.store.storage import LocalOutput, RemoteOutput, is_url, open_output, staging_folder

__all__ = [
    "TASK_MINUTES",
    "Conflict",
    "Estimate",
    "LedgerCheck",
    "ManifestConflict",
    "RunRefused",
    "estimate_run",
    "finish_run",
    "holds_money",
    "ledger_conflicts",
    "open_run",
    "records_for_results",
    "renewed_record",
    "rows_needing_work",
    "staging_root",
]


# The client's transport, named here so flows can pass one without importing httpx.
Transport = httpx.AsyncBaseTransport
# How a member of a shared batch opens it: the output folder's SQLite ledger (members on one
# machine) or the batch of the database named by VIDEOBATCH_LEDGER_URL.
ShareBatch = Literal["folder", "database"]
# Seconds between two heartbeats of a run on a shared ledger; `generate-sharded`'s
# `dead_after` (at least 5 s) must stay well above it.
MEMBER_BEAT_S = 1.0

_RENEWED_FIELDS = (
    "state",
    "attempt",
    "request_hash",
    "idempotency_key",
    "task_id",
    "api_status",
    "estimated_cost",
    "cost",
    "error_code",
    "error_message",
    "intent_at",
    "submitted_at",
    "terminal_at",
    "api_created",
    "api_completed",
    "generation_s",
    "polls",
    "url_expires_at",
)


def _renew(ledger: Ledger, record: RowRecord, owner: str) -> bool:
    """Renew the row the ledger check judged (`record`, as it read it): written only if the
    row is still so and no other run holds it (`Ledger.renew_request`). Another member may
    have renewed and sent it since the check, and a renewal from the older reading would
    wipe that (paid) task and send the row again. False: left as it is now."""
    fresh = renewed_record(record)
    return ledger.renew_request(
        record.row_id, record, {f: getattr(fresh, f) for f in _RENEWED_FIELDS}, owner=owner
    )


def rows_needing_work(runtime: Runtime, check: LedgerCheck | None = None) -> list[str]:
    """Valid rows that are not finished; a finished row costs no API call and no task run.

    Rows the ledger check holds are left out: their paid task belongs to another request.
    """
    ledger_rows = runtime.ledger.all()
    check = check or ledger_conflicts(runtime.manifest, ledger_rows)
    held = {c.row_id for c in check.held}
    remote = remote_output(runtime)
    # One listing of the store rather than a request per finished row.
    sizes = (
        stored_sizes(remote)
        if remote is not None and any(r.state == State.DOWNLOADED for r in ledger_rows.values())
        else {}
    )
    pending: list[str] = []
    for row in runtime.manifest.valid_rows:
        assert row.request is not None
        record = ledger_rows.get(row.id)
        if row.id in held:
            continue
        if record is None:
            pending.append(row.id)
        elif record.state == State.DOWNLOADED:
            if remote is not None:
                key = record.video_path or video_relpath(row.id)
                size = sizes.get(key)
                if size is None or (record.video_bytes is not None and size != record.video_bytes):
                    pending.append(row.id)
            elif not _video_intact(runtime, row.id, record.video_path, record.video_bytes):
                pending.append(row.id)
        elif isinstance(send_decision(record, row.request, runtime.options), tuple):
            pending.append(row.id)  # to be sent
        elif record.state in WITH_TASK - {State.FAILED, State.CANCELLED}:
            pending.append(row.id)  # to be polled or downloaded
    return pending


def _video_intact(runtime: Runtime, row_id: str, rel: str | None, size: int | None) -> bool:
    # A size check here keeps a finished rerun cheap; the download step re-hashes on doubt.
    path = runtime.out / (rel or f"videos/{row_id}.mp4")
    return path.is_file() and (size is None or path.stat().st_size == size)


def staging_root() -> Path:
    """Where the staging folders of store locations live on this machine (one per location)."""
    return Path.home() / ".cache" / "videobatch" / "staging"


def batch_name(location: str) -> str:
    """The batch a run into `location` belongs to in a shared ledger: the store URL as
    normalised by `storage` (`s3://bucket/prefix`), or the absolute path of a local folder."""
    output = open_output(location)
    if isinstance(output, LocalOutput):
        return str(output.root.expanduser().resolve())
    return output.location


def _local_folder(location: str) -> tuple[Path, RemoteOutput | None]:
    """The folder the run works in, and the store its outputs go to (None: the folder)."""
    output = open_output(location)
    if isinstance(output, RemoteOutput):
        return staging_folder(output, staging_root()), output
    assert isinstance(output, LocalOutput)
    return output.root, None


def _lift_stale_stop(ledger: Ledger) -> None:
    """A 401/402 stop of the batch holds every run that saw it; a run started when none of
    them is alive any more (no live lease in the batch) is a person's new attempt after fixing
    the key or the balance, so it lifts the stop, and says so."""
    stop = ledger.stopped()
    if stop is None:
        return
    now = time.time()
    for row_id in ledger.all():
        lease = ledger.lease(row_id)
        if lease is not None and lease.until > now:
            run_logger().error(
                "the batch is stopped (%s: %s) and runs that saw it are still going: no new "
                "submissions from this run either",
                stop.kind,
                stop.reason,
            )
            return
    ledger.clear_stop()
    run_logger().warning(
        "lifted the batch's stop left by an earlier run (%s: %s): no run of the batch is alive",
        stop.kind,
        stop.reason,
    )


def _refuse_share(share: ShareBatch | None, remote: RemoteOutput | None, url: str | None) -> None:
    """A member opens the very ledger the other members of its batch use, or nothing: one on
    a private ledger of its own would send every row again."""
    if share == "database" and not url:
        raise RunRefused(
            "this run is a member of a batch shared on a database ledger, but "
            "VIDEOBATCH_LEDGER_URL is not set where it runs: set it in this worker's "
            "environment. Nothing was sent."
        )
    if share == "folder" and url:
        raise RunRefused(
            "this run is a member of a batch shared in its output folder's ledger, but "
            "VIDEOBATCH_LEDGER_URL is set where it runs: give every worker of the batch the "
            "same ledger setting. Nothing was sent."
        )
    if share == "folder" and remote is not None:
        raise RunRefused(
            f"{remote.location} holds no ledger, so runs cannot share its batch: a shared "
            "ledger needs VIDEOBATCH_LEDGER_URL. Nothing was sent."
        )


@contextmanager
def _run_ledger(
    out: Path, remote: RemoteOutput | None, location: str, share: ShareBatch | None = None
) -> Iterator[Ledger]:
    url = ledger_url()
    log = run_logger()
    _refuse_share(share, remote, url)
    if share == "folder":
        log.info("ledger: %s, shared with the other member runs of this batch", out)
        # A member never lifts the batch's stop: a replacement started after a 401/402
        # would send again (generate-sharded lifts a stale one at its own start).
        with open_ledger(out, shared=True) as ledger:
            _refuse_marked_folder(out)
            yield ledger
        return
    if url:
        batch = batch_name(location)
        log.info("ledger: batch %s of the shared ledger named by VIDEOBATCH_LEDGER_URL", batch)
        with _database_folder(out, remote, batch), open_ledger(url, batch=batch) as ledger:
            if share is None:
                _lift_stale_stop(ledger)
            yield ledger
        return
    if remote is not None:
        log.warning(
            "ledger: %s holds no ledger; this run's ledger is %s on this machine only (a run "
            "from another machine into %s would not see it: share a PostgreSQL ledger through "
            "VIDEOBATCH_LEDGER_URL for that)",
            remote.location,
            out / "ledger.sqlite",
            remote.location,
        )
    with open_ledger(out) as ledger:
        if remote is None:
            _refuse_marked_folder(out)
        yield ledger


def _refuse_marked_folder(out: Path) -> None:
    """Asked again once the folder lock is held: a database run may have marked the folder
    between this run's first look and its lock (or run and ended in between)."""
    try:
        require_layout(out, "plain", ledger="sqlite")
    except LayoutMismatch as exc:
        raise RunRefused(str(exc)) from None


@contextmanager
def _database_folder(out: Path, remote: RemoteOutput | None, batch: str) -> Iterator[None]:
    """A database run into a local folder: the folder's lock held shared for the run (a plain
    run, the folder's only writer, cannot start meanwhile, nor this run during one), refused
    when the folder's own SQLite ledger exists (its rows are in no database: they would all
    be paid again), and the folder marked as the database batch's, so no run on a SQLite
    ledger of the folder starts after it (`require_layout(..., ledger="sqlite")`)."""
    if remote is not None:  # a store location's staging folder is this machine's cache
        yield
        return
    with FolderLock(out, shared=True):
        _refuse_own_ledger(out)
        mark = ledger_mark(out)
        if mark is not None and mark.get("batch") not in (batch, "?"):
            raise RunRefused(
                f"{out} was run as batch {mark.get('batch')!r} of a database ledger (see "
                f"{LEDGER_MARK}), and this run would open batch {batch!r}, which knows none of "
                "its rows (was the folder moved or renamed?): it would pay again for every row "
                "paid there. Nothing was sent. Run it from where it was, or use a new output "
                "folder."
            )
        mark_database_ledger(out, "postgresql", batch)
        # Asked again after marking: a member on the folder's own ledger may have created
        # it meanwhile (it asks for the mark after creating it, so one of the two refuses).
        _refuse_own_ledger(out)
        yield


def _refuse_own_ledger(out: Path) -> None:
    if (out / LEDGER_FILE).exists():
        raise RunRefused(
            f"{out} has a ledger of its own ({LEDGER_FILE}) that holds its rows, and this run's "
            "ledger is the database named by VIDEOBATCH_LEDGER_URL, which knows none of them: "
            "it would pay again for every row paid there. Nothing was sent. Run this folder "
            "without VIDEOBATCH_LEDGER_URL (its own ledger), or give the database run a new "
            "output folder."
        )


class _Heartbeat:
    """`member`'s heartbeat in a shared ledger, beaten from a daemon thread: it stops with
    the process (a killed worker's run falls silent at once), not with a busy event loop."""

    def __init__(self, ledger: Ledger, member: str, every: float = MEMBER_BEAT_S) -> None:
        self._ledger, self._member, self._every = ledger, member, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="videobatch-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self._beat()

    def _beat(self) -> None:
        try:
            self._ledger.beat(self._member)
        except Exception as exc:  # the next beat tries again; a long silence reads as dead
            run_logger().warning("could not write this run's heartbeat (%s)", exc)

    def __enter__(self) -> _Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            self._ledger.leave(self._member)
        except Exception as error:
            run_logger().warning("could not remove this run's heartbeat (%s)", error)


@asynccontextmanager
async def open_run(
    options: RunOptions,
    *,
    manifest: Manifest | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    share_batch: ShareBatch | None = None,
) -> AsyncIterator[Runtime]:
    """Everything a run needs, in the order that keeps a refusal free: nothing is opened,
    locked or sent before the manifest, the folder's layout and the key have been checked.

    `transport` carries the client's requests (API and downloads) instead of the network:
    `httpx.ASGITransport` over the sandbox app runs a whole flow in one process.

    The run's `out` is the folder it works in: the output folder, or for a store location
    its local staging folder (see the module). `share_batch` makes the run a member of a
    batch several runs share (see the module); None is a plain run.
    """
    run_id = new_run_id()
    with _member_heartbeat(options, share_batch, run_id):
        async with _open_run(
            options, manifest=manifest, transport=transport, share_batch=share_batch, run_id=run_id
        ) as runtime:
            yield runtime


@contextmanager
def _member_heartbeat(options: RunOptions, share: ShareBatch | None, run_id: str) -> Iterator[None]:
    """A member beats from its very start, before reading its manifest (minutes for a large
    one), on a connection of its own: the run that started it must never take a live member
    for dead. Only what is cheap and sends nothing is checked first: the folder's layout (a
    folder of the old layout must not get a ledger) and the ledger setting."""
    if share is None:
        yield
        return
    try:
        out, remote = _local_folder(options.out)
    except ValueError as exc:
        raise RunRefused(str(exc)) from None
    url = ledger_url()
    _refuse_share(share, remote, url)
    if share == "folder":
        try:
            require_layout(out, "plain", ledger="sqlite")
        except LayoutMismatch as exc:
            raise RunRefused(str(exc)) from None
    ledger = (
        connect_ledger(url, batch=batch_name(options.out))
        if share == "database" and url
        else Ledger(out)
    )
    with ledger, _Heartbeat(ledger, run_id):
        yield


@asynccontextmanager
async def _open_run(
    options: RunOptions,
    *,
    manifest: Manifest | None,
    transport: httpx.AsyncBaseTransport | None,
    share_batch: ShareBatch | None,
    run_id: str,
) -> AsyncIterator[Runtime]:
    manifest = manifest or read_manifest(options.manifest, assets=options.assets)
    try:
        out, remote = _local_folder(options.out)
    except ValueError as exc:
        raise RunRefused(str(exc)) from None
    try:
        require_layout(out, "plain", ledger="database" if ledger_url() else "sqlite")
    except LayoutMismatch as exc:
        raise RunRefused(str(exc)) from None
    api_key = resolve_api_key()
    if not api_key:
        raise RunRefused(
            "no API key: set APIMART_API_KEY or create the Prefect Secret block "
            "'apimart-api-key' (or run against the sandbox with --sandbox)"
        )
    install_redaction(api_key)
    try:
        api_key = check_api_key(api_key)
    except AuthenticationError as exc:
        # Raised before any folder is locked or ledger opened; the message names the rule,
        # never the key.
        raise RunRefused(f"{exc}. Nothing was sent.") from None
    # Before the ledger is opened: opening a database batch turns rows a dead run left
    # mid-POST unknown, and a resend decision is about the rows unknown before this run.
    started_at = time.time()
    ledger_cm: AbstractContextManager[Ledger] = _run_ledger(out, remote, options.out, share_batch)
    # A member beats already (`_member_heartbeat`); a plain run on a shared database beats here.
    with ledger_cm as ledger, _beating(ledger, run_id, share_batch is None):
        seen = ledger.all()
        check = ledger_conflicts(manifest, seen)
        refusal = check.refusal(options.out if remote is not None else out)
        if refusal:
            raise ManifestConflict(refusal)
        if check.held:
            run_logger().error("%s", check.held_report())
        for row_id in check.renewed:
            if not _renew(ledger, seen[row_id], run_id):
                run_logger().info(
                    "%s: changed since this run read the ledger (another run renewed or sent "
                    "it); left as it is now",
                    row_id,
                )
        ledger.set_meta("manifest", str(manifest.path))
        # `videobatch results` re-reads the manifest: with other assets its rows would differ.
        ledger.set_meta("assets", str(Path(options.assets).resolve()) if options.assets else "")
        ledger.ensure_many((row.id, row.index) for row in manifest.valid_rows)
        client = AsyncAPIMartClient(base_url=options.base_url, api_key=api_key, transport=transport)
        async with client:
            budget = (
                LedgerBudget(
                    cap=options.max_cost,
                    committed=ledger.committed_cost(),
                    ledger=ledger,
                    hold_s=options.lease_seconds,
                )
                if shares_batch(ledger)
                else Budget(cap=options.max_cost, committed=ledger.committed_cost())
            )
            runtime = Runtime(
                options=options,
                manifest=manifest,
                ledger=ledger,
                client=client,
                run_id=run_id,
                gate=SubmitGate(rate=options.submit_rate),
                budget=budget,
                out=out,
                started_at=started_at,
            )
            yield runtime


@contextmanager
def _beating(ledger: Ledger, run_id: str, wanted: bool) -> Iterator[None]:
    if not (wanted and ledger.shared):
        yield
        return
    with _Heartbeat(ledger, run_id):
        yield


def finish_run(runtime: Runtime, check: LedgerCheck | None = None) -> pa.Table:
    """Write results.parquet and results.csv from the ledger; return the table.

    `check` is the run's ledger check; what it holds cannot change while the run goes on
    (held rows are never touched), so a run passes the one it began with.
    """
    records = runtime.ledger.all()
    check = check or ledger_conflicts(runtime.manifest, records)
    table = build_results(
        runtime.manifest,
        records_for_results(check, records),
        prices=runtime.options.prices,
        held=check.held_messages,
    )
    remote = remote_output(runtime)
    if remote is None:
        parquet, csv = write_results(table, runtime.out)
        run_logger().info("results written to %s and %s", parquet, csv)
        return table
    if runtime.options.report:
        # The report links each video by its key beside report.html and takes thumbnails
        # from the staging folder, so it is written from the table of relative paths.
        from tasks.present.report import write_report

        run_logger().info("report written to %s", write_report(remote, table, videos=runtime.out))
    table = with_video_urls(table, remote)
    urls = write_results(table, remote)
    run_logger().info("results written to %s and %s", *urls)
    return table


# -- the batch as the run that started its members sees it (generate-sharded) ---------------
def batch_share(location: str) -> ShareBatch:
    """How members of a batch into `location` share its ledger, decided by this process's
    environment: the database named by VIDEOBATCH_LEDGER_URL, else the output folder's
    SQLite ledger, which an object-store location does not have (refused)."""
    if ledger_url():
        return "database"
    if is_url(location):  # decided from the text alone: no request to the store
        raise RunRefused(
            f"{location} holds no ledger, so runs cannot share its batch: a shared "
            "ledger needs VIDEOBATCH_LEDGER_URL. Nothing was sent."
        )
    try:
        output = open_output(location)
    except ValueError as exc:
        raise RunRefused(str(exc)) from None
    assert isinstance(output, LocalOutput)
    try:
        require_layout(output.root, "plain", ledger="sqlite")
    except LayoutMismatch as exc:
        raise RunRefused(str(exc)) from None
    return "folder"


@contextmanager
def batch_reader(location: str, share: ShareBatch) -> Iterator[Ledger | None]:
    """The batch's ledger opened read-only, or None while no run has opened it yet."""
    try:
        if share == "database":
            url = ledger_url()
            if not url:
                raise RunRefused("VIDEOBATCH_LEDGER_URL is no longer set")
            ledger = connect_ledger(url, batch=batch_name(location), readonly=True)
        else:
            ledger = Ledger(_local_folder(location)[0], readonly=True)
    except FileNotFoundError:
        yield None
        return
    with ledger:
        yield ledger


def lift_batch_stop(location: str, share: ShareBatch) -> None:
    """At the start of a person's new attempt on the batch (generate-sharded), lift a 401/402
    stop an earlier attempt left, unless a run that saw it is still alive (`_lift_stale_stop`).
    Its members never lift it: a replacement member must not send after a 401."""
    if share == "database":
        url = ledger_url()
        if not url:
            raise RunRefused("VIDEOBATCH_LEDGER_URL is no longer set")
        with connect_ledger(url, batch=batch_name(location)) as ledger:
            _lift_stale_stop(ledger)
        return
    folder = _local_folder(location)[0]
    if not (folder / LEDGER_FILE).exists():
        return
    with Ledger(folder) as ledger:
        _lift_stale_stop(ledger)


def batch_stop(location: str, share: ShareBatch) -> str | None:
    """The batch's 401/402 stop in words, or None when it is not stopped."""
    with batch_reader(location, share) as ledger:
        stop = None if ledger is None else ledger.stopped()
    return None if stop is None else f"{stop.kind}: {stop.reason}"


def member_ages(location: str, share: ShareBatch) -> dict[str, float]:
    """Seconds since each run of the batch last beat its heartbeat (see the module)."""
    with batch_reader(location, share) as ledger:
        return {} if ledger is None else ledger.members()


def batch_records(location: str, share: ShareBatch) -> dict[str, RowRecord]:
    with batch_reader(location, share) as ledger:
        return {} if ledger is None else ledger.all()


def batch_conflict(options: RunOptions, manifest: Manifest, share: ShareBatch) -> str | None:
    """Why the batch's ledger refuses this manifest (see `LedgerCheck.refusal`), or None."""
    check = ledger_conflicts(manifest, batch_records(options.out, share))
    folder, remote = _local_folder(options.out)
    return check.refusal(options.out if remote is not None else folder)


def rows_left(options: RunOptions, manifest: Manifest, share: ShareBatch) -> list[str]:
    """Valid rows of the batch that a run without resends would still work on (to send,
    poll or download); held rows and rows left doubtful or failed are not among them."""
    records = batch_records(options.out, share)
    check = ledger_conflicts(manifest, records)
    held = {c.row_id for c in check.held}
    folder, remote = _local_folder(options.out)
    unstored = _not_in_store(remote, records)
    plain = options.model_copy(update={"resubmit_unknown": False, "retry_failed": False})
    left = []
    for row in manifest.valid_rows:
        assert row.request is not None
        record = records.get(row.id)
        if row.id in held:
            continue
        if record is None:
            left.append(row.id)
        elif record.state == State.DOWNLOADED:
            path = folder / (record.video_path or video_relpath(row.id))
            if (remote is None and not path.is_file()) or row.id in unstored:
                left.append(row.id)
        elif isinstance(
            send_decision(record, row.request, plain), tuple
        ) or record.state in WITH_TASK - {State.FAILED, State.CANCELLED}:
            left.append(row.id)
    return left


def _not_in_store(remote: RemoteOutput | None, records: Mapping[str, RowRecord]) -> set[str]:
    """Rows recorded `downloaded` whose object the store lacks (or holds at another size):
    a member killed between recording its verified video and uploading it left the video in
    its own machine's staging folder only. One listing of the store, not a request per row."""
    done = [r for r in records.values() if r.state == State.DOWNLOADED]
    if remote is None or not done:
        return set()
    sizes = stored_sizes(remote)
    missing = set()
    for record in done:
        size = sizes.get(record.video_path or video_relpath(record.row_id))
        if size is None or (record.video_bytes is not None and size != record.video_bytes):
            missing.add(record.row_id)
    return missing


def _as_unstored(record: RowRecord) -> RowRecord:
    """How the results show a paid video that is in no store: to fetch again, not done."""
    return replace(
        record,
        state=State.DOWNLOAD_FAILED,
        error_code="video_not_stored",
        error_message=(
            f"the video of task {record.task_id} was verified but never reached the store "
            "(its run stopped before the upload); the next run fetches it again"
        ),
        video_path=None,
    )


def batch_results(
    options: RunOptions, manifest: Manifest, share: ShareBatch
) -> tuple[pa.Table, str | None]:
    """Write the batch's results (and report, if asked) from its ledger, as `finish_run`
    does for one run; the table and where the report is (None: not written). A row recorded
    downloaded whose video is not in the store shows as `download_failed`, never completed
    with a link to a missing object."""
    from tasks.present.report import write_report

    records = batch_records(options.out, share)
    unstored = _not_in_store(_local_folder(options.out)[1], records)
    records = {k: _as_unstored(r) if k in unstored else r for k, r in records.items()}
    check = ledger_conflicts(manifest, records)
    table = build_results(
        manifest,
        records_for_results(check, records),
        prices=options.prices,
        held=check.held_messages,
    )
    folder, remote = _local_folder(options.out)
    if remote is None:
        write_results(table, folder)
        report = write_report(folder, table) if options.report else None
        return table, report
    # Thumbnails come from this machine's staging folder when the members staged here.
    staged = folder if folder.is_dir() else None
    report = write_report(remote, table, videos=staged) if options.report else None
    table = with_video_urls(table, remote)
    write_results(table, remote)
    return table, report
