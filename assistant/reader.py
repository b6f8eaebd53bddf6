"""The extractive reader over passage blocks: rerank, read, cite from attention, or abstain.

Every retrieved passage becomes a key/value block once (:mod:`assistant.generation.blocks`),
after the worked examples of ``prompts/extractive.txt``. On those blocks, in order:

1. **Reranking**: one batched pass gives log P(question | examples + passage) for every block
   (query likelihood, :mod:`assistant.rerank`), and the same pass runs "\\nAnswer:" after the
   question, so every passage's prompt is ready to decode with nothing prefilled again.
2. **Reading** (``read_mode``): ``each`` reads the reranked passages one at a time and keeps
   the answer with the best reranked score + confidence (as the text pipeline does, now
   without any prefill); ``fused`` reads once with the question attending over the top
   ``read_k`` blocks together (cross-attention over the retrieved set).
3. **Support**: the question and the answer's tokens attend over every block at once (all
   ending right before the question, see ``BlockReader.place``); the attention mass that the
   answer tokens put on each block, averaged over the heads in :data:`HEADS`, is the block's
   support (0..1, summing to 1 over the sources). The answer cites the passage it was read
   from; the support weights are shown beside every source.
4. **Abstention**: when the passages do not hold the answer (:func:`abstain_score` below a
   threshold) the reader says so instead of giving a span.

This module does not import torch; the generator does the tensor work.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from index.retrieval import Hit
from index.words import STOPWORDS

from .extractive import ExtractiveAnswer, extractive_prefix, finish
from .forms import stem
from .rerank import answer_value, combine

LEAD = "Question:"
TAIL = "\nAnswer:"
HEADS: tuple[tuple[int, int], ...] = ((3, 3), (11, 2))
"""(layer, head) pairs whose attention gives the support weights (empty = every head of every
layer). Chosen for Gemma 3 270M on 84 dev questions outside the reported sample
(``benchmarks/reader_calibration.py``, BENCHMARKS.md): with the ``end`` layout these two
heads put the most mass on the gold passage for 0.655 of them; all heads averaged 0.464, the
best single layer 0.571, a linear probe over all 72 heads (AT2-style, 6-fold
cross-validated) 0.631. Other models: heads are not chosen for them, so all are used."""

HEADS_MODEL = "gemma-3-270m"
"""The model :data:`HEADS` were chosen for; any other model uses every head."""

NOT_FOUND = "I could not find this in your documents."

VERDICT_MARGIN = 1.0
"""Nats by which log P(" Yes") and log P(" No") as the answer's first token must differ for a
yes/no answer to start with "Yes"/"No" (else the evidence sentence alone is shown)."""

ABSTAIN = (-5.047, 3.478, 4.685)
"""Weights of :func:`abstain_score` over :data:`ABSTAIN_FEATURES`: a bias, then one per
feature. Fitted by logistic regression for Gemma 3 270M on 300 SQuAD dev questions outside
the reported sample, 90 of them unanswerable (their articles left out of the index;
``benchmarks/reader_calibration.py --lean --limit 300``). Six-fold cross-validated there, at
the default threshold 0.45: abstention F1 87.1 (precision 92.5, recall 82.2), 6 of 210
answerable questions abstained; the previous model (pmi and the answer's log-probability)
gave 81.4 with 15 abstained at its 0.5 (BENCHMARKS.md, "Abstention")."""

ABSTAIN_FEATURES = ("pmi", "cover")
"""What :data:`ABSTAIN` weighs, from :attr:`Reading.features`: ``pmi``, the per-token
pointwise mutual information of the question and the best passage (nats per token);
``logprob``, the answer's mean token log-probability (nats); ``cover``, the share of the
question's words the best-covering passage holds (:func:`coverage`)."""


RERANK_MORE_BELOW = 1.0
"""With ``rerank_first``: the rest of the passages are scored too when the best of the first
ones explains the question by less than this many nats per question token (pointwise mutual
information, see :class:`Reading`'s ``features``). Chosen on 300 SQuAD dev questions outside
the reported sample (seed 3; BENCHMARKS.md) among 0.5-2.0: at 1.0, 35 of 300 questions were
scored on all five passages."""

RERANK_FIRST_MARGIN = 3.0
"""With ``rerank_first``, when only the first passages were scored: the question's
log-likelihood (nats, summed over its tokens) after a later passage must exceed that after
retrieval's top passage by this much to put it first. Reranking's min-max scaling
(:func:`~assistant.rerank.combine`) over five passages weighs how far apart their likelihoods
are; over two it keeps only which is higher, and the second passage then won every time it
was more likely at all. Chosen on the same 300 questions among 0-5 (the gold passage first
for 252 of them, against 246 with no margin and 248 when all five were scored) and checked
on 150 others (seed 31): token F1 39.7 against 39.2 scoring all five and 38.1 with no margin
(BENCHMARKS.md)."""


def block_text(passage: str) -> str:
    """A passage as it appears in the extractive prompt: ``Context: <text>\\n``."""
    return f"Context: {' '.join(passage.split())}\n"


def question_text(question: str) -> str:
    """The prompt after the passage: ``Question: <question>\\nAnswer:``."""
    return f"{LEAD} {' '.join(question.split())}{TAIL}"


@dataclass
class Reading:
    """What the reader made of one question.

    Attributes:
        hits: the passages, reranked (numbered from 1 in this order).
        answer: the extractive answer (span, cited source, rendered text), or the
            not-found message when ``abstained``.
        support: per hit, the share of the answer's attention on its block (0..1, sums to 1;
            empty when it could not be measured).
        masses: per layer, per head, per hit: the raw attention mass of the answer tokens.
        abstained: True when the reader judged that the passages do not hold the answer.
        features: what the abstention decision saw (``pmi``, ``logprob``, ``score``).
        ids: the answer's token ids (for support).
        logprob, new_tokens: the kept reading's summed log-probability and its length.
        read: passages read (free readings, copy readings).
        decoded: tokens decoded by all those readings together (``new_tokens`` counts the
            kept one's only).
        encoded: blocks computed for this question (the rest came from the block cache).
        scored: how many of ``hits`` (the first ones) were scored and have a block; the
            others were neither reranked nor read, and have no support weight.
        seconds: ``encode``, ``score``, ``read``, ``support`` wall times.
        raw_span: the span found, also when the reader then abstained.
        verdict: for a yes/no question, "Yes" or "No" when the model's first answer token
            prefers one by at least :data:`VERDICT_MARGIN` nats; else None.
        sentences: the passage sentences the answer quotes, ``(source number, text)`` (set
            by :mod:`assistant.composer`; empty for a span answer).
        sentence_support: per entry of ``sentences``, the support weights (per hit, 0..1)
            of that sentence's tokens alone (see :meth:`ExtractiveReader.support_of`).
    """

    hits: list[Hit]
    answer: ExtractiveAnswer
    support: list[float] = field(default_factory=list)
    masses: list = field(default_factory=list, repr=False)
    abstained: bool = False
    features: dict = field(default_factory=dict)
    ids: list[int] = field(default_factory=list, repr=False)
    logprob: float | None = None
    new_tokens: int = 0
    read: int = 0
    decoded: int = 0
    encoded: int = 0
    seconds: dict = field(default_factory=dict)
    scored: int = 0
    raw_span: str = ""
    verdict: str | None = None
    sentences: list = field(default_factory=list)
    sentence_support: list = field(default_factory=list)


class Readings:
    """The latest readings, by question and passages: an LRU of at most ``size`` entries.

    A reading is greedy and deterministic: the same question over the same passages (ids
    and texts, in the same order) with the same reader gives the same :class:`Reading`. So
    a request to say more, which reads the question it is about over the same passages
    (:func:`assistant.dialogue.reading_question`), and a repeated question take the reading
    from here instead of scoring and decoding again (the with-statement question: about 3.5 s
    on a 2-core CPU). Entries are only what the caller stores: complete readings.
    """

    def __init__(self, size: int = 16):
        self.size = size
        self._items: dict[tuple, Reading] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(question: str, hits: Sequence[Hit], *, setting: tuple = ()) -> tuple:
        """The key of a reading of ``question`` over ``hits`` by a reader configured as
        ``setting`` (any hashable description of the model and reader options)."""
        return (" ".join(question.split()), tuple((h.passage.id, h.passage.text) for h in hits),
                setting)

    def get(self, key: tuple) -> Reading | None:
        """The stored reading (now the most recent), or None."""
        with self._lock:
            reading = self._items.pop(key, None)
            if reading is not None:
                self._items[key] = reading
            return reading

    def put(self, key: tuple, reading: Reading) -> None:
        """Store ``reading``, dropping the least recently used beyond ``size``."""
        with self._lock:
            self._items.pop(key, None)
            self._items[key] = reading
            while len(self._items) > self.size:
                self._items.pop(next(iter(self._items)))


def support_weights(masses, heads: Sequence[tuple[int, int]] = ()) -> list[float]:
    """Per block, its share of the answer's attention: ``masses[layer][head][block]`` averaged
    over ``heads`` (all when empty), normalised to sum to 1 (all zeros stay zeros)."""
    if not masses:
        return []
    picks = list(heads) or [(l, h) for l in range(len(masses)) for h in range(len(masses[l]))]
    blocks = len(masses[picks[0][0]][picks[0][1]])
    total = [sum(masses[l][h][b] for l, h in picks) / len(picks) for b in range(blocks)]
    norm = sum(total)
    return [t / norm if norm > 0 else 0.0 for t in total]


def abstain_score(features: dict, weights: Sequence[float] = ABSTAIN,
                  names: Sequence[str] = ABSTAIN_FEATURES) -> float:
    """Probability (0..1) that the passages hold the answer: a logistic function of the
    features ``names`` with ``weights`` (a bias first; see :data:`ABSTAIN`); 1.0 when no
    weights were fitted."""
    if not any(weights):
        return 1.0
    z = weights[0] + sum(w * features.get(name, 0.0) for w, name in zip(weights[1:], names))
    return 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))


Frequencies = Callable[[Sequence[str]], "tuple[dict[str, int], int]"]
"""``frequencies(words) -> ({word: passages holding it}, passages in the index)``, e.g.
:meth:`index.retrieval.Retriever.word_passages`."""


def coverage(question: str, texts: Sequence[str],
             frequencies: Frequencies | None = None) -> float:
    """The largest share (0..1), over ``texts``, of the question's content words that one
    text holds, each word weighted by its inverse document frequency in the index,
    ln(1 + (N - n + 0.5) / (n + 0.5)) for a word in n of N passages (BM25's, Robertson and
    Spärck Jones), or weighted alike without ``frequencies``. Words are compared without
    plural or verb endings (:func:`~assistant.forms.stem`). When a question's rare words are
    in none of the passages (a name the documents never mention), the answer is unlikely to
    be there. 1.0 for a question of stop words only; 0.0 without texts."""
    words = list(dict.fromkeys(w for w in re.findall(r"[a-z0-9]+", question.lower())
                               if w not in STOPWORDS))
    if not words:
        return 1.0
    if not texts:
        return 0.0
    weight = dict.fromkeys(words, 1.0)
    if frequencies is not None:
        counts, total = frequencies(words)
        weight = {w: math.log(1 + (total - counts.get(w, 0) + 0.5) / (counts.get(w, 0) + 0.5))
                  for w in words}
    asked: dict[str, float] = {}
    for w in words:
        key = stem(w)
        asked[key] = asked.get(key, 0.0) + weight[w]
    whole = sum(asked.values())
    best = 0.0
    for text in texts:
        held = {stem(w) for w in re.findall(r"[a-z0-9]+", text.lower())}
        best = max(best, sum(v for w, v in asked.items() if w in held) / whole)
    return best


class ExtractiveReader:
    """Answers a question from retrieved passages with a base model's block API.

    Args:
        generator: a generator with ``blocks`` (``BlockReader``), ``bos`` and ``end_ids()``.
        rerank_k: top hits reranked by query likelihood (< 2: retrieval order kept).
        rerank_first: when above 0 (and ``rerank_k`` > 1), only this many top hits are
            encoded and scored at first; the other hits only when the best of those explains
            the question by less than :data:`RERANK_MORE_BELOW` nats per token (a span read
            from one passage rarely needs the fourth or fifth: BENCHMARKS.md). 0: every hit.
        more_below: that threshold (nats per question token; None: the constant).
        first_margin: when only those first hits were scored, how many nats more likely
            the question must be after a later one than after the top one for it to be put
            first (None: :data:`RERANK_FIRST_MARGIN`).
        read_k: how many reranked passages may be read (``each``) or are read together
            (``fused``).
        read_mode: ``each`` or ``fused`` (see the module docstring).
        layout: block positions for the support pass (``end``, ``start``, ``sequence``).
        abstain_below: abstain when :func:`abstain_score` is below this (0 never abstains).
        max_new_tokens: longest answer in tokens.
        heads: (layer, head) pairs for support weights; default :data:`HEADS` for the model
            they were chosen for, else every head.
        output_head: how free readings compute their logits: ``full``, ``screened`` (an int4
            copy of the head, exact near the top: the same tokens) or ``passages`` (only the
            tokens of their prompt), see
            :meth:`~assistant.generation.blocks.BlockReader.decode`.
        frequencies: the index's word frequencies, for the ``cover`` feature
            (:func:`coverage`); None weighs every question word alike.
    """

    def __init__(self, generator, *, rerank_k: int = 5, rerank_first: int = 0, read_k: int = 3,
                 read_mode: str = "each", layout: str = "end", abstain_below: float = 0.45,
                 max_new_tokens: int = 48, heads: Sequence[tuple[int, int]] | None = None,
                 output_head: str = "full", more_below: float | None = None,
                 first_margin: float | None = None, frequencies: Frequencies | None = None):
        self.generator = generator
        self.frequencies = frequencies
        self.more_below = RERANK_MORE_BELOW if more_below is None else more_below
        self.first_margin = RERANK_FIRST_MARGIN if first_margin is None else first_margin
        self.rerank_k = rerank_k
        self.rerank_first = max(0, rerank_first)
        self.read_k = max(1, read_k)
        self.read_mode = read_mode
        self.layout = layout
        self.abstain_below = abstain_below
        self.max_new_tokens = max_new_tokens
        self.output_head = output_head
        if heads is None:
            heads = HEADS if getattr(generator, "name", "") == HEADS_MODEL else ()
        self.heads = tuple(heads)

    @property
    def setting(self) -> tuple:
        """What a reading depends on besides the question and the passages: the model and
        the options :meth:`read` uses (a key for :class:`Readings`)."""
        return (getattr(self.generator, "name", ""), self.rerank_k, self.rerank_first,
                self.more_below, self.first_margin, self.read_k,
                self.read_mode, self.layout, self.abstain_below, self.max_new_tokens,
                self.output_head)

    def warm_up(self) -> None:
        """Build the worked examples' cache and run one tiny block through scoring and a
        two-token reading (first-call kernel set-up)."""
        blocks_api = self.generator.blocks
        prefix = blocks_api.prefix(self.generator.bos + extractive_prefix())
        blocks = blocks_api.blocks(prefix, [("warm-up", block_text("Warm up."))])
        scored = blocks_api.score(prefix, blocks, lead=LEAD, target=" Warm?", tail=TAIL)
        blocks_api.decode(scored.states[0], max_new_tokens=2, end_ids=[],
                          head=self.output_head)

    def read(self, question: str, hits: Sequence[Hit], *,
             cancelled: Callable[[], bool] = lambda: False, yes_no: bool = False,
             support: bool = True) -> Reading:
        """Rerank, read and cite over ``hits`` (every hit becomes a block). With ``yes_no``,
        also the verdict (see :attr:`Reading.verdict`) after the passage the answer was read
        from. ``support`` False leaves out the support pass (the caller measures it with
        :meth:`support_of` for the answer it shows; abstention does not use it).

        Raises:
            RuntimeError: no hits.
            GenerationError: the model failed (out of memory).
        """
        hits = list(hits)
        if not hits:
            raise RuntimeError("no passage matches the question")
        blocks_api = self.generator.blocks
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        prefix = blocks_api.prefix(self.generator.bos + extractive_prefix())
        before = blocks_api.encoded
        items = [(h.passage.id, block_text(h.passage.text)) for h in hits]
        first = len(hits)
        if self.rerank_first and self.rerank_k > 1:
            first = min(self.rerank_first, len(hits))
        blocks = blocks_api.blocks(prefix, items[:first])
        seconds["encode"] = time.perf_counter() - started

        at = time.perf_counter()
        target = " " + " ".join(question.split())
        scored = blocks_api.score(prefix, blocks, lead=LEAD, target=target, tail=TAIL,
                                  null=True)
        loglik, states = list(scored.loglik), list(scored.states)
        tokens = max(scored.target_tokens, 1)

        def pmi(values: Sequence[float]) -> float:  # of the best passage, nats per token
            return (max(values) - scored.null_loglik) / tokens

        if first < len(hits) and pmi(loglik) < self.more_below:
            seconds["score"] = time.perf_counter() - at
            at = time.perf_counter()
            more = blocks_api.blocks(prefix, items[first:])
            seconds["encode"] += time.perf_counter() - at
            at = time.perf_counter()
            rest = blocks_api.score(prefix, more, lead=LEAD, target=target, tail=TAIL)
            blocks += more
            loglik += rest.loglik
            states += rest.states
        encoded = blocks_api.encoded - before
        count = len(blocks)
        fit = loglik
        if count < len(hits) and self.first_margin:
            # min-max over two or three likelihoods keeps only their order: retrieval's
            # top passage is overturned only by a likelihood higher by the margin
            fit = [ll - (self.first_margin if i else 0.0) for i, ll in enumerate(loglik)]
        reranked = combine(hits, fit, k=min(self.rerank_k, count))
        index_of = {h.passage.id: i for i, h in enumerate(hits)}
        order = [index_of[r.passage.id] for r in reranked[:count]]
        hits = reranked
        blocks = [blocks[i] for i in order]
        states = [states[i] for i in order]
        loglik = [loglik[i] for i in order]
        seconds["score"] = seconds.get("score", 0.0) + time.perf_counter() - at

        at = time.perf_counter()
        ends = self.generator.end_ids()
        decode = dict(max_new_tokens=self.max_new_tokens, end_ids=ends, cancelled=cancelled,
                      head=self.output_head)
        readable = min(self.read_k, count) if self.rerank_k > 1 else 1
        counts = {"read": 0, "decoded": 0}

        def reading(state, **options):  # one decode, counted
            text, done = blocks_api.decode(state, **options)
            counts["read"] += 1
            counts["decoded"] += len(done.ids)
            return text, done

        if self.read_mode == "fused" and readable > 1:
            state = blocks_api.fused(prefix, blocks[:readable], question_text(question),
                                     layout=self.layout)
            text, done = reading(state, **decode)
            answer = _finish_over(text, hits[:readable], question)
            if not answer.supported and not cancelled():
                union = " ".join(h.passage.text for h in hits[:readable])
                text, done_copy = reading(state, within=union, **decode)
                copied = _finish_over(text, hits[:readable], question)
                if copied.span:
                    answer, done = copied, done_copy
            best = (answer, done)
            best_i = 0
        else:
            best_value, best, best_i = None, None, 0
            for i in range(readable):
                if best is not None and (cancelled() or hits[i].score <= best_value):
                    continue
                text, done = reading(states[i], **decode)
                answer = finish(text, hits[i].passage.text, i + 1, question)
                confidence = done.mean_logprob
                if not answer.supported and not cancelled():
                    text, done_copy = reading(states[i], within=hits[i].passage.text,
                                              **decode)
                    copied = finish(text, hits[i].passage.text, i + 1, question)
                    if copied.span:
                        answer, done = copied, done_copy
                value = answer_value(hits[i].score, confidence)
                if best is None or (answer.span and value > best_value) or not best[0].span:
                    best_value, best, best_i = value, (answer, done), i
        answer, done = best
        seconds["read"] = time.perf_counter() - at

        at = time.perf_counter()
        weights, masses, _ = ([], [], []) if cancelled() or not support else self._support(
            question, prefix, blocks, [list(done.ids)])
        seconds["support"] = time.perf_counter() - at

        features = {
            "pmi": pmi(loglik) if scored.null_loglik is not None else 0.0,
            "loglik": max(loglik) / tokens,
            "logprob": done.mean_logprob,
            "score": hits[0].score,
            "top_support": max(weights) if weights else 0.0,
            "cover": coverage(question, [h.passage.text for h in hits], self.frequencies),
        }
        abstained = bool(self.abstain_below) and abstain_score(features) < self.abstain_below
        raw_span = answer.span
        if abstained:
            answer = ExtractiveAnswer("", None, NOT_FOUND)
        verdict = None
        if yes_no and not abstained:
            yes, no = blocks_api.first_token_logprobs(states[best_i], ("Yes", "No"))
            features["yes_margin"] = yes - no
            if abs(yes - no) >= VERDICT_MARGIN:
                verdict = "Yes" if yes > no else "No"
        return Reading(hits, answer, weights, masses, abstained, features, list(done.ids),
                       done.logprob, len(done.ids), counts["read"], counts["decoded"], encoded,
                       seconds, count, raw_span, verdict)

    def support_of(self, question: str, hits: Sequence[Hit], *,
                   sentences: Sequence[str] = (), ids: Sequence[int] = ()
                   ) -> tuple[list, list, list]:
        """The attention support of an answer over the blocks of ``hits``, in one support
        pass (:meth:`BlockReader.support_parts
        <assistant.generation.blocks.BlockReader.support_parts>`): of the quoted
        ``sentences`` run as the answer, one after another (an answer composed of passage
        sentences: the support shown is then that of the sentences shown, not of the span
        read before them), else of a reading's token ``ids``. Blocks come from the cache (a
        hit added since is encoded).

        Returns:
            ``(support, masses, per_sentence)``: ``support`` and ``masses`` as in
            :class:`Reading`; ``per_sentence[i]`` the support weights (per hit, 0..1) of
            sentence ``i``'s tokens alone ([] without sentences). Empty when nothing was
            recorded.
        """
        blocks_api = self.generator.blocks
        prefix = blocks_api.prefix(self.generator.bos + extractive_prefix())
        blocks = blocks_api.blocks(prefix, [(h.passage.id, block_text(h.passage.text))
                                            for h in hits])
        parts = ([blocks_api.tokens(" " + " ".join(text.split())) for text in sentences]
                 if sentences else [list(ids)])
        support, masses, per_part = self._support(question, prefix, blocks, parts)
        return support, masses, per_part if sentences else []

    def _support(self, question: str, prefix, blocks, parts: Sequence[Sequence[int]]
                 ) -> tuple[list, list, list]:
        """``(support, masses, per_part)`` of the answer made of ``parts`` (token ids) over
        ``blocks``, from one support pass that records only the support heads' layers."""
        layers = {layer for layer, _ in self.heads} or None  # None: every layer
        masses, per_part = self.generator.blocks.support_parts(
            prefix, blocks, question_text(question), parts, layout=self.layout, layers=layers)
        return (support_weights(masses, self.heads), masses,
                [support_weights(m, self.heads) for m in per_part])


def _finish_over(raw: str, hits: Sequence[Hit], question: str = "") -> ExtractiveAnswer:
    """An answer read over several passages, aligned to the first (in rank order) whose words
    it matches (its ``source`` is that passage's 1-based number); else as read from the first.
    ``question`` picks the quoted sentence (:func:`~assistant.extractive.finish`)."""
    first = None
    for number, hit in enumerate(hits, 1):
        answer = finish(raw, hit.passage.text, number, question)
        if answer.supported:
            return answer
        first = first or answer
    return first
