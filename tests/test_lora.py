"""LoRA: the PEFT config, parameter counts (offline, exact), and adapters saved and loaded safely."""

import json
from pathlib import Path

import pytest
import torch
from peft import TaskType

from lora_demo.config import LoraSettings, UserError, get_model_spec, recipe
from lora_demo.inference import classify_texts
from lora_demo.lora import (
    METADATA_FILE,
    apply_lora,
    build_lora_config,
    count_parameters,
    count_parameters_offline,
    load_adapter,
    read_adapter_metadata,
    save_adapter,
)

TEXTS = ["the movie was good", "bad film and bad music", "a good cast", "it was a very long plot", "bad"]


def test_t5_small_trainable_parameters_match_the_study():
    counts = count_parameters_offline("t5-small", LoraSettings())
    # 36 projections (q and v of encoder self-, decoder self- and cross-attention), each 8x512 + 512x8
    assert counts["trainable"] == 36 * (8 * 512 + 512 * 8) == 294_912
    assert counts["base_total"] == 60_506_624
    assert counts["total"] == counts["base_total"] + counts["trainable"]
    assert counts["percent"] == pytest.approx(100 * 294_912 / counts["total"])


def test_other_models_parameter_counts():
    assert count_parameters_offline("flan-t5-small", LoraSettings())["trainable"] == 344_064
    head = 384 * 2 + 2  # the 2-label head, trained in full
    study = count_parameters_offline("minilm", recipe("study", get_model_spec("minilm"))[0])
    # q and v of 6 layers at hidden 384
    assert study["trainable"] == 6 * 2 * (8 * 384 + 384 * 8) + head == 74_498
    fast = count_parameters_offline("minilm", LoraSettings())
    # the top 3 layers: query, key, value and the three `dense` (attention output 384x384, FFN 384x1536, 1536x384)
    per_layer = 4 * 8 * (384 + 384) + 2 * 8 * (384 + 1536)
    assert fast["trainable"] == 3 * per_layer + head == 166_658
    top = count_parameters_offline("minilm", LoraSettings(target_modules=("query", "value"), top_layers=2))
    assert top["trainable"] == 2 * 2 * (8 * 384 + 384 * 8) + (384 * 2 + 2)
    wider = count_parameters_offline("t5-small", LoraSettings(r=16, target_modules=("q", "k", "v", "o")))
    assert wider["trainable"] == 4 * 294_912


def test_offline_count_refuses_bad_targets():
    with pytest.raises(UserError, match="do not exist in t5-small"):
        count_parameters_offline("t5-small", LoraSettings(target_modules=("query",)))


def test_build_lora_config_for_seq2seq():
    config = build_lora_config(LoraSettings(r=4, alpha=16, dropout=0.2), get_model_spec("t5-small"))
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 16, 0.2)
    assert set(config.target_modules) == {"q", "v"}
    assert config.task_type == TaskType.SEQ_2_SEQ_LM
    assert config.modules_to_save is None
    assert config.layers_to_transform is None


def test_build_lora_config_for_encoder():
    settings = LoraSettings(target_modules=("query", "key"), top_layers=2)
    config = build_lora_config(settings, get_model_spec("minilm"))
    assert set(config.target_modules) == {"query", "key"}
    assert config.modules_to_save == ["classifier"]
    assert config.task_type is None
    assert config.layers_to_transform == [4, 5]
    assert config.layers_pattern == "layer"


def test_apply_lora_freezes_the_base(tiny_encoder):
    tuned = apply_lora(tiny_encoder, LoraSettings(r=4, target_modules=("query", "value"), top_layers=0))
    trainable = [name for name, p in tuned.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "classifier" in name for name in trainable)
    assert sum("lora_A" in name for name in trainable) == 4  # query and value of 2 layers
    counts = count_parameters(tuned.model)
    assert counts["trainable"] == 4 * (4 * 32 + 32 * 4) + (32 * 2 + 2)
    assert counts["percent"] == pytest.approx(100 * counts["trainable"] / counts["total"])


def test_count_parameters_of_a_plain_model(tiny_encoder):
    total = sum(p.numel() for p in tiny_encoder.model.parameters())
    assert count_parameters(tiny_encoder.model) == {"trainable": total, "total": total, "percent": 100.0}


def adapted(bundle, settings):
    """LoRA with random (non-zero) weights, as if trained: a fresh adapter is the identity."""
    tuned = apply_lora(bundle, settings)
    torch.manual_seed(123)
    with torch.no_grad():
        for param in tuned.model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.5)
    tuned.model.eval()
    return tuned


@pytest.mark.parametrize(
    ("factory", "targets"), [("tiny_encoder_factory", ("query", "value")), ("tiny_t5_factory", ("q", "k", "v", "o"))]
)
def test_save_load_round_trip_gives_identical_predictions(request, tmp_path, factory, targets):
    build = request.getfixturevalue(factory)
    tuned = adapted(build(7), LoraSettings(r=4, target_modules=targets))
    before = classify_texts(tuned, TEXTS, max_length=32)
    folder = save_adapter(tuned, tmp_path / "adapter", {"note": "round trip"})
    assert folder == (tmp_path / "adapter").resolve()

    untouched = classify_texts(build(7), TEXTS, max_length=32)
    loaded, metadata = load_adapter(folder, base=build(7))
    after = classify_texts(loaded, TEXTS, max_length=32)
    assert after.labels == before.labels
    assert after.confidence == pytest.approx(before.confidence, abs=1e-6)
    assert after.outputs == before.outputs
    assert untouched.confidence != pytest.approx(before.confidence, abs=1e-3)  # the adapter changed the model
    written = sorted(p.name for p in folder.iterdir())
    assert metadata == {"model": tuned.spec.name, "note": "round trip", "files": written}
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_adapter_folder_holds_safetensors_only(tmp_path, tiny_encoder):
    folder = save_adapter(adapted(tiny_encoder, LoraSettings(r=2)), tmp_path / "out", {})
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", METADATA_FILE} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    assert json.loads((folder / METADATA_FILE).read_text())["model"] == "minilm"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["modules_to_save"] == ["classifier"]


def test_save_replaces_an_adapter_it_wrote_and_leaves_no_temporary(tmp_path, tiny_encoder):
    output = tmp_path / "adapter"
    save_adapter(adapted(tiny_encoder, LoraSettings(r=2)), output, {"run": 1})
    (output / "report.json").write_text("{}")  # the CLI writes the run's report beside the adapter
    save_adapter(adapted(tiny_encoder, LoraSettings(r=2)), output, {"run": 2})
    assert not (output / "report.json").exists()
    assert read_adapter_metadata(output)["run"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


@pytest.mark.parametrize(
    "foreign",
    [
        {"notes.txt": "my thesis"},  # a folder of the user's
        {METADATA_FILE: '{"model": "minilm"}', "adapter_model.safetensors": "", "thesis.tex": "mine"},  # ours + theirs
        {"adapter_model.safetensors": "", "README.md": "no lora_demo.json"},  # someone else's adapter
    ],
)
def test_save_refuses_a_folder_that_is_not_an_adapter_it_wrote(tmp_path, tiny_encoder, foreign):
    output = tmp_path / "home"
    output.mkdir()
    for name, text in foreign.items():
        (output / name).write_text(text)
    with pytest.raises(UserError, match="refusing to replace .*not an adapter folder written by lora_demo"):
        save_adapter(adapted(tiny_encoder, LoraSettings(r=2)), output, {})
    assert {p.name: p.read_text() for p in output.iterdir()} == foreign  # nothing touched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # no staging folder left


def test_save_refuses_a_file_and_a_subfolder(tmp_path, tiny_encoder):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(UserError, match="is a file, not a folder"):
        save_adapter(adapted(tiny_encoder, LoraSettings(r=2)), tmp_path / "file", {})
    output = tmp_path / "adapter"
    save_adapter(adapted(tiny_encoder, LoraSettings(r=2)), output, {})
    (output / "photos").mkdir()  # a folder inside is never ours
    with pytest.raises(UserError, match=r"refusing to replace .*\(photos\)"):
        save_adapter(adapted(tiny_encoder, LoraSettings(r=2)), output, {})
    assert (output / "photos").is_dir() and (tmp_path / "file").read_text() == "mine"


def test_the_swap_keeps_the_old_adapter_when_the_new_one_cannot_move_in(tmp_path, tiny_encoder, monkeypatch):
    """Renamed aside, not deleted, until the new folder is in place: a failed rename puts the old one back."""
    output = (tmp_path / "adapter").resolve()
    save_adapter(adapted(tiny_encoder, LoraSettings(r=2)), output, {"run": 1})
    rename = Path.rename

    def failing_rename(self, target):
        if Path(target) == output and self.name.startswith(".adapter-new-"):
            raise OSError("rename failed")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="rename failed"):
        save_adapter(adapted(tiny_encoder, LoraSettings(r=2)), output, {"run": 2})
    assert read_adapter_metadata(output)["run"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_failed_save_keeps_the_old_adapter(tmp_path, tiny_encoder, monkeypatch):
    output = tmp_path / "adapter"
    tuned = adapted(tiny_encoder, LoraSettings(r=2))
    save_adapter(tuned, output, {"run": 1})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tuned.tokenizer), "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(tuned, output, {"run": 2})
    assert read_adapter_metadata(output)["run"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_refuses_pickle_files(tmp_path, tiny_encoder):
    folder = save_adapter(adapted(tiny_encoder, LoraSettings(r=2)), tmp_path / "adapter", {})
    (folder / "adapter_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(UserError, match=r"refusing to load pickle files \(adapter_model.bin\)"):
        read_adapter_metadata(folder)
    with pytest.raises(UserError, match="refusing"):
        load_adapter(folder, base=tiny_encoder)


def test_refuses_a_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_adapter_metadata(tmp_path / "nope")


@pytest.mark.parametrize("files", [[], ["adapter_model.safetensors"], [METADATA_FILE], ["notes.txt"]])
def test_refuses_a_folder_that_is_not_an_adapter(tmp_path, files):
    for name in files:
        (tmp_path / name).write_text("{}")
    with pytest.raises(UserError, match="is not a lora_demo adapter"):
        read_adapter_metadata(tmp_path)


def test_refuses_a_file_instead_of_a_folder(tmp_path):
    (tmp_path / "adapter.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="does not exist"):
        read_adapter_metadata(tmp_path / "adapter.safetensors")


def test_export_zip_holds_the_adapter_and_report_and_loads_back(tmp_path, tiny_encoder_factory):
    import zipfile

    from lora_demo.lora import export_adapter_zip

    tuned = adapted(tiny_encoder_factory(3), LoraSettings(r=4, target_modules=("query", "value")))
    before = classify_texts(tuned, TEXTS, max_length=32)
    archive = export_adapter_zip(tuned, tmp_path / "session", {"note": "zip"}, {"accuracy": 0.9})
    assert archive == tmp_path / "session" / "lora-adapter.zip"
    with zipfile.ZipFile(archive) as zipped:
        names = set(zipped.namelist())
        zipped.extractall(tmp_path / "home")
    expected = {"adapter_model.safetensors", "adapter_config.json", METADATA_FILE, "report.json"}
    assert {f"lora-adapter/{name}" for name in expected} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    home = tmp_path / "home" / "lora-adapter"
    assert json.loads((home / "report.json").read_text()) == {"accuracy": 0.9}
    loaded, _ = load_adapter(home, base=tiny_encoder_factory(3))
    assert classify_texts(loaded, TEXTS, max_length=32).confidence == pytest.approx(before.confidence, abs=1e-6)
