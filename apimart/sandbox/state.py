"""The sandbox's memory: tasks, download tokens, fault bookkeeping and counters.

One lock guards everything, because tests read counters from their own thread while the
server thread (and its render worker threads) change them.
"""

from __future__ import annotations

import secrets
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from apimart.sandbox.chance import draw
from apimart.sandbox.config import FaultRule
from apimart.sandbox.task import MintedUrl, Task


@dataclass
class Counters:
    """What happened, for tests to prove whether a task was created or a fault fired.

    `tasks_created_by_key` counts only submits that carried an Idempotency-Key.
    `cost_billed` adds a task's price when it is created, if it is bound to complete; tasks
    bound to fail or be cancelled are never billed (the API reports cost 0 for them).
    """

    tasks_created: int = 0
    tasks_created_by_key: dict[str, int] = field(default_factory=dict)
    tasks_created_by_prompt: dict[str, int] = field(default_factory=dict)
    submit_requests: int = 0
    queries_by_task: dict[str, int] = field(default_factory=dict)
    downloads_by_task: dict[str, int] = field(default_factory=dict)
    bytes_served: int = 0
    cost_billed: float = 0.0
    faults_fired: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able deep copy."""
        return {
            "tasks_created": self.tasks_created,
            "tasks_created_by_key": dict(self.tasks_created_by_key),
            "tasks_created_by_prompt": dict(self.tasks_created_by_prompt),
            "submit_requests": self.submit_requests,
            "queries_by_task": dict(self.queries_by_task),
            "downloads_by_task": dict(self.downloads_by_task),
            "bytes_served": self.bytes_served,
            "cost_billed": round(self.cost_billed, 6),
            "faults_fired": dict(self.faults_fired),
        }


class SandboxState:
    """Thread-safe in-memory store. Create one per sandbox; `reset()` empties it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        # Signs CDN URLs; fresh per state so URLs from another sandbox never validate.
        self.secret = secrets.token_bytes(32)
        # Mixed into task ids so two sandboxes (or two runs) never hand out the same id.
        self.nonce = secrets.token_hex(8)
        self._clear()

    def _clear(self) -> None:
        self.counters = Counters()
        self.tasks: dict[str, Task] = {}
        self.tokens: dict[str, tuple[str, int]] = {}
        self.by_idempotency_key: dict[str, str] = {}
        self._submits_by_key: defaultdict[str, int] = defaultdict(int)
        self._downloads_by_token: defaultdict[str, int] = defaultdict(int)
        self._fired: defaultdict[tuple[str, str], int] = defaultdict(int)

    def reset(self) -> None:
        with self.lock:
            self._clear()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return self.counters.snapshot()

    def fires(
        self,
        rule: FaultRule,
        name: str,
        key: str,
        ordinal: int,
        *,
        seed: int,
        prompt: str | None = None,
    ) -> bool:
        """Whether fault `name` fires for this key's `ordinal`-th opportunity; counts it."""
        if rule.rate <= 0:
            return False
        if rule.prompt_contains is not None and (
            prompt is None or rule.prompt_contains not in prompt
        ):
            return False
        with self.lock:
            if rule.times is not None and self._fired[(name, key)] >= rule.times:
                return False
            if draw(seed, name, key, ordinal) >= rule.rate:
                return False
            self._fired[(name, key)] += 1
            self.counters.faults_fired[name] = self.counters.faults_fired.get(name, 0) + 1
            return True

    def count_fault(self, name: str) -> None:
        """Count a fault that fires by configuration rather than by a drawn rule."""
        with self.lock:
            self.counters.faults_fired[name] = self.counters.faults_fired.get(name, 0) + 1

    def count_submit_request(self) -> None:
        with self.lock:
            self.counters.submit_requests += 1

    def next_attempt(self, key: str) -> int:
        """The 1-based number of this valid submit among those for `key`."""
        with self.lock:
            self._submits_by_key[key] += 1
            return self._submits_by_key[key]

    def task_for_idempotency_key(self, key: str) -> Task | None:
        with self.lock:
            task_id = self.by_idempotency_key.get(key)
            return None if task_id is None else self.tasks[task_id]

    def add_task(self, task: Task) -> None:
        with self.lock:
            self.tasks[task.id] = task
            c = self.counters
            c.tasks_created += 1
            c.tasks_created_by_prompt[task.prompt] = (
                c.tasks_created_by_prompt.get(task.prompt, 0) + 1
            )
            if task.idempotency_key is not None:
                key = task.idempotency_key
                c.tasks_created_by_key[key] = c.tasks_created_by_key.get(key, 0) + 1
                self.by_idempotency_key.setdefault(key, task.id)
            c.cost_billed += task.billed

    def tasks_for_prompt(self, prompt: str) -> int:
        with self.lock:
            return self.counters.tasks_created_by_prompt.get(prompt, 0)

    def get_task(self, task_id: str) -> Task | None:
        with self.lock:
            return self.tasks.get(task_id)

    def count_query(self, task_id: str) -> int:
        """Count one GET of a task; returns its 1-based query number."""
        with self.lock:
            n = self.counters.queries_by_task.get(task_id, 0) + 1
            self.counters.queries_by_task[task_id] = n
            return n

    def add_url(self, task: Task, url: MintedUrl) -> None:
        with self.lock:
            task.urls.append(url)
            self.tokens[url.token] = (task.id, url.generation)

    def count_download(self, token: str) -> tuple[Task, int, int] | None:
        """Count one CDN request for `token`: its task, URL generation and attempt number."""
        with self.lock:
            found = self.tokens.get(token)
            if found is None:
                return None
            task_id, generation = found
            self._downloads_by_token[token] += 1
            downloads = self.counters.downloads_by_task
            downloads[task_id] = downloads.get(task_id, 0) + 1
            return self.tasks[task_id], generation, self._downloads_by_token[token]

    def add_bytes(self, n: int) -> None:
        with self.lock:
            self.counters.bytes_served += n
