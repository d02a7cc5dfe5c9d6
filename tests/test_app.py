"""The Gradio app driven through its named API endpoints with gradio_client, on a server in this process.

Small sizes throughout (40 / 20 / 20 reviews of the built-in sample, 1 epoch, 64 tokens) so the whole module
runs in about a minute on two CPU cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO_ROOT, answer_label, app_error, needs_minilm, running_app

SIZES = ("builtin", None, 40, 20, 20, 42)  # source, uploaded file, train / validation / test sizes, seed
# r, alpha, dropout, targets, top layers, epochs, learning rate, batch size, max length
RECIPE = (8, 32, 0.1, ["query", "value"], 0, 1, 1e-3, 8, 64)


@pytest.fixture(scope="module")
def app_url():
    with running_app() as app:
        yield app.url


def new_client(url):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


@pytest.fixture
def client(app_url):
    """A fresh session (a client has its own session, so its own gr.State)."""
    return new_client(app_url)


@pytest.fixture(scope="module")
def trained(app_url):
    """One session taken through load → baseline → training; returns the client and each step's answer."""
    client = new_client(app_url)
    loaded = client.predict(*SIZES, api_name="/load_data")
    baseline = client.predict("minilm", api_name="/evaluate_baseline")
    job = client.submit(*RECIPE, api_name="/train")
    final = job.result(timeout=300)
    return {"client": client, "loaded": loaded, "baseline": baseline, "train": final, "updates": job.outputs()}


def plot_data(plot: dict) -> dict:
    assert plot["type"] == "plotly"
    return json.loads(plot["plot"])


def assert_metrics_in_range(metrics: dict, n: int):
    for key in ("accuracy", "precision", "recall", "f1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["n"] == n
    assert sum(map(sum, metrics["confusion"])) == n


def test_importing_the_package_and_cli_does_not_import_gradio():
    code = "import sys, lora_demo, lora_demo.cli, lora_demo.plots; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_only_the_documented_endpoints_are_public(app_url):
    from lora_demo.ui import build_demo

    public = {fn.api_name for fn in build_demo().fns.values() if fn.api_visibility == "public"}
    assert public == {"load_data", "evaluate_baseline", "train", "stop_training", "classify", "compare_methods"}


@needs_minilm
def test_load_data_splits_the_sample_and_draws_it(trained):
    summary, rows, balance, lengths, example = trained["loaded"]
    assert "40 / 20 / 20" in summary and "builtin" in summary
    assert len(rows["data"]) == 8 and {label for _, label in rows["data"]} <= {"negative", "positive"}
    bars = {trace["name"]: trace["y"] for trace in plot_data(balance)["data"]}
    assert bars == {"negative": [20, 10, 10], "positive": [20, 10, 10]}
    histogram = plot_data(lengths)
    assert len(histogram["data"][0]["x"]) == 80  # every review's token count
    assert histogram["layout"]["shapes"][0]["x0"] == 256
    first_text, first_label = rows["data"][0]  # the example is the first training review, as the table shows it
    assert f"- input: `review: {first_text[:40]}" in example and f"- target: `{first_label}`" in example


def test_load_data_with_too_many_reviews_is_a_clear_error(client):
    message = app_error(lambda: client.predict("builtin", None, 400, 20, 20, 42, api_name="/load_data"))
    assert "holds only 160" in message


@pytest.mark.parametrize("source", ["/etc", "/no/such/folder", "../shared/data/imdb", "upload"])
def test_load_data_never_reads_a_typed_path(client, source):
    from lora_demo.config import UserError
    from lora_demo.ui.dataset import data_source

    message = app_error(lambda: client.predict(source, None, 40, 20, 20, 42, api_name="/load_data"))
    if source == "upload":
        assert "upload a file first" in message
    else:  # gradio's dropdown refuses it first; the handler would too
        assert "not in the list of choices" in message
        with pytest.raises(UserError, match="unknown data source"):
            data_source(source, None)


@needs_minilm
@pytest.mark.needs_data
def test_load_data_reads_the_servers_imdb_files(client, imdb_dir, monkeypatch):
    monkeypatch.setenv("LORA_DEMO_DATA", str(imdb_dir))  # the operator's choice, never the user's
    summary, rows, balance, _, _ = client.predict("default", None, 40, 20, 20, 7, api_name="/load_data")
    assert f"from `{imdb_dir}`" in summary and "40 / 20 / 20" in summary
    assert [trace["y"] for trace in plot_data(balance)["data"]] == [[20, 10, 10], [20, 10, 10]]


@needs_minilm
def test_evaluate_baseline_reports_metrics_and_confusion(trained):
    summary, per_class, confusion, metrics = trained["baseline"]
    assert_metrics_in_range(metrics, n=20)
    assert "Accuracy" in summary and "minilm" in summary
    assert [row[0] for row in per_class["data"]] == ["negative", "positive"]
    assert [row[4] for row in per_class["data"]] == [10, 10]  # support: the balanced test set
    assert plot_data(confusion)["data"][0]["z"] == metrics["confusion"]
    assert ("warning" in metrics) == metrics["collapsed"] == ("Collapsed model" in summary)


@needs_minilm
def test_evaluate_baseline_loads_the_default_data_when_none_was_loaded(client, toy_csv, monkeypatch):
    # the operator's source ($LORA_DEMO_DATA): a small file here, so the default sizes shrink to it (the shipped
    # sample at the default sizes is the whole study's browser test)
    monkeypatch.setenv("LORA_DEMO_DATA", str(toy_csv))
    summary, _, _, metrics = client.predict("minilm", api_name="/evaluate_baseline")
    assert "default data was loaded" in summary and str(toy_csv) in summary
    assert_metrics_in_range(metrics, n=metrics["n"])


def test_methods_are_compared_only_beside_a_trained_lora_model(client):
    message = app_error(lambda: client.predict(["ia3"], *RECIPE, "fast", api_name="/compare_methods"))
    assert "train LoRA first" in message
    message = app_error(lambda: client.predict([], *RECIPE, "fast", api_name="/compare_methods"))
    assert "tick at least one method" in message


def test_t5_offline_is_a_clear_error(client):
    message = app_error(lambda: client.predict("t5-small", api_name="/evaluate_baseline"))
    assert "Hugging Face Hub" in message and "minilm" in message


@needs_minilm
def test_train_lora_streams_the_loss_and_scores_the_tuned_model(trained):
    loss_plot, result, details = trained["train"]
    assert len(trained["updates"]) >= 2, "the loss chart should update while training runs"
    traces = {trace["name"]: trace for trace in plot_data(loss_plot)["data"]}
    assert len(traces["train loss"]["x"]) + len(traces["validation loss"]["x"]) >= 2
    assert traces["train loss"]["x"] == sorted(traces["train loss"]["x"]) and max(traces["train loss"]["x"]) <= 1.0
    train = details["train"]
    # 40 reviews and a sentence window of each of the 34 with two sentences or more, batches of 8
    assert train["steps"] == train["max_steps"] == 10 and train["stopped"] is False
    assert train["train_loss"] > 0 and train["val_loss"] > 0
    assert 0 < details["params"]["trainable"] < details["params"]["total"] and details["params"]["percent"] < 1
    assert_metrics_in_range(details["finetuned"], n=20)
    assert_metrics_in_range(details["baseline"], n=20)  # the report compares both on the same reviews
    assert "Done" in result and "Trainable parameters" in result


@needs_minilm
def test_classify_answers_with_both_models_after_training(trained):
    baseline, lora, note = trained["client"].predict("This movie was amazing!", api_name="/classify")
    for label in (baseline, lora):
        answer = answer_label(label)
        confidences = {c["label"].split(" · ")[0]: c["confidence"] for c in label["confidences"]}
        assert set(confidences) == {"positive", "negative"}
        assert confidences[answer] >= 0.5 and sum(confidences.values()) == pytest.approx(1.0)
    assert lora["confidences"] != baseline["confidences"], "the second answer must be the trained model's"
    # the zero-shot model is calibrated on the shipped sample's validation reviews (this split has too few); the
    # LoRA model trained with 20 validation reviews has no calibration, and the note says so
    assert "Zero-shot" in note and "calibrated confidence" in note
    assert "`minilm` with the LoRA adapter" in note and "not calibrated: too few validation reviews" in note


@needs_minilm
def test_an_error_keeps_the_session(trained):
    client = trained["client"]
    review = "Terrible acting and a boring plot."
    _, before, _ = client.predict(review, api_name="/classify")
    app_error(lambda: client.predict("builtin", None, 400, 20, 20, 42, api_name="/load_data"))
    baseline, lora, _ = client.predict(review, api_name="/classify")
    assert lora == before, "the trained model must survive a failed call"
    assert lora["confidences"] != baseline["confidences"]  # and it is the trained model, not the baseline


@needs_minilm
def test_classify_before_training_gives_the_baseline_only(client):
    baseline, lora, note = client.predict("Not bad at all.", api_name="/classify")
    assert answer_label(baseline) and baseline["confidences"]
    assert lora == {}  # gradio's empty Label: no LoRA answer at all
    assert "Train LoRA" in note


def test_classify_empty_text_is_a_clear_error(client):
    assert "empty" in app_error(lambda: client.predict("   ", api_name="/classify"))


def test_unexpected_errors_reach_the_user_without_details(client, monkeypatch):
    import lora_demo.baseline
    from lora_demo.ui.errors import GENERIC_ERROR

    def broken(*args, **kwargs):
        raise RuntimeError("internal detail that must stay on the server")

    monkeypatch.setattr(lora_demo.baseline, "zero_shot_predict", broken)
    message = app_error(lambda: client.predict("Fine film.", api_name="/classify"))
    assert GENERIC_ERROR in message and "internal detail" not in message


@needs_minilm
def test_bad_training_settings_are_clear_errors(client):
    no_targets = (8, 32, 0.1, [], 0, 1, 1e-3, 8, 64)
    assert "target_modules" in app_error(lambda: client.predict(*no_targets, api_name="/train"))
    fractional_rank = (2.5, 32, 0.1, ["query"], 0, 1, 1e-3, 8, 64)
    assert "`r` must be a whole number" in app_error(lambda: client.predict(*fractional_rank, api_name="/train"))
    too_many_layers = (8, 32, 0.1, ["query"], 9, 1, 1e-3, 8, 64)  # the slider's bound answers first
    assert "maximum value 6" in app_error(lambda: client.predict(*too_many_layers, api_name="/train"))


def test_stop_without_training_says_so(client):
    assert "No training" in client.predict(api_name="/stop_training")


@needs_minilm
def test_stop_training_ends_the_run_early_and_keeps_the_model(client):
    client.predict(*SIZES, api_name="/load_data")
    long_run = (8, 32, 0.1, ["query", "value"], 0, 20, 1e-3, 2, 32)  # 400 steps
    job = client.submit(*long_run, api_name="/train")
    deadline = time.monotonic() + 120
    while not job.outputs() and not job.done() and time.monotonic() < deadline:
        time.sleep(0.2)  # the first loss point: training is under way
    assert "Stopping" in client.predict(api_name="/stop_training")
    _, result, details = job.result(timeout=120)
    assert details["train"]["stopped"] is True and details["train"]["steps"] < details["train"]["max_steps"]
    assert details["train"]["max_steps"] >= 400  # and as many again at most: the default recipe's sentence windows
    assert "Stopped" in result
    baseline, lora, _ = client.predict("What a great film.", api_name="/classify")
    assert lora and lora["confidences"] != baseline["confidences"], "the partly trained model is used"


@needs_minilm
def test_a_run_goes_on_when_its_page_goes_and_a_page_that_comes_back_follows_it():
    """The run belongs to the session: a page that reloads or loses its connection closes only its handler; a
    page that comes back follows the same run from its start; Stop and closing the session end it."""
    from lora_demo.config import DataConfig
    from lora_demo.ui.session import SessionData
    from lora_demo.ui.train import follow_training, train

    quiet = lambda *a, **k: None  # noqa: E731 (gradio's progress bar)
    session = SessionData()
    session.study.load_data(DataConfig(source="builtin", train_size=40, val_size=20, test_size=20))
    stream = train(8, 32, 0.1, ["query", "value"], 0, 20, 1e-3, 2, 32, "study", session, progress=quiet)
    next(stream)  # the first loss points: the run is training
    stream.close()  # the page went away
    time.sleep(1)
    assert session.training and session.run.events, "the run went on without its page"
    back = follow_training(session, session.run, [], quiet)  # a reloaded page
    first = next(back)
    assert "step" in first[1]  # the replayed run, from its start
    assert session.stop().startswith("Stopping")
    *_, (chart, result, details) = back
    assert "Stopped" in result and details["train"]["stopped"] is True
    assert not session.training and session.study.tuned is not None and session.export_zip
    session.close()
    assert not [t for t in threading.enumerate() if t.name.startswith(("lora-train", "lora-run"))]


def test_recipe_choice_sets_the_lora_controls():
    from lora_demo.ui.train import select_recipe

    r, alpha, dropout, targets, top, epochs = select_recipe("study", "minilm")
    assert (r["value"], alpha["value"], dropout["value"], epochs["value"]) == (8, 32, 0.1, 1)
    assert targets["value"] == ["query", "value"] and top["value"] == 0
    _, _, dropout, targets, top, epochs = select_recipe("fast", "minilm")
    assert dropout["value"] == 0.0 and targets["value"] == ["query", "key", "value", "dense"] and top["value"] == 3
    assert epochs["value"] == 3
    _, _, _, targets, top, _ = select_recipe("fast", "t5-small")
    assert targets["value"] == ["q", "v"] and top["value"] == 0 and top["interactive"] is False


def test_run_rows_show_each_runs_scores_and_settings():
    from lora_demo.config import TrainConfig
    from lora_demo.study import RunRecord
    from lora_demo.ui.compare import RUN_HEADERS, run_rows

    lora = {"r": 8, "alpha": 32, "dropout": 0.0, "target_modules": ["query", "key"], "layers": [3, 4, 5]}
    runs = [
        RunRecord(
            "run 1: r 8, fast",
            "minilm",
            "fast",
            lora,
            TrainConfig(epochs=1),
            8000,
            3.21,
            False,
            0.5,
            20,
            0.8,
            0.75,
            [],
        )
    ]
    named = dict(zip(RUN_HEADERS, run_rows(runs)[0]))
    assert len(run_rows(runs)[0]) == len(RUN_HEADERS)
    assert named["targets"] == "query, key" and named["top layers"] == 3 and named["epochs"] == 1
    assert (named["trainable"], named["accuracy"], named["F1"], named["seconds"]) == (8000, 0.8, 0.75, 3.21)


@needs_minilm
def test_batch_csv_gets_label_and_confidence_columns(tmp_path):
    import pandas as pd

    from lora_demo.config import UserError
    from lora_demo.ui.classify import MAX_BATCH_ROWS, classify_file
    from lora_demo.ui.session import SessionData

    session = SessionData()
    upload = tmp_path / "reviews.csv"
    pd.DataFrame({"id": [1, 2, 3], "text": ["A wonderful, moving film.", "", "Dull and far too long."]}).to_csv(
        upload, index=False
    )
    labelled = pd.read_csv(classify_file(str(upload), session))
    assert list(labelled.columns) == ["id", "text", "baseline_label", "baseline_confidence", "baseline_sure"]
    assert (
        labelled["baseline_label"].tolist()[0] == "positive" and labelled["baseline_label"].tolist()[2] == "negative"
    )
    assert pd.isna(labelled["baseline_label"][1])  # an empty row stays unlabelled, the others keep their order
    assert labelled["baseline_confidence"].dropna().between(0.5, 1.0).all()
    # the confidences are the calibrated ones, and "sure" is the calibrated confidence against the threshold
    from lora_demo.compute.jobs import zero_shot
    from lora_demo.config import DEFAULT_MAX_LENGTH

    calibration = session.study.calibration("baseline", DEFAULT_MAX_LENGTH)
    raw = zero_shot(session.study._ref(), ["A wonderful, moving film.", "Dull and far too long."])
    expected = calibration.apply(raw)
    assert calibration.temperature != pytest.approx(1.0, abs=0.01)
    assert labelled["baseline_confidence"].dropna().tolist() == pytest.approx(expected.confidence, abs=1e-4)
    assert labelled["baseline_sure"].dropna().tolist() == expected.sure

    def error(path) -> str:
        with pytest.raises(UserError) as err:
            classify_file(None if path is None else str(path), session)
        return str(err.value)

    (tmp_path / "no_text.csv").write_text("review\nhello\n")
    assert "needs a `text` column; it has: review" in error(tmp_path / "no_text.csv")
    (tmp_path / "page.html").write_text("<html></html>")
    assert "upload a .csv file" in error(tmp_path / "page.html")
    (tmp_path / "empty.csv").write_text("")
    assert "could not read the CSV" in error(tmp_path / "empty.csv")
    (tmp_path / "blank.csv").write_text("text\n\n \n")
    assert "the `text` column is empty" in error(tmp_path / "blank.csv")
    pd.DataFrame({"text": ["ok"] * (MAX_BATCH_ROWS + 1)}).to_csv(tmp_path / "big.csv", index=False)
    assert f"more than {MAX_BATCH_ROWS:,} rows" in error(tmp_path / "big.csv")
    assert "upload a CSV file" in error(None)


@needs_minilm
def test_reloading_a_file_with_another_seed_refuses_the_comparison():
    """The app reload case: the built-in file split again shares reviews with what the session's model trained on."""
    from lora_demo.config import UserError
    from lora_demo.ui.compare import compare
    from lora_demo.ui.dataset import load_data
    from lora_demo.ui.session import SessionData
    from lora_demo.ui.train import train

    def quiet(*args, **kwargs):
        return None

    session = SessionData()
    load_data("builtin", None, 40, 20, 40, 1, session, progress=quiet)
    list(train(8, 32, 0.0, ["query", "value"], 0, 1, 1e-3, 8, 32, "fast", session, progress=quiet))
    assert "0." in compare(session, progress=quiet)[0]  # the split it trained on compares
    load_data("builtin", None, 40, 20, 40, 2, session, progress=quiet)
    with pytest.raises(UserError, match=r"of the test reviews are among the 60 reviews this model trained"):
        compare(session, progress=quiet)
