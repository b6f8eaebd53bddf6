"""Shared fixtures: real text from SQuAD, scripted fakes, temporary data directories."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from assistant.generation import GenerationStats, Reply

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_configure(config):
    from hypothesis import settings

    # CI: 100 cases per target, at most 2 s each; `--fuzz N` for a long run.
    settings.register_profile("ci", max_examples=100, deadline=2000, derandomize=True)
    settings.register_profile("fuzz", max_examples=config.getoption("--fuzz") or 100,
                              deadline=10_000)
    settings.load_profile("fuzz" if config.getoption("--fuzz") else "ci")


def pytest_addoption(parser):
    parser.addoption("--soak", type=int, default=0, metavar="N",
                     help="fault injection: kill the indexer at N points (CI: 20)")
    parser.addoption("--fuzz", type=int, default=0, metavar="N",
                     help="property-based tests: N examples per target (CI: each test's own)")


@pytest.fixture(autouse=True)
def no_answer_server_on_demand(monkeypatch):
    """No `ask` of a test (in a pseudo-terminal, say) starts an answer server that would
    outlive it; tests of that behaviour set ASSISTANT_SERVE_IDLE_MINUTES themselves."""
    monkeypatch.setenv("ASSISTANT_SERVE_IDLE_MINUTES", "0")


def load_jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def squad_passages() -> list[dict]:
    return load_jsonl("squad_passages.jsonl")


@pytest.fixture(scope="session")
def squad_questions() -> list[dict]:
    return load_jsonl("squad_questions.jsonl")


def write_corpus(folder: Path, passages: list[dict]) -> dict[str, Path]:
    """Write passages as Markdown files (title as heading); returns {passage id: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for p in passages:
        path = folder / f"{p['_id']}.md"
        path.write_text(f"# {p['title']}\n\n{p['text']}\n", encoding="utf-8")
        paths[p["_id"]] = path
    return paths


@pytest.fixture
def corpus_dir(tmp_path, squad_passages) -> Path:
    folder = tmp_path / "docs"
    write_corpus(folder, squad_passages)
    return folder


class FakeEmbedder:
    """A deterministic bag-of-words embedder: each word hashes to one of ``dim`` buckets.

    Enough for retrieval on word overlap; counts calls so tests can see what was re-embedded.
    """

    def __init__(self, dim: int = 256, name: str = "fake-bow"):
        self.dim = dim
        self.name = name
        self.embedded: list[str] = []

    def _bucket(self, word: str) -> int:
        return int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        self.embedded.extend(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, self._bucket(word)] += 1.0
            norm = np.linalg.norm(out[i])
            if norm:
                out[i] /= norm
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(re.findall(r"\w+|[^\w\s]", t)) for t in texts]


class FakeGenerator:
    """A scripted generator: replies with the given fragments, optionally slowly.

    ``FakeGenerator(["The ", "answer [1]."])``; ``delay`` seconds between fragments lets tests
    cancel mid-answer; ``gate`` (an Event) holds the stream until set.
    """

    def __init__(self, fragments: Sequence[str] = ("An answer [1].",), *, delay: float = 0.0,
                 gate: threading.Event | None = None, name: str = "fake-generator",
                 chat: bool = True):
        self.fragments = list(fragments)
        self.delay = delay
        self.gate = gate
        self.name = name
        self.device = "cpu"
        self.context_window = 4096
        self.has_chat_template = chat
        self.has_blocks = False
        self.calls: list[list[dict]] = []
        self.prefixes: list[str] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prompt_tokens(self, messages) -> int:
        return sum(self.count_tokens(m["content"]) + 4 for m in messages)

    def complete(self, text, *, max_new_tokens=32, temperature=0.0, stop=(), within=None,
                 shared_prefix="") -> Reply:
        """Continue a raw prompt (base-model style); recorded like a one-message chat. With
        ``within`` (copy a span), the reply is the first three words of ``within``.
        ``shared_prefix`` is recorded in ``prefixes``."""
        self.prefixes.append(shared_prefix)
        if within is not None:
            scripted, self.fragments = self.fragments, [" ".join(within.split()[:3])]
            try:
                return self.generate([{"role": "user", "content": text}],
                                     max_new_tokens=max_new_tokens)
            finally:
                self.fragments = scripted
        return self.generate([{"role": "user", "content": text}], max_new_tokens=max_new_tokens)

    def generate(self, messages, *, max_new_tokens=256, temperature=0.0, stop=()) -> Reply:
        import time

        self.calls.append(list(messages))
        stats = GenerationStats(prompt_tokens=self.prompt_tokens(messages))
        cancel = threading.Event()
        stop_event = threading.Event()
        started = time.perf_counter()

        script = list(self.fragments)

        def fragments():
            if self.gate is not None:
                self.gate.wait(10)
            for fragment in script[:max_new_tokens]:
                if cancel.is_set() or stop_event.is_set():
                    break
                if self.delay:
                    time.sleep(self.delay)
                if stats.first_token_s is None:
                    stats.first_token_s = time.perf_counter() - started
                stats.new_tokens += 1
                yield fragment
            stats.total_s = time.perf_counter() - started
            stats.cancelled = cancel.is_set()

        return Reply(fragments(), stats, cancel, stop_event)


@pytest.fixture
def fake_embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture(scope="session")
def real_embedder():
    """The embedded all-MiniLM-L6-v2 (loaded once per test session)."""
    from index.embedding import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(device="cpu")


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory) -> Path:
    """A data directory shared by the slow tests, so the GGUF is converted once per session."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def real_generator(shared_data_dir):
    """The embedded default generator (Gemma 3 270M), converted from its GGUF once per session."""
    from assistant.generation import TransformersGenerator
    from assistant.models import generator_path

    path = generator_path("gemma-3-270m", shared_data_dir / "models")
    return TransformersGenerator("gemma-3-270m", path, device="cpu", plain_tokenizer=True)


@pytest.fixture
def settings(tmp_path):
    from assistant.config import Settings

    return Settings.load(config_path=None, env={"ASSISTANT_CONFIG": str(tmp_path / "none.toml")},
                         overrides={"data_dir": tmp_path / "data"})


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (400 tokens) trained on the extractive template: small
    enough for models built from configs, real enough to tokenise any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from assistant.prompts import load_template

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([load_template("extractive.txt")] * 3, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>")


def tiny_model(kind: str, vocab_size: int, **overrides):
    """A causal LM with random weights built from a config: ``gemma3`` (one sliding-window
    layer with a 4-token window, one global layer, two RoPE bases), ``llama`` (SmolLM2's
    architecture) or ``qwen2`` (biases on q/k/v)."""
    import torch
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig,
                              LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    common.update(overrides)
    torch.manual_seed(0)
    if kind == "gemma3":
        layer_types = common.pop("layer_types", ["sliding_attention", "full_attention"])
        config = Gemma3TextConfig(head_dim=16, sliding_window=4, layer_types=layer_types,
                                  **common)
        return Gemma3ForCausalLM(config).eval()
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**common)).eval()
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    raise ValueError(kind)
