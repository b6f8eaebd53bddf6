"""Index Debian's python3.11-doc HTML folder from a fresh data dir, as a new user would, and
time what they feel: when the text is first searchable (BM25), when an `ask --mode bm25`
started then has answered, when everything is embedded, and how long a second run takes.

Set-up (once): ``apt-get install python3.11-doc``. Run it alone on the machine:

    .venv/bin/python benchmarks/python_docs.py [--folder /usr/share/doc/python3.11/html]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from index.store import Store, StoreError  # noqa: E402


def live_stats(index: Path) -> dict | None:
    try:
        store = Store.open(index)
    except StoreError:
        return None
    try:
        return store.stats()
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/usr/share/doc/python3.11/html"))
    parser.add_argument("--question", default="How do I read a file line by line?")
    parser.add_argument("--data-dir", type=Path, help="default: a new temporary folder")
    args = parser.parse_args()
    if not args.folder.is_dir():
        sys.exit(f"{args.folder} missing: apt-get install python3.11-doc")
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="pydocs-"))
    models = Path(os.environ.get("ASSISTANT_DATA_DIR", Path.home() / ".local/share/assistant"))
    env = {**os.environ, "ASSISTANT_DATA_DIR": str(data),
           "ASSISTANT_CONFIG": str(data / "none.toml"), "HF_HUB_OFFLINE": "1"}
    if (models / "models").is_dir() and not (data / "models").exists():
        data.mkdir(parents=True, exist_ok=True)
        (data / "models").symlink_to(models / "models")  # converted generator, ONNX copies
    assistant = [sys.executable, "-m", "assistant"]
    index = data / "index"
    started = time.perf_counter()
    log = open(data / "index.log", "w")
    indexer = subprocess.Popen([*assistant, "index", str(args.folder)], env=env, cwd=ROOT,
                               stdout=log, stderr=log)
    searchable = ask_done = None
    ask_sources = []
    while indexer.poll() is None:
        stats = live_stats(index)
        if stats and stats["passages"] and searchable is None:
            searchable = time.perf_counter() - started
            result = subprocess.run([*assistant, "ask", "--mode", "bm25", "--json",
                                     args.question], env=env, cwd=ROOT, capture_output=True,
                                    text=True)
            ask_done = time.perf_counter() - started
            try:
                ask_sources = [s["path"] for s in json.loads(result.stdout)["sources"]]
            except (ValueError, KeyError):
                ask_sources = [f"(ask failed: {result.stderr.strip()[-200:]})"]
        time.sleep(0.25)
    embedded = time.perf_counter() - started
    log.close()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    first_log = (data / "index.log").read_text()
    again = time.perf_counter()
    second = subprocess.run([*assistant, "index"], env=env, cwd=ROOT, capture_output=True,
                            text=True)
    second_s = time.perf_counter() - again
    stats = live_stats(index) or {}
    skipped = re.search(r"Skipped (\d+) file", first_log)
    dups = re.search(r"Stored once: (\d+) file", first_log)
    sources = sum(1 for p in ask_sources if str(args.folder) in p)
    print(f"\n{args.folder}: {stats.get('documents')} documents, {stats.get('passages')} "
          f"passages, {stats.get('embedded')} embedded; data dir {data}\n")
    print("| step | seconds |")
    print("|---|---|")
    print(f"| first publication (BM25-searchable) | {searchable:.1f} |")
    print(f"| `ask --mode bm25` started then, answered ({sources}/{len(ask_sources)} sources "
          f"from the docs) | {ask_done:.1f} |")
    print(f"| fully embedded (index run ended, rc {indexer.returncode}) | {embedded:.1f} |")
    print(f"| second `index` run (nothing changed) | {second_s:.1f} |")
    print(f"\npeak RSS of the largest child process: {peak:.0f} MB")
    print(f"skipped: {skipped.group(1) if skipped else 0} files; stored once (duplicates): "
          f"{dups.group(1) if dups else 0}")
    print("first run's report:\n" + "\n".join(
        line for line in first_log.splitlines()[-40:] if "━" not in line)[:3000])
    print("second run's report:\n" + second.stderr.strip()[-600:])


if __name__ == "__main__":
    main()
