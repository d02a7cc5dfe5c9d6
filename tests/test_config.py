"""Settings: the study's defaults, one clear UserError per bad value, and the registry's module checks."""

from dataclasses import fields, replace

import pytest

from lora_demo.config import (
    MODEL_REGISTRY,
    DataConfig,
    LoraSettings,
    TrainConfig,
    UserError,
    field_default,
    field_range,
    get_model_spec,
    recipe,
)


def ranged_fields(cls):
    """(name, minimum, maximum) of each field whose metadata gives a range: what the sliders and the CLI offer."""
    return [(f.name, *field_range(cls, f.name)) for f in fields(cls) if field_range(cls, f.name)[0] is not None]


@pytest.mark.parametrize(
    ("cls", "name", "low", "high"),
    [(cls, *ranged) for cls in (LoraSettings, TrainConfig) for ranged in ranged_fields(cls)],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
def test_every_ranged_setting_accepts_its_bounds_and_refuses_past_them(cls, name, low, high):
    """The ranges the UI and the CLI show are the ranges the settings enforce, whatever the field."""
    whole = isinstance(field_default(cls, name), int) and not isinstance(field_default(cls, name), bool)
    step = 1 if whole else max(abs(high - low) * 1e-3, 1e-9)
    for value in (low, high):
        assert getattr(cls(**{name: value}), name) == value
    for value in (low - step, high + step):
        with pytest.raises(UserError, match=f"`{name}` must be a .* from {low:g} to {high:g}, got"):
            cls(**{name: value})


def test_the_defaults_are_the_fast_recipe_and_lie_in_their_ranges():
    assert recipe("fast", get_model_spec("minilm")) == (LoraSettings(), TrainConfig())
    for cls in (LoraSettings, TrainConfig):
        for name, low, high in ranged_fields(cls):
            default = field_default(cls, name)
            assert default is None or low <= default <= high, (cls.__name__, name, default)
    assert ranged_fields(LoraSettings) and ranged_fields(TrainConfig)


def test_study_recipe_is_the_original_lora():
    for name in ("minilm", "t5-small"):
        spec = get_model_spec(name)
        lora, train = recipe("study", spec)
        assert (lora.r, lora.alpha, lora.dropout) == (8, 32, 0.1)
        assert lora.targets_for(spec) == spec.study_targets
        assert lora.layers_for(spec) is None
        # the checkpoint's dropout; bf16 only where native and one validation pass are speed, not the study's LoRA
        assert train.model_dropout is None and train.bf16 is None and train.evals_per_epoch == 1
        assert train.short_windows == 0.0  # whole reviews only, as the study trained
    assert recipe("study", get_model_spec("minilm"))[0].targets_for(get_model_spec("minilm")) == ("query", "value")
    assert recipe("fast", get_model_spec("minilm")) == (LoraSettings(), TrainConfig())
    with pytest.raises(UserError, match="unknown recipe 'slow': choose one of fast, study"):
        recipe("slow", get_model_spec("minilm"))


def test_model_dropout_is_checked_but_may_be_left_to_the_checkpoint():
    assert TrainConfig(model_dropout=None).model_dropout is None
    with pytest.raises(UserError, match="model_dropout"):
        TrainConfig(model_dropout=1.5)


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"r": 0}, "`r`"),
        ({"r": -3}, "`r`"),
        ({"r": 2.5}, "`r`"),
        ({"r": True}, "`r`"),
        ({"r": 1000}, "`r`"),
        ({"alpha": 0}, "`alpha`"),
        ({"alpha": 10_000}, "`alpha`"),
        ({"dropout": 1.5}, "`dropout`"),
        ({"dropout": 1.0}, "`dropout`"),
        ({"dropout": -0.1}, "`dropout`"),
        ({"target_modules": ()}, "`target_modules`"),
        ({"top_layers": -1}, "`top_layers`"),
    ],
)
def test_lora_settings_refuse_bad_values(kwargs, field_name):
    with pytest.raises(UserError) as err:
        LoraSettings(**kwargs)
    message = str(err.value)
    assert field_name in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"learning_rate": -1e-3}, "`learning_rate`"),
        ({"learning_rate": 0.0}, "`learning_rate`"),
        ({"learning_rate": 5.0}, "`learning_rate`"),
        ({"epochs": 0}, "`epochs`"),
        ({"epochs": 100}, "`epochs`"),
        ({"batch_size": 0}, "`batch_size`"),
        ({"batch_size": 2.5}, "`batch_size`"),
        ({"max_length": 8}, "`max_length`"),
        ({"warmup_ratio": 0.9}, "`warmup_ratio`"),
        ({"evals_per_epoch": -1}, "`evals_per_epoch`"),
        ({"learning_rate": "fast"}, "`learning_rate`"),
    ],
)
def test_train_config_refuses_bad_values(kwargs, field_name):
    with pytest.raises(UserError) as err:
        TrainConfig(**kwargs)
    assert field_name in str(err.value)
    assert "got" in str(err.value)


def test_train_config_error_names_the_allowed_range():
    with pytest.raises(UserError, match=r"`learning_rate` must be a number from 1e-06 to 0\.1, got -0\.5"):
        TrainConfig(learning_rate=-0.5)


@pytest.mark.parametrize("kwargs", [{"train_size": 1}, {"val_size": 0}, {"test_size": -5}, {"train_size": "10"}])
def test_data_config_refuses_bad_sizes(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(UserError, match=f"`{name}` must be an integer of at least 2"):
        DataConfig(**kwargs)


def test_data_config_refuses_bool_size():
    with pytest.raises(UserError):
        DataConfig(train_size=True)


def test_user_error_is_a_value_error():
    # callers that only know ValueError (the style guide's contract) still catch our mistakes
    with pytest.raises(ValueError):
        LoraSettings(r=0)


def test_replace_validates_again():
    with pytest.raises(UserError, match="`r`"):
        replace(LoraSettings(), r=0)


def test_unknown_model_is_refused_with_the_choices():
    with pytest.raises(UserError) as err:
        get_model_spec("gpt2")
    assert "'gpt2'" in str(err.value)
    for name in MODEL_REGISTRY:
        assert name in str(err.value)


def test_known_model_specs():
    assert get_model_spec("minilm").kind == "encoder"
    assert get_model_spec("t5-small").kind == "seq2seq"
    assert get_model_spec("t5-small").source == "google-t5/t5-small"


def test_targets_default_to_the_models_recipe():
    assert LoraSettings().targets_for(get_model_spec("t5-small")) == ("q", "v")
    assert LoraSettings().targets_for(get_model_spec("minilm")) == ("query", "key", "value", "dense")
    assert LoraSettings(target_modules=("wi", "wo")).targets_for(get_model_spec("t5-small")) == ("wi", "wo")


@pytest.mark.parametrize(("model", "targets", "bad"), [("t5-small", ("q", "query"), "query"), ("minilm", ("q",), "q")])
def test_targets_refuse_modules_the_model_lacks(model, targets, bad):
    spec = get_model_spec(model)
    with pytest.raises(UserError) as err:
        LoraSettings(target_modules=targets).targets_for(spec)
    message = str(err.value)
    assert f"{bad} do not exist in {model}" in message
    assert ", ".join(spec.lora_targets) in message


def test_layers_for_counts_from_the_top():
    minilm = get_model_spec("minilm")
    assert LoraSettings().layers_for(minilm) == [3, 4, 5]  # the registry's recipe: the top 3
    assert LoraSettings(top_layers=0).layers_for(minilm) is None
    assert LoraSettings(top_layers=6).layers_for(minilm) is None
    assert LoraSettings(top_layers=2).layers_for(minilm) == [4, 5]
    assert LoraSettings(top_layers=1).layers_for(minilm) == [5]


def test_layers_for_refuses_too_many_layers_and_seq2seq():
    with pytest.raises(UserError, match="at most 6"):
        LoraSettings(top_layers=7).layers_for(get_model_spec("minilm"))
    with pytest.raises(UserError, match="encoder models only"):
        LoraSettings(top_layers=2).layers_for(get_model_spec("t5-small"))
    assert LoraSettings(top_layers=0).layers_for(get_model_spec("t5-small")) is None
