"""Flow tests: the real `generate-videos` flow against a real Prefect API and the sandbox."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from flowkit import API_KEY

from apimart import retry
from apimart.sandbox import Faults, SandboxConfig, run_in_thread
from tasks.run.inbox import INBOX_LIMIT

_seeds = itertools.count(500)

Sandbox = Any
MakeSandbox = Callable[..., Sandbox]


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    """Flow tests retry at once; per test, so the switch never outlives this folder's tests."""
    with retry.no_waits():
        yield


@pytest.fixture
def make_sandbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeSandbox]:
    monkeypatch.setenv("APIMART_API_KEY", API_KEY)
    with ExitStack() as stack:

        def start(faults: Faults | None = None, **options: Any) -> Sandbox:
            options.setdefault("seed", next(_seeds))
            options.setdefault("time_scale", 0.004)
            config = SandboxConfig(api_key=API_KEY, faults=faults or Faults(), **options)
            return stack.enter_context(run_in_thread(config))

        yield start


@pytest.fixture
async def inbox_limit(prefect_api: str) -> None:
    """What `videobatch deploy` creates: the global limit of one inbox run at a time."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        with contextlib.suppress(ObjectAlreadyExists):
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=INBOX_LIMIT, limit=1)
            )
