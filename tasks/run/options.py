"""The options of a run: one pydantic model, so the Prefect UI renders them as a form.

This is their one declaration. The `run` command's flags are generated from these fields
(name, type, default, help from the description, rules from the constraints: see
`videobatch.cli`), and so is each field's `VIDEOBATCH_<NAME>` variable (`tasks.run.environment`).
An option nobody gave is absent from `model_fields_set`, even when a default fills it, so code
that adapts unset options (the built-in sandbox's polling pace) never overrides a choice.

Secrets are deliberately not here: flow parameters are stored and shown by Prefect. The API key
comes from `APIMART_API_KEY` or the Prefect Secret block `apimart-api-key`, and the ledger's
location (a URL that may hold a password) from `VIDEOBATCH_LEDGER_URL` (see
`tasks.run.environment`).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from apimart import spec
from tasks.run.duration import MAX_DURATION_S

# How long a claimed row of a shared batch stays a run's without renewal, by default
# (`tasks.steps.chunk.LEASE_S` is this value).
DEFAULT_LEASE_S = 120.0
# The shortest lease: it is renewed every quarter of its length, so a run loses its rows when
# its event loop stalls for three quarters of it (a GC pause, a loaded machine, a slow
# database round trip). 10 s survives a stall of 7.5 s, far past a healthy run's pauses, and
# still lets a test see a takeover within seconds. Below it, a busy machine would lose live
# runs' rows: never a second payment (an intent needs a live lease), but rows caught mid-POST
# turn `unknown` and wait for a person.
MIN_LEASE_S = 10.0
# Past a day a dead run's rows would simply stay held: a misread unit, not a choice.
MAX_LEASE_S = 86400.0


class RunOptions(BaseModel):
    """How one manifest is turned into videos."""

    manifest: str = Field(description="Path of the manifest (CSV, Parquet or JSON Lines).")
    out: str = Field(
        "out", description="Output folder: ledger, videos/, results.parquet and results.csv."
    )
    assets: str | None = Field(
        None,
        description="Folder local image paths may come from, besides the manifest's own folder.",
    )
    concurrency: int = Field(
        8, ge=1, le=1000, description="Most jobs in flight (submitted and not finished) at once."
    )
    submit_rate: float = Field(
        2.0, gt=0, description="Most submissions per second; 429 answers slow this down further."
    )
    max_cost: float | None = Field(
        None, ge=0, description="Budget cap for this output folder (estimated before, real after)."
    )
    dry_run: bool = Field(False, description="Validate and estimate only; send nothing.")
    resubmit_unknown: bool = Field(
        False,
        description="Send again rows whose earlier POST outcome is unknown (same idempotency key).",
    )
    retry_failed: bool = Field(
        False, description="Submit rows whose task failed or was cancelled as a new attempt."
    )
    poll_initial_delay: float | None = Field(
        None,
        ge=0,
        description="Seconds from submitting to the first query; pins a fixed schedule "
        "(default: adaptive).",
    )
    poll_interval: float | None = Field(
        None,
        gt=0,
        description="Seconds between queries of one task; pins a fixed schedule "
        "(default: adaptive, learned from this folder's tasks).",
    )
    poll_timeout: float = Field(
        1800.0, gt=0, description="Seconds to keep polling a task in this run before `timeout`."
    )
    base_url: str | None = Field(
        None, description="API endpoint; default APIMART_BASE_URL, else https://api.apimart.ai."
    )
    prices: dict[str, float] | None = Field(
        None, description="Estimated price per clip at 6 s by resolution, e.g. {'720p': 0.15}."
    )
    max_video_mb: float = Field(1024, gt=0, description="Largest video accepted, in MiB.")
    download_timeout: float = Field(900, gt=0, description="Deadline of one download, seconds.")
    report: bool = Field(True, description="Write OUT/report.html at the end of the run.")
    max_queries_per_s: float = Field(
        4.0, gt=0, description="Most status queries per second for the whole run (all tasks)."
    )
    poll_lag_target: float = Field(
        10.0,
        gt=0,
        description="Target mean seconds between a task finishing and the run noticing it "
        "(adaptive polling).",
    )
    poll_duration_low: float = Field(
        180.0,
        gt=0,
        le=MAX_DURATION_S,
        description="Shortest task duration expected before any has finished, seconds "
        "(adaptive polling's prior).",
    )
    poll_duration_high: float = Field(
        300.0,
        gt=0,
        le=MAX_DURATION_S,
        description="Longest task duration expected before any has finished, seconds "
        "(above --poll-duration-low).",
    )

    lease_seconds: float = Field(
        DEFAULT_LEASE_S,
        ge=MIN_LEASE_S,
        le=MAX_LEASE_S,
        description="Only on a batch shared by several runs (a PostgreSQL ledger, or the members "
        "generate-sharded starts on one folder): seconds a "
        "claimed row stays this run's without renewal (renewed every quarter of it). Raise it "
        "when a live run may stall that long (long GC pauses, a slow network or database); a "
        "short one lets other runs take a dead run's rows over sooner, for more renewals.",
    )

    @field_validator("poll_duration_high")
    @classmethod
    def _high_above_low(cls, high: float, info: ValidationInfo) -> float:
        low = info.data.get("poll_duration_low")
        if low is not None and not high > low:
            raise ValueError(f"must be above poll_duration_low ({low:g} s), got {high:g} s")
        return high

    @field_validator("prices")
    @classmethod
    def _prices_are_prices(cls, prices: dict[str, float] | None) -> dict[str, float] | None:
        # A zero, negative or infinite estimate would let --max-cost admit rows it cannot
        # afford until the real costs arrive.
        if prices is None:
            return None
        for resolution, price in prices.items():
            if resolution.lower() not in spec.RESOLUTIONS:
                raise ValueError(
                    f"{resolution!r} is not a resolution (one of {', '.join(spec.RESOLUTIONS)})"
                )
            if not (math.isfinite(price) and price > 0):
                raise ValueError(f"the price of {resolution} must be above 0, got {price!r}")
        return {resolution.lower(): price for resolution, price in prices.items()}
