"""Prompt templates from ``prompts/``, rendered within a token budget.

A prompt is chat messages: the system template, then earlier turns of the conversation (newest
kept first, within ``history_tokens``), then the question with the retrieved passages numbered
[1]..[k]. When it does not fit the budget, the lowest-ranked passages are dropped first, then
the last remaining passage is cut short.
"""

from __future__ import annotations

import re
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


def history_messages(history: Sequence[tuple[str, str]], counter: _Counter,
                     history_tokens: int) -> list[dict]:
    """Earlier ``(question, answer)`` turns as user/assistant messages, oldest first, the
    newest kept first while they fit ``history_tokens`` (8 tokens of each turn's template
    counted)."""
    turns: list[dict] = []
    spent = 0
    for q, a in reversed(history):
        cost = counter.count_tokens(q) + counter.count_tokens(a) + 8
        if spent + cost > history_tokens:
            break
        turns[:0] = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        spent += cost
    return turns


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
    turns = history_messages(history, counter, history_tokens)
    instruction = form_instruction(form)

    def render(texts: list[str]) -> list[dict]:
        kept = [f"[{n}] {text}" for n, text in evidence if n <= len(texts)]
        body = load_template("answer.txt").format(
            passages="\n\n".join(texts) if texts else "(no sources found)",
            question=question.strip(), instruction=instruction,
            evidence=("\nKey sentences:\n" + "\n".join(kept) + "\n") if kept else "",
        )
        return [system, *turns, {"role": "user", "content": body}]

    def measure(texts: list[str]) -> tuple[list[dict], int]:
        messages = render(texts)
        return messages, counter.prompt_tokens(messages)

    messages, tokens, texts = _fit(passages, measure, budget_tokens)
    return Prompt(messages, len(texts), tokens)


def _fit(passages: Sequence[_Passage], measure, budget_tokens: int, *, end: str = ""):
    """The passages' texts (:func:`format_passage`, each followed by ``end``) that fit
    ``budget_tokens``: the lowest-ranked dropped first, then the last one left cut short.

    Args:
        measure: ``measure(texts) -> (prompt, tokens)``, the prompt made with ``texts`` and
            its size in tokens.

    Returns:
        ``(prompt, tokens, texts)`` for the texts kept (``measure``'s last result).
    """
    texts = [format_passage(i, p) + end for i, p in enumerate(passages, start=1)]
    words: list[str] | None = None  # words kept of passage 1 once it alone is too long
    while True:
        prompt, tokens = measure(texts)
        if tokens <= budget_tokens or not texts:
            return prompt, tokens, texts
        if len(texts) > 1:
            texts.pop()
            continue
        # One passage left and still too long: keep its first part (a word is >= 1 token).
        words = (words if words is not None else passages[0].text.split())
        words = words[: max(0, len(words) - (tokens - budget_tokens) - 8)]
        texts = [format_passage(1, passages[0], " ".join(words) + " ...") + end] if words else []


_LABEL = re.compile(r"[^\n(]*?\[\d+\] ?")
"""A passage's number as ``passage.txt`` renders it (``Source [1] ``)."""

PASSAGES_MARK = "\x00passages\x00"
"""Stands for the passages while a block prompt is rendered (never tokenised)."""


@dataclass(frozen=True)
class BlockPrompt:
    """A chat prompt whose passages are key/value blocks (see
    :meth:`~assistant.generation.TransformersGenerator.generate_over`).

    Attributes:
        head: the rendered prompt up to the passages (the system text: the same for every
            question, so every passage's block can be reused by later turns).
        labels: per passage, its number as the model reads it before the passage
            (``Source [1] ``; kept apart so that a passage's block does not depend on its
            number: a later turn that lists it under another number reuses the block).
        passages: the passages' texts as the model reads them after their labels (the
            source's name, then the text), each ending with a blank line.
        tail: the rest of the rendered prompt: earlier turns, the question, the opened
            assistant turn.
        messages: the chat messages, passages in the system message, for display.
        tokens: head, passages and tail together.
    """

    head: str
    labels: list[str]
    passages: list[str]
    tail: str
    messages: list[dict]
    tokens: int

    @property
    def passages_used(self) -> int:
        """How many passages fit the budget (the first ones)."""
        return len(self.passages)


def build_block_prompt(
    question: str,
    passages: Sequence[_Passage],
    *,
    counter: _Counter,
    render,
    budget_tokens: int,
    history: Sequence[tuple[str, str]] = (),
    history_tokens: int = 512,
    form: str = "factoid",
    evidence: Sequence[tuple[int, str]] = (),
) -> BlockPrompt | None:
    """The chat prompt of :func:`build_prompt` laid out for passage blocks: the passages go
    in the system message (after ``system.txt``), so that everything before them is the
    same for every question; earlier turns follow as chat messages, then the question
    (``question.txt``). Passages are dropped from the lowest-ranked, then the last one cut,
    until the whole fits ``budget_tokens``, as in :func:`build_prompt`.

    Args:
        render: ``render(messages) -> str``, the model's chat template with the assistant's
            turn opened (``TransformersGenerator.render``).
        Others: as for :func:`build_prompt`.

    Returns:
        The :class:`BlockPrompt`, or None when the chat template does not keep the system
        text as given (the passages' place cannot be found in the rendered prompt).
    """
    system = load_template("system.txt") + "\n\n"
    turns = history_messages(history, counter, history_tokens)
    instruction = form_instruction(form)

    def messages(body: str, used: int) -> list[dict]:
        kept = [f"[{n}] {text}" for n, text in evidence if n <= used]
        user = load_template("question.txt").format(
            question=question.strip(), instruction=instruction,
            evidence=("\nKey sentences:\n" + "\n".join(kept) + "\n") if kept else "")
        return [{"role": "system", "content": system + body}, *turns,
                {"role": "user", "content": user}]

    def split(used: int) -> tuple[str, str] | None:
        rendered = render(messages(PASSAGES_MARK, used))
        if rendered.count(PASSAGES_MARK) != 1:
            return None
        head, tail = rendered.split(PASSAGES_MARK)
        return head, tail

    def measure(texts: list[str]) -> tuple[tuple[str, str] | None, int]:
        parts = split(len(texts))
        if parts is None:  # no budget to keep: the layout is impossible
            return None, 0
        return parts, (counter.count_tokens(parts[0]) + counter.count_tokens(parts[1])
                       + sum(counter.count_tokens(t) for t in texts))

    parts, tokens, texts = _fit(passages, measure, budget_tokens, end="\n\n")
    if parts is None:
        return None
    numbers = [_LABEL.match(t) for t in texts]
    return BlockPrompt(parts[0], [m.group() if m else "" for m in numbers],
                       [t[m.end():] if m else t for m, t in zip(numbers, texts)], parts[1],
                       messages("".join(texts).rstrip(), len(texts)), tokens)
