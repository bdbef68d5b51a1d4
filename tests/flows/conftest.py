"""Flow tests: the real `generate-videos` flow against a real Prefect API and the sandbox."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from flowkit import API_KEY

from apimart import retry
from apimart.sandbox import Faults, SandboxConfig, run_in_thread

_seeds = itertools.count(500)

Sandbox = Any
MakeSandbox = Callable[..., Sandbox]


@pytest.fixture(scope="session", autouse=True)
def _no_retry_waits() -> Iterator[None]:
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
