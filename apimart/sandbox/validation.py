"""Checking a submit body against the documented rules.

Where the vendor's documentation is silent the sandbox is strict, so that a client which
passes here is not relying on leniency the real server may not have:
- a field of the wrong JSON type (duration `"6"`, `6.0`, `true`; `null` anywhere) is
  `invalid_request_error`; only a well-typed value outside the allowed set gets the specific
  type (`invalid_duration`, `invalid_resolution`);
- the image count is checked before the entries themselves;
- unknown fields are ignored.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from apimart import spec
from apimart.sandbox.responses import ApiError

_DATA_URI = re.compile(r"data:image/([A-Za-z0-9.+-]+);base64,(.*)", re.DOTALL)
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True)
class SubmitRequest:
    prompt: str
    duration: int
    resolution: str
    aspect_ratio: str
    image_urls: tuple[str, ...]
    video_urls: tuple[str, ...]

    @property
    def first_image(self) -> bytes | None:
        """The first reference image if it is inline; http URLs are not fetched (offline)."""
        if not self.image_urls:
            return None
        match = _DATA_URI.fullmatch(self.image_urls[0])
        return None if match is None else base64.b64decode(match.group(2))


def _bad(message: str, kind: str = spec.ERR_INVALID_REQUEST) -> ApiError:
    return ApiError(400, kind, message)


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _is_image_data_uri(value: str) -> bool:
    match = _DATA_URI.fullmatch(value)
    if match is None:
        return False
    try:
        base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        return False
    return bool(match.group(2))


def _string_list(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"`{name}` must be an array of strings")
    return value


def parse_submit(body: Any) -> SubmitRequest:
    """The request a body describes, or ApiError(400, ...) naming the first problem."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")

    model = body.get("model")
    if model != spec.MODEL:
        raise _bad(f"`model` must be {spec.MODEL!r}, got {model!r}")

    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad("`prompt` must be a non-empty string")

    duration = body.get("duration", spec.DEFAULT_DURATION)
    if not isinstance(duration, int) or isinstance(duration, bool):
        raise _bad("`duration` must be an integer")
    if duration not in spec.DURATIONS:
        raise _bad(
            f"`duration` must be one of {list(spec.DURATIONS)}, got {duration}",
            spec.ERR_INVALID_DURATION,
        )

    resolution = body.get("resolution", spec.DEFAULT_RESOLUTION)
    if not isinstance(resolution, str):
        raise _bad("`resolution` must be a string")
    if resolution.lower() not in spec.RESOLUTIONS:
        raise _bad(
            f"`resolution` must be one of {list(spec.RESOLUTIONS)}, got {resolution!r}",
            spec.ERR_INVALID_RESOLUTION,
        )

    ratios = []
    for name in ("aspect_ratio", "size"):
        if name in body:
            value = body[name]
            if not isinstance(value, str) or value not in spec.ASPECT_RATIOS:
                raise _bad(f"`{name}` must be one of {list(spec.ASPECT_RATIOS)}, got {value!r}")
            ratios.append(value)
    if len(set(ratios)) > 1:
        raise _bad("`aspect_ratio` and `size` disagree")
    aspect_ratio = ratios[0] if ratios else spec.DEFAULT_ASPECT_RATIO

    image_urls = _string_list(body, "image_urls")
    if len(image_urls) not in spec.IMAGE_COUNTS:
        raise _bad(
            f"{len(image_urls)} images are not supported; send 0, 1 or 3",
            spec.ERR_UNSUPPORTED_IMAGE_COUNT,
        )
    for index, url in enumerate(image_urls):
        if not (_is_http_url(url) or _is_image_data_uri(url)):
            raise _bad(f"`image_urls[{index}]` must be an http(s) URL or a base64 data:image URI")

    video_urls = _string_list(body, "video_urls")
    if len(video_urls) > spec.MAX_VIDEO_URLS:
        raise _bad(f"at most {spec.MAX_VIDEO_URLS} reference video is supported")
    for index, url in enumerate(video_urls):
        if not _is_http_url(url):
            raise _bad(f"`video_urls[{index}]` must be an http(s) URL")

    return SubmitRequest(
        prompt=prompt,
        duration=duration,
        resolution=resolution.lower(),
        aspect_ratio=aspect_ratio,
        image_urls=tuple(image_urls),
        video_urls=tuple(video_urls),
    )


def check_idempotency_key(value: str | None) -> str | None:
    """The key if well-formed (1 to 191 visible ASCII characters); refuses anything else."""
    if value is None:
        return None
    if len(value) > spec.IDEMPOTENCY_KEY_MAX or not _VISIBLE_ASCII.fullmatch(value):
        raise _bad(
            f"Idempotency-Key must be 1 to {spec.IDEMPOTENCY_KEY_MAX} visible ASCII characters"
        )
    return value
