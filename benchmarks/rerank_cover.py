"""Does the question's word coverage help the block reader's reranking? recall@1 of the gold
passage among the top 5 retrieved, on SQuAD dev questions outside the reported sample.

For each question the reader's own reranking inputs are recorded once (the retrieval scores,
the log-likelihood of the question after each passage block, as
:meth:`assistant.reader.ExtractiveReader.read` computes them) with each passage's coverage of
the question's content words (:func:`assistant.reader.coverage`, IDF-weighted). Then
``min_max(retrieval) + WEIGHT * min_max(likelihood) + c * coverage`` is scored for several
``c`` (0 is today's :func:`assistant.rerank.combine`), with 5-fold cross-validation of ``c``.

    .venv/bin/python benchmarks/rerank_cover.py [--limit 300] [--seed 33] [--out FILE]
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import common
from assistant import evaluate as ev
from assistant.extractive import extractive_prefix
from assistant.reader import LEAD, TAIL, block_text, coverage
from assistant.rerank import WEIGHT
from index.retrieval import min_max

GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def collect(args) -> list[dict]:
    import click

    asked = common.outside_reported(Path(args.bench), args.limit, args.seed)
    retriever, generator = common.bench_models(Path(args.bench))
    api = generator.blocks
    prefix = api.prefix(generator.bos + extractive_prefix())
    records, started = [], time.perf_counter()
    for n, q in enumerate(asked, 1):
        hits = retriever.search(q["question"], k=5, mode="convex").hits
        blocks = api.blocks(prefix, [(h.passage.id, block_text(h.passage.text)) for h in hits])
        scored = api.score(prefix, blocks, lead=LEAD, target=" " + " ".join(q["question"].split()),
                           tail=TAIL)
        records.append({
            "question": q["question"], "gold": q["gold_passage"],
            "docs": [ev.doc_id_of(h.passage.path) for h in hits],
            "retrieval": [h.score for h in hits], "loglik": list(scored.loglik),
            "cover": [coverage(q["question"], [h.passage.text], retriever.word_passages)
                      for h in hits],
        })
        if n % 25 == 0:
            click.echo(f"{n}/{len(asked)} questions, {time.perf_counter() - started:.0f} s",
                       err=True)
    return records


def top(record: dict, c: float) -> int:
    """The index of the passage ranked first with coverage weight ``c``."""
    n = len(record["docs"])
    retrieval = min_max(list(enumerate(record["retrieval"])))
    fit = min_max(list(enumerate(record["loglik"])))
    value = [retrieval[i] + WEIGHT * fit[i] + c * record["cover"][i] for i in range(n)]
    return max(range(n), key=lambda i: value[i])


def recall_at_1(records: list[dict], c: float) -> float:
    return sum(r["docs"][top(r, c)] == r["gold"] for r in records) / max(len(records), 1)


def main() -> None:
    records = common.recorded(__doc__.splitlines()[0], collect, limit=300)
    found = [r for r in records if r["gold"] in r["docs"]]
    print(f"{len(records)} questions, gold passage among the top 5 for {len(found)}\n")
    print("| coverage weight c | recall@1 (gold retrieved) |\n| ---: | ---: |")
    for c in GRID:
        print(f"| {c:g} | {100 * recall_at_1(found, c):.1f} % |")
    folds = 5
    order = list(range(len(found)))
    random.Random(0).shuffle(order)
    hits = 0
    chosen = []
    for f in range(folds):
        test = [found[i] for i in order[f::folds]]
        train = [found[i] for k, i in enumerate(order) if k % folds != f]
        best = max(GRID, key=lambda c: (recall_at_1(train, c), -c))
        chosen.append(best)
        hits += sum(r["docs"][top(r, best)] == r["gold"] for r in test)
    print(f"\n{folds}-fold cross-validated: c chosen {chosen}, recall@1 "
          f"{100 * hits / len(found):.1f} % (c = 0: {100 * recall_at_1(found, 0.0):.1f} %)")


if __name__ == "__main__":
    main()
