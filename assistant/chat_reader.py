"""The chat reader over passage blocks: an instruction model writes its own answer while
attending over every retrieved passage's key/value block, and each sentence it writes gets
the attention support of the blocks.

The prompt is :func:`~assistant.prompts.build_block_prompt`'s: the system text, then the
passages (each a block computed once after that text, kept in the generator's block LRU, so a
follow-up turn or a repeated question that retrieves a passage again does not prefill it
again; its number, ``Source [2] ``, is a tiny label block of its own placed right before it,
so the passage's block serves under any number), then the earlier turns and the question,
which attend over all the blocks at once. ``layout`` places the blocks (``BlockReader.place``): ``sequence`` (the
default) one after another in retrieval order, keys re-rotated to the positions they would
have in the text prompt (Block-Attention, Sun et al. 2024); ``start`` all at the same
positions (Parallel Context Windows); ``end`` all ending right before the question. On the
question set's tune split with SmolLM2-135M-Instruct (43 questions, BENCHMARKS.md) key-fact
recall was 46.9 with ``sequence``, 46.1 with ``start``, 31.1 with ``end``, and 34.6 with the
passages as prompt text. Passages keep their retrieval order: the generator does not rerank
them (no passage is prefilled only to be scored).

Once the answer is complete, one more pass runs its sentences as the answer tokens and reads
their attention over the blocks (:meth:`ChatReader.support`): the support weights shown beside
every source, and each sentence's own. That pass places the blocks with ``support_layout``
(``end``: with ``sequence`` the last passage, nearest to the question, drew the most attention
whatever it held) and averages the heads of :data:`SUPPORT_LAYERS` for the models they were
chosen for, every head of every layer for others.

This module does not import torch; the generator does the tensor work.
"""

from __future__ import annotations

import re
from typing import Sequence

from index.retrieval import Hit

from .attribution import CITATION
from .generation import Reply, labelled
from .prompts import BlockPrompt, build_block_prompt
from .reader import support_weights

SUPPORT_LAYERS: dict[str, tuple[int, ...]] = {"SmolLM2-135M-Instruct": (18,)}
"""Per model (its name's last path part), the layers whose heads, averaged, give the support
weights. SmolLM2-135M-Instruct: on the question set's tune split (35 answered questions with a
gold source shown, ``end`` layout) the source with the most support was a gold one for 0.74
of them with layer 18 (the best of its 30 layers), 0.60 with every head of every layer, 0.46
with every head in the ``sequence`` layout; citing the first source the answer cites 0.66,
the top retrieved source 0.77 (BENCHMARKS.md)."""

_SENTENCE = re.compile(r"\S.*?(?:[.!?](?:[ \t]*" + CITATION.pattern + r")*(?=\s|$)|\n\n|$)", re.S)


def answer_sentences(text: str) -> list[str]:
    """``text`` cut into sentences that, joined, give ``text`` back (each keeps the white
    space before it): a sentence ends at ``.``, ``!`` or ``?`` before white space (with the
    citations right after it: ``It is. [1]``), or at a blank line."""
    out, at = [], 0
    for match in _SENTENCE.finditer(text):
        out.append(text[at:match.end()])
        at = match.end()
    if at < len(text) and out:
        out[-1] += text[at:]
    return [s for s in out if s.strip()]


def _per_source(masses: list) -> list:
    """``masses[layer][head][segment]`` over label, passage, label, passage, ... as
    ``masses[layer][head][passage]``, each label's mass added to its passage's."""
    return [[[row[i] + row[i + 1] for i in range(0, len(row), 2)] for row in layer]
            for layer in masses]


class ChatReader:
    """Answers with an instruction model over passage blocks.

    Args:
        generator: a generator with passage blocks and the direct decoding loop
            (``has_blocks``, ``direct_decoding()``, ``render``, ``generate_over``, ``blocks``).
        layout: where the blocks sit for the question and the answer (``sequence``,
            ``start`` or ``end``; see the module docstring).
        support_layout: where they sit for the support pass.
    """

    def __init__(self, generator, *, layout: str = "sequence", support_layout: str = "end"):
        self.generator = generator
        self.layout = layout
        self.support_layout = support_layout
        self.layers = SUPPORT_LAYERS.get(str(getattr(generator, "name", "")).rstrip("/")
                                         .rsplit("/", 1)[-1], ())

    def prompt(self, question: str, hits: Sequence[Hit], *, budget_tokens: int,
               history: Sequence[tuple[str, str]] = (), history_tokens: int = 512,
               form: str = "factoid", evidence: Sequence[tuple[int, str]] = ()
               ) -> BlockPrompt | None:
        """The block prompt for ``question`` over ``hits`` (see
        :func:`~assistant.prompts.build_block_prompt`); None when the model's chat template
        does not allow it."""
        return build_block_prompt(
            question, [h.passage for h in hits], counter=self.generator,
            render=self.generator.render, budget_tokens=budget_tokens, history=history,
            history_tokens=history_tokens, form=form, evidence=evidence)

    def warm_up(self) -> None:
        """Compute the head's key/value cache and answer two tokens over one tiny block
        (first-call kernel set-up), so that the first question pays for neither."""
        prompt = self.prompt("Warm up?", [], budget_tokens=10**6)
        if prompt is not None:
            self.generator.generate_over(prompt.head, [("warm-up", "(warm up):\nWarm up.\n\n")],
                                         prompt.tail, labels=["Source [1] "],
                                         layout=self.layout, max_new_tokens=2).text()

    @staticmethod
    def _items(prompt: BlockPrompt, hits: Sequence[Hit]) -> list[tuple[object, str]]:
        return [(h.passage.id, text) for h, text in zip(hits, prompt.passages)]

    def start(self, prompt: BlockPrompt, hits: Sequence[Hit], *, max_new_tokens: int = 256,
              temperature: float = 0.0) -> Reply:
        """Start the answer (a streaming :class:`~assistant.generation.Reply`; the blocks are
        computed or taken from the LRU when it is first iterated).

        Raises:
            GenerationError: the model cannot decode over blocks.
        """
        return self.generator.generate_over(
            prompt.head, self._items(prompt, hits), prompt.tail, labels=prompt.labels,
            layout=self.layout, max_new_tokens=max_new_tokens, temperature=temperature)

    def prepare(self, prompt: BlockPrompt, hits: Sequence[Hit]) -> int:
        """Compute ahead of time the part of ``prompt`` after the blocks (``prepare_over``):
        built for a follow-up with the conversation so far, its earlier turns are what a
        follow-up over the same passages starts with, so that follow-up prefills only its
        own message. Returns the tokens computed."""
        return self.generator.prepare_over(prompt.head, self._items(prompt, hits), prompt.tail,
                                           labels=prompt.labels, layout=self.layout)

    def support(self, prompt: BlockPrompt, hits: Sequence[Hit], answer: str
                ) -> tuple[list[float], list[tuple[str, list[float]]]]:
        """The attention support of ``answer`` (the model's text) over the passages' blocks,
        from one pass that runs its sentences (:func:`answer_sentences`) as the answer tokens
        (``BlockReader.support_parts``).

        Returns:
            ``(support, sentences)``: per passage of the prompt, its share of the answer's
            attention (0..1, summing to 1); per sentence, ``(text, support)`` with the text
            without citation markers and with single spaces. Empty when the answer has no
            sentence or attention cannot be recorded.
        """
        pieces = answer_sentences(answer)
        if not pieces or not prompt.passages:
            return [], []
        blocks_api = self.generator.blocks
        prefix = blocks_api.prefix(prompt.head)
        blocks = blocks_api.blocks(prefix, self._items(prompt, hits))
        segments = labelled(blocks_api, prefix, blocks, prompt.labels)
        parts = [blocks_api.tokens(piece) for piece in pieces]
        masses, per_part = blocks_api.support_parts(
            prefix, segments, prompt.tail, parts, layout=self.support_layout,
            layers=set(self.layers) or None)  # None: every layer
        if not masses:
            return [], []
        if prompt.labels:  # a passage's share: its label's and its own
            masses, per_part = _per_source(masses), [_per_source(m) for m in per_part]
        heads = [(layer, h) for layer in self.layers for h in range(len(masses[layer]))]
        sentences = [(" ".join(CITATION.sub("", piece).split()), support_weights(m, heads))
                     for piece, m in zip(pieces, per_part)]
        return support_weights(masses, heads), [(text, w) for text, w in sentences if text]
