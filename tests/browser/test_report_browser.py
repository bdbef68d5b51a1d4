"""OUT/report.html of a finished sandbox run, opened from disk in headless Chromium.

The numbers on the page are checked against results.parquet, computed here independently
of tasks/present/report.py; every thumbnail must have decoded; the page must load nothing
from anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from playwright.sync_api import ConsoleMessage, Page, Request, expect

from browser.browserkit import FAILING_ROW, FinishedRun

pytestmark = pytest.mark.slow


def _money(value: float) -> str:
    return f"${value:,.2f}"


def test_report_renders_with_numbers_of_the_results_table(
    demo_run: FinishedRun, page: Page, screenshots: Path
) -> None:
    """report.html renders in Chromium with the results' numbers, loading nothing else."""
    report = demo_run.out / "report.html"
    assert report.is_file(), "the run wrote no report.html"
    rows: list[dict[str, Any]] = pq.read_table(demo_run.out / "results.parquet").to_pylist()
    total = len(rows)
    completed = [r for r in rows if r["status"] == "completed"]
    videos = len(completed)
    cost = sum(r["cost"] or 0.0 for r in rows)
    assert 0 < videos < total, "the demo run should have one failed row"
    assert cost == pytest.approx(demo_run.counters["cost_billed"]), "results disagree with the bill"

    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console {message.type}: {message.text}")

    def on_request(request: Request) -> None:
        if not request.url.startswith(("file:", "data:")):
            problems.append(f"request: {request.url}")  # the CSP should have stopped it

    page.on("console", on_console)
    page.on("request", on_request)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.goto(report.resolve().as_uri(), wait_until="load")

    expect(page).to_have_title(f"videobatch report · {demo_run.out.name}")
    expect(page.get_by_role("heading", name="videobatch report", level=1)).to_be_visible()

    # Totals: the text shown and the raw value behind it.
    expected = {
        "#total-videos": (str(videos), videos),
        "#total-rows": (str(total), total),
        "#total-cost": (_money(cost), cost),
        "#success-rate": (f"{videos / total:.1%}", videos / total),
        "#at-risk": (_money(0.0), 0.0),
    }
    for selector, (text, value) in expected.items():
        tile = page.locator(selector)
        expect(tile).to_have_text(text)
        raw = tile.get_attribute("data-value")
        assert raw is not None and float(raw) == pytest.approx(value), (selector, raw, value)

    # Cost by resolution and by duration: rows, videos and money add up to the totals.
    for table_id in ("#cost-by-resolution", "#cost-by-duration"):
        lines = page.locator(f"{table_id} tbody tr")
        cells = lines.evaluate_all(
            "trs => trs.map(tr => [...tr.querySelectorAll('td.num')].map(td => td.textContent))"
        )
        spent = lines.locator("td.cost").evaluate_all(
            "tds => tds.map(td => parseFloat(td.dataset.value))"
        )
        assert sum(int(c[0]) for c in cells) == total, (table_id, cells)
        assert sum(int(c[1]) for c in cells) == videos, (table_id, cells)
        assert sum(spent) == pytest.approx(cost), (table_id, spent)

    # One card per row, in order, each with the row's status.
    cards = page.locator(".card")
    expect(cards).to_have_count(total)
    shown = cards.evaluate_all("cs => cs.map(c => [c.dataset.id, c.dataset.status])")
    assert shown == [[r["id"], r["status"]] for r in rows]

    # A thumbnail for every video, each decoded and laid out; a placeholder for the failure.
    thumbs = page.locator("img.thumb")
    expect(thumbs).to_have_count(videos)
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    images = page.locator("img").evaluate_all(
        "imgs => imgs.map(i => ({alt: i.alt, ok: i.complete, w: i.naturalWidth,"
        " h: i.naturalHeight, shown: i.getBoundingClientRect().width}))"
    )
    assert len(images) == videos
    broken = [i for i in images if not (i["ok"] and i["w"] > 0 and i["h"] > 0 and i["shown"] > 0)]
    assert not broken, broken
    assert sorted(i["alt"] for i in images) == sorted(
        f"first frame of {r['id']}" for r in completed
    )
    failed_card = page.locator(f'.card[data-id="{FAILING_ROW}"]')
    expect(failed_card.locator(".placeholder")).to_be_visible()
    expect(page.locator('#failures tr.failure[data-status="failed"]')).to_have_attribute(
        "data-count", "1"
    )

    assert not problems, problems
    page.screenshot(path=screenshots / "report.png")
    page.locator("#contact-sheet").screenshot(
        path=screenshots / "report-contact-sheet.jpg", type="jpeg", quality=85
    )
