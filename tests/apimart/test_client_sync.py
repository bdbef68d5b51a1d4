"""The blocking face runs the same flows as the async one: a smoke test of each path."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest
from apimart_testkit import API_KEY, MakeSandbox, Sandbox, closed_port, unique

from apimart import (
    APIMartClient,
    BadRequestError,
    ConnectError,
    LinkExpiredError,
    RetryPolicy,
    SubmitOutcomeUnknown,
    Task,
    VideoRequest,
)
from apimart.sandbox import FaultRule, Faults


def sync_client(sb: Sandbox | str, **options: object) -> APIMartClient:
    url = sb if isinstance(sb, str) else sb.url
    return APIMartClient(base_url=url, api_key=API_KEY, retry=RetryPolicy(attempts=3), **options)  # type: ignore[arg-type]


def wait(client: APIMartClient, task_id: str) -> Task:
    for _ in range(2000):
        task = client.get_task(task_id)
        if task.is_terminal:
            return task
        time.sleep(0.01)
    raise AssertionError("never finished")


def test_submit_query_download(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    sb = make_sandbox(
        Faults(
            submit_429=FaultRule(rate=1.0, times=1),
            query_5xx=FaultRule(rate=1.0, times=1),
            download_truncate=FaultRule(rate=1.0, times=1),
        )
    )
    with sync_client(sb) as client:
        result = client.submit(
            VideoRequest.build(prompt=unique(), duration=4), idempotency_key="s1"
        )
        task = wait(client, result.task_id)
        video = task.videos[0]
        downloaded = client.download(video.url, tmp_path / "v.mp4", expires_at=video.expires_at)
    data = (tmp_path / "v.mp4").read_bytes()
    assert data == httpx.get(video.url).content
    assert downloaded.sha256 == hashlib.sha256(data).hexdigest()
    assert sb.state.counters.tasks_created == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_errors_are_the_same(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    sb = make_sandbox(Faults(submit_5xx=FaultRule(rate=1.0, prompt_contains="boom")))
    with sync_client(sb) as client:
        with pytest.raises(SubmitOutcomeUnknown):
            client.submit(VideoRequest.build(prompt="boom"), idempotency_key="s2")
        request = VideoRequest.build(prompt="fine")
        object.__setattr__(request, "duration", 7)
        with pytest.raises(BadRequestError) as caught:
            client.submit(request, idempotency_key="s3")
        assert caught.value.error_type == "invalid_duration"
        with pytest.raises(LinkExpiredError):
            client.download(sb.url + "/cdn/videos/x.mp4?sig=1", tmp_path / "v.mp4", expires_at=1.0)
    assert sb.state.counters.tasks_created_by_key == {"s2": 1}


def test_connect_failure() -> None:
    with sync_client(f"http://127.0.0.1:{closed_port()}") as client, pytest.raises(ConnectError):
        client.get_task("task_1")
