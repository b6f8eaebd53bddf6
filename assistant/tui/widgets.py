"""The chat app's widgets: question box, messages, sources pane, conversation list, status line.

Widgets only show things and announce what the user did (nested ``Message`` classes); the app
decides what happens.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Markdown, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from ..attribution import CITATION, content_words
from ..forms import sentences
from ..output import location, search_figures, support_bar, visible
from .keys import binding


class PromptArea(TextArea):
    """The question box: Enter sends, Ctrl+J inserts a new line (both rebindable)."""

    BINDINGS = [
        binding("send", "send", "Send", priority=True),
        binding("newline", "newline", "New line", show=False, priority=True),
    ]

    class Submitted(Message):
        """The user sent ``text`` (already stripped, never empty)."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def action_send(self) -> None:
        # Enter is a priority binding: the app runs it as the key arrives, before the keys
        # typed just before it (one read from the terminal: a fast typist, a paste, tmux
        # send-keys) have reached this box; read the text once they have
        self.call_later(self._send)

    def _send(self) -> None:
        text = self.text.strip()
        if text:
            self.post_message(self.Submitted(text))

    def action_newline(self) -> None:
        self.insert("\n")


class UserMessage(Static):
    """A question as the user sent it."""

    def __init__(self, question: str) -> None:
        super().__init__(Text(visible(question)), classes="user")


class AnswerView(Vertical):
    """An answer: Markdown streamed in fragment by fragment, then a line of notes (cited
    sources, cancelled, error). Clicking it shows its sources in the sources pane."""

    class Picked(Message):
        """The user clicked this answer."""

        def __init__(self, view: "AnswerView") -> None:
            super().__init__()
            self.view = view

    def __init__(self, *, sources: list[dict] | None = None, query: str = "") -> None:
        super().__init__(classes="answer")
        self.text = ""
        self.sources = sources or []
        self.query = query
        self.status = "pending"
        self._stream = None

    def compose(self) -> ComposeResult:
        yield Markdown("", classes="answer-text")
        yield Static("", classes="answer-notes")

    @property
    def markdown(self) -> Markdown:
        return self.query_one(Markdown)

    async def write(self, fragment: str) -> None:
        """Append a fragment of the answer (fast fragments are batched by the stream)."""
        if self._stream is None:
            self._stream = Markdown.get_stream(self.markdown)
        fragment = visible(fragment)
        self.text += fragment
        await self._stream.write(fragment)

    async def finish(self, status: str, *, note: str = "", cited: list[int] = ()) -> None:
        """End the stream and show the outcome (``complete``, ``cancelled``, ``error``, ...)."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.status = status
        notes = []
        if cited:
            notes.append("sources " + " ".join(f"[{n}]" for n in cited))
        if status == "cancelled":
            notes.append("cancelled")
        elif status == "pending":
            notes.append("no answer (interrupted)")
        if note:
            notes.append(note)
        if not self.text.strip() and status == "complete":
            notes.append("the model gave no answer")
        self.set_class(status in ("cancelled", "pending"), "-cancelled")
        self.set_class(status == "error", "-error")
        self.query_one(".answer-notes", Static).update(Text(visible(" · ".join(notes))))

    async def show(self, text: str, status: str, *, note: str = "", cited: list[int] = ()) -> None:
        """Show a finished answer at once (a resumed conversation)."""
        self.text = text = visible(text)
        await self.markdown.update(text)
        await self.finish(status, note=note, cited=cited)

    def on_click(self) -> None:
        self.post_message(self.Picked(self))


def highlight(text: str, query: str, answer: str = "") -> Text:
    """``text`` with the content words of ``query`` (and words starting with them, so
    "statement" also marks "statements") highlighted, and the sentences the ``answer``
    quotes (see :func:`used_sentences`) underlined on a green background."""
    out = Text(visible(text))
    for sentence in used_sentences(text, answer):
        pattern = r"\s+".join(re.escape(w) for w in sentence.split())
        out.highlight_regex(pattern, style="underline on dark_green")
    words = sorted(content_words(query), key=len, reverse=True)
    if words:
        pattern = r"(?i)\b(?:" + "|".join(re.escape(w) for w in words) + r")\w*"
        out.highlight_regex(pattern, style="bold reverse")
    return out


def used_sentences(passage: str, answer: str) -> list[str]:
    """The sentences of ``passage`` (:func:`assistant.forms.sentences`) that the ``answer``
    quotes word for word (Markdown escapes, bold and citations ignored)."""
    if not answer:
        return []
    said = " ".join(re.sub(r"\\(.)|\*\*", lambda m: m.group(1) or " ",
                           CITATION.sub(" ", answer)).split())
    return [s.text for s in sentences(0, passage) if s.text in said]


def source_label(source: dict) -> Text:
    """The sources-list entry: number, file name with lines or page, heading, score ("added"
    for a passage the answer added from a retrieved one's document) and, when
    measured, a bar with the share of the answer's attention on it (support); the sources
    the answer cites are starred. (The full path is shown with the passage.)"""
    where = location({**source, "path": Path(source["path"]).name})
    label = Text()
    label.append(f"{'*' if source.get('cited') else ' '}[{source['number']}] ", style="bold")
    label.append(where)
    if source.get("heading"):
        label.append(f" · {visible(source['heading'].split(' > ')[-1], one_line=True)}",
                     style="italic")
    score = source.get("score")
    label.append("  added" if score is None else f"  {score:.3f}", style="dim")
    if source.get("support") is not None:
        label.append(f"  {support_bar(source['support'])}",
                     style="bold green" if source.get("cited") else "green")
    return label


class SourceList(OptionList):
    """The numbered sources of the answer on show."""

    BINDINGS = [binding("open_source", "open_source", "Open source")]

    class Open(Message):
        """Open ``source`` (a dict) in an editor or pager."""

        def __init__(self, source: dict) -> None:
            super().__init__()
            self.source = source

    def action_open_source(self) -> None:
        pane = self.parent
        if isinstance(pane, SourcesPane) and self.highlighted is not None:
            self.post_message(self.Open(pane.sources[self.highlighted]))


class SourcesPane(Vertical):
    """Retrieved passages for one answer, in rank order; the highlighted one is shown whole
    below the list with the query's words marked."""

    def __init__(self) -> None:
        super().__init__(id="sources")
        self.sources: list[dict] = []
        self.query = ""
        self.answer = ""

    def compose(self) -> ComposeResult:
        yield Static("Sources", classes="pane-title")
        yield SourceList(id="source-list")
        with VerticalScroll(id="passage-box"):
            yield Static("Sources of the answer appear here.", id="passage")

    def show(self, sources: list[dict], query: str, answer: str = "") -> None:
        """Show ``sources`` (dicts as stored with a turn) for the search ``query``; the
        sentences ``answer`` quotes are marked in each passage."""
        self.sources, self.query, self.answer = list(sources), query, answer
        options = self.query_one(SourceList)
        options.clear_options()
        options.add_options([Option(source_label(s)) for s in self.sources])
        if self.sources:
            options.highlighted = 0
            self._show_passage(0)
        else:
            self.query_one("#passage", Static).update("No passages were retrieved.")

    @on(OptionList.OptionHighlighted, "#source-list")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self._show_passage(event.option_index)

    def _show_passage(self, index: int) -> None:
        if not 0 <= index < len(self.sources):
            return
        s = self.sources[index]
        head = Text(f"[{s['number']}] {location(s)}\n", style="bold")
        if s.get("heading"):
            head.append(f"{visible(s['heading'], one_line=True)}\n", style="italic")
        head.append("\n")
        self.query_one("#passage", Static).update(
            head + highlight(s["text"], self.query, self.answer))
        self.query_one("#passage-box").scroll_home(animate=False)


class SessionList(OptionList):
    """Past conversations; the option ids are conversation ids."""

    BINDINGS = [
        binding("resume", "resume", "Open"),
        binding("rename", "rename", "Rename"),
        binding("delete", "delete", "Delete"),
    ]

    class Action(Message):
        """The user wants ``action`` (resume, rename, delete) on ``conversation_id``."""

        def __init__(self, action: str, conversation_id: str) -> None:
            super().__init__()
            self.action, self.conversation_id = action, conversation_id

    def _post(self, action: str) -> None:
        if self.highlighted is not None:
            option = self.get_option_at_index(self.highlighted)
            if option.id:
                self.post_message(self.Action(action, option.id))

    def action_resume(self) -> None:
        self._post("resume")

    def action_rename(self) -> None:
        self._post("rename")

    def action_delete(self) -> None:
        self._post("delete")


class SessionsPanel(Vertical):
    """Search box and list of past conversations (most recent first)."""

    class Search(Message):
        """The search text changed."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self) -> None:
        super().__init__(id="sessions")

    def compose(self) -> ComposeResult:
        yield Static("Conversations", classes="pane-title")
        yield Input(placeholder="Search…", id="session-search")
        yield SessionList(id="session-list")

    def show(self, rows: list[dict], current: str | None) -> None:
        """List conversation rows (id, title, updated_at, turns); ``current`` is marked."""
        options = self.query_one(SessionList)
        keep = options.highlighted
        options.clear_options()
        for row in rows:
            label = Text()
            label.append("● " if row["id"] == current else "  ", style="bold")
            label.append(visible(row["title"], one_line=True) or "(untitled)")
            label.append(f"\n  {time.strftime('%d %b %H:%M', time.localtime(row['updated_at']))}"
                         f" · {row['turns']} turn{'s' if row['turns'] != 1 else ''}", style="dim")
            options.add_option(Option(label, id=row["id"]))
        if rows:
            options.highlighted = min(keep or 0, len(rows) - 1)
        else:
            options.add_option(Option(Text("No conversations found.", style="dim"),
                                      disabled=True))

    @on(Input.Changed, "#session-search")
    def _changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Search(event.value))

    @on(Input.Submitted, "#session-search")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one(SessionList).focus()


class StatusLine(Static):
    """Model, device and index size; then figures for the last answer."""

    def __init__(self) -> None:
        super().__init__("", id="status")
        self.model_info = ""
        self.last = ""
        self.index_info = ""

    def set_index(self, text: str) -> None:
        """Indexing progress ("indexing · 12,400 of 15,000 passages embedded"); "" hides it."""
        if text != self.index_info:
            self.index_info = text
            self._render_line()

    def set_model(self, text: str) -> None:
        self.model_info = text
        self._render_line()

    def set_last(self, text: str) -> None:
        self.last = text
        self._render_line()

    def _render_line(self) -> None:
        parts = (self.model_info, self.index_info, self.last)
        self.update(Text(visible(" │ ".join(t for t in parts if t), one_line=True)))


def turn_figures(retrieved: int, timings: dict, grounding: str = "") -> str:
    """``5 passages · retrieval 23 ms · first token 1.90 s · 20.4 tok/s`` (tokens per second;
    a reranked turn's ``reranking`` follows retrieval, see :func:`search_figures`), then
    ``grounding`` (how sources were ranked and cited) when given."""
    parts = [f"{retrieved} passage{'s' if retrieved != 1 else ''}", *search_figures(timings)]
    if timings.get("first_token_s") is not None:
        parts.append(f"first token {timings['first_token_s']:.2f} s")
    if timings.get("tokens_per_s"):
        parts.append(f"{timings['tokens_per_s']:.1f} tok/s")
    if timings.get("answer_s") is not None:
        parts.append(f"answer in {timings['answer_s']:.2f} s")
    if grounding:
        parts.append(grounding)
    return " · ".join(parts)
