"""Fetching a rendered video from its signed CDN link (`AsyncAPIMartClient.download`).

The body streams into a hidden temporary file beside the destination, hashed on the way, and
is renamed over the destination only once it is whole and checked; every failure removes the
temporary file. An interrupted transfer resumes with a Range request. The link is a credential
(its query string is the signature), so it appears in messages and logs only redacted, and the
API key is never sent with it: the CDN is somebody else's host.

The link and every redirect it leads to come from outside, so each one is checked by
`apimart.netguard` (after DNS resolution) before anything connects to it: a CDN that sends us
to `169.254.169.254` or into the private network is refused (`UnsafeDownloadURL`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from apimart.calls import describe
from apimart.errors import (
    DownloadError,
    DownloadIntegrityError,
    LinkExpiredError,
    parse_retry_after,
    redact_url,
)
from apimart.netguard import UnsafeURL, acheck_url, is_loopback_host
from apimart.retry import RetryAfterTooLong, RetryPolicy

__all__ = [
    "DownloadResult",
    "DownloadUnavailable",
    "UnsafeDownloadURL",
    "check_download_url",
    "download_video",
    "is_loopback_host",
]

log = logging.getLogger("apimart")

DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_DEADLINE_S = 900.0
MAX_REDIRECTS = 5

_EXPIRED_STATUSES = frozenset({403, 404, 410})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# S3-style stores label untyped objects binary/octet-stream; that is not a sign of an error page.
_GENERIC_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True, slots=True)
class DownloadResult:
    path: Path
    bytes: int
    sha256: str


class UnsafeDownloadURL(DownloadError, UnsafeURL):
    """The link (or a redirect) points at a private, loopback, link-local or metadata host."""


class DownloadUnavailable(DownloadError):
    """The CDN or the network kept failing (5xx, 429, dropped connections) through every
    try: the only download failure that a later try, with the same link, may cure."""


def check_download_url(url: str, *, allow_loopback_http: bool) -> httpx.URL:
    """The URL, if it may be fetched: https, or plain http to this machine in a sandbox run."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise DownloadError(f"not a URL: {redact_url(str(url))}") from exc
    if parsed.scheme == "https" and parsed.host:
        return parsed
    if parsed.scheme == "http" and allow_loopback_http and is_loopback_host(parsed.host):
        return parsed
    raise DownloadError(
        f"refusing to download {redact_url(parsed)}: only https links are accepted"
        " (plain http only to a loopback host while the API itself is on loopback)"
    )


async def _guard(url: httpx.URL, allow_loopback: bool) -> None:
    """Refuse a URL whose host is, or resolves to, an address we must not fetch.

    httpx resolves the name again when it connects, so a DNS server that answers differently
    a moment later (rebinding) could slip past this check. We accept that rather than pin the
    connection to the checked address (which needs a transport of our own and breaks TLS name
    checks if done wrong): the names we fetch come from the vendor's answers, and the check
    still stops every literal, every metadata name and every name that plainly resolves inward.
    """
    try:
        await acheck_url(str(url), allow_loopback=allow_loopback)
    except UnsafeURL as exc:
        raise UnsafeDownloadURL(f"refusing to download {redact_url(url)}: {exc}") from None


def content_type_problem(value: str | None) -> str | None:
    """Why this Content-Type cannot be a video, or None. A missing type is tolerated (the
    first bytes are still checked for HTML)."""
    if value is None:
        return None
    media = value.split(";", 1)[0].strip().lower()
    if media.startswith("video/") or media in _GENERIC_TYPES:
        return None
    return f"Content-Type {media or 'empty'} is not a video"


class _Retryable(Exception):
    def __init__(self, reason: str, *, retry_after: float | None = None, short: bool = False):
        super().__init__(reason)
        self.retry_after = retry_after
        self.short = short


class _PartFile:
    """The temporary file a download grows in, with the running hash of what it holds."""

    def __init__(self, dest: Path) -> None:
        # A fixed name, truncated on open: a process killed mid-download leaves one
        # `.NAME.part`, which the next download of the same video reuses instead of
        # piling up. One writer per destination at a time is the caller's promise.
        # A destination already hidden (a video staged for verification) is not hidden twice.
        hidden = dest.name if dest.name.startswith(".") else f".{dest.name}"
        self.path = dest.with_name(f"{hidden}.part")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.file = os.fdopen(fd, "wb")
        self.hasher = hashlib.sha256()
        self.size = 0
        self.committed = False

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.hasher.update(chunk)
        self.size += len(chunk)

    def restart(self) -> None:
        self.file.seek(0)
        self.file.truncate()
        self.hasher = hashlib.sha256()
        self.size = 0

    def commit(self, dest: Path) -> None:
        """Make the file durable, then atomically put it in place: a crash leaves either the
        old destination or the whole new file, never half of one."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.path, dest)
        self.committed = True
        # The rename itself lives in the directory; without this a crash can forget it.
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def discard(self) -> None:
        try:
            # Closing flushes what is buffered; on a full disk that fails again, and the
            # half-written file must still go.
            self.file.close()
        except OSError:
            pass
        finally:
            if not self.committed:
                self.path.unlink(missing_ok=True)


def _bounded(timeout: httpx.Timeout, remaining: float) -> dict[str, float]:
    """Per-request timeouts, none longer than what is left of the overall deadline."""
    return {
        name: min(remaining, value if value is not None else remaining)
        for name, value in timeout.as_dict().items()
    }


async def download_video(
    http: httpx.AsyncClient,
    url: str,
    dest: Path,
    *,
    retry: RetryPolicy,
    timeout: httpx.Timeout,
    user_agent: str,
    max_bytes: int,
    deadline_s: float,
    expires_at: float | None,
    allow_loopback_http: bool,
) -> DownloadResult:
    """Fetch `url` into `dest` with `http` (see the module docstring for the guarantees).

    `retry` bounds the tries that make no progress, `timeout` is each request's (cut to what
    is left of `deadline_s`), and `allow_loopback_http` is true only for a sandbox client.
    """
    shown = redact_url(url)
    target = check_download_url(url, allow_loopback_http=allow_loopback_http)
    if max_bytes <= 0 or deadline_s <= 0:
        raise ValueError("max_bytes and deadline_s must be positive")
    deadline = time.monotonic() + deadline_s
    if expires_at is not None and expires_at <= time.time():
        # Our clock may be the one that is wrong: the CDN judges by its own, and a link it
        # refuses costs one request (its 403 raises LinkExpiredError for renewal).
        log.info(
            "%s looks expired by this machine's clock (%.0fs ago); trying it once anyway",
            shown,
            time.time() - expires_at,
        )
    await _guard(target, allow_loopback_http)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _PartFile(dest)
    fetch = _Fetch(http, retry, timeout, user_agent, max_bytes, deadline, allow_loopback_http)
    try:
        await fetch.into(part, target)
        # fsync can take seconds on a busy disk; the event loop must not wait for it.
        await asyncio.to_thread(part.commit, dest)
    finally:
        part.discard()
    log.info("downloaded %s to %s (%d bytes)", shown, dest, part.size)
    return DownloadResult(path=dest, bytes=part.size, sha256=part.hasher.hexdigest())


@dataclass(frozen=True, slots=True)
class _Fetch:
    """One download's connection and limits."""

    http: httpx.AsyncClient
    retry: RetryPolicy
    timeout: httpx.Timeout
    user_agent: str
    max_bytes: int
    deadline: float
    allow_loopback_http: bool

    def request(self, url: httpx.URL, offset: int) -> httpx.Request:
        headers = {
            "User-Agent": self.user_agent,
            "Accept": "video/*, application/octet-stream",
            # Byte counts and ranges must refer to the stored bytes, not a compressed form.
            "Accept-Encoding": "identity",
        }
        if offset:
            headers["Range"] = f"bytes={offset}-"
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DownloadError(f"{redact_url(url)}: download deadline exceeded")
        timeout = _bounded(self.timeout, remaining)
        return httpx.Request("GET", url, headers=headers, extensions={"timeout": timeout})

    async def into(self, part: _PartFile, url: httpx.URL) -> None:
        """Stream the video into `part`, following checked redirects and resuming cuts."""
        failures = 0
        furthest = 0
        redirects = 0
        total: int | None = None
        while True:
            request = self.request(url, part.size)
            try:
                response = await self.http.send(request, stream=True)
                try:
                    location = response.headers.get("Location")
                    if response.status_code in _REDIRECT_STATUSES and location:
                        redirects += 1
                        if redirects > MAX_REDIRECTS:
                            raise DownloadError(f"{redact_url(url)}: too many redirects")
                        await response.aclose()
                        url = check_download_url(
                            str(url.join(location)), allow_loopback_http=self.allow_loopback_http
                        )
                        # Every hop is checked before it is requested: a redirect is where a
                        # CDN link most easily turns into a request for the metadata service.
                        await _guard(url, self.allow_loopback_http)
                        continue
                    total = _check_head(response, part, self.max_bytes)
                    async for chunk in response.aiter_bytes():
                        self.take(url, part, chunk)
                finally:
                    await response.aclose()
                if total is not None and part.size > total:
                    raise DownloadIntegrityError(
                        f"{redact_url(url)}: got {part.size} bytes, more than the {total} announced"
                    )
                if total is not None and part.size < total:
                    raise _Retryable(f"short body: {part.size} of {total} bytes", short=True)
                if part.size == 0:
                    raise DownloadIntegrityError(f"{redact_url(url)}: empty body")
                return
            except httpx.HTTPError as exc:
                # Mid-body this is the peer closing early: what arrived is kept and resumed.
                problem = _Retryable(describe(exc), short=part.size > 0)
            except _Retryable as exc:
                problem = exc
            # A try that got further than any before is progress, not failure: only stalls
            # (and restarts that never get further) use up attempts.
            if part.size > furthest:
                furthest = part.size
            else:
                failures += 1
            await self.pause(url, part, problem, failures, total)

    def take(self, url: httpx.URL, part: _PartFile, chunk: bytes) -> None:
        if part.size + len(chunk) > self.max_bytes:
            raise DownloadIntegrityError(
                f"{redact_url(url)}: body exceeds the limit of {self.max_bytes} bytes"
            )
        if part.size == 0 and chunk.lstrip()[:1] == b"<":
            raise DownloadIntegrityError(f"{redact_url(url)}: body is markup, not video")
        part.write(chunk)
        if time.monotonic() > self.deadline:
            raise DownloadError(f"{redact_url(url)}: download deadline exceeded")

    async def pause(
        self, url: httpx.URL, part: _PartFile, problem: _Retryable, failures: int, total: int | None
    ) -> None:
        """Wait before the next try, or raise when the tries without progress are used up."""
        if not self.retry.can_retry(failures):
            tries = f"{problem}; {failures} tries without progress"
            if problem.short:
                raise DownloadIntegrityError(
                    f"{redact_url(url)}: short body, {part.size} of {total or '?'} bytes ({tries})"
                )
            raise DownloadUnavailable(f"{redact_url(url)}: {tries}")
        try:
            seconds = self.retry.sleep_for(max(failures, 1), problem.retry_after)
        except RetryAfterTooLong:
            raise DownloadError(f"{redact_url(url)}: {problem}, asked to wait longer") from None
        log.info(
            "download of %s interrupted at %d bytes (%s); retrying in %.2fs",
            redact_url(url),
            part.size,
            problem,
            seconds,
        )
        seconds = min(seconds, self.deadline - time.monotonic())
        if seconds > 0:
            await asyncio.sleep(seconds)


def _check_head(response: httpx.Response, part: _PartFile, max_bytes: int) -> int | None:
    """Check status and headers before any body byte is written; return the expected total
    size when the server announced it. Restarts `part` when the server ignores the Range."""
    status = response.status_code
    shown = redact_url(response.request.url)
    if status in _EXPIRED_STATUSES:
        raise LinkExpiredError(f"HTTP {status} from {shown}: the link is expired or refused")
    if status == 416 and part.size:
        part.restart()
        raise _Retryable("HTTP 416 to a resume; starting over")
    if status >= 500 or status in (408, 429):
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise _Retryable(f"HTTP {status}", retry_after=retry_after)
    if status not in (200, 206):
        raise DownloadError(f"HTTP {status} from {shown}")
    problem = content_type_problem(response.headers.get("Content-Type"))
    if problem:
        raise DownloadIntegrityError(f"{shown}: {problem}")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Lengths and ranges would count encoded bytes; we asked for identity for that reason.
        raise DownloadIntegrityError(f"{shown}: unrequested Content-Encoding {encoding}")
    length = _int_header(response.headers.get("Content-Length"))
    if status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if not part.size or match is None or int(match.group(1)) != part.size:
            # Not the range we asked for: splicing it in would corrupt the file.
            part.restart()
            raise _Retryable("HTTP 206 with a Content-Range that does not continue the file")
        total = None if match.group(3) == "*" else int(match.group(3))
    else:
        if part.size:
            log.info("%s ignored the Range request; starting over from byte 0", shown)
            part.restart()
        total = length
    if total is not None and total > max_bytes:
        raise DownloadIntegrityError(f"{shown}: {total} bytes exceed the limit of {max_bytes}")
    return total


def _int_header(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)
