"""Response bodies the sandbox sends: API errors, CDN errors, and bodies that misbehave."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextvars import ContextVar
from html import escape
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

# Set by a response that cuts its body short on purpose, so the filter below can silence
# uvicorn's complaint about it; the server's task context carries it from the app to the log.
_DELIBERATE_DROP: ContextVar[bool] = ContextVar("sandbox_deliberate_drop", default=False)
_INCOMPLETE = "ASGI callable returned without completing response."


class ApiError(Exception):
    """An error answer in the API's shape: {"code": status, "error": {"type", "message"}}."""

    def __init__(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.kind, self.message, self.headers)


def error_body(status: int, kind: str, message: str) -> dict[str, Any]:
    return {"code": status, "error": {"type": kind, "message": message}}


def error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, kind, message), status_code=status, headers=headers)


def cdn_error(status: int, code: str, message: str) -> Response:
    """An object-store style XML error, as CDNs answer for expired or forged links."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>\n"
    )
    return Response(body, status_code=status, media_type="application/xml")


def html_error_page() -> Response:
    """The 200 text/html page a misconfigured CDN edge serves instead of the video."""
    body = (
        "<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>"
        "<body><h1>Service temporarily unavailable</h1>"
        "<p>The origin did not answer in time. Please try again later.</p></body></html>\n"
    )
    return Response(body, status_code=200, media_type="text/html")


class BytesResponse(Response):
    """A body with an honest Content-Length that may be sent slowly or cut short.

    `stop_after` sends only that many bytes and then drops the connection, so the client
    sees a protocol error after the headers promised more. `bytes_per_s` trickles the body.
    """

    def __init__(
        self,
        content: bytes,
        *,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        media_type: str | None = None,
        stop_after: int | None = None,
        bytes_per_s: int | None = None,
        on_sent: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(content, status_code=status_code, headers=headers, media_type=media_type)
        self.stop_after = stop_after
        self.bytes_per_s = bytes_per_s
        self.on_sent = on_sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        body = bytes(self.body)
        end = len(body) if self.stop_after is None else min(self.stop_after, len(body))
        chunk = 256 * 1024
        if self.bytes_per_s:
            chunk = max(1, min(chunk, self.bytes_per_s // 10))
        position = 0
        while position < end:
            piece = body[position : min(position + chunk, end)]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            position += len(piece)
            if self.on_sent is not None:
                self.on_sent(len(piece))
            if self.bytes_per_s:
                await asyncio.sleep(len(piece) / self.bytes_per_s)
        if self.stop_after is not None:
            _DELIBERATE_DROP.set(True)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _DropNoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.getMessage() == _INCOMPLETE and _DELIBERATE_DROP.get())


_FILTER = _DropNoiseFilter()


def silence_deliberate_drops() -> None:
    """Keep uvicorn from logging an error for each connection the sandbox drops on purpose."""
    logger = logging.getLogger("uvicorn.error")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
