"""The CDN serves real, resumable MP4s behind signed, expiring links, and misbehaves on cue."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import av
import httpx
import numpy as np
import pytest
from sandbox_testkit import Api, data_uri, first_frame, png_bytes, probe

from apimart.sandbox import FaultRule, RunningSandbox


@pytest.mark.parametrize(
    ("resolution", "aspect_ratio", "duration", "size"),
    [
        ("720p", "16:9", 4, (1280, 720)),
        ("1080p", "9:16", 6, (1080, 1920)),
        ("4K", "16:9", 10, (3840, 2160)),
    ],
)
def test_video_has_the_requested_size_and_duration(
    api: Api, resolution: str, aspect_ratio: str, duration: int, size: tuple[int, int]
) -> None:
    """A downloaded video is an H.264 MP4 of the requested size and duration."""
    url, _ = api.completed_url(resolution=resolution, aspect_ratio=aspect_ratio, duration=duration)
    response = api.download(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.headers["accept-ranges"] == "bytes"
    width, height, seconds, codec, pixels = probe(response.content)
    assert (width, height) == size
    assert seconds == pytest.approx(duration, abs=0.01)
    assert (codec, pixels) == ("h264", "yuv420p")


def test_range_resume_gives_identical_bytes(api: Api) -> None:
    """Range requests give exactly the bytes asked for (416 past the end), each counted."""
    url, data = api.completed_url()
    whole = api.download(url).content
    cut = len(whole) // 3
    tail = api.download(url, Range=f"bytes={cut}-")
    assert tail.status_code == 206
    assert tail.headers["content-range"] == f"bytes {cut}-{len(whole) - 1}/{len(whole)}"
    assert whole[:cut] + tail.content == whole
    middle = api.download(url, Range="bytes=10-19")
    assert middle.status_code == 206 and middle.content == whole[10:20]
    beyond = api.download(url, Range=f"bytes={len(whole)}-")
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(whole)}"
    stats = api.sb.state.stats()
    assert stats["downloads_by_task"] == {data["id"]: 4}
    assert stats["bytes_served"] == len(whole) + len(tail.content) + 10


def test_truncated_download_then_resume(api: Api) -> None:
    """A download cut off mid-way resumes with a range request to the identical whole."""
    url, _ = api.completed_url()
    whole = api.download(url).content
    api.sb.config.faults.download_truncate = FaultRule(rate=1, times=1)
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream("GET", url) as response:
        assert int(response.headers["content-length"]) == len(whole)
        for chunk in response.iter_bytes():
            received.extend(chunk)
    assert 0 < len(received) < len(whole)
    rest = api.download(url, Range=f"bytes={len(received)}-")
    assert rest.status_code == 206
    assert bytes(received) + rest.content == whole


def test_expired_url_is_403_and_a_later_query_hands_out_a_fresh_one(api: Api) -> None:
    """An expired link is refused 403 (as S3 would); the next query hands out a fresh one."""
    api.sb.config.faults.expired_urls = FaultRule(rate=1, times=1)
    url, data = api.completed_url()
    assert data["result"]["videos"][0]["expires_at"] < time.time()
    refused = api.download(url)
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/xml")
    assert b"<Error>" in refused.content and b"expired" in refused.content
    again = api.get(data["id"]).json()["data"]
    fresh = api.video_url(again)
    assert fresh != url
    assert again["result"]["videos"][0]["expires_at"] > time.time()
    assert api.download(fresh).status_code == 200


def test_url_expires_naturally_after_its_ttl(api: Api) -> None:
    """A link stops working after its time to live, and a new one is handed out."""
    api.sb.config.url_ttl_s = 0.2
    url, data = api.completed_url()
    assert api.download(url).status_code == 200
    time.sleep(max(0.0, data["result"]["videos"][0]["expires_at"] - time.time()) + 0.05)
    assert api.download(url).status_code == 403
    assert api.video_url(api.get(data["id"]).json()["data"]) != url


def test_forged_or_missing_signature_is_403(api: Api) -> None:
    """A forged, stretched or missing signature, or another path, is refused 403."""
    url, _ = api.completed_url()
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    later = int(query["expires"][0]) + 10
    for params in (
        {"expires": query["expires"][0], "sig": "0" * 32},
        {"expires": str(later), "sig": query["sig"][0]},
        {"expires": query["expires"][0]},
        {},
    ):
        response = httpx.get(base, params=params)
        assert response.status_code == 403
        assert b"<Error>" in response.content
    other = base.replace(".mp4", "x.mp4")
    assert httpx.get(other, params=query).status_code == 403
    assert api.sb.state.stats()["downloads_by_task"] == {}


def test_html_page_instead_of_video(api: Api) -> None:
    """The download_html fault serves an HTML page with 200 once, then the video again."""
    api.sb.config.faults.download_html = FaultRule(rate=1, times=1)
    url, _ = api.completed_url()
    page = api.download(url)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.content.lstrip().startswith(b"<!DOCTYPE html>")
    assert api.download(url).headers["content-type"] == "video/mp4"


def test_trickle_slows_the_download(api: Api) -> None:
    """The trickle fault slows a download to the configured bytes per second."""
    url, _ = api.completed_url(duration=4)
    size = len(api.download(url).content)
    api.sb.config.faults.trickle_bytes_per_s = size * 2
    started = time.monotonic()
    assert len(api.download(url).content) == size
    assert time.monotonic() - started >= 0.4


def test_reference_image_shows_in_the_first_frame(api: Api) -> None:
    """A reference image given as a data URI shows in the first frame; a remote one does not."""
    image = data_uri(png_bytes(320, 240, (0, 0, 255)))
    ids = [
        api.create(prompt="same words", image_urls=[image]),
        api.create(prompt="same words"),
        api.create(prompt="same words", image_urls=["https://example.com/x.png"]),
    ]
    a, b, c = (
        first_frame(api.download(api.video_url(api.wait(i))).content).astype(int) for i in ids
    )
    assert a.shape == b.shape == c.shape

    # The image is half pure green; the frames without it have white text on dark blue only.
    def green(frame: np.ndarray) -> float:
        return float(((frame[..., 1] > 200) & (frame[..., 0] < 80)).mean())

    assert green(a) > 0.1
    assert green(b) == green(c) == 0
    assert np.abs(a - b).mean() > 20


def test_garbage_fault_serves_bytes_no_demuxer_reads(api: Api) -> None:
    """`download_garbage` serves non-MP4 bytes under video/mp4 with an honest length."""
    api.sb.config.faults.download_garbage = FaultRule(rate=1, times=1)
    url, _ = api.completed_url()
    bad = api.download(url)
    assert bad.status_code == 200 and bad.headers["content-type"] == "video/mp4"
    assert int(bad.headers["content-length"]) == len(bad.content) > 1000
    assert not bad.content.lstrip().startswith(b"<")
    with pytest.raises(av.FFmpegError):
        probe(bad.content)
    assert probe(api.download(url).content)[0] == 1280  # `times=1`: the next one is a video
    assert api.sb.state.stats()["faults_fired"] == {"download_garbage": 1}


def test_mismatch_fault_renders_another_size_and_length_for_good(api: Api) -> None:
    """`video_mismatch` serves a smaller, longer video, the same bytes on every request."""
    api.sb.config.faults.video_mismatch = FaultRule(rate=1)
    url, _ = api.completed_url(resolution="720p", aspect_ratio="16:9", duration=4)
    video = api.download(url).content
    width, height, seconds, _codec, _pixels = probe(video)
    assert (width, height) == (640, 360)
    assert seconds == pytest.approx(8, abs=0.01)
    cut = len(video) // 2
    assert video[:cut] + api.download(url, Range=f"bytes={cut}-").content == video


def test_redirect_fault_points_elsewhere_until_the_request_is_there(api: Api) -> None:
    """The redirect fault sends a 302 to its target path, and serves requests already there."""
    url, _ = api.completed_url()
    parts = urlsplit(url)
    api.sb.config.faults.download_redirect_to = "https://169.254.169.254/latest"
    away = api.download(url)
    assert away.status_code == 302 and away.headers["location"] == "https://169.254.169.254/latest"
    other = f"http://localhost:{parts.port}"
    api.sb.config.faults.download_redirect_to = other + "{path}"
    hop = api.download(url)
    assert hop.status_code == 302
    assert hop.headers["location"] == f"{other}{parts.path}?{parts.query}"
    arrived = api.download(hop.headers["location"])
    assert arrived.status_code == 200 and probe(arrived.content)[0] == 1280
    assert api.sb.state.stats()["faults_fired"] == {"download_redirect_to": 2}


def test_cdn_clock_behind_hands_out_links_that_look_expired_here_but_work(api: Api) -> None:
    """With the CDN's clock two hours behind, a one-hour link expires in our past yet works."""
    api.sb.config.url_ttl_s = 3600
    api.sb.config.faults.cdn_clock_offset_s = -7200
    url, data = api.completed_url()
    assert data["result"]["videos"][0]["expires_at"] < time.time() - 3000
    assert api.download(url).status_code == 200
    # Queried again, the CDN still deems its link valid and hands out the same one.
    assert api.video_url(api.get(data["id"]).json()["data"]) == url


def test_cdn_5xx_fault_answers_503_then_serves(api: Api) -> None:
    """`download_5xx` answers 503 (an object-store error body) as often as `times` says."""
    api.sb.config.faults.download_5xx = FaultRule(rate=1, times=2)
    url, _ = api.completed_url()
    assert [api.download(url).status_code for _ in range(3)] == [503, 503, 200]
    assert api.sb.state.stats()["faults_fired"] == {"download_5xx": 2}


def test_shared_videos_serve_one_render_per_size_with_the_requested_shape(
    api: Api, sb: RunningSandbox
) -> None:
    """With shared_videos, two tasks of one size get the very same bytes, still of that size."""
    sb.config.shared_videos = True
    first, _ = api.completed_url(resolution="720p", duration=4, prompt="a lighthouse")
    second, _ = api.completed_url(resolution="720p", duration=4, prompt="a snail on a leaf")
    one, two = api.download(first).content, api.download(second).content
    assert one == two
    width, height, seconds, _, _ = probe(one)
    assert (width, height) == (1280, 720) and seconds == pytest.approx(4, abs=0.01)
    sb.config.shared_videos = False
    third, _ = api.completed_url(resolution="720p", duration=4, prompt="a lighthouse")
    assert api.download(third).content != one, "without it each task names itself"
