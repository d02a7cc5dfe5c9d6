"""`python -m lora_demo`: the app's pipeline, headless, with a JSON report.

Commands: train, evaluate, predict, params, data, bench. User mistakes print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from dataclasses import fields, replace
from pathlib import Path

from .config import (
    DEFAULT_MODEL,
    MODEL_REGISTRY,
    RECIPES,
    DataConfig,
    LoraSettings,
    TrainConfig,
    UserError,
    field_help,
    get_model_spec,
    recipe,
)

logger = logging.getLogger("lora_demo")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line on stderr and exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `python -m lora_demo {self.prog.split()[-1]} --help`)\n")


def _add_fields(parser, cls, rename: dict[str, str] | None = None, skip=()):
    """Flags from a config dataclass: its help strings and types; default None means 'not given'."""
    rename = rename or {}
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + rename.get(f.name, f.name).replace("_", "-")
        kind = str(f.type).split(" ")[0]
        help_text = f"{field_help(cls, f.name)} (default: {f.default})"
        if kind == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(kind, str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)


def _from_args(cls, args, base=None):
    given = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    return replace(base, **given) if base is not None else cls(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m lora_demo", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    def with_data(p):
        _add_fields(p, DataConfig, rename={"source": "data"})
        return p

    def with_model(p):
        p.add_argument("--model", default=DEFAULT_MODEL, choices=list(MODEL_REGISTRY), help="registry model")
        return p

    def with_lora(p):
        p.add_argument(
            "--recipe",
            default="fast",
            choices=list(RECIPES),
            help="starting settings that the other flags change: "
            + "; ".join(f"{name}: {what}" for name, what in RECIPES.items()),
        )
        _add_fields(p, LoraSettings, skip=("target_modules",))
        p.add_argument("--target-modules", nargs="+", default=None, help=field_help(LoraSettings, "target_modules"))
        return p

    train = with_lora(with_model(with_data(commands.add_parser("train", help="baseline, LoRA training, evaluation"))))
    _add_fields(train, TrainConfig, rename={"learning_rate": "lr"}, skip=("seed",))
    train.add_argument("--output", help="folder to save the adapter in")
    train.add_argument("--report", help="file to write the JSON report to")

    evaluate = with_model(with_data(commands.add_parser("evaluate", help="score the baseline or an adapter")))
    evaluate.add_argument("--adapter", help="adapter folder from `train --output`; default: the zero-shot baseline")
    evaluate.add_argument("--max-length", type=int, default=None, help="tokens kept per review")
    evaluate.add_argument("--report", help="file to write the JSON metrics to")

    predict = with_model(commands.add_parser("predict", help="label free text"))
    predict.add_argument("--adapter", help="adapter folder; default: the zero-shot baseline of --model")
    predict.add_argument("texts", nargs="+", help="reviews to label")

    with_lora(with_model(commands.add_parser("params", help="trainable vs total parameters, offline")))
    with_data(commands.add_parser("data", help="summary of the data source and split"))

    bench = commands.add_parser("bench", help="our default recipe vs a tutorial pipeline and TF-IDF, side by side")
    bench.add_argument("--data", dest="source", default=None, help=field_help(DataConfig, "source"))
    bench.add_argument("--seed", type=int, default=42, help="seed of the split and of training")
    bench.add_argument("--quick", action="store_true", help="small sizes and one epoch: a few minutes")
    bench.add_argument("--report", help="file to write bench.json to")
    extra = bench.add_mutually_exclusive_group()
    extra.add_argument(
        "--ablation", action="store_true", help="where the speed comes from: one change at a time, validation accuracy"
    )
    extra.add_argument(
        "--study-preset", action="store_true", help="the study's T5-small preset (random weights), before and now"
    )
    return parser


def cmd_train(args) -> int:
    from .data import load_splits
    from .pipeline import comparison_table, run_study
    from .train import is_main_process

    # every setting is checked before the data loads, so a mistake is the only line printed
    data_config = _data_config(args)
    lora = _lora_settings(args)
    config = _from_args(
        TrainConfig, args, replace(recipe(args.recipe, get_model_spec(args.model))[1], seed=data_config.seed)
    )
    _check_model(args.model, lora)
    splits = load_splits(data_config, fit_to_data=_sizes_not_given(args))
    _print_notes(splits.notes)
    report = run_study(args.model, splits, lora, config, output_dir=args.output, on_event=_log_event)
    if not is_main_process():  # torchrun: rank 0 reports
        return 0
    report["resources"] = _measure_resources(args.model, lora, splits, config.seed)
    _write_json(args.report, report)
    if report.get("adapter"):  # the app lists adapter folders by their report (lora_demo.runs)
        _write_json(Path(report["adapter"]) / "report.json", report)
    train = report["train"]
    print(
        f"trained {train['steps']} steps in {train['seconds']:.1f} s: train loss {train['train_loss']:.4f}, "
        f"validation loss {train['val_loss'] if train['val_loss'] is None else round(train['val_loss'], 4)}; "
        f"{report['params']['trainable']:,} trainable of {report['params']['total']:,} parameters "
        f"({report['params']['percent']:.3f}%)"
    )
    print(comparison_table(report))
    print(report["comparison"]["verdict"])
    lora_row, full_row = report["resources"]["lora"], report["resources"]["full"]
    print(
        f"LoRA vs full fine-tuning, measured on {report['resources']['batch']['reviews']} reviews: "
        f"{lora_row['seconds_per_step']:.3f} s vs {full_row['seconds_per_step']:.3f} s per step, "
        f"{lora_row['memory_growth_mb']:.0f} MB vs {full_row['memory_growth_mb']:.0f} MB memory growth, "
        f"{lora_row['saved_mb'] * 1024:.0f} KB vs {full_row['saved_mb']:.1f} MB saved"
    )
    for name in ("baseline", "finetuned"):
        if report[name].get("warning"):
            print(f"warning ({name}): {report[name]['warning']}")
    return 0


def cmd_evaluate(args) -> int:
    from .data import load_splits
    from .inference import serving_copy
    from .lora import load_adapter, read_adapter_metadata
    from .models import load_bundle
    from .pipeline import evaluate_model

    _check_model(read_adapter_metadata(args.adapter)["model"] if args.adapter else args.model)
    splits = load_splits(_data_config(args), fit_to_data=_sizes_not_given(args))
    _print_notes(splits.notes)
    if args.adapter:
        bundle, meta = load_adapter(args.adapter)
        max_length = args.max_length or meta.get("train_config", {}).get("max_length", 256)
    else:
        bundle, max_length = load_bundle(args.model), args.max_length or 256
    metrics, _ = evaluate_model(serving_copy(bundle), splits.test, zero_shot=not args.adapter, max_length=max_length)
    result = {"model": bundle.spec.name, "adapter": args.adapter, "data": splits.summary(), "metrics": metrics}
    _write_json(args.report, result)
    print(json.dumps(result, indent=2))
    return 0


def cmd_predict(args) -> int:
    from .baseline import zero_shot_predict
    from .inference import classify_texts, serving_copy
    from .lora import load_adapter
    from .models import load_bundle

    texts = [t.strip() for t in args.texts]
    if not all(texts):
        raise UserError("empty text: give each review as a non-empty argument")
    if args.adapter:
        bundle, meta = load_adapter(args.adapter)
        max_length = meta.get("train_config", {}).get("max_length", 256)
        predictions = classify_texts(serving_copy(bundle), texts, max_length=max_length)
    else:
        predictions = zero_shot_predict(serving_copy(load_bundle(args.model)), texts)
    for text, label, confidence in zip(texts, predictions.label_names(), predictions.confidence):
        print(json.dumps({"text": text, "label": label, "confidence": round(confidence, 4)}))
    return 0


def cmd_params(args) -> int:
    from .lora import count_parameters_offline

    counts = count_parameters_offline(args.model, _lora_settings(args))
    print(
        f"model {args.model}: {counts['trainable']:,} trainable of {counts['total']:,} parameters "
        f"({counts['percent']:.3f}%); base model {counts['base_total']:,}"
    )
    return 0


def cmd_data(args) -> int:
    from .data import load_splits

    splits = load_splits(_data_config(args), fit_to_data=_sizes_not_given(args))
    summary = splits.summary()
    summary["examples"] = splits.train.head(3).assign(text=lambda f: f["text"].str[:120]).to_dict("records")
    print(json.dumps(summary, indent=2))
    return 0


def cmd_bench(args) -> int:
    from . import bench

    def log(line):
        print(line, file=sys.stderr, flush=True)

    plan = bench.QUICK_PLAN if args.quick else bench.FULL_PLAN
    if args.ablation:
        return _bench_ablation(args, plan, log)
    if args.study_preset:
        return _bench_study_preset(args, log)
    report = bench.run_bench(bench.load_bench_splits(args.source, plan, args.seed), plan, seed=args.seed, log=log)
    _write_json(args.report, report)
    print(bench.bench_table(report))
    print("\n".join(bench.goals_lines(report)))
    print(json.dumps({"ratios": report["ratios"], "scaling": report["scaling"]}, indent=2))
    return 0


def _bench_ablation(args, plan, log) -> int:
    from .ablation import ablation_table, run_ablation
    from .bench import load_bench_splits

    rows = run_ablation(load_bench_splits(args.source, plan, args.seed), plan.epochs, args.seed, log=log)
    _write_json(args.report, {"ablation": rows})
    print(ablation_table(rows))
    return 0


def _bench_study_preset(args, log) -> int:
    from .preset_timing import load_study_splits, preset_table, time_study_preset

    report = time_study_preset(load_study_splits(args.source, args.seed), args.seed, log=log)
    _write_json(args.report, report)
    print(preset_table(report))
    print(f"training: {report['train_speedup']:.2f}x faster than before")
    return 0


def _measure_resources(model: str, lora: LoraSettings, splits, seed: int) -> dict:
    """A few measured steps of LoRA and of full fine-tuning (see `lora_demo.resources`), and trainable vs r."""
    from .resources import measure, trainable_by_rank

    return {
        **measure(model, lora, splits.train.head(8), seed=seed),
        "trainable_by_rank": trainable_by_rank(model, lora),
    }


def _check_model(name: str, lora: LoraSettings | None = None):
    """Refuse a model that cannot load here, or LoRA settings it does not fit, before any slow work."""
    from .models import check_available

    spec = get_model_spec(name)
    if lora is not None:
        lora.targets_for(spec)
        lora.layers_for(spec)
    check_available(spec)


def _data_config(args) -> DataConfig:
    return _from_args(DataConfig, args)


def _sizes_not_given(args) -> bool:
    return all(getattr(args, name) is None for name in ("train_size", "val_size", "test_size"))


def _lora_settings(args) -> LoraSettings:
    settings = _from_args(LoraSettings, args, recipe(args.recipe, get_model_spec(args.model))[0])
    if args.target_modules:
        settings = replace(settings, target_modules=tuple(args.target_modules))
    return settings


def _log_event(event: dict):
    from .train import is_main_process

    if not is_main_process():
        return
    if event["type"] == "log":
        print(f"step {event['step']:>4}  epoch {event['epoch']:.2f}  train loss {event['loss']:.4f}", flush=True)
    elif event["type"] == "eval":
        print(
            f"step {event['step']:>4}  epoch {event['epoch']:.2f}  validation loss {event['val_loss']:.4f}", flush=True
        )


def _print_notes(notes):
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _write_json(path, payload):
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "params": cmd_params,
    "data": cmd_data,
    "bench": cmd_bench,
}


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not a user mistake: one line, the traceback only on request
        if os.environ.get("LORA_DEMO_DEBUG"):
            traceback.print_exc()
        print(
            f"error: unexpected {type(err).__name__}: {err} (set LORA_DEMO_DEBUG=1 for the traceback)", file=sys.stderr
        )
        return 1
