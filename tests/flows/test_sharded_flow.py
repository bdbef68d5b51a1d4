"""The `generate-sharded` flow for real, against a real Prefect API and the sandbox over HTTP:
refusals that start nothing and send nothing, and a dry run that only estimates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flowkit import fast_options, write_manifest

from flows.sharded import generate_sharded
from tasks.errors import LedgerLocked, RunRefused
from tasks.store.ledger import open_ledger

pytestmark = [pytest.mark.usefixtures("prefect_api")]

NO_DEPLOYMENT = "no-such-flow/no-such-deployment"


def _manifest(tmp_path: Path) -> Path:
    rows = [{"id": f"r{i}", "prompt": f"member clip {i}", "duration": 4} for i in range(4)]
    return write_manifest(tmp_path / "big.csv", rows)


@pytest.mark.parametrize("mark", ["shards.json", "shards"])
async def test_a_folder_of_the_old_per_shard_layout_is_refused_before_anything_starts(
    make_sandbox: Any, tmp_path: Path, mark: str
) -> None:
    """A folder an earlier videobatch sharded (shards.json or shards/) is refused, naming it,
    why and what to do; nothing is started, written or sent."""
    sb = make_sandbox()
    out = tmp_path / "out"
    out.mkdir()
    (out / mark).mkdir() if mark == "shards" else (out / mark).write_text("{}")
    with pytest.raises(RunRefused) as err:
        await generate_sharded(
            options=fast_options(_manifest(tmp_path), out, sb.url), deployment=NO_DEPLOYMENT
        )
    text = str(err.value)
    assert str(out) in text and "earlier videobatch" in text and "ledger per shard" in text
    assert "Nothing was sent" in text and "new output folder" in text
    assert not (out / "ledger.sqlite").exists()
    assert sb.state.counters.snapshot()["submit_requests"] == 0


async def test_a_folder_a_plain_run_holds_is_refused_before_any_member_starts(
    make_sandbox: Any, tmp_path: Path
) -> None:
    """While a plain run holds the folder exclusively, generate-sharded starts no member."""
    sb = make_sandbox()
    out = tmp_path / "out"
    with open_ledger(out), pytest.raises(LedgerLocked, match="plain run"):
        await generate_sharded(
            options=fast_options(_manifest(tmp_path), out, sb.url), deployment=NO_DEPLOYMENT
        )
    assert sb.state.counters.snapshot()["submit_requests"] == 0


async def test_an_object_store_output_without_a_ledger_url_is_refused(
    make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s3:// with no VIDEOBATCH_LEDGER_URL has no ledger to share: refused, saying so."""
    monkeypatch.delenv("VIDEOBATCH_LEDGER_URL", raising=False)
    sb = make_sandbox()
    options = fast_options(_manifest(tmp_path), tmp_path / "x", sb.url)
    options = options.model_copy(update={"out": "s3://bucket/prefix"})
    with pytest.raises(RunRefused, match="a shared ledger needs VIDEOBATCH_LEDGER_URL"):
        await generate_sharded(options=options, deployment=NO_DEPLOYMENT)
    assert sb.state.counters.snapshot()["submit_requests"] == 0


async def test_dry_run_starts_nothing_and_sends_nothing(make_sandbox: Any, tmp_path: Path) -> None:
    """options.dry_run validates and estimates: no member, no ledger, no request, an artifact."""
    from prefect.artifacts import Artifact

    from tasks.present.artifacts import artifact_key

    sb = make_sandbox()
    out = tmp_path / "out"
    options = fast_options(_manifest(tmp_path), out, sb.url, dry_run=True)
    summary = await generate_sharded(options=options, shards=2, deployment=NO_DEPLOYMENT)
    assert summary["dry_run"] is True and summary["valid"] == 4 and summary["shards"] == 2
    assert summary["estimated_cost"] > 0
    assert not out.exists()
    assert sb.state.counters.snapshot()["submit_requests"] == 0
    artifact = await Artifact.aget(f"{artifact_key(str(out))}-estimate")
    assert artifact is not None and "nothing was sent" in str(artifact.data)
