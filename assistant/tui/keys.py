"""Key bindings of the chat app, by id: the defaults, and the check of a user's ``[keys]`` table.

A user remaps a binding in the config file by its id (``new_chat = "ctrl+t"``; several keys
are separated by commas); Textual's keymap applies it (``App.set_keymap``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from textual.binding import Binding


@dataclass(frozen=True)
class Key:
    """One rebindable action: its id (the config key), default key(s) and what it does."""

    id: str
    keys: str
    description: str
    where: str = "anywhere"


KEYS: tuple[Key, ...] = (
    Key("send", "enter", "Send the question", "question box"),
    Key("newline", "ctrl+j", "New line in the question", "question box"),
    Key("cancel", "escape", "Cancel the answer being written (keeps what was written)"),
    Key("new_chat", "ctrl+n", "Start a new conversation"),
    Key("sessions", "ctrl+s", "Show or hide past conversations"),
    Key("sources", "ctrl+o", "Focus the sources pane; arrows pick a passage"),
    Key("question", "ctrl+l", "Back to the question box"),
    Key("copy", "ctrl+r", "Copy the last answer to the clipboard"),
    Key("open_source", "o", "Open the source in $EDITOR or $PAGER at its line",
        "sources pane"),
    Key("resume", "enter", "Open the selected conversation", "conversation list"),
    Key("rename", "r", "Rename the selected conversation", "conversation list"),
    Key("delete", "d", "Delete the selected conversation (asks first)", "conversation list"),
    Key("help", "f1,question_mark", "This help (? works outside the question box)"),
    Key("quit", "ctrl+q", "Quit"),
)
_BY_ID = {k.id: k for k in KEYS}


def binding(key_id: str, action: str, label: str, *, show: bool = True,
            priority: bool = False) -> Binding:
    """A Textual :class:`Binding` for the key with id ``key_id`` (its default keys).

    Raises:
        KeyError: unknown id.
    """
    return Binding(_BY_ID[key_id].keys, action, label, show=show, priority=priority, id=key_id)


def check_keymap(keymap: Mapping[str, str]) -> dict[str, str]:
    """The user's ``[keys]`` table, checked.

    Raises:
        ValueError: an unknown binding id or an empty key (one line, listing the known ids).
    """
    unknown = sorted(set(keymap) - set(_BY_ID))
    if unknown:
        raise ValueError(f"unknown key binding(s) in [keys]: {', '.join(unknown)} "
                         f"(known: {', '.join(_BY_ID)})")
    empty = [k for k, v in keymap.items() if not str(v).strip()]
    if empty:
        raise ValueError(f"empty key for binding(s): {', '.join(empty)}")
    return {k: str(v).replace(" ", "") for k, v in keymap.items()}


def effective_keys(keymap: Mapping[str, str]) -> list[tuple[Key, str]]:
    """Each binding with the key(s) in force after the user's keymap, in display order."""
    return [(k, keymap.get(k.id, k.keys)) for k in KEYS]
