"""Plain-text and JSON renderings of an answered turn (for `ask` and exports)."""

from __future__ import annotations

from typing import Any, Mapping


def location(source: Any) -> str:
    """``path:start-end``, ``path, p. N`` or ``path`` for a passage, a source record, or a
    stored source row (a dict with the same keys)."""
    if isinstance(source, Mapping):
        path, page = source["path"], source.get("page")
        start, end = source.get("line_start"), source.get("line_end")
    else:
        path, page, start, end = source.path, source.page, source.line_start, source.line_end
    if page is not None:
        return f"{path}, p. {page}"
    if start and end and end != start:
        return f"{path}:{start}-{end}"
    if start:
        return f"{path}:{start}"
    return path


def sources_text(turn) -> str:
    """The numbered sources of a turn, one per line; cited ones are marked with ``*``."""
    sources = turn.sources()
    if not sources:
        return "Sources: none found."
    lines = ["Sources:"]
    for s in sources:
        mark = "*" if s.cited else " "
        heading = f" — {s.heading}" if s.heading else ""
        lines.append(f"{mark}[{s.number}] {location(s)}{heading} (score {s.score:.3f})")
    return "\n".join(lines)


def turn_json(turn, *, model: str, device: str = "", load_s: float | None = None) -> dict:
    """One JSON-ready object: answer, status, sources (with text and location), model, timings."""
    timings = turn.timings()
    if load_s is not None:
        timings["load_s"] = round(load_s, 3)
    return {
        "question": turn.question,
        "answer": turn.answer,
        "short_answer": getattr(turn, "short_answer", ""),
        "status": turn.status,
        "conversation_id": turn.conversation_id,
        "turn_id": turn.turn_id,
        "model": model,
        "device": device,
        "retrieval_query": turn.query,
        "cited": turn.cited(),
        "sources": [
            {"number": s.number, "path": s.path, "title": s.title, "heading": s.heading,
             "page": s.page, "line_start": s.line_start, "line_end": s.line_end,
             "location": location(s), "score": round(s.score, 6), "cited": s.cited,
             "text": s.text}
            for s in turn.sources()
        ],
        "timings": timings,
    }
