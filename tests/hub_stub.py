"""A local stand-in for the Hugging Face Hub, on 127.0.0.1 only, for tests of the path a Space takes.

It serves the part of the Hub's HTTP interface that `huggingface_hub` (and through it `transformers` and
`datasets`) uses to download a repository: repository info (`/api/{models,datasets}/{repo}[/revision/{rev}]`),
the file tree (`/api/.../tree/{rev}[/{path}]`), paths-info, and file resolution (`/{repo}/resolve/{rev}/{file}`,
`/datasets/{repo}/resolve/...`) with the headers the client checks: `X-Repo-Commit`, `ETag` (and the
`X-Linked-Etag` / `X-Linked-Size` of large files), `Content-Length`, ranges for resumed downloads, and
`X-Error-Code` on a 404. It holds three repositories, built once into a cache folder outside the repository:

- `google-t5/t5-small` and `google/flan-t5-small`: the full-size architectures of `assets/models/` with random
  weights (so download and load times are real) and a stand-in tokenizer trained here on IMDb reviews, with T5's
  special tokens. The models are not the real ones and answer at chance.
- `stanfordnlp/imdb`: the real repository's layout (`plain_text/{train,test,unsupervised}-00000-of-00001.parquet`,
  a README with the same configs) holding a few hundred real reviews per split from `../shared/data/imdb`
  (the built-in sample where that is missing); the unsupervised split is other train reviews labelled -1.

It can misbehave as the Hub does (`Faults`): answer late, fail a file with a status, close the connection
half-way through a file, or send slowly. Run `python tests/hub_stub.py --port 8765`: it prints `ready` once
it listens; then `HF_ENDPOINT=http://127.0.0.1:8765`.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import shutil
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
IMDB_DIR = REPO_ROOT.parent / "shared" / "data" / "imdb"
BUILD_VERSION = "2"  # bump to rebuild every cache of the stand-in's repositories
DEFAULT_CACHE = Path(os.environ.get("LORA_DEMO_HUB_STUB_CACHE", Path.home() / ".cache" / "lora-demo-hub-stub"))
MODELS = {"google-t5/t5-small": "t5-small.json", "google/flan-t5-small": "flan-t5-small.json"}
DATASET = "stanfordnlp/imdb"
REVIEWS_PER_SPLIT = {"train": 800, "test": 300, "unsupervised": 300}
TOKENIZER_VOCAB = 4000
TOKENIZER_TEXTS = 1100  # reviews the tokenizer learns from: seconds, not minutes
CHUNK = 1 << 20
LARGE_SUFFIXES = (".safetensors", ".parquet")  # stored with Git LFS on the Hub


# ---------------------------------------------------------------- building the repositories


def build_repos(cache: Path = DEFAULT_CACHE, full_imdb: bool = False) -> Path:
    """Build the three repositories under `cache/v{BUILD_VERSION}` unless they are there; returns that folder.

    `full_imdb`: all 25,000 + 25,000 reviews of `../shared/data/imdb` (the real repository's train and test
    sizes; its unsupervised split is the train reviews again), to time a first start with real sizes.
    """
    root = cache / f"v{BUILD_VERSION}{'-full' if full_imdb else ''}"
    if (root / "built.json").is_file():
        return root
    staging = root.with_name(f"{root.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    reviews = _full_reviews() if full_imdb else _sample_reviews()
    texts = reviews["train"]["text"].tolist() + reviews["unsupervised"]["text"].tolist()
    tokenizer = _train_tokenizer(texts[:TOKENIZER_TEXTS])
    for repo, config_file in MODELS.items():
        _build_model(staging / "models" / repo, REPO_ROOT / "assets" / "models" / config_file, tokenizer)
    _build_dataset(staging / "datasets" / DATASET, reviews)
    (staging / "built.json").write_text(json.dumps({"version": BUILD_VERSION}))
    try:
        staging.rename(root)  # atomic: a half-built folder is never served
    except OSError:  # another process built it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _sample_reviews() -> dict:
    """Stratified reviews per split, as stored (not cleaned): text and an integer label."""
    import pandas as pd

    if (IMDB_DIR / "train.parquet").is_file():
        train, test = (pd.read_parquet(IMDB_DIR / f"{split}.parquet") for split in ("train", "test"))
    else:
        sample = pd.read_json(REPO_ROOT / "assets" / "reviews.jsonl", lines=True)[["text", "label"]]
        train, test = sample.iloc[::2], sample.iloc[1::2]
    sizes = {split: min(n, len(test if split == "test" else train) // 2) for split, n in REVIEWS_PER_SPLIT.items()}
    picked_train = _balanced(train, sizes["train"] + sizes["unsupervised"], seed=0)
    unsupervised = picked_train.iloc[sizes["train"] :].assign(label=-1)
    return {
        "train": picked_train.iloc[: sizes["train"]].reset_index(drop=True),
        "test": _balanced(test, sizes["test"], seed=1),
        "unsupervised": unsupervised.reset_index(drop=True),
    }


def _full_reviews() -> dict:
    import pandas as pd

    train, test = (pd.read_parquet(IMDB_DIR / f"{split}.parquet") for split in ("train", "test"))
    shuffled = {
        name: frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
        for name, frame in (("train", train), ("test", test))
    }
    return {**shuffled, "unsupervised": shuffled["train"].assign(label=-1)}


def _balanced(frame, n: int, seed: int):
    # the files are sorted by label: take the same number of each, then shuffle
    per_label = [frame[frame["label"] == label].sample(n // 2, random_state=seed) for label in (0, 1)]
    import pandas as pd

    return pd.concat(per_label).sample(frac=1.0, random_state=seed).reset_index(drop=True)[["text", "label"]]


def _train_tokenizer(texts: list[str]):
    """A sentencepiece-style unigram tokenizer with T5's special tokens, so `AutoTokenizer` loads it as T5's."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    extra = [f"<extra_id_{i}>" for i in range(100)]
    backend = Tokenizer(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=TOKENIZER_VOCAB, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    # the label words must be whole pieces, as in T5's vocabulary
    backend.train_from_iterator([*texts, *(["positive negative review:"] * 50)], trainer=trainer)
    backend.add_special_tokens(extra)
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", backend.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=extra,
        model_max_length=512,
    )


def _build_model(folder: Path, config_file: Path, tokenizer) -> None:
    import torch
    from transformers import AutoConfig, T5ForConditionalGeneration

    config = AutoConfig.for_model(**json.loads(config_file.read_text()))
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _build_dataset(folder: Path, reviews: dict) -> None:
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    split_yaml = []
    for split, frame in reviews.items():
        path = folder / "plain_text" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_pandas(frame, features=features, preserve_index=False).to_parquet(str(path))
        size = path.stat().st_size
        split_yaml.append(f"  - name: {split}\n    num_bytes: {size}\n    num_examples: {len(frame)}")
    (folder / "README.md").write_text(
        "---\nlanguage:\n- en\nlicense: other\ntask_categories:\n- text-classification\n"
        "dataset_info:\n  config_name: plain_text\n  features:\n  - name: text\n    dtype: string\n"
        "  - name: label\n    dtype:\n      class_label:\n        names:\n          '0': neg\n          '1': pos\n"
        "  splits:\n" + "\n".join(split_yaml) + "\nconfigs:\n- config_name: plain_text\n  data_files:\n"
        "  - split: train\n    path: plain_text/train-*\n  - split: test\n    path: plain_text/test-*\n"
        "  - split: unsupervised\n    path: plain_text/unsupervised-*\n  default: true\n---\n\n"
        "# IMDb (a few hundred reviews: the test stand-in of the Hub)\n"
    )


# ---------------------------------------------------------------- the repositories as the server sees them


@dataclass(frozen=True)
class RepoFile:
    path: str
    local: Path
    size: int
    sha256: str
    git_oid: str


@dataclass
class Repo:
    repo_id: str
    kind: str  # "model" or "dataset"
    files: dict[str, RepoFile]
    commit: str

    @classmethod
    def load(cls, folder: Path, repo_id: str, kind: str) -> Repo:
        files = {}
        for local in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = local.read_bytes()
            path = local.relative_to(folder).as_posix()
            git_oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            files[path] = RepoFile(path, local, len(data), hashlib.sha256(data).hexdigest(), git_oid)
        commit = hashlib.sha1("".join(f.path + f.sha256 for f in files.values()).encode()).hexdigest()
        return cls(repo_id, kind, files, commit)

    def entry(self, path: str) -> dict:
        """A tree / paths-info entry, as the Hub's API writes it."""
        if path in self.files:
            f = self.files[path]
            entry = {"type": "file", "oid": f.git_oid, "size": f.size, "path": f.path}
            if f.path.endswith(LARGE_SUFFIXES):
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            return entry
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}

    def listing(self, under: str, recursive: bool) -> list[dict] | None:
        prefix = f"{under.strip('/')}/" if under.strip("/") else ""
        names = set()
        for path in self.files:
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            names.add(prefix + parts[0])
            if recursive:
                names.update(prefix + "/".join(parts[: i + 1]) for i in range(1, len(parts)))
        if prefix and not names:
            return None
        return [self.entry(name) for name in sorted(names)]

    def info(self) -> dict:
        return {
            "_id": self.commit[:24],
            "id": self.repo_id,
            "sha": self.commit,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": "2024-01-01T00:00:00.000Z",
            "createdAt": "2024-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": path} for path in self.files],
            "cardData": {},
        }


def load_repos(root: Path) -> dict[tuple[str, str], Repo]:
    repos = {("model", repo): Repo.load(root / "models" / repo, repo, "model") for repo in MODELS}
    repos[("dataset", DATASET)] = Repo.load(root / "datasets" / DATASET, DATASET, "dataset")
    return repos


# ---------------------------------------------------------------- misbehaviour


@dataclass
class Faults:
    """How the stand-in misbehaves now; tests change it while it runs.

    Attributes:
        delay: seconds to wait before answering any request.
        status: `{glob: code}`: a file whose `repo/path` matches answers `code` (resolve requests only).
        cut: globs of files whose body stops half-way, the connection closed (resumed requests get nothing).
        throttle: bytes per second for file bodies (0: as fast as possible).
    """

    delay: float = 0.0
    status: dict[str, int] = field(default_factory=dict)
    cut: list[str] = field(default_factory=list)
    throttle: int = 0

    def status_for(self, name: str) -> int | None:
        return next((code for glob, code in self.status.items() if fnmatch.fnmatch(name, glob)), None)

    def cuts(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, glob) for glob in self.cut)


# ---------------------------------------------------------------- the server


RESOLVE = re.compile(r"^/(?:(?P<kind>datasets|models)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
API = re.compile(
    r"^/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)"
    r"(?:/(?P<op>revision|tree|paths-info)/(?P<rev>[^/]+)(?:/(?P<path>.*))?)?$"
)


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub client expects
    server: HubServer

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass

    def do_HEAD(self):
        self._answer(send_body=False)

    def do_GET(self):
        self._answer(send_body=True)

    def do_POST(self):
        self._answer(send_body=True)

    def _answer(self, send_body: bool):
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        self.server.record(self.command, path, self.headers.get("Range"))
        if self.server.faults.delay:
            time.sleep(self.server.faults.delay)
        if match := RESOLVE.match(path):
            return self._resolve(match, send_body)
        if match := API.match(path):
            return self._api(match, urllib.parse.parse_qs(url.query), send_body)
        return self._json(404, {"error": "Not found"}, send_body)

    def _repo(self, kind: str | None, repo_id: str, rev: str | None) -> Repo | None:
        repo = self.server.repos.get(("dataset" if kind == "datasets" else "model", repo_id))
        if repo is None:
            self._json(401, {"error": "Repository not found"}, True, {"X-Error-Code": "RepoNotFound"})
            return None
        if rev is not None and urllib.parse.unquote(rev) not in ("main", repo.commit):
            self._json(404, {"error": "Invalid rev id"}, True, {"X-Error-Code": "RevisionNotFound"})
            return None
        return repo

    def _api(self, match, query: dict, send_body: bool):
        repo = self._repo(match["kind"], match["repo"], match["rev"])
        if repo is None:
            return
        op = match["op"]
        if op in (None, "revision"):
            return self._json(200, repo.info(), send_body)
        if op == "tree":
            listing = repo.listing(match["path"] or "", query.get("recursive", ["false"])[0].lower() == "true")
            if listing is None:
                return self._json(404, {"error": "not found"}, send_body, {"X-Error-Code": "EntryNotFound"})
            return self._json(200, listing, send_body)
        # paths-info: the paths come as a form
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode()) if length else {}
        wanted = form.get("paths", [])
        known = [p for p in wanted if p in repo.files or repo.listing(p, False)]
        return self._json(200, [repo.entry(p) for p in known], send_body)

    def _resolve(self, match, send_body: bool):
        repo = self._repo(match["kind"], match["repo"], match["rev"])
        if repo is None:
            return
        name = f"{repo.repo_id}/{match['path']}"
        headers = {"X-Repo-Commit": repo.commit}
        code = self.server.faults.status_for(name)
        if code is not None:
            return self._json(code, {"error": f"stand-in fault {code}"}, send_body, headers)
        file = repo.files.get(match["path"])
        if file is None:
            headers["X-Error-Code"] = "EntryNotFound"
            return self._json(404, {"error": "Entry not found"}, send_body, headers)
        self._send_file(file, name, headers, send_body)

    def _send_file(self, file: RepoFile, name: str, headers: dict, send_body: bool):
        start, end = _parse_range(self.headers.get("Range"), file.size)
        headers.update(
            {"ETag": f'"{file.git_oid}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        )
        if file.path.endswith(LARGE_SUFFIXES):
            headers.update(
                {"ETag": f'"{file.sha256}"', "X-Linked-Etag": f'"{file.sha256}"', "X-Linked-Size": str(file.size)}
            )
        partial = start > 0 or end < file.size
        self.send_response(206 if partial else 200)
        if partial:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{file.size}"
        headers["Content-Length"] = str(end - start)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not send_body:
            return
        stop = min(end, file.size // 2) if self.server.faults.cuts(name) else end
        self._stream(file.local, start, stop)
        if stop < end:  # the Hub's connection dropped half-way through the file
            self.close_connection = True

    def _stream(self, local: Path, start: int, stop: int):
        throttle = self.server.faults.throttle
        began, sent = time.monotonic(), 0
        with local.open("rb") as source:
            source.seek(start)
            while sent < stop - start:
                chunk = source.read(min(CHUNK if not throttle else max(1, throttle // 10), stop - start - sent))
                self.wfile.write(chunk)
                sent += len(chunk)
                if throttle:
                    time.sleep(max(0.0, sent / throttle - (time.monotonic() - began)))

    def _json(self, code: int, payload, send_body: bool, headers: dict | None = None):
        body = json.dumps(payload).encode()
        self.send_response(code)
        for key, value in {
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            **(headers or {}),
        }.items():
            self.send_header(key, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _parse_range(header: str | None, size: int) -> tuple[int, int]:
    """`bytes=START-[END]` as a half-open [start, end); the whole file without a header."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if not match:
        return 0, size
    if not match[1]:  # a suffix: the last N bytes
        return max(0, size - int(match[2])), size
    return min(int(match[1]), size), min(int(match[2]) + 1, size) if match[2] else size


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, repos: dict, faults: Faults | None = None):
        super().__init__(("127.0.0.1", port), HubHandler)
        self.repos, self.faults = repos, faults or Faults()
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()

    def record(self, method: str, path: str, byte_range: str | None):
        with self._lock:
            self.requests.append((method, path, byte_range))

    def downloads(self, pattern: str) -> int:
        """How many GETs of a file matching `pattern` (a glob over the request path) were answered."""
        with self._lock:
            return sum(1 for method, path, _ in self.requests if method == "GET" and fnmatch.fnmatch(path, pattern))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def start_stub(port: int = 0, cache: Path = DEFAULT_CACHE, faults: Faults | None = None) -> HubServer:
    """Build the repositories if needed and serve them from a thread; `server.shutdown()` stops it."""
    server = HubServer(port, load_repos(build_repos(cache)), faults)
    threading.Thread(target=server.serve_forever, name="hub-stub", daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the repositories are built")
    parser.add_argument("--throttle", type=float, default=0.0, help="MB/s for file bodies (0: unlimited)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every answer")
    parser.add_argument("--full-imdb", action="store_true", help="serve all 25,000 + 25,000 reviews of IMDb")
    args = parser.parse_args()
    faults = Faults(delay=args.delay, throttle=int(args.throttle * 1_000_000))
    server = HubServer(args.port, load_repos(build_repos(args.cache, args.full_imdb)), faults)
    print("ready", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
