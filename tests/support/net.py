"""Loopback ports for servers a test starts."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from pathlib import Path

# Ports handed out by any test process on this machine (both xdist workers, another session):
# one empty file per port. Binding port 0 only proves the port is free *now*; a server told
# that port binds it seconds later (a Prefect server imports for 5 s first), and meanwhile the
# kernel may give the same port to another process asking for port 0. A claim keeps every
# other test process off the port for CLAIM_TTL_S, long past any server's start-up.
CLAIMS = Path(tempfile.gettempdir()) / "videobatch-test-ports"
CLAIM_TTL_S = 600.0


def claim(port: int, claims: Path) -> bool:
    """Take the claim of `port` (False if a fresh claim of it exists); stale claims expire."""
    path = claims / str(port)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue  # expired and removed by someone else just now: try again
            if age < CLAIM_TTL_S:
                return False
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return True
    return False


def free_port(claims: Path = CLAIMS) -> int:
    """A loopback port nothing listens on right now (bound, then released) that no other test
    process on this machine has been handed in the last CLAIM_TTL_S seconds."""
    claims.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        claims.chmod(0o1777)  # shared by every user's test runs, like /tmp itself
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if claim(port, claims):
            return port
    raise RuntimeError(f"no unclaimed loopback port after 200 tries (claims in {claims})")
