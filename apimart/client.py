"""The APIMart client: `AsyncAPIMartClient`, and `APIMartClient` with the same behaviour, sync.

Both are thin shells. What a call sends, when it retries and how it reads the answer is
written once, as I/O-free flows (`apimart.calls`, `apimart.download`), which each shell runs
with its own httpx client (`apimart._io`).

Secrets: the API key is never in a repr, message or log record of ours (in any of its forms,
see `apimart.redact`), and signed download links appear only redacted. httpx itself logs every
request's full URL (signed query included) at INFO on the `httpx` logger: keep that logger at
WARNING in production (`apimart.redact.install_redaction` does).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import httpx

from apimart import errors, spec
from apimart._io import AsyncBackend, Flow, SyncBackend, T, drive, run_sync
from apimart.calls import Secret, Settings, submit_flow, task_flow
from apimart.download import (
    DEFAULT_DEADLINE_S,
    DEFAULT_MAX_BYTES,
    DownloadResult,
    download_flow,
    is_loopback_host,
)
from apimart.models import SubmitResult, Task, VideoRequest
from apimart.retry import RetryPolicy

ENV_BASE_URL = "APIMART_BASE_URL"
ENV_API_KEY = "APIMART_API_KEY"

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=30.0, pool=10.0)
DEFAULT_DOWNLOAD_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=30.0, pool=10.0)
DEFAULT_USER_AGENT = "videobatch-apimart/0.1"


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


TransportT = TypeVar("TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)


class _ClientBase(Generic[TransportT]):
    """Configuration shared by both faces.

    Keyword-only: `base_url` (else env APIMART_BASE_URL, else the vendor's URL; https only,
    plain http only to a loopback host), `api_key` (else env APIMART_API_KEY; a missing key,
    or one that cannot be sent in a header (see `check_api_key`), raises AuthenticationError
    here, at construction, before anything is planned),
    `timeout` and `download_timeout` (an httpx.Timeout, or one number of seconds for every
    phase), `retry`, `transport` (any httpx transport of the face's kind, for tests and
    proxies) and `user_agent`.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: TransportT | None = None,
        download_timeout: httpx.Timeout | float = DEFAULT_DOWNLOAD_TIMEOUT,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        self._settings = Settings(
            base_url=_base_url(base_url),
            api_key=_api_key(api_key),
            timeout=_timeout(timeout),
            download_timeout=_timeout(download_timeout),
            retry=retry or RetryPolicy(),
            user_agent=user_agent,
        )
        host = httpx.URL(self._settings.base_url).host
        # Only a client aimed at this machine (the sandbox) may fetch plain-http loopback links.
        self._allow_loopback_http = is_loopback_host(host)
        self._connect(transport)

    def _connect(self, transport: TransportT | None) -> None:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return self._settings.base_url

    @property
    def retry(self) -> RetryPolicy:
        return self._settings.retry

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key='********')"

    def _submit(self, request: VideoRequest, idempotency_key: str) -> Flow[SubmitResult]:
        if not isinstance(request, VideoRequest):
            raise TypeError("request must be a VideoRequest (build it with VideoRequest.build)")
        return submit_flow(self._settings, request, idempotency_key)

    def _get_task(self, task_id: str, language: str | None) -> Flow[Task]:
        return task_flow(self._settings, task_id, language)

    def _download(
        self,
        url: str,
        dest: Path,
        max_bytes: int,
        deadline_s: float,
        expires_at: float | None,
    ) -> Flow[DownloadResult]:
        return download_flow(
            self._settings,
            url,
            Path(dest),
            max_bytes=max_bytes,
            deadline_s=deadline_s,
            expires_at=expires_at,
            allow_loopback_http=self._allow_loopback_http,
        )


class AsyncAPIMartClient(_ClientBase[httpx.AsyncBaseTransport]):
    """Async client of the APIMart video API (configuration: see `_ClientBase`)."""

    def _connect(self, transport: httpx.AsyncBaseTransport | None) -> None:
        self._http = httpx.AsyncClient(transport=transport, follow_redirects=False)
        self._backend = AsyncBackend(self._http)

    async def _run(self, flow: Flow[T]) -> T:
        return await drive(self._backend, flow)

    async def submit(self, request: VideoRequest, *, idempotency_key: str) -> SubmitResult:
        """Ask for one video. Retries only what never reached the server, and 429s.

        Raises SubmitOutcomeUnknown when a task may have been created without our learning
        its id: never resend blindly; look for the task, or resend with the same key.
        """
        return await self._run(self._submit(request, idempotency_key))

    async def get_task(self, task_id: str, *, language: str | None = None) -> Task:
        """The task's current state; transient failures are retried, 4xx raised at once."""
        return await self._run(self._get_task(task_id, language))

    async def download(
        self,
        url: str,
        dest: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        deadline_s: float = DEFAULT_DEADLINE_S,
        expires_at: float | None = None,
    ) -> DownloadResult:
        """Fetch a video to `dest` atomically, resuming interrupted transfers."""
        return await self._run(self._download(url, dest, max_bytes, deadline_s, expires_at))

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


class APIMartClient(_ClientBase[httpx.BaseTransport]):
    """The same client, blocking; same configuration, same behaviour (see AsyncAPIMartClient)."""

    def _connect(self, transport: httpx.BaseTransport | None) -> None:
        self._http = httpx.Client(transport=transport, follow_redirects=False)
        self._backend = SyncBackend(self._http)

    def _run(self, flow: Flow[T]) -> T:
        return run_sync(drive(self._backend, flow))

    def submit(self, request: VideoRequest, *, idempotency_key: str) -> SubmitResult:
        return self._run(self._submit(request, idempotency_key))

    def get_task(self, task_id: str, *, language: str | None = None) -> Task:
        return self._run(self._get_task(task_id, language))

    def download(
        self,
        url: str,
        dest: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        deadline_s: float = DEFAULT_DEADLINE_S,
        expires_at: float | None = None,
    ) -> DownloadResult:
        return self._run(self._download(url, dest, max_bytes, deadline_s, expires_at))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
