"""Every form a key can take in text is scrubbed: by `scrub`, and from real log records at
DEBUG (message, arguments and traceback) once `install_redaction` is in place."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import httpx
import pytest
from apimart_testkit import API_KEY, Sandbox
from hypothesis import given, settings
from hypothesis import strategies as st

from apimart import errors
from apimart.redact import REDACTED, RedactingFilter, install_redaction, scrub, secret_forms

ISSUE_KEY = "sk-a\nsk-SECRET"


def encodings(key: str) -> dict[str, str]:
    """The key as programs write it, computed here independently of `secret_forms`."""
    return {
        "raw": key,
        "repr": repr(key)[1:-1],
        "bytes repr": repr(key.encode())[2:-1],
        "json": json.dumps(key)[1:-1],
        "json utf-8": json.dumps(key, ensure_ascii=False)[1:-1],
        "json of repr": json.dumps(repr(key)[1:-1])[1:-1],
        "quote": quote(key, safe=""),
        "quote path": quote(key),
        "quote_plus": quote_plus(key),
        "base64": base64.b64encode(key.encode()).decode(),
        "base64 urlsafe": base64.urlsafe_b64encode(key.encode()).decode(),
        "base64 of Bearer": base64.b64encode(f"Bearer {key}".encode()).decode(),
    }


def base64_middle(prefix: bytes, key: str, suffix: bytes) -> tuple[str, str]:
    """(base64 of prefix+key+suffix, the part of it that encodes key bytes alone)."""
    key_bytes = key.encode()
    text = base64.b64encode(prefix + key_bytes + suffix).decode()
    start = -(-len(prefix) // 3) * 4  # the first group that starts inside the key
    end = (len(prefix) + len(key_bytes)) // 3 * 4  # the last group that ends inside it
    return text, text[start:end]


keys = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=8, max_size=60)
around = st.text(max_size=20)


@settings(max_examples=300, deadline=None)
@given(key=keys, before=around, after=around)
def test_scrub_removes_every_encoding_of_any_key(key: str, before: str, after: str) -> None:
    """No encoding of any key survives `scrub`, whatever it holds and whatever surrounds it."""
    for name, form in encodings(key).items():
        text = scrub(f"{before}{form}{after}", [key])
        assert form not in text, name


@settings(max_examples=200, deadline=None)
@given(key=keys, prefix=st.binary(max_size=12), suffix=st.binary(max_size=5))
def test_scrub_removes_a_key_base64_encoded_at_any_offset(
    key: str, prefix: bytes, suffix: bytes
) -> None:
    """A key base64-encoded inside a longer text is scrubbed at whatever offset it starts."""
    text, middle = base64_middle(prefix, key, suffix)
    if len(middle) >= 8:
        assert middle not in scrub(text, [key])


def test_the_issue_key_is_scrubbed_in_every_form() -> None:
    """The issue's key, as h11 quotes it and in each line of it, leaves no trace."""
    h11 = f"Illegal header value b'Bearer {ISSUE_KEY}'".replace("\n", "\\n")
    clean = scrub(h11, [ISSUE_KEY])
    assert clean == f"Illegal header value b'Bearer {REDACTED}'"
    for line in ISSUE_KEY.splitlines():
        assert line not in scrub(f"first line alone: {line}.", [ISSUE_KEY])
    for name, form in encodings(ISSUE_KEY).items():
        assert "SECRET" not in scrub(form, [ISSUE_KEY]), name


def test_forms_are_longest_first_and_an_empty_secret_has_none() -> None:
    """Longer forms are scrubbed before the parts they contain; nothing scrubs the empty key."""
    forms = secret_forms(ISSUE_KEY)
    assert [len(f) for f in forms] == sorted((len(f) for f in forms), reverse=True)
    assert secret_forms("") == [] and scrub("some text", ["", None]) == "some text"


@pytest.fixture
def debug_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """The `apimart` logger at DEBUG writing through a real handler; levels restored after."""
    logger = logging.getLogger("apimart")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    saved = {name: logging.getLogger(name).level for name in ("apimart", "httpx", "httpcore")}
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def test_every_form_is_scrubbed_from_debug_records(
    debug_log: tuple[logging.Logger, io.StringIO],
) -> None:
    """Every form of the key, and a link's signature, logged at DEBUG reach the handler redacted."""
    logger, stream = debug_log
    install_redaction(API_KEY, ISSUE_KEY)
    for key in (API_KEY, ISSUE_KEY):
        for name, form in encodings(key).items():
            logger.debug("%s: %s", name, form)
            logger.debug(f"inline {name}: {form}")
    logger.debug("link %s", "https://cdn.example/v.mp4?sig=SIGNATURE-123&exp=1")
    written = stream.getvalue()
    assert written.count("DEBUG apimart") == 2 * 2 * len(encodings(API_KEY)) + 1
    for key in (API_KEY, ISSUE_KEY):
        for name, form in encodings(key).items():
            assert form not in written, name
    assert "SECRET" not in written and "SIGNATURE-123" not in written
    assert REDACTED in written


def test_a_logged_traceback_of_h11s_refusal_is_scrubbed(
    debug_log: tuple[logging.Logger, io.StringIO], sandbox: Sandbox
) -> None:
    """h11's refusal of the issue's key, logged with its traceback at DEBUG, shows no form of it."""
    logger, stream = debug_log
    install_redaction(ISSUE_KEY)
    with httpx.Client(base_url=sandbox.url) as raw:
        try:
            raw.get("/v1/tasks/task_x", headers={"Authorization": f"Bearer {ISSUE_KEY}"})
        except httpx.LocalProtocolError:
            logger.debug("request refused", exc_info=True)
    written = stream.getvalue()
    assert "LocalProtocolError" in written and "Illegal header value" in written
    assert "SECRET" not in written and "sk-a" not in written


def test_installing_again_replaces_the_filter(
    debug_log: tuple[logging.Logger, io.StringIO],
) -> None:
    """A second install (a second run in one process) leaves one filter, for the new key."""
    logger, stream = debug_log
    install_redaction("sk-first-key-000")
    install_redaction("sk-second-key-111")
    handler = logger.handlers[-1]
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    logger.debug("keys sk-first-key-000 sk-second-key-111")
    assert "sk-second-key-111" not in stream.getvalue()
    assert logging.getLogger("httpx").level == logging.WARNING


def test_a_status_error_scrubs_every_echoed_form_of_the_key() -> None:
    """A gateway's error body echoing the key, percent-encoded or base64, is scrubbed away."""
    request = httpx.Request(
        "POST",
        "https://api.example/v1/videos/generations",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    echoed = " ".join(encodings(API_KEY).values())
    response = httpx.Response(
        403, json={"error": {"type": "forbidden", "message": echoed}}, request=request
    )
    with pytest.raises(errors.PermissionDeniedError) as caught:
        errors.raise_for_response(response)
    for name, form in encodings(API_KEY).items():
        assert form not in str(caught.value), name
