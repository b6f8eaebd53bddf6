"""How a reading that is not verbatim in its passage is aligned to the passage's words:
token F1 and exact match of the aligned span under alignment rules, on SQuAD dev questions
outside the reported sample.

For each question the block reader reads as ``assistant eval`` does; the reading's raw text
(the decoded answer tokens) and its passage are recorded once (``--out``), then every rule is
applied to the same readings offline: :func:`assistant.extractive.align_span`'s ``ties``
rules, ``shorter`` (the rule before: of spans with equal token F1, the shorter) and
``answer_order`` (the span holding the answer's earliest word, then more of its characters,
then the shorter; the default now), and ``answer_order`` with a date the reading cut short
completed for questions asking when (:func:`assistant.extractive.complete_date`: "2010" in
"In October 2010" is "October 2010").

    .venv/bin/python benchmarks/span_alignment.py [--limit 150] [--seed 33] [--out FILE]
"""

from __future__ import annotations

import time
from pathlib import Path

import common
from assistant import metrics
from assistant.extractive import align_span, complete_date


def collect(args) -> list[dict]:
    import click

    from assistant.reader import ExtractiveReader

    asked = common.outside_reported(Path(args.bench), args.limit, args.seed)
    retriever, generator = common.bench_models(Path(args.bench))
    reader = ExtractiveReader(generator, abstain_below=0, frequencies=retriever.word_passages)
    records, started = [], time.perf_counter()
    for n, q in enumerate(asked, 1):
        hits = retriever.search(q["question"], k=5, mode="convex").hits
        reading = reader.read(q["question"], hits, support=False)
        source = reading.answer.source or 1
        records.append({"question": q["question"], "answers": q["answers"],
                        "raw": generator.tokenizer.decode(list(reading.ids)),
                        "passage": reading.hits[source - 1].passage.text,
                        "span": reading.answer.span})
        if n % 25 == 0:
            click.echo(f"{n}/{len(asked)} questions, {time.perf_counter() - started:.0f} s",
                       err=True)
    return records


def main() -> None:
    records = common.recorded(__doc__.splitlines()[0], collect, limit=150)
    for r in records:  # as extractive.finish reads them: the first line, white space collapsed
        r["raw"] = r["raw"].strip().split("\n")[0].strip()
        r["passage"] = " ".join(r["passage"].split())
    raw = [r for r in records if r["raw"].lower() not in r["passage"].lower()]
    print(f"{len(records)} readings; {len(raw)} not verbatim in their passage\n")
    print("| rule | token F1 (all) | exact match (all) | spans changed |\n| --- | ---: | ---: | ---: |")
    base = None
    for ties, dates in (("shorter", False), ("answer_order", False), ("answer_order", True)):
        spans = [align_span(r["raw"], r["passage"], ties=ties) for r in records]
        if dates:
            spans = [complete_date(s, r["passage"], r["question"])
                     for s, r in zip(spans, records)]
        f1 = sum(metrics.token_f1(s, r["answers"]) for s, r in zip(spans, records))
        em = sum(metrics.exact_match(s, r["answers"]) for s, r in zip(spans, records))
        changed = "–" if base is None else str(sum(a != b for a, b in zip(base, spans)))
        base = base or spans
        rule = ties + (", dates completed" if dates else "")
        print(f"| {rule} | {100 * f1 / len(records):.2f} | {100 * em / len(records):.2f} | "
              f"{changed} |")

if __name__ == "__main__":
    main()
