"""The study API on tiny models: the whole study, one report schema, split integrity, the preset, the job."""

import json
import zipfile
from dataclasses import replace

import pytest

from lora_demo.cli import main
from lora_demo.config import PRESETS, DataConfig, LoraSettings, TrainConfig, UserError
from lora_demo.study import Models, Study

TINY = TrainConfig(
    epochs=3, learning_rate=0.03, batch_size=8, max_length=32, warmup_ratio=0, logging_steps=2, evals_per_epoch=1
)
LORA = LoraSettings(r=4, alpha=8, target_modules=("query", "value"), top_layers=0)


@pytest.fixture
def models(tiny_encoder_factory):
    return Models(loader=lambda name, seed=42: tiny_encoder_factory(0), check=lambda spec: None)


def csv_config(path, seed=1) -> DataConfig:
    return DataConfig(source=str(path), train_size=48, val_size=16, test_size=32, seed=seed)


def test_the_whole_study_reports_baseline_and_lora_on_the_same_test_reviews(models, toy_csv):
    study = Study(models=models)
    study.load_data(csv_config(toy_csv))
    report = study.run(LORA, TINY).to_dict()
    assert report["baseline"]["n"] == report["finetuned"]["n"] == report["comparison"]["n"] == 32
    assert report["finetuned"]["accuracy"] > report["baseline"]["accuracy"]  # the toy task is learnable
    low, high = report["comparison"]["gain_interval"]
    assert low <= report["comparison"]["accuracy_gain"] <= high
    assert report["trained_on"]["sizes"] == {"train": 48, "val": 16} and "review_hashes" not in report["trained_on"]
    assert report["train"]["steps"] == 18 and not report["train"]["stopped"]
    assert [run.name for run in study.runs] == ["run 1: r 4, fast"]
    assert study.runs[0].accuracy == report["finetuned"]["accuracy"]
    # the ladder: every rung on the same test reviews, trained on the same training reviews
    assert report["tfidf"]["n"] == report["head_only"]["n"] == 32
    assert report["tfidf"]["accuracy"] > 0.9  # one word decides the toy label: TF-IDF finds it
    assert report["rungs"]["head_only"]["steps"] == report["train"]["steps"]  # same epochs and batches
    assert "adapters add" in report["comparison"]["verdict"]
    short = report["short_reviews"]  # the hand-written halves and the IMDb test endings, every rung on each
    assert set(short) == {"dev", "test", "imdb_sentences"}
    for name, n in (("dev", 80), ("test", 80), ("imdb_sentences", 240)):
        assert set(short[name]) == {"n", "baseline", "head_only", "finetuned"} and short[name]["n"] == n
        assert all(short[name][rung]["n"] == n for rung in ("baseline", "head_only", "finetuned"))


def test_a_run_on_the_short_reviews_leaves_them_out_and_says_why(models):
    study = Study(models=models)
    study.load_data(DataConfig(source="builtin", train_size=40, val_size=20, test_size=40, seed=1))
    report = study.run(LORA, replace(TINY, epochs=1)).to_dict()
    short = report["short_reviews"]
    assert "trained on these hand-written reviews" in short["dev"]["reason"] == short["test"]["reason"]
    assert short["imdb_sentences"]["n"] == 240  # still a test for a model trained on the hand-written ones


def test_the_app_download_and_the_cli_report_have_the_same_keys(models, toy_csv, tmp_path, capsys):
    study = Study(models=models)
    study.load_data(csv_config(toy_csv))
    study.train(LORA, TINY)
    archive = study.export_zip(tmp_path / "app", study.report())
    with zipfile.ZipFile(archive) as zipped:
        downloaded = json.loads(zipped.read("lora-adapter/report.json"))
        assert {"lora-adapter/adapter_model.safetensors", "lora-adapter/lora_demo.json"} <= set(zipped.namelist())
    cli_report = tmp_path / "cli.json"
    argv = ["train", "--data", str(toy_csv), "--train-size", "48", "--val-size", "16", "--test-size", "32"]
    argv += ["--epochs", "1", "--max-length", "32", "--report", str(cli_report)]
    assert main(argv, models=models) == 0, capsys.readouterr().err
    cli_keys = set(json.loads(cli_report.read_text()))
    assert cli_keys - {"resources"} == set(downloaded) - {"adapter"} - {"resources"}
    assert {"data", "baseline", "finetuned", "comparison", "trained_on", "params", "train"} <= cli_keys


def test_a_resplit_file_that_shares_reviews_with_training_is_refused(models, toy_csv):
    study = Study(models=models)
    study.load_data(csv_config(toy_csv, seed=1))
    study.train(LORA, TINY)
    study.finetuned()  # the split it trained on: fine
    study.load_data(csv_config(toy_csv, seed=2))  # the same file, split again: its test set holds training reviews
    with pytest.raises(UserError, match=r"^\d+ of the test reviews are among the 64 reviews this model trained"):
        study.finetuned()
    with pytest.raises(UserError, match="seed 1"):
        study.report()


def test_a_saved_run_loaded_onto_an_overlapping_split_is_refused(models, toy_csv, tmp_path):
    trained = Study(models=models)
    trained.load_data(csv_config(toy_csv, seed=1))
    trained.train(LORA, TINY)
    folder = trained.save(tmp_path / "run", trained.report())
    other = Study(models=models)
    other.load_adapter(folder)
    other.load_data(csv_config(toy_csv, seed=1))
    assert other.finetuned().metrics == trained.finetuned().metrics  # the same reviews it was tested on
    other.load_data(csv_config(toy_csv, seed=3))
    with pytest.raises(UserError, match="trained and validated on"):
        other.finetuned()


def test_cli_evaluate_on_a_resplit_csv_exits_2_with_one_line(models, toy_csv, tmp_path, capsys):
    output = tmp_path / "adapter"
    sizes = ["--train-size", "48", "--val-size", "16", "--test-size", "32"]
    argv = ["train", "--data", str(toy_csv), *sizes, "--seed", "1", "--epochs", "1", "--max-length", "32"]
    assert main([*argv, "--output", str(output)], models=models) == 0
    capsys.readouterr()
    code = main(["evaluate", "--data", str(toy_csv), *sizes, "--seed", "2", "--adapter", str(output)], models=models)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "trained and validated on" in err


def test_loading_data_while_a_run_trains_or_is_scored_is_refused(models, toy_csv):
    from lora_demo.study import Compared, Trained
    from lora_demo.train import TrainEvent

    study = Study(models=models)
    study.load_data(csv_config(toy_csv))
    events = study.steps(LORA, TrainConfig(epochs=20, batch_size=2, max_length=32, logging_steps=1))
    next(event for event in events if isinstance(event, TrainEvent))  # the run is under way
    with pytest.raises(UserError, match="training run is going"):
        study.load_data(csv_config(toy_csv, seed=5))
    with pytest.raises(UserError, match="already going"):
        next(study.train_steps(LORA, TINY))
    assert study.stop_training()
    trained = next(event for event in events if isinstance(event, Trained))
    with pytest.raises(UserError, match="training run is going"):  # trained, not yet scored: still this split's
        study.load_data(csv_config(toy_csv, seed=5))
    assert isinstance(next(events), Compared)
    assert study.splits.config.seed == 1 and trained.tuned.trained_on.seed == 1
    study.load_data(csv_config(toy_csv, seed=5))  # once it has ended, loading works again


def test_stopping_the_run_keeps_the_partly_trained_model(models, toy_csv):
    from lora_demo.study import Trained
    from lora_demo.train import TrainEvent

    study = Study(models=models)
    study.load_data(csv_config(toy_csv))
    for event in study.train_steps(LORA, TrainConfig(epochs=20, batch_size=2, max_length=32, logging_steps=1)):
        if isinstance(event, TrainEvent) and event.type == "progress":
            study.stop_training()
        elif isinstance(event, Trained):
            tuned = event.tuned
    assert tuned.result.stopped and 0 < tuned.result.steps < tuned.result.max_steps
    assert not study.training and not study.stop_training()
    assert study.tuned is tuned and study.finetuned().metrics["n"] == 32


def test_the_preset_is_the_same_in_the_cli_and_the_app(tiny_t5_factory, tmp_path, make_reviews, capsys):
    from lora_demo.ui.train import study_preset

    models = Models(loader=lambda name, seed=42: tiny_t5_factory(0), check=lambda spec: None)  # T5-small's stand-in
    preset = PRESETS["study"]
    path = tmp_path / "many.csv"
    make_reviews(820, seed=3).to_csv(path, index=False)
    report_file = tmp_path / "report.json"
    argv = ["train", "--preset", "study", "--data", str(path), "--max-length", "16", "--report", str(report_file)]
    assert main(argv, models=models) == 0, capsys.readouterr().err
    report = json.loads(report_file.read_text())
    assert report["data"]["sizes"] == {"train": 500, "val": 200, "test": 100}
    assert report["train_config"]["epochs"] == 1 and report["model"] == preset.model
    assert (report["lora"]["r"], report["lora"]["alpha"], report["lora"]["dropout"]) == (8, 32, 0.1)
    model, recipe_name, train, val, test, r, alpha, dropout, targets, top, epochs, _ = study_preset()
    assert (train, val, test) == (500, 200, 100) and recipe_name == preset.recipe
    assert model == (preset.model if loadable(preset.model) else preset.fallback_model)
    assert (r["value"], alpha["value"], dropout["value"], epochs["value"]) == (8, 32, 0.1, 1)
    assert targets["value"] == (["q", "v"] if model == "t5-small" else ["query", "value"])


def loadable(name: str) -> bool:
    """Whether a registry model loads here (offline: only from the Hugging Face cache)."""
    from lora_demo.config import get_model_spec
    from lora_demo.models import check_available

    try:
        check_available(get_model_spec(name))
    except UserError:
        return False
    return True


def test_a_second_visitor_on_the_same_data_shares_the_source_and_the_zero_shot_answers(models, toy_csv, monkeypatch):
    """What every session on the same reviews computes alike is computed once per process: the cleaned source,
    the zero-shot answers, the TF-IDF rung. A change to the file is read again."""
    from lora_demo import data
    from lora_demo.compute.runner import Runner

    reads, jobs = [], []
    real_read = data.load_reviews
    monkeypatch.setattr(data, "load_reviews", lambda source, progress=None: reads.append(source) or real_read(source))

    class Counting(Runner):
        def call(self, name, *args, **kwargs):
            jobs.append(name)
            return super().call(name, *args, **kwargs)

    models.runner = Counting()
    first, second = Study(models=models), Study(models=models)
    for study in (first, second):
        study.load_data(csv_config(toy_csv))
        study.baseline()
    assert reads == [str(toy_csv)] and jobs == ["zero_shot"]
    assert second.baseline().predictions == first.baseline().predictions
    toy_csv.write_text(toy_csv.read_text())  # the same file, written again: read again
    second.load_data(csv_config(toy_csv))
    assert reads == [str(toy_csv)] * 2


def test_two_events_of_a_session_reporting_at_once_compute_each_score_once(models, toy_csv, tiny_encoder_factory):
    """A run's own report and a Compare refresh at the same time (two concurrency groups): every job runs once,
    and a data load waits for the report instead of changing the split under it."""
    import threading
    import time

    from lora_demo.compute.runner import Runner

    jobs = []

    class Counting(Runner):
        def call(self, name, *args, **kwargs):
            jobs.append(name)
            time.sleep(0.2)  # a slow job: the other event arrives while it runs
            return super().call(name, *args, **kwargs)

    models.runner = Counting()
    study = Study(models=models)
    study.load_data(csv_config(toy_csv))
    study.train(LORA, TINY)
    jobs.clear()
    reports = []
    threads = [threading.Thread(target=lambda: reports.append(study.report().to_dict())) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    study.load_data(csv_config(toy_csv, seed=5))  # waits for the reports: they were made on seed 1's split
    for thread in threads:
        thread.join()
    assert study.splits.config.seed == 5
    assert [r["data"]["seed"] for r in reports] == [1, 1] and reports[0]["finetuned"] == reports[1]["finetuned"]
    # the jobs one report needs, made by one report alone (its own models: no zero-shot answers shared with the above)
    alone = Study(models=Models(loader=lambda name, seed=42: tiny_encoder_factory(0), check=lambda spec: None))
    alone.models.runner = models.runner
    alone.load_data(csv_config(toy_csv))
    alone.train(LORA, TINY)
    once = len(jobs)
    alone.report()
    assert sorted(jobs[:once]) == sorted(jobs[once:]), "two reports at once ran some job twice"


def test_the_short_review_sets_show_in_the_cli_line_and_the_ladder_and_old_reports_still_read():
    from lora_demo.report import short_reviews_line
    from lora_demo.ui.compare import ladder_rows

    def scores(n, base, tuned):
        return {"n": n, "baseline": {"accuracy": base}, "finetuned": {"accuracy": tuned}}

    rungs = {"baseline": {"accuracy": 0.74, "f1": 0.76}, "finetuned": {"accuracy": 0.85, "f1": 0.85}}
    now = {
        **rungs,
        "short_reviews": {
            "dev": scores(80, 0.70, 0.90),  # for choices: never shown as a result
            "test": scores(80, 0.75, 0.80),
            "imdb_sentences": scores(240, 0.66, 0.71),
        },
    }
    line = short_reviews_line(now)
    assert "80 from the hand-written reviews' test half: baseline 0.750, lora fine-tuned 0.800" in line
    assert "240 from endings of IMDb test reviews: baseline 0.660, lora fine-tuned 0.710" in line
    assert "0.900" not in line
    assert [row[3:5] for row in ladder_rows(now)] == [[0.75, 0.66], [0.8, 0.71]]
    left_out = {**rungs, "short_reviews": {**now["short_reviews"], "test": {"reason": "trained on them"}}}
    assert "test half: left out (trained on them)" in short_reviews_line(left_out)
    assert [row[3] for row in ladder_rows(left_out)] == ["–", "–"]
    saved_before = {**rungs, "short_reviews": scores(160, 0.762, 0.769)}  # all 160 hand-written as one set
    assert "160 from the hand-written reviews: baseline 0.762" in short_reviews_line(saved_before)
    assert [row[3:5] for row in ladder_rows(saved_before)] == [[0.762, "–"], [0.769, "–"]]


def test_the_report_keeps_to_the_lora_models_own_zero_shot_model_when_another_is_selected(
    tiny_encoder_factory, tiny_t5_factory, toy_csv
):
    """Choosing another model on the Baseline tab after training leaves the report's zero-shot rung, head-only
    rung and review map on the model the LoRA run trained."""

    def loader(name, seed=42):
        return tiny_t5_factory(0) if name.startswith("t5") else tiny_encoder_factory(0)

    study = Study(models=Models(loader=loader, check=lambda spec: None))
    study.load_data(csv_config(toy_csv))
    before = study.run(LORA, TINY).to_dict()
    study.select_model("t5-small")
    study.baseline()  # the Baseline tab scores the newly chosen model
    after = study.report().to_dict()
    for key in ("baseline", "head_only", "projection"):
        assert after[key] == before[key], key
