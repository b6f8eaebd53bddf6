"""Shape an extractive reading into the answer its question form asks for.

The reader (:mod:`assistant.reader`) gives a span and the reranked passages; for a factoid that
is the answer. For the other forms (:mod:`assistant.forms`) the composer quotes the sentences of
the top passages that best answer the question: scored by the embedder's cosine similarity to
the question plus word overlap, chosen per form, each cited. Each side of a comparison that
none of the passages names gets one more search. The reader's span is kept as the
short answer (what SQuAD-style scoring reads); abstentions pass through unchanged.

No torch here: the embedder and the retriever do the tensor work.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import numpy as np

from index.retrieval import Hit

from . import forms
from .attribution import CITATION
from .extractive import ExtractiveAnswer, markdown_escape
from .output import plain
from .reader import Reading


class EmbeddingMemo:
    """``embed`` with the vectors of the latest ``size`` texts kept: a follow-up that quotes
    from the same passages ("Can you say more about that?") embeds none of their sentences
    again (a comparison's ~50 sentences took ~0.4 s on a 2-core CPU).

    Args:
        embed: ``embed(texts) -> (n, dim)`` L2-normalised float32.
        size: most texts kept (384 float32 each for all-MiniLM-L6-v2: 4,096 are 6 MB).
    """

    def __init__(self, embed: Callable[[Sequence[str]], np.ndarray], size: int = 4096):
        self.embed = embed
        self.size = size
        self._vectors: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)``: each text's vector, embedding only those not kept."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            for text, vector in zip(missing, self.embed(missing)):
                self._vectors[text] = vector
            while len(self._vectors) > self.size:
                self._vectors.pop(next(iter(self._vectors)))
        return np.stack([self._vectors[t] for t in texts]) if texts else self.embed([])


class Composer:
    """Builds the answer text for a question form from a :class:`~assistant.reader.Reading`.

    Args:
        embed: ``embed(texts) -> (n, dim)`` L2-normalised float32 (the retriever's embedder).
        search: ``search(query, k) -> list[Hit]`` for a comparison's missing side, or None.
        opening: ``opening(document_id) -> list[Hit]``: a document's first passages, where
            a summary of it starts; or None (a summary then starts at the earliest passage
            retrieved).
        sections: ``sections(document_id) -> list[Hit]``: the first passage of each of a
            document's sections, in order, for a list of the sections under a heading that
            names what a list question asks for (:func:`forms.listed_sections`); or None.
        passages: how many of the top reranked passages sentences are drawn from.
        most: most sentences in an answer.
        summary_most: most sentences in a summary: 3 -> 4 on the tune questions' 9 summaries
            added two key facts and lost none (BENCHMARKS.md, "Answer forms", round 7).
    """

    def __init__(self, embed: Callable[[Sequence[str]], np.ndarray],
                 search: Callable[[str, int], list[Hit]] | None = None, *,
                 opening: Callable[[int], list[Hit]] | None = None,
                 sections: Callable[[int], list[Hit]] | None = None,
                 passages: int = 3, most: int = 3, summary_most: int = 4):
        self.embed = embed
        self.search = search
        self.opening = opening
        self.sections = sections
        self.passages = passages
        self.most = most
        self.summary_most = summary_most

    def compose(self, form: str, question: str, reading: Reading, *,
                query: str | None = None, said: str = "") -> Reading:
        """``reading`` with its answer text shaped for ``form`` (and, for a comparison, maybe
        one more hit at the end of ``hits``). Sentences are scored against ``query`` (the
        turn's search query: a follow-up's includes the question before it), default the
        question. ``said``: what earlier answers said (a request to say more): their
        sentences are not quoted again while others are left. Factoid answers, abstentions
        and readings with no usable sentence are returned as they are."""
        if form == "factoid" or reading.abstained or not reading.hits:
            return reading
        hits = list(reading.hits)
        used = hits[: (len(hits) if form == "comparison" else self.passages)]
        if form == "list" and self.sections is not None:
            listed = self._listing(question, reading, used)
            if listed is not None:
                return listed
        term = forms.defined_term(question) if form == "definition" else ""
        things = (forms.compared(question) or ()) if form == "comparison" else ()
        terms = list(things) if form == "comparison" else [term]  # said in headings
        candidates = [s for i, h in enumerate(used) for s in
                      forms.heading_sentences(i, h.passage.heading, terms)
                      + forms.sentences(i, h.passage.text)]
        extras: list[Hit] = []
        later: list[int] = []  # hits past ``used`` whose sentences are candidates too
        summed = _summarised(query or question, used) if form == "summary" else 0
        if form == "summary" and self.opening is not None:
            at = {h.passage.id: i for i, h in enumerate(hits)}
            for hit in self.opening(used[summed].passage.document_id):
                if hit.passage.id not in at:
                    extras.append(hit)
                elif at[hit.passage.id] >= len(used):
                    later.append(at[hit.passage.id])
        elif form == "comparison" and self.search is not None:
            extras = self._missing_sides(question, things, candidates, hits)
        elif form == "definition" and self.search is not None:
            extras = [h for h in [self._definition(term, candidates, hits)] if h is not None]
        for extra in extras:
            hits.append(extra)
            later.append(len(hits) - 1)
        for i in later:
            candidates += (forms.heading_sentences(i, hits[i].passage.heading, terms)
                           + forms.sentences(i, hits[i].passage.text))
        candidates = forms.distinct(candidates)
        if said:
            spoken = _plain(said)
            fresh = [c for c in candidates if _plain(c.text) not in spoken]
            candidates = fresh or candidates
        if not candidates:
            return reading
        asks = [query or question] + [f"What is {t}?" for t in things]
        vectors = self.embed(asks + [c.full for c in candidates])  # (asks + n, dim)
        similarity = vectors[len(asks):] @ vectors[:len(asks)].T  # (n, asks) cosine
        scores = forms.score_sentences(query or question, candidates,
                                       similarity[:, 0].tolist(),
                                       rank_weight=forms.rank_weight(form),
                                       headings=[f"{h.passage.title} > {h.passage.heading}"
                                                 for h in hits],
                                       procedure=forms.asks_how_to(question),
                                       changelogs=[forms.changelog(h.passage.title,
                                                                   h.passage.path)
                                                   for h in hits])
        sides = [similarity[:, j + 1].tolist() for j in range(len(things))]
        then: list[int] = []
        if form == "summary":
            anchor, then = _opening(hits, candidates, summed)
        else:
            anchor = _anchor(reading, candidates)
        most = self.summary_most if form == "summary" else self.most
        picked = forms.choose(form, question, candidates, scores, most=most,
                              anchor=anchor, side_scores=sides, then=then)
        if not picked:
            return reading
        if (form == "definition" and len(picked) == 1 and picked[0].index < 0
                and self.opening is not None):
            picked += self._said_at_opening(term, hits[picked[0].hit], hits)
        verdict = None
        if form == "yesno" and reading.verdict == "No" and any(
                forms.negated(s.text) for s in picked):
            # "No" when the evidence says no too. The model's "Yes" is not shown: it leans
            # to "Yes" whatever the passage says, and a "Yes" has no word of the evidence to
            # check it by (5 of 8 shown on 23 yes/no questions were wrong, BENCHMARKS.md)
            verdict = "No"
        text = forms.render(picked, lambda hit: hit + 1, form=form, verdict=verdict,
                            escape=markdown_escape)
        return _answered(reading, hits, picked, text)

    def _listing(self, question: str, reading: Reading, used: Sequence[Hit]) -> Reading | None:
        """``reading`` answered by the sections a document lists of what ``question`` asks
        for (:func:`forms.listed_sections`, under the heading of one of the ``used`` hits,
        best first), each item citing its section's first passage (added to the hits when
        not among them); or None when no heading names it."""
        documents: dict[int, list[Hit]] = {}  # hits of one document share its sections
        for hit in used:
            document = hit.passage.document_id
            if document not in documents:
                documents[document] = self.sections(document)
            starts = documents[document]
            title, items = forms.listed_sections(question, hit.passage.heading,
                                                 [h.passage.heading for h in starts])
            if not items:
                continue
            hits = list(reading.hits)
            picked = [forms.Sentence(_number(hits, starts[index]), -1, name, item=True)
                      for index, name in items]
            text = f"{markdown_escape(title)}:\n" + forms.render(
                picked, lambda hit: hit + 1, form="list", escape=markdown_escape)
            return _answered(reading, hits, picked, text)
        return None

    def _said_at_opening(self, term: str, titled: Hit, hits: list[Hit]) -> list[forms.Sentence]:
        """For a definition that is only a chapter title ("DHAT: a dynamic heap analysis
        tool", of the passage ``titled``): the first sentence saying what ``term`` is among
        the first three passages of that document ("DHAT is a tool for examining how programs
        use their heap allocations."), its passage added to ``hits`` when not among them;
        [] when none says it."""
        for hit in self.opening(titled.passage.document_id, 3):
            said = next((c for c in forms.sentences(0, hit.passage.text)
                         if forms.defines(c.text, term)), None)
            if said is not None:
                return [dataclasses.replace(said, hit=_number(hits, hit))]
        return []

    def _definition(self, term: str, candidates: Sequence[forms.Sentence],
                    hits: Sequence[Hit]) -> Hit | None:
        """A passage with a sentence saying what the asked-about ``term`` is (found by one
        more search, "<term> is"), when no candidate sentence does; or None."""
        if not term or any(forms.defines(c.text, term) for c in candidates):
            return None
        seen = {h.passage.id for h in hits}
        for hit in self.search(f"{term} is", 5):
            if hit.passage.id not in seen and any(
                    forms.defines(c.text, term) for c in forms.sentences(0, hit.passage.text)):
                return hit
        return None

    def _missing_sides(self, question: str, things: Sequence[str],
                       candidates: Sequence[forms.Sentence], hits: Sequence[Hit]) -> list[Hit]:
        """For each compared thing (of ``things``, :func:`forms.compared`) no candidate
        sentence names, a passage with a sentence naming it, found among the top 10 of one
        more search ("<thing> <question's other words>"; a function word or symbol quoted in
        the question without the other things); [] when every side is named."""
        found: list[Hit] = []
        seen = {h.passage.id for h in hits}
        named = list(candidates)  # and the sentences of each passage found
        rest = " ".join(w for w in forms.content_words(question)
                        if w not in forms.content_words(" ".join(things)))
        for thing in things:
            key = forms.thing_key(thing)
            besides = [forms.thing_key(t) for t in things if t != thing]
            if any(forms.names_thing(c.full, key, besides) for c in named):
                continue
            query = f"{thing} {rest}".strip()
            if forms.function_thing(key):
                # 'How do the "is" operator and the operator differ?': the question around
                # it says what it is ("operator"), the quotes keep "is" in the search
                query = question
                for other in things:
                    if other != thing:
                        query = re.sub(rf"(?<!\w){re.escape(other)}(?!\w)", "", query, count=1)
                query = " ".join(re.sub(rf"(?<![\w\"]){re.escape(thing)}(?![\w\"])",
                                        f'"{thing}"', query, count=1).split())
            for hit in self.search(query, 10):
                if hit.passage.id in seen:
                    continue
                said = forms.sentences(0, hit.passage.text)
                if any(forms.names_thing(c.full, key, besides) for c in said):
                    found.append(hit)
                    named += said  # a later side it names needs no search of its own
                    break
        return found


def _number(hits: list[Hit], hit: Hit) -> int:
    """The index of ``hit``'s passage among ``hits``, appending ``hit`` when it is not there."""
    at = next((i for i, h in enumerate(hits) if h.passage.id == hit.passage.id), None)
    if at is None:
        hits.append(hit)
        return len(hits) - 1
    return at


def _answered(reading: Reading, hits: list[Hit], picked: Sequence[forms.Sentence],
              text: str) -> Reading:
    """``reading`` with the answer ``text`` quoting ``picked`` (its first sentence's passage
    the answer's source), over ``hits``; the reader's span stays the short answer."""
    answer = ExtractiveAnswer(reading.answer.span, picked[0].hit + 1, text,
                              reading.answer.supported)
    return dataclasses.replace(reading, hits=hits, answer=answer,
                               sentences=[(s.hit + 1, s.text) for s in picked])


def _plain(text: str) -> str:
    """``text`` lower-cased without citations, Markdown escapes (:func:`output.plain`) and
    emphasis, with single spaces: a quoted sentence compares equal to its passage's text."""
    return " ".join(CITATION.sub(" ", plain(text)).replace("**", "").lower().split())


def _anchor(reading: Reading, candidates: Sequence[forms.Sentence]) -> int | None:
    """Index of the candidate sentence holding the reader's span (in the passage it was
    read from), or None."""
    span = reading.answer.span.lower()
    source = reading.answer.source
    if not span or not source or not reading.answer.supported:
        return None
    return next((i for i, c in enumerate(candidates)
                 if c.hit == source - 1 and span in c.text.lower()), None)


def _summarised(query: str, hits: Sequence[Hit]) -> int:
    """Index of the hit whose document a summary is about: the best-ranked one whose
    document title holds the largest share of the query's content words ("the raise
    statement" is 'The "raise" statement', not 'The "try" statement' ranked above it)."""
    words = forms.content_words(query)
    if not words:
        return 0
    share = [len(words & forms.content_words(h.passage.title or h.passage.heading))
             for h in hits]
    return max(range(len(hits)), key=lambda i: (share[i], -i))


def _opening(hits: Sequence[Hit], candidates: Sequence[forms.Sentence],
             top: int = 0) -> tuple[int | None, list[int]]:
    """For a summary: the index of the first sentence of the earliest passage (by line) of
    the file of ``hits[top]`` among ``hits`` (a document is summed up from its opening), or
    None; and the hits of that file after it, in line order (where the summary goes on;
    passages on the same line, as an HTML file's often are, by id: the order they were
    stored in). Only hits with a sentence among ``candidates`` count."""
    path = hits[top].passage.path
    quoted = {c.hit for c in candidates}
    same = sorted((i for i, h in enumerate(hits) if h.passage.path == path and i in quoted),
                  key=lambda i: (hits[i].passage.line_start or 0, hits[i].passage.id))
    if not same:
        return None, []
    first = next((k for k, c in enumerate(candidates) if c.hit == same[0]), None)
    return first, same[1:]
