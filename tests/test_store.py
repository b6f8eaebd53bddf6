import sqlite3

import numpy as np
import pytest

from index.chunking import Chunk
from index.store import Store, StoreError, _fts_query


def chunk(text):
    return Chunk(text=text, heading="H", page=None, line_start=1, line_end=2, n_tokens=3)


def add(store, fake_embedder, path, texts):
    vectors = fake_embedder.embed(texts)
    return store.add_document(path=path, root="/r", size=1, mtime_ns=1, sha256="x", title="T",
                              kind="text", chunks=[chunk(t) for t in texts], vectors=vectors)


def test_faiss_ids_are_passage_ids_and_both_searches_work(tmp_path, fake_embedder, squad_passages):
    texts = [p["text"] for p in squad_passages[:5]]
    with Store.update(tmp_path, embedding_model="fake-bow", dim=256) as store:
        add(store, fake_embedder, "/r/a.txt", texts)
    store = Store.open(tmp_path, embedding_model="fake-bow")
    assert store.stats()["passages"] == 5 == store.vectors.ntotal
    query = fake_embedder.embed([texts[3]])[0]
    (best_id, cosine), *_ = store.dense_search(query, 3)
    assert store.passages([best_id])[0].text == texts[3]
    assert cosine == pytest.approx(1.0, abs=1e-5)
    bm25 = store.bm25_search("Levi's Stadium Santa Clara", 5)
    assert "Levi's Stadium" in store.passages([bm25[0][0]])[0].text


def test_absent_words_are_those_no_passage_holds(tmp_path, fake_embedder):
    texts = ["Tuples are immutable sequences.", "Levi's Stadium is in Santa Clara.",
             "The __repr__ method returns the official string."]
    with Store.update(tmp_path, embedding_model="fake-bow", dim=256) as store:
        add(store, fake_embedder, "/r/a.txt", texts)
    store = Store.open(tmp_path, embedding_model="fake-bow")
    # stemmed ("tuple"), a word's beginning ("Lev"), any case, an identifier's word part
    assert store.absent_words(["tuple", "Lev", "SANTA", "__repr__", "stadiums"]) == []
    assert store.absent_words(["PostgreSQL", "Clara", "UDP", '"', "__"]) == ["PostgreSQL", "UDP"]


def test_word_passages_are_bm25_document_frequencies(tmp_path, fake_embedder, monkeypatch):
    texts = ["Tuples are immutable sequences.", "A tuple packs values.",
             "Lists are mutable sequences.", "Levi's Stadium is in Santa Clara."]
    with Store.update(tmp_path, embedding_model="fake-bow", dim=256) as store:
        add(store, fake_embedder, "/r/a.txt", texts)
    store = Store.open(tmp_path, embedding_model="fake-bow")
    counts, total = store.word_passages(["tuples", "Sequences", "PostgreSQL", "levi", "?"])
    # stemmed as BM25 stems ("tuples" ~ "tuple"), any case, whole words only ("levi" is
    # Levi's word; no prefix match), words without letters or digits left out
    assert counts == {"tuples": 2, "Sequences": 2, "PostgreSQL": 0, "levi": 1} and total == 4
    monkeypatch.setattr(Store, "FREQUENCY_CAP", 1)
    assert store.word_passages(["tuple"])[0] == {"tuple": 1}


def test_bm25_leaves_out_function_words_unless_quoted(tmp_path, fake_embedder):
    texts = ['The operators "is" and "is not" test identity; x is y is true.',
             "An operator is a symbol."]
    with Store.update(tmp_path, embedding_model="fake-bow", dim=256) as store:
        add(store, fake_embedder, "/r/a.txt", texts)
    store = Store.open(tmp_path, embedding_model="fake-bow")
    assert store.bm25_search("is", 5)  # nothing else to search for: kept
    plain = store.bm25_search("what is an operator", 5)
    quoted = store.bm25_search('what is the "is" operator', 5)
    ids = [i for i, _ in store.bm25_search("symbol", 1)] + [i for i, _ in store.bm25_search(
        "identity", 1)]
    symbol, identity = ids
    assert _fts_query('what is the "is" operator') == '"is" OR "operator"'
    assert _fts_query("what is the is operator") == '"operator"'
    # "is" counts only when quoted: it lifts the passage that says "is" five times
    assert dict(quoted)[identity] - dict(quoted)[symbol] > dict(plain)[identity] - dict(
        plain)[symbol]


def test_remove_document_removes_vectors_and_fts(tmp_path, fake_embedder, squad_passages):
    with Store.update(tmp_path, embedding_model="fake-bow", dim=256) as store:
        doc = add(store, fake_embedder, "/r/a.txt", [squad_passages[0]["text"]])
        add(store, fake_embedder, "/r/b.txt", [squad_passages[20]["text"]])
    with Store.update(tmp_path, embedding_model="fake-bow", dim=256) as store:
        assert store.remove_document(doc) == 1
    store = Store.open(tmp_path)
    assert store.stats()["passages"] == 1 == store.vectors.ntotal
    assert store.bm25_search("Denver Broncos", 5) == []


def test_interrupted_update_leaves_old_index_usable(tmp_path, fake_embedder, squad_passages):
    with Store.update(tmp_path, embedding_model="fake-bow", dim=256) as store:
        add(store, fake_embedder, "/r/a.txt", [squad_passages[0]["text"]])
    with pytest.raises(KeyboardInterrupt):
        with Store.update(tmp_path, embedding_model="fake-bow", dim=256) as store:
            add(store, fake_embedder, "/r/b.txt", [squad_passages[1]["text"]])
            raise KeyboardInterrupt
    store = Store.open(tmp_path)
    assert store.stats()["passages"] == 1
    assert len(list(tmp_path.glob("gen-*"))) == 1
    # and the lock was released: another update can start
    Store.update(tmp_path, embedding_model="fake-bow", dim=256).abort()


def test_mismatches_and_corruption_are_one_line_errors(tmp_path, fake_embedder, squad_passages):
    with pytest.raises(StoreError, match="no index"):
        Store.open(tmp_path)
    with Store.update(tmp_path, embedding_model="fake-bow", dim=256) as store:
        add(store, fake_embedder, "/r/a.txt", [squad_passages[0]["text"]])
    with pytest.raises(StoreError, match="built with embedding model 'fake-bow'"):
        Store.open(tmp_path, embedding_model="all-MiniLM-L6-v2")
    with pytest.raises(StoreError, match="rebuild"):
        Store.update(tmp_path, embedding_model="other", dim=256)
    assert len(list(tmp_path.glob("gen-*"))) == 1  # the refused update left nothing behind
    gen = tmp_path / (tmp_path / "CURRENT").read_text()
    # a passage row without a vector: sizes no longer match
    conn = sqlite3.connect(gen / "passages.db")
    conn.execute("INSERT INTO passages(document_id, text) VALUES (1, 'orphan')")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="inconsistent: 1 vectors for 2 embedded passages"):
        Store.open(tmp_path)
    (gen / "passages.faiss").write_bytes(b"not a faiss index")
    with pytest.raises(StoreError, match="corrupt"):
        Store.open(tmp_path)
    (gen / "passages.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="corrupt"):
        Store.open(tmp_path)
    for message in ("inconsistent", "corrupt"):
        assert "\n" not in message


def test_second_writer_is_refused(tmp_path):
    first = Store.update(tmp_path, embedding_model="fake-bow", dim=8)
    try:
        with pytest.raises(StoreError, match="another"):
            Store.update(tmp_path, embedding_model="fake-bow", dim=8)
    finally:
        first.abort()


def test_vectors_must_match_chunks(tmp_path):
    with Store.update(tmp_path, embedding_model="fake-bow", dim=8) as store:
        with pytest.raises(ValueError):
            store.add_document(path="/a", root="/", size=1, mtime_ns=1, sha256="x", title="t",
                               kind="text", chunks=[chunk("a")], vectors=np.zeros((2, 8), "float32"))
