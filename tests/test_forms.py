"""Question forms, sentence choice and answer rendering (assistant/forms.py), the composer over
real passages with a real embedder, and the question-set metrics (assistant/question_set.py)."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from assistant import forms, question_set
from assistant.composer import Composer
from assistant.extractive import ExtractiveAnswer
from assistant.reader import Reading
from index.retrieval import Hit
from index.store import Passage


@pytest.mark.parametrize("question, form", [
    ("Who wrote the novel?", "factoid"),
    ("How many passages are there?", "factoid"),
    ("Which keyword creates an anonymous function?", "factoid"),
    ("What is a lambda expression?", "definition"),
    ("What does the global statement do?", "definition"),
    ("How does the with statement work?", "explanation"),
    ("Why does a for loop have an else clause?", "explanation"),
    ("What is the difference between a list and a tuple?", "comparison"),
    ("How does DRD differ from Helgrind?", "comparison"),
    ("list vs tuple", "comparison"),
    ("Which built-in objects are considered false?", "list"),
    ("What kinds of errors can Memcheck detect?", "list"),
    ("List the augmented assignment operators.", "list"),
    ("Are tuples immutable?", "yesno"),
    ("Can a lambda expression contain statements?", "yesno"),
    ("Summarize the assert statement.", "summary"),
    ("Give an overview of the import statement.", "summary"),
])
def test_classify_names_the_form(question, form):
    assert forms.classify(question) == form


@pytest.mark.parametrize("question, named", [
    ("What is the difference between TCP and UDP?", ["TCP", "UDP"]),
    ("Is PostgreSQL faster than MySQL?", ["PostgreSQL", "MySQL"]),
    ("Summarize the plot of Pride and Prejudice.", ["Pride", "Prejudice"]),
    ("What is the difference between __str__ and __repr__?", ["__str__", "__repr__"]),
    ("What is Cachegrind's output?", ["Cachegrind"]),
    ("and what is DRD?", ["DRD"]),
    ("Does the iPhone app sync?", ["iPhone"]),
    ("Summarize what Valgrind is.", ["Valgrind"]),  # the first word's capital alone is not one
    ("Should I use -O2 when compiling for Memcheck?", ["Memcheck"]),  # digits: no
    ("HOW DOES THE WITH STATEMENT WORK?", []),  # shouted: capitals mean nothing
    ("How Does The With Statement Work For UDP", ["UDP"]),  # Title Case: acronyms only
    ("how do lists work?", []),
])
def test_names_are_the_words_that_name_something(question, named):
    assert forms.names(question) == named


def test_a_misspelt_name_is_matched_to_the_word_it_resembles():
    texts = ["ABC bought land in Hollywood.", "Gandhi's work was called satyagraha."]
    assert forms.misspelt("Hollwood", texts) == "hollywood"
    assert forms.misspelt("Ghandi", texts) == "gandhi"
    assert forms.misspelt("PostgreSQL", texts) is None
    assert forms.misspelt("UDP", ["UDF is a format."]) is None  # under 4 letters: exact only


def test_an_acronym_is_found_spelled_out():
    texts = ["ABC owns a studio in New York City.", "He was a running back for years."]
    assert forms.spelled_out("NYC", texts) == "New York City"
    assert forms.spelled_out("RBs", texts) == "running back"
    assert forms.spelled_out("UDP", texts) is None
    assert forms.spelled_out("Python", texts) is None  # not an acronym


def test_a_follow_up_keeps_the_previous_form_or_takes_its_own():
    assert forms.classify("and tuples?", "comparison") == "comparison"
    assert forms.classify("what about DRD?", "definition") == "definition"
    assert forms.classify("and are tuples immutable?", "comparison") == "yesno"
    assert forms.classify("why?", "factoid") == "explanation"
    assert forms.classify("and tuples?") == "factoid"  # no previous turn: nothing to keep


@pytest.mark.parametrize("question, previous, form", [
    # a polite request is what it asks for, not a yes/no question
    ("Could you please explain how the with statement works?", None, "explanation"),
    ("Can you list the augmented assignment operators?", None, "list"),
    ("Please summarize the import statement.", None, "summary"),
    ("Can you compare lists and tuples?", None, "comparison"),
    ("Can you tell me what a tuple is?", None, "definition"),
    ("tell me how generators work", None, "explanation"),
    ("Can you give an example?", "factoid", "explanation"),
    # "you" as anyone: still a yes/no question
    ("Can you use a list as a dictionary key?", None, "yesno"),
    ("Can a lambda expression contain statements?", None, "yesno"),
    # saying more keeps an answer of several sentences, else explains
    ("Can you say more about that?", "comparison", "comparison"),
    ("Can you say more about that?", "yesno", "explanation"),
    ("Tell me more.", "factoid", "explanation"),
    ("go on", "list", "list"),
    ("Can you say more about that?", None, "explanation"),
    ("continue statements in loops", "comparison", "factoid"),  # a topic, not "go on"
    ("Give me an example of a decorator.", "comparison", "explanation"),
    ("Can you tell me what the pass statement does?", None, "definition"),
    ("Could you explain that in simpler terms?", "comparison", "comparison"),
])
def test_a_request_is_classified_by_what_it_asks(question, previous, form):
    assert forms.classify(question, previous) == form


def test_a_request_for_more_or_an_example_has_no_topic_of_its_own():
    assert forms.more_request("Could you say a bit more about that?") == "more"
    assert forms.more_request("Give me an example, please.") == "example"
    assert forms.more_request("Can you show an example of that?") == "example"
    assert forms.more_request("Give me an example of a decorator.") is None
    assert forms.more_request("continue statements in loops") is None
    assert forms.more_request("Can you explain that?") == "more"
    assert forms.more_request("What do you mean?") == "more"
    assert forms.more_request("Explain the with statement.") is None
    assert forms.more_request("What is a tuple?") is None


@pytest.mark.parametrize("question, things", [
    ("What is the difference between a list and a tuple?", ("list", "tuple")),
    ("What is the difference between the and and or operators?", ("and", "or")),
    ("How does DRD differ from Helgrind?", ("DRD", "Helgrind")),
    ("How do the is operator and the == operator differ?", ("is", "==")),
    ("Compare Cachegrind with Callgrind", ("Cachegrind", "Callgrind")),
    ("What is a tuple?", None),
])
def test_compared_finds_both_sides(question, things):
    assert forms.compared(question) == things


RST = """The "with" statement
********************

The "with" statement is used to wrap the execution of a block with
methods defined by a context manager. This allows common usage
patterns to be encapsulated for convenient reuse.

   with_stmt ::= "with" with_item ":" suite

1. The context expression is evaluated to obtain a context manager.

2. The context manager's "__enter__()" is loaded for later use.
"""


def test_sentences_skip_headings_grammar_and_split_lists():
    got = [s.text for s in forms.sentences(0, RST)]
    assert got == [
        'The "with" statement is used to wrap the execution of a block with methods defined '
        'by a context manager.',
        "This allows common usage patterns to be encapsulated for convenient reuse.",
        "The context expression is evaluated to obtain a context manager.",
        'The context manager\'s "__enter__()" is loaded for later use.',
    ]
    assert [s.index for s in forms.sentences(3, RST)] == [0, 1, 2, 3]
    assert {s.hit for s in forms.sentences(3, RST)} == {3}


def test_pointers_elsewhere_are_not_sentences_to_quote():
    text = ("A context manager defines __enter__() and __exit__(). For more information on "
            "context managers, see Context Manager Types.\n\nSee also: PEP 343, the with "
            "statement. See section 3.3.9 for how methods are looked up. Refer to the library "
            "reference for details. Additional information on exceptions can be found in "
            "section Exceptions.")
    assert [s.text for s in forms.sentences(0, text)] == [
        "A context manager defines __enter__() and __exit__()."]


def test_a_sentence_about_such_a_thing_leans_on_the_one_before():
    said = forms.sentences(0, 'A function defined with "async def" is a coroutine function. '
                              "Such a function returns a coroutine object when called.")
    assert [forms.leans_back(s) for s in said] == [False, True]
    got = forms.choose("definition", "What is a coroutine function?", said, [0.5, 0.9])
    assert [s.index for s in got] == [0, 1]


def test_an_indented_description_is_prose_and_indented_code_is_not():
    text = ('object.__repr__(self)\n\n   Called by the "repr()" built-in function to compute '
            'the “official”\n   string representation of an object. The return\n   value must '
            'be a string object.\n\n   def f(arg): pass    # a function that does nothing\n'
            '   class C: pass       # a class with no methods (yet)\n')
    assert [s.text for s in forms.sentences(0, text)] == [
        'Called by the "repr()" built-in function to compute the “official” string '
        'representation of an object.', "The return value must be a string object."]


def test_a_compared_function_word_or_symbol_must_stand_quoted_or_alone():
    assert forms.names_thing("Tuples are immutable sequences.", "tuple")
    assert not forms.names_thing("This is a list of operators.", "is")  # a word of every sentence
    assert forms.names_thing('The operators "is" and "is not" test identity.', "is")
    assert forms.names_thing("x == y is true when the values are equal.", "==")
    assert not forms.names_thing("Use !== in JavaScript.", "==")


def test_a_description_is_labelled_with_the_signature_it_stands_under():
    text = ("A context manager defines the runtime context.\n\nobject.__enter__(self)\n\n"
            "   Enter the runtime context related to this object. The \"with\"\n   statement "
            "binds this method’s return value to the target.\n")
    got = forms.sentences(0, text)
    assert [(s.label, s.text[:30]) for s in got] == [
        ("", "A context manager defines the "), ("object.__enter__(self)", "Enter the runtime context rela"),
        ("", 'The "with" statement binds thi')]
    assert got[1].full.startswith("object.__enter__(self): Enter")
    assert forms.render(got[1:2], lambda h: h + 1, form="definition") == (
        "`object.__enter__(self)`: Enter the runtime context related to this object. [1]")


def test_a_list_answer_goes_on_through_the_items_it_reached():
    """A passage cut before a method's description still names the method; a list answer
    that reached the first method's description goes on to the next method."""
    text = ("A context manager defines the runtime context of a with statement.\n\n"
            "Typical uses include locking and unlocking resources and closing files.\n\n"
            "object.__enter__(self)\n\n"
            "   Enter the runtime context related to this object. The \"with\"\n   statement "
            "binds this method’s return value to the target.\n\n"
            "object.__exit__(self, exc_type, exc_value, traceback)\n")
    got = forms.sentences(0, text)
    assert [(s.item, s.label, s.text[:24]) for s in got] == [
        (False, "", "A context manager define"), (False, "", "Typical uses include loc"),
        (True, "object.__enter__(self)", "Enter the runtime contex"),
        (False, "", 'The "with" statement bin'),
        (True, "", "object.__exit__(self, ex")]
    picked = forms.choose("list", "Which methods must a context manager define?", got,
                          [0.9, 0.8, 0.5, 0.4, 0.3], most=3)
    assert [s.index for s in picked] == [0, 1, 2, 4]  # the rest of __enter__'s item skipped
    # a signature alone is no answer to a question of another form
    assert got[4].bare and not got[2].bare
    assert forms.choose("definition", "What does __exit__ do?", got,
                        [0.1, 0.1, 0.1, 0.1, 0.9])[0].index != 4
    # without items, a list answer stops at ``most`` sentences
    plain = [forms.Sentence(0, i, f"Sentence number {i} is here.") for i in range(6)]
    assert len(forms.choose("list", "Which?", plain, [0.9] + [0.1] * 5, most=3)) == 3


def test_a_sentence_of_a_better_ranked_passage_wins_a_near_tie_except_in_a_comparison():
    c = [forms.Sentence(0, 0, "A break in the first suite ends the loop, not the else clause."),
         forms.Sentence(1, 0, "It ends the nearest loop, skipping the else clause.")]
    q = "Why does a for loop have an else clause?"
    similarity = [0.72, 0.82]  # the second passage's sentence is a little closer
    explained = forms.score_sentences(q, c, similarity, rank_weight=forms.rank_weight(
        "explanation"))
    assert forms.choose("explanation", q, c, explained, most=1) == [c[0]]
    compared = forms.score_sentences(q, c, similarity, rank_weight=forms.rank_weight(
        "comparison"))
    assert compared[1] > compared[0]  # each side of a comparison may be in another passage


def _sentences(*texts):
    return [forms.Sentence(hit, index, text) for hit, index, text in texts]


def test_choose_gives_each_form_its_shape():
    c = _sentences((0, 0, "Lists are mutable sequences."), (0, 1, "They hold items."),
                   (0, 2, "Lists grow."), (1, 0, "Tuples are immutable sequences."),
                   (1, 1, "Tuples are hashable."))
    scores = [0.9, 0.5, 0.4, 0.3, 0.2]
    q = "What is the difference between a list and a tuple?"
    assert [s.text for s in forms.choose("comparison", q, c, scores)] == [
        "Lists are mutable sequences.", "Tuples are immutable sequences."]
    assert [s.text for s in forms.choose("explanation", "How?", c, scores, most=2)] == [
        "Lists are mutable sequences.", "They hold items."]
    # "They ..." leans on the sentence before it, so it comes along
    assert [s.text for s in forms.choose("definition", "What is a list?", c, scores)] == [
        "Lists are mutable sequences.", "They hold items."]
    assert [s.text for s in forms.choose("definition", "What is a list?", c[2:],
                                         scores[2:])] == ["Lists grow."]
    assert [s.text for s in forms.choose("summary", "Summarize tuples", c,
                                         [0.1, 0.1, 0.1, 0.2, 0.9])] == [
        "Tuples are immutable sequences.", "Tuples are hashable."]
    assert forms.choose("factoid", "Who?", c, scores) == []


def test_a_comparison_skips_what_both_sides_share():
    same = "may only hold references to objects stored elsewhere in memory."
    c = _sentences((0, 0, f"Lists {same}"), (0, 1, "Lists are mutable: items can be replaced."),
                   (1, 0, f"Tuples {same}"), (1, 1, "Tuples are immutable once created."))
    q = "What is the difference between a list and a tuple?"
    assert forms.parallel(c[0].text, c[2].text, ["list", "tuple"])
    assert not forms.parallel(c[1].text, c[3].text, ["list", "tuple"])
    assert not forms.parallel("Lists grow.", "Tuples grow.", ["list", "tuple"])  # too short
    picked = forms.choose("comparison", q, c, [0.9, 0.5, 0.9, 0.5])
    assert [s.text for s in picked] == [c[1].text, c[3].text]
    # with nothing else to say about a side, its shared sentence is still quoted
    picked = forms.choose("comparison", q, c[:3], [0.9, 0.5, 0.9])
    assert [s.text for s in picked] == [c[1].text, c[2].text]


def test_render_cites_every_sentence_and_puts_the_verdict_first():
    c = _sentences((0, 0, "A is x."), (2, 0, "B is y."), (2, 1, "C is z."))
    assert forms.render(c[:2], lambda h: h + 1, form="comparison") == "A is x. [1] B is y. [3]"
    assert forms.render(c, lambda h: h + 1, form="list") == (
        "- A is x. [1]\n- B is y. [3]\n- C is z. [3]")
    assert forms.render(c[:1], lambda h: h + 1, form="yesno", verdict="Yes") == (
        "**Yes.** A is x. [1]")


def _hit(i, text, path="doc.rst"):
    passage = Passage(i, i, f"/docs/{path}", path, "", None, 1, 2, text)
    return Hit(passage=passage, score=1.0 - i / 10, rank=i + 1)


LISTS = ("Lists are mutable sequences, typically used to store collections of homogeneous "
         "items. Lists may be constructed in several ways.")
TUPLES = ("Tuples are immutable sequences, typically used to store collections of "
          "heterogeneous data. Tuples may be constructed in a number of ways.")
OTHER = "The pass statement is a null operation. Nothing happens when it is executed."


def _reading(hits, span="mutable"):
    return Reading(list(hits), ExtractiveAnswer(span, 1, f"**{span}** [1]", True))


def test_the_embedding_memo_embeds_each_text_once_and_gives_the_same_vectors(fake_embedder):
    from assistant.composer import EmbeddingMemo

    calls = []

    def embed(texts):
        calls.append(list(texts))
        return fake_embedder.embed(texts)

    memo = EmbeddingMemo(embed, size=3)
    texts = [LISTS, TUPLES, LISTS]
    assert np.array_equal(memo(texts), fake_embedder.embed(texts))
    assert calls == [[LISTS, TUPLES]]  # each text once
    assert np.array_equal(memo([TUPLES, OTHER]), fake_embedder.embed([TUPLES, OTHER]))
    assert calls[-1] == [OTHER]
    memo(["a", "b"])  # beyond the size: the oldest are dropped and embedded again
    memo([LISTS])
    assert calls[-1] == [LISTS] and memo([]).shape[0] == 0


@pytest.mark.slow
def test_a_comparison_cites_both_sides_and_finds_a_missing_one(real_embedder):
    q = "What is the difference between a list and a tuple?"
    both = [_hit(0, LISTS, "lists.rst"), _hit(1, OTHER), _hit(2, TUPLES, "tuples.rst")]
    out = Composer(real_embedder.embed).compose("comparison", q, _reading(both))
    assert "[1]" in out.answer.text and "[3]" in out.answer.text
    assert "immutable" in out.answer.text and out.answer.span == "mutable"
    assert out.sentences and all(n in (1, 3) for n, _ in out.sentences)

    searched = []

    def search(query, k):
        searched.append(query)
        return [_hit(7, TUPLES, "tuples.rst")]

    one = [_hit(0, LISTS, "lists.rst"), _hit(1, OTHER)]
    out = Composer(real_embedder.embed, search).compose("comparison", q, _reading(one))
    assert searched and searched[0].startswith("tuple")
    assert len(out.hits) == 3 and "[3]" in out.answer.text and "immutable" in out.answer.text


IS = 'The operators "is" and "is not" test for an object\u2019s identity.'
EQUALS = 'The operators "<", ">" and "==" compare the values of two objects.'
MINUS = 'The "-" operator yields the difference of its arguments.'


@pytest.mark.slow
def test_each_missing_side_is_searched_for_quoted(real_embedder):
    q = "How do the is operator and the == operator differ?"
    searched = []

    def search(query, k):
        searched.append(query)
        return [_hit(1, MINUS), _hit(5, IS, "comparisons.rst"),
                _hit(6, EQUALS, "comparisons.rst")]

    out = Composer(real_embedder.embed, search).compose(
        "comparison", q, _reading([_hit(0, MINUS)], span="difference"))
    # a function word or a symbol is searched quoted, in the question without the other side
    assert searched == ['How do the "is" operator and the operator differ?',
                        'How do the operator and the "==" operator differ?']
    assert len(out.hits) == 3 and "identity" in out.answer.text and "values" in out.answer.text
    assert "[2]" in out.answer.text and "[3]" in out.answer.text


@pytest.mark.slow
def test_a_yes_no_answer_says_no_when_the_evidence_does_and_never_a_bare_yes(real_embedder):
    q = "Can a list be used as a dictionary key?"
    keys = _hit(0, "Values that are not hashable, such as lists, may not be used as keys. "
                   "Dictionaries map keys to values.")
    composer = Composer(real_embedder.embed)
    said_no = dataclasses.replace(_reading([keys], span="not hashable"), verdict="No")
    assert composer.compose("yesno", q, said_no).answer.text.startswith("**No.** Values")
    # the model's "Yes" against the same evidence, or beside a sentence that only shares
    # the question's words, is not shown
    said_yes = dataclasses.replace(said_no, verdict="Yes")
    assert composer.compose("yesno", q, said_yes).answer.text.startswith("Values")
    lists = _hit(0, "Return a list of all the keys used in the dictionary d. It is new.")
    out = composer.compose("yesno", q, dataclasses.replace(_reading([lists], span="list"),
                                                           verdict="Yes"))
    assert not out.answer.text.startswith("**")
    # "No" needs a negation in the evidence
    out = composer.compose("yesno", q, dataclasses.replace(_reading([lists], span="list"),
                                                           verdict="No"))
    assert not out.answer.text.startswith("**")


@pytest.mark.slow
def test_factoids_and_abstentions_pass_through(real_embedder):
    hits = [_hit(0, LISTS)]
    reading = _reading(hits)
    composer = Composer(real_embedder.embed)
    assert composer.compose("factoid", "Who?", reading) is reading
    abstained = Reading(hits, ExtractiveAnswer("", None, "I could not find this."),
                        abstained=True)
    assert composer.compose("explanation", "How?", abstained) is abstained


def test_facts_match_whole_words_without_markup():
    assert question_set.facts_found("**No.** It is \\*not\\* hashable [1]",
                                    [["no"], ["hashable"], ["mutable"]]) == 2
    assert question_set.facts_found("nothing at all", [["no"]]) == 0
    assert question_set.facts_found("use --leak-check=yes", [["--leak-check"]]) == 1
    # the last word may be plural: "lists, tuples, and range objects" names all three
    assert question_set.facts_found("There are three: lists, tuples, and range objects.",
                                    [["list"], ["tuple"], ["range"], ["set"]]) == 3
    assert question_set.facts_found("class C: pass", [["class"], ["classes"], ["c"]]) == 2


def test_score_and_summary(tmp_path):
    gold = _hit(0, TUPLES, "objects.rst")
    other = _hit(1, OTHER, "pass.rst")
    turn = SimpleNamespace(answer="Tuples are immutable [1]; see also [2]", abstained=False,
                           hits=[gold, other], sources_shown=2, answer_s=1.5, form="yesno",
                           cited=lambda: [1, 2])
    q = {"id": "q1", "split": "tune", "form": "yesno", "question": "Are tuples immutable?",
         "facts": [["immutable"], ["hashable"]],
         "sources": [{"file": "objects.rst", "has": "immutable"}]}
    r = question_set.score(q, turn)
    assert (r.facts_found, r.facts_total, r.cited, r.cited_gold) == (1, 2, 2, 1)
    no = SimpleNamespace(answer="I could not find this", abstained=True, hits=[other],
                         sources_shown=1, answer_s=1.0, form="factoid", cited=lambda: [])
    u = question_set.score({"id": "q2", "question": "Who won?", "answerable": False,
                            "form": "factoid"}, no)
    s = question_set.summary([r, u])
    assert s["key_fact_recall"] == 50.0 and s["citation_correct"] == 50.0
    assert s["abstention_precision"] == 100.0 and s["abstention_f1"] == 100.0
    assert s["form_accuracy"] == 100.0
    rows = question_set.rows([r, u])
    assert [row["form"] for row in rows] == ["yesno", "factoid", "all"]

    path = tmp_path / "q.json"
    path.write_text(json.dumps({"corpora": {"py": "bundled:python-reference"},
                                "questions": [q | {"corpus": "py"}]}))
    corpora, questions = question_set.load(path)
    assert corpora == {"py": "bundled:python-reference"} and len(questions) == 1
    path.write_text(json.dumps({"corpora": {}, "questions": [q]}))
    with pytest.raises(ValueError, match="needs 'facts' and a 'corpus'"):
        question_set.load(path)


def test_the_shipped_question_file_is_well_formed():
    from pathlib import Path

    path = Path(__file__).parent.parent / "benchmarks" / "questions" / "real.json"
    corpora, questions = question_set.load(path)
    assert len(questions) >= 60
    assert sum(not q.get("answerable", True) for q in questions) >= 10
    assert {q["form"] for q in questions} == set(forms.FORMS)
    held = [q for q in questions if q["split"] == "heldout"]
    assert len(held) >= len(questions) // 3


@pytest.mark.slow
def test_a_definition_searches_once_more_for_a_sentence_saying_what_it_is(real_embedder):
    searched = []

    def search(query, k):
        searched.append(query)
        return [_hit(5, "Valgrind has many tools. Cachegrind is a cache and branch-prediction "
                        "profiler. It helps you make programs faster.", "manual-intro.html")]

    hits = [_hit(0, "This section talks about details you don't need to know about in order "
                    "to use Cachegrind, but may be of interest to some people.", "cg.html")]
    out = Composer(real_embedder.embed, search).compose(
        "definition", "What is Cachegrind?", _reading(hits, span="details"))
    assert searched == ["Cachegrind is"]
    assert out.answer.text.startswith("Cachegrind is a cache and branch-prediction profiler. [2]")
    assert "It helps you make programs faster. [2]" in out.answer.text  # leans back: kept


def test_a_summary_starts_at_the_opening_of_the_document_its_title_names(fake_embedder):
    try_ = _hit(0, "Additional notes on the try statement and exceptions. The raise statement "
                   "raises them here.", "try.rst")
    later = _hit(1, "Exception chaining can be suppressed with from None in a raise.",
                 "raise.rst")
    opening = dataclasses.replace(later, passage=dataclasses.replace(
        later.passage, id=7, line_start=1, text="The raise statement raises an exception. "
                                                "Without an expression it re-raises one."),
        score=0.0, rank=0)
    later = dataclasses.replace(later, passage=dataclasses.replace(later.passage, line_start=40,
                                                                   title='The "raise" statement'))
    opening = dataclasses.replace(opening, passage=dataclasses.replace(
        opening.passage, title='The "raise" statement'))
    asked = []

    def first_passages(document_id):
        asked.append(document_id)
        return [opening, later]  # the second is retrieved already: not added again

    composer = Composer(fake_embedder.embed, opening=first_passages)
    out = composer.compose("summary", "Summarize the raise statement.", _reading([try_, later]),
                           query="the raise statement.")
    assert asked == [later.passage.document_id]
    assert [h.passage.id for h in out.hits] == [0, 1, 7]
    assert out.answer.text.startswith("The raise statement raises an exception. [3] Without an "
                                      "expression it re-raises one. [3] Exception chaining")
    # without the document's opening at hand, the summary starts at its earliest passage found
    plain = Composer(fake_embedder.embed).compose("summary", "Summarize the raise statement.",
                                                  _reading([try_, later]),
                                                  query="the raise statement.")
    assert plain.answer.text.startswith("Exception chaining can be suppressed")


def test_a_summary_opens_the_document_and_goes_on_in_its_next_passage():
    c = _sentences((0, 0, "Later text about asserts."), (1, 0, "Assert statements insert checks:"),
                   (2, 0, "They are removed under optimisation."), (2, 1, "Another sentence here."))
    got = forms.choose("summary", "Summarize the assert statement.", c, [0.9, 0.5, 0.4, 0.3],
                       anchor=1, then=[2])
    assert [s.text for s in got] == ["Assert statements insert checks:",
                                     "They are removed under optimisation.",
                                     "Another sentence here."]


def test_a_sentence_repeated_by_an_overlapping_passage_is_quoted_once():
    c = _sentences((0, 0, "Assert statements insert checks:"), (0, 1, "They  are removed."),
                   (1, 0, "they are removed."), (1, 1, "Another sentence here."))
    kept = forms.distinct(c)
    assert [(s.hit, s.index) for s in kept] == [(0, 0), (0, 1), (1, 1)]
    got = forms.choose("summary", "Summarize the assert statement.", kept, [0.9, 0.5, 0.3],
                       anchor=0, then=[1])
    assert [s.text for s in got] == ["Assert statements insert checks:", "They  are removed.",
                                     "Another sentence here."]


def test_a_recap_names_each_turn_and_keeps_a_bare_verdict_with_its_reason():
    turns = [(1, "Are tuples immutable?", "**Yes.** Tuples are immutable sequences. [1] More."),
             (3, "What is a list?", "Lists are mutable sequences. [2] They hold items.")]
    assert forms.recap("recap", "", turns) == (
        "In this conversation:\n"
        "- Turn 1 — Are tuples immutable?: Yes. Tuples are immutable sequences.\n"
        "- Turn 3 — What is a list?: Lists are mutable sequences.")
    assert forms.recap("said", "lists", turns).splitlines()[1:] == [
        "- Turn 3 — What is a list?: Lists are mutable sequences."]
    assert forms.conversation_request("Please summarize our chat") == ("recap", "")
    assert forms.conversation_request("and what did you say about tuples?") == ("said", "tuples")
    assert forms.conversation_request("Summarize the assert statement.") is None


def test_a_split_with_no_answerable_question_has_no_recall():
    no = question_set.Scored("q", "heldout", "factoid", "factoid", "Who won?", "I could not",
                             False, True, 0, 0, 0, 0, 1.0)
    s = question_set.summary([no])
    assert s["key_fact_recall"] is None and s["gold_cited"] is None
    assert s["abstention_f1"] == 100.0


def test_a_command_after_the_sentence_that_introduces_it_is_quoted_with_it():
    text = ("If you want to debug a program with GDB, start Valgrind like this:\n\n"
            "valgrind --vgdb=yes --vgdb-error=0 prog\n\nIn another shell, start GDB:\n\n"
            "gdb prog\n\nThe next step is as follows:\n\nThis line is prose, not a command.")
    said = forms.sentences(0, text)
    assert [(s.text, s.code, s.intro) for s in said] == [
        ("If you want to debug a program with GDB, start Valgrind like this:",
         "valgrind --vgdb=yes --vgdb-error=0 prog", False),
        ("In another shell, start GDB:", "gdb prog", False),
        ("The next step is as follows:", "", True),
        ("This line is prose, not a command.", "", False)]
    assert forms.render(said[:2], lambda hit: hit + 1, form="explanation") == (
        "If you want to debug a program with GDB, start Valgrind like this: "
        "`valgrind --vgdb=yes --vgdb-error=0 prog` [1] In another shell, start GDB: "
        "`gdb prog` [1]")


def test_list_items_signatures_and_cut_sentences_are_not_taken_for_commands():
    text = ("Here are the objects considered false:\n\n* constants defined to be false: None\n\n"
            "Slice objects support one method:\n\nslice.indices(self, length)\n\n"
            "   Computes the slice's start and stop for a sequence of that length.\n\n"
            "It runs in two steps:\n\n1. find a module, loading it if necessary\n\n"
            "Assert statements insert checks:\n\nThe simple form, \"assert x\", is equivalent to")
    assert [s.code for s in forms.sentences(0, text)] == [""] * len(forms.sentences(0, text))


def test_a_sentence_under_a_heading_naming_the_question_scores_higher():
    c = _sentences((0, 0, "Deletion of a name removes its binding."), (1, 0, "Deletion here."))
    plain = forms.score_sentences("How does the del statement work?", c, [0.5, 0.5],
                                  rank_weight=0.0)
    headed = forms.score_sentences("How does the del statement work?", c, [0.5, 0.5],
                                   rank_weight=0.0, headings=['The "del" statement',
                                                              "Special method names"])
    assert plain[0] == plain[1]
    assert headed[0] == pytest.approx(plain[0] + forms.HEADING_WEIGHT * 2 / 3)
    assert headed[1] == plain[1]


def test_a_command_line_option_labels_the_description_under_it():
    text = ("--track-origins=<yes|no> [default: no]\n\nControls whether Memcheck tracks the "
            "origin of uninitialised values. By default, it does not.\n\n-z --zero\n\n"
            "Zero all event counters.\n\n--num-callers=<number> [default: 12]")
    said = forms.sentences(0, text)
    assert [(s.label, s.text, s.item, s.bare) for s in said] == [
        ("--track-origins=<yes|no> [default: no]",
         "Controls whether Memcheck tracks the origin of uninitialised values.", True, False),
        ("", "By default, it does not.", False, False),
        ("-z --zero", "Zero all event counters.", True, False),
        ("", "--num-callers=<number> [default: 12]", True, True)]  # cut off: not quoted alone
    assert forms.render(said[:1], lambda hit: hit + 1, form="definition") == (
        "`--track-origins=<yes|no> [default: no]`: Controls whether Memcheck tracks the origin "
        "of uninitialised values. [1]")


def test_a_comparison_takes_what_each_side_is_from_chapter_titles():
    heading = "9.\xa0Massif: a heap profiler > 9.2.\xa0Using Massif"
    titled = forms.heading_sentences(0, heading, ["Massif", "DHAT"])
    assert [(s.hit, s.index, s.text) for s in titled] == [(0, -1, "Massif: a heap profiler")]
    assert forms.heading_sentences(1, "10. DHAT: a dynamic heap analysis tool", ["", "DHAT"])[
        0].text == "DHAT: a dynamic heap analysis tool"
    c = titled + _sentences(
        (0, 0, "Massif does not have a massif.h file, but it implements two requests."),
        (1, -1, "DHAT: a dynamic heap analysis tool"),
        (1, 0, "DHAT been thoroughly overhauled, improved, and given a GUI."))
    got = forms.choose("comparison", "What is the difference between Massif and DHAT?", c,
                       [0.52, 0.657, 0.466, 0.508],  # as measured on the Valgrind manual
                       side_scores=[[0.455, 0.673, 0.3, 0.3], [0.3, 0.3, 0.346, 0.656]])
    assert [s.text for s in got] == ["Massif: a heap profiler",
                                     "DHAT: a dynamic heap analysis tool"]


def test_an_explanation_passes_over_an_aside_and_stops_at_what_leans_on_it():
    c = _sentences((0, 0, "Deletion is defined like assignment."),
                   (0, 1, "Rather than spelling it out, here are some hints."),
                   (0, 2, "Deletion of a name removes its binding from the namespace."),
                   (0, 3, "It raises NameError for an unbound name."))
    got = forms.choose("explanation", "How does del work?", c, [0.63, 0.09, 0.62, 0.14])
    assert [s.index for s in got] == [0, 2, 3]  # the aside left out; "It ..." follows its own
    got = forms.choose("explanation", "How does del work?", c, [0.63, 0.6, 0.1, 0.14])
    assert [s.index for s in got] == [0, 1]  # "It ..." would lean on the sentence passed over


def test_a_definition_goes_on_through_the_sentences_that_lean_on_it():
    c = _sentences((0, 0, 'A function defined with "async def" is a coroutine function.'),
                   (0, 1, "Such a function returns a coroutine object when called."),
                   (0, 2, "It may contain await expressions."),
                   (0, 3, "Coroutines were added in version 3.5."),
                   (0, 4, "They are awaitable."))
    got = forms.choose("definition", "What is a coroutine function?", c,
                       [0.9, 0.7, 0.3, 0.5, 0.2])
    assert [s.index for s in got] == [0, 1, 2]  # not past a sentence that starts afresh
    assert [s.index for s in forms.choose("definition", "What is a coroutine function?", c,
                                          [0.9, 0.7, 0.3, 0.5, 0.2], most=2)] == [0, 1]


def test_a_comparison_of_two_identifiers_quotes_the_description_under_each_signature():
    assert not forms.function_thing("__repr__") and forms.function_thing("==")
    assert not forms.function_thing("global variable") and forms.function_thing("is not")
    assert forms.names_thing("object.__repr__(self)", "__repr__")
    assert forms.names_thing("If a name is bound at the module level, it is a global variable.",
                             "global variable")
    c = [forms.Sentence(0, 0, "If a class defines __repr__() but not __str__(), __repr__() is "
                              "used for both.", item=False),
         forms.Sentence(0, 1, "Called by repr() to compute the official string.",
                        "object.__repr__(self)", True),
         forms.Sentence(1, 0, "Called by str() to compute the informal string.",
                        "object.__str__(self)", True)]
    got = forms.choose("comparison", "What is the difference between __str__ and __repr__?", c,
                       [0.8, 0.6, 0.6])  # +0.3 for the description under the signature
    assert [s.label for s in got] == ["object.__repr__(self)", "object.__str__(self)"]


def test_a_definition_list_term_labels_the_description_under_it():
    said = forms.sentences(0, "Sets\n   These represent a mutable set. They are created by\n"
                              '   the built-in "set()" constructor.\n\n'
                              "Frozen sets\n   These represent an immutable set.\n\n"
                              "1. If the subject value is not a mapping, the mapping\n"
                              "   pattern fails.")
    assert [(s.label, s.text) for s in said] == [
        ("Sets", "These represent a mutable set."),
        ("", 'They are created by the built-in "set()" constructor.'),
        ("Frozen sets", "These represent an immutable set."),
        ("", "If the subject value is not a mapping, the mapping pattern fails.")]
    assert not forms.leans_back(said[0])  # "These" is its label, not the sentence before
    assert forms.render(said[2:3], lambda hit: hit + 1, form="definition") == (
        "Frozen sets: These represent an immutable set. [1]")  # a term is not code


def test_a_comparison_side_is_not_named_by_a_longer_side_that_holds_it():
    c = forms.sentences(0, "Sets\n   These represent a mutable set.\n\n"
                           "Frozen sets\n   These represent an immutable set.")
    c.append(forms.Sentence(1, 0, 'Sets (instances of "set" or "frozenset") can be compared.'))
    assert not forms.names_thing(c[1].full, "sets", ["frozen sets"])
    got = forms.choose("comparison", "How do sets and frozen sets differ?", c, [0.67, 1.0, 0.82])
    assert [s.label for s in got] == ["Sets", "Frozen sets"]


def test_a_definition_with_an_abbreviation_and_a_back_reference_after_an_adverb():
    assert forms.defines("A basic block vector (BBV) is a list of all basic blocks.",
                         "basic block vector")
    c = forms.sentences(0, "Valgrind has a trapdoor mechanism via which the client program "
                           "can pass requests to Valgrind. Internally, this is used "
                           "extensively. For your convenience, a subset of these so-called "
                           "client requests is provided to tell Valgrind facts.")
    assert [forms.leans_back(s) for s in c] == [False, True, True]
    got = forms.choose("definition", "What are client requests?", c, [0.7, 0.2, 0.8])
    assert [s.index for s in got] == [0, 1, 2]  # back from the lead to what it leans on


def test_an_explanation_goes_on_through_a_lower_scoring_sentence_on_the_same_thing():
    c = _sentences((0, 0, "It selects exactly one of the suites by evaluating the expressions "
                          "until one is true; then that suite is executed."),
                   (0, 1, 'If all expressions are false, the suite of the "else" clause is '
                          "executed."))
    got = forms.choose("explanation", "How does the if statement decide which suite to run?",
                       c, [1.0, 0.69])
    assert [s.index for s in got] == [0, 1]  # shares "suite", "executed": not an aside


@pytest.mark.parametrize("name", ["more.json", "third.json"])
def test_the_tune_only_question_files_are_well_formed(name):
    from pathlib import Path

    corpora, questions = question_set.load(
        Path(__file__).parent.parent / "benchmarks" / "questions" / name)
    assert {q["split"] for q in questions} == {"tune"}
    assert {q["form"] for q in questions} == set(forms.FORMS)
    assert all(q.get("facts") and q.get("sources") for q in questions
               if q.get("answerable", True))


def test_a_list_question_lists_the_sections_under_the_heading_naming_what_it_asks_for():
    tool = "7. Helgrind: a thread error detector"
    headings = [tool, f"{tool} > 7.1. Overview",
                f"{tool} > 7.2. Detected errors: Misuses of the POSIX pthreads API",
                f"{tool} > 7.3. Detected errors: Inconsistent Lock Orderings",
                f"{tool} > 7.4. Detected errors: Data Races",
                f"{tool} > 7.4. Detected errors: Data Races > 7.4.1. A Simple Data Race"]
    assert forms.listed_sections("What kinds of errors does Helgrind detect?", headings[5],
                                 headings) == ("Detected errors", [
        (2, "Misuses of the POSIX pthreads API"), (3, "Inconsistent Lock Orderings"),
        (4, "Data Races")])
    types = "The standard type hierarchy"
    headings = [types, f"{types} > Callable types",
                f"{types} > Callable types > User-defined functions",
                f"{types} > Callable types > User-defined functions > Special attributes",
                f"{types} > Callable types > Instance methods",
                f"{types} > Callable types > Classes", f"{types} > Modules",
                f"{types} > Sequences", f"{types} > Sequences > Immutable sequences",
                f"{types} > Sequences > Mutable sequences"]
    title, items = forms.listed_sections("What kinds of callable types are there?",
                                         headings[5], headings)
    assert (title, [name for _, name in items]) == (
        "Callable types", ["User-defined functions", "Instance methods", "Classes"])
    # fewer than three sections, or a heading with a word the question does not have: none
    assert forms.listed_sections("What are the basic sequences?", headings[8],
                                 headings) == ("", [])
    assert forms.listed_sections("What kinds of functions are there?", headings[4],
                                 headings) == ("", [])


def test_a_listed_section_cites_its_first_passage(fake_embedder):
    def section(i, heading, text):
        hit = _hit(i, text, "types.rst")
        return dataclasses.replace(hit, passage=dataclasses.replace(
            hit.passage, heading=heading, document_id=3))

    head = "Hierarchy > Callable types"
    starts = [section(10, "Hierarchy", "Types."), section(11, head, "These can be called:"),
              section(12, f"{head} > User-defined functions", "A function is made by def."),
              section(13, f"{head} > Classes", "Classes are callable."),
              section(14, f"{head} > Class instances", "Instances may be callable.")]
    found = dataclasses.replace(starts[3], rank=1)
    composer = Composer(fake_embedder.embed, sections=lambda document_id: starts)
    out = composer.compose("list", "What kinds of callable types are there?",
                           _reading([found, _hit(1, OTHER)]))
    assert out.answer.text == ("Callable types:\n- User-defined functions [3]\n- Classes [1]\n"
                               "- Class instances [4]")
    assert [h.passage.id for h in out.hits] == [13, 1, 12, 14]


def test_the_description_labelled_with_the_option_the_question_names_scores_higher():
    assert forms.asked_names("What is the default of --freelist-vol and -O, or len()?") == {
        "--freelist-vol", "-O", "len"}
    assert forms.label_name("--freelist-vol=<number> [default: 20000000]") == "--freelist-vol"
    assert forms.label_name("object.__enter__(self)") == "__enter__"
    assert forms.label_name("Frozen sets") == ""
    c = [forms.Sentence(0, 0, "Memcheck re-circulates the blocks bigger than --freelist-vol.",
                        "--freelist-big-blocks=<number> [default: 1000000]", True),
         forms.Sentence(0, 1, "Freed memory is placed in a queue of freed blocks.",
                        "--freelist-vol=<number> [default: 20000000]", True)]
    scores = forms.score_sentences("What is the default value of --freelist-vol?", c,
                                   [0.6, 0.6], rank_weight=0.0, heading_weight=0.0)
    assert scores[1] == pytest.approx(scores[0] + forms.LABEL_WEIGHT)


def test_a_how_do_i_question_prefers_the_sentence_that_shows_the_command():
    assert forms.asks_how_to("how do I run it?") and forms.asks_how_to("How to run DHAT?")
    assert not forms.asks_how_to("How does the with statement work?")
    c = [forms.Sentence(0, 0, "DHAT's viewer can be run in a web browser."),
         forms.Sentence(1, 0, "To run DHAT on a program prog, run:",
                        code="valgrind --tool=dhat prog")]
    plain = forms.score_sentences("DHAT how do I run it?", c, [0.6, 0.6], rank_weight=0.0)
    how = forms.score_sentences("DHAT how do I run it?", c, [0.6, 0.6], rank_weight=0.0,
                                procedure=True)
    assert how[0] == plain[0] and how[1] == pytest.approx(plain[1] + forms.LABEL_WEIGHT)


def test_release_notes_lose_a_rank_unless_the_question_asks_about_changes():
    assert forms.changelog("2. NEWS", "/doc/dist.news.html")
    assert forms.changelog("", "/p/CHANGELOG.md") and forms.changelog("", "/p/HISTORY.rst")
    assert not forms.changelog("History of Python", "/p/history_of.rst")
    assert not forms.changelog("4. README", "/doc/dist.readme.html")
    c = [forms.Sentence(0, 0, "DHAT has been extended, with two new modes of operation."),
         forms.Sentence(1, 0, "DHAT is a tool for examining how programs use their heap.")]
    scores = forms.score_sentences("What is DHAT?", c, [0.6, 0.6], rank_weight=0.0,
                                   changelogs=[True, False])
    assert scores[0] == pytest.approx(scores[1] - forms.CHANGELOG_WEIGHT)
    asked = forms.score_sentences("What is new in DHAT?", c, [0.6, 0.6], rank_weight=0.0,
                                  changelogs=[True, False])
    assert asked == forms.score_sentences("What is new in DHAT?", c, [0.6, 0.6],
                                          rank_weight=0.0)


def test_a_definition_from_a_chapter_title_goes_on_only_to_a_sentence_defining_the_term():
    c = forms.heading_sentences(0, "10. DHAT: a dynamic heap analysis tool > 10.3. Viewer",
                                ["DHAT"]) + forms.sentences(
        0, "DHAT's viewer can be run in a web browser by loading the file.")
    got = forms.choose("definition", "What is DHAT?", c, [0.9, 0.85])
    assert [s.text for s in got] == ["DHAT: a dynamic heap analysis tool"]
    c = forms.heading_sentences(0, "12. Nulgrind: the minimal Valgrind tool", ["Nulgrind"]) + \
        forms.sentences(0, "Nulgrind is the simplest possible Valgrind tool. It performs no "
                           "instrumentation or analysis of a program.")
    got = forms.choose("definition", "What is Nulgrind?", c, [0.9, 0.85, 0.4])
    assert [s.index for s in got] == [-1, 0, 1]


def test_a_definition_that_is_only_a_chapter_title_adds_the_documents_own_definition(
        fake_embedder):
    def at(hit, heading, line):
        return dataclasses.replace(hit, passage=dataclasses.replace(
            hit.passage, heading=heading, document_id=4, line_start=line))

    viewer = at(_hit(0, "The viewer can be run in a web browser by loading the file.",
                     "dh-manual.html"), "10. DHAT: a dynamic heap analysis tool > Viewer", 40)
    overview = at(_hit(9, "DHAT is a tool for examining how programs use their heap "
                          "allocations. It tracks each block.", "dh-manual.html"),
                  "10. DHAT: a dynamic heap analysis tool > Overview", 1)
    composer = Composer(fake_embedder.embed, opening=lambda document_id, n=2: [overview])
    out = composer.compose("definition", "What is DHAT?", _reading([viewer], span="viewer"))
    assert out.answer.text == ("DHAT: a dynamic heap analysis tool [1] DHAT is a tool for "
                               "examining how programs use their heap allocations. [2]")
    assert [h.passage.id for h in out.hits] == [0, 9]
