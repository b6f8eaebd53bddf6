"""Ranked passage search: dense (FAISS), BM25 (SQLite FTS5), or both fused.

Two ways to fuse the dense and BM25 rankings:

- ``convex`` (the default): a convex combination of min-max-normalised scores,
  ``alpha * dense + (1 - alpha) * bm25``, each list scaled to 0..1 over its top ``depth``
  candidates (a passage missing from one list gets 0 there). Bruch, Gai and Ingber, "An
  Analysis of Fusion Functions for Hybrid Retrieval" (ACM TOIS 2023) found it beats RRF once
  ``alpha`` is tuned; ``alpha`` here was tuned with ``assistant eval`` (see BENCHMARKS.md).
- ``hybrid``: reciprocal rank fusion (RRF, Cormack, Clarke and Buettcher, SIGIR 2009),
  ``score(d) = sum over rankings of 1 / (rrf_k + rank(d))`` with ``rrf_k = 60`` as in that
  paper and ranks starting at 1.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Literal, Sequence

from .embedding import Embedder
from .store import Passage, Store

Mode = Literal["convex", "hybrid", "dense", "bm25"]
MODES: tuple[str, ...] = ("convex", "hybrid", "dense", "bm25")
RRF_K = 60
NEAR_DUPLICATE = 0.9
"""Word-set Jaccard similarity at which two retrieved passages count as the same thing."""
_WORD = re.compile(r"\w+")
ALPHA = 0.5
"""Weight of the dense scores in ``convex`` fusion (tuned on the dev sets, BENCHMARKS.md)."""


@dataclass(frozen=True)
class Hit:
    """A retrieved passage.

    Attributes:
        passage: the passage and its location.
        score: the ranking score (fused 0..1 for convex, RRF for hybrid, cosine for dense,
            BM25 for bm25).
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


def near_duplicate(a: set[str], b: set[str], *, threshold: float = NEAR_DUPLICATE) -> bool:
    """True when two passages' word sets have a Jaccard similarity of at least
    ``threshold`` (|a ∩ b| / |a ∪ b|; Broder 1997 uses the same resemblance measure on
    shingles). Empty sets are never duplicates."""
    if not a or not b:
        return False
    if min(len(a), len(b)) < threshold * max(len(a), len(b)):
        return False  # |a ∩ b| / |a ∪ b| <= min / max: cannot reach the threshold
    return len(a & b) >= threshold * len(a | b)


def min_max(scores: list[tuple[int, float]]) -> dict[int, float]:
    """``{id: (s - min) / (max - min)}`` over one ranked list (all 1.0 when the scores are equal)."""
    if not scores:
        return {}
    values = [s for _, s in scores]
    lo, hi = min(values), max(values)
    return {i: (s - lo) / (hi - lo) if hi > lo else 1.0 for i, s in scores}


def convex(dense: list[tuple[int, float]], sparse: list[tuple[int, float]], *,
           alpha: float = ALPHA, bm25_only: set[int] = frozenset()) -> list[tuple[int, float]]:
    """Convex combination ``alpha * mm(dense) + (1 - alpha) * mm(bm25)`` -> ``[(id, score)]``
    best first (mm = :func:`min_max`; an id absent from a list scores 0 there). Ids in
    ``bm25_only`` (passages not embedded yet) are scored by ``mm(bm25)`` alone, so they are
    not ranked down for lacking a vector."""
    d, b = min_max(dense), min_max(sparse)
    scores = {i: b.get(i, 0.0) if i in bm25_only else
              alpha * d.get(i, 0.0) + (1 - alpha) * b.get(i, 0.0) for i in {**d, **b}}
    return sorted(scores.items(), key=lambda kv: -kv[1])


def rrf(rankings: list[list[int]], *, k: int = RRF_K,
        bm25_only: set[int] = frozenset()) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of ranked id lists -> ``[(id, score)]`` best first. Ids in
    ``bm25_only`` (in one list only because they have no vector yet) count twice.

    Ties keep the order in which ids were first seen (earlier lists first).
    """
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            share = 1.0 / (k + rank)
            scores[item] = scores.get(item, 0.0) + (2 * share if item in bm25_only else share)
    return sorted(scores.items(), key=lambda kv: -kv[1])


class Retriever:
    """Searches a :class:`~index.store.Store` with an :class:`~index.embedding.Embedder`.

    Args:
        store: an opened index.
        embedder: the embedder the index was built with.
        depth: candidates taken from each ranking before fusion (at least ``k``).
    """

    def __init__(self, store: Store, embedder: Embedder, *, depth: int = 100,
                 alpha: float = ALPHA):
        self.store = store
        self.embedder = embedder
        self.depth = depth
        self.alpha = alpha

    def search(self, query: str, *, k: int = 5, mode: Mode = "convex") -> SearchResult:
        """Top-``k`` passages for ``query``, near-duplicates collapsed (a passage whose words
        are :func:`near_duplicate` of a better-ranked one's is left out, so the top ``k`` are
        ``k`` different things: the same text in two files, overlapping copies).

        While an `index` run is still embedding, passages without a vector are found by BM25
        alone (``dense`` mode cannot find them; the fused modes rank them by BM25).

        Raises:
            ValueError: unknown ``mode`` or ``k < 1``.
        """
        if mode not in MODES:
            raise ValueError(f"unknown retrieval mode {mode!r}; choose one of {', '.join(MODES)}")
        if k < 1:
            raise ValueError("k must be at least 1")
        started = time.perf_counter()
        self.store = self.store.refreshed()  # a newer index published meanwhile is used
        depth = max(self.depth, k)
        dense: list[tuple[int, float]] = []
        sparse: list[tuple[int, float]] = []
        if mode != "bm25":
            vector = self.embedder.embed([query])[0]  # (dim,)
            dense = self.store.dense_search(vector, depth)
        if mode != "dense":
            sparse = self.store.bm25_search(query, depth)
        waiting = (self.store.unembedded([i for i, _ in sparse])
                   if mode in ("convex", "hybrid") else set())
        if mode == "dense":
            ranked = dense
        elif mode == "bm25":
            ranked = sparse
        elif mode == "convex":
            ranked = convex(dense, sparse, alpha=self.alpha, bm25_only=waiting)
        else:
            ranked = rrf([[i for i, _ in dense], [i for i, _ in sparse]], bm25_only=waiting)
        ranked = ranked[: k * 3]  # room for near-duplicates to be collapsed
        dense_rank = {pid: r for r, (pid, _) in enumerate(dense, start=1)}
        bm25_rank = {pid: r for r, (pid, _) in enumerate(sparse, start=1)}
        passages = {p.id: p for p in self.store.passages([pid for pid, _ in ranked])}
        kept: list[tuple[int, float]] = []
        words: list[set[str]] = []
        for pid, score in ranked:
            if pid not in passages:
                continue
            these = set(_WORD.findall(passages[pid].text.lower()))
            if any(near_duplicate(these, other) for other in words):
                continue
            kept.append((pid, score))
            words.append(these)
            if len(kept) == k:
                break
        hits = [Hit(passages[pid], score, rank, dense_rank.get(pid), bm25_rank.get(pid))
                for rank, (pid, score) in enumerate(kept, start=1)]
        return SearchResult(hits, (time.perf_counter() - started) * 1000)

    def word_passages(self, words: Sequence[str]) -> tuple[dict[str, int], int]:
        """How many passages hold each of ``words``, and how many there are
        (:meth:`Store.word_passages <index.store.Store.word_passages>`)."""
        self.store = self.store.refreshed()
        return self.store.word_passages(words)

    def opening(self, document_id: int, n: int = 2) -> list[Hit]:
        """The first ``n`` passages of a document as hits (score 0, rank 0: not found by a
        search), for a summary of the document, which starts where the document does."""
        self.store = self.store.refreshed()
        return [Hit(p, 0.0, 0) for p in self.store.opening(document_id, n)]

    def sections(self, document_id: int) -> list[Hit]:
        """The first passage of each section (heading path) of a document as hits (score 0,
        rank 0), in document order: where a list of the sections under a heading points."""
        self.store = self.store.refreshed()
        return [Hit(p, 0.0, 0) for p in self.store.section_starts(document_id)]
