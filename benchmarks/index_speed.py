"""Embedding speed by runtime, on the same passages, in one run: torch (sentence-transformers,
float32: the embedder before issue 15), ONNX Runtime fused float32, ONNX Runtime int8.

Each runtime runs in its own process (so its peak RSS is its own), embeds the same passages
(SQuAD dev paragraphs and SciFact abstracts, as they are indexed: batches of 64, sorted by
length) after one warm-up batch, and reports passages/s, peak RSS and how close its vectors
are to torch's (cosine). Run it alone on the machine.

    .venv/bin/python benchmarks/index_speed.py [--passages 1024]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared/bench"
RUNTIMES = ("torch", "onnx-fp32", "onnx-int8")


def passages(n: int) -> list[str]:
    """``n`` real passages: half SQuAD paragraphs, half SciFact abstracts (title + text)."""
    sys.path.insert(0, str(ROOT))
    from assistant.evaluate import read_jsonl

    squad = [d["text"] for d in read_jsonl(SHARED / "squad/corpus.jsonl")][: n // 2]
    scifact = [f"{d.get('title', '')}\n{d['text']}"
               for d in read_jsonl(SHARED / "scifact/corpus.jsonl")][: n - len(squad)]
    return squad + scifact


def worker(runtime: str, texts_file: str, out_file: str) -> None:
    """Embed the texts with ``runtime``; write the vectors and timings."""
    sys.path.insert(0, str(ROOT))
    from assistant.config import Settings
    from index.embedding import SentenceTransformerEmbedder
    from index.onnx_embedding import OnnxEmbedder

    texts = json.loads(Path(texts_file).read_text())
    started = time.perf_counter()
    if runtime == "torch":
        embedder = SentenceTransformerEmbedder(device="cpu")
    else:
        embedder = OnnxEmbedder("all-MiniLM-L6-v2", runtime=runtime,
                                cache_dir=Settings.load().models_dir)
    load_s = time.perf_counter() - started
    embedder.embed(texts[:64])  # warm-up
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    started = time.perf_counter()
    for start in range(0, len(order), 64):
        rows = order[start : start + 64]
        vectors[rows] = embedder.embed([texts[i] for i in rows], batch_size=64)
    seconds = time.perf_counter() - started
    np.save(out_file + ".npy", vectors)
    Path(out_file).write_text(json.dumps({
        "runtime": runtime, "seconds": seconds, "load_s": load_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=1024)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    texts = passages(args.passages)
    with tempfile.TemporaryDirectory() as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(texts))
        rows = {}
        for runtime in RUNTIMES:
            out = str(Path(tmp) / runtime)
            subprocess.run([sys.executable, __file__, "--worker", runtime, str(texts_file), out],
                           check=True)
            rows[runtime] = json.loads(Path(out).read_text())
            rows[runtime]["vectors"] = np.load(out + ".npy")
    ref = rows["torch"]
    print(f"\n{len(texts)} passages (SQuAD paragraphs + SciFact abstracts), batches of 64\n")
    print("| runtime | passages/s | × torch | peak RSS MB | load s | cosine to torch min / mean |")
    print("|---|---|---|---|---|---|")
    for runtime, row in rows.items():
        rate = len(texts) / row["seconds"]
        cos = (row["vectors"] * ref["vectors"]).sum(1)
        print(f"| {runtime} | {rate:.1f} | {ref['seconds'] / row['seconds']:.2f} | "
              f"{row['peak_rss_mb']:.0f} | {row['load_s']:.1f} | {cos.min():.4f} / {cos.mean():.4f} |")


if __name__ == "__main__":
    main()
