"""Session-wide test setup: an isolated Prefect home, one real Prefect API for the session,
and the shared helpers of tests/support/ importable as `support` from every test.

Prefect reads its settings at import, so the environment is set before anything imports it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

# pytest puts tests/ on the path for this file anyway (tests/ has no __init__.py); saying so
# here makes `import support` not depend on that detail.
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

# Set by the first test process of a run (the only one, or the xdist controller), inherited by
# the xdist workers it starts: tells a worker that PREFECT_HOME is that process's own folder.
_MADE_HOME = "VB_TESTS_MADE_PREFECT_HOME"


def _prefect_home(environ: Mapping[str, str]) -> str:
    """This test process's Prefect home: a folder of its own, or the PREFECT_HOME its caller
    set. An xdist worker never shares one with the other worker: it inherits the controller's
    environment, and two servers and engines in one home share its storage and caches."""
    worker = environ.get("PYTEST_XDIST_WORKER")
    given = environ.get("PREFECT_HOME")
    if worker is None:
        return given or tempfile.mkdtemp(prefix="videobatch-prefect-")
    if given is None or given == environ.get(_MADE_HOME):
        return tempfile.mkdtemp(prefix=f"videobatch-prefect-{worker}-")
    home = Path(given) / f"xdist-{worker}"
    home.mkdir(parents=True, exist_ok=True)
    return str(home)


_HOME = _prefect_home(os.environ)
if "PYTEST_XDIST_WORKER" not in os.environ and "PREFECT_HOME" not in os.environ:
    os.environ[_MADE_HOME] = _HOME
os.environ["PREFECT_HOME"] = _HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", "200")
os.environ.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE", "500")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("APIMART_API_KEY", None)
os.environ.pop("APIMART_BASE_URL", None)

import pytest  # noqa: E402

if TYPE_CHECKING:
    from support.postgres import PostgresServer


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect API (temporary server) shared by every test of the session; its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness
    from support.net import free_port

    # The harness picks its port by binding port 0 and starting the server on it seconds
    # later; ours also claims it, so the other xdist worker's servers never get it meanwhile.
    with (
        mock.patch("prefect.testing.utilities._find_available_port", free_port),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server per test process (a temporary cluster, or VIDEOBATCH_TEST_PG_URL),
    shared by every test folder; each module that uses it makes a database of its own."""
    from support.postgres import postgres_server

    with postgres_server() as server:
        yield server


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """Under `-p no:xdist` the addopts' `-n 2 --dist loadfile` (pyproject.toml) are accepted
    and ignored, so one process runs everything instead of the command line being refused."""
    if not pluginmanager.is_blocked("xdist"):
        return
    group = parser.getgroup("xdist", "xdist disabled by -p no:xdist")
    # `_addoption`, as xdist itself adds `-n`: the public one refuses lowercase short options.
    group._addoption("-n", "--numprocesses", dest="numprocesses", help="ignored without xdist")
    group.addoption("--dist", dest="dist", default="no", help="ignored without xdist")


# Tests that each start several servers and processes at once (a Prefect server with two
# workers, a server with Chromium, twenty killed and restarted runs). Two of them side by side
# on two cores starve each other into timeouts, so under `--dist loadfile` they are one work
# unit, run one after the other on one worker, and handed out first (the longest unit first,
# while the other worker takes everything else). An `xdist_group` mark cannot say this:
# pytest 9.2 ignores the suffix xdist 3.8 writes into test ids (pytest-xdist#1386).
HEAVY = ("tests/ops/", "tests/browser/", "tests/cli/test_random_kill.py")
HEAVY_UNIT = "heavy"


def work_unit(nodeid: str) -> str:
    """The work unit of a test under `--dist loadfile`: its file, or HEAVY_UNIT."""
    path = nodeid.split("::", 1)[0]
    return HEAVY_UNIT if path.startswith(HEAVY) else path


@pytest.hookimpl(optionalhook=True)  # a hook of xdist's: absent under `-p no:xdist`
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile` with the HEAVY files as one unit, handed out first."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class HeavyFirstFileScheduling(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            if HEAVY_UNIT in self.workqueue:  # until it is handed out: to the first worker
                self.workqueue.move_to_end(HEAVY_UNIT, last=False)
            super()._assign_work_unit(node)

    # Files in collection order (after the heavy unit), not by number of tests: the CLI and
    # flow files have few tests and long ones, and go early that way.
    config.option.loadscopereorder = False
    return HeavyFirstFileScheduling(config, log)
