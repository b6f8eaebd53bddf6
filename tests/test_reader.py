"""The extractive reader over passage blocks: support weights, abstention, and (slow) the
embedded Gemma 3 270M citing, abstaining and reusing blocks across turns."""

from __future__ import annotations

import pytest

from assistant.dialogue import DialogueManager
from assistant.history import History
from assistant.reader import (ABSTAIN, ABSTAIN_FEATURES, HEADS, NOT_FOUND, abstain_score,
                              block_text, coverage, question_text, support_weights)
from index.ingest import Indexer
from index.retrieval import Retriever
from index.store import Store


def test_prompt_parts_concatenate_to_the_extractive_prompt():
    from assistant.extractive import extractive_prefix, extractive_prompt

    question, passage = "Who won?", "Denver  beat\nCarolina."
    assert (extractive_prefix() + block_text(passage) + question_text(question)
            == extractive_prompt(question, passage))


def test_support_weights_average_the_chosen_heads_and_sum_to_one():
    masses = [[[0.1, 0.3], [0.2, 0.2]], [[0.6, 0.0], [0.0, 0.0]]]  # (layers, heads, blocks)
    everything = support_weights(masses, ())
    assert everything == pytest.approx([0.9 / 1.4, 0.5 / 1.4])
    assert support_weights(masses, [(0, 0)]) == pytest.approx([0.25, 0.75])
    assert support_weights(masses, [(1, 1)]) == [0.0, 0.0]  # no mass stays no support
    assert support_weights([], ()) == []


def test_abstain_score_is_a_logistic_of_the_features():
    names = ("pmi", "logprob")
    assert abstain_score({"pmi": 1.0, "logprob": -0.5}, (0.0, 0.0, 0.0), names) == 1.0
    low = abstain_score({"pmi": 0.0, "logprob": -3.0}, (-1.0, 4.0, 1.0), names)
    high = abstain_score({"pmi": 1.5, "logprob": -0.1}, (-1.0, 4.0, 1.0), names)
    assert 0 < low < 0.5 < high < 1
    assert low == pytest.approx(1 / (1 + 2.718281828 ** 4), rel=1e-6)
    assert abstain_score({"cover": 1.0}, (-1.0, 3.0), ("cover",)) == pytest.approx(
        1 / (1 + 2.718281828 ** -2), rel=1e-6)
    assert abstain_score({"pmi": -1e6}, (0.0, 1.0), ("pmi",)) == pytest.approx(0.0)


def test_fitted_constants_have_the_documented_shape():
    assert len(ABSTAIN) == len(ABSTAIN_FEATURES) + 1
    assert all(len(pair) == 2 for pair in HEADS)


def test_coverage_weighs_the_question_words_a_passage_holds_by_their_rarity():
    question = "Which stadium hosted Super Bowl 50?"
    holds_all = "Super Bowl 50 was hosted by Levi's Stadium."
    common = "The team hosted a party; the stadium was full."  # the common words only
    assert coverage(question, [holds_all, common]) == 1.0  # the best-covering passage
    # alike: 2 of the 5 words ("stadium", "hosted"); weighted by rarity much less
    assert coverage(question, [common]) == pytest.approx(2 / 5)
    frequencies = lambda words: ({"stadium": 300, "hosted": 400, "super": 2, "bowl": 3,
                                  "50": 20}, 1000)  # noqa: E731
    rare_missing = coverage(question, [common], frequencies)
    assert 0 < rare_missing < 0.2
    # words compared without plural or verb endings; stop words alone cover everything
    assert coverage("Which stadiums hosted it?", ["Stadium hosting: see below."]) == 1.0
    assert coverage("What is it?", [common]) == 1.0 and coverage(question, []) == 0.0


@pytest.fixture(scope="module")
def real_manager(tmp_path_factory, squad_passages, real_embedder, real_generator):
    from tests.conftest import write_corpus

    root = tmp_path_factory.mktemp("reader")
    write_corpus(root / "docs", squad_passages)
    Indexer(root / "index", real_embedder).run([root / "docs"])
    retriever = Retriever(Store.open(root / "index"), real_embedder)
    return DialogueManager(retriever=retriever, generator=real_generator,
                           history=History(root / "history.db"), top_k=5)


@pytest.mark.slow
def test_the_real_model_cites_the_passage_that_holds_the_answer(real_manager):
    turn = real_manager.ask("Which Carolina Panthers player was named Most Valuable Player?")
    list(turn)
    assert not turn.abstained and turn.short_answer
    cited = turn.cited()
    assert cited == [1]
    source = turn.sources()[0]
    assert source.path.endswith("squad-00-001.md") or "Newton" in source.text
    assert turn.short_answer.lower() in " ".join(source.text.split()).lower()
    assert sum(turn.support) == pytest.approx(1.0, abs=1e-6)
    assert turn.support[0] == max(turn.support)  # the cited passage holds the most attention
    # decoding speed counts every reading's tokens, the kept span's among them
    reading = turn.reading
    assert reading.read >= 1 and reading.decoded >= reading.new_tokens >= 1
    assert turn.timings()["tokens_per_s"] == pytest.approx(
        reading.decoded / reading.seconds["read"], rel=0.01)

    # the same passages again in a follow-up: no block is prefilled a second time
    again = real_manager.ask("And who did he play for?", conversation_id=turn.conversation_id)
    list(again)
    assert again.reading.encoded == 0 or set(h.passage.id for h in again.hits) != set(
        h.passage.id for h in turn.hits)
    repeat = real_manager.ask("Which Carolina Panthers player was named Most Valuable Player?",
                              conversation_id=turn.conversation_id)
    list(repeat)
    assert repeat.reading.encoded == 0 and repeat.short_answer == turn.short_answer


@pytest.mark.slow
def test_the_real_model_says_when_the_documents_do_not_hold_the_answer(real_manager):
    # lower case: no name the documents lack ("FIFA" would stop it before the model reads),
    # so this is the reader's own calibrated decision
    turn = real_manager.ask("who won the football world cup in 2018?")
    list(turn)
    assert turn.reading.features.get("absent") is None  # read, not stopped by a name
    assert turn.abstained and turn.answer == NOT_FOUND and turn.cited() == []
    assert len(turn.sources()) == 5  # the closest sources are still listed
    row = real_manager.history.turns(turn.conversation_id)[-1]
    assert row["abstained"] == 1 and row["status"] == "complete"
