"""Peak memory of an `index` run as the corpus grows: does it grow beyond the FAISS index?

Generates N passages of text (Markdown files of 20 passages, sentences drawn from SQuAD
paragraphs), indexes them in a fresh process, and reports peak RSS, the FAISS index's own size
(N × 384 × 4 bytes) and the rest, plus the index's size on disk and the largest it was during
the run. The embedder is a stand-in that hashes words into 384 dimensions (the same vector
size as MiniLM), so the run measures the walk, chunking, store and FAISS, not the model (a
constant: see index_speed.py for the model's own peak RSS), and 100 k passages take minutes,
not the hours real embedding would.

    .venv/bin/python benchmarks/index_memory.py [--sizes 10000,50000,100000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class HashEmbedder:
    """Words hashed into ``dim`` buckets, L2-normalised (a stand-in for the model)."""

    name, dim, runtime = "hash-384", 384, "hash"

    def embed(self, texts, *, batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest()[:8], 16) % self.dim] += 1
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def count_tokens(self, texts) -> list[int]:
        return [len(t.split()) for t in texts]


def write_corpus(folder: Path, passages: int, seed: int = 0) -> None:
    from assistant.evaluate import read_jsonl

    sentences = [s for d in read_jsonl(ROOT.parent / "shared/bench/squad/corpus.jsonl")
                 for s in re.split(r"(?<=\.)\s+", d["text"]) if len(s) > 40]
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for f in range(0, passages, 20):
        sections = [f"## Part {p}\n\n" + " ".join(rng.sample(sentences, 6))
                    for p in range(min(20, passages - f))]
        (folder / f"doc{f // 20:06d}.md").write_text(f"# Document {f}\n\n" + "\n\n".join(sections))


def worker(folder: str, index: str, out: str) -> None:
    from index.ingest import Indexer

    started = time.perf_counter()
    report = Indexer(Path(index), HashEmbedder(), chunk_tokens=200, chunk_overlap=40).run(
        [Path(folder)])
    Path(out).write_text(json.dumps({
        "passages": report.passages_added, "seconds": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "disk_mb": report.disk_bytes / 2**20, "peak_disk_mb": report.peak_disk_bytes / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000,100000")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            write_corpus(Path(tmp) / "docs", size)
            out = Path(tmp) / "out.json"
            subprocess.run([sys.executable, __file__, "--worker", str(Path(tmp) / "docs"),
                            str(Path(tmp) / "index"), str(out)], check=True)
            rows.append(json.loads(out.read_text()))
    print("\n| passages | seconds | peak RSS MB | FAISS MB | RSS − FAISS MB | index on disk MB "
          "| largest on disk during the run MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        faiss_mb = r["passages"] * 384 * 4 / 2**20
        print(f"| {r['passages']:,} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{faiss_mb:.0f} | {r['peak_rss_mb'] - faiss_mb:.0f} | {r['disk_mb']:.0f} | "
              f"{r['peak_disk_mb']:.0f} |")


if __name__ == "__main__":
    main()
