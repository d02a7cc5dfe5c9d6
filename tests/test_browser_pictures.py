"""The explaining pictures in Chromium: the Train tab's to-scale LoRA picture follows the controls and its counts
equal the live parameter count. Screenshots at 1280 and 390 px wide go to test-artifacts/pictures/. (The sentence,
the heatmap and the map on Compare are checked at the end of the default-size whole study,
`test_browser_whole_study.py`.)"""

from __future__ import annotations

import re
import shutil

import pytest
from conftest import REPO_ROOT, running_app
from test_browser import (  # noqa: F401 (pytestmark: the browser tests' marks and skips)
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    open_tab,
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
