"""Prompt templates from ``prompts/``, rendered within a token budget.

A prompt is chat messages: the system template, then earlier turns of the conversation (newest
kept first, within ``history_tokens``), then the question with the retrieved passages numbered
[1]..[k]. When it does not fit the budget, the lowest-ranked passages are dropped first, then
the last remaining passage is cut short.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Protocol, Sequence


class _Passage(Protocol):
    path: str
    title: str
    heading: str
    page: int | None
    text: str


class _Counter(Protocol):
    def count_tokens(self, text: str) -> int: ...

    def prompt_tokens(self, messages: Sequence[dict]) -> int: ...


@lru_cache(maxsize=None)
def load_template(name: str) -> str:
    """The text of template ``name`` (e.g. ``"answer.txt"``) from the ``prompts`` package.

    Raises:
        FileNotFoundError: no such template.
    """
    return resources.files("prompts").joinpath(name).read_text(encoding="utf-8").strip()


def source_label(passage: _Passage) -> str:
    """Short citation label: ``file name, p. N > heading`` (parts present only when known)."""
    label = Path(passage.path).name
    if passage.page is not None:
        label += f", p. {passage.page}"
    if passage.heading:
        label += f" > {passage.heading}"
    return label


def format_passage(number: int, passage: _Passage, text: str | None = None) -> str:
    """One numbered passage as the model sees it."""
    return load_template("passage.txt").format(
        number=number, source=source_label(passage), text=(text if text is not None else passage.text).strip()
    )


@dataclass(frozen=True)
class Prompt:
    """Rendered messages, how many passages they include, and their size in tokens."""

    messages: list[dict]
    passages_used: int
    tokens: int


def form_instruction(form: str) -> str:
    """The answer instruction for a question form (``prompts/forms.txt``: ``form: text``
    lines); the factoid one for an unknown form."""
    lines = dict(line.split(":", 1) for line in load_template("forms.txt").splitlines()
                 if ":" in line)
    return (lines.get(form) or lines.get("factoid", "")).strip()


def build_prompt(
    question: str,
    passages: Sequence[_Passage],
    *,
    counter: _Counter,
    budget_tokens: int,
    history: Sequence[tuple[str, str]] = (),
    history_tokens: int = 512,
    form: str = "factoid",
    evidence: Sequence[tuple[int, str]] = (),
) -> Prompt:
    """Chat messages for ``question`` with ``passages`` numbered from 1, within budget.

    Args:
        question: the user's question.
        passages: retrieved passages, best first.
        counter: the generator (for ``count_tokens`` and ``prompt_tokens``).
        budget_tokens: most tokens for the whole rendered prompt.
        history: earlier ``(question, answer)`` turns, oldest first.
        history_tokens: most tokens spent on ``history``.
        form: the question's form (``prompts/forms.txt`` holds the instruction for each).
        evidence: ``(source number, sentence)`` the answer should rest on, shown after the
            passages as "Key sentences" (only those of passages kept in the prompt).

    Returns:
        The :class:`Prompt`; passages beyond ``passages_used`` were left out.
    """
    system = {"role": "system", "content": load_template("system.txt")}
    turns: list[dict] = []
    spent = 0
    for q, a in reversed(history):
        cost = counter.count_tokens(q) + counter.count_tokens(a) + 8
        if spent + cost > history_tokens:
            break
        turns[:0] = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        spent += cost

    instruction = form_instruction(form)

    def render(texts: list[str]) -> list[dict]:
        kept = [f"[{n}] {text}" for n, text in evidence if n <= len(texts)]
        body = load_template("answer.txt").format(
            passages="\n\n".join(texts) if texts else "(no sources found)",
            question=question.strip(), instruction=instruction,
            evidence=("\nKey sentences:\n" + "\n".join(kept) + "\n") if kept else "",
        )
        return [system, *turns, {"role": "user", "content": body}]

    texts = [format_passage(i, p) for i, p in enumerate(passages, start=1)]
    words: list[str] | None = None  # words kept of passage 1 once it alone is too long
    while True:
        messages = render(texts)
        tokens = counter.prompt_tokens(messages)
        if tokens <= budget_tokens or not texts:
            return Prompt(messages, len(texts), tokens)
        if len(texts) > 1:
            texts.pop()
            continue
        # One passage left and still too long: keep its first part (a word is >= 1 token).
        words = (words if words is not None else passages[0].text.split())
        words = words[: max(0, len(words) - (tokens - budget_tokens) - 8)]
        texts = [format_passage(1, passages[0], " ".join(words) + " ...")] if words else []
