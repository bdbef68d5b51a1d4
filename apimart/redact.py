"""Every form a secret can take in text, and the scrubbing of all of them (stdlib only).

A key rarely leaks as itself: an HTTP library quotes the header as a bytes repr
(`b'Bearer sk-a\\nsk-b'`), a JSON body escapes it, a URL percent-encodes it, a header dump
base64-encodes `Bearer <key>`. Redaction that looks only for the raw key misses all of those,
so `secret_forms` lists them once and `scrub` (and the logging filter) removes every one.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "<redacted>"

# Parts of a secret (one line of it, a base64 run cut from longer text) shorter than this are
# not scrubbed on their own: they would blank ordinary words without hiding anything.
MIN_PART = 4

# A URL with a query: signed download links carry their credential there.
_SIGNED_QUERY = re.compile(r"(https?://[^\s?#'\"]+)\?[^\s'\"]*")


def _escapes(text: str) -> set[str]:
    """The ways a program quotes `text` inside another string."""
    forms = {
        text,
        repr(text)[1:-1],
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
        text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t"),
        quote(text, safe=""),
        quote(text),
        quote_plus(text),
    }
    raw = text.encode("utf-8", "backslashreplace")
    forms.add(repr(raw)[2:-1])  # how h11 and httpx quote a header value
    # Escaped twice: a repr inside a JSON log line, or JSON inside JSON.
    forms |= {json.dumps(form)[1:-1] for form in list(forms)}
    return forms


def _base64_runs(data: bytes) -> set[str]:
    """The base64 text `data` yields wherever it starts in a longer encoded string.

    Base64 works in 3-byte groups, so the characters that encode `data` depend on its offset
    (mod 3) in the whole: for each offset, the characters fully fixed by `data` alone.
    """
    runs: set[str] = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data).decode("ascii")
        whole_groups = (shift + len(data)) // 3
        core = encoded[: 4 * whole_groups][(0, 2, 3)[shift] :]
        if len(core) >= MIN_PART:
            runs |= {core, core.translate(str.maketrans("+/", "-_"))}
    for full in (base64.b64encode(data), base64.urlsafe_b64encode(data)):
        text = full.decode("ascii")
        runs |= {text, text.rstrip("=")}
    return runs


def secret_forms(secret: str) -> list[str]:
    """Every form in which `secret` can appear in text, longest first.

    Raw and stripped; its repr, bytes repr and JSON escapes (once and twice); percent-encoded
    (`quote`, `quote_plus`); base64 of the key and of `Bearer <key>` at any alignment; and,
    for a key that spans lines, each line of it.
    """
    if not secret:
        return []
    forms: set[str] = set()
    stripped = secret.strip()
    for value in {secret, stripped} - {""}:
        forms |= _escapes(value)
        for data in (value.encode("utf-8", "backslashreplace"), f"Bearer {value}".encode()):
            forms |= _base64_runs(data)
    lines = [line.strip() for line in re.split(r"[\r\n]+", secret)]
    for line in lines:
        if len(line) >= MIN_PART and line != stripped:
            forms |= _escapes(line)
    forms.discard("")
    return sorted(forms, key=lambda form: (-len(form), form))


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every form of every secret replaced by `<redacted>`."""
    forms = sorted(
        {form for secret in secrets if secret for form in secret_forms(secret)},
        key=len,
        reverse=True,
    )
    for form in forms:
        if form in text:
            text = text.replace(form, REDACTED)
    return text


def scrub_signed_urls(text: str) -> str:
    """`text` with the query of every http(s) URL in it replaced by `<redacted>`."""
    return _SIGNED_QUERY.sub(rf"\1?{REDACTED}", text)


class RedactingFilter(logging.Filter):
    """Scrubs every form of the secrets, and signed-URL queries, from each record it passes.

    The message, the formatted traceback and the stack are all scrubbed: an exception logged
    with `exc_info` carries its own text (and its causes'), which the message alone does not.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]
        self._forms = sorted(
            {form for secret in self.secrets for form in secret_forms(secret)},
            key=len,
            reverse=True,
        )

    def scrub(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        return scrub_signed_urls(text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            clean = self.scrub(record.exc_text)
            if clean != record.exc_text:
                # A handler that renders exc_info itself would bring the secret back.
                record.exc_text, record.exc_info = clean, None
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


# Loggers whose handlers get the filter: the root, Prefect's run loggers, and ours.
REDACTED_LOGGERS = (
    "",
    "prefect",
    "prefect.flow_runs",
    "prefect.task_runs",
    "videobatch",
    "apimart",
)


def install_redaction(*secrets: str | None) -> RedactingFilter:
    """Attach one redacting filter to every handler of the root, Prefect and our loggers.

    Installing again replaces the previous filter. httpx logs full request URLs at INFO, so
    the httpx and httpcore loggers are held at WARNING as well.
    """
    flt = RedactingFilter(secrets)
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in REDACTED_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.filters = [f for f in handler.filters if not _ours(f)]
            handler.addFilter(flt)
    return flt


def _ours(flt: object) -> bool:
    # tasks/run/runtime.py has had a filter of the same name: either one is replaced, not stacked.
    return type(flt).__name__ == "RedactingFilter"
