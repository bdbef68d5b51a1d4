"""VideoRequest.build and the sandbox agree: what one accepts the other accepts, and what one
refuses the other refuses with a 400. Examples lean on the edges of every documented rule."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from apimart_testkit import API_KEY, Sandbox, client_for, instant
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from apimart import RequestValidationError, VideoRequest, spec

PNG = "data:image/png;base64,iVBORw0KGgo="
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)

URLS = [
    "https://img.example/a.png",
    "http://img.example/b.jpg",
    "HTTPS://IMG.EXAMPLE/C.PNG",
    "http://a",
    "https://",
    "http://",
    "http:///nohost",
    "ftp://img.example/a.png",
    "img.example/a.png",
    PNG,
    "data:image/jpeg;base64,/9j/4AAQ",
    "data:image/png;base64,",
    "data:image/png;base64,!!!!",
    "data:text/plain;base64,aGk=",
    "",
]


GOOD_URLS = [u for u in URLS[:4]] + [PNG, "data:image/jpeg;base64,/9j/4AAQ"]


def maybe(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), values)


# Per field: values the docs allow (in every spelling build accepts), and anything at all.
VALID: dict[str, st.SearchStrategy[Any]] = {
    "prompt": st.one_of(st.sampled_from(["a fox", "雪の中の狐", " x "]), TEXT.filter(str.strip)),
    "duration": maybe(st.sampled_from(spec.DURATIONS)),
    "resolution": maybe(st.sampled_from(["720p", "1080p", "4k", "720P", "4K", " 1080p "])),
    "aspect_ratio": maybe(st.sampled_from(spec.ASPECT_RATIOS)),
    "size": st.none(),
    "image_urls": maybe(
        st.sampled_from(spec.IMAGE_COUNTS).flatmap(
            lambda n: st.lists(st.sampled_from(GOOD_URLS), min_size=n, max_size=n)
        )
    ),
    "video_urls": maybe(st.lists(st.sampled_from(GOOD_URLS[:3]), max_size=1)),
    "model": maybe(st.just(spec.MODEL)),
}
WILD: dict[str, st.SearchStrategy[Any]] = {
    "prompt": st.one_of(st.sampled_from(["", "   ", "\n\t"]), TEXT, st.integers()),
    "duration": st.one_of(
        st.sampled_from([5, 7, 0, -4, 6.0, "6", True, None]), st.integers(-2, 12)
    ),
    "resolution": st.one_of(
        st.sampled_from(["2k", "720", "", "1080i", None]), st.integers(0, 2000), TEXT
    ),
    "aspect_ratio": st.sampled_from(["16:9", "9:16", "4:3", "", "16:9 ", "1:1", None]),
    "size": st.sampled_from(["16:9", "9:16", "4:3", "", None]),
    "image_urls": maybe(st.lists(st.one_of(st.sampled_from(URLS), st.integers()), max_size=4)),
    "video_urls": maybe(st.lists(st.sampled_from(URLS), max_size=2)),
    "model": st.sampled_from([spec.MODEL, "omni-flash-ext", "", "Omni-Flash", None]),
}


@st.composite
def build_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly valid rows with a few fields (often none) drawn from anything at all, so both
    sides of the rule are explored, near its edges."""
    wild = draw(st.sets(st.sampled_from(sorted(VALID)), max_size=3))
    return {name: draw(WILD[name] if name in wild else VALID[name]) for name in VALID}


_keys = itertools.count()


@pytest.fixture(scope="module")
def raw(sandbox: Sandbox) -> Iterator[httpx.Client]:
    """A plain HTTP client of the sandbox, independent of ours, to send what build refuses."""
    with httpx.Client(base_url=sandbox.url, headers={"Authorization": f"Bearer {API_KEY}"}) as raw:
        yield raw


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(kwargs=build_kwargs())
async def test_build_and_sandbox_agree(
    sandbox: Sandbox, raw: httpx.Client, kwargs: dict[str, Any]
) -> None:
    """What VideoRequest.build accepts the sandbox accepts, and what it refuses earns a 400."""
    try:
        request = VideoRequest.build(**kwargs)
    except RequestValidationError:
        # What we refuse, sent as is, the server refuses too: we never block a valid row.
        event("refused")
        payload = {name: value for name, value in kwargs.items() if value is not None}
        payload.setdefault("model", spec.MODEL)
        response = raw.post(spec.SUBMIT_PATH, json=payload)
        assert response.status_code == 400, (payload, response.text)
    else:
        # What we accept, the server accepts: a row that passes never earns a 400.
        event("accepted")
        async with client_for(sandbox, retry=instant(2)) as client:
            result = await client.submit(request, idempotency_key=f"prop-{next(_keys)}")
        assert result.task_id
