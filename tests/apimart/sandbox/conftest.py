"""Fixtures for the sandbox's own tests: a fresh sandbox per test, driven by plain httpx.

The names (`sb`, `api`) differ from the client tests' `sandbox`/`client` fixtures in the
parent conftest on purpose: these tests talk HTTP directly and never use the client.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import httpx
import pytest
from sandbox_testkit import FAST, Api

from apimart.sandbox import RunningSandbox, SandboxConfig, run_in_thread


@pytest.fixture(scope="session")
def _shared_sandbox() -> Iterator[RunningSandbox]:
    with run_in_thread(SandboxConfig(time_scale=FAST)) as running:
        yield running


@pytest.fixture
def sb(_shared_sandbox: RunningSandbox) -> RunningSandbox:
    """The session's sandbox, emptied and set back to its starting config for this test.

    One server for the session because stopping uvicorn costs ~0.2 s; resetting state and
    config in place gives each test the same clean start.
    """
    fresh = SandboxConfig(time_scale=FAST)
    for field in dataclasses.fields(SandboxConfig):
        setattr(_shared_sandbox.config, field.name, getattr(fresh, field.name))
    _shared_sandbox.state.reset()
    return _shared_sandbox


@pytest.fixture
def api(sb: RunningSandbox) -> Iterator[Api]:
    with httpx.Client(base_url=sb.url, headers=sb.headers, timeout=5) as client:
        yield Api(sb, client)
