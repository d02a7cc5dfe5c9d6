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
from dataclasses import dataclass, fields, replace

from .config import (
    DEFAULT_MODEL,
    DEFAULT_RECIPE,
    MODEL_REGISTRY,
    PRESETS,
    RECIPES,
    DataConfig,
    LoraSettings,
    TrainConfig,
    UserError,
    describe_recipe,
    field_help,
    get_model_spec,
    get_preset,
    recipe,
)

logger = logging.getLogger("lora_demo")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line on stderr and exit status 2."""

    commands = None  # the top parser's subcommand parsers, by name (set in `build_parser`)

    def error(self, message):
        # `prog` is the whole command: "python -m lora_demo" for the top parser, "python -m lora_demo train" for one
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):
        # flags a subcommand does not know are found by the top parser: point at that subcommand's help
        args, extras = self.parse_known_args(args, namespace)
        if extras:
            command = (self.commands or {}).get(getattr(args, "command", None), self)
            command.error(f"unrecognized arguments: {' '.join(extras)}")
        return args


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
    parser.commands = commands.choices

    def with_data(p):
        _add_fields(p, DataConfig, rename={"source": "data"})
        return p

    def with_model(p):
        p.add_argument("--model", default=None, choices=list(MODEL_REGISTRY), help=f"registry model ({DEFAULT_MODEL})")
        return p

    def with_lora(p):
        p.add_argument(
            "--recipe",
            default=None,
            choices=list(RECIPES),
            help="starting settings that the other flags change: "
            + "; ".join(f"{name}: {describe_recipe(name, get_model_spec(DEFAULT_MODEL))}" for name in RECIPES)
            + f" (default: {DEFAULT_RECIPE})",
        )
        p.add_argument(
            "--preset",
            default=None,
            choices=list(PRESETS),
            help="a whole configuration: " + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()),
        )
        _add_fields(p, LoraSettings, skip=("target_modules",))
        p.add_argument("--target-modules", nargs="+", default=None, help=field_help(LoraSettings, "target_modules"))
        return p

    train = with_lora(with_model(with_data(commands.add_parser("train", help="baseline, LoRA training, evaluation"))))
    _add_fields(train, TrainConfig, rename={"learning_rate": "lr"}, skip=("seed",))
    train.add_argument("--output", help="folder to save the adapter in")
    train.add_argument("--report", help="file to write the JSON report to")
    _add_force(train)
    train.add_argument(
        "--methods",
        default=None,
        help="also train these methods on the same reviews and compare them with LoRA, e.g. "
        "full,lora,dora,rslora,loraplus,ia3 (each at the learning rate its validation reviews prefer)",
    )
    train.add_argument(
        "--no-resources",
        dest="resources",
        action="store_false",
        help="skip measuring LoRA against full fine-tuning on a batch (loads the model twice more)",
    )

    evaluate = with_model(with_data(commands.add_parser("evaluate", help="score the baseline or an adapter")))
    evaluate.add_argument("--adapter", help="adapter folder from `train --output`; default: the zero-shot baseline")
    evaluate.add_argument("--max-length", type=int, default=None, help="tokens kept per review")
    evaluate.add_argument("--report", help="file to write the JSON metrics to")
    _add_force(evaluate)

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
    _add_force(bench)
    extra = bench.add_mutually_exclusive_group()
    extra.add_argument(
        "--ablation", action="store_true", help="where the speed comes from: one change at a time, validation accuracy"
    )
    extra.add_argument(
        "--study-preset", action="store_true", help="the study's T5-small preset (random weights), before and now"
    )
    extra.add_argument(
        "--whole-study",
        action="store_true",
        help="the whole study as a visitor runs it (default data: the shipped sample), step by step",
    )
    bench.add_argument(
        "--visitors", type=int, choices=(1, 2), default=1, help="--whole-study: 2 adds a second visitor"
    )
    return parser


@dataclass
class Choice:
    """What the flags chose: model, recipe, data, LoRA and training settings (a preset fills what is not given)."""

    model: str
    recipe: str
    data: DataConfig | None
    lora: LoraSettings
    notes: list[str]

    def train_config(self, args) -> TrainConfig:
        base = replace(recipe(self.recipe, get_model_spec(self.model))[1], seed=self.data.seed)
        return _from_args(TrainConfig, args, base)


def _choose(args, models, loads_weights: bool = True) -> Choice:
    """Resolve `--preset`, `--model` and `--recipe` and check every setting before any data loads.

    Args:
        loads_weights: the command needs the model's weights, so a preset whose model cannot load here falls back.
    """
    from .study import preset_model

    notes, preset = [], get_preset(args.preset) if args.preset else None
    model = args.model
    if model is None and preset is not None:
        model, note = preset_model(preset.name, models) if loads_weights else (preset.model, None)
        notes += [note] if note else []
    model = model or DEFAULT_MODEL
    recipe_name = args.recipe or (preset.recipe if preset else DEFAULT_RECIPE)
    data = None
    if hasattr(args, "train_size"):
        data = _from_args(DataConfig, args, preset.data_config(DataConfig()) if preset else None)
    lora = _from_args(LoraSettings, args, recipe(recipe_name, get_model_spec(model))[0])
    if args.target_modules:
        lora = replace(lora, target_modules=tuple(args.target_modules))
    spec = get_model_spec(model)
    lora.targets_for(spec)
    lora.layers_for(spec)
    return Choice(model, recipe_name, data, lora, notes)


def _add_force(parser):
    parser.add_argument(
        "--force", action="store_true", help="let --report overwrite a file that is not a lora_demo report"
    )


def _check_targets(args):
    """Refuse, before any slow work, an --output or --report that would overwrite what the user owns."""
    from .files import check_report_target

    check_report_target(args.report, args.force)
    if getattr(args, "output", None):
        from .lora import check_adapter_target

        check_adapter_target(args.output)


def cmd_train(args, models=None) -> int:
    from .config import parse_methods
    from .report import (
        calibration_line,
        comparison_table,
        methods_table,
        resources_line,
        short_reviews_line,
        train_line,
    )
    from .study import Study
    from .train import is_main_process

    # every setting is checked before the data loads, so a mistake is the only line printed
    choice = _choose(args, models)
    config = choice.train_config(args)
    methods = parse_methods(args.methods) if args.methods else ()
    if methods and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--methods runs in one process: leave out torchrun (or --methods)")
    study = Study(choice.model, models)
    study.check_model()
    _check_targets(args)
    _print_notes(choice.notes)
    _print_notes(study.load_data(choice.data, fit_to_data=_sizes_not_given(args)).notes)
    if methods:  # a method that cannot run is refused before the study trains
        study.check_methods(methods, choice.lora, config)
    report = study.run(choice.lora, config, choice.recipe, on_event=_print_event)
    if not is_main_process():  # torchrun: rank 0 reports
        return 0
    if args.resources:
        study.measure_resources(choice.lora, seed=config.seed)
        report.resources = study.resources
    if methods:
        report.methods = study.compare_methods(methods, choice.lora, config, on_method=_print_method)
    if args.output:
        study.save(args.output, report)
    _write_json(args.report, report.to_dict(), args.force)
    summary = report.to_dict()
    print(train_line(summary))
    print(comparison_table(summary))
    print(summary["comparison"]["verdict"])
    for line in (calibration_line(summary), short_reviews_line(summary), resources_line(summary)):
        if line:
            print(line)
    if methods:
        print(methods_table(summary))
        print(summary["methods"]["sentence"])
    for name in ("baseline", "finetuned"):
        if summary[name].get("warning"):
            print(f"warning ({name}): {summary[name]['warning']}")
    return 0


def cmd_evaluate(args, models=None) -> int:
    from .config import DEFAULT_MAX_LENGTH
    from .study import Study

    study = Study(args.model or DEFAULT_MODEL, models)
    if args.adapter:
        tuned = study.load_adapter(args.adapter)
    else:
        study.check_model()
    _check_targets(args)
    splits = study.load_data(_from_args(DataConfig, args), fit_to_data=_sizes_not_given(args))
    _print_notes(splits.notes)
    if args.adapter:
        metrics = study.finetuned().metrics
    else:
        metrics = study.baseline(max_length=args.max_length or DEFAULT_MAX_LENGTH).metrics
    result = {"model": study.model_name, "adapter": args.adapter, "data": splits.summary(), "metrics": metrics}
    if args.adapter:
        result["trained_on"] = {k: v for k, v in tuned.trained_on.to_dict().items() if k != "review_hashes"}
    _write_json(args.report, result, args.force)
    print(json.dumps(result, indent=2))
    return 0


def cmd_predict(args, models=None) -> int:
    from .study import Study

    texts = [t.strip() for t in args.texts]
    if not all(texts):
        raise UserError("empty text: give each review as a non-empty argument")
    study = Study(args.model or DEFAULT_MODEL, models)
    if args.adapter:
        study.load_adapter(args.adapter)
    else:
        study.check_model()
    baseline, tuned = study.classify(texts)
    predictions = tuned if args.adapter else baseline
    sure = predictions.sure or [None] * len(texts)  # None: a model with no calibration, its confidence raw
    for text, label, confidence, is_sure in zip(texts, predictions.label_names(), predictions.confidence, sure):
        print(json.dumps({"text": text, "label": label, "confidence": round(confidence, 4), "sure": is_sure}))
    return 0


def cmd_params(args, models=None) -> int:
    from .lora import count_parameters_offline

    choice = _choose(args, models, loads_weights=False)
    counts = count_parameters_offline(choice.model, choice.lora)
    print(
        f"model {choice.model}: {counts['trainable']:,} trainable of {counts['total']:,} parameters "
        f"({counts['percent']:.3f}%); base model {counts['base_total']:,}"
    )
    return 0


def cmd_data(args, models=None) -> int:
    from .data import load_splits

    splits = load_splits(_from_args(DataConfig, args), fit_to_data=_sizes_not_given(args))
    summary = splits.summary()
    summary["examples"] = splits.train.head(3).assign(text=lambda f: f["text"].str[:120]).to_dict("records")
    print(json.dumps(summary, indent=2))
    return 0


def cmd_bench(args, models=None) -> int:
    from . import bench

    def log(line):
        print(line, file=sys.stderr, flush=True)

    _check_targets(args)
    plan = bench.QUICK_PLAN if args.quick else bench.FULL_PLAN
    if args.ablation:
        return _bench_ablation(args, plan, log)
    if args.study_preset:
        return _bench_study_preset(args, log)
    if args.whole_study:
        return _bench_whole_study(args)
    if args.visitors != 1:
        raise UserError("--visitors goes with --whole-study")
    report = bench.run_bench(bench.load_bench_splits(args.source, plan, args.seed), plan, seed=args.seed, log=log)
    _write_json(args.report, report, args.force)
    print(bench.bench_table(report))
    print("\n".join(bench.goals_lines(report)))
    print(json.dumps({"ratios": report["ratios"], "scaling": report["scaling"]}, indent=2))
    return 0


def _bench_ablation(args, plan, log) -> int:
    from .ablation import ablation_table, run_ablation
    from .bench import load_bench_splits

    rows = run_ablation(load_bench_splits(args.source, plan, args.seed), plan.epochs, args.seed, log=log)
    _write_json(args.report, {"ablation": rows}, args.force)
    print(ablation_table(rows))
    return 0


def _bench_study_preset(args, log) -> int:
    from .preset_timing import load_study_splits, preset_table, time_study_preset

    report = time_study_preset(load_study_splits(args.source, args.seed), args.seed, log=log)
    _write_json(args.report, report, args.force)
    print(preset_table(report))
    print(f"training: {report['train_speedup']:.2f}x faster than before")
    return 0


def _bench_whole_study(args) -> int:
    from .bench import goals_lines
    from .whole_study_timing import run_whole_study_bench, whole_study_table

    report = run_whole_study_bench(args.source or "sample", args.seed, args.visitors)
    _write_json(args.report, report, args.force)
    whole, machine = report["whole_study"], report["machine"]
    print(
        f"machine: {machine['model_name']} (cpu family {machine['cpu_family']}, model {machine['model']}), "
        f"{machine['threads']} threads, {whole['precision']} matmul peak {whole['peak_gflops']:.0f} GFLOP/s"
        + (f" (median product {whole['typical_gflops']:.0f})" if whole.get("typical_gflops") else "")
    )
    if whole.get("training_gflops") is not None:
        typical = whole.get("training_utilization_typical")
        print(
            f"training: {whole['training_gflops']:.0f} GFLOP/s, {100 * whole['training_utilization']:.0f}% of the peak"
            + (f", {100 * typical:.0f}% of the median product" if typical is not None else "")
        )
    print(whole_study_table(whole))
    print("\n".join(goals_lines(whole)))
    return 0


def _sizes_not_given(args) -> bool:
    given = any(getattr(args, name) is not None for name in ("train_size", "val_size", "test_size"))
    return not given and not getattr(args, "preset", None)


def _print_event(event):
    """One line for each step of the study's stream (`Study.steps`) worth a line: the baseline, losses."""
    from .study import BaselineScored
    from .train import TrainEvent, is_main_process

    if not is_main_process():
        return
    if isinstance(event, BaselineScored):
        metrics = event.evaluation.metrics
        print(f"zero-shot on {metrics['n']} test reviews: accuracy {metrics['accuracy']:.3f}", flush=True)
    if not isinstance(event, TrainEvent):
        return
    if event.type == "log":
        print(f"step {event.step:>4}  epoch {event.epoch:.2f}  train loss {event.loss:.4f}", flush=True)
    elif event.type == "eval":
        accuracy = "" if event.val_accuracy is None else f", accuracy {event.val_accuracy:.3f}"
        print(
            f"step {event.step:>4}  epoch {event.epoch:.2f}  validation loss {event.val_loss:.4f}{accuracy}",
            flush=True,
        )


def _print_method(name: str, row: dict):
    rates = ", ".join(f"{lr:g}" for lr in row["lr_grid"])
    print(
        f"method {name}: accuracy {row['accuracy']:.3f} at lr {row['chosen_lr']:g} (chosen on validation from "
        f"{rates}), {row['trainable_params']:,} trainable parameters, trained in {row['train_seconds']:.0f} s",
        flush=True,
    )


def _print_notes(notes):
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _write_json(path, payload, force: bool = False):
    from .files import write_report

    write_report(path, payload, force)


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "params": cmd_params,
    "data": cmd_data,
    "bench": cmd_bench,
}


def main(argv=None, models=None) -> int:
    """Run one command; returns its exit status.

    Args:
        argv: the arguments (default: the command line).
        models: where the study gets its models (`study.Models`); default: the registry. Tests give tiny models.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, models)
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
