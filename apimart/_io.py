"""The only place that does I/O, written once for both the sync and the async client.

Every operation (submit, query, download) is a generator that yields actions (send this
request, sleep this long, read the next chunk, run this blocking function) and receives their
results; a network failure is thrown back into it at the yield as the original httpx
exception. `drive` runs such a flow against a backend. The async backend really awaits; the
sync backend's coroutines never suspend, so `run_sync` finishes the same `drive` coroutine in a
single step. One loop serves both faces, so their behaviour cannot drift apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Send:
    """Send a request and read the whole answer; yields back the httpx.Response."""

    request: httpx.Request


@dataclass(frozen=True, slots=True)
class Open:
    """Send a request and stop after the headers; yields back the streaming httpx.Response."""

    request: httpx.Request


@dataclass(frozen=True, slots=True)
class Read:
    """The next chunk of the open stream's body; yields back bytes, or None at its end."""


@dataclass(frozen=True, slots=True)
class Close:
    """Close the open stream, abandoning whatever of its body is unread."""


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Blocking:
    """Run a blocking function (fsync, rename); the async backend moves it off the loop."""

    function: Callable[[], Any]


Action = Send | Open | Read | Close | Sleep | Blocking
Flow = Generator[Action, Any, T]


class Backend(Protocol):
    async def send(self, request: httpx.Request, *, stream: bool) -> httpx.Response: ...
    def chunks(self, response: httpx.Response) -> Any: ...
    async def read(self, chunks: Any) -> bytes | None: ...
    async def close(self, response: httpx.Response) -> None: ...
    async def sleep(self, seconds: float) -> None: ...
    async def blocking(self, function: Callable[[], Any]) -> Any: ...


class SyncBackend:
    """Coroutines that never suspend: each completes on its first step."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    async def send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        return self.http.send(request, stream=stream)

    def chunks(self, response: httpx.Response) -> Iterator[bytes]:
        return response.iter_bytes()

    async def read(self, chunks: Iterator[bytes]) -> bytes | None:
        return next(chunks, None)

    async def close(self, response: httpx.Response) -> None:
        response.close()

    async def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    async def blocking(self, function: Callable[[], Any]) -> Any:
        return function()


class AsyncBackend:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        return await self.http.send(request, stream=stream)

    def chunks(self, response: httpx.Response) -> AsyncIterator[bytes]:
        return response.aiter_bytes()

    async def read(self, chunks: AsyncIterator[bytes]) -> bytes | None:
        return await anext(chunks, None)

    async def close(self, response: httpx.Response) -> None:
        await response.aclose()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def blocking(self, function: Callable[[], Any]) -> Any:
        # fsync can take seconds on a busy disk; the event loop must not wait for it.
        return await asyncio.to_thread(function)


async def drive(backend: Backend, flow: Flow[T]) -> T:
    stream: httpx.Response | None = None
    chunks: Any = None
    reply: Any = None
    error: httpx.HTTPError | None = None
    try:
        while True:
            try:
                action = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            reply, error = None, None
            try:
                if isinstance(action, Send):
                    reply = await backend.send(action.request, stream=False)
                elif isinstance(action, Open):
                    if stream is not None:
                        await backend.close(stream)
                    stream = reply = await backend.send(action.request, stream=True)
                    chunks = backend.chunks(stream)
                elif isinstance(action, Read):
                    assert chunks is not None, "Read without Open"
                    reply = await backend.read(chunks)
                elif isinstance(action, Close):
                    if stream is not None:
                        await backend.close(stream)
                    stream = chunks = None
                elif isinstance(action, Sleep):
                    if action.seconds > 0:
                        await backend.sleep(action.seconds)
                else:
                    reply = await backend.blocking(action.function)
            except httpx.HTTPError as exc:
                error = exc
    finally:
        try:
            if stream is not None:
                await backend.close(stream)
        finally:
            flow.close()


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Finish a coroutine that never suspends (one driven by SyncBackend)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise RuntimeError("a sync operation tried to suspend")
