import math

import pytest

from assistant.metrics import (exact_match, mrr_at_k, ndcg_at_k, normalize_answer, percentile,
                               recall_at_k, token_f1)


def test_ndcg_binary_by_hand():
    # relevant at ranks 2 and 3: DCG = 1/log2(3) + 1/log2(4); ideal = 1 + 1/log2(3)
    dcg = 1 / math.log2(3) + 0.5
    assert ndcg_at_k(["a", "b", "c"], {"b": 1, "c": 1}, 10) == pytest.approx(dcg / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["a", "b", "c"], {"b": 1, "c": 1}, 10) == pytest.approx(0.6934, abs=1e-4)


def test_ndcg_graded_and_cut_off():
    # gains are the relevance grades (trec_eval): DCG = 1 + 2/log2(3), ideal = 2 + 1/log2(3)
    assert ndcg_at_k(["a", "b"], {"a": 1, "b": 2}) == pytest.approx(0.8597, abs=1e-4)
    assert ndcg_at_k(["x", "a"], {"a": 1}, k=1) == 0.0
    assert ndcg_at_k(["a"], {"a": 1}) == 1.0
    assert ndcg_at_k(["a"], {}) == 0.0


def test_recall_and_mrr_by_hand():
    ranked = ["a", "b", "c", "d"]
    rel = {"b": 1, "d": 1, "z": 1}
    assert recall_at_k(ranked, rel, 1) == 0.0
    assert recall_at_k(ranked, rel, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, rel, 100) == pytest.approx(2 / 3)
    assert mrr_at_k(ranked, rel, 10) == 0.5
    assert mrr_at_k(ranked, rel, 1) == 0.0
    assert recall_at_k(ranked, {"b": 0}, 10) == 0.0  # judged not relevant


def test_squad_normalisation_em_and_f1():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("a an the") == ""
    assert exact_match("denver broncos.", ["Broncos", "The Denver Broncos"]) == 1.0
    assert exact_match("Denver", ["Denver Broncos"]) == 0.0
    # precision 2/3, recall 1 -> F1 0.8; the best gold counts
    assert token_f1("Denver Broncos won", ["the Denver Broncos", "Carolina"]) == pytest.approx(0.8)
    assert token_f1("Carolina Panthers", ["Denver Broncos"]) == 0.0
    assert token_f1("the", ["a"]) == 1.0  # both normalise to nothing


def test_percentile_interpolates_like_numpy():
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([1, 2, 3, 4], 95) == pytest.approx(3.85)
    assert percentile([], 50) is None
