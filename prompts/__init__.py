"""Prompt templates, as plain text files with ``{name}`` fields (Python ``str.format``).

- ``system.txt``: the system message.
- ``answer.txt``: the user message for a question; fields ``{passages}``, ``{question}``.
- ``passage.txt``: one numbered passage; fields ``{number}``, ``{source}``, ``{text}``.
"""
