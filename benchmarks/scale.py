"""FAISS indexes at 1 M and 10 M passages: build time, RAM, disk, query latency and recall@10
against exact search, for flat, HNSW, IVF and the store's automatic choice
(:func:`index.vectors.choose`).

Vectors: MiniLM-distributed synthetic passages and real query embeddings (see
benchmarks/scale_data.py), streamed to disk; no configuration holds 10 M float32 vectors in
RAM. Each index is built in one process and searched in a fresh one (so RAM is what a
search process holds: resident anonymous memory, plus file pages mapped for on-disk lists).
Queries are searched one at a time (as a user asks), after 50 warm-up queries; FAISS uses
both cores.

    .venv/bin/python benchmarks/scale.py [--sizes 100000,1000000,10000000] [--dir DIR]

Prints a table and writes ``results.jsonl`` in the directory (one line per index).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import scale_data  # noqa: E402

QUERIES = 500
BATCH = 250_000


def configs(n: int) -> list[str]:
    """What to measure at ``n``: flat where it fits in RAM, HNSW up to 1 M, IVF-Flat and the
    automatic choice with a sweep of nprobe."""
    from index.vectors import FLAT_MAX

    out = ["auto"]
    if FLAT_MAX < n and n * 384 * 4 <= 8e9:
        out += ["flat", "ivf-flat"]
    if FLAT_MAX < n <= 1_000_000:
        out.append("hnsw")
    return out


def _rss() -> dict:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def _spec(config: str, n: int) -> dict:
    from index import vectors

    auto = vectors.choose(n)
    if config == "auto":
        return auto
    if config == "flat":
        return {"kind": "flat"}
    if config == "ivf-flat":
        return {**auto, "kind": "ivf", "code": "Flat", "on_disk": False}
    if config == "hnsw":
        return {"kind": "hnsw", "M": 32, "efConstruction": 40, "efSearch": 64}
    raise ValueError(config)


def build(folder: Path, n: int, config: str) -> dict:
    """Build one index from ``vectors-n.f32`` into ``folder/n-config/``; returns its figures."""
    import faiss

    from index import vectors

    data = scale_data.vectors(folder, n)
    spec = _spec(config, n)
    out = folder / f"{n}-{config}"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    batches = ((np.arange(s, min(s + BATCH, n)), np.asarray(data[s:s + BATCH]))
               for s in range(0, n, BATCH))
    trained_s = 0.0
    if spec["kind"] == "flat":
        index = vectors.empty(384)
    elif spec["kind"] == "hnsw":
        index = faiss.IndexHNSWFlat(384, spec["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec["efConstruction"]
    if spec["kind"] == "ivf":
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(n, vectors.train_size(spec, n), replace=False))
        sample = np.asarray(data[rows])
        if spec.get("on_disk"):
            vectors.build_on_disk(spec, sample, batches, out)
            trained_s = float("nan")
        else:
            index = vectors.trained(spec, sample)
            trained_s = time.perf_counter() - started
            for ids, vecs in batches:
                index.add_with_ids(vecs, ids)
            faiss.write_index(index, str(out / "index.faiss"))
    else:
        for ids, vecs in batches:
            if spec["kind"] == "flat":
                index.add_with_ids(vecs, ids)
            else:
                index.add(vecs)  # HNSW ids are insertion order = row = id
        faiss.write_index(index, str(out / "index.faiss"))
    seconds = time.perf_counter() - started
    disk = sum(p.stat().st_size for p in out.iterdir())
    return {"n": n, "config": config, "spec": spec, "build_s": round(seconds, 1),
            "train_s": round(trained_s, 1), "disk_bytes": disk}


def search(folder: Path, n: int, config: str, sweep: list[int], rerank: int = 0) -> list[dict]:
    """Search the built index with the real queries, one at a time; one result per search
    setting (nprobe or efSearch) in ``sweep`` (empty: the spec's own). With ``rerank``, each
    search takes that many candidates and re-scores them exactly with their float32 vectors
    read from ``vectors-n.f32`` on disk (memory-mapped; row = id)."""
    import faiss

    from index import vectors

    queries = np.load(folder / f"queries-{QUERIES}.npy")
    truth = scale_data.truth(folder, n, queries)
    before = _rss()
    spec = _spec(config, n)
    index = faiss.read_index(str(folder / f"{n}-{config}" / "index.faiss"))
    vectors.tune(index, spec)
    exact = scale_data.vectors(folder, n) if rerank else None

    def ask(q):
        if not rerank:
            return index.search(q[None], 10)[1][0]
        ids = index.search(q[None], rerank)[1][0]
        ids = np.sort(ids[ids >= 0])
        scores = np.asarray(exact[ids]) @ q
        return ids[np.argsort(-scores)[:10]]

    results = []
    for setting in sweep or [None]:
        if setting is not None:
            if spec["kind"] == "hnsw":
                index.hnsw.efSearch = setting
            else:
                faiss.extract_index_ivf(index).nprobe = setting
        for q in queries[:50]:  # warm-up: caches, lists mapped in
            ask(q)
        times, found = [], []
        for q in queries:
            t = time.perf_counter()
            found.append(ask(q))
            times.append(time.perf_counter() - t)
        recall = float(np.mean([len(set(f) & set(t[:10])) / 10 for f, t in zip(found, truth)]))
        rss = _rss()
        results.append({
            "setting": setting if setting is not None else spec.get("nprobe"), "rerank": rerank,
            "p50_ms": round(1000 * float(np.percentile(times, 50)), 3),
            "p95_ms": round(1000 * float(np.percentile(times, 95)), 3),
            "recall@10": round(recall, 4),
            "ram_anon_bytes": rss["RssAnon"] - before["RssAnon"],
            "ram_file_bytes": rss["RssFile"] - before["RssFile"]})
    return results


def exact_scan(folder: Path, n: int, count: int = 20) -> dict:
    """Exact search without an index in RAM: each query scans ``vectors-n.f32`` in chunks
    (what flat costs when the vectors do not fit)."""
    data = scale_data.vectors(folder, n)
    queries = np.load(folder / f"queries-{QUERIES}.npy")[:count]
    times = []
    for q in queries:
        t = time.perf_counter()
        best = [np.argpartition(-(np.asarray(data[s:s + BATCH]) @ q), 10)[:10]
                for s in range(0, n, BATCH)]
        times.append(time.perf_counter() - t)
        del best
    return {"p50_ms": round(1000 * float(np.median(times)), 1)}


def bm25(folder: Path, n: int, per_document: int = 100, seed: int = 0) -> dict:
    """BM25 (the store's SQLite FTS5 table) over ``n`` passages: each passage is 5 sentences
    drawn from the SQuAD dev paragraphs (real English), stored through the real
    :class:`index.store.Store` (pending embedding); queries are 500 SQuAD dev questions,
    top 50 as retrieval asks. Returns build time, database size and p50/p95 ms."""
    import re

    from index.chunking import Chunk
    from index.store import Store

    rng = np.random.default_rng(seed)
    sentences = [s for text in scale_data._texts(scale_data.SHARED / "squad/corpus.jsonl", "text")
                 for s in re.split(r"(?<=[.!?])\s+", text) if len(s) > 20]
    where = folder / f"bm25-{n}"
    started = time.perf_counter()
    if not Store.exists(where):
        with Store.update(where, embedding_model="none", dim=384) as store:
            for doc in range(0, n, per_document):
                picks = rng.integers(0, len(sentences), (min(per_document, n - doc), 5))
                chunks = [Chunk(text=" ".join(sentences[i] for i in row), heading="", page=None,
                                line_start=1, line_end=1, n_tokens=120) for row in picks]
                store.add_document(path=f"/bench/{doc}", root="/bench", size=1, mtime_ns=1,
                                   sha256=str(doc), title=f"document {doc}", kind="text",
                                   chunks=chunks)
    build_s = time.perf_counter() - started
    store = Store.open(where)
    questions = scale_data._texts(scale_data.SHARED / "squad/questions.dev.jsonl",
                                  "question")[:QUERIES]
    for q in questions[:20]:
        store.bm25_search(q, 50)
    times = []
    for q in questions:
        t = time.perf_counter()
        store.bm25_search(q, 50)
        times.append(time.perf_counter() - t)
    db = next(where.glob("gen-*/passages.db"))
    return {"n": n, "build_s": round(build_s, 1), "disk_bytes": db.stat().st_size,
            "p50_ms": round(1000 * float(np.percentile(times, 50)), 2),
            "p95_ms": round(1000 * float(np.percentile(times, 95)), 2)}


def _worker(args) -> None:
    folder, n, config = Path(args.dir), args.n, args.config
    if args.step == "build":
        print(json.dumps(build(folder, n, config)))
    else:
        sweep = [int(s) for s in args.sweep.split(",") if s]
        print(json.dumps(search(folder, n, config, sweep, args.rerank)))


def _run(folder: Path, step: str, n: int, config: str, sweep: str = "",
         rerank: int = 0) -> object:
    if step == "build" and (folder / f"{n}-{config}" / "build.json").exists():
        return json.loads((folder / f"{n}-{config}" / "build.json").read_text())
    cmd = [sys.executable, __file__, "--dir", str(folder), "--step", step, "--n", str(n),
           "--config", config, "--sweep", sweep, "--rerank", str(rerank)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if step == "build":
        (folder / f"{n}-{config}" / "build.json").write_text(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--dir", default=None, help="where vectors and indexes go "
                        "(default: <data dir>/bench/scale; 10 M needs ~25 GB)")
    parser.add_argument("--only", default="", help="comma-separated configs to run")
    parser.add_argument("--bm25", default="", help="instead: BM25 over these passage counts "
                        "(comma-separated), through the store's FTS5 table")
    parser.add_argument("--step", default="", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--config", default="", help=argparse.SUPPRESS)
    parser.add_argument("--sweep", default="", help=argparse.SUPPRESS)
    parser.add_argument("--rerank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dir is None:
        from assistant.config import Settings

        args.dir = str(Path(Settings.load().data_dir) / "bench" / "scale")
    if args.step:
        return _worker(args)
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    if args.bm25:
        for n in [int(x) for x in args.bm25.split(",")]:
            r = bm25(folder, n)
            print(f"{n:>10,} BM25 (FTS5)  build {r['build_s']:>7.1f} s  p50 {r['p50_ms']:>7.2f} ms"
                  f"  p95 {r['p95_ms']:>7.2f} ms  database {r['disk_bytes'] / 1e9:.2f} GB",
                  flush=True)
        return
    _, real_queries = scale_data.seeds(folder)
    rng = np.random.default_rng(1)
    np.save(folder / f"queries-{QUERIES}.npy",
            real_queries[rng.choice(len(real_queries), QUERIES, replace=False)])
    log = open(folder / "results.jsonl", "a", encoding="utf-8")
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        started = time.perf_counter()
        scale_data.vectors(folder, n)
        scale_data.truth(folder, n, np.load(folder / f"queries-{QUERIES}.npy"))
        print(f"{n:,} vectors and exact top-100 ready in {time.perf_counter() - started:.0f} s",
              flush=True)
        for config in configs(n):
            if args.only and config not in args.only.split(","):
                continue
            built = _run(folder, "build", n, config)
            spec = built["spec"]
            sweep = ("32,64,128" if spec["kind"] == "hnsw" else ",".join(
                str(p) for p in sorted({spec["nprobe"] // 4, spec["nprobe"] // 2,
                                        spec["nprobe"], spec["nprobe"] * 2}))
                     if spec["kind"] == "ivf" else "")
            found = _run(folder, "search", n, config, sweep)
            if spec.get("on_disk"):  # the same index, top 50 re-scored with exact vectors
                found += _run(folder, "search", n, config, str(spec["nprobe"]), rerank=50)
            for result in found:
                row = {**built, **result}
                rows.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                _print_row(row)
        if n * 384 * 4 > 8e9:
            scan = exact_scan(folder, n)
            print(f"{n:>10,} exact scan from disk (no index in RAM): p50 {scan['p50_ms']} ms",
                  flush=True)


def _print_row(r: dict) -> None:
    from index.vectors import describe

    spec = r["spec"]
    name = {"hnsw": f"HNSW{spec.get('M')} (efSearch {r['setting']})"}.get(
        spec["kind"], describe({**spec, "nprobe": r["setting"]}) if spec["kind"] == "ivf"
        else "flat (exact)")
    if r.get("rerank"):
        name += f" + exact top {r['rerank']}"
    print(f"{r['n']:>10,} {r['config']:<8} {name:<40} build {r['build_s']:>7.1f} s  "
          f"p50 {r['p50_ms']:>7.2f} ms  p95 {r['p95_ms']:>7.2f} ms  recall@10 "
          f"{r['recall@10']:.3f}  RAM {r['ram_anon_bytes'] / 1e9:.2f} GB "
          f"(+{r['ram_file_bytes'] / 1e9:.2f} GB mapped)  disk {r['disk_bytes'] / 1e9:.2f} GB",
          flush=True)


if __name__ == "__main__":
    main()
