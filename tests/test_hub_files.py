"""`lora_demo.hub` without a Hub: the progress it reports and the one line it says when a download fails."""

from __future__ import annotations

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from lora_demo import hub


def test_progress_reports_the_bytes_of_byte_bars_only():
    calls = []
    bar_class = hub._progress_bar(lambda done, total: calls.append((done, total)))
    with bar_class(total=100, unit="B", name="huggingface_hub.snapshot_download") as bytes_bar:
        bytes_bar.update(30)
        bytes_bar.update(20)
    files_bar = bar_class(range(3), total=3, desc="Fetching 3 files")
    assert list(files_bar) == [0, 1, 2]  # iterates as tqdm does, reports nothing: it counts files
    files_bar.update(1)
    assert calls == [(30, 100), (50, 100)]
    assert hub._progress_bar(None) is None


def wrapped_http_error(status: int) -> Exception:
    """An HTTP error as snapshot_download raises it: wrapped in a cache error."""
    request = httpx2.Request("HEAD", "http://127.0.0.1/x")
    inner = HfHubHTTPError("boom", response=httpx2.Response(status, request=request))
    try:
        try:
            raise inner
        except HfHubHTTPError as err:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file") from err
    except LocalEntryNotFoundError as outer:
        return outer


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (wrapped_http_error(500), "the Hub answered HTTP 500"),
        (wrapped_http_error(404), "a file is missing (HTTP 404)"),
        (OSError("Consistency check failed: file should be of size 10 but has size 5"), "a file arrived incomplete"),
        (httpx2.RemoteProtocolError("peer closed connection"), "the connection failed (RemoteProtocolError"),
    ],
)
def test_a_failed_download_is_one_line_that_says_what_the_hub_did(monkeypatch, error, expected):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    message = hub.describe_failure("google-t5/t5-small", error)
    assert message.startswith("could not download google-t5/t5-small from the Hugging Face Hub (http://127.0.0.1:9)")
    assert expected in message and "try again" in message and "\n" not in message
