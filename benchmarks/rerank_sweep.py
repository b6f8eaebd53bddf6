"""Query-likelihood reranking sweep: recall@1 of the gold passage on SQuAD dev questions after
the generator re-orders the top k retrieved passages, for several k and weights.

Retrieval is the default convex fusion over the benchmark index that ``assistant eval --squad``
builds (run that once first). For each question the generator scores the top 5 passages once
(:meth:`TransformersGenerator.score` with :data:`assistant.rerank.PROMPT`); every (k, weight)
combination is then computed with :func:`assistant.rerank.rerank` from those scores.

    .venv/bin/python benchmarks/rerank_sweep.py [-n 300] [--seed 3]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import common
from assistant.config import Settings
from assistant.evaluate import doc_id_of
from assistant.rerank import rerank


class Cached:
    """Replays likelihoods computed once per question (prefix -> score)."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores

    def score(self, prefixes, continuation):
        return [self.scores[p] for p in prefixes]


class Recording:
    def __init__(self, generator):
        self.generator, self.scores = generator, {}

    def score(self, prefixes, continuation):
        values = self.generator.score(prefixes, continuation)
        self.scores.update(zip(prefixes, values))
        return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--bench", type=Path, default=common.BENCH)
    args = parser.parse_args()
    settings = Settings.load()
    retriever = common.retriever(settings, args.bench)
    generator = common.generator(settings)
    questions = common.questions(args.bench)
    sample = random.Random(args.seed).sample(questions, args.n)
    grid = [(k, w) for k in (2, 3, 5) for w in (0.5, 1.0, 2.0, 4.0, 1000.0)]
    found = {key: 0 for key in [(1, 0.0)] + grid}
    for q in sample:
        hits = retriever.search(q["question"], k=5, mode=settings.retrieval_mode).hits
        recording = Recording(generator)
        rerank(q["question"], hits, recording, k=5)
        cached = Cached(recording.scores)
        for k, weight in found:
            top = rerank(q["question"], hits, cached, k=k, weight=weight)[0][0]
            found[(k, weight)] += doc_id_of(top.passage.path) == q["gold_passage"]
    print("| reranked top k | weight | recall@1 |\n| --- | --- | --- |")
    for (k, weight), count in found.items():
        label = "retrieval only" if k == 1 else f"{k}"
        print(f"| {label} | {weight:g} | {count / len(sample):.3f} |")


if __name__ == "__main__":
    main()
