"""Benchmarks behind ``assistant eval``: retrieval on a BEIR-format set, question answering on a
SQuAD-style set, and retrieval on the user's own corpus with generated questions.

A benchmark corpus is written once as Markdown files (title as heading) and indexed with the
normal pipeline into ``<data dir>/bench/<name>/``; later runs re-embed nothing (unchanged
files are skipped), so only the first run pays for embedding.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence
from urllib.parse import quote, unquote

from . import metrics
from .attribution import CITATION

_SAFE = "-_.()"


def read_jsonl(path: Path) -> list[dict]:
    """All JSON objects of a JSON-lines file.

    Raises:
        ValueError: a line is not JSON (with the file and line number).
    """
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
    return rows


def doc_file_name(doc_id: str) -> str:
    """A file name that encodes a corpus id reversibly (``/`` and other specials quoted)."""
    return quote(str(doc_id), safe=_SAFE) + ".md"


def doc_id_of(path: str) -> str:
    """The corpus id of a file written by :func:`write_corpus`."""
    return unquote(Path(path).name[: -len(".md")])


def write_corpus(corpus: Iterable[dict], folder: Path) -> int:
    """Write BEIR-style records ``{"_id", "title", "text"}`` as Markdown files (only those
    missing or changed, so indexing them again re-embeds nothing). Returns the count."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for doc in corpus:
        text = f"# {doc.get('title') or doc['_id']}\n\n{doc['text']}\n"
        path = folder / doc_file_name(doc["_id"])
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        count += 1
    return count


def read_qrels(folder: Path, split: str) -> dict[str, dict[str, int]]:
    """``{query id: {doc id: relevance}}`` from ``qrels/<split>.tsv`` (a header line is skipped).

    Raises:
        FileNotFoundError: no such split (the message lists the ones there are).
    """
    path = folder / "qrels" / f"{split}.tsv"
    if not path.is_file():
        have = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise FileNotFoundError(f"no qrels split {split!r} in {folder}/qrels (found: "
                                f"{', '.join(have) or 'none'})")
    qrels: dict[str, dict[str, int]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[2].strip().lstrip("-").isdigit():
            continue  # header
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return qrels


def rank_documents(hits: Sequence, limit: int) -> list[str]:
    """Document ids in the order of their best passage (a document scores its best passage)."""
    seen: dict[str, None] = {}
    for hit in hits:
        seen.setdefault(doc_id_of(hit.passage.path), None)
        if len(seen) >= limit:
            break
    return list(seen)


@dataclass
class RetrievalScores:
    """Mean retrieval metrics of one mode over ``queries`` queries, and search latency (ms)."""

    mode: str
    queries: int = 0
    recall1: float = 0.0
    recall5: float = 0.0
    ndcg10: float = 0.0
    recall10: float = 0.0
    recall100: float = 0.0
    mrr10: float = 0.0
    latency_ms: list[float] = field(default_factory=list, repr=False)

    def row(self) -> dict:
        return {"mode": self.mode, "queries": self.queries, "recall@1": round(self.recall1, 4),
                "recall@5": round(self.recall5, 4), "nDCG@10": round(self.ndcg10, 4),
                "recall@10": round(self.recall10, 4), "recall@100": round(self.recall100, 4),
                "MRR@10": round(self.mrr10, 4),
                "median_ms": round(metrics.percentile(self.latency_ms, 50) or 0, 1)}


def evaluate_retrieval(retriever, queries: Sequence[dict], qrels: dict[str, dict[str, int]],
                       modes: Sequence[str], *, advance: Callable[[], None] = lambda: None,
                       passages: int = 300) -> list[RetrievalScores]:
    """nDCG@10, recall@10/@100 and MRR@10 per mode (documents ranked by their best passage
    among the top ``passages`` passages)."""
    results = []
    for mode in modes:
        scores = RetrievalScores(mode)
        for query in queries:
            relevant = qrels[query["_id"]]
            result = retriever.search(query["text"], k=passages, mode=mode)
            ranked = rank_documents(result.hits, 100)
            scores.recall1 += metrics.recall_at_k(ranked, relevant, 1)
            scores.recall5 += metrics.recall_at_k(ranked, relevant, 5)
            scores.ndcg10 += metrics.ndcg_at_k(ranked, relevant, 10)
            scores.recall10 += metrics.recall_at_k(ranked, relevant, 10)
            scores.recall100 += metrics.recall_at_k(ranked, relevant, 100)
            scores.mrr10 += metrics.mrr_at_k(ranked, relevant, 10)
            scores.latency_ms.append(result.milliseconds)
            scores.queries += 1
            advance()
        n = max(scores.queries, 1)
        scores.recall1, scores.recall5 = scores.recall1 / n, scores.recall5 / n
        scores.ndcg10, scores.recall10 = scores.ndcg10 / n, scores.recall10 / n
        scores.recall100, scores.mrr10 = scores.recall100 / n, scores.mrr10 / n
        results.append(scores)
    return results


def article_of(doc_id: str) -> str:
    """The article part of a SQuAD-style passage id (``squad-AA-PPP`` -> ``squad-AA``); the id
    itself when it has no paragraph part."""
    head, _, tail = str(doc_id).rpartition("-")
    return head if head and tail.isdigit() else str(doc_id)


def left_out_articles(questions: Sequence[dict], fraction: float, seed: int) -> set[str]:
    """``round(fraction * n)`` of the ``n`` articles that questions are asked about, drawn
    with ``random.Random(seed)`` (at least one when ``fraction`` > 0): indexing without them
    makes their questions unanswerable."""
    if fraction <= 0:
        return set()
    articles = sorted({article_of(q["gold_passage"]) for q in questions})
    count = max(1, round(fraction * len(articles)))
    return set(random.Random(seed).sample(articles, count))


def sample(items: Sequence, limit: int, seed: int) -> list:
    """``limit`` items drawn with ``random.Random(seed)`` (all of them, in order, when
    ``limit`` is 0 or not smaller)."""
    if not limit or limit >= len(items):
        return list(items)
    return random.Random(seed).sample(list(items), limit)


@dataclass
class QAResult:
    """One answered question: predicted answer, scores, cited and gold passages, timings."""

    question: str
    prediction: str
    em: float
    f1: float
    found_at: int | None  # rank of the gold passage's document among the hits
    cited_doc: str | None
    gold_doc: str
    retrieval_ms: float
    first_token_s: float | None
    tokens_per_s: float | None
    answer_s: float | None = None
    """Seconds from the question to the complete answer (reranking and readings included)."""
    answerable: bool = True
    """False when the gold passage's article was left out of the index (``--unanswerable``)."""
    abstained: bool = False
    attended_doc: str | None = None
    """The source with the largest support weight (the answer's attention), if measured."""
    f1_raw: float = 0.0
    """Token F1 of the reader's answer as if it had not abstained."""
    features: dict | None = None
    """What the block reader decided abstention from (:attr:`assistant.reader.Reading.features`:
    ``pmi``, ``logprob``, ``cover``, ...), so that another rule can be scored on the same
    readings; None for other readers."""


def qa_summary(results: Sequence[QAResult]) -> dict:
    """Means (as percentages) and latency median/p95 over answered questions.

    Answer metrics (EM, token F1, citation accuracy) are over the answerable questions; an
    abstention on one scores 0. ``citation_accuracy_retrieved`` counts only questions whose
    gold passage was retrieved, for the cited source and for the source with the most
    attention support. With unanswerable questions it adds abstention precision, recall and
    F1 (an abstention is right on an unanswerable question) and the token F1 of the
    answerable ones without abstention (the reader's answer as if it had not abstained).
    """
    everything = list(results)
    results = [r for r in everything if r.answerable]
    n = max(len(results), 1)

    def pct(values, over: int = n) -> float:
        return round(100 * sum(values) / max(over, 1), 1)

    retrieved = [r for r in results if r.found_at is not None]
    extra: dict = {
        "citation_accuracy_retrieved": pct((r.cited_doc == r.gold_doc for r in retrieved),
                                           len(retrieved)),
    }
    if any(r.attended_doc for r in results):
        extra["attention_citation_accuracy_retrieved"] = pct(
            (r.attended_doc == r.gold_doc for r in retrieved), len(retrieved))
    unanswerable = [r for r in everything if not r.answerable]
    if unanswerable or any(r.abstained for r in everything):
        said = [r for r in everything if r.abstained]
        right = sum(1 for r in said if not r.answerable)
        precision = right / len(said) if said else 0.0
        recall = right / len(unanswerable) if unanswerable else 0.0
        extra.update({
            "unanswerable_questions": len(unanswerable),
            "abstention_precision": round(100 * precision, 1),
            "abstention_recall": round(100 * recall, 1),
            "abstention_f1": round(100 * (2 * precision * recall / (precision + recall))
                                   if precision + recall else 0.0, 1),
            "abstained_answerable": sum(1 for r in said if r.answerable),
            "token_f1_without_abstention": pct(r.f1_raw for r in results),
        })

    lat = {
        "retrieval_ms": [r.retrieval_ms for r in everything],
        "first_token_s": [r.first_token_s for r in everything if r.first_token_s is not None],
        "tokens_per_s": [r.tokens_per_s for r in everything if r.tokens_per_s],
        "answer_s": [r.answer_s for r in everything if r.answer_s is not None],
    }
    return {
        "questions": len(results),
        "recall@1": pct(r.found_at == 1 for r in results),
        "recall@5": pct(r.found_at is not None and r.found_at <= 5 for r in results),
        "exact_match": pct(r.em for r in results),
        "token_f1": pct(r.f1 for r in results),
        "citation_accuracy": pct(r.cited_doc == r.gold_doc for r in results),
        **{f"{name}_median": _round(metrics.percentile(v, 50)) for name, v in lat.items()},
        **{f"{name}_p95": _round(metrics.percentile(v, 95)) for name, v in lat.items()},
        **extra,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


_MARKER = re.compile(r"\s*" + CITATION.pattern)


def answer_text(turn) -> str:
    """The answer to score: the short answer of an extractive turn, else the answer text
    without citation markers."""
    short = getattr(turn, "short_answer", "")
    return short or _MARKER.sub("", turn.answer).strip()


def answer_question(manager, question: dict, k_found: int = 5, *,
                    answerable: bool = True) -> QAResult:
    """Ask ``question`` (``{"question", "answers", "gold_passage"}``) through the dialogue
    manager, as `ask` would, and score it (``answerable``: its gold passage is indexed)."""
    turn = manager.ask(question["question"])
    for _ in turn:
        pass
    docs = [doc_id_of(h.passage.path) for h in turn.hits]
    gold = question["gold_passage"]
    found = next((i for i, d in enumerate(docs[:k_found], 1) if d == gold), None)
    cited = turn.cited()  # an abstention cites nothing
    cited_doc = docs[cited[0] - 1] if cited else None
    prediction = "" if turn.abstained else answer_text(turn)
    raw = turn.reading.raw_span if turn.abstained else prediction
    support = turn.support
    attended = docs[max(range(len(support)), key=support.__getitem__)] if support else None
    timings = turn.timings()
    # the retrieval column includes reranking, as in the text pipeline
    return QAResult(question["question"], prediction,
                    metrics.exact_match(prediction, question["answers"]),
                    metrics.token_f1(prediction, question["answers"]), found, cited_doc, gold,
                    timings["retrieval_ms"], timings["first_token_s"], timings["tokens_per_s"],
                    answer_s=timings.get("answer_s"), answerable=answerable,
                    abstained=turn.abstained, attended_doc=attended,
                    f1_raw=metrics.token_f1(raw, question["answers"]),
                    features=dict(turn.reading.features) if turn.reading is not None else None)


QUESTION_PROMPT = ("Write one question that the following passage answers. Reply with the "
                   "question only.\n\nPassage:\n{text}")


def own_questions(store, generator, *, limit: int, seed: int,
                  max_new_tokens: int = 40) -> list[tuple[int, str]]:
    """``[(passage id, question)]``: for ``limit`` sampled passages, a question written by
    ``generator`` (chat models are asked in a message; base models complete
    "Passage: … Question:")."""
    ids = [r[0] for r in store.db.execute("SELECT id FROM passages ORDER BY id")]
    chosen = sample(ids, limit, seed)
    out = []
    for passage in store.passages(chosen):
        text = passage.text[:1500]
        if getattr(generator, "has_chat_template", True):
            reply = generator.generate([{"role": "user", "content": QUESTION_PROMPT.format(text=text)}],
                                       max_new_tokens=max_new_tokens)
        else:
            reply = generator.complete(f"Passage: {text}\nA question this passage answers:",
                                       max_new_tokens=max_new_tokens, stop=("\n",))
        question = "".join(reply).strip().split("\n")[0].strip()
        if len(question.split()) >= 3:
            out.append((passage.id, question))
    return out


def evaluate_own(retriever, questions: Sequence[tuple[int, str]], modes: Sequence[str], *,
                 k: int = 10) -> list[dict]:
    """recall@1/@5/@k and MRR@k of finding each question's own passage, per mode."""
    rows = []
    for mode in modes:
        ranks = []
        for passage_id, question in questions:
            hits = retriever.search(question, k=k, mode=mode).hits
            ranks.append(next((h.rank for h in hits if h.passage.id == passage_id), None))
        n = max(len(ranks), 1)
        rows.append({
            "mode": mode, "questions": len(ranks),
            "recall@1": round(sum(r == 1 for r in ranks) / n, 4),
            "recall@5": round(sum(r is not None and r <= 5 for r in ranks) / n, 4),
            f"recall@{k}": round(sum(r is not None for r in ranks) / n, 4),
            f"MRR@{k}": round(sum(1 / r for r in ranks if r) / n, 4),
        })
    return rows


def timed(fn: Callable, *args, **kwargs):
    """``(result, seconds)``."""
    started = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - started
