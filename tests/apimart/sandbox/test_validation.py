"""The submit route refuses what the spec refuses, with the documented error types."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sandbox_testkit import Api, body, data_uri, png_bytes

from apimart import spec
from apimart.sandbox import RunningSandbox

INVALID = spec.ERR_INVALID_REQUEST
PNG = data_uri(png_bytes())
HTTP_IMAGE = "https://example.com/cat.png"


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"model": "Omni-Flash"}, INVALID),
        ({"model": "omni-flash-ext"}, INVALID),
        ({"model": None}, INVALID),
        ({"prompt": ""}, INVALID),
        ({"prompt": "   "}, INVALID),
        ({"prompt": None}, INVALID),
        ({"prompt": 42}, INVALID),
        ({"duration": 5}, spec.ERR_INVALID_DURATION),
        ({"duration": 7}, spec.ERR_INVALID_DURATION),
        ({"duration": 12}, spec.ERR_INVALID_DURATION),
        ({"duration": "6"}, INVALID),
        ({"duration": 6.0}, INVALID),
        ({"duration": True}, INVALID),
        ({"resolution": "480p"}, spec.ERR_INVALID_RESOLUTION),
        ({"resolution": "2k"}, spec.ERR_INVALID_RESOLUTION),
        ({"resolution": 720}, INVALID),
        ({"aspect_ratio": "1:1"}, INVALID),
        ({"size": "4:3"}, INVALID),
        ({"aspect_ratio": "16:9", "size": "9:16"}, INVALID),
        ({"image_urls": [HTTP_IMAGE, HTTP_IMAGE]}, spec.ERR_UNSUPPORTED_IMAGE_COUNT),
        ({"image_urls": [HTTP_IMAGE] * 4}, spec.ERR_UNSUPPORTED_IMAGE_COUNT),
        ({"image_urls": [HTTP_IMAGE] * 5}, spec.ERR_UNSUPPORTED_IMAGE_COUNT),
        ({"image_urls": HTTP_IMAGE}, INVALID),
        ({"image_urls": ["ftp://example.com/a.png"]}, INVALID),
        ({"image_urls": ["not a url"]}, INVALID),
        ({"image_urls": ["data:image/png;base64,@@@not-base64@@@"]}, INVALID),
        ({"image_urls": ["data:text/plain;base64,aGVsbG8="]}, INVALID),
        ({"image_urls": [1]}, INVALID),
        ({"video_urls": ["https://example.com/a.mp4", "https://example.com/b.mp4"]}, INVALID),
        ({"video_urls": ["file:///etc/passwd"]}, INVALID),
    ],
)
def test_invalid_field_is_refused_with_its_type(
    api: Api, fields: dict[str, Any], kind: str
) -> None:
    """Each invalid field is refused 400 with its documented error type, creating nothing."""
    response = api.submit(**fields)
    assert response.status_code == 400
    assert response.json() == {
        "code": 400,
        "error": {"type": kind, "message": response.json()["error"]["message"]},
    }
    assert response.json()["error"]["message"]
    assert api.sb.state.stats()["tasks_created"] == 0


@pytest.mark.parametrize("payload", [b"{not json", b"[]", b'"text"', b"\xff\xfe", b""])
def test_malformed_body_is_invalid_request(api: Api, payload: bytes) -> None:
    """A body that is not a JSON object is refused 400 as an invalid request."""
    response = api.http.post(
        spec.SUBMIT_PATH, content=payload, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == INVALID


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"duration": 4, "resolution": "1080P", "aspect_ratio": "9:16"},
        {"duration": 10, "resolution": "4K"},
        {"size": "9:16"},
        {"aspect_ratio": "9:16", "size": "9:16"},
        {"image_urls": [HTTP_IMAGE]},
        {"image_urls": [PNG]},
        {"image_urls": [PNG, HTTP_IMAGE, "data:image/jpeg;base64,/9j/4AAQ"]},
        {"image_urls": [], "video_urls": ["https://example.com/ref.mp4"]},
        {"unknown_field": "ignored"},
    ],
)
def test_valid_bodies_create_a_task(api: Api, fields: dict[str, Any]) -> None:
    """Every documented valid body creates one task; unknown fields are ignored."""
    response = api.submit(**fields)
    assert response.status_code == 200, response.text
    assert api.task_id(response).startswith("task_")
    assert api.sb.state.stats()["tasks_created"] == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "sk-sandbox"},
        {"Authorization": "Basic c2stc2FuZGJveA=="},
        {"Authorization": "Bearer sk-sandbox-not"},
    ],
)
def test_bad_or_missing_key_is_authentication_error(
    sb: RunningSandbox, headers: dict[str, str]
) -> None:
    """A missing or wrong key is refused 401 on submit and query, creating nothing."""
    submit = httpx.post(f"{sb.url}{spec.SUBMIT_PATH}", json=body(), headers=headers)
    query = httpx.get(f"{sb.url}/v1/tasks/task_x", headers=headers)
    for response in (submit, query):
        assert response.status_code == 401
        assert response.json()["code"] == 401
        assert response.json()["error"]["type"] == spec.ERR_AUTHENTICATION
    assert sb.state.stats()["tasks_created"] == 0
    assert sb.state.stats()["submit_requests"] == 1


def test_auth_is_checked_before_the_body(sb: RunningSandbox) -> None:
    """The key is checked before the body: a broken body without a key gets 401."""
    response = httpx.post(f"{sb.url}{spec.SUBMIT_PATH}", content=b"{broken")
    assert response.status_code == 401


@pytest.mark.parametrize("key", [b"", b"has space", "é".encode(), b"x" * 192])
def test_malformed_idempotency_key_is_refused(api: Api, key: bytes) -> None:
    """An empty, spaced, non-ASCII or too long Idempotency-Key is refused 400."""
    response = api.http.post(spec.SUBMIT_PATH, json=body(), headers=[(b"Idempotency-Key", key)])
    assert response.status_code == 400
    assert response.json()["error"]["type"] == INVALID


def test_longest_idempotency_key_is_accepted(api: Api) -> None:
    """An Idempotency-Key of the maximum length is accepted."""
    assert api.submit(key="k" * spec.IDEMPOTENCY_KEY_MAX).status_code == 200


def test_unknown_task_is_not_found(api: Api) -> None:
    """Querying a task that does not exist answers 404 not_found_error."""
    response = api.get("task_01DOESNOTEXIST")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


def test_unsupported_language_is_refused(api: Api) -> None:
    """A query in an unsupported language is refused 400; the documented ones pass."""
    task_id = api.create()
    assert api.get(task_id, language="fr").status_code == 400
    for language in spec.LANGUAGES:
        assert api.get(task_id, language=language).status_code == 200


def test_unknown_route_answers_in_the_error_shape(api: Api) -> None:
    """An unknown route answers 404 in the API's error shape."""
    response = api.http.get("/v1/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
