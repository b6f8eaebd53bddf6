from assistant.attribution import CitationShaper, best_source
from assistant.dialogue import cited_numbers, reading_question, retrieval_query


def test_best_source_by_content_word_overlap(squad_passages):
    texts = [p["text"] for p in squad_passages[:4]]
    assert best_source("The Denver Broncos defeated the Carolina Panthers.", texts) == 1
    assert best_source("Quantum chromodynamics explains gluons.", texts) is None


def test_shaper_streams_cites_and_stops_on_repeats(squad_passages):
    shaper = CitationShaper([squad_passages[0]["text"], squad_passages[1]["text"]])
    pieces = ["The Denver ", "Broncos defeated the Carolina Panthers", ". It was ",
              "fun. ", "The Denver Broncos defeated ", "the Carolina Panthers. More"]
    shown = [shaper.push(p) for p in pieces]
    assert shown[0] == "The Denver "  # streamed at once, not held to the sentence end
    text = "".join(shown) + shaper.flush()
    assert text == "The Denver Broncos defeated the Carolina Panthers. [1] It was fun."
    assert shaper.repeated


def test_existing_citations_are_kept():
    shaper = CitationShaper(["alpha beta gamma delta"])
    assert shaper.push("Alpha beta gamma [2]. ") + shaper.flush() == "Alpha beta gamma [2]. "


def test_cited_numbers_forms():
    assert cited_numbers("a [2] b [1, 3] c [4-5] d [2]") == [2, 1, 3, 4, 5]


def test_follow_up_queries_carry_the_previous_question():
    history = [("What did the Normans conquer?", "England [1].")]
    assert retrieval_query("And what about the second one?", history).startswith("What did")
    assert retrieval_query("Who founded the University of Paris in 1150?", history) == \
        "Who founded the University of Paris in 1150?"
    assert retrieval_query("anything", []) == "anything"
    # an existential "there" points back at nothing
    asked = "What kinds of callable types are there?"
    assert retrieval_query(asked, history) == asked
    assert retrieval_query("Is there a way to stop the Normans?", history) == \
        "Is there a way to stop the Normans?"
    assert retrieval_query("And what else happened there in 1066?", history).startswith(
        "What did")


def test_words_that_only_ask_for_a_summary_or_a_comparison_are_not_searched():
    """BM25 weighs a rare word most: "Summarize" found a grammar section that says
    "Summarizing:" ahead of any passage about the thing to summarize."""
    assert retrieval_query("Summarize what Valgrind is.", []) == "what Valgrind is."
    assert retrieval_query("Can you give me a short overview of the import statement?",
                           []) == "the import statement?"
    assert retrieval_query("What is this document about?", []) == "What is this document about?"
    # nor those that only ask for a comparison: "the difference of its arguments" is about "-"
    assert retrieval_query("What is the difference between the and and or operators?",
                           []) == "the and and or operators?"
    assert retrieval_query("Compare Memcheck and DRD.", []) == "Memcheck and DRD."
    assert retrieval_query("Summarize.", []) == "Summarize."  # nothing else to search
    history = [("Summarize the yield statement.", "...")]
    assert retrieval_query("and return?", history) == "the yield statement. and return?"
    # a question is a follow-up by its words as asked, not by what is left to search
    assert retrieval_query("What is the difference between lists and tuples?", history) == \
        "lists and tuples?"


def test_a_request_to_say_more_is_about_the_turn_that_asked_something():
    asked = "What is the difference between a list and a tuple?"
    history = [(asked, "Lists are mutable [1]. Tuples are immutable [2].")]
    searched = retrieval_query(asked, [])
    assert searched == "a list and a tuple?"
    # the same search as the turn it is about: the same passages
    assert retrieval_query("Can you say more about that?", history) == searched
    assert retrieval_query("Could you give an example?", history) == \
        f"{searched} Could you give an example?"
    # a chain of requests keeps the topic, and so does a short follow-up after them
    history += [("Can you say more about that?", "..."), ("Give me an example.", "...")]
    assert retrieval_query("go on", history) == searched
    assert retrieval_query("and sets?", history) == f"{searched} and sets?"
    # the extractive reader answers the question they are about, not the request
    assert reading_question("Tell me more.", history) == asked
    assert reading_question("and sets?", history) == "and sets?"
    assert reading_question("Can you say more about that?", []) == \
        "Can you say more about that?"
    # a follow-up of a follow-up: the search of the turn that asked
    history = [("What did the Normans conquer?", "England [1]."),
               ("when was it?", "1066 [1].")]
    assert retrieval_query("Can you say more about that?", history) == \
        "What did the Normans conquer? when was it?"


def test_a_citation_the_model_writes_after_the_full_stop_is_not_doubled():
    shaper = CitationShaper(["alpha beta gamma delta", "epsilon zeta eta"])
    pieces = ["Alpha beta", " gamma.", " ", "[", "2", "]", " Epsilon zeta eta.", " More"]
    shown = [shaper.push(p) for p in pieces]
    assert "".join(shown) + shaper.flush() == "Alpha beta gamma. [2] Epsilon zeta eta. [2] More"
    assert shown[1] == " gamma."  # the sentence itself is not held back
    # a sentence the model leaves uncited still gets the passage covering it
    shaper = CitationShaper(["alpha beta gamma delta"])
    assert shaper.push("Alpha beta gamma. Then") + shaper.flush() == "Alpha beta gamma. [1] Then"
