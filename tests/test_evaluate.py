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
