"""The client's connection pool, seen from outside: the TCP connections it opens to a
sandbox over real HTTP, counted by a plain TCP proxy in between."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from apimart_testkit import CountingTransport, MakeSandbox, client_for, unique

from apimart.client import AsyncAPIMartClient
from apimart.models import VideoRequest


class CountingProxy:
    """A TCP proxy in front of the sandbox that counts the connections the client opens.

    While `hold_until` connections are not yet open, no answer is passed back, so that many
    requests are surely in flight at once (no timing involved).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.opened = 0
        self.open_now = 0
        self.most_open = 0
        self.hold_until = 0
        self.released = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def hold(self, connections: int) -> None:
        self.hold_until = connections
        self.released.clear()
        self._check()

    def _check(self) -> None:
        if self.open_now >= self.hold_until:
            self.released.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        self._check()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, held: bool) -> None:
            try:
                while chunk := await src.read(65536):
                    if held:
                        await self.released.wait()
                    dst.write(chunk)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        finally:
            self.open_now -= 1


@contextlib.asynccontextmanager
async def proxied(
    make_sandbox: MakeSandbox, **options: Any
) -> AsyncIterator[tuple[CountingProxy, AsyncAPIMartClient]]:
    sb = make_sandbox()
    port = httpx.URL(sb.url).port
    assert port is not None
    async with CountingProxy(port) as proxy, client_for(proxy.url, **options) as client:
        yield proxy, client


async def _submit_one(client: AsyncAPIMartClient) -> str:
    request = VideoRequest.build(prompt=unique())
    return (await client.submit(request, idempotency_key=uuid.uuid4().hex)).task_id


async def _wave(client: AsyncAPIMartClient, task_ids: list[str]) -> None:
    await asyncio.gather(*(client.get_task(t) for t in task_ids))


async def test_idle_connections_past_twenty_are_kept_for_the_next_wave(
    make_sandbox: MakeSandbox,
) -> None:
    """`max_connections=40`: after 40 queries at once the pool keeps all 40 connections, so the
    next 40 open none."""
    async with proxied(make_sandbox, max_connections=40) as (proxy, client):
        task_ids = [await _submit_one(client) for _ in range(40)]
        proxy.hold(40)
        await _wave(client, task_ids)
        first = proxy.opened
        assert proxy.most_open == 40
        await _wave(client, task_ids)
        # httpx's default pool (the client's without max_connections) keeps 20 and closes the
        # rest as each request ends.
        assert proxy.opened == first, proxy.opened - first


async def test_without_max_connections_the_client_keeps_httpxs_default_pool(
    make_sandbox: MakeSandbox,
) -> None:
    """No `max_connections`: after 40 queries at once at most 20 connections stay open."""
    async with proxied(make_sandbox) as (proxy, client):
        task_ids = [await _submit_one(client) for _ in range(40)]
        proxy.hold(40)
        await _wave(client, task_ids)
        await until(lambda: proxy.open_now <= 20, "idle connections past 20 closed")
        assert proxy.most_open == 40


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    ends = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > ends:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_max_connections_caps_the_pool(make_sandbox: MakeSandbox) -> None:
    """`max_connections=4`: 16 queries at once all succeed over at most 4 connections."""
    async with proxied(make_sandbox, max_connections=4) as (proxy, client):
        task_ids = [await _submit_one(client) for _ in range(16)]
        tasks = await asyncio.gather(*(client.get_task(t) for t in task_ids))
    assert [t.id for t in tasks] == task_ids
    assert proxy.most_open <= 4, proxy.most_open


def test_max_connections_must_be_positive() -> None:
    """A pool of no connection is refused at construction, naming the keyword."""
    with pytest.raises(ValueError, match="max_connections"):
        AsyncAPIMartClient(base_url="http://127.0.0.1:9", api_key="sk-x", max_connections=0)


async def test_an_injected_transport_still_carries_every_request(
    make_sandbox: MakeSandbox,
) -> None:
    """With `transport=` and `max_connections=`, requests go through the given transport."""
    sb = make_sandbox()
    transport = CountingTransport()
    async with client_for(sb, transport=transport, max_connections=2) as client:
        task_id = await _submit_one(client)
        await client.get_task(task_id)
    assert transport.count("POST", "/v1/videos") == 1
    assert transport.count("GET", task_id) == 1
