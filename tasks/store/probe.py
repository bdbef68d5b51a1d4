"""What a downloaded MP4 really is, according to PyAV: it decodes, and its size and length."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from tasks.errors import VideoUnreadable

# Encoders round durations to whole frames and containers pad a little: be lenient by this much.
DURATION_TOLERANCE_S = 0.6


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    duration_s: float
    frames: int
    codec: str

    def mismatch(self, width: int, height: int, duration_s: float) -> str | None:
        """Why this video is not what the row asked for, or None."""
        problems = []
        if (self.width, self.height) != (width, height):
            problems.append(f"frame {self.width}x{self.height}, asked {width}x{height}")
        if abs(self.duration_s - duration_s) > max(DURATION_TOLERANCE_S, 0.1 * duration_s):
            problems.append(f"duration {self.duration_s:.2f}s, asked {duration_s}s")
        return "; ".join(problems) or None


def probe_video(path: Path) -> VideoInfo:
    """Decode every frame (a file that only half decodes is not a video we keep quietly)."""
    try:
        with _open_for_decoding(path) as container:
            if not container.streams.video:
                raise VideoUnreadable(f"{path.name}: no video stream")
            stream = container.streams.video[0]
            # One decoding thread: PyAV's default is slice threading on every core, and an
            # encoder's one-slice frames give those threads nothing to share, so each video
            # paid for starting them (~7 % of its decode); videos are probed side by side.
            stream.codec_context.thread_count = 1
            frames = sum(1 for _ in container.decode(stream))
            if frames == 0:
                raise VideoUnreadable(f"{path.name}: no frame decodes")
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            else:
                rate = float(stream.average_rate or 0)
                duration = frames / rate if rate else 0.0
            return VideoInfo(
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                duration_s=round(duration, 3),
                frames=frames,
                codec=stream.codec_context.name,
            )
    except av.FFmpegError as exc:
        raise VideoUnreadable(f"{path.name}: {exc}") from exc


# Opening a file runs avformat_find_stream_info, which decodes frames only to learn what an MP4
# header already says; skipping that decode (not ours: every frame is still decoded by the
# stream's own decoder afterwards) makes a 4K thumbnail ~3x cheaper and a probe ~10 %.
_SKIP_PROBE_DECODE = [{"skip_frame": "all"}] * 8


def _open_for_decoding(path: Path) -> av.container.InputContainer:
    try:
        # PyAV's stub says list[str]; the runtime takes one option dict per stream.
        return av.open(str(path), stream_options=_SKIP_PROBE_DECODE)  # type: ignore[arg-type]
    except ValueError:
        # Formats that only reveal their streams while probing refuse per-stream options.
        return av.open(str(path))


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    width: int
    height: int
    mime: str = "image/jpeg"


def first_frame_thumbnail(path: Path, *, width: int = 320, quality: int = 4) -> Thumbnail:
    """The first frame as a small JPEG (for contact sheets).

    JPEG, not PNG: real video frames are noisy, and a thousand PNG thumbnails made a report
    of ~50 MB where JPEG keeps it to a few MB.
    """
    with _open_for_decoding(path) as container:
        frame = next(container.decode(video=0))
    height = max(2, round(frame.height * width / frame.width / 2) * 2)
    small = frame.reformat(width=width, height=height, format="yuvj420p")
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuvj420p"
    codec.time_base = Fraction(1, 25)
    codec.options = {"qscale": str(quality)}
    packets = [*codec.encode(small), *codec.encode(None)]
    return Thumbnail(b"".join(bytes(p) for p in packets), width, height)
