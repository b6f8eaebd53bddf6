"""What the benchmark scripts share: where the SQuAD set is, reading it with
:func:`assistant.evaluate.read_jsonl`, and loading the configured generator and the benchmark
retriever as ``assistant eval`` does, the chat benchmarks' set-up, and timing one turn."""

from __future__ import annotations

import time
from pathlib import Path

from assistant.config import Settings
from assistant.evaluate import read_jsonl

BENCH = Path(__file__).resolve().parents[1].parent / "shared/bench/squad"


def questions(bench: Path) -> list[dict]:
    """The dev questions, ``{"question", "answers", "gold_passage", ...}``, in file order."""
    return read_jsonl(bench / "questions.dev.jsonl")


def outside_reported(bench: Path, limit: int, seed: int) -> list[dict]:
    """``limit`` dev questions sampled with ``seed`` from those `assistant eval --squad`
    does not report (its seed-0 sample of 300) and the extractive prompt's worked examples do
    not ask: questions to calibrate and choose on without touching what is reported."""
    from assistant import evaluate as ev
    from assistant.extractive import example_questions

    skip = set(example_questions())
    pool = [q for q in questions(bench) if q["question"] not in skip]
    reported = {q["question"] for q in ev.sample(pool, 300, 0)}
    return ev.sample([q for q in pool if q["question"] not in reported], limit, seed)


def bench_models(bench: Path):
    """``(retriever, generator)``: the retriever over the whole benchmark index (as
    :func:`retriever`) and the configured generator, loaded as ``assistant eval`` loads them."""
    import click

    from assistant.cli import load_generator

    settings = Settings.load()
    return (retriever(settings, bench),
            load_generator(settings, say=lambda m: click.echo(m, err=True)))


def recorded(description: str, collect, *, limit: int) -> list[dict]:
    """The records of a benchmark that records the reader's work once and analyses it
    offline: parses ``--limit`` (default ``limit``), ``--seed`` (33), ``--bench``, ``--out``
    (write the records there as JSON, or with ``--analyse`` read them back) and
    ``--analyse``; returns ``collect(args)``'s records, or those read back."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--limit", type=int, default=limit)
    parser.add_argument("--seed", type=int, default=33)
    parser.add_argument("--bench", default=str(BENCH))
    parser.add_argument("--out", type=Path, help="write (or with --analyse read) the records")
    parser.add_argument("--analyse", action="store_true", help="only analyse --out's records")
    args = parser.parse_args()
    if args.analyse:
        return json.loads(args.out.read_text())
    records = collect(args)
    if args.out:
        args.out.write_text(json.dumps(records))
    return records


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
    return TransformersGenerator(model, generator_path(model, settings.models_dir),
                                 device=device, precision=precision or settings.precision,
                                 cache_dir=settings.prefix_cache_dir,
                                 plain_tokenizer=is_embedded(model))


def retriever(settings: Settings, bench: Path):
    """The retriever over the benchmark index ``assistant eval --squad`` builds (indexed once)."""
    from assistant.cli import _bench_index, load_embedder

    return _bench_index(settings, bench, load_embedder(settings))[0]


def chat_setup(description: str, *, answerable_only: bool = False):
    """What the chat benchmarks share: ``--model`` (default SmolLM2-135M-Instruct) and ``-n``
    (how many questions) parsed, the first ``n`` questions of the question set's tune split
    about the bundled Python reference (only answerable ones with ``answerable_only``), and
    the settings, embedder and generator loaded with the bundled reference indexed.

    Returns:
        ``(args, questions, settings, embedder, generator)``.
    """
    import argparse
    import json

    from assistant.cli import ensure_demo_index, load_embedder, load_generator

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("-n", type=int, default=8)
    args = parser.parse_args()
    data = json.loads((Path(__file__).parent / "questions" / "real.json").read_text())
    asked = [q["question"] for q in data["questions"]
             if q.get("split") == "tune" and q.get("corpus", "python") == "python"
             and (q.get("answerable", True) or not answerable_only)][: args.n]
    settings = Settings.load().replace(generator_model=args.model)
    embedder = load_embedder(settings)
    ensure_demo_index(settings, embedder)
    return args, asked, settings, embedder, load_generator(settings)


def timed(manager, question: str, conversation_id: str | None = None):
    """``(turn, first token s, complete text s)`` of ``manager.ask(question)``, from the
    question (retrieval included), the turn drained."""
    started = time.perf_counter()
    turn = manager.ask(question, conversation_id=conversation_id)
    first = None
    for _ in turn:
        first = first or time.perf_counter() - started
    done = turn.answer_s or time.perf_counter() - started
    return turn, first or done, done
