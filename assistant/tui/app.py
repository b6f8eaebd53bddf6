"""The chat app: conversation, sources pane, past conversations, status line.

The app draws its first frame at once; models and the index load in a thread worker (the
``load`` callable the CLI passes in) while the user can already type. Each answer is generated
in a thread worker that streams fragments into the screen with ``call_from_thread``. Questions
are written to the history the moment they are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shlex
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SuspendNotSupported
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Header, Static

from ..output import visible
from ..question import check_question
from .keys import binding
from .screens import ConfirmScreen, HelpScreen, TextPrompt
from .widgets import (AnswerView, PromptArea, SessionList, SessionsPanel, SourceList,
                      SourcesPane, StatusLine, UserMessage, turn_figures)

WELCOME = ("Ask a question about your documents. **Enter** sends, **Ctrl+J** starts a new line, "
           "**F1** lists the keys.")


def one_line(exc: BaseException) -> str:
    """An exception as one line for the user (out-of-memory errors get a hint)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "out of memory" in text.lower():
        return f"out of memory: {text} (try a smaller model, --device cpu, or fewer passages)"
    return text


def source_command(path: Path, line: int | None, env: Mapping[str, str]) -> list[str]:
    """The command that opens ``path`` at ``line``: ``$EDITOR +LINE PATH`` (vi, nano, emacs
    and less all take ``+LINE``), else ``$PAGER``, else ``less``; a PDF goes to the system
    viewer (``xdg-open`` or ``open``).

    Raises:
        FileNotFoundError: no program to open it with.
    """
    if path.suffix.lower() == ".pdf":
        for opener in ("xdg-open", "open"):
            if shutil.which(opener):
                return [opener, str(path)]
        raise FileNotFoundError("no PDF viewer found (xdg-open or open)")
    program = env.get("EDITOR") or env.get("PAGER") or "less"
    return shlex.split(program) + ([f"+{line}"] if line else []) + [str(path)]


class ChatApp(App[None]):
    """The terminal chat.

    Args:
        history: the conversation store (``assistant.history.History``); used at once, before
            the models load, for the conversation list and for recording questions.
        load: called in a worker thread with a ``say(text)`` callback for progress; returns the
            dialogue manager (``assistant.dialogue.DialogueManager``, or
            ``assistant.served.ServedManager`` when the answer server answers). Its exceptions
            are shown as one-line errors.
        model_name: the generator's name, shown while it loads.
        keymap: binding id -> key(s), from the config's ``[keys]`` table (already checked).
        conversation_id: open this conversation at start (``--continue`` / ``--session``).
    """

    CSS_PATH = "chat.tcss"
    TITLE = "assistant"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    BINDINGS = [
        binding("cancel", "cancel", "Cancel"),
        binding("new_chat", "new_chat", "New"),
        binding("sessions", "toggle_sessions", "Chats"),
        binding("sources", "focus_sources", "Sources"),
        binding("question", "focus_question", "Question", show=False),
        binding("copy", "copy_answer", "Copy"),
        binding("help", "help", "Help"),
        binding("quit", "quit", "Quit", priority=True),
    ]

    def __init__(self, *, history: Any, load: Callable[[Callable[[str], None]], Any],
                 model_name: str, keymap: Mapping[str, str] | None = None,
                 conversation_id: str | None = None,
                 index_progress: Callable[[], str] | None = None) -> None:
        super().__init__()
        self.index_progress = index_progress  # polled: "" or "indexing · 1,200 of …"
        self.history = history
        self.loader = load
        self.model_name = model_name
        self.keymap = dict(keymap or {})
        self.conversation_id = conversation_id
        self.manager: Any = None
        self.load_error = ""
        self.turn: Any = None  # the turn being answered
        self._turn_done = threading.Event()
        self._turn_done.set()
        self._waiting: list[tuple[str, int, AnswerView]] = []  # sent while loading
        # Loading and answering run on this one thread (the workers wait on it): torch's
        # kernels ran 1.3-2.5x slower on a thread beside another live one that had run any
        # (an OpenMP pool each, more pool threads than cores), and Textual's thread workers
        # come from a pool whose threads stay alive (BENCHMARKS.md, "Round 5").
        self._models = ThreadPoolExecutor(1, thread_name_prefix="models")

    # ---- layout ------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(icon="")
        with Horizontal(id="body"):
            yield SessionsPanel()
            with Vertical(id="main"):
                yield VerticalScroll(id="conversation")
                yield PromptArea(id="prompt", placeholder="Ask about your documents…")
            yield SourcesPane()
        yield StatusLine()
        yield Footer()

    async def on_mount(self) -> None:
        self.set_keymap(self.keymap)
        self.query_one("#sessions").display = False
        self.query_one("#conversation", VerticalScroll).anchor()
        self.status.set_model(f"{self.model_name} · loading models and index…")
        if self.conversation_id:
            await self.open_conversation(self.conversation_id)
        else:
            await self._welcome()
        self.query_one(PromptArea).focus()
        self._load()
        if self.index_progress is not None:
            self.set_interval(2.0, self._poll_index)
            self._poll_index()

    @work(thread=True, exit_on_error=False, group="index", exclusive=True)
    def _poll_index(self) -> None:
        """Show the background index run's progress (read from the live index, off the UI
        thread)."""
        try:
            text = self.index_progress()
        except Exception:  # a status line must never stop the chat
            return
        self.call_from_thread(self.status.set_index, text)

    def notify(self, message: str, *, title: str = "", severity="information",
               timeout: float | None = None, markup: bool = False) -> None:
        """A toast; its text (which may hold file names and document text) is shown as it is:
        never as markup, with control characters made visible."""
        super().notify(visible(message), title=visible(title, one_line=True),
                       severity=severity, timeout=timeout, markup=markup)

    @property
    def status(self) -> StatusLine:
        return self.query_one(StatusLine)

    @property
    def conversation(self) -> VerticalScroll:
        return self.query_one("#conversation", VerticalScroll)

    async def _welcome(self) -> None:
        from textual.widgets import Markdown

        await self.conversation.mount(Markdown(WELCOME, classes="notice"))

    # ---- loading -------------------------------------------------------------------------
    @work(thread=True, exit_on_error=False, group="load")
    def _load(self) -> None:
        self._models.submit(self._load_models).result()

    def _load_models(self) -> None:
        def say(text: str) -> None:
            self.call_from_thread(self.status.set_model, f"{self.model_name} · {text}")

        try:
            manager = self.loader(say)
            info = manager.describe()
        except Exception as exc:  # shown in the app; the user can still browse history
            self.call_from_thread(self._load_failed, one_line(exc))
            return
        self.call_from_thread(self._loaded, manager, info)

    async def _loaded(self, manager: Any, info: dict) -> None:
        self.manager = manager
        served = " · answer server" if info.get("served") else ""
        self.status.set_model(f"{info['model']} · {info['device']}{served} · "
                              f"{info['passages']} passages in {info['documents']} documents")
        if not info["passages"]:
            await self.show_error("No index yet: run `assistant index PATH` in a shell to "
                                  "index your documents, then restart the chat.")
        waiting, self._waiting = self._waiting, []
        for question, turn_id, view in waiting:
            await self._start_answer(question, turn_id, view)

    async def _load_failed(self, message: str) -> None:
        self.load_error = message
        self.status.set_model(f"{self.model_name} · not loaded")
        await self.show_error(f"Cannot start the assistant: {message}")
        for _, turn_id, view in self._waiting:
            self.history.finish_turn(turn_id, answer="", status="error", error=message)
            await view.finish("error", note=message)
        self._waiting = []

    async def show_error(self, message: str) -> None:
        """Show ``message`` in the conversation and as a notification."""
        message = visible(message)
        await self.conversation.mount(Static(Text(message), classes="error"))
        self.notify(message, severity="error", timeout=8)

    # ---- asking ------------------------------------------------------------------------
    @on(PromptArea.Submitted)
    async def _submitted(self, event: PromptArea.Submitted) -> None:
        if self._waiting:
            self.notify("Your question is waiting for the model to load: wait, or press Esc "
                        "to cancel it.", severity="warning")
            return
        if self.busy:
            self.notify("An answer is still being written: wait, or press Esc to cancel it.",
                        severity="warning")
            return
        if self.load_error:
            self.notify(f"Cannot answer: {self.load_error}", severity="error")
            return
        counter = self.manager.count_tokens if self.manager is not None else None
        try:
            question = check_question(event.text, counter)
        except ValueError as exc:
            self.notify(f"Cannot ask this: {exc}", severity="warning")
            return
        prompt = self.query_one(PromptArea)
        prompt.clear()
        if self.conversation_id is None:
            self.conversation_id = self.history.new_conversation()
        turn_id = self.history.start_turn(self.conversation_id, question, model=self.model_name)
        for notice in self.conversation.query(".notice"):
            await notice.remove()
        view = AnswerView()
        await self.conversation.mount_all([UserMessage(question), view])
        self._refresh_sessions()
        if self.manager is None:
            self._waiting.append((question, turn_id, view))
            await view.finish("waiting", note="waiting for the model to load…")
            return
        await self._start_answer(question, turn_id, view)

    async def _start_answer(self, question: str, turn_id: int, view: AnswerView) -> None:
        self._turn_done.clear()
        await view.finish("pending", note="retrieving…")
        self._answer(question, turn_id, view)

    @work(thread=True, exit_on_error=False, group="answer")
    def _answer(self, question: str, turn_id: int, view: AnswerView) -> None:
        turn = self._models.submit(self._write_answer, question, turn_id, view).result()
        if turn is not None:  # while the answer is read: the next question waits behind it
            self._models.submit(self._prepare, turn)

    def _prepare(self, turn: Any) -> None:
        """Compute ahead of time what a follow-up over the same passages starts with
        (:meth:`~assistant.dialogue.DialogueManager.prepare_follow_up`); a failure only
        loses the head start."""
        with contextlib.suppress(Exception):
            self.manager.prepare_follow_up(turn)

    def _write_answer(self, question: str, turn_id: int, view: AnswerView) -> Any:
        """Answer ``question`` into ``view`` on the models' thread; the turn, or None when
        it could not start."""
        try:
            try:
                turn = self.manager.ask(question, conversation_id=self.conversation_id,
                                        turn_id=turn_id)
            except Exception as exc:  # recorded as an error turn by the manager
                self.call_from_thread(self._failed, view, one_line(exc))
                return None
            self.turn = turn
            self.call_from_thread(self._started, turn, view)
            fragments = iter(turn)
            error = ""
            try:
                for fragment in fragments:
                    self.call_from_thread(view.write, fragment)
            except Exception as exc:
                error = one_line(exc)
            finally:
                fragments.close()  # records the turn, as cancelled if we left early
            self.call_from_thread(self._finished, turn, view, error)
            return turn
        finally:
            self.turn = None
            self._turn_done.set()

    def _started(self, turn: Any, view: AnswerView) -> None:
        view.sources = [dataclasses.asdict(s) for s in turn.sources()]
        view.query = turn.query
        view.query_one(".answer-notes", Static).update("")
        self.query_one(SourcesPane).show(view.sources, view.query)
        self.status.set_last(f"{len(view.sources)} passages · writing…")

    async def _finished(self, turn: Any, view: AnswerView, error: str) -> None:
        status = "error" if error else turn.status
        await view.finish(status, note=error, cited=turn.cited())
        view.sources = [dataclasses.asdict(s) for s in turn.sources()]
        self.query_one(SourcesPane).show(view.sources, view.query, view.text)
        self.status.set_last(turn_figures(len(view.sources), turn.timings(),
                                          getattr(turn, "grounding", "")))
        self._refresh_sessions()
        if error:
            self.notify(error, severity="error")

    async def _failed(self, view: AnswerView, message: str) -> None:
        await view.finish("error", note=message)
        self.notify(message, severity="error", timeout=8)
        self._refresh_sessions()

    # ---- actions -----------------------------------------------------------------------
    async def action_cancel(self) -> None:
        """Cancel the answer being written (or the question waiting for the models);
        otherwise close the sessions panel / refocus."""
        if self.turn is not None:
            self.turn.cancel()
            return
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            for _, turn_id, view in waiting:
                self.history.finish_turn(turn_id, answer="", status="cancelled")
                await view.finish("cancelled")
            self._refresh_sessions()
            return
        if self.query_one(SessionsPanel).display:
            self.action_toggle_sessions()
        self.query_one(PromptArea).focus()

    def action_focus_question(self) -> None:
        self.query_one(PromptArea).focus()

    def action_focus_sources(self) -> None:
        self.query_one(SourceList).focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.keymap))

    def action_copy_answer(self) -> None:
        answers = [a for a in self.query(AnswerView) if a.text.strip()]
        if not answers:
            self.notify("No answer to copy yet.", severity="warning")
            return
        self.copy_to_clipboard(answers[-1].text)
        self.notify(f"Copied the last answer ({len(answers[-1].text)} characters).")

    async def action_new_chat(self) -> None:
        if not self._idle():
            return
        self.conversation_id = None
        await self.conversation.remove_children()
        self.query_one(SourcesPane).show([], "")
        self.sub_title = ""
        self.status.set_last("")
        await self._welcome()
        self._refresh_sessions()
        self.query_one(PromptArea).focus()

    def action_toggle_sessions(self) -> None:
        panel = self.query_one(SessionsPanel)
        panel.display = not panel.display
        self.query_one("#body").set_class(panel.display, "-sessions")
        if panel.display:
            self._refresh_sessions()
            panel.query_one("#session-search").focus()
        else:
            self.query_one(PromptArea).focus()

    async def action_quit(self) -> None:
        """Quit; an answer being written is cancelled and recorded first."""
        if self.turn is not None:
            self.turn.cancel()
        await asyncio.to_thread(self._turn_done.wait, 5)
        self.exit()

    @property
    def busy(self) -> bool:
        """True while a question waits for the models, or an answer is being retrieved,
        generated or recorded: one question at a time."""
        return bool(self._waiting) or self.turn is not None or not self._turn_done.is_set()

    def _idle(self) -> bool:
        if self.busy:
            self.notify("An answer is being written: press Esc to cancel it first.",
                        severity="warning")
            return False
        return True

    # ---- conversations -----------------------------------------------------------------
    async def open_conversation(self, conversation_id: str) -> None:
        """Show a stored conversation; new questions continue it."""
        conversation = self.history.conversation(conversation_id)
        turns = self.history.turns(conversation_id)
        self.conversation_id = conversation_id
        self.sub_title = visible(conversation["title"], one_line=True)
        await self.conversation.remove_children()
        last: AnswerView | None = None
        for turn in turns:
            sources = [{k: v for k, v in s.items() if k != "turn_id"} for s in turn["sources"]]
            view = AnswerView(sources=sources, query=turn["retrieval_query"] or turn["question"])
            await self.conversation.mount_all([UserMessage(turn["question"]), view])
            cited = [s["number"] for s in sources if s["cited"]]
            await view.show(turn["answer"] or "", turn["status"], note=turn["error"] or "",
                            cited=cited)
            last = view
        if last is not None:
            self.query_one(SourcesPane).show(last.sources, last.query, last.text)
            final = turns[-1]
            self.status.set_last(turn_figures(len(last.sources), final))
        else:
            self.query_one(SourcesPane).show([], "")
            await self._welcome()
        self.conversation.scroll_end(animate=False)

    def _refresh_sessions(self, search: str | None = None) -> None:
        panel = self.query_one(SessionsPanel)
        if not panel.display:
            return
        if search is None:
            search = panel.query_one("#session-search").value
        panel.show(self.history.conversations(search=search), self.conversation_id)

    @on(SessionsPanel.Search)
    def _search(self, event: SessionsPanel.Search) -> None:
        self._refresh_sessions(event.text)

    @on(SessionList.OptionSelected)
    async def _selected(self, event: SessionList.OptionSelected) -> None:
        if event.option.id:
            await self._session_action("resume", event.option.id)

    @on(SessionList.Action)
    async def _session(self, event: SessionList.Action) -> None:
        await self._session_action(event.action, event.conversation_id)

    async def _session_action(self, action: str, conversation_id: str) -> None:
        if action == "resume":
            if self._idle():
                await self.open_conversation(conversation_id)
                self.action_toggle_sessions()
            return
        row = self.history.conversation(conversation_id)
        if action == "rename":
            def renamed(title: str | None) -> None:
                if title:
                    self.history.rename(conversation_id, title)
                    if conversation_id == self.conversation_id:
                        self.sub_title = visible(title, one_line=True)
                    self._refresh_sessions()

            self.push_screen(TextPrompt("New title:", row["title"]), renamed)
        elif action == "delete":
            count = len(self.history.turns(conversation_id))
            async def deleted(yes: bool | None) -> None:
                if not yes:
                    return
                if conversation_id == self.conversation_id:
                    if not self._idle():
                        return
                    await self.action_new_chat()
                self.history.delete(conversation_id)
                self._refresh_sessions()
                self.notify(f"Deleted “{row['title']}”.")

            self.push_screen(ConfirmScreen(
                f"Delete “{row['title'] or '(untitled)'}” and its {count} "
                f"turn{'s' if count != 1 else ''}? This cannot be undone."), deleted)

    # ---- sources -----------------------------------------------------------------------
    @on(AnswerView.Picked)
    def _picked(self, event: AnswerView.Picked) -> None:
        if event.view.sources:
            self.query_one(SourcesPane).show(event.view.sources, event.view.query,
                                             event.view.text)

    @on(SourceList.Open)
    def _open_source(self, event: SourceList.Open) -> None:
        path = Path(event.source["path"])
        if not path.is_file():
            self.notify(f"File not found: {path}", severity="error")
            return
        try:
            command = source_command(path, event.source.get("line_start"), os.environ)
            with self.suspend():
                subprocess.run(command, check=False)
        except SuspendNotSupported:
            self.notify("Cannot hand the terminal to an editor here.", severity="error")
        except OSError as exc:
            self.notify(f"Cannot open {path}: {one_line(exc)}", severity="error")
