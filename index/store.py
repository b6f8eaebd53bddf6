"""The index on disk: passages and documents in SQLite (with FTS5 for BM25), embeddings in FAISS.

Layout of an index directory::

    CURRENT              name of the live generation, replaced atomically (write aside, rename)
    gen-000007/
        passages.db      SQLite: meta, roots, documents, passages, passages_fts (FTS5, BM25),
                         pending (passages stored and BM25-searchable, not embedded yet)
        passages.faiss   FAISS: IndexIDMap2(IndexFlatIP) up to 100 k passages, then an IVF
                         index with 8-bit codes (:mod:`index.vectors` chooses; ``meta``
                         records which, as ``vector_index``); ids are passages.id

An update copies the live generation into a new one, changes the copy, writes it, and only then
points ``CURRENT`` at it; an interrupted update leaves the old generation live and untouched.
A long update publishes checkpoints (:meth:`Store.checkpoint`): passages first, searchable by
BM25 at once, then their embeddings in batches. On open, the FAISS ids must be exactly the
passages not pending, and the embedding model must match.

FAISS itself is used through :mod:`index.vectors`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import sqlite_utils

from . import vectors as vector_index
from .chunking import Chunk
from .words import STOPWORDS

SCHEMA_VERSION = 1
_DB = "passages.db"
_FAISS = "passages.faiss"
_CURRENT = "CURRENT"
DUPLICATE = "duplicate"
"""Document kind of a file recorded as a copy of another document (no passages of its own)."""
_GENERATION = re.compile(r"gen-\d{20}")


class StoreError(Exception):
    """The index is missing, corrupt, locked or built differently; ``str()`` is one line."""


@dataclass(frozen=True)
class Passage:
    """A stored passage with where it came from.

    Attributes:
        id: passage row id (= FAISS id).
        document_id: row id of its document.
        path: absolute path of the source file.
        title: document title.
        heading: heading path ("" when none).
        page: 1-based PDF page or None.
        line_start, line_end: 1-based source lines (``line_end`` None when not exact).
        text: the passage text.
    """

    id: int
    document_id: int
    path: str
    title: str
    heading: str
    page: int | None
    line_start: int | None
    line_end: int | None
    text: str


_QUOTED = re.compile(r"[\"'`\u201c\u2018](\w+)[\"'`\u201d\u2019]")


def _fts_query(text: str) -> str:
    """A safe FTS5 query: the words of ``text`` quoted, joined with OR (BM25 ranks them),
    without :data:`~index.words.STOPWORDS` unless it has nothing else or quotes them (``the
    "is" operator`` searches for "is"). Their idf is near zero,
    so they barely move the ranking, but each matches most passages: at 1 M passages they made
    a query 7.7x slower (BENCHMARKS.md, "Indexes at scale"), and recall@5 on SQuAD dev stayed."""
    words = dict.fromkeys(w.lower() for w in re.findall(r"\w+", text))
    named = {w.lower() for w in _QUOTED.findall(text)}  # '"is"': the word named, not used
    kept = [w for w in words if w not in STOPWORDS or w in named] or list(words)
    return " OR ".join(f'"{w}"' for w in kept)


def _fts_phrase(word: str) -> str | None:
    """``word`` as a quoted FTS5 phrase of its word characters ("Levi's" -> ``"Levi s"``), or
    None when it has no letters or digits."""
    term = " ".join(re.findall(r"\w+", word))
    if not term.strip("_ "):
        return None
    return '"' + term.replace('"', "") + '"'


def _connect(path: Path, *, read_only: bool = False) -> sqlite_utils.Database:
    """A connection to ``path``; ``read_only`` opens an existing file without ever creating or
    changing it (``sqlite3.OperationalError`` when it is missing)."""
    if read_only:
        conn = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), check_same_thread=False)
    return sqlite_utils.Database(conn)


def _live_generation(index_dir: Path) -> Path:
    """The folder ``CURRENT`` names.

    Raises:
        StoreError: no ``CURRENT`` (no index yet), or it does not name a generation folder
            holding a database (a damaged index; nothing is created or deleted).
    """
    current = index_dir / _CURRENT
    if not current.is_file():
        raise StoreError(f"no index at {index_dir}: run `assistant index PATH` first")
    try:
        name = current.read_text(encoding="utf-8", errors="replace").strip()
    except OSError as exc:
        raise StoreError(f"cannot read {current} ({exc.strerror or exc})") from None
    if not _GENERATION.fullmatch(name) or not (index_dir / name / _DB).is_file():
        raise StoreError(f"index at {index_dir} is damaged: {_CURRENT} names "
                         f"{name[:40]!r}, which is not a generation there; rebuild it with "
                         "`assistant index --rebuild`")
    return index_dir / name


def _check_vectors(db: sqlite_utils.Database, vectors, count: int) -> None:
    """Check that a FAISS index belongs to this database: an id-mapped index (flat or IVF)
    holding exactly the ids of the ``count`` embedded passages (those not pending), with
    finite unit-length vectors (flat: checked on a sample of at most 512).

    Raises:
        StoreError: the first difference found (one line).
    """
    if not vector_index.has_ids(vectors):
        raise StoreError(f"the FAISS file holds a {type(vectors).__name__}, not an id-mapped index")
    if vectors.ntotal != count:
        raise StoreError(f"{vectors.ntotal} vectors for {count} embedded passages")
    ids = np.sort(vector_index.ids_of(vectors))
    stored = np.fromiter((r[0] for r in db.execute(
        "SELECT id FROM passages WHERE id NOT IN (SELECT passage_id FROM pending) ORDER BY id"
        if _has_table(db, "pending") else "SELECT id FROM passages ORDER BY id")),
        dtype=np.int64, count=count)
    if not np.array_equal(ids, stored):
        raise StoreError("the FAISS ids are not the passage ids")
    if count and vector_index.is_flat(vectors):
        positions = np.unique(np.linspace(0, count - 1, num=min(count, 512)).astype(np.int64))
        sample = np.stack([vectors.index.reconstruct(int(i)) for i in positions])
        norms = np.linalg.norm(sample, axis=1)
        if not np.all(np.isfinite(norms)) or np.abs(norms - 1).max() > 1e-2:
            raise StoreError("the FAISS vectors are not unit-length embeddings")


def _has_table(db: sqlite_utils.Database, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                      [name]).fetchone() is not None


def _embedded_count(db: sqlite_utils.Database) -> int:
    """Passages that have a vector: all of them minus the pending ones."""
    count = db.execute("SELECT count(*) FROM passages").fetchone()[0]
    if _has_table(db, "pending"):
        count -= db.execute("SELECT count(*) FROM pending").fetchone()[0]
    return count


def _create_schema(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("CREATE TABLE roots (path TEXT PRIMARY KEY)")
    db.execute(
        """CREATE TABLE documents (
            id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT UNIQUE NOT NULL, root TEXT,
            size INTEGER, mtime_ns INTEGER, sha256 TEXT, title TEXT, kind TEXT,
            n_passages INTEGER, indexed_at REAL, reader INTEGER)"""
    )
    db.execute(
        """CREATE TABLE passages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            document_id INTEGER NOT NULL REFERENCES documents(id), ordinal INTEGER,
            text TEXT NOT NULL, heading TEXT, page INTEGER, line_start INTEGER,
            line_end INTEGER, n_tokens INTEGER)"""
    )
    db.execute("CREATE INDEX passages_document ON passages(document_id)")
    db.execute("CREATE INDEX IF NOT EXISTS documents_sha ON documents(sha256)")
    db.execute(
        "CREATE VIRTUAL TABLE passages_fts USING fts5(text, heading, title, "
        "tokenize='porter unicode61')"
    )


class Store:
    """An opened index generation: SQLite database plus FAISS index.

    Use :meth:`open` to read the live index and :meth:`update` to change it.
    """

    def __init__(self, index_dir: Path, gen_dir: Path, db: sqlite_utils.Database, vectors):
        self.index_dir = index_dir
        self.gen_dir = gen_dir
        self.db = db
        self.vectors = vectors  # a FAISS index with passage ids (index.vectors)
        self.retrained = ""  # set when publishing moved the vectors into another index kind
        self._writable = False
        self._lock = None
        self._origin = ""  # the generation live when the update began (kept for readers)
        self._baseline = 0  # rows changed by opening the update itself (see `changed`)
        self._passages: int | None = None  # passage count of a read-only generation
        self.reembedding = False

    # ---- opening -----------------------------------------------------------------------
    @staticmethod
    def exists(index_dir: Path) -> bool:
        """True when ``index_dir`` holds a published index."""
        return (Path(index_dir) / _CURRENT).is_file()

    @classmethod
    def open(cls, index_dir: Path, *, embedding_model: str | None = None,
             for_update: bool = False) -> "Store":
        """Open the live generation of ``index_dir`` and check it.

        Args:
            index_dir: the index directory.
            embedding_model: if given, the model the caller will embed queries with; it must be
                the one the index was built with.
            for_update: read the vectors whole, to change them (an on-disk IVF index is
                otherwise memory-mapped read-only, see :func:`index.vectors.read`).

        Raises:
            StoreError: no index, corrupt files, FAISS size != passage count, or another
                embedding model.
        """
        index_dir = Path(index_dir)
        gen_dir = _live_generation(index_dir)
        try:
            db = _connect(gen_dir / _DB, read_only=True)
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            count = _embedded_count(db)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"index database {gen_dir / _DB} is corrupt or unreadable ({exc}); "
                             "rebuild it with `assistant index --rebuild`") from exc
        try:
            vectors = vector_index.read(gen_dir / _FAISS, _spec(meta), for_update=for_update)
        except (RuntimeError, ValueError) as exc:
            db.conn.close()
            raise StoreError(f"FAISS index {gen_dir / _FAISS} is missing or corrupt; "
                             "rebuild it with `assistant index --rebuild`") from exc
        try:
            _check_vectors(db, vectors, count)
        except StoreError as exc:
            db.conn.close()
            raise StoreError(f"index at {index_dir} is inconsistent: {exc}; rebuild it with "
                             "`assistant index --rebuild`") from None
        built_with = meta.get("embedding_model")
        if embedding_model is not None and built_with != embedding_model:
            raise StoreError(
                f"index at {index_dir} was built with embedding model {built_with!r}, not "
                f"{embedding_model!r}; use that model or rebuild with `assistant index --rebuild`"
            )
        if int(meta.get("dim", vectors.d)) != vectors.d:
            raise StoreError(f"index at {index_dir} has mismatched embedding sizes; rebuild it")
        return cls(index_dir, gen_dir, db, vectors)

    @classmethod
    def update(
        cls, index_dir: Path, *, embedding_model: str, dim: int, params: dict | None = None,
        rebuild: bool = False, runtime: str = "torch",
    ) -> "Store":
        """Start changing the index: a writable copy of the live generation (or a new, empty
        one when there is none or ``rebuild``). Use it as a context manager: leaving the block
        normally publishes the copy with :meth:`commit`; an exception discards it.

        Args:
            index_dir: the index directory (created if missing).
            embedding_model: name of the embedder about to add vectors.
            dim: its embedding size.
            params: settings that change passages (e.g. chunk size); stored in ``meta``.
            rebuild: start empty even when an index exists.
            runtime: how the embedder computes vectors (``Embedder.runtime``), stored in
                ``meta``. When the live index was embedded by another runtime, its vectors are
                dropped and every passage is marked pending, so vectors of two runtimes are
                never mixed (``reembedding`` is then True).

        Raises:
            StoreError: another `index` run holds the lock, or the live index was built with
                another embedding model or other params and ``rebuild`` is False.
        """
        index_dir = Path(index_dir)
        try:
            index_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {index_dir} ({exc.strerror or exc})") from None
        lock = _take_lock(index_dir)
        gen_dir = index_dir / f"gen-{time.time_ns():020d}"
        try:
            _remove_stale_generations(index_dir)
            _make_generation(gen_dir)
            params = {k: str(v) for k, v in (params or {}).items()}
            if cls.exists(index_dir) and not rebuild:
                old = cls.open(index_dir, for_update=True)
                meta = old.meta()
                if meta.get("embedding_model") != embedding_model:
                    raise StoreError(
                        f"index was built with {meta.get('embedding_model')!r}; rebuild it for "
                        f"{embedding_model!r} with `assistant index --rebuild PATH`"
                    )
                changed = {k for k, v in params.items() if meta.get(k) != v}
                if changed:
                    raise StoreError(
                        f"index was built with other settings ({', '.join(sorted(changed))}); "
                        "rebuild it with `assistant index --rebuild PATH`"
                    )
                _copy_database(old.db, gen_dir)
                db = _connect(gen_dir / _DB)
                if "reader" not in db["documents"].columns_dict:  # built before it was kept
                    db.execute("ALTER TABLE documents ADD COLUMN reader INTEGER")
                vectors = old.vectors  # the old store is dropped: no second copy in memory
                old.close()
            else:
                db = _connect(gen_dir / _DB)
                _create_schema(db)
                vectors = vector_index.empty(dim)
                db["meta"].insert_all(
                    [{"key": k, "value": str(v)} for k, v in {
                        "schema_version": SCHEMA_VERSION, "embedding_model": embedding_model,
                        "embedding_runtime": runtime, "dim": dim, "created_at": time.time(),
                        **params}.items()],
                    replace=True,
                )
        except BaseException:
            shutil.rmtree(gen_dir, ignore_errors=True)
            _release_lock(lock)
            raise
        store = cls(index_dir, gen_dir, db, vectors)
        store._writable = True
        store._lock = lock
        try:
            store._origin = _live_generation(index_dir).name
        except StoreError:
            pass
        store.db.execute("BEGIN")
        store.db.execute("CREATE INDEX IF NOT EXISTS documents_sha ON documents(sha256)")
        store.db.execute("CREATE TABLE IF NOT EXISTS pending (passage_id INTEGER PRIMARY KEY)")
        store.reembedding = store.meta().get("embedding_runtime", "torch") != runtime
        if store.reembedding:
            store.db.execute("INSERT OR IGNORE INTO pending SELECT id FROM passages")
            store.vectors = vector_index.empty(dim)
            store.db["meta"].insert({"key": "embedding_runtime", "value": runtime},
                                    replace=True)
            store.db["meta"].delete_where("key = ?", ["vector_index"])
        store._baseline = store.db.conn.total_changes
        return store

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._writable:
            if exc_type is None:
                self.commit()
            else:
                self.abort()
        else:
            self.close()

    def commit(self) -> None:
        """Publish this generation: the database and the FAISS file (written aside, then
        renamed) are flushed to disk with their folder, then ``CURRENT`` is replaced
        atomically. Generations older than the previous one are then removed (the previous one
        stays, for a reader that still has it open). The store is closed afterwards: read the
        published index with :meth:`open`.

        Raises:
            StoreError: passages and vectors disagree (the generation is discarded).
            OSError: a write failed (disk full, permissions); the old index stays live.
        """
        self._publish()
        self._writable = False
        _remove_stale_generations(self.index_dir, keep=self._origin)
        _release_lock(self._lock)

    @property
    def changed(self) -> bool:
        """True when this update changed anything (a row written since it began, or a new
        index); an update that changed nothing need not be published."""
        return (self.db.conn.total_changes != self._baseline or self.reembedding
                or not self._origin)

    def checkpoint(self) -> "Store":
        """Publish what this update holds so far, then go on changing a fresh copy of it.

        Readers see the checkpoint at once (``CURRENT`` names it); the lock stays held. This
        store is closed afterwards: use the returned one. Cost: one write of the FAISS file
        and one copy of the database (about a second per 100 MB).

        Raises:
            StoreError, OSError: as :meth:`commit`; the previous index then stays live and
                the update is over (its lock released).
        """
        self._publish()
        _remove_stale_generations(self.index_dir, keep=self._origin)
        gen_dir = self.index_dir / f"gen-{time.time_ns():020d}"
        try:
            _make_generation(gen_dir)
            source = _connect(self.gen_dir / _DB, read_only=True)
            try:
                _copy_database(source, gen_dir)
            finally:
                source.conn.close()
        except BaseException:
            shutil.rmtree(gen_dir, ignore_errors=True)
            _release_lock(self._lock)
            raise
        store = Store(self.index_dir, gen_dir, _connect(gen_dir / _DB), self.vectors)
        store._writable, store._lock, store._origin = True, self._lock, self._origin
        store._baseline = -1  # published already: the rest of the update is published too
        self._writable, self._lock = False, None
        store.db.execute("BEGIN")
        return store

    def _publish(self) -> None:
        """Write this generation to disk and point ``CURRENT`` at it (see :meth:`commit`);
        on any failure the generation is discarded and the lock released."""
        try:
            self.db["meta"].insert({"key": "updated_at", "value": str(time.time())},
                                   replace=True)
            self._fit_index()
            self.db.conn.commit()
            count = _embedded_count(self.db)
            if count != self.vectors.ntotal:  # a bug, never a user error: refuse to publish
                raise StoreError(f"refusing to publish: {self.vectors.ntotal} vectors, "
                                 f"{count} embedded passages")
            self.db.conn.close()
            _fsync_file(self.gen_dir / _DB)
            tmp = self.gen_dir / (_FAISS + ".tmp")
            vector_index.write(self.vectors, tmp)
            _fsync_file(tmp)
            os.replace(tmp, self.gen_dir / _FAISS)
            _fsync_dir(self.gen_dir)
            pointer = self.index_dir / (_CURRENT + ".tmp")
            pointer.write_text(self.gen_dir.name)
            _fsync_file(pointer)
            os.replace(pointer, self.index_dir / _CURRENT)
            _fsync_dir(self.index_dir)
        except BaseException:
            self.abort()
            raise

    def _fit_index(self) -> None:
        """Move the vectors into the index kind their count calls for, when it changed enough
        (:func:`index.vectors.needs_retraining`: flat past 100 k passages, an IVF index whose
        corpus grew or shrank 4x since its cells were trained); records the choice in
        ``meta`` and says what was done in ``retrained``."""
        spec = _spec(self.meta())
        n = int(self.vectors.ntotal)
        if not vector_index.needs_retraining(spec, n):
            return
        new = {**vector_index.choose(n), "trained_on": n}
        started = time.perf_counter()
        self.vectors = vector_index.convert(self.vectors, new)
        self.db["meta"].insert({"key": "vector_index", "value": json.dumps(new)}, replace=True)
        self.retrained = (f"vector index: {vector_index.describe(spec)} -> "
                          f"{vector_index.describe(new)} for {n:,} passages "
                          f"(trained in {time.perf_counter() - started:.1f} s)")

    def abort(self) -> None:
        """Discard this unpublished generation; the live index stays as it was."""
        try:
            self.db.conn.close()
        except sqlite3.Error:
            pass
        finally:
            shutil.rmtree(self.gen_dir, ignore_errors=True)
            self._writable = False
            _release_lock(self._lock)

    def close(self) -> None:
        """Close the database connection."""
        self.db.conn.close()

    # ---- reading -----------------------------------------------------------------------
    def refreshed(self) -> "Store":
        """This store, or the live generation opened anew when another `index` run has
        published one since this was opened (the old one is then closed). A damaged newer
        index is not taken: this one is kept, and still works (its generation is kept on disk
        until the run after next).

        Cost: one small file read (``CURRENT``) when nothing changed.
        """
        if self._writable:
            return self
        try:
            live = _live_generation(self.index_dir)
        except StoreError:
            return self
        if live == self.gen_dir:
            return self
        try:
            fresh = Store.open(self.index_dir, embedding_model=self.meta().get("embedding_model"))
        except StoreError:
            return self
        self.close()
        return fresh

    def meta(self) -> dict[str, str]:
        """The ``meta`` table as a dict (embedding_model, dim, chunk settings, times)."""
        return dict(self.db.execute("SELECT key, value FROM meta").fetchall())

    def stats(self) -> dict:
        """Counts: ``{"documents": n, "passages": n, "embedded": n, "roots": [...],
        "embedding_model": s, "vector_index": s}`` (``embedded``: passages with a vector; the
        others are searchable by BM25 only until an `index` run embeds them;
        ``vector_index``: the FAISS index kind, e.g. ``flat (exact)``)."""
        meta = self.meta()
        return {
            "vector_index": vector_index.describe(_spec(meta)),
            "documents": self.db.execute("SELECT count(*) FROM documents").fetchone()[0],
            "passages": self.db.execute("SELECT count(*) FROM passages").fetchone()[0],
            "embedded": int(self.vectors.ntotal),
            "roots": [r[0] for r in self.db.execute("SELECT path FROM roots ORDER BY path")],
            "embedding_model": meta.get("embedding_model"),
        }

    def documents(self) -> dict[str, dict]:
        """All documents by path: ``{path: row}`` (id, size, mtime_ns, sha256, ...)."""
        return {row["path"]: row for row in self.db["documents"].rows}

    def passages(self, ids: Sequence[int]) -> list[Passage]:
        """Passages by id, in the order of ``ids`` (unknown ids are left out)."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            f"""SELECT p.id, p.document_id, d.path, d.title, p.heading, p.page, p.line_start,
                       p.line_end, p.text
                FROM passages p JOIN documents d ON d.id = p.document_id
                WHERE p.id IN ({marks})""",
            [int(i) for i in ids],
        ).fetchall()
        by_id = {r[0]: Passage(*r) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def opening(self, document_id: int, n: int) -> list[Passage]:
        """The first ``n`` passages of a document, in order (fewer when it has fewer; none
        for an unknown id)."""
        ids = [r[0] for r in self.db.execute(
            "SELECT id FROM passages WHERE document_id = ? ORDER BY ordinal LIMIT ?",
            [int(document_id), int(n)])]
        return self.passages(ids)

    def section_starts(self, document_id: int) -> list[Passage]:
        """The first passage of each heading path of a document (its sections, at every
        depth), in document order; none for an unknown id."""
        ids = [r[0] for r in self.db.execute(  # SQLite takes a bare column from the MIN row
            "SELECT id, MIN(ordinal) FROM passages WHERE document_id = ? "
            "GROUP BY heading ORDER BY MIN(ordinal)", [int(document_id)])]
        return self.passages(ids)

    def dense_search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Inner-product search: ``query`` (dim,) unit vector -> ``[(passage id, cosine)]``,
        best first, at most ``k``."""
        if self.vectors.ntotal == 0 or k <= 0:
            return []
        scores, ids = self.vectors.search(query.reshape(1, -1).astype(np.float32), k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i != -1]

    def bm25_search(self, query: str, k: int) -> list[tuple[int, float]]:
        """BM25 (FTS5, Porter-stemmed) over passage text, heading and title:
        ``[(passage id, score)]`` best first; score is ``-bm25()`` so higher is better."""
        match = _fts_query(query)
        if not match or k <= 0:
            return []
        rows = self.db.execute(
            "SELECT rowid, -bm25(passages_fts) AS score FROM passages_fts "
            "WHERE passages_fts MATCH ? ORDER BY bm25(passages_fts) LIMIT ?",
            [match, k],
        ).fetchall()
        return [(int(r[0]), float(r[1])) for r in rows]

    def absent_words(self, words: Sequence[str]) -> list[str]:
        """The ``words`` that neither occur in any passage's text, heading or title nor begin
        a word there (FTS5 prefix queries with the same Porter stemming as
        :meth:`bm25_search`: "tuples" finds "tuple", "Lev" finds "Levi's"); one indexed lookup
        per word. A word with no letters or digits is never reported."""
        absent = []
        for word in words:
            phrase = _fts_phrase(word)
            if phrase is None:
                continue
            row = self.db.execute("SELECT 1 FROM passages_fts WHERE passages_fts MATCH ? LIMIT 1",
                                  [phrase + "*"]).fetchone()
            if row is None:
                absent.append(word)
        return absent

    FREQUENCY_CAP = 50_000
    """:meth:`word_passages` counts at most this many passages per word (a common word in an
    index of millions would otherwise cost a scan of its whole posting list)."""

    def word_passages(self, words: Sequence[str]) -> tuple[dict[str, int], int]:
        """``({word: passages holding it}, passages in the index)``: each word's document
        frequency as BM25 counts it (FTS5, the same Porter stemming as :meth:`bm25_search`;
        at most :data:`FREQUENCY_CAP`), for inverse document frequencies. One indexed lookup
        per word; the passage count is read once per open generation."""
        if self._passages is None or self._writable:
            self._passages = self.db.execute("SELECT count(*) FROM passages").fetchone()[0]
        counts = {}
        for word in dict.fromkeys(words):
            phrase = _fts_phrase(word)
            if phrase is None:
                continue
            counts[word] = self.db.execute(
                "SELECT count(*) FROM (SELECT 1 FROM passages_fts WHERE passages_fts MATCH ? "
                "LIMIT ?)", [phrase, self.FREQUENCY_CAP]).fetchone()[0]
        return counts, self._passages

    # ---- writing -----------------------------------------------------------------------
    def add_roots(self, roots: Iterable[str]) -> None:
        """Remember folders/files given to `index`, so a bare `assistant index` re-scans them."""
        self._check_writable()
        self.db.conn.executemany("INSERT OR IGNORE INTO roots(path) VALUES (?)",
                                 [(r,) for r in roots])

    def add_document(
        self, *, path: str, root: str, size: int, mtime_ns: int, sha256: str, title: str,
        kind: str, chunks: Sequence[Chunk], vectors: np.ndarray | None = None,
        reader: int = 1,
    ) -> int:
        """Insert a document with its passages and their embeddings ``(len(chunks), dim)``;
        returns the document id. Without ``vectors`` the passages are stored pending: BM25
        finds them at once, :meth:`pending_passages` hands them to the embedder later.
        ``reader``: the version of the reading rules that made the passages
        (:func:`index.readers.reader_version`), kept in the document's ``reader`` column.

        Raises:
            ValueError: ``vectors`` does not have one row per chunk.
        """
        self._check_writable()
        if vectors is not None and vectors.shape[0] != len(chunks):
            raise ValueError(f"{vectors.shape[0]} vectors for {len(chunks)} passages")
        doc_id = self.db["documents"].insert({
            "path": path, "root": root, "size": size, "mtime_ns": mtime_ns, "sha256": sha256,
            "title": title, "kind": kind, "n_passages": len(chunks), "indexed_at": time.time(),
            "reader": reader,
        }).last_pk
        ids = []
        for ordinal, chunk in enumerate(chunks):
            pid = self.db["passages"].insert({
                "document_id": doc_id, "ordinal": ordinal, "text": chunk.text,
                "heading": chunk.heading, "page": chunk.page, "line_start": chunk.line_start,
                "line_end": chunk.line_end, "n_tokens": chunk.n_tokens,
            }).last_pk
            self.db.execute(
                "INSERT INTO passages_fts(rowid, text, heading, title) VALUES (?, ?, ?, ?)",
                [pid, chunk.text, chunk.heading, title],
            )
            ids.append(pid)
        if ids and vectors is not None:
            self.vectors.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
        elif ids:
            self.db.conn.executemany("INSERT INTO pending(passage_id) VALUES (?)",
                                [(i,) for i in ids])
        return int(doc_id)

    def pending_count(self) -> int:
        """Passages stored but not embedded yet."""
        return self.db.execute("SELECT count(*) FROM pending").fetchone()[0] \
            if _has_table(self.db, "pending") else 0

    def pending_passages(self, limit: int) -> list[tuple[int, str, str, str]]:
        """Up to ``limit`` passages waiting for a vector, oldest first:
        ``[(passage id, document title, heading, text)]``."""
        return [tuple(r) for r in self.db.execute(
            """SELECT p.id, d.title, p.heading, p.text FROM pending q
               JOIN passages p ON p.id = q.passage_id JOIN documents d ON d.id = p.document_id
               ORDER BY q.passage_id LIMIT ?""", [int(limit)])]

    def add_vectors(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Store the embeddings ``(len(ids), dim)`` of pending passages ``ids``.

        Raises:
            ValueError: sizes disagree, or an id is not pending (it would be embedded twice).
        """
        self._check_writable()
        if vectors.shape[0] != len(ids):
            raise ValueError(f"{vectors.shape[0]} vectors for {len(ids)} passages")
        if not len(ids):
            return
        ids = [int(i) for i in ids]
        marks = ",".join("?" * len(ids))
        waiting = self.db.execute(f"SELECT count(*) FROM pending WHERE passage_id IN ({marks})",
                                  ids).fetchone()[0]
        if waiting != len(set(ids)) or len(set(ids)) != len(ids):
            raise ValueError("vectors given for passages that are not pending")
        self.db.execute(f"DELETE FROM pending WHERE passage_id IN ({marks})", ids)
        self.vectors.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                  np.asarray(ids, dtype=np.int64))

    def unembedded(self, ids: Sequence[int]) -> set[int]:
        """Which of ``ids`` have no vector yet (searchable by BM25 only)."""
        if not ids or self.vectors.ntotal == self.db.execute(
                "SELECT count(*) FROM passages").fetchone()[0]:
            return set()
        marks = ",".join("?" * len(ids))
        return {r[0] for r in self.db.execute(
            f"SELECT passage_id FROM pending WHERE passage_id IN ({marks})",
            [int(i) for i in ids])}

    def primary(self, sha256: str) -> dict | None:
        """The document holding the passages of content ``sha256`` (its row), or None."""
        rows = list(self.db["documents"].rows_where(
            "sha256 = ? AND kind != ?", [sha256, DUPLICATE], limit=1))
        return rows[0] if rows else None

    def add_duplicate(self, *, path: str, root: str, size: int, mtime_ns: int, sha256: str,
                      title: str) -> str:
        """Record a file with the same content as a document already indexed: a document row
        of kind ``duplicate`` with no passages of its own. Returns the original's path.

        Raises:
            StoreError: no document with that content.
        """
        self._check_writable()
        original = self.primary(sha256)
        if original is None:
            raise StoreError(f"no document with the content of {path}")
        self.db["documents"].insert({
            "path": path, "root": root, "size": size, "mtime_ns": mtime_ns, "sha256": sha256,
            "title": title, "kind": DUPLICATE, "n_passages": 0, "indexed_at": time.time()})
        return original["path"]

    def duplicates(self) -> dict[str, list[str]]:
        """``{original path: [paths of files with the same content]}``."""
        out: dict[str, list[str]] = {}
        for path, original in self.db.execute(
                """SELECT d.path, o.path FROM documents d JOIN documents o
                   ON o.sha256 = d.sha256 AND o.kind != ? WHERE d.kind = ?
                   ORDER BY o.path, d.path""", [DUPLICATE, DUPLICATE]):
            out.setdefault(original, []).append(path)
        return out

    def remove_document(self, document_id: int) -> int:
        """Delete a document, its passages, their FTS rows and vectors; returns passages removed.
        When files with the same content are recorded as its duplicates, the first of them
        takes its passages over instead (nothing is re-embedded) and 0 is returned."""
        self._check_writable()
        row = self.db.execute("SELECT sha256, kind, n_passages FROM documents WHERE id = ?",
                              [document_id]).fetchone()
        if row is not None and row[1] != DUPLICATE:
            heir = self.db.execute(
                "SELECT id FROM documents WHERE sha256 = ? AND kind = ? ORDER BY path LIMIT 1",
                [row[0], DUPLICATE]).fetchone()
            if heir is not None:
                self.db.execute("UPDATE passages SET document_id = ? WHERE document_id = ?",
                                [heir[0], document_id])
                self.db.execute("UPDATE documents SET kind = ?, n_passages = ? WHERE id = ?",
                                [row[1], row[2], heir[0]])
                self.db.execute("DELETE FROM documents WHERE id = ?", [document_id])
                return 0
        ids = [r[0] for r in self.db.execute(
            "SELECT id FROM passages WHERE document_id = ?", [document_id])]
        if ids:
            marks = ",".join("?" * len(ids))
            self.db.execute(f"DELETE FROM passages_fts WHERE rowid IN ({marks})", ids)
            self.db.execute(f"DELETE FROM pending WHERE passage_id IN ({marks})", ids)
            self.db.execute("DELETE FROM passages WHERE document_id = ?", [document_id])
            self.vectors.remove_ids(np.asarray(ids, dtype=np.int64))
        self.db.execute("DELETE FROM documents WHERE id = ?", [document_id])
        return len(ids)

    def touch_document(self, document_id: int, *, size: int, mtime_ns: int) -> None:
        """Record a new size/mtime for a document whose content hash did not change."""
        self._check_writable()
        self.db["documents"].update(document_id, {"size": size, "mtime_ns": mtime_ns})

    def _check_writable(self) -> None:
        if not self._writable:
            raise StoreError("this index is open read-only; use Store.update() to change it")

def _spec(meta: dict[str, str]) -> dict:
    """The vector index recorded in ``meta`` (flat when none is: indexes made before)."""
    return json.loads(meta.get("vector_index") or '{"kind": "flat"}')


def _make_generation(gen_dir: Path) -> None:
    """Create a new generation folder, owner-only."""
    gen_dir.mkdir()
    _private(gen_dir)


def _copy_database(source: sqlite_utils.Database, gen_dir: Path) -> None:
    """Copy ``source`` into ``gen_dir``'s database (SQLite's online backup, page by page)."""
    dest = sqlite3.connect(str(gen_dir / _DB))
    try:
        source.conn.backup(dest)
    finally:
        dest.close()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private(path: Path) -> None:
    """Owner-only permissions (0700 for folders, 0600 for files); ignored where not allowed."""
    try:
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    except OSError:
        pass


def _remove_stale_generations(index_dir: Path, *, keep: str = "") -> None:
    """Delete generation folders left by interrupted runs and generations older than the
    previous one, except ``keep`` (the generation that was live when the running update
    began: readers most likely have it open). Only when ``CURRENT`` names a sound generation:
    a damaged index is never cleaned, so nothing that might still be recovered is deleted."""
    try:
        live = _live_generation(index_dir).name
    except StoreError:
        return
    older = sorted(c.name for c in index_dir.glob("gen-*") if c.is_dir() and c.name < live)
    kept = {live, keep, *older[-1:]}
    for child in index_dir.glob("gen-*"):
        if child.is_dir() and child.name not in kept:
            shutil.rmtree(child, ignore_errors=True)


def _read_live(index_dir: Path, read, default):
    """``read(db)`` on the live generation's database, opened read-only and closed again
    (works when the FAISS file is damaged); ``default`` when there is no readable index."""
    try:
        db = _connect(_live_generation(Path(index_dir)) / _DB, read_only=True)
    except (StoreError, sqlite3.Error):
        return default
    try:
        return read(db)
    except sqlite3.Error:
        return default
    finally:
        db.conn.close()


def live_meta(index_dir: Path) -> dict[str, str]:
    """The ``meta`` table of the live index; {} when there is no readable index."""
    return _read_live(index_dir, lambda db: dict(
        db.execute("SELECT key, value FROM meta").fetchall()), {})


def live_counts(index_dir: Path) -> tuple[int, int]:
    """``(embedded passages, passages)`` of the live index, from its database alone (cheap
    enough to poll); ``(0, 0)`` when there is no readable index."""
    return _read_live(index_dir, lambda db: (
        _embedded_count(db), db.execute("SELECT count(*) FROM passages").fetchone()[0]), (0, 0))


def known_roots(index_dir: Path) -> list[str]:
    """The folders and files the live index was built from (works when the FAISS file is
    damaged); [] when there is no readable index."""
    return _read_live(index_dir, lambda db: [
        r[0] for r in db.execute("SELECT path FROM roots ORDER BY path")], [])


def _take_lock(index_dir: Path):
    """An exclusive, non-blocking lock on ``index_dir/lock`` (POSIX ``flock``).

    Raises:
        StoreError: another process holds it, or the folder is not writable.
    """
    try:
        handle = open(index_dir / "lock", "a+")
    except OSError as exc:
        raise StoreError(f"cannot write to {index_dir} ({exc.strerror or exc})") from None
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock, carry on
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise StoreError(f"another `assistant index` is updating {index_dir}; wait for it") from exc
    return handle


def index_running(index_dir: Path) -> bool:
    """True while an `index` run holds the lock of ``index_dir`` (checked without waiting)."""
    path = Path(index_dir) / "lock"
    if not path.exists():
        return False
    try:
        import fcntl
    except ImportError:
        return False
    try:
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            return False  # closing the file releases the lock
    except OSError:
        return False


def _release_lock(handle) -> None:
    if handle is not None and not handle.closed:
        handle.close()
