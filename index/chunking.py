"""Split documents into passages (pure functions, no I/O).

A reader turns a file into :class:`Section` objects (text under one heading, or one PDF page);
:func:`chunk_sections` packs each section's paragraphs into passages of at most ``max_tokens``
tokens, carrying about ``overlap`` tokens of trailing sentences into the next passage of the same
section, and never crossing a section boundary, so every passage has one heading and one page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

TokenCounter = Callable[[Sequence[str]], list[int]]
"""Counts tokens: ``(n texts) -> n ints`` (tokens, without special tokens)."""

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+(?=\S)")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class Section:
    """Text under one heading of a document (or one page of a PDF).

    Attributes:
        text: the section's text, lines separated by ``\\n``.
        heading: the heading path, outermost first, joined by `` > `` ("" when none).
        page: 1-based page number for paged formats (PDF), else None.
        line_start: 1-based line in the source file (or page) where ``text`` begins.
        lines_exact: True when line ``i`` of ``text`` is line ``line_start + i`` of the source;
            False when the text was extracted (HTML), so only ``line_start`` is meaningful.
    """

    text: str
    heading: str = ""
    page: int | None = None
    line_start: int = 1
    lines_exact: bool = True


@dataclass(frozen=True)
class Chunk:
    """One passage: a contiguous piece of a section.

    Attributes:
        text: the passage text.
        heading: heading path of its section.
        page: 1-based page (PDF) or None.
        line_start: first source line (1-based).
        line_end: last source line (1-based, inclusive), or None when lines are not exact.
        n_tokens: length in tokens, as counted by the chunker's token counter.
    """

    text: str
    heading: str
    page: int | None
    line_start: int
    line_end: int | None
    n_tokens: int


@dataclass(frozen=True)
class _Unit:
    text: str
    first_line: int  # 0-based offsets inside the section text
    last_line: int
    tokens: int


def whitespace_token_counter(texts: Sequence[str]) -> list[int]:
    """A crude :data:`TokenCounter`: white-space separated words, times 4/3.

    The 4/3 factor is the usual rule of thumb for English word-piece tokenizers
    (about 0.75 words per token, OpenAI's tokenizer guidance); used in tests and as a fallback.
    """
    return [max(1, round(len(t.split()) * 4 / 3)) if t.strip() else 0 for t in texts]


class _LineCounter:
    """0-based line numbers of character offsets asked for in increasing order, counting
    only the new lines since the last offset (linear in the text, not quadratic)."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 0

    def at(self, offset: int) -> int:
        if offset < self.pos:  # out of order: count from the start
            self.pos, self.line = 0, 0
        self.line += self.text.count("\n", self.pos, offset)
        self.pos = offset
        return self.line


def _paragraphs(text: str) -> list[tuple[str, int, int]]:
    """Split ``text`` at blank lines: ``[(paragraph, first_line, last_line)]`` (0-based lines)."""
    out = []
    pos = 0
    lines = _LineCounter(text)
    for match in [*_BLANK_LINE.finditer(text), None]:
        end = match.start() if match else len(text)
        raw = text[pos:end]
        if raw.strip():
            lead = len(raw) - len(raw.lstrip("\n"))
            first = lines.at(pos) + raw.count("\n", 0, lead)
            body = raw.strip("\n")
            out.append((body.rstrip(), first, first + body.count("\n")))
        if match:
            pos = match.end()
    return out


def _split_long(text: str, first_line: int, max_tokens: int, count: TokenCounter) -> list[_Unit]:
    """Split an over-long paragraph into sentences, and over-long sentences into word windows."""
    pieces: list[tuple[str, int]] = []  # (text, char offset)
    pos = 0
    for match in [*_SENTENCE_END.finditer(text), None]:
        end = match.start() if match else len(text)
        if text[pos:end].strip():
            pieces.append((text[pos:end], pos))
        if match:
            pos = match.end()
    units: list[_Unit] = []
    lines = _LineCounter(text)
    for (piece, offset), n in zip(pieces, count([p for p, _ in pieces])):
        line = first_line + lines.at(offset)
        if n <= max_tokens:
            units.append(_Unit(piece, line, line + piece.count("\n"), n))
            continue
        words = piece.split()
        # Words per window, scaled from the measured tokens-per-word of this sentence.
        step = max(1, int(len(words) * max_tokens / n * 0.9))
        windows = [" ".join(words[i : i + step]) for i in range(0, len(words), step)]
        for window, wn in zip(windows, count(windows)):
            units.append(_Unit(window, line, line + piece.count("\n"), wn))
    return units


def _units(section: Section, max_tokens: int, count: TokenCounter) -> list[_Unit]:
    paragraphs = _paragraphs(section.text)
    units: list[_Unit] = []
    for (text, first, last), n in zip(paragraphs, count([p for p, _, _ in paragraphs])):
        if n <= max_tokens:
            units.append(_Unit(text, first, last, n))
        else:
            units.extend(_split_long(text, first, max_tokens, count))
    return units


def _overlap_tail(units: list[_Unit], overlap: int) -> list[_Unit]:
    """The trailing units of a passage whose tokens add up to at most ``overlap``."""
    tail: list[_Unit] = []
    total = 0
    for unit in reversed(units):
        if total + unit.tokens > overlap:
            break
        tail.insert(0, unit)
        total += unit.tokens
    # Overlapping a whole passage would repeat it, not overlap it.
    return tail if len(tail) < len(units) else []


def chunk_sections(
    sections: Iterable[Section],
    *,
    max_tokens: int = 200,
    overlap: int = 40,
    count_tokens: TokenCounter = whitespace_token_counter,
) -> list[Chunk]:
    """Pack the paragraphs of each section into passages.

    Args:
        sections: the document's sections, in order.
        max_tokens: passage budget in tokens (a lone word window may exceed it slightly when
            the counter's estimate is off).
        overlap: tokens of trailing paragraphs/sentences repeated at the start of the next
            passage of the same section (0 disables overlap).
        count_tokens: the :data:`TokenCounter` (usually the embedder's tokenizer).

    Returns:
        Passages in document order.

    Raises:
        ValueError: if ``max_tokens < 1`` or ``overlap`` is negative or ``>= max_tokens``.
    """
    if max_tokens < 1 or overlap < 0 or overlap >= max_tokens:
        raise ValueError(f"need 0 <= overlap < max_tokens, got {overlap=} {max_tokens=}")
    chunks: list[Chunk] = []
    for section in sections:
        current: list[_Unit] = []

        def emit() -> None:
            start = section.line_start + current[0].first_line
            end = section.line_start + max(u.last_line for u in current)
            chunks.append(
                Chunk(
                    text="\n\n".join(u.text for u in current),
                    heading=section.heading,
                    page=section.page,
                    line_start=start if section.lines_exact else section.line_start,
                    line_end=end if section.lines_exact else None,
                    n_tokens=sum(u.tokens for u in current),
                )
            )

        fresh = 0  # units in `current` not yet emitted in a previous passage
        for unit in _units(section, max_tokens, count_tokens):
            if current and sum(u.tokens for u in current) + unit.tokens > max_tokens:
                if fresh:
                    emit()
                current = _overlap_tail(current, overlap)
                while current and sum(u.tokens for u in current) + unit.tokens > max_tokens:
                    current.pop(0)
                fresh = 0
            current.append(unit)
            fresh += 1
        if current and fresh:
            emit()
    return chunks
