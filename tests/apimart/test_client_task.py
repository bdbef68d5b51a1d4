"""GET /v1/tasks/{id} against the sandbox: statuses, both URL shapes, and what is retried."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from apimart_testkit import (
    CountingTransport,
    MakeSandbox,
    ProxyTransport,
    Sandbox,
    client_for,
    instant,
    new_key,
    unique,
    wait_until_done,
)

from apimart import (
    AsyncAPIMartClient,
    AuthenticationError,
    ConnectError,
    NotFoundError,
    RequestValidationError,
    ServerError,
    VideoRequest,
)
from apimart.errors import PermissionDeniedError
from apimart.sandbox import FaultRule, Faults


async def submit(client: AsyncAPIMartClient, prompt: str | None = None) -> str:
    result = await client.submit(
        VideoRequest.build(prompt=prompt or unique()), idempotency_key=new_key()
    )
    return result.task_id


@pytest.mark.parametrize("shape", ["string", "list", "mixed"])
async def test_completed_task_has_a_video_in_every_url_shape(
    make_sandbox: MakeSandbox, shape: str
) -> None:
    """A completed task has one signed video, expiry, cost and times, in every URL shape."""
    sb = make_sandbox(url_shape=shape)
    async with client_for(sb) as client:
        ids = [await submit(client) for _ in range(4)]
        tasks = await asyncio.gather(*(wait_until_done(client, i) for i in ids))
        for task in tasks:
            assert task.status == "completed" and task.progress == 100
            assert len(task.videos) == 1
            video = task.videos[0]
            assert video.url.startswith(sb.url) and "sig=" in video.url
            assert video.expires_at is not None and task.cost and task.cost > 0
            assert task.created is not None and task.completed is not None


async def test_running_task_is_not_terminal(sandbox: Sandbox) -> None:
    """A task still running is not terminal and has no videos."""
    async with client_for(sandbox) as client:
        task = await client.get_task(await submit(client))
        assert task.status in ("submitted", "pending", "processing") and not task.is_terminal
        assert task.videos == ()


async def test_failed_task_reports_why_in_the_asked_language(make_sandbox: MakeSandbox) -> None:
    """A failed task costs nothing and says why in the language asked for (zh)."""
    sb = make_sandbox(Faults(task_fail=FaultRule(rate=1.0)))
    async with client_for(sb) as client:
        task_id = await submit(client)
        task = await wait_until_done(client, task_id, language="zh")
    assert task.status == "failed" and task.cost == 0 and task.videos == ()
    assert task.error is not None and task.error.code == "task_failed"
    assert any("\u4e00" <= ch <= "\u9fff" for ch in task.error.message)


async def test_cancelled_task(make_sandbox: MakeSandbox) -> None:
    """A cancelled task is terminal with status cancelled."""
    sb = make_sandbox(Faults(task_cancel=FaultRule(rate=1.0)))
    async with client_for(sb) as client:
        task = await wait_until_done(client, await submit(client))
    assert task.status == "cancelled" and task.is_terminal


async def test_unknown_status_counts_as_running(make_sandbox: MakeSandbox) -> None:
    """An undocumented status (queued) counts as running, and the task still completes."""
    sb = make_sandbox(Faults(unknown_status=FaultRule(rate=1.0)), time_scale=0.004)
    async with client_for(sb) as client:
        task_id = await submit(client)
        first = await client.get_task(task_id)
        assert first.status == "queued"
        assert not first.is_known_status and not first.is_terminal
        assert (await wait_until_done(client, task_id)).status == "completed"


async def test_query_5xx_is_retried(make_sandbox: MakeSandbox) -> None:
    """Query 5xx answers are retried: the third try returns the task."""
    sb = make_sandbox(Faults(query_5xx=FaultRule(rate=1.0, times=2)))
    async with client_for(sb, retry=instant(3)) as client:
        task_id = await submit(client)
        task = await client.get_task(task_id)
    assert task.id == task_id
    assert sb.state.counters.queries_by_task[task_id] == 3


async def test_query_5xx_exhausted_is_server_error(make_sandbox: MakeSandbox) -> None:
    """A 5xx on every query try ends as ServerError after `attempts` queries."""
    sb = make_sandbox(Faults(query_5xx=FaultRule(rate=1.0)))
    async with client_for(sb, retry=instant(4)) as client:
        task_id = await submit(client)
        with pytest.raises(ServerError) as caught:
            await client.get_task(task_id)
    assert caught.value.status_code >= 500
    assert sb.state.counters.queries_by_task[task_id] == 4


async def test_unknown_task_is_not_found_at_once(sandbox: Sandbox) -> None:
    """An unknown task id is NotFoundError at once; an id holding ../ stays under /v1/tasks/."""
    transport = CountingTransport()
    async with client_for(sandbox, transport=transport) as client:
        with pytest.raises(NotFoundError):
            await client.get_task("task_does_not_exist")
        # Quoted whole: an id cannot reach another path.
        with pytest.raises(NotFoundError):
            await client.get_task("../videos/generations")
    assert len(transport.requests) == 2
    assert transport.requests[1].url.raw_path.startswith(b"/v1/tasks/..%2F")


async def test_wrong_key_on_query(sandbox: Sandbox) -> None:
    """A wrong key's 401 to a query is AuthenticationError."""
    async with client_for(sandbox, api_key="sk-wrong") as client:
        with pytest.raises(AuthenticationError):
            await client.get_task("task_x")


async def test_query_connect_failures_are_retried(sandbox: Sandbox) -> None:
    """Query connect failures are retried until one connects; failing every try, ConnectError."""
    async with client_for(sandbox) as client:
        task_id = await submit(client)
        transport = CountingTransport(refuse_first=2)
        async with client_for(sandbox, transport=transport) as flaky:
            assert (await flaky.get_task(task_id)).id == task_id
        assert len(transport.requests) == 3
        transport = CountingTransport(refuse_first=99)
        async with client_for(sandbox, transport=transport) as dead:
            with pytest.raises(ConnectError):
                await dead.get_task(task_id)
        assert len(transport.requests) == 3


@pytest.mark.parametrize(
    ("task_id", "language"), [("", None), ("   ", None), ("task_1", "fr"), ("task_1", "EN")]
)
async def test_bad_arguments_are_refused(
    sandbox: Sandbox, task_id: str, language: str | None
) -> None:
    """An empty task id or a language other than en, zh, ko or ja is RequestValidationError."""
    async with client_for(sandbox) as client:
        with pytest.raises(RequestValidationError):
            await client.get_task(task_id, language=language)


async def test_query_408_is_retried_and_403_stops_at_once(sandbox: Sandbox) -> None:
    """On a query a proxy's 408 is retried until the sandbox answers; its 403 stops at once."""
    async with client_for(sandbox) as client:
        task_id = await submit(client)

    def timed_out_twice(request: httpx.Request, n: int) -> httpx.Response | None:
        return httpx.Response(408, text="Request Timeout", request=request) if n <= 2 else None

    proxy = ProxyTransport(timed_out_twice)
    async with client_for(sandbox, transport=proxy) as client:
        assert (await client.get_task(task_id)).id == task_id
    assert len(proxy.requests) == 3 and proxy.forwarded == 1

    def forbidden(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(403, text="Forbidden", request=request)

    proxy = ProxyTransport(forbidden)
    async with client_for(sandbox, transport=proxy) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.get_task(task_id)
    assert isinstance(caught.value, PermissionDeniedError) and caught.value.status_code == 403
    assert len(proxy.requests) == 1
