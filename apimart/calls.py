"""The pieces every API call is made of: argument checks, the error an answer means, how
long to wait before the next try, and reading a success body. `apimart.client` puts them
together; nothing here does I/O.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import quote

import httpx

from apimart import errors, redact, spec
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


def retry_wait(
    policy: RetryPolicy,
    attempt: int,
    give_up: errors.APIMartError,
    cause: BaseException | None = None,
) -> float:
    """The seconds to wait before the next try, or `give_up` raised when no try is left.

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
    return seconds


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


def task_path(task_id: object) -> str:
    if not isinstance(task_id, str) or not task_id.strip():
        raise errors.RequestValidationError({"task_id": "must be a non-empty string"})
    # Quoted whole, so an odd id cannot walk to another path or add a query.
    return spec.TASK_PATH.format(task_id=quote(task_id, safe=""))
