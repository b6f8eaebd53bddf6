"""The chat's dialogue manager when the answer server is up: the calls the chat app makes of a
:class:`~assistant.dialogue.DialogueManager` (``describe``, ``count_tokens``, ``ask`` -> a turn
to iterate and cancel, ``prepare_follow_up``), answered by ``assistant serve`` over its socket
(:mod:`assistant.serve`). The chat then loads no model of its own: it opens at once when a
server is warm, and the models are in memory once however many chats and ``ask`` commands use
them. Answers, history and errors are the server's dialogue manager's, as in-process.

This module imports no model library.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable, Iterator

from . import serve
from .history import History, SourceRecord
from .question import MAX_QUESTION_TOKENS

SHORT_BYTES = MAX_QUESTION_TOKENS - 8
"""A question of at most this many UTF-8 bytes is within the token limit whatever the
tokenizer (a token holds at least one byte; 8 left for special tokens)."""

COUNT_WAIT_S = 1.0
"""Longest wait, in seconds, for the server to count a long question's tokens."""

KEEP_ALIVE_S = 60.0
"""Longest wait between two pings that keep the server from its idle timeout while a chat is
open (a third of the server's timeout when that is shorter)."""


class ServedManager:
    """A dialogue manager whose answers come from the running answer server.

    Args:
        settings: the chat's settings (the server must have the same, see
            :func:`assistant.serve.settings_key`).
        history: the chat's conversation store: a turn the server could not finish (it
            stopped mid-answer) is marked an error there, so no question is left pending.
        restart: starts the server again and returns a connection, or None; called when the
            server is gone at a question (its idle timeout passed while the chat slept, or it
            was stopped). Without it such a question fails with :class:`~assistant.serve.
            ServerError`.

    Raises (every method):
        assistant.serve.StaleServer, SettingsMismatch, ServerError: as :func:`assistant.serve.
        ask` says; ``str()`` is one line.
    """

    def __init__(self, settings, *, history: History,
                 restart: Callable[[], socket.socket | None] | None = None) -> None:
        self.settings = settings
        self.history = history
        self.restart = restart
        self._stop = threading.Event()
        self._pinging: threading.Thread | None = None

    def _connect(self, *, restart: bool = True) -> socket.socket:
        conn = serve.connect(self.settings)
        if conn is None and restart and self.restart is not None:
            conn = self.restart()
        if conn is None:
            raise serve.ServerError("the answer server is not running (`assistant serve` "
                                    "starts it; restart the chat to load the models here)")
        return conn

    def _one(self, request: dict, *, restart: bool = True,
             timeout_s: float | None = None) -> dict:
        """The server's one-message reply to ``request`` (:func:`assistant.serve.reply`)."""
        with self._connect(restart=restart) as conn:
            return serve.reply(conn, self.settings, request, timeout_s=timeout_s)

    def describe(self) -> dict:
        """The server's ``model``, ``device``, ``documents``, ``passages`` (and its own
        ``idle_s``, ``pid``, ``resident_bytes``), with ``served`` True; starts the pings that
        keep the server up while the chat is open."""
        info = self._one({"op": "describe"})["describe"]
        idle_s = float(info.get("idle_s") or 0)
        if idle_s > 0 and self._pinging is None:
            self._pinging = threading.Thread(target=self._keep_alive,
                                             args=(min(KEEP_ALIVE_S, idle_s / 3),),
                                             name="serve-ping", daemon=True)
            self._pinging.start()
        return {**info, "served": True}

    def _keep_alive(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self._one({"op": "ping"}, restart=False)
            except (OSError, ValueError, serve.ServerError):
                pass  # the next question starts a server again when it has to

    def close(self) -> None:
        """Stop keeping the server up (it goes after its idle timeout)."""
        self._stop.set()

    def count_tokens(self, text: str) -> int:
        """``text``'s length in the server's generator's tokens, for the chat's check of a
        question as it is sent (on its UI thread, so this must not wait): a text of at most
        :data:`SHORT_BYTES` bytes is counted as its bytes, an upper bound (a token holds at
        least one byte) that is below the question limit, without asking the server; a longer
        one is counted by the server, or 0 (not known) when it is busy for
        :data:`COUNT_WAIT_S` or down: the server checks the question again when it answers
        it."""
        size = len(text.encode("utf-8"))
        if size <= SHORT_BYTES:
            return size
        try:
            return int(self._one({"op": "count", "text": text}, restart=False,
                                 timeout_s=COUNT_WAIT_S)["tokens"])
        except (OSError, ValueError, KeyError, serve.ServerError):
            return 0

    def ask(self, question: str, *, conversation_id: str | None = None,
            turn_id: int | None = None) -> "ServedTurn":
        """Start answering ``question`` on the server; returns once the passages are
        retrieved (as :meth:`DialogueManager.ask <assistant.dialogue.DialogueManager.ask>`).
        ``turn_id``: the pending turn the chat recorded for it."""
        conn = messages = None
        try:
            conn = self._connect()
            messages = serve.ask(conn, self.settings, {
                "question": question, "conversation": conversation_id, "turn_id": turn_id})
            start = next(messages)["start"]
        except (serve.ServerError, StopIteration, KeyError, OSError, ValueError) as exc:
            if messages is not None:
                messages.close()
            if conn is not None:
                conn.close()
            message = str(exc) if isinstance(exc, serve.ServerError) else \
                "the answer server stopped before it answered"
            if turn_id is not None:
                self.history.fail_pending(turn_id, answer="", error=message)
            raise serve.ServerError(message) from None
        return ServedTurn(conn, messages, start, self.history)

    def prepare_follow_up(self, turn) -> int:
        """Nothing: the server prepares a follow-up itself after each answer."""
        return 0


class ServedTurn:
    """A turn answered by the server: iterate it for answer fragments; the attributes and
    methods the chat reads of a :class:`~assistant.dialogue.Turn` (``query``, ``answer``,
    ``status``, ``error``, ``grounding``, ``abstained``, ``sources()``, ``cited()``,
    ``timings()``, ``cancel()``) come from the server's turn: as retrieved until the answer
    ends, then as recorded.

    Raises (iterating):
        assistant.serve.ServerError: the server answered with an error, or stopped mid-answer
            (then the turn, still pending in history, is marked an error with its text so far).
    """

    def __init__(self, conn: socket.socket, messages: Iterator[dict], start: dict,
                 history: History) -> None:
        self._conn = conn
        self._messages = messages
        self._state = start
        self._history = history
        self.conversation_id, self.turn_id = start["conversation_id"], start["turn_id"]
        self.query = start["query"]
        self.answer = ""
        self.status, self.error = "pending", ""

    def __iter__(self) -> Iterator[str]:
        try:
            for message in self._messages:
                if "fragment" in message:
                    self.answer += message["fragment"]
                    yield message["fragment"]
                elif "end" in message:
                    self._state = message["end"]["turn"]
                    self.answer = self._state["answer"]
                    self.status, self.error = self._state["status"], self._state["error"]
        except serve.ServerError as exc:
            self.status, self.error = "error", str(exc)
            self._history.fail_pending(self.turn_id, answer=self.answer, error=self.error)
            raise
        except GeneratorExit:  # the chat left early: closing the connection cancels it
            self.status = "cancelled"
            raise
        finally:
            self._messages.close()  # its reader first: the socket closes with the last one
            self._conn.close()

    def cancel(self) -> None:
        """Stop the answer (from any thread); it ends as cancelled, its text kept."""
        serve.cancel(self._conn)

    def cited(self) -> list[int]:
        """Source numbers the answer cites."""
        return list(self._state.get("cited", []))

    def sources(self) -> list[SourceRecord]:
        """The passages the model saw, numbered as in the answer."""
        return [SourceRecord(**source) for source in self._state["sources"]]

    def timings(self) -> dict:
        """As :meth:`assistant.dialogue.Turn.timings`."""
        return dict(self._state.get("timings") or {})

    @property
    def grounding(self) -> str:
        """How the sources were ordered and the citations found, in words."""
        return self._state.get("grounding", "")

    @property
    def abstained(self) -> bool:
        """The answer says the documents do not hold it."""
        return bool(self._state.get("abstained"))
