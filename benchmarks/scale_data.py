"""Vectors for the scale benchmark (benchmarks/scale.py): real MiniLM embeddings as seeds, and
millions of synthetic vectors with their distribution, streamed to disk.

Seeds: the embedded all-MiniLM-L6-v2 (the runtime `assistant index` uses) embeds the SQuAD dev
paragraphs and SciFact abstracts (7,250 real passages) and the SQuAD dev questions and SciFact
claims (4,030 real queries). Synthetic passage i is ``normalise(c + s · V diag(√λ) z)``: c a
real passage embedding drawn at random, V and λ the principal axes and variances of the real
passages, z ~ N(0, I), and s set so that a synthetic passage has cosine 0.7 with its seed on
average, so each real passage becomes a topic of paraphrase-like neighbours with the real
data's covariance (isotropic noise would make the set far harder to index than real text,
whose embeddings vary along few directions). Queries are the real query embeddings.

Files (in ``--dir``, default ``<data dir>/bench/scale``): ``seeds.npz``; ``vectors-N.f32``
(N × 384 float32, row i = id i); ``truth-N.npy`` (exact top-100 ids per query by a chunked
scan, never holding the vectors in RAM).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "bench"
DIM = 384
CHUNK = 250_000
TARGET_COSINE = 0.7


def _texts(path: Path, *fields: str) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            out.append(" ".join(str(row.get(k, "")) for k in fields).strip())
    return out


def seeds(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Real passage and query embeddings ``(7250, 384)``, ``(4030, 384)`` float32, unit length
    (embedded once, then read from ``seeds.npz``)."""
    cache = folder / "seeds.npz"
    if cache.exists():
        data = np.load(cache)
        return data["passages"], data["queries"]
    from assistant.cli import load_embedder
    from assistant.config import Settings

    embedder = load_embedder(Settings.load(), for_index=True)
    passages = (_texts(SHARED / "squad/corpus.jsonl", "text")
                + _texts(SHARED / "scifact/corpus.jsonl", "title", "text"))
    queries = (_texts(SHARED / "squad/questions.dev.jsonl", "question")
               + _texts(SHARED / "scifact/queries.jsonl", "text"))
    p = embedder.embed(passages).astype(np.float32)
    q = embedder.embed(queries).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(cache, passages=p, queries=q)
    return p, q


def vectors(folder: Path, n: int, seed: int = 0) -> np.memmap:
    """``n`` synthetic passage vectors (see the module docstring), written once to
    ``vectors-n.f32`` in chunks of :data:`CHUNK` rows (memory: one chunk); returns a
    read-only memmap ``(n, 384)`` float32."""
    path = folder / f"vectors-{n}.f32"
    if not path.exists() or path.stat().st_size != n * DIM * 4:
        real, _ = seeds(folder)
        centred = real - real.mean(0)
        variances, axes = np.linalg.eigh(np.cov(centred, rowvar=False))
        basis = (axes * np.sqrt(np.clip(variances, 0, None))).T.astype(np.float32)  # (384, 384)
        scale = np.sqrt((1 / TARGET_COSINE**2 - 1) / variances.clip(0).sum())
        rng = np.random.default_rng(seed)
        tmp = path.with_suffix(".tmp")
        out = np.memmap(tmp, dtype=np.float32, mode="w+", shape=(n, DIM))
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            centre = real[rng.integers(0, len(real), m)]
            x = centre + scale * (rng.standard_normal((m, DIM), dtype=np.float32) @ basis)
            out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out.flush()
        del out
        tmp.rename(path)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(n, DIM))


def truth(folder: Path, n: int, queries: np.ndarray, k: int = 100) -> np.ndarray:
    """Exact inner-product top-``k`` ids ``(len(queries), k)`` over ``vectors(n)``, by a scan
    of :data:`CHUNK` rows at a time (cached in ``truth-n-q.npy``)."""
    path = folder / f"truth-{n}-{len(queries)}.npy"
    if path.exists():
        return np.load(path)
    data = vectors(folder, n)
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, n, CHUNK):
        block = np.asarray(data[start:start + CHUNK])
        scores = queries @ block.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], axis=1)
        i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argpartition(-s, k, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, keep, 1), np.take_along_axis(i, keep, 1)
    order = np.argsort(-best_s, axis=1)
    best_i = np.take_along_axis(best_i, order, 1)
    np.save(path, best_i)
    return best_i
