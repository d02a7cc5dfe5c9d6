"""The visitor's main path in Chromium: "Run the whole study" on a fresh offline start at the default sizes (the
shipped IMDb sample, 500 / 200 / 1,000, the default recipe) shows itself on the first tab as it goes and ends on
Compare with both models scored and Classify answering with both. The one slow test of the suite (minutes).

It failed before the fix: the run ended in a bare "Error" after training (see `lora_demo/ui/whole_study.py`).
"""

from __future__ import annotations

import time

import pytest
import torch
from conftest import REPO_ROOT, running_app
from test_browser import CHROMIUM_ARGS, open_tab, plotly_points, pytestmark  # noqa: F401 (the browser marks)

ARTIFACTS = REPO_ROOT / "test-artifacts" / "whole-study"
STUDY_MINUTES = 25  # the whole study on a busy 2-core machine takes several; a bound, not a speed target


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as the app runs on a 2-vCPU Space (the suite's other tests use one thread)
    try:
        with running_app() as app, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(STUDY_MINUTES * 60_000)
            page.goto(app.url)
            page.get_by_text("Active model").wait_for()
            yield page
            browser.close()
    finally:
        torch.set_num_threads(threads)


def text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def wait_for_text(page, selector: str, wanted: str):
    page.wait_for_function(
        "([sel, text]) => (document.querySelector(sel)?.innerText || '').includes(text)", arg=[selector, wanted]
    )


def chart_points(page) -> int:
    return sum(plotly_points(page, "#whole-study-chart"))


def check_compare_pictures(page, test_reviews: int):
    """Where the adapter changed the model and how the test reviews moved, on Compare; at 390 px the page fits the
    phone's width and so do the figures (measured alone: the tables, scrolled in their own boxes, are hidden)."""
    wait_for_text(page, "#norms-reading", "The largest change is in")
    assert plotly_points(page, "#norms-heatmap") == [6]  # the default recipe's six matrices per layer
    assert sum(plotly_points(page, "#review-map")) == 2 * test_reviews  # each test review once per panel
    wait_for_text(page, "#map-reading", "spreads apart before training")
    for selector, name in (("#result-sentence", "sentence"), ("#norms-heatmap", "heatmap"), ("#review-map", "map")):
        page.locator(selector).screenshot(path=ARTIFACTS / f"{name}-1280.png")
    page.set_viewport_size({"width": 390, "height": 800})
    page.screenshot(path=ARTIFACTS / "compare-390.png", full_page=True)
    # the page fits the phone's width: the wide tables scroll inside their own boxes (1,240 px before)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    hidden = page.evaluate(
        "() => Array.from(document.querySelectorAll('table'), t => { t.style.display = 'none'; return t; }).length"
    )
    measure = (
        "() => ['#norms-heatmap', '#review-map']"
        ".map(s => document.querySelector(s + ' .main-svg').getBoundingClientRect().width)"
    )
    # the page is narrower now: plotly redraws on a window resize, at its container's width when its (debounced)
    # handler runs; one that ran while the layout was still changing leaves a width in between (465 px, seen in
    # about one run in four), and the next resize mends it. So: a resize at each look until the figures fit.
    fit = f"() => {{ if (({measure})().every(width => width <= 390)) return true;"
    fit += " window.dispatchEvent(new Event('resize')); return false; }"
    try:  # plotly's redraw of a 2,000-point map after the resize takes a moment on a busy machine
        page.wait_for_function(fit, polling=1_000, timeout=20_000)
    except Exception:  # noqa: BLE001 (the assertion below says what was measured)
        pass
    widths = page.evaluate(measure)
    assert max(widths) <= 390, f"the figures' widths at 390 px: {widths}"
    for selector, name in (("#result-sentence", "sentence"), ("#norms-heatmap", "heatmap"), ("#review-map", "map")):
        page.locator(selector).screenshot(path=ARTIFACTS / f"{name}-390.png")
    page.evaluate("() => document.querySelectorAll('table').forEach(t => { t.style.display = ''; })")
    page.set_viewport_size({"width": 1280, "height": 900})
    assert hidden > 0


@pytest.mark.slow
@pytest.mark.as_deployed
def test_the_whole_study_at_the_default_sizes_shows_itself_and_ends_on_compare(page):
    page.get_by_role("button", name="Run the whole study").click()
    clicked = time.monotonic()
    # the first tab fills in as each step finishes: the data's summary, charts and sample rows ...
    page.get_by_text("Loaded 500 / 200 / 1000").wait_for()
    assert "No data loaded yet" not in page.locator("body").inner_text()
    for chart in ("#label-balance", "#review-lengths"):
        page.locator(f"{chart} .js-plotly-plot").wait_for()
    assert sum(plotly_points(page, "#label-balance")) == 6  # two labels in three splits
    assert sum(plotly_points(page, "#review-lengths")) == 1700  # every review's length
    # ... the zero-shot score, then the live loss chart, growing while the status counts steps and time left
    wait_for_text(page, "#whole-study-score", "Zero-shot minilm on 1000 test reviews: accuracy")
    page.wait_for_function("() => document.querySelector('#whole-study-chart .js-plotly-plot')")
    page.wait_for_function(
        "() => { const p = document.querySelector('#whole-study-chart .js-plotly-plot');"
        " return p && p.data && p.data[0] && p.data[0].x.length >= 2; }"
    )
    shown = time.monotonic() - clicked
    first = chart_points(page)
    status = text(page, "#whole-study-status")
    assert "Step 3 of 4" in status and "left)" in status, status
    page.screenshot(path=ARTIFACTS / "first-tab-training-1280.png", full_page=True)
    page.wait_for_function(
        "(n) => { const p = document.querySelector('#whole-study-chart .js-plotly-plot');"
        " return p.data.reduce((s, t) => s + t.x.length, 0) > n; }",
        arg=first,
    )
    assert "Step 3 of 4" in text(page, "#whole-study-status")  # it grew while training, not only at the end
    print(f"data, zero-shot score and a growing loss chart on the first tab {shown:.0f} s after the click")

    # it ends on Compare with both models scored on the same test reviews
    page.get_by_role("tab", name="4. Compare", selected=True).wait_for()
    wait_for_text(page, "#result-sentence", "LoRA trained")
    sentence = text(page, "#result-sentence")
    assert "on 500 reviews" in sentence and "on 1,000 test reviews" in sentence, sentence
    page.get_by_text("Baseline vs LoRA on the same test reviews").wait_for()
    page.screenshot(path=ARTIFACTS / "compare-1280.png", full_page=True)
    status = page.locator("#whole-study-status").text_content()
    assert "Step 4 of 4" in status and "LoRA accuracy" in status and "Error" not in status, status
    check_compare_pictures(page, test_reviews=1000)

    # the other tabs show the same state: the Train tab's chart, result and download; the Baseline tab's score
    open_tab(page, "3. Train LoRA")
    page.locator("#download-adapter").wait_for(state="visible")
    assert "Done:" in text(page, "#train-status") and sum(plotly_points(page, "#loss-chart")) >= 10
    open_tab(page, "2. Baseline")
    page.get_by_text("Zero-shot minilm on 1000 test reviews from").wait_for()

    # Classify answers with both models: LoRA's answer is there, with a confidence of its own
    open_tab(page, "5. Classify")
    page.get_by_label("Review", exact=True).fill("A wonderful, moving film with superb acting.")
    page.get_by_role("button", name="Classify", exact=True).click()
    page.get_by_text("with the LoRA adapter").wait_for()
    baseline, lora = text(page, "#baseline-label"), text(page, "#lora-label")
    assert "positive" in lora and lora != baseline, (baseline, lora)
    # both confidences are calibrated (the LoRA model on its 200 validation reviews), and the note says so
    note = page.get_by_text("with the LoRA adapter").first.inner_text()
    assert note.count("calibrated confidence") == 2 and "not calibrated" not in note, note
    page.screenshot(path=ARTIFACTS / "classify-1280.png", full_page=True)
