"""The bundled demo corpus: the Python language reference topics that ship with every Python.

``pydoc_data.topics`` holds the text of the reference's topics (``help("with")`` shows one);
they are written out as one file each (their headings use reStructuredText underlines, so
they are read as ``.rst``) so that sources point into real files.
"""

from __future__ import annotations

import re
from pathlib import Path

CORPUS_NAME = "python-reference"


def write_python_reference(dest: Path) -> Path:
    """Write each topic of ``pydoc_data.topics`` to ``dest/<topic>.rst`` (unchanged files are
    not rewritten, so re-indexing them is a no-op). Returns ``dest``.

    Raises:
        ImportError: this Python was built without ``pydoc_data``.
    """
    from pydoc_data.topics import topics

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, text in sorted(topics.items()):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        path = dest / f"{safe}.rst"
        body = text.strip() + "\n"
        if not path.is_file() or path.read_text(encoding="utf-8") != body:
            path.write_text(body, encoding="utf-8")
    return dest
