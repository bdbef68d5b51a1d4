"""The error tree's mapping of HTTP answers, and the helpers that keep secrets out of it."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from apimart import errors
from apimart.download import DownloadUnavailable, UnsafeDownloadURL

URL = "https://api.apimart.ai/v1/videos/generations"


def answer(
    status: int, body: object = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    request = httpx.Request("POST", URL)
    if body is None:
        return httpx.Response(status, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


def api_error(status: int, kind: str, message: str = "nope") -> dict[str, object]:
    return {"code": status, "error": {"type": kind, "message": message}}


@pytest.mark.parametrize(
    ("status", "kind", "cls"),
    [
        (400, "invalid_request_error", errors.BadRequestError),
        (400, "invalid_duration", errors.BadRequestError),
        (400, "invalid_resolution", errors.BadRequestError),
        (400, "unsupported_image_count", errors.BadRequestError),
        (401, "authentication_error", errors.AuthenticationError),
        (402, "payment_required", errors.PaymentRequiredError),
        (403, "forbidden", errors.PermissionDeniedError),
        (404, "not_found", errors.NotFoundError),
        (408, "request_timeout", errors.RequestTimeoutError),
        (418, "teapot", errors.BadRequestError),
        (500, "server_error", errors.ServerError),
        (503, "overloaded", errors.ServerError),
    ],
)
def test_status_maps_to_one_error(status: int, kind: str, cls: type[errors.APIStatusError]) -> None:
    """Each status maps to exactly one error class, keeping status, error type and message."""
    with pytest.raises(cls) as caught:
        errors.raise_for_response(answer(status, api_error(status, kind, "why it failed")))
    assert type(caught.value) is cls
    assert caught.value.status_code == status
    assert caught.value.error_type == kind
    assert "why it failed" in str(caught.value)


def test_success_raises_nothing() -> None:
    """A 2xx answer raises nothing."""
    errors.raise_for_response(answer(200, {"code": 200, "data": []}))


def test_rate_limit_carries_retry_after() -> None:
    """A 429 is RateLimitError carrying the Retry-After seconds and the error type."""
    with pytest.raises(errors.RateLimitError) as caught:
        errors.raise_for_response(
            answer(429, api_error(429, "rate_limit_error"), {"Retry-After": "7"})
        )
    assert caught.value.retry_after == 7.0
    assert caught.value.error_type == "rate_limit_error"


def test_error_body_that_is_not_json_still_maps() -> None:
    """An HTML error body still maps by status (502 to ServerError), with no error type."""
    response = httpx.Response(
        502, text="<html>bad gateway</html>", request=httpx.Request("GET", URL)
    )
    with pytest.raises(errors.ServerError) as caught:
        errors.raise_for_response(response)
    assert caught.value.error_type is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("3", 3.0), (" 2.5 ", 2.5), ("-4", 0.0), ("soon", None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    """Retry-After seconds parse as floats, negatives as 0, junk or absence as None."""
    assert errors.parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    """A Retry-After HTTP date means the seconds until it, and 0 once it is past."""
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert errors.parse_retry_after(header, now=now) == pytest.approx(30.0)
    assert errors.parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_redact_url_drops_the_signature() -> None:
    """redact_url drops a signed link's query and fragment and leaves a plain URL alone."""
    signed = "https://cdn.example/videos/a.mp4?expires=1&sig=SECRETSIG#frag"
    shown = errors.redact_url(signed)
    assert "SECRETSIG" not in shown and "frag" not in shown
    assert shown.startswith("https://cdn.example/videos/a.mp4")
    assert errors.redact_url("https://cdn.example/a.mp4") == "https://cdn.example/a.mp4"


def test_messages_of_status_errors_redact_the_url() -> None:
    """A status error's message shows the URL without its signed query."""
    request = httpx.Request("GET", "https://cdn.example/a.mp4?sig=SECRETSIG")
    with pytest.raises(errors.APIStatusError) as caught:
        errors.raise_for_response(httpx.Response(400, request=request))
    assert "SECRETSIG" not in str(caught.value)


def test_submit_outcome_unknown_names_its_key() -> None:
    """SubmitOutcomeUnknown carries its idempotency key and cause, and names the key."""
    error = errors.SubmitOutcomeUnknown("lost", idempotency_key="row-7", cause="ReadTimeout")
    assert error.idempotency_key == "row-7" and error.cause == "ReadTimeout"
    assert "row-7" in str(error)


def test_tree() -> None:
    """The classes nest as the errors docstring draws them: 403 under 401, 408 under connect."""
    assert issubclass(errors.ConnectError, errors.TransportError)
    assert issubclass(errors.PermissionDeniedError, errors.AuthenticationError)
    assert not issubclass(errors.PermissionDeniedError, errors.BadRequestError)
    assert issubclass(errors.RequestTimeoutError, errors.ConnectError)
    assert issubclass(errors.RequestTimeoutError, errors.APIStatusError)
    assert issubclass(errors.UnsendableRequest, errors.RequestValidationError)
    assert issubclass(errors.EndpointNotFound, errors.NotFoundError)
    for cls in (errors.PermissionDeniedError, errors.RequestTimeoutError):
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} is not in the tree"
    for cls in (
        errors.LinkExpiredError,
        errors.DownloadIntegrityError,
        DownloadUnavailable,
        UnsafeDownloadURL,
    ):
        assert issubclass(cls, errors.DownloadError)
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} is not in the tree"
    assert issubclass(errors.RequestValidationError, ValueError)
    for cls in (errors.SubmitOutcomeUnknown, errors.ProtocolError, errors.APIStatusError):
        assert issubclass(cls, errors.APIMartError)


def test_an_echoed_api_key_is_scrubbed_from_the_message() -> None:
    """A key the API echoes back in a 401 body is redacted from the error message."""
    import httpx

    from apimart.errors import AuthenticationError, raise_for_response

    key = "sk-echoed-canary-1234567890"
    request = httpx.Request(
        "POST",
        "https://api.example/v1/videos/generations",
        headers={"Authorization": f"Bearer {key}"},
    )
    response = httpx.Response(
        401,
        json={"error": {"type": "authentication_error", "message": f"bad key {key}"}},
        request=request,
    )
    try:
        raise_for_response(response)
    except AuthenticationError as exc:
        assert key not in str(exc) and "<redacted>" in str(exc)
    else:
        raise AssertionError("a 401 must raise")
