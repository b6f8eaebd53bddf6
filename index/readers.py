"""Read one file into sections, by file type, with well-kept parsers.

Plain text and source code are decoded (encoding detected by charset-normalizer) and kept whole;
Markdown headings come from markdown-it-py, reStructuredText sections from docutils, HTML
sections from BeautifulSoup, PDF pages from pypdf. Anything that cannot be read raises
:class:`SkipFile` with a one-line reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .chunking import Section

TEXT_SUFFIXES = {".txt", ".text", ".log"}
MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd"}
RST_SUFFIXES = {".rst", ".rest"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
PDF_SUFFIXES = {".pdf"}
NOTEBOOK_SUFFIXES = {".ipynb"}
CODE_SUFFIXES = {
    ".py", ".pyi", ".js", ".mjs", ".cjs", ".ts", ".tsx", ".jsx", ".java", ".kt", ".kts",
    ".scala", ".go", ".rs", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cs", ".swift",
    ".m", ".mm", ".rb", ".php", ".pl", ".pm", ".lua", ".r", ".jl", ".hs", ".ml", ".mli", ".ex",
    ".exs", ".erl", ".clj", ".el", ".vim", ".sh", ".bash", ".zsh", ".fish", ".ps1", ".bat",
    ".sql", ".css", ".scss", ".less", ".vue", ".svelte", ".toml", ".yaml", ".yml", ".ini",
    ".cfg", ".conf", ".json", ".xml", ".tex", ".bib", ".org", ".adoc", ".csv", ".tsv",
    ".dockerfile", ".gradle", ".cmake", ".proto", ".graphql", ".dart", ".zig", ".nim",
}
MINIFIED_LINE = 5000
"""Source code with a line longer than this (characters) was written by a tool (minified
bundles, generated data), not by a person; prose files are not held to it."""
SPECIAL_NAMES = {"readme", "license", "copying", "makefile", "dockerfile", "changelog",
                 "authors", "contributing", "notice", "todo", "install", "news"}
SUPPORTED_SUFFIXES = (TEXT_SUFFIXES | MARKDOWN_SUFFIXES | RST_SUFFIXES | HTML_SUFFIXES
                      | PDF_SUFFIXES | CODE_SUFFIXES | NOTEBOOK_SUFFIXES)


READER_VERSIONS = {"html": 4}
"""The version of each kind's reading rules, raised when a change to them changes the passages
a file gives (html 2: navigation and tables of contents left out; 3: title-page release,
copyright and legal notices and page footers too; 4: a ``<br>`` and the source's newline
after it are one line break, not a paragraph break). An index re-reads the
documents that an older version read (:func:`reader_version`); a kind not listed is at 1."""


def reader_version(kind: str) -> int:
    """The version of the reading rules for ``kind`` (:data:`READER_VERSIONS`, else 1)."""
    return READER_VERSIONS.get(kind, 1)


class SkipFile(Exception):
    """A file that is not indexed; ``str(exc)`` is the one-line reason shown to the user."""


@dataclass(frozen=True)
class Document:
    """A parsed file: its title, kind (``text``, ``markdown``, ``rst``, ``html``, ``pdf``,
    ``notebook``, ``code``) and sections in order."""

    title: str
    kind: str
    sections: list[Section]


def kind_of(path: Path) -> str | None:
    """The reader kind for ``path`` by its suffix or name, or None when unsupported."""
    suffix = path.suffix.lower()
    if suffix in MARKDOWN_SUFFIXES:
        return "markdown"
    if suffix in RST_SUFFIXES:
        return "rst"
    if suffix in HTML_SUFFIXES:
        return "html"
    if suffix in PDF_SUFFIXES:
        return "pdf"
    if suffix in NOTEBOOK_SUFFIXES:
        return "notebook"
    if suffix in CODE_SUFFIXES:
        return "code"
    if suffix in TEXT_SUFFIXES or path.name.lower() in SPECIAL_NAMES or (
        path.stem.lower() in SPECIAL_NAMES and not suffix[1:].isalpha()
    ):
        return "text"
    return None


def decode(data: bytes) -> str:
    """Decode bytes in whatever common encoding they are in.

    UTF-8 (with or without BOM) is tried first; otherwise charset-normalizer picks the most
    plausible encoding (Latin-1, cp1252, UTF-16, Shift-JIS, ...).

    Raises:
        SkipFile: ``"empty"``, ``"binary content"`` (NUL bytes without a UTF-16/32 BOM), or
            ``"undecodable text"``.
    """
    if not data.strip():
        raise SkipFile("empty")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
        if best is None:
            raise SkipFile("undecodable text")
        return str(best)
    if b"\x00" in data[:8192]:
        raise SkipFile("binary content")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    text = _detect(data)
    controls = sum(1 for c in text[:8192] if ord(c) < 32 and c not in "\t\n\r\f")
    if controls > 0.01 * min(len(text), 8192):
        raise SkipFile("binary content")
    return text


_LATIN_ALPHABETS = {"Basic Latin", "Latin-1 Supplement", "Latin Extended-A", "Latin Extended-B",
                    "General Punctuation", "Latin Extended Additional", "Spacing Modifier Letters"}
_CENTRAL_EUROPEAN = {"Polish", "Czech", "Hungarian", "Slovak", "Slovene", "Croatian", "Romanian"}


def _detect(data: bytes) -> str:
    """Decode non-UTF-8 bytes with the encoding charset-normalizer finds most plausible.

    On short Latin-script texts its pick among the many single-byte code pages that decode them
    without errors is close to arbitrary (cp775 for French, say), so when the detected text is
    Latin script (or the bytes are mostly ASCII, as any text in a Latin-script language is) we
    decode as Windows-1252 (a superset of Latin-1's printable range, by far the
    most common legacy encoding), unless a Central European language was detected.

    Raises:
        SkipFile: no encoding decodes the bytes.
    """
    from charset_normalizer import from_bytes

    # UTF-16/32 without a byte-order mark (those are handled before) is a misdetection of
    # short single-byte text: 'café' in cp1252 reads as two CJK characters in UTF-16-BE.
    matches = [m for m in from_bytes(data) if not m.encoding.startswith(("utf_16", "utf_32"))]
    if not matches:
        raise SkipFile("undecodable text")
    best = matches[0]
    sample = data[:65536]
    mostly_ascii = sum(b < 0x80 for b in sample) >= 0.7 * len(sample)
    latin = mostly_ascii or set(best.alphabets) <= _LATIN_ALPHABETS
    if latin and best.language not in _CENTRAL_EUROPEAN:
        for encoding in ("cp1252", "latin-1"):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                continue
    return str(best)


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text(text: str) -> list[Section]:
    """Plain text or source code: one section holding the whole text."""
    return [Section(text=text)] if text.strip() else []


def read_markdown(text: str) -> tuple[str | None, list[Section]]:
    """Markdown: one section per heading (ATX or setext), found by markdown-it-py.

    Returns ``(first level-1 heading or None, sections)``.
    """
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(text)
    headings: list[tuple[int, int, int, str]] = []  # (start line, body line, level, text)
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.map:
            level = int(token.tag[1])
            headings.append((token.map[0], token.map[1], level, tokens[i + 1].content.strip()))
    return _sections_from_headings(text, headings)


def read_notebook(text: str) -> tuple[str | None, list[Section]]:
    """A Jupyter notebook (read with ``nbformat``): its markdown and code cells, outputs
    dropped. Consecutive cells under the same markdown heading form one section whose heading
    names them (``Setup · cells 3–5``), so short cells are not each a passage of their own.

    Returns ``(first level-1 heading or None, sections)``.

    Raises:
        SkipFile: not a notebook nbformat can read.
    """
    import nbformat

    try:
        notebook = nbformat.reads(text, as_version=4)
    except Exception as exc:  # nbformat raises JSON, validation and version errors
        raise SkipFile(f"not a readable notebook ({str(exc).splitlines()[0][:80]})") from None
    title: str | None = None
    sections: list[Section] = []
    heading, texts, cells = "", [], []

    def close() -> None:
        if texts:
            span = f"cell {cells[0]}" if len(cells) == 1 else f"cells {cells[0]}–{cells[-1]}"
            sections.append(Section("\n\n".join(texts),
                                    heading=f"{heading} · {span}" if heading else span,
                                    line_start=1, lines_exact=False))
        texts.clear()
        cells.clear()

    for number, cell in enumerate(notebook.cells, start=1):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        if not source.strip() or cell.get("cell_type") not in ("markdown", "code"):
            continue
        if cell["cell_type"] == "markdown":
            first, parts = read_markdown(source)
            title = title or first
            for part in parts:
                if part.heading and part.heading != heading:
                    close()
                    heading = part.heading
                if part.text.strip():
                    texts.append(part.text.strip())
                    cells.append(number)
        else:
            texts.append(source.strip())
            cells.append(number)
    close()
    return title, sections


def read_rst(text: str) -> tuple[str | None, list[Section]]:
    """reStructuredText: one section per section title, found by docutils.

    Falls back to one plain section when docutils cannot parse the file.
    """
    from docutils import nodes
    from docutils.core import publish_doctree

    try:
        tree = publish_doctree(
            text,
            settings_overrides={
                "report_level": 5, "halt_level": 5, "doctitle_xform": False,
                "file_insertion_enabled": False, "raw_enabled": False,
            },
        )
    except Exception:  # docutils raises many types on malformed input
        return None, read_text(text)
    lines = text.split("\n")
    headings = []
    for section in tree.findall(nodes.section):
        title = section.next_node(nodes.title)
        if title is None or not title.line:
            continue
        # docutils reports the underline's line (1-based); find the title line just above it.
        label = title.astext().strip()
        start = title.line - 2
        for candidate in (start, start - 1, start + 1):
            if 0 <= candidate < len(lines) and lines[candidate].strip() == label:
                start = candidate
                break
        depth = sum(1 for a in _ancestors(section) if isinstance(a, nodes.section)) + 1
        underlined = start + 1 < len(lines) and set(lines[start + 1].strip()) <= _RST_ADORNMENT
        body = start + 2 if underlined else start + 1
        headings.append((start, body, depth, label))
    headings.sort()
    return _sections_from_headings(text, headings)


_RST_ADORNMENT = set("=-~`#*^\"+:.'_")


def _ancestors(node):
    node = node.parent
    while node is not None:
        yield node
        node = node.parent


def _sections_from_headings(
    text: str, headings: list[tuple[int, int, int, str]]
) -> tuple[str | None, list[Section]]:
    """Cut ``text`` at heading lines; each section's heading is the path of enclosing titles."""
    lines = text.split("\n")
    sections: list[Section] = []
    title = next((h[3] for h in headings if h[2] == 1), None)
    if headings and headings[0][0] > 0:
        sections.append(Section(text="\n".join(lines[: headings[0][0]]), line_start=1))
    elif not headings:
        return title, read_text(text)
    path: list[tuple[int, str]] = []
    for i, (start, body, level, label) in enumerate(headings):
        end = headings[i + 1][0] if i + 1 < len(headings) else len(lines)
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, label))
        body_text = "\n".join(lines[body:end])
        if body_text.strip():
            sections.append(
                Section(text=body_text, heading=" > ".join(p[1] for p in path), line_start=body + 1)
            )
    return title, [s for s in sections if s.text.strip()]


_BLOCK_TAGS = ["p", "div", "li", "pre", "dt", "dd", "tr", "table", "blockquote", "section",
               "article", "ul", "ol", "dl", "figure", "figcaption", "br", "hr", "h1", "h2",
               "h3", "h4", "h5", "h6"]
_HEADING = re.compile(r"^h[1-6]$")


def read_html(text: str) -> tuple[str | None, list[Section]]:
    """HTML: one section per heading (h1-h6) of the main content, found by BeautifulSoup.

    Scripts, styles and navigation are dropped; the main content is ``<main>``, an element with
    ``role="main"``, or ``<body>``. Each section's ``line_start`` is its heading's line in the
    HTML source; lines inside a section are not exact.
    """
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else None
    root = soup.find("main") or soup.find(attrs={"role": "main"}) or soup.body or soup
    for tag in root.find_all(["script", "style", "nav", "noscript", "template", "svg", "form"]):
        tag.decompose()
    for tag in root.find_all(class_=re.compile(r"headerlink|sphinxsidebar|related|footer")):
        tag.decompose()
    for tag in root.find_all(_navigation):
        tag.decompose()
    marker = "\x00"
    for tag in root.find_all(_HEADING):
        label = tag.get_text(" ", strip=True).replace("\u00b6", "").strip()
        tag.replace_with(f"\n{marker}{tag.name[1]}{marker}{tag.sourceline or 1}{marker}{label}\n")
    brk = "\x01"
    for tag in root.find_all(_BLOCK_TAGS):
        if tag.name == "br":
            tag.replace_with(brk)
        else:
            tag.insert_before("\n\n")
            tag.append("\n\n")
    # a text file shown as HTML ends each line with <br> and the source's newline: one line
    # break, else every line would be a paragraph and every sentence cut at its line's end
    raw = re.sub(brk + r"[ \t\u00a0]*\n?", "\n", root.get_text())
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    line = 1
    heading = ""
    for part_index, part in enumerate(raw.split(f"\n{marker}")):
        body = part
        if part_index > 0:
            level, source_line, rest = part.split(marker, 2)
            label, _, body = rest.partition("\n")
            while path and path[-1][0] >= int(level):
                path.pop()
            path.append((int(level), label.strip()))
            heading = " > ".join(p[1] for p in path if p[1])
            line = int(source_line)
        cleaned = _clean_extracted(body)
        if cleaned:
            sections.append(Section(text=cleaned, heading=heading, line_start=line, lines_exact=False))
    if title is None and path:
        title = path[0][1]
    return title, sections


_NAVIGATION_CLASS = re.compile(r"^(?:nav|navheader|navfooter|breadcrumbs?|toc|releaseinfo|"
                               r"copyright|legalnotice|pubdate|revhistory|footer)$")
_NAVIGATION_SUMMARY = re.compile(r"^navigation\b", re.I)


def _navigation(tag) -> bool:
    """True for a page's navigation and furniture rather than its content: a
    ``role="navigation"`` or ``"contentinfo"`` element, DocBook's header and footer tables
    (``class="nav"``/``navheader``/``navfooter``, summary "Navigation header"/"Navigation
    footer") and its chapter tables of contents (``class="toc"``), breadcrumbs, a title
    page's release, copyright and legal notices (``releaseinfo``, ``copyright``,
    ``legalnotice``, ``pubdate``, ``revhistory``) and a page footer (``class="footer"``, as
    Sphinx writes it). Their text is other pages' titles or the same notice on every page: as
    passages they match a question by those words and hold no answer ("Release 3.19.0 …
    Copyright © 2000-2022 Valgrind Developers" ranked first for "What is Valgrind?")."""
    if tag.get("role") in ("navigation", "contentinfo") or _NAVIGATION_SUMMARY.match(
            tag.get("summary") or ""):
        return True
    return any(_NAVIGATION_CLASS.match(name) for name in tag.get("class") or ())


def _clean_extracted(text: str) -> str:
    """Collapse the white space left by markup: single spaces in lines, one blank line between
    paragraphs."""
    lines = [re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.split("\n")]
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return out


def read_pdf(path: Path) -> tuple[str | None, list[Section]]:
    """PDF: one section per page, text extracted by pypdf.

    Raises:
        SkipFile: broken, encrypted or text-less PDFs.
    """
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise SkipFile("encrypted PDF")
        title = None
        try:
            title = (reader.metadata or {}).get("/Title")
        except Exception:
            title = None
        sections = []
        for number, page in enumerate(reader.pages, start=1):
            page_text = _clean_extracted(page.extract_text() or "")
            if page_text:
                sections.append(Section(text=page_text, page=number, line_start=1))
    except SkipFile:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError, AssertionError) as exc:
        raise SkipFile(f"broken PDF ({type(exc).__name__}: {str(exc)[:80]})") from exc
    if not sections:
        raise SkipFile("PDF has no extractable text (scanned?)")
    return (str(title) if title else None), sections


def read_document(path: Path, data: bytes, kind: str) -> Document:
    """Parse a file's bytes into a :class:`Document`.

    Args:
        path: the file (used for PDFs, which are parsed from the path, and the default title).
        data: the file's content, already read.
        kind: from :func:`kind_of`.

    Raises:
        SkipFile: with the reason, when the file cannot be indexed.
    """
    if kind == "pdf":
        if not data.strip():
            raise SkipFile("empty")
        title, sections = read_pdf(path)
        return Document(title or path.stem, kind, sections)
    text = _normalise(decode(data))
    if kind == "code":
        longest = max(map(len, text.splitlines()), default=0)
        if longest > MINIFIED_LINE:
            raise SkipFile(f"generated or minified (a line of {longest:,} characters)")
    if kind == "markdown":
        title, sections = read_markdown(text)
    elif kind == "rst":
        title, sections = read_rst(text)
    elif kind == "html":
        title, sections = read_html(text)
    elif kind == "notebook":
        title, sections = read_notebook(text)
    else:
        title, sections = None, read_text(text)
    if not any(s.text.strip() for s in sections):
        raise SkipFile("no text")
    return Document(title or path.name, kind, sections)
