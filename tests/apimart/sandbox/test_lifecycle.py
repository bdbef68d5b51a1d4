"""Tasks go pending -> processing -> completed in scaled time, in both documented shapes."""

from __future__ import annotations

import time

import httpx
import pytest
from sandbox_testkit import Api

from apimart import spec
from apimart.sandbox import SandboxConfig, run_in_thread


def test_list_submit_shape_is_the_documented_one(api: Api) -> None:
    """By default a submit answers in the documented list shape with a submitted task id."""
    response = api.submit()
    assert response.status_code == 200
    payload = response.json()
    assert payload["code"] == 200
    [entry] = payload["data"]
    assert entry["status"] == spec.STATUS_SUBMITTED
    assert entry["task_id"].startswith("task_01") and len(entry["task_id"]) == 31


def test_object_submit_shape(api: Api) -> None:
    """The object submit shape answers a pending task with progress and estimated time."""
    api.sb.config.submit_shape = "object"
    data = api.submit().json()["data"]
    assert data["id"].startswith("task_")
    assert data["status"] == spec.STATUS_PENDING
    assert data["progress"] == 0
    assert data["task_info"]["estimated_time"] >= 1


def test_mixed_submit_shape_uses_both_deterministically(api: Api) -> None:
    """The mixed submit shape answers both shapes, the same ones again after a reset."""
    api.sb.config.submit_shape = "mixed"
    prompts = [f"mixed shape prompt {n}" for n in range(12)]
    shapes = [type(api.submit(prompt=p).json()["data"]).__name__ for p in prompts]
    assert set(shapes) == {"list", "dict"}
    api.sb.state.reset()
    assert [type(api.submit(prompt=p).json()["data"]).__name__ for p in prompts] == shapes


@pytest.mark.parametrize(("shape", "kind"), [("list", list), ("string", str)])
def test_url_shapes(api: Api, shape: str, kind: type) -> None:
    """A video URL comes as a list or a string as configured, and points at the sandbox's CDN."""
    api.sb.config.url_shape = shape  # type: ignore[assignment]
    data = api.wait(api.create())
    url = data["result"]["videos"][0]["url"]
    assert isinstance(url, kind)
    assert api.video_url(data).startswith(f"{api.sb.url}/cdn/videos/")


def test_lifecycle_reaches_completed_with_all_fields(api: Api) -> None:
    """A task moves only forward from pending to completed, with every documented field."""
    api.sb.config.time_scale = 0.004  # 0.72 to 1.2 s
    before = time.time()
    task_id = api.create(resolution="1080p", duration=10)
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + 5
    data: dict[str, object] = {}
    while time.monotonic() < deadline:
        data = api.get(task_id).json()["data"]
        seen.append((str(data["status"]), int(str(data["progress"]))))
        if data["status"] in spec.TERMINAL_STATUSES:
            break
        time.sleep(0.02)
    statuses = [s for s, _ in seen]
    assert statuses[0] == spec.STATUS_PENDING
    assert spec.STATUS_PROCESSING in statuses
    assert statuses[-1] == spec.STATUS_COMPLETED
    # Statuses only move forward and progress never goes back.
    order = [spec.STATUS_PENDING, spec.STATUS_PROCESSING, spec.STATUS_COMPLETED]
    assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)
    progress = [p for _, p in seen]
    assert progress == sorted(progress) and progress[-1] == 100
    assert data["id"] == task_id
    assert int(str(data["created"])) >= int(before)
    assert int(str(data["completed"])) >= int(str(data["created"]))
    assert int(str(data["actual_time"])) >= 1
    assert data["cost"] == spec.estimate_cost("1080p", 10)
    assert "error" not in data
    [video] = data["result"]["videos"]  # type: ignore[index]
    assert video["expires_at"] > time.time() + 86000


def test_latency_is_three_to_five_minutes_scaled(api: Api) -> None:
    """Unscaled, each task takes its own 3 to 5 minutes."""
    api.sb.config.time_scale = 1.0
    for _ in range(20):
        api.create()
    tasks = list(api.sb.state.tasks.values())
    latencies = [t.latency_s for t in tasks]
    assert all(180 <= x <= 300 for x in latencies)
    assert len(set(latencies)) == len(latencies)
    assert {t.estimated_time for t in tasks} <= {300, 600}


def test_cost_is_billed_at_creation_for_tasks_bound_to_complete(api: Api) -> None:
    """A task's cost (by resolution, pro rata by duration) is billed when it is created."""
    api.sb.config.prices = {"720p": 0.3, "1080p": 0.5, "4k": 1.2}
    api.create(resolution="4k", duration=4)
    api.create(resolution="720p", duration=6)
    stats = api.sb.state.stats()
    assert stats["cost_billed"] == pytest.approx(1.2 * 4 / 6 + 0.3)
    assert stats["tasks_created"] == 2


def test_completed_task_keeps_handing_out_the_same_valid_url(api: Api) -> None:
    """A completed task hands out the same URL on every query; another task another one."""
    url, data = api.completed_url()
    assert api.video_url(api.get(data["id"]).json()["data"]) == url
    other, _ = api.completed_url()
    assert other != url


def test_counters_count_queries_per_task(api: Api) -> None:
    """Every query of a task is counted against that task."""
    task_id = api.create()
    for _ in range(3):
        api.get(task_id)
    assert api.sb.state.stats()["queries_by_task"] == {task_id: 3}


def test_idempotency_key_not_honoured_by_default(api: Api) -> None:
    """By default the same Idempotency-Key creates a second task, as the real API may."""
    first = api.task_id(api.submit(key="row-1", prompt="same"))
    second = api.task_id(api.submit(key="row-1", prompt="same"))
    assert first != second
    assert api.sb.state.stats()["tasks_created_by_key"] == {"row-1": 2}


def test_idempotency_key_honoured_when_configured(api: Api) -> None:
    """When configured, a repeated Idempotency-Key returns the first task instead of a new one."""
    api.sb.config.honour_idempotency_key = True
    first = api.task_id(api.submit(key="row-1", prompt="same"))
    assert api.task_id(api.submit(key="row-1", prompt="same")) == first
    assert api.task_id(api.submit(key="row-2", prompt="same")) != first
    stats = api.sb.state.stats()
    assert stats["tasks_created_by_key"] == {"row-1": 1, "row-2": 1}
    assert stats["tasks_created_by_prompt"] == {"same": 2}
    assert stats["submit_requests"] == 3


def test_task_ids_differ_between_sandboxes_with_the_same_seed() -> None:
    """Two sandboxes with the same seed never hand out the same task id."""
    ids = []
    for _ in range(2):
        with run_in_thread(SandboxConfig()) as sb:
            response = httpx.post(
                f"{sb.url}{spec.SUBMIT_PATH}",
                json={"model": spec.MODEL, "prompt": "same prompt"},
                headers=sb.headers,
            )
            ids.append(response.json()["data"][0]["task_id"])
    assert ids[0] != ids[1]
