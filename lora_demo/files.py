"""Writing the CLI's JSON reports without ever overwriting a file that is not one of ours.

A report of ours is a JSON object whose `data` is the data summary every command records (`source` and
`sizes`); any other existing file is replaced only when the user says `--force`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .config import UserError


def is_our_report(path: Path) -> bool:
    """Whether `path` holds a JSON report written by `train`, `evaluate` or `bench`."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    data = payload.get("data") if isinstance(payload, dict) else None
    return isinstance(data, dict) and {"source", "sizes"} <= set(data)


def check_report_target(path: str | Path | None, force: bool = False) -> None:
    """Refuse a report path that would overwrite something the user owns.

    Args:
        path: where the report goes; None means no report.
        force: overwrite any existing file.

    Raises:
        UserError: the path is a folder, or an existing non-empty file that is not one of our reports.
    """
    if not path:
        return
    target = Path(path).expanduser()
    if target.is_dir():
        raise UserError(f"--report {str(path)!r} is a folder: give a file name such as report.json")
    if force or not target.exists() or target.stat().st_size == 0 or is_our_report(target):
        return
    raise UserError(
        f"refusing to overwrite {str(path)!r}: it is not a lora_demo report; give another file or add --force"
    )


def write_report(path: str | Path | None, payload: dict, force: bool = False) -> None:
    """Write `payload` as JSON to `path` atomically (a temporary file beside it, renamed over it).

    Raises:
        UserError: as `check_report_target`.
    """
    if not path:
        return
    check_report_target(path, force)
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(payload, out, indent=2, default=str)
        os.chmod(staging, 0o644)  # mkstemp makes it private; a report is an ordinary file
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
