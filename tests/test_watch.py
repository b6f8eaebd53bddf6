"""`assistant index --watch`: a real process watching a folder; edits, new files and deletions
reach the live index (what `ask` and the chat search) within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from index.store import Store, StoreError

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
LIMIT_S = 5.0


def bm25_paths(index: Path, word: str) -> set[str]:
    """Files whose passages BM25 finds for ``word`` in the live index (what `ask --mode bm25`
    retrieves)."""
    try:
        store = Store.open(index)
    except StoreError:
        return set()
    try:
        return {p.path for p in store.passages([i for i, _ in store.bm25_search(word, 10)])}
    finally:
        store.close()


def embedded(index: Path) -> tuple[int, int]:
    """(passages with a vector, passages) in the live index."""
    store = Store.open(index)
    try:
        return store.stats()["embedded"], store.stats()["passages"]
    finally:
        store.close()


def wait_for(condition, limit: float) -> float:
    """Seconds until ``condition()`` held; fails after ``limit`` seconds."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    pytest.fail(f"not seen within {limit} s")


def test_watch_follows_edits_new_files_and_deletions(tmp_path):
    docs, data = tmp_path / "docs", tmp_path / "data"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nThe first note mentions apples.\n")
    (docs / "b.md").write_text("# B\n\nThe second note mentions bananas.\n")
    env = {**os.environ, "ASSISTANT_CONFIG": str(tmp_path / "none.toml"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "assistant", "--data-dir", str(data), "index", "-q", "--watch",
         str(docs)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)
    index = data / "index"
    try:
        wait_for(lambda: bm25_paths(index, "bananas"), 120)  # first run, model load included
        time.sleep(1.0)  # the watcher is running once the first run is done
        a, b, c = (str((docs / n).resolve()) for n in ("a.md", "b.md", "c.md"))
        timings = {}
        (docs / "a.md").write_text("# A\n\nThe first note now mentions cherries.\n")
        timings["edit"] = wait_for(lambda: bm25_paths(index, "cherries") == {a}
                                   and not bm25_paths(index, "apples"), LIMIT_S)
        (docs / "c.md").write_text("# C\n\nA new note about dates.\n")
        timings["add"] = wait_for(lambda: bm25_paths(index, "dates") == {c}, LIMIT_S)
        (docs / "b.md").unlink()
        timings["delete"] = wait_for(lambda: not bm25_paths(index, "bananas"), LIMIT_S)
        (docs / "c.md").rename(docs / "d.md")
        d = str((docs / "d.md").resolve())
        timings["rename"] = wait_for(lambda: bm25_paths(index, "dates") == {d}, LIMIT_S)
        print("\nseen after (s):", {k: round(v, 2) for k, v in timings.items()})
        wait_for(lambda: embedded(index) == (2, 2), LIMIT_S)  # a.md and d.md, with vectors
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stderr.close()
