"""What happens to a submit: validation, faults in their order, task creation.

Order: auth, JSON, validation, then `submit_429`, the idempotency replay (if honoured),
`payment_after`, `submit_5xx` (before or after creating, per `submit_5xx_creates`), creation,
then `submit_drop_after_create` and `submit_late_after_create`.

Fault keys: submit faults are keyed by the Idempotency-Key (or, without one, the prompt) and
drawn per attempt, so `times=1` lets the retry of the same row through. Task outcome faults
(`task_fail`, `task_cancel`, `unknown_status`) are keyed by the prompt and drawn per task
created for it, so a resubmitted row can succeed even under a new idempotency key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Literal

from starlette.responses import JSONResponse, Response

from apimart import spec
from apimart.sandbox.chance import choose, draw, token, triangular
from apimart.sandbox.config import SandboxConfig
from apimart.sandbox.responses import ApiError, BytesResponse
from apimart.sandbox.state import SandboxState
from apimart.sandbox.task import FAIL_REASONS, Outcome, Task
from apimart.sandbox.validation import SubmitRequest, check_idempotency_key, parse_submit

log = logging.getLogger(__name__)

# A realistic task takes 3 to 5 minutes, most often about 4.
LATENCY_LOW_S, LATENCY_MODE_S, LATENCY_HIGH_S = 180.0, 240.0, 300.0
SERVER_ERRORS = {500: "server_error", 502: "bad_gateway", 503: "service_unavailable"}


async def handle_submit(
    state: SandboxState, config: SandboxConfig, raw_body: bytes, idempotency_key: str | None
) -> Response:
    try:
        body = json.loads(raw_body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(400, spec.ERR_INVALID_REQUEST, "malformed JSON body") from None
    request = parse_submit(body)
    idem = check_idempotency_key(idempotency_key)
    key = idem if idem is not None else f"prompt:{request.prompt}"
    attempt = state.next_attempt(key)
    faults = config.faults

    def fires(name: str) -> bool:
        rule = getattr(faults, name)
        hit = state.fires(rule, name, key, attempt, seed=config.seed, prompt=request.prompt)
        if hit:
            log.info("sandbox: fault %s fired on submit attempt %d", name, attempt)
        return hit

    if fires("submit_429"):
        raise ApiError(
            429,
            spec.ERR_RATE_LIMIT,
            "Too many requests, please slow down",
            {"Retry-After": f"{faults.retry_after_s:g}"},
        )
    if config.honour_idempotency_key and idem is not None:
        existing = state.task_for_idempotency_key(idem)
        if existing is not None:
            return JSONResponse({"code": 200, "data": existing.submit_data()})
    if faults.payment_after is not None and state.stats()["tasks_created"] >= faults.payment_after:
        raise ApiError(402, spec.ERR_PAYMENT_REQUIRED, "Insufficient balance, please top up")

    server_error = fires("submit_5xx")
    if server_error:
        status = choose(tuple(SERVER_ERRORS), config.seed, "submit_5xx_status", key, attempt)
        error = ApiError(status, SERVER_ERRORS[status], "The server had an error, try again")
        if not faults.submit_5xx_creates:
            raise error
    task = create_task(state, config, request, idem, f"{key}#{attempt}")
    if server_error:
        raise error

    answer = json.dumps({"code": 200, "data": task.submit_data()}).encode()
    if fires("submit_drop_after_create"):
        return BytesResponse(answer, media_type="application/json", stop_after=len(answer) // 2)
    if fires("submit_late_after_create"):
        await asyncio.sleep(faults.late_s)
    return Response(answer, media_type="application/json")


def create_task(
    state: SandboxState,
    config: SandboxConfig,
    request: SubmitRequest,
    idempotency_key: str | None,
    fault_key: str,
) -> Task:
    """A new task with its whole future drawn now, stored and billed."""
    seed, faults, prompt = config.seed, config.faults, request.prompt
    ordinal = state.tasks_for_prompt(prompt)

    def fires(name: str) -> bool:
        rule = getattr(faults, name)
        return state.fires(rule, name, prompt, ordinal, seed=seed, prompt=prompt)

    outcome: Outcome = "completed"
    if fires("task_fail"):
        outcome = "failed"
    elif fires("task_cancel"):
        outcome = "cancelled"
    unknown = faults.unknown_status_value if fires("unknown_status") else None

    u = draw(seed, "latency", fault_key)
    latency = triangular(LATENCY_LOW_S, LATENCY_HIGH_S, LATENCY_MODE_S, u) * config.time_scale
    share = 1.0 if outcome == "completed" else 0.3 + 0.7 * draw(seed, "end", fault_key)
    submit_shape: Literal["list", "object"] = (
        config.submit_shape
        if config.submit_shape != "mixed"
        else choose(("list", "object"), seed, "submit_shape", fault_key)
    )
    url_shape: Literal["string", "list"] = (
        config.url_shape
        if config.url_shape != "mixed"
        else choose(("string", "list"), seed, "url_shape", fault_key)
    )
    hint = choose((300, 600), seed, "estimated_time", fault_key)
    task = Task(
        id="task_01" + token(seed, "task_id", f"{state.nonce}/{fault_key}", 0, 24),
        fault_key=fault_key,
        prompt=prompt,
        duration=request.duration,
        resolution=request.resolution,
        aspect_ratio=request.aspect_ratio,
        image=request.first_image,
        image_count=len(request.image_urls),
        created_at=time.time(),
        latency_s=latency,
        end_s=latency * share,
        outcome=outcome,
        fail_reason=(
            choose(tuple(FAIL_REASONS), seed, "fail_reason", fault_key)
            if outcome == "failed"
            else None
        ),
        unknown_status=unknown,
        estimated_time=max(1, round(hint * config.time_scale)),
        price=config.price(request.resolution, request.duration),
        submit_shape=submit_shape,
        url_shape=url_shape,
        idempotency_key=idempotency_key,
    )
    state.add_task(task)
    log.info("sandbox: created %s (bound to be %s)", task.id, outcome)
    return task
