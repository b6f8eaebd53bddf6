"""Follow-up questions over the same passages: how soon the answer comes when the passages'
blocks are already computed, next to the text reader that prefills them again.

On the bundled Python reference (indexed on first use), each pair is a question and a
follow-up in the same conversation that retrieves the same passages; then each question
again in a new conversation, followed by "Can you say more about that?" (``MORE``: it
searches what the question searched and the reader reads that question again, see
:func:`assistant.dialogue.reading_question`). For each reader and kind of follow-up it
prints the median over the questions of: passages prefilled, time to the follow-up's first
answer token (from the follow-up), and time to its complete answer.

    .venv/bin/python benchmarks/followup.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.config import Settings  # noqa: E402

MORE = "Can you say more about that?"
PAIRS = [
    ("How does the with statement work?", "What does the with statement call on exit?"),
    ("What is a generator expression?", "How is a generator expression evaluated?"),
    ("What does the global statement do?", "Can the global statement be used in a class?"),
    ("How are default parameter values evaluated?", "When are default parameter values evaluated?"),
    ("What is the difference between a list and a tuple?", "Are tuples immutable?"),
]


def main() -> None:
    from assistant.cli import build_manager, ensure_demo_index, load_embedder, load_generator
    from assistant.history import History

    settings = Settings.load()
    embedder = load_embedder(settings)
    ensure_demo_index(settings, embedder)
    generator = load_generator(settings)
    history = History(Path(tempfile.mkdtemp()) / "history.db")
    rows = []
    for reader in ("blocks", "text"):
        manager = build_manager(settings.replace(reader=reader), embedder=embedder,
                                generator=generator, history=history)
        for kind in ("a follow-up question", f"“{MORE}”"):
            first_tokens, complete, prefilled, same = [], [], [], 0
            for question, follow_up in PAIRS:
                turn = manager.ask(question)
                list(turn)
                started = time.perf_counter()
                again = manager.ask(follow_up if kind.startswith("a ") else MORE,
                                    conversation_id=turn.conversation_id)
                first = None
                for _ in again:
                    first = first or time.perf_counter() - started
                complete.append(time.perf_counter() - started)
                first_tokens.append(first or complete[-1])
                same += {h.passage.id for h in again.hits} == {h.passage.id for h in turn.hits}
                prefilled.append(again.reading.encoded if again.reading else
                                 again.timings().get("blocks_computed",
                                                     again.prompt.passages_used))
            rows.append((reader, kind, statistics.median(prefilled),
                         statistics.median(first_tokens), statistics.median(complete), same))
    print(f"{len(PAIRS)} questions on the bundled Python reference, {settings.generator_model}, "
          f"top {settings.top_k}, reranked top {settings.rerank_k}\n")
    print("| reader | follow-up | passages prefilled (median) | time to first token, median | "
          "complete answer, median | follow-ups retrieving the same passages |")
    print("| --- | --- | --- | --- | --- | --- |")
    for reader, kind, pre, first, done, same in rows:
        print(f"| {reader} | {kind} | {pre:.0f} | {first:.2f} s | {done:.2f} s | "
              f"{same} of {len(PAIRS)} |")


if __name__ == "__main__":
    main()
