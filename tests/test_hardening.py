"""Hardening: nothing a user owns is overwritten, no data file can exhaust memory, saved runs stay per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO_ROOT, app_error, needs_minilm, running_app

from lora_demo.cli import main

# r, alpha, dropout, targets, top layers, epochs, learning rate, batch size, max length
SHORT_RUN = (8, 32, 0.0, ["query", "value"], 0, 1, 1e-3, 8, 32)


@pytest.fixture(scope="module")
def app():
    with running_app(heartbeat_seconds=0.25) as app:
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


def server_session(app, client):
    """The `SessionData` the server holds for a client's session."""
    from lora_demo.ui.session import SessionData

    values = app.demo.state_holder.session_data[client.session_hash].state_data.values()
    return next(value for value in values if isinstance(value, SessionData))


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run_cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as stop:  # argparse's errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err) -> str:
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# 1. --output and --report never destroy what the user owns


@pytest.fixture
def no_work(monkeypatch):
    """Loading data fails the test: a refused --output or --report must be refused before any work."""
    from lora_demo import data, study  # `study` binds its own name at import: patch both, whichever loads first

    def load_splits(*args, **kwargs):
        raise AssertionError("the data was loaded before the output was checked")

    monkeypatch.setattr(data, "load_splits", load_splits)
    monkeypatch.setattr(study, "load_splits", load_splits)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_report_never_overwrites_a_file_of_the_users(tmp_path, capsys, no_work, command):
    notes = tmp_path / "notes.json"
    notes.write_text('{"shopping": ["milk"]}')
    code, _, err = run_cli(capsys, command, "--data", "builtin", "--report", str(notes))
    assert "refusing to overwrite" in one_line_error(code, err) and "--force" in err
    assert notes.read_text() == '{"shopping": ["milk"]}'


def test_train_output_never_replaces_a_folder_of_the_users(tmp_path, capsys, monkeypatch, no_work):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(home)
    for output in (str(home), "."):
        code, _, err = run_cli(capsys, "train", "--data", "builtin", "--output", output)
        assert "refusing to replace" in one_line_error(code, err)
    assert (home / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_reports_of_ours_are_replaced_and_others_only_with_force(tmp_path):
    from lora_demo.config import UserError
    from lora_demo.files import check_report_target, is_our_report, write_report

    report = {"model": "minilm", "data": {"source": "builtin", "sizes": {"train": 1}}, "metrics": {}}
    ours = tmp_path / "r.json"
    write_report(ours, report)
    assert is_our_report(ours)
    write_report(ours, {**report, "metrics": {"accuracy": 1.0}})  # a report of ours is replaced
    assert json.loads(ours.read_text())["metrics"] == {"accuracy": 1.0}
    theirs = tmp_path / "data.json"
    theirs.write_text(json.dumps({"data": [1, 2, 3]}))
    with pytest.raises(UserError, match="refusing to overwrite"):
        write_report(theirs, report)
    assert json.loads(theirs.read_text()) == {"data": [1, 2, 3]}
    write_report(theirs, report, force=True)
    assert json.loads(theirs.read_text()) == report
    with pytest.raises(UserError, match="is a folder"):
        check_report_target(tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json", "r.json"]  # no temporary left


# 2. No data file can exhaust memory: rows and text are counted before a file is read whole


def bomb_parquet(path: Path, rows: int, texts=("a dull film", "a fine film"), seed: int = 0) -> Path:
    """`rows` reviews drawn from a few texts, dictionary-encoded: millions of rows in about a megabyte."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    text = pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, len(texts), rows, dtype=np.int32)), pa.array(texts))
    label = pa.array(rng.integers(0, 2, rows, dtype=np.int8))
    pq.write_table(pa.table({"text": text, "label": label}), path, compression="zstd")
    return path


def peak_rss_of(argv: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run a command; return it and its peak RSS in MB (measured by a parent of its own, so no other child counts)."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stdout.write(done.stdout); sys.stderr.write(done.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(done.returncode)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True, env=env, timeout=120)
    *stderr, peak_kb = done.stderr.strip().splitlines()
    done.stderr = "\n".join(stderr)
    return done, int(peak_kb) / 1024


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = bomb_parquet(tmp_path_factory.mktemp("bomb") / "bomb.parquet", 3_000_000)
    assert 0.5 * 2**20 < path.stat().st_size < 1.5 * 2**20  # about a megabyte
    return path


def test_a_parquet_bomb_is_refused_by_the_cli_in_seconds_and_little_memory(bomb):
    started = time.monotonic()
    done, peak_mb = peak_rss_of([sys.executable, "-m", "lora_demo", "data", "--data", str(bomb)])
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "error: bomb.parquet holds at least 3,000,000 reviews, more than the limit of 100,000 per split "
        "(IMDb's splits hold 25,000): use a smaller file"
    )
    print(f"bomb refused in {seconds:.1f} s, peak RSS {peak_mb:.0f} MB")
    assert seconds < 30 and peak_mb < 1500


@needs_minilm
def test_a_parquet_bomb_uploaded_to_the_app_is_refused_in_seconds_and_little_memory(app, connect, bomb):
    import threading

    from gradio_client import handle_file

    client = connect()
    before, peak, done = rss_mb(), [0.0], threading.Event()

    def sample():  # the server runs in this process: its memory is ours
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        message = app_error(
            lambda: client.predict("upload", handle_file(str(bomb)), 40, 20, 20, 1, api_name="/load_data")
        )
    finally:
        done.set()
        sampler.join()
    seconds = time.monotonic() - started
    assert "bomb.parquet holds at least 3,000,000 reviews, more than the limit of 100,000 per split" in message
    print(f"upload refused in {seconds:.1f} s; server RSS {before:.0f} MB before, peak {peak[0]:.0f} MB")
    # growth, not the absolute figure: the server shares this process with whatever the suite ran before
    assert seconds < 30 and peak[0] - before < 300


def test_caps_hold_in_every_format(tmp_path):
    from lora_demo.config import UserError
    from lora_demo.data import MAX_ROWS, load_reviews

    rows = MAX_ROWS + 1
    (tmp_path / "many.jsonl").write_text('{"text": "a fine film", "label": 1}\n' * rows)
    (tmp_path / "many.csv").write_text("text,label\n" + "a fine film,1\n" * rows)
    for name in ("many.jsonl", "many.csv"):
        with pytest.raises(UserError, match=f"{name} holds at least 10[0-9],[0-9]{{3}} reviews, more than the limit"):
            load_reviews(str(tmp_path / name))
    long_review = "great " * 20_000  # 120,000 characters, where IMDb's longest review has about 14,000
    (tmp_path / "long.csv").write_text(f"text,label\n{long_review},1\nok,0\n")
    with pytest.raises(UserError, match="long.csv has a review of 120,000 characters: the limit is 100,000"):
        load_reviews(str(tmp_path / "long.csv"))
    # a few long texts repeated: tiny on disk, 180 million characters once decoded
    repeated = bomb_parquet(tmp_path / "wide.parquet", 90_000, texts=("x" * 2_000, "y" * 2_000))
    assert repeated.stat().st_size < 2**20
    with pytest.raises(UserError, match="wide.parquet holds more than 100,000,000 characters of text"):
        load_reviews(str(repeated))
    giant = bomb_parquet(tmp_path / "giant.parquet", 1_000, texts=("z" * 1_000_000,))
    with pytest.raises(UserError, match="giant.parquet has a review of 1,000,000 characters"):
        load_reviews(str(giant))


def test_a_full_imdb_sized_file_is_within_the_caps(tmp_path):
    from lora_demo.data import load_reviews

    path = bomb_parquet(tmp_path / "imdb-sized.parquet", 25_000, texts=("a fine film " * 100, "a dull film " * 100))
    assert len(load_reviews(str(path))["all"]) == 25_000


# 8. A split sharded into several files is read whole, or refused


def shard(folder: Path, name: str, reviews) -> None:
    reviews.to_parquet(folder / name)


def test_every_shard_of_a_split_is_loaded(tmp_path, make_reviews):
    from lora_demo.data import load_reviews

    parts = [make_reviews(30, seed=1), make_reviews(50, seed=2), make_reviews(20, seed=3)]
    for i, part in enumerate(parts):
        shard(tmp_path, f"train-{i:05d}-of-00003.parquet", part.assign(text=part["text"] + f" shard{i}"))
    shard(tmp_path, "test.parquet", make_reviews(40, seed=4))
    reviews = load_reviews(str(tmp_path))
    assert len(reviews["train"]) == 100 and len(reviews["test"]) == 40
    assert reviews["train"]["text"].str.extract(r"shard(\d)")[0].value_counts().to_dict() == {
        "1": 50,
        "0": 30,
        "2": 20,
    }


def test_missing_or_ambiguous_shards_are_refused(tmp_path, make_reviews):
    from lora_demo.config import UserError
    from lora_demo.data import load_reviews

    shard(tmp_path, "train-00000-of-00003.parquet", make_reviews(30, seed=1))
    shard(tmp_path, "train-00002-of-00003.parquet", make_reviews(30, seed=2))
    shard(tmp_path, "test.parquet", make_reviews(40, seed=4))
    with pytest.raises(UserError, match="the train split is sharded but incomplete"):
        load_reviews(str(tmp_path))
    shard(tmp_path, "train-00001-of-00003.parquet", make_reviews(30, seed=3))
    shard(tmp_path, "train.parquet", make_reviews(30, seed=5))
    with pytest.raises(UserError, match="several files could be the train split"):
        load_reviews(str(tmp_path))


def test_the_caps_count_all_shards_together(tmp_path):
    from lora_demo.config import UserError
    from lora_demo.data import load_reviews

    for i in range(2):
        bomb_parquet(tmp_path / f"train-{i:05d}-of-00002.parquet", 60_000, seed=i)  # each under the cap of 100,000
    bomb_parquet(tmp_path / "test.parquet", 100)
    with pytest.raises(UserError, match=r"train \(2 shards\) holds at least 120,000 reviews"):
        load_reviews(str(tmp_path))


# 5. Runs the app saves belong to the session that trained them


def test_session_runs_are_listed_only_with_their_key(tmp_path, make_reviews):
    from test_runs import make_run

    from lora_demo.config import UserError
    from lora_demo.runs import list_runs, run_folder, session_runs_root

    mine, theirs = "a" * 32, "b" * 32
    make_run(tmp_path, "operator-run", mtime=1_000)
    make_run(session_runs_root(mine, tmp_path), "app-mine", mtime=2_000)
    make_run(session_runs_root(theirs, tmp_path), "app-theirs", mtime=3_000)
    assert [run["name"] for run in list_runs(tmp_path)] == ["operator-run"]
    assert [run["name"] for run in list_runs(tmp_path, session_key=mine)] == ["app-mine", "operator-run"]
    assert run_folder("app-mine", tmp_path, session_key=mine) == tmp_path / "sessions" / mine / "app-mine"
    for name, key in (("app-theirs", mine), ("app-mine", None), ("sessions", mine)):
        with pytest.raises(UserError, match="no saved run called"):
            run_folder(name, tmp_path, session_key=key)
    with pytest.raises(ValueError, match="32 hexadecimal"):
        session_runs_root("../" + "a" * 29, tmp_path)


@needs_minilm
def test_an_app_saved_run_is_seen_and_loaded_only_by_its_session(app, connect, tmp_path, monkeypatch):
    from test_runs import make_run

    from lora_demo.config import UserError
    from lora_demo.ui.runs import load_run, run_choices

    monkeypatch.setenv("LORA_DEMO_RUNS", str(tmp_path))
    monkeypatch.setenv("LORA_DEMO_SAVE_RUNS", "1")
    make_run(tmp_path, "operator-run")  # written by the CLI: everyone's
    trainer, visitor = connect(), connect()
    for client in (trainer, visitor):
        client.predict("builtin", None, 40, 20, 20, 1, api_name="/load_data")
    trainer.predict(*SHORT_RUN, api_name="/train")
    sessions = server_session(app, trainer), server_session(app, visitor)
    saved = [name for _, name in run_choices(sessions[0]) if name != "operator-run"]
    assert len(saved) == 1 and saved[0].startswith("app-")
    assert [name for _, name in run_choices(sessions[1])] == ["operator-run"]
    assert [name for _, name in run_choices()] == ["operator-run"]
    assert (tmp_path / "sessions" / sessions[0].runs_key / saved[0] / "adapter_model.safetensors").is_file()
    with pytest.raises(UserError, match="no saved run called"):
        load_run(saved[0], sessions[1])
    assert "Loaded the saved run" in load_run(saved[0], sessions[0])


# 3. In CI a missing prerequisite fails the run; locally it skips with the reason


def run_pytest(test: str, **env) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key not in ("CI", "LORA_DEMO_DATA")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", test],
        cwd=REPO_ROOT,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def outcome_of(call) -> tuple[type, str]:
    """Which of pytest's outcomes `call` raised (a skip escaping `pytest.raises` would skip the test itself)."""
    try:
        call()
    except (pytest.fail.Exception, pytest.skip.Exception) as outcome:
        return type(outcome), str(outcome)
    raise AssertionError("neither skipped nor failed")


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_real_data_fails_in_ci_and_skips_locally(tmp_path, monkeypatch, ci):
    import conftest

    gone = tmp_path / "moved-away"
    monkeypatch.setattr(conftest, "DATA_FROM_ENV", str(gone))  # LORA_DEMO_DATA as the tests were started
    monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    assert outcome_of(conftest.locate_real_data) == (
        outcome,
        f"real IMDb (train.parquet and test.parquet) not found at {gone}: set LORA_DEMO_DATA"
        + ("; CI=true, so a missing prerequisite fails instead of skipping" if ci else ""),
    )
    monkeypatch.setattr(conftest, "DATA_FROM_ENV", None)
    monkeypatch.setattr(conftest, "IMDB_DIR", gone)  # ../shared/data/imdb moved away
    assert outcome_of(conftest.locate_real_data)[0] is outcome


def test_the_real_data_tests_use_lora_demo_data(tmp_path, make_reviews):
    """End to end: a pytest run started with LORA_DEMO_DATA reads that folder (here one too small: it fails)."""
    folder = tmp_path / "imdb"
    folder.mkdir()
    for split in ("train", "test"):
        make_reviews(20, seed=1).to_parquet(folder / f"{split}.parquet")
    done = run_pytest("tests/test_data.py::test_real_imdb_parquet", CI="true", LORA_DEMO_DATA=str(folder))
    assert done.returncode == 1, done.stdout
    assert "asked for 40 train + 20 validation reviews but the train split holds only 20" in done.stdout


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_missing_model_or_browser_fails_in_ci_and_skips_locally(monkeypatch, ci):
    import conftest

    monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    minilm_test = SimpleNamespace(get_closest_marker=lambda name: name == "needs_minilm" or None)
    browser_test = SimpleNamespace(get_closest_marker=lambda name: name == "browser" or None)
    monkeypatch.setattr(conftest, "has_minilm", False)
    kind, message = outcome_of(lambda: conftest.pytest_runtest_setup(minilm_test))
    assert kind is outcome and "bundled MiniLM not installed" in message
    conftest.pytest_runtest_setup(browser_test)  # Chromium and playwright are here
    monkeypatch.setattr(conftest, "CHROMIUM", Path("/no/such/chromium"))
    kind, message = outcome_of(lambda: conftest.pytest_runtest_setup(browser_test))
    assert kind is outcome and "no Chromium at /no/such/chromium" in message


# 6. The README and the Space card say what is true


def test_the_space_card_names_the_python_tested_and_the_readme_the_cpu_torch():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    card = readme.split("---\n")[1]
    assert f'python_version: "{sys.version_info.major}.{sys.version_info.minor}"' in card.splitlines()
    pin = next(
        line for line in (REPO_ROOT / "requirements.txt").read_text().splitlines() if line.startswith("torch==")
    )
    cpu = f"pip install {pin} --index-url https://download.pytorch.org/whl/cpu"
    assert cpu in readme and cpu in (REPO_ROOT / "requirements.txt").read_text()
    assert "CPU build of `torch" not in readme  # the pin alone gives the CUDA build
