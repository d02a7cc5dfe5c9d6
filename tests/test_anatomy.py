"""What LoRA is and what it changed: matrix shapes and counts, update sizes, pooled vectors, the 2-D map, the
result sentence."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch
from conftest import needs_minilm

from lora_demo import anatomy
from lora_demo.config import DataConfig, LoraSettings, TrainConfig, UserError, get_model_spec, recipe
from lora_demo.lora import apply_lora, count_parameters_offline
from lora_demo.train import train_lora

ENCODER_ALL = LoraSettings(r=4, alpha=16, target_modules=("query", "key", "value", "dense"), top_layers=0)
T5_QV = LoraSettings(r=4, alpha=8, target_modules=("q", "v"))
FEW_STEPS = TrainConfig(epochs=1, learning_rate=3e-2, batch_size=16, max_length=32, evals_per_epoch=0)


def explicit_relative_norm(layer) -> float:
    """‖(alpha / r)·B·A‖ / ‖W‖ from the weights themselves, independently of PEFT's `get_delta_weight`."""
    with torch.no_grad():
        delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        return float(torch.linalg.norm(delta) / torch.linalg.norm(layer.get_base_layer().weight))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("base_model.model.encoder.encoder.layer.5.attention.self.value", (5, "value")),
        ("base_model.model.encoder.encoder.layer.3.attention.output.dense", (3, "attention.output.dense")),
        ("base_model.model.encoder.encoder.layer.3.intermediate.dense", (3, "intermediate.dense")),
        ("base_model.model.encoder.encoder.layer.3.output.dense", (3, "output.dense")),
        ("base_model.model.encoder.block.4.layer.0.SelfAttention.q", (4, "encoder.SelfAttention.q")),
        ("base_model.model.decoder.block.2.layer.0.SelfAttention.v", (2, "decoder.SelfAttention.v")),
        ("base_model.model.decoder.block.2.layer.1.EncDecAttention.q", (2, "decoder.EncDecAttention.q")),
    ],
)
def test_module_key_names_every_adapted_module_distinctly(path, expected):
    assert anatomy.module_key(path) == expected


def test_describe_module_in_plain_words():
    assert anatomy.describe_module("value") == "value projection"
    assert anatomy.describe_module("output.dense") == "feed-forward output layer"
    assert anatomy.describe_module("decoder.EncDecAttention.q") == "decoder's cross-attention query projection"


def test_update_norms_are_zero_before_training(tiny_encoder):
    norms = anatomy.update_norms(apply_lora(tiny_encoder, ENCODER_ALL))
    assert len(norms) == 2 * 6 and all(row["relative_norm"] == 0 for row in norms)  # B starts at zero


def test_encoder_update_norms_after_training(tiny_encoder, toy_reviews):
    train, val, _ = toy_reviews
    tuned, _ = train_lora(tiny_encoder, train, val, ENCODER_ALL, FEW_STEPS)
    norms = anatomy.update_norms(tuned)
    modules = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
    assert [(row["layer"], row["module"]) for row in norms] == [(layer, m) for layer in (0, 1) for m in modules]
    assert all(row["relative_norm"] > 0 for row in norms)
    value = tuned.model.base_model.model.encoder.encoder.layer[1].attention.self.value
    assert value.scaling["default"] == 16 / 4
    assert norms[2 + 6]["relative_norm"] == pytest.approx(explicit_relative_norm(value), rel=1e-5)


def test_t5_update_norms_name_each_attention(tiny_t5, toy_reviews):
    train, val, _ = toy_reviews
    tuned, _ = train_lora(tiny_t5, train, val, T5_QV, FEW_STEPS)
    norms = anatomy.update_norms(tuned)
    per_block = {"encoder.SelfAttention", "decoder.SelfAttention", "decoder.EncDecAttention"}
    expected = {(block, f"{name}.{proj}") for block in (0, 1) for name in per_block for proj in ("q", "v")}
    assert {(row["layer"], row["module"]) for row in norms} == expected and len(norms) == 12
    assert all(row["relative_norm"] > 0 for row in norms)
    cross = tuned.model.base_model.model.decoder.block[1].layer[1].EncDecAttention.v
    row = next(r for r in norms if (r["layer"], r["module"]) == (1, "decoder.EncDecAttention.v"))
    assert row["relative_norm"] == pytest.approx(explicit_relative_norm(cross), rel=1e-5)


def test_update_norms_refuse_a_model_without_adapters(tiny_encoder):
    with pytest.raises(ValueError, match="no LoRA adapters"):
        anatomy.update_norms(tiny_encoder)


def test_norms_reading_names_the_largest_change():
    norms = [
        {"layer": 3, "module": "query", "relative_norm": 0.01},
        {"layer": 5, "module": "value", "relative_norm": 0.04},
        {"layer": 4, "module": "key", "relative_norm": 0.002},
    ]
    reading = anatomy.norms_reading(norms)
    assert reading.startswith("The largest change is in the value projection of layer 5 (the top layer): ")
    assert "4% of the size" in reading and "0.2%, in the key projection of layer 4." in reading


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("minilm", LoraSettings()),
        ("minilm", recipe("study", get_model_spec("minilm"))[0]),
        ("minilm", LoraSettings(r=16, target_modules=("dense",), top_layers=2)),
        ("t5-small", LoraSettings()),
        ("flan-t5-small", LoraSettings(r=4, target_modules=("q", "k", "wi_0"))),
    ],
)
def test_lora_shapes_counts_equal_the_parameter_count(name, settings):
    shapes = anatomy.lora_shapes(get_model_spec(name), settings)
    counts = count_parameters_offline(name, settings)
    assert (shapes.trainable, shapes.total, shapes.percent) == (
        counts["trainable"],
        counts["total"],
        counts["percent"],
    )
    assert shapes.trained == settings.r * (shapes.d_in + shapes.d_out)
    assert shapes.frozen == shapes.d_in * shapes.d_out
    assert sum(shapes.matrix_shapes.values()) == shapes.matrices
    assert shapes.head == (384 * 2 + 2 if name == "minilm" else 0)  # the encoder's head trains in full


def test_lora_shapes_of_the_default_encoder_recipe():
    shapes = anatomy.lora_shapes(get_model_spec("minilm"), LoraSettings())
    assert (shapes.module, shapes.layer, shapes.d_out, shapes.d_in) == ("query", 3, 384, 384)
    assert (shapes.frozen, shapes.trained) == (147_456, 6_144)
    assert shapes.matrix_shapes == {"384 × 384": 12, "1536 × 384": 3, "384 × 1536": 3}
    sentence = shapes.sentence()
    assert "147,456 frozen weights, 6,144 trained (4.2%)" in sentence
    assert "166,658 trained of 22,732,804 (0.73%)" in sentence
    assert "alpha 32 / r 8 = 4" in shapes.alpha_sentence()


def test_lora_shapes_follow_the_settings():
    spec = get_model_spec("minilm")
    dense = anatomy.lora_shapes(spec, LoraSettings(r=2, target_modules=("dense",), top_layers=1))
    assert (dense.module, dense.layer, dense.trained) == ("attention.output.dense", 5, 2 * (384 + 384))
    assert dense.matrices == 3 and dense.lora_total == 2 * (768 + 1920 + 1920)
    t5 = anatomy.lora_shapes(get_model_spec("t5-small"), LoraSettings(r=1))
    assert (t5.module, t5.d_out, t5.d_in, t5.matrices) == ("encoder.SelfAttention.q", 512, 512, 36)
    with pytest.raises(UserError, match="do not exist"):
        anatomy.lora_shapes(spec, LoraSettings(target_modules=("q",)))


def test_encoder_pooled_embeddings_are_what_the_head_sees(tiny_encoder, toy_reviews):
    texts = toy_reviews[2]["text"].tolist()[:6]
    vectors = anatomy.pooled_embeddings(tiny_encoder, texts, max_length=32)
    assert vectors.shape == (6, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    batch = tiny_encoder.tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        logits = tiny_encoder.model(**batch).logits
        from_vectors = tiny_encoder.model.classifier(torch.from_numpy(vectors[:1]))
    assert torch.allclose(logits, from_vectors, atol=1e-5)


def test_t5_pooled_embeddings_change_with_training(tiny_t5_factory, toy_reviews):
    train, val, test = toy_reviews
    texts = test["text"].tolist()[:5]
    before = anatomy.pooled_embeddings(tiny_t5_factory(), texts, max_length=32)
    tuned, _ = train_lora(tiny_t5_factory(), train, val, T5_QV, FEW_STEPS)
    after = anatomy.pooled_embeddings(tuned, texts, max_length=32)
    assert before.shape == after.shape == (5, 32)
    assert not np.allclose(before, after, atol=1e-4)  # LoRA on the encoder's q / v moved the vectors
    model = tiny_t5_factory().model
    batch = tiny_t5_factory().tokenizer(["review: " + texts[0]], return_tensors="pt")
    with torch.no_grad():
        hidden = model.get_encoder()(**batch).last_hidden_state.mean(dim=1)
    assert np.allclose(before[0], hidden[0].numpy(), atol=1e-5)


def test_project_pair_shares_its_axes_between_the_panels():
    rng = np.random.default_rng(0)
    before = rng.normal(size=(30, 5)) * np.array([5.0, 3.0, 0.1, 0.1, 0.1])
    shift = np.array([0.0, 8.0, 0.0, 0.0, 0.0])
    projection = anatomy.project_pair(before, before + shift)
    baseline, finetuned = np.array(projection["baseline"]), np.array(projection["finetuned"])
    assert baseline.shape == finetuned.shape == (30, 2)
    # one PCA for both: the same reviews shifted by one vector land shifted by one vector on the map;
    # two separate PCAs would centre each set and draw both panels identically
    moved = finetuned - baseline
    assert np.allclose(moved, moved[0], atol=1e-3) and np.linalg.norm(moved[0]) == pytest.approx(8.0, rel=1e-3)
    assert 0.5 < sum(projection["explained_variance"]) <= 1.0
    with pytest.raises(ValueError, match="same shape"):
        anatomy.project_pair(before, before[:10])


def test_class_separation_in_units_of_spread():
    points = [[-1, 0], [1, 0], [3, 0], [5, 0]]  # centres 0 and 4, each review 1 from its centre
    assert anatomy.class_separation(points, [0, 0, 1, 1]) == pytest.approx(4.0)
    reading = anatomy.projection_reading(
        {"baseline": [[0, 0], [2, 0], [0, 0], [2, 0]], "finetuned": points}, [0, 0, 1, 1]
    )
    assert "0.00 spreads apart before training and 4.00 after LoRA: the two classes moved apart" in reading
    with pytest.raises(ValueError, match="both labels"):
        anatomy.class_separation(points, [1, 1, 1, 1])


REPORT = {
    "params": {"percent": 0.7331},
    "train": {"seconds": 41.2, "stopped": False},
    "data": {"sizes": {"train": 500, "val": 200, "test": 1000}},
    "baseline": {"accuracy": 0.741, "n": 1000},
    "finetuned": {"accuracy": 0.862, "n": 1000},
    "comparison": {"accuracy_gain": 0.121, "gain_interval": [0.093, 0.151]},
    "head_only": {"accuracy": 0.81},
    "update_norms": [
        {"layer": 4, "module": "query", "relative_norm": 0.02},
        {"layer": 5, "module": "value", "relative_norm": 0.05},
    ],
}


def test_result_sentence_reads_every_number_from_the_report():
    assert anatomy.result_sentence(REPORT) == (
        "LoRA trained 0.73% of the weights for 41 s on 500 reviews and moved accuracy from 0.74 to 0.86 on 1,000 "
        "test reviews (+0.12, 95% interval +0.09 to +0.15); a trained head alone reaches 0.81; the change is "
        "largest in the value projection of layer 5 (the top layer)."
    )


def test_result_sentence_without_the_optional_keys():
    report = {key: value for key, value in REPORT.items() if key not in ("head_only", "update_norms")}
    report["comparison"] = {"accuracy_gain": -0.02}
    report["train"] = {"seconds": 3.24, "stopped": True}
    report["params"] = {"percent": 0.0123}
    assert anatomy.result_sentence(report) == (
        "LoRA trained 0.012% of the weights for 3.2 s (stopped early) on 500 reviews and moved accuracy from 0.74 "
        "to 0.86 on 1,000 test reviews (-0.02)."
    )


@needs_minilm
@pytest.mark.slow
def test_bundled_minilm_norms_and_vectors(toy_reviews):
    from lora_demo.models import load_bundle

    train, val, test = toy_reviews
    settings = LoraSettings(target_modules=("query", "value"), top_layers=2)
    config = TrainConfig(epochs=1, batch_size=32, max_length=32, evals_per_epoch=0)
    texts = test["text"].tolist()[:8]
    before = anatomy.pooled_embeddings(load_bundle("minilm"), texts, max_length=32)
    tuned, _ = train_lora(load_bundle("minilm"), train, val, settings, config)
    norms = anatomy.update_norms(tuned)
    assert [(row["layer"], row["module"]) for row in norms] == [(4, "query"), (4, "value"), (5, "query"), (5, "value")]
    assert all(0 < row["relative_norm"] < 1 for row in norms)
    after = anatomy.pooled_embeddings(tuned, texts, max_length=32)
    projection = anatomy.project_pair(before, after)
    assert len(projection["baseline"]) == len(projection["finetuned"]) == 8 and before.shape == (8, 384)
    shapes = anatomy.lora_shapes(tuned.spec, settings)
    assert shapes.lora_total == sum(p.numel() for n, p in tuned.model.named_parameters() if "lora_" in n)


def passes_over(bundle, passes: collections.Counter):
    """Hook the model's entrance so `passes` counts every review (its token ids) that goes into it, whichever copy
    of the model (a merged serving copy keeps the hook)."""
    entrance = bundle.model.get_encoder() if bundle.spec.kind == "seq2seq" else bundle.model.encoder.embeddings
    pad = bundle.tokenizer.pad_token_id

    def count(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        for row in [] if ids is None else ids.tolist():  # training's cached hidden states come in without ids
            while row and row[-1] == pad:
                row.pop()
            passes[tuple(row)] += 1

    entrance.register_forward_pre_hook(count, with_kwargs=True)
    return bundle


@pytest.mark.parametrize(
    ("factory", "settings"),
    [("tiny_encoder_factory", LoraSettings(r=4, target_modules=("query", "value"), top_layers=0)),
     ("tiny_t5_factory", T5_QV)],
)  # fmt: skip
def test_every_test_review_goes_once_through_each_model_whatever_the_report_shows(request, toy_csv, factory, settings):
    """The projection and the head-only rung read the scoring passes' features: a whole study runs each test review
    through the untouched model once (zero-shot) and through the LoRA model once, and a second report none."""
    from lora_demo.data import format_seq2seq
    from lora_demo.models import encode_head_tail
    from lora_demo.study import Models, Study

    build, passes = request.getfixturevalue(factory), collections.Counter()
    model = "t5-small" if factory == "tiny_t5_factory" else "minilm"
    loader = lambda name, seed=42: passes_over(build(0), passes)  # noqa: E731
    study = Study(model, models=Models(loader=loader, check=lambda spec: None))
    study.load_data(DataConfig(source=str(toy_csv), train_size=48, val_size=16, test_size=32, seed=1))
    report = study.run(settings, FEW_STEPS).to_dict()
    test = study.splits.test
    prompts = [format_seq2seq(t) for t in test["text"]] if model == "t5-small" else test["text"].tolist()
    reviews = [tuple(ids) for ids in encode_head_tail(loader(model).tokenizer, prompts, FEW_STEPS.max_length)]
    assert [passes[ids] for ids in reviews] == [2] * len(test)  # zero-shot once, LoRA once
    assert report["head_only"] is not None and len(report["projection"]["baseline"]) == len(test)
    before, after = (study.baseline(test, max_length=FEW_STEPS.max_length), study.finetuned(test))
    assert report["projection"] == anatomy.project_pair(before.predictions.features, after.predictions.features)
    study.report()
    assert [passes[ids] for ids in reviews] == [2] * len(test)


def test_every_training_review_goes_once_through_the_untouched_model_head_only_rung_included(
    tiny_encoder_factory, toy_csv
):
    """Training runs the frozen bottom layers once over its reviews and, from those states, the untouched model's
    top layers: the head-only rung trains on those features instead of running the model over the reviews again."""
    from lora_demo.models import encode_head_tail
    from lora_demo.study import Models, Study

    passes = collections.Counter()
    loader = lambda name, seed=42: passes_over(tiny_encoder_factory(0), passes)  # noqa: E731
    study = Study("minilm", models=Models(loader=loader, check=lambda spec: None))
    study.load_data(DataConfig(source=str(toy_csv), train_size=48, val_size=16, test_size=32, seed=1))
    settings = LoraSettings(r=4, target_modules=("query", "value"), top_layers=1)  # the bottom layer is cached
    report = study.run(settings, FEW_STEPS).to_dict()
    train = study.splits.train
    reviews = [tuple(ids) for ids in encode_head_tail(loader("minilm").tokenizer, train["text"], FEW_STEPS.max_length)]
    assert [passes[ids] for ids in reviews] == [1] * len(train)  # the caching pass, nothing else
    assert report["head_only"]["accuracy"] > 0 and report["rungs"]["head_only"]["steps"] > 0
    assert study.tuned.result.untouched_features is None  # used once, then dropped: a session keeps its rung only


def test_the_lora_pass_starts_from_the_zero_shot_pass_states_below_the_first_layer_it_adapts(
    tiny_encoder_factory, toy_csv
):
    """LoRA on the top layer only: the LoRA model's pass over the test reviews starts from the states the zero-shot
    pass kept entering that layer (the reviews go through the bottom layer once in the whole study), and answers
    exactly as a full pass of the same model does."""
    from lora_demo.compute import models
    from lora_demo.inference import classify_texts
    from lora_demo.models import encode_head_tail
    from lora_demo.study import Models, Study

    models.forget()
    passes = collections.Counter()
    loader = lambda name, seed=42: passes_over(tiny_encoder_factory(0), passes)  # noqa: E731
    study = Study("minilm", models=Models(loader=loader, check=lambda spec: None))
    study.load_data(DataConfig(source=str(toy_csv), train_size=48, val_size=16, test_size=32, seed=1))
    settings = LoraSettings(r=4, target_modules=("query", "value"), top_layers=1)
    study.run(settings, FEW_STEPS)
    test = study.splits.test["text"].tolist()
    reviews = [tuple(ids) for ids in encode_head_tail(loader("minilm").tokenizer, test, FEW_STEPS.max_length)]
    assert [passes[ids] for ids in reviews] == [1] * len(test)  # the zero-shot pass; the LoRA pass began above
    ref = study.models.ref("minilm")
    kept = models.kept_states(ref, models.base(ref), test, FEW_STEPS.max_length, 1)
    assert kept is not None and len(kept.states) == len(test) and models.kept_states_bytes() >= kept.nbytes
    full = classify_texts(models.tuned(ref, study.tuned.weights), test, FEW_STEPS.max_length)
    answers = study.finetuned().predictions
    assert answers.positive == full.positive and np.array_equal(answers.features, full.features)
    assert study.report().finetuned == study.finetuned().metrics
    models.forget()


TOP_LAYER = LoraSettings(r=4, target_modules=("query", "value"), top_layers=1)
SOME_REVIEWS = [f"review number {k}: a {'fine' if k % 2 else 'dull'} film" for k in range(12)]


def top_layer_adapter(factory):
    """A registered tiny encoder and an adapter of its top layer that changes its answers."""
    from lora_demo.compute import models
    from lora_demo.compute.models import ModelRef, register_loader
    from lora_demo.lora import adapter_weights

    models.forget()
    adapted = apply_lora(factory(0), TOP_LAYER)
    with torch.no_grad():
        for name, weight in adapted.model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5)
    return ModelRef("minilm", register_loader(lambda name, seed=42: factory(0))), adapter_weights(adapted, TOP_LAYER)


def test_states_past_the_budget_or_made_by_another_pass_are_not_kept_and_the_answers_stay_the_same(
    tiny_encoder_factory, monkeypatch
):
    """A split whose states would not fit `STATES_BYTES_KEPT` keeps none, nor a pass while another one of the
    process is making states: the LoRA model then runs every layer, with the same answers."""
    from lora_demo import inference
    from lora_demo.compute import jobs, models

    given, classify, budget = [], inference.classify_texts, models.STATES_BYTES_KEPT

    def spy(*args, **kwargs):
        given.append(kwargs.get("states"))
        return classify(*args, **kwargs)

    monkeypatch.setattr(inference, "classify_texts", spy)
    ref, weights = top_layer_adapter(tiny_encoder_factory)
    before = jobs.zero_shot(ref, SOME_REVIEWS, 32, keep_for=TOP_LAYER)
    with_states = jobs.score(ref, weights, SOME_REVIEWS, 32)
    kept = models.kept_states(ref, models.base(ref), SOME_REVIEWS, 32, 1)
    assert kept is not None and given == [kept]  # the LoRA pass was handed them
    over_budget = lambda: monkeypatch.setattr(models, "STATES_BYTES_KEPT", 64)  # noqa: E731
    another_pass = lambda: monkeypatch.setattr(models, "STATES_BYTES_KEPT", budget) or models._MAKING_STATES.acquire()  # noqa: E731
    for crowded in (over_budget, another_pass):
        models.forget()
        crowded()
        assert jobs.zero_shot(ref, SOME_REVIEWS, 32, keep_for=TOP_LAYER) == before
        assert models.kept_states(ref, models.base(ref), SOME_REVIEWS, 32, 1) is None
        assert models.kept_states_bytes() == 0
        assert jobs.score(ref, weights, SOME_REVIEWS, 32) == with_states  # every layer run: the same answers
        assert given[-1] is None
    models._MAKING_STATES.release()
    assert with_states.labels != before.labels or with_states.positive != before.positive
    models.forget()


def test_states_from_a_copy_held_in_another_type_are_not_used(tiny_encoder_factory, monkeypatch):
    """The untouched copy made in fp32 (bf16 off when it loaded) and the LoRA copy in bf16: the LoRA pass runs
    every layer rather than feed fp32 states to bf16 weights (which raised "mixed dtype")."""
    from lora_demo import inference
    from lora_demo.compute import jobs, models

    ref, weights = top_layer_adapter(tiny_encoder_factory)
    jobs.zero_shot(ref, SOME_REVIEWS, 32, keep_for=TOP_LAYER)  # this test's default: fp32 (`_fp32_inference`)
    assert models.kept_states(ref, models.base(ref), SOME_REVIEWS, 32, 1) is not None
    monkeypatch.setattr(inference, "fast_bf16", lambda: True)
    tuned = models.tuned(ref, weights)
    assert next(tuned.model.parameters()).dtype == torch.bfloat16
    assert models.kept_states(ref, tuned, SOME_REVIEWS, 32, 1) is None
    assert jobs.score(ref, weights, SOME_REVIEWS, 32) == inference.classify_texts(tuned, SOME_REVIEWS, 32)
    models.forget()


TOY_SIZES = ["--train-size", "48", "--val-size", "16", "--test-size", "32"]


@pytest.mark.parametrize(
    ("factory", "settings", "adapted"),
    [
        ("tiny_encoder_factory", LoraSettings(r=4, target_modules=("query", "value"), top_layers=0), 4),
        ("tiny_t5_factory", T5_QV, 12),
    ],
)
def test_the_studys_report_holds_update_norms_and_projection(request, toy_csv, factory, settings, adapted):
    from lora_demo.study import Models, Study

    build = request.getfixturevalue(factory)
    model = "t5-small" if factory == "tiny_t5_factory" else "minilm"
    study = Study(model, models=Models(loader=lambda name, seed=42: build(0), check=lambda spec: None))
    study.load_data(DataConfig(source=str(toy_csv), train_size=48, val_size=16, test_size=32, seed=1))
    report = study.run(settings, FEW_STEPS).to_dict()
    norms, projection = report["update_norms"], report["projection"]
    assert len(norms) == adapted and all(row["relative_norm"] > 0 for row in norms)
    assert len(projection["baseline"]) == len(projection["finetuned"]) == 32
    assert study.changes() is study.changes()  # measured once per model and test set, not on every report
    assert json.loads(json.dumps(report))["update_norms"] == norms  # plain JSON


def test_cli_train_report_holds_update_norms_and_projection(tiny_encoder_factory, toy_csv, tmp_path, capsys):
    from lora_demo.cli import main
    from lora_demo.study import Models

    models = Models(loader=lambda name, seed=42: tiny_encoder_factory(0), check=lambda spec: None)
    report_file = tmp_path / "report.json"
    argv = ["train", "--data", str(toy_csv), *TOY_SIZES, "--epochs", "1", "--max-length", "32"]
    assert main([*argv, "--report", str(report_file)], models=models) == 0, capsys.readouterr().err
    report = json.loads(report_file.read_text())
    assert {(row["layer"], row["module"]) for row in report["update_norms"]} == {
        (1, m) for m in ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")
    }  # the default recipe: all four target names of the top layer (of the tiny model's two)
    assert len(report["projection"]["finetuned"]) == report["baseline"]["n"] == 32


@needs_minilm
@pytest.mark.slow
def test_cli_train_report_on_the_bundled_model(toy_csv, tmp_path, capsys):
    from lora_demo.cli import main

    report_file = tmp_path / "report.json"
    argv = ["train", "--data", str(toy_csv), *TOY_SIZES, "--epochs", "1", "--max-length", "32", "--batch-size", "16"]
    assert main([*argv, "--report", str(report_file)]) == 0, capsys.readouterr().err
    report = json.loads(report_file.read_text())
    assert len(report["update_norms"]) == 3 * 6 and all(row["relative_norm"] > 0 for row in report["update_norms"])
    assert len(report["projection"]["baseline"]) == len(report["projection"]["finetuned"]) == 32
    assert anatomy.result_sentence(report).startswith("LoRA trained 0.73% of the weights")
