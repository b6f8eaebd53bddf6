"""Speed-ups checked against the reference: the same SQuAD dev questions read by the float32,
full-output-head block reader and by each faster variant, in one process, on the same
retrieved passages.

For each variant: the share of questions whose answer (the reader's span) is identical to the
reference's, exact match and token F1 of both, and the reading time (reranking, readings and
attention support; blocks are not counted: each variant computes its own once, and a variant of
the same model finds them in the shared LRU). The questions are the 300 that ``assistant eval
--squad`` reports (seed 0, worked examples excluded): this checks that an answer did not change,
nothing is tuned on it. Run ``assistant eval --squad ../shared/bench/squad`` once first (it
builds the benchmark index).

    .venv/bin/python benchmarks/same_answers.py [-n 300] [--variants passages,int8]

Variants: an ``output_head`` (``passages``: readings compute only their prompt's tokens'
logits; ``screened``: an int4 copy of the head, exact near the top; ``full``: the reference),
and ``<precision>`` or ``<precision>+<output_head>`` for the generator loaded with
``precision`` (``fp16``, ``mixed``, ``bf16``, ``int8``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import common
from assistant.config import OUTPUT_HEADS, Settings
from assistant.evaluate import sample
from assistant.extractive import example_questions
from assistant.metrics import exact_match, token_f1
from assistant.prompts import load_template
from assistant.reader import ExtractiveReader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="passages")
    parser.add_argument("--bench", type=common.Path, default=common.BENCH)
    parser.add_argument("--show", action="store_true", help="Print each answer that differs.")
    parser.add_argument("--not-reported", action="store_true",
                        help="Draw from the questions `assistant eval` does not report (seed 0 "
                             "sample left out): for looking at differences without tuning on "
                             "the reported ones.")
    args = parser.parse_args()
    settings = Settings.load()
    retriever = common.retriever(settings, args.bench)
    skip = set(example_questions(load_template("extractive.txt")))
    pool = [q for q in common.questions(args.bench) if q["question"] not in skip]
    if args.not_reported:
        reported = {q["question"] for q in sample(pool, 300, 0)}
        pool = [q for q in pool if q["question"] not in reported]
    chosen = sample(pool, args.n, args.seed)

    generators: dict[str, object] = {"fp32": common.generator(settings, precision="fp32")}
    readers = {"full": ExtractiveReader(generators["fp32"], output_head="full")}
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        precision, _, head = name.partition("+")
        if precision in OUTPUT_HEADS:
            precision, head = "fp32", precision
        if precision not in generators:
            generators[precision] = common.generator(settings, precision=precision)
        readers[name] = ExtractiveReader(generators[precision], output_head=head or "full")

    rows = {name: {"same": 0, "em": [], "f1": [], "seconds": []} for name in readers}
    for number, q in enumerate(chosen, 1):
        hits = retriever.search(q["question"], k=settings.top_k, mode=settings.retrieval_mode).hits
        reference = None
        for name, reader in readers.items():
            reading = reader.read(q["question"], hits)
            span = reading.raw_span
            reference = span if reference is None else reference
            row = rows[name]
            row["same"] += span == reference
            if args.show and span != reference:
                print(f"{name}: {q['question']!r}: {reference!r} -> {span!r} "
                      f"(gold {q['answers'][:2]})", flush=True)
            row["em"].append(exact_match(span, q["answers"]))
            row["f1"].append(token_f1(span, q["answers"]))
            row["seconds"].append(sum(v for k, v in reading.seconds.items() if k != "encode"))
        if number % 25 == 0 or number == len(chosen):
            table(rows, number, args.seed)


def table(rows: dict, n: int, seed: int) -> None:
    """The comparison so far (``n`` questions), as a Markdown table."""
    print(f"\n{n} SQuAD dev questions (seed {seed}), {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| reader | same answer as full fp32 | EM | token F1 | reading s (median) | "
          "reading s (mean) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {100 * row['same'] / n:.1f} % | {100 * statistics.mean(row['em']):.1f}"
              f" | {100 * statistics.mean(row['f1']):.1f} | "
              f"{statistics.median(row['seconds']):.2f} | {statistics.mean(row['seconds']):.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
