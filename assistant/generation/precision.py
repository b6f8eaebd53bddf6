"""Numeric precision of the generator's weights: float32, float16, bfloat16, or int8/int4.

Decoding one token reads every weight once, so on a CPU its time is about the bytes of the
weights over the memory bandwidth (Gemma 3 270M in float32: 1.07 GB per token). int8 weights
read a quarter of that. On the CPU, int8 uses PyTorch's dynamic quantization (int8 weights,
activations quantized per batch; fbgemm/oneDNN kernels, AVX2 and up): measured here 15× faster
at decoding than torchao 0.18's int8 weight-only config, which has no fast CPU kernel without
``torch.compile`` (BENCHMARKS.md). On CUDA, int8 and int4 use torchao's weight-only configs
when torchao is installed (not measured here: no GPU was lent). ``auto`` picks what measured fastest
with the same answers (BENCHMARKS.md, "Generation speed"): bfloat16 on CUDA, float16 weights
(below) on an x86 CPU, float32 elsewhere.
On this project's 2-core AVX2 machine int8 decoded 1.6× faster and prefilled 1.5–2× faster,
but quantizing the activations (what makes it fast) changed Gemma 3 270M's answers: the same
answer as float32 for 32 % of 50 SQuAD dev questions, token F1 25.3 against 48.1; and this CPU
has no bfloat16 arithmetic (no AVX512-BF16/AMX), nor a fast weight-only int8 kernel
(``torch._weight_int8pack_mm`` and torchao's weight-only int8 ran 10–15× slower than float32).
On a later 2-core AVX512-BF16 machine bfloat16 prefilled 1.2× faster than float16 weights but
decoded 1.6× slower (BENCHMARKS.md, "Round 3"), so there ``auto`` is ``mixed``: float16 weights
for decoding, and a bfloat16 copy of the decoder's weights for products of at least
:data:`PREFILL_ROWS` rows (encoding passages, scoring): 80 SQuAD dev questions answered in
1.61 s median instead of 2.10 s; on the 300 that ``eval --squad`` reports, 99.0 % the float32
answers, token F1 45.1 against 45.3 (BENCHMARKS.md, "Round 4"). Under ``mixed`` the attention
of a prefill (at least :data:`~assistant.generation.blocks.BF16_QUERY` query tokens over an
explicit mask: encoding passage blocks) multiplies in bfloat16 as well (BENCHMARKS.md,
"Round 12").

float16 on a CPU keeps the arithmetic in float32 and only stores the Linear layers' weights
(the output head included) in float16: fbgemm's packed half-precision GEMM
(``quantized::linear_dynamic_fp16``, :class:`Fp16Linear`) converts them to float32 in registers
(F16C, AVX2), so decoding reads half the bytes with no activation quantized. Measured here (2 threads): a Gemma-3-270M-
shaped stack of 126 Linear layers 42.4 → 22.2 ms per token, its 262,144-row head 54.0 → 15.2 ms,
and a 800-token prefill of one layer 15.8 → 13.4 ms; the answers of 300 SQuAD dev questions
were all the float32 ones. Packing the weights costs about 2 s per load (Gemma 3 270M, packed in
pieces on two threads: fbgemm packs each piece on one); :class:`Prepack` does it from the
model's files while transformers is still being imported. On CUDA ``fp16`` loads the whole
model in float16.

This module imports torch; only :mod:`assistant.generation` imports it.
"""

from __future__ import annotations

import torch

from ..config import PRECISIONS

PREFILL_ROWS = 32
"""Under ``mixed``, a decoder product over at least this many rows (tokens of a batch) runs in
bfloat16; fewer (decoding passes: one token and its drafts) in float16-packed weights. On this
project's AVX512-BF16 CPU (2 threads) the two cost the same at 16–24 rows; at 32 rows bfloat16
took 398 against 445 µs (640 → 2048), 338 against 458 (2048 → 640), 235 against 317 (576 →
1536), at 8 rows 177 against 125 µs (640 → 2048)."""


class PrecisionError(ValueError):
    """A precision this device or installation cannot run."""


def resolve(precision: str, device: str) -> str:
    """The precision ``auto`` stands for on ``device`` (else ``precision`` itself).

    Raises:
        PrecisionError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision in ("fp16", "mixed") and device == "cpu" and not packed_fp16():
        raise PrecisionError(f"precision {precision!r} on this CPU needs PyTorch's fbgemm "
                             f"kernels (x86 builds); use fp32 (or auto)")
    if precision == "mixed" and (device != "cpu" or not native_bf16()):
        raise PrecisionError("precision 'mixed' is for CPUs with bfloat16 arithmetic "
                             "(AVX512-BF16 or AMX); use fp16 (or auto)")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16"
    if device == "cpu" and packed_fp16():
        return "mixed" if native_bf16() else "fp16"
    return "fp32"


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (the ``avx512_bf16`` or ``amx_bf16``
    flag of Linux's /proc/cpuinfo; False where that cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def packed_fp16() -> bool:
    """Whether this PyTorch build has fbgemm's float16-weight GEMM (x86 builds; ARM builds
    have only qnnpack, which lacks it)."""
    engines = torch.backends.quantized.supported_engines
    return "fbgemm" in engines or "x86" in engines


def load_dtype(precision: str, device: str = "cpu") -> "torch.dtype":
    """The dtype to load the weights in before :func:`apply`."""
    if precision == "fp16" and device.startswith("cuda"):
        return torch.float16
    return torch.bfloat16 if precision == "bf16" or precision == "int4" else torch.float32


def apply(model, precision: str, device: str, *, head: bool = True,
          prepacked: "Prepack | None" = None):
    """``model`` with its Linear layers converted to ``precision``; the embedding stays as
    loaded. Returns the model (dynamic quantization replaces modules).

    With ``head`` False, a CPU int8 model keeps its output head in float32: quantizing Gemma
    3's 262,144-row head takes about 2.5 s at every load, and a base model's readings compute
    only a few rows of it (see ``output_head``), so only a chat model, which computes the
    whole head for every token it writes, gains from it.

    ``prepacked``: float16 pieces packed from the model's files while it loaded (``fp16`` and
    ``mixed`` on a CPU; see :class:`Prepack`).

    ``mixed`` also runs the attention of a prefill in bfloat16 (:func:`mark_bf16_attention`).

    Raises:
        PrecisionError: int4 on a CPU; int4, or int8 on a GPU, without torchao.
    """
    on_cpu = device == "cpu"
    if precision in ("fp32", "bf16"):
        return model
    if precision == "fp16":  # on CUDA it was loaded in float16
        return pack_fp16(model, prepacked=prepacked) if on_cpu else model
    if precision == "mixed":
        mark_bf16_attention(model)
        return pack_fp16(model, prefill_bf16=True, prepacked=prepacked)
    if precision == "int4" and on_cpu:
        raise PrecisionError("precision 'int4' runs on CUDA only (torchao has no fast CPU int4 "
                             "kernel); on a CPU use int8 (or auto)")
    if precision == "int8" and on_cpu:
        import warnings

        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # PyTorch's notices that this API moves to torchao
            warnings.simplefilter("ignore")
            quantize_dynamic(model.get_decoder(), {torch.nn.Linear}, dtype=torch.qint8,
                             inplace=True)
            if head:  # what is left as nn.Linear: the head
                quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
            return model
    try:
        from torchao.quantization import (Int4WeightOnlyConfig, Int8WeightOnlyConfig,
                                          quantize_)
    except ImportError:
        raise PrecisionError(f"precision {precision!r} on {device} needs torchao "
                             f"(pip install torchao), or use fp32, bf16"
                             f"{', int8' if on_cpu else ''}") from None
    config = Int8WeightOnlyConfig() if precision == "int8" else Int4WeightOnlyConfig(
        group_size=128, int4_packing_format="tile_packed_to_4d")
    quantize_(model, config)
    return model


def mark_bf16_attention(model) -> int:
    """Mark ``model``'s attention layers (modules with ``q_proj`` and ``layer_idx``)
    ``bf16_prefill``, which :func:`assistant.generation.blocks._capture_attention` reads: a
    prefill's attention then multiplies in bfloat16 (``mixed``). Returns how many."""
    marked = 0
    for module in model.modules():
        if hasattr(module, "q_proj") and hasattr(module, "layer_idx"):
            module.bf16_prefill = True
            marked += 1
    return marked


def output_weight(model) -> "tuple[torch.Tensor, torch.Tensor | None]":
    """The output head's weight ``(vocab, hidden)`` and bias ``(vocab,)`` or None as float
    tensors: the input embedding's weight when the two are tied (Gemma 3, SmolLM2: no bias; a
    quantized head keeps the float copy there; float16 under ``fp16`` on a CPU, see
    :class:`Fp16Embedding`), else the head's own, de-quantized if it is quantized (once: a
    second of work for a large vocabulary)."""
    if getattr(model.config.get_text_config(decoder=True), "tie_word_embeddings", False):
        return model.get_input_embeddings().weight, None
    head = model.get_output_embeddings()
    weight = head.weight() if callable(head.weight) else head.weight
    bias = head.bias() if callable(head.bias) else head.bias
    if type(weight) not in (torch.Tensor, torch.nn.Parameter) and hasattr(weight, "dequantize"):
        weight = weight.dequantize()  # int8 (PyTorch) or torchao tensors
    return weight, bias


PACK_ROWS = 32768
"""Rows per packed piece of a large Linear layer (Gemma 3's 262,144-row head: 8 pieces)."""


class Fp16Linear(torch.nn.Module):
    """A Linear layer whose weight ``(out, in)`` is stored in float16 in fbgemm's packed
    layout and multiplied in float32 (``quantized::linear_dynamic_fp16``). A large layer is
    packed in pieces of :data:`PACK_ROWS` rows, so that the pieces pack on several threads
    (fbgemm packs on one; the op releases the GIL) and their outputs are concatenated.

    With ``bf16`` (a bfloat16 copy of the weight, ``mixed`` precision), inputs of at least
    :data:`PREFILL_ROWS` rows are multiplied in bfloat16 instead (inputs rounded to bfloat16,
    output rounded to bfloat16, then float32): a prefill product is about 2× faster that way
    on a CPU with AVX512-BF16, a decoding one slower (BENCHMARKS.md, "Round 3").

    Input ``(..., in)`` float32; output ``(..., out)`` float32.
    """

    def __init__(self, pieces: list, bias: "torch.Tensor | None", in_features: int,
                 out_features: int, bf16: "torch.Tensor | None" = None):
        super().__init__()
        self.pieces = pieces
        self.bias = bias
        self.in_features, self.out_features = in_features, out_features
        self.bf16 = bf16

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        flat = x.reshape(-1, self.in_features)
        if self.bf16 is not None and flat.shape[0] >= PREFILL_ROWS:
            y = torch.nn.functional.linear(flat.to(torch.bfloat16), self.bf16).float()
        else:
            outs = [torch.ops.quantized.linear_dynamic_fp16(flat, piece)
                    for piece in self.pieces]
            y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def weight(self) -> "torch.Tensor":
        """The weight ``(out, in)`` in float32 (unpacked: the values stored, float16-rounded)."""
        return torch.cat([torch.ops.quantized.linear_unpack_fp16(p)[0] for p in self.pieces])

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, fp16"
                + ("+bf16" if self.bf16 is not None else ""))


class Fp16Embedding(torch.nn.Module):
    """An input embedding whose weight ``(vocab, hidden)`` is kept in float16 and whose rows
    come out in float32, times the model's embedding scale in float32 (Gemma's
    ``sqrt(hidden)``) as the float32 module computes it: the same values whenever the weights
    are float16 numbers (the embedded models' are: converted to float16 from their GGUF), in
    half the memory (Gemma 3 270M: 320 MiB instead of 640).

    Input ids ``(...)``; output ``(..., hidden)`` float32.
    """

    def __init__(self, embedding):
        super().__init__()
        # a buffer, not a parameter: transformers takes a model's dtype from its first
        # parameter (the masks it builds would be float16)
        self.register_buffer("weight", embedding.weight.detach().half(), persistent=False)
        self.padding_idx = embedding.padding_idx
        scale = getattr(embedding, "embed_scale", None)
        self.scale = None if scale is None else scale.detach().float()

    def forward(self, ids: "torch.Tensor") -> "torch.Tensor":
        rows = torch.nn.functional.embedding(ids, self.weight, self.padding_idx).float()
        return rows if self.scale is None else rows * self.scale


def pack_fp16(model, threads: int | None = None, *, prefill_bf16: bool = False,
              prepacked: "Prepack | None" = None):
    """Replace every ``nn.Linear`` of ``model`` (the output head included, tied or not) with
    an :class:`Fp16Linear`, and a plain or scaled input embedding with an
    :class:`Fp16Embedding`. The pieces pack on ``threads`` threads (default: torch's
    intra-op thread count): Gemma 3 270M packs in about half the time of one thread. With
    ``prefill_bf16`` the decoder's layers (not the output head: prefill computes few of its
    rows) also keep a bfloat16 copy for products of many rows (``mixed``; Gemma 3 270M: 200
    MB more). A layer whose weight ``prepacked`` holds (packed from the model's files while
    it loaded, see :class:`Prepack`) takes those pieces (waiting for them) instead of being
    packed again. Returns the model."""
    from concurrent.futures import ThreadPoolExecutor

    linears = [(name, module) for name, module in model.named_modules()
               if type(module) is torch.nn.Linear]
    pieces: dict[int, list] = {}
    if prepacked is not None:
        # a parameter's first name: a tied head's weight is named as the embedding's
        names = {id(p): name for name, p in model.named_parameters()}
        for i, (_, module) in enumerate(linears):
            found = prepacked.pieces(names.get(id(module.weight), ""), module.weight)
            if found is not None:
                pieces[i] = found
    jobs = []  # (layer index, piece index, weight rows)
    for i, (_, module) in enumerate(linears):
        if i not in pieces:
            weight = module.weight.detach()
            for j, start in enumerate(range(0, weight.shape[0], PACK_ROWS)):
                jobs.append((i, j, weight[start:start + PACK_ROWS]))
    with ThreadPoolExecutor(max(1, threads or torch.get_num_threads())) as pool:
        packed = list(pool.map(lambda job: _pack_rows(job[2]), jobs))
    for (i, j, _), piece in zip(jobs, packed):
        pieces.setdefault(i, []).append(piece)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for i, (name, module) in enumerate(linears):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        bias = None if module.bias is None else module.bias.detach().float()
        copy = (module.weight.detach().to(torch.bfloat16)
                if prefill_bf16 and module is not head else None)
        setattr(parent, child, Fp16Linear(pieces[i], bias, module.in_features,
                                          module.out_features, copy))
    embedding = getattr(model, "get_input_embeddings", lambda: None)()
    if isinstance(embedding, torch.nn.Embedding) and embedding.weight.dtype == torch.float32 \
            and not embedding.max_norm:
        model.set_input_embeddings(Fp16Embedding(embedding))
    return model


def _pack_rows(rows: "torch.Tensor"):
    """One piece of an :class:`Fp16Linear`: weight rows ``(n, in)`` (any float dtype, at most
    :data:`PACK_ROWS`) in fbgemm's packed float16 layout."""
    return torch.ops.quantized.linear_prepack_fp16(rows.float().contiguous(), None)


class Prepack:
    """The float16-packed pieces (as :class:`Fp16Linear` holds them) of the weights stored in
    a local model folder's ``*.safetensors`` files, packed on background threads straight from
    the files, so that the packing (Gemma 3 270M: 2.2 s on two threads, 3.8 s on one, most of
    it the 262,144-row tied head) runs while the model's code is imported and its weights
    loaded, which keep one core busy. :func:`pack_fp16` takes them with :meth:`pieces`.

    Packed: every 2-D floating-point ``*.weight`` tensor; an input embedding (a key holding
    ``embed``) only when ``config.json`` ties it to the output head (``tie_word_embeddings``,
    default True as in transformers' configs). Nothing is packed when the folder has no
    safetensors files. Errors while reading or packing are kept and make :meth:`pieces`
    return None (the caller packs that layer itself).

    Args:
        folder: the model folder (``config.json`` and ``*.safetensors``).
        threads: packing threads (default: torch's intra-op thread count). Until
            :meth:`pieces` is first called, pieces pack on ``start_threads`` of them (the
            imports beside them hold a core: with two, importing Gemma 3's modeling code took
            twice as long here); then on all of them.
    """

    SAMPLES = 16
    """Rows compared between a file's tensor and the loaded weight (evenly spaced)."""

    def __init__(self, folder, threads: int | None = None, start_threads: int = 1):
        import threading
        from pathlib import Path

        self.folder = Path(folder)
        self.threads = max(1, threads or torch.get_num_threads())
        self._more = max(0, self.threads - max(1, start_threads))
        self._gate = threading.Semaphore(self.threads - self._more)
        self._packed: dict[str, tuple[tuple[int, ...], torch.Tensor, list]] = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="prepack", daemon=True)
        self._thread.start()

    def _keys(self, handle) -> list[str]:
        import json

        try:
            config = json.loads((self.folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        text = config.get("text_config") or {}
        tied = config.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
        keys = [k for k in handle.keys() if k.endswith(".weight")
                and (tied or "embed" not in k)]
        return sorted(keys, key=lambda k: "embed" not in k)  # the largest first

    def _run(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from safetensors import safe_open

        def pack(tensor, start: int):
            with self._gate:  # the rows are read here: a waiting piece holds no memory
                return _pack_rows(tensor[start:start + PACK_ROWS])

        try:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="prepack",
                                    initializer=_lower_priority) as pool:
                for file in sorted(self.folder.glob("*.safetensors")):
                    with safe_open(str(file), framework="pt") as handle:
                        jobs = {}
                        for key in self._keys(handle):
                            tensor = handle.get_slice(key)
                            shape = tuple(tensor.get_shape())
                            if len(shape) != 2 or tensor.get_dtype() not in _FLOATS:
                                continue
                            sample = torch.stack([tensor[int(r):int(r) + 1][0].float()
                                                  for r in _sample_rows(shape[0])])
                            jobs[key] = (shape, sample, [pool.submit(pack, tensor, start) for
                                                         start in range(0, shape[0], PACK_ROWS)])
                        for key, (shape, sample, pieces) in jobs.items():
                            self._packed[key] = (shape, sample, [p.result() for p in pieces])
        except Exception as exc:  # noqa: BLE001 - reported by pieces(): the caller packs
            self.error = exc
            self._packed.clear()

    def pieces(self, key: str, weight: "torch.Tensor") -> list | None:
        """The packed pieces of file tensor ``key`` when it holds ``weight`` ``(out, in)``
        (same shape, same values in :data:`SAMPLES` evenly spaced rows); else None. Waits
        for the packing to finish (on all its threads from now on)."""
        if self._more:
            self._gate.release(self._more)
            self._more = 0
        self._thread.join()
        found = self._packed.get(key)
        if found is None or found[0] != tuple(weight.shape):
            return None
        shape, sample, pieces = found
        if not torch.equal(weight.detach()[_sample_rows(shape[0])].float(), sample):
            return None
        return pieces


_FLOATS = ("F16", "BF16", "F32", "F64")
"""safetensors' names of the floating-point dtypes :class:`Prepack` packs."""


def _sample_rows(rows: int) -> "torch.Tensor":
    """The rows :class:`Prepack` compares: :attr:`Prepack.SAMPLES` evenly spaced ones."""
    return torch.arange(0, rows, max(1, rows // Prepack.SAMPLES))


PREPACK_NICE = 19
"""Niceness of :class:`Prepack`'s threads (Linux): they take the CPU only where the loading
beside them leaves it. With one such thread at the default niceness, importing Gemma 3's
modeling code took 30-40 % longer on this project's 2-core machine; at 19, 15-25 %."""


def _lower_priority() -> None:
    """Give the calling thread niceness :data:`PREPACK_NICE` where the system allows it."""
    import os
    import threading

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PREPACK_NICE)
    except (AttributeError, OSError):  # not Linux, or not permitted: normal priority
        pass


INT4_GROUP = 64
"""Weights per scale and zero point of :class:`Int4Head` (along the hidden dimension)."""

SCREEN_Z = 6.0
"""How many standard deviations of its rounding error an int4 logit may be off before
:class:`Int4Head` would miss the row it stands for: a row is computed exactly when its int4
logit plus this many deviations (and the bfloat16 rounding of the logit) reaches the best
exact logit. The errors of Gemma 3 270M's head measured here reached 4.8 deviations over 33
million logits (128 decoding steps × 262,144 rows), as a normal distribution would."""

SCREEN_MAX_STATES = 3
"""Hidden states per call up to which :class:`Int4Head` is faster than the float16-packed
head: Gemma 3 270M's head on this project's 2-core Xeon, float16-packed / screened, ms: 1
state 18.4 / 8.2, 2: 18.6 / 11.3, 3: 20.0 / 14.4, 4: 20.6 / 17.1, 5: 21.3 / 29.3, 7: 23.3 /
31.8 (the int4 kernel's time grows with the rows; a decoding pass has more rows when it
checks drafted tokens). Above it the caller uses the whole head."""

SCREEN_ROWS = 4096
"""Above this many candidate rows for one hidden state, :class:`Int4Head` gives up (the
caller computes the whole head): a flat distribution, where screening saves nothing."""


SCREEN_MIN_WEIGHTS = 64 * 2**20
"""Output heads with fewer weights than this decode as fast from their float16 copy: in
``benchmarks/speed.py`` here SmolLM2-135M's 49,152 × 576 head decoded at 20.8 / 18.1 tokens/s
(short / long prompt) in full and 19.3 / 18.4 screened; Gemma 3 270M's 262,144 × 640 at
14.6–15.7 full, 16.2–17.5 screened."""


def int4_head_available(weight: "torch.Tensor", bias, device: str) -> bool:
    """Whether :class:`Int4Head` can run, and gains, for an output head ``weight``
    ``(vocab, hidden)``: on a CPU whose PyTorch has the int4 CPU kernel, no bias, hidden
    size a multiple of :data:`INT4_GROUP`, at least :data:`SCREEN_MIN_WEIGHTS` weights."""
    return (device == "cpu" and bias is None and weight.dim() == 2
            and weight.shape[1] % INT4_GROUP == 0 and weight.numel() >= SCREEN_MIN_WEIGHTS
            and hasattr(torch, "_weight_int4pack_mm_for_cpu")
            and hasattr(torch, "_convert_weight_to_int4pack_for_cpu"))


class Int4Head:
    """The whole output head's logits at a quarter of the float16 head's bytes, exact where
    they can be chosen.

    A 4-bit copy of the head (per :data:`INT4_GROUP` weights a bfloat16 scale and zero point,
    PyTorch's ``_weight_int4pack_mm_for_cpu``) gives every row's logit with a small error;
    the rows whose logit could be the largest given that error are then computed exactly
    from the float weights (a gather of a few rows), and replace their int4 logits. A row
    is a candidate when its int4 logit plus :data:`SCREEN_Z` standard deviations of its
    error reaches the exact logit of the int4 argmax; the deviation is that of independent
    rounding errors (the weights': uniform over a quantization step, variance step²/12; the
    bfloat16 input's: the row's root mean square weight times the input's rounding), plus
    the output's bfloat16 rounding (2⁻⁸ of the logit, twice its bound). So the largest logit
    returned is the exact largest one (unless an error passes 6 deviations), and so is
    every logit whose int4 value came within the error of it; the others keep their int4
    value, and a log-softmax over them has its normaliser from those (about
    0.007 nats per token too high on average over 128 of Gemma 3 270M's decoding steps, at
    most 0.07: the answer's log-probability is approximate, its tokens are not).

    Gemma 3 270M's 262,144 × 640 head for one hidden state on this project's 2-core Xeon:
    20.5 ms float16-packed, 7.5 ms int4 plus about 2.5 ms of screening and gathering
    (BENCHMARKS.md, "Round 7"). The 4-bit copy is 105 MB (Gemma 3 270M) besides the float
    weights, which stay (the candidates are read from them).

    Attributes:
        weight: ``(vocab, hidden)`` the float (float16 or float32) head weights.
        packed: ``(rows, hidden / 2)`` uint8, the int4 weights in the CPU kernel's layout
            (``rows``: the vocabulary rounded up to a multiple of 16 with zero rows, as the
            kernel requires).
        scales: ``(hidden / group, rows, 2)`` bfloat16 scale and zero point per group.
        variance: ``(vocab, hidden / group)`` float32, each group's rounding-error variance
            per weight (step² / 12).
        rms: ``(vocab,)`` float32, each row's root mean square de-quantized weight.
    """

    def __init__(self, weight, packed, scales, variance, rms):
        self.weight, self.packed, self.scales = weight, packed, scales
        self.variance, self.rms = variance, rms
        self.group = weight.shape[1] // scales.shape[0]
        self._mean_square = rms.pow(2)[None]  # (1, vocab), used at every step

    @classmethod
    def quantize(cls, weight: "torch.Tensor", group: int = INT4_GROUP,
                 chunk: int = 32768) -> "Int4Head":
        """Quantize ``weight`` ``(vocab, hidden)`` (asymmetric, min to max of each group in
        16 steps), ``chunk`` rows at a time (Gemma 3 270M's head: about 1.4 s here)."""
        n, k = weight.shape
        packed, scales, variance, rms = [], [], [], []
        with torch.inference_mode():
            for start in range(0, n, chunk):
                w = weight[start:start + chunk].float()
                if w.shape[0] % 16:  # the kernel packs rows in sixteens
                    w = torch.cat([w, w.new_zeros(16 - w.shape[0] % 16, k)])
                w = w.view(-1, k // group, group)
                low, high = w.amin(-1), w.amax(-1)
                step = ((high - low) / 15).clamp(min=1e-12).to(torch.bfloat16).float()
                zero = (low + 8 * step).to(torch.bfloat16).float()  # the value of q = 8
                q = torch.round((w - zero[..., None]) / step[..., None]).add_(8).clamp_(0, 15)
                deq = (q - 8) * step[..., None] + zero[..., None]
                packed.append(torch._convert_weight_to_int4pack_for_cpu(
                    q.to(torch.int32).view(-1, k), 1))
                scales.append(torch.stack([step, zero], -1).to(torch.bfloat16))
                variance.append(step.pow(2) / 12)
                rms.append(deq.pow(2).mean((-1, -2)).sqrt())
        return cls(weight, torch.cat(packed), torch.cat(scales).transpose(0, 1).contiguous(),
                   torch.cat(variance)[:n], torch.cat(rms)[:n])

    def tensors(self) -> dict:
        """What :meth:`from_tensors` needs besides the float weights (to store on disk)."""
        return {"packed": self.packed, "scales": self.scales, "variance": self.variance,
                "rms": self.rms}

    @classmethod
    def from_tensors(cls, weight: "torch.Tensor", tensors: dict) -> "Int4Head | None":
        """The head stored by :meth:`tensors` for ``weight``, or None when a tensor is
        missing or the shapes do not fit it."""
        n, k = weight.shape
        if not {"packed", "scales", "variance", "rms"} <= tensors.keys():
            return None
        head = cls(weight, tensors["packed"], tensors["scales"], tensors["variance"],
                   tensors["rms"])
        rows = -(-n // 16) * 16
        fits = (head.packed.shape == (rows, k // 2) and head.scales.shape[1:] == (rows, 2)
                and k % head.scales.shape[0] == 0
                and head.variance.shape == (n, k // head.group) and head.rms.shape == (n,))
        return head if fits else None

    def __call__(self, hidden: "torch.Tensor") -> "torch.Tensor | None":
        """Logits ``(n, vocab)`` float32 of hidden states ``(n, hidden)`` float32, exact for
        every row that could be the largest (see the class); None (the caller computes the
        whole head) when ``n`` is above :data:`SCREEN_MAX_STATES` or some hidden state has
        more than :data:`SCREEN_ROWS` candidates."""
        n, k = hidden.shape
        if n > SCREEN_MAX_STATES:
            return None
        with torch.inference_mode():
            rounded = hidden.to(torch.bfloat16)
            vocab = self.weight.shape[0]
            logits = torch._weight_int4pack_mm_for_cpu(rounded, self.packed, self.group,
                                                       self.scales)[:, :vocab].float()
            squares = hidden.view(n, k // self.group, self.group).pow(2).sum(-1)  # (n, G)
            off = (hidden - rounded.float()).pow(2).sum(-1, keepdim=True)  # (n, 1)
            spread = torch.addcmul(squares @ self.variance.t(), off,
                                   self._mean_square).sqrt_()  # (n, vocab)
            upper = logits.abs().mul_(2.0 ** -8).add_(logits).add_(spread, alpha=SCREEN_Z)
            best = logits.argmax(-1)
            floor = (self.weight[best].float() * hidden).sum(-1)  # (n,) exact logit of best
            for i in range(n):
                rows = (upper[i] >= floor[i]).nonzero()[:, 0]
                if rows.numel() > SCREEN_ROWS:
                    return None
                rows = torch.cat([rows, best[i:i + 1]])
                logits[i, rows] = self.weight[rows].float() @ hidden[i]
        return logits
