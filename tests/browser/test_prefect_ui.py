"""The Prefect UI, seen in a browser: a finished run and its artifacts, as a person sees them.

A real `prefect server start` serves the UI; the demo manifest runs against the sandbox in a
`videobatch run` subprocess that reports to it; headless Chromium opens the flow run page and
each artifact page and reads what is on screen.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from playwright.sync_api import Page, expect
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import Artifact, FlowRun, StateType

from browser.browserkit import FAILING_ROW, FinishedRun, tail
from tasks.present.artifacts import artifact_key
from videobatch.console import EXIT_INCOMPLETE

pytestmark = pytest.mark.slow

TASK_RUNS_RECORDED_S = 30.0


def _flow_run_and_artifacts(run: FinishedRun) -> tuple[FlowRun, dict[str, Artifact], int]:
    """The one generate-videos run on the server, its artifacts by key, its task-run count.

    Task runs reach the server as events, recorded a little after the flow has returned: wait
    until every one is final and the count holds still, so the page shows the whole run.
    """
    with SyncPrefectClient(api=run.server.api_url) as client:
        flow_runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["generate-videos"]))
        )
        assert len(flow_runs) == 1, f"expected one generate-videos run, got {len(flow_runs)}"
        flow_run = flow_runs[0]
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
        only_this_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        deadline, seen = time.monotonic() + TASK_RUNS_RECORDED_S, -1
        while True:
            task_runs = client.read_task_runs(flow_run_filter=only_this_run)
            final = all(t.state is not None and t.state.is_final() for t in task_runs)
            if final and len(task_runs) == seen:
                break
            if time.monotonic() > deadline:
                states = Counter(str(t.state_type) for t in task_runs)
                raise AssertionError(f"task runs never all recorded as final: {states}")
            seen = len(task_runs) if final else -1
            time.sleep(0.5)
    return flow_run, {a.key: a for a in artifacts if a.key}, len(task_runs)


def _rows(run: FinishedRun) -> list[dict[str, Any]]:
    return pq.read_table(run.out / "results.parquet").to_pylist()


def test_flow_run_and_artifacts_in_the_prefect_ui(
    demo_run: FinishedRun, page: Page, screenshots: Path
) -> None:
    """The Prefect UI shows the run completed with its four artifacts, rows and totals."""
    run = demo_run
    assert run.returncode == EXIT_INCOMPLETE, f"exit {run.returncode}:\n{tail(run.log)}"
    rows = _rows(run)
    statuses = {r["id"]: r["status"] for r in rows}
    assert statuses[FAILING_ROW] == "failed"
    assert sorted(set(statuses.values())) == ["completed", "failed"]
    videos = sum(s == "completed" for s in statuses.values())
    spent = sum(r["cost"] or 0.0 for r in rows)

    # What the server holds: the run finished, and the four artifacts belong to it.
    flow_run, artifacts, task_runs = _flow_run_and_artifacts(run)
    assert task_runs >= len(rows), task_runs  # a submission per row, at least
    assert flow_run.state_type == StateType.COMPLETED, flow_run.state
    key = artifact_key(run.out_arg)
    names = {kind: f"{key}-{kind}" for kind in ("progress", "results", "summary", "report")}
    missing = [name for name in names.values() if name not in artifacts]
    assert not missing, f"artifacts missing: {missing}; found {sorted(artifacts)}"
    data = artifacts[names["results"]].data
    assert isinstance(data, str), data  # a table artifact holds its rows as JSON text
    results = json.loads(data)
    assert [r["id"] for r in results] == [r["id"] for r in rows]
    assert artifacts[names["progress"]].data == pytest.approx(100.0)

    # The flow run page: name, state, and every artifact on its Artifacts tab.
    base = run.server.url
    page.goto(f"{base}/runs/flow-run/{flow_run.id}")
    expect(page.get_by_text(flow_run.name, exact=True).first).to_be_visible()
    expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
    expect(page.get_by_role("link", name="generate-videos")).to_be_visible()
    expect(page.get_by_text(f"{task_runs} Task runs", exact=True)).to_be_visible()
    page.get_by_role("tablist").get_by_text("Artifacts", exact=True).click()
    panel = page.get_by_role("tabpanel", name="Artifacts")
    for name in names.values():
        expect(panel.get_by_text(name, exact=True)).to_be_visible()
    page.screenshot(path=screenshots / "prefect-flow-run.png")

    # The results table: one line per manifest row, the failed row shown as failed.
    page.goto(f"{base}/artifacts/artifact/{artifacts[names['results']].id}")
    cells = page.get_by_role("cell")
    for row in rows:
        expect(cells.filter(has=page.get_by_text(row["id"], exact=True))).to_be_visible()
    failed = page.get_by_role("row").filter(has=page.get_by_text(FAILING_ROW, exact=True))
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("failed")
    expect(cells.filter(has=page.get_by_text("completed", exact=True))).to_have_count(videos)
    page.screenshot(path=screenshots / "prefect-results-artifact.png")

    # The summary: the totals, rendered from markdown.
    page.goto(f"{base}/artifacts/artifact/{artifacts[names['summary']].id}")
    expect(page.get_by_text(f"{videos} of {len(rows)} videos made")).to_be_visible()
    expect(page.get_by_text(f"spent ${spent:,.2f}").first).to_be_visible()
    expect(page.get_by_role("heading", name="Rows by status")).to_be_visible()
    expect(page.get_by_role("heading", name="Failures by reason")).to_be_visible()
    page.screenshot(path=screenshots / "prefect-summary-artifact.png")

    # The progress artifact reached 100 %.
    page.goto(f"{base}/artifacts/artifact/{artifacts[names['progress']].id}")
    expect(page.get_by_text("Progress: 100%")).to_be_visible()

    # The link to the HTML report.
    page.goto(f"{base}/artifacts/artifact/{artifacts[names['report']].id}")
    link = page.get_by_role("link", name="videobatch report")
    expect(link).to_have_attribute("href", (run.out / "report.html").resolve().as_uri())
