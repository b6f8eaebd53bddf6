"""What may be asked: one check shared by `ask`, the chat app and the dialogue manager (light to
import: the chat app checks a question before the models have loaded)."""

from __future__ import annotations

from typing import Callable

MAX_QUESTION_TOKENS = 512
"""Longest question, in generator tokens: the embedder reads at most 256 word pieces, and a
question longer than a passage is a document, not a question."""


def check_question(question: str, count_tokens: Callable[[str], int] | None = None) -> str:
    """The question, stripped, or a one-line ``ValueError`` saying why it cannot be asked.

    Args:
        count_tokens: the generator's token counter; without it only the character bound
            (16 characters per token, far above any tokenizer's average) is checked.

    Raises:
        ValueError: empty, no letters or digits, or longer than :data:`MAX_QUESTION_TOKENS`.
    """
    question = question.strip()
    if not question:
        raise ValueError("the question is empty")
    if not any(ch.isalnum() for ch in question):
        raise ValueError("the question has no words to search for")
    if len(question) > 16 * MAX_QUESTION_TOKENS:
        raise ValueError(f"the question is too long ({len(question):,} characters; at most "
                         f"{MAX_QUESTION_TOKENS} tokens): ask about one thing at a time")
    if count_tokens is not None:
        tokens = count_tokens(question)
        if tokens > MAX_QUESTION_TOKENS:
            raise ValueError(f"the question is too long ({tokens} tokens; at most "
                             f"{MAX_QUESTION_TOKENS}): ask about one thing at a time")
    return question
