"""The API key and signed links stay secret through a run full of errors (the canary test)."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from apimart_testkit import (
    API_KEY,
    MakeSandbox,
    assert_no_canary,
    client_for,
    new_key,
    unique,
    wait_until_done,
)

from apimart import APIMartError, AsyncAPIMartClient, VideoRequest
from apimart.sandbox import FaultRule, Faults

ONCE = FaultRule(rate=1.0, times=1)


async def test_canary_key_appears_nowhere(
    make_sandbox: MakeSandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No message, repr, traceback or DEBUG record of a faulty run holds the key or a signature."""
    caplog.set_level(logging.DEBUG)
    sb = make_sandbox(
        Faults(
            submit_429=FaultRule(rate=1.0, times=1, prompt_contains="throttled"),
            submit_drop_after_create=FaultRule(rate=1.0, prompt_contains="dropped"),
            query_5xx=ONCE,
            download_truncate=FaultRule(rate=1.0, times=1, prompt_contains="cut"),
            download_html=FaultRule(rate=1.0, prompt_contains="html"),
        )
    )
    failures: list[BaseException] = []
    signed_queries: list[str] = []
    async with client_for(sb) as client:
        assert_no_canary([repr(client), repr(vars(client))])

        async def attempt(coro: object) -> object:
            try:
                return await coro  # type: ignore[misc]
            except APIMartError as exc:
                failures.append(exc)
                return None

        for prompt in ("throttled fox", "cut fox", "html fox"):
            result = await client.submit(
                VideoRequest.build(prompt=unique(prompt)), idempotency_key=new_key()
            )
            task = await wait_until_done(client, result.task_id)
            url = task.videos[0].url
            signed_queries.append(urlsplit(url).query)
            await attempt(client.download(url, tmp_path / f"{result.task_id}.mp4"))
        await attempt(
            client.submit(VideoRequest.build(prompt=unique("dropped")), idempotency_key="drop-1")
        )
        await attempt(client.get_task("task_missing"))
        await attempt(client.download(url.replace("http://", "https://evil."), tmp_path / "x"))
    async with client_for(sb, api_key="sk-wrong") as stranger:
        await attempt(stranger.get_task("task_missing"))

    assert len(failures) == 5, failures  # html, dropped, missing, insecure, 401
    assert len(list(tmp_path.glob("*.mp4"))) == 2
    texts = []
    for exc in failures:
        texts.append(str(exc) + repr(exc) + "".join(traceback.format_exception(exc)))
    for record in caplog.records:
        texts.append(record.getMessage() + repr(record.args) + (record.exc_text or ""))
    assert caplog.records, "the run should have logged something"
    assert any(r.levelno == logging.DEBUG and r.name == "apimart" for r in caplog.records)
    assert_no_canary(texts)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("apimart")]
    ours += [str(exc) for exc in failures]
    for query in signed_queries:
        assert not [t for t in ours if query in t]


def test_repr_of_the_client_hides_the_key() -> None:
    """The client's repr shows the base URL and stars, never the key."""
    client = AsyncAPIMartClient(base_url="http://127.0.0.1:9", api_key=API_KEY)
    assert_no_canary([repr(client)])
    assert "********" in repr(client)
