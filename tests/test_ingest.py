import os
from pathlib import Path

import pytest

from index.ingest import Indexer
from index.retrieval import Retriever
from index.store import Store
from tests.pdfs import write_pdf


def make_indexer(tmp_path, embedder, **kw):
    return Indexer(tmp_path / "index", embedder, chunk_tokens=200, chunk_overlap=40, **kw)


def test_second_run_reembeds_nothing_and_changes_are_tracked(tmp_path, corpus_dir, fake_embedder):
    indexer = make_indexer(tmp_path, fake_embedder)
    first = indexer.run([corpus_dir])
    assert first.added == 36 and first.passages_added >= 36 and not first.skipped
    embedded = len(fake_embedder.embedded)

    second = indexer.run([corpus_dir])
    assert (second.added, second.updated, second.unchanged) == (0, 0, 36)
    assert len(fake_embedder.embedded) == embedded  # nothing re-embedded

    changed = corpus_dir / "squad-00-001.md"
    changed.write_text("# Super Bowl 50\n\nThe halftime show was headlined by Coldplay.\n")
    touched = corpus_dir / "squad-00-002.md"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    (corpus_dir / "squad-04-000.md").unlink()
    third = indexer.run()  # no paths: re-scan the known roots
    assert (third.added, third.updated, third.removed, third.unchanged) == (0, 1, 1, 34)
    assert fake_embedder.embedded[embedded:] == [
        "Super Bowl 50\nThe halftime show was headlined by Coldplay."]

    store = Store.open(tmp_path / "index")
    assert store.stats()["documents"] == 35
    hits = Retriever(store, fake_embedder).search("halftime Coldplay", k=1).hits
    assert hits[0].passage.path == str(changed)


def test_bad_files_are_skipped_and_reported_and_nothing_is_lost(tmp_path, corpus_dir, fake_embedder,
                                                                  monkeypatch):
    indexer = make_indexer(tmp_path, fake_embedder, max_file_bytes=200_000)
    indexer.run([corpus_dir])
    bad = corpus_dir / "bad"
    bad.mkdir()
    (bad / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (bad / "empty.md").write_text("")
    latin = "Les Normands étaient un peuple qui a donné son nom à la Normandie."
    (bad / "latin1.txt").write_bytes(latin.encode("latin-1"))
    (bad / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\ngarbage")
    write_pdf(bad / "good.pdf", [["The Normans were a people of Normandy."]])
    (bad / "huge.txt").write_text("word " * 60_000)
    unreadable = bad / "secret.md"
    unreadable.write_text("# Secret\n\nYou cannot read this.")
    unreadable.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make this one file fail as it would for a user
        real = Path.read_bytes

        def read_bytes(self):
            if self == unreadable:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    (bad / "photo.png").write_bytes(b"\x89PNG")

    report = indexer.run([corpus_dir])
    reasons = {Path(p).name: r for p, r in report.skipped}
    assert set(reasons) == {"image.txt", "empty.md", "broken.pdf", "huge.txt", "secret.md"}
    assert reasons["image.txt"] == "binary content"
    assert reasons["empty.md"] == "empty"
    assert "broken PDF" in reasons["broken.pdf"]
    assert reasons["huge.txt"].startswith("too large")
    assert reasons["secret.md"].startswith("cannot read")
    assert report.unsupported[".png"] == 1
    assert (report.added, report.unchanged) == (2, 36)

    store = Store.open(tmp_path / "index")
    assert store.stats()["documents"] == 38  # everything indexed before is still there
    retriever = Retriever(store, fake_embedder)
    latin_hit = retriever.search("Normands peuple Normandie", k=1, mode="bm25").hits[0]
    assert latin_hit.passage.text == latin
    assert retriever.search("Normans Normandy people", k=1, mode="bm25").hits[0].passage.page == 1


def test_missing_path_is_reported(tmp_path, fake_embedder):
    report = make_indexer(tmp_path, fake_embedder).run([tmp_path / "nope"])
    assert report.skipped == [(str(tmp_path / "nope"), "no such file or folder")]


def test_no_roots_at_all_is_an_error(tmp_path, fake_embedder):
    with pytest.raises(ValueError, match="nothing to index"):
        make_indexer(tmp_path, fake_embedder).run([])


def indexed_names(tmp_path) -> set[str]:
    store = Store.open(tmp_path / "index")
    try:
        return {str(Path(p).relative_to(tmp_path / "repo")) for p in store.documents()}
    finally:
        store.close()


def write(path: Path, text: str = "Some words about the project.\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_overlapping_roots_index_each_file_once(tmp_path, fake_embedder):
    repo = tmp_path / "repo"
    write(repo / "a.md", "About a.\n")
    write(repo / "sub" / "b.md", "About b.\n")
    report = make_indexer(tmp_path, fake_embedder).run([repo, repo / "sub", repo / "a.md"])
    assert report.added == 2 and indexed_names(tmp_path) == {"a.md", "sub/b.md"}


def test_gitignore_and_ignore_files_are_honoured_as_git_does(tmp_path, fake_embedder):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    write(repo / ".gitignore", "build/\n*.log\n!keep.log\n")
    write(repo / "docs" / ".ignore", "drafts/\nsecret.md\n")
    write(repo / "docs" / ".gitignore", "!important.log\n")
    for name in ("README.md", "build/out.md", "x.log", "keep.log", "docs/guide.md",
                 "docs/secret.md", "docs/drafts/wip.md", "docs/important.log"):
        write(repo / name)
    report = make_indexer(tmp_path, fake_embedder).run([repo])
    assert indexed_names(tmp_path) == {"README.md", "keep.log", "docs/guide.md",
                                       "docs/important.log"}
    assert report.ignored["ignore files"] == 4  # build/, x.log, docs/drafts/, docs/secret.md
    # A sub-folder of the repository given alone still follows the repository's files.
    (tmp_path / "index").rename(tmp_path / "old-index")
    make_indexer(tmp_path, fake_embedder).run([repo / "docs"])
    assert indexed_names(tmp_path) == {"docs/guide.md", "docs/important.log"}


def test_ignore_files_outside_a_repository_do_not_reach_in(tmp_path, fake_embedder):
    write(tmp_path / ".gitignore", "*.md\n")  # e.g. a stray file in a parent folder
    write(tmp_path / "repo" / "notes.md")
    make_indexer(tmp_path, fake_embedder).run([tmp_path / "repo"])
    assert indexed_names(tmp_path) == {"notes.md"}


def test_generated_files_are_skipped_with_a_reason(tmp_path, fake_embedder):
    repo = tmp_path / "repo"
    html = "<html><head><title>{0}</title></head><body><h1>{0}</h1><p>About {0}.</p></body></html>"
    write(repo / "build" / "index.html", html.format("Index"))
    write(repo / "build" / "tutorial.html", html.format("Tutorial"))
    write(repo / "build" / "searchindex.js", "Search.setIndex({docnames:['index']})")
    write(repo / "build" / "_sources" / "tutorial.rst.txt", "Tutorial\n========\n\nAbout it.\n")
    write(repo / "build" / "_static" / "doctools.js", "function f() { return 1; }\n")
    write(repo / "package-lock.json", '{"lockfileVersion": 3}')
    write(repo / "app.min.js", "var a=1;")
    write(repo / "bundle.js", "var x=1;" * 1000)  # one line of 8,000 characters
    write(repo / "app.js", "function add(a, b) {\n  return a + b;\n}\n")
    report = make_indexer(tmp_path, fake_embedder).run([repo])
    assert indexed_names(tmp_path) == {"build/index.html", "build/tutorial.html", "app.js"}
    reasons = {str(Path(p).relative_to(repo)): r for p, r in report.skipped}
    assert reasons["build/searchindex.js"] == "a search index (generated)"
    assert "Sphinx's copies" in reasons["build/_sources"]
    assert "theme files" in reasons["build/_static"]
    assert reasons["package-lock.json"] == "a lock file (generated)"
    assert reasons["app.min.js"] == "minified"
    assert reasons["bundle.js"] == "generated or minified (a line of 8,000 characters)"


def test_a_folder_named_sources_outside_a_sphinx_build_is_indexed(tmp_path, fake_embedder):
    write(tmp_path / "repo" / "_sources" / "notes.md")
    make_indexer(tmp_path, fake_embedder).run([tmp_path / "repo"])
    assert indexed_names(tmp_path) == {"_sources/notes.md"}


def test_identical_files_are_stored_once_with_every_path_known(tmp_path, fake_embedder):
    repo = tmp_path / "repo"
    text = "# Tuples\n\nTuples are immutable sequences, lists are mutable.\n"
    write(repo / "a" / "tuples.md", text)
    write(repo / "b" / "tuples.md", text)
    write(repo / "c" / "copy.md", text)
    write(repo / "other.md", "# Other\n\nSomething else entirely.\n")
    indexer = make_indexer(tmp_path, fake_embedder)
    report = indexer.run([repo])
    original = str(repo / "a" / "tuples.md")
    assert report.added == 2 and sorted(report.duplicates) == [
        (str(repo / "b" / "tuples.md"), original), (str(repo / "c" / "copy.md"), original)]
    store = Store.open(tmp_path / "index")
    assert store.stats()["passages"] == 2
    assert store.duplicates() == {original: [str(repo / "b" / "tuples.md"),
                                             str(repo / "c" / "copy.md")]}
    store.close()
    embedded = len(fake_embedder.embedded)
    # The original is deleted: a copy takes its passages over, nothing is embedded again.
    (repo / "a" / "tuples.md").unlink()
    report = indexer.run([repo])
    assert report.removed == 1 and report.passages_removed == 0
    assert len(fake_embedder.embedded) == embedded
    store = Store.open(tmp_path / "index")
    hit = Retriever(store, fake_embedder).search("are tuples immutable", k=1, mode="bm25").hits[0]
    assert hit.passage.path == str(repo / "b" / "tuples.md")
    assert store.duplicates() == {str(repo / "b" / "tuples.md"): [str(repo / "c" / "copy.md")]}
    store.close()
    # The new original changes: the remaining copy becomes the document, the change is added.
    write(repo / "b" / "tuples.md", "# Tuples\n\nChanged: tuples are still immutable.\n")
    indexer.run([repo])
    store = Store.open(tmp_path / "index")
    assert store.duplicates() == {} and store.stats()["documents"] == 3
    assert store.stats()["passages"] == 3
    store.close()


def test_a_copy_of_a_file_changed_in_the_same_run_is_indexed_in_full(tmp_path, fake_embedder):
    repo = tmp_path / "repo"
    write(repo / "a.md", "# A\n\nThe first version.\n")
    indexer = make_indexer(tmp_path, fake_embedder)
    indexer.run([repo])
    write(repo / "a.md", "# A\n\nThe second version, longer.\n")
    write(repo / "b.md", "# A\n\nThe first version.\n")  # a copy of what a.md was
    report = indexer.run([repo])
    store = Store.open(tmp_path / "index")
    try:
        assert store.stats()["documents"] == 2 and store.stats()["passages"] == 2
        assert store.duplicates() == {} and report.duplicates == []
        assert store.vectors.ntotal == 2
    finally:
        store.close()


# ---- two phases: searchable first, embedded after -------------------------------------------
def test_text_is_searchable_by_bm25_before_it_is_embedded(tmp_path, fake_embedder):
    docs = tmp_path / "docs"
    for i in range(30):
        write(docs / f"note{i:02d}.md", f"# Note {i}\n\nOrdinary words about item {i}.\n")
    write(docs / "rare.md", "# Rare\n\nThe quokka lives on Rottnest island.\n")
    seen = {}

    def first_batch() -> None:  # called before each embedding batch: look at what is live
        if seen:
            return
        store = Store.open(tmp_path / "index")
        seen["stats"] = store.stats()
        retriever = Retriever(store, fake_embedder)
        seen["convex"] = [h.passage.path for h in retriever.search("quokka", k=3).hits]
        seen["dense"] = [h.passage.path for h in retriever.search("quokka", k=3, mode="dense").hits]
        store.close()

    indexer = Indexer(tmp_path / "index", fake_embedder, checkpoint_seconds=0.0, batch_size=4,
                      wait_turn=first_batch)
    report = indexer.run([docs])
    assert seen["stats"]["passages"] == 31 and seen["stats"]["embedded"] == 0
    assert seen["convex"][0].endswith("rare.md")  # found by BM25 while it has no vector
    assert seen["dense"] == []
    assert report.embedded == 31 and report.checkpoints >= 2
    assert report.searchable_seconds is not None and report.searchable_seconds <= report.seconds
    store = Store.open(tmp_path / "index")
    assert store.stats()["embedded"] == 31 and store.pending_count() == 0
    store.close()
    passages = [t for t in fake_embedder.embedded if t != "quokka"]  # not the queries
    assert len(passages) == len(set(passages)) == 31  # each passage embedded exactly once


def test_a_run_stopped_while_embedding_goes_on_where_it_stopped(tmp_path, fake_embedder):
    docs = tmp_path / "docs"
    for i in range(20):
        write(docs / f"n{i:02d}.md", f"# N {i}\n\nWords number {i}.\n")
    calls = []

    def stop_after_two_batches() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Indexer(tmp_path / "index", fake_embedder, checkpoint_seconds=0.0, batch_size=5,
                wait_turn=stop_after_two_batches).run([docs])
    store = Store.open(tmp_path / "index")
    embedded, passages = store.stats()["embedded"], store.stats()["passages"]
    store.close()
    assert passages == 20 and embedded == 10  # both batches were published
    again = type(fake_embedder)()
    report = Indexer(tmp_path / "index", again).run([docs])
    assert report.embedded == 10 and report.added == 0 and len(again.embedded) == 10
    assert not set(again.embedded) & set(fake_embedder.embedded)


def test_another_embedding_runtime_reembeds_every_passage(tmp_path, corpus_dir, fake_embedder):
    Indexer(tmp_path / "index", fake_embedder).run([corpus_dir])
    passages = Store.open(tmp_path / "index").stats()["passages"]
    other = type(fake_embedder)()
    other.runtime = "onnx-int8"
    report = Indexer(tmp_path / "index", other).run([corpus_dir])
    assert report.reembedded and report.embedded == passages and report.added == 0
    store = Store.open(tmp_path / "index")
    assert store.meta()["embedding_runtime"] == "onnx-int8"
    assert store.stats()["embedded"] == passages
    store.close()


def test_files_read_by_older_reading_rules_are_read_again(tmp_path, fake_embedder,
                                                          monkeypatch):
    """An index made before a kind's reading rules changed re-reads that kind's files, and only
    those, on the next run, even though the files did not change; so does an index made before
    the version was kept (no ``reader`` column: version 1)."""
    import sqlite3

    from index import readers

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "page.html").write_text(
        "<html><body><table summary='Navigation header'><tr><th>The Manual</th></tr></table>"
        "<h1>Halftime</h1><p>The halftime show was headlined by Coldplay.</p></body></html>")
    (folder / "notes.md").write_text("# Notes\n\nBeyonce sang at the halftime show.\n")
    monkeypatch.setattr(readers, "READER_VERSIONS", {"html": 1})
    indexer = make_indexer(tmp_path, fake_embedder)
    indexer.run([folder])
    index = tmp_path / "index"
    live = index / (index / "CURRENT").read_text().strip() / "passages.db"
    with sqlite3.connect(live) as db:  # as an index built before the column existed
        db.execute("ALTER TABLE documents DROP COLUMN reader")
    assert indexer.run([folder]).unchanged == 2  # the same rules: nothing read again

    monkeypatch.setattr(readers, "READER_VERSIONS", {"html": 2})
    report = indexer.run([folder])
    assert (report.updated, report.unchanged, report.reread) == (1, 1, {"html": 1})
    assert fake_embedder.embedded[-1] == "Halftime\nThe halftime show was headlined by Coldplay."
    assert indexer.run([folder]).unchanged == 2
    store = Store.open(index)
    assert {Path(p).name: row["reader"] or 1 for p, row in store.documents().items()} == {
        "page.html": 2, "notes.md": 1}
    store.close()


def test_an_indexed_file_that_now_reads_as_nothing_loses_its_passages(tmp_path, fake_embedder):
    """A title page all notices by today's rules, a file emptied or made binary, or grown
    past the size limit: its old passages no longer say what the file says, so they go; the
    file is reported skipped."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "keep.md").write_text("# Keep\n\nThe halftime show was headlined by Coldplay.\n")
    emptied = folder / "emptied.md"
    emptied.write_text("# Old\n\nBeyonce sang at the halftime show.\n")
    grown = folder / "grown.md"
    grown.write_text("# Grown\n\nLady Gaga sang the national anthem.\n")
    indexer = make_indexer(tmp_path, fake_embedder, max_file_bytes=10_000)
    indexer.run([folder])
    emptied.write_text("")
    grown.write_text("# Grown\n\n" + "A much longer page. " * 1000)
    report = indexer.run([folder])
    assert sorted(report.skipped) == [(str(emptied), "empty"),
                                      (str(grown), "too large (0.0 MiB > 0 MiB)")]
    assert (report.removed, report.passages_removed, report.unchanged) == (2, 2, 1)
    store = Store.open(tmp_path / "index")
    assert [Path(p).name for p in store.documents()] == ["keep.md"]
    retriever = Retriever(store, fake_embedder)
    assert retriever.search("Beyonce", k=1, mode="bm25").hits == []
    assert retriever.search("Gaga anthem", k=1, mode="bm25").hits == []
    store.close()
    assert sorted(indexer.run([folder]).skipped) == sorted(report.skipped)  # every run after


def test_embedding_waits_while_another_process_is_answering(tmp_path, fake_embedder):
    import subprocess
    import sys
    import threading
    import time

    from index.turns import wait_for_answers

    docs = tmp_path / "docs"
    write(docs / "a.md", "# A\n\nSome words.\n")
    index_dir, locks = tmp_path / "index", tmp_path / "locks"
    answering = subprocess.Popen(  # another process, answering until its stdin closes
        [sys.executable, "-c", "import sys; from index.turns import answering\n"
         f"with answering({str(locks)!r}):\n print('holding', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parent.parent)
    assert answering.stdout.readline().strip() == "holding"
    indexer = Indexer(index_dir, fake_embedder,
                      wait_turn=lambda: wait_for_answers(locks, poll=0.02))
    worker = threading.Thread(target=indexer.run, args=([docs],))
    worker.start()
    time.sleep(0.5)
    assert fake_embedder.embedded == [] and worker.is_alive()  # paused, not embedding
    store = Store.open(index_dir)  # but the text is already published
    assert store.stats()["passages"] == 1
    store.close()
    answering.stdin.close()
    answering.wait(10)
    worker.join(timeout=30)
    assert not worker.is_alive() and len(fake_embedder.embedded) == 1


def test_a_process_that_is_answering_never_waits_for_itself(tmp_path, fake_embedder):
    """`ask` with no index yet holds the answering lock and indexes the bundled corpus first:
    its own embedding must not wait for its own answer."""
    import threading

    from index.turns import answering, wait_for_answers

    docs = tmp_path / "docs"
    write(docs / "a.md", "# A\n\nSome words.\n")
    locks = tmp_path / "locks"
    indexer = Indexer(tmp_path / "index", fake_embedder,
                      wait_turn=lambda: wait_for_answers(locks, poll=0.02, most=30))
    with answering(locks):
        worker = threading.Thread(target=indexer.run, args=([docs],))
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive() and len(fake_embedder.embedded) == 1
