"""The study as one API, under the CLI and every tab of the app: state and orchestration, no models.

load data -> zero-shot baseline -> train LoRA (a job that streams its events and can be stopped) -> evaluate ->
compare (the ladder, significance, short reviews) -> report / save / export.

A `Study` holds the split, what each trained model trained and validated on (so that no front end can score a
model on reviews it has seen), the trained adapter's weights, the scores and the runs. Every piece of work that
needs the accelerator is a pure job (`compute.jobs`) that `Models.runner` runs in this process or in a ZeroGPU
worker; the study only keeps what comes back. `steps()` is the whole study as one stream of typed events, which
the CLI prints and the app lays out; the app keeps one study per session and calls one step per click.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from .cache import Cache
from .calibration import MIN_REVIEWS as MIN_CALIBRATION_REVIEWS
from .calibration import Calibration, calibration_scores, calibration_set
from .compute.models import ModelRef, register_loader
from .compute.stop import StopFlag
from .config import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_MODEL,
    DataConfig,
    LoraSettings,
    ModelSpec,
    TrainConfig,
    UserError,
    get_model_spec,
    get_preset,
    parse_methods,
)
from .data import (
    NAMED_SOURCES,
    SplitRecord,
    Splits,
    describe_source,
    load_splits,
    texts_fingerprint,
    trained_on,
)
from .inference import Predictions
from .lora import AdapterWeights
from .metrics import evaluate_predictions
from .models import ModelBundle, load_bundle
from .report import Report, head_only_sentence, train_summary
from .significance import compare_models
from .train import TrainEvent, TrainResult

Progress = Callable[[str, int, int], None]  # (what is being done, done, total)
# the zero-shot model's calibration before any data is loaded (or on a split with too few validation reviews): this
# many validation reviews of the shipped IMDb sample, scored once per process
FALLBACK_CALIBRATION_REVIEWS = 100
MAX_RUNS = 20  # runs kept per study for the Compare tab; the oldest is dropped beyond this
# answers every session on the same reviews would compute alike (the zero-shot model's, the TF-IDF and head-only
# rungs', an adapter's with the same weights): made once per process and shared read-only, the least recently used
# dropped past this many or past SHARED_BYTES (a scored test set of 1,000 reviews, with its features, is 1.6 MB)
SHARED_BYTES = 256 * 2**20


def _shared_bytes(value) -> int:
    """About what a shared value holds: an answer set's features and per-review lists, else a small constant."""
    answers = getattr(value, "predictions", value)
    features = getattr(answers, "features", None)
    rows = len(getattr(answers, "labels", ()))
    return 4096 + 120 * rows + (features.nbytes if features is not None else 0)


SHARED = Cache(32, budget=SHARED_BYTES, weigh=_shared_bytes)


@dataclass
class Evaluation:
    """One model's answers on one set of reviews, their scores, and which reviews they were."""

    metrics: dict
    predictions: Predictions
    fingerprint: str


@dataclass
class TunedModel:
    """A trained LoRA adapter as the study keeps it: its weights and what it needs to be scored, saved, reported
    and checked. No model: the jobs make one from the weights where they run.

    Attributes:
        weights: the adapter's tensors and settings (`lora.AdapterWeights`).
        kind: the model's kind (`encoder` or `seq2seq`).
        trained_on: what it trained and validated on.
        result: the training run's figures; None for an adapter loaded from disk.
        saved_report: the report it was saved with, for an adapter loaded from disk.
        runtime: where it trained (`compute.device.runtime`); None for an adapter loaded from disk.
    """

    weights: AdapterWeights
    kind: str
    lora: LoraSettings
    summary: dict  # `lora_summary` as where it trained: r, alpha, dropout, the modules and layers it adapts
    config: TrainConfig
    recipe: str
    trained_on: SplitRecord
    result: TrainResult | None = None
    saved_report: dict | None = None
    runtime: dict | None = None
    train_frames: tuple[pd.DataFrame, pd.DataFrame] | None = None  # (train, val), for the rungs trained alike
    head_only: object | None = None  # the ladder's head-only rung (`ladder.HeadOnlyModel`), trained on first use
    head_result: object | None = None
    calibration: Calibration | None = None  # fitted on its validation reviews on first use; saved with it

    @property
    def name(self) -> str:
        return self.weights.model

    def metadata(self) -> dict:
        """What `lora_demo.json` keeps beside the adapter weights."""
        return {
            "kind": self.kind,
            "recipe": self.recipe,
            "lora": self.summary,
            "train_config": asdict(self.config),
            "trained_on": self.trained_on.to_dict(),
            **({"calibration": self.calibration.to_dict()} if self.calibration else {}),
        }


@dataclass
class RunRecord:
    """One finished training run of a study, as the Compare tab lists and draws it."""

    name: str
    model: str
    recipe: str
    lora: dict
    config: TrainConfig
    trainable: int
    seconds: float
    stopped: bool
    val_loss: float | None
    test_reviews: int
    accuracy: float
    f1: float
    history: list[dict]


class Models:
    """Where a study's jobs get their models and where the jobs run.

    Args:
        loader: loads a fresh registry model by name and seed (`models.load_bundle`; tests give tiny models). The
            jobs name it (`compute.models.register_loader`), never carry it.
        check: raises the UserError loading a model would raise, without loading it (`models.check_available`).
        fetch: downloads a model's files ahead of loading, reporting bytes (`models.download_model`); with a
            loader of one's own, nothing by default.
        runner: where jobs run (`compute.runner.runner()`: this process, or ZeroGPU workers).
    """

    def __init__(
        self,
        loader: Callable[..., ModelBundle] = load_bundle,
        check: Callable[[ModelSpec], None] | None = None,
        fetch: Callable[..., None] | None = None,
        runner=None,
    ):
        from .compute.runner import runner as default_runner
        from .models import check_available, download_model

        self.loader = register_loader(loader)
        self.check = check or check_available
        self.fetch = fetch or (download_model if loader is load_bundle else (lambda name, progress=None: None))
        self.runner = runner or default_runner()

    def ref(self, name: str) -> ModelRef:
        return ModelRef(name, self.loader)


@dataclass
class DataReady:
    """The study's data is loaded (`notes`: what is worth telling the user about it)."""

    splits: Splits
    notes: list[str]


@dataclass
class BaselineScored:
    """The zero-shot model has answered on the test reviews."""

    evaluation: Evaluation


@dataclass
class Trained:
    """A training run ended (finished or stopped) and its model is the study's LoRA model."""

    tuned: TunedModel


@dataclass
class Compared:
    """The LoRA model is scored on the test reviews and compared with the ladder: the study's report."""

    evaluation: Evaluation
    report: Report
    tuned: TunedModel


StudyEvent = DataReady | BaselineScored | TrainEvent | Trained | Compared


class Study:
    """One user's study: the split, the chosen model, the baseline, the LoRA model and the runs so far.

    Args:
        model_name: the registry model to study.
        models: where models come from and where jobs run (default: the registry, loaded on first use).
    """

    def __init__(self, model_name: str = DEFAULT_MODEL, models: Models | None = None):
        self.model_name = get_model_spec(model_name).name
        self.models = models or Models()
        self.splits: Splits | None = None
        self.tuned: TunedModel | None = None
        self.runs: list[RunRecord] = []
        self.resources: dict | None = None
        self.method_comparison: tuple[Splits, dict] | None = None  # (the split, `methods.compare_runs`) once run
        self.jobs_in_workers = 0  # jobs that crossed a process boundary (ZeroGPU, or its stand-in)
        # seconds per step of the latest whole run (`steps`), in the order they ran: what a visitor waited for
        self.timings: dict[str, float] = {}
        self.on_timed: Callable[[str, float], None] | None = None  # told each step's name and seconds as it ends
        self._scores: dict[tuple, Evaluation | dict] = {}  # keyed by (what, model, max_length, reviews): computed once
        # the zero-shot model's calibration on the loaded split, per max length: (splits, model, Calibration), so that
        # a Classify click does not cut windows and hash the validation reviews again
        self._baseline_fits: dict[int, tuple] = {}
        self._stop: StopFlag | None = None  # the running training's stop request, if any
        self._busy = False  # a run is training or being scored: the data must not change under it
        self.abandoned = False  # its session closed: a run still going ends after training, without scoring
        # one session's events run in several concurrency groups at once (a Compare refresh while the whole study
        # scores, a data load): scoring, reporting and loading take turns, and each score is computed once
        self._lock = threading.RLock()

    # --- jobs -------------------------------------------------------------------------------------------------

    def _run(self, job: str, *args, progress=None, **kwargs):
        """Run a compute job where the study's runner runs jobs; count it if it crossed a process boundary."""
        runner = self.models.runner
        self.jobs_in_workers += runner.in_workers
        return runner.call(job, *args, progress=progress, **kwargs)

    def _ref(self, name: str | None = None) -> ModelRef:
        return self.models.ref(name or self.model_name)

    @contextlib.contextmanager
    def _timed(self, step: str):
        """Add the block's seconds to `timings[step]` (a step asked for again adds what it took again)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self.timings[step] = self.timings.get(step, 0.0) + seconds
            if self.on_timed:
                self.on_timed(step, seconds)

    # --- data -------------------------------------------------------------------------------------------------

    @property
    def training(self) -> bool:
        """Whether a training job of this study is running (it may be stopping)."""
        stop = self._stop
        return stop is not None and not stop.finished()

    def load_data(
        self,
        config: DataConfig,
        fit_to_data: bool = False,
        shown_as: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Splits:
        """Load and split the reviews; the study's models are scored on the new test reviews from now on.

        Args:
            config: source, sizes and seed.
            fit_to_data: shrink sizes left at their defaults to what a small source holds.
            shown_as: how to name the source to the user (an upload is known by its file name).
            progress: called with (bytes done, bytes in all) while the Hub's IMDb downloads.

        Raises:
            UserError: while a run of this study is training or being scored (on the current split), or for any
                problem with the source or the sizes.
        """
        if self._busy:
            raise UserError("a training run is going on this data: wait for it to finish or press Stop, then load")
        splits = load_splits(config, fit_to_data=fit_to_data, progress=progress)
        with self._lock:  # not while a report or a score is being made on the current split
            if self._busy:
                raise UserError("a training run is going on this data: wait for it to finish or press Stop, then load")
            self.splits = replace(splits, source=shown_as) if shown_as else splits
            return self.splits

    def ensure_data(self, progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Load the default data if none is loaded yet; returns notes worth showing the user."""
        if self.splits is not None:
            return []
        splits = self.load_data(DataConfig(), fit_to_data=True, progress=progress)
        sizes = splits.sizes()
        what = f" ({describe_source(splits.source)})" if splits.source in NAMED_SOURCES else ""
        return [
            f"No data was loaded yet, so the default data was loaded: {sizes['train']} / {sizes['val']} / "
            f"{sizes['test']} train / validation / test reviews from `{splits.source}`{what}.",
            *splits.notes,
        ]

    def select_model(self, name: str) -> None:
        self.model_name = get_model_spec(name).name

    @property
    def spec(self) -> ModelSpec:
        return get_model_spec(self.model_name)

    def download_model(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Fetch the study's model into the Hugging Face cache before it loads (nothing for the bundled model).

        Args:
            progress: called with (bytes done, bytes in all) while downloading.

        Raises:
            UserError: the Hub failed, or is unreachable and the model is not cached.
        """
        self.models.fetch(self.model_name, progress)

    def check_model(self) -> None:
        """Raise the UserError loading the study's model would raise (a Hub model with no Hub), loading nothing."""
        self.models.check(self.spec)

    # --- scoring ----------------------------------------------------------------------------------------------

    def _score(self, key: tuple, frame: pd.DataFrame, predict: Callable[[list[str]], Predictions]) -> Evaluation:
        key = (*key, texts_fingerprint(frame["text"]))
        with self._lock:  # computed once, even when two of the session's events ask at the same time
            if key not in self._scores:
                predictions = predict(frame["text"].tolist())
                metrics = evaluate_predictions(frame["label"].tolist(), predictions.labels)
                self._scores[key] = Evaluation(metrics, predictions, key[-1])
            return self._scores[key]

    def baseline(
        self,
        frame: pd.DataFrame | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        progress: Progress | None = None,
        model: str | None = None,
    ) -> Evaluation:
        """The untouched model's zero-shot answers on `frame` (default: the test reviews), computed once.

        Args:
            model: whose (default: the study's model); the report names the LoRA model's own, whatever model is
                selected since it trained.
        """
        return self._baseline(frame, max_length, progress, model, keep_for=self._lora_ahead())

    def _baseline(self, frame, max_length, progress, model, keep_for: LoraSettings) -> Evaluation:
        """`baseline`, keeping in this process the untouched model's states below the first layer that LoRA
        models with `keep_for`'s settings adapt, for their passes over the same reviews (`jobs.zero_shot`)."""
        frame = self._test_frame() if frame is None else frame
        model = model or self.model_name
        report = _reporter(progress, f"Zero-shot {model} on {len(frame)} reviews")
        ref = self._ref(model)
        keep = {} if self.models.runner.in_workers else {"keep_for": keep_for}  # a worker's end with its call

        def predict(texts):  # the untouched model answers every visitor alike: once per process and reviews
            key = ("zero_shot", ref, max_length, texts_fingerprint(texts))
            return SHARED.get(key, lambda: self._run("zero_shot", ref, texts, max_length, progress=report, **keep))

        return self._score(("baseline", model, max_length), frame, predict)

    def _lora_ahead(self) -> LoraSettings:
        """The LoRA settings of the model most likely to answer next what the zero-shot model answers now: the
        study's LoRA model's, else the default recipe's (where the Train tab starts)."""
        return self.tuned.lora if self.tuned is not None else LoraSettings()

    def finetuned(self, frame: pd.DataFrame | None = None, progress: Progress | None = None) -> Evaluation:
        """The LoRA model's answers on `frame` (default: the test reviews).

        Raises:
            UserError: before any training, or when `frame` holds reviews the model trained or validated on.
        """
        tuned = self._require_tuned()
        frame = self._test_frame() if frame is None else frame
        tuned.trained_on.check_unseen(frame["text"])
        return self._finetuned_answers(tuned, frame, progress)

    def _finetuned_answers(self, tuned: TunedModel, frame: pd.DataFrame, progress: Progress | None = None):
        """The LoRA model's answers on `frame`, unchecked: callers make sure it never trained on them."""
        report = _reporter(progress, f"The LoRA model on {len(frame)} reviews")
        max_length, ref, weights = tuned.config.max_length, self._ref(tuned.name), tuned.weights

        def predict(texts):  # the same adapter (same weights: `key`) answers every visitor alike
            key = ("finetuned", ref, weights.key, max_length, texts_fingerprint(texts))
            return SHARED.get(key, lambda: self._run("score", ref, weights, texts, max_length, progress=report))

        return self._score(("finetuned", weights.key, max_length), frame, predict)

    def tfidf(self, frame: pd.DataFrame | None = None) -> Evaluation | None:
        """TF-IDF + logistic regression trained on the LoRA model's training reviews, on `frame`; None for a
        saved adapter (its training reviews are not kept)."""
        tuned = self._require_tuned()
        if tuned.train_frames is None:
            return None
        frame = self._test_frame() if frame is None else frame
        tuned.trained_on.check_unseen(frame["text"])
        return self._tfidf_answers(tuned, frame)

    def _tfidf_answers(self, tuned: TunedModel, frame: pd.DataFrame) -> Evaluation:
        from .ladder import tfidf_predictions

        train, seed = tuned.train_frames[0], tuned.config.seed

        def predict(texts):  # the same training and test reviews give the same rung to every visitor
            key = ("tfidf", texts_fingerprint(train["text"]), tuple(train["label"]), texts_fingerprint(texts), seed)
            return SHARED.get(key, lambda: tfidf_predictions(train, texts, seed))

        return self._score(("tfidf",), frame, predict)

    def head_only(self, frame: pd.DataFrame | None = None, progress: Progress | None = None) -> Evaluation | None:
        """The same head trained with the model frozen, on the LoRA model's training reviews and settings, on
        `frame`; None for a saved adapter."""
        tuned = self._require_tuned()
        if tuned.train_frames is None:
            return None
        frame = self._test_frame() if frame is None else frame
        tuned.trained_on.check_unseen(frame["text"])
        return self._head_only_answers(tuned, frame, progress)

    def _head_only_answers(self, tuned: TunedModel, frame: pd.DataFrame, progress: Progress | None = None):
        """The head-only rung on `frame`, read off the zero-shot pass's features of it: the untouched model is
        not run over the reviews again."""
        with self._lock:  # trained once, even when the Compare tab and a run's report ask at the same time
            if tuned.head_only is None:
                if progress:
                    progress("Training the head alone on the same reviews", 0, 1)
                ref, (train, val) = self._ref(tuned.name), tuned.train_frames
                # the same reviews and settings make the same head for every visitor: trained once per process,
                # on the untouched model's features the LoRA run computed on the way, where it did
                features = tuned.result.untouched_features if tuned.result else None
                reviews = [texts_fingerprint([*f["text"], *map(str, f["label"])]) for f in (train, val)]
                tuned.head_only, tuned.head_result = SHARED.get(
                    ("head_only", ref, *reviews, tuned.config),
                    lambda: self._run("head_only", ref, train, val, tuned.config, features=features),
                )
                if tuned.result is not None:  # used once: a session keeps no more than its rung
                    tuned.result = replace(tuned.result, untouched_features=None)
        head = tuned.head_only

        def predict(texts):  # the LoRA model's own untouched model, as the head was trained on it
            zero_shot = self.baseline(frame, max_length=head.max_length, progress=progress, model=tuned.name)
            return head.predict_features(zero_shot.predictions.features)

        return self._score(("head_only",), frame, predict)

    def short_reviews(self) -> dict:
        """Every rung on the short-review test sets ("reviews like the ones you type"): the hand-written reviews'
        `dev` half (choices may look at it) and `test` half (reported, never used to choose), and
        `imdb_sentences` (endings of IMDb test reviews). Each holds `n` and each rung's metrics, or the `reason`
        it was left out."""
        from .data import load_imdb_sentences, load_short_reviews, short_review_halves

        tuned = self._require_tuned()
        if tuned.trained_on.source == "builtin":
            reason = "the LoRA model trained on these hand-written reviews, so they are not a test for it"
            sets = {"dev": {"reason": reason}, "test": {"reason": reason}}
        elif tuned.trained_on.overlap(load_short_reviews()["text"]):
            reason = "the LoRA model trained on some of these hand-written reviews"
            sets = {"dev": {"reason": reason}, "test": {"reason": reason}}
        else:
            sets = {name: self._rungs_on(half, tuned) for name, half in short_review_halves().items()}
        sentences = load_imdb_sentences()
        if tuned.trained_on.overlap(sentences["text"]):
            sets["imdb_sentences"] = {"reason": "the LoRA model trained on some of these IMDb test sentences"}
        else:
            sets["imdb_sentences"] = self._rungs_on(sentences, tuned)
        return sets

    def _rungs_on(self, frame: pd.DataFrame, tuned: TunedModel) -> dict:
        """`n` and the metrics of the zero-shot, head-only and LoRA rungs on `frame` (TF-IDF is IMDb's own)."""
        rungs = {
            "baseline": self.baseline(frame, max_length=tuned.config.max_length, model=tuned.name),
            "head_only": self.head_only(frame),
            "finetuned": self.finetuned(frame),
        }
        scored = {"n": len(frame)}
        for name, rung in rungs.items():
            if rung is None:
                continue
            fitted = self.calibration(name)
            if fitted is None:
                scored[name] = rung.metrics
                continue
            figures = calibration_scores(rung.predictions, frame["label"], fitted)
            kept = ("ece_before", "sure_share", "accuracy_sure", "accuracy_not_sure")
            scored[name] = {**rung.metrics, "ece": figures["ece_after"], **{key: figures[key] for key in kept}}
        return scored

    # --- calibration ------------------------------------------------------------------------------------------

    def calibration(self, rung: str = "finetuned", max_length: int | None = None) -> Calibration | None:
        """A rung's temperature and "not sure" threshold (`calibration.Calibration`), fitted on validation reviews
        it never trained on: the LoRA model and the rungs trained alike on the LoRA model's own validation
        reviews, the zero-shot model on the loaded split's (the shipped IMDb sample's before any data is loaded).

        Returns None where there are no such reviews, or too few (`calibration.MIN_REVIEWS`): a saved adapter
        saved without its calibration, the lower rungs of a saved adapter.

        Args:
            rung: `baseline`, `tfidf`, `head_only` or `finetuned`.
            max_length: the zero-shot model's tokens per review (default: the LoRA model's, else the default).
        """
        if rung == "baseline":
            tuned = self.tuned
            length = max_length or (tuned.config.max_length if tuned else DEFAULT_MAX_LENGTH)
            return self._baseline_calibration(length)
        tuned = self._require_tuned()
        if rung == "finetuned" and tuned.calibration is not None:
            return tuned.calibration
        if tuned.train_frames is None or len(tuned.train_frames[1]) < MIN_CALIBRATION_REVIEWS:
            return None
        val = calibration_set(tuned.train_frames[1], tuned.config.seed)
        answers = {
            "finetuned": self._finetuned_answers,
            "head_only": self._head_only_answers,
            "tfidf": self._tfidf_answers,
        }[rung](tuned, val)
        fitted = Calibration.fit(answers.predictions, val["label"])
        if rung == "finetuned":
            tuned.calibration = fitted  # the model's own: saved with it
        return fitted

    def _baseline_calibration(self, max_length: int) -> Calibration:
        """On the loaded split's validation reviews; on the shipped IMDb sample's (once per process) before any data
        is loaded or when the split has too few: the untouched model is the same whatever the split."""
        splits = self.splits
        if splits is None or len(splits.val) < MIN_CALIBRATION_REVIEWS:
            ref = self._ref()

            def fit():
                config = DataConfig(source="sample", val_size=FALLBACK_CALIBRATION_REVIEWS)
                val = calibration_set(load_splits(config).val, config.seed)
                answers = self._run("zero_shot", ref, val["text"].tolist(), max_length)
                return Calibration.fit(answers, val["label"])

            return SHARED.get(("calibration", ref, max_length), fit)
        held = self._baseline_fits.get(max_length)  # read without the lock: a report in progress does not hold it up
        if held is not None and held[0] is splits and held[1] == self.model_name:
            return held[2]
        val = calibration_set(splits.val, splits.config.seed)
        fitted = Calibration.fit(self.baseline(val, max_length=max_length).predictions, val["label"])
        self._baseline_fits[max_length] = (splits, self.model_name, fitted)
        return fitted

    def calibration_report(self, rungs: dict[str, Evaluation | None], frame: pd.DataFrame) -> dict:
        """Each rung's calibration and what it does on `frame` (the test reviews): `temperature`, `sure_from`,
        `validation` (`n`, `ece_before`, `ece_after` where it was fitted), then on `frame` `n`, `accuracy`,
        `ece_before`, `ece_after` and both reliability diagrams; or the `reason` a rung has none."""
        report = {}
        for name, evaluation in rungs.items():
            if evaluation is None:
                continue
            fitted = self.calibration(name)
            if fitted is None:
                report[name] = {"reason": "no validation reviews it never trained on, or too few, are known"}
                continue
            report[name] = {
                "temperature": fitted.temperature,
                "sure_from": fitted.sure_from,
                "validation": {"n": fitted.n, "ece_before": fitted.ece_before, "ece_after": fitted.ece_after},
                **calibration_scores(evaluation.predictions, frame["label"], fitted),
            }
        return report

    def _test_frame(self) -> pd.DataFrame:
        if self.splits is None:
            raise UserError("no data is loaded: load it on the Dataset tab (or with --data)")
        return self.splits.test

    def _require_tuned(self) -> TunedModel:
        if self.tuned is None:
            raise UserError("no LoRA model yet: train one first (the Train LoRA tab, or `python -m lora_demo train`)")
        return self.tuned

    # --- training ---------------------------------------------------------------------------------------------

    def train_steps(
        self, lora: LoraSettings, config: TrainConfig, recipe: str = "fast"
    ) -> Iterator[TrainEvent | Trained]:
        """Train LoRA on the study's training reviews, yielding each `TrainEvent` as it happens, then `Trained`
        once the new model is the study's LoRA model. `stop_training` ends it after the current step, keeping what
        was trained; closing the generator ends it too (and keeps nothing).

        Raises:
            UserError: while another run of this study is going, for settings that do not fit the model, or with
                no data loaded.
        """
        if self.training:
            raise UserError("a training run is already going: wait for it or press Stop")
        splits, name = self._check_training(lora)
        runner, ref = self.models.runner, self._ref(name)
        self._stop = stop = StopFlag()
        try:
            args = (ref, splits.train, splits.val, lora, config)
            self.jobs_in_workers += runner.in_workers
            for event in runner.stream("train", *args, stop=stop, seconds=runner.budget("train", *args)):
                if isinstance(event, TrainEvent):
                    yield event
                    continue
                tuned = TunedModel(
                    weights=event.weights,
                    kind=get_model_spec(name).kind,
                    lora=lora,
                    summary=event.summary,
                    config=config,
                    recipe=recipe,
                    trained_on=trained_on(splits),
                    result=event.result,
                    runtime=event.runtime,
                    train_frames=(splits.train, splits.val),
                )
                self._use(tuned)
                yield Trained(tuned)
        finally:
            stop.clear()
            self._stop = None

    def train(self, lora: LoraSettings, config: TrainConfig, recipe: str = "fast", on_event=None) -> TunedModel:
        """`train_steps` to its end, handing each `TrainEvent` to `on_event`; returns the new LoRA model."""
        for event in self.train_steps(lora, config, recipe):
            if isinstance(event, Trained):
                return event.tuned
            if on_event:
                on_event(event)
        raise UserError("the training run ended without a model")

    def _use(self, tuned: TunedModel) -> TunedModel:
        """Make `tuned` the study's LoRA model; the previous one's scores and serving copies are forgotten."""
        with self._lock:
            self._scores = {key: value for key, value in self._scores.items() if key[0] == "baseline"}
            self.release()
            self.tuned = tuned
            return tuned

    def release(self) -> None:
        """Let this process drop the LoRA model's serving copies (the study is closing or replacing it)."""
        from .compute.models import release

        if self.tuned is not None and not self.models.runner.in_workers:
            release(self.tuned.weights)

    def stop_training(self, wait: float | None = None) -> bool:
        """Ask the running training, if any, to end after its current step; returns whether one was running.

        Args:
            wait: seconds to wait for it to end (it ends after its current step); default: do not wait.
        """
        stop = self._stop
        if stop is None or stop.finished():
            return False
        stop.set()
        if wait:
            import time

            deadline = time.monotonic() + wait
            while self.training and time.monotonic() < deadline:
                time.sleep(0.05)
        return True

    def _check_training(self, lora: LoraSettings) -> tuple[Splits, str]:
        spec = self.spec
        lora.targets_for(spec)  # refuse settings that do not fit before anything loads
        lora.layers_for(spec)
        self.check_model()
        if self.splits is None:
            raise UserError("no data is loaded: load it first (the Dataset tab, or --data)")
        return self.splits, spec.name

    def finish_run(self, progress: Progress | None = None) -> tuple[Evaluation, Report]:
        """After a training run: score the new LoRA model on the test reviews, keep the run, and report."""
        with self._timed("tuned_scoring"):
            evaluation = self.finetuned(progress=progress)
        self.record_run(evaluation)
        return evaluation, self.report(progress=progress)

    def record_run(self, evaluation: Evaluation) -> RunRecord:
        """Keep the latest run's settings, scores and loss history for the Compare tab's list of runs."""
        tuned = self._require_tuned()
        result = tuned.result
        run = RunRecord(
            name=f"run {len(self.runs) + 1}: r {tuned.lora.r}, {tuned.recipe}",
            model=tuned.name,
            recipe=tuned.recipe,
            lora=tuned.summary,
            config=tuned.config,
            trainable=result.params["trainable"],
            seconds=round(result.seconds, 1),
            stopped=result.stopped,
            val_loss=result.val_loss,
            test_reviews=evaluation.metrics["n"],
            accuracy=evaluation.metrics["accuracy"],
            f1=evaluation.metrics["f1"],
            history=list(result.history),
        )
        self.runs.append(run)
        del self.runs[:-MAX_RUNS]
        return run

    # --- the whole study --------------------------------------------------------------------------------------

    def steps(
        self,
        lora: LoraSettings,
        config: TrainConfig,
        recipe: str = "fast",
        with_baseline: bool = True,
        progress: Progress | None = None,
    ) -> Iterator[StudyEvent]:
        """The whole study as one stream: the data (loaded, else the default), the zero-shot baseline, training,
        then the comparison. The CLI prints these events, the app lays them out (the Train tab starts at training:
        `with_baseline=False`).

        Yields:
            `DataReady`, `BaselineScored`, each `TrainEvent`, `Trained`, then `Compared`.

        Raises:
            UserError: for settings that do not fit the model, a model that cannot load, or a failed step.
        """
        self._check_settings(lora)
        self.timings = {}
        with self._timed("load"):
            notes = self.ensure_data()
        yield DataReady(self.splits, notes)
        if with_baseline:
            with self._timed("zero_shot"):  # keeping the states the run's LoRA model will start from
                baseline = self._baseline(None, config.max_length, progress, None, keep_for=lora)
            yield BaselineScored(baseline)
        self._busy = True
        try:
            with self._timed("training"):
                yield from self.train_steps(lora, config, recipe)
            if self.abandoned:  # nobody is left to see the comparison
                return
            evaluation, report = self.finish_run(progress=progress)
        finally:
            self._busy = False
        yield Compared(evaluation, report, self.tuned)

    def run(self, lora: LoraSettings, config: TrainConfig, recipe: str = "fast", on_event=None) -> Report:
        """`steps` start to end, on the loaded data; each event goes to `on_event`. Returns the report."""
        for event in self.steps(lora, config, recipe):
            if on_event:
                on_event(event)
            if isinstance(event, Compared):
                return event.report
        raise UserError("the study ended without a comparison")

    def work(self, config: TrainConfig) -> float:
        """How much work `steps()` with `config` is on the loaded data, in reviews through the model (training
        with its sentence windows and validation passes, and the test reviews' scoring passes): what a line of
        runs estimates waits from."""
        splits = self.splits
        if splits is None:
            return 0.0
        per_epoch = len(splits.train) * (1 + config.short_windows) + len(splits.val) * max(1, config.evals_per_epoch)
        return per_epoch * config.epochs + 2 * len(splits.test)  # the zero-shot and the LoRA pass

    def _check_settings(self, lora: LoraSettings) -> None:
        spec = self.spec
        lora.targets_for(spec)
        lora.layers_for(spec)
        self.check_model()

    # --- other training methods -----------------------------------------------------------------------------

    def check_methods(self, methods, lora: LoraSettings, config: TrainConfig) -> tuple:
        """Refuse, before anything trains, a method comparison that cannot run (see `compare_methods`); returns
        (the methods, LoRA first; the split; the jobs' arguments; the short-review sets)."""
        from .methods import check_memory

        names = ("lora", *(name for name in parse_methods(methods) if name != "lora"))
        if self.training or self._busy:
            raise UserError("a run is going on this study: wait for it to finish or press Stop, then compare methods")
        splits, name = self._check_training(lora)
        short = self._short_sets(splits)
        texts = {key: frame["text"].tolist() for key, frame in short.items()}
        args = (self._ref(name), (splits.train, splits.val), splits.test["text"].tolist(), texts)
        for method in names:
            check_memory(name, method, lora)
            self.models.runner.check("method", *args, method, lora, config)
        return names, splits, args, short

    def compare_methods(
        self,
        methods,
        lora: LoraSettings,
        config: TrainConfig,
        on_method: Callable[[str, dict], None] | None = None,
    ) -> dict:
        """Train each of `methods` (`methods.METHODS`; LoRA always among them, as every method is compared with
        it) on the study's training reviews with the same schedule, each at the learning rate its validation
        reviews prefer, and score them all on the same test and short reviews (`methods.compare_runs`). Each
        method is its own job (its own GPU call on ZeroGPU). The report's `methods` from now on, for this split.

        `stop_training` ends it after the current training step; the methods finished by then are compared. A
        method whose job the platform cut, or that ran out of memory or of its GPU call's time, is left out with
        the reason (`skipped`), and the others go on.

        Args:
            methods: names, or `full,lora,...`.
            on_method: told each method's name and row as it finishes.

        Raises:
            UserError: for an unknown method, no data loaded, settings that do not fit the model, a method that
                would not fit in memory or in a GPU call (refused before any training), or no LoRA to compare with.
        """
        from .methods import compare_runs

        with self._lock:  # no data load between the checks and the run
            names, splits, args, short = self.check_methods(methods, lora, config)
            self._busy, self._stop = True, (stop := StopFlag())
        runs, skipped, labels = [], {}, self._short_labels(short)
        try:
            for method in names:
                with self._timed(f"method_{method}"):
                    run, why = self._method_run(args, method, lora, config, stop)
                if run is not None:
                    runs.append(run)
                    if on_method:
                        # this method's row only (against LoRA, the first): the bootstraps of the others are not redone
                        pair = runs[:1] + runs[-1:] if len(runs) > 1 else runs
                        row = compare_runs(pair, splits.test["label"], labels, splits.config.seed)
                        on_method(method, row["methods"][method])
                if stop.is_set():  # Stop: the methods finished so far are compared
                    break
                if why:
                    skipped[method] = why
        finally:
            stop.finish()
            stop.clear()
            self._busy, self._stop = False, None
        if not runs or runs[0].method != "lora":
            raise UserError(f"LoRA did not finish ({skipped.get('lora', 'stopped')}): nothing to compare with")
        result = compare_runs(runs, splits.test["label"], labels, seed=splits.config.seed)
        result["skipped"] = skipped
        result["conditions"] = {
            "model": args[0].name,
            "sizes": splits.sizes(),
            "source": splits.source,
            **{key: getattr(config, key) for key in ("epochs", "batch_size", "max_length", "seed", "short_windows")},
        }
        self.method_comparison = (splits, result)
        return result

    def _method_run(self, args: tuple, method: str, lora: LoraSettings, config: TrainConfig, stop: StopFlag):
        """One method's job: (its `MethodRun`, None), or (None, why it is left out)."""
        from .compute.runner import JobAborted

        seconds = self.models.runner.budget("method", *args, method, lora, config)
        try:
            run = self._run("method", *args, method, lora, config, stop=stop, seconds=seconds)
        except (JobAborted, MemoryError) as err:
            return None, str(err) or "out of memory"
        if run is None and not stop.is_set():
            return None, "it ran out of its GPU call's time"
        return run, None

    @staticmethod
    def _short_sets(splits: Splits) -> dict[str, pd.DataFrame]:
        """The short-review test sets no method trains on with `splits`, by `short_reviews`' rules: the
        hand-written test half (not when the data is the hand-written reviews), the IMDb test endings."""
        from .data import load_imdb_sentences, short_review_halves

        seen = trained_on(splits)
        sets = {"imdb_sentences": load_imdb_sentences()}
        if splits.source != "builtin":
            sets = {"test": short_review_halves()["test"], **sets}
        return {key: frame for key, frame in sets.items() if not seen.overlap(frame["text"])}

    @staticmethod
    def _short_labels(short: dict[str, pd.DataFrame]) -> dict[str, list[int]]:
        return {key: frame["label"].tolist() for key, frame in short.items()}

    # --- compare, report, save --------------------------------------------------------------------------------

    def report(self, progress: Progress | None = None) -> Report:
        """Score the baseline and the LoRA model on the same test reviews and compare them: the study's report.

        Raises:
            UserError: before any training, or when the test reviews overlap what the LoRA model trained on.
        """
        with self._lock:  # the split, the model and every score from one state: a data load waits
            tuned = self._require_tuned()
            self._test_frame()  # says what to do when no data is loaded
            return self._report(tuned, self.splits, progress)

    def _report(self, tuned: TunedModel, splits: Splits, progress: Progress | None) -> Report:
        test = splits.test
        with self._timed("tuned_scoring"):
            after = self.finetuned(test, progress=progress)
        with self._timed("zero_shot"):
            before = self.baseline(test, max_length=tuned.config.max_length, progress=progress, model=tuned.name)
        with self._timed("significance"):
            comparison = compare_models(
                test["label"], before.predictions.labels, after.predictions.labels, seed=splits.config.seed
            )
        with self._timed("tfidf"):
            tfidf = self.tfidf(test)
        with self._timed("head_only"):
            head = self.head_only(test, progress=progress)
        rungs = {"baseline": before, "tfidf": tfidf, "head_only": head, "finetuned": after}
        with self._timed("calibration"):
            calibration = self.calibration_report(rungs, test)
        if head is not None:
            comparison["verdict"] += head_only_sentence(head.metrics, after.metrics)
        saved = tuned.saved_report or {}
        result = tuned.result
        changes = self.changes(progress, test)
        with self._timed("short_reviews"):
            short_reviews = self.short_reviews()
        return Report(
            model=tuned.name,
            model_kind=tuned.kind,
            data=splits.summary(),
            lora=tuned.summary,
            train_config=asdict(tuned.config),
            params=result.params if result else saved.get("params", {}),
            train=train_summary(result) if result else saved.get("train", {}),
            baseline=before.metrics,
            finetuned=after.metrics,
            comparison=comparison,
            trained_on={k: v for k, v in tuned.trained_on.to_dict().items() if k != "review_hashes"},
            tfidf=tfidf.metrics if tfidf else None,
            head_only=head.metrics if head else None,
            rungs=self._rung_notes(),
            calibration=calibration,
            short_reviews=short_reviews,
            resources=self.resources,
            update_norms=changes["update_norms"],
            projection=changes["projection"],
            methods=self._methods_for(splits),
            runtime=self.runtime(),
        )

    def _methods_for(self, splits: Splits) -> dict | None:
        """The method comparison, if one ran on `splits`."""
        if self.method_comparison is None or self.method_comparison[0] is not splits:
            return None
        return self.method_comparison[1]

    def runtime(self) -> dict:
        """Where the compute ran (the LoRA model's training; the saved report's for a loaded adapter) and how many
        jobs crossed a process boundary."""
        tuned = self._require_tuned()
        trained = tuned.runtime or (tuned.saved_report or {}).get("runtime") or {}
        where = {key: trained.get(key) for key in ("device", "device_name", "dtype")}
        return {**where, "runner": self.models.runner.name, "jobs_in_workers": self.jobs_in_workers}

    def changes(self, progress: Progress | None = None, test: pd.DataFrame | None = None) -> dict:
        """Where the LoRA model's adapter changed the model (`anatomy.update_norms`), and the test reviews (default:
        the split's) before / after on one 2-D map (`anatomy.project_pair`) of the features the zero-shot and the
        LoRA scoring passes read: no further pass over the reviews. Computed once per model and test set."""
        from .anatomy import project_pair

        tuned = self._require_tuned()
        test = self._test_frame() if test is None else test
        key = ("finetuned", "changes", tuned.weights.key, tuned.config.max_length, texts_fingerprint(test["text"]))
        tuned.trained_on.check_unseen(test["text"])
        length = tuned.config.max_length
        before = self.baseline(test, max_length=length, progress=progress, model=tuned.name).predictions.features
        after = self._finetuned_answers(tuned, test, progress=progress).predictions.features
        with self._lock:
            if key not in self._scores:  # "finetuned" first: forgotten with the model's scores when it is replaced
                with self._timed("update_norms"):
                    norms = self._run("update_norms", self._ref(tuned.name), tuned.weights)
                with self._timed("projection"):
                    self._scores[key] = {"update_norms": norms, "projection": project_pair(before, after)}
            return self._scores[key]

    def _rung_notes(self) -> dict:
        """How each rung below LoRA was made, or why it is missing."""
        tuned = self._require_tuned()
        if tuned.train_frames is None:
            why = "a saved adapter: its training reviews are not kept, so the rungs trained alike cannot be made"
            return {"missing": why}
        notes = {"tfidf": "TF-IDF over words and word pairs with logistic regression, on the same training reviews"}
        if tuned.head_result is not None:
            head = tuned.head_result.as_dict()
            notes["head_only"] = {key: value for key, value in head.items() if key != "history"}
        return notes

    def save(self, output_dir: str | Path, report: Report | None = None) -> Path:
        """Write the LoRA model's adapter (safetensors, PEFT's config), its metadata and, if given, the report."""
        import json

        from .lora import save_weights

        tuned = self._require_tuned()
        self.calibration("finetuned")  # kept with the adapter: a loaded adapter answers as calibrated as it did
        folder = save_weights(tuned.weights, output_dir, tuned.metadata())
        if report is not None:
            report.adapter = str(folder)
            (folder / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
        return folder

    def export_zip(self, folder: str | Path, report: Report) -> Path:
        """`lora-adapter.zip` in `folder`: the adapter, its metadata and the report, to take home."""
        import shutil

        adapter = self.save(Path(folder) / "lora-adapter", report)
        return Path(shutil.make_archive(str(adapter), "zip", root_dir=adapter.parent, base_dir=adapter.name))

    def load_adapter(self, folder: str | Path) -> TunedModel:
        """Make a saved adapter the study's LoRA model (and its model the study's model).

        Raises:
            UserError: for a folder that is not one of our adapters, one saved without its training record, or one
                whose tensors do not fit its model.
        """
        import json

        from .lora import read_adapter_metadata, read_weights

        metadata = read_adapter_metadata(folder)
        if "trained_on" not in metadata:
            raise UserError(
                f"{Path(folder).name} does not record which reviews it trained on (saved by an older version), so "
                "it cannot be scored honestly: train it again"
            )
        spec = get_model_spec(metadata["model"])
        lora = LoraSettings(**_lora_fields(metadata["lora"]))
        saved_calibration = metadata.get("calibration")
        report_file = Path(folder) / "report.json"
        saved = json.loads(report_file.read_text()) if report_file.is_file() else None
        tuned = TunedModel(
            weights=read_weights(folder, lora),
            kind=spec.kind,
            lora=lora,
            summary=metadata["lora"],
            config=TrainConfig(**metadata["train_config"]),
            recipe=metadata.get("recipe", "fast"),
            trained_on=SplitRecord.from_dict(metadata["trained_on"]),
            saved_report=saved,
            calibration=Calibration.from_dict(saved_calibration) if saved_calibration else None,
        )
        self._run("classify", self._ref(spec.name), tuned.weights, ["a check that the adapter loads"])
        self._use(tuned)
        self.model_name = spec.name
        return self.tuned

    # --- your own reviews --------------------------------------------------------------------------------------

    def classify(self, texts: list[str]) -> tuple[Predictions, Predictions | None]:
        """The zero-shot answers and, once there is a LoRA model, its answers, for the same texts (one job), with
        calibrated confidences and whether each is sure (`Predictions.sure`) where the model has a calibration."""
        tuned = self.tuned
        baseline_calibration = self.calibration("baseline", DEFAULT_MAX_LENGTH)
        if tuned is None:
            baseline, _ = self._run("classify", self._ref(), None, list(texts))
            return _calibrated(baseline, baseline_calibration), None
        calibration = self.calibration("finetuned")
        baseline, answers = self._run(
            "classify", self._ref(tuned.name), tuned.weights, list(texts), tuned.config.max_length
        )
        return _calibrated(baseline, baseline_calibration), _calibrated(answers, calibration)

    def explain(self, text: str) -> list[list[tuple[str, float]]]:
        """Occlusion attributions of `text` for the zero-shot model and, once trained, the LoRA model."""
        tuned = self.tuned
        if tuned is None:
            return self._run("explain", self._ref(), None, text)
        return self._run("explain", self._ref(tuned.name), tuned.weights, text, tuned.config.max_length)

    def measure_resources(self, lora: LoraSettings, reviews: int = 8, seed: int = 42) -> dict:
        """A few measured steps of LoRA and of full fine-tuning on the same training reviews; kept for the report.

        Raises:
            UserError: with no data loaded, or settings that do not fit the model.
        """
        from .resources import trainable_by_rank

        splits, name = self._check_training(lora)
        self.resources = {
            **self._run("resources", self._ref(name), lora, splits.train.head(reviews), seed),
            "trainable_by_rank": trainable_by_rank(name, lora),
        }
        return self.resources


def _lora_fields(summary: dict) -> dict:
    """LoraSettings from the `lora` summary a saved adapter keeps (its layer list back to a top-layer count)."""
    layers = summary.get("layers")
    return {
        "r": summary["r"],
        "alpha": summary["alpha"],
        "dropout": summary["dropout"],
        "target_modules": tuple(summary["target_modules"]),
        "top_layers": 0 if layers in (None, "all") else len(layers),
    }


def _calibrated(predictions: Predictions, calibration: Calibration | None) -> Predictions:
    return calibration.apply(predictions) if calibration else predictions


def _reporter(progress: Progress | None, what: str):
    return (lambda done, total: progress(what, done, total)) if progress else None


def preset_model(name: str, models: Models | None = None) -> tuple[str, str | None]:
    """The model a preset runs: its own where it can load, else its fallback, with a note that says why.

    Raises:
        UserError: for an unknown preset.
    """
    from .models import check_available

    preset = get_preset(name)
    check = models.check if models is not None else check_available
    try:
        check(get_model_spec(preset.model))
        return preset.model, None
    except UserError as err:
        return (
            preset.fallback_model,
            f"{preset.model} cannot be loaded here ({err}); the {name} preset runs on "
            f"the bundled {preset.fallback_model} instead",
        )
