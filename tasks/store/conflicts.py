"""The one check of every command that reads both a ledger and a manifest: which rows a
manifest now contradicts (held), which are new requests (renewed), which would pay twice (moved).

Free of Prefect: `videobatch results` runs it without starting a flow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.store.hashing import request_hash
from tasks.store.ledger import NEVER_SENT, RowRecord, State
from tasks.store.states import UNPAID_ENDS

if TYPE_CHECKING:
    from tasks.store.manifest import Manifest, ManifestRow

# The vendor may charge a failed or cancelled task too; then it is paid like any other.
_UNPAID_ENDS = UNPAID_ENDS


def holds_money(record: RowRecord) -> bool:
    """The row has a task that was (or may have been) paid for, or a POST of unknown outcome."""
    if record.state in NEVER_SENT:
        return False
    if record.state in _UNPAID_ENDS:
        return bool(record.cost)
    return True


@dataclass(frozen=True)
class Conflict:
    """A row with a paid or doubtful task in OUT that the manifest now contradicts.

    `kind` is "changed" (its request is not the one sent), "invalid" (the row as now written
    breaks a rule), "vanished" (not in the manifest) or "moved" (a row that would be sent
    asks for exactly what another row's paid task was made from).
    """

    row_id: str
    kind: str
    task: str
    other: str | None = None
    # The old task's video is on disk: nothing of it is left to fetch.
    finished: bool = False

    @property
    def message(self) -> str:
        # A paid task still to be fetched needs its row as it was, or its video is lost.
        keep = "" if self.finished else " (keep the old row as it was, so its paid task is fetched)"
        if self.kind == "changed":
            return (
                f"{self.row_id}: the row changed since it was sent ({self.task}); "
                f"give the changed row a new id{keep}, or restore it"
            )
        if self.kind == "invalid":
            return (
                f"{self.row_id}: has {self.task} but the manifest row is now invalid; "
                f"fix it back to what was sent, or give the new row a new id{keep}"
            )
        if self.kind == "vanished":
            return (
                f"{self.row_id}: has {self.task} in this folder but is not in the manifest; "
                "restore the row so its paid task is polled and downloaded"
            )
        return (
            f"{self.row_id}: asks for exactly what {self.other} was sent as ({self.task}): "
            "the rows were renamed (a manifest without an id column names rows by position, "
            "so inserting or deleting a row renames every row after it)"
        )


@dataclass(frozen=True)
class LedgerCheck:
    """What a ledger says about a manifest, before anything is sent or reported.

    `held`: rows whose paid or doubtful task the manifest contradicts. They are left as they
    are (not sent, not polled, not relabelled) while every other row proceeds.
    `renewed`: rows whose every task was unpaid and whose request changed; they are new
    requests and are sent as a new attempt (with a new idempotency key).
    `moved`: rows that would be sent but ask for exactly what a held row's task was made from;
    sending them would pay twice for one video, so the run is refused.
    `matched`: rows with a paid or doubtful task that the manifest still asks for unchanged.
    `gone`: rows no longer in the manifest whose paid video is already on disk; nothing is
    left to do for them (this is what giving a changed row a new id leaves behind).
    """

    held: tuple[Conflict, ...] = ()
    renewed: tuple[str, ...] = ()
    moved: tuple[Conflict, ...] = ()
    matched: int = 0
    gone: tuple[str, ...] = ()

    @property
    def held_messages(self) -> dict[str, str]:
        return {c.row_id: c.message for c in self.held}

    def refusal(self, out: Path | str) -> str | None:
        """Why the whole run is refused, or None when it may go on with `held` rows held.

        Refused when rows moved (sending them pays twice), or when not one paid row of OUT is
        still asked for unchanged: then OUT belongs to another manifest, and resuming into it
        would only mix the two.
        """
        if self.moved:
            shown = _listing([*self.moved, *self.held])
            return (
                f"{out} was run with another version of this manifest, and rows seem to have "
                f"moved ({len(self.moved)} would pay again for a video already paid: {shown}). "
                "Nothing was sent. Restore the old row ids (e.g. add an id column with the "
                "names the folder knows), or restore the manifest."
            )
        if (self.held or self.gone) and not self.matched:
            differ = len(self.held) + len(self.gone)
            shown = _listing(self.held) if self.held else ", ".join(self.gone[:10])
            return (
                f"{out} was run with another manifest: none of its paid rows is asked for "
                f"unchanged ({differ} rows differ: {shown}). Nothing was sent. Restore "
                "the manifest, or use a new --out folder for this one."
            )
        return None

    def held_report(self) -> str:
        return (
            f"{len(self.held)} rows held, not sent and not relabelled, because their paid task "
            f"was made from another version of the row: {_listing(self.held)}. Nothing is paid "
            "twice: give a changed row a new id (it is then sent as a new row), or restore it "
            "(its task is then polled and downloaded)."
        )


def _listing(conflicts: list[Conflict] | tuple[Conflict, ...], limit: int = 10) -> str:
    shown = "; ".join(c.message for c in conflicts[:limit])
    return shown + (f"; ... and {len(conflicts) - limit} more" if len(conflicts) > limit else "")


def ledger_conflicts(manifest: Manifest, records: Mapping[str, RowRecord]) -> LedgerCheck:
    """Compare OUT's ledger with the manifest: the one check of every command that reads both.

    A row whose tasks were all unpaid and whose request changed is simply a new request. A
    row with a paid or doubtful task that changed, vanished or became invalid is a conflict:
    resuming it would report the old video under a new prompt, or pay again.
    """
    rows: dict[str, ManifestRow] = {}
    for each in manifest.rows:
        rows.setdefault(each.id, each)  # a duplicate id is the later, invalid copy
    held: list[Conflict] = []
    renewed: list[str] = []
    gone: list[str] = []
    matched = 0
    for record in records.values():
        row = rows.get(record.row_id)
        changed = (
            row is not None
            and row.request is not None
            and bool(record.request_hash)
            and record.request_hash != request_hash(row.request)
        )
        if not holds_money(record):
            if changed and record.state in _UNPAID_ENDS:
                renewed.append(record.row_id)
            continue
        task = (
            f"task {record.task_id}, {record.state}"
            if record.task_id
            else "a POST of unknown outcome"
        )
        finished = record.state == State.DOWNLOADED
        if row is None and finished:
            gone.append(record.row_id)
        elif row is None:
            held.append(Conflict(record.row_id, "vanished", task))
        elif row.request is None:
            held.append(Conflict(record.row_id, "invalid", task, finished=finished))
        elif changed:
            held.append(Conflict(record.row_id, "changed", task, finished=finished))
        else:
            matched += 1
    # What a held or gone row's task was made from must not be bought again under another id.
    paid_for = {records[c.row_id].request_hash: c for c in held if records[c.row_id].request_hash}
    for row_id in gone:
        record = records[row_id]
        if record.request_hash:
            gone_task = f"task {record.task_id}, {record.state}"
            paid_for.setdefault(
                record.request_hash, Conflict(row_id, "vanished", gone_task, finished=True)
            )
    moved: list[Conflict] = []
    held_ids = {c.row_id for c in held}
    for row in manifest.valid_rows:
        assert row.request is not None
        own = records.get(row.id)
        if row.id in held_ids or (own is not None and holds_money(own)):
            continue
        source = paid_for.get(request_hash(row.request))
        if source is not None and source.row_id != row.id:
            moved.append(Conflict(row.id, "moved", source.task, other=source.row_id))
    return LedgerCheck(tuple(held), tuple(renewed), tuple(moved), matched, tuple(gone))


def renewed_record(record: RowRecord) -> RowRecord:
    """An unpaid row whose request changed, as a new request: never sent, next attempt.

    The old task's facts go (they describe another request); the new attempt number gives
    the new request its own idempotency key. The ledger's events keep the old task id.
    """
    return replace(
        record,
        state=State.PENDING,
        attempt=record.attempt + 1,
        request_hash=None,
        idempotency_key=None,
        task_id=None,
        api_status=None,
        estimated_cost=None,
        cost=None,
        error_code="request_changed",
        error_message=(
            f"the row changed after task {record.task_id} ({record.state}, unpaid); "
            "sent again as a new request"
        ),
        intent_at=None,
        submitted_at=None,
        terminal_at=None,
        api_created=None,
        api_completed=None,
        generation_s=None,
        polls=0,
        url_expires_at=None,
    )


def records_for_results(
    check: LedgerCheck, records: Mapping[str, RowRecord]
) -> dict[str, RowRecord]:
    """The ledger as the next run will see it: renewed rows read as new requests."""
    return {
        row_id: renewed_record(r) if row_id in check.renewed else r for row_id, r in records.items()
    }
