"""The app as a ZeroGPU Space runs it, every job in a forked worker through the stand-in (`LORA_DEMO_FAKE_ZEROGPU=1`):
the Train tab streams and stops, Compare, Classify and its explanation, the batch file, the adapter download and a
reload of a saved run all work from what the jobs return. Small sizes, as `test_app.py`."""

from __future__ import annotations

import zipfile

import pytest
import zerogpu_stub
from conftest import needs_minilm, running_app
from test_reliability import (
    SHORT_RUN,
    SIZES,
    assert_the_tuned_models_answer,
    server_session,
    stop_as_the_browser_does,
    wait_until_running,
)

pytestmark = needs_minilm
LONG_RUN = (8, 32, 0.0, ["query", "value"], 0, 5, 1e-3, 1, 32)  # 5 epochs of single reviews: stopped by the test


@pytest.fixture(scope="module")
def app():
    from lora_demo.compute import runner
    from lora_demo.ui import session

    patch = pytest.MonkeyPatch()
    patch.setenv("LORA_DEMO_FAKE_ZEROGPU", "1")
    runner.runner.cache_clear()
    patch.setattr(session, "MODELS", session.SharedModels())  # the app's models, with the stand-in runner
    try:
        with running_app(heartbeat_seconds=0.25) as app:
            yield app
    finally:
        patch.undo()
        runner.runner.cache_clear()


@pytest.fixture
def client(app):
    from gradio_client import Client

    client = Client(app.url, verbose=False, download_files=False)
    yield client
    client.close()


def test_training_streams_and_every_tab_works_from_the_jobs_results(app, client, tmp_path, monkeypatch):
    from lora_demo.lora import read_adapter_metadata, read_weights
    from lora_demo.ui.classify import classify_file, explain
    from lora_demo.ui.compare import compare

    calls = dict(zerogpu_stub.CALLS)
    client.predict(*SIZES, api_name="/load_data")
    client.predict("minilm", api_name="/evaluate_baseline")
    job = client.submit(*SHORT_RUN, api_name="/train")
    _, result, details = job.result(timeout=300)
    assert len(job.outputs()) >= 2, "the loss chart updated while the worker trained"
    assert "Done" in result and details["train"]["steps"] == details["train"]["max_steps"]
    runtime = details["runtime"]
    assert runtime["runner"] == "zerogpu stand-in" and runtime["jobs_in_workers"] >= 5
    assert zerogpu_stub.CALLS["generator"] == calls["generator"] + 1  # the training: one streamed call
    session = server_session(app, client)
    assert_the_tuned_models_answer(client, session, "A gripping story, and the cast is superb.")

    # Compare, the explanation and a batch file, each through the workers
    summary, shown, ladder, *_ = compare(session, progress=lambda *a, **k: None)
    assert "LoRA" in summary and [row[0] for row in ladder][-1] == "LoRA fine-tuned"
    words = explain("A gripping story, and the cast is superb.", session)
    assert len(words) == 2 and all(words)
    batch = tmp_path / "reviews.csv"
    batch.write_text('text\nA wonderful film.\n"A dull, boring mess."\n')
    labelled = open(classify_file(str(batch), session)).read().splitlines()
    columns = "baseline_label,baseline_confidence,baseline_sure,lora_label,lora_confidence,lora_sure"
    assert labelled[0] == f"text,{columns}" and len(labelled) == 3

    # the download holds the adapter the session trained: it loads and gives the same weights
    with zipfile.ZipFile(session.export_zip) as archive:
        archive.extractall(tmp_path / "unzipped")
    folder = tmp_path / "unzipped" / "lora-adapter"
    assert read_adapter_metadata(folder)["model"] == "minilm"
    assert read_weights(folder, session.study.tuned.lora).key == session.study.tuned.weights.key


def test_stop_reaches_the_worker_and_the_run_is_kept(app, client):
    client.predict(*SIZES, api_name="/load_data")
    job = client.submit(*LONG_RUN, api_name="/train")
    wait_until_running(job)
    assert "Stopping" in stop_as_the_browser_does(app, client)
    _, result, details = job.result(timeout=120)
    assert details["train"]["stopped"] is True and details["train"]["steps"] < details["train"]["max_steps"]
    assert "Stopped" in result
    assert_the_tuned_models_answer(client, server_session(app, client), "What a great film.")


def test_a_saved_run_reloads_and_answers(app, client, tmp_path, monkeypatch):
    from lora_demo.ui.runs import load_run, run_choices

    monkeypatch.setenv("LORA_DEMO_RUNS", str(tmp_path))
    client.predict(*SIZES, api_name="/load_data")
    client.predict(*SHORT_RUN, api_name="/train")
    trained = server_session(app, client)
    trained.study.save(tmp_path / "saved-run", trained.study.report())
    assert [value for _, value in run_choices()] == ["saved-run"]

    from gradio_client import Client

    other = Client(app.url, verbose=False, download_files=False)
    try:
        other.predict("A fine film.", api_name="/classify")  # the session exists on the server
        session = server_session(app, other)
        assert "Loaded the saved run `saved-run`" in load_run("saved-run", session)
        assert session.study.tuned.weights.key == trained.study.tuned.weights.key
        assert_the_tuned_models_answer(other, session, "What a great film.")
    finally:
        other.close()


@pytest.mark.browser
def test_the_whole_study_in_chromium_under_the_stand_in(app):
    """A visitor's one click, every step a job in a worker: it ends on Compare and Classify answers with both."""
    from conftest import CHROMIUM
    from playwright.sync_api import sync_playwright
    from test_browser import CHROMIUM_ARGS, answer_of, load_builtin, open_tab, plotly_points, trained_studies

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.set_default_timeout(180_000)
        page.goto(app.url)
        load_builtin(page, 40, 20, 20)
        page.get_by_role("button", name="Run the whole study").click()
        page.get_by_role("tab", name="4. Compare", selected=True).wait_for()
        page.get_by_text("Baseline vs LoRA on the same test reviews").wait_for()
        assert "on 20 test reviews" in page.locator("#result-sentence").inner_text()
        assert sum(plotly_points(page, "#review-map")) == 2 * 20
        open_tab(page, "5. Classify")
        review = "A wonderful, moving film with superb acting."
        page.get_by_label("Review", exact=True).fill(review)
        page.get_by_role("button", name="Classify", exact=True).click()
        page.get_by_text("with the LoRA adapter").wait_for()
        shown = page.locator("#lora-label [data-testid=label-output-value]").inner_text().strip()
        confidence = float(page.locator("#lora-label meter").first.get_attribute("aria-valuenow"))
        answers = [answer_of(study.classify([review])[1]) for study in trained_studies(app)]
        assert any(shown == label and confidence == pytest.approx(p, abs=1) for label, p in answers), answers
        browser.close()
