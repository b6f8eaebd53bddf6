import pytest

from index.ingest import Indexer
from index.retrieval import Retriever, convex, min_max, near_duplicate, rrf
from index.store import Store


def test_rrf_matches_hand_computed_scores():
    fused = rrf([[1, 2, 3], [3, 1]], k=60)
    expected = {1: 1 / 61 + 1 / 62, 2: 1 / 62, 3: 1 / 63 + 1 / 61}
    assert [i for i, _ in fused] == [1, 3, 2]
    for item, score in fused:
        assert score == pytest.approx(expected[item])


def test_convex_fusion_matches_hand_computed_scores():
    dense = [(1, 0.9), (2, 0.5), (3, 0.1)]  # min-max: 1.0, 0.5, 0.0
    bm25 = [(3, 12.0), (4, 2.0)]            # min-max: 1.0, 0.0
    assert min_max(dense) == {1: 1.0, 2: 0.5, 3: 0.0}
    fused = dict(convex(dense, bm25, alpha=0.3))
    assert fused == pytest.approx({1: 0.3, 2: 0.15, 3: 0.7, 4: 0.0})
    assert [i for i, _ in convex(dense, bm25, alpha=1.0)][:2] == [1, 2]
    assert min_max([(7, 2.0)]) == {7: 1.0}


def test_modes_and_bad_arguments(tmp_path, corpus_dir, fake_embedder):
    Indexer(tmp_path / "i", fake_embedder).run([corpus_dir])
    retriever = Retriever(Store.open(tmp_path / "i"), fake_embedder)
    for mode in ("convex", "hybrid", "dense", "bm25"):
        result = retriever.search("Which NFL team won Super Bowl 50?", k=3, mode=mode)
        assert len(result.hits) == 3 and result.milliseconds >= 0
        assert [h.rank for h in result.hits] == [1, 2, 3]
    with pytest.raises(ValueError):
        retriever.search("x", mode="magic")
    with pytest.raises(ValueError):
        retriever.search("x", k=0)
    assert retriever.search("!!!", k=3, mode="bm25").hits == []


@pytest.mark.slow
def test_real_embedder_finds_gold_passages(tmp_path, corpus_dir, real_embedder, squad_questions):
    """recall@5 on 72 SQuAD questions over their 36 paragraphs, with the real MiniLM."""
    Indexer(tmp_path / "i", real_embedder).run([corpus_dir])
    retriever = Retriever(Store.open(tmp_path / "i", embedding_model=real_embedder.name),
                          real_embedder)
    recall = {}
    for mode in ("convex", "hybrid", "dense", "bm25"):
        found = 0
        for q in squad_questions:
            hits = retriever.search(q["question"], k=5, mode=mode).hits
            found += any(h.passage.path.endswith(q["gold_passage"] + ".md") for h in hits)
        recall[mode] = found / len(squad_questions)
    assert recall["dense"] >= 0.8, recall
    assert recall["bm25"] >= 0.8, recall
    assert recall["hybrid"] >= max(recall["dense"], recall["bm25"]) - 0.03, recall
    assert recall["convex"] >= max(recall["dense"], recall["bm25"]) - 0.03, recall


def test_near_duplicate_passages_are_collapsed_so_top_k_differ(tmp_path, fake_embedder,
                                                               squad_passages):
    docs = tmp_path / "docs"
    docs.mkdir()
    base = squad_passages[0]["text"]
    (docs / "a.md").write_text(f"# A\n\n{base}\n")
    (docs / "b.md").write_text(f"# B\n\n{base} Copied.\n")  # the same text, one word more
    (docs / "c.md").write_text(f"# C\n\n{squad_passages[1]['text']}\n")
    Indexer(tmp_path / "i", fake_embedder).run([docs])
    retriever = Retriever(Store.open(tmp_path / "i"), fake_embedder)
    for mode in ("convex", "dense", "bm25"):
        hits = retriever.search(base[:120], k=2, mode=mode).hits
        assert [h.rank for h in hits] == [1, 2]
        names = {h.passage.path.rsplit("/", 1)[-1] for h in hits}
        assert "c.md" in names and len(names & {"a.md", "b.md"}) == 1, mode
    assert near_duplicate({"a", "b", "c"}, {"a", "b", "c"})
    assert not near_duplicate({"a", "b"}, {"a", "c"}) and not near_duplicate(set(), set())


def test_a_running_retriever_picks_up_a_newer_index(tmp_path, fake_embedder, squad_passages):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(f"# A\n\n{squad_passages[0]['text']}\n")
    Indexer(tmp_path / "i", fake_embedder).run([docs])
    retriever = Retriever(Store.open(tmp_path / "i"), fake_embedder)
    first = retriever.store.gen_dir
    assert retriever.search("zebra crossing", k=1, mode="bm25").hits == []
    (docs / "zebra.md").write_text("# Zebras\n\nA zebra crossing is a striped road crossing.\n")
    Indexer(tmp_path / "i", fake_embedder).run([docs])  # another process, in real use
    hits = retriever.search("zebra crossing", k=1, mode="bm25").hits
    assert hits and hits[0].passage.path.endswith("zebra.md")
    assert retriever.store.gen_dir != first and retriever.store.stats()["documents"] == 2
    (tmp_path / "i" / "CURRENT").write_text("junk")  # a damaged newer index is not taken
    assert retriever.search("zebra crossing", k=1, mode="bm25").hits


def test_the_opening_of_a_document_is_its_first_passages_in_order(tmp_path, fake_embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    paragraphs = [f"Paragraph {n} says something about topic {n} in several plain words. " * 12
                  for n in range(6)]
    (docs / "long.txt").write_text("\n\n".join(paragraphs))
    (docs / "other.txt").write_text("Another document about something else entirely.")
    Indexer(tmp_path / "i", fake_embedder, chunk_tokens=120, chunk_overlap=0).run([docs])
    store = Store.open(tmp_path / "i")
    retriever = Retriever(store, fake_embedder)
    hit = retriever.search("topic 5", k=1, mode="bm25").hits[0]
    assert hit.passage.path.endswith("long.txt")
    first = retriever.opening(hit.passage.document_id, 2)
    assert first[0].passage.text.startswith("Paragraph 0") and len(first) == 2
    assert first[0].passage.id < first[1].passage.id  # in the document's order
    assert not any("Paragraph 5" in h.passage.text for h in first)
    assert [h.passage.document_id for h in first] == [hit.passage.document_id] * 2
    assert len(retriever.opening(hit.passage.document_id, 50)) < 50  # as many as there are
    assert retriever.opening(10_000, 2) == []


def test_the_sections_of_a_document_are_the_first_passage_under_each_heading(
        tmp_path, fake_embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    long = "This part goes on about one thing in plain words for a while. " * 30
    (docs / "guide.md").write_text(
        f"# Guide\n\nIntro.\n\n## Errors\n\n### Races\n\n{long}\n\n{long}\n\n"
        f"### Deadlocks\n\nLocks taken in two orders.\n\n## Options\n\nSome options.\n")
    Indexer(tmp_path / "i", fake_embedder, chunk_tokens=120, chunk_overlap=0).run([docs])
    retriever = Retriever(Store.open(tmp_path / "i"), fake_embedder)
    hit = retriever.search("deadlocks", k=1, mode="bm25").hits[0]
    starts = retriever.sections(hit.passage.document_id)
    headings = [h.passage.heading for h in starts]
    assert len(headings) == len(set(headings))  # one per section, though Races has several
    # "Errors" has no text of its own: its sections are found under it by their paths
    assert headings == ["Guide", "Guide > Errors > Races", "Guide > Errors > Deadlocks",
                        "Guide > Options"]
    races = next(h for h in starts if h.passage.heading.endswith("Races"))
    assert races.passage.text.startswith("This part goes on")
    assert retriever.sections(10_000) == []
