"""Extractive answers from a base model: a few-shot "Context: … Question: … Answer:" completion
prompt (``prompts/extractive.txt``), the answer cut at the first new line, then aligned to the
passage it came from and shown as a short span with its citation and the sentence it is in.

Small base models answer extractive questions far better this way than in a chat format
(measured in BENCHMARKS.md); the alignment turns a near-copy ("the Miasma theory.") into the
passage's own words, and an answer with no support in the passage stays as generated.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from .forms import content_stems
from .metrics import PUNCTUATION, normalize_answer, overlap_f1, token_f1
from .prompts import load_template

TEMPLATE = "extractive.txt"
_WORD = re.compile(r"\S+")
_FIELD = re.compile(r"\{context\}|\{question\}")
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+[\"')\]]*|\n|$)")


def example_questions(template: str | None = None) -> list[str]:
    """The questions of the template's worked examples (an evaluation must not ask them)."""
    text = template if template is not None else load_template(TEMPLATE)
    return [line[len("Question: "):].strip() for line in text.splitlines()
            if line.startswith("Question: ") and "{question}" not in line]


def extractive_prompt(question: str, context: str, template: str | None = None) -> str:
    """The completion prompt for ``question`` over ``context`` (one passage's text). Both
    fields are filled in one pass, so a passage that contains ``{question}`` stays as it is."""
    text = template if template is not None else load_template(TEMPLATE)
    values = {"{context}": " ".join(context.split()), "{question}": question.strip()}
    return _FIELD.sub(lambda m: values[m.group(0)], text)


def extractive_prefix(template: str | None = None) -> str:
    """The part of every extractive prompt before the passage (the worked examples): the same
    for every question, so a generator can keep its key/value cache
    (``complete(shared_prefix=...)``)."""
    text = template if template is not None else load_template(TEMPLATE)
    return text[: text.index("Context: {context}")] if "Context: {context}" in text else ""


def align_span(answer: str, passage: str, *, min_f1: float = 0.5,
               ties: str = "answer_order") -> str:
    """The passage's own words for ``answer``: the span of the passage with the best token F1
    against the answer (spans up to the answer's length + 3 words); the answer as is when it
    occurs verbatim or no span reaches ``min_f1``. Of spans with equal F1, ``ties`` picks:
    ``answer_order`` the one holding the answer's earliest word, then more of the answer's
    characters, then the shorter ("September 2025" over a passage with "3 June 2025" and "in
    September" is "September": a reader commits to its first word and runs on after it);
    ``shorter`` the shorter (the rule before; ``benchmarks/span_alignment.py`` compares them).

    Each passage word is normalised once and a span's overlap with the answer is counted as
    the span grows word by word: the same F1 as :func:`~assistant.metrics.token_f1` of the
    span (SQuAD normalisation works word by word, and the edge characters :func:`_trim`
    removes are punctuation it drops anyway; a span whose trimming removes anything else is
    scored by ``token_f1`` itself). A 48-token answer over a 150-word passage was 5,000
    normalisations of whole spans, 0.2-0.7 s of Python per reading on a 2-core CPU."""
    passage = " ".join(passage.split())
    answer = _trim(" ".join(answer.split()))
    if not answer or answer.lower() in passage.lower():
        return answer
    words = [(m.start(), m.end()) for m in _WORD.finditer(passage)]
    target = normalize_answer(answer).split()
    if not target:
        return answer
    truth = Counter(target)
    tokens = [normalize_answer(passage[start:end]).split() for start, end in words]
    longest = len(target) + 3
    best, best_f1 = answer, min_f1
    for i in range(len(words)):
        counts: Counter = Counter()
        size = same = 0
        for j in range(i, min(i + longest, len(words))):
            for token in tokens[j]:
                if counts[token] < truth[token]:
                    same += 1
                counts[token] += 1
            size += len(tokens[j])
            raw = passage[words[i][0]:words[j][1]]
            span = _trim(raw)
            if _only_punctuation_trimmed(raw, span):  # token_f1's own formula, counted here
                f1 = overlap_f1(same, size, len(target)) if size else 0.0
            else:
                f1 = token_f1(span, [answer])
            if f1 > best_f1 or (f1 == best_f1 and best is not answer
                                and _better_tie(span, best, target, ties)):
                best, best_f1 = span, f1
    return best if best is answer else _close_brackets(best)


def _better_tie(span: str, best: str, target: list[str], ties: str) -> bool:
    """Whether ``span`` beats ``best`` (equal token F1 against the answer's normalised words
    ``target``) under the rule ``ties`` of :func:`align_span`."""
    def held(text: str) -> tuple[int, int]:
        # (minus the position of the earliest answer word the text holds, its characters)
        left, count, first = Counter(target), 0, len(target)
        for token in normalize_answer(text).split():
            if left[token] > 0:
                left[token] -= 1
                count += len(token)
                first = min(first, target.index(token))
        return -first, count

    if ties == "answer_order":
        return (*held(span), -len(span)) > (*held(best), -len(best))
    return len(span) < len(best)


def _only_punctuation_trimmed(raw: str, span: str) -> bool:
    """Whether ``span`` is ``raw`` with only punctuation and white space cut from its edges
    (then both normalise to the same tokens)."""
    start = raw.find(span)
    if start < 0:
        return False
    cut = raw[:start] + raw[start + len(span):]
    return all(c in PUNCTUATION or c.isspace() for c in cut)


def _close_brackets(span: str) -> str:
    """A span cut inside a parenthesis ends before it ("by a manager (see section" -> "by a
    manager"); one starting inside it begins after it. Keeps the whole span when that would
    leave nothing."""
    for left, right in (("(", ")"), ("[", "]")):
        if span.count(left) > span.count(right):
            cut = _trim(span[:span.rindex(left)])
        elif span.count(right) > span.count(left):
            cut = _trim(span[span.index(right) + 1:])
        else:
            continue
        span = cut or span
    return span


def _trim(span: str) -> str:
    """Drop edge punctuation, and a quote or bracket at an edge that has no partner."""
    span = span.strip().rstrip(".,;:").strip()
    for left, right in (('"', '"'), ("'", "'"), ("(", ")"), ("“", "”")):
        if left == right and span.count(left) % 2 == 1:
            span = span.strip(left)
        elif left != right and span.count(left) != span.count(right):
            span = span.strip(left + right)
    return span.strip()


_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
          r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_DATE = re.compile(rf"\b(?:{_DAY}\s+(?:of\s+)?{_MONTH},?\s+\d{{4}}"
                   rf"|{_MONTH}\s+{_DAY},?\s+\d{{4}}|{_MONTH},?\s+\d{{4}}"
                   rf"|{_MONTH}\s+{_DAY}|{_DAY}\s+(?:of\s+)?{_MONTH}"
                   r"|\d{4}-\d{2}-\d{2})(?!\w)")
"""A written date: "3 June 2025", "June 3rd, 2025", "October 2010", "December 3", "3rd of
June", "2025-06-03"."""
_ASKS_DATE = re.compile(r"^\W*(?:(?:and|but|so|then|also|ok|okay|now|well)\b\W*)?"
                        r"(?:when\b|(?:on |by |until |since )?(?:what|which) (?:date|day)\b)",
                        re.I)
"""A question asking for a date: "When ...?", "On what date ...?" (not "What year ...?",
whose answer is the year alone)."""


def complete_date(span: str, passage: str, question: str) -> str:
    """For a question asking when (:data:`_ASKS_DATE`), the whole written date of ``passage``
    that ``span`` is a part of: a reading that stops at the year or the month ("2025" where
    the passage has "3 June 2025", "2010" in "In October 2010") gives the date the passage
    states. Of several such dates, the one whose sentence shares most of the question's
    content words (the first of equals). ``span`` as it is otherwise (a span that is a
    whole date, or no part of one)."""
    if not span or not _ASKS_DATE.search(question):
        return span
    part = re.compile(rf"(?<!\w){re.escape(span.lower())}(?!\w)")
    dates = [m for m in _DATE.finditer(passage)
             if len(m.group(0)) > len(span) and part.search(m.group(0).lower())]
    if not dates:
        return span
    asked = content_stems(question)

    def shared(match) -> int:
        sentence = next((s.group(0) for s in _SENTENCE.finditer(passage)
                         if s.start() <= match.start() < s.end()), "")
        return len(asked & content_stems(sentence))

    return max(dates, key=shared).group(0)


def sentence_with(span: str, passage: str, question: str = "") -> str | None:
    """The sentence of ``passage`` containing ``span`` (case-insensitive), or None. When
    several do, the one sharing the most of ``question``'s content words (other than the
    span's; compared without plural or verb endings, :func:`~assistant.forms.stem`), the
    first of equals: "Li Wei" answers "Who will write the load tests?" from "Li Wei will
    write the load tests.", not from a list of attendees before it."""
    if not span:
        return None
    low = span.lower()
    found = [sentence for sentence in (" ".join(m.group(0).split())
                                       for m in _SENTENCE.finditer(passage))
             if low in sentence.lower()]
    if len(found) < 2 or not question:
        return found[0] if found else None
    asked = content_stems(question) - content_stems(span)
    return max(found, key=lambda sentence: len(asked & content_stems(sentence)))


@dataclass(frozen=True)
class ExtractiveAnswer:
    """A short answer, the number of the passage it cites, and the text shown in chat."""

    span: str
    source: int | None
    text: str
    supported: bool = False
    """True when the span occurs in the passage (case-insensitive)."""


def finish(raw: str, passage: str, number: int = 1, question: str = "") -> ExtractiveAnswer:
    """Align the generated ``raw`` answer to ``passage`` (source number ``number``), complete a
    date the reading cut short (:func:`complete_date`), and render
    it: ``**span** [n]`` and, quoted below, the passage's sentence holding it (of several, the
    one closest to ``question``, see :func:`sentence_with`). An answer with no support in the
    passage is shown as generated, still citing the passage it was read from."""
    raw = raw.strip().split("\n")[0].strip()
    passage = " ".join(passage.split())
    if not raw:
        return ExtractiveAnswer("", None, "")
    span = complete_date(align_span(raw, passage), passage, question)
    if span.lower() not in passage.lower():
        return ExtractiveAnswer(span, number, f"{markdown_escape(span)} [{number}]")
    text = f"**{markdown_escape(span)}** [{number}]"
    sentence = sentence_with(span, passage, question)
    if sentence and normalize_answer(sentence) != normalize_answer(span):
        text += f"\n\n> {markdown_escape(sentence)} [{number}]"
    return ExtractiveAnswer(span, number, text, supported=True)


def markdown_escape(text: str) -> str:
    """``text`` with Markdown's inline markup characters backslash-escaped, so a passage's
    ``*``, ``_``, backticks or ``[3]`` show as written (and are not taken for citations)."""
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", text)
