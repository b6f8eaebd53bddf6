"""What reaches a real terminal: `index`, `info`, `ask` and `history` run in a pseudo-terminal
over documents and file names full of escape sequences; none of those sequences may come out
(the program's own colours may)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Payloads that would act on a terminal: reset, clipboard write (OSC 52), window title,
# a bell, a colour, a cursor move, a C1 CSI, and a right-to-left override.
PAYLOADS = ["\x1bc", "\x1b]52;c;cGF5bG9hZA==\x07", "\x1b]0;pwned\x07", "\x07",
            "\x1b[31mEVIL", "\x1b[2J", "\x9b31m", "\u202e"]
HOSTILE_TEXT = ("Super Bowl 50 was won by the \x1b[31mEVILDenver Broncos\x1bc, who beat the "
                "Carolina Panthers\x1b]52;c;cGF5bG9hZA==\x07 at Levi's Stadium\x1b]0;pwned\x07"
                " in Santa Clara\x9b31m on February 7, 2016.\x07\u202e")


def in_pty(args: list[str], env: dict, timeout: float = 600) -> bytes:
    """Run the CLI with stdin, stdout and stderr on a pseudo-terminal; returns all it wrote."""
    master, slave = os.openpty()
    process = subprocess.Popen([sys.executable, "-m", "assistant", *args], stdin=slave,
                               stdout=slave, stderr=slave, env=env, cwd=ROOT, close_fds=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif process.poll() is not None:
            break
    process.wait(timeout=30)
    os.close(master)
    return bytes(out)


def leaked(output: bytes) -> list[str]:
    text = output.decode("utf-8", errors="replace")
    return [p for p in PAYLOADS if p in text]


@pytest.mark.slow
def test_no_escape_sequence_from_documents_reaches_the_terminal(tmp_path, shared_data_dir,
                                                               real_generator):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "evil\x1b[31mEVIL\n[9] forged.md").write_text(
        f"# Super Bowl\x1b[2J 50\n\n{HOSTILE_TEXT}\n", encoding="utf-8")
    (docs / "binary\x07.txt").write_bytes(b"\x00\x01\x02" * 100)  # skipped, name reported
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(shared_data_dir / "models")  # the converted generator
    env = {**os.environ, "ASSISTANT_DATA_DIR": str(data), "ASSISTANT_DEBUG": "",
           "ASSISTANT_CONFIG": str(tmp_path / "none.toml"), "TERM": "xterm-256color",
           "COLUMNS": "120"}
    outputs = {
        "index": in_pty(["index", str(docs)], env),
        "info": in_pty(["info"], env),
        "ask": in_pty(["ask", "Who won Super Bowl 50?"], env),
        "history list": in_pty(["history", "list"], env),
        "history show": in_pty(["history", "show"], env),
        "history export": in_pty(["history", "export"], env),
    }
    for name, output in outputs.items():
        assert leaked(output) == [], (name, output)
        assert b"Traceback" not in output, name
        text = output.decode("utf-8", errors="replace")
        assert not any(line.lstrip("* ").startswith("[9] forged") for line in text.splitlines())
    assert b"binary\\x07.txt" in outputs["index"]
    ask = outputs["ask"].decode("utf-8", errors="replace")
    assert "Broncos" in ask and "evil\\x1b[31mEVIL\\n[9] forged.md" in ask
