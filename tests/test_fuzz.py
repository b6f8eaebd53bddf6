"""Property-based fuzzing (hypothesis) of the document readers, the chunker, the question path,
the prompt templates, terminal output and the config loader: no traceback, no hang past
hypothesis' deadline, nothing lost.

``pytest tests/test_fuzz.py --fuzz 2000`` runs 2,000 cases per target; CI runs the defaults
below. Generated files are written to a real temporary folder and read as ``index`` reads them.
"""

from __future__ import annotations

import re
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from assistant.config import ConfigError, Settings
from assistant.extractive import extractive_prompt
from assistant.output import visible
from assistant.question import check_question
from index.chunking import Section, chunk_sections
from index.readers import SkipFile, read_document

SUFFIX = {"text": ".txt", "markdown": ".md", "rst": ".rst", "html": ".html", "code": ".py",
          "notebook": ".ipynb"}
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

# Text that looks like documents, with the characters that break parsers mixed in.
markup = st.sampled_from(["# ", "## ", "\n", "\n\n", "=====", "----", "```", ".. ", "::",
                          "<p>", "</p>", "<h1>", "<script>", "<!--", "]]>", "&amp;", "*",
                          "`", "|", "{question}", "{context}", "\x1b[31m", "\x00", "\r\n",
                          "\u202e", "\ufeff", "é", "日本", ". ", "? "])
documents = st.lists(st.one_of(st.text(max_size=40), markup), max_size=60).map("".join)


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


@given(kind=st.sampled_from(sorted(SUFFIX)), text=documents,
       encoding=st.sampled_from(["utf-8", "utf-16", "latin-1", "cp1252"]))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=5000)
def test_readers_parse_anything_or_skip_it_with_a_reason(folder, kind, text, encoding):
    data = text.encode(encoding, errors="replace")
    path = folder / f"doc{SUFFIX[kind]}"
    path.write_bytes(data)
    try:
        document = read_document(path, data, kind)
    except SkipFile as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert any(section.text.strip() for section in document.sections)


@given(data=st.binary(max_size=3000))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=5000)
def test_a_pdf_of_random_bytes_is_skipped_not_a_traceback(folder, data):
    path = folder / "doc.pdf"
    path.write_bytes(b"%PDF-1.4\n" + data)
    try:
        read_document(path, path.read_bytes(), "pdf")
    except SkipFile as exc:
        assert str(exc)


@given(text=documents, max_tokens=st.integers(2, 300), line_start=st.integers(1, 10_000))
def test_chunking_loses_no_word_and_keeps_line_numbers_in_range(text, max_tokens, line_start):
    chunks = chunk_sections([Section(text, heading="H", line_start=line_start)],
                            max_tokens=max_tokens, overlap=0)
    assert [w for c in chunks for w in c.text.split()] == text.split()
    last_line = line_start + text.count("\n")
    for chunk in chunks:
        assert line_start <= chunk.line_start <= chunk.line_end <= last_line


@given(question=st.text(max_size=300))
def test_every_question_is_asked_or_refused_in_one_line(question):
    try:
        asked = check_question(question, lambda text: len(text.split()))
    except ValueError as exc:
        assert "\n" not in str(exc)
        return
    assert asked == question.strip() and any(ch.isalnum() for ch in asked)


@given(question=st.text(min_size=1, max_size=120).filter(lambda q: any(c.isalnum() for c in q)))
@settings(deadline=5000)
def test_any_question_gets_a_recorded_turn(question, tmp_path_factory, squad_passages):
    from assistant.dialogue import DialogueManager
    from assistant.history import History
    from index.ingest import Indexer
    from index.retrieval import Retriever
    from index.store import Store
    from tests.conftest import FakeEmbedder, FakeGenerator, write_corpus

    folder = _shared_index(tmp_path_factory, squad_passages)
    history = History(folder / "history.db")
    manager = DialogueManager(retriever=Retriever(Store.open(folder / "index"), FakeEmbedder()),
                              generator=FakeGenerator(["An answer [1]."]), history=history,
                              top_k=3)
    turn = manager.ask(question)
    answer = "".join(turn)
    row = [t for t in history.turns(turn.conversation_id) if t["id"] == turn.turn_id][0]
    assert row["question"] == question.strip() and row["status"] == "complete"
    assert row["answer"] == answer
    history.close()


_INDEX: dict = {}


def _shared_index(tmp_path_factory, squad_passages) -> Path:
    if "folder" not in _INDEX:
        from index.ingest import Indexer
        from tests.conftest import FakeEmbedder, write_corpus

        folder = tmp_path_factory.mktemp("fuzz-index")
        write_corpus(folder / "docs", squad_passages)
        Indexer(folder / "index", FakeEmbedder()).run([folder / "docs"])
        _INDEX["folder"] = folder
    return _INDEX["folder"]


@given(context=documents, question=st.text(max_size=80))
def test_prompt_fields_are_filled_once(context, question):
    prompt = extractive_prompt(question, context)
    assert " ".join(context.split()) in prompt
    assert prompt.rstrip().endswith(f"Question: {question.strip()}\nAnswer:")


@given(text=st.text(), one_line=st.booleans())
def test_visible_text_has_no_control_character(text, one_line):
    shown = visible(text, one_line=one_line)
    allowed = "" if one_line else "\n\t"
    assert not any(CONTROL.match(ch) or (ch in "\n\t" and ch not in allowed) for ch in shown)
    if not CONTROL.search(text) and (not one_line or not re.search("[\n\t]", text)):
        assert shown == text  # ordinary text is untouched


setting_names = st.sampled_from(["top_k", "device", "temperature", "max_new_tokens",
                                 "rerank_k", "read_k", "fusion_alpha", "chunk_tokens",
                                 "chunk_overlap", "data_dir", "reader", "keys",
                                 "abstain_threshold", "context_tokens", "max_file_mb", "bogus"])
values = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.booleans(),
                   st.text(max_size=20), st.lists(st.integers(), max_size=3),
                   st.dictionaries(st.text(string.ascii_letters, max_size=5), st.text(max_size=5),
                                   max_size=2))


@given(config=st.dictionaries(setting_names, values, max_size=5))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_config_loader_accepts_or_refuses_in_one_line(tmp_path_factory, config):
    import tomli_w

    path = tmp_path_factory.mktemp("config") / "config.toml"
    try:
        path.write_text(tomli_w.dumps(config), encoding="utf-8")
    except (TypeError, ValueError):  # not representable in TOML (e.g. a huge integer)
        return
    try:
        loaded = Settings.load(config_path=path, env={})
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert 1 <= loaded.top_k <= 100 and loaded.temperature >= 0
