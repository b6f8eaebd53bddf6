"""Plain-text and JSON renderings of an answered turn (for `ask` and exports)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

# C0 controls but tab and new line, DEL, C1 controls, and the bidirectional overrides and
# isolates that reorder what a terminal shows ("Trojan Source", CVE-2021-42574).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _shown(match: re.Match) -> str:
    ch = match.group(0)
    code = ord(ch)
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch) or (
        f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(text: str, *, one_line: bool = False) -> str:
    """``text`` safe to print to a terminal: control characters (escape sequences, bells,
    carriage returns, C1 codes, bidirectional overrides) are shown as ``\\x1b``-style
    escapes instead of being obeyed. ``one_line`` escapes new lines and tabs too (file names,
    headings, titles: a new line there could forge another line of output)."""
    return (_CONTROL_LINE if one_line else _CONTROL).sub(_shown, text)


def plain(text: str) -> str:
    """An answer's Markdown as `ask` prints it for reading: the backslashes that keep a
    passage's own ``*``, ``_``, backticks or brackets literal (see
    :func:`assistant.extractive.markdown_escape`) are dropped, so ``\\_\\_enter\\_\\_()``
    reads ``__enter__()``; bold and citations stay as written."""
    return re.sub(r"\\([\\`*_\[\]<>#|])", r"\1", text)


def location(source: Any) -> str:
    """``path:start-end``, ``path, p. N`` or ``path`` for a passage, a source record, or a
    stored source row (a dict with the same keys); the path made :func:`visible`."""
    if isinstance(source, Mapping):
        path, page = source["path"], source.get("page")
        start, end = source.get("line_start"), source.get("line_end")
    else:
        path, page, start, end = source.path, source.page, source.line_start, source.line_end
    path = visible(str(path), one_line=True)
    if page is not None:
        return f"{path}, p. {page}"
    if start and end and end != start:
        return f"{path}:{start}-{end}"
    if start:
        return f"{path}:{start}"
    return path


def support_bar(support: float | None, width: int = 5) -> str:
    """A small bar and percentage for a support weight (0..1): ``'███▏  71%'``; '' if None."""
    if support is None:
        return ""
    eighths = round(max(0.0, min(1.0, support)) * width * 8)
    bar = "█" * (eighths // 8) + ("" if eighths % 8 == 0 else " ▏▎▍▌▋▊▉"[eighths % 8])
    return f"{bar:<{width}} {100 * support:3.0f}%"


def search_figures(timings: Mapping[str, Any]) -> list[str]:
    """How long finding the passages took, as shown after an answer: ``["retrieval 8 ms",
    "reranking 1.64 s"]`` when the turn reranked blocks (its ``encode_s`` and ``score_s``,
    which ``retrieval_ms`` includes), else ``["retrieval 23 ms"]``; [] without
    ``retrieval_ms``."""
    if timings.get("retrieval_ms") is None:
        return []
    rerank_s = (timings.get("encode_s") or 0.0) + (timings.get("score_s") or 0.0)
    if not rerank_s:
        return [f"retrieval {timings['retrieval_ms']:.0f} ms"]
    search_ms = max(timings["retrieval_ms"] - 1000 * rerank_s, 0.0)
    return [f"retrieval {search_ms:.0f} ms", f"reranking {rerank_s:.2f} s"]


def sources_text(turn) -> str:
    """The numbered sources of a turn, one per line; cited ones are marked with ``*``, and
    each shows its support (share of the answer's attention) when it was measured."""
    sources = turn.sources()
    if not sources:
        return "Sources: none found."
    lines = ["Closest sources (none holds the answer):" if getattr(turn, "abstained", False)
             else "Sources:"]
    for s in sources:
        mark = "*" if s.cited else " "
        heading = f" — {visible(s.heading, one_line=True)}" if s.heading else ""
        support = f", support {support_bar(s.support).strip()}" if s.support is not None else ""
        score = "added from the same document" if s.score is None else f"score {s.score:.3f}"
        lines.append(f"{mark}[{s.number}] {location(s)}{heading} ({score}{support})")
    return "\n".join(lines)


def turn_json(turn, *, model: str, device: str = "", load_s: float | None = None) -> dict:
    """One JSON-ready object: answer, status, sources (with text and location), model, timings."""
    timings = turn.timings()
    if load_s is not None:
        timings["load_s"] = round(load_s, 3)
    return {
        "question": turn.question,
        "answer": turn.answer,
        "short_answer": short_answer(turn),
        "status": turn.status,
        "conversation_id": turn.conversation_id,
        "turn_id": turn.turn_id,
        "model": model,
        "device": device,
        "retrieval_query": turn.query,
        "abstained": bool(getattr(turn, "abstained", False)),
        "form": getattr(turn, "form", ""),
        "grounding": getattr(turn, "grounding", ""),
        "cited": turn.cited(),
        "sentences": sentence_support(turn),
        "sources": [
            {"number": s.number, "path": s.path, "title": s.title, "heading": s.heading,
             "page": s.page, "line_start": s.line_start, "line_end": s.line_end,
             "location": location(s), "score": None if s.score is None else round(s.score, 6),
             "cited": s.cited,
             "support": s.support, "text": s.text}
            for s in turn.sources()
        ],
        "timings": timings,
    }


def turn_state(turn) -> dict:
    """What the chat shows of a turn, JSON-ready (the answer server sends it to a chat
    client): ``status``, ``error``, ``answer``, ``query``, ``conversation_id``, ``turn_id``,
    ``cited`` (numbers), ``sources`` (``SourceRecord`` fields), ``timings``, ``grounding``,
    ``abstained``."""
    return {
        "status": turn.status, "error": turn.error, "answer": turn.answer, "query": turn.query,
        "conversation_id": turn.conversation_id, "turn_id": turn.turn_id, "cited": turn.cited(),
        "sources": [dataclasses.asdict(s) for s in turn.sources()], "timings": turn.timings(),
        "grounding": turn.grounding, "abstained": bool(turn.abstained),
    }


def short_answer(turn) -> str:
    """The reader's answer span when the answer shows it (a factoid's bold span, a yes/no's
    evidence), else ''. A sentence-form answer (how, why, a comparison, a list) is read for a
    span too, but that span is not the answer and is not shown, so scripts do not get it."""
    span = getattr(turn, "short_answer", "") or ""
    return span if span and span in plain(turn.answer) else ""


# A sentence ends at . ! ? or a citation's ], before white space that does not start a
# citation: "It is. [1] Then" splits after "[1]", so the citation stays with its sentence.
_SENTENCE_END = re.compile(r"(?<=[.!?\]])\s+(?=[^\s\[]|\[(?!\d))|\n\n+")


_BOLD = re.compile(r"(?<!\\)\*\*(.+?)(?<!\\)\*\*")  # **bold**, not an escaped \*\*


def sentence_support(turn) -> list[dict]:
    """Per answer sentence: its text, the sources it cites and their support weights
    (``{"text", "cites", "support"}``); a sentence citing nothing is ``unsupported``. A
    citation right after a sentence's full stop (``It is. [1]``) belongs to that sentence.
    The text is plain, for scripts: no citations, bold markers or Markdown escapes
    (``**with\\_item**`` is ``with_item``). A sentence quoted from a passage (a composed
    answer: the turn's ``reading.sentence_support``) or written by a chat model over passage
    blocks (``turn.sentence_weights``) has the support of its own tokens; any other the
    turn's."""
    from .attribution import CITATION
    from .dialogue import cited_numbers

    weights = {s.number: s.support for s in turn.sources()}
    reading = getattr(turn, "reading", None)
    quoted = list(zip([" ".join(t.split()) for _, t in getattr(reading, "sentences", [])],
                      getattr(reading, "sentence_support", []) or []))
    quoted += list(getattr(turn, "sentence_weights", []) or [])  # a chat answer's sentences
    out = []
    for part in _SENTENCE_END.split(turn.answer.strip()):
        text = re.sub(r"\s+([.,;:!?])", r"\1", CITATION.sub("", part)).strip().lstrip("> ").strip()
        text = plain(_BOLD.sub(r"\1", text))
        if not text:
            continue
        cites = [n for n in cited_numbers(part) if n in weights]
        spaced = " ".join(text.split())
        own = next((w for said, w in quoted if said and said in spaced), None)
        out.append({"text": text, "cites": cites,
                    "support": {str(n): round(own[n - 1], 4) if own and n <= len(own)
                                else weights[n] for n in cites},
                    "unsupported": not cites})
    return out
