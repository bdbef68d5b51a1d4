"""Every error the APIMart client raises, in one tree.

    APIMartError
    ├── RequestValidationError        a request broke a documented rule; nothing was sent
    │   └── UnsendableRequest         the HTTP layer refused to send the request as built (a
    │                                 header holds an illegal character): no whole request
    │                                 left this machine, and every request would fail alike,
    │                                 so stop the run; never `unknown`
    ├── TransportError                the network failed (connect, read, write, timeout)
    │   └── ConnectError              the request certainly never reached the server whole
    │       └── RequestTimeoutError   408 (also an APIStatusError): the server gave up reading
    │                                 the request, so it created nothing; retried like a
    │                                 connect failure, and like one when the tries run out
    ├── ProtocolError                 a 2xx answer whose body we cannot understand
    ├── APIStatusError                the API answered with an error status
    │   ├── BadRequestError           400 (and other 4xx not named here): fix the row,
    │   │                             never retry it as is (.error_type)
    │   ├── AuthenticationError       401: stop the whole run
    │   │   └── PermissionDeniedError 403: the key, or this network (a proxy, a WAF), may not
    │   │                             use the API; it says nothing of the row, and nothing
    │   │                             was created, so stop the run as for 401, row never-sent
    │   ├── PaymentRequiredError      402: stop submitting, keep polling what is in flight
    │   ├── NotFoundError             404: unknown task id
    │   │   └── EndpointNotFound      404/405 on the POST: no such route (a wrong base URL);
    │   │                             nothing was created, so stop before sending more
    │   ├── RateLimitError            429: slow down (.retry_after, seconds or None)
    │   └── ServerError               5xx
    ├── SubmitOutcomeUnknown          a paid POST may or may not have created a task
    │                                 (.idempotency_key, .cause): never resend blindly
    └── DownloadError                 a video could not be fetched or is not a video
        ├── LinkExpiredError          the CDN answered 403/404/410: ask for a fresh link (one
        │                             past expires_at by our clock is still tried once)
        ├── DownloadIntegrityError    wrong content type, markup, short body, too large
        ├── DownloadUnavailable       the CDN or network kept failing through every try
        │                             (in apimart.download)
        └── UnsafeDownloadURL         the link or a redirect leads to a non-public host
                                      (in apimart.download; also a netguard.UnsafeURL)

Only `raise_for_response` turns an HTTP response into an `APIStatusError`, so every caller
sees the same mapping. Messages never carry the API key (in any form: `apimart.redact`) or a
signed URL's query string: use `redact_url` for any URL that goes into a message.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from apimart import redact


class APIMartError(Exception):
    """Base of every error raised by this package."""


class RequestValidationError(APIMartError, ValueError):
    """A request broke documented rules. `problems` maps each field to what is wrong."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = dict(problems)
        detail = "; ".join(f"{field}: {why}" for field, why in self.problems.items())
        super().__init__(f"invalid request: {detail}")


class UnsendableRequest(RequestValidationError):
    """The HTTP layer (h11) refused to send the request as built: an illegal header value.

    h11 refuses before it writes anything it considers illegal, so the server never received
    a whole request and nothing was created. The headers are the client's own (key, user
    agent), so every other request would be refused alike: stop, fix the configuration.
    """


class TransportError(APIMartError):
    """The request failed on the network; the server's view of it is unknown."""


class ConnectError(TransportError):
    """The connection could not be opened: the server never saw the request."""


class ProtocolError(APIMartError):
    """The API answered success with a body we cannot understand."""


class APIStatusError(APIMartError):
    """The API answered with an error status."""

    def __init__(self, message: str, *, status_code: int, error_type: str | None = None) -> None:
        self.status_code = status_code
        self.error_type = error_type
        super().__init__(message)


class BadRequestError(APIStatusError):
    """400: the request is wrong (`error_type` says how); resending it as is cannot help."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or wrong."""


class PermissionDeniedError(AuthenticationError):
    """403: the key, or the network the request came through, may not use the API.

    Proxies and WAFs answer 403 too, whatever the row holds, so it is no verdict on the row
    (unlike 400) and nothing was created: stop the run as for 401, the row stays never-sent.
    """


class PaymentRequiredError(APIStatusError):
    """402: the account balance is exhausted."""


class NotFoundError(APIStatusError):
    """404: no such task."""


class EndpointNotFound(NotFoundError):
    """404 or 405 to the submit POST: the URL names no such route, so nothing was created.

    Almost always a wrong base URL (one that ends in `/v1`, say): every other row would get
    the same answer, so the run stops sending at the first one.
    """


class RateLimitError(APIStatusError):
    """429: throttled. `retry_after` is the server's hint in seconds, when it gave one."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 429,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, error_type=error_type)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: the server failed."""


class RequestTimeoutError(ConnectError, APIStatusError):
    """408: the server (or a proxy) gave up before it had read the whole request.

    A request it never finished reading cannot have created a task, so even a paid POST is
    retried, within the retry policy, and one that never gets through is a connect failure.
    """


class SubmitOutcomeUnknown(APIMartError):
    """A paid POST may have created a task, but the answer did not tell us.

    Resending could pay twice; the caller decides, with `idempotency_key` to reuse.
    """

    def __init__(self, message: str, *, idempotency_key: str, cause: str) -> None:
        self.idempotency_key = idempotency_key
        self.cause = cause
        super().__init__(f"{message} (idempotency key {idempotency_key})")


class DownloadError(APIMartError):
    """A video could not be downloaded."""


class LinkExpiredError(DownloadError):
    """The CDN refused the signed link (403/404/410): query the task again for a fresh one."""


class DownloadIntegrityError(DownloadError):
    """The body is not the video we expected: wrong type, short, or over the size limit."""


def redact_url(url: str | httpx.URL) -> str:
    """The URL without its query and fragment: signed links carry their credential there."""
    parts = urlsplit(str(url))
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _error_fields(response: httpx.Response) -> tuple[str | None, str]:
    """(error type, message) from an error body, tolerant of the shapes seen in the wild."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return None, response.reason_phrase or "error"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error_type = error.get("type") or error.get("code")
        message = error.get("message") or response.reason_phrase
        return (str(error_type) if error_type else None), str(message)
    if isinstance(error, str):
        message = body.get("message") if isinstance(body, dict) else None
        return error, str(message or error)
    if isinstance(body, dict) and body.get("message"):
        return None, str(body["message"])
    return None, response.reason_phrase or "error"


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: PaymentRequiredError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: RequestTimeoutError,
}

_STATUS_NOTES = {
    403: " (refused for this key or network, not for the request's content; nothing created)",
    408: " (the server did not finish reading the request; nothing created)",
}


def request_secret(request: httpx.Request) -> str:
    """The bearer token a request carries ("" if none), for scrubbing what echoes it."""
    return request.headers.get("Authorization", "").partition(" ")[2].strip()


def raise_for_response(response: httpx.Response) -> None:
    """Raise the error of this tree that an API response means; return if it is a success."""
    status = response.status_code
    if 200 <= status < 300:
        return
    error_type, message = _error_fields(response)
    note = _STATUS_NOTES.get(status, "")
    # A gateway that echoes the request back would put our key, in some form, into the message.
    text = redact.scrub(
        f"HTTP {status} from {redact_url(response.request.url)}: {message}{note}",
        [request_secret(response.request)],
    )
    if status == 429:
        raise RateLimitError(
            text,
            error_type=error_type,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status >= 500:
        raise ServerError(text, status_code=status, error_type=error_type)
    cls = _STATUS_ERRORS.get(status, BadRequestError if status < 500 else ServerError)
    raise cls(text, status_code=status, error_type=error_type)
