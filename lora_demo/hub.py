"""Files from the Hugging Face Hub: downloaded into its cache with progress, or found there when offline.

The Hub is whatever `HF_ENDPOINT` names. When it answers (`hub_reachable`), a repository's files are fetched with
`huggingface_hub.snapshot_download`, which writes each file to `*.incomplete` and renames it into the cache only
once its size checks out, so a download cut half-way is never used (the next attempt resumes it). When it does
not answer, or `HF_HUB_OFFLINE=1`, the files come from the cache (the Hugging Face convention: offline means
"use the cache"), and only a repository that is not there is refused.

How long a misbehaving Hub can hold a request (huggingface_hub's own limits, which we keep): a Hub that does not
answer our 3 s probe is treated as unreachable at once; a file that fails with HTTP 5xx is retried for about 25 s
(5 retries, 1 + 2 + 4 + 8 + 8 s apart); a connection that stalls or drops is resumed 5 times with 10 s read
time-outs, so about a minute at most without new bytes.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from pathlib import Path

from .config import UserError
from .data import hub_endpoint, hub_reachable, offline_mode

logger = logging.getLogger(__name__)

# what transformers reads to load a T5 and its tokenizer; the Hub repositories hold much more (TF, Flax, ONNX)
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
)
Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


def fetch_model(repo_id: str, progress: Progress | None = None) -> Path:
    """The local folder holding a Hub model's config, weights and tokenizer; downloaded first if need be.

    Args:
        repo_id: e.g. `google-t5/t5-small`.
        progress: called with (bytes done, bytes in all) while downloading.

    Raises:
        UserError: the Hub failed or is unreachable and the model is not in the local cache.
    """
    folder = fetch_repo(repo_id, "model", MODEL_FILES, progress)
    if not (folder / "config.json").is_file() or not any(folder.glob("model*.safetensors*")):
        raise UserError(f"{repo_id} on the Hugging Face Hub holds no config.json and safetensors weights to load")
    return folder


def fetch_repo(repo_id: str, repo_type: str, patterns: tuple[str, ...], progress: Progress | None = None) -> Path:
    """Download the files of a repository that match `patterns`, or find them in the cache when there is no Hub.

    Returns:
        The snapshot folder in the Hugging Face cache.

    Raises:
        UserError: with one line saying what failed (the Hub's answer, or that nothing is cached).
    """
    if offline_mode() or not hub_reachable():
        return _cached_snapshot(repo_id, repo_type, patterns)
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id, repo_type=repo_type, allow_patterns=list(patterns), tqdm_class=_progress_bar(progress)
        )
    except UserError:
        raise
    except Exception as err:  # the Hub client raises HTTP, network and consistency errors of many types
        raise UserError(describe_failure(repo_id, err)) from err
    return Path(folder)


def in_cache(repo_id: str, repo_type: str = "model", patterns: tuple[str, ...] = MODEL_FILES) -> bool:
    """Whether a complete download of the repository's `patterns` is in the local Hugging Face cache."""
    try:
        _cached_snapshot(repo_id, repo_type, patterns)
    except UserError:
        return False
    return True


def _cached_snapshot(repo_id: str, repo_type: str, patterns: tuple[str, ...]) -> Path:
    from huggingface_hub import snapshot_download

    why = "HF_HUB_OFFLINE=1 is set" if offline_mode() else f"the Hub at {hub_endpoint()} did not answer within 3 s"
    try:
        # refuses a snapshot whose files are not all there (an interrupted download)
        folder = Path(
            snapshot_download(repo_id, repo_type=repo_type, allow_patterns=list(patterns), local_files_only=True)
        )
    except Exception as err:  # LocalEntryNotFoundError and friends: not (completely) cached
        logger.info("%s is not in the Hugging Face cache: %s", repo_id, err)
        folder = None
    if folder is None or not any(_matches(path, folder, patterns) for path in folder.rglob("*")):
        raise UserError(f"{repo_id} is not in the local Hugging Face cache and cannot be downloaded: {why}")
    return folder


def _matches(path: Path, folder: Path, patterns: tuple[str, ...]) -> bool:
    name = path.relative_to(folder).as_posix()
    return path.is_file() and any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def describe_failure(repo_id: str, err: Exception) -> str:
    """One line for a failed download: what the Hub answered, and that it is safe to try again."""
    causes = _causes(err)
    status = next((c.response.status_code for c in causes if getattr(c, "response", None) is not None), None)
    root = causes[-1]
    if status == 404:
        what = "a file is missing (HTTP 404)"
    elif status is not None:
        what = f"the Hub answered HTTP {status}"
    elif any("Consistency check failed" in str(c) for c in causes):
        what = "a file arrived incomplete"
    else:
        what = f"the connection failed ({type(root).__name__}: {(str(root).strip().splitlines() or [''])[0][:100]})"
    return (
        f"could not download {repo_id} from the Hugging Face Hub ({hub_endpoint()}): {what}. Nothing partial is "
        "used; try again in a minute (an interrupted download resumes where it stopped)"
    )


def _causes(err: BaseException) -> list[BaseException]:
    """The error and what caused it, outermost first (the Hub client wraps HTTP errors in cache errors)."""
    chain = [err]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and cause not in chain:
        chain.append(cause)
    return chain


def _progress_bar(progress: Progress | None):
    """A tqdm class for `snapshot_download` that reports its byte counts to `progress` and prints nothing."""
    from tqdm.auto import tqdm

    if progress is None:
        return None

    class ReportingBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            self.counts_bytes = kwargs.get("unit") == "B"
            super().__init__(*args, **{**kwargs, "disable": True})

        def update(self, n=1):
            self.n += n or 0  # a disabled tqdm does not count
            if self.counts_bytes and self.total:
                progress(int(self.n), int(self.total))

    return ReportingBar
