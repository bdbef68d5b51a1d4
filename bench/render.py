"""How long the sandbox takes to render clips: prints seconds, asserts nothing.

uv run python bench/render.py
"""

from __future__ import annotations

import time

from apimart.sandbox.render import _render_cached, render_mp4

SIZES = [(1280, 720, 6), (1920, 1080, 8), (3840, 2160, 10)]


def main() -> None:
    for width, height, seconds in SIZES:
        _render_cached.cache_clear()
        started = time.perf_counter()
        video = render_mp4(width, height, seconds, text=f"bench {width}x{height}")
        elapsed = time.perf_counter() - started
        print(f"{width}x{height} {seconds:>2} s: {elapsed:5.2f} s to render, {len(video):>8} bytes")


if __name__ == "__main__":
    main()
