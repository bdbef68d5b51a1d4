"""The emulated CDN: signed, expiring download links and the bytes behind them.

The signature in a link is a secret (whoever holds the link can download), so it is never
logged; the server runs with access logs off for the same reason.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import threading
import time
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from apimart import spec
from apimart.sandbox.config import SandboxConfig
from apimart.sandbox.render import render_mp4
from apimart.sandbox.responses import BytesResponse, cdn_error, html_error_page
from apimart.sandbox.state import SandboxState
from apimart.sandbox.task import MintedUrl, Task

log = logging.getLogger(__name__)

CDN_PATH = "/cdn/videos/{token}.mp4"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
# Renders are CPU-bound and cached: one at a time keeps two downloads of the same video
# from rendering it twice, and keeps a burst of 4k downloads from starving the server.
_RENDER_LOCK = threading.Lock()
# What the `download_garbage` fault serves: no container signature anywhere, and not markup.
GARBAGE_BYTES = 64 * 1024


def cdn_now(config: SandboxConfig, now: float | None = None) -> float:
    """The CDN's clock, which may run off this machine's (`cdn_clock_offset_s`)."""
    return (time.time() if now is None else now) + config.faults.cdn_clock_offset_s


def sign(secret: bytes, token: str, expires: int) -> str:
    return hmac.new(secret, f"{token}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]


def current_url(state: SandboxState, config: SandboxConfig, task: Task, now: float) -> MintedUrl:
    """The link to hand out for a completed task: the last one while valid, else a new one.

    With the `expired_urls` fault a new link is born expired, so the client has to notice the
    403 and ask again; each later query mints another link, drawn afresh.
    """
    now = cdn_now(config, now)
    with state.lock:
        if task.urls and task.urls[-1].expires_at > now:
            return task.urls[-1]
        generation = len(task.urls) + 1
        expired = state.fires(
            config.faults.expired_urls,
            "expired_urls",
            task.fault_key,
            generation,
            seed=config.seed,
            prompt=task.prompt,
        )
        # Rounded up: a link must never be handed out already expired by accident.
        expires_at = int(now) - 3600 if expired else math.ceil(now + config.url_ttl_s)
        url = MintedUrl(
            token=f"{task.id}_{generation}", expires_at=expires_at, generation=generation
        )
        state.add_url(task, url)
        return url


def public_url(state: SandboxState, base_url: str, url: MintedUrl) -> str:
    path = CDN_PATH.format(token=url.token)
    signature = sign(state.secret, url.token, url.expires_at)
    return f"{base_url.rstrip('/')}{path}?expires={url.expires_at}&sig={signature}"


async def download(
    state: SandboxState,
    config: SandboxConfig,
    token: str,
    expires: str | None,
    sig: str | None,
    range_header: str | None,
    *,
    host: str | None = None,
    path: str = "",
) -> Response:
    """The CDN's answer to GET /cdn/videos/{token}.mp4?expires=...&sig=...

    `host` is the request's Host header and `path` its path and query, for the redirect fault.
    """
    if expires is None or sig is None or not expires.isdigit():
        return cdn_error(403, "AccessDenied", "Missing or malformed signature parameters")
    expires_at = int(expires)
    if not hmac.compare_digest(sign(state.secret, token, expires_at), sig):
        return cdn_error(403, "SignatureDoesNotMatch", "The request signature is not valid")
    if expires_at <= cdn_now(config):
        return cdn_error(403, "AccessDenied", "Request has expired")
    found = state.count_download(token)
    if found is None:
        return cdn_error(404, "NoSuchKey", "The specified key does not exist")
    task, generation, attempt = found
    faults = config.faults
    url_key = f"{task.fault_key}/url{generation}"

    def fires(name: str) -> bool:
        rule = getattr(faults, name)
        return state.fires(rule, name, url_key, attempt, seed=config.seed, prompt=task.prompt)

    target = faults.download_redirect_to
    if target and urlsplit(target.replace("{path}", "/")).netloc.lower() != (host or "").lower():
        state.count_fault("download_redirect_to")
        log.info("sandbox: CDN redirected the download of %s", task.id)
        return RedirectResponse(target.replace("{path}", path), status_code=302)

    if fires("download_5xx"):
        log.info("sandbox: CDN answered 503 to the download of %s", task.id)
        return cdn_error(503, "ServiceUnavailable", "Please reduce your request rate")

    if fires("download_html"):
        log.info("sandbox: CDN served an HTML page instead of the video of %s", task.id)
        return html_error_page()

    if fires("download_garbage"):
        log.info("sandbox: CDN served bytes that are not a video for %s", task.id)
        video = garbage(task.id)
    else:
        video = await run_in_threadpool(
            _render_task, task, config, _mismatched(state, config, task)
        )
    total = len(video)
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": f'"{hashlib.sha256(video).hexdigest()[:32]}"',
        "Cache-Control": "private, max-age=0",
    }
    status = 200
    body = video
    match = _RANGE.fullmatch(range_header.strip()) if range_header else None
    if match is not None:
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) else total - 1
        if start >= total or end < start:
            return Response(
                status_code=416, headers={"Content-Range": f"bytes */{total}"}, media_type=None
            )
        end = min(end, total - 1)
        body = video[start : end + 1]
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{total}"

    stop_after = None
    if fires("download_truncate"):
        stop_after = len(body) // 2
        log.info("sandbox: CDN will cut the download of %s after %d bytes", task.id, stop_after)
    return BytesResponse(
        body,
        status_code=status,
        headers=headers,
        media_type="video/mp4",
        stop_after=stop_after,
        bytes_per_s=faults.trickle_bytes_per_s,
        on_sent=state.add_bytes,
    )


def garbage(seed: str) -> bytes:
    """Bytes no demuxer takes for a video: a fixed non-markup lead, then hash noise."""
    return b"\x00not-a-video\x00" + hashlib.shake_256(seed.encode()).digest(GARBAGE_BYTES)


def _mismatched(state: SandboxState, config: SandboxConfig, task: Task) -> bool:
    with state.lock:
        if task.mismatched is None:
            rule = config.faults.video_mismatch
            task.mismatched = state.fires(
                rule, "video_mismatch", task.fault_key, 1, seed=config.seed, prompt=task.prompt
            )
        return task.mismatched


def _render_task(task: Task, config: SandboxConfig, mismatched: bool = False) -> bytes:
    width, height = spec.frame_size(task.resolution, task.aspect_ratio)
    duration: float = task.duration
    if mismatched:
        # Half the size (kept even for yuv420p) and clearly longer than any tolerance.
        width, height, duration = width // 4 * 2, height // 4 * 2, duration + 4
    with _RENDER_LOCK:
        return render_mp4(
            width,
            height,
            duration,
            fps=config.fps,
            text=f"{task.resolution} {task.duration}s"
            if config.shared_videos
            else f"{task.id}\n{task.prompt}",
            image=task.image,
            cache_dir=config.render_cache_dir,
        )
