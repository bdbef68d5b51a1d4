"""An offline emulator of the APIMart video API and its CDN, for tests and dry runs.

It never imports the client: the two only share `apimart.spec`, so the sandbox cannot
inherit the client's mistakes.
"""

from apimart.sandbox.app import create_app
from apimart.sandbox.config import (
    FaultRule,
    Faults,
    SandboxConfig,
    config_from_options,
    load_faults,
)
from apimart.sandbox.render import render_mp4
from apimart.sandbox.server import RunningSandbox, run_in_thread, serve
from apimart.sandbox.state import Counters, SandboxState

__all__ = [
    "Counters",
    "FaultRule",
    "Faults",
    "RunningSandbox",
    "SandboxConfig",
    "SandboxState",
    "config_from_options",
    "create_app",
    "load_faults",
    "render_mp4",
    "run_in_thread",
    "serve",
]
