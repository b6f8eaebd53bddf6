"""The store chooses its FAISS index by size (index/vectors.py), with the thresholds lowered so
that a few hundred passages cross them: flat -> IVF when the corpus grows, ids kept, passages
added and removed without retraining, retrained when it grows 4x, back to flat when it
shrinks; the choice is recorded in the index metadata and survives reopening."""

import json

import numpy as np
import pytest

from index import vectors
from index.chunking import Chunk
from index.store import Store


def unit(rng, n, dim=32):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def add(store, path, vecs):
    chunks = [Chunk(text=f"passage {path} {i}", heading="", page=None, line_start=1,
                    line_end=1, n_tokens=3) for i in range(len(vecs))]
    return store.add_document(path=path, root="/r", size=1, mtime_ns=1, sha256=path,
                              title="T", kind="text", chunks=chunks, vectors=vecs)


@pytest.fixture
def small_thresholds(monkeypatch):
    monkeypatch.setattr(vectors, "FLAT_MAX", 200)
    monkeypatch.setattr(vectors, "NPROBE", 8)


def test_choice_by_size_follows_the_measured_thresholds():
    assert vectors.choose(100_000) == {"kind": "flat"}
    one_m = vectors.choose(1_000_000)
    assert one_m["kind"] == "ivf" and one_m["nlist"] == 4096 and one_m["nprobe"] == 64
    assert not one_m["on_disk"] and vectors.choose(10_000_000)["on_disk"]
    assert vectors.describe(one_m) == "IVF4096,SQ8 (nprobe 64)"
    assert vectors.needs_retraining({"kind": "flat"}, 100_001)
    ivf = {**one_m, "trained_on": 1_000_000}
    assert not vectors.needs_retraining(ivf, 3_000_000)
    assert vectors.needs_retraining(ivf, 4_100_000) and vectors.needs_retraining(ivf, 240_000)


def test_the_store_moves_to_ivf_as_it_grows_and_keeps_ids_and_answers(tmp_path, small_thresholds):
    rng = np.random.default_rng(0)
    first = unit(rng, 150)
    with Store.update(tmp_path, embedding_model="m", dim=32) as store:
        add(store, "/r/a", first)
    store = Store.open(tmp_path)
    assert store.stats()["vector_index"] == "flat (exact)"
    store.close()

    more = unit(rng, 250)
    with Store.update(tmp_path, embedding_model="m", dim=32) as store:
        doc_b = add(store, "/r/b", more)
    assert "flat (exact) -> IVF" in store.retrained
    store = Store.open(tmp_path)
    spec = json.loads(store.meta()["vector_index"])
    assert spec["kind"] == "ivf" and spec["trained_on"] == 400 and spec["code"] == "SQ8"
    assert store.stats()["vector_index"].startswith("IVF") and store.vectors.ntotal == 400
    # every passage is still found by its own vector, under its passage id
    ids = [r[0] for r in store.db.execute("SELECT id FROM passages ORDER BY id")]
    everything = np.concatenate([first, more])
    hits = [store.dense_search(v, 1)[0] for v in everything[::10]]
    assert [h[0] for h in hits] == ids[::10]
    assert all(abs(h[1] - 1) < 0.02 for h in hits)  # 8-bit codes: cosine within 2 %
    store.close()

    # removing and adding passages needs no retraining while the size stays in range
    with Store.update(tmp_path, embedding_model="m", dim=32) as store:
        assert store.remove_document(doc_b) == 250
        add(store, "/r/c", unit(rng, 60))
    assert store.retrained == ""
    store = Store.open(tmp_path)
    assert store.vectors.ntotal == 210
    assert json.loads(store.meta()["vector_index"])["trained_on"] == 400
    store.close()

    # growing 4x retrains
    with Store.update(tmp_path, embedding_model="m", dim=32) as store:
        add(store, "/r/d", unit(rng, 1500))
    assert "IVF" in store.retrained and "1,710 passages" in store.retrained
    store = Store.open(tmp_path)
    assert json.loads(store.meta()["vector_index"])["trained_on"] == 1710
    store.close()


def test_the_store_goes_back_to_flat_when_the_corpus_shrinks(tmp_path, small_thresholds):
    rng = np.random.default_rng(1)
    with Store.update(tmp_path, embedding_model="m", dim=32) as store:
        keep = add(store, "/r/keep", unit(rng, 50))
        gone = add(store, "/r/gone", unit(rng, 300))
    with Store.update(tmp_path, embedding_model="m", dim=32) as store:
        store.remove_document(gone)
    assert "-> flat (exact)" in store.retrained
    store = Store.open(tmp_path)
    assert store.stats()["vector_index"] == "flat (exact)" and store.vectors.ntotal == 50
    ids = [r[0] for r in store.db.execute(
        "SELECT id FROM passages WHERE document_id = ? ORDER BY id", [keep])]
    assert sorted(int(i) for i in vectors.ids_of(store.vectors)) == ids


def test_an_on_disk_index_is_searched_mapped_and_still_updated(tmp_path, small_thresholds,
                                                                 monkeypatch):
    monkeypatch.setattr(vectors, "ON_DISK_FROM", 300)
    rng = np.random.default_rng(2)
    first = unit(rng, 400)
    with Store.update(tmp_path, embedding_model="m", dim=32) as store:
        add(store, "/r/a", first)
    reader = Store.open(tmp_path)
    assert json.loads(reader.meta()["vector_index"])["on_disk"] is True
    assert "codes on disk" in reader.stats()["vector_index"]
    assert reader.dense_search(first[7], 1)[0][0] == 8  # passage ids start at 1
    late = unit(rng, 30)
    with Store.update(tmp_path, embedding_model="m", dim=32) as store:  # reads the lists whole
        add(store, "/r/b", late)
    assert reader.dense_search(first[7], 1)[0][0] == 8  # the reader's generation is kept
    reader = reader.refreshed()
    assert reader.vectors.ntotal == 430 and reader.dense_search(late[3], 1)[0][0] == 404
