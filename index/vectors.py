"""The FAISS vector index: which kind for how many passages, and building each.

Thresholds and parameters are measured by ``benchmarks/scale.py`` (BENCHMARKS.md, "Indexes at
scale"; MiniLM-distributed vectors, 384 dimensions, this 2-core CPU):

- ``flat`` (exact inner product) up to :data:`FLAT_MAX` passages: no training, exact results,
  about 10 ms per question at 100 k and 100 ms at 1 M.
- ``ivf``: an inverted file of ``nlist`` k-means cells (4 √n, a power of two) with 8-bit
  scalar-quantised codes (384 bytes a vector, a quarter of float32), ``nprobe`` cells searched
  (:func:`choose`). At 1 M: 1.5 ms p50 and recall@10 0.977 against exact search, 0.4 GB.
  Passages are added and removed by id without retraining; :func:`needs_retraining` says when
  the corpus has grown or shrunk too far from what the cells were trained on.
- ``ivf`` with ``on_disk``: from :data:`ON_DISK_FROM` passages a search process maps the
  codes from the index file instead of reading them into RAM (:func:`read`); an `index` run
  still reads them whole to change them. :func:`build_on_disk` builds such an index for a
  corpus whose vectors do not fit in RAM at all (train -> shards -> merge into
  ``OnDiskInvertedLists``, as the FAISS wiki's "Indexes that do not fit in RAM" describes); the
  scale benchmark builds its 10 M index that way.

This is the only module of the app that imports faiss (:mod:`index.store` calls it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Iterator

import faiss
import numpy as np

FLAT_MAX = 100_000
"""Most passages searched exactly (flat); measured: flat p50 reaches ~10 ms here."""
ON_DISK_FROM = 4_000_000
"""From this many passages the IVF codes stay on disk (1.5 GB of codes at 384 bytes each)."""
TRAIN_PER_CELL = 39
"""Training vectors per IVF cell (FAISS warns below 39 per centroid)."""
TRAIN_MAX = 256 * 1024
"""At most this many training vectors (k-means time grows with it; 2-core CPU)."""
NPROBE = 64
"""Cells searched (measured, BENCHMARKS.md "Indexes at scale"): 64 of 2,048 cells gives
recall@10 0.970 at 200 k, 64 of 4,096 0.977 at 1 M in 1.5 ms p50, 64 of 16,384 0.975 at 10 M
in 6.9 ms (128 cells: 0.977 in 9.9 ms)."""


def choose(n: int) -> dict:
    """The index for ``n`` passages: ``{"kind": "flat"}`` or ``{"kind": "ivf", "nlist",
    "nprobe", "code": "SQ8", "on_disk": bool}`` (values from the module docstring)."""
    if n <= FLAT_MAX:
        return {"kind": "flat"}
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    return {"kind": "ivf", "nlist": nlist, "nprobe": min(NPROBE, nlist),
            "code": "SQ8", "on_disk": n >= ON_DISK_FROM}


def describe(spec: dict) -> str:
    """One line for people: ``flat (exact)`` or ``IVF4096,SQ8 (nprobe 64)``."""
    if spec.get("kind", "flat") == "flat":
        return "flat (exact)"
    where = ", codes on disk" if spec.get("on_disk") else ""
    return f"IVF{spec['nlist']},{spec['code']} (nprobe {spec['nprobe']}{where})"


def factory(spec: dict) -> str:
    """The FAISS ``index_factory`` string for an ``ivf`` spec (an HNSW coarse quantizer from
    16,384 cells, so adding millions of vectors does not compare each with every centroid)."""
    quantizer = "_HNSW32" if spec["nlist"] >= 16384 else ""
    return f"IVF{spec['nlist']}{quantizer},{spec['code']}"


def empty(dim: int) -> faiss.Index:
    """A new flat index with passage ids: ``IndexIDMap2(IndexFlatIP(dim))``."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def train_size(spec: dict, n: int) -> int:
    """How many vectors to train an ``ivf`` spec on (of ``n`` available)."""
    return min(n, TRAIN_MAX, max(TRAIN_PER_CELL * spec["nlist"], 10_000))


def trained(spec: dict, sample: np.ndarray) -> faiss.Index:
    """An empty ``ivf`` index trained on ``sample`` ``(m, dim)`` float32 (k-means for the cells,
    value ranges for the codes), its ``nprobe`` set."""
    index = faiss.index_factory(sample.shape[1], factory(spec), faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    tune(index, spec)
    return index


QUANTIZER_EF = 128
"""``efSearch`` of an HNSW coarse quantizer, when adding and when searching: FAISS's default
(16) put vectors in cells other than their nearest one, and those were never found again
(measured at 10 M: recall@10 stuck at 0.92 whatever nprobe, and 0.93 even with the top 50
re-scored exactly; with 128: 0.975)."""


def tune(index: faiss.Index, spec: dict) -> None:
    """Set search parameters from ``spec`` (``nprobe`` for ``ivf``, and the HNSW quantizer's
    :data:`QUANTIZER_EF`; nothing for flat)."""
    if spec.get("kind") == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = int(spec["nprobe"])
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            quantizer.hnsw.efSearch = QUANTIZER_EF


def needs_retraining(spec: dict, n: int) -> bool:
    """True when ``n`` passages call for another kind or other cells than ``spec`` (which
    records ``trained_on``, the count when the cells were trained): flat past
    :data:`FLAT_MAX`, or an ``ivf`` whose corpus grew 4x or shrank to a quarter since
    (cells then hold ~4x more or fewer vectors than planned, and recall or speed drifts)."""
    want = choose(n)
    if spec.get("kind", "flat") == "flat":
        return want["kind"] != "flat"
    if want["kind"] == "flat":
        return n < FLAT_MAX // 2  # hysteresis: no flapping at the threshold
    trained_on = int(spec.get("trained_on", 0)) or 1
    return not trained_on / 4 <= n <= trained_on * 4


def ids_of(index: faiss.Index) -> np.ndarray:
    """All ids in ``index`` (IDMap2 flat or IVF), unsorted, int64."""
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map)
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    parts = []
    for cell in range(ivf.nlist):
        size = lists.list_size(cell)
        if size:
            parts.append(faiss.rev_swig_ptr(lists.get_ids(cell), size).copy())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def has_ids(index) -> bool:
    """True for the index kinds the store keeps: a flat ``IndexIDMap2`` or an IVF index
    (which stores ids itself)."""
    if isinstance(index, faiss.IndexIDMap2):
        return True
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return True


def is_flat(index) -> bool:
    """True for an exact index (``IndexIDMap2(IndexFlatIP)``)."""
    return isinstance(index, faiss.IndexIDMap2)


def vectors_of(index: faiss.Index, batch: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every ``(ids, vectors)`` of ``index`` in batches, vectors ``(m, dim)`` float32: exact
    from a flat index, decoded from an IVF index's 8-bit codes (each value within 1/255 of its
    dimension's range)."""
    if is_flat(index):
        ids = faiss.vector_to_array(index.id_map)
        for start in range(0, len(ids), batch):
            stop = min(start + batch, len(ids))
            yield ids[start:stop], index.index.reconstruct_n(start, stop - start)
        return
    ivf = faiss.extract_index_ivf(index)
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    ids = ids_of(index)
    for start in range(0, len(ids), batch):
        part = ids[start:start + batch]
        yield part, index.reconstruct_batch(part)
    ivf.set_direct_map_type(faiss.DirectMap.NoMap)


def convert(index: faiss.Index, spec: dict, seed: int = 0) -> faiss.Index:
    """A new index of ``spec`` holding the vectors of ``index`` (any kind the store keeps), an
    ``ivf`` one trained on a random sample of them. From an IVF index the vectors are its
    decoded codes (:func:`vectors_of`), so going back to flat keeps that small loss; `assistant
    index --rebuild` re-embeds exactly."""
    n = index.ntotal
    if spec["kind"] == "flat":
        out = empty(index.d)
        for ids, vecs in vectors_of(index):
            out.add_with_ids(vecs, ids)
        return out
    rng = np.random.default_rng(seed)
    keep = np.zeros(n, dtype=bool)
    keep[rng.choice(n, train_size(spec, n), replace=False)] = True
    sample, seen = [], 0
    for _, vecs in vectors_of(index):
        sample.append(vecs[keep[seen:seen + len(vecs)]])
        seen += len(vecs)
    out = trained(spec, np.concatenate(sample))
    for ids, vecs in vectors_of(index):
        out.add_with_ids(vecs, ids)
    return out


def build_on_disk(spec: dict, sample: np.ndarray, batches: Iterable[tuple[np.ndarray, np.ndarray]],
                  folder: Path) -> faiss.Index:
    """Train -> shards -> merge (FAISS wiki, "Indexes that do not fit in RAM"): train an
    ``ivf`` index on ``sample``, add each ``(ids, vectors)`` batch to its own shard written to
    ``folder``, then merge the shards' lists into ``folder/lists.ivfdata`` (memory-mapped
    when searched) and write ``folder/index.faiss``. Memory: one batch and one shard at a time.

    Returns:
        The merged index, ready to search (its lists mapped from disk).
    """
    from faiss.contrib.ondisk import merge_ondisk

    folder.mkdir(parents=True, exist_ok=True)
    base = trained(spec, sample)
    faiss.write_index(base, str(folder / "trained.faiss"))
    shards = []
    for number, (ids, vecs) in enumerate(batches):
        shard = faiss.read_index(str(folder / "trained.faiss"))
        tune(shard, spec)
        shard.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), ids.astype(np.int64))
        shards.append(str(folder / f"shard-{number:04d}.faiss"))
        faiss.write_index(shard, shards[-1])
        del shard
    merged = faiss.read_index(str(folder / "trained.faiss"))
    merge_ondisk(merged, shards, str(folder / "lists.ivfdata"))
    faiss.write_index(merged, str(folder / "index.faiss"))
    for name in shards + [str(folder / "trained.faiss")]:
        Path(name).unlink()
    tune(merged, spec)
    return merged


def write(index: faiss.Index, path: Path) -> None:
    """Write ``index`` to ``path`` (FAISS's own format).

    Raises:
        RuntimeError: the write failed (FAISS's error; disk full, permissions).
    """
    faiss.write_index(index, str(path))


def read(path: Path, spec: dict, *, for_update: bool = False) -> faiss.Index:
    """Read an index written by FAISS and set its search parameters from ``spec``. An
    ``on_disk`` index read for searching keeps its lists in the file, memory-mapped
    (``IO_FLAG_MMAP``: RAM holds the cells, the OS pages lists in as questions touch them);
    ``for_update`` reads it whole, since mapped lists are read-only.

    Raises:
        RuntimeError: a missing or corrupt file (FAISS's own error).
    """
    mapped = spec.get("on_disk") and not for_update
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mapped else 0)
    tune(index, spec)
    return index
