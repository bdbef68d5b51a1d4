"""Child processes of a test: a clean environment, and stopping one by its own id."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

# Settings a test must not inherit from the shell or from this process (the session's
# isolated Prefect home, a real API key): each child is told exactly what it gets.
OWN_PREFIXES = ("PREFECT_", "APIMART_", "VIDEOBATCH_")


def console_script(name: str) -> str:
    """A console script of this virtual environment (beside the running interpreter)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any Prefect, APIMart or videobatch setting, plus
    quiet Prefect defaults and `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(settings)
    return env


def stop_group(
    process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, grace_s: float = 15.0
) -> None:
    """Stop a process started with `start_new_session=True`, and its children, by its group
    id: `sig` first, SIGKILL after `grace_s` seconds."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
