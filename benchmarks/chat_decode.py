"""A chat model's answers through the direct decoding loop against transformers' generate(),
as `assistant ask` runs them: the same manager, retrieval and chat prompt (passages as
messages), the generator switched between ``decode_loop = "direct"`` (the decoder written
out, prompt-lookup drafts, on the thread that reads the reply) and ``"generate"``
(``model.generate()`` on a thread of its own), alternating per question in one process.

For each loop it prints the median over the questions of the time to first token (prefill
included), decode tokens/s and the complete answer's time, and how many answers were the same
text as generate()'s. The questions are the first ``-n`` of the question set's tune split
(speed only; nothing is scored).

    .venv/bin/python benchmarks/chat_decode.py [--model SmolLM2-135M-Instruct] [-n 8]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

LOOPS = ("generate", "direct")


def main() -> None:
    from assistant.cli import build_manager
    from assistant.history import History

    args, asked, settings, embedder, generator = common.chat_setup(__doc__.splitlines()[0])
    manager = build_manager(settings, embedder=embedder, generator=generator,
                            history=History(Path(tempfile.mkdtemp()) / "history.db"))
    rows = {loop: {"first": [], "tps": [], "total": [], "same": 0} for loop in LOOPS}
    for question in asked:
        texts = {}
        for loop in LOOPS:
            generator.decode_loop = loop
            turn = manager.ask(question)
            texts[loop] = "".join(turn)
            stats = turn.reply.stats
            rows[loop]["first"].append(stats.first_token_s or stats.total_s)
            rows[loop]["tps"].append(stats.tokens_per_s or 0.0)
            rows[loop]["total"].append(stats.total_s)
        for loop in LOOPS:
            rows[loop]["same"] += texts[loop] == texts["generate"]
    print(f"{len(asked)} questions of the tune split on the bundled Python reference, "
          f"{args.model}, {generator.precision} on {generator.device}, alternating per "
          f"question\n")
    print("| decoding | first token, median | decode tokens/s, median | answer, median | "
          "same text as generate() |")
    print("| --- | --- | --- | --- | --- |")
    for loop in LOOPS:
        r = rows[loop]
        print(f"| {loop} | {statistics.median(r['first']):.2f} s | "
              f"{statistics.median(r['tps']):.1f} | {statistics.median(r['total']):.2f} s | "
              f"{r['same']} of {len(asked)} |")


if __name__ == "__main__":
    main()
