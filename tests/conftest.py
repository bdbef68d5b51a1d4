"""Session-wide test setup: an isolated Prefect home, one real Prefect API for the session,
and the shared helpers of tests/support/ importable as `support` from every test.

Prefect reads its settings at import, so the environment is set before anything imports it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# pytest puts tests/ on the path for this file anyway (tests/ has no __init__.py); saying so
# here makes `import support` not depend on that detail.
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

_HOME = tempfile.mkdtemp(prefix="videobatch-prefect-")
os.environ.setdefault("PREFECT_HOME", _HOME)
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

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())
