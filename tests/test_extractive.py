from assistant.extractive import (align_span, example_questions, extractive_prompt, finish,
                                  sentence_with)

PASSAGE = ("The league narrowed the bids to three sites: New Orleans' Mercedes-Benz Superdome,\n"
           "Miami's Sun Life Stadium, and the San Francisco Bay Area's Levi's Stadium. The game "
           "was played on February 7, 2016.")


def test_prompt_has_examples_then_the_question():
    prompt = extractive_prompt("When was the game played?", PASSAGE)
    assert prompt.count("Context: ") == 11 and prompt.endswith("Question: When was the game played?\nAnswer:")
    assert "Bay Area's Levi's Stadium. The game" in prompt  # line breaks collapsed
    assert len(example_questions()) == 10
    assert all(q in prompt for q in example_questions())


def test_align_span_uses_the_passage_words():
    assert align_span("February 7, 2016.", PASSAGE) == "February 7, 2016"
    assert align_span("the sun life stadium in Miami", PASSAGE) == "Sun Life Stadium"
    assert align_span("Paris", PASSAGE) == "Paris"  # no support: left as generated


def test_finish_renders_span_citation_and_sentence():
    done = finish(" Levi's Stadium\n", PASSAGE, 2)
    assert done.span == "Levi's Stadium" and done.source == 2
    assert done.text.startswith("**Levi's Stadium** [2]\n\n> ")
    assert "San Francisco Bay Area's Levi's Stadium. [2]" in done.text
    assert finish("", PASSAGE).text == ""
    assert finish("Paris", PASSAGE, 3).text == "Paris [3]"  # unsupported: as generated
    assert sentence_with("February 7", PASSAGE) == "The game was played on February 7, 2016."


def test_markup_in_a_passage_is_escaped():
    done = finish("identifier (\",\" identifier)*", 'stmt ::= "nonlocal" identifier (",") '
                  'identifier)* [3] and more.')
    assert "\\*" in done.text and "\\[3\\]" in done.text
    from assistant.dialogue import cited_numbers
    assert cited_numbers(done.text) == [1]  # the passage's "[3]" is not a citation


def test_an_aligned_span_does_not_stop_inside_a_parenthesis():
    passage = ('The "with" statement is used to wrap the execution of a block with methods '
               "defined by a context manager (see section With Statement Context Managers).")
    # the model's own words; the best-overlap span ends inside the parenthesis
    span = align_span("the with statement is executed by the context manager.", passage)
    assert span == "by a context manager"
    # a span inside the parenthesis loses only the bracket at its edge
    assert align_span("see the section With Statement", passage) == "see section With Statement"
