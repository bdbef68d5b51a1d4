"""Which hosts a URL we fetch (or hand to the vendor to fetch) may point at.

A download link or an image URL comes from outside: from the vendor's answers (and the CDN's
redirects) or from a manifest. Followed blindly, `https://169.254.169.254/...` reads a cloud
machine's credentials and `https://10.0.0.5/` probes the private network (SSRF). So every
such URL must name a public address: not private, loopback, link-local, multicast, reserved
or unspecified, nor a cloud metadata name, checked on the literal host and again on every
address its name resolves to (a public-looking name can resolve to 127.0.0.1). Loopback is
allowed only when the caller says so: a client whose API itself is on loopback (the sandbox).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

# Names that reach a cloud provider's instance metadata service without a routable address.
METADATA_HOSTS = frozenset(
    {
        "metadata.google.internal",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
    }
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeURL(ValueError):
    """The URL points at an address this process must not fetch (or have fetched)."""


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback address literal (IPv4-mapped IPv6 included)."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = _literal(name)
    return address is not None and address.is_loopback


def _literal(host: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address


def address_problem(address: IPAddress, *, allow_loopback: bool) -> str | None:
    """Why this address must not be fetched, or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if address.is_private:
        return "a private address"
    if address.is_multicast or address.is_reserved or address.is_unspecified:
        return "a reserved address"
    if not address.is_global:
        return "a non-public address"
    return None


def host_problem(host: str, *, allow_loopback: bool) -> str | None:
    """Why this host, as written, must not be fetched (no DNS look-up), or None."""
    name = host.strip("[]").lower().rstrip(".")
    if not name:
        return "no host"
    if name in METADATA_HOSTS:
        return "a cloud metadata host"
    if name == "localhost" or name.endswith(".localhost"):
        return None if allow_loopback else "a loopback address"
    address = _literal(name)
    if address is not None:
        return address_problem(address, allow_loopback=allow_loopback)
    return None


def check_url_host(url: str, *, allow_loopback: bool) -> None:
    """Raise UnsafeURL when the URL's host, as written, is not public (no DNS look-up)."""
    host = urlsplit(url).hostname or ""
    problem = host_problem(host, allow_loopback=allow_loopback)
    if problem:
        raise UnsafeURL(f"host {host or '?'} is {problem}")


def resolve_problem(host: str, port: int | None, *, allow_loopback: bool) -> str | None:
    """Why this host must not be fetched after resolving it, or None. Blocking (DNS)."""
    problem = host_problem(host, allow_loopback=allow_loopback)
    if problem or _literal(host) is not None:
        return problem
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port or 443, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        return f"a name that does not resolve ({type(exc).__name__})"
    for info in infos:
        address = _literal(str(info[4][0]).split("%", 1)[0])
        if address is None:
            return "a name that resolves to something other than an IP address"
        problem = address_problem(address, allow_loopback=allow_loopback)
        if problem:
            return f"a name that resolves to {problem} ({address})"
    return None


def check_url(url: str, *, allow_loopback: bool) -> None:
    """Raise UnsafeURL unless every address the URL's host resolves to is public. Blocking."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL("the URL has an invalid port") from exc
    problem = resolve_problem(host, port, allow_loopback=allow_loopback)
    if problem:
        raise UnsafeURL(f"host {host or '?'} is {problem}")


async def acheck_url(url: str, *, allow_loopback: bool) -> None:
    """`check_url` without blocking the event loop on DNS."""
    await asyncio.to_thread(check_url, url, allow_loopback=allow_loopback)
