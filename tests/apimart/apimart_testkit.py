"""Helpers shared by the client tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from support.net import free_port

from apimart import AsyncAPIMartClient, RetryPolicy, Task
from apimart.redact import secret_forms
from apimart.sandbox import Faults, RunningSandbox, SandboxConfig

# A canary: test_client_secrets.py proves it never shows up in a message, repr or log record.
API_KEY = "sk-CANARY-5e1f0c7d9a2b4e68"


def assert_no_canary(texts: Iterable[str], key: str = API_KEY) -> None:
    """No text holds the key in any form it can take (raw, repr, escaped, encoded, base64)."""
    forms = secret_forms(key)
    for text in texts:
        for form in forms:
            assert form not in text, f"the API key ({form!r}) leaked into {text[:300]!r}"


TIME_SCALE = 0.001
_seeds = itertools.count(100)

Sandbox = RunningSandbox
MakeSandbox = Callable[..., RunningSandbox]


def sandbox_config(faults: Faults | None = None, **options: Any) -> SandboxConfig:
    options.setdefault("seed", next(_seeds))
    options.setdefault("time_scale", TIME_SCALE)
    return SandboxConfig(api_key=API_KEY, faults=faults or Faults(), **options)


def instant(attempts: int = 3, **fields: Any) -> RetryPolicy:
    """A retry policy whose own waits are zero, so retry paths run at once (a server's
    Retry-After hint is still waited: tests that send one keep it short)."""
    return RetryPolicy(attempts=attempts, initial_wait=0.0, jitter=0.0, **fields)


def client_for(sb: Sandbox | str, **options: Any) -> AsyncAPIMartClient:
    """A client of `sb` with the canary key and an `instant` retry policy, unless overridden."""
    options.setdefault("api_key", API_KEY)
    options.setdefault("retry", instant())
    options.setdefault("timeout", 10.0)
    return AsyncAPIMartClient(base_url=sb if isinstance(sb, str) else sb.url, **options)


def unique(text: str = "a red fox running through snow") -> str:
    """A prompt (or key) no other test uses, so per-prompt counters belong to one test."""
    return f"{text} #{uuid.uuid4().hex[:12]}"


async def wait_until_done(client: AsyncAPIMartClient, task_id: str, **kwargs: Any) -> Task:
    for _ in range(2000):
        task = await client.get_task(task_id, **kwargs)
        if task.is_terminal:
            return task
        await asyncio.sleep(0.01)
    raise AssertionError(f"task {task_id} never finished")


def closed_port() -> int:
    """A local port nothing listens on: claimed, so no server of this or the other xdist
    worker starts on it while a test expects its connections refused."""
    return free_port()


class CountingTransport(httpx.AsyncBaseTransport):
    """A real HTTP transport that records each request it is handed (what left the client).

    With `refuse_first=n` the first n requests are aimed at a closed local port instead, so
    they fail to connect for real before the rest reach their server.
    """

    def __init__(self, *, refuse_first: int = 0) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []
        self.refuse_first = refuse_first
        self.port = closed_port()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if len(self.requests) <= self.refuse_first:
            request.url = request.url.copy_with(port=self.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def count(self, method: str, path_part: str) -> int:
        return sum(r.method == method and path_part in r.url.path for r in self.requests)


class ProxyTransport(httpx.AsyncBaseTransport):
    """A stand-in for a proxy or WAF in front of the API (the vendor-side thing we cannot run):
    `answer(request, n)` may answer the n-th request (1-based) itself; any request it leaves
    (returns None) goes on to the real server over real HTTP."""

    def __init__(self, answer: Callable[[httpx.Request, int], httpx.Response | None]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.answer = answer
        self.requests: list[httpx.Request] = []
        self.forwarded = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.answer(request, len(self.requests))
        if response is not None:
            return response
        self.forwarded += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def new_key() -> str:
    """An idempotency key no other test uses."""
    return f"row-{uuid.uuid4().hex}"
