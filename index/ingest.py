"""Walk a corpus, detect what changed, and bring the index up to date.

A file is re-read only when its size or mtime changed, and re-embedded only when its content
hash (SHA-256) changed too; documents under a scanned root that no longer exist are removed.
Unreadable, binary, empty, undecodable, oversized and unparsable files are skipped and reported;
an indexed file that becomes empty, binary or unparsable loses its old passages.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .chunking import chunk_sections
from .embedding import Embedder
from .ignore import IgnoreRules, generated_reason, repository_folders, sphinx_folder_reason
from .readers import SkipFile, kind_of, read_document, reader_version
from .store import Store, known_roots

SKIP_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "node_modules", "__pycache__", ".tox",
             ".mypy_cache", ".pytest_cache", ".idea", ".vscode", "site-packages", ".cache"}


@dataclass
class IndexReport:
    """What one `index` run did.

    Attributes:
        added, updated, unchanged, removed: documents by outcome.
        passages_added, passages_removed: passage counts.
        skipped: ``[(path, reason)]`` for files not indexed.
        unreachable: ``[(path, reason)]`` for folders and files that could not be read this
            time (permissions, a disk or share not mounted); what was indexed from them is
            kept, never treated as deleted.
        kept: documents kept although not found, because their folder was unreachable.
        duplicates: ``[(path, path of the document with the same content)]`` for files
            stored once, beside the document they repeat.
        unsupported: count of files by suffix whose type is not indexed.
        ignored: files and folders left out by ``.gitignore``/``.ignore`` files.
        embedded: passages embedded by this run (new ones, and ones an interrupted run left
            pending).
        reembedded: True when the index's vectors came from another embedding runtime and
            every passage was embedded again.
        reread: ``{kind: files}`` read again although unchanged, because an older version
            of that kind's reading rules read them (:data:`index.readers.READER_VERSIONS`);
            they count as ``updated`` too.
        checkpoints: times the run published what it had so far.
        retrained: what happened when the vectors outgrew their FAISS index kind (one line
            each, e.g. ``vector index: flat (exact) -> IVF512,SQ8 (nprobe 64) for 100,001
            passages (trained in 9.1 s)``; see :mod:`index.vectors`).
        seconds: wall time of the run.
        searchable_seconds: from the start until the new text was BM25-searchable (the first
            publication), or None when nothing changed.
        embed_seconds: time spent embedding.
        disk_bytes: the index folder's size at the end (bytes; the live generation and the
            earlier ones kept for readers that may still have them open).
        peak_disk_bytes: the largest the index folder was at a publication during the run
            (bytes): the run's temporary space is this minus the live generation's size.
    """

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    passages_added: int = 0
    passages_removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unreachable: list[tuple[str, str]] = field(default_factory=list)
    kept: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    unsupported: Counter = field(default_factory=Counter)
    ignored: Counter = field(default_factory=Counter)
    embedded: int = 0
    reembedded: bool = False
    reread: Counter = field(default_factory=Counter)
    checkpoints: int = 0
    retrained: list[str] = field(default_factory=list)
    seconds: float = 0.0
    searchable_seconds: float | None = None
    embed_seconds: float = 0.0
    disk_bytes: int = 0
    peak_disk_bytes: int = 0


@dataclass(frozen=True)
class Candidate:
    """A file found by the walk: absolute path, the root it was found under, size and mtime."""

    path: Path
    root: Path
    size: int
    mtime_ns: int


class Progress:
    """Callbacks an `index` run reports to (the CLI draws a progress bar); no-ops here."""

    def start(self, total_files: int) -> None:
        """Called once with the number of candidate files."""

    def advance(self, path: Path, passages: int) -> None:
        """Called after each file with the passages it produced (0 when skipped/unchanged)."""

    def embedding(self, done: int, total: int) -> None:
        """Called as passages are embedded: ``done`` of ``total`` so far in this run."""


def no_wait() -> None:
    """The default turn-taking hook of :class:`Indexer`: embed without pausing."""


def walk(roots: Iterable[Path], report: IndexReport) -> Iterator[Candidate]:
    """Yield the supported files under ``roots`` (files given directly are taken as they are),
    each once even when roots overlap.

    Hidden folders and tool folders (``.git``, ``node_modules``, virtual environments) are not
    entered; what ``.gitignore``/``.ignore`` files exclude is left out (counted in
    ``report.ignored``); generated files (lock files, search indexes, minified bundles,
    Sphinx's ``_sources`` and ``_static``) are added to ``report.skipped`` with the reason.
    Unsupported types are counted in ``report.unsupported``; missing paths are added to
    ``report.skipped``, and folders or files that cannot be read to ``report.unreachable``.
    """
    yielded: set[Path] = set()
    for root in roots:
        root = Path(root).expanduser().resolve()
        if root.is_file():
            if root not in yielded:
                yielded.add(root)
                stat = root.stat()
                yield Candidate(root, root, stat.st_size, stat.st_mtime_ns)
            continue
        if not root.exists():
            report.skipped.append((str(root), "no such file or folder"))
            continue

        def onerror(exc: OSError) -> None:
            report.unreachable.append((str(exc.filename), f"cannot read folder ({exc.strerror})"))

        rules = IgnoreRules()
        for parent in repository_folders(root):  # as git does: from the repository's top
            rules.enter(parent)
        for folder, dirs, files in os.walk(root, onerror=onerror):
            here = Path(folder)
            rules.enter(here)
            dirs[:] = [name for name in sorted(dirs)
                       if not name.startswith(".") and name not in SKIP_DIRS
                       and not _left_out(here / name, rules, report, is_dir=True)]
            for name in sorted(files):
                path = here / name
                if name.startswith(".") or path in yielded:
                    continue
                if kind_of(path) is None:
                    report.unsupported[path.suffix.lower() or "(no suffix)"] += 1
                    continue
                if _left_out(path, rules, report):
                    continue
                try:
                    stat = path.stat()
                except OSError as exc:
                    report.unreachable.append((str(path), f"cannot stat ({exc.strerror})"))
                    continue
                if path.is_symlink() and not path.resolve().is_file():
                    continue
                yielded.add(path)
                yield Candidate(path, root, stat.st_size, stat.st_mtime_ns)


def _left_out(path: Path, rules: IgnoreRules, report: IndexReport, *,
              is_dir: bool = False) -> bool:
    """True when ``path`` is left out of the walk: excluded by ignore files (counted in
    ``report.ignored``) or generated (a file by its name, a folder as Sphinx's ``_sources``
    or ``_static``; added to ``report.skipped`` with the reason)."""
    if rules.ignored(path, is_dir=is_dir):
        report.ignored["ignore files"] += 1
        return True
    reason = sphinx_folder_reason(path) if is_dir else generated_reason(path)
    if reason:
        report.skipped.append((str(path), reason))
    return reason is not None


def _has_files(folder: Path) -> bool:
    """True when ``folder`` holds any entry at all (False for an empty mount point)."""
    try:
        return any(True for _ in os.scandir(folder))
    except OSError:
        return False


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class Indexer:
    """Brings an index directory up to date with folders of documents.

    Args:
        index_dir: where the index lives (see :mod:`index.store`).
        embedder: the :class:`~index.embedding.Embedder` for passages.
        chunk_tokens: passage budget in the embedder's tokens.
        chunk_overlap: tokens repeated between consecutive passages of a section.
        max_file_bytes: files larger than this are skipped (bytes).
        batch_size: passages embedded per batch (texts of similar length batched together).
        checkpoint_seconds: publish what a long run has done at least this often (seconds).
        wait_turn: called before each embedding batch; blocks while embedding should pause
            (:func:`index.turns.wait_for_answers` in the CLI: while an answer is generated).
    """

    def __init__(self, index_dir: Path, embedder: Embedder, *, chunk_tokens: int = 200,
                 chunk_overlap: int = 40, max_file_bytes: int = 50 * 2**20, batch_size: int = 64,
                 checkpoint_seconds: float = 20.0, wait_turn: Callable[[], None] = no_wait):
        self.index_dir = Path(index_dir)
        self.embedder = embedder
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self.max_file_bytes = max_file_bytes
        self.batch_size = batch_size
        self.checkpoint_seconds = checkpoint_seconds
        self.wait_turn = wait_turn
        self.flush_passages = 512  # passages written together across small files
        self._run_digests: set[str] = set()  # content hashes of files read in this run

    def params(self) -> dict:
        """Settings that shape passages; an index built with others must be rebuilt."""
        return {"chunk_tokens": self.chunk_tokens, "chunk_overlap": self.chunk_overlap}

    def run(self, roots: Iterable[Path] = (), *, rebuild: bool = False,
            progress: Progress | None = None) -> IndexReport:
        """Index ``roots`` (or, when empty, every root indexed before), in two phases.

        1. Reading: changed files are read, chunked and stored with their BM25 rows; what is
           read is published every ``checkpoint_seconds`` and at the end of the phase, so it is
           searchable (by BM25) within seconds.
        2. Embedding: passages without a vector (this run's, or ones an interrupted run left)
           are embedded in batches of ``batch_size``, calling ``wait_turn`` before each batch
           (it blocks while an answer is being generated), and published every
           ``checkpoint_seconds``. A run killed at any point leaves the last publication live;
           the next run goes on from there and embeds no passage twice.

        Returns:
            The :class:`IndexReport`.

        Raises:
            StoreError: locked, or built with another model/settings and not ``rebuild``.
            ValueError: no roots given and none indexed before.
        """
        started = time.perf_counter()
        progress = progress or Progress()
        report = IndexReport()
        roots = [Path(r).expanduser().resolve() for r in roots]
        if rebuild:  # every folder indexed before, plus the new ones
            roots = list(dict.fromkeys([*roots, *(Path(r) for r in known_roots(self.index_dir))]))
        store = Store.update(self.index_dir, embedding_model=self.embedder.name,
                             dim=self.embedder.dim, params=self.params(), rebuild=rebuild,
                             runtime=getattr(self.embedder, "runtime", "torch"))
        try:
            report.reembedded = store.reembedding
            if not roots:
                roots = [Path(r) for r in store.stats()["roots"]]
            if not roots:
                raise ValueError("nothing to index: give a folder or file, e.g. "
                                 "`assistant index ~/Documents`")
            store = self._read_phase(store, roots, report, progress, started)
            if store.pending_count():
                store = self._publish(store, report, started)
            store = self._embed_phase(store, report, progress, started)
            if store.changed:
                store.commit()
                if store.retrained:
                    report.retrained.append(store.retrained)
            else:  # nothing to publish: the live index stays as it is
                store.abort()
        except BaseException:
            store.abort()
            raise
        if report.searchable_seconds is None and (report.passages_added or report.removed):
            report.searchable_seconds = time.perf_counter() - started
        report.seconds = time.perf_counter() - started
        report.disk_bytes = folder_bytes(self.index_dir)
        report.peak_disk_bytes = max(report.peak_disk_bytes, report.disk_bytes)
        return report

    def _publish(self, store: Store, report: IndexReport, started: float) -> Store:
        """Publish a checkpoint; returns the store to go on with."""
        published, store = store, store.checkpoint()
        if published.retrained:
            report.retrained.append(published.retrained)
        report.peak_disk_bytes = max(report.peak_disk_bytes, folder_bytes(self.index_dir))
        report.checkpoints += 1
        self._last_publish = time.perf_counter()
        if report.searchable_seconds is None:
            report.searchable_seconds = self._last_publish - started
        return store

    def _due(self) -> bool:
        return time.perf_counter() - self._last_publish >= self.checkpoint_seconds

    def _read_phase(self, store: Store, roots: list[Path], report: IndexReport,
                    progress: Progress, started: float) -> Store:
        """Phase 1: walk, read, chunk and store changed files without vectors; remove the
        documents that are gone. Returns the store to go on with."""
        self._last_publish = time.perf_counter()
        known = store.documents()
        self._run_digests = set()
        candidates = list(walk(roots, report))
        progress.start(len(candidates))
        seen: set[str] = set()
        pending: list[_Pending] = []
        for candidate in candidates:
            key = str(candidate.path)
            seen.add(key)
            item = self._read_file(store, candidate, known.get(key), report)
            if item is not None:
                pending.append(item)
                due = self._due()
                if due or sum(len(p.chunks) for p in pending) >= self.flush_passages:
                    self._flush(store, pending, report)
                if due:
                    store = self._publish(store, report, started)
            progress.advance(candidate.path, len(item.chunks) if item else 0)
        self._flush(store, pending, report)
        # Documents under a scanned root that were not found again are gone, unless the
        # walk could not look where they were, or a root that held documents showed no
        # file at all (an unmounted disk or share looks like an empty folder).
        for root in roots:
            held = sum(_is_under(p, str(root)) for p in known)
            if held and root.is_dir() and not any(
                    _is_under(c, str(root)) for c in seen) and not _has_files(root):
                report.unreachable.append((str(root), "folder is empty or not mounted"))
        blind = [path for path, _ in report.unreachable]
        scanned = [str(r) for r in roots if r.exists()]
        for path, row in known.items():
            if path in seen or not any(_is_under(path, r) for r in scanned):
                continue
            if any(_is_under(path, b) for b in blind):
                report.kept += 1
                continue
            report.passages_removed += store.remove_document(row["id"])
            report.removed += 1
        store.add_roots(str(r) for r in roots if r.exists())
        return store

    def _embed_phase(self, store: Store, report: IndexReport, progress: Progress,
                     started: float) -> Store:
        """Phase 2: embed every pending passage, ``batch_size`` at a time, publishing every
        ``checkpoint_seconds``. Returns the store to go on with."""
        total = store.pending_count()
        size = max(self.batch_size, 1)
        while True:
            # A window of passages sorted by length, so each batch pads little.
            window = store.pending_passages(size * 8)
            if not window:
                return store
            texts = {r[0]: embedding_text(r[1], r[2], r[3]) for r in window}
            order = sorted(texts, key=lambda pid: len(texts[pid]))
            for start in range(0, len(order), size):
                ids = order[start : start + size]
                self.wait_turn()
                t0 = time.perf_counter()
                vectors = self.embedder.embed([texts[i] for i in ids], batch_size=size)
                report.embed_seconds += time.perf_counter() - t0
                store.add_vectors(ids, vectors)
                report.embedded += len(ids)
                progress.embedding(report.embedded, total)
                if self._due() and store.pending_count():
                    store = self._publish(store, report, started)

    def _read_file(self, store: Store, c: Candidate, old: dict | None,
                   report: IndexReport) -> "_Pending | None":
        """Read and chunk a changed file; None when unchanged or skipped (recorded in report).
        A file read by older reading rules than today's for its kind is read again even when
        unchanged. An indexed file that now reads as nothing (emptied, broken, or all
        navigation by today's rules) or grew past ``max_file_bytes`` is skipped and its old
        passages removed; one that cannot be read keeps them (the error may pass)."""
        # a duplicate's row has no reader version (1) and its kind no rules of its own (1)
        current = old is not None and (old.get("reader") or 1) == reader_version(old["kind"])
        if old and old["size"] == c.size and old["mtime_ns"] == c.mtime_ns:
            if current:
                report.unchanged += 1
                return None
            report.reread[old["kind"]] += 1
        if c.size > self.max_file_bytes:
            report.skipped.append((str(c.path), f"too large ({c.size / 2**20:.1f} MiB > "
                                                f"{self.max_file_bytes / 2**20:.0f} MiB)"))
            self._forget(store, old, report)
            return None
        try:
            data = c.path.read_bytes()
        except OSError as exc:
            report.skipped.append((str(c.path), f"cannot read ({exc.strerror or exc})"))
            return None
        digest = hashlib.sha256(data).hexdigest()
        if current and old["sha256"] == digest:
            store.touch_document(old["id"], size=c.size, mtime_ns=c.mtime_ns)
            report.unchanged += 1
            return None
        try:
            document = read_document(c.path, data, kind_of(c.path) or "text")
        except SkipFile as exc:
            report.skipped.append((str(c.path), str(exc)))
            self._forget(store, old, report)
            return None
        if store.primary(digest) is not None or digest in self._run_digests:
            # The same bytes as a document already indexed: stored once, this path recorded
            # beside it (resolved again when written, in case that document changed).
            return _Pending(c, old, digest, document.title, document.kind, [], document)
        self._run_digests.add(digest)
        return _Pending(c, old, digest, document.title, document.kind, self._chunk(document))

    @staticmethod
    def _forget(store: Store, old: dict | None, report: IndexReport) -> None:
        """Remove the indexed version ``old`` (if any) of a file that is skipped now: what it
        held before is not what the file holds."""
        if old is not None:
            report.passages_removed += store.remove_document(old["id"])
            report.removed += 1

    def _chunk(self, document) -> list:
        return chunk_sections(document.sections, max_tokens=self.chunk_tokens,
                              overlap=self.chunk_overlap, count_tokens=self.embedder.count_tokens)

    def _flush(self, store: Store, pending: list["_Pending"], report: IndexReport) -> None:
        """Write the pending files: drop their old versions, settle which are duplicates of a
        document in the index or earlier in this batch (a duplicate whose original is gone is
        chunked now), then add them in order, their passages pending (embedded in phase 2)."""
        if not pending:
            return
        for p in pending:
            if p.old:
                report.passages_removed += store.remove_document(p.old["id"])
        batch: set[str] = set()
        for p in pending:
            if p.duplicate_source is not None and store.primary(p.sha256) is None \
                    and p.sha256 not in batch:
                p.chunks, p.duplicate_source = self._chunk(p.duplicate_source), None
            if p.duplicate_source is None:
                batch.add(p.sha256)
        for p in pending:
            fields = dict(path=str(p.candidate.path), root=str(p.candidate.root),
                          size=p.candidate.size, mtime_ns=p.candidate.mtime_ns, sha256=p.sha256,
                          title=p.title)
            if p.duplicate_source is not None:
                original = store.add_duplicate(**fields)
                report.duplicates.append((str(p.candidate.path), original))
                continue
            if p.old:
                report.updated += 1
            else:
                report.added += 1
            store.add_document(**fields, kind=p.kind, chunks=p.chunks,
                               reader=reader_version(p.kind))
            report.passages_added += len(p.chunks)
        pending.clear()


@dataclass
class _Pending:
    candidate: Candidate
    old: dict | None
    sha256: str
    title: str
    kind: str
    chunks: list
    duplicate_source: object = None  # the parsed document, when a duplicate of another


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 when it is missing)."""
    total = 0
    for path in Path(folder).rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            pass
    return total


def embedding_text(title: str, heading: str, text: str) -> str:
    """What is embedded for a passage: its title and heading path, then its text, so that a
    passage deep in a section still carries the section's topic."""
    if title and heading.startswith(title):
        title = ""
    context = " > ".join(part for part in (title, heading) if part)
    return f"{context}\n{text}" if context else text
