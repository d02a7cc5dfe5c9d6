"""The explaining pictures in Chromium: the Train tab's to-scale LoRA picture follows the controls and its counts
equal the live parameter count; the whole study in one click ends on Compare with the sentence, the heatmap and the
map. Screenshots at 1280 and 390 px wide go to test-artifacts/pictures/."""

from __future__ import annotations

import re
import shutil

import pytest
from conftest import REPO_ROOT, running_app
from test_browser import (  # noqa: F401 (pytestmark: the browser tests' marks and skips)
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    load_builtin,
    open_tab,
    plotly_points,
    pytestmark,
    set_slider,
)

ARTIFACTS = REPO_ROOT / "test-artifacts" / "pictures"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with running_app() as app, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        browser.app_url = app.url
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A page of its own (its own gradio session) at 1280 x 800."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(browser.app_url)
    page.get_by_text("Active model").wait_for()
    yield page
    context.close()


def counts(text: str, pattern: str) -> tuple[int, int]:
    match = re.search(pattern, text)
    assert match, f"no counts matching {pattern!r} in {text!r}"
    return int(match.group(1).replace(",", "")), int(match.group(2).replace(",", ""))


def picture_state(page) -> tuple[tuple[int, int], tuple[int, int], float]:
    """(counts in the picture's text, counts in the live parameter line, width of the drawn B)."""
    page.locator("#lora-picture .js-plotly-plot").wait_for()
    picture = page.locator("#lora-picture-text").inner_text()
    params = page.get_by_text("Trainable parameters:").locator("xpath=..").inner_text()  # the whole line
    b_x = page.evaluate("() => document.querySelector('#lora-picture .js-plotly-plot').data[1].x")
    return (
        counts(picture, r"([\d,]+) trained of ([\d,]+)"),
        counts(params, r"Trainable parameters: ([\d,]+) of ([\d,]+)"),
        max(b_x) - min(b_x),
    )


def wait_for_text(page, selector: str, text: str):
    page.wait_for_function(
        "([sel, text]) => (document.querySelector(sel)?.innerText || '').includes(text)", arg=[selector, text]
    )


def test_lora_picture_follows_r_and_the_targets(page):
    open_tab(page, "3. Train LoRA")
    wait_for_text(page, "#lora-picture-text", "r = 8")
    picture, params, b_width = picture_state(page)
    assert picture == params == (166_658, 22_732_804) and b_width == 8
    page.locator("#lora-picture-box").screenshot(path=ARTIFACTS / "lora-picture-1280.png")

    set_slider(page, "Rank r", 16)
    wait_for_text(page, "#lora-picture-text", "r = 16")
    page.wait_for_function("() => document.body.innerText.includes('332,546 of')")  # the parameter line too
    picture, params, b_width = picture_state(page)
    assert picture == params and picture[0] == 2 * (166_658 - 770) + 770 and b_width == 16

    for box in ("key", "dense"):  # the targets: query and value left
        page.get_by_label(box, exact=True).uncheck()
    wait_for_text(page, "#lora-picture-text", "6 matrices are adapted")
    page.wait_for_function("() => document.body.innerText.includes('74,498 of')")
    picture, params, _ = picture_state(page)
    assert picture == params == (3 * 2 * 16 * (384 + 384) + 770, 22_640_644)

    page.set_viewport_size({"width": 390, "height": 800})
    page.wait_for_timeout(800)  # plotly re-lays out on resize
    page.locator("#lora-picture-box").screenshot(path=ARTIFACTS / "lora-picture-390.png")
    assert page.evaluate("() => document.querySelector('#lora-picture .js-plotly-plot').offsetWidth") <= 390


def shoot(page, selector: str, name: str):
    page.wait_for_timeout(800)  # plotly re-lays out after a resize or a redraw
    page.locator(selector).screenshot(path=ARTIFACTS / f"{name}.png")


def test_the_whole_study_in_one_click_ends_on_compare(page):
    load_builtin(page, 40, 20, 20)
    page.get_by_role("button", name="Run the whole study").click()
    wait_for_text(page, "#whole-study-status", "Step 3 of 4")  # training, streamed as it goes
    page.get_by_role("tab", name="4. Compare", selected=True).wait_for()
    wait_for_text(page, "#result-sentence", "LoRA trained")
    sentence = page.locator("#result-sentence").inner_text()
    assert "on 40 reviews" in sentence and "on 20 test reviews" in sentence, sentence
    status = page.locator("#whole-study-status").text_content()  # on the first tab, hidden now
    assert "Step 4 of 4" in status and "The comparison is on" in status, status
    wait_for_text(page, "#norms-reading", "The largest change is in")
    assert plotly_points(page, "#norms-heatmap") == [6]  # the default recipe's six matrices per layer
    assert sum(plotly_points(page, "#review-map")) == 2 * 20  # each test review once per panel
    wait_for_text(page, "#map-reading", "spreads apart before training")
    page.get_by_text("Baseline vs LoRA on the same test reviews").wait_for()  # the metrics beside them
    shoot(page, "#result-sentence", "sentence-1280")
    shoot(page, "#norms-heatmap", "heatmap-1280")
    shoot(page, "#review-map", "map-1280")
    page.set_viewport_size({"width": 390, "height": 800})
    page.screenshot(path=ARTIFACTS / "compare-390.png", full_page=True)
    # the Compare tab's tables (gr.Dataframe) hold the whole page at 1240 px on a phone; hidden here, the figures
    # must fit the phone's width on their own
    for table in page.query_selector_all("table"):
        table.evaluate("element => { element.style.display = 'none'; }")
    page.evaluate("() => window.dispatchEvent(new Event('resize'))")  # the page is narrower now: plotly redraws
    for selector, name in (("#result-sentence", "sentence"), ("#norms-heatmap", "heatmap"), ("#review-map", "map")):
        shoot(page, selector, f"{name}-390")
    widths = page.evaluate(
        "() => ['#norms-heatmap', '#review-map']"
        ".map(s => document.querySelector(s + ' .main-svg').getBoundingClientRect().width)"
    )
    assert max(widths) <= 390, f"the figures' widths at 390 px: {widths}"
    open_tab(page, "1. Dataset")
    shoot(page, "#whole-study-status", "whole-study-status-390")
