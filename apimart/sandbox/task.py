"""One emulated generation task, and what it reports at a given moment.

No background work runs: a task's whole future (latency, outcome, failure message) is fixed
when it is created, and its status is computed from the time elapsed since then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from apimart import spec

Outcome = Literal["completed", "failed", "cancelled"]

# Share of the latency spent `pending` (or in the unknown status, when that fault fires).
PENDING_SHARE = 0.1
UNKNOWN_STATUS_SHARE = 0.3

FAIL_REASONS: dict[str, dict[str, str]] = {
    "quota": {
        "en": "Upstream quota exhausted, please try again later",
        "zh": "上游配额已用尽，请稍后重试",
    },
    "moderation": {
        "en": "Content moderation: the prompt or image was rejected by the safety system",
        "zh": "内容审核未通过：提示词或图片被安全系统拒绝",
    },
    "timeout": {
        "en": "Upstream generation timed out",
        "zh": "上游生成超时",
    },
}


@dataclass
class MintedUrl:
    """A download URL handed out for a task; the signature is computed, never stored."""

    token: str
    expires_at: int
    generation: int


@dataclass
class Task:
    id: str
    # Stable across runs (unlike `id`): what fault draws about this task are keyed on.
    fault_key: str
    prompt: str
    duration: int
    resolution: str
    aspect_ratio: str
    image: bytes | None
    image_count: int
    created_at: float
    latency_s: float
    # When the terminal status shows up, in seconds after creation.
    end_s: float
    outcome: Outcome
    fail_reason: str | None
    unknown_status: str | None
    estimated_time: int
    price: float
    submit_shape: Literal["list", "object"]
    url_shape: Literal["string", "list"]
    idempotency_key: str | None
    urls: list[MintedUrl] = field(default_factory=list)
    # Whether the CDN serves this task a video unlike its request (the `video_mismatch`
    # fault); None until its first download decides it.
    mismatched: bool | None = None

    @property
    def billed(self) -> float:
        """What this task costs: its price if it is bound to complete, else nothing."""
        return self.price if self.outcome == "completed" else 0.0

    def status_at(self, now: float) -> tuple[str, int]:
        """(status, progress) at wall-clock time `now`."""
        elapsed = now - self.created_at
        if elapsed >= self.end_s:
            if self.outcome == "completed":
                return spec.STATUS_COMPLETED, 100
            return self.outcome, self._progress(self.end_s)
        if self.unknown_status is not None and elapsed < UNKNOWN_STATUS_SHARE * self.latency_s:
            return self.unknown_status, 0
        if elapsed < PENDING_SHARE * self.latency_s:
            return spec.STATUS_PENDING, 0
        return spec.STATUS_PROCESSING, self._progress(elapsed)

    def _progress(self, elapsed: float) -> int:
        start = (UNKNOWN_STATUS_SHARE if self.unknown_status else PENDING_SHARE) * self.latency_s
        span = max(self.latency_s - start, 1e-9)
        return max(1, min(99, int(100 * (elapsed - start) / span)))

    def is_terminal(self, now: float) -> bool:
        return now - self.created_at >= self.end_s

    def data_at(self, now: float, language: str = "en") -> dict[str, Any]:
        """The `data` object of GET /v1/tasks/{id}, without `result` (the app adds URLs)."""
        status, progress = self.status_at(now)
        data: dict[str, Any] = {
            "id": self.id,
            "model": spec.MODEL,
            "status": status,
            "progress": progress,
            "created": int(self.created_at),
            "estimated_time": self.estimated_time,
        }
        if status in spec.TERMINAL_STATUSES:
            data["completed"] = int(self.created_at + self.end_s)
            data["actual_time"] = max(1, round(self.end_s))
            data["cost"] = self.billed
        if status == spec.STATUS_FAILED and self.fail_reason is not None:
            messages = FAIL_REASONS[self.fail_reason]
            data["error"] = {
                "code": spec.ERR_TASK_FAILED,
                "message": messages.get(language, messages["en"]),
            }
        return data

    def submit_data(self) -> Any:
        """The `data` of the submit answer, in this task's shape."""
        if self.submit_shape == "list":
            return [{"status": spec.STATUS_SUBMITTED, "task_id": self.id}]
        return {
            "id": self.id,
            "status": spec.STATUS_PENDING,
            "progress": 0,
            "created": int(self.created_at),
            "task_info": {"estimated_time": self.estimated_time},
        }
