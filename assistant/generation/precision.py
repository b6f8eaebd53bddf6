"""Numeric precision of the generator's weights: float32, bfloat16, or weight-only int8/int4.

Decoding one token reads every weight once, so on a CPU its time is about the bytes of the
weights over the memory bandwidth (Gemma 3 270M in float32: 1.07 GB per token). int8 weights
read a quarter of that. On the CPU, int8 uses PyTorch's dynamic quantization (int8 weights,
activations quantized per batch; fbgemm/oneDNN kernels, AVX2 and up); int4 and GPU int8 use
torchao's weight-only configs when torchao is installed. ``auto`` picks what measured fastest
with the same answers (BENCHMARKS.md, "Generation speed"): bfloat16 on CUDA, int8 on a CPU.

This module imports torch; only :mod:`assistant.generation` imports it.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16", "int8", "int4")


class PrecisionError(ValueError):
    """A precision this device or installation cannot run."""


def resolve(precision: str, device: str) -> str:
    """The precision ``auto`` stands for on ``device`` (else ``precision`` itself).

    Raises:
        PrecisionError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if device.startswith("cuda") else "int8"


def load_dtype(precision: str) -> "torch.dtype":
    """The dtype to load the weights in before :func:`apply`."""
    return torch.bfloat16 if precision == "bf16" or precision == "int4" else torch.float32


def apply(model, precision: str, device: str):
    """``model`` with its Linear layers (the output head included) converted to ``precision``;
    the embedding stays as loaded. Returns the model (dynamic quantization replaces modules).

    Raises:
        PrecisionError: int4 without torchao, or int8 on a GPU without torchao.
    """
    if precision in ("fp32", "bf16"):
        return model
    on_cpu = device == "cpu"
    if precision == "int8" and on_cpu:
        import warnings

        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # PyTorch's notice that quantized tensors will move
            warnings.simplefilter("ignore", UserWarning)
            return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    try:
        from torchao.quantization import (Int4WeightOnlyConfig, Int8WeightOnlyConfig,
                                          quantize_)
    except ImportError:
        raise PrecisionError(f"precision {precision!r} on {device} needs torchao "
                             f"(pip install torchao), or use fp32, bf16"
                             f"{', int8' if on_cpu else ''}") from None
    config = Int8WeightOnlyConfig() if precision == "int8" else Int4WeightOnlyConfig(
        group_size=128, **({"int4_packing_format": "opaque"} if on_cpu else {}))
    quantize_(model, config)
    return model


def output_weight(model) -> "tuple[torch.Tensor, torch.Tensor | None]":
    """The output head's weight ``(vocab, hidden)`` and bias ``(vocab,)`` or None as float
    tensors: the input embedding's weight when the two are tied (Gemma 3, SmolLM2: no bias; a
    quantized head keeps the float copy there), else the head's own, de-quantized if it is
    quantized (once: a second of work for a large vocabulary)."""
    if getattr(model.config.get_text_config(decoder=True), "tie_word_embeddings", False):
        return model.get_input_embeddings().weight, None
    head = model.get_output_embeddings()
    weight = head.weight() if callable(head.weight) else head.weight
    bias = head.bias() if callable(head.bias) else head.bias
    if type(weight) not in (torch.Tensor, torch.nn.Parameter) and hasattr(weight, "dequantize"):
        weight = weight.dequantize()  # int8 (PyTorch) or torchao tensors
    return weight, bias
