"""A chat model's follow-up over the same passages, with and without the conversation
prepared between the turns (``DialogueManager.prepare_follow_up``, which the chat app and the
answer server run while the answer is read), in one process.

Each of the first ``-n`` tune-split questions about the bundled Python reference is asked in
two conversations; then "Can you say more about that?" (which retrieves the same passages in
the same order) follows in each, once after the preparation and once without, alternating
which goes first. Prints each follow-up's time to its first piece of text (from the
follow-up), the prompt tokens reused, whether both follow-ups wrote the same text (the
preparation is exact), and the medians.

    .venv/bin/python benchmarks/prepare_follow_up.py [--model SmolLM2-135M-Instruct] [-n 8]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

MORE = "Can you say more about that?"


def main() -> None:
    from assistant.cli import build_manager
    from assistant.history import History

    args, asked, settings, embedder, generator = common.chat_setup(
        __doc__.splitlines()[0], answerable_only=True)
    manager = build_manager(settings, embedder=embedder, generator=generator,
                            history=History(Path(tempfile.mkdtemp()) / "history.db"))
    manager.warm_up()
    first = {True: [], False: []}
    same = 0
    print("| question | prepared | first piece | prompt tokens reused |")
    print("| --- | --- | --- | --- |")
    for i, question in enumerate(asked):
        turns = {}
        for prepared in (True, False):
            turns[prepared] = manager.ask(question)
            list(turns[prepared])
        texts = {}
        for prepared in ((True, False) if i % 2 == 0 else (False, True)):
            generator._prepared = None  # nothing left from another conversation
            if prepared:
                manager.prepare_follow_up(turns[prepared])
            again, seconds, _ = common.timed(manager, MORE, turns[prepared].conversation_id)
            first[prepared].append(seconds)
            texts[prepared] = again.answer
            print(f"| {question} | {'yes' if prepared else 'no'} | {seconds:.2f} s | "
                  f"{again.reply.stats.reused_tokens} |")
        same += texts[True] == texts[False]
    print(f"\n{args.model}: follow-up's first piece, median: prepared "
          f"{statistics.median(first[True]):.2f} s, not prepared "
          f"{statistics.median(first[False]):.2f} s; the same text {same} of {len(asked)}")


if __name__ == "__main__":
    main()
