"""An :class:`~index.embedding.Embedder` on ONNX Runtime, with an int8 copy made locally.

The shipped weights are exported once to ONNX (:func:`index.embedding.export_onnx`), fused by
ONNX Runtime's transformer optimizer (attention, GELU, skip + LayerNorm) and, for ``onnx-int8``,
dynamically quantized (int8 weights per output channel, activations quantized on the fly;
``reduce_range`` keeps AVX2's u8×s8 products from saturating, as the ONNX Runtime quantization
guide advises for CPUs without VNNI). The files are cached under ``cache_dir`` and reused; no
hub access is needed. Measured on this project's machines in BENCHMARKS.md ("Embedding
runtimes"), including its effect on recall@5 and nDCG@10.

This is the only module that imports onnxruntime.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .embedding import export_onnx, resolve_model_path

RUNTIMES = ("onnx-int8", "onnx-fp32")


def _cache_folder(name: str, cache_dir: Path) -> Path:
    source = resolve_model_path(name)
    key = hashlib.sha256(f"{name}\0{source}".encode()).hexdigest()[:16]
    return Path(cache_dir) / "embedders" / key


def prepare(name: str, runtime: str, cache_dir: Path) -> tuple[Path, dict]:
    """The ONNX file for ``runtime`` (made and cached when missing) and the pooling settings.

    Raises:
        ValueError: unknown runtime, or a model the ONNX path does not support.
        OSError: the cache folder cannot be written.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown embedding runtime {runtime!r}; choose torch or "
                         f"{' or '.join(RUNTIMES)}")
    folder = _cache_folder(name, cache_dir)
    fused = folder / "model.fused.onnx"
    final = folder / ("model.int8.onnx" if runtime == "onnx-int8" else "model.fused.onnx")
    info_file = folder / "model.json"
    if final.is_file() and info_file.is_file():
        return final, json.loads(info_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    with _quiet():
        return _make(name, runtime, folder, fused, final, info_file)


@contextlib.contextmanager
def _quiet():
    """No library progress bars or advice on the user's terminal while the copy is made
    (transformers' weight-loading bars, the quantizer's root-logger warning)."""
    from transformers.utils import logging as hf_logging

    root = logging.getLogger()
    level, bars = root.level, hf_logging.is_progress_bar_enabled()
    root.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        root.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def _make(name: str, runtime: str, folder: Path, fused: Path, final: Path,
          info_file: Path) -> tuple[Path, dict]:
    """Export, fuse and (for int8) quantize; see :func:`prepare`."""
    raw = folder / "model.onnx"
    info = export_onnx(name, raw)
    from onnxruntime.transformers import optimizer

    optimized = optimizer.optimize_model(str(raw), model_type="bert", opt_level=1,
                                         num_heads=info["num_heads"],
                                         hidden_size=info["hidden_size"])
    tmp = fused.with_suffix(".tmp")
    optimized.save_model_to_file(str(tmp))
    os.replace(tmp, fused)
    if runtime == "onnx-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = final.with_suffix(".tmp")
        quantize_dynamic(str(fused), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True, extra_options={"DefaultTensorType": 1})
        os.replace(tmp, final)
    raw.unlink(missing_ok=True)
    info_file.write_text(json.dumps(info))
    return final, info


class OnnxEmbedder:
    """An :class:`~index.embedding.Embedder` running an ONNX copy of a sentence-transformers
    model with ONNX Runtime on the CPU.

    Args:
        name: embedding model name (see :func:`index.embedding.resolve_model_path`).
        runtime: ``"onnx-int8"`` (int8 weights) or ``"onnx-fp32"`` (same numbers as torch,
            fused kernels).
        cache_dir: where the ONNX files are kept (the data dir's ``models`` folder).
        threads: intra-op threads (default: all cores).

    Raises:
        ValueError: unknown runtime or unsupported model; OSError: cache not writable.
    """

    def __init__(self, name: str, *, runtime: str = "onnx-int8", cache_dir: Path,
                 threads: int | None = None):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        path, info = prepare(name, runtime, cache_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options,
                                             providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name))
        self._pooling = info["pooling"]
        self.max_tokens = int(info["max_tokens"])
        self.name = name
        self.runtime = runtime
        self.dim = int(info["hidden_size"])

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Embed texts: ``(n,) -> (n, dim)`` float32, L2-normalised; inputs are truncated to
        ``max_tokens``; batches are formed from texts sorted by length (less padding)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), max(batch_size, 1)):
            rows = order[start : start + batch_size]
            batch = self._tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                    max_length=self.max_tokens, return_tensors="np")
            feed = {k: np.asarray(v, dtype=np.int64) for k, v in batch.items() if k in self._inputs}
            if "token_type_ids" in self._inputs and "token_type_ids" not in feed:
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            hidden = self._session.run(None, feed)[0]  # (batch, seq_len, dim)
            if self._pooling == "cls":
                vectors = hidden[:, 0]
            else:
                mask = feed["attention_mask"][..., None].astype(np.float32)
                vectors = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            out[rows] = vectors
        # Always unit length, as SentenceTransformerEmbedder: the index searches by inner product.
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model's tokenizer counts them, without special tokens."""
        if not texts:
            return []
        encoded = self._tokenizer(list(texts), add_special_tokens=False, truncation=False,
                                  verbose=False)["input_ids"]
        return [len(ids) for ids in encoded]
