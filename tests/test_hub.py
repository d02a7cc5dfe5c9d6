"""The path a Hugging Face Space takes, against the local stand-in of the Hub (`tests/hub_stub.py`).

The CLI and the app run in processes of their own, as on a Space: `HF_ENDPOINT` at the stand-in on 127.0.0.1,
a fresh `HF_HOME` per test, no `LORA_DEMO_DATA`. (The Hub client reads these when it is imported, so they cannot
change inside the test process, which runs offline.) Sizes are tiny: T5-small is full size, and the CPU is shared.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO_ROOT, app_error
from hub_stub import Faults, start_stub

pytestmark = pytest.mark.hub
T5 = "google-t5/t5-small"
IMDB = "stanfordnlp/imdb"
SHARD = "plain_text/train-00000-of-00001.parquet"
TRAIN_SHARD = f"{IMDB}/{SHARD}"  # as the stand-in's faults name it
# whole reviews only (no sentence windows), so a step is 16 of the 32 training reviews
TINY_TRAIN = ["--epochs", "1", "--max-length", "16", "--batch-size", "16", "--short-windows", "0", "--no-resources"]


@pytest.fixture(scope="module")
def stub():
    server = start_stub()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def hub(stub):
    """The stand-in, behaving and with an empty request log; put back to behaving afterwards."""
    stub.faults = Faults()
    stub.requests.clear()
    yield stub
    stub.faults = Faults()


def space_env(home: Path, endpoint: str, offline: bool = False) -> dict[str, str]:
    """The environment of a Space: the Hub at `endpoint`, the Hugging Face cache in `home`, no local IMDb."""
    env = {key: value for key, value in os.environ.items() if key not in ("LORA_DEMO_DATA", "TRANSFORMERS_OFFLINE")}
    threads = os.environ.get("LORA_DEMO_TEST_THREADS", "1")
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(home),
        HF_HUB_OFFLINE="1" if offline else "0",
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        TOKENIZERS_PARALLELISM="false",
        GRADIO_ANALYTICS_ENABLED="False",
    )
    return env


def run_cli(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lora_demo", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def fetch_t5(env: dict) -> subprocess.CompletedProcess:
    """Download T5-small through the package, as the app does before training, and nothing more."""
    code = "from lora_demo.models import download_model; download_model('t5-small')"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The CLI's answer to a failure: exit 2 and one line, never a traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


def cached_file(home: Path, repo_type: str, repo_id: str, filename: str) -> Path | None:
    """The file as the Hub client cached it (the snapshot's link to its blob), or None."""
    folder = home / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots"
    found = sorted(folder.glob(f"*/{filename}"))
    return found[0] if found else None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def served(hub, repo_type: str, repo_id: str, filename: str):
    return hub.repos[(repo_type, repo_id)].files[filename]


def test_cli_loads_imdb_from_the_hub(hub, tmp_path):
    result = run_cli(
        space_env(tmp_path / "hf", hub.url), *"data --data hub --train-size 40 --val-size 20 --test-size 20".split()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["source"] == "hub"
    assert summary["label_counts"]["train"] == {"negative": 20, "positive": 20}
    # the two splits the study reads, each once; the unsupervised split is never fetched
    assert hub.downloads("/datasets/stanfordnlp/imdb/resolve/*/plain_text/train-*.parquet") == 1
    assert hub.downloads("/datasets/stanfordnlp/imdb/resolve/*/plain_text/test-*.parquet") == 1
    assert hub.downloads("*unsupervised*") == 0
    shard = cached_file(tmp_path / "hf", "dataset", IMDB, SHARD)
    assert shard is not None and sha256(shard) == served(hub, "dataset", IMDB, SHARD).sha256


def test_cli_trains_t5_small_from_the_hub(hub, tmp_path):
    report_file = tmp_path / "report.json"
    result = run_cli(
        space_env(tmp_path / "hf", hub.url),
        *"train --model t5-small --data hub --train-size 32 --val-size 16 --test-size 16".split(),
        *TINY_TRAIN,
        "--report",
        str(report_file),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["model"] == "t5-small" and report["data"]["source"] == "hub"
    assert report["data"]["sizes"] == {"train": 32, "val": 16, "test": 16}
    assert report["train"]["steps"] == 2
    assert hub.downloads(f"/{T5}/resolve/*/model.safetensors") == 1
    weights = cached_file(tmp_path / "hf", "model", T5, "model.safetensors")
    assert weights is not None and sha256(weights) == served(hub, "model", T5, "model.safetensors").sha256


def test_offline_uses_the_cache_once_the_hub_is_gone(tmp_path):
    """Download once, stop the Hub: HF_HUB_OFFLINE=1 trains T5-small on the Hub's IMDb from the cache alone."""
    home = tmp_path / "hf"
    server = start_stub()
    try:
        online = space_env(home, server.url)
        for first in (fetch_t5(online), run_cli(online, "data", "--data", "hub")):
            assert first.returncode == 0, first.stderr[-3000:]
    finally:
        server.shutdown()
        server.server_close()
    report_file = tmp_path / "report.json"
    offline = run_cli(
        space_env(home, server.url, offline=True),
        *"train --model t5-small --data hub --train-size 16 --val-size 4 --test-size 4".split(),
        *TINY_TRAIN,
        "--report",
        str(report_file),
    )
    assert offline.returncode == 0, offline.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["model"] == "t5-small" and report["data"]["source"] == "hub"
    # not offline, but the Hub does not answer: the cache as well, and the default source is the cached IMDb
    gone = run_cli(space_env(home, server.url), "data", "--train-size", "8", "--val-size", "4", "--test-size", "4")
    assert gone.returncode == 0, gone.stderr[-3000:]
    assert json.loads(gone.stdout)["source"] == "hub"
    # an empty cache offline: refused with one line each, as before
    empty = space_env(tmp_path / "empty", server.url, offline=True)
    assert "not in its local cache" in one_line_error(run_cli(empty, "data", "--data", "hub"))
    message = one_line_error(run_cli(empty, "evaluate", "--model", "t5-small", "--data", "builtin"))
    assert "google-t5/t5-small" in message and "not in the local Hugging Face cache" in message


def test_a_download_cut_half_way_is_refused_never_used_and_resumed(hub, tmp_path):
    home = tmp_path / "hf"
    env = space_env(home, hub.url)
    evaluate = ["evaluate", "--model", "t5-small", "--data", "builtin", "--max-length", "16"]
    evaluate += ["--train-size", "4", "--val-size", "2", "--test-size", "4"]
    hub.faults.cut = [f"{T5}/model.safetensors"]
    started = time.monotonic()
    message = one_line_error(run_cli(env, *evaluate))
    assert time.monotonic() - started < 90
    assert f"could not download {T5}" in message and "try again" in message
    assert cached_file(home, "model", T5, "model.safetensors") is None  # the half file is not in the snapshot
    weights = served(hub, "model", T5, "model.safetensors")
    hub.faults.cut = []
    result = fetch_t5(env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranges = [
        byte_range
        for method, path, byte_range in hub.requests
        if method == "GET" and path.startswith(f"/{T5}/resolve/") and path.endswith("/model.safetensors")
    ]
    resumed_from = [int(r[len("bytes=") : -1]) for r in ranges if r and r.startswith("bytes=") and r.endswith("-")]
    assert any(0 < start <= weights.size // 2 for start in resumed_from), ranges  # the first run's part is reused
    assert sha256(cached_file(home, "model", T5, "model.safetensors")) == weights.sha256


# ---------------------------------------------------------------- the app as on a Space


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def space_app(env: dict, log: Path):
    """`python app.py` as a Space starts it, on a free port of 127.0.0.1; yields its URL."""
    port = free_port()
    env = {**env, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port)}
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the app did not start within 180 s"
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url, timeout=5).close()
                break
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def new_client(url):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


def load_data(client, source: str, sizes=(40, 20, 20)) -> str:
    return client.predict(source, None, *sizes, 42, api_name="/load_data")[0]


def test_space_app_loads_imdb_from_the_hub_and_a_second_visitor_does_not_download_again(hub, tmp_path):
    with space_app(space_env(tmp_path / "hf", hub.url), tmp_path / "app.log") as url:
        first = load_data(new_client(url), "default")
        assert "40 / 20 / 20 train / validation / test reviews from `hub`" in first
        second = load_data(new_client(url), "default", (30, 10, 10))
        assert "30 / 10 / 10 train / validation / test reviews from `hub`" in second
    assert hub.downloads(f"/datasets/{IMDB}/resolve/*/{SHARD}") == 1


def test_space_app_stays_usable_while_the_hub_misbehaves_and_recovers(hub, tmp_path):
    home = tmp_path / "hf"
    with space_app(space_env(home, hub.url), tmp_path / "app.log") as url:
        client = new_client(url)
        # the first request imports torch and transformers (seconds on a busy machine): not the Hub's time
        assert "from `builtin`" in load_data(client, "builtin")
        # a Hub that answers after 10 s: refused once the 3 s probe gives up
        hub.faults.delay = 10
        started = time.monotonic()
        message = app_error(lambda: load_data(client, "hub"))
        assert time.monotonic() - started < 8
        assert "not reachable" in message and "stanfordnlp/imdb" in message
        hub.faults.delay = 0
        assert "from `builtin`" in load_data(client, "builtin")  # the app is still usable meanwhile
        time.sleep(10)  # the probe's answer is trusted for 10 s
        for fault, expected, bound in (
            (Faults(status={TRAIN_SHARD: 500}), "the Hub answered HTTP 500", 60),
            (Faults(status={TRAIN_SHARD: 404}), "a file is missing (HTTP 404", 15),
            (Faults(cut=[TRAIN_SHARD]), "could not download stanfordnlp/imdb", 30),
        ):
            hub.faults = fault
            started = time.monotonic()
            message = app_error(lambda: load_data(client, "hub"))
            assert time.monotonic() - started < bound, fault
            assert expected in message and "try again" in message, message
            assert cached_file(home, "dataset", IMDB, SHARD) is None
            assert "from `builtin`" in load_data(new_client(url), "builtin")
        hub.faults = Faults()  # recovered: the next attempt works, with the whole file
        assert "from `hub`" in load_data(client, "hub")
    shard = cached_file(home, "dataset", IMDB, SHARD)
    assert sha256(shard) == served(hub, "dataset", IMDB, SHARD).sha256


@pytest.mark.browser
def test_browser_study_preset_downloads_and_trains_t5_small_from_the_hub(hub, tmp_path):
    from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, open_tab, screenshot, set_slider

    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    hub.faults.throttle = 25_000_000  # 25 MB/s: T5-small's 242 MB take about 10 s, so the progress shows
    with space_app(space_env(tmp_path / "hf", hub.url), tmp_path / "app.log") as url, sync_playwright() as play:
        browser = play.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.locator("#header").get_by_text("Data:").wait_for()
        on_the_hub = "() => document.querySelector('#header').innerText.includes('Data: IMDb from the Hugging Face')"
        page.wait_for_function(on_the_hub)
        open_tab(page, "3. Train LoRA")
        page.get_by_role("button", name="Original study preset").click()
        note = page.locator("#preset-note")
        note.get_by_text("The original study's configuration is set").wait_for()
        assert "T5-small" in note.inner_text()
        open_tab(page, "1. Dataset")
        page.get_by_text("Loaded 500 / 200 / 100").wait_for()
        for label, value in (("Train reviews", 16), ("Validation reviews", 8), ("Test reviews", 8)):
            page.get_by_label(label).fill(str(value))
        page.get_by_role("button", name="Load data").click()
        page.get_by_text("Loaded 16 / 8 / 8").wait_for()
        open_tab(page, "3. Train LoRA")
        for label, value in (("Batch size", 8), ("Max length (tokens)", 16)):
            set_slider(page, label, value)
        page.get_by_role("button", name="Start training").click()
        page.get_by_text(re.compile(r"Downloading t5-small from the Hugging Face Hub")).first.wait_for()
        page.get_by_text(re.compile(r"[\d.]+/242\.\d MB")).first.wait_for(timeout=20_000)  # bytes, as they arrive
        page.screenshot(path=ARTIFACTS / "9-space-downloading.png", full_page=True)
        page.locator("#train-status").get_by_text("Done:").wait_for()
        assert "t5-small" in page.locator("#train-status").inner_text()
        screenshot(page, "10-space-t5-small")
        browser.close()
    assert hub.downloads(f"/{T5}/resolve/*/model.safetensors") == 1
