"""Conversations and turns in SQLite (via sqlite-utils), with numbered migrations.

A turn is written when the question is asked (status ``pending``) and completed when the answer
ends (``complete``, ``cancelled`` or ``error``), so a crash never loses a question. Migrations
are never edited once released; add ``m00N_...`` functions instead.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import sqlite_utils
from sqlite_utils import Migrations

migrations = Migrations("assistant.history")


@migrations()
def m001_conversations(db: sqlite_utils.Database) -> None:
    """Conversations, their turns, and the passages each turn was answered from."""
    db["conversations"].create(
        {"id": str, "title": str, "created_at": float, "updated_at": float}, pk="id"
    )
    db["turns"].create(
        {"id": int, "conversation_id": str, "ordinal": int, "question": str,
         "retrieval_query": str, "answer": str, "status": str, "error": str, "model": str,
         "created_at": float, "completed_at": float, "retrieval_ms": float,
         "first_token_s": float, "tokens_per_s": float, "prompt_tokens": int,
         "new_tokens": int},
        pk="id", foreign_keys=[("conversation_id", "conversations", "id")],
    )
    db["turns"].create_index(["conversation_id", "ordinal"])
    db["turn_sources"].create(
        {"turn_id": int, "number": int, "passage_id": int, "path": str, "title": str,
         "heading": str, "page": int, "line_start": int, "line_end": int, "score": float,
         "text": str, "cited": int},
        pk=("turn_id", "number"), foreign_keys=[("turn_id", "turns", "id")],
    )


@migrations()
def m002_turn_search(db: sqlite_utils.Database) -> None:
    """Full-text search over questions and answers (kept in sync by triggers)."""
    db["turns"].enable_fts(["question", "answer"], create_triggers=True, tokenize="porter")


@migrations()
def m003_support(db: sqlite_utils.Database) -> None:
    """Support weights of sources (share of the answer's attention on each passage, 0..1),
    whether a turn abstained ("not in your documents"), and the time to a complete answer."""
    db["turn_sources"].add_column("support", float)
    db["turns"].add_column("abstained", int)
    db["turns"].add_column("answer_s", float)


@dataclass(frozen=True)
class SourceRecord:
    """A passage as stored with a turn (a copy, so history survives re-indexing)."""

    number: int
    passage_id: int
    path: str
    title: str
    heading: str
    page: int | None
    line_start: int | None
    line_end: int | None
    score: float | None
    """The retrieval (or reranked) score; None for a passage the answer added from a retrieved
    passage's document (its opening, the sections of a heading), which was not retrieved."""
    text: str
    cited: bool = False
    support: float | None = None
    """Share of the answer's attention on this passage (0..1), None when not measured."""


class History:
    """The conversation store.

    Args:
        path: the SQLite file (created, with its folder, if missing).

    Attributes:
        read_only: True when the file could only be opened for reading (a read-only disk or
            file); writes then raise ``sqlite3.OperationalError``.

    Raises:
        sqlite3.DatabaseError: the file is not a SQLite database.
        OSError: its folder cannot be created.
    """

    def __init__(self, path: Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.read_only = False
        self._lock = threading.RLock()
        try:
            conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            migrations.apply(self.db)
        except sqlite3.OperationalError:
            if not path.is_file():
                raise
            # A read-only disk or file: conversations can still be listed, shown and
            # exported; any write raises sqlite3.OperationalError ("readonly database").
            conn = sqlite3.connect(f"{path.absolute().as_uri()}?immutable=1", uri=True,
                                   check_same_thread=False, isolation_level=None)
            self.db = sqlite_utils.Database(conn)
            self.read_only = True

    def close(self) -> None:
        """Close the connection."""
        self.db.conn.close()

    # ---- writing -----------------------------------------------------------------------
    def new_conversation(self, title: str = "") -> str:
        """Create a conversation; returns its id (12 hex characters)."""
        cid = uuid.uuid4().hex[:12]
        now = time.time()
        with self._lock:
            self.db["conversations"].insert(
                {"id": cid, "title": title, "created_at": now, "updated_at": now})
        return cid

    def start_turn(self, conversation_id: str, question: str, *, model: str = "") -> int:
        """Record a question before it is answered; returns the turn id."""
        now = time.time()
        with self._lock, self.db.atomic():
            ordinal = self.db.execute(
                "SELECT coalesce(max(ordinal), 0) + 1 FROM turns WHERE conversation_id = ?",
                [conversation_id]).fetchone()[0]
            turn_id = self.db["turns"].insert({
                "conversation_id": conversation_id, "ordinal": ordinal, "question": question,
                "answer": "", "status": "pending", "model": model, "created_at": now,
            }).last_pk
            row = self.db["conversations"].get(conversation_id)
            changes: dict[str, Any] = {"updated_at": now}
            if not row["title"]:
                changes["title"] = _title_from(question)
            self.db["conversations"].update(conversation_id, changes)
        return int(turn_id)

    def finish_turn(
        self, turn_id: int, *, answer: str, status: str = "complete",
        sources: Iterable[SourceRecord] = (), retrieval_query: str = "",
        timings: dict[str, float | int | None] | None = None, error: str = "",
        abstained: bool = False,
    ) -> None:
        """Complete a turn with its answer, status, sources and timings.

        Args:
            status: ``complete``, ``cancelled`` or ``error``.
            timings: any of retrieval_ms, first_token_s, tokens_per_s, prompt_tokens,
                new_tokens, answer_s.
            abstained: the answer says the documents do not hold it.
        """
        timings = {k: v for k, v in (timings or {}).items() if k in {
            "retrieval_ms", "first_token_s", "tokens_per_s", "prompt_tokens", "new_tokens",
            "answer_s"}}
        with self._lock:
            with self.db.atomic():
                self.db["turns"].update(turn_id, {
                    "answer": answer, "status": status, "error": error,
                    "retrieval_query": retrieval_query, "completed_at": time.time(),
                    "abstained": int(abstained), **timings,
                })
                self.db["turn_sources"].insert_all(
                    [{"turn_id": turn_id, **s.__dict__, "cited": int(s.cited)} for s in sources],
                    replace=True,
                )

    def fail_pending(self, turn_id: int, *, answer: str, error: str) -> bool:
        """Mark a turn that is still pending as an error, keeping ``answer`` (its text so far):
        for a turn whose answerer went away (the answer server stopped mid-answer). A turn
        its answerer finished is left as it is. True when the turn was pending."""
        with self._lock, self.db.atomic():
            cursor = self.db.execute(
                "UPDATE turns SET answer = ?, status = 'error', error = ?, completed_at = ? "
                "WHERE id = ? AND status = 'pending'", [answer, error, time.time(), turn_id])
            return cursor.rowcount > 0

    def save_partial(self, turn_id: int, answer: str) -> None:
        """Store the answer so far of a turn still being generated."""
        with self._lock:
            self.db["turns"].update(turn_id, {"answer": answer})

    def rename(self, conversation_id: str, title: str) -> None:
        """Set a conversation's title.

        Raises:
            KeyError: no such conversation.
        """
        with self._lock:
            self._require(conversation_id)
            self.db["conversations"].update(conversation_id, {"title": title.strip()})

    def delete(self, conversation_id: str) -> None:
        """Delete a conversation with its turns and sources.

        Raises:
            KeyError: no such conversation.
        """
        with self._lock:
            self._require(conversation_id)
            with self.db.atomic():
                self.db.execute(
                    "DELETE FROM turn_sources WHERE turn_id IN "
                    "(SELECT id FROM turns WHERE conversation_id = ?)", [conversation_id])
                self.db.execute("DELETE FROM turns WHERE conversation_id = ?", [conversation_id])
                self.db.execute("DELETE FROM conversations WHERE id = ?", [conversation_id])

    # ---- reading -----------------------------------------------------------------------
    def _require(self, conversation_id: str) -> dict:
        try:
            return self.db["conversations"].get(conversation_id)
        except sqlite_utils.db.NotFoundError:
            raise KeyError(f"no conversation with id {conversation_id!r}") from None

    def resolve(self, prefix: str) -> str:
        """The full id of the conversation whose id starts with ``prefix``.

        Raises:
            KeyError: empty, none or several match (the prefix is compared literally: ``%``
                and ``_`` are not wildcards).
        """
        prefix = prefix.strip()
        if not prefix:
            raise KeyError("give a conversation id (or its first characters)")
        rows = [r[0] for r in self.db.execute(
            "SELECT id FROM conversations WHERE substr(id, 1, ?) = ?", [len(prefix), prefix])]
        if len(rows) != 1:
            raise KeyError(f"no conversation with id {prefix!r}" if not rows
                           else f"id prefix {prefix!r} matches {len(rows)} conversations")
        return rows[0]

    def conversation(self, conversation_id: str) -> dict:
        """One conversation row (id, title, created_at, updated_at).

        Raises:
            KeyError: no such conversation.
        """
        return self._require(conversation_id)

    def conversations(self, *, search: str = "", limit: int = 100) -> list[dict]:
        """Conversations, most recently updated first, each with ``turns`` (count); ``search``
        keeps those whose title, questions or answers match (full-text)."""
        sql = """SELECT c.*, (SELECT count(*) FROM turns t WHERE t.conversation_id = c.id) AS turns
                 FROM conversations c"""
        params: list[Any] = []
        if search.strip():
            words = " ".join(f'"{w}"' for w in search.replace('"', " ").split())
            sql += """ WHERE c.title LIKE ? OR c.id IN (SELECT t.conversation_id FROM turns t
                       JOIN turns_fts f ON f.rowid = t.id WHERE turns_fts MATCH ?)"""
            params += [f"%{search.strip()}%", words]
        sql += " ORDER BY c.updated_at DESC LIMIT ?"
        params.append(limit)
        cursor = self.db.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def last_conversation(self) -> str | None:
        """Id of the most recently updated conversation, or None."""
        row = self.db.execute(
            "SELECT id FROM conversations ORDER BY updated_at DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def turns(self, conversation_id: str) -> list[dict]:
        """The turns of a conversation in order, each with ``sources`` (list of dicts)."""
        turns = list(self.db["turns"].rows_where(
            "conversation_id = ?", [conversation_id], order_by="ordinal"))
        for turn in turns:
            turn["sources"] = list(self.db["turn_sources"].rows_where(
                "turn_id = ?", [turn["id"]], order_by="number"))
        return turns

    def exchanges(self, conversation_id: str) -> list[tuple[str, str]]:
        """``(question, answer)`` of the answered turns, oldest first (for follow-ups)."""
        return [(t["question"], t["answer"]) for t in self.turns(conversation_id)
                if t["answer"] and t["status"] in ("complete", "cancelled")]


def _title_from(question: str, limit: int = 60) -> str:
    text = " ".join(question.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"

