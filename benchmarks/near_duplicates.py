"""Does collapsing near-identical passages at query time cost recall? Both ways, one run.

On the SQuAD dev questions and the benchmark index `assistant eval --squad` builds (run it
once first), each question is searched with near-duplicate collapsing on (the default:
word-set Jaccard >= 0.9) and off, with the same query embedding; prints recall@1/5/10 and
MRR@10 of the gold passage for both, and how many top-5 lists changed.

    .venv/bin/python benchmarks/near_duplicates.py [--squad ../shared/bench/squad] [--mode convex]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import index.retrieval as retrieval  # noqa: E402
from assistant.config import Settings  # noqa: E402
from assistant.evaluate import doc_id_of, read_jsonl  # noqa: E402
from index.embedding import SentenceTransformerEmbedder  # noqa: E402
from index.store import Store  # noqa: E402


class CachedEmbedder:
    """The embedder, remembering each query's vector so both settings embed it once."""

    def __init__(self, embedder):
        self.embedder, self.cache = embedder, {}
        self.name, self.dim = embedder.name, embedder.dim

    def embed(self, texts, **kw):
        key = tuple(texts)
        if key not in self.cache:
            self.cache[key] = self.embedder.embed(list(texts), **kw)
        return self.cache[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--squad", type=Path, default=Path("../shared/bench/squad"))
    parser.add_argument("--mode", default="convex")
    args = parser.parse_args()
    settings = Settings.load()
    key = hashlib.sha1(str(args.squad.resolve()).encode()).hexdigest()[:8]
    work = Path(settings.data_dir) / "bench" / f"{args.squad.name}-{key}"
    index_dir = work / f"index-all-MiniLM-L6-v2-{settings.chunk_tokens}-{settings.chunk_overlap}"
    store = Store.open(index_dir)
    gold_of = {}  # corpus id -> passage ids of the file it was written to
    for pid, path in store.db.execute(
            "SELECT p.id, d.path FROM passages p JOIN documents d ON d.id = p.document_id"):
        gold_of.setdefault(doc_id_of(path), set()).add(pid)
    questions = read_jsonl(sorted(args.squad.glob("questions*.jsonl"))[0])
    retriever = retrieval.Retriever(store, CachedEmbedder(SentenceTransformerEmbedder(device="cpu")))
    rows, changed = {}, 0
    for label, threshold in (("collapse on (0.9)", retrieval.NEAR_DUPLICATE), ("off", 1.01)):
        retrieval.NEAR_DUPLICATE = threshold
        near = retrieval.near_duplicate
        retrieval.near_duplicate = lambda a, b, threshold=threshold: near(a, b, threshold=threshold)
        found = {1: 0, 5: 0, 10: 0}
        mrr = 0.0
        tops = []
        for q in questions:
            hits = retriever.search(q["question"], k=10, mode=args.mode).hits
            gold = gold_of.get(q["gold_passage"], set())
            ranks = [h.rank for h in hits if h.passage.id in gold]
            for k in found:
                found[k] += bool(ranks and ranks[0] <= k)
            mrr += 1 / ranks[0] if ranks else 0.0
            tops.append([h.passage.id for h in hits[:5]])
        retrieval.near_duplicate = near
        rows[label] = (found, mrr / len(questions), tops)
    on, off = rows["collapse on (0.9)"][2], rows["off"][2]
    changed = sum(a != b for a, b in zip(on, off))
    print(f"SQuAD dev, {len(questions)} questions, {args.mode} retrieval")
    print(f"{'near-duplicates':<20} {'recall@1':>9} {'recall@5':>9} {'recall@10':>10} {'MRR@10':>7}")
    for label, (found, mrr, _) in rows.items():
        n = len(questions)
        print(f"{label:<20} {found[1] / n:>9.3f} {found[5] / n:>9.3f} {found[10] / n:>10.3f} "
              f"{mrr:>7.3f}")
    print(f"top-5 lists that differ: {changed} of {len(questions)}")


if __name__ == "__main__":
    main()
