"""Evaluation metrics: retrieval (nDCG@k, recall@k, MRR@k) and extractive QA (exact match,
token F1), plus latency summaries. Pure functions, no models.

Retrieval metrics follow the BEIR definitions (Thakur et al., 2021, computed there with
pytrec_eval / trec_eval): graded gains with a ``log2(rank + 1)`` discount for nDCG, recall as
the share of relevant documents found in the top k, reciprocal rank of the first relevant
document within the top k for MRR. QA metrics follow the official SQuAD v1.1 evaluation script
(Rajpurkar et al., 2016): normalise (lower-case, drop punctuation, drop a/an/the, collapse
white space), then exact match and token-overlap F1, each the maximum over the gold answers.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = set(string.punctuation)


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k of one ranking: ``sum(rel_i / log2(i + 1))`` over ranks i = 1..k, divided by the
    same sum for the ideal ordering of ``relevant`` (doc id -> graded relevance > 0)."""
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 1) for i, doc in enumerate(ranked[:k], 1))
    ideal = sorted((r for r in relevant.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 1) for i, r in enumerate(ideal, 1))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents (relevance > 0) that are in the top ``k``."""
    wanted = {d for d, r in relevant.items() if r > 0}
    return len(wanted & set(ranked[:k])) / len(wanted) if wanted else 0.0


def mrr_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """1 / rank of the first relevant document in the top ``k`` (0 when there is none)."""
    for i, doc in enumerate(ranked[:k], 1):
        if relevant.get(doc, 0) > 0:
            return 1.0 / i
    return 0.0


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, remove punctuation and articles, collapse spaces."""
    text = "".join(c for c in text.lower() if c not in PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """Best token-overlap F1 (0..1) of the prediction against the gold answers."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        truth = normalize_answer(gold).split()
        same = sum((Counter(pred) & Counter(truth)).values())
        if not pred or not truth:
            score = float(pred == truth)
        else:
            score = overlap_f1(same, len(pred), len(truth))
        best = max(best, score)
    return best


def overlap_f1(same: int, predicted: int, gold: int) -> float:
    """Token F1 (0..1) from the count of tokens the two share (``same``) and the counts of
    predicted and gold tokens (both > 0): the harmonic mean of precision and recall."""
    if same == 0:
        return 0.0
    precision, recall = same / predicted, same / gold
    return 2 * precision * recall / (precision + recall)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default); None for
    no values."""
    data = sorted(v for v in values if v is not None)
    if not data:
        return None
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)
