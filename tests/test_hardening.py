"""Hardening: nothing a user owns is overwritten, no data file can exhaust memory, saved runs stay per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_demo.cli import main


def run_cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as stop:  # argparse's errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err) -> str:
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# 1. --output and --report never destroy what the user owns


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_report_never_overwrites_a_file_of_the_users(tmp_path, capsys, command):
    notes = tmp_path / "notes.json"
    notes.write_text('{"shopping": ["milk"]}')
    code, _, err = run_cli(capsys, command, "--data", "builtin", "--report", str(notes))
    assert "refusing to overwrite" in one_line_error(code, err) and "--force" in err
    assert notes.read_text() == '{"shopping": ["milk"]}'


def test_train_output_never_replaces_a_folder_of_the_users(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(home)
    for output in (str(home), "."):
        code, _, err = run_cli(capsys, "train", "--data", "builtin", "--output", output)
        assert "refusing to replace" in one_line_error(code, err)
    assert (home / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_reports_of_ours_are_replaced_and_others_only_with_force(tmp_path):
    from lora_demo.config import UserError
    from lora_demo.files import check_report_target, is_our_report, write_report

    report = {"model": "minilm", "data": {"source": "builtin", "sizes": {"train": 1}}, "metrics": {}}
    ours = tmp_path / "r.json"
    write_report(ours, report)
    assert is_our_report(ours)
    write_report(ours, {**report, "metrics": {"accuracy": 1.0}})  # a report of ours is replaced
    assert json.loads(ours.read_text())["metrics"] == {"accuracy": 1.0}
    theirs = tmp_path / "data.json"
    theirs.write_text(json.dumps({"data": [1, 2, 3]}))
    with pytest.raises(UserError, match="refusing to overwrite"):
        write_report(theirs, report)
    assert json.loads(theirs.read_text()) == {"data": [1, 2, 3]}
    write_report(theirs, report, force=True)
    assert json.loads(theirs.read_text()) == report
    with pytest.raises(UserError, match="is a folder"):
        check_report_target(tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json", "r.json"]  # no temporary left
