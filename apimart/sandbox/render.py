"""Real H.264 MP4 files standing in for generated videos.

A client downstream probes, transcodes or shows these files, so they must be genuine: the
exact frame size, the exact duration, yuv420p. They are cheap because the frame rate is low
and the encoder runs at its fastest preset. The text on the frames (task id, prompt start)
and the reference image let a person check which row a file belongs to.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from apimart.sandbox.font import GLYPH_H, GLYPH_W, draw_text, wrap

log = logging.getLogger(__name__)

# Preferred first; the PyAV wheels ship libx264, which the name "h264" also resolves to.
ENCODER_CANDIDATES = ("libx264", "h264", "libopenh264")
TEXT_COLUMNS = 40
MAX_TEXT_LINES = 6

Frame = npt.NDArray[np.uint8]


@functools.cache
def encoder_name() -> str:
    """The first H.264 encoder this PyAV build has."""
    for name in ENCODER_CANDIDATES:
        try:
            av.codec.Codec(name, "w")
        except Exception:
            continue
        return name
    raise RuntimeError("this PyAV build has no H.264 encoder")


def render_mp4(
    width: int,
    height: int,
    duration_s: float,
    *,
    fps: int = 2,
    text: str,
    image: bytes | None = None,
    cache_dir: str | Path | None = None,
) -> bytes:
    """An H.264/yuv420p MP4 of exactly width x height and duration_s seconds.

    Every frame shows `text` (lines split on newlines, wrapped) and, if given, `image` (PNG or
    JPEG bytes) fitted into a centred box; a bar along the bottom grows so the frames differ.
    Results are cached in memory and, with `cache_dir`, on disk.
    """
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"yuv420p needs a positive even frame size, not {width}x{height}")
    if duration_s <= 0 or fps <= 0:
        raise ValueError("duration and fps must be positive")
    if cache_dir is None:
        return _render_cached(width, height, float(duration_s), fps, text, image)
    digest = hashlib.sha256(
        repr((width, height, float(duration_s), fps, text)).encode() + (image or b"")
    ).hexdigest()[:32]
    path = Path(cache_dir) / f"{digest}.mp4"
    if path.exists():
        return path.read_bytes()
    data = _render_cached(width, height, float(duration_s), fps, text, image)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a concurrent reader never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)
    return data


# Small: a 4k clip is a few hundred kB, and a run reuses few distinct videos at once.
@functools.lru_cache(maxsize=16)
def _render_cached(
    width: int, height: int, duration_s: float, fps: int, text: str, image: bytes | None
) -> bytes:
    base = _base_frame(width, height, text, image)
    frame_count = max(1, round(duration_s * fps))
    bar_h = max(4, height // 60)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream(encoder_name(), rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        if encoder_name() == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "30"}
        for index in range(frame_count):
            filled = width * (index + 1) // frame_count
            base[height - bar_h :, :filled] = (250, 200, 40)
            frame = av.VideoFrame.from_ndarray(base, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def _base_frame(width: int, height: int, text: str, image: bytes | None) -> Frame:
    """The still part of every frame: a background tinted by the text, the text, the image."""
    tint = hashlib.sha256(text.encode()).digest()
    top = np.array([tint[0] % 64, tint[1] % 64, 40 + tint[2] % 64], dtype=np.float32)
    bottom = top * 0.35
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)

    margin = max(4, width // 40)
    scale = max(1, (width - 2 * margin) // ((GLYPH_W + 1) * TEXT_COLUMNS))
    line_h = (GLYPH_H + 3) * scale
    y = margin
    lines: list[str] = []
    for paragraph in text.splitlines():
        lines.extend(wrap(paragraph, TEXT_COLUMNS, MAX_TEXT_LINES))
    for line in lines[:MAX_TEXT_LINES]:
        draw_text(frame, line, margin, y, scale, (255, 255, 255))
        y += line_h

    if image is not None:
        box_top = y + margin
        box_bottom = height - margin - max(4, height // 60)
        _paste_image(frame, image, margin, box_top, width - 2 * margin, box_bottom - box_top)
    return frame


def _paste_image(frame: Frame, image: bytes, x: int, y: int, box_w: int, box_h: int) -> None:
    if box_w < 2 or box_h < 2:
        return
    try:
        with av.open(io.BytesIO(image), "r") as container:
            decoded = next(container.decode(video=0))
    except Exception as exc:
        # A reference image we cannot decode must not lose the video: mark the box instead.
        log.warning("sandbox: reference image not decodable (%s)", type(exc).__name__)
        frame[y : y + box_h, x : x + box_w] = (200, 0, 0)
        return
    fit = min(box_w / decoded.width, box_h / decoded.height)
    w = max(2, int(decoded.width * fit))
    h = max(2, int(decoded.height * fit))
    pixels = decoded.reformat(width=w, height=h, format="rgb24").to_ndarray()
    left = x + (box_w - w) // 2
    top = y + (box_h - h) // 2
    frame[top : top + h, left : left + w] = pixels[:h, :w]
