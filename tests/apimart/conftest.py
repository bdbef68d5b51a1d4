"""Sandbox fixtures for the client tests: real HTTP against the emulated API, never mocks.

One session-wide sandbox serves the tests that need no faults (each uses its own prompts and
idempotency keys, so shared counters stay readable); tests that inject faults or read global
counters start their own with `make_sandbox`. Retry waits are not switched off process-wide
here: each client gets a zero-wait policy (`apimart_testkit.instant`), so a later test in the
same session (tests/tasks) still sees real waits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from apimart_testkit import MakeSandbox, Sandbox, sandbox_config

from apimart.sandbox import Faults, run_in_thread


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    with run_in_thread(sandbox_config()) as sb:
        yield sb


@pytest.fixture
def make_sandbox() -> Iterator[MakeSandbox]:
    with ExitStack() as stack:

        def start(faults: Faults | None = None, **options: Any) -> Sandbox:
            return stack.enter_context(run_in_thread(sandbox_config(faults, **options)))

        yield start
