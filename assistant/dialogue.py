"""The dialogue manager: a turn = record question -> retrieve -> prompt -> generate -> record.

It knows nothing of the terminal UI or the command line; ``assistant ask`` and ``assistant
chat`` both drive it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

from index.retrieval import Hit, SearchResult
from index.turns import answering

from .attribution import CITATION, CitationShaper
from .chat_reader import ChatReader
from .composer import Composer, EmbeddingMemo
from .forms import (classify, conversation_request, misspelt, more_request, names, recap,
                    search_text, spelled_out)
from .generation import GenerationError, GenerationStats, Generator, Reply
from .history import History, SourceRecord
from .extractive import (ExtractiveAnswer, example_questions, extractive_prefix,
                         extractive_prompt, finish)
from .prompts import Prompt, build_prompt
from .question import check_question
from .reader import NOT_FOUND, ExtractiveReader, Reading, Readings, question_text
from .rerank import answer_value, rerank

ANCHOR_TOKENS = 16
"""Longest reading, in tokens, for a composed answer (every form but a factoid): its span
only anchors the sentence it came from, so decoding a whole 48-token sentence is wasted. On
the question set's tune split 16 gave the same 43 answers as 48 in 10–18 % less time, and 8
changed four of them (BENCHMARKS.md, answer forms, round 3)."""

_FOLLOW_UP = re.compile(
    r"^(and|but|also|so|what about|how about|why|then)\b|\b(it|its|they|them|their|this|that|"
    r"these|those|he|she|his|her|one|ones|former|latter|same|there)\b",
    re.IGNORECASE,
)


_EXISTENTIAL = re.compile(r"\b(?:is|are|was|were|be)\s+there\b|\bthere\s+(?:is|are|was|"
                          r"were|be|exists?)\b", re.IGNORECASE)
"""An existential "there" ("What kinds of callable types are there?", "Is there a way to
..."): it points back at nothing, unlike "there" in "what else is in there?"."""


class _Retriever(Protocol):
    def search(self, query: str, *, k: int = 5, mode: str = "convex"): ...

    def opening(self, document_id: int, n: int = 2): ...

    def sections(self, document_id: int): ...

    def word_passages(self, words): ...


def cited_numbers(answer: str) -> list[int]:
    """Source numbers cited in ``answer`` as ``[n]``, ``[n, m]`` or ``[n-m]``, in first-seen order."""
    seen: dict[int, None] = {}
    for match in CITATION.finditer(answer):
        for part in re.split(r"\s*[,;]\s*", match.group(1)):
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                for n in range(lo, min(hi, lo + 20) + 1):
                    seen[n] = None
            else:
                seen[int(part)] = None
    return list(seen)


def _asked(history: Sequence[tuple[str, str]]) -> int | None:
    """Index in ``history`` of the latest turn that asked something of its own (not a
    request to say more or give an example, :func:`forms.more_request`), or None."""
    return next((i for i in range(len(history) - 1, -1, -1)
                 if more_request(history[i][0]) is None), None)


def retrieval_query(question: str, history: Sequence[tuple[str, str]]) -> str:
    """The search query for a turn: the question, plus the previous question when this one
    reads as a follow-up (short, or leaning on a pronoun such as "it" or "the second one"),
    so "and what about the second one?" still finds the passages the conversation is about.

    A request to say more ("Can you say more about that?") searches what the turn it is about
    searched, so it finds the same passages; a request for an example adds its words to that
    search. Either way the turn it is about is the latest that asked something of its own,
    so "go on" after "give an example" still searches the topic.

    Words that only ask for a summary or a comparison are left out
    (:func:`forms.search_text`)."""
    searched = search_text(question)
    if not history:
        return searched
    at = _asked(history)
    if at is None:
        return searched
    kind = more_request(question)
    if kind is not None:
        base = retrieval_query(history[at][0], history[:at])
        return base if kind == "more" else f"{base} {searched}"
    # whether it is a follow-up is told by the question as asked: "What is the difference
    # between lists and tuples?" is not short for having its request words left out
    words = re.findall(r"\w+", question)
    if len(words) <= 4 or _FOLLOW_UP.search(_EXISTENTIAL.sub(" ", question)):
        return f"{search_text(history[at][0])} {searched}"
    return searched


def reading_question(question: str, history: Sequence[tuple[str, str]]) -> str:
    """The question an extractive reader answers for a turn: ``question`` itself, or for a
    request to say more or give an example (:func:`forms.more_request`), the question of the
    turn it is about. A base model reads one question beside one passage and sees no
    conversation: "Can you say more about that?" asks it nothing, and its likelihood given a
    passage says nothing about whether the passage holds the answer (it was abstained on)."""
    at = _asked(history) if more_request(question) is not None else None
    return question if at is None else history[at][0]


_PIECE = re.compile(r".+?(?:\[\d+\](?=\s)|$)\s*", re.S)


def _pieces(text: str) -> list[str]:
    """``text`` cut after each citation ("... [2] "), so a multi-sentence answer streams
    sentence by sentence with its citations; joined they give ``text`` back."""
    return _PIECE.findall(text) if text else []


@dataclass
class Turn:
    """One question being answered. Iterate it for answer fragments; when the iteration ends
    the turn is recorded in history with its status, sources and timings.

    Attributes:
        conversation_id, turn_id: where it is stored.
        question: as asked.
        query: what was searched (see :func:`retrieval_query`).
        hits: retrieved passages, numbered from 1 in this order.
        retrieval_ms: search time in milliseconds.
        prompt: the rendered prompt (``passages_used`` <= ``len(hits)``).
        answer: the text so far; complete after the iteration.
        status: ``pending`` -> ``complete`` | ``cancelled`` | ``error``.
        error: the error message when status is ``error``.
        extractive, short_answer: an extractive turn and its answer span.
        read: for an extractive turn, ``read(i, copy)`` starts reading hit ``i`` (0-based):
            a free answer, or with ``copy`` one constrained to copy a span of the passage.
        read_k: how many of the top hits an extractive turn may read (see
            :meth:`_read_passages`); ``reply`` is the reading of hit 0, already started.
        answer_ready_s: for an extractive turn, seconds from the first reading's start until
            the answer was complete (all readings); its time to first token.
        job: for a turn read over passage blocks, ``job(cancelled)`` runs the whole reading
            (:class:`~assistant.reader.ExtractiveReader`) and returns its ``Reading``;
            ``reading`` holds it afterwards, with the reranked hits.
        support_job: ``support_job(reading)`` the reading with its attention support,
            run after the answer's text has been yielded (the text does not wait for it);
            ``support`` is set when iterating the turn ends.
        prepare: for a chat turn over passage blocks, ``prepare()`` computes ahead of time
            what a follow-up over the same passages starts with (see
            :meth:`DialogueManager.prepare_follow_up`).
        chat_support: for a chat turn over passage blocks, ``chat_support(text)`` gives the
            attention support of the model's answer ``text``: ``(per source, [(sentence,
            per source), ...])`` (:meth:`~assistant.chat_reader.ChatReader.support`), run
            once the answer is complete; it sets ``support`` and ``sentence_weights``, and
            ``support_s`` its time in seconds.
        abstained: the answer says the documents do not hold it.
        support: per shown source, its share of the answer's attention (0..1), or empty.
        answer_s: seconds from the question until the answer's text was complete (reranking
            and every reading included; a chat answer: its last token, before the support
            pass).
        form: the question's form (:data:`assistant.forms.FORMS`), which shaped the answer.
        grounding: how the sources were ordered and the citations found, in words (e.g.
            ``retrieval order · cited by the model and word overlap``): a remote model
            cannot rerank or show its attention, and the answer says so.
    """

    conversation_id: str
    turn_id: int
    question: str
    query: str
    hits: list[Hit]
    retrieval_ms: float
    prompt: Prompt | None
    reply: Reply | None
    model: str
    _history: History = field(repr=False)
    answer: str = ""
    status: str = "pending"
    error: str = ""
    extractive: bool = False
    short_answer: str = ""
    read: Callable[[int, bool], Reply] | None = field(default=None, repr=False)
    read_k: int = 1
    answer_ready_s: float | None = None
    job: Callable[[Callable[[], bool]], Reading] | None = field(default=None, repr=False)
    support_job: Callable[[Reading], Reading] | None = field(default=None, repr=False)
    chat_support: Callable[[str], tuple[list[float], list]] | None = field(default=None,
                                                                         repr=False)
    prepare: Callable[[], int] | None = field(default=None, repr=False)
    sentence_weights: list = field(default_factory=list)
    support_s: float | None = None
    reading: Reading | None = field(default=None, repr=False)
    abstained: bool = False
    support: list[float] = field(default_factory=list)
    answer_s: float | None = None
    form: str = "factoid"
    grounding: str = ""
    started: float = field(default_factory=time.perf_counter, repr=False)
    _answer_stats: GenerationStats | None = field(default=None, repr=False)
    _saved_at: float = 0.0
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _hold: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    def _read_passages(self) -> ExtractiveAnswer:
        """The extractive answer: read the top ``read_k`` passages in rank order and keep the
        answer with the highest :func:`~assistant.rerank.answer_value` (the hit's reranked
        score plus the answer's mean token log-probability, weighted).

        Each reading is a free answer; when that answer is not in its passage (often a name
        copied from the prompt's worked examples) the passage is read again with decoding
        constrained to copy a span of it; the free reading's confidence still counts (the
        copying one's is spread over the few tokens allowed, so it looks surer than it is,
        and the weight was measured with the free one). A passage whose score is not above
        the best value so far is skipped: the log-probability term is never positive, so it
        cannot win.
        Cancelling stops the readings; the best answer so far is kept.
        """
        started = time.perf_counter()
        best: tuple[float, ExtractiveAnswer, GenerationStats] | None = None
        for i in range(min(self.read_k, len(self.hits))):
            if best is not None and (self.cancelled or self.hits[i].score <= best[0]):
                continue
            if i > 0:
                self.reply = self.read(i, False)
            passage = self.hits[i].passage.text
            done = finish("".join(self.reply), passage, i + 1, self.question)
            confidence = self.reply.stats.mean_logprob
            if self.read is not None and not done.supported and not self.cancelled:
                self.reply = self.read(i, True)
                done = finish("".join(self.reply), passage, i + 1, self.question)
            if best is not None and self.cancelled:
                break
            value = answer_value(self.hits[i].score, confidence)
            if best is None or (done.span and value > best[0]) or not best[1].span:
                best = (value, done, self.reply.stats)
        self.answer_ready_s = time.perf_counter() - started
        self._answer_stats = best[2]
        return best[1]

    def __iter__(self) -> Iterator[str]:
        try:
            if self.job is not None:
                self.reading = reading = self.job(self._cancel.is_set)
                self.hits = reading.hits + self.hits[len(reading.hits):]
                if self.prompt is not None and len(self.hits) > self.prompt.passages_used:
                    # a comparison's extra search added a source
                    self.prompt = dataclasses.replace(self.prompt, passages_used=len(self.hits))
                self.short_answer = reading.answer.span
                self.abstained, self.support = reading.abstained, reading.support
                self.answer_s = time.perf_counter() - self.started
                for piece in _pieces(reading.answer.text):  # sentence by sentence
                    self.answer += piece
                    yield piece
                if self.support_job is not None and reading.hits and not self._cancel.is_set():
                    self.reading = reading = self.support_job(reading)
                    self.support = reading.support
            elif self.reply is not None and self.extractive:
                done = self._read_passages()
                self.short_answer, self.answer = done.span, done.text
                self.answer_s = time.perf_counter() - self.started
                if done.text:
                    yield done.text
            elif self.reply is not None:
                shaper = CitationShaper([h.passage.text for h in self.hits[: self.sources_shown]])
                said: list[str] = []  # the model's own text (without the shaper's markers)
                for piece in self.reply:
                    said.append(piece)
                    fragment = shaper.push(piece)
                    if shaper.repeated:
                        self.reply.stop()
                    if not fragment:
                        continue
                    self.answer += fragment
                    if time.monotonic() - self._saved_at > 1.0:
                        self._history.save_partial(self.turn_id, self.answer)
                        self._saved_at = time.monotonic()
                    yield fragment
                tail = shaper.flush()
                if tail:
                    self.answer += tail
                    yield tail
                self.answer_s = time.perf_counter() - self.started
                if self.chat_support is not None and not self.cancelled and self.answer.strip():
                    started = time.perf_counter()
                    try:
                        self.support, self.sentence_weights = self.chat_support("".join(said))
                    except Exception:  # noqa: BLE001 - the answer stands without its weights
                        self.support, self.sentence_weights = [], []
                    self.support_s = time.perf_counter() - started
            self.status = "cancelled" if self.cancelled else "complete"
        except GenerationError as exc:
            self.status, self.error = "error", str(exc)
            raise
        except BaseException as exc:  # KeyboardInterrupt, a closed generator: keep the partial
            self.status = "cancelled"
            self.error = type(exc).__name__ if not isinstance(exc, GeneratorExit) else ""
            raise
        finally:
            self._hold.close()
            self._record()

    @property
    def cancelled(self) -> bool:
        """True when generation was cancelled."""
        return (self._cancel.is_set() or bool(self.reply and self.reply.stats.cancelled)
                or self.status == "cancelled")

    def cancel(self) -> None:
        """Stop generating, whichever reading is running (and start no other); the partial
        answer is kept and the turn marked cancelled."""
        self._cancel.set()
        if self.reply is not None:
            self.reply.cancel()

    def cited(self) -> list[int]:
        """Source numbers cited in the answer that exist among the hits."""
        return [n for n in cited_numbers(self.answer) if 1 <= n <= self.sources_shown]

    @property
    def sources_shown(self) -> int:
        """How many hits the model actually saw (and may cite)."""
        return self.prompt.passages_used if self.prompt else 0

    def timings(self) -> dict[str, float | int | None]:
        """retrieval_ms, first_token_s, tokens_per_s, prompt_tokens, new_tokens, total_s,
        answer_s; for a block reading also encode_s, score_s, read_s, compose_s (a composed
        answer), support_s and blocks_computed; for a chat answer over blocks support_s and
        blocks_computed. For extractive answers (shown whole),
        first_token_s is the time from the first reading's start until the answer's text is
        complete (readings and composing; the support pass follows it), total_s the reader's
        whole time after reranking, and retrieval_ms includes reranking."""
        if self.reading is not None:
            sec = self.reading.seconds
            text_s = sec.get("read", 0.0) + sec.get("compose", 0.0)
            return {
                "retrieval_ms": round(self.retrieval_ms + 1000 * (
                    sec.get("encode", 0.0) + sec.get("score", 0.0)), 2),
                "first_token_s": round(text_s, 4),
                # decoding speed over every reading (a composed answer keeps a two-token
                # span of 48 tokens read: that span over the whole reading time was "0.7")
                "tokens_per_s": round(self.reading.decoded / sec["read"], 2)
                if sec.get("read") and self.reading.decoded > 1 else None,
                "prompt_tokens": 0, "new_tokens": self.reading.new_tokens,
                "total_s": round(text_s + sec.get("support", 0.0), 4),
                "answer_s": round(self.answer_s, 4) if self.answer_s is not None else None,
                **{f"{k}_s": round(v, 4) for k, v in sec.items()},
                "blocks_computed": self.reading.encoded,
            }
        stats = self._answer_stats or (self.reply.stats if self.reply else None)
        first = self.answer_ready_s if self.answer_ready_s is not None else (
            stats.first_token_s if stats else None)
        return {
            "retrieval_ms": round(self.retrieval_ms, 2),
            "first_token_s": round(first, 4) if first else None,
            "tokens_per_s": round(stats.tokens_per_s, 2) if stats and stats.tokens_per_s else None,
            "prompt_tokens": stats.prompt_tokens if stats else 0,
            "new_tokens": stats.new_tokens if stats else 0,
            "total_s": round(stats.total_s, 4) if stats else 0.0,
            "answer_s": round(self.answer_s, 4) if self.answer_s is not None else None,
            **({"support_s": round(self.support_s, 4)} if self.support_s is not None else {}),
            **({"blocks_computed": stats.blocks_computed}
               if stats and stats.blocks_computed is not None else {}),
        }

    def sources(self) -> list[SourceRecord]:
        """The passages the model saw, numbered as in the prompt, marked when cited."""
        cited = set(self.cited())
        return [
            SourceRecord(
                number=n, passage_id=h.passage.id, path=h.passage.path, title=h.passage.title,
                heading=h.passage.heading, page=h.passage.page, line_start=h.passage.line_start,
                line_end=h.passage.line_end, score=h.score if h.rank else None,
                text=h.passage.text, cited=n in cited,
                support=round(self.support[n - 1], 4) if n <= len(self.support) else None,
            )
            for n, h in enumerate(self.hits[: self.sources_shown], start=1)
        ]

    def _record(self) -> None:
        self._history.finish_turn(
            self.turn_id, answer=self.answer, status=self.status, sources=self.sources(),
            retrieval_query=self.query, timings=self.timings(), error=self.error,
            abstained=self.abstained,
        )


class DialogueManager:
    """Answers questions in conversations.

    Args:
        retriever: passage search (``search(query, k=, mode=)``), or None when no index exists
            yet (questions then fail with a clear message).
        generator: the decoder model.
        history: the conversation store.
        top_k: passages retrieved per turn.
        mode: retrieval mode (hybrid, dense, bm25).
        context_tokens: prompt budget (capped by the model's window minus ``max_new_tokens``).
        history_tokens: part of the budget for earlier turns.
        max_new_tokens: longest answer.
        temperature: 0 for greedy decoding.
        prompt_style: ``chat`` (instruction models: passages and history as chat messages),
            ``extractive`` (base models: few-shot completion over the top passage, a short
            span as the answer, see :mod:`assistant.extractive`) or ``auto`` (extractive when
            the model has no chat template).
        rerank_k: the top passages re-ordered by the generator's likelihood of the question
            (:mod:`assistant.rerank`; needs a generator with ``score``); 0 or 1 turns it off.
            Its time counts in the turn's ``retrieval_ms``.
        rerank_first: with ``blocks``, for factoids: only this many top passages are
            scored at first, the rest when those explain the question poorly
            (:class:`~assistant.reader.ExtractiveReader`); 0 scores all at once.
        read_k: extractive answers: how many of the reranked top passages may be read; the
            answer kept is the one with the best reranked score plus answer confidence
            (:meth:`Turn._read_passages`). 1 reads the top passage only; without reranking
            only the top passage is read.
        reader: extractive answers: ``blocks`` (every passage a key/value block computed
            once; reranking, readings and attention support share them, see
            :mod:`assistant.reader`) or ``text`` (each step prefills the passage as prompt
            text: the earlier pipeline, kept for comparison). ``blocks`` needs a generator
            with ``has_blocks``.
        read_mode: with ``blocks``: ``each`` or ``fused`` (see :mod:`assistant.reader`).
        abstain_threshold: with ``blocks``: say the documents do not hold the answer when the
            reader's estimate that they do is below this (0 never abstains). With any reader
            or model, unless 0: a question naming something the documents never mention
            (:meth:`_not_mentioned`) is answered so without reading.
        answer_forms: with ``blocks``: shape the answer for the question's form
            (:mod:`assistant.forms`, :mod:`assistant.composer`); False answers every question
            with a span.
        output_head: with ``blocks``: ``full``, ``screened`` (readings take their logits
            from an int4 copy of the head, exact near the top) or ``passages`` (readings
            compute only the logits of their passages' tokens).
    """

    def __init__(self, *, retriever: _Retriever | None, generator: Generator, history: History,
                 top_k: int = 5, mode: str = "convex", context_tokens: int = 2048,
                 history_tokens: int = 512, max_new_tokens: int = 256, temperature: float = 0.0,
                 prompt_style: str = "auto", rerank_k: int = 5, rerank_first: int = 0,
                 read_k: int = 3, reader: str = "blocks", read_mode: str = "each",
                 abstain_threshold: float = 0.5, answer_forms: bool = True,
                 output_head: str = "screened"):
        self.retriever = retriever
        self.generator = generator
        self.history = history
        self.top_k = top_k
        self.mode = mode
        self.context_tokens = context_tokens
        self.history_tokens = history_tokens
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        if prompt_style == "auto":
            prompt_style = "chat" if getattr(generator, "has_chat_template", True) else "extractive"
        self.prompt_style = prompt_style
        self.rerank_k = rerank_k
        self.rerank_first = rerank_first
        self.read_k = read_k
        self.reader = reader
        self.read_mode = read_mode
        self.abstain_threshold = abstain_threshold
        self.answer_forms = answer_forms
        self.output_head = output_head
        self._lock = threading.Lock()
        self._readings = Readings()
        self._memo: EmbeddingMemo | None = None

    def _embed(self, texts: Sequence[str]):
        """The retriever's embedder, with the vectors of recent texts kept (the composer
        embeds the same sentences again for a follow-up over the same passages)."""
        if self._memo is None or self._memo.embed != self.retriever.embedder.embed:
            self._memo = EmbeddingMemo(self.retriever.embedder.embed)
        return self._memo(texts)

    @property
    def example_questions(self) -> list[str]:
        """Questions the prompt itself answers as worked examples (benchmarks skip them)."""
        return example_questions() if self.prompt_style == "extractive" else []

    @property
    def budget_tokens(self) -> int:
        """Prompt budget in tokens."""
        window = getattr(self.generator, "context_window", self.context_tokens + self.max_new_tokens)
        return max(64, min(self.context_tokens, window - self.max_new_tokens))

    def count_tokens(self, text: str) -> int:
        """``text``'s length in the generator's tokens."""
        return self.generator.count_tokens(text)

    def describe(self) -> dict:
        """What the status line shows: ``model``, ``device``, ``documents``, ``passages``
        (counts are 0 when there is no index yet)."""
        stats = {"documents": 0, "passages": 0}
        store = getattr(self.retriever, "store", None)
        if store is not None:
            stats = store.stats()
        return {"model": self.generator.name, "device": str(getattr(self.generator, "device", "")),
                "documents": stats["documents"], "passages": stats["passages"]}

    def ask(self, question: str, *, conversation_id: str | None = None,
            turn_id: int | None = None) -> Turn:
        """Record ``question``, retrieve passages and start generating.

        The question is stored before anything else can fail. Returns a :class:`Turn` to
        iterate for the streamed answer.

        Args:
            turn_id: a pending turn already recorded with ``history.start_turn`` for this
                question (the chat app records a question the moment it is sent, even while
                the models are still loading); ``conversation_id`` must then be given.

        Raises:
            ValueError: an empty, wordless or over-long question (:func:`check_question`).
            RuntimeError: there is no index to search (the turn is recorded as an error).
        """
        started = time.perf_counter()
        hold = contextlib.ExitStack()
        hold.enter_context(answering())  # background embedding pauses until this answer is done
        try:
            turn = self._ask(question, conversation_id=conversation_id, turn_id=turn_id)
        except BaseException:
            hold.close()
            raise
        turn.started = started
        turn._hold = hold
        return turn

    def _ask(self, question: str, *, conversation_id: str | None, turn_id: int | None) -> Turn:
        try:
            question = check_question(question, self.generator.count_tokens)
        except ValueError as exc:
            if turn_id is not None:  # recorded already (the chat app): keep it, as an error
                self.history.finish_turn(turn_id, answer="", status="error", error=str(exc))
            raise
        if conversation_id is None:
            conversation_id = self.history.new_conversation()
        earlier = self.history.exchanges(conversation_id)
        if turn_id is None:
            turn_id = self.history.start_turn(conversation_id, question, model=self.generator.name)
        request = conversation_request(question)
        if request is not None:  # about this conversation, not the documents
            return self._recap(conversation_id, turn_id, question, request)
        query = retrieval_query(question, earlier)
        if self.retriever is None:
            message = "no index yet: run `assistant index PATH` to index your documents"
            self.history.finish_turn(turn_id, answer="", status="error", error=message,
                                     retrieval_query=query)
            raise RuntimeError(message)
        try:
            result = self.retriever.search(query, k=self.top_k, mode=self.mode)
            unknown = self._unknown_names(question, result.hits)
            if unknown:
                return self._not_mentioned(conversation_id, turn_id, question, query, result,
                                           unknown)
            asked = reading_question(question, earlier)  # what an extractive reader reads
            if self.reads_blocks:
                return self._ask_blocks(conversation_id, turn_id, question, query, result,
                                        earlier, asked=asked)
            if self.chats_over_blocks:
                turn = self._ask_chat_blocks(conversation_id, turn_id, question, query, result,
                                             earlier)
                if turn is not None:
                    return turn
            if self.reranks:
                hits, ms = rerank(asked if self.prompt_style == "extractive" else question,
                                  result.hits, self.generator, k=self.rerank_k)
                result = SearchResult(hits, result.milliseconds + ms)
            if self.prompt_style == "extractive":
                return self._ask_extractive(conversation_id, turn_id, question, query, result,
                                            asked=asked)
            form, evidence = self._evidence(question, query, earlier, list(result.hits))
            prompt = build_prompt(
                question, [h.passage for h in result.hits], counter=self.generator,
                budget_tokens=self.budget_tokens, history=earlier,
                history_tokens=self.history_tokens, form=form, evidence=evidence,
            )
            reply = self.generator.generate(
                prompt.messages, max_new_tokens=self.max_new_tokens, temperature=self.temperature
            )
        except Exception as exc:
            self.history.finish_turn(turn_id, answer="", status="error", error=str(exc),
                                     retrieval_query=query)
            raise
        return Turn(conversation_id, turn_id, question, query, list(result.hits),
                    result.milliseconds, prompt, reply, self.generator.name, self.history,
                    form=form,
                    grounding=f"{self._ranking} · cited by the model and word overlap")

    def _form(self, question: str, earlier: Sequence[tuple[str, str]]) -> str:
        """The question's form (:func:`forms.classify`, after the previous question's for a
        follow-up); ``factoid`` when ``answer_forms`` is off or the retriever has no embedder
        to choose sentences with."""
        if not self.answer_forms or getattr(self.retriever, "embedder", None) is None:
            return "factoid"
        at = _asked(earlier)
        return classify(question, None if at is None else classify(earlier[at][0]))

    def _evidence(self, question: str, query: str, earlier: Sequence[tuple[str, str]],
                  hits: list[Hit]) -> tuple[str, list[tuple[int, str]]]:
        """For a chat model: the question's form and the sentences of ``hits`` an answer of
        that form would quote (:class:`Composer`, no extra search), as ``(source number,
        sentence)``; none for a factoid or with ``answer_forms`` off."""
        form = self._form(question, earlier)
        if form == "factoid" or not hits:
            return form, []
        empty = Reading(hits, ExtractiveAnswer("", None, ""))
        shaped = Composer(self._embed).compose(form, question, empty, query=query)
        return form, list(shaped.sentences)

    def _unknown_names(self, question: str, hits: Sequence[Hit]) -> list[str]:
        """The names in ``question`` (:func:`forms.names`: "UDP", "PostgreSQL", "Pride") that
        no indexed passage holds, leaving out what looks like a misspelling of a word in the
        retrieved passages (:func:`forms.misspelt`) and acronyms they spell out
        (:func:`forms.spelled_out`); [] when abstention is off."""
        store = getattr(self.retriever, "store", None)
        if not self.abstain_threshold or store is None:
            return []
        absent = store.absent_words(names(question))
        texts = [h.passage.text for h in hits]
        return [n for n in absent
                if misspelt(n, texts) is None and spelled_out(n, texts) is None]

    def _not_mentioned(self, conversation_id: str, turn_id: int, question: str, query: str,
                       result: SearchResult, unknown: Sequence[str]) -> Turn:
        """A turn that says the documents do not hold the answer because they never mention
        ``unknown`` (words of the question), with the closest passages still listed; nothing
        is read or generated. On the question set's tune split this caught 3 of the 5
        unanswerable questions ("Is PostgreSQL faster than MySQL?") and no answerable one; on
        SQuAD dev, 2 of 2,921 answerable questions ("Superbowl" for "Super Bowl", the misspelt
        "Geegen") are caught wrongly."""
        quoted = ", ".join(f"“{n}”" for n in unknown)
        text = f"{NOT_FOUND} They never mention {quoted}."
        reading = Reading(list(result.hits), ExtractiveAnswer("", None, text), abstained=True,
                          features={"absent": list(unknown)})
        shown = Prompt([{"role": "user", "content": question}], passages_used=len(result.hits),
                       tokens=0)  # the closest passages are still listed
        return Turn(conversation_id, turn_id, question, query, list(result.hits),
                    result.milliseconds, shown, None, self.generator.name, self.history,
                    extractive=True, job=lambda cancelled: reading,
                    form=self._form(question, []),
                    grounding="retrieval order · not read: the documents never mention "
                              + quoted)

    def _recap(self, conversation_id: str, turn_id: int, question: str,
               request: tuple[str, str]) -> Turn:
        """A turn answered from the conversation's own history (:func:`forms.recap`), no
        retrieval: each line names the turn it comes from."""
        turns = [(n, t["question"], t["answer"]) for n, t in
                 enumerate(self.history.turns(conversation_id), 1)
                 if t["id"] != turn_id and t["answer"] and t["status"] in ("complete", "cancelled")
                 and conversation_request(t["question"]) is None]  # not earlier recaps
        text = recap(request[0], request[1], turns)
        reading = Reading([], ExtractiveAnswer("", None, text))
        return Turn(conversation_id, turn_id, question, "", [], 0.0, None, None,
                    self.generator.name, self.history, extractive=True,
                    job=lambda cancelled: reading, form="conversation")

    @property
    def reads_blocks(self) -> bool:
        """True when extractive answers are read over passage blocks."""
        return (self.prompt_style == "extractive" and self.reader == "blocks"
                and self.generator.has_blocks)

    def _reader(self, form: str = "factoid") -> ExtractiveReader:
        """The extractive reader for a question of ``form``: a composed answer (any form but
        ``factoid``) quotes sentences, so its reading decodes at most :data:`ANCHOR_TOKENS`,
        and quotes them from several passages, so all of them are scored at once (a factoid
        scores ``rerank_first`` first)."""
        factoid = form == "factoid"
        return ExtractiveReader(
            self.generator, rerank_k=self.rerank_k,
            rerank_first=self.rerank_first if factoid else 0, read_k=self.read_k,
            read_mode=self.read_mode, abstain_below=self.abstain_threshold,
            max_new_tokens=min(self.max_new_tokens, 48 if factoid else ANCHOR_TOKENS),
            output_head=self.output_head,
            frequencies=self.retriever.word_passages if self.retriever is not None else None)

    def warm_up(self) -> None:
        """Run the models once on a tiny input, so that the first question does not pay for
        first-call kernel set-up and the worked examples' key/value cache (an answer server
        calls this after loading)."""
        if self.retriever is not None:
            self.retriever.embedder.embed(["warm up"])
        if self.reads_blocks:
            self._reader().warm_up()
        elif self.chats_over_blocks:
            ChatReader(self.generator).warm_up()

    def _ask_blocks(self, conversation_id: str, turn_id: int, question: str, query: str,
                    result, earlier: Sequence[tuple[str, str]] = (), *,
                    asked: str | None = None) -> Turn:
        """An extractive turn over passage blocks; ``asked`` is the question the reader
        answers (:func:`reading_question`; default ``question``)."""
        asked = asked or question
        hits = list(result.hits)
        if not hits:
            raise RuntimeError("no passage matches the question")
        # "Can you say more about that?": what was said since the question it is about is
        # not quoted again
        at = _asked(earlier) if more_request(question) == "more" else None
        said = " ".join(answer for _, answer in earlier[at:]) if at is not None else ""
        form = self._form(question, earlier)
        reader = self._reader(form)
        composer = None
        if form != "factoid":
            composer = Composer(self._embed, search=lambda q, k:
                                self.retriever.search(q, k=k, mode=self.mode).hits,
                                opening=self.retriever.opening,
                                sections=self.retriever.sections)
        prompt = Prompt([{"role": "user", "content": question_text(question)}],
                        passages_used=len(hits), tokens=0)

        yes_no = form == "yesno"
        key = Readings.key(asked, hits, setting=(yes_no, *reader.setting))
        # a composed answer can also take a factoid's longer reading of the same question
        # (a request to say more after a factoid)
        keys = [key] + ([Readings.key(asked, hits, setting=(
            yes_no, *self._reader("factoid").setting))] if form != "factoid" else [])

        def job(cancelled: Callable[[], bool]) -> Reading:
            reading = next((r for r in map(self._readings.get, keys) if r is not None), None)
            if reading is not None:  # read before ("say more", a repeated question)
                reading = dataclasses.replace(reading, read=0, decoded=0, encoded=0, seconds={
                    "encode": 0.0, "score": 0.0, "read": 0.0})
            else:
                reading = reader.read(asked, hits, cancelled=cancelled, yes_no=yes_no,
                                      support=False)
                if not cancelled():
                    self._readings.put(key, reading)
            if composer is None or cancelled():
                return reading
            started = time.perf_counter()
            reading = composer.compose(form, asked, reading, query=query, said=said)
            return dataclasses.replace(reading, seconds={
                **reading.seconds, "compose": time.perf_counter() - started})

        def support(reading: Reading) -> Reading:
            # Measured once the answer is shown (the support pass takes 0.1-0.26 s: the
            # text need not wait for it), and of the answer shown: the quoted sentences when
            # the answer quotes any, not the span read before them (on the question set's
            # tune split the span's top source was not among the cited ones for 16 of 34
            # composed answers, and is for all 34 this way); else the span's.
            started = time.perf_counter()
            # a factoid's passages past those scored have no block (and are not computed now)
            shown = reading.hits[:reading.scored] if 0 < reading.scored < len(hits) else \
                reading.hits
            weights, masses, per_sentence = reader.support_of(
                asked, shown, sentences=[text for _, text in reading.sentences],
                ids=reading.ids)
            seconds = dict(reading.seconds)
            seconds["support"] = time.perf_counter() - started
            return dataclasses.replace(reading, support=weights, masses=masses,
                                       sentence_support=per_sentence, seconds=seconds)

        return Turn(conversation_id, turn_id, question, query, hits, result.milliseconds,
                    prompt, None, self.generator.name, self.history, extractive=True,
                    job=job, support_job=support, form=form,
                    grounding=f"{self._ranking} · cited by attention")

    @property
    def chats_over_blocks(self) -> bool:
        """True when a chat model's answers attend over passage blocks
        (:mod:`assistant.chat_reader`) instead of reading the passages as prompt text."""
        return (self.prompt_style == "chat" and self.reader == "blocks"
                and self.generator.has_blocks and self.generator.direct_decoding())

    def _ask_chat_blocks(self, conversation_id: str, turn_id: int, question: str, query: str,
                         result, earlier: Sequence[tuple[str, str]]) -> Turn | None:
        """A chat turn over passage blocks, in retrieval order (not reranked: see
        :mod:`assistant.chat_reader`); None when the model's chat template does not allow the
        block layout (the caller then uses the text prompt)."""
        hits = list(result.hits)
        reader = ChatReader(self.generator)
        form, evidence = self._evidence(question, query, earlier, hits)
        prompt = reader.prompt(question, hits, budget_tokens=self.budget_tokens,
                               history=earlier, history_tokens=self.history_tokens, form=form,
                               evidence=evidence)
        if prompt is None:
            return None
        reply = reader.start(prompt, hits, max_new_tokens=self.max_new_tokens,
                             temperature=self.temperature)
        shown = Prompt(prompt.messages, prompt.passages_used, prompt.tokens)

        def prepare() -> int:
            # the next turn's prompt over the same passages, up to its question: the
            # conversation so far (this turn as history recorded it)
            after = reader.prompt("", hits, budget_tokens=self.budget_tokens,
                                  history=self.history.exchanges(conversation_id),
                                  history_tokens=self.history_tokens)
            if after is None or after.passages != prompt.passages:
                return 0  # the longer history leaves fewer passages: nothing to reuse
            return reader.prepare(after, hits)

        return Turn(conversation_id, turn_id, question, query, hits, result.milliseconds,
                    shown, reply, self.generator.name, self.history, form=form,
                    prepare=prepare,
                    chat_support=lambda text: reader.support(prompt, hits, text),
                    grounding="retrieval order · cited by the model and word overlap, "
                              "support by attention")

    def prepare_follow_up(self, turn: Turn) -> int:
        """Once ``turn`` is complete and recorded, compute ahead of time (while the reader
        reads the answer) what a follow-up over the same passages starts with: for a chat
        answer over passage blocks, the conversation so far after the blocks. A follow-up
        that retrieves the same passages in the same order (a request to say more does) then
        prefills only its own message. The chat and the answer server call this between
        turns; a one-shot ``ask`` does not. Returns the tokens computed (0: nothing to do)."""
        if turn.status != "complete" or turn.prepare is None:
            return 0
        return turn.prepare()

    @property
    def reranks(self) -> bool:
        """True when the generator re-orders the top ``rerank_k`` passages."""
        return self.rerank_k > 1 and hasattr(self.generator, "score")

    @property
    def _ranking(self) -> str:
        """How a turn's sources are ordered, in words (the first half of ``grounding``)."""
        return "reranked by the generator" if self.reranks else "retrieval order"

    def _ask_extractive(self, conversation_id: str, turn_id: int, question: str, query: str,
                        result, *, asked: str | None = None) -> Turn:
        """An extractive turn with the passages as prompt text; ``asked`` is the question the
        reader answers (:func:`reading_question`; default ``question``)."""
        asked = asked or question
        hits = list(result.hits)
        if not hits:
            raise RuntimeError("no passage matches the question")
        options = dict(max_new_tokens=min(self.max_new_tokens, 48), temperature=self.temperature,
                       stop=("\n",))

        prefix = extractive_prefix()

        def read(i: int, copy: bool) -> Reply:
            passage = hits[i].passage.text
            return self.generator.complete(extractive_prompt(asked, passage),
                                           within=passage if copy else None,
                                           shared_prefix=prefix, **options)

        text = extractive_prompt(asked, hits[0].passage.text)
        reply = read(0, False)
        prompt = Prompt([{"role": "user", "content": text}], passages_used=len(hits),
                        tokens=reply.stats.prompt_tokens)
        return Turn(conversation_id, turn_id, question, query, hits, result.milliseconds,
                    prompt, reply, self.generator.name, self.history, extractive=True,
                    read=read, read_k=min(self.read_k, self.rerank_k) if self.reranks else 1,
                    grounding=f"{self._ranking} · cited: the passage read")
