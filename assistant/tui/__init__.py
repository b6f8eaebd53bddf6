"""The Textual chat app (``assistant chat``): :class:`ChatApp` and its widgets."""

from .app import ChatApp

__all__ = ["ChatApp"]
