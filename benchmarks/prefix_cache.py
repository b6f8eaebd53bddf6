"""Time to first token of an extractive reading with and without the worked examples' cached
key/value state (``complete(shared_prefix=...)``), on SQuAD dev questions over their gold
passages, alternating the two in the same process. Prints a table; also checks that both give
the same answers.

    .venv/bin/python benchmarks/prefix_cache.py [-n 30] [--device cpu]
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

import common
from assistant.config import Settings
from assistant.extractive import extractive_prefix, extractive_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bench", type=Path, default=common.BENCH)
    args = parser.parse_args()
    settings = Settings.load()
    generator = common.generator(settings, device=args.device)
    corpus = common.corpus(args.bench)
    questions = common.questions(args.bench)
    head = extractive_prefix()
    generator.complete(extractive_prompt("Warm-up?", "Warm-up."), max_new_tokens=1,
                       shared_prefix=head).text()  # builds the cache once, outside the timing
    times = {"full prompt": [], "cached examples": []}
    same = 0
    prompt_tokens = prefix_tokens = 0
    for q in random.Random(5).sample(questions, args.n):
        prompt = extractive_prompt(q["question"], corpus[q["gold_passage"]])
        answers = []
        for name, shared in (("full prompt", ""), ("cached examples", head)):
            reply = generator.complete(prompt, max_new_tokens=48, stop=("\n",),
                                       shared_prefix=shared)
            answers.append(reply.text())
            times[name].append(reply.stats.first_token_s)
            prompt_tokens = reply.stats.prompt_tokens
        same += answers[0] == answers[1]
        prefix_tokens = len(generator.tokenizer(generator._bos() + head,
                                                add_special_tokens=False)["input_ids"])
    print(f"\n{args.n} questions on {generator.device}; the examples are {prefix_tokens} of the "
          f"last prompt's {prompt_tokens} tokens; same answer both ways: {same}/{args.n}\n")
    print("| prompt | time to first token, median (s) | p95 (s) |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        values = sorted(values)
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        print(f"| {name} | {statistics.median(values):.3f} | {p95:.3f} |")


if __name__ == "__main__":
    main()
