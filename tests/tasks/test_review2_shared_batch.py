"""Review of the shared SQLite batch (members of generate-sharded on one folder's ledger): the
money holes found, each as a test that fails until it is fixed.

Real components only: the sandbox over real HTTP, `open_run` and the steps as a member runs
them, the folder's real SQLite ledger. Where two members must interleave at one exact point,
the test pauses the first member there with a profile hook (nothing of ours is replaced: the
hook only lets the other member's real run go first, as a slower process would).
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
from types import FrameType
from typing import Any

import pytest
from support.manifests import prompt_rows, write_manifest

from apimart import retry
from apimart.errors import AuthenticationError
from apimart.sandbox import RunningSandbox, SandboxConfig, run_in_thread
from tasks.errors import RunStopped
from tasks.run.lifecycle import open_run
from tasks.run.options import RunOptions
from tasks.steps.chunk import claim_states
from tasks.steps.submit import submit_row
from tasks.store import conflicts
from tasks.store.hashing import request_hash
from tasks.store.ledger import Ledger, State, open_ledger
from tasks.store.manifest import read_manifest

KEY = "sk-review2-shared-canary-5e1d"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("APIMART_API_KEY", KEY)
    monkeypatch.delenv("VIDEOBATCH_LEDGER_URL", raising=False)
    with retry.no_waits():
        yield


def _options(manifest: Path, out: Path, sb: RunningSandbox) -> RunOptions:
    return RunOptions(
        manifest=str(manifest),
        out=str(out),
        base_url=sb.url,
        poll_initial_delay=0.02,
        poll_interval=0.02,
        submit_rate=1000,
        report=False,
    )


def _failed_row_of(tmp_path: Path, out: Path, prompt: str) -> None:
    """A folder whose row r0 was sent as `prompt` and failed (unpaid): a changed row is renewed."""
    old = read_manifest(write_manifest(tmp_path / "old.csv", prompt_rows([prompt])))
    request = old.valid_rows[0].request
    assert request is not None
    with open_ledger(out) as ledger:
        ledger.ensure("r0", 0)
        ledger.record_intent(
            "r0",
            attempt=1,
            req_hash=request_hash(request),
            key="vb-r0-old",
            estimated_cost=0.1,
            run_id="old-run",
        )
        ledger.record_submitted("r0", task_id="task-old", status="submitted")
        ledger.update("r0", "failed", state=State.FAILED, api_status="failed", cost=0.0)


@contextmanager
def open_ledger_readonly(out: Path) -> Iterator[Ledger]:
    """The folder's ledger as the parent reads it (read-only, no lock)."""
    ledger = Ledger(out, readonly=True)
    try:
        yield ledger
    finally:
        ledger.close()


def _tasks_for(sb: RunningSandbox, prompt: str) -> int:
    return int(sb.state.stats()["tasks_created_by_prompt"].get(prompt, 0))


async def test_a_members_renewal_never_resets_a_row_another_member_sent_meanwhile(
    tmp_path: Path,
) -> None:
    """A changed unpaid row renewed and sent by one member keeps its paid task when a second
    member, whose open saw the row before that, renews it too: the row is never sent twice."""
    out = tmp_path / "out"
    _failed_row_of(tmp_path, out, "the old prompt of r0")
    new_prompt = "the new prompt of r0"
    manifest = write_manifest(tmp_path / "m.csv", prompt_rows([new_prompt]))
    first: dict[str, Any] = {}

    async def member_a(options: RunOptions) -> None:
        """The other member, a whole open and send of its own, as its process would do them."""
        async with open_run(options, share_batch="folder") as runtime:
            claim = runtime.ledger.claim(
                runtime.run_id, 10, lease_s=600, states=claim_states(runtime)
            )
            assert [r.row_id for r in claim.rows] == ["r0"]
            first["state"] = await submit_row(runtime, "r0")
            record = runtime.ledger.get("r0")
            assert record is not None
            first["task_id"] = record.task_id
            # This member ends here; a live one would go on polling its task.
            runtime.ledger.release(runtime.run_id)

    config = SandboxConfig(api_key=KEY, time_scale=0.004)
    with run_in_thread(config) as sb:
        options = _options(manifest, out, sb)
        renewing = conflicts.renewed_record.__code__
        fired = threading.Event()

        def pause_here(frame: FrameType, event: str, arg: object) -> None:
            # Member B has read the ledger and is about to renew r0: member A goes first.
            if event == "call" and frame.f_code is renewing and not fired.is_set():
                fired.set()
                other = threading.Thread(target=lambda: asyncio.run(member_a(options)))
                other.start()
                other.join(timeout=120)

        sys.setprofile(pause_here)
        try:
            async with open_run(options, share_batch="folder") as member_b:
                sys.setprofile(None)
                assert fired.is_set(), "member B never renewed r0"
                assert first.get("state") == State.SUBMITTED, first
                record = member_b.ledger.get("r0")
                assert record is not None
                assert record.task_id == first["task_id"], (
                    f"member B's renewal wiped member A's paid task {first['task_id']}: the row "
                    f"now reads {record.state} with task {record.task_id}"
                )
                # And so nothing is sent again for it.
                claim = member_b.ledger.claim(
                    member_b.run_id, 10, lease_s=600, states=claim_states(member_b)
                )
                for row in claim.rows:
                    await submit_row(member_b, row.row_id)
                assert _tasks_for(sb, new_prompt) == 1
        finally:
            sys.setprofile(None)


async def test_a_member_started_after_a_401_stopped_the_batch_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 401 stops every member of the batch, also one started after the member that met it
    has ended (what generate-sharded's replacement round starts): it sends no request."""
    monkeypatch.setenv("APIMART_API_KEY", "sk-review2-revoked-key-0a7c")
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path / "m.csv", prompt_rows(["one", "two", "three"]))
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.004)) as sb:
        options = _options(manifest, out, sb)
        async with open_run(options, share_batch="folder") as first:
            claim = first.ledger.claim(first.run_id, 10, lease_s=600, states=claim_states(first))
            with pytest.raises(AuthenticationError):
                await submit_row(first, claim.rows[0].row_id)
            first.ledger.release(first.run_id)  # the member ends, as a stopped run does
            stop = first.ledger.stopped()
            assert stop is not None and stop.kind == "auth"
        assert sb.state.stats()["submit_requests"] == 1

        async with open_run(options, share_batch="folder") as replacement:
            assert replacement.ledger.stopped() is not None, "the batch's 401 stop was lifted"
            claim = replacement.ledger.claim(
                replacement.run_id, 10, lease_s=600, states=claim_states(replacement)
            )
            for row in claim.rows:
                with pytest.raises((RunStopped, AuthenticationError)):
                    await submit_row(replacement, row.row_id)
        assert sb.state.stats()["submit_requests"] == 1


@pytest.mark.slow
async def test_a_member_still_reading_its_manifest_already_beats_its_heartbeat(
    tmp_path: Path,
) -> None:
    """A member run beats its heartbeat in the batch's ledger while it is still reading and
    checking its manifest (minutes for a large one), so generate-sharded, which marks a taken
    member with no heartbeat for `dead_after` Crashed, never takes a live member for dead."""
    out = tmp_path / "out"
    with open_ledger(out, shared=True) as earlier:  # the batch exists: its first round ran
        earlier.ensure("r0", 0)
    # Reading this row's image blocks the manifest check until the test lets it go (the
    # stand-in for a manifest that takes long to check).
    pipe = tmp_path / "slow.png"
    os.mkfifo(pipe)
    manifest = write_manifest(
        tmp_path / "m.csv",
        [{"id": "r0", "prompt": "a slow start", "duration": 4, "image_urls": "slow.png"}],
    )
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.004)) as sb:
        options = _options(manifest, out, sb)
        opened = threading.Event()

        async def member() -> None:
            async with open_run(options, share_batch="folder"):
                opened.set()

        thread = threading.Thread(target=lambda: asyncio.run(member()), daemon=True)
        thread.start()
        try:
            beating = False
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not opened.is_set():
                with open_ledger_readonly(out) as reader:
                    if reader.members():
                        beating = True
                        break
                await asyncio.sleep(0.1)
            assert not opened.is_set(), "the manifest check was never held"
        finally:
            # Let the manifest check go on (the image is then refused: not a file).
            os.close(os.open(pipe, os.O_WRONLY))
            thread.join(timeout=60)
        assert opened.is_set()
        assert beating, "no heartbeat in the batch's ledger while the member read its manifest"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
async def test_a_resending_member_never_resends_a_row_a_dead_sibling_left_mid_post(
    tmp_path: Path,
) -> None:
    """A first-round member with --resubmit-unknown (as generate-sharded starts it) never
    resends a row a sibling of its batch left in intent (killed mid-POST): that doubt arose
    during the batch, after the person's decision; the row stays unknown, the rest is sent."""
    from support.runs import fast_options

    from flows.generate import generate

    out = tmp_path / "out"
    manifest = write_manifest(
        tmp_path / "m.csv", prompt_rows(["the sibling's row", "a row nobody sent"])
    )
    request = read_manifest(str(manifest)).valid_rows[0].request
    assert request is not None
    with open_ledger(out, shared=True) as sibling:
        sibling.ensure("r0", 0)
        sibling.ensure("r1", 1)
        claim = sibling.claim("dead-sibling", 1, lease_s=0.5)
        assert [r.row_id for r in claim.rows] == ["r0"]
        req_hash = request_hash(request)
        sibling.record_intent(
            "r0",
            attempt=1,
            req_hash=req_hash,
            key=sibling.idempotency_key("r0", req_hash, 1),
            estimated_cost=0.1,
            run_id="dead-sibling",
            owner="dead-sibling",
        )
        # The sibling's process is killed here, its POST under way.
    while time.time() <= claim.until:  # its lease must run out for anyone to see the row
        await asyncio.sleep(0.05)
    with run_in_thread(SandboxConfig(api_key=KEY, time_scale=0.004)) as sb:
        options = fast_options(manifest, out, sb.url, resubmit_unknown=True)
        await generate(options, share_batch="folder")
        assert _tasks_for(sb, "a row nobody sent") == 1
        assert _tasks_for(sb, "the sibling's row") == 0, "the sibling's doubtful row was resent"
