"""What LoRA is and what it changed, in numbers the pictures draw: matrix shapes, update sizes, moved reviews.

- `lora_shapes`: one adapted weight matrix of a registry model and its LoRA factors, from the architecture
  config alone (no weights), with the layer's and the whole model's parameter counts.
- `update_norms`: after training, how large each adapter's update is next to the frozen weight it adapts.
- `pooled_embeddings` and `project_pair`: the reviews as the model represents them, before and after training,
  on one shared 2-D map.
- `result_sentence`: the study's result in one sentence, every number read from the report.

Nothing here imports gradio; torch, PEFT and scikit-learn are imported inside the functions that need them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import SCORE_BATCH, LoraSettings, ModelSpec

# module names inside one layer -> plain words (the encoder's three "dense" layers are told apart by their path)
MODULE_WORDS = {
    "query": "query projection",
    "key": "key projection",
    "value": "value projection",
    "attention.output.dense": "attention output projection",
    "intermediate.dense": "feed-forward input layer",
    "output.dense": "feed-forward output layer",
    "q": "query projection",
    "k": "key projection",
    "v": "value projection",
    "o": "attention output projection",
    "wi": "feed-forward input layer",
    "wi_0": "feed-forward input layer (gate)",
    "wi_1": "feed-forward input layer",
    "wo": "feed-forward output layer",
}
T5_BLOCKS = {"SelfAttention": "self-attention", "EncDecAttention": "cross-attention", "DenseReluDense": ""}
_T5_PATH = re.compile(r"(encoder|decoder)\.block\.(\d+)\.layer\.\d+\.(.+)$")
_BERT_PATH = re.compile(r"\.layer\.(\d+)\.(.+)$")


def module_key(path: str) -> tuple[int, str]:
    """(layer index, module name inside the layer) of an adapted module's full path in the model.

    Encoder (BERT/MiniLM): `...layer.5.attention.self.value` -> (5, "value"); the three `dense` layers become
    "attention.output.dense", "intermediate.dense" and "output.dense". T5: `...decoder.block.2.layer.1.
    EncDecAttention.q` -> (2, "decoder.EncDecAttention.q"): the block index, and which stack and attention.
    """
    t5 = _T5_PATH.search(path)
    if t5:  # the block's sub-layer index goes; which stack and which attention stay
        stack, index, rest = t5.groups()
        return int(index), f"{stack}.{rest}"
    bert = _BERT_PATH.search(path)
    if not bert:
        raise ValueError(f"no layer index in module path {path!r}")
    return int(bert.group(1)), bert.group(2).removeprefix("attention.self.")


def describe_module(module: str) -> str:
    """Plain words for a module name of `module_key`: "value projection", "decoder's cross-attention query
    projection"."""
    parts = module.split(".")
    if parts[0] in ("encoder", "decoder") and len(parts) == 3:
        stack, block, leaf = parts
        where = " ".join(w for w in (f"{stack}'s", T5_BLOCKS.get(block, block)) if w)
        return f"{where} {MODULE_WORDS.get(leaf, leaf)}"
    return MODULE_WORDS.get(module, module)


def update_norms(bundle) -> list[dict]:
    """How much training changed each adapted weight matrix: ||(alpha / r)·B·A||_F / ||W||_F.

    Args:
        bundle: a `ModelBundle` whose model PEFT wrapped with LoRA (not merged).

    Returns:
        One `{"layer": int, "module": str, "relative_norm": float}` per adapted matrix, in model order (see
        `module_key` for the names). B starts at zero, so every value is 0 before training.

    Raises:
        ValueError: when the model has no LoRA layers (e.g. a merged serving copy).
    """
    import torch
    from peft.tuners.lora import LoraLayer

    rows = []
    with torch.no_grad():
        for path, layer in bundle.model.named_modules():
            if not isinstance(layer, LoraLayer):
                continue
            for adapter in layer.active_adapters:
                if adapter not in layer.lora_A:
                    continue
                # PEFT's own delta: scaling[adapter] * B @ A (alpha / r, or alpha / sqrt(r) with rsLoRA)
                delta = layer.get_delta_weight(adapter).float()
                frozen = layer.get_base_layer().weight.float()
                index, module = module_key(path)
                relative = float(torch.linalg.norm(delta) / torch.linalg.norm(frozen))
                rows.append({"layer": index, "module": module, "relative_norm": relative})
    if not rows:
        raise ValueError("the model has no LoRA adapters to measure (was it merged?)")
    return rows


def norms_reading(norms: Sequence[dict]) -> str:
    """One line on where LoRA changed the model most, from `update_norms`'s rows."""
    if not norms:
        return "No adapted modules to measure."
    top = max(norms, key=lambda row: row["relative_norm"])
    low = min(norms, key=lambda row: row["relative_norm"])
    return (
        f"The largest change is in {where_changed(top, norms)}: its update is "
        f"{100 * top['relative_norm']:.2g}% of the size of the frozen weights it adapts; the smallest, "
        f"{100 * low['relative_norm']:.2g}%, in {where_changed(low, norms)}."
    )


def where_changed(row: dict, norms: Sequence[dict]) -> str:
    """Where one row of `update_norms` is, in words: "the value projection of layer 5 (the top layer)"."""
    top_layer = max(r["layer"] for r in norms)
    note = " (the top layer)" if row["layer"] == top_layer else ""
    return f"the {describe_module(row['module'])} of layer {row['layer']}{note}"


@dataclass(frozen=True)
class LoraShapes:
    """One adapted matrix, its LoRA factors and the parameter counts around it (see `lora_shapes`)."""

    model: str
    module: str
    layer: int
    d_out: int
    d_in: int
    r: int
    alpha: float
    frozen: int  # d_out * d_in: the weights of W
    trained: int  # r * (d_in + d_out): the weights of B and A
    matrices: int  # adapted matrices in the whole model
    matrix_shapes: dict  # "d_out × d_in" -> how many adapted matrices have that shape
    lora_total: int  # LoRA weights in the whole model
    trainable: int  # trainable weights in the whole model (LoRA, plus the encoder's classification head)
    total: int  # all weights of the model with its adapters
    percent: float  # trainable / total, in percent

    @property
    def share(self) -> float:
        """Trained weights of this matrix as a percentage of its frozen ones."""
        return 100.0 * self.trained / self.frozen

    @property
    def head(self) -> int:
        """Trainable weights that are not LoRA factors (the encoder's classification head; 0 for T5)."""
        return self.trainable - self.lora_total

    def sentence(self) -> str:
        """The counts in words: this matrix, then the whole model."""
        shapes = ", ".join(f"{n} of {shape}" for shape, n in self.matrix_shapes.items())
        head = f" plus the classification head's {self.head:,}" if self.head else ""
        return (
            f"This matrix: {self.frozen:,} frozen weights, {self.trained:,} trained ({self.share:.1f}%). "
            f"The whole model: {self.matrices} matrices are adapted ({shapes}), {self.lora_total:,} LoRA weights"
            f"{head}: {self.trainable:,} trained of {self.total:,} ({self.percent:.2f}%)."
        )

    def alpha_sentence(self) -> str:
        """What alpha does, with this recipe's numbers."""
        return (
            f"The layer computes W·x + (alpha / r)·B·A·x: training learns B and A, and alpha sets how strongly "
            f"their product counts next to the frozen W (here alpha {self.alpha:g} / r {self.r} = "
            f"{self.alpha / self.r:.3g}; doubling alpha doubles the update's effect)."
        )


def lora_shapes(spec: ModelSpec, settings: LoraSettings) -> LoraShapes:
    """The first adapted matrix of `spec` under `settings` and the model's counts, from its config (no weights).

    Args:
        spec: a registry model; its architecture is read from `assets/models/`.
        settings: the LoRA recipe (r, alpha, targets, top layers).

    Returns:
        The shapes and counts; `trainable`, `total` and `percent` equal `lora.count_parameters_offline`.

    Raises:
        UserError: targets or layers the model does not have (as `LoraSettings.targets_for` / `layers_for`).
    """
    import torch
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer

    from .lora import build_lora_config, build_meta_model, count_parameters_offline

    counts = count_parameters_offline(spec.name, settings)
    with torch.device("meta"):
        model = get_peft_model(build_meta_model(spec), build_lora_config(settings, spec))
    adapted = [(path, layer) for path, layer in model.named_modules() if isinstance(layer, LoraLayer)]
    shapes = Counter(f"{layer.out_features} × {layer.in_features}" for _, layer in adapted)
    lora_total = sum(settings.r * (layer.in_features + layer.out_features) for _, layer in adapted)
    path, first = adapted[0]
    index, module = module_key(path)
    return LoraShapes(
        model=spec.name,
        module=module,
        layer=index,
        d_out=first.out_features,
        d_in=first.in_features,
        r=settings.r,
        alpha=settings.alpha,
        frozen=first.out_features * first.in_features,
        trained=settings.r * (first.in_features + first.out_features),
        matrices=len(adapted),
        matrix_shapes=dict(shapes),
        lora_total=lora_total,
        trainable=counts["trainable"],
        total=counts["total"],
        percent=counts["percent"],
    )


def pooled_embeddings(
    bundle, texts: list[str], max_length: int, batch_size: int = SCORE_BATCH, progress=None
) -> np.ndarray:
    """Each review as the model represents it, one vector per review, in input order: what its head reads
    (`inference.Predictions.features`, which the scoring passes return beside their answers).

    Encoder: the unit-length mean-pooled final hidden states, exactly what the classification head sees.
    T5: the encoder's mean-pooled final states of the study's prompt (`review: <text>`).

    Args:
        bundle: the model, with or without LoRA (PEFT-wrapped or merged).
        texts: cleaned reviews.
        max_length: tokens kept per review (head + tail), as for prediction.
        batch_size: reviews per forward pass.
        progress: called with (done, total) after each batch (encoders).

    Returns:
        An array of shape (len(texts), hidden size), float32.
    """
    from .baseline import embed_texts
    from .ladder import t5_encoder_features

    if bundle.spec.kind == "encoder":
        return embed_texts(bundle, list(texts), max_length, batch_size, progress).numpy().astype(np.float32)
    return t5_encoder_features(bundle, list(texts), max_length, batch_size).astype(np.float32)


def project_pair(before: np.ndarray, after: np.ndarray) -> dict:
    """Both sets of review vectors on one 2-D map: one PCA fitted on the two together, so the panels share axes.

    Args:
        before: the zero-shot model's vectors, (n, d).
        after: the LoRA model's vectors of the same reviews in the same order, (n, d).

    Returns:
        `{"baseline": [[x, y], ...], "finetuned": [[x, y], ...], "explained_variance": [pc1, pc2]}`: one point
        per review in input order, and the share of the two sets' variance each axis holds.

    Raises:
        ValueError: when the two sets differ in shape or are empty.
    """
    from sklearn.decomposition import PCA

    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if before.shape != after.shape or before.ndim != 2 or len(before) == 0:
        raise ValueError(f"need two (n, d) arrays of the same shape, got {before.shape} and {after.shape}")
    pca = PCA(n_components=2, svd_solver="full").fit(np.vstack([before, after]))

    def points(vectors):
        return np.round(pca.transform(vectors), 4).tolist()

    return {
        "baseline": points(before),
        "finetuned": points(after),
        "explained_variance": [round(float(v), 4) for v in pca.explained_variance_ratio_],
    }


def class_separation(points: Sequence[Sequence[float]], labels: Sequence[int]) -> float:
    """Distance between the two classes' centres in units of their spread (the root-mean-square distance of a
    review from its own class centre). 0: the classes sit on top of each other; above ~2 they barely overlap."""
    points, labels = np.asarray(points, dtype=float), np.asarray(labels)
    if set(labels.tolist()) != {0, 1}:
        raise ValueError("class separation needs reviews of both labels")
    centres = {k: points[labels == k].mean(axis=0) for k in (0, 1)}
    within = np.concatenate([points[labels == k] - centres[k] for k in (0, 1)])
    spread = float(np.sqrt((within**2).sum(axis=1).mean()))
    return float(np.linalg.norm(centres[1] - centres[0]) / max(spread, 1e-12))


def projection_reading(projection: dict, labels: Sequence[int]) -> str:
    """One line on how the reviews moved, from the map's points: the class centres' distance before and after."""
    before = class_separation(projection["baseline"], labels)
    after = class_separation(projection["finetuned"], labels)
    how = "moved apart" if after > before else "moved closer together" if after < before else "did not move apart"
    return (
        f"On this map the centres of the positive and the negative reviews are {before:.2f} spreads apart before "
        f"training and {after:.2f} after LoRA: the two classes {how} (a spread is the typical distance of a "
        "review from its class's centre)."
    )


def _percent(value: float) -> str:
    return f"{value:.2f}%" if value >= 0.1 else f"{value:.2g}%"


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def result_sentence(report: dict) -> str:
    """The study's result in one sentence; every number comes from `report` (the CLI's / app's report.json).

    Reads `params.percent`, `train.seconds` (and `train.stopped`), `data.sizes.train`, `baseline.accuracy`,
    `baseline.n`, `finetuned.accuracy`, `comparison.accuracy_gain`, and where present
    `comparison.gain_interval`, `head_only.accuracy` and `update_norms`.
    """
    before, after = report["baseline"]["accuracy"], report["finetuned"]["accuracy"]
    comparison = report.get("comparison", {})
    gain = comparison.get("accuracy_gain", after - before)
    train = report["train"]
    stopped = " (stopped early)" if train.get("stopped") else ""
    moved = f"left accuracy at {after:.2f}" if gain == 0 else f"moved accuracy from {before:.2f} to {after:.2f}"
    text = (
        f"LoRA trained {_percent(report['params']['percent'])} of the weights for {_seconds(train['seconds'])}"
        f"{stopped} on {report['data']['sizes']['train']:,} reviews and {moved} on {report['baseline']['n']:,} "
        f"test reviews ({gain:+.2f}"
    )
    interval = comparison.get("gain_interval")
    if interval:
        text += f", 95% interval {interval[0]:+.2f} to {interval[1]:+.2f}"
    text += ")"
    if report.get("head_only") and "accuracy" in report["head_only"]:
        text += f"; a trained head alone reaches {report['head_only']['accuracy']:.2f}"
    norms = report.get("update_norms")
    if norms:
        text += f"; the change is largest in {where_changed(max(norms, key=lambda r: r['relative_norm']), norms)}"
    return text + "."
