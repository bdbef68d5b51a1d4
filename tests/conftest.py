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
