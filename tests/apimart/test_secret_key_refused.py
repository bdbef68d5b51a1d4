"""A key that cannot travel in a header is refused before any request, and a request the HTTP
layer refuses to send is a definite never-sent error whose text holds no header value."""

from __future__ import annotations

import traceback

import httpx
import pytest
from apimart_testkit import API_KEY, MakeSandbox, Sandbox, client_for, new_key, unique

from apimart import AsyncAPIMartClient, AuthenticationError, VideoRequest
from apimart.client import check_api_key
from apimart.errors import RequestValidationError, SubmitOutcomeUnknown, UnsendableRequest
from apimart.redact import secret_forms

# The case (a key wrapped across two lines of a secrets file) and its relatives.
BAD_KEYS = {
    "line-break": "sk-a\nsk-SECRET",
    "carriage-return": "sk-a\r\nsk-SECRET",
    "space": "sk-a sk-SECRET",
    "tab": "sk-a\tsk-SECRET",
    "non-ascii": "sk-aé-SECRET",
    "nul": "sk-a\x00sk-SECRET",
}
PARTS = ("sk-a", "SECRET", "sk-SECRET")


def full_text(exc: BaseException) -> str:
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


def assert_holds_no_part_of(text: str, key: str) -> None:
    for form in [*secret_forms(key), *PARTS]:
        assert form not in text, f"{form!r} of the key is in {text!r}"


@pytest.mark.parametrize("key", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
def test_unsendable_key_is_refused_at_construction_and_sends_nothing(
    make_sandbox: MakeSandbox, key: str
) -> None:
    """A header-unsafe key is refused at construction, naming the rule, not the key; none sent."""
    sb = make_sandbox()
    with pytest.raises(AuthenticationError) as caught:
        AsyncAPIMartClient(base_url=sb.url, api_key=key)
    error = caught.value
    assert error.status_code == 401 and error.error_type == "invalid_api_key"
    assert "cannot be sent in an HTTP header" in str(error) and "APIMART_API_KEY" in str(error)
    assert_holds_no_part_of(full_text(error), key)
    snapshot = sb.state.counters.snapshot()
    assert snapshot["submit_requests"] == 0 and snapshot["tasks_created"] == 0
    assert snapshot["queries_by_task"] == {}


def test_unsendable_key_from_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox
) -> None:
    """APIMART_API_KEY=$'sk-a\\nsk-SECRET' is refused at construction, naming the variable."""
    monkeypatch.setenv("APIMART_API_KEY", BAD_KEYS["line-break"])
    with pytest.raises(AuthenticationError, match="line break") as caught:
        AsyncAPIMartClient(base_url=sandbox.url)
    assert "APIMART_API_KEY" in str(caught.value)
    assert_holds_no_part_of(full_text(caught.value), BAD_KEYS["line-break"])


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("sk-a\nsk-SECRET", "a line break"),
        ("sk-a sk-SECRET", "a space"),
        ("sk-aé-SECRET", "a non-ASCII character"),
        ("sk-a\x7fsk-SECRET", "a control character"),
    ],
)
def test_check_api_key_names_the_kind_of_character(key: str, kind: str) -> None:
    """`check_api_key` says what kind of character is wrong, never which one or where."""
    with pytest.raises(AuthenticationError) as caught:
        check_api_key(key)
    assert kind in str(caught.value)
    assert_holds_no_part_of(full_text(caught.value), key)


@pytest.mark.parametrize("key", ["", "   ", "\n", None])
def test_check_api_key_refuses_a_missing_key(key: str | None) -> None:
    """An empty or blank key is `missing_api_key`, not `invalid_api_key`."""
    with pytest.raises(AuthenticationError) as caught:
        check_api_key(key)
    assert caught.value.error_type == "missing_api_key"


async def test_a_key_with_surrounding_whitespace_is_stripped_and_works(sandbox: Sandbox) -> None:
    """A key with surrounding whitespace (a secrets file's newline) is stripped and works."""
    assert check_api_key(f"  {API_KEY}\n") == API_KEY
    async with client_for(sandbox, api_key=f"{API_KEY}\r\n") as client:
        result = await client.submit(VideoRequest.build(prompt=unique()), idempotency_key=new_key())
    assert result.task_id in sandbox.state.tasks


class InjectingTransport(httpx.AsyncBaseTransport):
    """A real HTTP transport that puts `header` into each request before sending it, as a
    buggy proxy layer or a key that slipped past the check would: h11 itself refuses it."""

    def __init__(self, name: str, value: str) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.name, self.value = name, value
        self.handed: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.handed.append(request)
        # httpx checks nothing here; h11 refuses the value when it writes the headers.
        request.headers[self.name] = self.value
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_request_h11_refuses_is_never_sent_not_unknown(make_sandbox: MakeSandbox) -> None:
    """A header h11 refuses to write is UnsendableRequest (not unknown), unquoted, not retried."""
    sb = make_sandbox()
    key = BAD_KEYS["line-break"]
    transport = InjectingTransport("Authorization", f"Bearer {key}")
    async with client_for(sb, transport=transport) as client:
        with pytest.raises(RequestValidationError) as caught:
            await client.submit(VideoRequest.build(prompt=unique()), idempotency_key=new_key())
        with pytest.raises(UnsendableRequest) as queried:
            await client.get_task("task_anything")
    error = caught.value
    assert isinstance(error, UnsendableRequest) and not isinstance(error, SubmitOutcomeUnknown)
    assert "nothing was sent" in str(error)
    assert error.__cause__ is None and error.__context__ is None
    assert_holds_no_part_of(full_text(error) + full_text(queried.value), key)
    assert len(transport.handed) == 2, "refused at once: retrying an illegal header cannot help"
    snapshot = sb.state.counters.snapshot()
    assert snapshot["submit_requests"] == 0 and snapshot["queries_by_task"] == {}


async def test_an_illegal_user_agent_is_never_sent_not_unknown(make_sandbox: MakeSandbox) -> None:
    """A user agent with a line break is UnsendableRequest, quotes no header, sends nothing."""
    sb = make_sandbox()
    async with client_for(sb, user_agent="videobatch/1\r\nX-Injected: yes") as client:
        with pytest.raises(UnsendableRequest) as caught:
            await client.submit(VideoRequest.build(prompt=unique()), idempotency_key=new_key())
    assert "X-Injected" not in full_text(caught.value)
    assert sb.state.counters.snapshot()["submit_requests"] == 0
