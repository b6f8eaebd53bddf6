"""The answer server's resident memory: when it accepts connections, after some questions,
and its peak, read from ``/proc/PID/status`` (VmRSS, VmHWM). Linux only.

Starts `assistant serve` (stopping any running one first), asks the questions of
``ask_time.py`` through it with `assistant ask`, prints a Markdown table, stops it. Run it
alone on the machine:

    .venv/bin/python benchmarks/serve_memory.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from ask_time import ASSISTANT, QUESTIONS

from assistant import serve
from assistant.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of process ``pid``, in GB (10^9 bytes)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024 / 1e9
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("questions", nargs="*", default=list(QUESTIONS))
    args = parser.parse_args()
    settings = Settings.load()
    subprocess.run([*ASSISTANT, "serve", "--stop"], cwd=ROOT, capture_output=True)
    server = subprocess.Popen([*ASSISTANT, "serve", "--idle-minutes", "5"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        started = time.perf_counter()
        while not serve.running(settings):
            if server.poll() is not None:
                sys.exit(f"the server stopped: {server.stderr.read()}")
            time.sleep(0.5)
        ready_s = time.perf_counter() - started
        ready = memory(server.pid)
        for question in args.questions:
            subprocess.run([*ASSISTANT, "ask", question], cwd=ROOT, capture_output=True,
                           check=True)
        after = memory(server.pid)
    finally:
        subprocess.run([*ASSISTANT, "serve", "--stop"], cwd=ROOT, capture_output=True)
        server.wait(30)
    print(f"| answer server | ready ({ready_s:.1f} s) | after {len(args.questions)} questions "
          f"| peak (VmHWM) |\n| --- | ---: | ---: | ---: |\n"
          f"| resident | {ready['VmRSS']:.2f} GB | {after['VmRSS']:.2f} GB | "
          f"{after['VmHWM']:.2f} GB |")


if __name__ == "__main__":
    main()
