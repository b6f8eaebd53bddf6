"""Tie each sentence of a streamed answer to the passage it came from.

Small models rarely write ``[n]`` themselves. As the answer streams, every finished sentence
that carries no citation gets one appended: the number of the shown passage that contains the
largest share of the sentence's content words (lexical attribution; at least ``min_overlap``
of them, else no marker, so unsupported sentences stay visibly uncited). A sentence that
repeats an earlier one ends the answer: tiny models otherwise loop until the token limit.
"""

from __future__ import annotations

import re
from typing import Sequence

from index.words import STOPWORDS

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n\n")
CITATION = re.compile(r"\[(\d+(?:\s*[,;-]\s*\d+)*)\]")
"""A citation marker: ``[n]``, ``[n, m]`` or ``[n-m]`` (group 1: the numbers)."""
_CITATION_AFTER = re.compile(r"[ \t]*" + CITATION.pattern)
_CITATION_COMING = re.compile(r"[ \t]*(\[[\d\s,;-]*)?")  # what may still become one


def content_words(text: str) -> set[str]:
    """Lower-cased words of ``text`` that carry meaning (no stop words, no single letters)."""
    return {w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in STOPWORDS}


def best_source(sentence: str, passages: Sequence[str], *, min_overlap: float = 0.5) -> int | None:
    """1-based number of the passage covering most of ``sentence``'s content words, or None
    when none covers at least ``min_overlap`` (a share, 0..1) of them."""
    words = content_words(sentence)
    if len(words) < 2:
        return None
    best, best_share = None, min_overlap
    for number, passage in enumerate(passages, start=1):
        share = len(words & content_words(passage)) / len(words)
        if share >= best_share and (best is None or share > best_share):
            best, best_share = number, share
    return best


class CitationShaper:
    """Feeds on answer fragments and returns what to show: the same text, streamed as it comes,
    plus `` [n]`` after each finished sentence that lacks a citation. Text that could be the
    start of a repeat of an earlier sentence is held back until it is known; a sentence that
    repeats an earlier one sets ``repeated`` (the caller should stop generating) and is dropped.

    Args:
        passages: texts of the passages shown to the model, numbered from 1.
        min_overlap: see :func:`best_source`.
    """

    def __init__(self, passages: Sequence[str], *, min_overlap: float = 0.5):
        self.passages = list(passages)
        self.min_overlap = min_overlap
        self.pending = ""  # the current, unfinished sentence
        self.shown = 0  # characters of ``pending`` already returned
        self.seen: list[str] = []
        self.repeated = False

    def push(self, fragment: str) -> str:
        """Add a fragment; returns the text to show now."""
        if self.repeated:
            return ""
        self.pending += fragment
        out = ""
        while (match := _SENTENCE_END.search(self.pending)) is not None:
            end = match.end()
            if not match.group().startswith("\n"):  # "It is. [1]": the model's own citation
                after = self.pending[end:]
                if _CITATION_COMING.fullmatch(after):  # not known yet: wait for more
                    key = _key(self.pending[:end])
                    if end > self.shown and not any(seen.startswith(key) for seen in self.seen):
                        out += self.pending[self.shown:end]
                        self.shown = end
                    return out
                cited = _CITATION_AFTER.match(after)
                end += cited.end() if cited else 0
            sentence = self.pending[:end]
            self.pending = self.pending[end:]
            out += self._finish(sentence)
            if self.repeated:
                return out
        key = _key(self.pending)
        if not (key and any(seen.startswith(key) for seen in self.seen)):
            out += self.pending[self.shown:]
            self.shown = len(self.pending)
        return out

    def flush(self) -> str:
        """The rest, at the end of the stream (cited like a finished sentence)."""
        rest, self.pending = self.pending, ""
        if self.repeated:
            return ""
        return self._finish(rest) if rest.strip() else rest[self.shown:]

    def _finish(self, sentence: str) -> str:
        """Close a sentence: the part not yet shown, plus a citation marker if it needs one."""
        unshown, self.shown = sentence[self.shown:], 0
        key = _key(sentence)
        if len(key) > 20 and key in self.seen:
            self.repeated = True
            return ""
        self.seen.append(key)
        if CITATION.search(sentence) or len(content_words(sentence)) < 2:
            return unshown
        number = best_source(sentence, self.passages, min_overlap=self.min_overlap)
        if number is None:
            return unshown
        trailing = unshown[len(unshown.rstrip()):]
        return f"{unshown.rstrip()} [{number}]{trailing}"


def _key(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))
