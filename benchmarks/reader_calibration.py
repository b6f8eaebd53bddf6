"""Calibrate the block reader on SQuAD dev questions that the reported eval does not use.

For each question (the seed-0 sample of 300 that `assistant eval` reports, and the prompt's
worked examples, are excluded) over an index that leaves out a third of the question
articles (``--unanswerable``-style; seed 21 picks them), it records:
- the answer read one passage at a time (``each``) and read once over the top 3 (``fused``),
- the attention mass of the answer on every block, per layer and head, for the three block
  layouts (``start``, ``end``, ``sequence``),
- the abstention features (pmi, loglik, logprob, score, top_support).

Then it prints: token F1 per reading mode; citation accuracy (where the gold passage was
retrieved) of the passage read, of lexical attribution, and of attention per layout, per
layer (mean over heads) and for the best heads; a logistic fit of abstention and a threshold
sweep. Raw records go to a JSON file so the analysis can be re-run without the model:

    .venv/bin/python benchmarks/reader_calibration.py --limit 120 --out /tmp/calib.json
    .venv/bin/python benchmarks/reader_calibration.py --analyse /tmp/calib.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant import evaluate as ev  # noqa: E402
from assistant import metrics  # noqa: E402
from assistant.attribution import best_source  # noqa: E402
from assistant.config import Settings  # noqa: E402
from assistant.extractive import example_questions, extractive_prefix, sentence_with  # noqa: E402
from assistant.reader import (ExtractiveReader, abstain_score, block_text,  # noqa: E402
                              question_text)

LAYOUTS = ("start", "end", "sequence")


def collect(args) -> list[dict]:
    import click

    from assistant.cli import _bench_index, load_embedder, load_generator

    settings = Settings.load()
    bench = Path(args.bench)
    questions = ev.read_jsonl(bench / "questions.dev.jsonl")
    skip = set(example_questions())
    pool = [q for q in questions if q["question"] not in skip]
    reported = {q["question"] for q in ev.sample(pool, 300, 0)}
    pool = [q for q in pool if q["question"] not in reported]
    asked = ev.sample(pool, args.limit, args.seed)
    left_out = ev.left_out_articles(questions, 1 / 3, args.seed)
    leave = frozenset(d["_id"] for d in ev.read_jsonl(bench / "corpus.jsonl")
                      if ev.article_of(d["_id"]) in left_out)
    embedder = load_embedder(settings)
    retriever, _ = _bench_index(settings, bench, embedder, leave_out=leave)
    generator = load_generator(settings, say=lambda m: click.echo(m, err=True))
    each = ExtractiveReader(generator, abstain_below=0, frequencies=retriever.word_passages)
    fused = ExtractiveReader(generator, abstain_below=0, read_mode="fused",
                             frequencies=retriever.word_passages)
    api = generator.blocks
    records = []
    started = time.perf_counter()
    for n, q in enumerate(asked, 1):
        hits = retriever.search(q["question"], k=5, mode="convex").hits
        reading = each.read(q["question"], hits)
        masses, other = {}, None
        if not args.lean:
            prefix = api.prefix(generator.bos + extractive_prefix())
            blocks = api.blocks(prefix, [(h.passage.id, block_text(h.passage.text))
                                         for h in reading.hits])
            for layout in LAYOUTS:
                masses[layout], _ = api.support(prefix, blocks, question_text(q["question"]),
                                                reading.ids, layout=layout)
            other = fused.read(q["question"], hits)
        docs = [ev.doc_id_of(h.passage.path) for h in reading.hits]
        sentence = sentence_with(reading.raw_span, reading.hits[reading.answer.source - 1]
                                 .passage.text) if reading.answer.source else None
        lexical = best_source(sentence or reading.raw_span, [h.passage.text for h in reading.hits])
        lexical_cite = [lexical] if lexical else []
        records.append({
            "question": q["question"], "answers": q["answers"], "gold": q["gold_passage"],
            "answerable": ev.article_of(q["gold_passage"]) not in left_out,
            "docs": docs, "span": reading.raw_span, "source": reading.answer.source,
            "fused_span": other and other.raw_span, "fused_source": other and other.answer.source,
            "features": reading.features, "masses": masses, "lexical": lexical_cite,
            "texts": [h.passage.text for h in reading.hits],
            "seconds": reading.seconds, "encoded": reading.encoded,
        })
        if n % 10 == 0:
            print(f"{n}/{len(asked)} questions, {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)
    return records


def _argmax(values) -> int:
    return max(range(len(values)), key=values.__getitem__)


def analyse(records: list[dict]) -> None:
    answerable = [r for r in records if r["answerable"]]
    retrieved = [r for r in answerable if r["gold"] in r["docs"]]
    print(f"{len(records)} questions: {len(answerable)} answerable "
          f"({len(retrieved)} with the gold passage retrieved), "
          f"{len(records) - len(answerable)} unanswerable\n")
    print("| reading | token F1 (answerable) | EM |\n| --- | --- | --- |")
    for key, label in (("span", "each (one passage at a time)"), ("fused_span", "fused top 3")):
        if any(r[key] is None for r in answerable):  # --lean: no fused reading
            continue
        f1 = sum(metrics.token_f1(r[key], r["answers"]) for r in answerable) / len(answerable)
        em = sum(metrics.exact_match(r[key], r["answers"]) for r in answerable) / len(answerable)
        print(f"| {label} | {100 * f1:.1f} | {100 * em:.1f} |")

    def accuracy(pick) -> float:
        return sum(pick(r) == r["gold"] for r in retrieved) / max(len(retrieved), 1)

    print("\n| citation | accuracy where the gold passage was retrieved |\n| --- | --- |")
    print(f"| passage read | {accuracy(lambda r: r['docs'][r['source'] - 1] if r['source'] else None):.3f} |")
    print(f"| lexical attribution of the span | "
          f"{accuracy(lambda r: r['docs'][r['lexical'][0] - 1] if r['lexical'] else None):.3f} |")
    best_overall = None
    for layout in LAYOUTS if retrieved and retrieved[0]["masses"] else ():  # not with --lean
        layers = len(retrieved[0]["masses"][layout])
        heads = len(retrieved[0]["masses"][layout][0])
        every = accuracy(lambda r: r["docs"][_argmax([
            sum(r["masses"][layout][l][h][b] for l in range(layers) for h in range(heads))
            for b in range(len(r["docs"]))])])
        per_layer = [accuracy(lambda r, l=l: r["docs"][_argmax([
            sum(r["masses"][layout][l][h][b] for h in range(heads))
            for b in range(len(r["docs"]))])]) for l in range(layers)]
        per_head = {(l, h): accuracy(lambda r, l=l, h=h: r["docs"][_argmax(
            r["masses"][layout][l][h])]) for l in range(layers) for h in range(heads)}
        print(f"| attention, {layout} layout, all heads | {every:.3f} |")
        print(f"| attention, {layout} layout, best layer ({_argmax(per_layer)}) | "
              f"{max(per_layer):.3f} |")
        top = sorted(per_head, key=lambda k: -per_head[k])[:8]
        for size in (1, 2, 4, 8):
            chosen = top[:size]
            acc = accuracy(lambda r: r["docs"][_argmax([
                sum(r["masses"][layout][l][h][b] for l, h in chosen)
                for b in range(len(r["docs"]))])])
            print(f"| attention, {layout} layout, top {size} heads {chosen} | {acc:.3f} |")
            if best_overall is None or acc > best_overall[0]:
                best_overall = (acc, layout, chosen)
    if best_overall:
        print(f"\nbest: {best_overall}")

    # abstention: logistic regressions, each judged by 6-fold cross-validation
    unans = len(records) - len(answerable)
    without = sum(metrics.token_f1(r["span"], r["answers"]) for r in answerable) / len(answerable)
    print(f"\nabstention ({unans} unanswerable); thresholds on the cross-validated probability")
    print("| features | weights (all records; bias first) | threshold | abstention P | R | F1 | "
          "answerable abstained | F1 answerable (with / without) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    ys = [1.0 if r["answerable"] else 0.0 for r in records]
    folds = 6
    order = sorted(range(len(records)), key=lambda i: (i * 7919) % len(records))
    for names in FEATURE_SETS:
        if any(name not in records[0]["features"] for name in names):
            continue
        xs = [[r["features"][name] for name in names] for r in records]
        held = [0.0] * len(records)
        for k in range(folds):
            test = set(order[k::folds])
            train = [i for i in order if i not in test]
            w = _logistic([xs[i] for i in train], [ys[i] for i in train])
            for i in test:
                held[i] = abstain_score(dict(zip(names, xs[i])), w, names)
        w = _logistic(xs, ys)
        for threshold in (0.3, 0.35, 0.4, 0.45, 0.5, 0.6):
            said = [r for r, p in zip(records, held) if p < threshold]
            right = sum(not r["answerable"] for r in said)
            p = right / len(said) if said else 0.0
            rec = right / unans if unans else 0.0
            f = 2 * p * rec / (p + rec) if p + rec else 0.0
            with_ = sum(0.0 if r in said else metrics.token_f1(r["span"], r["answers"])
                        for r in answerable) / len(answerable)
            print(f"| {' + '.join(names)} | {[round(v, 3) for v in w]} | {threshold} | "
                  f"{100 * p:.1f} | {100 * rec:.1f} | {100 * f:.1f} | "
                  f"{sum(r['answerable'] for r in said)} | {100 * with_:.1f} / {100 * without:.1f} |")
    for name in ("pmi", "loglik", "logprob", "score", "top_support", "cover"):
        a = sorted(r["features"][name] for r in records if r["answerable"] and name in r["features"])
        u = sorted(r["features"][name] for r in records if not r["answerable"]
                   and name in r["features"])
        if a and u:
            print(f"{name}: answerable median {a[len(a) // 2]:.3f}, unanswerable median "
                  f"{u[len(u) // 2]:.3f}")


FEATURE_SETS = (("pmi", "logprob"), ("pmi", "cover"), ("pmi", "logprob", "cover"))
"""The abstention models compared: the previous default's features, and with ``cover``."""


def _logistic(xs: list[list[float]], ys: list[float], steps: int = 4000,
              rate: float = 0.1) -> list[float]:
    """Logistic regression by gradient descent: weights, bias first."""
    w = [0.0] * (len(xs[0]) + 1)
    for _ in range(steps):
        grad = [0.0] * len(w)
        for x, y in zip(xs, ys):
            z = w[0] + sum(wi * xi for wi, xi in zip(w[1:], x))
            p = 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))
            for i, xi in enumerate([1.0, *x]):
                grad[i] += (p - y) * xi
        w = [wi - rate * g / len(xs) for wi, g in zip(w, grad)]
    return w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default=str(Path(__file__).resolve().parents[2] / "shared/bench/squad"))
    parser.add_argument("--limit", type=int, default=120)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--out", default="reader_calibration.json")
    parser.add_argument("--analyse", help="analyse a saved JSON file instead of collecting")
    parser.add_argument("--lean", action="store_true",
                        help="only the answer read one passage at a time and its features (no "
                             "fused reading, no attention per layout): about half the time")
    args = parser.parse_args()
    if args.analyse:
        analyse(json.loads(Path(args.analyse).read_text()))
        return
    records = collect(args)
    Path(args.out).write_text(json.dumps(records))
    analyse(records)


if __name__ == "__main__":
    main()
