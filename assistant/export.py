"""Conversations as Markdown (answers with footnote-style sources) and as JSON.

Both take what :meth:`assistant.history.History.conversation` and ``.turns`` return.
"""

from __future__ import annotations

import re
import time
from typing import Any

from .attribution import CITATION
from .dialogue import cited_numbers
from .output import location



def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else ""


def _footnotes(answer: str, ordinal: int, numbers: set[int]) -> str:
    """``[1]`` -> ``[^2.1]`` (turn 2, source 1) for every number that has a source."""

    def replace(match: re.Match) -> str:
        found = [n for n in cited_numbers(match.group(0)) if n in numbers]
        if not found:
            return match.group(0)
        return "".join(f"[^{ordinal}.{n}]" for n in found)

    return CITATION.sub(replace, answer)


def to_markdown(conversation: dict, turns: list[dict]) -> str:
    """A conversation as Markdown: a heading, then each question and answer, with the
    answer's citations turned into footnotes ``[^turn.source]`` that give file, lines or
    page and heading; sources the answer did not cite are listed after it."""
    title = conversation.get("title") or "Conversation"
    lines = [f"# {title}", "",
             f"Conversation `{conversation['id']}`, started {_when(conversation.get('created_at'))}.",
             ""]
    for turn in turns:
        ordinal = turn["ordinal"]
        sources = {s["number"]: s for s in turn.get("sources", [])}
        lines += [f"## {turn['question'].strip()}", ""]
        answer = turn.get("answer", "").strip()
        status = turn.get("status", "")
        if answer:
            lines += [_footnotes(answer, ordinal, set(sources)), ""]
        if turn.get("abstained"):
            lines += ["*(not found in the documents; the closest sources are listed)*", ""]
        if status == "cancelled":
            lines += ["*(answer cancelled)*", ""]
        elif status == "error":
            lines += [f"*(error: {turn.get('error') or 'no answer'})*", ""]
        elif status == "pending":
            lines += ["*(no answer: interrupted)*", ""]
        cited = set(cited_numbers(answer)) & set(sources)
        for number in sorted(cited):
            lines.append(f"[^{ordinal}.{number}]: {_describe(sources[number])}")
        others = [sources[n] for n in sorted(sources) if n not in cited]
        if cited:
            lines.append("")
        if others:
            lines += ["Other sources retrieved:", ""]
            lines += [f"- [{s['number']}] {_describe(s)}" for s in others]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _describe(source: dict) -> str:
    heading = f" — {source['heading']}" if source.get("heading") else ""
    support = (f" (support {100 * source['support']:.0f}%)"
               if source.get("support") is not None else "")
    return f"`{location(source)}`{heading}{support}"


def to_json(conversation: dict, turns: list[dict]) -> dict[str, Any]:
    """A conversation as one JSON-ready object: the conversation row plus its turns, each with
    status, timings and sources (with their text and location)."""
    out = dict(conversation)
    out.pop("turns", None)
    out["turns"] = []
    for turn in turns:
        item = {k: v for k, v in turn.items() if k != "sources"}
        item["abstained"] = bool(item.get("abstained"))
        item["sources"] = [dict(s, cited=bool(s["cited"]), location=location(s))
                           for s in turn.get("sources", [])]
        out["turns"].append(item)
    return out
