"""Issue 4: one app, many strangers at once. Sessions stay apart, the queue is bounded, Stop and closing a tab end
a run, bad input gets a clear message, uploads and paths are fenced in, a crash leaves the app working.

The app runs in this process with a queue of `QUEUE` waiting events and a fast heartbeat, so a client that goes
away is noticed within a second; each gradio_client Client is one session, as one browser tab is.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path

import pytest
from conftest import IMDB_DIR, REPO_ROOT, answer_label, app_error, needs_minilm, running_app

QUEUE = 2
SIZES = ("builtin", None, 40, 20, 20, 42)  # source, uploaded file, train / validation / test sizes, seed
# r, alpha, dropout, targets, top layers, epochs, learning rate, batch size, max length
SHORT_RUN = (8, 32, 0.0, ["query", "value"], 0, 1, 1e-3, 8, 32)
LONG_RUN = (8, 32, 0.0, ["query", "value"], 0, 20, 1e-3, 1, 32)  # 800 steps: stopped by the tests

pytestmark = needs_minilm


@pytest.fixture(scope="module")
def app():
    with running_app(heartbeat_seconds=0.25, max_queue=QUEUE) as app:
        yield app


@pytest.fixture
def connect(app):
    """`connect()`: a new session (a gradio_client Client); every one is closed after the test."""
    from gradio_client import Client

    clients = []

    def new():
        clients.append(Client(app.url, verbose=False, download_files=False))
        return clients[-1]

    yield new
    for client in clients:
        client.close()
    wait_for(lambda: not training_threads(), timeout=60)


def server_session(app, client):
    """The `SessionData` the server holds for a client's session."""
    from lora_demo.ui.session import SessionData

    values = app.demo.state_holder.session_data[client.session_hash].state_data.values()
    return next(value for value in values if isinstance(value, SessionData))


def assert_the_tuned_models_answer(client, session, review: str):
    """The app's LoRA answer for `review` is the session's own trained model's, not the baseline's nor another's."""
    baseline, lora, _ = client.predict(review, api_name="/classify")
    from lora_demo.ui.classify import confidences as shown_as

    expected = shown_as(session.study.classify([review])[1])  # the label, with "· not sure" where it applies
    confidences = {c["label"]: c["confidence"] for c in lora["confidences"]}
    assert lora["label"] == next(iter(expected))
    assert confidences[lora["label"]] == pytest.approx(expected[lora["label"]], abs=1e-6)
    assert lora["confidences"] != baseline["confidences"]


def released(session) -> bool:
    """`session.close()` has run to its end: the flag is set first, the folder is deleted last."""
    return session.closed and session._scratch is None


def training_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("lora-train")]


def wait_for(condition, timeout: float, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {condition}")
        time.sleep(every)


def wait_until_running(job, timeout: float = 120):
    """A training job has streamed its first update: it holds the training slot and its thread runs."""
    wait_for(lambda: job.outputs() or job.done(), timeout)
    assert not job.done(), job.result()


def classify_as_the_browser_does(app, client, review: str) -> list:
    """Classify as the page calls it: a `queue=False` event, posted straight to `/run/...`."""
    import httpx

    body = {"data": [review, None], "session_hash": client.session_hash}  # the State input: the server fills it in
    response = httpx.post(f"{app.url}gradio_api/run/classify", json=body, timeout=60)
    response.raise_for_status()
    return response.json()["data"]


def stop_as_the_browser_does(app, client) -> str:
    """Press Stop the way the browser does: Stop is a `queue=False` event, which the page posts straight to
    `/run/...` (gradio_client sends every call through the queue)."""
    import httpx

    body = {"data": [None], "session_hash": client.session_hash}  # the State input: the server fills it in
    response = httpx.post(f"{app.url}gradio_api/run/stop_training", json=body, timeout=30)
    response.raise_for_status()
    return response.json()["data"][0]


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


# 1. Isolation


@pytest.mark.slow
@pytest.mark.native_bf16
def test_the_app_trains_and_answers_in_bf16_where_native(app, connect):
    """As a Space with native bf16 runs: training under bf16 autocast, a bf16 serving copy, and Classify's LoRA
    answer is that copy's."""
    import torch

    client = connect()
    client.predict(*SIZES, api_name="/load_data")
    _, _, details = client.submit(*SHORT_RUN, api_name="/train").result(timeout=300)
    assert details["train"]["steps"] == details["train"]["max_steps"] > 0
    from lora_demo.compute import models

    session = server_session(app, client)
    study = session.study
    serving = models.tuned(study.models.ref(study.model_name), study.tuned.weights).model  # what Classify runs
    assert {p.dtype for p in serving.parameters() if p.is_floating_point()} == {torch.bfloat16}
    assert details["runtime"]["dtype"] == "bfloat16" and details["runtime"]["device"] == "cpu"
    assert_the_tuned_models_answer(client, session, "A gripping story, and the cast is superb.")


def test_two_sessions_training_at_once_see_only_their_own_data_and_results(app, connect):
    import zipfile

    one, two = connect(), connect()
    one.predict("builtin", None, 40, 20, 20, 1, api_name="/load_data")
    two.predict("builtin", None, 64, 20, 30, 2, api_name="/load_data")
    assert one.predict("minilm", api_name="/evaluate_baseline")[3]["n"] == 20
    assert two.predict("minilm", api_name="/evaluate_baseline")[3]["n"] == 30
    jobs = [one.submit(*SHORT_RUN, api_name="/train"), two.submit(*SHORT_RUN, api_name="/train")]
    (_, result_one, details_one), (_, result_two, details_two) = (job.result(timeout=300) for job in jobs)
    # 40 reviews + 37 sentence windows, batches of 8; 64 reviews + 53 windows (one per review of 2+ sentences)
    assert (details_one["train"]["max_steps"], details_one["finetuned"]["n"]) == (10, 20)
    assert (details_two["train"]["max_steps"], details_two["finetuned"]["n"]) == (15, 30)
    assert "on 20 test reviews" in result_one and "on 30 test reviews" in result_two

    sessions = server_session(app, one), server_session(app, two)
    assert sessions[0] is not sessions[1]
    studies = [session.study for session in sessions]
    assert [len(study.splits.train) for study in studies] == [40, 64]
    assert studies[0].runs[0].history != studies[1].runs[0].history  # each its own loss curve
    assert studies[0].tuned is not studies[1].tuned
    assert sessions[0].scratch_dir() != sessions[1].scratch_dir()
    for session, n in zip(sessions, (20, 30)):  # each its own adapter, in its own folder
        assert Path(session.export_zip).parent == session.scratch_dir()
        with zipfile.ZipFile(session.export_zip) as archive:
            assert f'"n": {n}' in archive.read("lora-adapter/report.json").decode()
    for client, session in zip((one, two), sessions):  # each answers with its own trained model
        assert_the_tuned_models_answer(client, session, "A wonderful film.")


# 2. Queueing


def outputs_say(job, words: str) -> bool:
    return any(words in str(output) for output in job.outputs())


def test_runs_wait_their_turn_in_a_line_that_shows_places_and_refuses_past_its_size(app, connect, monkeypatch):
    from lora_demo.ui import session as sessions

    monkeypatch.setattr(sessions.LINE, "capacity", 2)  # the running run and 2 waiting
    clients = [connect() for _ in range(4)]
    for client in clients:
        client.predict(*SIZES, api_name="/load_data")
    running = clients[0].submit(*LONG_RUN, api_name="/train")
    wait_until_running(running)
    waiting = []
    for client, place in zip(clients[1:3], ("1 run ahead", "2 runs ahead")):  # one at a time: these wait, told where
        job = client.submit(*SHORT_RUN, api_name="/train")
        waiting.append(job)
        wait_for(lambda job=job, place=place: outputs_say(job, f"{place} of yours"), 30)
    message = app_error(lambda: clients[3].predict(*SHORT_RUN, api_name="/train"))
    assert "2 runs are already waiting for the machine: please try again in a few minutes" in message
    # the page's Classify runs outside the queue and answers while runs wait (gradio_client, which sends every call
    # through the queue, is told the app is busy when that queue is full)
    baseline, _, _ = classify_as_the_browser_does(app, clients[3], "A fine film.")
    assert answer_label(baseline)
    assert "Stopping" in stop_as_the_browser_does(app, clients[0])  # Stop is outside the queue too
    assert running.result(timeout=120)[2]["train"]["stopped"] is True
    for job in waiting:  # in their turn
        assert job.result(timeout=300)[2]["train"]["stopped"] is False
    assert answer_label(clients[3].predict("A fine film.", api_name="/classify")[0])


def test_a_run_that_waits_leaves_the_line_on_stop(app, connect):
    first, second = connect(), connect()
    for client in (first, second):
        client.predict(*SIZES, api_name="/load_data")
    running = first.submit(*LONG_RUN, api_name="/train")
    wait_until_running(running)
    waiting = second.submit(*SHORT_RUN, api_name="/train")
    wait_for(lambda: outputs_say(waiting, "1 run ahead of yours"), 30)
    assert "Left the line" in stop_as_the_browser_does(app, second)
    assert "nothing was trained" in str(waiting.result(timeout=60))
    assert server_session(app, second).study.tuned is None
    stop_as_the_browser_does(app, first)
    running.result(timeout=120)


# 3. Stop really stops (the exact step is checked in test_train.test_stop_flag_ends_training_early)


def test_stop_ends_the_thread_and_keeps_a_usable_adapter(app, connect):
    from lora_demo.lora import load_adapter

    client = connect()
    client.predict(*SIZES, api_name="/load_data")
    job = client.submit(*LONG_RUN, api_name="/train")
    wait_until_running(job)
    assert training_threads()
    assert "Stopping" in client.predict(api_name="/stop_training")
    _, result, details = job.result(timeout=120)
    assert details["train"]["stopped"] is True and details["train"]["steps"] < details["train"]["max_steps"]
    assert details["train"]["max_steps"] >= 800  # and as many again at most: the default recipe's sentence windows
    assert "Stopped" in result
    wait_for(lambda: not training_threads(), timeout=10)
    updates = len(job.outputs())
    time.sleep(1)
    assert len(job.outputs()) == updates, "the loss chart stops updating"
    session = server_session(app, client)
    assert not session.training
    import zipfile

    with zipfile.ZipFile(session.export_zip) as archive:
        archive.extractall(session.scratch_dir() / "unzipped")
    tuned, metadata = load_adapter(session.scratch_dir() / "unzipped" / "lora-adapter")
    assert metadata["model"] == "minilm"
    assert_the_tuned_models_answer(client, session, "What a great film.")  # the partly trained model answers


# 4. Disconnect: the run ends and the session's memory is freed


def test_a_client_that_goes_away_mid_run_ends_it_and_frees_the_session(app, connect):
    client = connect()
    client.predict(*SIZES, api_name="/load_data")
    client.predict("A fine film.", api_name="/classify")
    job = client.submit(*LONG_RUN, api_name="/train")
    wait_until_running(job)
    session = server_session(app, client)
    scratch = session.scratch_dir()
    client.close()  # the heartbeat stops, as when a tab closes
    wait_for(lambda: released(session) and not training_threads(), timeout=30)
    assert not session.holds_study  # its data, baseline, LoRA model and runs are gone
    assert not scratch.exists()


# 5. Responsive during training


def test_classify_answers_while_another_session_trains(app, connect):
    from lora_demo.ui.train import REDRAW_SECONDS

    trainer, reader = connect(), connect()
    trainer.predict(*SIZES, api_name="/load_data")
    reader.predict("Nice.", api_name="/classify")  # the shared zero-shot model is loaded
    submitted = time.monotonic()
    job = trainer.submit(*LONG_RUN, api_name="/train")
    wait_until_running(job)
    latencies = []
    for text in ("A wonderful film.", "Dull and far too long.", "Not bad at all.", "I loved it.", "Awful."):
        begin = time.monotonic()
        baseline, _, _ = reader.predict(text, api_name="/classify")
        latencies.append(time.monotonic() - begin)
        assert answer_label(baseline)
    assert not job.done(), "the training run was still going while Classify answered"
    assert max(latencies) < 5, latencies
    trainer.predict(api_name="/stop_training")
    job.result(timeout=120)
    # the chart is redrawn at most every REDRAW_SECONDS, however fast the steps are
    assert len(job.outputs()) <= (time.monotonic() - submitted) / REDRAW_SECONDS + 2, len(job.outputs())


# 6. Bad text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        (None, "empty"),
        ("x", None),
        ("word " * 3_900, None),  # 19,500 characters: the tokenizer keeps the head and the tail
        ("x" * 100_000, "keep it under 20,000"),
        ("<script>alert('hi')</script><b>Great</b> film, <i>loved</i> it &amp; more", None),
        ("😍🔥🎬 best film ever 👏👏", None),
        ("C'était un film magnifique, je l'ai adoré.", None),
        ("この映画は本当に素晴らしかった。", None),
        ("\x00\x01\x02\x7f\ufffd\u200b \xff\xfe binary-looking", None),
        (["a review"] * 10_000, "send one review as a string"),
        ({"text": "a review"}, "send one review as a string"),
    ],
    ids=[
        "empty",
        "whitespace",
        "none",
        "one-char",
        "long",
        "100k",
        "html",
        "emoji",
        "french",
        "japanese",
        "binary",
        "list-of-10k",
        "dict",
    ],
)
def test_any_text_gets_a_label_or_a_clear_message(app, connect, text, expected):
    client = connect()
    if expected is None:
        baseline, _, _ = client.predict(text, api_name="/classify")
        assert answer_label(baseline)
    else:
        assert expected in app_error(lambda: client.predict(text, api_name="/classify"))


# 7. Bad settings


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ((0, 32, 0.0, ["query"], 0, 1, 1e-3, 8, 32), "minimum value 1"),  # r = 0
        ((8, 32, 0.0, ["query"], 0, 1, -1e-3, 8, 32), "-0.001"),  # negative learning rate
        ((8, 32, 0.0, ["query"], 0, 1, 100.0, 8, 32), "100"),  # absurd learning rate
        ((8, 32, 1.5, ["query"], 0, 1, 1e-3, 8, 32), "1.5"),  # dropout 1.5
        ((8, 32, 0.0, ["nonexistent"], 0, 1, 1e-3, 8, 32), "nonexistent"),  # no such module
        ((8, 32, 0.0, [], 0, 1, 1e-3, 8, 32), "target_modules"),
        ((8, 32, 0.0, ["query"], 9, 1, 1e-3, 8, 32), "maximum value 6"),  # minilm has 6 layers
    ],
    ids=["r-0", "negative-lr", "absurd-lr", "dropout-1.5", "unknown-module", "no-module", "too-many-layers"],
)
def test_bad_training_settings_are_clear_messages(app, connect, recipe, expected):
    client = connect()
    assert expected in app_error(lambda: client.predict(*recipe, api_name="/train"))
    assert not training_threads()


def test_sizes_larger_than_the_data_are_a_clear_message(app, connect):
    client = connect()
    assert "holds only 160" in app_error(
        lambda: client.predict("builtin", None, 400, 20, 20, 1, api_name="/load_data")
    )


# 8. Uploads


def upload(app, path: Path):
    import httpx

    with path.open("rb") as handle:
        return httpx.post(f"{app.url}gradio_api/upload", files={"files": (path.name, handle)}, timeout=60)


def test_uploads_over_the_size_limit_never_reach_the_disk(app, tmp_path):
    from gradio.utils import get_upload_folder

    from lora_demo.ui.classify import MAX_BATCH_BYTES

    big = tmp_path / "big.csv"
    big.write_bytes(b"text\n" + b"x" * (MAX_BATCH_BYTES + 1))
    response = upload(app, big)
    assert response.status_code == 413 and "exceeded maximum allowed size" in response.text
    assert not list(Path(get_upload_folder()).rglob("big.csv"))


def reviews_csv(path: Path, rows: int = 120, encoding: str = "utf-8") -> Path:
    import pandas as pd

    frame = pd.DataFrame({"text": [f"review {i}: a {'good' if i % 2 else 'bad'} film" for i in range(rows)]})
    frame["label"] = [i % 2 for i in range(rows)]
    frame.to_csv(path, index=False, encoding=encoding)
    return path


def test_your_own_data_file_loads(app, connect, tmp_path):
    from gradio_client import handle_file

    client = connect()
    data = reviews_csv(tmp_path / "my reviews.csv")
    summary = client.predict("upload", handle_file(str(data)), 40, 20, 20, 1, api_name="/load_data")[0]
    assert "40 / 20 / 20" in summary and "your file my reviews.csv" in summary


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("page.html", b"<html><script>alert(1)</script></html>", "Invalid file type"),
        ("image.svg", b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>", "Invalid file type"),
        ("broken.parquet", b"PAR1 this is not parquet", "could not be read as parquet"),
        ("broken.jsonl", b'{"text": "unterminated', "could not be read as jsonl"),
        ("columns.csv", b"review,stars\nnice,9\n", "has no text or label column"),
        ("labels.csv", b"text,label\nnice,maybe\nbad,no\n", "labels must be 0/1 or negative/positive"),
        ("latin1.csv", "text,label\ncaf\xe9 cr\xe8me film,1\n".encode("latin-1"), "could not be read as csv"),
        ("empty.csv", b"", "is empty"),
    ],
)
def test_bad_data_files_are_clear_messages(app, connect, tmp_path, name, content, expected):
    from gradio_client import handle_file

    client = connect()
    path = tmp_path / name
    path.write_bytes(content)
    message = app_error(lambda: client.predict("upload", handle_file(str(path)), 40, 20, 20, 1, api_name="/load_data"))
    assert expected in message


def test_a_file_path_the_server_did_not_receive_is_refused(app, connect):
    """An API client may name a file by path; gradio only accepts files in its own upload folder."""
    client = connect()
    fake = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}, "orig_name": "passwd.csv"}
    message = app_error(lambda: client.predict("upload", fake, 40, 20, 20, 1, api_name="/load_data"))
    assert "root:" not in message


def test_batch_output_is_written_only_to_the_sessions_folder(tmp_path):
    from lora_demo.ui.classify import classify_file
    from lora_demo.ui.session import SessionData

    session = SessionData()
    data = reviews_csv(tmp_path / "batch.csv", rows=6, encoding="latin-1")
    labelled = Path(classify_file(str(data), session))
    assert labelled.parent == session.scratch_dir() and labelled.is_file()
    assert not (tmp_path / "labelled.csv").exists()
    session.close()
    assert not labelled.parent.exists(), "the session's folder goes with the session"


# 9. Paths


def test_files_outside_the_apps_own_outputs_are_never_served(app, tmp_path):
    import httpx

    from lora_demo.ui.classify import classify_file
    from lora_demo.ui.session import SessionData

    session = SessionData()
    scratch_file = classify_file(str(reviews_csv(tmp_path / "batch.csv", rows=4)), session)
    probes = [
        "/etc/passwd",
        "../../../../../../etc/passwd",
        "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        str(REPO_ROOT / "app.py"),
        str(REPO_ROOT / "lora_demo" / "ui" / "session.py"),
        str(IMDB_DIR / "train.parquet"),
        scratch_file,  # a session's own folder: downloads are served from gradio's cached copy only
    ]
    assert all(Path(probe).is_file() for probe in probes[3:]), "a probe of a file that exists means something"
    for probe in probes:
        for route in ("gradio_api/file=", "file="):
            response = httpx.get(f"{app.url}{route}{probe}", timeout=30)
            assert response.status_code in (403, 404), (route, probe, response.status_code)
            assert "root:" not in response.text and "import" not in response.text
    session.close()


@pytest.mark.parametrize("model", ["gpt2", "../../etc/passwd", "/work/models/minilm"])
def test_models_come_only_from_the_registry(app, connect, model):
    client = connect()
    message = app_error(lambda: client.predict(model, api_name="/evaluate_baseline"))
    assert "minilm" in message  # the choices are listed


def test_the_app_serves_no_folder_an_operator_might_expose(app, tmp_path, monkeypatch):
    """Files in the places `allowed_paths` would most likely name (the temporary folder, the working directory,
    the runs folder, the package's assets) are refused: gradio serves only its cache of the app's outputs."""
    import os
    import tempfile

    import httpx

    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("LORA_DEMO_RUNS", str(runs))
    handle, in_tmp = tempfile.mkstemp(suffix=".txt", prefix="lora-demo-probe-")
    os.close(handle)
    probes = [Path(in_tmp), Path.cwd() / "README.md", runs / "probe.txt", REPO_ROOT / "assets" / "reviews.jsonl"]
    try:
        for probe in probes:
            if not probe.exists():
                probe.write_text("not to be served")
            response = httpx.get(f"{app.url}gradio_api/file={probe}", timeout=30)
            assert response.status_code in (403, 404), (probe, response.status_code)
    finally:
        Path(in_tmp).unlink()


# 11. Remote code is never trusted: a model or tokenizer folder that asks to run its own code is refused unrun


def remote_code_folder(folder: Path, marker: Path, asks: str) -> Path:
    """A copy of the bundled MiniLM whose config (`asks="model"`) or tokenizer config asks to run `evil.py`,
    which writes `marker` when imported."""
    import json
    import shutil

    from lora_demo.models import bundled_minilm_path

    shutil.copytree(bundled_minilm_path(), folder)
    (folder / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('remote code ran')\n"
        "from transformers import BertConfig, BertModel, BertTokenizerFast\n"
        "class EvilConfig(BertConfig):\n    model_type = 'evil'\n"
        "class EvilModel(BertModel):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(BertTokenizerFast):\n    pass\n"
    )
    name = "config.json" if asks == "model" else "tokenizer_config.json"
    config = json.loads((folder / name).read_text())
    if asks == "model":
        config.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"})
    else:
        config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}
    (folder / name).write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("asks", ["model", "tokenizer"])
def test_remote_code_is_never_trusted(tmp_path, monkeypatch, asks):
    from lora_demo import models

    marker = tmp_path / "ran.txt"
    folder = remote_code_folder(tmp_path / "model", marker, asks)
    monkeypatch.setattr(models, "bundled_minilm_path", lambda: str(folder))
    if asks == "model":  # an architecture only its own code knows: refused
        with pytest.raises(ValueError, match="trust_remote_code"):
            models.load_bundle("minilm")
    else:  # a tokenizer transformers has a class for: that class, never the folder's
        assert type(models.load_bundle("minilm").tokenizer).__name__ != "EvilTokenizer"
    assert not marker.exists()


def test_gradio_is_pinned_past_the_known_advisories():
    import gradio
    from packaging.version import Version

    pins = [line for line in (REPO_ROOT / "requirements.txt").read_text().splitlines() if line.startswith("gradio==")]
    assert len(pins) == 1 and Version(pins[0].split("==")[1]) >= Version("6.25")
    assert Version(gradio.__version__) >= Version("6.25")


# 11. Crash recovery


def test_a_crash_in_training_is_reported_frees_its_slot_and_memory_and_the_next_run_works(app, connect, monkeypatch):

    import lora_demo.train
    from lora_demo.ui.errors import GENERIC_ERROR, OUT_OF_MEMORY

    real_train = lora_demo.train.train_lora
    plan = [RuntimeError("internal detail"), None, MemoryError(), None]  # None: train for real
    crashed_models = []

    def sometimes_crashing(bundle, *args, on_event, **kwargs):
        error = plan.pop(0)
        if error is None:
            return real_train(bundle, *args, on_event=on_event, **kwargs)
        crashed_models.append(weakref.ref(bundle.model))
        on_event(lora_demo.train.TrainEvent("progress", step=1, epoch=0.2, max_steps=5))
        time.sleep(1)  # long enough for another session's run to queue behind this one
        raise error

    monkeypatch.setattr(lora_demo.train, "train_lora", sometimes_crashing)
    crashed, queued = connect(), connect()
    for client in (crashed, queued):
        client.predict(*SIZES, api_name="/load_data")
    failing = crashed.submit(*SHORT_RUN, api_name="/train")
    wait_until_running(failing)
    behind = queued.submit(*SHORT_RUN, api_name="/train")
    wait_for(lambda: outputs_say(behind, "1 run ahead of yours"), timeout=30)  # waits for the machine
    message = app_error(lambda: failing.result(timeout=60))
    assert GENERIC_ERROR in message and "internal detail" not in message
    assert behind.result(timeout=300)[2]["train"]["stopped"] is False, "a failed run never blocks the next one"

    out_of_memory = crashed.submit(*SHORT_RUN, api_name="/train")
    assert OUT_OF_MEMORY in app_error(lambda: out_of_memory.result(timeout=60))
    wait_for(lambda: not training_threads(), timeout=10)
    gc.collect()
    assert len(crashed_models) == 2 and all(ref() is None for ref in crashed_models), "a crashed run's model is freed"
    _, result, details = crashed.predict(*SHORT_RUN, api_name="/train")  # the same session trains again
    assert details["train"]["stopped"] is False and "Done" in result


# 12. Memory: a dozen sessions, one after another


@pytest.mark.slow
def test_a_dozen_sessions_leave_memory_where_the_first_left_it(app):
    """Each session loads data, classifies, trains a little and goes away; the server's memory must not grow with
    the number of sessions it has seen. (Clients are dropped at once: the test process is also the server.)"""
    from gradio_client import Client

    sessions = 12
    readings = []
    for i in range(sessions):
        client = Client(app.url, verbose=False, download_files=False)
        client.predict("builtin", None, 24, 8, 8, i, api_name="/load_data")
        client.predict("A wonderful film.", api_name="/classify")
        client.predict(8, 32, 0.0, ["query", "value"], 0, 1, 1e-3, 8, 32, api_name="/train")
        session = server_session(app, client)
        scratch = session.scratch_dir()
        assert session.study.tuned is not None and scratch.exists()
        client.close()
        del client
        wait_for(lambda session=session: released(session), timeout=30)
        assert not session.holds_study and not scratch.exists()
        wait_for(lambda: not app.demo.server_app.iterators, timeout=10)  # gradio has dropped the finished events
        time.sleep(0.5)
        gc.collect()
        readings.append(rss_mb())
    first, last = readings[0], readings[-1]
    print(
        f"\nRSS after session 1: {first:.0f} MB, after session {sessions}: {last:.0f} MB, peak {max(readings):.0f} MB"
    )
    print([round(mb) for mb in readings])
    assert last <= first * 1.2, [round(mb) for mb in readings]


# 13. Errors never leak internals


def test_every_event_handler_turns_errors_into_messages():
    from lora_demo.ui import build_demo

    handlers = [fn for fn in build_demo().fns.values() if fn.fn is not None and fn.name != "load_example"]
    assert len(handlers) > 20
    assert [fn.name for fn in handlers if not getattr(fn.fn, "guarded", False)] == []


def test_an_unexpected_error_shows_a_generic_message_and_logs_the_traceback(app, connect, monkeypatch, caplog):
    import lora_demo.baseline
    from lora_demo.ui.errors import GENERIC_ERROR

    def broken(*args, **kwargs):
        raise KeyError("/srv/secret/path internal detail")

    monkeypatch.setattr(lora_demo.baseline, "zero_shot_predict", broken)
    client = connect()
    with caplog.at_level("ERROR", logger="lora_demo.ui"):
        message = app_error(lambda: client.predict("Fine film.", api_name="/classify"))
    assert GENERIC_ERROR in message and "secret" not in message and "KeyError" not in message
    logged = "\n".join(record.getMessage() + str(record.exc_info) for record in caplog.records)
    assert "unexpected error in classify" in logged and "/srv/secret/path" in logged


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_a_bad_queue_size_stops_the_app_with_a_message(monkeypatch, value):
    from lora_demo.ui import queue_size

    monkeypatch.setenv("LORA_DEMO_QUEUE_SIZE", value)
    with pytest.raises(SystemExit, match="LORA_DEMO_QUEUE_SIZE must be a whole number of at least 1"):
        queue_size()
    monkeypatch.setenv("LORA_DEMO_QUEUE_SIZE", "40")
    assert queue_size() == 40


def test_sessions_that_never_say_goodbye_are_closed_when_idle(tmp_path):
    """A client of the plain HTTP API has no heartbeat, so no unload: its session is closed once idle, by a thread
    of its own (no other visitor needs to arrive)."""
    import copy

    from lora_demo.ui.classify import classify_file
    from lora_demo.ui.errors import guard
    from lora_demo.ui.session import IDLE_SECONDS, OPEN_SESSIONS, SessionData, close_idle_sessions

    template = SessionData()
    idle, busy = copy.deepcopy(template), copy.deepcopy(template)  # as gradio makes each session's state
    assert {idle, busy} <= set(OPEN_SESSIONS)
    labelled = Path(guard(classify_file)(str(reviews_csv(tmp_path / "batch.csv", rows=4)), idle))
    for session in (idle, busy):
        session.last_used -= IDLE_SECONDS + 1  # half an hour passes
    guard(classify_file)(str(tmp_path / "batch.csv"), busy)  # every event marks its session as used
    assert close_idle_sessions() == [idle]
    assert idle.closed and not labelled.exists()
    assert not busy.closed and busy.scratch_dir().exists()
    busy.close()


def test_the_sweeper_closes_idle_sessions_with_no_visitor_arriving(monkeypatch):
    import copy

    from lora_demo.ui import session as sessions

    monkeypatch.setattr(sessions, "SWEEP_SECONDS", 0.1)
    monkeypatch.setattr(sessions, "_SWEEPER", [])  # a sweeper of this test's own, with the short interval
    monkeypatch.setenv("LORA_DEMO_IDLE_MINUTES", "0.01")  # 0.6 s
    idle = copy.deepcopy(sessions.SessionData())  # as gradio makes a session: the sweeper starts
    idle.scratch_dir()
    wait_for(lambda: released(idle), timeout=10)
