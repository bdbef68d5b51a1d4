"""POST /v1/videos/generations against the sandbox: what is retried, what is refused, and
every outcome where a task may exist without our knowing its id."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from apimart_testkit import (
    API_KEY,
    CountingTransport,
    MakeSandbox,
    ProxyTransport,
    Sandbox,
    client_for,
    instant,
    new_key,
    unique,
    wait_until_done,
)

from apimart import (
    AsyncAPIMartClient,
    AuthenticationError,
    BadRequestError,
    ConnectError,
    PaymentRequiredError,
    RateLimitError,
    RequestValidationError,
    RetryPolicy,
    SubmitOutcomeUnknown,
    VideoRequest,
    retry,
)
from apimart.errors import EndpointNotFound, PermissionDeniedError, RequestTimeoutError
from apimart.sandbox import FaultRule, Faults

ALWAYS = FaultRule(rate=1.0)
ONCE = FaultRule(rate=1.0, times=1)


def smuggle(request: VideoRequest, **fields: Any) -> VideoRequest:
    """A request with fields our validation would refuse: it shows what the server says."""
    for name, value in fields.items():
        object.__setattr__(request, name, value)
    return request


def created(sb: Sandbox, key: str) -> int:
    return int(sb.state.counters.tasks_created_by_key.get(key, 0))


@pytest.mark.parametrize("shape", ["list", "object", "mixed"])
async def test_submit_accepts_every_answer_shape(make_sandbox: MakeSandbox, shape: str) -> None:
    """Every shape of the submit answer (list, object, mixed) yields the created task's id."""
    sb = make_sandbox(submit_shape=shape)
    async with client_for(sb) as client:
        for n in range(4):
            key = new_key()
            result = await client.submit(
                VideoRequest.build(prompt=unique(), duration=4), idempotency_key=key
            )
            assert result.task_id in sb.state.tasks
            assert result.status in ("submitted", "pending")
            assert created(sb, key) == 1, n


async def test_submitted_task_completes(sandbox: Sandbox) -> None:
    """A submitted task is polled to completed, with progress 100, a video and a cost."""
    async with client_for(sandbox) as client:
        result = await client.submit(VideoRequest.build(prompt=unique()), idempotency_key=new_key())
        task = await wait_until_done(client, result.task_id)
        assert task.id == result.task_id and task.status == "completed" and task.progress == 100
        assert task.videos and task.cost is not None and task.cost > 0


@pytest.mark.parametrize(
    ("fields", "error_type"),
    [
        ({"model": "Omni-Flash"}, "invalid_request_error"),
        ({"prompt": " "}, "invalid_request_error"),
        ({"duration": 5}, "invalid_duration"),
        ({"resolution": "2k"}, "invalid_resolution"),
        (
            {"image_urls": ("https://a.example/1.png", "https://a.example/2.png")},
            "unsupported_image_count",
        ),
    ],
)
async def test_bad_request_types(sandbox: Sandbox, fields: dict[str, Any], error_type: str) -> None:
    """Each row the sandbox refuses is a 400 BadRequestError with its error_type; none created."""
    async with client_for(sandbox) as client:
        key = new_key()
        request = smuggle(VideoRequest.build(prompt=unique()), **fields)
        with pytest.raises(BadRequestError) as caught:
            await client.submit(request, idempotency_key=key)
        assert caught.value.status_code == 400
        assert caught.value.error_type == error_type
        assert created(sandbox, key) == 0


async def test_wrong_key_is_authentication_error(sandbox: Sandbox) -> None:
    """A wrong key's 401 is AuthenticationError after one POST, never retried."""
    transport = CountingTransport()
    async with client_for(sandbox, api_key="sk-wrong", transport=transport) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.submit(VideoRequest.build(prompt=unique()), idempotency_key="k1")
    assert caught.value.status_code == 401
    assert caught.value.error_type == "authentication_error"
    assert len(transport.requests) == 1


async def test_payment_required_creates_nothing(make_sandbox: MakeSandbox) -> None:
    """A 402 is PaymentRequiredError (payment_required), and it creates no task."""
    sb = make_sandbox(Faults(payment_after=1))
    async with client_for(sb) as client:
        await client.submit(VideoRequest.build(prompt=unique()), idempotency_key="first")
        with pytest.raises(PaymentRequiredError) as caught:
            await client.submit(VideoRequest.build(prompt=unique()), idempotency_key="second")
    assert caught.value.error_type == "payment_required"
    assert sb.state.counters.tasks_created == 1


async def test_429_then_success_creates_exactly_one_task(make_sandbox: MakeSandbox) -> None:
    """A 429 is retried with the same key, and the retry creates exactly one task."""
    sb = make_sandbox(Faults(submit_429=ONCE))
    transport = CountingTransport()
    async with client_for(sb, transport=transport) as client:
        result = await client.submit(VideoRequest.build(prompt=unique()), idempotency_key="row-1")
    assert transport.count("POST", "/v1/videos/generations") == 2
    assert created(sb, "row-1") == 1 and sb.state.counters.tasks_created == 1
    assert result.task_id in sb.state.tasks


async def test_429_exhausted_is_rate_limit_error_with_retry_after(
    make_sandbox: MakeSandbox,
) -> None:
    """A 429 on every try ends as RateLimitError with its Retry-After, after `attempts` POSTs."""
    sb = make_sandbox(Faults(submit_429=ALWAYS, retry_after_s=0.05))
    transport = CountingTransport()
    async with client_for(sb, transport=transport, retry=instant(3)) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.submit(VideoRequest.build(prompt=unique()), idempotency_key="row-1")
    assert caught.value.retry_after == 0.05
    assert caught.value.error_type == "rate_limit_error"
    assert len(transport.requests) == 3
    assert sb.state.counters.tasks_created == 0


async def test_retry_after_beyond_the_cap_gives_up_at_once(make_sandbox: MakeSandbox) -> None:
    """A Retry-After longer than max_retry_after ends the submit at the first 429."""
    sb = make_sandbox(Faults(submit_429=ALWAYS, retry_after_s=300))
    transport = CountingTransport()
    policy = instant(5, max_retry_after=120)
    async with client_for(sb, transport=transport, retry=policy) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.submit(VideoRequest.build(prompt=unique()), idempotency_key="row-1")
    assert caught.value.retry_after == 300.0
    assert len(transport.requests) == 1


async def test_retry_after_is_really_waited(make_sandbox: MakeSandbox) -> None:
    """With waits on, the client sleeps at least the server's Retry-After before resending."""
    sb = make_sandbox(Faults(submit_429=ONCE, retry_after_s=0.3))
    policy = RetryPolicy(jitter=0.0)
    previous = retry.waits_enabled()  # another test folder's fixture may have switched it off
    retry.set_waits(True)
    try:
        async with client_for(sb, retry=policy) as client:
            started = time.monotonic()
            await client.submit(VideoRequest.build(prompt=unique()), idempotency_key="row-1")
            elapsed = time.monotonic() - started
    finally:
        retry.set_waits(previous)
    assert 0.3 <= elapsed < 30
    assert sb.state.counters.tasks_created == 1


@pytest.mark.parametrize(
    ("faults", "read_timeout", "cause"),
    [
        # The task is created, then the connection drops halfway through the answer.
        (Faults(submit_drop_after_create=ALWAYS), 10.0, "RemoteProtocolError"),
        # The task is created, then the answer comes after our read timeout.
        (Faults(submit_late_after_create=ALWAYS, late_s=5.0), 0.3, "ReadTimeout"),
        # The task is created, then the server reports an error anyway.
        (Faults(submit_5xx=ALWAYS), 10.0, "ServerError"),
    ],
    ids=["drop", "late", "5xx"],
)
async def test_doubtful_outcomes_are_never_resent(
    make_sandbox: MakeSandbox, faults: Faults, read_timeout: float, cause: str
) -> None:
    """A drop, late answer or 5xx after creation is SubmitOutcomeUnknown, POSTed only once."""
    sb = make_sandbox(faults)
    transport = CountingTransport()
    timeout = httpx.Timeout(5.0, read=read_timeout)
    async with client_for(sb, transport=transport, timeout=timeout) as client:
        with pytest.raises(SubmitOutcomeUnknown) as caught:
            await client.submit(VideoRequest.build(prompt=unique()), idempotency_key="row-9")
    assert caught.value.idempotency_key == "row-9"
    assert caught.value.cause.startswith(cause)
    assert len(transport.requests) == 1, "a doubtful POST must never be resent"
    assert created(sb, "row-9") == 1, "the sandbox did create (and bill) the task"


async def test_unreadable_success_is_outcome_unknown() -> None:
    """A 2xx whose body is not the API's answer is SubmitOutcomeUnknown, never a task."""

    # The sandbox never sends a broken 200, so a stand-in server does.
    def server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>welcome to the proxy</html>")

    transport = httpx.MockTransport(server)
    async with client_for("http://127.0.0.1:9", transport=transport) as client:
        with pytest.raises(SubmitOutcomeUnknown) as caught:
            await client.submit(VideoRequest.build(prompt="x"), idempotency_key="row-1")
    assert caught.value.cause.startswith("ProtocolError")


async def test_connect_failure_is_retried_without_duplicates(sandbox: Sandbox) -> None:
    """Connections that never open are retried; the POST that arrives creates one task."""
    transport = CountingTransport(refuse_first=2)
    key = new_key()
    async with client_for(sandbox, transport=transport) as client:
        result = await client.submit(VideoRequest.build(prompt=unique()), idempotency_key=key)
    assert len(transport.requests) == 3
    assert created(sandbox, key) == 1 and result.task_id in sandbox.state.tasks


async def test_connect_failure_exhausted_creates_nothing(sandbox: Sandbox) -> None:
    """Connect failures on every try end as ConnectError; the server never saw a POST."""
    transport = CountingTransport(refuse_first=99)
    key = new_key()
    before = sandbox.state.counters.submit_requests
    async with client_for(sandbox, transport=transport, retry=instant(4)) as client:
        with pytest.raises(ConnectError):
            await client.submit(VideoRequest.build(prompt=unique()), idempotency_key=key)
    assert len(transport.requests) == 4
    assert created(sandbox, key) == 0
    assert sandbox.state.counters.submit_requests == before


@pytest.mark.parametrize("key", ["", "has space", "naïve", "x" * 192, "tab\there"])
async def test_bad_idempotency_key_is_refused_before_sending(sandbox: Sandbox, key: str) -> None:
    """An empty, spaced, non-ASCII or over-long idempotency key is refused before sending."""
    transport = CountingTransport()
    async with client_for(sandbox, transport=transport) as client:
        with pytest.raises(RequestValidationError, match="idempotency_key"):
            await client.submit(VideoRequest.build(prompt="x"), idempotency_key=key)
    assert transport.requests == []


async def test_longest_idempotency_key_is_sent(sandbox: Sandbox) -> None:
    """An idempotency key of the longest allowed length (191) is sent and creates one task."""
    async with client_for(sandbox) as client:
        key = new_key()[:11] + "k" * 180
        assert len(key) == 191
        await client.submit(VideoRequest.build(prompt=unique()), idempotency_key=key)
        assert created(sandbox, key) == 1


async def test_submit_wants_a_video_request(sandbox: Sandbox) -> None:
    """submit takes only a VideoRequest: a plain dict is a TypeError."""
    async with client_for(sandbox) as client:
        with pytest.raises(TypeError):
            await client.submit({"prompt": "x"}, idempotency_key="k")  # type: ignore[arg-type]


def test_missing_api_key_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no api_key and no APIMART_API_KEY the client is refused, naming the variable."""
    monkeypatch.delenv("APIMART_API_KEY", raising=False)
    with pytest.raises(AuthenticationError, match="APIMART_API_KEY"):
        AsyncAPIMartClient(base_url="http://127.0.0.1:9")


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """APIMART_BASE_URL and APIMART_API_KEY configure a client; with no URL, the vendor's."""
    monkeypatch.setenv("APIMART_API_KEY", API_KEY)
    monkeypatch.setenv("APIMART_BASE_URL", "http://localhost:8123/")
    client = AsyncAPIMartClient()
    assert client.base_url == "http://localhost:8123"
    monkeypatch.delenv("APIMART_BASE_URL")
    assert AsyncAPIMartClient().base_url == "https://api.apimart.ai"


@pytest.mark.parametrize("url", ["http://api.apimart.ai", "ftp://127.0.0.1", "not a url"])
def test_base_url_must_protect_the_key(url: str) -> None:
    """A base URL over plain http off loopback, another scheme or no URL at all is refused."""
    with pytest.raises(RequestValidationError, match="base_url"):
        AsyncAPIMartClient(base_url=url, api_key=API_KEY)


# --- a wrong route, and what a proxy in front of the API may answer -----------------------


@pytest.mark.parametrize("suffix", ["/v1", "/v1/"])
async def test_base_url_ending_in_v1_is_endpoint_not_found_and_creates_nothing(
    make_sandbox: MakeSandbox, suffix: str
) -> None:
    """A base URL ending in /v1 meets a real 404: EndpointNotFound, one POST, no task."""
    sb = make_sandbox()
    transport = CountingTransport()
    async with client_for(sb.url + suffix, transport=transport) as client:
        with pytest.raises(EndpointNotFound) as caught:
            await client.submit(VideoRequest.build(prompt=unique()), idempotency_key=new_key())
    assert caught.value.status_code == 404
    assert f"{sb.url}/v1/v1/videos/generations" in str(caught.value)
    assert "/v1" in str(caught.value) and "nothing was created" in str(caught.value)
    assert not isinstance(caught.value, SubmitOutcomeUnknown)
    assert len(transport.requests) == 1
    assert sb.state.counters.snapshot()["tasks_created"] == 0


async def test_405_on_the_post_is_endpoint_not_found(make_sandbox: MakeSandbox) -> None:
    """A gateway's 405 to the POST is EndpointNotFound too, and the sandbox saw nothing."""
    sb = make_sandbox()

    def method_not_allowed(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(405, headers={"Allow": "GET"}, text="Method Not Allowed")

    async with client_for(sb, transport=ProxyTransport(method_not_allowed)) as client:
        with pytest.raises(EndpointNotFound) as caught:
            await client.submit(VideoRequest.build(prompt=unique()), idempotency_key=new_key())
    assert caught.value.status_code == 405
    assert sb.state.counters.snapshot()["tasks_created"] == 0


def forbidden_by_waf(request: httpx.Request, n: int) -> httpx.Response:
    return httpx.Response(
        403, text="<html><h1>403 Forbidden</h1>Request blocked by policy</html>", request=request
    )


async def test_a_proxys_403_is_permission_denied_not_a_rejected_row(
    make_sandbox: MakeSandbox,
) -> None:
    """A proxy's 403 is PermissionDeniedError (stop the run), never BadRequestError, not retried."""
    sb = make_sandbox()
    proxy = ProxyTransport(forbidden_by_waf)
    async with client_for(sb, transport=proxy) as client:
        with pytest.raises(PermissionDeniedError) as caught:
            await client.submit(VideoRequest.build(prompt=unique()), idempotency_key=new_key())
    error = caught.value
    assert isinstance(error, AuthenticationError) and not isinstance(error, BadRequestError)
    assert error.status_code == 403
    assert "not for the request's content" in str(error) and "nothing created" in str(error)
    assert len(proxy.requests) == 1, "a 403 is not retried"
    assert proxy.forwarded == 0 and sb.state.counters.snapshot()["submit_requests"] == 0


async def test_408_then_success_creates_exactly_one_task(make_sandbox: MakeSandbox) -> None:
    """A proxy's 408 created nothing, so the POST is retried and the retry creates one task."""
    sb = make_sandbox()

    def timed_out_first(request: httpx.Request, n: int) -> httpx.Response | None:
        return httpx.Response(408, text="Request Timeout", request=request) if n <= 2 else None

    proxy = ProxyTransport(timed_out_first)
    key = new_key()
    async with client_for(sb, transport=proxy) as client:
        result = await client.submit(VideoRequest.build(prompt=unique()), idempotency_key=key)
    assert len(proxy.requests) == 3 and proxy.forwarded == 1
    assert {r.headers["Idempotency-Key"] for r in proxy.requests} == {key}
    assert created(sb, key) == 1 and result.task_id in sb.state.tasks


async def test_408_exhausted_is_a_connect_failure_not_unknown(make_sandbox: MakeSandbox) -> None:
    """A 408 on every try ends as RequestTimeoutError (a ConnectError), never unknown."""
    sb = make_sandbox()

    def always_timed_out(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(408, text="Request Timeout", request=request)

    proxy = ProxyTransport(always_timed_out)
    async with client_for(sb, transport=proxy, retry=instant(4)) as client:
        with pytest.raises(ConnectError) as caught:
            await client.submit(VideoRequest.build(prompt=unique()), idempotency_key=new_key())
    assert isinstance(caught.value, RequestTimeoutError) and caught.value.status_code == 408
    assert "nothing created" in str(caught.value)
    assert len(proxy.requests) == 4
    assert sb.state.counters.snapshot()["submit_requests"] == 0
