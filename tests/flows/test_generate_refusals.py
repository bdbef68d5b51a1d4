"""What `generate-videos` refuses before it opens, locks or sends anything: another layout's
folder, a key that cannot be sent. A deployment run meets these checks inside the flow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flowkit import fast_options, write_manifest

from flows.generate import generate_videos
from tasks.run.lifecycle import RunRefused

MakeSandbox = Any

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


def _sharded_folder(out: Path) -> Path:
    (out / "shards" / "shard-0").mkdir(parents=True)
    (out / "shards.json").write_text("{}", encoding="utf-8")
    return out


async def test_a_plain_run_into_a_sharded_folder_is_refused_before_anything_opens(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """A plain flow run into a folder holding shards.json and shards/ sends nothing and
    creates no ledger or lock there."""
    sb = make_sandbox()
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "prompt": "p", "duration": 4}])
    out = _sharded_folder(tmp_path / "out")
    with pytest.raises(RunRefused, match="holds a sharded run"):
        await generate_videos(options=fast_options(manifest, out, sb.url))
    assert sb.state.counters.snapshot()["submit_requests"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["shards", "shards.json"]


async def test_a_key_that_cannot_be_sent_is_refused_before_the_ledger_opens(
    make_sandbox: MakeSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key wrapped over two lines stops the flow run with a message that names the rule,
    not the key, before any request, ledger or lock."""
    sb = make_sandbox()
    monkeypatch.setenv("APIMART_API_KEY", "sk-a\nsk-SECRET-flow")
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "prompt": "p", "duration": 4}])
    out = tmp_path / "out"
    with pytest.raises(RunRefused, match="cannot be sent in an HTTP header") as refused:
        await generate_videos(options=fast_options(manifest, out, sb.url))
    assert "SECRET" not in str(refused.value) and "sk-a" not in str(refused.value)
    assert sb.state.counters.snapshot()["submit_requests"] == 0
    assert not out.exists()
