"""One local folder, one ledger: a folder a database batch ran into refuses every run on the
folder's own SQLite ledger (plain, member, generate-sharded's choice), before anything is sent.

Real components: the sandbox over real HTTP, `open_run` and the submit step, the session's
PostgreSQL server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.manifests import prompt_rows, write_manifest

from apimart import retry
from apimart.sandbox import SandboxConfig, run_in_thread
from tasks.errors import RunRefused
from tasks.run.lifecycle import batch_share, open_run
from tasks.run.options import RunOptions
from tasks.steps.chunk import claim_states
from tasks.steps.submit import submit_row
from tasks.store.layout import LEDGER_MARK
from tasks.store.ledger import State

KEY = "sk-fixes3-folder-canary-9d2a"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    with retry.no_waits():
        yield


async def test_a_folder_a_database_batch_ran_into_refuses_runs_on_its_own_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    """After a database run paid for a row into a local folder, a plain run, a member of a
    folder batch and generate-sharded's ledger choice without VIDEOBATCH_LEDGER_URL are all
    refused (nothing sent); the folder's mark names the batch, never the database URL."""
    prompt = "a kite over a dune"
    manifest = write_manifest(tmp_path / "m.csv", prompt_rows([prompt]))
    out = tmp_path / "out"
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.004)) as sb:
        options = RunOptions(
            manifest=str(manifest),
            out=str(out),
            base_url=sb.url,
            poll_initial_delay=0.02,
            poll_interval=0.02,
            submit_rate=1000,
            report=False,
        )
        monkeypatch.setenv("VIDEOBATCH_LEDGER_URL", pg_url)
        async with open_run(options) as first:
            claim = first.ledger.claim(first.run_id, 10, lease_s=600, states=claim_states(first))
            assert await submit_row(first, claim.rows[0].row_id) == State.SUBMITTED
            first.ledger.release(first.run_id)
        mark = (out / LEDGER_MARK).read_text()
        assert str(out.resolve()) in mark and pg_url not in mark and "postgres@" not in mark
        assert not (out / "ledger.sqlite").exists()

        monkeypatch.delenv("VIDEOBATCH_LEDGER_URL")
        for share in (None, "folder"):
            with pytest.raises(RunRefused, match="Nothing was sent") as refused:
                async with open_run(options, share_batch=share) as other:  # type: ignore[arg-type]
                    for row in other.ledger.claim(other.run_id, 10, lease_s=600).rows:
                        await submit_row(other, row.row_id)
            assert str(out) in str(refused.value) and LEDGER_MARK in str(refused.value)
        with pytest.raises(RunRefused, match="VIDEOBATCH_LEDGER_URL"):
            batch_share(str(out))
        assert sb.state.stats()["tasks_created_by_prompt"].get(prompt) == 1
    assert not (out / "ledger.sqlite").exists()


async def test_a_database_run_is_refused_while_a_plain_run_holds_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    """A database run into a folder a plain run is working in (its exclusive lock) is refused
    before it opens the database batch, and leaves no mark."""
    from tasks.errors import LedgerLocked
    from tasks.store.ledger import FolderLock

    manifest = write_manifest(tmp_path / "m.csv", prompt_rows(["a tram in fog"]))
    out = tmp_path / "out"
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.004)) as sb:
        options = RunOptions(manifest=str(manifest), out=str(out), base_url=sb.url, report=False)
        monkeypatch.setenv("VIDEOBATCH_LEDGER_URL", pg_url)
        with FolderLock(out), pytest.raises(LedgerLocked):
            async with open_run(options):
                pass
        assert sb.state.stats()["submit_requests"] == 0
    assert not (out / LEDGER_MARK).exists()
