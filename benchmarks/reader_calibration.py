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
from assistant.reader import ExtractiveReader, block_text, question_text  # noqa: E402

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
    each = ExtractiveReader(generator, abstain_below=0)
    fused = ExtractiveReader(generator, abstain_below=0, read_mode="fused")
    api = generator.blocks
    records = []
    started = time.perf_counter()
    for n, q in enumerate(asked, 1):
        hits = retriever.search(q["question"], k=5, mode="convex").hits
        reading = each.read(q["question"], hits)
        prefix = api.prefix(generator.bos + extractive_prefix())
        blocks = api.blocks(prefix, [(h.passage.id, block_text(h.passage.text))
                                     for h in reading.hits])
        masses = {}
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
            "fused_span": other.raw_span, "fused_source": other.answer.source,
            "features": reading.features, "masses": masses, "lexical": lexical_cite,
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
    for layout in LAYOUTS:
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
    print(f"\nbest: {best_overall}")

    # abstention: logistic regression on (pmi, logprob)
    xs = [(r["features"]["pmi"], r["features"]["logprob"]) for r in records]
    ys = [1.0 if r["answerable"] else 0.0 for r in records]
    w = [0.0, 0.0, 0.0]
    for _ in range(4000):
        grad = [0.0, 0.0, 0.0]
        for (a, b), y in zip(xs, ys):
            p = 1 / (1 + math.exp(-(w[0] + w[1] * a + w[2] * b)))
            for i, x in enumerate((1.0, a, b)):
                grad[i] += (p - y) * x
        w = [wi - 0.05 * g / len(xs) for wi, g in zip(w, grad)]
    print(f"\nabstention weights (bias, pmi, logprob): {[round(v, 3) for v in w]}")
    print("| threshold | abstention P | R | F1 | answerable abstained | F1 answerable (with / without) |")
    print("| --- | --- | --- | --- | --- | --- |")
    unans = len(records) - len(answerable)
    for threshold in (0.3, 0.4, 0.5, 0.6, 0.7):
        said = [r for r, (a, b) in zip(records, xs)
                if 1 / (1 + math.exp(-(w[0] + w[1] * a + w[2] * b))) < threshold]
        right = sum(not r["answerable"] for r in said)
        p = right / len(said) if said else 0.0
        rec = right / unans if unans else 0.0
        f = 2 * p * rec / (p + rec) if p + rec else 0.0
        with_ = sum(0.0 if r in said else metrics.token_f1(r["span"], r["answers"])
                    for r in answerable) / len(answerable)
        without = sum(metrics.token_f1(r["span"], r["answers"]) for r in answerable) / len(answerable)
        print(f"| {threshold} | {100 * p:.1f} | {100 * rec:.1f} | {100 * f:.1f} | "
              f"{sum(r['answerable'] for r in said)} | {100 * with_:.1f} / {100 * without:.1f} |")
    for name in ("pmi", "loglik", "logprob", "score", "top_support"):
        a = sorted(r["features"][name] for r in records if r["answerable"])
        u = sorted(r["features"][name] for r in records if not r["answerable"])
        if a and u:
            print(f"{name}: answerable median {a[len(a) // 2]:.3f}, unanswerable median "
                  f"{u[len(u) // 2]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default=str(Path(__file__).resolve().parents[2] / "shared/bench/squad"))
    parser.add_argument("--limit", type=int, default=120)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--out", default="reader_calibration.json")
    parser.add_argument("--analyse", help="analyse a saved JSON file instead of collecting")
    args = parser.parse_args()
    if args.analyse:
        analyse(json.loads(Path(args.analyse).read_text()))
        return
    records = collect(args)
    Path(args.out).write_text(json.dumps(records))
    analyse(records)


if __name__ == "__main__":
    main()
