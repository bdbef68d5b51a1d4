"""VideoRequest validation and the parsing of both documented answer shapes."""

from __future__ import annotations

import pytest

from apimart import (
    ProtocolError,
    RequestValidationError,
    SubmitResult,
    Task,
    Video,
    VideoRequest,
    spec,
)

PNG = "data:image/png;base64,iVBORw0KGgo="


def test_build_fills_defaults_and_normalises() -> None:
    """build fills the documented defaults and normalises resolution case and size."""
    request = VideoRequest.build(prompt="a fox", resolution=" 1080P ", size="9:16")
    assert request.to_payload() == {
        "model": "Omni-Flash-Ext",
        "prompt": "a fox",
        "duration": 6,
        "resolution": "1080p",
        "aspect_ratio": "9:16",
    }
    assert request.frame_size == (1080, 1920)


def test_build_reports_every_problem_at_once() -> None:
    """build names every broken field at once, not only the first."""
    with pytest.raises(RequestValidationError) as caught:
        VideoRequest.build(
            prompt=" ",
            duration=5,
            resolution="2k",
            aspect_ratio="4:3",
            image_urls=["https://a.example/1.png", PNG],
            model="other",
        )
    assert set(caught.value.problems) == {
        "prompt",
        "duration",
        "resolution",
        "aspect_ratio",
        "image_urls",
        "model",
    }


@pytest.mark.parametrize("duration", [True, 6.0, "6", 7, 0])
def test_duration_must_be_a_documented_int(duration: object) -> None:
    """A duration that is a bool, float, string or undocumented int is refused."""
    with pytest.raises(RequestValidationError, match="duration"):
        VideoRequest.build(prompt="x", duration=duration)


def test_conflicting_aspect_ratio_and_size() -> None:
    """An aspect_ratio and a size that disagree are refused."""
    with pytest.raises(RequestValidationError, match="aspect_ratio"):
        VideoRequest.build(prompt="x", aspect_ratio="16:9", size="9:16")


@pytest.mark.parametrize("count", [0, 1, 3])
def test_allowed_image_counts(count: int) -> None:
    """0, 1 or 3 images are accepted and sent as given."""
    request = VideoRequest.build(prompt="x", image_urls=[PNG] * count)
    assert len(request.to_payload().get("image_urls", [])) == count


@pytest.mark.parametrize(
    "url", ["ftp://a.example/x.png", "data:image/png;base64,???", "data:image/png;base64,", ""]
)
def test_bad_image_entries(url: str) -> None:
    """An ftp URL, a broken or empty data URI, or an empty image_urls entry is refused."""
    with pytest.raises(RequestValidationError, match="image_urls"):
        VideoRequest.build(prompt="x", image_urls=[url])


def test_repr_hides_inline_images() -> None:
    """A request's repr counts inline images instead of showing their base64."""
    request = VideoRequest.build(prompt="x", image_urls=[PNG])
    assert "base64" not in repr(request) and "images=1" in repr(request)


def test_direct_construction_is_validated_too() -> None:
    """A VideoRequest constructed directly, not through build, is validated too."""
    with pytest.raises(RequestValidationError):
        VideoRequest(prompt="x", duration=7)


def test_submit_result_list_shape() -> None:
    """A submit answer of the list shape yields its task id and status."""
    body = {"code": 200, "data": [{"status": "submitted", "task_id": "task_1"}]}
    assert SubmitResult.from_body(body) == SubmitResult(task_id="task_1", status="submitted")


def test_submit_result_object_shape() -> None:
    """A submit answer of the object shape yields id, status and the estimated time."""
    body = {"data": {"id": "task_2", "status": "pending", "task_info": {"estimated_time": 300}}}
    assert SubmitResult.from_body(body) == SubmitResult("task_2", "pending", 300.0)


@pytest.mark.parametrize(
    "body", [None, [], {"data": []}, {"data": {"status": "x"}}, {"data": [{"task_id": ""}]}]
)
def test_submit_result_rejects_bodies_without_a_task(body: object) -> None:
    """A submit answer without a task id is ProtocolError."""
    with pytest.raises(ProtocolError):
        SubmitResult.from_body(body)


def test_task_accepts_both_url_shapes() -> None:
    """A video URL as a string or as a list parses to the same video; status is lower-cased."""

    def body(url: object) -> dict[str, object]:
        videos = [{"url": url, "expires_at": 1_800_000_000}]
        return {
            "data": {
                "id": "t",
                "status": "COMPLETED",
                "progress": 100,
                "result": {"videos": videos},
            }
        }

    as_list = Task.from_body(body(["https://cdn.example/a.mp4?sig=1"]))
    as_string = Task.from_body(body("https://cdn.example/a.mp4?sig=1"))
    assert as_list.videos == as_string.videos
    assert as_list.videos[0].expires_at == 1_800_000_000
    assert as_list.status == "completed" and as_list.is_terminal


def test_task_failure_and_unknown_status() -> None:
    """A failed task is terminal with its error; an undocumented status is not terminal."""
    failed = Task.from_body(
        {
            "data": {
                "id": "t",
                "status": "failed",
                "cost": 0,
                "error": {"code": "task_failed", "message": "quota"},
            }
        }
    )
    assert failed.is_terminal and failed.error is not None and failed.error.message == "quota"
    odd = Task.from_body({"data": {"id": "t", "status": "queued"}})
    assert not odd.is_terminal and not odd.is_known_status


def test_video_repr_hides_the_signature() -> None:
    """A video's repr hides its link's signature."""
    video = Video(url="https://cdn.example/a.mp4?expires=1&sig=SECRETSIG", expires_at=1.0)
    assert "SECRETSIG" not in repr(video)


def test_a_partial_price_table_falls_back_to_the_default_for_the_rest() -> None:
    """Prices given for one resolution leave the others at the default estimate."""
    assert spec.estimate_cost("720p", 6, {"720p": 0.5}) == 0.5
    assert spec.estimate_cost("4k", 6, {"720p": 0.5}) == spec.estimate_cost("4k", 6)
