"""Downloads from the sandbox's CDN: whole, resumed, refused, and never half-written."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import httpx
import pytest
from apimart_testkit import (
    API_KEY,
    CountingTransport,
    MakeSandbox,
    Sandbox,
    client_for,
    new_key,
    unique,
    wait_until_done,
)

from apimart import (
    AsyncAPIMartClient,
    DownloadError,
    DownloadIntegrityError,
    LinkExpiredError,
    Video,
    VideoRequest,
)
from apimart.download import UnsafeDownloadURL, is_loopback_host
from apimart.sandbox import FaultRule, Faults

ALWAYS = FaultRule(rate=1.0)


async def finished_video(client: AsyncAPIMartClient, **fields: object) -> Video:
    request = VideoRequest.build(prompt=unique(), duration=4, **fields)  # type: ignore[arg-type]
    result = await client.submit(request, idempotency_key=new_key())
    task = await wait_until_done(client, result.task_id)
    assert task.videos, task
    return task.videos[0]


def reference_bytes(url: str) -> bytes:
    """The video as a plain GET sees it, independent of our client."""
    response = httpx.get(url)
    response.raise_for_status()
    return response.content


def decodes(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return stream.width, stream.height, frames


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_download_whole_video(sandbox: Sandbox, tmp_path: Path) -> None:
    """A finished video downloads whole and decodable, its hash right, no temporary file left."""
    async with client_for(sandbox) as client:
        video = await finished_video(client, resolution="720p", aspect_ratio="9:16")
        dest = tmp_path / "out" / "clip.mp4"
        result = await client.download(video.url, dest, expires_at=video.expires_at)
        data = dest.read_bytes()
        assert result.path == dest and result.bytes == len(data) > 1000
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        assert data == reference_bytes(video.url)
        width, height, frames = decodes(dest)
        assert (width, height) == (720, 1280) and frames > 0
        assert leftovers(dest.parent) == ["clip.mp4"]


async def test_download_sends_no_api_key_to_the_cdn(sandbox: Sandbox, tmp_path: Path) -> None:
    """CDN requests carry neither an Authorization header nor the key; API requests do."""
    transport = CountingTransport()
    async with client_for(sandbox, transport=transport) as client:
        video = await finished_video(client)
        await client.download(video.url, tmp_path / "a.mp4")
    cdn = [r for r in transport.requests if "/cdn/" in r.url.path]
    api = [r for r in transport.requests if r.url.path.startswith("/v1/")]
    assert cdn and api
    assert all("authorization" in r.headers for r in api)
    assert not any("authorization" in r.headers for r in cdn)
    assert not any(API_KEY in str(r.headers) + str(r.url) for r in cdn)


async def test_download_replaces_an_existing_file(sandbox: Sandbox, tmp_path: Path) -> None:
    """A download replaces a file already at the destination and leaves nothing beside it."""
    async with client_for(sandbox) as client:
        video = await finished_video(client)
        dest = tmp_path / "clip.mp4"
        dest.write_bytes(b"old")
        result = await client.download(video.url, dest)
        assert dest.stat().st_size == result.bytes > 3
        assert leftovers(tmp_path) == ["clip.mp4"]


@pytest.mark.parametrize("cuts", [1, 3])
async def test_truncated_transfer_resumes_byte_identical(
    make_sandbox: MakeSandbox, tmp_path: Path, cuts: int
) -> None:
    """A transfer cut 1 or 3 times resumes with Range requests into a byte-identical video."""
    sb = make_sandbox(Faults(download_truncate=FaultRule(rate=1.0, times=cuts)))
    transport = CountingTransport()
    async with client_for(sb, transport=transport) as client:
        video = await finished_video(client, resolution="1080p")
        result = await client.download(video.url, tmp_path / "clip.mp4")
    cdn = [r for r in transport.requests if "/cdn/" in r.url.path]
    assert len(cdn) == cuts + 1
    assert "range" not in cdn[0].headers
    assert all(r.headers["range"].startswith("bytes=") for r in cdn[1:])
    expected = reference_bytes(video.url)
    data = (tmp_path / "clip.mp4").read_bytes()
    assert data == expected and result.bytes == len(expected)
    assert result.sha256 == hashlib.sha256(expected).hexdigest()
    assert decodes(tmp_path / "clip.mp4")[:2] == (1920, 1080)
    assert leftovers(tmp_path) == ["clip.mp4"]


@pytest.mark.parametrize(
    ("faults", "match"),
    [(Faults(download_truncate=ALWAYS), "short body"), (Faults(download_html=ALWAYS), "text/html")],
    ids=["always-short", "html"],
)
async def test_bad_bodies_are_rejected_and_nothing_kept(
    make_sandbox: MakeSandbox, tmp_path: Path, faults: Faults, match: str
) -> None:
    """An always-short body or an HTML page is DownloadIntegrityError, and nothing is kept."""
    sb = make_sandbox(faults)
    async with client_for(sb) as client:
        video = await finished_video(client)
        with pytest.raises(DownloadIntegrityError, match=match):
            await client.download(video.url, tmp_path / "clip.mp4")
    assert leftovers(tmp_path) == []


async def test_max_bytes_is_enforced(sandbox: Sandbox, tmp_path: Path) -> None:
    """A video larger than max_bytes is DownloadIntegrityError, and nothing is kept."""
    async with client_for(sandbox) as client:
        video = await finished_video(client)
        with pytest.raises(DownloadIntegrityError, match="limit"):
            await client.download(video.url, tmp_path / "clip.mp4", max_bytes=1000)
        assert leftovers(tmp_path) == []


async def test_a_link_past_its_expiry_here_is_tried_once_then_refused_by_the_cdn(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """A link whose expires_at looks past costs one CDN request; the CDN's 403 decides."""
    sb = make_sandbox(Faults(expired_urls=ALWAYS))
    transport = CountingTransport()
    async with client_for(sb, transport=transport) as client:
        video = await finished_video(client)
        assert video.expires_at is not None and video.expires_at < time.time()
        with pytest.raises(LinkExpiredError, match="403"):
            await client.download(video.url, tmp_path / "a.mp4", expires_at=video.expires_at)
    assert sum("/cdn/" in r.url.path for r in transport.requests) == 1
    assert leftovers(tmp_path) == []


async def test_a_link_whose_signature_the_cdn_refuses_is_link_expired(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A signature the CDN rejects (its real 403) is LinkExpiredError after one request."""
    transport = CountingTransport()
    async with client_for(sandbox, transport=transport) as client:
        video = await finished_video(client)
        tampered = video.url.replace("sig=", "sig=0", 1)
        with pytest.raises(LinkExpiredError, match="403") as caught:
            await client.download(tampered, tmp_path / "a.mp4")
    assert "sig=" not in str(caught.value)
    assert sum("/cdn/" in r.url.path for r in transport.requests) == 1
    assert leftovers(tmp_path) == []


async def test_a_link_that_only_looks_expired_here_is_downloaded(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """Clock skew: a link expired by our clock but valid by the CDN's is fetched, not refused."""
    sb = make_sandbox(url_ttl_s=3600)
    sb.config.faults.cdn_clock_offset_s = -7200  # the CDN's clock is two hours behind ours
    async with client_for(sb) as client:
        video = await finished_video(client)
        assert video.expires_at is not None and video.expires_at < time.time()
        result = await client.download(video.url, tmp_path / "a.mp4", expires_at=video.expires_at)
    assert result.bytes == len(reference_bytes(video.url))
    assert decodes(tmp_path / "a.mp4")[2] > 0


async def test_deadline_is_enforced(make_sandbox: MakeSandbox, tmp_path: Path) -> None:
    """A trickling CDN is cut off at the deadline with DownloadError, and nothing is kept."""
    sb = make_sandbox(Faults(trickle_bytes_per_s=2_000))
    async with client_for(sb) as client:
        video = await finished_video(client)
        started = time.monotonic()
        with pytest.raises(DownloadError, match="deadline"):
            await client.download(video.url, tmp_path / "clip.mp4", deadline_s=0.5)
        # The whole video would take half a minute at this trickle.
        assert time.monotonic() - started < 15
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://cdn.example.com/v.mp4?expires=1&sig=SECRETSIG",
        "ftp://127.0.0.1/v.mp4?sig=SECRETSIG",
        "file:///etc/passwd?sig=SECRETSIG",
        "https:///nohost.mp4?sig=SECRETSIG",
    ],
)
async def test_insecure_urls_are_refused(sandbox: Sandbox, tmp_path: Path, url: str) -> None:
    """Plain-http, ftp, file and host-less links are refused, their signature never shown."""
    async with client_for(sandbox) as client:
        with pytest.raises(DownloadError) as caught:
            await client.download(url, tmp_path / "a.mp4")
        assert "SECRETSIG" not in str(caught.value)
        assert leftovers(tmp_path) == []


async def test_loopback_http_only_for_a_loopback_api(tmp_path: Path) -> None:
    """A plain-http loopback link is refused when the API itself is not on loopback."""
    async with AsyncAPIMartClient(base_url="https://api.apimart.ai", api_key=API_KEY) as client:
        with pytest.raises(DownloadError, match="only https"):
            await client.download("http://127.0.0.1:1/cdn/videos/x.mp4?sig=S", tmp_path / "a.mp4")


# The sandbox's CDN always honours Range and always sends a video type; the cases below need a
# server that does not, so a stand-in server plays the CDN.

BODY = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64


class _CutStream(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


async def test_range_answered_with_200_restarts_from_zero(tmp_path: Path) -> None:
    """A resume answered 200 (Range ignored) starts over from byte 0 and yields the file."""
    seen: list[httpx.Request] = []

    def cdn(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"Content-Type": "video/mp4", "Content-Length": str(len(BODY))}
        if len(seen) == 1:
            return httpx.Response(200, headers=headers, stream=_CutStream(BODY[:1000]))
        return httpx.Response(200, headers=headers, content=BODY)

    async with client_for("http://127.0.0.1:9", transport=httpx.MockTransport(cdn)) as client:
        result = await client.download("http://127.0.0.1:9/v.mp4?sig=x", tmp_path / "v.mp4")
    assert seen[1].headers["range"] == "bytes=1000-"
    assert (tmp_path / "v.mp4").read_bytes() == BODY
    assert result.sha256 == hashlib.sha256(BODY).hexdigest()


@pytest.mark.parametrize("status", [404, 410])
async def test_a_gone_link_is_link_expired_and_not_retried(tmp_path: Path, status: int) -> None:
    """A CDN 404 or 410 (a stand-in: the sandbox never sends 410) is LinkExpiredError at once."""
    seen: list[httpx.Request] = []

    def cdn(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, text="gone")

    async with client_for("http://127.0.0.1:9", transport=httpx.MockTransport(cdn)) as client:
        with pytest.raises(LinkExpiredError, match=str(status)):
            await client.download("http://127.0.0.1:9/v.mp4?sig=S", tmp_path / "v.mp4")
    assert len(seen) == 1
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "image/png"])
async def test_non_video_types_are_rejected(tmp_path: Path, content_type: str) -> None:
    """A JSON, text or image Content-Type is DownloadIntegrityError, and nothing is kept."""

    def cdn(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": content_type}, content=BODY)

    async with client_for("http://127.0.0.1:9", transport=httpx.MockTransport(cdn)) as client:
        with pytest.raises(DownloadIntegrityError, match="not a video"):
            await client.download("http://127.0.0.1:9/v.mp4", tmp_path / "v.mp4")
    assert leftovers(tmp_path) == []


async def test_max_bytes_without_a_content_length(tmp_path: Path) -> None:
    """A chunked body with no Content-Length is cut off at max_bytes; nothing is kept."""

    class Chunked(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for _ in range(100):
                yield BODY

    def cdn(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "video/mp4"}, stream=Chunked())

    async with client_for("http://127.0.0.1:9", transport=httpx.MockTransport(cdn)) as client:
        with pytest.raises(DownloadIntegrityError, match="limit"):
            await client.download("http://127.0.0.1:9/v.mp4", tmp_path / "v.mp4", max_bytes=50_000)
    assert leftovers(tmp_path) == []


# SSRF. Every test below talks through `OnlyThisMachine`, which forwards requests for loopback
# hosts (and the stand-in public hosts it maps onto the sandbox) and refuses everything else
# without a connection: even if the guard were broken, nothing would leave this machine.

METADATA = "https://169.254.169.254/latest"
PUBLIC_CDN = "https://93.184.216.34"  # a public literal: passes the guard with no DNS look-up
PUBLIC_API = "https://api.videobatch.example"


class OnlyThisMachine(httpx.AsyncBaseTransport):
    """A real transport that records every request handed to it, reroutes `routes` (origin ->
    loopback origin) and refuses, without connecting, any host off this machine."""

    def __init__(self, routes: dict[str, str] | None = None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.routes = routes or {}
        self.requests: list[httpx.URL] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url)
        origin = f"{request.url.scheme}://{request.url.netloc.decode()}"
        if origin in self.routes:
            real = httpx.URL(self.routes[origin])
            request.url = request.url.copy_with(scheme=real.scheme, host=real.host, port=real.port)
        elif not is_loopback_host(request.url.host):
            raise httpx.ConnectError(f"test transport: {request.url.host} is off this machine")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def hosts(self) -> set[str]:
        return {url.host for url in self.requests}


@contextmanager
def listener() -> Iterator[socket.socket]:
    """A loopback port that listens but never answers: a connection to it stays queued."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


async def test_a_redirect_to_the_metadata_service_is_refused_before_connecting(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """A CDN redirect to 169.254.169.254 ends in UnsafeDownloadURL; nothing is sent there."""
    sb = make_sandbox(Faults(download_redirect_to=METADATA))
    transport = OnlyThisMachine()
    async with client_for(sb, transport=transport) as client:
        video = await finished_video(client)
        with pytest.raises(UnsafeDownloadURL, match="link-local") as caught:
            await client.download(video.url, tmp_path / "a.mp4")
    assert isinstance(caught.value, DownloadError)
    assert "169.254.169.254" not in transport.hosts()
    assert "sig=" not in str(caught.value)
    assert sb.state.stats()["faults_fired"] == {"download_redirect_to": 1}
    assert leftovers(tmp_path) == []


async def test_a_redirect_to_loopback_is_refused_when_the_api_is_not_loopback(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """With a public API, a CDN redirect to https://127.0.0.1:PORT never connects to PORT."""
    sb = make_sandbox(public_base_url=PUBLIC_CDN)
    transport = OnlyThisMachine({PUBLIC_API: sb.url, PUBLIC_CDN: sb.url})
    with listener() as trap:
        port = trap.getsockname()[1]
        sb.config.faults.download_redirect_to = f"https://127.0.0.1:{port}/latest"
        async with client_for(PUBLIC_API, transport=transport, download_timeout=2.0) as client:
            video = await finished_video(client)
            assert video.url.startswith(PUBLIC_CDN)
            with pytest.raises(UnsafeDownloadURL, match="loopback"):
                await client.download(video.url, tmp_path / "a.mp4")
        assert connections(trap) == 0
    assert "127.0.0.1" not in transport.hosts()
    assert sb.state.stats()["faults_fired"] == {"download_redirect_to": 1}
    assert leftovers(tmp_path) == []


async def test_a_redirect_to_another_loopback_cdn_url_is_followed_for_a_loopback_api(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """The sandbox case: a hop from 127.0.0.1 to localhost (both this machine) is followed."""
    sb = make_sandbox()
    port = httpx.URL(sb.url).port
    sb.config.faults.download_redirect_to = f"http://localhost:{port}{{path}}"
    transport = OnlyThisMachine()
    async with client_for(sb, transport=transport) as client:
        video = await finished_video(client)
        await client.download(video.url, tmp_path / "a.mp4")
    sb.config.faults.download_redirect_to = None
    assert (tmp_path / "a.mp4").read_bytes() == reference_bytes(video.url)
    assert transport.hosts() == {"127.0.0.1", "localhost"}
    assert sb.state.stats()["faults_fired"] == {"download_redirect_to": 1}


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.5/v.mp4?sig=SECRETSIG",
        "https://127.0.0.1:8443/v.mp4?sig=SECRETSIG",
        "https://[::ffff:127.0.0.1]/v.mp4?sig=SECRETSIG",
        "https://metadata.google.internal/v.mp4?sig=SECRETSIG",
        "https://169.254.169.254/latest?sig=SECRETSIG",
    ],
)
async def test_a_private_first_link_is_refused_without_a_request(tmp_path: Path, url: str) -> None:
    """A link naming a private, loopback or metadata host is refused before any request."""
    transport = OnlyThisMachine()
    async with client_for(PUBLIC_API, transport=transport) as client:
        with pytest.raises(UnsafeDownloadURL) as caught:
            await client.download(url, tmp_path / "a.mp4")
    assert transport.requests == []
    assert "SECRETSIG" not in str(caught.value)
    assert leftovers(tmp_path) == []
