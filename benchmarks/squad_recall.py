"""Retrieval recall@k on SQuAD v1.1 dev questions, with the corpus indexed as files.

Writes each of the 2,067 paragraphs of ``shared/bench/squad/corpus.jsonl`` to a Markdown file
(title as heading), indexes them with the real embedder (measuring passages/s), re-runs the
index (which must re-embed nothing), then asks every question of ``questions.dev.jsonl`` in
each retrieval mode and prints a table of recall@1/5/10 and MRR@10 (a question counts as found
when a passage of its gold paragraph's file is in the top k).

    python benchmarks/squad_recall.py [--bench ../shared/bench/squad] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from index.embedding import SentenceTransformerEmbedder
from index.ingest import Indexer
from index.retrieval import Retriever
from index.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path,
                        default=Path(__file__).resolve().parents[1].parent / "shared/bench/squad")
    parser.add_argument("--limit", type=int, default=0, help="questions to use (0: all)")
    parser.add_argument("--work", type=Path, default=None, help="folder for corpus and index")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="squad-bench-"))
    docs = work / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for line in (args.bench / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        p = json.loads(line)
        path = docs / f"{p['_id']}.md"
        if not path.exists():
            path.write_text(f"# {p['title']}\n\n{p['text']}\n", encoding="utf-8")
    questions = [json.loads(l) for l in (args.bench / "questions.dev.jsonl").read_text().splitlines()]
    if args.limit:
        questions = questions[: args.limit]

    t0 = time.perf_counter()
    embedder = SentenceTransformerEmbedder(device="cpu")
    load_s = time.perf_counter() - t0
    indexer = Indexer(work / "index", embedder)
    first = indexer.run([docs], rebuild=True)
    second = indexer.run([docs])
    print(f"embedder load {load_s:.1f} s")
    print(f"index: {first.added} files, {first.passages_added} passages in {first.seconds:.1f} s "
          f"= {first.passages_added / first.seconds:.1f} passages/s "
          f"(embedding {first.embed_seconds:.1f} s)")
    print(f"re-index: {second.passages_added} passages embedded, {second.unchanged} unchanged, "
          f"{second.seconds:.1f} s")

    retriever = Retriever(Store.open(work / "index", embedding_model=embedder.name), embedder)
    print(f"\n{len(questions)} questions\n")
    print(f"| mode   | recall@1 | recall@5 | recall@10 | MRR@10 | median ms |")
    print(f"|--------|----------|----------|-----------|--------|-----------|")
    for mode in ("bm25", "dense", "hybrid"):
        found = {1: 0, 5: 0, 10: 0}
        rr = 0.0
        times = []
        for q in questions:
            result = retriever.search(q["question"], k=10, mode=mode)
            times.append(result.milliseconds)
            gold = q["gold_passage"] + ".md"
            ranks = [h.rank for h in result.hits if h.passage.path.endswith("/" + gold)]
            if ranks:
                rr += 1 / ranks[0]
                for k in found:
                    found[k] += ranks[0] <= k
        n = len(questions)
        times.sort()
        print(f"| {mode:<6} | {found[1] / n:.3f}    | {found[5] / n:.3f}    | {found[10] / n:.3f}     "
              f"| {rr / n:.3f}  | {times[len(times) // 2]:.1f}      |")


if __name__ == "__main__":
    main()
