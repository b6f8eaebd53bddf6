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
