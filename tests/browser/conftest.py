"""Fixtures of the browser tests: one real Prefect server, one sandbox run, one Chromium.

They are shared by both test files, so the costly parts happen once, and package-scoped (this
folder is a package for that), so they end with the last browser test: while Playwright's
sync API is alive it marks this thread's asyncio loop as running, which breaks every async
test that would come after it in the session.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from support.files import tail
from support.prefect_server import PrefectServer, prefect_server

from apimart.sandbox import FaultRule, Faults, SandboxConfig, run_in_thread
from browser.browserkit import (
    API_KEY,
    CHROMIUM,
    CHROMIUM_ARGS,
    FAILING_PROMPT,
    UI_SERVER_SETTINGS,
    VIEWPORT,
    FinishedRun,
    run_videobatch,
)

# A single-page app on a 2-core machine under load: be patient before calling it missing.
expect.set_options(timeout=20_000)


@pytest.fixture(scope="package")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: a temporary folder, or VIDEOBATCH_SCREENSHOT_DIR (e.g. `docs`).

    Not docs/ by default: every run makes different pictures (times, ids), and a test run
    should not leave tracked files modified.
    """
    chosen = os.environ.get("VIDEOBATCH_SCREENSHOT_DIR")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium driven by Playwright (with a fresh profile of its own)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run .ci/system-deps (Debian chromium), "
            "or set VIDEOBATCH_CHROMIUM to a Chromium binary"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    try:
        tab = context.new_page()
        tab.set_default_timeout(30_000)
        yield tab
    finally:
        context.close()


@pytest.fixture(scope="package")
def prefect_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real `prefect server start`, UI included (the test harness serves no UI)."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    with prefect_server(home, settings=UI_SERVER_SETTINGS) as server:
        yield server


@pytest.fixture(scope="package")
def demo_run(prefect_ui: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """The demo manifest run to the end against the sandbox, reported to `prefect_ui`.

    One row (paper-boat) fails in the sandbox, so the pages have a failure to show.
    """
    config = SandboxConfig(
        api_key=API_KEY,
        time_scale=0.004,
        seed=4242,
        faults=Faults(task_fail=FaultRule(rate=1.0, prompt_contains=FAILING_PROMPT)),
    )
    with run_in_thread(config) as sandbox:
        run = run_videobatch(prefect_ui, sandbox.url, tmp_path_factory.mktemp("browser-run"))
        counters = sandbox.state.counters.snapshot()
    if not (run.out / "results.parquet").exists():
        pytest.fail(f"videobatch run wrote no results (exit {run.returncode}):\n{tail(run.log)}")
    return dataclasses.replace(run, counters=counters)
