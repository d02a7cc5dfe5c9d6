"""Runs shared by the CLI and the app: adapter folders with a `report.json`, under `$LORA_DEMO_RUNS` (`runs/`).

`python -m lora_demo train --output runs/NAME` writes one; the app lists them by folder name and loads the
one a user picks. A name is only ever looked up among the folders listed, never joined into a path as
given, so no user-supplied value reaches the filesystem. The app saves its own runs there only when the
operator sets `LORA_DEMO_SAVE_RUNS=1`, so a public Space never fills its disk, and then into
`sessions/<session key>/`: runs directly under the root are the operator's, listed to every session; a run the
app saved is listed to the session that trained it only, so one visitor never sees another's runs.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from .config import METADATA_FILE, UserError

REPORT_FILE = "report.json"
SESSIONS_DIR = "sessions"  # under the runs root: one folder of app-saved runs per session


def runs_root() -> Path:
    return Path(os.environ.get("LORA_DEMO_RUNS", "runs"))


def saving_enabled() -> bool:
    return os.environ.get("LORA_DEMO_SAVE_RUNS", "").strip().lower() in {"1", "true", "yes"}


def session_runs_root(session_key: str, root: Path | None = None) -> Path:
    """The folder of the runs the app saved for the session with this key.

    Raises:
        ValueError: a key that is not 32 hexadecimal digits, as `SessionData.runs_key` is (it becomes a path).
    """
    if not re.fullmatch(r"[0-9a-f]{32}", session_key or ""):
        raise ValueError("a session key is 32 hexadecimal digits")
    return (root or runs_root()) / SESSIONS_DIR / session_key


def list_runs(root: Path | None = None, session_key: str | None = None) -> list[dict]:
    """The runs a session may see, newest first: name, model, test accuracy and F1 of each (from its report).

    Args:
        root: the runs root (default `$LORA_DEMO_RUNS`); its own run folders are the operator's, seen by all.
        session_key: the session's key; its app-saved runs (see `save_session_run`) are listed too.
    """
    root = root or runs_root()
    runs = _runs_in(session_runs_root(session_key, root)) if session_key else []
    return sorted(runs + _runs_in(root), key=lambda run: -run["modified"])


def _runs_in(folder: Path) -> list[dict]:
    if not folder.is_dir():
        return []
    runs = []
    for run in folder.iterdir():
        if run.is_symlink() or not run.is_dir():
            continue
        if not (run / REPORT_FILE).is_file() or not (run / METADATA_FILE).is_file():
            continue
        try:
            report = json.loads((run / REPORT_FILE).read_text())
        except (OSError, ValueError):
            continue  # a half-written or foreign folder is skipped, not an error
        finetuned = report.get("finetuned") or {}
        runs.append(
            {
                "name": run.name,
                "model": report.get("model"),
                "accuracy": finetuned.get("accuracy"),
                "f1": finetuned.get("f1"),
                "modified": (run / REPORT_FILE).stat().st_mtime,
                "path": run,
            }
        )
    return runs


def run_folder(name: str, root: Path | None = None, session_key: str | None = None) -> Path:
    """The folder of the run called `name` among those `list_runs` lists for this session.

    Raises:
        UserError: for any name that is not one of the listed runs (paths, `..`, other sessions' runs included).
    """
    root = root or runs_root()
    for run in list_runs(root, session_key):
        if run["name"] == name:
            return run["path"]
    raise UserError(f"no saved run called {name!r} under {str(root)!r}")


def new_run_name(prefix: str = "app") -> str:
    """A fresh folder name: the prefix and a timestamp, letters, digits and dashes only."""
    return re.sub(r"[^A-Za-z0-9-]", "-", f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
