"""Passages as key/value blocks: cross-attention over retrieved context for decoder-only models.

A *block* is one passage's key/value cache, computed once, on its own, right after a shared
prefix (the worked examples of the extractive prompt); the question and the answer tokens then
attend over the prefix and any set of blocks. This is the decoder-only form of Fusion-in-Decoder
(Izacard & Grave 2021) with the position layout of Parallel Context Windows (Ratner et al.
2023): every block starts at the position right after the prefix, and the tokens after the
blocks start after the longest block. With one block that is exactly the concatenated prompt
(prefix + passage + question), so the logits are the same as reading the prompt as text.

The attention mask is built from positions, per layer type, and passed explicitly: a key is
visible when it is valid, not after the query, and (sliding-window layers, e.g. 15 of Gemma 3's
18) less than ``sliding_window`` positions before it. Caches are kept whole (full layers of
one buffer per batch, :class:`GrowingLayer`), so no block is silently dropped on a sliding
layer.

Attention mass on the blocks is read with a registered attention function that wraps
``sdpa``: only the rows of the tokens asked for, ``(batch, heads, rows, keys)``, are computed
again in float32; no full attention matrix is kept.

This module imports torch and transformers; only :mod:`assistant.generation` imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Generator, Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer

from . import cache_argument, cache_of

if TYPE_CHECKING:
    from .precision import Int4Head

CAPTURE = "assistant_capture"
"""Name of the attention implementation registered by :func:`enable_capture`."""

_local = threading.local()


@dataclass
class KV:
    """Keys and values of a run of ``n`` tokens for every layer, and their positions.

    Attributes:
        keys, values: one tensor per layer, ``(kv_heads, n, head_dim)``, as stored in the
            model's cache (keys already rotated by RoPE at ``positions``).
        positions: ``(n,)`` long, the RoPE position of each token.
        ids: the token ids.
    """

    keys: list
    values: list
    positions: "torch.Tensor"
    ids: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory held, in bytes."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def head(self, n: int) -> "KV":
        """The first ``n`` tokens' keys and values (views, not copies)."""
        return KV([k[:, :n] for k in self.keys], [v[:, :n] for v in self.values],
                  self.positions[:n], self.ids[:n])


@dataclass
class Row:
    """One sequence to run: what it attends to (``context``, segments in order) and the new
    token ``ids`` with their ``positions``."""

    context: list[KV]
    ids: list[int]
    positions: list[int]


class Recorder:
    """Collects attention probabilities of chosen query rows while active on this thread.

    ``rows``: a slice of the new tokens' positions (query rows) to record. ``probs[layer]``
    is then ``(batch, heads, rows, keys)`` float32, keys in cache order (context then new).
    ``layers``: record only these (None: every layer); the forward pass then stops after the
    last of them (:class:`Recorded` is raised there), since nothing after it is read.
    """

    def __init__(self, rows: slice, layers: "set[int] | None" = None):
        self.rows = rows
        self.layers = layers
        self.probs: dict[int, torch.Tensor] = {}

    def __enter__(self) -> "Recorder":
        _local.recorder = self
        return self

    def __exit__(self, *exc) -> None:
        _local.recorder = None


class Recorded(Exception):
    """Ends a forward pass whose :class:`Recorder` has every layer it asked for."""


def _capture_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                       **kwargs):
    """sdpa attention that, while a :class:`Recorder` is active, also records softmax(q k^T)
    for its rows. Shapes: query ``(batch, heads, q_len, d)``, key ``(batch, kv_heads, k_len, d)``."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    recorder = getattr(_local, "recorder", None)
    if recorder is not None and (recorder.layers is None or module.layer_idx in recorder.layers):
        q = query[:, :, recorder.rows, :].float()
        k = repeat_kv(key, query.shape[1] // key.shape[1]).float()
        scale = scaling if scaling is not None else q.shape[-1] ** -0.5
        logits = q @ k.transpose(-1, -2) * scale  # (batch, heads, rows, keys)
        cap = getattr(getattr(module, "config", None), "attn_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        if attention_mask is not None and attention_mask.dim() == 4:
            logits = logits + attention_mask[:, :, recorder.rows, : k.shape[-2]].float()
        recorder.probs[module.layer_idx] = torch.softmax(logits, dim=-1)
        if recorder.layers is not None and module.layer_idx == max(recorder.layers):
            raise Recorded  # every layer asked for is recorded: the rest is not needed
    if (attention_mask is not None and attention_mask.dim() == 4 and not kwargs.get("softcap")
            and attention_mask.is_floating_point()):  # additive (not transformers' bool masks)
        if query.shape[2] <= SMALL_QUERY:
            return _small_attention(query, key, value, attention_mask, scaling), None
        if (getattr(module, "bf16_prefill", False) and query.shape[2] >= BF16_QUERY
                and query.shape[0] * query.shape[1] * query.shape[2] * key.shape[2]
                <= BF16_SCORES):
            return _bf16_attention(query, key, value, attention_mask, scaling), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                  dropout=dropout, **kwargs)


SMALL_QUERY = 16
"""Up to this many query tokens (decoding passes: one token plus its drafts) attention is two
matrix products and a softmax (:func:`_small_attention`) instead of sdpa's CPU flash kernel,
which took 0.44 ms per layer for one Gemma 3 270M query over 801 keys (8 ms of a 30 ms
decoding pass on this 2-core CPU)."""


BF16_QUERY = 32
"""Under ``mixed`` precision (modules marked ``bf16_prefill``, see
:func:`~assistant.generation.precision.mark_bf16_attention`), from this many query tokens on (encoding
passage blocks; as :data:`~assistant.generation.precision.PREFILL_ROWS` for the Linear
layers) attention's two products run in bfloat16 (:func:`_bf16_attention`) instead of sdpa's
float32 flash kernel: for five Gemma 3 270M blocks of 155 tokens behind the
659-token worked examples, 10.0 against 20.1 ms per layer on this project's 2-core
AVX512-BF16 CPU (BENCHMARKS.md, "Round 12")."""

BF16_SCORES = 2**25
"""Up to this many attention scores (batch × heads × queries × keys) the bfloat16 path is
taken; a longer prompt goes to sdpa's flash kernel."""

BF16_CHUNK = 2**21
"""Bytes of float32 scores the bfloat16 path computes at once (one batch row, a run of
queries), which stay in the CPU's caches: 5 × 155-token blocks took 10.0 ms per layer this
way against 19.2 ms for the whole batch at once (BENCHMARKS.md, "Round 12")."""


def _small_attention(query, key, value, mask, scaling):
    """softmax(q k^T · scaling + mask) v for a few queries, keys shared by groups of heads
    (grouped-query attention) without repeating them.

    Shapes: query ``(batch, heads, q, d)``, key/value ``(batch, kv_heads, k, d)``, mask
    ``(batch, 1, q, ≥k)`` additive. Returns ``(batch, q, heads, d)`` as transformers'
    attention functions do.
    """
    b, heads, q, d = query.shape
    kv = key.shape[1]
    groups = heads // kv
    scale = scaling if scaling is not None else d ** -0.5
    grouped = query.reshape(b, kv, groups * q, d)  # head i reads kv head i // groups
    scores = (grouped @ key.transpose(-1, -2)) * scale  # (b, kv, groups·q, k)
    scores = scores.view(b, kv, groups, q, -1) + mask[:, :, None, :, : key.shape[2]]
    probs = torch.softmax(scores.float(), dim=-1).to(value.dtype)
    out = probs.view(b, kv, groups * q, -1) @ value  # (b, kv, groups·q, d)
    return out.view(b, heads, q, d).transpose(1, 2).contiguous()


def _bf16_attention(query, key, value, mask, scaling):
    """softmax(q k^T · scaling + mask) v for a prefill under ``mixed`` precision: q·scaling,
    k, the probabilities and v rounded to bfloat16 for the two products (each accumulated in
    float32 by the CPU's kernels, its result rounded to bfloat16), the mask and softmax in
    float32, as the ``mixed`` Linear layers round their inputs and outputs; keys shared by
    groups of heads without repeating them; one batch row and a run of queries at a time
    (:data:`BF16_CHUNK`), so that the scores stay in the CPU's caches.

    Shapes: query ``(batch, heads, q, d)``, key/value ``(batch, kv_heads, k, d)``, mask
    ``(batch or 1, 1, q, ≥k)`` additive. Returns ``(batch, q, heads, d)`` in the query's
    dtype, as transformers' attention functions do.
    """
    b, heads, q, d = query.shape
    kv, keys = key.shape[1], key.shape[2]
    groups = heads // kv
    scale = scaling if scaling is not None else d ** -0.5
    out = query.new_empty(b, q, heads, d)
    run = max(1, BF16_CHUNK // (4 * heads * keys))
    for row in range(b):
        k = key[row].to(torch.bfloat16).transpose(-1, -2)
        v = value[row].to(torch.bfloat16)
        row_mask = mask[row if mask.shape[0] > 1 else 0]  # (1, q, ≥k)
        for start in range(0, q, run):
            end = min(q, start + run)
            part = query[row, :, start:end].to(torch.bfloat16).mul_(scale)  # (heads, n, d)
            scores = part.reshape(kv, groups * (end - start), d) @ k
            scores = scores.float().view(kv, groups, end - start, keys).add_(
                row_mask[:, None, start:end, :keys])
            probs = torch.softmax(scores, dim=-1).to(torch.bfloat16)
            part = probs.view(kv, groups * (end - start), keys) @ v  # (kv, groups·n, d)
            out[row, start:end] = part.view(heads, end - start, d).transpose(0, 1)
    return out


def enable_capture(model) -> bool:
    """Register the recording attention (once per process) and switch ``model`` to it.
    Returns False, leaving the model as it is, when the model's attention cannot be
    switched (older architectures)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if CAPTURE not in AttentionInterface._global_mapping:
        AttentionInterface.register(CAPTURE, _capture_attention)
        AttentionMaskInterface.register(CAPTURE, sdpa_mask)
    try:
        model.set_attn_implementation(CAPTURE)
    except (ValueError, KeyError, AttributeError):
        return False
    return model.config._attn_implementation == CAPTURE


def growing_cache(context: Sequence[KV], room: int) -> "Cache":
    """A batch-of-one key/value cache holding the segments of ``context`` in order, with
    space for ``room`` more tokens written in place (see :class:`GrowingLayer`)."""
    layers = len(context[0].keys)
    return Cache(layers=[GrowingLayer([[s.keys[i] for s in context]],
                                      [[s.values[i] for s in context]], room)
                         for i in range(layers)])


class GrowingLayer(DynamicLayer):
    """A cache layer whose keys and values live in a buffer with room to grow, written in
    place: a ``DynamicLayer`` copies the layer's whole cache at every decoding pass
    (``torch.cat``), which measured 17 ms of a 71 ms Gemma 3 270M pass after an 800-token
    prompt on this 2-core CPU. ``keys``/``values`` are views of the filled part,
    ``(rows, kv_heads, filled, head_dim)``; past its room the buffer doubles.

    Built from each row's segments ``(kv_heads, n_i, head_dim)``, copied once into the
    buffer; rows with fewer context tokens than the longest are padded with zeros (the caller
    masks them). ``crop`` (transformers' convention: a negative count of tokens to drop)
    forgets the last tokens.
    """

    def __init__(self, keys: Sequence[Sequence["torch.Tensor"]],
                 values: Sequence[Sequence["torch.Tensor"]], room: int):
        super().__init__()
        first = next(k for row in keys for k in row)
        self.device = first.device
        self.filled = max(sum(k.shape[1] for k in row) for row in keys)
        shape = (len(keys), first.shape[0], self.filled + room, first.shape[2])
        value = next(v for row in values for v in row)
        padded = len(keys) > 1
        self._k = first.new_zeros(shape) if padded else first.new_empty(shape)
        self._v = value.new_zeros(shape) if padded else value.new_empty(shape)
        for b, (row_k, row_v) in enumerate(zip(keys, values)):
            at = 0
            for k, v in zip(row_k, row_v):
                self._k[b, :, at:at + k.shape[1]] = k
                self._v[b, :, at:at + k.shape[1]] = v
                at += k.shape[1]
        self._views()
        self.is_initialized = True

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, :self.filled], self._v[:, :, :self.filled]

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[2]
        if self.filled + n > self._k.shape[2]:
            grow = max(self._k.shape[2], n)
            self._k = torch.cat([self._k, torch.empty_like(self._k[:, :, :grow])], dim=2)
            self._v = torch.cat([self._v, torch.empty_like(self._v[:, :, :grow])], dim=2)
        self._k[:, :, self.filled:self.filled + n] = key_states
        self._v[:, :, self.filled:self.filled + n] = value_states
        self.filled += n
        self._views()
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last ``-tokens_to_remove`` tokens (rejected drafts)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to remove")
        self.filled += tokens_to_remove
        self._views()


def text_hash(text: str) -> str:
    """A short stable digest of ``text`` (sha1, 16 hex digits), for cache keys."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


class BlockCache:
    """An LRU of :class:`KV` blocks bounded in bytes.

    Keys are tuples the caller builds from everything that changes a block: model, passage
    id, a hash of the passage text and a hash of the prefix, so a changed passage is never
    served from an old block. Thread-safe.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple, KV] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> KV | None:
        """The block stored under ``key`` (now the most recently used), or None."""
        with self._lock:
            block = self._items.get(key)
            if block is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return block

    def put(self, key: tuple, block: KV) -> None:
        """Store ``block``; the least recently used blocks are dropped past ``max_bytes``."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self._items[key] = block
            self.bytes += block.nbytes
            while self.bytes > self.max_bytes and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self.bytes -= dropped.nbytes

    def __len__(self) -> int:
        return len(self._items)


class BlockModel:
    """Runs a Hugging Face causal LM over explicit key/value segments.

    Args:
        model: a transformers causal LM whose layers keep a ``DynamicCache`` (Llama, Qwen2,
            Gemma 3, SmolLM2 and most decoder-only models).
        device: where it runs.

    The model's attention is switched to :data:`CAPTURE` (sdpa plus optional recording).
    """

    def __init__(self, model, device: str):
        self.model = model
        self.device = device
        config = model.config.get_text_config(decoder=True)
        self.layers = int(config.num_hidden_layers)
        self.layer_types = list(getattr(config, "layer_types", None) or
                                ["full_attention"] * self.layers)
        self.sliding_window = getattr(config, "sliding_window", None)
        self.dtype = next(model.parameters()).dtype
        self.capturing = enable_capture(model)
        self._cache_arg = cache_argument(model)
        self._decoder_cache_arg = cache_argument(model.get_decoder())
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self._output = None  # the output head's float weight and bias, found on first use
        self._direct = DirectDecoder.of(model, self.layer_types)

    # --- the output head ----------------------------------------------------------------
    def head_rows(self, rows: Sequence[int]) -> "Head":
        """The output head cut to the token ids ``rows`` (sorted, unique): a
        :class:`Head` whose logits are ``(..., len(rows))``, for decoding that can only choose
        among those tokens (an extractive reading copies its passages). Gemma 3 270M's full
        head is 262,144 × 640 (168 M of its 268 M parameters); a reading's rows are ~1 k."""
        ids = torch.tensor(sorted(set(int(r) for r in rows)), dtype=torch.long,
                           device=self.device)
        weight, bias = self._output_weight()
        rows = weight.index_select(0, ids)
        if rows.dtype == torch.float16 and self.device == "cpu":  # float16-stored embedding
            rows = rows.float()
        return Head(ids, rows, None if bias is None else bias.index_select(0, ids), self.softcap)

    def _output_weight(self):
        """The output head's float weight ``(vocab, hidden)`` and bias (or None), found once
        (see :func:`~assistant.generation.precision.output_weight`)."""
        if self._output is None:
            from .precision import output_weight

            self._output = output_weight(self.model)
        return self._output

    # --- positions ---------------------------------------------------------------------
    def shifted(self, block: KV, delta: int) -> KV:
        """``block`` moved ``delta`` positions on: its keys rotated by RoPE's angle for
        ``delta`` with each layer's own base (Gemma 3: 10,000 on sliding layers, 1,000,000 on
        global ones), as Block-Attention (Sun et al. 2024) re-rotates cached keys. Exact for
        RoPE (a rotation by p + d is the rotation by p then by d); where the RoPE variant also
        scales cos and sin (YaRN, LongRoPE: transformers' ``attention_scaling``) the keys
        already carry that factor, so the move divides it out. RoPE whose angles depend on
        the sequence length (dynamic NTK) is not exact."""
        if delta == 0:
            return block
        rotary = self.model.get_decoder().rotary_emb
        keys = []
        cos_sin: dict[str, tuple] = {}
        for layer, k in enumerate(block.keys):
            kind = self.layer_types[layer]
            if kind not in cos_sin:
                where = torch.full((1, 1), delta, dtype=torch.long, device=k.device)
                try:
                    cos, sin = rotary(k[None], where, kind)
                except TypeError:  # one RoPE for every layer (Llama, Qwen2)
                    cos, sin = rotary(k[None], where)
                scale = float(getattr(rotary, f"{kind}_attention_scaling",
                                      getattr(rotary, "attention_scaling", 1.0)) or 1.0)
                cos_sin[kind] = tuple((f[0, 0] / scale).to(k.dtype)  # (1, head_dim)
                                      for f in _rope_factors(cos, sin))
            keys.append(_rotate(k, *cos_sin[kind]))
        return KV(keys, block.values, block.positions + delta, block.ids)

    # --- masks -------------------------------------------------------------------------
    def _masks(self, key_pos, key_ok, query_pos, query_key_index):
        """Additive masks ``(batch, 1, queries, keys)`` per layer type.

        key_pos, key_ok: ``(batch, keys)`` positions and validity of every key (context then
        new tokens). query_pos: ``(batch, queries)``. query_key_index: ``(queries,)`` index of
        each query's own key (always visible, so a padding row never softmaxes nothing).
        """
        qp, kp = query_pos[:, :, None], key_pos[:, None, :]
        causal = key_ok[:, None, :] & (kp <= qp)
        rows = torch.arange(query_pos.shape[1], device=query_pos.device)
        low = torch.finfo(self.dtype).min
        masks = {}
        for kind in set(self.layer_types):
            allowed = causal
            if kind == "sliding_attention" and self.sliding_window:
                allowed = causal & (qp - kp < int(self.sliding_window))
            allowed = allowed.clone()
            allowed[:, rows, query_key_index] = True
            mask = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
            masks[kind] = mask.masked_fill_(~allowed, low)[:, None]
        if len(masks) == 1 and "sliding_attention" not in masks:
            return next(iter(masks.values()))  # models whose forward takes one 4-D mask
        return masks

    # --- one forward pass ---------------------------------------------------------------
    def run(self, rows: Sequence[Row], *, logits_at: Sequence[int] = (), record: slice | None = None,
            keep: bool = True, record_layers: "set[int] | None" = None):
        """One forward pass over a batch of rows, each attending to its own context segments.

        Rows are padded to the longest context and the longest new run; padding is masked.

        Args:
            logits_at: indices into the new tokens (the same for every row) whose next-token
                logits to return.
            record: query rows (a slice of the new tokens) whose attention to record.
            record_layers: record only these layers, and stop the pass after the last of
                them (then no logits, nothing kept: ``logits_at`` empty, ``keep`` False).
            keep: return the new tokens' keys and values.

        Returns:
            ``(logits, new, probs)``: logits ``(batch, len(logits_at), vocab)`` float32 or
            None; ``new`` one :class:`KV` per row (its own length, no padding) or None;
            ``probs`` ``{layer: (batch, heads, recorded rows, keys)}`` or None.
        """
        from transformers import DynamicCache

        batch = len(rows)
        ctx_len = [sum(len(s) for s in r.context) for r in rows]
        new_len = [len(r.ids) for r in rows]
        width, steps = max(ctx_len), max(new_len)
        dev = self.device
        key_pos = torch.zeros(batch, width + steps, dtype=torch.long, device=dev)
        key_ok = torch.zeros(batch, width + steps, dtype=torch.bool, device=dev)
        ids = torch.zeros(batch, steps, dtype=torch.long, device=dev)
        pos = torch.zeros(batch, steps, dtype=torch.long, device=dev)
        layers = [GrowingLayer([[s.keys[i] for s in r.context] for r in rows],
                               [[s.values[i] for s in r.context] for r in rows], steps)
                  for i in range(self.layers if width else 0)]
        for b, (r, n, t) in enumerate(zip(rows, ctx_len, new_len)):
            if n:
                key_pos[b, :n] = torch.cat([s.positions for s in r.context]).to(dev)
                key_ok[b, :n] = True
            ids[b, :t] = torch.tensor(r.ids, device=dev)
            pos[b, :t] = torch.tensor(r.positions, device=dev)
            if t < steps:  # padding continues the positions, masked as keys
                pos[b, t:] = pos[b, t - 1] + 1 + torch.arange(steps - t, device=dev)
            key_pos[b, width:] = pos[b]
            key_ok[b, width:width + t] = True
        if batch == 1 and not width and record is None and rows[0].positions == list(
                range(steps)):
            # a plain prompt from position 0: the model's own causal masks, which let sdpa's
            # flash kernel skip the blocks above the diagonal (SmolLM2-135M, 976 tokens:
            # attention 470 -> 330 ms of a 1.2 s prefill on this 2-core CPU)
            masks = None
        else:
            masks = self._masks(key_pos, key_ok, pos, width + torch.arange(steps, device=dev))
        cache = Cache(layers=layers) if width else DynamicCache()
        args = dict(input_ids=ids, position_ids=pos, attention_mask=masks, use_cache=True)
        if logits_at:
            forward = self.model
            args.update(logits_to_keep=torch.tensor(list(logits_at), device=dev),
                        **{self._cache_arg: cache})
        else:
            # no logits asked for (encoding blocks, the support pass): the decoder alone, not
            # the output head (Gemma 3 270M's reads 168 M weights for every call)
            forward = self.model.get_decoder()
            args[self._decoder_cache_arg] = cache
        if record_layers is not None and (logits_at or keep):
            raise ValueError("a pass that stops after the recorded layers has no outputs")
        recorder = (Recorder(record, record_layers) if record is not None
                    else contextlib.nullcontext())
        with torch.inference_mode(), recorder:
            try:
                out = forward(**args)
            except Recorded:
                return None, None, recorder.probs
        logits = out.logits.float() if logits_at else None
        new = None
        if keep:
            layers = cache_of(out).layers
            # copies, not views: a view would keep the whole batch cache (every row's copy
            # of the prefix) alive behind a small block, and the LRU would undercount it
            new = [KV([layers[i].keys[b, :, width:width + t].clone() for i in range(self.layers)],
                      [layers[i].values[b, :, width:width + t].clone()
                       for i in range(self.layers)],
                      pos[b, :t].clone(), list(r.ids))
                   for b, (r, t) in enumerate(zip(rows, new_len))]
        return logits, new, (recorder.probs if record is not None else None)

    def _step(self, ids, positions, masks, cache, head: "Head | None",
              screen: "Int4Head | None" = None):
        """One decoding pass of ``ids`` ``(1, n)``: ``(logits, hidden)``, logits ``(n, vocab)``
        through the model's own head (or through ``screen``, exact near the top), or
        ``(n, k)`` through ``head``, and the decoder's last hidden states ``(n, hidden)``."""
        if self._direct is not None and getattr(_local, "recorder", None) is None:
            hidden = self._direct(ids, positions, masks, cache)[0]
        else:
            args = dict(input_ids=ids, position_ids=positions, attention_mask=masks,
                        use_cache=True)
            hidden = self.model.get_decoder()(**args, **{self._decoder_cache_arg: cache})
            hidden = hidden.last_hidden_state[0]  # (n, hidden)
        if head is not None:
            return head(hidden), hidden
        logits = screen(hidden) if screen is not None else None
        if logits is not None:
            return soft_capped(logits, self.softcap), hidden
        return self._full_logits(hidden), hidden

    def _full_logits(self, hidden: "torch.Tensor") -> "torch.Tensor":
        """Logits ``(n, vocab)`` float32 of hidden states ``(n, hidden)`` through the model's
        own output head (float16-packed when the model is), soft-capping included."""
        return soft_capped(self.model.get_output_embeddings()(hidden), self.softcap).float()

    # --- greedy decoding ----------------------------------------------------------------
    def decode(self, context: Sequence[KV], first_logits: "torch.Tensor", **options) -> "Decoded":
        """Decode to the end in one call: :meth:`steps` drained (same arguments); returns its
        :class:`Decoded`."""
        steps = self.steps(context, first_logits, **options)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def steps(self, context: Sequence[KV], first_logits: "torch.Tensor", *, max_new_tokens: int,
              end_ids: Sequence[int], allowed: Callable[[list[int]], list[int]] | None = None,
              cancelled: Callable[[], bool] = lambda: False,
              draft_from: Sequence[int] = (), draft: int = 6,
              vocab: Sequence[int] | None = None, sampler: "Sampler | None" = None,
              stop_loops: bool = True,
              penalty: float = 1.0,
              screen: "Int4Head | None" = None) -> "Generator[int, None, Decoded]":
        """Greedy (or, with ``sampler``, sampled) decoding after ``context`` (the prompt's
        segments, already run), starting from ``first_logits`` ``(vocab,)`` (the logits after
        the prompt's last token).

        Stops at a token of ``end_ids`` (not returned), after ``max_new_tokens``, when
        ``cancelled()`` turns true, or, unconstrained and with ``stop_loops``, when the answer
        loops on tokens the prompt does not hold (:func:`looping`). ``allowed(ids so far)``
        restricts each step's choice (copy constraint). A generator: it yields each token id
        as soon as it is kept (streaming) and returns the :class:`Decoded`; all its work runs
        on the thread that iterates it.

        With ``sampler`` each token is drawn from the model's distribution
        (:class:`Sampler`) and nothing is drafted (drafts are checked against the greedy
        choice). ``penalty`` > 1 is the repetition penalty of CTRL (Keskar et al. 2019) as
        transformers applies it: the logit of every token already in the context or the
        answer is divided by it when positive, multiplied when negative, before the choice.
        Both need the whole output head (``vocab`` None).

        Prompt-lookup drafting (Saxena 2023, "Prompt Lookup Decoding"): after each token, the
        tokens that follow the answer's last 1–3 tokens in ``draft_from`` (the passage) are
        proposed, up to ``draft`` of them, and run in one pass with it; the longest prefix that
        greedy decoding would have chosen anyway is kept and the rest cut from the cache. The
        tokens are those of plain greedy decoding; an extractive answer copied from the
        passage needs one or two passes instead of one per token.

        With ``vocab`` (token ids), each step chooses among those tokens only: the output head
        computes ``len(vocab)`` logits per pass instead of the whole vocabulary's (see
        :meth:`head_rows`). Tokens outside ``vocab`` never come out; the end tokens and any
        ``allowed`` token must be in it. The returned log-probability is still the exact one
        (normalised over the whole vocabulary, as without ``vocab``): the hidden states of the
        chosen tokens go through the full head once, in one batch, at the end, so answers read
        with different vocabularies stay comparable.

        Returns:
            :class:`Decoded`: the token ids, their summed natural-log probability (the ending
            token's included), and the seconds until the first token.
        """
        started = time.perf_counter()
        ends = set(end_ids)
        if (sampler is not None or penalty != 1.0) and vocab is not None:
            raise ValueError("sampling and repetition penalty need the whole output head")
        if sampler is not None:
            draft = 0
        screening = (screen is not None and vocab is None and allowed is None
                     and sampler is None and penalty == 1.0)
        head = self.head_rows([*vocab, *end_ids]) if vocab is not None else None
        column = head.index() if head is not None else None
        first_full = first_logits
        if head is not None:
            first_logits = first_logits[head.ids.to(first_logits.device)]
        counted: list[tuple[object, int]] = []  # (hidden row or None for the first, token)
        key_pos = torch.cat([s.positions for s in context]).to(self.device)
        cache = growing_cache(context, max_new_tokens + draft + 2)
        position = int(key_pos.max()) + 1
        source = list(draft_from)
        source_all = [i for s in context for i in s.ids]  # prompt tokens: a loop they hold is copied
        logits = first_logits  # (vocab,) or (len(head.ids),)
        hidden = None  # the hidden state ``logits`` came from (None: the prompt's last)
        out: list[int] = []
        logprob = 0.0
        first_s = None
        ended = False
        passes = 0


        if penalty != 1.0:  # the tokens the repetition penalty applies to, answer's added
            seen_ids = set(source_all)
            seen = torch.tensor(sorted(seen_ids), dtype=torch.long, device=first_logits.device)

        def choose(step_logits) -> tuple[int, float]:
            nonlocal seen
            step_logits = step_logits.float()
            if penalty != 1.0:
                if out and out[-1] not in seen_ids:  # one token kept since the last choice
                    seen_ids.add(out[-1])
                    seen = torch.cat([seen, torch.tensor(out[-1:], device=seen.device)])
                picked = step_logits[seen]
                step_logits = step_logits.scatter(
                    0, seen, torch.where(picked < 0, picked * penalty, picked / penalty))
            logp = torch.log_softmax(step_logits, dim=-1)
            if allowed is not None:
                ids = allowed(out)
                cols = ids if column is None else [column[t] for t in ids if t in column]
                pick = torch.tensor(cols, device=logp.device)
                col = int(pick[sampler(logp[pick]) if sampler is not None
                               else int(torch.argmax(logp[pick]))])
            elif sampler is not None:
                col = sampler(logp)
            else:
                col = int(torch.argmax(logp))
            token = col if head is None else int(head.ids[col])
            return token, float(logp[col])

        while True:
            token, value = choose(logits)
            if token in ends:
                logprob += value
                counted.append((hidden, token))
                ended = True
                break
            if len(out) >= max_new_tokens or cancelled() or (
                    allowed is None and stop_loops and looping(out, source_all)):
                break
            logprob += value
            counted.append((hidden, token))
            out.append(token)
            yield token
            if first_s is None:
                first_s = time.perf_counter() - started
            drafts = _lookup(out, source, min(draft, max_new_tokens - len(out)))
            run = [token] + drafts
            positions = torch.arange(position, position + len(run), device=self.device)
            key_pos = torch.cat([key_pos, positions])
            ok = torch.ones(1, key_pos.shape[0], dtype=torch.bool, device=self.device)
            masks = self._masks(key_pos[None], ok, positions[None],
                                key_pos.shape[0] - len(run) + torch.arange(len(run)))
            with torch.inference_mode():
                step_logits, step_hidden = self._step(torch.tensor([run], device=self.device),
                                                      positions[None], masks, cache, head,
                                                      screen if screening else None)
            passes += 1
            position += len(run)
            accepted = 0
            for j, proposed in enumerate(drafts):
                if len(out) >= max_new_tokens or cancelled():
                    break
                choice, value = choose(step_logits[j])
                if choice != proposed:
                    break
                logprob += value
                counted.append((None if step_hidden is None else step_hidden[j], choice))
                if choice in ends:
                    ended = True
                    break
                out.append(choice)
                accepted += 1
                yield choice
            if ended:
                break
            rejected = len(drafts) - accepted
            if rejected:  # cut the proposals greedy decoding would not have made
                cache.crop(-rejected)
                key_pos = key_pos[:-rejected]
                position -= rejected
            logits = step_logits[accepted]
            hidden = None if step_hidden is None else step_hidden[accepted]
        if head is not None and counted:
            logprob = self._exact_logprob(first_full, counted)
        return Decoded(out, logprob, first_s, time.perf_counter() - started, ended, passes)

    def _exact_logprob(self, first_logits, counted) -> float:
        """Summed log-probability of the chosen tokens over the whole vocabulary:
        ``counted`` pairs each token with the hidden state ``(hidden,)`` that chose it (None:
        the prompt's last, whose full logits ``first_logits`` ``(vocab,)`` are known); the
        hidden states go through the model's own output head (float16-packed when the model
        is) in one batch."""
        total = 0.0
        rows = [(h, t) for h, t in counted if h is not None]
        for h, t in counted:
            if h is None:
                total += float(torch.log_softmax(first_logits.float(), dim=-1)[t])
        if rows:
            with torch.inference_mode():
                logp = torch.log_softmax(
                    self._full_logits(torch.stack([h for h, _ in rows])), dim=-1)
            tokens = torch.tensor([t for _, t in rows], device=logp.device)
            total += float(logp.gather(-1, tokens[:, None]).sum())
        return total


class DirectDecoder:
    """The decoder's forward pass for a few new tokens, written out over the model's own
    modules (norms, projections, MLPs, rotary embedding): the same operations in the same
    order as transformers' Llama/Qwen2/Qwen3/Mistral and Gemma 3 decoder layers, without the
    per-call machinery around them (output recording, mask building, keyword handling), which
    took about two thirds of a Gemma 3 270M decoding pass on this 2-core CPU. RMS norms run
    as one fused ``rms_norm`` (:meth:`_norm`) and RoPE as :func:`_rotate`: fewer operations,
    the same bits. Used for
    decoding passes only; prefill and scoring go through the model's own forward.
    :meth:`of` returns None for any other architecture, which then decodes through
    transformers.

    Called with ids ``(1, n)``, positions ``(1, n)``, the per-layer-type masks of
    :meth:`BlockModel._masks` and a cache of :class:`GrowingLayer`; returns the final hidden
    states ``(1, n, hidden)``.
    """

    TYPES = {"llama": False, "mistral": False, "qwen2": False, "qwen3": False,
             "gemma3_text": True}
    """Supported ``model_type`` → whether the layers wrap attention and MLP in norms on both
    sides (Gemma 3) rather than norming only their inputs (Llama and the others)."""

    def __init__(self, decoder, layer_types: list[str], sandwich: bool):
        import inspect

        self.decoder = decoder
        self.layer_types = layer_types
        self.sandwich = sandwich
        self.by_type = "layer_type" in inspect.signature(decoder.rotary_emb.forward).parameters
        self.norms = {id(m): w for m in decoder.modules() if (w := _rms_weight(m)) is not None}

    @classmethod
    def of(cls, model, layer_types: list[str]) -> "DirectDecoder | None":
        """A direct decoder for ``model``, or None when its architecture is not one of
        :data:`TYPES` or its modules are not laid out as expected."""
        config = model.config.get_text_config(decoder=True)
        kind = getattr(config, "model_type", None)
        if kind not in cls.TYPES or getattr(config, "attn_logit_softcapping", None):
            return None
        decoder = model.get_decoder()
        needed = ("input_layernorm", "post_attention_layernorm", "mlp", "self_attn")
        if cls.TYPES[kind]:
            needed += ("pre_feedforward_layernorm", "post_feedforward_layernorm")
        layers = getattr(decoder, "layers", None)
        if not layers or not all(hasattr(decoder, a) for a in ("embed_tokens", "norm",
                                                                "rotary_emb")):
            return None
        if not all(hasattr(layer, a) for layer in layers for a in needed):
            return None
        return cls(decoder, layer_types, cls.TYPES[kind])

    def __call__(self, ids, positions, masks, cache) -> "torch.Tensor":
        d = self.decoder
        norm = self._norm
        with torch.inference_mode():
            h = d.embed_tokens(ids)
            rope: dict[str, tuple] = {}
            for kind in set(self.layer_types):
                cos, sin = (d.rotary_emb(h, positions, kind) if self.by_type
                            else d.rotary_emb(h, positions))
                rope[kind] = _rope_factors(cos, sin)
            seen = {kind: _first_visible(masks[kind] if isinstance(masks, dict) else masks)
                    for kind in set(self.layer_types)}
            for i, layer in enumerate(d.layers):
                kind = self.layer_types[i]
                mask = masks[kind] if isinstance(masks, dict) else masks
                attention = self._attention(layer.self_attn, norm(layer.input_layernorm, h),
                                            rope[kind], mask, cache.layers[i], seen[kind])
                if self.sandwich:
                    h = h + norm(layer.post_attention_layernorm, attention)
                    h = h + norm(layer.post_feedforward_layernorm,
                                 layer.mlp(norm(layer.pre_feedforward_layernorm, h)))
                else:
                    h = h + attention
                    h = h + layer.mlp(norm(layer.post_attention_layernorm, h))
            return norm(d.norm, h)

    def _norm(self, module, x) -> "torch.Tensor":
        """``module(x)`` for an RMS norm: one fused ``rms_norm`` for float32 input (the same
        bits as the module's own pow/mean/rsqrt/multiply, tested), else the module."""
        weight = self.norms.get(id(module))
        if weight is None or x.dtype != torch.float32:
            return module(x)
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight[0], weight[1])

    def _attention(self, a, x, cos_sin, mask, cache_layer, start: int = 0) -> "torch.Tensor":
        """The attention block of one layer for ``x`` ``(batch, n, hidden)``; keys before
        ``start`` (in cache order) are masked for every query and left out."""
        b, n = x.shape[:2]
        q = a.q_proj(x).view(b, n, -1, a.head_dim).transpose(1, 2)
        k = a.k_proj(x).view(b, n, -1, a.head_dim).transpose(1, 2)
        v = a.v_proj(x).view(b, n, -1, a.head_dim).transpose(1, 2)
        if hasattr(a, "q_norm"):  # Gemma 3, Qwen3: per-head norms over head_dim
            q, k = self._norm(a.q_norm, q), self._norm(a.k_norm, k)
        q, k = _rotate(q, *cos_sin), _rotate(k, *cos_sin)
        k, v = cache_layer.update(k, v)
        if start:
            k, v, mask = k[:, :, start:], v[:, :, start:], mask[..., start:k.shape[2]]
        out = _small_attention(q, k, v, mask, a.scaling)  # (b, n, heads, head_dim)
        return a.o_proj(out.reshape(b, n, -1))


def _first_visible(mask) -> int:
    """Index of the first key that some query may see under the additive ``mask``
    ``(1, 1, queries, keys)`` (0 when the first is visible): on a sliding-window layer, keys
    further back than the window are masked for every query of a decoding pass, and leaving
    them out of the products changes nothing (their probability is exactly 0)."""
    visible = (mask[0, 0] > torch.finfo(mask.dtype).min).any(dim=0)  # (keys,)
    return int(torch.argmax(visible.to(torch.uint8)))


def _rope_factors(cos, sin) -> tuple:
    """RoPE's factors for :func:`_rotate` from the rotary embedding's ``cos``, ``sin``
    ``(batch, n, head_dim)``: ``cos`` and ``sin`` with its first half negated, both
    ``(batch, 1, n, head_dim)``."""
    half = sin.shape[-1] // 2
    signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos.unsqueeze(1), signed.unsqueeze(1)


def _rotate(x, cos, signed) -> "torch.Tensor":
    """Rotary position embedding (Su et al. 2021) of ``x`` ``(batch, heads, n, head_dim)`` as
    transformers' ``x * cos + rotate_half(x) * sin`` computes it, with ``rotate_half(x) * sin``
    written as ``roll(x, half) * signed``: ``(-x2) * s1`` and ``x2 * (-s1)`` are the same
    float, so the result is bit for bit the same (tested) in four operations instead of
    seven."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed


def _rms_weight(module) -> "tuple[torch.Tensor, float] | None":
    """``(weight, eps)`` that ``torch.nn.functional.rms_norm`` computes ``module`` with, for
    the RMS norms of :data:`DirectDecoder.TYPES` (Gemma 3 scales by ``1 + weight``, computed in
    float32; the others by ``weight``); None for any other module."""
    kind = type(module).__name__
    if kind == "Gemma3RMSNorm":
        return (1.0 + module.weight.detach().float()).contiguous(), module.eps
    if kind in ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"):
        if module.weight.dtype != torch.float32:
            return None
        return module.weight.detach(), module.variance_epsilon
    return None


def soft_capped(logits: "torch.Tensor", cap: float | None) -> "torch.Tensor":
    """``logits`` soft-capped as Gemma 2 does (``cap · tanh(logits / cap)``; the model's
    ``final_logit_softcapping``), unchanged when ``cap`` is None or 0."""
    return torch.tanh(logits / cap) * cap if cap else logits


@dataclass
class Head:
    """An output head restricted to some token ids (see :meth:`BlockModel.head_rows`).

    Attributes:
        ids: ``(k,)`` long, the token ids kept, ascending.
        weight: ``(k, hidden)``, their rows of the output embedding; ``bias`` ``(k,)`` or None.
        softcap: the model's final logit soft-capping (Gemma 2: 30), or None.
    """

    ids: "torch.Tensor"
    weight: "torch.Tensor"
    bias: "torch.Tensor | None"
    softcap: float | None

    def __call__(self, hidden: "torch.Tensor") -> "torch.Tensor":
        """Logits ``(..., k)`` float32 of hidden states ``(..., hidden)``, as the model's own
        head computes them for these rows (soft-capping included)."""
        logits = torch.nn.functional.linear(hidden.to(self.weight.dtype), self.weight, self.bias)
        return soft_capped(logits, self.softcap).float()

    def index(self) -> dict[int, int]:
        """Token id → its column in the restricted logits."""
        return {int(t): i for i, t in enumerate(self.ids.tolist())}


LOOP_TOKENS = 8
"""A free answer stops when its last this many tokens repeat a cycle of at most half as many
tokens ("0 0 0 0 0 0 0 0", "a b a b a b a b") that its passages do not hold (0: never): a
loop a small model will not leave, which would otherwise run to ``max_new_tokens`` (48
tokens, 1.5 s on this 2-core CPU, for an unsupported answer that a copy reading then
replaces)."""


def looping(answer: Sequence[int], source: Sequence[int], window: int = LOOP_TOKENS) -> bool:
    """True when the last ``window`` tokens of ``answer`` are periodic with a period of at
    most ``window // 2`` and do not occur in ``source`` as they are."""
    if window <= 0 or len(answer) < window:
        return False
    tail = list(answer[-window:])
    if not any(all(tail[i] == tail[i - p] for i in range(p, window))
               for p in range(1, window // 2 + 1)):
        return False
    return not any(list(source[i:i + window]) == tail for i in range(len(source) - window + 1))


WEAK_DRAFT = 1
"""Tokens proposed after a match of the answer's last token alone. A decoding pass costs about
the same for one or two tokens (the output head reads its weights once either way) and grows
with more (Gemma 3 270M, float16 head, ~850-token context, this 2-core CPU: 28.9 ms for 1
token, 29.8 ms for 2, 45.2 ms for 7), and a one-token match is a weak guess: proposing one
token then instead of six took the readings of 20 questions from 17.9 to 14.4 s in a replay
of their passes (BENCHMARKS.md, "Round 4")."""


def _lookup(answer: Sequence[int], source: Sequence[int], limit: int, *,
            weak: int = WEAK_DRAFT) -> list[int]:
    """Up to ``limit`` tokens that follow the first occurrence in ``source`` of the answer's
    last 3, 2 or 1 tokens (the longest that occurs); at most ``weak`` of them when only the
    last token occurs; [] when none does."""
    if limit <= 0 or not source:
        return []
    for size in (3, 2, 1):
        if len(answer) < size:
            continue
        tail = list(answer[-size:])
        for start in range(len(source) - size):
            if list(source[start:start + size]) == tail:
                return list(source[start + size:start + size + (limit if size > 1 else
                                                                  min(limit, weak))])
    return []


@dataclass
class Sampler:
    """Draws a token as transformers' ``generate(do_sample=True)`` does with its default
    warpers: the logits divided by ``temperature``, then cut to the ``top_k`` most likely
    tokens (0: no cut), then to the smallest set whose probability reaches ``top_p``
    (nucleus sampling, Holtzman et al. 2020; 1.0: no cut). ``generator``: a seeded
    ``torch.Generator`` for reproducible draws (None: torch's global one)."""

    temperature: float
    top_k: int = 50
    top_p: float = 1.0
    generator: "torch.Generator | None" = None

    def __call__(self, logp: "torch.Tensor") -> int:
        """The index drawn from log-probabilities ``logp`` ``(n,)``.

        Raises:
            ValueError: ``temperature`` is not positive.
        """
        if self.temperature <= 0:
            raise ValueError("sampling needs a positive temperature")
        scores = logp.float() / self.temperature
        if 0 < self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True)
            cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
            drop = cumulative - torch.softmax(ordered, dim=-1) >= self.top_p  # keep the first
            scores = scores.scatter(0, order[drop], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


@dataclass
class Decoded:
    """The result of :meth:`BlockModel.decode`.

    Attributes:
        ids: generated token ids (the ending token excluded).
        logprob: natural-log probability of ``ids`` plus the ending token, summed.
        first_token_s: seconds until the first token was chosen (None if none).
        total_s: seconds in all.
        ended: True when an end token stopped it (not the length limit or a cancel).
        passes: forward passes run (fewer than tokens when drafts were accepted).
    """

    ids: list[int]
    logprob: float
    first_token_s: float | None
    total_s: float
    ended: bool
    passes: int = 0

    @property
    def mean_logprob(self) -> float:
        """``logprob`` per token counted (ids plus the end token when ``ended``)."""
        return self.logprob / max(len(self.ids) + int(self.ended), 1)


@dataclass
class State:
    """A prompt already run over blocks, ready to decode: its segments (``context``) and the
    logits after its last token ``(vocab,)``."""

    context: list[KV]
    first_logits: "torch.Tensor"


@dataclass
class Scored:
    """Question likelihoods from :meth:`BlockReader.score`.

    Attributes:
        loglik: per block, log P(target | prefix + block + lead), natural log, summed over
            the target's tokens.
        null_loglik: the same with no block (prefix + lead only), or None if not asked.
        target_tokens: tokens in the target.
        states: per block, the prompt (prefix + block + lead + target + tail) ready to decode.
    """

    loglik: list[float]
    null_loglik: float | None
    target_tokens: int
    states: list[State]


class PrefixStore:
    """Prefix caches (the worked examples' key/value cache) kept on disk, so that a new
    process reads the cache instead of running the prefix again: Gemma 3 270M's 659-token
    extractive prefix takes 1.3–3.5 s to run on this 2-core CPU and about 24 MB to store
    (float32).

    A file is named by the SHA-256 of ``model_key`` (which names the model files, precision,
    device and library versions) and the prefix's token ids, and written atomically; an
    unreadable or mismatched file is ignored and replaced.

    Args:
        folder: where the files go (created on first save).
        model_key: identifies everything the cache depends on besides the token ids.
    """

    def __init__(self, folder, model_key: str):
        from pathlib import Path

        self.folder = Path(folder)
        self.model_key = model_key

    def path(self, ids: Sequence[int]):
        digest = hashlib.sha256(f"{self.model_key}\n{list(ids)}".encode()).hexdigest()
        return self.folder / f"prefix-{digest[:32]}.safetensors"

    def load(self, ids: Sequence[int], layers: int) -> KV | None:
        """The stored cache of ``ids``, or None (not stored, unreadable, or not matching)."""
        import json

        from safetensors import safe_open

        path = self.path(ids)
        try:
            with safe_open(str(path), framework="pt") as f:
                if json.loads(f.metadata().get("ids", "null")) != list(ids):
                    return None
                kv = KV([f.get_tensor(f"k{i}") for i in range(layers)],
                        [f.get_tensor(f"v{i}") for i in range(layers)],
                        f.get_tensor("positions"), list(ids))
        except Exception:  # missing, truncated or foreign: compute it again
            return None
        return kv if all(k.shape[1] == len(ids) for k in kv.keys) else None

    def save(self, kv: KV) -> None:
        """Store ``kv`` (best effort: a full or read-only disk leaves nothing behind)."""
        import json

        tensors = {f"k{i}": k.contiguous() for i, k in enumerate(kv.keys)}
        tensors.update({f"v{i}": v.contiguous() for i, v in enumerate(kv.values)})
        tensors["positions"] = kv.positions.contiguous()
        self._write(self.path(kv.ids), tensors, {"ids": json.dumps(list(kv.ids))})

    def named_path(self, name: str):
        """The file of the tensors stored under ``name`` for this model (``name``, then the
        SHA-256 of the model key and the name)."""
        digest = hashlib.sha256(f"{self.model_key}\n{name}".encode()).hexdigest()
        return self.folder / f"{name}-{digest[:32]}.safetensors"

    def load_named(self, name: str) -> dict | None:
        """The tensors stored under ``name`` for this model (:meth:`save_named`), or None
        (not stored, unreadable, or stored for other model files)."""
        from safetensors import safe_open

        try:
            with safe_open(str(self.named_path(name)), framework="pt") as f:
                if f.metadata().get("model") != self.model_key:
                    return None
                return {key: f.get_tensor(key) for key in f.keys()}
        except Exception:  # missing, truncated or foreign: compute it again
            return None

    def save_named(self, name: str, tensors: dict) -> None:
        """Store ``tensors`` under ``name`` for this model (best effort, as :meth:`save`)."""
        self._write(self.named_path(name), {k: v.contiguous() for k, v in tensors.items()},
                    {"model": self.model_key})

    def _write(self, path, tensors: dict, metadata: dict) -> None:
        import os

        from safetensors.torch import save_file

        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(temporary), metadata=metadata)
            os.replace(temporary, path)
        except OSError:
            temporary.unlink(missing_ok=True)


class BlockReader:
    """Passage blocks for one model: a prefix cache, an LRU of blocks, question scoring,
    readings and attention support, all over the same key/value blocks.

    Args:
        model, tokenizer: the loaded transformers model and its tokenizer.
        device: where the model runs.
        name: the model's name (part of every block key).
        max_bytes: the block LRU's bound in bytes.
        lock: held around every forward pass (one model, one pass at a time).
        prefixes: where prefix caches are kept on disk (None: computed in each process).
    """

    def __init__(self, model, tokenizer, device: str, *, name: str, max_bytes: int,
                 lock: threading.Lock, prefixes: PrefixStore | None = None):
        self.engine = BlockModel(model, device)
        self.prefixes = prefixes
        self.tokenizer = tokenizer
        self.name = name
        self.cache = BlockCache(max_bytes)
        self.lock = lock
        self._prefix: tuple[str, KV] | None = None
        self._screen: "Int4Head | None | bool" = False  # False: not looked for yet
        self.encoded = 0
        """Blocks computed (not served from the LRU) since this reader was made."""

    def tokens(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prefix(self, text: str) -> KV:
        """The key/value cache of ``text`` at positions 0.. (kept for the latest text; read
        from and written to :attr:`prefixes` when there is one)."""
        if self._prefix is None or self._prefix[0] != text:
            ids = self.tokens(text)
            kv = self.prefixes.load(ids, self.engine.layers) if self.prefixes else None
            if kv is None:
                with self.lock:
                    _, new, _ = self.engine.run([Row([], ids, list(range(len(ids))))])
                kv = new[0]
                if self.prefixes:
                    self.prefixes.save(kv)
            self._prefix = (text, kv)
        return self._prefix[1]

    def blocks(self, prefix: KV, items: Sequence[tuple[object, str]], *,
               batch: int = 4) -> list[KV]:
        """One block per ``(passage id, block text)``: served from the LRU when the same
        model, passage, text and prefix were seen before, else computed after ``prefix``
        (positions right after it), ``batch`` at a time, and stored."""
        prefix_key = text_hash(self._prefix[0]) if self._prefix else str(len(prefix))
        keys = [(self.name, pid, text_hash(text), prefix_key) for pid, text in items]
        out: list[KV | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, b in enumerate(out) if b is None]
        start = len(prefix)
        # similar lengths together: less padding in a batch
        todo.sort(key=lambda i: len(items[i][1]))
        for at in range(0, len(todo), batch):
            part = todo[at:at + batch]
            rows = []
            for i in part:
                ids = self.tokens(items[i][1])
                rows.append(Row([prefix], ids, list(range(start, start + len(ids)))))
            with self.lock:
                _, new, _ = self.engine.run(rows)
            for i, block in zip(part, new):
                out[i] = block
                self.cache.put(keys[i], block)
                self.encoded += 1
        return out  # type: ignore[return-value]

    def score(self, prefix: KV, blocks: Sequence[KV], *, lead: str, target: str, tail: str = "",
              null: bool = False) -> Scored:
        """log P(target | prefix + block + lead) for every block in one batched pass; each
        row also runs ``tail`` after the target, so its prompt is ready to decode.

        With ``null``, one more row without a block gives the target's likelihood from the
        prefix alone (a baseline: how much the passage helps predict the question).
        """
        lead_ids, target_ids, tail_ids = self.tokens(lead), self.tokens(target), self.tokens(tail)
        ids = lead_ids + target_ids + tail_ids
        rows = []
        for block in blocks:
            start = int(block.positions[-1]) + 1
            rows.append(Row([prefix, block], ids, list(range(start, start + len(ids)))))
        if null:
            start = len(prefix)
            rows.append(Row([prefix], ids, list(range(start, start + len(ids)))))
        # logits that predict each target token, then the one after the whole prompt
        first = len(lead_ids) - 1
        at = list(range(first, first + len(target_ids))) + [len(ids) - 1]
        with self.lock:
            logits, new, _ = self.engine.run(rows, logits_at=at)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (rows, target, vocab)
        picked = logp.gather(-1, torch.tensor(target_ids)[None, :, None].expand(
            len(rows), -1, 1).to(logp.device))[..., 0]
        loglik = [float(x) for x in picked.sum(dim=1)]
        states = [State([prefix, block, kv], logits[b, -1])
                  for b, (block, kv) in enumerate(zip(blocks, new))]
        return Scored(loglik[:len(blocks)], loglik[-1] if null else None, len(target_ids), states)

    def first_token_logprobs(self, state: State, words: Sequence[str]) -> list[float]:
        """Per word, the natural-log probability that the answer after ``state`` starts with
        the word's first token (as it follows a space: " Yes"), from the logits already
        computed; no forward pass."""
        logp = torch.log_softmax(state.first_logits.float(), dim=-1)  # (vocab,)
        return [float(logp[self.tokens(" " + w)[0]]) for w in words]

    def place(self, blocks: Sequence[KV], layout: str) -> tuple[list[KV], int]:
        """The blocks at their positions for reading them together, and the position where
        the tokens after them start.

        ``start``: every block where it was computed, right after the prefix (Parallel Context
        Windows); ``end``: every block moved so that all end at the same position, right
        before the question (no block is nearer to it than another); ``sequence``: one after
        another in the given order, as if concatenated (Block-Attention).

        Raises:
            ValueError: an unknown layout.
        """
        ends = [int(b.positions[-1]) + 1 for b in blocks]
        last = max(ends)
        if layout == "start":
            return list(blocks), last
        if layout == "end":
            return [self.engine.shifted(b, last - e) for b, e in zip(blocks, ends)], last
        if layout == "sequence":
            placed, at = [], int(blocks[0].positions[0])
            for b in blocks:
                placed.append(self.engine.shifted(b, at - int(b.positions[0])))
                at += len(b)
            return placed, at
        raise ValueError(f"unknown block layout {layout!r} (start, end or sequence)")

    def fused(self, prefix: KV, blocks: Sequence[KV], text: str, *, layout: str = "end") -> State:
        """The prompt ``text`` run over the prefix and all ``blocks`` at once (it starts after
        the longest block): cross-attention over every block, ready to decode."""
        ids = self.tokens(text)
        blocks, start = self.place(blocks, layout) if blocks else ([], len(prefix))
        row = Row([prefix, *blocks], ids, list(range(start, start + len(ids))))
        with self.lock:
            logits, new, _ = self.engine.run([row], logits_at=[len(ids) - 1])
        return State([prefix, *blocks, new[0]], logits[0, 0])

    def screen(self) -> "Int4Head | None":
        """The model's output head quantized to int4 for screening (see
        :class:`~assistant.generation.precision.Int4Head`): read from :attr:`prefixes` when
        stored there, else quantized (about 1.4 s for Gemma 3 270M's head) and stored. None
        where it cannot run (see :func:`~assistant.generation.precision.int4_head_available`)
        or without :attr:`prefixes` (quantizing in every process would cost more than it
        saves a one-shot answer)."""
        if self._screen is False:
            from .precision import Int4Head, int4_head_available

            weight, bias = self.engine._output_weight()
            head = None
            if self.prefixes is not None and int4_head_available(weight, bias,
                                                                 self.engine.device):
                stored = self.prefixes.load_named("head-int4")
                head = Int4Head.from_tensors(weight, stored) if stored else None
                if head is None:
                    head = Int4Head.quantize(weight)
                    self.prefixes.save_named("head-int4", head.tensors())
            self._screen = head
        return self._screen

    def decode(self, state: State, *, max_new_tokens: int, end_ids: Sequence[int],
               within: str | None = None, cancelled: Callable[[], bool] = lambda: False,
               drafts: bool = True, head: str = "full"):
        """Greedy answer after ``state``; with ``within``, constrained to copy a run of its
        tokens (as it follows a space). With ``drafts``, tokens are proposed from the blocks
        of ``state`` (prompt lookup; the same answer in fewer passes). ``head`` is how a free
        reading computes its logits: ``full``, the model's own output head; ``screened``, the
        int4 copy of :meth:`screen` with exact rows near the top (the same tokens; ``full``
        where there is none); ``passages``, the answer can only use tokens of the prompt
        (its blocks' passages as encoded and with their words re-joined by single spaces, as
        an answer copies them, and the question), and the output head computes only those
        logits (see :meth:`BlockModel.decode`). A
        copy (``within``) always computes only the logits of ``within``'s tokens and the end
        tokens: it can choose no other, so its tokens and log-probability are exactly those
        of the full head. Returns ``(text, Decoded)``."""
        passages = [i for kv in state.context[1:-1] for i in kv.ids]
        draft_from = passages if drafts else []
        from . import copy_constraint

        allowed = None
        copied = self.tokens(" " + " ".join(within.split())) if within is not None else []
        if within is not None:
            allowed = copy_constraint(copied, end_ids)
        vocab = None
        if within is not None:
            vocab = set(copied)
        elif head == "passages":
            text = self.tokenizer.decode(passages, skip_special_tokens=True)
            vocab = {*passages, *state.context[-1].ids, *copied,
                     *self.tokens(" " + " ".join(text.split()))}
        with self.lock:
            done = self.engine.decode(state.context, state.first_logits,
                                      max_new_tokens=max_new_tokens, end_ids=end_ids,
                                      allowed=allowed, cancelled=cancelled,
                                      draft_from=draft_from, vocab=vocab,
                                      screen=self.screen() if head == "screened" else None)
        return self.tokenizer.decode(done.ids, skip_special_tokens=True), done

    def support(self, prefix: KV, blocks: Sequence[KV], text: str, answer: Sequence[int], *,
                layout: str = "end", layers: "set[int] | None" = None):
        """Attention of the answer over the blocks: ``text`` (the question part of the prompt)
        then the ``answer`` token ids are run over the prefix and every block at once (placed
        by ``layout``, see :meth:`place`), and the attention of each query row that predicts
        an answer token is summed per block. With ``layers``, only those layers are recorded
        and the pass stops after the last of them (Gemma 3 270M's support heads are in
        layers 3 and 11 of 18).

        Returns:
            ``(masses, other)``: ``masses[layer][head][block]``, the mean over answer tokens of
            the attention probability on that block's keys (0..1); ``other[layer][head]`` the
            rest (prefix and question); a layer not recorded has empty lists. Empty lists when
            nothing can be recorded.
        """
        answer = list(answer)
        if not answer or not blocks or not self.engine.capturing:
            return [], []
        probs, bounds = self._support_pass(prefix, blocks, text, answer, layout, layers)
        return self._masses(probs, bounds, slice(None))

    def support_parts(self, prefix: KV, blocks: Sequence[KV], text: str,
                      parts: Sequence[Sequence[int]], *, layout: str = "end",
                      layers: "set[int] | None" = None) -> tuple[list, list[list]]:
        """:meth:`support` of an answer made of ``parts`` (token ids of its sentences, in
        order, run as one answer), in one pass: ``(masses, per_part)``, ``masses`` over every
        answer token and ``per_part[i]`` over the tokens of part ``i`` alone (each as
        ``masses[layer][head][block]``). Empty lists when nothing can be recorded."""
        answer = [t for part in parts for t in part]
        if not answer or not blocks or not self.engine.capturing:
            return [], [[] for _ in parts]
        probs, bounds = self._support_pass(prefix, blocks, text, answer, layout, layers)
        whole = self._masses(probs, bounds, slice(None))[0]
        if len(parts) == 1:
            return whole, [whole]
        per_part, at = [], 0
        for part in parts:
            per_part.append(self._masses(probs, bounds, slice(at, at + len(part)))[0]
                            if part else [])
            at += len(part)
        return whole, per_part

    def _support_pass(self, prefix, blocks, text, answer, layout, layers):
        """The recorded attention ``{layer: (1, heads, answer rows, keys)}`` of the support
        pass and each block's key range."""
        ids = self.tokens(text)
        blocks, start = self.place(blocks, layout)
        seq = ids + list(answer)
        row = Row([prefix, *blocks], seq, list(range(start, start + len(seq))))
        rows = slice(len(ids) - 1, len(seq) - 1)
        with self.lock:
            _, _, probs = self.engine.run([row], record=rows, keep=False,
                                          record_layers=layers)
        bounds, at = [], len(prefix)
        for b in blocks:
            bounds.append((at, at + len(b)))
            at += len(b)
        return probs, bounds

    def _masses(self, probs, bounds, rows: slice) -> tuple[list, list]:
        """``(masses, other)`` as :meth:`support` returns them, over answer ``rows``."""
        masses, other = [], []
        for layer in range(self.engine.layers):
            if layer not in probs:  # not asked for
                masses.append([])
                other.append([])
                continue
            p = probs[layer][0][:, rows].mean(dim=1)  # (heads, keys), mean over the rows
            per = torch.stack([p[:, lo:hi].sum(dim=-1) for lo, hi in bounds], dim=-1)
            masses.append(per.tolist())
            other.append((1 - per.sum(dim=-1)).tolist())
        return masses, other
