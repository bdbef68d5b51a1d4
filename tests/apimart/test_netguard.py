"""Which hosts a fetched URL may name: public ones, and loopback only when allowed."""

from __future__ import annotations

import pytest

from apimart.netguard import UnsafeURL, check_url, check_url_host, is_loopback_host

REFUSED = [
    "https://169.254.169.254/latest/meta-data/",
    "https://10.0.0.5/video.mp4",
    "https://192.168.1.2/v.mp4",
    "https://172.16.0.1/v.mp4",
    "https://127.0.0.1:8443/v.mp4",
    "https://[::1]/v.mp4",
    "https://[::ffff:127.0.0.1]/v.mp4",
    "https://[::ffff:169.254.169.254]/v.mp4",
    "https://[fe80::1]/v.mp4",
    "https://[fd00::1]/v.mp4",
    "https://0.0.0.0/v.mp4",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://METADATA.GOOGLE.INTERNAL./x",
    "https://localhost/v.mp4",
]


@pytest.mark.parametrize("url", REFUSED)
def test_private_loopback_link_local_and_metadata_hosts_are_refused(url: str) -> None:
    """Every non-public host literal is refused before any connection is made."""
    with pytest.raises(UnsafeURL):
        check_url_host(url, allow_loopback=False)
    with pytest.raises(UnsafeURL):
        check_url(url, allow_loopback=False)


def test_loopback_is_allowed_only_when_asked() -> None:
    """A sandbox client may fetch from loopback, but never from link-local or private hosts."""
    check_url("https://127.0.0.1:8443/v.mp4", allow_loopback=True)
    check_url("http://localhost:9/v.mp4", allow_loopback=True)
    with pytest.raises(UnsafeURL):
        check_url("https://169.254.169.254/", allow_loopback=True)
    with pytest.raises(UnsafeURL):
        check_url("https://10.1.2.3/", allow_loopback=True)


def test_a_name_is_judged_by_what_it_resolves_to() -> None:
    """`localhost.` spelled as a name resolves to loopback and is refused like the literal."""
    with pytest.raises(UnsafeURL, match="loopback"):
        check_url("https://localhost./v.mp4", allow_loopback=False)


def test_public_literals_pass() -> None:
    """A public address literal passes without any DNS look-up."""
    check_url("https://93.184.216.34/v.mp4", allow_loopback=False)
    check_url("https://[2606:4700::1111]/v.mp4", allow_loopback=False)


def test_loopback_host_recognises_mapped_and_named_forms() -> None:
    """`is_loopback_host` knows the IPv4-mapped and named spellings of loopback."""
    assert is_loopback_host("127.0.0.1")
    assert is_loopback_host("[::ffff:127.0.0.1]")
    assert is_loopback_host("localhost")
    assert not is_loopback_host("10.0.0.1")
