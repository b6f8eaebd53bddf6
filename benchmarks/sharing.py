"""Answering while an index run embeds in the background: wall time of one-shot
`assistant ask` on the bundled corpus, idle and with an `assistant index` of SciFact (5,183
abstracts, in another data dir) embedding at the same time, as a user would run them.

The indexer runs as `assistant index` does (lower priority, embedding paused while any
assistant process answers: index/turns.py). Run it alone on the machine:

    .venv/bin/python benchmarks/sharing.py [--asks 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assistant.evaluate import read_jsonl, write_corpus  # noqa: E402
from index.store import Store, StoreError  # noqa: E402

QUESTIONS = ["What does the global statement do?", "What is a generator expression?",
             "How are default parameter values evaluated?", "What does the pass statement do?",
             "What is the difference between is and ==?"]


def embedded(index: Path) -> tuple[int, int]:
    try:
        store = Store.open(index)
    except StoreError:
        return 0, 0
    try:
        stats = store.stats()
        return stats["embedded"], stats["passages"]
    finally:
        store.close()


def ask(question: str, env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "assistant", "ask", "--json", question],
                            env=env, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stderr)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asks", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ask(QUESTIONS[-1], env)  # warm-up: bundled index, converted generator, disk cache
    idle = [ask(q, env) for q in QUESTIONS[: args.asks]]
    home = Path(os.environ.get("ASSISTANT_DATA_DIR", Path.home() / ".local/share/assistant"))
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp)
        write_corpus(read_jsonl(ROOT.parent / "shared/bench/scifact/corpus.jsonl"),
                     other / "docs")
        (other / "models").symlink_to(home / "models")
        index_env = {**env, "ASSISTANT_DATA_DIR": str(other),
                     "ASSISTANT_CONFIG": str(other / "none.toml")}
        indexer = subprocess.Popen([sys.executable, "-m", "assistant", "index", "-q",
                                    str(other / "docs")], env=index_env, cwd=ROOT)
        while indexer.poll() is None and embedded(other / "index")[0] == 0:
            time.sleep(0.5)  # until it is embedding
        busy, progress = [], []
        for q in QUESTIONS[: args.asks]:
            before = embedded(other / "index")[0]
            busy.append(ask(q, env))
            progress.append(embedded(other / "index")[0] - before)
        still = indexer.poll() is None
        start_count = embedded(other / "index")[0]
        time.sleep(20)
        rate = (embedded(other / "index")[0] - start_count) / 20  # checkpoints lag: rough
        indexer.terminate()
        indexer.wait()
    print(f"\n`assistant ask` wall time, {args.asks} questions each (seconds)\n")
    print("| condition | median | each |")
    print("|---|---|---|")
    print(f"| idle | {statistics.median(idle):.1f} | {', '.join(f'{t:.1f}' for t in idle)} |")
    print(f"| index run embedding SciFact meanwhile | {statistics.median(busy):.1f} | "
          f"{', '.join(f'{t:.1f}' for t in busy)} |")
    print(f"\nratio busy / idle (median): {statistics.median(busy) / statistics.median(idle):.2f}")
    print(f"indexer was still running during every ask: {still}; passages it published as "
          f"embedded during each ask: {progress}; afterwards ≈ {rate:.0f} passages/s")


if __name__ == "__main__":
    main()
