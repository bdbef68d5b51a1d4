"""render_mp4 makes genuine H.264 files of the exact size and length (speed: bench/render.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sandbox_testkit import first_frame, png_bytes, probe

from apimart.sandbox import render_mp4
from apimart.sandbox.font import text_mask, wrap
from apimart.sandbox.render import _render_cached, encoder_name


def test_an_h264_encoder_is_available() -> None:
    """PyAV here has an H.264 encoder to render with."""
    assert encoder_name() in ("libx264", "h264", "libopenh264")


@pytest.mark.parametrize(
    ("width", "height", "duration", "fps"),
    [(1280, 720, 4, 2), (720, 1280, 8, 2), (1920, 1080, 6, 5), (64, 36, 10, 1)],
)
def test_exact_size_and_duration(width: int, height: int, duration: int, fps: int) -> None:
    """Rendered videos have exactly the asked size and duration, H.264 in yuv420p."""
    video = render_mp4(width, height, duration, fps=fps, text=f"size test {width}x{height}")
    assert probe(video) == (width, height, pytest.approx(duration, abs=0.01), "h264", "yuv420p")


def test_4k_ten_seconds_renders_a_decodable_clip() -> None:
    """A 4k 10 s clip with an image renders to a decodable H.264 file of that size."""
    video = render_mp4(3840, 2160, 10, text="4k clip", image=png_bytes())
    assert probe(video)[:2] == (3840, 2160)


def test_cached_in_memory_and_on_disk(tmp_path: Path) -> None:
    """A render is reused from memory and from the disk cache without encoding again."""
    args = (640, 360, 4)
    first = render_mp4(*args, text="cache me", cache_dir=tmp_path)
    assert list(tmp_path.glob("*.mp4"))
    cached = next(tmp_path.glob("*.mp4"))
    written = cached.stat().st_mtime_ns
    _render_cached.cache_clear()  # the disk copy alone must answer, without encoding again
    assert render_mp4(*args, text="cache me", cache_dir=tmp_path) == first
    assert cached.stat().st_mtime_ns == written
    assert _render_cached.cache_info().misses == 0
    assert render_mp4(*args, text="cache me") == first
    assert render_mp4(*args, text="cache me") == first
    assert _render_cached.cache_info().hits >= 1


def test_text_changes_the_first_frame() -> None:
    """The text drawn on the first frame differs per task, in white near the top left."""
    a = first_frame(render_mp4(640, 360, 4, text="TASK_A"))
    b = first_frame(render_mp4(640, 360, 4, text="TASK_B"))
    assert not np.array_equal(a, b)
    # White text is drawn near the top-left corner.
    assert (a[:60, :300] > 200).all(axis=2).any()


def test_undecodable_image_still_renders() -> None:
    """A reference image that does not decode still gives a video."""
    video = render_mp4(640, 360, 4, text="bad image", image=b"not an image")
    assert probe(video)[:2] == (640, 360)


def test_odd_sizes_are_refused() -> None:
    """An odd frame size (H.264 needs even ones) is refused."""
    with pytest.raises(ValueError):
        render_mp4(641, 360, 4, text="odd")


def test_font_and_wrap() -> None:
    """The built-in font has its size and fallbacks; long text wraps and is cut with an ellipsis."""
    assert text_mask("AB", 2).shape == (14, 24)
    assert text_mask("a", 1).tolist() == text_mask("A", 1).tolist()
    assert text_mask("~", 1).tolist() == text_mask("?", 1).tolist()
    assert wrap("one two three four", 9, 5) == ["one two", "three", "four"]
    assert wrap("x" * 25, 10, 2) == ["x" * 10, "xxxxxxx..."]
