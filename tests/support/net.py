"""Loopback ports for servers a test starts."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import tempfile
import time
from pathlib import Path

# Ports handed out by any test process on this machine (both xdist workers, another session):
# one empty file per port. Binding a port only proves it is free *now*; a server told that port
# binds it seconds later (a Prefect server imports for 5 s first). A claim keeps every other
# test process off the port for CLAIM_TTL_S, long past any server's start-up.
CLAIMS = Path(tempfile.gettempdir()) / "videobatch-test-ports"
CLAIM_TTL_S = 600.0
# Ports come from just below the kernel's ephemeral range, which it never hands to a `bind` to
# port 0 or to an outgoing connection: nothing else (a sandbox binding port 0 in the other
# worker, a client's socket) can take a claimed port while its server is still starting.
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
SPAN = 8000
_random = random.SystemRandom()  # tests may seed the global `random`; ports must not repeat


def port_range() -> range:
    """Where free ports are picked: the SPAN ports below the ephemeral range (32768 on Linux)."""
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - SPAN), low)


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


def bindable(port: int) -> bool:
    """Nothing holds `port` on loopback (no listener, no socket lingering in TIME_WAIT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(claims: Path = CLAIMS) -> int:
    """A loopback port nothing listens on right now, that no other test process on this
    machine has been handed in the last CLAIM_TTL_S seconds, and that the kernel does not hand
    out on its own (see EPHEMERAL_RANGE)."""
    claims.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        claims.chmod(0o1777)  # shared by every user's test runs, like /tmp itself
    ports = port_range()
    for _ in range(500):
        port = _random.choice(ports)
        if bindable(port) and claim(port, claims):
            return port
    raise RuntimeError(f"no unclaimed loopback port in {ports} (claims in {claims})")
