"""A warm answer server: the models stay loaded between ``assistant ask`` commands.

Loading the embedder and the generator takes most of a one-shot ``ask`` on a CPU (imports,
weights, first-call kernel warm-up). ``assistant serve`` loads them once and answers over a
Unix socket in the data directory (``serve.sock``, mode 0600: only its owner can connect) until
it has been idle for its timeout; ``ask`` and the chat (:mod:`assistant.served`) use it when
it is up and has the same settings, and load the models in their own process otherwise, so
the answers, history and errors are the same.

Protocol: one JSON object per line. The client sends ``{"key", "code", "question", ...}`` (or
``{"op": "describe" | "count" | "ping" | "stop", ...}``); the server answers an answer request
with one ``{"start": {...}}`` line (the sources retrieved), ``{"fragment": str}`` lines as the
answer streams, then one ``{"end": {...}}`` line, or one ``{"error": str}`` line at any point.
While it answers, the client may send ``{"op": "cancel"}``: the answer stops, is kept marked
cancelled and still ends with its ``end`` line. A client that disconnects cancels it the same
way, at once, even mid-reading. Ollama keeps models warm the same way.

This module imports no model library: the server's handler comes from the CLI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator

SOCKET_NAME = "serve.sock"
UNSHARED = ("serve_idle_minutes", "top_k", "retrieval_mode", "max_new_tokens")
"""Settings a client may differ in from the server: per-request ones travel with the request."""


class ServerError(Exception):
    """The server answered with an error, or went away mid-answer; ``str()`` is one line."""


class SettingsMismatch(ServerError):
    """The running server was started with other settings than the client's."""


class StaleServer(SettingsMismatch):
    """The running server was started by another version of the program; it has stopped."""


def socket_path(settings) -> Path:
    """Where the server of ``settings``' data directory listens."""
    return Path(settings.data_dir) / SOCKET_NAME


def settings_key(settings) -> str:
    """A digest of every setting that changes answers (all but :data:`UNSHARED`): a client is
    served only by a server started with the same ones."""
    values = {f.name: str(getattr(settings, f.name)) for f in dataclasses.fields(settings)
              if f.name not in UNSHARED}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def code_version() -> str:
    """A digest of the program's own files (path, size and modification time of every ``.py``
    and prompt template under ``assistant/``, ``index/`` and ``prompts/``): it changes when the
    program is upgraded or edited: a server that was started before answers no client of the
    new code, and stops. About 100 ``stat`` calls."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for folder in ("assistant", "index", "prompts"):
        for path in sorted((root / folder).rglob("*")):
            if path.suffix in (".py", ".txt") and path.is_file():
                info = path.stat()
                digest.update(f"{path.relative_to(root)}:{info.st_size}:{info.st_mtime_ns}\n"
                              .encode())
    return digest.hexdigest()[:16]


def _lines(conn: socket.socket) -> Iterator[dict]:
    """JSON objects read one per line from ``conn`` until it closes."""
    with conn.makefile("r", encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                yield json.loads(line)


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall((json.dumps(message, ensure_ascii=False) + "\n").encode("utf-8"))


# --- client ------------------------------------------------------------------------------
def connect(settings) -> socket.socket | None:
    """A connection to the running server of these settings' data directory, or None when
    none is listening (no socket file, or a stale one). A blocking connect: on a Unix socket
    it returns at once, refused when nothing listens (a timeout would make it non-blocking,
    and a busy server's queue could then refuse it with EAGAIN)."""
    path = socket_path(settings)
    if not path.exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    return conn


def running(settings) -> bool:
    """True when a server listens on these settings' data directory."""
    conn = connect(settings)
    if conn is None:
        return False
    conn.close()
    return True


def ask(conn: socket.socket, settings, request: dict) -> Iterator[dict]:
    """Send ``request`` (with the settings key) and yield the server's messages: fragments,
    then the end message.

    Raises:
        StaleServer: the server runs another version of the program (it answered nothing and
            stopped).
        SettingsMismatch: the server has other settings (it answered nothing).
        ServerError: the server answered with an error or closed the connection before the end.
    """
    _send(conn, {**request, "key": settings_key(settings), "code": code_version()})
    for message in _lines(conn):
        if "error" in message:
            kind = (StaleServer if message.get("stale") else
                    SettingsMismatch if message.get("mismatch") else ServerError)
            raise kind(message["error"])
        yield message
        if "end" in message:
            return
    raise ServerError("the answer server stopped before the answer ended (see serve.log in "
                      "the data directory)")


def reply(conn: socket.socket, settings, request: dict, *,
          timeout_s: float | None = None) -> dict:
    """The server's one-message reply to ``request`` (an ``op`` such as ``describe``) on
    ``conn``.

    Raises:
        TimeoutError: no reply within ``timeout_s`` seconds (the server is busy).
        StaleServer, SettingsMismatch, ServerError: as :func:`ask`, or no reply at all.
    """
    conn.settimeout(timeout_s)  # after connecting: see connect
    for message in ask(conn, settings, request):
        return message
    raise ServerError("the answer server stopped before it replied")


def cancel(conn: socket.socket) -> None:
    """Ask the server to stop the answer it is writing on ``conn`` (see :func:`ask`): it ends
    with its ``end`` message, status cancelled. Safe from another thread than the reader's."""
    with contextlib.suppress(OSError):
        _send(conn, {"op": "cancel"})


def stop(settings) -> bool:
    """Ask the running server to exit; True when one was running."""
    conn = connect(settings)
    if conn is None:
        return False
    with conn:
        _send(conn, {"op": "stop", "key": settings_key(settings)})
        for _ in _lines(conn):
            pass
    return True


def wait_stopped(settings, *, wait_s: float = 10.0) -> bool:
    """Wait until no server listens on these settings' data directory (one that was asked to
    stop, or found itself stale, closes its socket within moments); True when none does."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        conn = connect(settings)
        if conn is None:
            return True
        conn.close()
        time.sleep(0.05)
    return False


def start(settings, argv: list[str], *, wait_s: float = 300.0,
          starting: Callable[[], None] | None = None) -> socket.socket | None:
    """Start ``argv`` (an ``assistant serve`` command) detached, its output in
    ``serve.log`` in the data directory, and wait until it accepts connections; None when it
    exits or does not come up within ``wait_s`` seconds. While one is starting, an exclusive
    lock on ``serve.lock`` there is held, so that two ``ask``s typed at once start one server
    (the second waits for the first's) instead of loading the models twice. ``starting`` is
    called right before this call starts the process (not when another's came up)."""
    import fcntl
    import subprocess

    folder = Path(settings.data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    with open(folder / "serve.lock", "ab") as lock:  # released when closed
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.1)
        conn = connect(settings)  # started by the ask that held the lock before us
        if conn is not None:
            return conn
        if starting:
            starting()
        with open(folder / "serve.log", "ab") as out:
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     start_new_session=True)
        while time.monotonic() < deadline:
            conn = connect(settings)
            if conn is not None:
                return conn
            if child.poll() is not None:
                return None
            time.sleep(0.1)
    return None


# --- server ------------------------------------------------------------------------------
class Cancellation:
    """Whether the client of the request being answered asked to cancel it or went away; a
    handler registers what stops its answer with :meth:`watch`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        """Cancel: run the registered callbacks (once)."""
        with self._lock:
            self._set, callbacks, self._callbacks = True, self._callbacks, []
        for callback in callbacks:
            callback()

    @contextlib.contextmanager
    def watch(self, callback: Callable[[], None]) -> Iterator[None]:
        """While inside, a cancel calls ``callback`` (at once when it came already)."""
        with self._lock:
            fired = self._set
            if not fired:
                self._callbacks.append(callback)
        if fired:
            callback()
        try:
            yield
        finally:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)


Handler = Callable[[dict, Callable[[dict], None], Cancellation], None]
"""Answers one request: called with the request, a ``send(message)`` that raises ``OSError``
once the client is gone, and the request's :class:`Cancellation`."""


def serve(settings, handle: Handler, *, idle_s: float,
          on_ready: Callable[[Path], None] | None = None) -> None:
    """Listen on :func:`socket_path` and answer requests one at a time with ``handle``, until
    no request came for ``idle_s`` seconds (0: never) or a client asks to stop. The socket is
    created owner-only (0600) and removed on exit.

    Raises:
        ServerError: another server is already listening there.
    """
    path = socket_path(settings)
    if running(settings):
        raise ServerError(f"an answer server is already running ({path})")
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    listener.listen(8)
    key, code = settings_key(settings), code_version()  # the code as it was when started
    if on_ready:
        on_ready(path)
    try:
        with listener:
            while True:
                listener.settimeout(idle_s or None)
                try:
                    conn, _ = listener.accept()
                except socket.timeout:
                    return
                with conn:
                    if not _serve_one(conn, key, code, handle):
                        return
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _serve_one(conn: socket.socket, key: str, code: str, handle: Handler) -> bool:
    """Read one request from ``conn`` and answer it; False when the server should stop: the
    client asked it to, or runs another version of the program (``code``)."""
    lines = _lines(conn)
    try:
        request = next(lines, None)
    except (OSError, ValueError):
        return True
    if request is None:
        return True
    if not isinstance(request, dict):
        with contextlib.suppress(OSError):
            _send(conn, {"error": "a request is one JSON object per line"})
        return True
    if request.get("op") == "stop":  # from its owner (the socket is 0600), whatever settings
        return False
    if request.get("code") != code:
        with contextlib.suppress(OSError):
            _send(conn, {"error": "the running answer server was started by another version of "
                                  "the program; it has stopped", "mismatch": True, "stale": True})
        return False
    if request.get("key") != key:
        with contextlib.suppress(OSError):
            _send(conn, {"error": "the running answer server has other settings (stop it with "
                                  "`assistant serve --stop`)", "mismatch": True})
        return True

    def send(message: dict) -> None:
        _send(conn, message)

    cancellation = Cancellation()

    def watch() -> None:  # a cancel message, or the client gone (end of input), cancels
        with contextlib.suppress(OSError, ValueError):
            for message in lines:
                if isinstance(message, dict) and message.get("op") == "cancel":
                    break
        cancellation.set()

    watcher = threading.Thread(target=watch, name="serve-cancel", daemon=True)
    watcher.start()
    try:
        handle(request, send, cancellation)
    except OSError:
        pass  # the client left; the handler has cancelled its turn
    except Exception as exc:  # noqa: BLE001 - a malformed request or a bug fails one answer,
        traceback.print_exc()  # not the server (the traceback goes to serve.log)
        with contextlib.suppress(OSError):
            _send(conn, {"error": "the answer server could not answer: "
                                  + " ".join(f"{type(exc).__name__}: {exc}".split())})
    finally:
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)  # wakes the watcher
        watcher.join(5)
    return True
