"""Reading and chunking time against file size: should grow linearly (about 2x per doubling).

Issue 11 found it quadratic (1 MiB 14 s, 2 MiB 50 s, 4 MiB 184 s). For each size a log-like
text file is generated (seeded), read as `index` reads it (``read_document``) and chunked with
the embedder's own token counter (all-MiniLM-L6-v2's tokenizer; ``--fast`` uses the
whitespace estimate instead), and the time of reading + chunking is printed with the ratio to
the size before.

    .venv/bin/python benchmarks/chunking.py [--sizes 1,2,4,8] [--fast]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index.chunking import chunk_sections, whitespace_token_counter  # noqa: E402
from index.readers import read_document  # noqa: E402

WORDS = ("request served user session cache miss error retry timeout worker queue token "
         "latency database index shard replica leader follower commit rollback").split()


def log_text(mib: float, seed: int = 0) -> str:
    """A log-like text of about ``mib`` MiB: timestamped lines and no blank line (one
    paragraph, the case that was quadratic)."""
    rng = random.Random(seed)
    lines, size, n = [], 0, 0
    while size < mib * 2**20:
        n += 1
        line = (f"2026-11-23 12:{n // 60 % 60:02d}:{n % 60:02d} INFO "
                + " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18)))
                + rng.choice([".", "", "; retrying.", ":"]))
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,2,4,8", help="file sizes in MiB")
    parser.add_argument("--fast", action="store_true", help="whitespace token estimate")
    args = parser.parse_args()
    if args.fast:
        counter, name = whitespace_token_counter, "whitespace estimate"
    else:
        from index.embedding import SentenceTransformerEmbedder

        counter, name = SentenceTransformerEmbedder(device="cpu").count_tokens, "MiniLM tokenizer"
    print(f"read + chunk a log file, 200-token passages, 40 overlap ({name})")
    print(f"{'MiB':>5} {'passages':>9} {'seconds':>8} {'x previous':>11}")
    previous = None
    with tempfile.TemporaryDirectory() as folder:
        for mib in (float(s) for s in args.sizes.split(",")):
            path = Path(folder) / f"{mib:g}.log"
            path.write_text(log_text(mib), encoding="utf-8")
            started = time.perf_counter()
            document = read_document(path, path.read_bytes(), "text")
            chunks = chunk_sections(document.sections, max_tokens=200, overlap=40,
                                    count_tokens=counter)
            seconds = time.perf_counter() - started
            ratio = f"{seconds / previous:.2f}" if previous else "-"
            print(f"{mib:>5g} {len(chunks):>9} {seconds:>8.2f} {ratio:>11}")
            previous = seconds


if __name__ == "__main__":
    main()
