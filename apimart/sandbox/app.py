"""The sandbox as a FastAPI app: the two API routes, the CDN route and test-only controls."""

from __future__ import annotations

import hmac
import time
from typing import Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from apimart import spec
from apimart.sandbox import cdn
from apimart.sandbox.config import Faults, SandboxConfig
from apimart.sandbox.responses import ApiError, error_response, silence_deliberate_drops
from apimart.sandbox.state import SandboxState
from apimart.sandbox.submit import handle_submit

_bearer = HTTPBearer(auto_error=False, description="The API key")

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "code": {"type": "integer"},
        "error": {
            "type": "object",
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}


def _error_doc(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


_SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["model", "prompt"],
                    "properties": {
                        "model": {"type": "string", "enum": [spec.MODEL]},
                        "prompt": {"type": "string", "minLength": 1},
                        "duration": {
                            "type": "integer",
                            "enum": list(spec.DURATIONS),
                            "default": spec.DEFAULT_DURATION,
                        },
                        "resolution": {
                            "type": "string",
                            "description": "case-insensitive: " + ", ".join(spec.RESOLUTIONS),
                            "default": spec.DEFAULT_RESOLUTION,
                        },
                        "aspect_ratio": {
                            "type": "string",
                            "enum": list(spec.ASPECT_RATIOS),
                            "default": spec.DEFAULT_ASPECT_RATIO,
                        },
                        "size": {
                            "type": "string",
                            "enum": list(spec.ASPECT_RATIOS),
                            "description": "legacy alias of aspect_ratio; must agree with it",
                        },
                        "image_urls": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "0, 1 or 3 http(s) URLs or data:image/...;base64 URIs",
                        },
                        "video_urls": {
                            "type": "array",
                            "items": {"type": "string"},
                            "maxItems": spec.MAX_VIDEO_URLS,
                        },
                    },
                }
            }
        },
    }
}


def create_app(config: SandboxConfig, state: SandboxState | None = None) -> FastAPI:
    """The sandbox app. It reads `config` on every request: mutate it, don't replace it."""
    sandbox = state if state is not None else SandboxState()
    silence_deliberate_drops()
    app = FastAPI(
        title="APIMart video API sandbox",
        version="1",
        description="An offline emulator of the APIMart video API and its CDN.",
    )
    app.state.sandbox = sandbox
    app.state.config = config

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else spec.ERR_INVALID_REQUEST
        return error_response(exc.status_code, kind, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(400, spec.ERR_INVALID_REQUEST, "invalid request parameters")

    def authenticate(
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> None:
        given = "" if credentials is None else credentials.credentials
        if not hmac.compare_digest(given.encode(), config.api_key.encode()):
            raise ApiError(401, spec.ERR_AUTHENTICATION, "Invalid or missing API key")

    def count_submit() -> None:
        sandbox.count_submit_request()

    @app.post(
        spec.SUBMIT_PATH,
        summary="Submit a video generation",
        dependencies=[Depends(count_submit), Depends(authenticate)],
        openapi_extra=_SUBMIT_BODY,
        responses={
            400: _error_doc("invalid request (see error.type)"),
            401: _error_doc("authentication_error"),
            402: _error_doc("payment_required"),
            429: _error_doc("rate_limit_error, with Retry-After"),
        },
    )
    async def submit(
        request: Request,
        idempotency_key: str | None = Header(default=None, alias="Idempotency-Key"),
    ) -> Response:
        return await handle_submit(sandbox, config, await request.body(), idempotency_key)

    @app.get(
        spec.TASK_PATH,
        summary="Query a task",
        dependencies=[Depends(authenticate)],
        responses={
            401: _error_doc("authentication_error"),
            404: _error_doc("no such task"),
        },
    )
    async def get_task(
        task_id: str, request: Request, language: str | None = Query(default=None)
    ) -> Response:
        if language is not None and language not in spec.LANGUAGES:
            raise ApiError(400, spec.ERR_INVALID_REQUEST, f"unsupported language {language!r}")
        task = sandbox.get_task(task_id)
        if task is None:
            raise ApiError(404, "not_found_error", f"task {task_id} not found")
        number = sandbox.count_query(task_id)
        if sandbox.fires(
            config.faults.query_5xx,
            "query_5xx",
            task.fault_key,
            number,
            seed=config.seed,
            prompt=task.prompt,
        ):
            raise ApiError(503, "service_unavailable", "The server is busy, try again")
        now = time.time()
        if config.faults.hold_tasks:
            now = min(now, task.created_at + task.end_s - 1e-3)
        data = task.data_at(now, language or "en")
        if data["status"] == spec.STATUS_COMPLETED:
            url = cdn.current_url(sandbox, config, task, now)
            base = config.public_base_url or str(request.base_url)
            link = cdn.public_url(sandbox, base, url)
            data["result"] = {
                "videos": [
                    {
                        "url": [link] if task.url_shape == "list" else link,
                        "expires_at": url.expires_at,
                    }
                ]
            }
        return JSONResponse({"code": 200, "data": data})

    @app.get(
        cdn.CDN_PATH,
        summary="Download a video (signed, expiring CDN link)",
        response_class=Response,
        responses={
            200: {"description": "the video", "content": {"video/mp4": {}}},
            206: {"description": "part of the video (Range)", "content": {"video/mp4": {}}},
            403: {"description": "expired or bad signature", "content": {"application/xml": {}}},
        },
    )
    async def download(
        token: str,
        request: Request,
        expires: str | None = Query(default=None),
        sig: str | None = Query(default=None),
        range_header: str | None = Header(default=None, alias="Range"),
    ) -> Response:
        query = request.url.query
        return await cdn.download(
            sandbox,
            config,
            token,
            expires,
            sig,
            range_header,
            host=request.headers.get("host"),
            path=request.url.path + (f"?{query}" if query else ""),
        )

    @app.get("/_sandbox/stats", include_in_schema=False)
    async def stats() -> dict[str, Any]:
        return sandbox.stats()

    @app.post("/_sandbox/reset", include_in_schema=False)
    async def reset() -> dict[str, Any]:
        sandbox.reset()
        return {"ok": True}

    @app.get("/_sandbox/faults", include_in_schema=False)
    async def get_faults() -> dict[str, Any]:
        return config.faults.to_dict()

    @app.put("/_sandbox/faults", include_in_schema=False)
    async def put_faults(request: Request) -> Response:
        try:
            config.faults = Faults.from_mapping(await request.json())
        except (ValueError, TypeError, AttributeError) as exc:
            return error_response(400, spec.ERR_INVALID_REQUEST, str(exc))
        return JSONResponse(config.faults.to_dict())

    return app
