"""Runs shared by the CLI and the app: adapter folders with a `report.json`, under `$LORA_DEMO_RUNS` (`runs/`).

`python -m lora_demo train --output runs/NAME` writes one; the app lists them by folder name and loads the
one a user picks. A name is only ever looked up among the folders listed, never joined into a path as
given, so no user-supplied value reaches the filesystem. The app saves its own runs there only when the
operator sets `LORA_DEMO_SAVE_RUNS=1`, so a public Space never fills its disk.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from .config import METADATA_FILE, UserError

REPORT_FILE = "report.json"


def runs_root() -> Path:
    return Path(os.environ.get("LORA_DEMO_RUNS", "runs"))


def saving_enabled() -> bool:
    return os.environ.get("LORA_DEMO_SAVE_RUNS", "").strip().lower() in {"1", "true", "yes"}


def list_runs(root: Path | None = None) -> list[dict]:
    """The runs under `root`, newest first: name, model, test accuracy and F1 of each (from its report)."""
    root = root or runs_root()
    if not root.is_dir():
        return []
    runs = []
    for folder in root.iterdir():
        if folder.is_symlink() or not folder.is_dir():
            continue
        if not (folder / REPORT_FILE).is_file() or not (folder / METADATA_FILE).is_file():
            continue
        try:
            report = json.loads((folder / REPORT_FILE).read_text())
        except (OSError, ValueError):
            continue  # a half-written or foreign folder is skipped, not an error
        finetuned = report.get("finetuned") or {}
        runs.append(
            {
                "name": folder.name,
                "model": report.get("model"),
                "accuracy": finetuned.get("accuracy"),
                "f1": finetuned.get("f1"),
                "modified": (folder / REPORT_FILE).stat().st_mtime,
            }
        )
    return sorted(runs, key=lambda run: -run["modified"])


def run_folder(name: str, root: Path | None = None) -> Path:
    """The folder of the listed run called `name`.

    Raises:
        UserError: for any name that is not one of the listed runs (paths, `..` and the like included).
    """
    root = root or runs_root()
    for run in list_runs(root):
        if run["name"] == name:
            return root / run["name"]
    raise UserError(f"no saved run called {name!r} under {str(root)!r}")


def new_run_name(prefix: str = "app") -> str:
    """A fresh folder name: the prefix and a timestamp, letters, digits and dashes only."""
    return re.sub(r"[^A-Za-z0-9-]", "-", f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
