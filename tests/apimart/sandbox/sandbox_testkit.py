"""Helpers shared by the sandbox's own tests (imported by name: tests/ has no packages).

`unique` comes from tests/support/ and is re-exported here.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import av
import httpx
import numpy as np
from support.names import unique as unique

from apimart import spec
from apimart.sandbox import RunningSandbox

# Tasks take 180-300 s at scale 1, so 0.18-0.3 s here.
FAST = 0.001


def png_bytes(
    width: int = 64, height: int = 48, color: tuple[int, int, int] = (255, 0, 0)
) -> bytes:
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:] = color
    pixels[:, : width // 2] = (0, 255, 0)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="image2pipe") as container:
        stream = container.add_stream("png", rate=1)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def data_uri(image: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64,{base64.b64encode(image).decode()}"


def body(**fields: Any) -> dict[str, Any]:
    """A valid submit body, with `fields` overriding or adding (None removes a field)."""
    result: dict[str, Any] = {"model": spec.MODEL, "prompt": unique()}
    for name, value in fields.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def probe(video: bytes) -> tuple[int, int, float, str, str]:
    """(width, height, duration s, codec, pixel format) of an MP4, decoded for real."""
    with av.open(io.BytesIO(video), "r") as container:
        stream = container.streams.video[0]
        frame = next(container.decode(video=0))
        assert container.duration is not None
        return (
            frame.width,
            frame.height,
            container.duration / 1_000_000,
            stream.codec_context.name,
            frame.format.name,
        )


def first_frame(video: bytes) -> np.ndarray[Any, Any]:
    with av.open(io.BytesIO(video), "r") as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


class Api:
    """Thin helpers over one httpx client authorised against one sandbox."""

    def __init__(self, sb: RunningSandbox, client: httpx.Client) -> None:
        self.sb = sb
        self.http = client

    def submit(self, key: str | None = None, **fields: Any) -> httpx.Response:
        headers = {} if key is None else {"Idempotency-Key": key}
        return self.http.post(spec.SUBMIT_PATH, json=body(**fields), headers=headers)

    def submit_body(self, payload: Any, key: str | None = None) -> httpx.Response:
        headers = {} if key is None else {"Idempotency-Key": key}
        return self.http.post(spec.SUBMIT_PATH, json=payload, headers=headers)

    @staticmethod
    def task_id(response: httpx.Response) -> str:
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        return str(data[0]["task_id"] if isinstance(data, list) else data["id"])

    def create(self, **fields: Any) -> str:
        return self.task_id(self.submit(**fields))

    def get(self, task_id: str, **params: str) -> httpx.Response:
        return self.http.get(spec.TASK_PATH.format(task_id=task_id), params=params)

    def wait(self, task_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """Poll until the task is terminal; returns its data."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.get(task_id)
            if response.status_code == 200:
                data: dict[str, Any] = response.json()["data"]
                if data["status"] in spec.TERMINAL_STATUSES:
                    return data
            time.sleep(0.02)
        raise AssertionError(f"{task_id} did not finish in {timeout} s")

    @staticmethod
    def video_url(data: dict[str, Any]) -> str:
        url = data["result"]["videos"][0]["url"]
        return str(url[0] if isinstance(url, list) else url)

    def completed_url(self, **fields: Any) -> tuple[str, dict[str, Any]]:
        data = self.wait(self.create(**fields))
        assert data["status"] == spec.STATUS_COMPLETED, data
        return self.video_url(data), data

    def download(self, url: str, **headers: str) -> httpx.Response:
        # No auth on the CDN: a fresh client proves the link alone is enough.
        return httpx.get(url, headers=headers, timeout=10)
