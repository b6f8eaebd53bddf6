"""Turn-taking between answering and background embedding, across processes.

On a small machine an `index` run embedding passages and an `ask` or chat generating an answer
fight for the same cores; both slow down many times over (issue 15 measured 193 s instead of
21–35 s for one `ask`). So answering comes first: a process that is answering holds a shared
``flock`` on ``INDEX_DIR/answering.lock`` (:func:`answering`), and the indexer, before each
embedding batch, waits until it can take that lock exclusively (:func:`wait_for_answers`). It
never keeps the lock: it only checks that nobody is answering, so an answer waits for at most
the batch already running.

Where ``flock`` is missing (Windows) or the index folder is not writable, both are no-ops.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

LOCK_NAME = "answering.lock"


def _open(index_dir: Path):
    try:
        import fcntl  # noqa: F401
    except ImportError:
        return None
    try:
        Path(index_dir).mkdir(parents=True, exist_ok=True)
        return open(Path(index_dir) / LOCK_NAME, "a+")
    except OSError:
        return None


@contextlib.contextmanager
def answering(index_dir: Path) -> Iterator[None]:
    """Hold the shared "answering" lock of ``index_dir`` for the block: background embedding
    pauses meanwhile (after its current batch). Several answering processes may hold it."""
    handle = _open(index_dir)
    if handle is None:
        yield
        return
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        yield
    finally:
        handle.close()  # releases the lock


def wait_for_answers(index_dir: Path, *, poll: float = 0.2, most: float = 600.0) -> float:
    """Block while any process holds the "answering" lock of ``index_dir``.

    Args:
        poll: seconds between checks.
        most: give up waiting after this many seconds (a chat left open mid-answer must not
            stop indexing for ever).

    Returns:
        Seconds waited.
    """
    handle = _open(index_dir)
    if handle is None:
        return 0.0
    import fcntl

    started = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return time.monotonic() - started
            except OSError:
                if time.monotonic() - started >= most:
                    return time.monotonic() - started
                time.sleep(poll)
    finally:
        handle.close()


def lower_priority(increment: int = 10) -> None:
    """Make this process yield the CPU to interactive ones (``nice``); ignored where not
    allowed."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(increment)
