"""Turn-taking between answering and background embedding, across processes.

On a small machine an `index` run embedding passages and an `ask` or chat generating an answer
fight for the same cores; both slow down many times over (issue 15 measured 193 s instead of
21–35 s for one `ask`). So answering comes first: a process that is answering holds a shared
``flock`` on ``answering.lock`` in a per-user runtime folder (:func:`answering`), and the
indexer, before each embedding batch, waits until it can take that lock exclusively
(:func:`wait_for_answers`). It never keeps the lock: it only checks that nobody is answering,
so an answer waits for at most the batch already running. The lock is per user, not per
index: an `index` run of one data dir yields to answers from another, as the cores are shared.

Where ``flock`` is missing (Windows) or the folder is not writable, both are no-ops.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

LOCK_NAME = "answering.lock"
_held_here = 0  # answering blocks open in this process (it never waits for itself)


def lock_folder() -> Path:
    """``$XDG_RUNTIME_DIR/assistant`` or ``<temp dir>/assistant-<uid>``: where the lock lives."""
    import tempfile

    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "assistant"
    return Path(tempfile.gettempdir()) / f"assistant-{getattr(os, 'getuid', lambda: 0)()}"


def _open(folder: Path | None):
    try:
        import fcntl  # noqa: F401
    except ImportError:
        return None
    folder = Path(folder) if folder is not None else lock_folder()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return open(folder / LOCK_NAME, "a+")
    except OSError:
        return None


@contextlib.contextmanager
def answering(folder: Path | None = None) -> Iterator[None]:
    """Hold the shared "answering" lock for the block (``folder``: where the lock lives,
    default :func:`lock_folder`): background embedding pauses meanwhile, after its current
    batch. Several answering processes may hold it at once."""
    global _held_here
    handle = _open(folder)
    _held_here += 1
    try:
        if handle is not None:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        yield
    finally:
        _held_here -= 1
        if handle is not None:
            handle.close()  # releases the lock


def wait_for_answers(folder: Path | None = None, *, poll: float = 0.2,
                     most: float = 600.0) -> float:
    """Block while any process holds the "answering" lock (``folder`` as in :func:`answering`).

    Args:
        poll: seconds between checks.
        most: give up waiting after this many seconds (a chat left open mid-answer must not
            stop indexing for ever).

    Returns:
        Seconds waited (0 at once when this process is itself answering: an `ask` that first
        has to index the bundled corpus must not wait for its own answer).
    """
    if _held_here:
        return 0.0
    handle = _open(folder)
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
