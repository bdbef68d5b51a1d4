"""Typed request and answers of the APIMart video API.

`VideoRequest` holds a request that is known to be valid: building one checks every documented
rule and raises one `RequestValidationError` naming every broken field, before any network call.
`Task` and `SubmitResult` parse the API's answers, tolerant of the shapes its docs disagree on.

An image of a request may be a `LocalImage`: a file checked once (by whoever built the
request) and held by reference, so a run of 100,000 rows never holds their base64. Such a
request keeps its images in an `ImageUrls`, which reads each file when its entry is read and
refuses a file that changed since it was checked; `VideoRequest.inlined()` reads them all at
once, which is what a sender does right before it commits to a POST.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload
from urllib.parse import urlsplit

from apimart import spec
from apimart.errors import ProtocolError, RequestValidationError, redact_url

# Used with fullmatch: a whole-string rule must not let `$` stop before a trailing newline.
_DATA_URI = re.compile(r"data:image/([A-Za-z0-9.+-]+);base64,(.*)", re.DOTALL)


def image_url_problem(url: object) -> str | None:
    """Why this image_urls entry is unacceptable, or None when it is fine."""
    if not isinstance(url, str) or not url:
        return "each entry must be a non-empty string"
    if url[:8].lower().startswith(("http://", "https://")):
        return None if is_http_url(url) else "URL has no host"
    match = _DATA_URI.fullmatch(url)
    if match is None:
        return "each entry must be an http(s) URL or a data:image/<type>;base64,... URI"
    try:
        payload = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        return "data URI is not valid base64"
    return None if payload else "data URI is empty"


IMAGE_KINDS = ("png", "jpeg", "webp")
_CHANGED = "the image changed after the manifest was checked"


@dataclass(frozen=True, slots=True)
class LocalImage:
    """A local image file a request sends inline, held by reference until it is sent.

    `path` has no symlinks left (it was resolved when the file was checked); `sha256` is the
    digest of the data URI text the file became then, which is what a request's fingerprint
    hashes for an image, the same as for a data URI held in memory.
    """

    path: str
    kind: str
    size: int
    sha256: str

    @property
    def prefix(self) -> str:
        return f"data:image/{self.kind};base64,"

    def data_uri(self) -> str:
        """The file's data URI, read now; RequestValidationError if it changed since."""
        uri, why = self.read()
        if uri is None:
            raise RequestValidationError({"image_urls": f"{self.path}: {why}"})
        return uri

    def read(self) -> tuple[str | None, str]:
        """(data URI, "") when the file is still what was checked, else (None, why not)."""
        # O_NOFOLLOW: a symlink swapped in since the check is not followed.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return None, f"{_CHANGED} (the file is gone)"
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or exc
            return None, f"{_CHANGED} (it cannot be read: {why})"
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None, f"{_CHANGED} (it is no longer a file)"
            if info.st_size != self.size:
                return None, f"{_CHANGED} (it was {self.size} bytes, now {info.st_size})"
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read(self.size + 1)
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or exc
            return None, f"{_CHANGED} (it cannot be read: {why})"
        finally:
            os.close(fd)
        uri = self.prefix + base64.b64encode(data).decode("ascii")
        if len(data) != self.size or hashlib.sha256(uri.encode()).hexdigest() != self.sha256:
            return None, f"{_CHANGED} (its content differs)"
        return uri, ""


def local_image_problem(image: LocalImage) -> str | None:
    """Why a LocalImage cannot stand for an image (judged without reading the file)."""
    if image.kind not in IMAGE_KINDS:
        return f"a local image must be one of {', '.join(IMAGE_KINDS)}, got {image.kind!r}"
    if image.size <= 0 or not os.path.isabs(image.path) or len(image.sha256) != 64:
        return "a local image needs an absolute path, its size and its digest"
    return None


class ImageUrls(Sequence[str]):
    """The images of a request as the API receives them, local files held by reference.

    `sources` holds what was given: strings (URLs, data URIs) as they are, local files as
    `LocalImage`. Reading an entry (indexing, iterating) reads its file, checked unchanged,
    so code that wants the data URIs gets them while nothing holds them for long; `len` and
    equality never touch a file.
    """

    __slots__ = ("sources",)

    def __init__(self, sources: Iterable[str | LocalImage]) -> None:
        self.sources: tuple[str | LocalImage, ...] = tuple(sources)

    def __len__(self) -> int:
        return len(self.sources)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...

    def __getitem__(self, index: int | slice) -> str | tuple[str, ...]:
        if isinstance(index, slice):
            return tuple(_inline(source) for source in self.sources[index])
        return _inline(self.sources[index])

    def __iter__(self) -> Iterator[str]:
        return (_inline(source) for source in self.sources)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ImageUrls):
            return self.sources == other.sources
        if isinstance(other, tuple | list):
            return len(other) == len(self) and tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.sources)

    def __repr__(self) -> str:
        local = sum(isinstance(source, LocalImage) for source in self.sources)
        return f"ImageUrls({len(self.sources)} images, {local} local files)"


def _inline(source: str | LocalImage) -> str:
    return source.data_uri() if isinstance(source, LocalImage) else source


def image_sources(images: Sequence[str]) -> tuple[str | LocalImage, ...]:
    """What an image_urls value holds, without reading any file."""
    return images.sources if isinstance(images, ImageUrls) else tuple(images)


def _image_urls(values: Iterable[object]) -> Sequence[Any]:
    """A plain tuple, unless a local file is among them (then an ImageUrls)."""
    if isinstance(values, ImageUrls):
        return values  # iterating it would read every file
    items = tuple(values)
    if any(isinstance(item, LocalImage) for item in items):
        return ImageUrls(items)  # type: ignore[arg-type]  # other entries are judged later
    return items


def is_http_url(value: object) -> bool:
    """An http(s) URL with a host (`http:///x` and `https://` have none)."""
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class VideoRequest:
    """One valid generation request, normalised (resolution lower-case, defaults filled)."""

    prompt: str
    duration: int = spec.DEFAULT_DURATION
    resolution: str = spec.DEFAULT_RESOLUTION
    aspect_ratio: str = spec.DEFAULT_ASPECT_RATIO
    # A tuple, or an ImageUrls when local files are among the images (see the module).
    image_urls: Sequence[str] = ()
    video_urls: tuple[str, ...] = ()
    model: str = spec.MODEL

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_urls", _image_urls(self.image_urls))
        problems = _problems(self)
        if problems:
            raise RequestValidationError(problems)

    @classmethod
    def build(
        cls,
        *,
        prompt: object,
        duration: object = None,
        resolution: object = None,
        aspect_ratio: object = None,
        size: object = None,
        image_urls: Iterable[object] | None = None,
        video_urls: Iterable[object] | None = None,
        model: object = None,
    ) -> VideoRequest:
        """Normalise loose input (None means the API default) and validate it all at once."""
        problems: dict[str, str] = {}
        if aspect_ratio is not None and size is not None and aspect_ratio != size:
            problems["aspect_ratio"] = (
                f"conflicts with size ({aspect_ratio!r} != {size!r}); send one or make them agree"
            )
        ratio = aspect_ratio if aspect_ratio is not None else size
        if isinstance(resolution, str):
            resolution = resolution.strip().lower()
        candidate: dict[str, Any] = {
            "prompt": prompt,
            "duration": spec.DEFAULT_DURATION if duration is None else duration,
            "resolution": spec.DEFAULT_RESOLUTION if resolution is None else resolution,
            "aspect_ratio": spec.DEFAULT_ASPECT_RATIO if ratio is None else ratio,
            "image_urls": _image_urls(image_urls or ()),
            "video_urls": tuple(video_urls or ()),
            "model": spec.MODEL if model is None else model,
        }
        problems.update(_field_problems(candidate))
        if problems:
            raise RequestValidationError(problems)
        # Checked just above: skip __post_init__'s second check (a 100,000-row manifest
        # would pay for every rule twice).
        request = object.__new__(cls)
        for name, value in candidate.items():
            object.__setattr__(request, name, value)
        return request

    @property
    def has_local_images(self) -> bool:
        """Whether sending this request reads files (see `inlined`)."""
        return isinstance(self.image_urls, ImageUrls)

    def inlined(self) -> VideoRequest:
        """This request with every local image read into its data URI, as it is POSTed.

        Raises RequestValidationError naming the entry and the file when a file is gone or
        differs from what was checked: the request it would send is not the one fingerprinted.
        """
        if not isinstance(self.image_urls, ImageUrls):
            return self
        urls: list[str] = []
        for number, source in enumerate(self.image_urls.sources, start=1):
            if isinstance(source, LocalImage):
                uri, why = source.read()
                if uri is None:
                    raise RequestValidationError(
                        {"image_urls": f"entry {number} ({source.path}): {why}"}
                    )
                urls.append(uri)
            else:
                urls.append(source)
        # Every rule was checked when this request was built; the bytes are those checked.
        request = object.__new__(VideoRequest)
        for name in self.__dataclass_fields__:
            object.__setattr__(request, name, getattr(self, name))
        object.__setattr__(request, "image_urls", tuple(urls))
        return request

    def to_payload(self, *, images: bool = True) -> dict[str, Any]:
        """The JSON body of POST /v1/videos/generations (local images read now).

        `images=False` leaves `image_urls` out, reading no file.
        """
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": self.prompt,
            "duration": self.duration,
            "resolution": self.resolution,
            "aspect_ratio": self.aspect_ratio,
        }
        if images and self.image_urls:
            body["image_urls"] = list(self.image_urls)
        if self.video_urls:
            body["video_urls"] = list(self.video_urls)
        return body

    @property
    def frame_size(self) -> tuple[int, int]:
        return spec.frame_size(self.resolution, self.aspect_ratio)

    def __repr__(self) -> str:
        # Data URIs can be megabytes: show how many images, not their bytes.
        return (
            f"VideoRequest(prompt={self.prompt[:40]!r}, duration={self.duration}, "
            f"resolution={self.resolution!r}, aspect_ratio={self.aspect_ratio!r}, "
            f"images={len(self.image_urls)}, videos={len(self.video_urls)})"
        )


def _problems(request: VideoRequest) -> dict[str, str]:
    return _field_problems(
        {
            "prompt": request.prompt,
            "duration": request.duration,
            "resolution": request.resolution,
            "aspect_ratio": request.aspect_ratio,
            "image_urls": request.image_urls,
            "video_urls": request.video_urls,
            "model": request.model,
        }
    )


def _field_problems(values: Mapping[str, Any]) -> dict[str, str]:
    problems: dict[str, str] = {}
    if values["model"] != spec.MODEL:
        problems["model"] = f"must be {spec.MODEL!r}, got {values['model']!r}"
    prompt = values["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        problems["prompt"] = "must be a non-empty string"
    duration = values["duration"]
    if not _is_int(duration) or duration not in spec.DURATIONS:
        problems["duration"] = f"must be one of {list(spec.DURATIONS)} seconds, got {duration!r}"
    if values["resolution"] not in spec.RESOLUTIONS:
        problems["resolution"] = (
            f"must be one of {', '.join(spec.RESOLUTIONS)} (any case), got {values['resolution']!r}"
        )
    if values["aspect_ratio"] not in spec.ASPECT_RATIOS:
        problems["aspect_ratio"] = (
            f"must be one of {', '.join(spec.ASPECT_RATIOS)}, got {values['aspect_ratio']!r}"
        )
    images = values["image_urls"]
    if len(images) not in spec.IMAGE_COUNTS:
        problems["image_urls"] = (
            f"must hold 0, 1 or 3 images (text-to-video, image-to-video, reference fusion), "
            f"got {len(images)}"
        )
    else:
        for index, url in enumerate(image_sources(images)):
            why = (
                local_image_problem(url) if isinstance(url, LocalImage) else image_url_problem(url)
            )
            if why:
                problems["image_urls"] = f"entry {index + 1}: {why}"
                break
    videos = values["video_urls"]
    if len(videos) > spec.MAX_VIDEO_URLS:
        problems["video_urls"] = f"at most {spec.MAX_VIDEO_URLS} reference video, got {len(videos)}"
    elif not all(is_http_url(v) for v in videos):
        problems["video_urls"] = "each entry must be a public http(s) URL"
    return problems


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What the API said when it accepted a submission."""

    task_id: str
    status: str
    estimated_time: float | None = None

    @classmethod
    def from_body(cls, body: object) -> SubmitResult:
        """Accept both documented shapes: `data` as a one-item list or as an object."""
        data = _data_object(body, "submit answer has no task in `data`")
        task_id = data.get("task_id") or data.get("id")
        if not isinstance(task_id, str) or not task_id:
            raise ProtocolError("submit answer has no task id")
        info = data.get("task_info")
        estimated = info.get("estimated_time") if isinstance(info, dict) else None
        return cls(
            task_id=task_id,
            status=str(data.get("status") or spec.STATUS_SUBMITTED),
            estimated_time=_number(estimated),
        )


@dataclass(frozen=True, slots=True)
class Video:
    """A downloadable result. The URL is a credential: it is kept out of repr."""

    url: str = field(repr=False)
    expires_at: float | None = None

    def __repr__(self) -> str:
        return f"Video(url={redact_url(self.url)!r}, expires_at={self.expires_at})"


@dataclass(frozen=True, slots=True)
class TaskError:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Task:
    """The state of a task, as GET /v1/tasks/{id} reports it."""

    id: str
    status: str
    progress: int = 0
    created: float | None = None
    completed: float | None = None
    estimated_time: float | None = None
    actual_time: float | None = None
    cost: float | None = None
    videos: tuple[Video, ...] = ()
    error: TaskError | None = None

    @property
    def is_known_status(self) -> bool:
        return self.status in spec.KNOWN_STATUSES

    @property
    def is_terminal(self) -> bool:
        """Unknown statuses count as still running (the spec asks us to keep waiting)."""
        return self.status in spec.TERMINAL_STATUSES

    @classmethod
    def from_body(cls, body: object) -> Task:
        data = _data_object(body, "task answer has no `data` object")
        task_id = data.get("id") or data.get("task_id")
        status = data.get("status")
        if not isinstance(task_id, str) or not isinstance(status, str) or not status:
            raise ProtocolError("task answer lacks an id or a status")
        return cls(
            id=task_id,
            status=status.lower(),
            progress=int(_number(data.get("progress")) or 0),
            created=_number(data.get("created")),
            completed=_number(data.get("completed")),
            estimated_time=_number(data.get("estimated_time")),
            actual_time=_number(data.get("actual_time")),
            cost=_number(data.get("cost")),
            videos=_videos(data.get("result")),
            error=_task_error(data.get("error")),
        )


def _data_object(body: object, missing: str) -> dict[str, Any]:
    """The answer's `data`, whether the API sent it as an object or as a one-item list."""
    data = body.get("data") if isinstance(body, dict) else None
    if isinstance(data, list) and data:
        data = data[0]
    if not isinstance(data, dict):
        raise ProtocolError(missing)
    return data


def _number(value: object) -> float | None:
    """A finite number, or None: "NaN" or "Infinity" must never reach a budget."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _videos(result: object) -> tuple[Video, ...]:
    """`url` is a list of strings in one documented example and a string in another."""
    if not isinstance(result, dict):
        return ()
    videos: list[Video] = []
    for item in result.get("videos") or ():
        if not isinstance(item, dict):
            continue
        urls = item.get("url")
        candidates = urls if isinstance(urls, list) else [urls]
        expires = _number(item.get("expires_at"))
        videos.extend(Video(url=u, expires_at=expires) for u in candidates if isinstance(u, str))
    return tuple(videos)


def _task_error(error: object) -> TaskError | None:
    if isinstance(error, dict):
        return TaskError(
            code=str(error.get("code") or error.get("type") or "task_failed"),
            message=str(error.get("message") or ""),
        )
    if isinstance(error, str) and error:
        return TaskError(code="task_failed", message=error)
    return None
