"""Choosing among answers read from several passages: token F1 of the kept answer on SQuAD dev
questions, for how many reranked passages are read (``read_k``) and the weight of the answer's
confidence (:data:`assistant.rerank.ANSWER_WEIGHT`).

The pipeline is ``assistant ask``'s: convex retrieval of the top 5 passages over the benchmark
index that ``assistant eval --squad`` builds (run that once first), query-likelihood
reranking, then Gemma reads each of the top 3 passages (free answer; a copy-constrained second
reading when the answer is not in the passage). The answer kept for (k, w) is the one among the
top k with the highest :func:`assistant.rerank.answer_value` = reranked score + w · mean token
log-probability of the free reading. ``w = 0`` is the top passage's answer. The questions
exclude the worked examples and the 300-question sample ``assistant eval`` reports (seed 0), so
the weight is not chosen on the reported questions.

    .venv/bin/python benchmarks/answer_choice.py [-n 300] [--seed 21]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import common
from assistant.config import Settings
from assistant.evaluate import doc_id_of, sample
from assistant.extractive import example_questions
from assistant.metrics import exact_match, token_f1
from assistant.prompts import load_template
from assistant.rerank import answer_value, rerank
from reader_variants import read
WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)


def kept(readings: list[dict], k: int, weight: float) -> dict:
    """The reading kept among the first ``k`` (rank order) for confidence weight ``weight``."""
    return max(readings[:k], key=lambda r: answer_value(r["score"], r["confidence"],
                                                        weight=weight))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--bench", type=Path, default=common.BENCH)
    args = parser.parse_args()
    settings = Settings.load()
    retriever = common.retriever(settings, args.bench)
    generator = common.generator(settings)
    template = load_template("extractive.txt")
    questions = common.questions(args.bench)
    skip = set(example_questions(template))
    pool = [q for q in questions if q["question"] not in skip]
    reported = {q["question"] for q in sample(pool, 300, 0)}  # what `assistant eval` reports
    chosen = [q for q in random.Random(args.seed).sample(pool, min(len(pool), args.n + 400))
              if q["question"] not in reported][: args.n]
    table = []
    for number, q in enumerate(chosen, 1):
        hits = retriever.search(q["question"], k=settings.top_k, mode=settings.retrieval_mode).hits
        ranked, _ = rerank(q["question"], hits, generator, k=settings.rerank_k)
        readings = []
        for hit in ranked[:3]:
            span, confidence = read(q["question"], hit.passage.text, template, generator, True,
                                    max_new_tokens=48)
            readings.append({"score": hit.score, "confidence": confidence,
                             "f1": token_f1(span, q["answers"]),
                             "em": exact_match(span, q["answers"]),
                             "gold": doc_id_of(hit.passage.path) == q["gold_passage"]})
        table.append(readings)
        if number % 25 == 0:
            print(f"{number}/{len(chosen)} questions read", flush=True)
    n = len(table)
    print(f"\n{n} questions (seed {args.seed}); gold passage first after reranking: "
          f"{sum(r[0]['gold'] for r in table) / n:.3f}")
    print("\n| passages read (k) | " + " | ".join(f"w = {w:g}" for w in WEIGHTS)
          + " | best of k (oracle) |")
    print("| --- " * (len(WEIGHTS) + 2) + "|")
    for k in (1, 2, 3):
        f1 = [100 * sum(kept(r, k, w)["f1"] for r in table) / n for w in WEIGHTS]
        oracle = 100 * sum(max(x["f1"] for x in r[:k]) for r in table) / n
        print(f"| {k} | " + " | ".join(f"{v:.1f}" for v in f1) + f" | {oracle:.1f} |")
    for k in (2, 3):
        reads = 0
        for r in table:  # as assistant ask reads: skip a passage that cannot win
            best = None
            for x in r[:k]:
                if best is None or x["score"] > best:
                    reads += 1
                    value = answer_value(x["score"], x["confidence"])
                    best = value if best is None else max(best, value)
        em = 100 * sum(kept(r, k, 2.0)["em"] for r in table) / n
        print(f"k = {k}, w = 2: EM {em:.1f}, passages read per question {reads / n:.2f}")


if __name__ == "__main__":
    main()
