"""Submit and query, as I/O-free flows (see `apimart._io`): request building, retry decisions
and response parsing live here once, for both the sync and the async client.

The two calls retry differently because they cost differently. Querying is free, so it retries
every transient failure. Submitting is paid, so it retries only what certainly created nothing
(the connection could not be opened, a 408) and 429; every other doubtful outcome becomes
`SubmitOutcomeUnknown`, for the caller to settle without paying twice. A request the HTTP
layer refuses to send (`httpx.LocalProtocolError`) never left whole: `UnsendableRequest`,
never `unknown`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import count
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from apimart import errors, redact, spec
from apimart._io import Flow, Send, Sleep
from apimart.models import SubmitResult, Task, VideoRequest
from apimart.retry import RetryAfterTooLong, RetryPolicy

log = logging.getLogger("apimart")

T = TypeVar("T")

# Failures raised before a single byte of the request left: safe to repeat even a paid POST.
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

# h11 refuses to write a request it finds illegal, so no whole request left; its message quotes
# the offending header, which is the Authorization header when the key holds a line break.
UNSENDABLE = (
    "the HTTP layer refused to send the request as built: a header (the API key or the user "
    "agent) holds a character that cannot be sent in an HTTP header; nothing was sent"
)

_IDEMPOTENCY_KEY = re.compile(rf"[\x21-\x7e]{{1,{spec.IDEMPOTENCY_KEY_MAX}}}")


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks of locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a flow needs to know about the client that runs it."""

    base_url: str
    api_key: Secret
    timeout: httpx.Timeout
    download_timeout: httpx.Timeout
    retry: RetryPolicy
    user_agent: str

    def api_request(
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
            "Authorization": f"Bearer {self.api_key.reveal()}",
            "Accept": "application/json",
            "User-Agent": self.user_agent,
            **(headers or {}),
        }
        return httpx.Request(
            method,
            self.base_url + path,
            json=json,
            params=params,
            headers=all_headers,
            extensions={"timeout": self.timeout.as_dict()},
        )


def check_idempotency_key(key: object) -> str:
    if not isinstance(key, str) or not _IDEMPOTENCY_KEY.fullmatch(key):
        raise errors.RequestValidationError(
            {
                "idempotency_key": (
                    f"must be 1 to {spec.IDEMPOTENCY_KEY_MAX} visible ASCII characters (no spaces)"
                )
            }
        )
    return key


def status_error(response: httpx.Response) -> errors.APIStatusError:
    """The error `raise_for_response` maps this (error) response to, as a value."""
    try:
        errors.raise_for_response(response)
    except errors.APIStatusError as exc:
        return exc
    raise AssertionError(f"HTTP {response.status_code} is not an error")


def pause(
    policy: RetryPolicy,
    attempt: int,
    give_up: errors.APIMartError,
    cause: BaseException | None = None,
) -> Sleep:
    """The wait before the next try, or `give_up` raised when no try is left.

    A 429's Retry-After replaces the computed backoff (see `RetryPolicy.backoff`).
    """
    retry_after = give_up.retry_after if isinstance(give_up, errors.RateLimitError) else None
    if not policy.can_retry(attempt):
        raise give_up from cause
    try:
        seconds = policy.sleep_for(attempt, retry_after)
    except RetryAfterTooLong:
        raise give_up from cause
    log.info("try %d failed (%s); retrying in %.2fs", attempt, give_up, seconds)
    return Sleep(seconds)


def parse_success(response: httpx.Response, parse: Callable[[object], T]) -> T:
    """Parse a 2xx body; anything we cannot understand becomes ProtocolError."""
    where = f"HTTP {response.status_code} from {errors.redact_url(response.request.url)}"
    try:
        return parse(response.json())
    except errors.ProtocolError as exc:
        # The body may quote anything the request held, the key included.
        said = redact.scrub(str(exc), [errors.request_secret(response.request)])
        raise errors.ProtocolError(f"{where}: {said}") from exc
    except (ValueError, TypeError, OverflowError, AttributeError) as exc:
        raise errors.ProtocolError(f"{where}: unreadable body ({type(exc).__name__})") from exc


def describe(exc: BaseException, key: Secret | None = None) -> str:
    """The exception as text for a message, with every form of `key` scrubbed from it."""
    text = redact.scrub(str(exc), [key.reveal()] if key else [])
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def unsendable(method: str, where: str) -> errors.UnsendableRequest:
    return errors.UnsendableRequest({f"{method} {where}": UNSENDABLE})


def submit_flow(
    settings: Settings, request: VideoRequest, idempotency_key: str
) -> Flow[SubmitResult]:
    key = check_idempotency_key(idempotency_key)
    payload = request.to_payload()
    where = errors.redact_url(settings.base_url + spec.SUBMIT_PATH)

    def unknown(cause: str) -> errors.SubmitOutcomeUnknown:
        return errors.SubmitOutcomeUnknown(
            f"POST {where}: the task may or may not exist", idempotency_key=key, cause=cause
        )

    for attempt in count(1):
        log.debug("submit try %d (idempotency key %s)", attempt, key)
        http_request = settings.api_request(
            "POST", spec.SUBMIT_PATH, json=payload, headers={"Idempotency-Key": key}
        )
        refused = False
        try:
            response: httpx.Response = yield Send(http_request)
        except httpx.LocalProtocolError:
            refused = True
        except NEVER_SENT as exc:
            yield pause(
                settings.retry,
                attempt,
                errors.ConnectError(
                    f"POST {where}: could not connect ({describe(exc, settings.api_key)})"
                ),
                exc,
            )
            continue
        except httpx.HTTPError as exc:
            # Sent, perhaps whole: the server may have created the task and lost the answer.
            raise unknown(describe(exc, settings.api_key)) from exc
        if refused:
            # Raised outside the handler, so not even as context does h11's message (which
            # quotes the header, key and all) travel with the error.
            raise unsendable("POST", where)
        status = response.status_code
        if status in (408, 429):
            # 408: the server never read the whole request, so it created nothing.
            yield pause(settings.retry, attempt, status_error(response))
            continue
        if 200 <= status < 300:
            try:
                result = parse_success(response, SubmitResult.from_body)
            except errors.ProtocolError as exc:
                raise unknown(describe(exc, settings.api_key)) from exc
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
            describe(status_error(response), settings.api_key)
            if status >= 500
            else f"HTTP {status}"
        )
    raise AssertionError("unreachable")


def task_path(task_id: object) -> str:
    if not isinstance(task_id, str) or not task_id.strip():
        raise errors.RequestValidationError({"task_id": "must be a non-empty string"})
    # Quoted whole, so an odd id cannot walk to another path or add a query.
    return spec.TASK_PATH.format(task_id=quote(task_id, safe=""))


def task_flow(settings: Settings, task_id: str, language: str | None) -> Flow[Task]:
    path = task_path(task_id)
    if language is not None and language not in spec.LANGUAGES:
        raise errors.RequestValidationError(
            {"language": f"must be one of {', '.join(spec.LANGUAGES)}, got {language!r}"}
        )
    params = {"language": language} if language else None
    where = errors.redact_url(settings.base_url + path)
    for attempt in count(1):
        log.debug("query %s try %d", where, attempt)
        refused = False
        try:
            response: httpx.Response = yield Send(settings.api_request("GET", path, params=params))
        except httpx.LocalProtocolError:
            refused = True
        except httpx.HTTPError as exc:
            kind = errors.ConnectError if isinstance(exc, NEVER_SENT) else errors.TransportError
            said = describe(exc, settings.api_key)
            yield pause(settings.retry, attempt, kind(f"GET {where}: {said}"), exc)
            continue
        if refused:
            raise unsendable("GET", where)
        status = response.status_code
        if status in (408, 429) or status >= 500:
            yield pause(settings.retry, attempt, status_error(response))
            continue
        if 200 <= status < 300:
            return parse_success(response, Task.from_body)
        if 400 <= status < 500:
            errors.raise_for_response(response)
        raise errors.ProtocolError(f"GET {where}: unexpected HTTP {status}")
    raise AssertionError("unreachable")
