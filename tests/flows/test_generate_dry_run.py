"""`dry_run` as a flow parameter: a real `generate-videos` flow run that validates, estimates,
publishes the estimate as an artifact, and sends nothing (no ledger, no lock, no request)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flowkit import fast_options, write_manifest

from apimart import spec
from flows.generate import generate_videos
from tasks.present.artifacts import artifact_key

MakeSandbox = Any

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


async def _artifact(key: str) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        artifact = await client.read_latest_artifacts()
        matches = [a for a in artifact if a.key == key]
    assert matches, f"no artifact {key!r} on the Prefect API"
    return matches[0]


async def test_a_dry_run_flow_run_estimates_publishes_and_sends_nothing(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """A flow run with dry_run=true makes no request, writes no ledger, and publishes its
    estimate (rows, cost, invalid rows) as a markdown artifact readable from the API."""
    sb = make_sandbox()
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            {"id": "a", "prompt": "dry run row a", "duration": 4, "resolution": "720p"},
            {"id": "b", "prompt": "dry run row b", "duration": 8, "resolution": "1080p"},
            {"id": "five", "prompt": "an invalid duration", "duration": 5},
        ],
    )
    out = tmp_path / "dry-out"
    before = sb.state.counters.snapshot()

    outcome = await generate_videos(
        options=fast_options(manifest, out, sb.url, dry_run=True, concurrency=2)
    )

    assert sb.state.counters.snapshot() == before, "a dry run must not make a single request"
    assert not out.exists(), "a dry run opens no ledger and takes no lock"
    cost = round(spec.estimate_cost("720p", 4) + spec.estimate_cost("1080p", 8), 4)
    assert outcome["dry_run"] is True
    assert (outcome["rows"], outcome["valid"], outcome["invalid"]) == (3, 2, 1)
    assert outcome["estimated_cost"] == pytest.approx(cost)

    artifact = await _artifact(f"{artifact_key(str(out))}-estimate")
    assert artifact.type == "markdown"
    text = str(artifact.data)
    assert "nothing was sent" in text
    assert "| Rows | 3 |" in text and "| Valid (would be sent) | 2 |" in text
    assert "| Invalid (never sent) | 1 |" in text
    assert f"${cost:,.2f}" in text
    assert "at concurrency 2" in text
    assert "five" in text and "duration" in text


async def test_a_dry_run_needs_no_api_key(
    make_sandbox: MakeSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dry run never resolves the key: with none configured it still estimates."""
    sb = make_sandbox()
    monkeypatch.delenv("APIMART_API_KEY")
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "prompt": "no key", "duration": 4}])
    out = tmp_path / "out"
    outcome = await generate_videos(options=fast_options(manifest, out, sb.url, dry_run=True))
    assert outcome["valid"] == 1 and outcome["completed"] == 0
    assert sb.state.counters.snapshot()["submit_requests"] == 0
    assert not out.exists()
