"""Facts about the APIMart video API, as documented (see shared/apimart-api.md).

Plain constants only: the client and the sandbox both read them, and neither imports the
other. Keeping the facts here means a change to the vendor's rules is one edit.
"""

from __future__ import annotations

from typing import Final

DEFAULT_BASE_URL: Final = "https://api.apimart.ai"
SUBMIT_PATH: Final = "/v1/videos/generations"
TASK_PATH: Final = "/v1/tasks/{task_id}"

MODEL: Final = "Omni-Flash-Ext"

DURATIONS: Final = (4, 6, 8, 10)
DEFAULT_DURATION: Final = 6

RESOLUTIONS: Final = ("720p", "1080p", "4k")
DEFAULT_RESOLUTION: Final = "720p"

ASPECT_RATIOS: Final = ("16:9", "9:16")
DEFAULT_ASPECT_RATIO: Final = "16:9"

# 2 images is documented as `unsupported_image_count`; 4+ is untested by the vendor, so refused.
IMAGE_COUNTS: Final = (0, 1, 3)
MAX_VIDEO_URLS: Final = 1

LANGUAGES: Final = ("en", "zh", "ko", "ja")

# Idempotency-Key: 1 to 191 visible ASCII characters (the vendor's agent tooling).
IDEMPOTENCY_KEY_MAX: Final = 191

# Task statuses. Anything else is kept verbatim and treated as still running.
STATUS_SUBMITTED: Final = "submitted"
STATUS_PENDING: Final = "pending"
STATUS_PROCESSING: Final = "processing"
STATUS_COMPLETED: Final = "completed"
STATUS_FAILED: Final = "failed"
STATUS_CANCELLED: Final = "cancelled"
KNOWN_STATUSES: Final = (
    STATUS_SUBMITTED,
    STATUS_PENDING,
    STATUS_PROCESSING,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_CANCELLED,
)
TERMINAL_STATUSES: Final = frozenset({STATUS_COMPLETED, STATUS_FAILED, STATUS_CANCELLED})

# Error `type` values the API answers with.
ERR_INVALID_REQUEST: Final = "invalid_request_error"
ERR_INVALID_DURATION: Final = "invalid_duration"
ERR_INVALID_RESOLUTION: Final = "invalid_resolution"
ERR_UNSUPPORTED_IMAGE_COUNT: Final = "unsupported_image_count"
ERR_AUTHENTICATION: Final = "authentication_error"
ERR_PAYMENT_REQUIRED: Final = "payment_required"
ERR_RATE_LIMIT: Final = "rate_limit_error"
ERR_TASK_FAILED: Final = "task_failed"

# Frame size of a rendered video, (width, height), for 16:9; 9:16 swaps them.
FRAME_SIZES: Final = {"720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}


def frame_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """Width and height in pixels of a video of this resolution and aspect ratio."""
    width, height = FRAME_SIZES[resolution.lower()]
    return (height, width) if aspect_ratio == "9:16" else (width, height)


# Unverified third-party price estimates (per clip, by resolution, at the default 6 s);
# callers must be able to override them. The real cost always comes from the API.
ESTIMATED_PRICES: Final = {"720p": 0.15, "1080p": 0.20, "4k": 0.40}


def estimate_cost(resolution: str, duration: int, prices: dict[str, float] | None = None) -> float:
    """A rough price for one clip: the per-resolution price scaled linearly by duration."""
    # A partial table (only the resolutions someone priced) falls back to ours for the rest.
    table = ESTIMATED_PRICES if prices is None else {**ESTIMATED_PRICES, **prices}
    return round(table[resolution.lower()] * duration / DEFAULT_DURATION, 6)
