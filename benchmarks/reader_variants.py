"""Reader ablation: exact match and token F1 of the embedded generator given the *gold* passage,
for prompt templates with and without the copy-constrained second reading.

Isolates the reader from retrieval: every question of a fixed sample of ``questions.dev.jsonl``
is answered from its gold paragraph with a few-shot template (``prompts/extractive.txt`` by
default, or any file with ``{context}`` and ``{question}``), the answer aligned to the passage
as in chat (:func:`assistant.extractive.finish`). With the fallback (default), an answer that
is not in the passage is read again with decoding constrained to copy a span of it, as
``assistant ask`` does. Questions used as worked examples by any of the templates are skipped,
so every template is scored on the same questions.

    .venv/bin/python benchmarks/reader_variants.py [TEMPLATE ...] [-n 200] [--seed 11]
        [--no-fallback] [--model gemma-3-270m]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import common
from assistant.config import Settings
from assistant.extractive import example_questions, extractive_prompt, finish
from assistant.metrics import exact_match, token_f1
from assistant.prompts import load_template


def read(question: str, passage: str, template: str, generator, fallback: bool, *,
         max_new_tokens: int = 24) -> tuple[str, float | None]:
    """The aligned answer span for one question over one passage, and the free reading's mean
    token log-probability (the confidence ``assistant ask`` weighs answers by)."""
    prompt = extractive_prompt(question, passage, template)
    free = generator.complete(prompt, max_new_tokens=max_new_tokens, stop=["\n"])
    done = finish("".join(free), passage)
    if fallback and not done.supported:
        copied = generator.complete(prompt, max_new_tokens=max_new_tokens, stop=["\n"],
                                    within=passage)
        done = finish("".join(copied), passage)
    return done.span, free.stats.mean_logprob


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("templates", nargs="*", type=Path, help="template files (default: the "
                        "installed prompts/extractive.txt)")
    parser.add_argument("-n", type=int, default=200, help="questions")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--no-fallback", action="store_true")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--bench", type=Path, default=common.BENCH)
    args = parser.parse_args()

    templates = {str(p): p.read_text(encoding="utf-8").strip() for p in args.templates} or {
        "prompts/extractive.txt": load_template("extractive.txt")}
    skip = {q for t in templates.values() for q in example_questions(t)}
    corpus = common.corpus(args.bench)
    questions = common.questions(args.bench)
    pool = random.Random(args.seed).sample(questions, args.n + len(skip) + 10)
    sample = [q for q in pool if q["question"] not in skip][: args.n]

    settings = Settings.load()
    generator = common.generator(settings, args.model)
    print(f"| template | fallback | questions | EM | token F1 | s/question |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, template in templates.items():
        started = time.perf_counter()
        em = f1 = 0.0
        for q in sample:
            passage = " ".join(corpus[q["gold_passage"]].split())
            span, _ = read(q["question"], passage, template, generator, not args.no_fallback)
            em += exact_match(span, q["answers"])
            f1 += token_f1(span, q["answers"])
        n = len(sample)
        print(f"| {name} | {'no' if args.no_fallback else 'yes'} | {n} | {100 * em / n:.1f} | "
              f"{100 * f1 / n:.1f} | {(time.perf_counter() - started) / n:.2f} |", flush=True)


if __name__ == "__main__":
    main()
