"""`assistant ask` as a user types it: wall-clock time per question, each in its own process,
then the same questions with the answer server started on demand (the default).

Each `ask` runs in a pseudo-terminal (as typed at a terminal, so it may start the server);
the first pass sets ``serve_idle_minutes = 0`` and stops any server first, so every question
loads the models in its own process; the second uses the default, so its first question
starts the server and the rest are answered by it. Prints a Markdown table: wall seconds
(``time``'s "real") and the timings line `ask` printed. Run it alone on the machine:

    .venv/bin/python benchmarks/ask_time.py
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

QUESTIONS = (
    "What does the pass statement do?",
    "Which exception does next() raise when an iterator is exhausted?",
    "How does the with statement work?",
    "What is a generator?",
    "What does the global statement do?",
    "How are default parameter values evaluated?",
    "What is the difference between a list and a tuple?",
    "Which keyword starts a function definition?",
)
ASSISTANT = [sys.executable, "-m", "assistant"]
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_terminal import in_pty  # noqa: E402


def ask_in_terminal(question: str, env: dict) -> tuple[float, str]:
    """Run ``assistant ask QUESTION`` with a pseudo-terminal as its input and output
    (the terminal test's :func:`~tests.test_terminal.in_pty`): (wall seconds, everything it
    printed)."""
    started = time.perf_counter()
    printed = in_pty(["ask", question], env)
    return time.perf_counter() - started, printed.decode("utf-8", errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("questions", nargs="*", default=list(QUESTIONS))
    args = parser.parse_args()
    subprocess.run([*ASSISTANT, "serve", "--stop"], cwd=ROOT, capture_output=True)
    rows = {}
    for how, minutes in (("own process", "0"), ("server on demand", "10")):
        env = {**os.environ, "ASSISTANT_SERVE_IDLE_MINUTES": minutes}
        for question in args.questions:
            wall, printed = ask_in_terminal(question, env)
            figures = re.search(r"reranking [0-9.]+ s · first token [0-9.]+ s", printed)
            started = " (started the server)" if "Starting the answer server" in printed else ""
            rows.setdefault(question, {})[how] = (f"{wall:.2f} s{started}",
                                                  figures.group(0) if figures else "")
    subprocess.run([*ASSISTANT, "serve", "--stop"], cwd=ROOT, capture_output=True)
    print("| question | in its own process | server on demand | what the served `ask` printed |")
    print("| --- | ---: | ---: | --- |")
    for question, got in rows.items():
        own, served = got["own process"], got["server on demand"]
        print(f"| {question} | {own[0]} | {served[0]} | {served[1]} |")


if __name__ == "__main__":
    main()
