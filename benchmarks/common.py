"""What the benchmark scripts share: where the SQuAD set is, reading it with
:func:`assistant.evaluate.read_jsonl`, and loading the configured generator and the benchmark
retriever as ``assistant eval`` does."""

from __future__ import annotations

from pathlib import Path

from assistant.config import Settings
from assistant.evaluate import read_jsonl

BENCH = Path(__file__).resolve().parents[1].parent / "shared/bench/squad"


def questions(bench: Path) -> list[dict]:
    """The dev questions, ``{"question", "answers", "gold_passage", ...}``, in file order."""
    return read_jsonl(bench / "questions.dev.jsonl")


def corpus(bench: Path) -> dict[str, str]:
    """Passage id -> text."""
    return {doc["_id"]: doc["text"] for doc in read_jsonl(bench / "corpus.jsonl")}


def generator(settings: Settings, model: str | None = None, device: str = "cpu",
              precision: str | None = None):
    """The generator ``model`` (default: the configured one) on ``device`` in ``precision``
    (default: the configured one), converted from its embedded GGUF on first use."""
    from assistant.generation import TransformersGenerator
    from assistant.models import generator_path, is_embedded

    model = model or settings.generator_model
    return TransformersGenerator(model, generator_path(model, Path(settings.data_dir) / "models"),
                                 device=device, precision=precision or settings.precision,
                                 plain_tokenizer=is_embedded(model))


def retriever(settings: Settings, bench: Path):
    """The retriever over the benchmark index ``assistant eval --squad`` builds (indexed once)."""
    from assistant.cli import _bench_index, load_embedder

    return _bench_index(settings, bench, load_embedder(settings))[0]
