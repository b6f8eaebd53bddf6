"""The embedding runtimes on the real embedded MiniLM: the ONNX copies are made locally from
the shipped weights, cached, and give the vectors torch gives (int8: close to them)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import load_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [p["text"] for p in load_jsonl("squad_passages.jsonl")][:40] + ["short", "Ein Satz."]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.mark.parametrize("runtime, least", [("onnx-fp32", 0.9999), ("onnx-int8", 0.97)])
def test_onnx_runtimes_match_torch(real_embedder, texts, onnx_cache, runtime, least):
    from index.onnx_embedding import OnnxEmbedder

    embedder = OnnxEmbedder("all-MiniLM-L6-v2", runtime=runtime, cache_dir=onnx_cache)
    assert embedder.runtime == runtime and embedder.dim == real_embedder.dim == 384
    reference = real_embedder.embed(texts)
    vectors = embedder.embed(texts, batch_size=8)
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosine = (vectors * reference).sum(1)
    assert cosine.min() >= least, cosine.min()
    # retrieval order is what matters: each text's nearest other text is the same
    assert (np.argsort(-(vectors @ vectors.T), axis=1)[:, 1]
            == np.argsort(-(reference @ reference.T), axis=1)[:, 1]).mean() >= 0.9
    assert embedder.count_tokens(["hello world"]) == real_embedder.count_tokens(["hello world"])


def test_onnx_copy_is_made_once_and_reused(onnx_cache):
    from index.onnx_embedding import OnnxEmbedder, prepare

    path, _ = prepare("all-MiniLM-L6-v2", "onnx-int8", onnx_cache)
    made = path.stat().st_mtime_ns
    OnnxEmbedder("all-MiniLM-L6-v2", runtime="onnx-int8", cache_dir=onnx_cache)
    assert path.stat().st_mtime_ns == made
    assert not list(path.parent.glob("*.tmp"))  # written aside, then renamed
    with pytest.raises(ValueError, match="unknown embedding runtime"):
        prepare("all-MiniLM-L6-v2", "onnx-int4", onnx_cache)
