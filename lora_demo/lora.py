"""LoRA with PEFT: build the config, wrap a model, count parameters, save and load adapters.

Adapters are written as safetensors only, atomically (a staging folder beside the target, swapped into place
by renames; only a folder of our own files is ever replaced), next to a
`lora_demo.json` that says which registry model and settings they belong to.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import (
    LoraConfig,
    PeftModel,
    TaskType,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .config import ASSETS_DIR, LABEL_NAMES, METADATA_FILE, LoraSettings, ModelSpec, UserError, get_model_spec
from .models import EncoderClassifier, ModelBundle, load_bundle

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def build_lora_config(settings: LoraSettings, spec: ModelSpec, **variant) -> LoraConfig:
    """Turn our settings into PEFT's config for this model (`variant`: PEFT's LoRA variants, e.g. `use_dora`)."""
    encoder = spec.kind == "encoder"
    layers = settings.layers_for(spec)
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets_for(spec)),
        layers_to_transform=layers,
        layers_pattern="layer" if layers else None,
        # the encoder's classification head is new, so it trains in full and is saved with the adapter
        modules_to_save=["classifier"] if encoder else None,
        task_type=None if encoder else TaskType.SEQ_2_SEQ_LM,
        **variant,
    )


def lora_summary(settings: LoraSettings, spec: ModelSpec) -> dict:
    """The settings as reports and saved adapters keep them, with the modules and layers they adapt in `spec`."""
    return {
        "r": settings.r,
        "alpha": settings.alpha,
        "dropout": settings.dropout,
        "target_modules": list(settings.targets_for(spec)),
        "layers": settings.layers_for(spec) or "all",
    }


def apply_lora(bundle: ModelBundle, settings: LoraSettings) -> ModelBundle:
    """Wrap the bundle's model with fresh LoRA adapters; the base weights are frozen."""
    model = get_peft_model(bundle.model, build_lora_config(settings, bundle.spec))
    return ModelBundle(spec=bundle.spec, model=model, tokenizer=bundle.tokenizer)


def count_parameters(model: torch.nn.Module) -> dict:
    """Trainable and total parameters (LoRA matrices and the head included in the total)."""
    if isinstance(model, PeftModel):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": int(trainable), "total": int(total), "percent": 100.0 * trainable / total}


def shipped_bytes(model: torch.nn.Module) -> int:
    """Bytes of what a training run leaves to ship: PEFT's adapter file (its matrices and the trained head, as
    `save_adapter` writes it), or every weight of a model trained in full (a tied weight once)."""
    from safetensors.torch import save

    if isinstance(model, PeftModel):
        return len(save({name: t.contiguous() for name, t in get_peft_model_state_dict(model).items()}))
    unique = {id(p): p for p in model.parameters()}
    return sum(p.numel() * p.element_size() for p in unique.values())


def count_parameters_offline(name: str, settings: LoraSettings) -> dict:
    """Count parameters from the architecture config shipped in `assets/models/`, on the meta device.

    No weights are read and nothing is downloaded, so this answers instantly anywhere.
    """
    spec = get_model_spec(name)
    model = build_meta_model(spec)
    base_total = sum(p.numel() for p in model.parameters())
    with torch.device("meta"):
        counts = count_parameters(get_peft_model(model, build_lora_config(settings, spec)))
    return {**counts, "base_total": int(base_total)}


def build_meta_model(spec: ModelSpec) -> torch.nn.Module:
    """The registry model's architecture from its config in `assets/models/`, on the meta device (no weights)."""
    config = AutoConfig.from_pretrained(ASSETS_DIR / "models" / spec.arch_config)
    with torch.device("meta"):
        if spec.kind == "encoder":
            return EncoderClassifier(AutoModel.from_config(config, add_pooling_layer=False), len(LABEL_NAMES))
        return AutoModelForSeq2SeqLM.from_config(config)


# what `save_adapter` (PEFT, the tokenizer) and the CLI / app write into an adapter folder; a folder holding
# anything else is not ours to replace
ADAPTER_FILES = frozenset(
    {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        METADATA_FILE,
        "report.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "spiece.model",
        "vocab.txt",
        "chat_template.jinja",
    }
)


def check_adapter_target(output_dir: str | Path) -> Path:
    """Check that `output_dir` may receive an adapter: new, empty, or an adapter folder this project wrote.

    Returns:
        The resolved folder.

    Raises:
        UserError: a file, or a folder holding anything `save_adapter` did not write; nothing is touched.
    """
    folder = Path(output_dir).expanduser().resolve()
    if not folder.exists() and not folder.is_symlink():
        return folder
    if not folder.is_dir():
        raise UserError(f"{str(output_dir)!r} is a file, not a folder: give a new folder for the adapter")
    entries = list(folder.iterdir())
    if not entries:
        return folder
    foreign = [entry.name for entry in entries if not _written_by_us(entry, folder)]
    if foreign or not (folder / METADATA_FILE).is_file():
        shown = ", ".join(sorted(foreign)[:3]) or f"no {METADATA_FILE}"
        raise UserError(
            f"refusing to replace {str(output_dir)!r}: it is not an adapter folder written by lora_demo ({shown}); "
            f"give a new folder"
        )
    return folder


def _written_by_us(entry: Path, folder: Path) -> bool:
    if entry.is_symlink() or not entry.is_file():
        return False
    return entry.name in ADAPTER_FILES or entry.name in _recorded_files(folder)


def _recorded_files(folder: Path) -> set[str]:
    try:
        recorded = json.loads((folder / METADATA_FILE).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {name for name in recorded if isinstance(name, str)}


@dataclass(frozen=True, eq=False)
class AdapterWeights:
    """A trained adapter as plain data: what crosses a job's process boundary, what a study keeps, what is saved.

    Attributes:
        model: the registry model it adapts.
        lora: the settings it was made with (rank, alpha, targets, layers).
        state: PEFT's saved tensors (`get_peft_model_state_dict`: the LoRA matrices and, for encoders, the
            classification head), on the CPU: a few hundred KB.
        peft_config: PEFT's `adapter_config.json` for it, as made where the adapter was trained.
        key: a hash of the tensors, naming this adapter in caches of serving copies.
    """

    model: str
    lora: LoraSettings
    state: dict[str, torch.Tensor]
    peft_config: dict
    key: str

    @classmethod
    def of(cls, model: str, lora: LoraSettings, state: dict[str, torch.Tensor], peft_config: dict) -> AdapterWeights:
        state = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in state.items()}
        digest = hashlib.sha256(model.encode())
        for name in sorted(state):
            digest.update(name.encode())
            digest.update(state[name].float().numpy().tobytes())
        return cls(model, lora, state, peft_config, digest.hexdigest()[:16])

    @property
    def nbytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in self.state.values())


def adapter_weights(bundle: ModelBundle, lora: LoraSettings) -> AdapterWeights:
    """The adapter of a PEFT-wrapped `bundle` as plain tensors."""
    return AdapterWeights.of(bundle.spec.name, lora, _state_dict(bundle), _config_dict(bundle))


def _state_dict(bundle: ModelBundle) -> dict[str, torch.Tensor]:
    # the embeddings are never adapted: no look-up of the base model's files to check for a changed vocabulary
    return get_peft_model_state_dict(bundle.model, save_embedding_layers=False)


def _config_dict(bundle: ModelBundle) -> dict:
    config = {**bundle.model.peft_config["default"].to_dict(), "inference_mode": True}
    if bundle.spec.source != "bundled":
        config["base_model_name_or_path"] = bundle.spec.source
    return json.loads(json.dumps(config, default=sorted))  # sets as lists


def attach(bundle: ModelBundle, weights: AdapterWeights) -> ModelBundle:
    """`bundle` (a fresh, unwrapped model) with `weights`' adapter in place, for prediction or measuring.

    Raises:
        UserError: the weights belong to another model.
    """
    if weights.model != bundle.spec.name:
        raise UserError(f"this adapter belongs to {weights.model}, not {bundle.spec.name}")
    adapted = apply_lora(bundle, weights.lora)
    device = next(bundle.model.parameters()).device
    result = set_peft_model_state_dict(adapted.model, {k: v.to(device) for k, v in weights.state.items()})
    missing = [name for name in getattr(result, "unexpected_keys", []) if "lora_" in name]
    if missing:
        raise UserError(f"the adapter's tensors do not fit {bundle.spec.name}: {', '.join(missing[:3])}")
    adapted.model.eval()
    return adapted


def save_adapter(bundle: ModelBundle, output_dir: str | Path, metadata: dict) -> Path:
    """Write a PEFT-wrapped bundle's adapter (see `save_weights`), with its tokenizer."""
    weights = AdapterWeights(bundle.spec.name, LoraSettings(), _state_dict(bundle), _config_dict(bundle), key="")
    return save_weights(weights, output_dir, metadata, tokenizer=bundle.tokenizer)


def save_weights(weights: AdapterWeights, output_dir: str | Path, metadata: dict, tokenizer=None) -> Path:
    """Write the adapter (safetensors, PEFT's `adapter_config.json`) and its metadata into a new folder, then
    swap it into place. No model is needed: PEFT loads the folder onto the base model (`PeftModel.from_pretrained`).

    The adapter is written into a staging folder beside `output_dir`; an existing `output_dir` is replaced
    only when it is an adapter folder this project wrote (see `check_adapter_target`): it is renamed aside,
    the new folder renamed in, and only then is the old one deleted.

    Raises:
        UserError: `output_dir` is a file or a folder of someone else's files (left untouched).
    """
    from safetensors.torch import save_file

    output_dir = check_adapter_target(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-new-", dir=output_dir.parent))
    try:
        (staging / "adapter_config.json").write_text(json.dumps(weights.peft_config, indent=2, sort_keys=True))
        state = {name: tensor.contiguous() for name, tensor in weights.state.items()}
        save_file(state, staging / "adapter_model.safetensors", metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        files = sorted({p.name for p in staging.iterdir()} | {METADATA_FILE})
        (staging / METADATA_FILE).write_text(
            json.dumps({"model": weights.model, **metadata, "files": files}, indent=2)
        )
        _swap_into_place(staging, check_adapter_target(output_dir))  # checked again: it may have changed meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def read_weights(adapter_dir: str | Path, lora: LoraSettings) -> AdapterWeights:
    """The tensors of a saved adapter folder (checked by `read_adapter_metadata` first), as `AdapterWeights`."""
    from safetensors.torch import load_file

    folder = Path(adapter_dir)
    metadata = read_adapter_metadata(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    return AdapterWeights.of(metadata["model"], lora, load_file(folder / "adapter_model.safetensors"), config)


def _swap_into_place(staging: Path, output_dir: Path) -> None:
    """Rename `staging` to `output_dir`; an old `output_dir` is renamed aside first and deleted last."""
    if not output_dir.exists():
        staging.rename(output_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-old-", dir=output_dir.parent))
    old.rmdir()  # only its unique name is wanted
    output_dir.rename(old)
    try:
        staging.rename(output_dir)
    except BaseException:
        old.rename(output_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_adapter_metadata(adapter_dir: str | Path) -> dict:
    """Check an adapter folder and return its metadata.

    Raises:
        UserError: a missing folder, pickle files (refused: loading them can run code), no safetensors.
    """
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise UserError(f"adapter folder {str(adapter_dir)!r} does not exist")
    pickles = [p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise UserError(f"refusing to load pickle files ({', '.join(pickles)}): adapters must be safetensors")
    if not (folder / "adapter_model.safetensors").is_file() or not (folder / METADATA_FILE).is_file():
        raise UserError(
            f"{str(adapter_dir)!r} is not a lora_demo adapter (no adapter_model.safetensors "
            f"or {METADATA_FILE}): train one with `python -m lora_demo train --output DIR`"
        )
    return json.loads((folder / METADATA_FILE).read_text())


def load_adapter(adapter_dir: str | Path, base: ModelBundle | None = None) -> tuple[ModelBundle, dict]:
    """Load a saved adapter onto a fresh copy of its base model.

    Args:
        adapter_dir: a folder written by `save_adapter`.
        base: the untrained model to put it on; default: the registry model named in the metadata.

    Returns:
        The adapted model and the adapter's metadata.
    """
    metadata = read_adapter_metadata(adapter_dir)
    bundle = base or load_bundle(metadata["model"])
    model = PeftModel.from_pretrained(bundle.model, str(adapter_dir), is_trainable=False)
    model.eval()
    return ModelBundle(spec=bundle.spec, model=model, tokenizer=bundle.tokenizer), metadata


def export_adapter_zip(bundle: ModelBundle, folder: str | Path, metadata: dict, report: dict) -> Path:
    """A zip to take home: the adapter (safetensors, PEFT's config, our metadata) and the run's report JSON.

    Returns:
        The path of `folder/lora-adapter.zip`; the files it holds are in `folder/lora-adapter/`.
    """
    folder = Path(folder)
    adapter = save_adapter(bundle, folder / "lora-adapter", metadata)
    (adapter / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return Path(shutil.make_archive(str(folder / "lora-adapter"), "zip", root_dir=folder, base_dir="lora-adapter"))
