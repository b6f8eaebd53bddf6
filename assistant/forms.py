"""Question forms and the answer shape each one gets.

A span is the right answer to "who / when / which / how many"; "how", "why", "what is the
difference", "list the …" and "summarise" need sentences drawn from one or more passages.
:func:`classify` names the form of a question by rules (measured on the question set's tune
split, ``benchmarks/questions/real.json``); :func:`sentences` splits passages into the
sentences an answer may quote; :func:`choose` picks them for a form from per-sentence scores
(see :func:`score_sentences`) and :func:`render` joins them into a short cited answer.

This module is plain Python: the scores come from the caller (the embedder and the reader).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from .attribution import CITATION

FORMS = ("factoid", "definition", "explanation", "comparison", "list", "yesno", "summary")

_LEAD_IN = re.compile(r"^\s*(and|but|also|so|then|ok|okay|now|well)\b[\s,]*", re.I)
_SUMMARY = re.compile(
    r"^(summari[sz]e|sum up|give (me )?(an? )?(short |brief )?(overview|summary|outline)|"
    r"(an? )?(overview|summary) of|tl;?dr|what is (this|the) (document|page|section|chapter) "
    r"about)\b", re.I)
_COMPARISON = re.compile(
    r"\b(differences?|differ|differs|compare[sd]?|comparison|versus|vs\.?|distinguish|"
    r"contrast)\b|\bhow is .+ different from\b", re.I)
_LIST = re.compile(r"^(list|name|enumerate)\b|\b(kinds|types|sorts) of\b", re.I)
_PLURAL_ASK = re.compile(
    r"^(what|which)\s+(?:[\w-]+\s+){0,2}?(\w+s)\s+(are|do|does|can|must|should|will|were|did)\b",
    re.I)
_WHAT_ARE_THE = re.compile(r"^what are (the|all) \w+", re.I)
_YES_NO = re.compile(
    r"^(is|are|was|were|do|does|did|can|could|should|will|would|has|have|had|may|must|"
    r"shall|isn't|aren't|doesn't|don't|can't)\b", re.I)
_HOW_MUCH = re.compile(r"^how (many|much|long|old|far|often|big|large|small|fast|slow|"
                       r"soon|early|late)\b", re.I)
_EXPLANATION = re.compile(
    r"^(how|why|explain|describe|what happens|what is the (purpose|reason|point|use)|"
    r"what are the (advantages|benefits|reasons)|in what way)\b", re.I)
_DEFINITION = re.compile(
    r"^(what(?:'s| is| are| does)|define|meaning of)\s+(?P<term>(?:(?:a|an|the)\s+)?"
    r"[^?]{1,40}?)\s*(?:mean|do|stand for)?\s*\??$", re.I)
_REQUEST = re.compile(
    r"^(?:(?:can|could|would|will) you(?: please)?|please)\s+(?=(?:tell|explain|describe|list|"
    r"name|give|show|summari[sz]e|sum up|compare|contrast|say|elaborate|expand|clarify|define|"
    r"outline|go on|continue|walk me)\b)", re.I)
"""A polite request's opening ("Can you", "Could you please", "Please") before what is asked
for ("explain ...", "list ...", "say more ..."): not a yes/no question."""
_TELL_ME = re.compile(r"^tell me\s+(?=(?:what|which|who|when|where|why|how)\b)", re.I)
_EMBEDDED_WHAT = re.compile(r"^what (?P<term>[^?]{1,40}?) (?P<verb>is|are)\W*$", re.I)
_EMBEDDED_DOES = re.compile(r"^what (?P<term>[^?]{1,40}?) (?P<verb>does|do)\W*$", re.I)
_MORE = re.compile(
    r"^(?:(?:say|tell(?: me)?|explain|give(?: me)?|write|show(?: me)?)\s+(?:a (?:bit|little) |"
    r"some(?:thing)? )?more\b|(?:elaborate|expand) on (?:that|this|it)\b|more about "
    r"(?:that|this|it)\b|(?:explain|clarify) (?:that|this|it)(?: (?:again|further|more "
    r"simply|in simpler terms|in more detail))?\W*$|what do you mean\b|"
    r"(?:go on|continue|elaborate|more|more details?|more info(?:rmation)?)"
    r"(?:,? please)?\W*$)", re.I)
"""A request to say more about the previous answer ("say more about that", "go on",
"explain that", "what do you mean?"; "go on", "continue" and "more" only as the whole
request: "continue statements" is a topic)."""
_EXAMPLE = re.compile(r"^(?:give|show)(?: me)? (?:an?|some|another) (?:code )?examples?"
                      r"(?: of (?:that|this|it|them|those))?(?:,? please)?\W*$", re.I)
"""A request for an example of what was said ("give me an example", "show an example of
that"); "give an example of a decorator" has a topic of its own."""
_QUESTION_WORDS = re.compile(r"\b(what|which|who|whom|whose|when|where|why|how|name of|"
                             r"number of|called)\b", re.I)


_NAME = re.compile(r"[^\W_]*[A-Z][^\W_]*|\w*_\w*")


def names(question: str) -> list[str]:
    """The words of ``question`` that name something: acronyms and words with a capital
    ("UDP", "PostgreSQL", "Pride", "Memcheck") other than the first word's capital alone, and
    identifiers with an underscore (``__repr__``); unique, in order. Single letters, words
    with digits ("O2", "103.5FM") and the question's own function words are left out. A
    question written in capitals or Title Case (over half of its other words capitalised)
    keeps only acronyms and mixed-case words, whose capitals mean something there.

    A name that occurs nowhere in the documents is one they cannot say anything about
    (see :func:`misspelt` and ``DialogueManager._not_mentioned``)."""
    words = [w.strip("'’-").split("'")[0].split("’")[0]
             for w in re.findall(r"[\w'’-]+", question)]
    lettered = [w for w in words if any(c.isalpha() for c in w)]
    shouting = all(w.isupper() for w in lettered)
    later = words[1:]
    title = sum(1 for w in later if w[:1].isupper()) * 2 > len(later) > 1
    found: list[str] = []
    for i, word in enumerate(words):
        if (len(word) < 2 or word.lower() in _STOP or not _NAME.fullmatch(word)
                or any(c.isdigit() for c in word)):
            continue
        acronym = word.isupper()
        mixed = (any(c.islower() for c in word)
                 and (sum(c.isupper() for c in word) >= 2 or not word[0].isupper()))
        capitalised = word[0].isupper() and not acronym and not mixed
        named = ("_" in word or mixed or (acronym and not shouting)
                 or (capitalised and i > 0 and not title))
        if named and word not in found:
            found.append(word)
    return found


def misspelt(name: str, texts: Sequence[str]) -> str | None:
    """A word of ``texts`` that ``name`` (4 letters or more) looks like a misspelling of
    ("Hollwood" → "hollywood", "Ghandi" → "gandhi"): at most two letters longer or shorter
    and a :class:`difflib.SequenceMatcher` ratio of 0.8 or more; else None. On SQuAD dev this
    keeps 12 of the 19 questions whose names the corpus lacks (all typos of names it has)."""
    import difflib

    wanted = name.lower()
    if len(wanted) < 4:
        return None
    for text in texts:
        for word in set(re.findall(r"\w+", text.lower())):
            if (abs(len(word) - len(wanted)) <= 2
                    and difflib.SequenceMatcher(None, wanted, word).ratio() >= 0.8):
                return word
    return None


def spelled_out(acronym: str, texts: Sequence[str]) -> str | None:
    """Consecutive words of ``texts`` whose initials spell ``acronym`` (2–6 capitals; an
    ending "s" is a plural: "NYC" → "New York City", "RBs" → "running backs"), the way
    Schwartz & Hearst (2003) match an abbreviation to its long form; else None."""
    letters = acronym[:-1] if acronym.endswith("s") and acronym[:-1].isupper() else acronym
    if not (2 <= len(letters) <= 6 and letters.isupper() and letters.isalpha()):
        return None
    size = len(letters)
    for text in texts:
        words = re.findall(r"[A-Za-z][\w'’-]*", text)
        initials = "".join(w[0].upper() for w in words)
        at = initials.find(letters)
        if at >= 0:
            return " ".join(words[at:at + size])
    return None


def _asked_for(question: str) -> str:
    """``question`` with its white space collapsed, a leading "and"/"so"/"well" and a polite
    "Can you"/"please" left out: what it asks ("Can you explain X?" -> "explain X?")."""
    return _REQUEST.sub("", _LEAD_IN.sub("", " ".join(question.split())).strip())


def more_request(question: str) -> str | None:
    """``"more"`` when ``question`` only asks to say more about the previous answer ("Can you
    say more about that?", "go on", "tell me more"), ``"example"`` when it asks for an example
    of it ("Could you give an example?"), else None. Such a request has no topic of its own:
    the turn it follows gives it (:func:`assistant.dialogue.retrieval_query`)."""
    q = _asked_for(question)
    if _MORE.match(q):
        return "more"
    if _EXAMPLE.match(q):
        return "example"
    return None


_ASKS_DIFFERENCE = re.compile(
    r"^(?:what(?:'s| is| are)|tell me|explain) the (?:main |key )?differences? between\s+"
    r"|^(?:compare|contrast)\s+", re.I)


def search_text(question: str) -> str:
    """``question`` without the words that only ask for a summary or a comparison, for
    retrieval ("Summarize what Valgrind is." -> "what Valgrind is."; "Give an overview of the
    import statement." -> "the import statement."; "What is the difference between a list
    and a tuple?" -> "a list and a tuple?"): the documents do not say "summarize", and a
    passage that does ("Summarizing:", "yields the difference of its arguments") is no
    better a source for it. Unchanged when nothing else would be left."""
    q = _asked_for(question)
    rest = re.sub(r"^(?:of|on|about)\s+", "", _SUMMARY.sub("", q, count=1).strip(" ,:"))
    rest = _ASKS_DIFFERENCE.sub("", rest, count=1)
    return rest if rest != q and re.search(r"\w", rest) else question


def classify(question: str, previous: str | None = None) -> str:
    """The form of ``question``: one of :data:`FORMS`.

    Follow-ups: a leading "and"/"but"/"so" is ignored, and a question with no verb of its
    own ("and tuples?", "what about DRD?") keeps the ``previous`` turn's form. A polite
    request is read as what it asks for ("Can you explain how X works?": an explanation, not
    a yes/no question; "tell me how X works" as "how X works"), and a request to say more
    ("Can you say more about that?", "go on") keeps a previous form of several sentences,
    else is an explanation.
    """
    q = _asked_for(question)
    if _TELL_ME.match(q):  # "tell me what a tuple is": "what is a tuple"
        q = _EMBEDDED_WHAT.sub(r"what \g<verb> \g<term>", _TELL_ME.sub("", q))
        q = _EMBEDDED_DOES.sub(r"what does \g<term> do", q)
    kind = more_request(q)
    if kind == "more":
        return previous if previous not in (None, "factoid", "yesno") else "explanation"
    if kind == "example" or re.match(r"^why\b|^(give|show) (me )?(an?|some) examples?", q,
                                     re.I):
        return "explanation"
    if previous and (re.match(r"^(what|how) about\b", q, re.I) or (
            len(q.split()) <= 3 and not _YES_NO.match(q) and not _QUESTION_WORDS.search(q))):
        return previous
    if _SUMMARY.search(q):
        return "summary"
    if _COMPARISON.search(q):
        return "comparison"
    if _YES_NO.match(q):
        return "yesno"
    if _LIST.search(q) or _WHAT_ARE_THE.match(q) or _PLURAL_ASK.match(q):
        return "list"
    if _HOW_MUCH.match(q):
        return "factoid"
    if _EXPLANATION.match(q):
        return "explanation"
    match = _DEFINITION.match(q)
    if match and not _QUESTION_WORDS.search(match.group("term")) and len(
            match.group("term").split()) <= 5:
        return "definition"
    return "factoid"


def compared(question: str) -> tuple[str, str] | None:
    """The two things a comparison asks about ("a list and a tuple" -> ``("list", "tuple")``),
    or None when they cannot be told apart."""
    q = " ".join(question.split()).rstrip("?. ")
    between = re.search(r"between (.+)$", q, re.I)
    if between:  # "between the and and or operators": the first split leaving two things
        words = between.group(1).split(" ")
        for i, word in enumerate(words):
            if word.lower() == "and" and 0 < i < len(words) - 1:
                a, b = _thing(" ".join(words[:i])), _thing(" ".join(words[i + 1:]))
                if a and b:
                    return a, b
    patterns = (
        r"^(?:how|in what way)s? (?:do|does|is|are) (?P<a>.+?) (?:differ|different) from "
        r"(?P<b>.+)$",
        r"^(?:how|in what way)s? (?:do|does) (?P<a>.+?) and (?P<b>.+?) (?:differ|compare)",
        r"^(?:compare|contrast) (?P<a>.+?) (?:and|with|to) (?P<b>.+)$",
        r"(?P<a>\S+(?: \S+)?) (?:vs\.?|versus) (?P<b>.+)$",
        r"^how does (?P<a>.+?) differ from (?P<b>.+)$",
    )
    for pattern in patterns:
        m = re.search(pattern, q, re.I)
        if m:
            return _thing(m.group("a")), _thing(m.group("b"))
    return None


def _thing(text: str) -> str:
    text = re.sub(r"^(the|a|an)(\s+|$)", "", text.strip(), flags=re.I)
    text = re.sub(r"\s+(operators?|statements?|objects?|memory|blocks?)$", "", text, flags=re.I)
    return text.strip(" \"'")


@dataclass(frozen=True)
class Sentence:
    """A sentence of a retrieved passage: ``hit`` (0-based), ``index`` (order in the
    passage), ``text`` (whitespace collapsed, list bullet removed) and ``label``."""

    hit: int
    index: int
    text: str
    label: str = ""
    """The signature a description stands under (``object.__enter__(self)``), for its first
    sentence; quoted before it, since the description alone does not name what it describes."""
    item: bool = False
    """True for the first sentence of a list item (a bullet, or a description under its
    signature)."""
    code: str = ""
    """The one-line command or code an introducing sentence leads to ("start Valgrind like
    this:" ``valgrind --vgdb=yes --vgdb-error=0 prog``), quoted after it."""

    @property
    def full(self) -> str:
        """The text with its label and code, as it is scored and shown."""
        text = f"{self.text} {self.code}" if self.code else self.text
        return f"{self.label}: {text}" if self.label else text

    @property
    def bare(self) -> bool:
        """True for a signature or an option alone, its description cut off by the passage's
        end: a list item, but no answer to quote on its own."""
        return self.item and not self.label and _labels(self.text)

    @property
    def intro(self) -> bool:
        """True for a sentence that introduces what follows ("... as follows:") and does not
        have it with it (a ``code`` line)."""
        return self.text.endswith(":") and not self.code


_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9\"*])")
_JUNK = re.compile(r"^[*=~^#\-_]{3,}$|::=|^\s*>>>|^\s*\.\.\.\s|\+-{3,}|\|.*\|")
_ABBREVIATION = re.compile(r"\b(?:e\.g|eg|i\.e|ie|cf|etc|vs|viz|approx|no|fig|sec)\. ", re.I)
_BULLET = re.compile(r"^(?:[*\-•]|\d+\.|\(\w\))\s+")
_SIGNATURE = re.compile(r"^(?:class |async def |def )?(?P<name>[A-Za-z_][\w.]*)\(.{0,80}\)"
                        r"(?: -> \S.*)?$")
_OPTION_NAME = r"--?[A-Za-z][\w-]*"
"""An option's name ("--freelist-vol", "-O"), as a pattern."""
_OPTION = re.compile(rf"^{_OPTION_NAME}(?:=\S+)?(?:,? {_OPTION_NAME}(?:=\S+)?)*"
                     r"(?: \[default: [^\]]{1,40}\])?$")
"""A command-line option as a manual lists it, alone on its line above its description
(``--track-origins=<yes|no> [default: no]``, ``-z --zero``)."""


_TERM = re.compile(r"^(?![*\-•\[(]|\d+\.)\S+(?: \S+){0,5}$(?<![.,:;!?])")
"""A definition list's term: a line of one to six words, not indented and not closed by
punctuation, above its indented description ("Frozen sets" over "These represent an
immutable set."), as reStructuredText and Sphinx's text output write them."""


def _labels(line: str) -> bool:
    """True for a line that names what the block under it describes: a signature
    (``object.__enter__(self)``) or a command-line option (:data:`_OPTION`)."""
    return bool(_SIGNATURE.match(line) or _OPTION.match(line))

_POINTER = re.compile(
    r"^(?:for (?:more|further|additional|full) (?:information|details|discussion)\b"
    r"|see (?:also\b|the (?:section|chapter|documentation)\b|section\b|chapter\b)"
    r"|refer to\b|more (?:information|details) (?:on|about|can be found)\b"
    r"|(?:additional|more|further) (?:information|details)\b.{0,80}\b(?:can|may) be found\b)",
    re.I)


def sentences(hit: int, text: str) -> list[Sentence]:
    """The sentences of one passage, in order: split at sentence ends and at blank lines or
    list bullets (bullet marks dropped). Left out: headings' underlines, indented blocks
    other than prose (code; see :func:`_prose`), grammar rules
    (``::=``), tables, code prompts, questions (an FAQ's own question restates the user's,
    it does not answer it), title-case lines (headings, tables of contents), fragments with
    no closing punctuation that are not list items (text cut by code or by the passage's
    end), pointers elsewhere ("For more information on context managers, see Context
    Manager Types.") and pieces under four words. A signature or a command-line option alone
    on its line is the label of the description under it, or, when the passage ends before
    its description, a list item of its own. A one-line command or line of code after a
    sentence that introduces it ("start Valgrind like this:") is that sentence's ``code``."""
    out: list[Sentence] = []
    blocks = re.split(r"\n\s*\n|\n(?=\s*(?:[*\-•]|\d+\.)\s)", text)
    signature = ""
    for block in blocks:
        lines = [line for line in block.splitlines() if line.strip()]
        label, signature = signature, ""
        if not lines or any(_JUNK.search(line.strip()) for line in lines[:1]):
            continue
        if len(lines) == 1 and _labels(lines[0].strip()):
            signature = lines[0].strip()  # the next block describes it
            continue
        if out and out[-1].intro and len(lines) == 1 and _COMMAND.match(lines[0].strip()):
            out[-1] = replace(out[-1], code=lines[0].strip())
            continue
        if len(lines) > 1 and _TERM.match(lines[0]) and all(
                line.startswith("   ") for line in lines[1:]):
            label, lines = lines[0].strip(), lines[1:]  # a definition list's term
        indented = all(line.startswith("   ") for line in lines)
        if indented and len(lines) > 1 and not _prose(lines):
            continue  # an indented code or grammar block
        flat = _ABBREVIATION.sub(lambda m: m.group(0).replace(". ", ".\x00"),
                                 " ".join(" ".join(lines).split()))
        item = bool(_BULLET.match(flat))
        pieces = _SPLIT.split(_BULLET.sub("", flat))
        for n, piece in enumerate(pieces):
            piece = _BULLET.sub("", piece.strip()).replace("\x00", " ")
            closed = bool(re.search(r"[.!:;][\"')\]]*$", piece))
            if (len(re.findall(r"[A-Za-z]{2,}", piece)) < 4 or _JUNK.search(piece)
                    or _POINTER.match(piece)
                    or piece.endswith("?") or _title_case(piece)
                    or not (closed or (item and n == len(pieces) - 1))):
                continue
            # Sphinx indents a signature's description; a manual need not indent an option's
            labelled = label if indented or _OPTION.match(label) else ""
            out.append(Sentence(hit, len(out), piece, labelled,
                                bool(labelled) or (item and n == 0)))
            label = ""
    if signature:  # the passage ends on a signature; its description is in the next one
        out.append(Sentence(hit, len(out), signature, item=True))
    return out


_COMMAND = re.compile(r"^(?=.{3,80}$)(?!\d+\.\s)[a-z_$(./]\S*(?: \S+){1,7}$(?<![.!?;:,])")
"""A line of two to eight words that starts in lower case or with a symbol and has no closing
punctuation: a command or a line of code (``valgrind --leak-check=yes myprog``, ``gdb
prog``, ``(gdb) target remote | vgdb``), as a block of its own; not a list item, not a
sentence cut short ("The simple form, "assert expression", is equivalent to")."""


def _prose(lines: Sequence[str]) -> bool:
    """True when an indented block is prose (a method's description under its signature, as
    Sphinx's text output indents it) rather than code: it ends a sentence, and at least 80 %
    of its 8 or more words are plain words."""
    words = " ".join(lines).split()
    plain = [w for w in words if re.fullmatch(r"[(\"“'‘]*[A-Za-z][a-z’'-]*[)\"”'’.,;:!?]*", w)]
    return (len(words) >= 8 and len(plain) >= 0.8 * len(words)
            and bool(re.search(r"[.!?:][\"')\]”’]*$", lines[-1].strip())))


def _title_case(text: str) -> bool:
    """True for a heading-like line: no closing punctuation and most longer words
    capitalised ("Hints and Tips for Effective Use of Helgrind")."""
    if re.search(r"[.!?:;]$", text):
        return False
    words = [w for w in re.findall(r"[A-Za-z][\w-]*", text) if len(w) > 3]
    return bool(words) and sum(w[0].isupper() for w in words) >= 0.6 * len(words)


_BACK_REFERENCE = re.compile(r"^(therefore|thus|hence|so|this|these|that|those|it|they|its|"
                             r"their|however|but|also|then|otherwise|instead|in short|such)\b",
                             re.I)


_BACK_REFERENCE_LATER = re.compile(
    r"^\w+ly,? (?:this|these|that|those|it|they)\b|^.{0,40}?\b(?:some|many|most|all|each|"
    r"one|none|any|a subset|a few|several|both) of (?:these|those|them)\b", re.I)
"""A back reference after an adverb ("Internally, this is used ...") or in a quantity early
in the sentence ("For your convenience, a subset of these so-called client requests ...")."""


def leans_back(sentence: Sentence) -> bool:
    """True when the sentence leans on the one before it ("Therefore ...", "It ...",
    "Internally, this ...", "..., a subset of these ..."); never for a labelled one
    ("Frozen sets: These represent ..." is about its label)."""
    return not sentence.label and bool(_BACK_REFERENCE.match(sentence.text)
                                       or _BACK_REFERENCE_LATER.match(sentence.text))


_STOP = frozenset("""a an the of to in on for and or is are was were be been being do does did
what which who whom how why when where that this these those it its with as by at from can
could should would will shall may might must i you we they my your our their me us about
into than then there here so not no yes if else between difference differences differ
compare""".split())


_NEGATION = re.compile(r"\b(not|no|never|cannot|can't|doesn't|don't|isn't|aren't|won't|"
                       r"mustn't|shouldn't|nor|neither|impossible|unable)\b|n't\b", re.I)


def negated(text: str) -> bool:
    """True when ``text`` holds a negation ("not", "cannot", "doesn't", ...)."""
    return bool(_NEGATION.search(text))


def content_words(text: str) -> set[str]:
    """Lower-case words of ``text`` minus stop words (for overlap scores)."""
    return {w for w in re.findall(r"[a-z0-9_]+", text.lower()) if w not in _STOP}


RANK_WEIGHT = 0.2
"""Score a sentence loses per rank of its passage in the reranked order (see
:func:`score_sentences`): the reader's likelihood ranked the passages, the sentence scores
only compare sentences. 0.05 -> 0.2 on the question set's tune split: citation correct
79.5 -> 84.1, key-fact recall unchanged; 0.1 changed no answer, 0.35 the same ones as 0.2
(BENCHMARKS.md, "Answer forms", round 5)."""
COMPARISON_RANK_WEIGHT = 0.05
"""The same for a comparison, whose two sides are often in two passages: the second side's
passage must not lose to a worse sentence about it in the first."""


def rank_weight(form: str) -> float:
    """The :func:`score_sentences` ``rank_weight`` for a question ``form``."""
    return COMPARISON_RANK_WEIGHT if form == "comparison" else RANK_WEIGHT


HEADING_WEIGHT = 0.1
"""Score a sentence gains (× the share of the question's content words) for its passage's
heading: a sentence under 'The "del" statement' is about the del statement, one under
"Special method names" that mentions ``del x`` is not (see :func:`score_sentences`)."""


LABEL_WEIGHT = 0.3
"""Score a sentence gains when its label is the option or function the question names
(``--freelist-vol=<number> [default: 20000000]`` for "What is the default value of
--freelist-vol?", not the ``--freelist-big-blocks`` description that mentions it); the same
weight as a comparison's sentence saying what a side is."""


_HOW_DO_I = re.compile(r"^(?:(?:and|so|then|ok|okay),?\s+)?how (?:do|can|could|should|would|"
                       r"shall) (?:i|you|we|one)\b|^(?:and\s+)?how to\b", re.I)
"""A question for a procedure ("How do I run my program under Memcheck?", "how to ..."):
a sentence that shows its command answers it (:data:`LABEL_WEIGHT` more)."""


def asks_how_to(question: str) -> bool:
    """True for a question asking how to do something ("How do I run it?", "how to ...")."""
    return bool(_HOW_DO_I.match(question.strip()))


def label_name(label: str) -> str:
    """What a label names: an option ("--freelist-vol=<number> [default: 20000000]" ->
    "--freelist-vol") or a function ("object.__enter__(self)" -> "__enter__"); "" for a
    definition list's term."""
    option = re.match(_OPTION_NAME, label)
    if option:
        return option.group(0)
    function = _SIGNATURE.match(label)
    return function.group("name").split(".")[-1] if function else ""


def asked_names(question: str) -> set[str]:
    """The options ("--freelist-vol", "-O") and functions ("len()", "__enter__",
    "object.__enter__") ``question`` names, as :func:`label_name` gives them."""
    options = re.findall(rf"(?<![\w-]){_OPTION_NAME}", question)
    functions = re.findall(r"[A-Za-z_][\w.]*(?=\(\))|\b\w*_\w*\b", question)
    return set(options) | {f.split(".")[-1] for f in functions}


CHANGELOG_WEIGHT = 0.2
"""Score a sentence loses when its document is release notes (:func:`changelog`) and the
question asks nothing about changes or versions: "DHAT has been extended, with two new
modes" says what changed in a release, not what DHAT is; one rank's worth
(:data:`RANK_WEIGHT`)."""
_CHANGELOG = re.compile(r"^(?:[\d.]+\s+)?(?:old(?:er)? )?(?:news|change ?log|changes|"
                        r"release[ _-]?notes|what'?s[ _-]new)\b", re.I)
_ASKS_CHANGES = re.compile(r"\b(?:new|newer|changed?|changes|release[sd]?|versions?|added|"
                           r"removed|deprecated|since|history|news)\b", re.I)


def changelog(title: str, path: str) -> bool:
    """True for release notes: a document titled or named NEWS, ChangeLog, CHANGES, "Release
    notes", "What's new", or named HISTORY (Valgrind's "2. NEWS" and "3. OLDER NEWS": 596
    of the 2,658 passages of the question set's index)."""
    name = re.sub(r"^(?:dist|doc)[._-]", "", path.rsplit("/", 1)[-1], flags=re.I)
    return bool(_CHANGELOG.match(title or "") or _CHANGELOG.match(name)
                or re.match(r"history\b", name, re.I))


def asks_about_changes(question: str) -> bool:
    """True when ``question`` asks about changes or versions ("What is new in 3.18?")."""
    return bool(_ASKS_CHANGES.search(question))


def score_sentences(question: str, candidates: Sequence[Sentence], similarity: Sequence[float],
                    *, rank_weight: float = RANK_WEIGHT, overlap_weight: float = 0.3,
                    headings: Sequence[str] = (),
                    heading_weight: float = HEADING_WEIGHT,
                    label_weight: float = LABEL_WEIGHT, procedure: bool = False,
                    changelogs: Sequence[bool] = (),
                    changelog_weight: float = CHANGELOG_WEIGHT) -> list[float]:
    """Per sentence: its embedding ``similarity`` to the question (cosine, -1..1) plus
    ``overlap_weight`` × the share of the question's content words it holds, plus
    ``heading_weight`` × the share its passage's heading holds (``headings[hit]``: title
    and heading path; none when not given), plus ``label_weight`` when its label is an option
    or function the question names (:func:`asked_names`) and when it shows a command
    (``code``) for a ``procedure`` question (:func:`asks_how_to`), minus ``rank_weight`` per
    rank of its passage (the reranked order), minus ``changelog_weight`` when its passage is
    from release notes (``changelogs[hit]``, :func:`changelog`) unless the question asks
    about changes (:func:`asks_about_changes`)."""
    words = content_words(question)
    heads = [len(words & content_words(h)) / len(words) if words else 0.0 for h in headings]
    asked = asked_names(question)
    notes = [] if asks_about_changes(question) else list(changelogs)
    out = []
    for sentence, sim in zip(candidates, similarity):
        overlap = len(words & content_words(sentence.full)) / len(words) if words else 0.0
        head = heads[sentence.hit] if sentence.hit < len(heads) else 0.0
        named = bool(sentence.label) and label_name(sentence.label) in asked
        shows = procedure and bool(sentence.code)
        news = sentence.hit < len(notes) and notes[sentence.hit]
        out.append(sim + overlap_weight * overlap + heading_weight * head
                   + label_weight * (named + shows) - rank_weight * sentence.hit
                   - changelog_weight * news)
    return out


def distinct(candidates: Sequence[Sentence]) -> list[Sentence]:
    """``candidates`` without a sentence whose text (case and spacing aside) came before:
    passages cut with an overlap repeat the end of the one before, and an answer must not
    quote a sentence twice. The first (best-ranked passage's) copy is kept."""
    seen: set[str] = set()
    out = []
    for candidate in candidates:
        key = " ".join(candidate.text.lower().split())
        if key not in seen:
            seen.add(key)
            out.append(candidate)
    return out


ASIDE_GAP = 0.3
"""An explanation's run of sentences passes over one that scores this much below its lead
and shares no content word with the sentence before it (an aside, a sentence about
something else), see :func:`choose`."""


def choose(form: str, question: str, candidates: Sequence[Sentence], scores: Sequence[float],
           *, most: int = 3, anchor: int | None = None, anchor_slack: float = 0.15,
           side_scores: Sequence[Sequence[float]] = (),
           then: Sequence[int] = ()) -> list[Sentence]:
    """The sentences an answer of ``form`` quotes, in reading order (passage, then position).

    The lead sentence is the best-scored one, or ``anchor`` (the index of the sentence
    holding the reader's span) when it scores within ``anchor_slack`` of the best: the
    reader's likelihood chose that passage and span, the scores only rank sentences. A
    lead that leans on the sentence before it ("Internally, this ...") starts from that
    one instead, up to two sentences back (not for a summary, not from an intro).

    - ``definition``, ``yesno``: the lead, and the next sentence of its passage when it
      scores within 0.1 of it, leans on it or the lead introduces it (ends with ":"), then
      the sentences after those that lean on the one before ("It may ..."), up to ``most``;
      after a heading's title ("DHAT: a dynamic heap analysis tool") only a sentence that
      says what the term is;
    - ``explanation``, ``list``: the lead and the sentences after it in its passage, up to
      ``most`` (an explanation passes over a sentence scoring :data:`ASIDE_GAP` below the
      lead unless it leans on the one before or shares a content word with it, and stops
      at one leaning on a sentence passed over; a list of several items may take ``most +
      2``: after an intro, and when the run has reached a list's items, the first sentences
      of the next items, each within three sentences of the one before); never ending on an
      intro;
    - ``summary``: the first sentences of the lead's passage (``anchor``'s when given: the
      caller picks the passage), then those of the passages ``then`` (hits that continue the
      same document), up to ``most``;
    - ``comparison``: per compared thing (:func:`compared`), the best sentence naming it, by
      the mean of its score and ``side_scores[i]`` (similarity to "What is <thing>?") when
      given, a sentence saying what the thing is ("Tuples are ...", a chapter title's
      "Massif: a heap profiler", the description under its signature or option: +0.3) or
      starting with it (+0.1) preferred; then the best remaining one if only one side was
      found;
    - ``factoid``: none (the span and its sentence are the answer).
    """
    if not candidates or form == "factoid":
        return []
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])
    lead = order[0]
    if form == "summary" and anchor is not None:
        lead = anchor  # the passage to summarise, chosen by the caller
    elif form != "comparison":
        leads = [i for i in order if form == "list" or not (
            candidates[i].intro or candidates[i].bare)] or order
        lead = leads[0]
        if anchor is not None and scores[anchor] >= scores[lead] - anchor_slack:
            lead = anchor
    best = candidates[lead]
    same = [c for c in candidates if c.hit == best.hit]
    if form != "summary":
        for _ in range(2):  # "Therefore ..." needs the sentence it follows from
            before = next((c for c in same if c.index == best.index - 1), None)
            if before is None or not leans_back(best) or before.intro:
                break
            best = before

    score_of = {id(c): scores[i] for i, c in enumerate(candidates)}

    def run_from(start: Sentence, n: int, floor: float | None = None) -> list[Sentence]:
        run: list[Sentence] = []
        skipped = False
        for c in (c for c in same if c.index >= start.index):
            if len(run) == n:
                break
            if leans_back(c):
                if skipped:
                    break  # it leans on the sentence left out
            elif (run and floor is not None and score_of[id(c)] < floor and not c.intro
                  and not content_words(c.full) & content_words(run[-1].full)):
                # an aside ("Rather than spelling it out, here are hints."): scores low and
                # shares no word with the sentence before
                skipped = True
                continue
            run.append(c)
            skipped = False
        if run and run[-1].intro:  # "... as follows:" takes the items after it
            run += [c for c in same if run[-1].index < c.index <= run[-1].index + 2]
        while len(run) > 1 and run[-1].intro:
            run.pop()
        return run

    if form in ("definition", "yesno"):
        if form == "definition":
            term = defined_term(question)
            defining = [i for i in order if term and defines(candidates[i].text, term)]
            if defining and scores[defining[0]] >= scores[lead] - 0.3:
                best = candidates[defining[0]]
                same = [c for c in candidates if c.hit == best.hit]
        def after(sentence: Sentence) -> Sentence | None:
            return next((c for c in same if c.index == sentence.index + 1), None)

        picked = [best]
        nxt = after(best)
        if nxt is not None and best.index < 0 and not (
                form == "definition" and defines(nxt.text, defined_term(question))):
            nxt = None  # a chapter title's passage opens a section about something else
        if nxt is not None and (best.intro or leans_back(nxt) or
                                score_of[id(nxt)] >= scores[lead] - 0.1):
            picked.append(nxt)
            # and the sentences after it that go on about the same thing ("It may ...")
            while len(picked) < most and (nxt := after(nxt)) is not None and leans_back(nxt):
                picked.append(nxt)
        return picked
    if form == "summary":
        run = run_from(same[0], most)
        for hit in then:
            run += [c for c in candidates if c.hit == hit][: most - len(run)]
        while len(run) > 1 and run[-1].intro:
            run.pop()
        return run
    if form == "list":
        run = run_from(best, most + 2 if best.intro else most)
        # a run that reached a list's items goes on to the next ones, up to ``most + 2``,
        # each by its first sentence: "__enter__()" without "__exit__()" is half the answer
        while run and run[-1].item and len(run) < most + 2:
            nxt = next((c for c in same if run[-1].index < c.index <= run[-1].index + 3
                        and c.item), None)
            if nxt is None:
                break
            run.append(nxt)
        return run
    if form == "explanation":
        return run_from(best, most, floor=scores[lead] - ASIDE_GAP)
    if form == "comparison":
        things = compared(question) or ()
        picked: list[Sentence] = []
        for side, thing in enumerate(things):
            key = thing_key(thing)
            besides = [thing_key(t) for t in things if t != thing]
            ranked = side_scores[side] if side < len(side_scores) else scores

            def value(i: int) -> float:
                text = candidates[i].text.lower().lstrip("\"'(")
                says = (defines(candidates[i].text, thing)  # "Tuples are", "Massif: a"
                        or names_thing(candidates[i].label, key, besides))  # its label
                return (ranked[i] + scores[i]) / 2 + (0.3 if says else 0.1 if
                                                      text.startswith(key) else 0.0)

            named = [i for i in range(len(candidates))
                     if names_thing(candidates[i].full, key, besides)
                     and candidates[i] not in picked and not candidates[i].intro
                     and not candidates[i].bare]
            if named:
                # a sentence that says of this side what another sentence says of another
                # side ("continue may only occur in a loop" beside "break may only occur in
                # a loop") shows no difference: the side's best other sentence is taken
                others = picked + [c for c in candidates if c not in picked and any(
                    names_thing(c.full, thing_key(t)) for t in things if t != thing)]
                apart = [i for i in named if not any(
                    c is not candidates[i] and parallel(candidates[i].text, c.text, things)
                    for c in others)]
                picked.append(candidates[max(apart or named, key=value)])
        for i in order:
            if len(picked) >= 2:
                break
            if candidates[i] not in picked and not candidates[i].intro:
                picked.append(candidates[i])
        return sorted(picked, key=lambda c: (c.hit, c.index))
    return [best]


def stem(word: str) -> str:
    """``word`` without a plural or verb ending ("errors", "detected" -> "error", "detect")."""
    return re.sub(r"(?:ing|ed|es|s)$", "", word) if len(word) > 5 else word


def content_stems(text: str) -> set[str]:
    """``text``'s content words (:func:`content_words`) without their endings (:func:`stem`)."""
    return {stem(w) for w in content_words(text)}


def _names_asked(words: set[str], title: str) -> bool:
    """True when every content word of a heading's ``title`` is among the question's
    ``words`` (by :func:`stem`), and it has one."""
    said = content_stems(title)
    return bool(said) and said <= {stem(w) for w in words}


def listed_sections(question: str, heading: str,
                    headings: Sequence[str]) -> tuple[str, list[tuple[int, str]]]:
    """For a list question: the sections a document lists of what the question asks for.

    A part of ``heading`` (a passage's heading path, "A > B > C") whose words are all the
    question's ("Callable types" for "What kinds of callable types are there?") lists the
    sections right under it; a part that starts so before a colon ("Detected errors: Data
    Races" for "What kinds of errors does Helgrind detect?") lists its siblings that start
    the same way, by what follows the colon. ``headings``: the document's heading paths in
    order (:meth:`index.store.Store.section_starts`). Returns the part's title and, per
    section listed (three or more, at most 12), its index in ``headings`` and its title
    (numbering left out); ``("", [])`` when no part qualifies."""
    words = content_words(question)
    parts = [p.strip() for p in heading.split(" > ")]
    for depth, part in enumerate(parts):
        title = _unnumbered(part)
        lead, colon, _ = title.partition(": ")
        siblings = not _names_asked(words, title)  # else the sections under this part
        if siblings and not (colon and _names_asked(words, lead)):
            continue
        above = parts[:depth] if siblings else parts[:depth + 1]
        items: list[tuple[int, str]] = []
        seen: set[str] = set()
        for i, path in enumerate(headings):
            below = [p.strip() for p in path.split(" > ")]
            if below[:len(above)] != above or len(below) <= len(above):
                continue
            name = _unnumbered(below[len(above)])
            if siblings:  # named "<lead>: <what>"
                if not name.startswith(lead + ": "):
                    continue
                name = name[len(lead) + 2:]
            if name not in seen:
                seen.add(name)
                items.append((i, name))
        if len(items) >= 3:
            return (lead if siblings else title), items[:12]
    return "", []


def _unnumbered(part: str) -> str:
    """A heading part without its section number ("7.2. Detected errors" -> "Detected
    errors")."""
    return re.sub(r"^[\d.]+\s+", "", part.strip())


def heading_sentences(hit: int, heading: str, terms: Sequence[str]) -> list[Sentence]:
    """Per term of ``terms``, the first part of a passage's heading path that says what it is
    ("5. Cachegrind: a cache and branch-prediction profiler"), as sentences placed before the
    passage's first (index -1); manuals often define a tool in its chapter title and nowhere
    else."""
    parts = [_unnumbered(p) for p in heading.split(" > ")]
    return [Sentence(hit, -1, part) for term in terms if term
            for part in [p for p in parts if defines(p, term)][:1]]


def defined_term(question: str) -> str:
    """The term a definition question asks about ("What is a context manager?" -> "context
    manager"), or ""."""
    q = _LEAD_IN.sub("", " ".join(question.split())).strip()
    m = _DEFINITION.match(q)
    return _thing(re.sub(r"\s+(mean|do|stand for)$", "", m.group("term"), flags=re.I)) if m else ""


def defines(sentence: str, term: str) -> bool:
    """True when ``sentence`` says what ``term`` is: "<term> is/are ...", "<term>: a ...",
    "The <term> statement is ...", "A <term> (ABBR) is ..."."""
    key = re.escape(thing_key(term))
    return bool(re.match(r"^(?:the |an? )?\W?" + key + r"\w*\W?(?: \w+| \([^()]{1,30}\))?"
                         r"\s+(?:is|are)\b|^\W?" + key + r"\w*\W?:", sentence.strip(), re.I))


def names_thing(text: str, key: str, others: Sequence[str] = ()) -> bool:
    """True when ``text`` names the compared thing whose :func:`thing_key` is ``key``: as a
    substring ("tuple" in "Tuples are ..."), except for a function word or a symbol ("is",
    "and", "=="), which every sentence holds as a word or a part of one: those must stand
    quoted or alone between spaces (the docs write operators as ``"is"``, ``x == y``).
    ``others``: the keys of the other compared things; one that holds ``key`` does not
    name it ("frozen sets" is not "sets")."""
    text = text.lower()
    stem = key[:-1] if key.endswith("s") else key  # "sets" is in "frozen set"
    for other in others:
        if stem and stem in other and other != key:
            text = text.replace(other, " ")
    if key and not function_thing(key):
        return key in text
    quoted = re.escape(key)
    return bool(key) and bool(re.search(
        rf"[\"“'‘`]{quoted}[\"”'’`]" + ("" if key.isalnum() else rf"|(?<!\S){quoted}(?!\S)"),
        text))


def function_thing(key: str) -> bool:
    """True when a compared thing's :func:`thing_key` is a function word or a symbol ("is",
    "and", "=="): named only quoted or standing alone (:func:`names_thing`), searched for
    quoted (a search leaves unquoted function words out, and finds no symbol). An identifier
    ("__repr__", "sys_path") or words not all function words ("global variable",
    "call-graph"; not "is not") are a name, not a symbol."""
    return not (re.fullmatch(r"\w+(?:[ -]\w+)*", key)
                and any(w not in _STOP for w in re.split(r"[ -]", key)))


def parallel(a: str, b: str, things: Sequence[str], *, least: float = 0.7) -> bool:
    """True when sentences ``a`` and ``b`` say the same words once the compared ``things``
    are left out: the Jaccard overlap of their content words (:func:`content_words`, minus
    the things' words) is at least ``least``. "break may only occur syntactically nested in
    a for or while loop" and the same of "continue" are parallel; two sentences with fewer
    than three such words each are never (too short to tell)."""
    drop = {w for t in things for w in content_words(t)}
    drop |= {thing_key(w) for w in drop}
    wa, wb = content_words(a) - drop, content_words(b) - drop
    if len(wa) < 3 or len(wb) < 3:
        return False
    return len(wa & wb) / len(wa | wb) >= least


def thing_key(thing: str) -> str:
    """A lower-case key that finds ``thing`` in a sentence ("tuples" -> "tuple")."""
    key = thing.lower().strip()
    if len(key) > 4 and key.endswith("s") and not key.endswith("ss"):
        key = key[:-1]
    return key


def render(picked: Sequence[Sentence], number: Callable[[int], int], *, form: str,
           verdict: str | None = None, escape: Callable[[str], str] = lambda s: s) -> str:
    """The answer in Markdown: the sentences with their source numbers (``number(hit)``),
    as one paragraph, or as bullets for a ``list`` of three or more; a yes/no ``verdict``
    ("Yes"/"No") first in bold."""
    parts = [(f"`{s.label}`: " if _labels(s.label) else f"{escape(s.label)}: " if s.label
              else "") + escape(s.text)
             + (f" {_code(s.code)}" if s.code else "") + f" [{number(s.hit)}]" for s in picked]
    if form == "list" and len(parts) >= 3:
        body = "\n".join(f"- {p}" for p in parts)
    else:
        body = " ".join(parts)
    if verdict:
        return f"**{verdict}.** {body}"
    return body


def _code(text: str) -> str:
    """``text`` as Markdown inline code (fenced with two backticks when it holds one)."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


_RECAP = re.compile(
    r"^(?:please\s+)?(?:summari[sz]e|recap|sum up|give (?:me )?(?:a |an )?(?:summary|recap|"
    r"overview) of)\s+(?:this|our|the)\s+(?:conversation|chat|discussion|session)\b", re.I)
_SAID_ABOUT = re.compile(
    r"^(?:what|which) (?:did|have) you (?:say|said|tell me|told me|answer|answered)"
    r"(?: me)? (?:about|on|regarding) (?P<topic>.+?)\??$", re.I)


def conversation_request(question: str) -> tuple[str, str] | None:
    """``("recap", "")`` for "summarise this conversation", ``("said", topic)`` for "what
    did you say about X"; None for a question about the documents."""
    q = _LEAD_IN.sub("", " ".join(question.split())).strip()
    if _RECAP.match(q):
        return "recap", ""
    m = _SAID_ABOUT.match(q)
    if m:
        return "said", m.group("topic").strip()
    return None


_CITES = re.compile(r"\s*" + CITATION.pattern)  # a citation and the space before it


def recap(kind: str, topic: str, turns: Sequence[tuple[int, str, str]]) -> str:
    """The answer to a :func:`conversation_request` from earlier ``turns`` ``(number,
    question, answer)``: one line per turn ("Turn 2 — question: first sentence"), for
    ``said`` only the turns whose question or answer shares a content word with ``topic``.
    Says so plainly when nothing matches."""
    wanted = content_words(topic)
    lines = []
    for number, question, answer in turns:
        if kind == "said" and not wanted & content_words(f"{question} {answer}"):
            continue
        text = " ".join(_CITES.sub("", answer).replace("**", "").lstrip("> ").split())
        first = "(no answer)"
        if text:  # its first sentence, two when that is only "Yes." or "No."
            parts = re.split(r"(?<=[.!?])\s+", text)
            first = parts[0] if len(parts[0].split()) > 3 or len(parts) == 1 else " ".join(
                parts[:2])
        lines.append(f"- Turn {number} — {question.strip()}: {first}")
    if not lines:
        return (f"Nothing in this conversation was about {topic}." if kind == "said"
                else "This conversation has no answered questions yet.")
    head = "In this conversation:" if kind == "recap" else f"What I said about {topic}:"
    return head + "\n" + "\n".join(lines)
