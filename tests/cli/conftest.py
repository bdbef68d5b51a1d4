"""Command-line tests: `videobatch` as a real subprocess, against the session's Prefect API
(so no process starts its own temporary server) and sandboxes living in this process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from clikit import Cli, MakeSandbox, base_env, sandbox

from apimart.sandbox import RunningSandbox


@pytest.fixture(scope="session")
def cli_env(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of every command: the session's Prefect API, its own PREFECT_HOME."""
    return base_env(prefect_api, tmp_path_factory.mktemp("cli-prefect-home"))


@pytest.fixture
def cli(cli_env: dict[str, str], tmp_path: Path) -> Iterator[Cli]:
    """Runs commands from `tmp_path/work`; kills (by pid) whatever a failing test left behind."""
    work = tmp_path / "work"
    work.mkdir()
    runner = Cli(cli_env, cwd=work, logs=tmp_path / "logs")
    try:
        yield runner
    finally:
        runner.stop_all()


@pytest.fixture
def make_sandbox() -> Iterator[MakeSandbox]:
    """Start sandboxes (accepting the canary key) that stop when the test ends."""
    with ExitStack() as stack:

        def start(**options: Any) -> RunningSandbox:
            return stack.enter_context(sandbox(**options))

        yield start
