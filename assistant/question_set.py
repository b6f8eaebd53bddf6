"""Real questions about real documents, scored by key facts: ``assistant eval --questions FILE``.

A question file (JSON) names its corpora and lists questions (see
``benchmarks/questions/real.json``)::

    {"corpora": {"python": "bundled:python-reference", "valgrind": "/usr/share/doc/valgrind/html"},
     "questions": [{"id": "q01", "split": "tune", "corpus": "python", "form": "comparison",
                    "question": "What is the difference between a list and a tuple?",
                    "facts": [["mutable"], ["immutable"]],
                    "sources": [{"file": "objects.rst", "has": "immutable"}],
                    "history": []}, ...]}

``facts`` are groups of alternatives: a group counts when any of its strings occurs in the
answer as whole words, its last word maybe in the plural ("list" finds "lists", "tuple"
"tuples"; case-insensitive, markup removed). ``sources`` are the files whose passages hold the
facts (``has``: the passage must also contain that text). ``"answerable": false`` marks a
question the corpora cannot answer (the right reply is an abstention). ``history``: questions
asked first in the same conversation (follow-ups).

Metrics (per question, then averaged per form and split):
- key-fact recall: matched groups / groups, over answerable questions (an abstention scores 0);
- citation correctness: cited sources that are gold / all cited sources (micro-average over
  answerable questions), and "gold cited": questions whose answer cites a gold source;
- abstention precision, recall and F1 (an abstention is right on an unanswerable question).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from . import metrics

BUNDLED = "bundled:"


@dataclass
class Scored:
    """One asked question and its scores."""

    id: str
    split: str
    form: str
    predicted_form: str
    question: str
    answer: str
    answerable: bool
    abstained: bool
    facts_found: int
    facts_total: int
    cited: int
    cited_gold: int
    answer_s: float | None
    sources: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        """Key facts found / key facts (0..1); 0 for an abstention on an answerable question."""
        return self.facts_found / self.facts_total if self.facts_total else 0.0


def load(path: Path) -> tuple[dict[str, Path | str], list[dict]]:
    """``(corpora, questions)`` of a question file; corpus paths resolved against the file's
    folder (``bundled:NAME`` kept as it is).

    Raises:
        ValueError: unreadable JSON, no questions, or a question naming an unknown corpus or
            missing ``question``/``facts``.
    """
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the questions file {path}: {exc}") from None
    corpora: dict[str, Path | str] = {}
    for name, where in (doc.get("corpora") or {}).items():
        corpora[name] = where if where.startswith(BUNDLED) else (
            Path(path).parent / Path(where).expanduser())
    questions = doc.get("questions") or []
    if not questions:
        raise ValueError(f"{path}: no questions")
    for q in questions:
        if "question" not in q:
            raise ValueError(f"{path}: an entry has no 'question': {q}")
        if q.get("answerable", True) and (not q.get("facts") or q.get("corpus") not in corpora):
            raise ValueError(f"{path}: {q.get('id', q['question'])}: an answerable question "
                             "needs 'facts' and a 'corpus' named in 'corpora'")
    return corpora, questions


_MARKUP = re.compile(r"\\(.)|\*\*|`")


def plain(answer: str) -> str:
    """The answer as words: Markdown escapes, bold and code marks removed, spaces collapsed,
    lower case."""
    return " ".join(_MARKUP.sub(lambda m: m.group(1) or "", answer).split()).lower()


def facts_found(answer: str, facts: Sequence[Sequence[str]]) -> int:
    """How many fact groups have an alternative occurring in ``answer`` as whole words, the
    last one maybe with a plural ending -s or -es ("list" finds "lists"; case-insensitive:
    "no" does not match "not")."""
    text = plain(answer)
    return sum(1 for group in facts if any(
        re.search(r"(?<!\w)" + re.escape(" ".join(a.split()).lower()) + r"(?:e?s)?(?!\w)",
                  text)
        for a in group))


def is_gold(passage, sources: Sequence[dict]) -> bool:
    """True when ``passage`` (``path``, ``text``) is from a gold file and holds its ``has``."""
    name = Path(passage.path).name
    text = " ".join(passage.text.split()).lower()
    return any(name == s["file"] and (not s.get("has") or s["has"].lower() in text)
               for s in sources)


def score(question: dict, turn) -> Scored:
    """Score a finished :class:`~assistant.dialogue.Turn` against ``question``."""
    answerable = question.get("answerable", True)
    facts = question.get("facts") or []
    cited = turn.cited()
    shown = turn.hits[: turn.sources_shown]
    gold = [n for n in cited if is_gold(shown[n - 1].passage, question.get("sources", []))]
    found = 0 if turn.abstained else facts_found(turn.answer, facts)
    return Scored(
        id=question.get("id", ""), split=question.get("split", "tune"),
        form=question.get("form", ""), predicted_form=getattr(turn, "form", "") or "",
        question=question["question"], answer=turn.answer, answerable=answerable,
        abstained=turn.abstained, facts_found=found, facts_total=len(facts),
        cited=len(cited), cited_gold=len(gold), answer_s=turn.answer_s,
        sources=[Path(shown[n - 1].passage.path).name for n in cited])


def ask(manager, question: dict) -> Scored:
    """Ask ``question`` through the dialogue manager as a user would (its ``history``
    questions first, in the same conversation) and score the answer."""
    conversation = None
    for earlier in question.get("history") or []:
        turn = manager.ask(earlier, conversation_id=conversation)
        for _ in turn:
            pass
        conversation = turn.conversation_id
    turn = manager.ask(question["question"], conversation_id=conversation)
    for _ in turn:
        pass
    return score(question, turn)


def summary(results: Sequence[Scored]) -> dict:
    """Key-fact recall, citation correctness, gold cited (percentages), form accuracy,
    abstention precision/recall/F1 and answer time median over ``results``."""
    answerable = [r for r in results if r.answerable]
    unanswerable = [r for r in results if not r.answerable]
    said = [r for r in results if r.abstained]
    right = sum(1 for r in said if not r.answerable)
    precision = right / len(said) if said else 0.0
    recall = right / len(unanswerable) if unanswerable else 0.0
    cited = sum(r.cited for r in answerable)
    times = [r.answer_s for r in results if r.answer_s is not None]

    def pct(value: float) -> float:
        return round(100 * value, 1)

    return {
        "questions": len(results),
        "answerable": len(answerable),
        "key_fact_recall": pct(sum(r.recall for r in answerable) / len(answerable))
        if answerable else None,
        "citation_correct": pct(sum(r.cited_gold for r in answerable) / cited) if cited else None,
        "gold_cited": pct(sum(r.cited_gold > 0 for r in answerable) / len(answerable))
        if answerable else None,
        "form_accuracy": pct(sum(r.predicted_form == r.form for r in results) / len(results))
        if results and any(r.predicted_form for r in results) else None,
        "abstained_answerable": sum(1 for r in said if r.answerable),
        "abstention_precision": pct(precision) if unanswerable else None,
        "abstention_recall": pct(recall) if unanswerable else None,
        "abstention_f1": pct(2 * precision * recall / (precision + recall))
        if unanswerable and precision + recall else (0.0 if unanswerable else None),
        "answer_s_median": round(metrics.percentile(times, 50), 2) if times else None,
    }


def rows(results: Sequence[Scored]) -> list[dict]:
    """One row per form (in the order first seen) and an ``all`` row, each with
    :func:`summary`'s columns."""
    forms = list(dict.fromkeys(r.form for r in results))
    out = [{"form": form, **summary([r for r in results if r.form == form])} for form in forms]
    out.append({"form": "all", **summary(results)})
    return out
