"""A typed client of the APIMart video-generation API (see shared/apimart-api.md).

Keep the `httpx` logger at WARNING: at INFO it logs full request URLs, and a download link's
query string is its signature.
"""

from apimart.client import AsyncAPIMartClient
from apimart.download import DownloadResult
from apimart.errors import (
    APIMartError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConnectError,
    DownloadError,
    DownloadIntegrityError,
    LinkExpiredError,
    NotFoundError,
    PaymentRequiredError,
    ProtocolError,
    RateLimitError,
    RequestValidationError,
    ServerError,
    SubmitOutcomeUnknown,
    TransportError,
)
from apimart.models import SubmitResult, Task, TaskError, Video, VideoRequest
from apimart.retry import RetryPolicy, no_waits, set_waits

__all__ = [
    "APIMartError",
    "APIStatusError",
    "AsyncAPIMartClient",
    "AuthenticationError",
    "BadRequestError",
    "ConnectError",
    "DownloadError",
    "DownloadIntegrityError",
    "DownloadResult",
    "LinkExpiredError",
    "NotFoundError",
    "PaymentRequiredError",
    "ProtocolError",
    "RateLimitError",
    "RequestValidationError",
    "RetryPolicy",
    "ServerError",
    "SubmitOutcomeUnknown",
    "SubmitResult",
    "Task",
    "TaskError",
    "TransportError",
    "Video",
    "VideoRequest",
    "no_waits",
    "set_waits",
]
