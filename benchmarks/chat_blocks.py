"""A chat model's answers with the passages as prompt text against passages as key/value
blocks (``reader = "text"`` / ``"blocks"``, :mod:`assistant.chat_reader`), as `assistant ask`
runs them: the same generator and retrieval, the two managers taking turns question by
question in one process.

Each question of the question set's tune split (the first ``-n`` about the bundled Python
reference) is asked, then a follow-up in the same conversation (``FOLLOW_UP``, which retrieves
mostly the same passages). For each reader it prints the median over the questions of the time
to first token (from the question, retrieval included), the time to the complete text, the
support pass (blocks only) and the passages prefilled, for the questions and for the
follow-ups. Between the two turns the manager prepares the follow-up as the chat app does
while the answer is read (``DialogueManager.prepare_follow_up``: the conversation so far over
the same blocks); its time is printed apart and is not in the follow-up's. Speed only;
``eval --questions`` scores the answers.

    .venv/bin/python benchmarks/chat_blocks.py [--model SmolLM2-135M-Instruct] [-n 8]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

READERS = ("text", "blocks")
FOLLOW_UP = "Can you say more about that?"


def main() -> None:
    from assistant.cli import build_manager
    from assistant.history import History

    args, asked, settings, embedder, generator = common.chat_setup(
        __doc__.splitlines()[0], answerable_only=True)
    history = History(Path(tempfile.mkdtemp()) / "history.db")
    managers = {r: build_manager(settings.replace(reader=r), embedder=embedder,
                                 generator=generator, history=history) for r in READERS}
    managers["blocks"].warm_up()
    keys = ("first", "done", "support", "prefilled", "prepare", "f_first", "f_done",
            "f_prefilled", "f_reused")
    rows = {r: {k: [] for k in keys} for r in READERS}
    for question in asked:
        for reader, manager in managers.items():
            row = rows[reader]
            turn, first, done = common.timed(manager, question)
            row["first"].append(first)
            row["done"].append(done)
            row["support"].append(turn.timings().get("support_s", 0.0))
            row["prefilled"].append(turn.timings().get("blocks_computed",
                                                       turn.prompt.passages_used))
            started = time.perf_counter()
            manager.prepare_follow_up(turn)  # the chat does this while the answer is read
            row["prepare"].append(time.perf_counter() - started)
            again, first, done = common.timed(manager, FOLLOW_UP, turn.conversation_id)
            row["f_reused"].append(again.reply.stats.reused_tokens if again.reply else 0)
            row["f_first"].append(first)
            row["f_done"].append(done)
            row["f_prefilled"].append(again.timings().get("blocks_computed",
                                                          again.prompt.passages_used))
    print(f"{len(asked)} questions of the tune split on the bundled Python reference, each "
          f"followed by “{FOLLOW_UP}”; {args.model}, {generator.precision} on "
          f"{generator.device}; the readers take turns question by question\n")
    print("| passages | first token | complete text | support pass | passages prefilled | "
          "prepared between turns | follow-up: first token | complete text | "
          "passages prefilled | prompt tokens reused |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    med = statistics.median
    for reader in READERS:
        r = rows[reader]
        print(f"| {reader} | {med(r['first']):.2f} s | {med(r['done']):.2f} s | "
              f"{med(r['support']):.2f} s | {med(r['prefilled']):.0f} | "
              f"{med(r['prepare']):.2f} s | {med(r['f_first']):.2f} s | "
              f"{med(r['f_done']):.2f} s | {med(r['f_prefilled']):.0f} | "
              f"{med(r['f_reused']):.0f} |")
    print("\n(medians over the questions)")


if __name__ == "__main__":
    main()
