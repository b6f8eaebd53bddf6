"""Modal screens: help, confirmation, and a one-line text prompt (rename)."""

from __future__ import annotations

from typing import Mapping

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from .keys import effective_keys


def _pretty(keys: str) -> str:
    names = {"question_mark": "?", "escape": "Esc", "enter": "Enter"}
    out = []
    for key in keys.split(","):
        parts = [names.get(p, p.upper() if p.startswith("f") and p[1:].isdigit() else p.capitalize())
                 for p in key.split("+")]
        out.append("+".join(parts))
    return " / ".join(out)


class HelpScreen(ModalScreen[None]):
    """Every key binding in force (after the user's ``[keys]`` table) and where it works."""

    BINDINGS = [Binding("escape,f1,question_mark,q", "dismiss", "Close")]

    def __init__(self, keymap: Mapping[str, str]) -> None:
        super().__init__()
        self.keymap = dict(keymap)

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=True, header_style="bold", expand=True)
        table.add_column("Key", no_wrap=True)
        table.add_column("Action")
        table.add_column("Where", style="dim", no_wrap=True)
        for key, keys in effective_keys(self.keymap):
            table.add_row(_pretty(keys), key.description, key.where)
        self.table = table
        with Vertical(id="help-box"):
            yield Static(Text("Keys", style="bold"), classes="pane-title")
            with VerticalScroll():
                yield Static(table)
            yield Static(Text("Rebind in the config file, e.g. [keys] new_chat = \"ctrl+t\". "
                              "Esc closes.", style="dim"))


class ConfirmScreen(ModalScreen[bool]):
    """Ask a yes/no question; dismisses with True only on an explicit yes."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(self.question))
            with Horizontal(classes="buttons"):
                yield Button("Delete (y)", variant="error", id="yes")
                yield Button("Keep (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class TextPrompt(ModalScreen[str | None]):
    """Ask for one line of text (Enter keeps it, Esc cancels -> None)."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, label: str, value: str = "") -> None:
        super().__init__()
        self.label, self.value = label, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(self.label))
            yield Input(value=self.value, id="text")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)
