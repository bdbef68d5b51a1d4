"""The published schema shows exactly the emulated routes; no log record leaks a secret."""

from __future__ import annotations

import logging

import httpx
import pytest
from sandbox_testkit import Api

from apimart.redact import secret_forms
from apimart.sandbox import FaultRule, SandboxConfig, create_app

LOG_CANARY = "sk-LOG-CANARY-0123456789"


def test_openapi_lists_exactly_the_three_routes(api: Api) -> None:
    """The OpenAPI document lists exactly the three API routes, with the submit body's rules."""
    document = api.http.get("/openapi.json").json()
    assert set(document["paths"]) == {
        "/v1/videos/generations",
        "/v1/tasks/{task_id}",
        "/cdn/videos/{token}.mp4",
    }
    assert set(document["paths"]["/v1/videos/generations"]) == {"post"}
    submit = document["paths"]["/v1/videos/generations"]["post"]
    schema = submit["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["model", "prompt"]
    assert schema["properties"]["duration"]["enum"] == [4, 6, 8, 10]


def test_create_app_without_a_server() -> None:
    """The app is built without a server and has its test-only stats and reset routes."""
    app = create_app(SandboxConfig())
    assert {getattr(r, "path", "") for r in app.routes} >= {"/_sandbox/stats", "/_sandbox/reset"}


def test_no_log_record_carries_the_key_or_a_signature(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG no sandbox, uvicorn or httpcore record holds the key or a signature."""
    api.sb.config.api_key = LOG_CANARY
    api.http.headers["Authorization"] = f"Bearer {LOG_CANARY}"
    caplog.set_level(logging.DEBUG)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore", "apimart"):
        caplog.set_level(logging.DEBUG, logger=name)
    api.sb.config.faults.download_truncate = FaultRule(rate=1, times=1)
    api.sb.config.faults.submit_drop_after_create = FaultRule(rate=1, times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        api.submit(key="row-log")
    api.sb.config.faults.submit_drop_after_create = FaultRule()
    url, _ = api.completed_url()
    with pytest.raises(httpx.RemoteProtocolError):
        api.download(url)
    assert api.download(url).status_code == 200
    signature = url.split("sig=")[1]
    records = [r for r in caplog.records if r.name.split(".")[0] != "httpx"]
    assert records, "expected the sandbox and httpcore to log something"
    for record in records:
        text = record.getMessage() + str(record.args)
        for form in secret_forms(LOG_CANARY):
            assert form not in text, (form, record.name)
        assert "sig=" not in text and signature not in text, record.name
    # The deliberate drops are not reported as server errors.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # httpx itself logs request URLs at INFO (signature included, unless a redacting filter
    # installed by an earlier run in this process scrubbed it): keep that logger at WARNING.
    httpx_lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any("/cdn/" in line for line in httpx_lines)
