import json

import pytest
from click.testing import CliRunner

from assistant.cli import cli
from assistant.evaluate import (doc_file_name, doc_id_of, evaluate_retrieval, qa_summary,
                                rank_documents, read_qrels, write_corpus, QAResult)
from index.ingest import Indexer
from index.retrieval import Retriever
from index.store import Store


def beir_folder(tmp_path, passages, questions, split="train"):
    """A BEIR-format set: the fixture paragraphs as corpus, their questions as queries."""
    folder = tmp_path / "bench"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(p) for p in passages))
    (folder / "queries.jsonl").write_text("\n".join(
        json.dumps({"_id": q["id"], "text": q["question"]}) for q in questions))
    (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q['id']}\t{q['gold_passage']}\t1\n" for q in questions))
    (folder / "questions.dev.jsonl").write_text("\n".join(json.dumps(q) for q in questions))
    return folder


def test_ids_survive_file_names(tmp_path):
    for doc_id in ("12345", "squad-00-001", "a/b c?"):
        assert doc_id_of(str(tmp_path / doc_file_name(doc_id))) == doc_id


def test_retrieval_metrics_over_a_real_index(tmp_path, squad_passages, squad_questions,
                                             fake_embedder):
    folder = beir_folder(tmp_path, squad_passages, squad_questions[:20])
    docs = tmp_path / "docs"
    assert write_corpus([json.loads(l) for l in (folder / "corpus.jsonl").open()], docs) == 36
    Indexer(tmp_path / "index", fake_embedder).run([docs])
    retriever = Retriever(Store.open(tmp_path / "index"), fake_embedder)
    qrels = read_qrels(folder, "train")
    queries = [{"_id": q["id"], "text": q["question"]} for q in squad_questions[:20]]
    scores = {s.mode: s for s in evaluate_retrieval(retriever, queries, qrels,
                                                    ["bm25", "dense", "convex"])}
    for s in scores.values():
        assert s.queries == 20
        assert 0 < s.mrr10 <= s.recall10 <= s.recall100 <= 1
        assert s.recall1 <= s.recall5 <= s.recall10
    assert scores["bm25"].ndcg10 > 0.6  # word overlap finds SQuAD paragraphs
    hits = retriever.search(queries[0]["text"], k=20).hits
    ranked = rank_documents(hits, 100)
    assert len(ranked) == len(set(ranked)) and ranked[0] == doc_id_of(hits[0].passage.path)
    with pytest.raises(FileNotFoundError, match="found: train"):
        read_qrels(folder, "test")


def test_qa_summary_by_hand():
    def r(em, f1, found, cited, ttft):
        return QAResult("q", "a", em, f1, found, cited, "g", 10.0, ttft, 20.0)
    s = qa_summary([r(1, 1.0, 1, "g", 1.0), r(0, 0.5, 3, "x", 2.0), r(0, 0.0, None, None, 3.0)])
    assert s["questions"] == 3 and s["exact_match"] == 33.3 and s["token_f1"] == 50.0
    assert s["recall@1"] == 33.3 and s["recall@5"] == 66.7 and s["citation_accuracy"] == 33.3
    # where the gold passage was retrieved (2 of 3): one cited it
    assert s["citation_accuracy_retrieved"] == 50.0
    assert "abstention_f1" not in s  # nothing unanswerable, nothing abstained
    assert s["first_token_s_median"] == 2.0 and s["first_token_s_p95"] == pytest.approx(2.9)


@pytest.mark.slow
def test_eval_command_end_to_end(tmp_path, squad_passages, squad_questions, shared_data_dir,
                                 real_generator):
    """Real MiniLM + Gemma through `assistant eval`; the second run re-embeds nothing."""
    folder = beir_folder(tmp_path, squad_passages, squad_questions[:12])
    base = ["--data-dir", str(shared_data_dir)]
    args = [*base, "eval", "--beir", str(folder), "--squad", str(folder), "--qa-limit", "3",
            "--json"]
    runner = CliRunner()
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    modes = {r["mode"]: r for r in data["beir"]["results"]}
    assert set(modes) == {"bm25", "dense", "hybrid", "convex"}
    assert all(r["queries"] == 12 and 0.5 < r["nDCG@10"] <= 1 for r in modes.values())
    qa = data["squad_qa"][0]
    assert qa["questions"] == 3 and qa["model"] == "gemma-3-270m" and qa["reader"] == "blocks"
    assert 0 <= qa["token_f1"] <= 100 and qa["first_token_s_median"] > 0
    assert "embedded" in result.output
    again = runner.invoke(cli, [*base, "eval", "--beir", str(folder), "--modes", "bm25"])
    assert again.exit_code == 0 and "embedded" not in again.output
    assert "nDCG@10" in again.output

    # both readers on the same questions, over an index without one of the three articles
    mixed = beir_folder(tmp_path / "mixed", squad_passages, squad_questions[::6])  # 3 articles
    both = runner.invoke(cli, [*base, "eval", "--squad", str(mixed), "--modes", "bm25",
                               "--qa-limit", "6", "--reader", "text,blocks",
                               "--unanswerable", "0.34", "--json"])
    assert both.exit_code == 0, both.output
    rows = json.loads(both.output[both.output.index("{"):])["squad_qa"]
    assert [row["reader"] for row in rows] == ["text", "blocks"]
    assert len(rows[0]["left_out_articles"]) == 1
    for row in rows:
        assert row["questions"] + row["unanswerable_questions"] == 6
        assert 0 <= row["abstention_f1"] <= 100 and row["answer_s_median"] > 0
    assert rows[0]["abstention_recall"] == 0.0  # the text reader never abstains


def test_abstention_metrics_by_hand():
    def r(f1, *, answerable=True, abstained=False, f1_raw=None, attended=None):
        return QAResult("q", "" if abstained else "a", 0.0, 0.0 if abstained else f1, 1,
                        None if abstained else "g", "g", 10.0, 1.0, 20.0, answer_s=2.0,
                        answerable=answerable, abstained=abstained, attended_doc=attended,
                        f1_raw=f1 if f1_raw is None else f1_raw)
    results = [
        r(1.0, attended="g"),                                    # answered right
        r(0.0, abstained=True, f1_raw=0.5, attended="x"),        # abstained on an answerable one
        r(0.0, answerable=False, abstained=True),                # right abstentions
        r(0.0, answerable=False, abstained=True),
        r(0.3, answerable=False),                                # answered the unanswerable
    ]
    s = qa_summary(results)
    assert s["questions"] == 2 and s["unanswerable_questions"] == 3
    assert s["abstention_precision"] == pytest.approx(66.7)  # 2 of 3 abstentions right
    assert s["abstention_recall"] == pytest.approx(66.7)     # 2 of 3 unanswerable caught
    assert s["abstention_f1"] == pytest.approx(66.7)
    assert s["abstained_answerable"] == 1
    assert s["token_f1"] == 50.0 and s["token_f1_without_abstention"] == 75.0
    assert s["attention_citation_accuracy_retrieved"] == 50.0
    assert s["answer_s_median"] == 2.0


def test_left_out_articles_are_a_seeded_fraction_of_the_question_articles(squad_questions):
    from assistant.evaluate import article_of, left_out_articles

    assert article_of("squad-04-011") == "squad-04" and article_of("12345") == "12345"
    articles = {article_of(q["gold_passage"]) for q in squad_questions}
    assert articles == {"squad-00", "squad-04", "squad-08"}
    out = left_out_articles(squad_questions, 1 / 3, seed=0)
    assert len(out) == 1 and out <= articles
    assert left_out_articles(squad_questions, 1 / 3, seed=0) == out  # same seed, same set
    assert left_out_articles(squad_questions, 0.0, seed=0) == set()
    assert len(left_out_articles(squad_questions, 0.9, seed=1)) == 3
