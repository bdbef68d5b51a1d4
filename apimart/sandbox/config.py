"""What the sandbox is told to do: credentials, speed, response shapes and injected faults.

Everything here is a plain mutable dataclass on purpose: a running sandbox reads its config
on every request, so a test can flip a fault on `sb.config.faults` between two calls.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from apimart import spec

SubmitShape = Literal["list", "object", "mixed"]
UrlShape = Literal["string", "list", "mixed"]


@dataclass
class FaultRule:
    """When one fault fires.

    `rate` is the probability per opportunity (0 = never, 1 = always). `prompt_contains`
    restricts the fault to prompts holding that substring. `times` caps how often it fires per
    key (per idempotency key for submit faults, per prompt for task outcomes, per task for
    queries and URLs, per URL for downloads), so `FaultRule(rate=1, times=1)` fires once and
    then lets the retry through.
    """

    rate: float = 0.0
    prompt_contains: str | None = None
    times: int | None = None

    @classmethod
    def from_value(cls, value: Any) -> FaultRule:
        """A rule from JSON: a number is a bare rate, an object names the fields."""
        if isinstance(value, FaultRule):
            return value
        if isinstance(value, bool) or value is None:
            return cls(rate=1.0 if value else 0.0)
        if isinstance(value, int | float):
            return cls(rate=float(value))
        if isinstance(value, Mapping):
            unknown = set(value) - {"rate", "prompt_contains", "times"}
            if unknown:
                raise ValueError(f"unknown fault rule fields: {sorted(unknown)}")
            return cls(**dict(value))
        raise ValueError(f"a fault rule is a number or an object, not {value!r}")


def _off() -> FaultRule:
    return FaultRule()


@dataclass
class Faults:
    """One rule per fault, all off by default, plus the parameters those faults use."""

    # 429 rate_limit_error before anything is created.
    submit_429: FaultRule = field(default_factory=_off)
    retry_after_s: float = 1.0
    # The task is created and billed, then the connection drops mid-response.
    submit_drop_after_create: FaultRule = field(default_factory=_off)
    # The task is created and billed, then the answer comes `late_s` seconds later.
    submit_late_after_create: FaultRule = field(default_factory=_off)
    late_s: float = 60.0
    # 500/502/503 on submit; the task is created first when `submit_5xx_creates`.
    submit_5xx: FaultRule = field(default_factory=_off)
    submit_5xx_creates: bool = True
    # 503 on GET task (keyed per task and query number).
    query_5xx: FaultRule = field(default_factory=_off)
    # Task outcomes, decided when the task is created (keyed per prompt).
    task_fail: FaultRule = field(default_factory=_off)
    task_cancel: FaultRule = field(default_factory=_off)
    unknown_status: FaultRule = field(default_factory=_off)
    unknown_status_value: str = "queued"
    # CDN faults (keyed per URL and download attempt).
    download_truncate: FaultRule = field(default_factory=_off)
    expired_urls: FaultRule = field(default_factory=_off)
    download_html: FaultRule = field(default_factory=_off)
    # 503 from the CDN before any byte (per URL and attempt).
    download_5xx: FaultRule = field(default_factory=_off)
    # Bytes that are not an MP4 at all, still labelled video/mp4 (per URL and attempt).
    download_garbage: FaultRule = field(default_factory=_off)
    # The video rendered at half the asked frame size and 4 s longer (keyed per task, drawn
    # once at its first download, so a resumed range continues the same file).
    video_mismatch: FaultRule = field(default_factory=_off)
    # Every CDN download answers 302 to this URL, except a request already addressed to the
    # URL's own host and port (so a hop back to this CDN is served, not redirected forever).
    # `{path}` in it stands for the request's own path and query.
    download_redirect_to: str | None = None
    # Seconds the CDN's clock runs ahead of this machine's (negative: behind). Links are
    # minted and checked by the CDN's clock, so an `expires_at` can look past here yet work.
    cdn_clock_offset_s: float = 0.0
    # 402 payment_required for every submit once this many tasks exist.
    payment_after: int | None = None
    # Throttle every download to this many bytes per second.
    trickle_bytes_per_s: int | None = None
    # While true, no task reaches its terminal status: queries answer `processing` (the time
    # keeps running, so a task whose latency passed ends at the first query after release).
    # Lets a test hold a run "still going" without racing the clock.
    hold_tasks: bool = False

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Faults:
        """Faults from JSON-like data; rules may be given as bare rates."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(names)
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if names[name].type == "FaultRule":
                values[name] = FaultRule.from_value(value)
            else:
                values[name] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _default_prices() -> dict[str, float]:
    return dict(spec.ESTIMATED_PRICES)


@dataclass
class SandboxConfig:
    """How the emulated API behaves. Read live by the app on every request."""

    api_key: str = "sk-sandbox"
    # Multiplies task latency (and the estimated_time hint): 0.01 turns ~4 min into ~2.4 s.
    time_scale: float = 1.0
    seed: int = 0
    # Price per clip at the default 6 s, by resolution; scaled linearly by duration.
    prices: dict[str, float] = field(default_factory=_default_prices)
    submit_shape: SubmitShape = "list"
    url_shape: UrlShape = "list"
    # Real seconds a download URL stays valid after it is handed out.
    url_ttl_s: float = 86400.0
    # Off by default: whether the real server deduplicates on Idempotency-Key is unverified.
    honour_idempotency_key: bool = False
    faults: Faults = field(default_factory=Faults)
    fps: int = 2
    # One render per (size, length, reference image) instead of one per task: a 100,000-row
    # benchmark would otherwise spend hours encoding. Each video still has the requested size
    # and length (so it passes the client's checks), but no longer names its task.
    shared_videos: bool = False
    # Where rendered videos are kept across processes; None keeps them in memory only.
    render_cache_dir: str | None = None
    # Base of the CDN URLs handed out; None uses the address the request came in on.
    public_base_url: str | None = None

    def price(self, resolution: str, duration: int) -> float:
        return spec.estimate_cost(resolution, duration, self.prices)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SandboxConfig:
        """A config from JSON-like data (a `faults` object is parsed with Faults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown sandbox options: {sorted(unknown)}")
        values = dict(data)
        if "faults" in values and not isinstance(values["faults"], Faults):
            values["faults"] = Faults.from_mapping(values["faults"])
        return cls(**values)


def load_faults(source: str | Path | None) -> Faults:
    """Faults from a JSON text or a path to a JSON file (for a command line option)."""
    if source is None:
        return Faults()
    text = str(source)
    path = Path(text)
    if not text.lstrip().startswith("{") and path.exists():
        text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("faults must be a JSON object")
    return Faults.from_mapping(data)


def config_from_options(
    *,
    api_key: str | None = None,
    time_scale: float = 1.0,
    seed: int = 0,
    submit_shape: SubmitShape = "list",
    url_shape: UrlShape = "list",
    url_ttl_s: float = 86400.0,
    honour_idempotency_key: bool = False,
    faults: str | Path | None = None,
    fps: int = 2,
    render_cache_dir: str | None = None,
    public_base_url: str | None = None,
) -> SandboxConfig:
    """A config from command line options; `faults` is JSON text or a JSON file path."""
    return SandboxConfig(
        api_key=api_key or SandboxConfig.api_key,
        time_scale=time_scale,
        seed=seed,
        submit_shape=submit_shape,
        url_shape=url_shape,
        url_ttl_s=url_ttl_s,
        honour_idempotency_key=honour_idempotency_key,
        faults=load_faults(faults),
        fps=fps,
        render_cache_dir=render_cache_dir,
        public_base_url=public_base_url,
    )
