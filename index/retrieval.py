"""Ranked passage search: dense (FAISS), BM25 (SQLite FTS5), or both fused.

Hybrid search fuses the two rankings with reciprocal rank fusion (RRF, Cormack, Clarke and
Buettcher, SIGIR 2009): ``score(d) = sum over rankings of 1 / (rrf_k + rank(d))`` with
``rrf_k = 60`` as in that paper and ranks starting at 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from .embedding import Embedder
from .store import Passage, Store

Mode = Literal["hybrid", "dense", "bm25"]
MODES: tuple[str, ...] = ("hybrid", "dense", "bm25")
RRF_K = 60


@dataclass(frozen=True)
class Hit:
    """A retrieved passage.

    Attributes:
        passage: the passage and its location.
        score: the ranking score (RRF for hybrid, cosine for dense, BM25 for bm25).
        rank: 1-based rank.
        dense_rank, bm25_rank: rank in each list (None when absent from it).
    """

    passage: Passage
    score: float
    rank: int
    dense_rank: int | None = None
    bm25_rank: int | None = None


@dataclass(frozen=True)
class SearchResult:
    """Hits (best first) and how long the search took (milliseconds)."""

    hits: list[Hit]
    milliseconds: float


def rrf(rankings: list[list[int]], *, k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of ranked id lists -> ``[(id, score)]`` best first.

    Ties keep the order in which ids were first seen (earlier lists first).
    """
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])


class Retriever:
    """Searches a :class:`~index.store.Store` with an :class:`~index.embedding.Embedder`.

    Args:
        store: an opened index.
        embedder: the embedder the index was built with.
        depth: candidates taken from each ranking before fusion (at least ``k``).
    """

    def __init__(self, store: Store, embedder: Embedder, *, depth: int = 100):
        self.store = store
        self.embedder = embedder
        self.depth = depth

    def search(self, query: str, *, k: int = 5, mode: Mode = "hybrid") -> SearchResult:
        """Top-``k`` passages for ``query``.

        Raises:
            ValueError: unknown ``mode`` or ``k < 1``.
        """
        if mode not in MODES:
            raise ValueError(f"unknown retrieval mode {mode!r}; choose one of {', '.join(MODES)}")
        if k < 1:
            raise ValueError("k must be at least 1")
        started = time.perf_counter()
        depth = max(self.depth, k)
        dense: list[tuple[int, float]] = []
        sparse: list[tuple[int, float]] = []
        if mode in ("hybrid", "dense"):
            vector = self.embedder.embed([query])[0]  # (dim,)
            dense = self.store.dense_search(vector, depth)
        if mode in ("hybrid", "bm25"):
            sparse = self.store.bm25_search(query, depth)
        if mode == "dense":
            ranked = dense[:k]
        elif mode == "bm25":
            ranked = sparse[:k]
        else:
            ranked = rrf([[i for i, _ in dense], [i for i, _ in sparse]])[:k]
        dense_rank = {pid: r for r, (pid, _) in enumerate(dense, start=1)}
        bm25_rank = {pid: r for r, (pid, _) in enumerate(sparse, start=1)}
        passages = {p.id: p for p in self.store.passages([pid for pid, _ in ranked])}
        hits = [
            Hit(passages[pid], score, rank, dense_rank.get(pid), bm25_rank.get(pid))
            for rank, (pid, score) in enumerate(ranked, start=1)
            if pid in passages
        ]
        return SearchResult(hits, (time.perf_counter() - started) * 1000)
