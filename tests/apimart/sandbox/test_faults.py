"""Each fault fires as configured, deterministically, and counters tell whether a task exists."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sandbox_testkit import Api, body

from apimart import spec
from apimart.sandbox import FaultRule, Faults, SandboxConfig, run_in_thread
from apimart.sandbox.task import FAIL_REASONS

ALWAYS_ONCE = FaultRule(rate=1, times=1)


def test_429_once_then_success_with_retry_after(api: Api) -> None:
    """A 429 fault answers with Retry-After and creates nothing, once per key."""
    api.sb.config.faults.submit_429 = ALWAYS_ONCE
    api.sb.config.faults.retry_after_s = 2
    first = api.submit(key="row-429", prompt="p")
    assert first.status_code == 429
    assert first.headers["Retry-After"] == "2"
    assert first.json() == {
        "code": 429,
        "error": {"type": spec.ERR_RATE_LIMIT, "message": first.json()["error"]["message"]},
    }
    assert api.sb.state.stats()["tasks_created"] == 0
    assert api.submit(key="row-429", prompt="p").status_code == 200
    # `times` counts per key: another row gets its own 429.
    assert api.submit(key="row-other", prompt="p").status_code == 429
    stats = api.sb.state.stats()
    assert stats["tasks_created_by_key"] == {"row-429": 1}
    assert stats["faults_fired"] == {"submit_429": 2}
    assert stats["submit_requests"] == 3


def test_drop_after_create_creates_and_bills_the_task(api: Api) -> None:
    """A connection dropped after creation still bills the task; a resend duplicates it."""
    api.sb.config.faults.submit_drop_after_create = ALWAYS_ONCE
    with pytest.raises(httpx.RemoteProtocolError):
        api.submit(key="row-drop", prompt="dropped", resolution="4k")
    stats = api.sb.state.stats()
    assert stats["tasks_created_by_key"] == {"row-drop": 1}
    assert stats["cost_billed"] == spec.estimate_cost("4k", 6)
    # The retry (same key, idempotency not honoured) makes a duplicate: that's the hazard.
    assert api.submit(key="row-drop", prompt="dropped").status_code == 200
    assert api.sb.state.stats()["tasks_created_by_key"] == {"row-drop": 2}


def test_late_answer_after_create_times_out_the_client(api: Api) -> None:
    """A late answer after creation makes the client time out, the task already created."""
    api.sb.config.faults.submit_late_after_create = ALWAYS_ONCE
    api.sb.config.faults.late_s = 30.0
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        api.http.post(
            spec.SUBMIT_PATH, json=body(), headers={"Idempotency-Key": "row-late"}, timeout=0.3
        )
    # Far below the 30 s the answer takes: the client gave up, it did not wait.
    assert time.monotonic() - started < 15
    assert api.sb.state.stats()["tasks_created_by_key"] == {"row-late": 1}


@pytest.mark.parametrize("creates", [True, False])
def test_5xx_with_and_without_creation(api: Api, creates: bool) -> None:
    """Submit 5xx faults vary their codes and create a task or not, as configured."""
    api.sb.config.faults.submit_5xx = FaultRule(rate=1)
    api.sb.config.faults.submit_5xx_creates = creates
    statuses = set()
    for n in range(12):
        response = api.submit(key=f"row-{n}")
        assert response.status_code in (500, 502, 503)
        assert response.json()["code"] == response.status_code
        statuses.add(response.status_code)
    assert len(statuses) > 1
    assert api.sb.state.stats()["tasks_created"] == (12 if creates else 0)


def test_query_5xx_once_per_task(api: Api) -> None:
    """A query 5xx fault answers 503 once per task, then the task."""
    api.sb.config.faults.query_5xx = ALWAYS_ONCE
    task_id = api.create()
    first = api.get(task_id)
    assert first.status_code == 503
    assert first.json()["error"]["type"] == "service_unavailable"
    assert api.get(task_id).status_code == 200
    assert api.sb.state.stats()["queries_by_task"] == {task_id: 2}


def test_task_fail_has_zero_cost_and_a_task_failed_error(api: Api) -> None:
    """A failed task costs nothing and says why; the same prompt later succeeds."""
    api.sb.config.faults.task_fail = FaultRule(rate=1, times=1)
    data = api.wait(api.create(prompt="doomed"))
    assert data["status"] == spec.STATUS_FAILED
    assert data["cost"] == 0
    assert data["error"]["code"] == spec.ERR_TASK_FAILED
    assert data["error"]["message"] in {m["en"] for m in FAIL_REASONS.values()}
    assert "result" not in data
    assert api.sb.state.stats()["cost_billed"] == 0
    # times=1 per prompt: resubmitting the same row succeeds, even under a new key.
    assert api.wait(api.task_id(api.submit(key="new", prompt="doomed")))["status"] == "completed"


def test_fail_messages_vary_and_follow_language(api: Api) -> None:
    """Failure messages vary between tasks and come in the language asked for."""
    api.sb.config.faults.task_fail = FaultRule(rate=1)
    api.sb.config.time_scale = 0.001
    ids = [api.create(prompt=f"p{n}") for n in range(12)]
    messages = {api.wait(i)["error"]["message"] for i in ids}
    assert len(messages) == 3
    zh = api.get(ids[0], language="zh").json()["data"]["error"]["message"]
    assert zh in {m["zh"] for m in FAIL_REASONS.values()}


def test_task_cancel(api: Api) -> None:
    """A cancelled task costs nothing."""
    api.sb.config.faults.task_cancel = FaultRule(rate=1)
    data = api.wait(api.create())
    assert data["status"] == spec.STATUS_CANCELLED
    assert data["cost"] == 0
    assert api.sb.state.stats()["cost_billed"] == 0


def test_unknown_status_reported_before_proceeding(api: Api) -> None:
    """An undocumented status shows up on the way, then the task completes."""
    api.sb.config.faults.unknown_status = FaultRule(rate=1)
    task_id = api.create()
    assert api.get(task_id).json()["data"]["status"] == "queued"
    assert api.wait(task_id)["status"] == spec.STATUS_COMPLETED


def test_prompt_contains_targets_only_matching_prompts(api: Api) -> None:
    """A fault with prompt_contains fires only on prompts that contain it."""
    api.sb.config.faults.submit_429 = FaultRule(rate=1, prompt_contains="[throttle]")
    assert api.submit(prompt="a calm lake").status_code == 200
    assert api.submit(prompt="a calm lake [throttle]").status_code == 429


def test_payment_after_n_tasks(api: Api) -> None:
    """After N tasks every submit is refused 402 and creates nothing."""
    api.sb.config.faults.payment_after = 2
    assert api.submit().status_code == 200
    assert api.submit().status_code == 200
    refused = api.submit()
    assert refused.status_code == 402
    assert refused.json()["error"]["type"] == spec.ERR_PAYMENT_REQUIRED
    assert api.sb.state.stats()["tasks_created"] == 2


def test_put_faults_replaces_them_at_runtime(api: Api) -> None:
    """PUT /_sandbox/faults replaces the faults of a running sandbox; unknown ones are 400."""
    response = api.http.put("/_sandbox/faults", json={"submit_429": 1, "retry_after_s": 0.5})
    assert response.status_code == 200
    assert api.sb.config.faults.submit_429 == FaultRule(rate=1.0)
    assert api.submit().headers["Retry-After"] == "0.5"
    assert api.http.put("/_sandbox/faults", json={"nope": 1}).status_code == 400
    assert api.http.put("/_sandbox/faults", json={}).status_code == 200
    assert api.sb.config.faults == Faults()


def test_stats_and_reset_routes(api: Api) -> None:
    """The stats route counts tasks and the reset route empties them."""
    api.create()
    assert api.http.get("/_sandbox/stats").json()["tasks_created"] == 1
    assert api.http.post("/_sandbox/reset").status_code == 200
    assert api.http.get("/_sandbox/stats").json()["tasks_created"] == 0


def _outcomes(seed: int, order: list[int]) -> dict[int, tuple[int, str]]:
    """Submit rows in `order`, concurrently; each row's (status code, task outcome)."""
    faults = Faults(submit_429=FaultRule(rate=0.5), task_fail=FaultRule(rate=0.5))
    with (
        run_in_thread(SandboxConfig(seed=seed, faults=faults)) as sb,
        httpx.Client(base_url=sb.url, headers=sb.headers) as client,
    ):

        def submit(n: int) -> tuple[int, tuple[int, str]]:
            response = client.post(
                spec.SUBMIT_PATH,
                json={"model": spec.MODEL, "prompt": f"row {n}"},
                headers={"Idempotency-Key": f"row-{n}"},
            )
            outcome = "-"
            if response.status_code == 200:
                task = sb.state.get_task(response.json()["data"][0]["task_id"])
                assert task is not None
                outcome = task.outcome
            return n, (response.status_code, outcome)

        with ThreadPoolExecutor(8) as pool:
            return dict(pool.map(submit, order))


def test_outcomes_depend_on_seed_not_on_arrival_order() -> None:
    """Fault outcomes follow the seed and the row, not the order requests arrive in."""
    rows = list(range(32))
    forward = _outcomes(7, rows)
    assert forward == _outcomes(7, rows[::-1])
    assert {code for code, _ in forward.values()} == {200, 429}
    assert {o for _, o in forward.values()} >= {"completed", "failed"}
    assert forward != _outcomes(8, rows)


def test_hold_tasks_keeps_tasks_processing_until_released(api: Api) -> None:
    """With `hold_tasks` on no task ends, however long it ran; released, it ends at once."""
    api.sb.config.time_scale = 0.001
    api.sb.config.faults.hold_tasks = True
    task_id = api.create(prompt="held")
    time.sleep(0.6)  # several times the task's whole latency at this time scale
    held = api.get(task_id).json()["data"]
    assert held["status"] == spec.STATUS_PROCESSING
    assert "result" not in held
    api.sb.config.faults.hold_tasks = False
    assert api.get(task_id).json()["data"]["status"] == spec.STATUS_COMPLETED


def test_new_cdn_faults_are_set_from_json_like_data(api: Api) -> None:
    """The CDN faults a command line can set: rules from bare rates, the rest as given."""
    response = api.http.put(
        "/_sandbox/faults",
        json={
            "download_garbage": 1,
            "video_mismatch": {"rate": 1, "prompt_contains": "odd"},
            "download_redirect_to": "https://169.254.169.254/latest",
            "cdn_clock_offset_s": -60,
        },
    )
    assert response.status_code == 200
    faults = api.sb.config.faults
    assert faults.download_garbage == FaultRule(rate=1.0)
    assert faults.video_mismatch == FaultRule(rate=1.0, prompt_contains="odd")
    assert faults.download_redirect_to == "https://169.254.169.254/latest"
    assert faults.cdn_clock_offset_s == -60
