"""A crowd on loopback: what one 2-vCPU Space holds when many visitors arrive at once.

Bounded in count and time, and it stops by itself. 8 pages (16 with LORA_DEMO_CROWD_PAGES=16) open in Chromium
at once while a training runs, and each fills its header, its trainable-parameter count and the LoRA picture; then
10 visitors classify over and over (as the page posts it) while 3 others train one after another, and the server's
memory after they all leave returns near where it started. The figures are printed (`pytest tests/test_crowd.py
-s`) and quoted in the README.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import psutil
import pytest
import torch
from conftest import CHROMIUM, needs_minilm, running_app
from test_browser import CHROMIUM_ARGS
from test_reliability import SIZES, classify_as_the_browser_does, stop_as_the_browser_does, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow, needs_minilm]

# opened at once while one training runs: 8 in the suite (its slowest test at 16); the README's figures were measured
# with LORA_DEMO_CROWD_PAGES=16
PAGES = int(os.environ.get("LORA_DEMO_CROWD_PAGES", "8"))
# a ceiling, not a target: a page still empty after it is broken. How fast they fill in is measured here and quoted
# in the README (64 s at most on the development machine; the browsers' own rendering shares the 2 cores)
PAGE_SECONDS = 300
CLASSIFIERS, TRAINERS = 10, 3
CLASSIFY_SECONDS = 30  # how long the classifiers keep classifying
CLASSIFY_P95_SECONDS = 5.0  # measured here at about a second under this load (see the README)
LONG_RUN = (8, 32, 0.0, ["query", "value"], 0, 20, 1e-3, 1, 32)  # minutes of steps: stopped by the test
SHORT_RUN = (8, 32, 0.0, ["query", "value"], 0, 1, 1e-3, 8, 32)


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


@pytest.fixture(scope="module")
def app():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the server's share of the machine, as on a 2-vCPU Space
    try:
        with running_app(heartbeat_seconds=0.5) as app:
            yield app
    finally:
        torch.set_num_threads(threads)


def new_client(app):
    from gradio_client import Client

    return Client(app.url, verbose=False, download_files=False)


def test_pages_opened_at_once_while_a_training_runs_all_fill_in(app):
    from playwright.sync_api import sync_playwright

    trainer = new_client(app)
    trainer.predict(*SIZES, api_name="/load_data")
    run = trainer.submit(*LONG_RUN, api_name="/train")
    try:
        wait_for(lambda: run.outputs() or run.done(), timeout=120)
        assert not run.done(), run.result()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            pages = [browser.new_context(viewport={"width": 1280, "height": 800}).new_page() for _ in range(PAGES)]
            started = time.monotonic()

            def left_ms() -> float:  # every wait shares one deadline, counted from the first navigation
                return max(1.0, PAGE_SECONDS - (time.monotonic() - started)) * 1000

            for page in pages:  # all navigations fired within a second or two
                page.set_default_timeout(PAGE_SECONDS * 1000)
                page.goto(app.url, wait_until="commit")
            filled = []
            for page in pages:  # what the page load brought: the header, and on the Train tab the count and picture
                page.wait_for_function(
                    "() => { const h = (document.querySelector('#header') || {}).innerText || '';"
                    " return h.includes('Data:') && !h.includes('checking'); }",
                    timeout=left_ms(),
                )
                page.get_by_role("tab", name="3. Train LoRA").click(timeout=left_ms())
                page.get_by_text("Trainable parameters:").wait_for(timeout=left_ms())
                page.locator("#lora-picture .js-plotly-plot").wait_for(timeout=left_ms())
                filled.append(time.monotonic() - started)
            browser.close()
        assert not run.done(), "the training ran all along"
    finally:  # a failure above must not leave minutes of training to the next test
        stop_as_the_browser_does(app, trainer)
        stopped = run.result(timeout=120)[2]["train"]["stopped"]
        trainer.close()
    assert stopped is True
    print(f"\n{PAGES} pages opened at once during a training: all filled in {max(filled):.1f} s "
          f"(median {statistics.median(filled):.1f} s)")  # fmt: skip


VISITORS = 30  # simulated page opens at once, through gradio's own HTTP protocol


def open_page_as_the_browser_does(app, session_hash: str) -> dict:
    """Fire every event the page fires when it opens, as its script does: events outside the queue are posted to
    `/run/...`, queued ones join the queue and are followed to their end. Returns each event's outcome."""
    import json

    import httpx

    config = app.demo.config
    values = {c["id"]: c.get("props", {}).get("value") for c in config["components"]}
    outcomes = {}
    with httpx.Client(base_url=app.url, timeout=PAGE_SECONDS) as http:
        for dep in config["dependencies"]:
            if not any(trigger == "load" for _, trigger in dep["targets"]):
                continue
            body = {
                "data": [values[i] for i in dep["inputs"]],
                "fn_index": dep["id"],
                "trigger_id": dep["targets"][0][0],
                "session_hash": session_hash,
                "event_data": None,
            }
            name = dep["api_name"]
            if dep["queue"] is False:
                response = http.post("gradio_api/run/predict", json=body)
                outcomes[name] = "done" if response.status_code == 200 else f"HTTP {response.status_code}"
                continue
            response = http.post("gradio_api/queue/join", json=body)
            if response.status_code == 503:
                outcomes[name] = "busy"
                continue
            event = response.json()["event_id"]
            with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
                for line in stream.iter_lines():
                    message = json.loads(line[5:]) if line.startswith("data:") else {}
                    if message.get("event_id") == event and message.get("msg") == "process_completed":
                        outcomes[name] = "done" if message.get("success") else "failed"
                        break
    return outcomes


def test_thirty_visitors_opening_the_page_at_once_are_all_served_while_a_training_runs(app):
    import secrets

    trainer = new_client(app)
    trainer.predict(*SIZES, api_name="/load_data")
    run = trainer.submit(*LONG_RUN, api_name="/train")
    wait_for(lambda: run.outputs() or run.done(), timeout=120)
    results, started = [None] * VISITORS, time.monotonic()

    def visit(i):
        results[i] = (open_page_as_the_browser_does(app, secrets.token_hex(8)), time.monotonic() - started)

    threads = [threading.Thread(target=visit, args=(i,)) for i in range(VISITORS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=PAGE_SECONDS + 30)
    stop_as_the_browser_does(app, trainer)
    run.result(timeout=120)
    trainer.close()
    served = [seconds for outcome, seconds in filter(None, results) if set(outcome.values()) == {"done"}]
    refused = [outcome for outcome, _ in filter(None, results) if set(outcome.values()) != {"done"}]
    print(f"\n{VISITORS} visitors opening the page at once during a training: {len(served)} served, the last after "
          f"{max(served, default=float('nan')):.1f} s; not served: {refused[:3]}")  # fmt: skip
    assert len(served) == VISITORS and max(served) < PAGE_SECONDS


def test_classify_answers_fast_while_others_train_and_memory_returns_after_they_leave(app):
    from lora_demo.compute import models
    from lora_demo.ui.session import OPEN_SESSIONS

    wait_for(lambda: not [s for s in list(OPEN_SESSIONS) if not s.closed and s.training], timeout=60)
    latencies, errors, busy, done = [], [], [0], threading.Event()

    def classify_over_and_over(i: int):
        client = new_client(app)
        try:
            while not done.is_set():
                started = time.monotonic()
                try:
                    classify_as_the_browser_does(app, client, f"Visitor {i}: a moving film with superb acting.")
                    latencies.append(time.monotonic() - started)
                except Exception as err:  # noqa: BLE001 (counted and reported)
                    (busy.__setitem__(0, busy[0] + 1) if "busy" in str(err) else errors.append(repr(err)))
        finally:
            client.close()

    def train_in_turn():
        client = new_client(app)
        try:
            client.predict(*SIZES, api_name="/load_data")
            details = client.predict(*SHORT_RUN, api_name="/train")[2]
            assert details["train"]["steps"] == details["train"]["max_steps"]
        except Exception as err:  # noqa: BLE001
            errors.append(repr(err))
        finally:
            client.close()

    models.forget()  # what the studies of earlier tests left in this process's caches is not the visitors'
    # a first visitor trains and classifies: what this server always holds (the models, the zero-shot calibration
    # every visitor's Classify shares) is loaded before memory is measured
    train_in_turn()
    first = new_client(app)
    classify_as_the_browser_does(app, first, "A first visitor: a moving film with superb acting.")
    first.close()
    wait_for(lambda: not [s for s in list(OPEN_SESSIONS) if s.holds_study], timeout=60)
    before = rss_mb()
    threads = [threading.Thread(target=classify_over_and_over, args=(i,)) for i in range(CLASSIFIERS)]
    threads += [threading.Thread(target=train_in_turn) for _ in range(TRAINERS)]
    for thread in threads:
        thread.start()
    time.sleep(CLASSIFY_SECONDS)
    done.set()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == [] and latencies
    p50, p95 = statistics.median(latencies), statistics.quantiles(latencies, n=20)[18]
    # everyone left: their sessions close (heartbeat) and what they held is freed
    wait_for(lambda: not [s for s in list(OPEN_SESSIONS) if s.holds_study], timeout=60)
    after = rss_mb()
    print(f"\nclassify while {TRAINERS} visitors trained in turn: {len(latencies)} answers, p50 {p50:.2f} s, "
          f"p95 {p95:.2f} s, {busy[0]} told busy; RSS {before:.0f} MB before, {after:.0f} MB after")  # fmt: skip
    assert p95 < CLASSIFY_P95_SECONDS
    assert models.cached_tuned() == 0, "the visitors' trained models left with them"
    assert after - before < 100, "what the visitors held was freed when they left"
