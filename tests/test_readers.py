from pathlib import Path

import pytest

from index.readers import SkipFile, decode, kind_of, read_document
from tests.pdfs import write_pdf


def doc(path: Path):
    return read_document(path, path.read_bytes(), kind_of(path))


def test_kinds_by_suffix_and_name():
    assert kind_of(Path("a.MD")) == "markdown"
    assert kind_of(Path("a.rst")) == "rst"
    assert kind_of(Path("a.htm")) == "html"
    assert kind_of(Path("a.pdf")) == "pdf"
    assert kind_of(Path("main.rs")) == "code"
    assert kind_of(Path("README")) == "text"
    assert kind_of(Path("photo.png")) is None


def test_markdown_sections_have_heading_paths_and_lines(tmp_path, squad_passages):
    p0, p1 = squad_passages[0]["text"], squad_passages[1]["text"]
    path = tmp_path / "notes.md"
    path.write_text(f"# Super Bowl 50\n\n{p0}\n\n## Broadcast\n\n{p1}\n", encoding="utf-8")
    document = doc(path)
    assert document.title == "Super Bowl 50"
    assert [(s.heading, s.line_start) for s in document.sections] == [
        ("Super Bowl 50", 2), ("Super Bowl 50 > Broadcast", 6)]
    assert p1 in document.sections[1].text


def test_rst_sections_from_docutils(tmp_path, squad_passages):
    text = (f"Normans\n=======\n\n{squad_passages[12]['text']}\n\nOrigins\n-------\n\n"
            f"{squad_passages[13]['text']}\n")
    path = tmp_path / "n.rst"
    path.write_text(text, encoding="utf-8")
    sections = doc(path).sections
    assert [s.heading for s in sections] == ["Normans", "Normans > Origins"]
    origins = squad_passages[13]["text"]
    assert sections[1].line_start + sections[1].text.split("\n").index(origins) == 9
    assert text.split("\n")[8] == origins


def test_html_sections_drop_scripts_and_navigation(tmp_path, squad_passages):
    html = f"""<html><head><title>Super Bowl</title><script>var x = "secret";</script></head>
<body><nav>Home | About</nav><main>
<h1>Super Bowl 50<a class="headerlink" href="#">¶</a></h1><p>{squad_passages[0]['text']}</p>
<h2>Broadcasting</h2>
<p>{squad_passages[1]['text'][:200]} <code>inline</code> text.</p><ul><li>one</li><li>two</li></ul>
</main></body></html>"""
    path = tmp_path / "page.html"
    path.write_text(html, encoding="utf-8")
    document = doc(path)
    assert document.title == "Super Bowl"
    assert [s.heading for s in document.sections] == ["Super Bowl 50", "Super Bowl 50 > Broadcasting"]
    body = " ".join(s.text for s in document.sections)
    assert "secret" not in body and "Home | About" not in body and "¶" not in body
    assert "inline text." in document.sections[1].text
    assert document.sections[1].line_start == 4 and not document.sections[1].lines_exact


def test_html_leaves_out_docbook_navigation_and_tables_of_contents(tmp_path):
    """DocBook's navigation header and footer tables and a chapter's table of contents hold
    other pages' titles, title pages and footers the same notices on every page: as passages
    they would match questions by those words alone."""
    html = """<html><head><title>1. Introduction</title></head><body>
<div><table class="nav" summary="Navigation header"><tr><th>Valgrind User Manual</th></tr>
</table></div>
<div class="chapter"><h1>1. Introduction</h1>
<div class="toc"><p><b>Table of Contents</b></p><dl><dt>1.1. An Overview</dt></dl></div>
<h2>1.1. An Overview</h2><p>Valgrind is an instrumentation framework.</p></div>
<div class="navfooter"><a href="next.html">2. Using the core</a></div>
<div role="navigation"><a href="index.html">Home</a></div>
<table summary="Navigation footer"><tr><td>Up</td></tr></table>
<div class="titlepage"><div><p class="releaseinfo">Release 3.19.0 11 Apr 2022</p></div>
<div><p class="copyright">Copyright 2000-2022 Valgrind Developers</p></div>
<div class="legalnotice"><p>Email: valgrind@valgrind.org</p></div></div>
<div class="footer">Last updated on Apr 11, 2022. Created using Sphinx.</div>
</body></html>"""
    path = tmp_path / "manual-intro.html"
    path.write_text(html, encoding="utf-8")
    document = doc(path)
    assert [(s.heading, s.text) for s in document.sections] == [
        ("1. Introduction > 1.1. An Overview", "Valgrind is an instrumentation framework.")]


def test_pdf_pages(tmp_path):
    path = write_pdf(tmp_path / "a.pdf", [["Super Bowl 50 was an American football game."],
                                           ["The Normans were a people."]], title="Report")
    document = doc(path)
    assert document.title == "Report"
    assert [(s.page, "Normans" in s.text) for s in document.sections] == [(1, False), (2, True)]


def test_broken_pdf_is_skipped_with_reason(tmp_path):
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ngarbage")
    with pytest.raises(SkipFile, match="PDF"):
        doc(path)


@pytest.mark.parametrize("text,encoding", [
    ("Les Normands étaient un peuple qui a donné son nom à la Normandie, région de France.", "latin-1"),
    ("Grüße aus München, schöne Straße", "latin-1"),
    ("café", "cp1252"),
    ("Норманны — народ, давший имя Нормандии, региону Франции.", "cp1251"),
])
def test_legacy_encodings_are_detected(text, encoding):
    assert decode(text.encode(encoding)) == text


def test_utf16_and_bom_are_decoded():
    text = "Les Normands étaient un peuple qui a donné son nom à la Normandie, région de France."
    assert decode(text.encode("utf-16")) == text
    assert decode(("\ufeff" + text).encode("utf-8")) == text


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"), (b"  \n\t ", "empty"), (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
])
def test_unusable_bytes_are_skipped(data, reason):
    with pytest.raises(SkipFile, match=reason):
        decode(data)


def test_notebook_cells_are_read_without_outputs(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    notebook = new_notebook(cells=[
        new_markdown_cell("# Sales analysis\n\nWe load the data."),
        new_code_cell('import pandas as pd\ndf = pd.read_csv("sales.csv")',
                      outputs=[new_output("stream", text="OUTPUT THAT IS NOT INDEXED")]),
        new_code_cell("df.head()"),
        new_markdown_cell("## Totals\nSum per region."),
        new_code_cell('df.groupby("region").sum()'),
    ])
    path = tmp_path / "sales.ipynb"
    path.write_text(nbformat.writes(notebook), encoding="utf-8")
    assert kind_of(path) == "notebook"
    document = read_document(path, path.read_bytes(), "notebook")
    assert document.title == "Sales analysis" and document.kind == "notebook"
    assert [s.heading for s in document.sections] == ["Sales analysis · cells 1–3",
                                                      "Totals · cells 4–5"]
    text = "\n".join(s.text for s in document.sections)
    assert 'pd.read_csv("sales.csv")' in text and "Sum per region." in text
    assert "OUTPUT" not in text and '"cell_type"' not in text  # not the raw JSON


def test_a_broken_notebook_is_skipped_with_a_reason(tmp_path):
    path = tmp_path / "broken.ipynb"
    path.write_text('{"cells": [', encoding="utf-8")
    with pytest.raises(SkipFile, match="not a readable notebook"):
        read_document(path, path.read_bytes(), "notebook")


def test_html_lines_ended_by_br_stay_in_one_paragraph(tmp_path):
    # a text file shown as HTML (Valgrind's NEWS): each line ends with <br> and a newline
    page = tmp_path / "news.html"
    page.write_text("<html><head><title>NEWS</title></head><body><h1>NEWS</h1>* DHAT:<br>\n"
                    "<br>\n&nbsp;&nbsp;- DHAT was overhauled.&nbsp; As a result,<br>\n"
                    "&nbsp;&nbsp;&nbsp;&nbsp;it was promoted.&nbsp; Run it<br>\n"
                    "&nbsp;&nbsp;&nbsp;&nbsp;with --tool=dhat.<br>\n</body></html>")
    sections = doc(page).sections
    assert sections[0].text == ("* DHAT:\n\n- DHAT was overhauled. As a result,\n"
                                "it was promoted. Run it\nwith --tool=dhat.")
