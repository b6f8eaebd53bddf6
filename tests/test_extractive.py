from assistant.extractive import (align_span, complete_date, example_questions,
                                  extractive_prompt, finish, sentence_with)

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


def _align_by_definition(answer: str, passage: str, min_f1: float = 0.5) -> str:
    """align_span as first written: every span normalised and scored whole by token_f1."""
    from assistant.extractive import _close_brackets, _trim, _WORD
    from assistant.metrics import normalize_answer, token_f1

    passage = " ".join(passage.split())
    answer = _trim(" ".join(answer.split()))
    if not answer or answer.lower() in passage.lower():
        return answer
    words = [(m.start(), m.end()) for m in _WORD.finditer(passage)]
    target = normalize_answer(answer)
    if not target:
        return answer
    longest = len(target.split()) + 3
    best, best_f1 = answer, min_f1
    for i in range(len(words)):
        for j in range(i, min(i + longest, len(words))):
            span = _trim(passage[words[i][0]:words[j][1]])
            f1 = token_f1(span, [answer])
            if f1 > best_f1 or (f1 == best_f1 and best is not answer and len(span) < len(best)):
                best, best_f1 = span, f1
    return best if best is answer else _close_brackets(best)


def test_align_span_scores_spans_as_token_f1_does():
    """The incremental overlap count picks the same span as scoring every span whole, also
    with articles, curly quotes, brackets and punctuation at the edges of words (ties broken
    as the definition does: the shorter)."""
    import random

    rng = random.Random(7)
    vocab = ["the", "a", "an", "The", "with", "statement", "context", "manager", "“the", "”",
             "“manager”", "(see", "section)", '"with"', "'a'", "list,", "tuple.", "x;",
             "A", "An.", "it's", "[1]", "e.g.", "—", "...", "Σ", "ΑΣ", "(", ")", "'", '"']
    for _ in range(300):
        passage = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 40)))
        answer = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 8)))
        assert align_span(answer, passage, ties="shorter") == \
            _align_by_definition(answer, passage), (answer, passage)
    for answer, passage in [("the sun life stadium in Miami", PASSAGE),
                            ("February 7, 2016.", PASSAGE)]:
        assert align_span(answer, passage, ties="shorter") == \
            _align_by_definition(answer, passage)


def test_of_the_sentences_holding_the_span_the_one_closest_to_the_question_is_quoted():
    notes = ("Meeting notes. Attendees: Dana Whitfield, Omar Reyes, Li Wei. Decision: the "
             "service moves to PostgreSQL 16. Li Wei will write the load tests.")
    assert sentence_with("Li Wei", notes) == "Attendees: Dana Whitfield, Omar Reyes, Li Wei."
    assert sentence_with("Li Wei", notes, "Who will write the load tests?") == \
        "Li Wei will write the load tests."
    assert sentence_with("Li Wei", notes, "Who attended?") == \
        "Attendees: Dana Whitfield, Omar Reyes, Li Wei."  # no word in common: the first
    done = finish("Li Wei", notes, 1, "Who writes the load tests?")
    assert done.text == "**Li Wei** [1]\n\n> Li Wei will write the load tests. [1]"


def test_of_equally_good_spans_the_one_with_the_answers_first_word_is_kept():
    notes = ("Meeting notes, 3 June 2025. Decision: the billing service will move from "
             "PostgreSQL 13 to PostgreSQL 16 in September.")
    # "2025" and "September" have the same token F1 against the reading "September 2025"
    assert align_span("September 2025", notes) == "September"
    assert align_span("September 2025", notes, ties="shorter") == "2025"
    chlorophyll = "Chlorophyll absorbs light most strongly at 687 and 760 nm in these bands."
    assert align_span("687 nm", chlorophyll) == "687 and 760 nm"  # not the unit alone


def test_a_date_the_reading_cut_short_is_completed_for_when_questions_only():
    notes = ("Meeting notes, 3 June 2025. The billing service moves to PostgreSQL 16 in "
             "September. The journal published the study in October 2010; a second one "
             "followed on March 29, 2011.")
    assert complete_date("2025", notes, "When was the meeting?") == "3 June 2025"
    assert complete_date("June", notes, "On what date was the meeting?") == "3 June 2025"
    assert complete_date("2010", notes, "And when was the study published?") == "October 2010"
    assert complete_date("2011", notes, "When did the second one follow?") == "March 29, 2011"
    assert complete_date("2025", notes, "What year was the meeting?") == "2025"  # the year asked
    assert complete_date("September", notes, "When will it move?") == "September"  # all there is
    assert complete_date("3 June 2025", notes, "When was the meeting?") == "3 June 2025"
    assert complete_date("Li Wei", notes, "When was the meeting?") == "Li Wei"
    # of two dates holding the span, the one in the sentence closer to the question
    two = "The audit ran on 4 May 2024. The launch was on 9 May 2024."
    assert complete_date("May 2024", two, "When was the launch?") == "9 May 2024"
    done = finish(" 2025", notes, 1, "When was the meeting?")
    assert done.span == "3 June 2025" and done.supported
    assert done.text.startswith("**3 June 2025** [1]")
