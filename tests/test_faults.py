"""Each fault of issue 11, reproduced: data loss, leaks, tracebacks and runaway work.

Runs as any user (CI runs as root, for whom chmod does not block reads): unreadable folders
are made so by injecting the ``PermissionError`` the operating system would raise.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from assistant.cli import cli, describe_error
from assistant.config import ConfigError, Settings, make_private
from assistant.extractive import extractive_prompt
from assistant.history import History, SourceRecord
from assistant.output import visible
from assistant.question import MAX_QUESTION_TOKENS, check_question
from index.chunking import Section, chunk_sections
from index.ingest import Indexer
from index.store import Store, StoreError, known_roots
from tests.conftest import FakeEmbedder, write_corpus

ROOT = Path(__file__).resolve().parent.parent


def build(tmp_path, squad_passages, n=6, embedder=None) -> tuple[Path, Path]:
    docs = tmp_path / "docs"
    write_corpus(docs / "a", squad_passages[:n // 2])
    write_corpus(docs / "b", squad_passages[n // 2:n])
    index = tmp_path / "index"
    Indexer(index, embedder or FakeEmbedder()).run([docs])
    return docs, index


def documents(index: Path) -> list[str]:
    store = Store.open(index)
    try:
        return sorted(store.documents())
    finally:
        store.close()


def live(index: Path) -> Path:
    return index / (index / "CURRENT").read_text().strip()


# ---- 1. an unreadable folder is not a deleted folder ----------------------------------------
def test_unreadable_folder_keeps_its_documents(tmp_path, squad_passages, monkeypatch):
    docs, index = build(tmp_path, squad_passages)
    before = documents(index)
    blocked = str(docs / "b")
    real_scandir = os.scandir

    def scandir(path="."):
        if not isinstance(path, int) and os.fspath(path) == blocked:
            raise PermissionError(errno.EACCES, "Permission denied", blocked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = Indexer(index, FakeEmbedder()).run([docs])
    assert documents(index) == before and report.removed == 0 and report.kept == 3
    assert report.unreachable == [(blocked, "cannot read folder (Permission denied)")]
    monkeypatch.undo()
    (docs / "b" / f"{squad_passages[3]['_id']}.md").unlink()  # readable again, one file gone
    report = Indexer(index, FakeEmbedder()).run([docs])
    assert report.removed == 1 and len(documents(index)) == len(before) - 1


def test_empty_mount_point_keeps_its_documents(tmp_path, squad_passages):
    docs, index = build(tmp_path, squad_passages)
    share = tmp_path / "share"
    write_corpus(share, squad_passages[10:12])
    Indexer(index, FakeEmbedder()).run([share])
    for path in share.iterdir():  # the share is "unmounted": an empty folder is left
        path.unlink()
    report = Indexer(index, FakeEmbedder()).run([])
    assert report.removed == 0 and report.kept == 2
    assert (str(share), "folder is empty or not mounted") in report.unreachable
    assert len(documents(index)) == 8


# ---- 2, 3. a damaged index is never cleaned, and reading never writes ------------------------
@pytest.mark.parametrize("pointer", ["", "gen-00000000000000000001", "../../etc"])
def test_damaged_current_deletes_nothing_and_creates_nothing(tmp_path, squad_passages, pointer):
    docs, index = build(tmp_path, squad_passages)
    generation = live(index)
    (index / "CURRENT").write_text(pointer)
    with pytest.raises(StoreError, match="damaged"):
        Store.open(index)
    with pytest.raises(StoreError, match="damaged"):
        Indexer(index, FakeEmbedder()).run([docs])
    assert (generation / "passages.db").is_file() and (generation / "passages.faiss").is_file()
    assert not (index / "passages.db").exists()
    assert known_roots(index) == []
    (index / "CURRENT").write_text(generation.name)  # pointing it back recovers everything
    assert len(documents(index)) == 6


def test_open_with_the_database_missing_creates_no_file(tmp_path, squad_passages):
    _, index = build(tmp_path, squad_passages)
    db = live(index) / "passages.db"
    db.unlink()
    with pytest.raises(StoreError):
        Store.open(index)
    assert not db.exists()


# ---- 4. atomic writes ----------------------------------------------------------------------
def test_finish_turn_is_all_or_nothing(tmp_path):
    history = History(tmp_path / "history.db")
    cid = history.new_conversation()
    turn = history.start_turn(cid, "Who won?")
    bad = SourceRecord(number=1, passage_id=object(), path="p", title="t", heading="",  # type: ignore[arg-type]
                       page=None, line_start=1, line_end=1, score=0.5, text="x")
    with pytest.raises(sqlite3.Error):
        history.finish_turn(turn, answer="The Broncos.", sources=[bad])
    row = history.turns(cid)[0]
    assert row["status"] == "pending" and row["answer"] == "" and row["sources"] == []


def test_delete_is_all_or_nothing(tmp_path, monkeypatch):
    history = History(tmp_path / "history.db")
    cid = history.new_conversation()
    history.finish_turn(history.start_turn(cid, "q"), answer="a")
    history.db.execute("CREATE TRIGGER no_delete BEFORE DELETE ON conversations "
                       "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
    with pytest.raises(sqlite3.Error):
        history.delete(cid)
    assert len(history.turns(cid)) == 1  # the turns were not deleted without their conversation


def test_publish_keeps_the_generation_readers_may_have_open(tmp_path, squad_passages):
    docs, index = build(tmp_path, squad_passages)
    first = live(index)
    (docs / "a" / "new.md").write_text("# New\n\nA new document about Denver.\n")
    Indexer(index, FakeEmbedder()).run([])
    second = live(index)
    assert second != first and first.is_dir()  # a reader may still have it open
    (docs / "a" / "new.md").write_text("# New\n\nChanged again.\n")
    Indexer(index, FakeEmbedder()).run([])
    names = sorted(p.name for p in index.glob("gen-*"))
    # kept: the one live when the run began, its last checkpoint, the new live one
    assert second.name in names and live(index).name in names and first.name not in names
    assert len(names) <= 3


def test_disk_full_while_publishing_leaves_the_old_index_live(tmp_path, squad_passages,
                                                              monkeypatch):
    docs, index = build(tmp_path, squad_passages)
    generation = live(index)
    before = sorted(p.name for p in index.glob("gen-*"))
    (docs / "a" / "new.md").write_text("# New\n\nA new document.\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(faiss, "write_index", full)
    with pytest.raises(OSError):
        Indexer(index, FakeEmbedder()).run([])
    assert live(index) == generation and len(documents(index)) == 6
    assert sorted(p.name for p in index.glob("gen-*")) == before  # nothing of the run left
    assert "disk is full" in describe_error(OSError(errno.ENOSPC, "No space left on device"))


# ---- 6. history ids ------------------------------------------------------------------------
def test_history_delete_takes_literal_prefixes_only(tmp_path):
    runner = CliRunner()
    env = {"ASSISTANT_DATA_DIR": str(tmp_path), "ASSISTANT_CONFIG": str(tmp_path / "none.toml")}
    history = History(tmp_path / "history.db")
    kept = history.new_conversation("keep me")
    for prefix in ("", "%", "_", "   "):
        result = runner.invoke(cli, ["history", "delete", prefix, "--yes"], env=env)
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.output.splitlines()[-1].startswith("error: ")
    assert history.conversation(kept)["title"] == "keep me"
    result = runner.invoke(cli, ["history", "delete", kept[:4], "--yes"], env=env)
    assert result.exit_code == 0
    with pytest.raises(KeyError):
        history.conversation(kept)


# ---- 7. private files ----------------------------------------------------------------------
def test_data_dir_and_files_become_private_with_a_notice(tmp_path, squad_passages):
    data = tmp_path / "data"
    _, index = build(data, squad_passages)
    History(data / "history.db").close()
    os.chmod(data, 0o755)
    for path in [data / "history.db", *index.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    old_umask = os.umask(0o022)
    try:
        result = CliRunner().invoke(cli, ["info"], env={
            "ASSISTANT_DATA_DIR": str(data), "ASSISTANT_CONFIG": str(tmp_path / "none.toml")})
        created = tmp_path / "made-after"
        created.write_text("x")
        created_mode = stat.S_IMODE(created.stat().st_mode)
    finally:
        os.umask(old_umask)
    assert result.exit_code == 0 and "readable by you only" in result.output
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "history.db").stat().st_mode) == 0o600
    for path in index.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    assert created_mode == 0o600
    settings = Settings.load(config_path=None, env={"ASSISTANT_CONFIG": str(tmp_path / "n")},
                             overrides={"data_dir": data})
    old_umask = os.umask(0o022)
    try:
        assert make_private(settings) == []  # nothing to say the second time
    finally:
        os.umask(old_umask)


# ---- 8. terminal escapes -------------------------------------------------------------------
def test_visible_shows_control_characters_instead_of_obeying_them():
    hostile = "ok\x1bc\x1b]52;c;ZXZpbA==\x07\x1b[31mred\r\u202eevil\x9b\x00"
    shown = visible(hostile)
    assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in shown)
    assert "\\x1bc" in shown and "\\x07" in shown and "\\u202e" in shown
    assert visible("line one\nline two\ttab") == "line one\nline two\ttab"
    assert visible("file\nname\t.md", one_line=True) == "file\\nname\\t.md"


def test_history_show_and_list_escape_document_text(tmp_path):
    history = History(tmp_path / "history.db")
    cid = history.new_conversation("title\x1b[2J")
    turn = history.start_turn(cid, "q\x1b]0;pwned\x07?")
    history.finish_turn(turn, answer="answer \x1bc [1]", sources=[SourceRecord(
        1, 1, "/docs/evil\n[9] forged.md", "t", "head\x1b[31m", None, 1, 2, 0.5, "text\x07")])
    env = {"ASSISTANT_DATA_DIR": str(tmp_path), "ASSISTANT_CONFIG": str(tmp_path / "none.toml")}
    for command in (["history", "list"], ["history", "show"], ["history", "export"]):
        result = CliRunner().invoke(cli, command, env=env)
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output, command
    shown = CliRunner().invoke(cli, ["history", "show"], env=env).output
    assert "evil\\n[9] forged.md" in shown


# ---- 9. prompt fields filled in one pass ---------------------------------------------------
def test_a_passage_holding_a_template_field_stays_as_it_is():
    prompt = extractive_prompt("Who won?", "The {question} field and {context} here.")
    assert "The {question} field and {context} here." in prompt
    assert prompt.rstrip().endswith("Question: Who won?\nAnswer:")


# ---- 10. one error path --------------------------------------------------------------------
def run_cli(*args, env=None, timeout=120):
    environment = {**os.environ, "ASSISTANT_DEBUG": "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "assistant", *args], capture_output=True,
                          text=True, env=environment, timeout=timeout, cwd=ROOT)


def test_unusable_data_dir_is_one_line_not_a_traceback(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {"ASSISTANT_DATA_DIR": str(blocker / "data"), "ASSISTANT_CONFIG": str(tmp_path / "n")}
    result = run_cli("history", "list", env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Not a directory" in result.stderr
    debug = run_cli("--debug", "history", "list", env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


@pytest.mark.parametrize("exc, words", [
    (sqlite3.OperationalError("attempt to write a readonly database"), "permissions"),
    (PermissionError(errno.EACCES, "Permission denied", "/x/history.db"), "permission denied"),
    (MemoryError(), "out of memory"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "out of memory"),
])
def test_expected_failures_are_described_in_one_line(exc, words):
    text = describe_error(exc)
    assert words in text and "\n" not in text


# ---- 11. questions -------------------------------------------------------------------------
@pytest.mark.parametrize("question, message", [
    ("", "empty"), ("   ", "empty"), ('"', "no words"), ("?!", "no words"),
    ("why " * 5000, "too long"),
])
def test_bad_questions_get_one_line_before_any_model_loads(tmp_path, question, message):
    env = {"ASSISTANT_DATA_DIR": str(tmp_path), "ASSISTANT_CONFIG": str(tmp_path / "none.toml")}
    result = CliRunner().invoke(cli, ["ask", question], env=env)
    assert result.exit_code == 1 and message in result.output
    assert not (tmp_path / "history.db").exists() and not (tmp_path / "index").exists()


def test_question_length_is_measured_in_tokens():
    words = "word " * (MAX_QUESTION_TOKENS + 1)
    assert check_question(words) == words.strip()  # within the character bound
    with pytest.raises(ValueError, match="too long"):
        check_question(words, lambda text: len(text.split()))


# ---- 12. settings --------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, message", [
    ("top_k", "1000000000", "top_k"), ("device", "quantum", "device"),
    ("temperature", "-1", "temperature"), ("temperature", "nan", "finite"),
    ("max_new_tokens", "100000000", "max_new_tokens"), ("rerank_k", "100000", "rerank_k"),
])
def test_settings_out_of_bounds_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message):
        Settings.load(config_path=None, env={f"ASSISTANT_{key.upper()}": value,
                                             "ASSISTANT_CONFIG": "/nonexistent.toml"})


def test_config_naming_a_folder_says_so(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        Settings.load(config_path=tmp_path)


def test_a_gpu_this_machine_lacks_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    env = {"ASSISTANT_DATA_DIR": str(tmp_path), "ASSISTANT_CONFIG": str(tmp_path / "none.toml"),
           "ASSISTANT_DEVICE": "cuda:7"}
    result = CliRunner().invoke(cli, ["ask", "Who won?"], env=env)
    assert result.exit_code == 1 and "no CUDA GPU" in result.output


# ---- 13. chunking is linear ----------------------------------------------------------------
def test_line_numbers_stay_right_deep_into_a_long_file():
    lines = [f"Line {i} says something." if i % 7 else "" for i in range(1, 20001)]
    text = "\n".join(lines)
    chunks = chunk_sections([Section(text)], max_tokens=60, overlap=0)
    for chunk in chunks[::50]:
        first = chunk.text.split("\n")[0]
        assert lines[chunk.line_start - 1] == first
        assert lines[chunk.line_end - 1] == chunk.text.split("\n")[-1]
    one = "One long paragraph. " * 20000 + "\nEnd line."
    tail = chunk_sections([Section(one, line_start=5)], max_tokens=50, overlap=10)[-1]
    assert tail.line_end == 6


# ---- 14. rebuild and wrong FAISS files -----------------------------------------------------
def test_rebuild_with_no_paths_rereads_every_known_root(tmp_path, squad_passages):
    docs, index = build(tmp_path, squad_passages)
    extra = tmp_path / "extra"
    write_corpus(extra, squad_passages[20:22])
    Indexer(index, FakeEmbedder()).run([extra])
    (live(index) / "passages.faiss").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="corrupt"):
        Store.open(index)
    assert known_roots(index) == sorted([str(docs.resolve()), str(extra.resolve())])
    report = Indexer(index, FakeEmbedder()).run([], rebuild=True)
    assert report.added == 8 and len(documents(index)) == 8
    other = tmp_path / "other"
    write_corpus(other, squad_passages[30:31])
    Indexer(index, FakeEmbedder()).run([other], rebuild=True)
    assert len(documents(index)) == 9  # the given path is added, the others are kept


def test_info_lists_folders_of_an_index_with_a_corrupt_faiss_file(tmp_path, squad_passages):
    data = tmp_path / "data"
    docs, index = build(data, squad_passages)
    (live(index) / "passages.faiss").write_bytes(b"\x00" * 100)
    result = CliRunner().invoke(cli, ["info"], env={
        "ASSISTANT_DATA_DIR": str(data), "ASSISTANT_CONFIG": str(tmp_path / "none.toml")})
    assert result.exit_code == 1 and str(docs.resolve()) in result.output
    assert "error: FAISS index" in result.output


@pytest.mark.parametrize("wrong", ["flat", "other ids", "garbage vectors"])
def test_a_valid_but_wrong_faiss_file_is_detected(tmp_path, squad_passages, wrong):
    _, index = build(tmp_path, squad_passages)
    path = live(index) / "passages.faiss"
    good = faiss.read_index(str(path))
    n, d = good.ntotal, good.d
    vectors = np.stack([good.index.reconstruct(i) for i in range(n)])
    if wrong == "flat":
        bad = faiss.IndexFlatIP(d)
        bad.add(vectors)
    else:
        bad = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        ids = faiss.vector_to_array(good.id_map)
        if wrong == "other ids":
            bad.add_with_ids(vectors, ids + 1000)
        else:
            noise = np.random.default_rng(0).normal(size=(n, d)).astype("float32") * 3
            bad.add_with_ids(noise, ids)
    faiss.write_index(bad, str(path))
    with pytest.raises(StoreError, match="inconsistent"):
        Store.open(index)


# ---- 15. pad token id 0 --------------------------------------------------------------------
def test_pad_token_id_zero_is_a_pad_token(tmp_path, tiny_tokenizer):
    from assistant.generation import TransformersGenerator
    from tests.conftest import tiny_model

    model = tiny_model("gemma3", len(tiny_tokenizer))
    model.save_pretrained(tmp_path / "tiny")
    tiny_tokenizer.save_pretrained(tmp_path / "tiny")
    generator = TransformersGenerator("tiny", str(tmp_path / "tiny"), device="cpu")
    assert generator.tokenizer.pad_token_id == 0 and generator.pad_id == 0
