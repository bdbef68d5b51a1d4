"""The APIMart client, `AsyncAPIMartClient`: one `httpx.AsyncClient`, three calls.

`submit` and `get_task` retry differently because they cost differently. Querying is free,
so it retries every transient failure (network errors, 408, 429, 5xx). Submitting is paid, so
it retries only what certainly created nothing (the connection could not be opened, a 408)
and 429, within the `RetryPolicy`; every other doubtful outcome (a drop or timeout after the
request left, a 5xx, an unreadable 2xx) becomes `SubmitOutcomeUnknown` with the idempotency
key, for the caller to settle without paying twice. A 404/405 to the POST is
`EndpointNotFound` and a 403 `PermissionDeniedError`: nothing was created. A request the HTTP
layer refuses to send (h11's `LocalProtocolError`) never left whole: `UnsendableRequest`,
never unknown. `download` is `apimart.download.download_video` (SSRF guard on every hop,
Range resume, checks, hash, fsync, atomic rename).

There is no blocking twin: every caller (the Prefect tasks) runs in an event loop.

Secrets: the API key is never in a repr, message or log record of ours (in any of its forms,
see `apimart.redact`), and signed download links appear only redacted. httpx itself logs every
request's full URL (signed query included) at INFO on the `httpx` logger: keep that logger at
WARNING in production (`apimart.redact.install_redaction` does).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from itertools import count
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from apimart import errors, spec
from apimart.calls import (
    NEVER_SENT,
    Secret,
    check_idempotency_key,
    describe,
    parse_success,
    retry_wait,
    status_error,
    task_path,
    unsendable,
)
from apimart.download import (
    DEFAULT_DEADLINE_S,
    DEFAULT_MAX_BYTES,
    DownloadResult,
    download_video,
    is_loopback_host,
)
from apimart.models import SubmitResult, Task, VideoRequest
from apimart.retry import RetryPolicy

log = logging.getLogger("apimart")

ENV_BASE_URL = "APIMART_BASE_URL"
ENV_API_KEY = "APIMART_API_KEY"

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=30.0, pool=10.0)
DEFAULT_DOWNLOAD_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=30.0, pool=10.0)
DEFAULT_USER_AGENT = "videobatch-apimart/0.1"
# An idle connection of a sized pool is dropped before common servers drop it (uvicorn, the
# sandbox's server, after 5 s): a request sent on a connection the server is closing fails
# after it left, and for a POST that is an unknown outcome.
KEEPALIVE_EXPIRY_S = 4.0


def pool_limits(max_connections: int | None) -> httpx.Limits:
    """The client's pool. None: httpx's default (100 connections, 20 kept alive). A number:
    at most that many, all kept alive while in use, since with fewer kept alive than allowed
    httpcore 1.0 closes every idle connection once the pool holds more than the keep-alive
    count (a connection opened and closed per request, bench/scale-profile.md)."""
    if max_connections is None:
        return httpx.Limits(max_connections=100, max_keepalive_connections=20)
    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, got {max_connections}")
    return httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )


def _base_url(value: str | None) -> str:
    raw = value or os.environ.get(ENV_BASE_URL) or spec.DEFAULT_BASE_URL
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise errors.RequestValidationError({"base_url": "not a URL"}) from exc
    secure = url.scheme == "https" or (url.scheme == "http" and is_loopback_host(url.host))
    if not url.host or not secure:
        # The key travels in a header: over plain http anyone on the path could read it.
        raise errors.RequestValidationError(
            {"base_url": "must be https (plain http only to a loopback host, for the sandbox)"}
        )
    return str(url.copy_with(query=None, fragment=None)).rstrip("/")


def _unsendable_kind(key: str) -> str | None:
    """What kind of character makes `key` unsendable in a header, or None if none does.

    Names a class of character, never the character's place or neighbours: the message must
    say nothing about the key itself.
    """
    for char in key:
        if char in "\r\n":
            return "a line break"
        if char.isspace():
            return "a space"
        if not char.isascii():
            return "a non-ASCII character"
        if not "\x21" <= char <= "\x7e":
            return "a control character"
    return None


def check_api_key(key: str | None) -> str:
    """The key, stripped, if it can be sent as `Authorization: Bearer <key>`.

    Raises AuthenticationError (401, `missing_api_key` or `invalid_api_key`) for a missing key
    or one holding anything but visible ASCII (0x21-0x7E): a key wrapped across two lines of a
    secrets file would otherwise fail only inside the HTTP layer, whose error quotes the header.
    The message names the rule, never the key or any part of it. Call it before opening
    anything, so a run that cannot send stops before it plans.
    """
    stripped = (key or "").strip()
    if not stripped:
        raise errors.AuthenticationError(
            f"no API key: pass api_key= or set {ENV_API_KEY}",
            status_code=401,
            error_type="missing_api_key",
        )
    kind = _unsendable_kind(stripped)
    if kind is not None:
        raise errors.AuthenticationError(
            f"the API key holds {kind}, which cannot be sent in an HTTP header (only visible "
            f"ASCII characters can: no line break, space or non-ASCII character): check "
            f"{ENV_API_KEY} or the key you passed",
            status_code=401,
            error_type="invalid_api_key",
        )
    return stripped


def _api_key(value: str | None) -> Secret:
    # Refused at construction: a run should stop before it plans anything it cannot send.
    return Secret(check_api_key(value if value is not None else os.environ.get(ENV_API_KEY, "")))


def _timeout(value: httpx.Timeout | float) -> httpx.Timeout:
    return value if isinstance(value, httpx.Timeout) else httpx.Timeout(float(value))


class AsyncAPIMartClient:
    """Async client of the APIMart video API.

    Keyword-only: `base_url` (else env APIMART_BASE_URL, else the vendor's URL; https only,
    plain http only to a loopback host), `api_key` (else env APIMART_API_KEY; a missing key,
    or one that cannot be sent in a header (see `check_api_key`), raises AuthenticationError
    here, at construction, before anything is planned), `timeout` and `download_timeout` (an
    httpx.Timeout, or one number of seconds for every phase), `retry`, `transport` (any
    httpx.AsyncBaseTransport: a proxy, or httpx.MockTransport / ASGITransport in tests),
    `user_agent` and `max_connections` (the pool, API and downloads together, all kept alive
    while in use; None keeps httpx's default pool; ignored with a `transport`, which pools,
    or not, itself). What it should be for a run is measured with bench/pool.py: each request
    costs httpcore a pass over every connection the pool holds (a poll of each idle socket),
    so a pool larger than the requests in flight costs CPU, and a smaller one queues them.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        download_timeout: httpx.Timeout | float = DEFAULT_DOWNLOAD_TIMEOUT,
        user_agent: str = DEFAULT_USER_AGENT,
        max_connections: int | None = None,
    ) -> None:
        self._base_url = _base_url(base_url)
        self._api_key = _api_key(api_key)
        self._timeout = _timeout(timeout)
        self._download_timeout = _timeout(download_timeout)
        self._retry = retry or RetryPolicy()
        self._user_agent = user_agent
        # Only a client aimed at this machine (the sandbox) may fetch plain-http loopback links.
        self._allow_loopback_http = is_loopback_host(httpx.URL(self._base_url).host)
        self._http = httpx.AsyncClient(
            transport=transport, follow_redirects=False, limits=pool_limits(max_connections)
        )

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def retry(self) -> RetryPolicy:
        return self._retry

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key='********')"

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Request:
        # The key is added per API request, never as a client default, so no download
        # (a third-party CDN host) can ever receive it.
        all_headers = {
            "Authorization": f"Bearer {self._api_key.reveal()}",
            "Accept": "application/json",
            "User-Agent": self._user_agent,
            **(headers or {}),
        }
        return httpx.Request(
            method,
            self._base_url + path,
            json=json,
            params=params,
            headers=all_headers,
            extensions={"timeout": self._timeout.as_dict()},
        )

    async def _pause(
        self, attempt: int, give_up: errors.APIMartError, cause: BaseException | None = None
    ) -> None:
        """Sleep before the next try, or raise `give_up` when no try is left."""
        seconds = retry_wait(self._retry, attempt, give_up, cause)
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def submit(self, request: VideoRequest, *, idempotency_key: str) -> SubmitResult:
        """Ask for one video. Retries only what never reached the server, 408s and 429s.

        Raises SubmitOutcomeUnknown when a task may have been created without our learning
        its id: never resend blindly; look for the task, or resend with the same key.
        """
        if not isinstance(request, VideoRequest):
            raise TypeError("request must be a VideoRequest (build it with VideoRequest.build)")
        key = check_idempotency_key(idempotency_key)
        payload = request.to_payload()
        where = errors.redact_url(self._base_url + spec.SUBMIT_PATH)

        def unknown(cause: str) -> errors.SubmitOutcomeUnknown:
            return errors.SubmitOutcomeUnknown(
                f"POST {where}: the task may or may not exist", idempotency_key=key, cause=cause
            )

        for attempt in count(1):
            log.debug("submit try %d (idempotency key %s)", attempt, key)
            http_request = self._request(
                "POST", spec.SUBMIT_PATH, json=payload, headers={"Idempotency-Key": key}
            )
            refused = False
            try:
                response = await self._http.send(http_request)
            except httpx.LocalProtocolError:
                refused = True
            except NEVER_SENT as exc:
                said = describe(exc, self._api_key)
                failure = errors.ConnectError(f"POST {where}: could not connect ({said})")
                await self._pause(attempt, failure, exc)
                continue
            except httpx.HTTPError as exc:
                # Sent, perhaps whole: the server may have created the task and lost the answer.
                raise unknown(describe(exc, self._api_key)) from exc
            if refused:
                # Raised outside the handler, so not even as context does h11's message (which
                # quotes the header, key and all) travel with the error.
                raise unsendable("POST", where)
            status = response.status_code
            if status in (408, 429):
                # 408: the server never read the whole request, so it created nothing.
                await self._pause(attempt, status_error(response))
                continue
            if 200 <= status < 300:
                try:
                    result = parse_success(response, SubmitResult.from_body)
                except errors.ProtocolError as exc:
                    raise unknown(describe(exc, self._api_key)) from exc
                log.info("submitted task %s (idempotency key %s)", result.task_id, key)
                return result
            if status in (404, 405):
                # No such route: nothing was created there, whatever the base URL was meant to be.
                raise errors.EndpointNotFound(
                    f"HTTP {status} from {where}: no such route, so nothing was created; "
                    "check the base URL (it should not end in /v1)",
                    status_code=status,
                )
            if 400 <= status < 500:
                # A definite refusal: the API says it did not take the request.
                errors.raise_for_response(response)
            raise unknown(
                describe(status_error(response), self._api_key)
                if status >= 500
                else f"HTTP {status}"
            )
        raise AssertionError("unreachable")

    async def get_task(self, task_id: str, *, language: str | None = None) -> Task:
        """The task's current state; transient failures are retried, 4xx raised at once."""
        path = task_path(task_id)
        if language is not None and language not in spec.LANGUAGES:
            raise errors.RequestValidationError(
                {"language": f"must be one of {', '.join(spec.LANGUAGES)}, got {language!r}"}
            )
        params = {"language": language} if language else None
        where = errors.redact_url(self._base_url + path)
        for attempt in count(1):
            log.debug("query %s try %d", where, attempt)
            refused = False
            try:
                response = await self._http.send(self._request("GET", path, params=params))
            except httpx.LocalProtocolError:
                refused = True
            except httpx.HTTPError as exc:
                kind = errors.ConnectError if isinstance(exc, NEVER_SENT) else errors.TransportError
                said = describe(exc, self._api_key)
                await self._pause(attempt, kind(f"GET {where}: {said}"), exc)
                continue
            if refused:
                raise unsendable("GET", where)
            status = response.status_code
            if status in (408, 429) or status >= 500:
                await self._pause(attempt, status_error(response))
                continue
            if 200 <= status < 300:
                return parse_success(response, Task.from_body)
            if 400 <= status < 500:
                errors.raise_for_response(response)
            raise errors.ProtocolError(f"GET {where}: unexpected HTTP {status}")
        raise AssertionError("unreachable")

    async def download(
        self,
        url: str,
        dest: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        deadline_s: float = DEFAULT_DEADLINE_S,
        expires_at: float | None = None,
    ) -> DownloadResult:
        """Fetch a video to `dest` atomically, resuming interrupted transfers.

        Raises LinkExpiredError on a 403/404/410 (a link past `expires_at` by this machine's
        clock is still tried once: the CDN's clock decides), UnsafeDownloadURL for a link or
        redirect to a non-public host, DownloadIntegrityError for a body that is not the video.
        """
        return await download_video(
            self._http,
            url,
            Path(dest),
            retry=self._retry,
            timeout=self._download_timeout,
            user_agent=self._user_agent,
            max_bytes=max_bytes,
            deadline_s=deadline_s,
            expires_at=expires_at,
            allow_loopback_http=self._allow_loopback_http,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
