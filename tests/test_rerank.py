import pytest

from assistant.rerank import PROMPT, rerank
from index.retrieval import Hit
from index.store import Passage


class ListScorer:
    """Returns the given log-likelihoods, in passage order, and records what it was asked."""

    def __init__(self, likelihoods):
        self.likelihoods = likelihoods
        self.asked = []

    def score(self, prefixes, continuation):
        self.asked.append((list(prefixes), continuation))
        return self.likelihoods[: len(prefixes)]


def hits(*scores):
    return [Hit(Passage(i, 1, f"/d/{i}.md", "T", "", None, 1, 1, f"passage  {i}"), s, i)
            for i, s in enumerate(scores, 1)]


def test_question_likelihood_reorders_the_top_passages():
    scorer = ListScorer([-30.0, -31.0, -10.0])
    ranked, ms = rerank(" Who won? ", hits(0.9, 0.8, 0.7, 0.2), scorer, k=3, weight=2.0)
    assert [h.passage.id for h in ranked] == [3, 1, 2, 4]  # 4 is below k: kept last
    assert [h.rank for h in ranked] == [1, 2, 3, 4]
    # min-max of retrieval (0.9, 0.8, 0.7) + 2 * min-max of likelihood (-30, -31, -10)
    assert ranked[0].score == pytest.approx(0.0 + 2 * 1.0)
    assert ranked[1].score == pytest.approx(1.0 + 2 * (1 / 21))
    assert ranked[3].score == 0.2 and ms >= 0
    prefixes, question = scorer.asked[0]
    assert prefixes[0] == PROMPT.format(passage="passage 1") and question == " Who won?"


def test_retrieval_order_wins_when_likelihoods_tie_and_k_below_two_is_off():
    tie = ListScorer([-5.0, -5.0])
    assert [h.passage.id for h in rerank("q", hits(0.5, 0.4), tie)[0]] == [1, 2]
    off = ListScorer([])
    assert [h.passage.id for h in rerank("q", hits(0.5, 0.4), off, k=1)[0]] == [1, 2]
    assert off.asked == []


@pytest.mark.slow
def test_real_model_finds_the_question_likelier_after_the_passage_answering_it(
        real_generator, squad_passages):
    texts = [p["text"] for p in squad_passages[:5]]
    prefixes = [PROMPT.format(passage=" ".join(t.split())) for t in texts]
    scores = real_generator.score(prefixes, " Which network broadcasted Super Bowl 50 in the U.S.?")
    assert len(scores) == 5 and all(s < 0 for s in scores)
    assert max(range(5), key=scores.__getitem__) == 3  # "CBS broadcast Super Bowl 50 in the U.S."
