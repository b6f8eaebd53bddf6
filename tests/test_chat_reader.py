"""The chat reader's pieces that need no model: cutting an answer into sentences for the
support pass, and adding a label's attention to its passage's."""

from assistant.chat_reader import _per_source, answer_sentences


def test_an_answer_is_cut_into_sentences_that_give_it_back():
    text = "It works. [1] Then it exits!\n\nA list:\n- one\n- two?  Yes 3.5 is a float"
    pieces = answer_sentences(text)
    assert "".join(pieces) == text
    assert [p.strip() for p in pieces] == ["It works. [1]", "Then it exits!",
                                           "A list:\n- one\n- two?", "Yes 3.5 is a float"]
    assert answer_sentences("") == [] and answer_sentences("  \n") == []
    assert answer_sentences("no full stop") == ["no full stop"]


def test_a_labels_attention_counts_for_its_passage():
    masses = [[[0.1, 0.2, 0.05, 0.3], [0.0, 0.5, 0.25, 0.0]]]  # one layer, two heads
    assert _per_source(masses) == [[[0.1 + 0.2, 0.05 + 0.3], [0.5, 0.25]]]
