"""What a person sees of a run in the Prefect UI: progress while it runs, results after.

Artifacts are a window, not the record (the ledger and results files are): a failure to write
one is logged and never stops a run that is spending money.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa
from prefect.artifacts import (
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)

from tasks.present.summary import results_table_for_artifact, summarize, summary_markdown
from tasks.run.runtime import run_logger

if TYPE_CHECKING:
    from tasks.run.lifecycle import Estimate

# A dry run of a huge, broken manifest must not make a page nobody can open.
ESTIMATE_INVALID_SHOWN = 100

# `Ledger.spent` sums every row of the ledger (on the event loop): read every 2 s, it was 4 %
# of a 100,000-row run's loop, growing with the rows (bench/scale-profile.md). Money moves
# slowly on a progress bar; the final update always reads it afresh.
SPENT_EVERY_S = 30.0


def artifact_key(out: str) -> str:
    """Prefect keys allow lower-case letters, digits and dashes; one key per output folder."""
    slug = re.sub(r"[^a-z0-9]+", "-", out.lower()).strip("-")[-40:].strip("-")
    return f"videobatch-{slug or 'out'}"


def eta_text(seconds: float) -> str:
    """A duration as a person reads an ETA: "40 s", "12 min", "3.5 h"."""
    if seconds < 90:
        return f"{max(0.0, seconds):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """A progress artifact updated as rows finish, at most every `every_s` seconds: rows by
    state, the money spent so far as `spent()` reads it (the ledger's sum of real costs), and
    the ETA `eta(unfinished rows)` gives (the duration model's, at the concurrency cap: see
    `tasks.run.polling.eta_of`), not one extrapolated from recent throughput, which the
    first wave of a run (every slot submitted at once, nothing finished for minutes) makes
    meaningless.

    `spent()` is read at most every `spent_every_s` seconds (it sums every row), and always
    for the update of the last row, so the money shown at the end is the ledger's."""

    def __init__(
        self,
        total: int,
        *,
        key: str,
        every_s: float = 2.0,
        spent: Callable[[], float] | None = None,
        eta: Callable[[int], float | None] | None = None,
        spent_every_s: float = SPENT_EVERY_S,
    ) -> None:
        self.total, self.key, self.every_s = max(total, 1), key, every_s
        self.rows = total
        self.spent = spent
        self.spent_every_s = spent_every_s
        self._spent: tuple[float, float] | None = None  # (read at, amount)
        self.eta = eta
        self.done = 0
        self.states: Counter[str] = Counter()
        self._id: object | None = None
        self._last = 0.0

    async def start(self) -> None:
        try:
            self._id = await acreate_progress_artifact(
                progress=0.0,
                key=f"{self.key}-progress",
                description=self.description(),
            )
        except Exception as exc:  # the UI is a window, not the record
            run_logger().warning("could not create the progress artifact: %s", exc)

    async def row_done(self, state: str) -> None:
        self.done += 1
        self.states[state] += 1
        now = time.monotonic()
        if self._id is None or (now - self._last < self.every_s and self.done < self.total):
            return
        self._last = now
        try:
            await aupdate_progress_artifact(
                artifact_id=self._id,  # type: ignore[arg-type]
                progress=100.0 * self.done / self.total,
                description=self.description(),
            )
        except Exception as exc:
            run_logger().warning("could not update the progress artifact: %s", exc)

    def description(self) -> str:
        """e.g. "completed: 180, failed: 2; spent 96.40; ETA 12 min"."""
        parts = [
            ", ".join(f"{k}: {v}" for k, v in sorted(self.states.items()))
            or f"0 of {self.rows} rows finished"
        ]
        if self.spent is not None:
            parts.append(f"spent {self._spent_now(self.spent):.2f}")
        left = max(0, self.rows - self.done)
        seconds = None
        if self.eta is not None and left:
            try:
                seconds = self.eta(left)
            except Exception as exc:  # a window: an estimate that fails is left out
                run_logger().debug("no ETA: %s", exc)
        if seconds is not None:
            parts.append(f"ETA {eta_text(seconds)}")
        return "; ".join(parts)

    def _spent_now(self, spent: Callable[[], float]) -> float:
        now = time.monotonic()
        last = self._spent
        if last is None or self.done >= self.rows or now - last[0] >= self.spent_every_s:
            last = self._spent = (now, spent())
        return last[1]


async def publish_results(table: pa.Table, *, key: str, title: str, report: str | None) -> str:
    """Table and markdown artifacts of the results; a link to the HTML report when written."""
    summary = summarize(table)
    markdown = summary_markdown(summary, title=title)
    try:
        await acreate_table_artifact(
            table=results_table_for_artifact(table),
            key=f"{key}-results",
            description=f"{title}: one line per row",
        )
        await acreate_markdown_artifact(
            markdown=markdown, key=f"{key}-summary", description=f"{title}: totals"
        )
        if report:
            await acreate_link_artifact(
                link=report,
                link_text="videobatch report",
                key=f"{key}-report",
                description=f"{title}: totals, costs, timings, failures and a contact sheet",
            )
    except Exception as exc:
        run_logger().warning("could not publish result artifacts: %s", exc)
    return markdown


def _text(text: str) -> str:
    # Manifest text is shown as text: one line, no raw HTML, no table or list syntax.
    flat = " ".join(str(text).split()).replace("<", "&lt;").replace(">", "&gt;")
    return flat.replace("\\", "\\\\").replace("|", "\\|")


def estimate_markdown(estimate: Estimate, invalid_messages: Sequence[str], *, title: str) -> str:
    """The dry run's page: rows, estimated cost and time, and every invalid row's problem."""
    e = estimate
    lines = [
        f"# {_text(title)}: estimate only, nothing was sent",
        "",
        "| | |",
        "|---|---:|",
        f"| Rows | {e.rows} |",
        f"| Valid (would be sent) | {e.valid} |",
        f"| Invalid (never sent) | {e.invalid} |",
        f"| Estimated cost | ${e.cost:,.2f} |",
        f"| Estimated time | {e.minutes_low:.0f}-{e.minutes_high:.0f} min "
        f"at concurrency {e.concurrency} |",
        "",
        "The cost comes from the price table, not from the API: the vendor's bill may differ.",
        "",
        "## Invalid rows",
        "",
    ]
    shown = list(invalid_messages)[:ESTIMATE_INVALID_SHOWN]
    lines += [f"- {_text(m)}" for m in shown] or ["None."]
    if len(invalid_messages) > len(shown):
        lines.append(f"- ... and {len(invalid_messages) - len(shown)} more")
    return "\n".join(lines) + "\n"


async def publish_estimate(
    estimate: Estimate, invalid_messages: Sequence[str], *, key: str, title: str
) -> str:
    """A dry run's estimate as the markdown artifact `{key}-estimate`; returns the markdown.

    Like every artifact it is a window: a failure to write it is logged, not raised.
    """
    markdown = estimate_markdown(estimate, invalid_messages, title=title)
    try:
        await acreate_markdown_artifact(
            markdown=markdown,
            key=f"{key}-estimate",
            description=f"{title}: dry run, estimated cost and time; nothing was sent",
        )
    except Exception as exc:
        run_logger().warning("could not publish the estimate artifact: %s", exc)
    return markdown
