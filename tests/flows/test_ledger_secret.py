"""The shared ledger's URL from a Prefect Secret block, for workers with no password in their
environment: a real Prefect API, a real PostgreSQL, the sandbox, in process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from flowkit import API_KEY, fast_options, in_process_flow, in_process_sandbox, write_manifest
from support.postgres import PostgresServer

from tasks.run.environment import LEDGER_SECRET_BLOCK, LEDGER_URL
from tasks.run.lifecycle import batch_name
from tasks.store.ledger import State, connect_ledger

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]

# The cluster trusts loopback connections, so any password is accepted: it is here only to be
# looked for where it must never be.
PASSWORD = "pw-CANARY-secret-block-77d2"


@pytest.fixture
def secret_ledger(pg_server: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database whose URL is only in the Secret block, never in the environment."""
    from prefect.blocks.system import Secret

    url = pg_server.create_database()
    with_password = url.replace("postgres@", f"postgres:{PASSWORD}@", 1)
    monkeypatch.setenv(LEDGER_URL, "")  # empty is unset; monkeypatch restores it afterwards
    monkeypatch.setenv("APIMART_API_KEY", API_KEY)
    Secret(value=with_password).save(LEDGER_SECRET_BLOCK, overwrite=True)
    try:
        yield with_password
    finally:
        # The run adopted the URL into this process's environment: no later test may see it.
        os.environ.pop(LEDGER_URL, None)
        Secret.delete(LEDGER_SECRET_BLOCK)  # type: ignore[attr-defined]
        pg_server.drop_database(url)


async def test_a_run_with_no_ledger_variable_takes_the_url_from_the_secret_block(
    tmp_path: Path, secret_ledger: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With the Secret block set and no variable, the rows land in the database, not a file."""
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "s0", "prompt": "secret clip"}])
    sandbox = in_process_sandbox()
    out = tmp_path / "out"
    outcome = await in_process_flow(sandbox)(options=fast_options(manifest, out, sandbox.url))
    assert outcome["statuses"] == {"completed": 1}
    assert os.environ.get(LEDGER_URL) == secret_ledger
    assert not (out / "ledger.sqlite").exists()
    with connect_ledger(secret_ledger, batch=batch_name(str(out)), readonly=True) as ledger:
        assert {r.state for r in ledger.all().values()} == {State.DOWNLOADED}
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and not [p for p in files if PASSWORD.encode() in p.read_bytes()]
    assert not [r for r in caplog.records if PASSWORD in r.getMessage()]
