"""Building the chat app for tests: a real index (FAISS + SQLite) over the SQuAD fixture
passages, a real history, and a scripted or real generator."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from assistant.dialogue import DialogueManager
from assistant.history import History
from assistant.tui import ChatApp
from index.ingest import Indexer
from index.retrieval import Retriever
from index.store import Store
from tests.conftest import FakeEmbedder, FakeGenerator, load_jsonl, write_corpus


def build_index(folder: Path, embedder=None, passages: list[dict] | None = None) -> Path:
    """Index the fixture passages (written as Markdown files) into ``folder/index``."""
    embedder = embedder or FakeEmbedder()
    write_corpus(folder / "docs", passages or load_jsonl("squad_passages.jsonl"))
    Indexer(folder / "index", embedder).run([folder / "docs"])
    return folder / "index"


def make_app(folder: Path, generator=None, *, embedder=None, history: History | None = None,
             conversation_id: str | None = None, keymap=None, gate: threading.Event | None = None,
             load_error: Exception | None = None, with_index: bool = True,
             top_k: int = 3) -> ChatApp:
    """A ChatApp over ``folder/index`` (built if missing) and ``folder/history.db``.

    ``gate`` holds the loader until set (to test typing while loading); ``load_error`` makes
    loading fail with that exception.
    """
    embedder = embedder or FakeEmbedder()
    if with_index and not (folder / "index").exists():
        build_index(folder, embedder)
    history = history or History(folder / "history.db")
    generator = generator or FakeGenerator(["The Denver Broncos ", "won Super Bowl 50."])

    def load(say):
        say("loading…")
        if gate is not None:
            gate.wait(10)
        if load_error is not None:
            raise load_error
        retriever = Retriever(Store.open(folder / "index"), embedder) if with_index else None
        return DialogueManager(retriever=retriever, generator=generator, history=history,
                               top_k=top_k)

    return ChatApp(history=history, load=load, model_name=generator.name, keymap=keymap,
                   conversation_id=conversation_id)


async def wait_for(pilot, condition, timeout: float = 10.0) -> None:
    """Let the app run until ``condition()`` is true.

    Raises:
        AssertionError: still false after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await pilot.pause(0.05)


async def ask(pilot, question: str) -> None:
    """Type ``question`` into the question box and press Enter."""
    await pilot.click("#prompt")
    await pilot.press(*question)
    await pilot.press("enter")
