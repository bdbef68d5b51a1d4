"""Running the sandbox: in a background thread for tests, or blocking for a command line.

Access logs are always off: every CDN URL carries its signature in the query string.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from apimart.sandbox.app import create_app
from apimart.sandbox.config import SandboxConfig
from apimart.sandbox.state import SandboxState

STARTUP_TIMEOUT_S = 10.0


class QuietH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that never writes access log lines.

    `access_log=False` alone is not enough: uvicorn enables access logging per connection
    whenever the `uvicorn.access` logger has any handler up its chain (a test's log capture,
    an embedding application's root handler), and those lines hold signed CDN URLs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.access_log = False


@dataclass
class RunningSandbox:
    """A live sandbox. Mutate `config` (e.g. `config.faults.submit_429 = ...`) at any time."""

    url: str
    state: SandboxState
    config: SandboxConfig
    app: FastAPI

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header that the sandbox accepts."""
        return {"Authorization": f"Bearer {self.config.api_key}"}


@contextlib.contextmanager
def run_in_thread(
    config: SandboxConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[RunningSandbox]:
    """Serve a sandbox on `host:port` (0 = any free port) in a daemon thread until exit."""
    config = config if config is not None else SandboxConfig()
    state = SandboxState()
    app = create_app(config, state)
    # Bind here rather than in uvicorn so the real port is known before it starts. The
    # explicit IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it every keep-alive request stalls ~40 ms (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http=QuietH11Protocol,
            lifespan="off",
            access_log=False,
            log_config=None,
            # A deliberately late answer must not hold up shutdown.
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="apimart-sandbox", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the sandbox server did not start")
            time.sleep(0.01)
        yield RunningSandbox(url=f"http://{host}:{bound_port}", state=state, config=config, app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=STARTUP_TIMEOUT_S)
        sock.close()


def serve(
    config: SandboxConfig | None = None, *, host: str = "127.0.0.1", port: int = 8765
) -> None:
    """Serve a sandbox in the foreground until interrupted (for `videobatch sandbox`)."""
    app = create_app(config if config is not None else SandboxConfig())
    uvicorn.run(app, host=host, port=port, http=QuietH11Protocol, lifespan="off", access_log=False)
