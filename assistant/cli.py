"""The command line: ``assistant index | ask | chat | history | info``.

This is the only place that builds and wires objects; everything heavy is imported inside the
commands, so ``assistant --help`` starts at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click

from .config import ConfigError, Settings, is_remote, make_private
from .memory import release_free_memory, resident_bytes
from .output import plain, visible

DEFAULT_QUESTION = "How does the with statement work?"


class UserError(click.ClickException):
    """A one-line error for the user (exit status 1), never a traceback."""

    def show(self, file=None) -> None:
        click.echo(f"error: {visible(self.format_message(), one_line=True)}", err=True)


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="Config file (default: $ASSISTANT_CONFIG or the user config dir).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where index and history live.")
@click.option("--index-dir", type=click.Path(path_type=Path), help="Index directory.")
@click.option("--embedding-model", help="Sentence-transformers model name, path or hub id.")
@click.option("--model", "generator_model",
              help="Generator: embedded name, local dir, hub id, or openai:NAME on a server.")
@click.option("--api-base", help="OpenAI-compatible server for openai:NAME models, e.g. "
              "http://127.0.0.1:8000/v1.")
@click.option("--device", help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--debug", is_flag=True, help="Show tracebacks (also: ASSISTANT_DEBUG=1).")
@click.version_option(package_name="assistant")
@click.pass_context
def cli(ctx: click.Context, config_path, data_dir, index_dir, embedding_model,
        generator_model, api_base, device, debug) -> None:
    """A private, local assistant that answers questions about your documents, with sources.

    Start with `assistant index ~/Documents`, then `assistant ask "..."` or `assistant chat`.
    """
    try:
        settings = Settings.load(config_path=config_path, overrides={
            "data_dir": data_dir, "index_dir": index_dir, "embedding_model": embedding_model,
            "generator_model": generator_model, "api_base": api_base, "device": device,
        })
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    if debug:
        os.environ["ASSISTANT_DEBUG"] = "1"
    changed = make_private(settings)
    if changed:
        click.echo(f"note: your documents and conversations under "
                   f"{visible(str(settings.data_dir), one_line=True)} are now readable by you "
                   f"only ({len(changed)} file(s)/folder(s) were open to other users)", err=True)
    ctx.obj = {"settings": settings}


# ---- wiring -------------------------------------------------------------------------------
AUTO_EMBEDDING_RUNTIME = "onnx-int8"
"""What ``embedding_runtime = auto`` means on the CPU (chosen by measurement: BENCHMARKS.md,
"Embedding runtimes": faster, with SciFact nDCG@10 and SQuAD recall@5 of the default retrieval
held); on a GPU it is always ``torch``. When the ONNX copy cannot be made, auto falls back to
``torch``."""


def load_embedder(settings: Settings, *, for_index: bool = False):
    """The embedder named in settings (on the chosen device).

    Args:
        for_index: the embedder will embed passages (`index`): it uses the configured runtime.
            Otherwise it embeds questions, with the runtime the live index was built with.
    """
    from index.embedding import SentenceTransformerEmbedder
    from index.store import live_meta

    from .generation import GenerationError, pick_device

    try:
        device = None if settings.device == "auto" else pick_device(settings.device)
    except GenerationError as exc:
        raise UserError(str(exc)) from None
    runtime = settings.embedding_runtime
    built = {} if for_index else live_meta(settings.index_path)
    if built:
        runtime = built.get("embedding_runtime", "torch")
    automatic = runtime == "auto"
    if automatic:
        on_gpu = (device or pick_device("auto")).startswith("cuda")
        runtime = "torch" if on_gpu else AUTO_EMBEDDING_RUNTIME
    try:
        if runtime != "torch":
            try:
                from index.onnx_embedding import OnnxEmbedder

                return OnnxEmbedder(settings.embedding_model, runtime=runtime,
                                    cache_dir=settings.models_dir)
            except (ImportError, ValueError, RuntimeError):
                if not automatic:
                    raise
                runtime = "torch"  # e.g. a model the ONNX path does not support
        return SentenceTransformerEmbedder(settings.embedding_model, device=device)
    except ImportError as exc:
        raise UserError(f"embedding runtime {runtime!r} needs a package that is not installed "
                        f"({exc.name}); set embedding_runtime = \"torch\"") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load embedding model {settings.embedding_model!r} "
                        f"({runtime}): {str(exc).splitlines()[0]}") from None


def load_generator(settings: Settings, *, say=None, model_lock=None, prepacked=None):
    """The generator named in settings; converts an embedded GGUF on first use.

    ``model_lock``: held while a model is built (the one-time conversion, the weights); see
    :func:`start_generator`. ``prepacked``: the weights of the model's folder being packed
    (:func:`generation.start_prepack`)."""
    from .generation import GenerationError, TransformersGenerator
    from .models import ModelNotFound, generator_path, is_embedded

    if is_remote(settings.generator_model):
        return _remote_generator(settings)
    lock = model_lock or contextlib.nullcontext()
    try:
        with lock:
            path = generator_path(settings.generator_model, settings.models_dir, on_convert=say)
        return TransformersGenerator(settings.generator_model, path, device=settings.device,
                                     precision=settings.precision, model_lock=model_lock,
                                     cache_dir=settings.prefix_cache_dir,
                                     plain_tokenizer=is_embedded(settings.generator_model),
                                     screen_head=settings.output_head == "screened",
                                     prepacked=prepacked if prepacked is not None
                                     and prepacked.folder == Path(path) else None)
    except (ModelNotFound, GenerationError) as exc:
        raise UserError(str(exc)) from None


class GeneratorLoad:
    """The generator loading on a thread (see :func:`start_generator`).

    Attributes:
        models: a lock to hold while building any other transformers model (the embedder):
            transformers builds models under process-wide patches, so two must not be built
            at once.
    """

    def __init__(self, settings: Settings, say=None, prepacked=None):
        import threading

        self.models = threading.Lock()
        self._box: dict = {}
        self._thread = threading.Thread(target=self._run, args=(settings, say, prepacked),
                                        name="load-generator", daemon=True)
        self._thread.start()

    def _run(self, settings: Settings, say, prepacked) -> None:
        try:
            self._box["generator"] = load_generator(settings, say=say, model_lock=self.models,
                                                    prepacked=prepacked)
        except BaseException as exc:  # re-raised on the calling thread by result()
            self._box["error"] = exc

    def result(self):
        """Wait for the generator and return it; raises what :func:`load_generator` raised."""
        self._thread.join()
        if "error" in self._box:
            raise self._box["error"]
        return self._box["generator"]


def start_generator(settings: Settings, *, say=None) -> GeneratorLoad:
    """Start loading the generator on a thread, so that its tokenizer (about 4 s for Gemma 3's
    262,144 entries) loads while the embedder loads, each mostly on one core. Build the
    embedder while holding the returned load's ``models`` lock; then call ``result()``.

    torch and transformers are imported here first, on the calling thread, so that the two
    loads never import the same modules at once, and their progress bars are silenced. A
    model already on disk starts packing its weights (float16 on a CPU) right after torch is
    imported, beside the rest of the imports (:func:`generation.start_prepack`)."""
    prepacked = None
    if not is_remote(settings.generator_model):
        import torch  # noqa: F401

        from . import generation
        from .models import ready_path

        path = ready_path(settings.generator_model, settings.models_dir)
        if path is not None:
            prepacked = generation.start_prepack(path, settings.precision, settings.device)
        import transformers  # noqa: F401

        generation.quiet_hub()  # before the embedder loads: no weight-loading bar of theirs
    return GeneratorLoad(settings, say, prepacked)


def _remote_generator(settings: Settings):
    from .generation import GenerationError
    from .generation.remote import RemoteGenerator, api_key

    key, source = api_key(settings.api_base, settings.api_key_env)
    try:
        return RemoteGenerator(settings.generator_model, settings.api_base, key=key,
                               key_source=source, key_env=settings.api_key_env,
                               timeout=settings.api_timeout, retries=settings.api_retries)
    except GenerationError as exc:
        raise UserError(str(exc)) from None


def open_retriever(settings: Settings, embedder):
    """A retriever over the index, or None when there is none yet."""
    from index.retrieval import Retriever
    from index.store import Store, StoreError

    if not Store.exists(settings.index_path):
        return None
    try:
        store = Store.open(settings.index_path, embedding_model=embedder.name)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    return Retriever(store, embedder, alpha=settings.fusion_alpha)


def build_manager(settings: Settings, *, say=None, embedder=None, generator=None, history=None):
    """The dialogue manager with its retriever, generator and history."""
    from .dialogue import DialogueManager
    from .history import History

    embedder = embedder or load_embedder(settings)
    generator = generator or load_generator(settings, say=say)
    return DialogueManager(
        retriever=open_retriever(settings, embedder), generator=generator,
        history=history or History(settings.history_path), top_k=settings.top_k,
        mode=settings.retrieval_mode, context_tokens=settings.context_tokens,
        history_tokens=settings.history_tokens, max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature, prompt_style=settings.prompt_style,
        rerank_k=settings.rerank_k, rerank_first=settings.rerank_first, read_k=settings.read_k,
        reader=settings.reader, read_mode=settings.read_mode,
        abstain_threshold=settings.abstain_threshold,
        answer_forms=settings.answer_forms, output_head=settings.output_head,
    )


def make_indexer(settings: Settings, embedder, *, background: bool = True):
    """The :class:`~index.ingest.Indexer` for ``settings``. ``background``: embedding pauses
    while any assistant process of this user is answering (see :mod:`index.turns`)."""
    from index.ingest import Indexer, no_wait
    from index.turns import wait_for_answers

    return Indexer(settings.index_path, embedder, chunk_tokens=settings.chunk_tokens,
                   chunk_overlap=settings.chunk_overlap,
                   max_file_bytes=int(settings.max_file_mb * 2**20),
                   checkpoint_seconds=settings.checkpoint_seconds,
                   wait_turn=wait_for_answers if background else no_wait)


def run_index(settings: Settings, paths, *, rebuild: bool = False, embedder=None, quiet=False,
              background: bool = True):
    """Index ``paths`` with progress bars on stderr; prints the report. Returns it.
    ``background``: embedding yields to answers (see :func:`make_indexer`)."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    import sqlite3

    from index.ingest import Progress as IndexProgress
    from index.store import StoreError

    console = Console(stderr=True)
    embedder = embedder or load_embedder(settings, for_index=True)
    indexer = make_indexer(settings, embedder, background=background)
    bar = Progress(
        TextColumn("[bold]{task.description:9}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=quiet, transient=False,
    )

    class _Bar(IndexProgress):
        task = None
        passages = 0
        started = time.perf_counter()

        def start(self, total_files: int) -> None:
            self.task = bar.add_task("Reading", total=total_files, unit="files", rate="")

        def advance(self, path: Path, passages: int) -> None:
            self.passages += passages
            elapsed = max(time.perf_counter() - self.started, 1e-6)
            done = bar.tasks[0].completed + 1
            bar.update(self.task, advance=1, unit=f"files, {self.passages} passages",
                       rate=f"{done / elapsed:.1f} files/s")

        def embedding(self, done: int, total: int) -> None:
            if not hasattr(self, "embed_task"):
                self.embed_started = time.perf_counter()
                self.embed_task = bar.add_task("Embedding", total=total, unit="passages",
                                               rate="")
            rate = done / max(time.perf_counter() - self.embed_started, 1e-6)
            bar.update(self.embed_task, completed=done, rate=f"{rate:.0f} passages/s")

    try:
        with bar:
            report = indexer.run([Path(p) for p in paths], rebuild=rebuild, progress=_Bar())
    except (StoreError, ValueError) as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        raise UserError("interrupted: what was published so far is kept and searchable; "
                        "run `assistant index` again to go on") from None
    except (OSError, sqlite3.Error) as exc:  # disk full, permissions: nothing was published
        raise UserError(f"indexing stopped, the index stays as last published: "
                        f"{describe_error(exc)}") from None
    if not quiet:
        _print_report(console, report)
    return report


def _print_report(console, report) -> None:
    rate = report.embedded / report.embed_seconds if report.embed_seconds else 0.0
    console.print(
        f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
        f"{report.removed} removed; {report.passages_added} passages added, "
        f"{report.passages_removed} removed; {report.embedded} embedded "
        f"({rate:.0f} passages/s); in {report.seconds:.1f} s"
    )
    if report.searchable_seconds is not None and report.checkpoints and report.passages_added:
        console.print(f"Searchable (BM25) after {report.searchable_seconds:.1f} s; published "
                      f"{report.checkpoints + 1} times as it went.", markup=False)
    if report.disk_bytes:
        console.print(f"Index on disk: {report.disk_bytes / 2**20:.1f} MiB (with the earlier "
                      f"generation kept for open readers); at most "
                      f"{report.peak_disk_bytes / 2**20:.1f} MiB during the run.", markup=False)
    for line in report.retrained:
        console.print(f"Retrained the {line}.", markup=False)
    if report.reembedded:
        console.print("Every passage was embedded again: the index's vectors came from another "
                      "embedding runtime.", markup=False)
    if report.reread:
        kinds = ", ".join(f"{n} {kind.upper() if kind in ('html', 'pdf') else kind}"
                          for kind, n in sorted(report.reread.items()))
        console.print(f"Read again, unchanged: {kinds} file(s), because this version reads "
                      f"them better.", markup=False)
    if report.skipped:
        console.print(f"[yellow]Skipped {len(report.skipped)} file(s):")
        for path, reason in report.skipped:
            console.print(f"  {visible(path, one_line=True)}: {visible(reason, one_line=True)}",
                          markup=False, highlight=False)
    if report.unreachable:
        console.print(f"[yellow]Could not read {len(report.unreachable)} place(s); what was "
                      f"indexed from them is kept ({report.kept} document(s)):")
        for path, reason in report.unreachable:
            console.print(f"  {visible(path, one_line=True)}: {visible(reason, one_line=True)}",
                          markup=False, highlight=False)
    if report.duplicates:
        console.print(f"Stored once: {len(report.duplicates)} file(s) with the same content as "
                      "a document already indexed:", markup=False, highlight=False)
        for path, original in report.duplicates[:10]:
            console.print(f"  {visible(path, one_line=True)} = {visible(original, one_line=True)}",
                          markup=False, highlight=False)
        if len(report.duplicates) > 10:
            console.print(f"  … and {len(report.duplicates) - 10} more", markup=False)
    if report.ignored:
        console.print(f"Left out by .gitignore/.ignore files: {sum(report.ignored.values())} "
                      "file(s) and folder(s)", markup=False, highlight=False)
    if report.unsupported:
        kinds = visible(", ".join(f"{k} ×{n}" for k, n in report.unsupported.most_common(8)),
                        one_line=True)
        console.print(f"Not indexed (unsupported types): {kinds}", markup=False, highlight=False)


def ensure_demo_index(settings: Settings, embedder, *, say=None) -> None:
    """Index the bundled Python reference when there is no index at all yet.

    Args:
        say: progress callback taking one line of text (the chat app's status line); without
            it, the message and a progress bar go to stderr.
    """
    from index.store import Store

    if Store.exists(settings.index_path):
        return
    # only for a first start: the ingestion modules (document readers, .gitignore rules)
    # would otherwise be imported by every `ask`, while the generator loads beside it
    from index.ingest import Progress as IndexProgress

    from .corpus import CORPUS_NAME, write_python_reference

    folder = write_python_reference(Path(settings.data_dir) / "corpus" / CORPUS_NAME)
    if say is None:
        click.echo(f"No index yet: indexing the bundled Python language reference ({folder}).\n"
                   "Index your own documents with `assistant index PATH`.", err=True)
        run_index(settings, [folder], embedder=embedder, background=False)
        return

    class _Say(IndexProgress):
        total = done = 0

        def start(self, total_files: int) -> None:
            self.total = total_files

        def advance(self, path: Path, passages: int) -> None:
            self.done += 1
            say(f"first start: indexing the bundled Python reference, {self.done}/{self.total} files…")

        def embedding(self, done: int, total: int) -> None:
            say(f"first start: embedding the bundled Python reference, {done}/{total} passages…")

    make_indexer(settings, embedder, background=False).run([folder], progress=_Say())


# ---- commands -----------------------------------------------------------------------------
@cli.command("index")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--rebuild", is_flag=True, help="Start from an empty index and re-read every "
              "folder indexed before, plus PATHS (after changing models or chunking, or to "
              "recover a damaged index).")
@click.option("--chunk-tokens", type=int, help="Passage size in embedder tokens.")
@click.option("--chunk-overlap", type=int, help="Tokens shared by consecutive passages.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or report.")
@click.option("--watch", is_flag=True, help="After indexing, keep running and index again "
              "whenever files under PATHS change (edits, new files, renames, deletions).")
@click.pass_context
def index_command(ctx, paths, rebuild, chunk_tokens, chunk_overlap, quiet, watch) -> None:
    """Index folders and files (or, with no PATHS, re-scan the ones indexed before).

    Only files whose content changed are re-read and re-embedded; passages of deleted files
    are removed. Reads .txt, .md, .rst, .html, .pdf, notebooks and source code. New text is
    searchable (by BM25) within seconds; embeddings follow, paused while any assistant is
    answering. Interrupted, it goes on where it stopped the next time.
    """
    settings = _settings(ctx)
    try:
        settings = settings.replace(**{k: v for k, v in {
            "chunk_tokens": chunk_tokens, "chunk_overlap": chunk_overlap}.items() if v is not None})
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    from index.turns import lower_priority

    lower_priority()  # answering comes first on a shared machine
    embedder = load_embedder(settings, for_index=True)
    run_index(settings, paths, rebuild=rebuild, quiet=quiet, embedder=embedder)
    if watch:
        watch_index(settings, paths, embedder=embedder, quiet=quiet)


def watch_index(settings: Settings, paths, *, embedder, quiet: bool = False,
                debounce_ms: int = 400) -> None:
    """Index again each time files under ``paths`` (or the indexed roots) change, until
    interrupted. Changes are debounced (``debounce_ms``, milliseconds) so a burst of saves
    makes one run; each run re-reads only what changed and publishes a new generation, which
    running chats and `ask` pick up at their next question."""
    from watchfiles import watch

    from index.store import known_roots

    roots = [Path(p).expanduser().resolve() for p in paths] or \
        [Path(r) for r in known_roots(settings.index_path)]
    roots = [r for r in roots if r.exists()]
    if not roots:
        raise UserError("nothing to watch: give a folder or file")
    index_dir = Path(settings.index_path).resolve()
    click.echo(f"watching {len(roots)} folder(s) for changes; Ctrl+C to stop", err=True)

    def relevant(change, path: str) -> bool:  # the index's own files never trigger a run
        return not Path(path).resolve().is_relative_to(index_dir)

    try:
        for changes in watch(*roots, watch_filter=relevant, debounce=debounce_ms,
                             step=50):
            if not quiet:
                click.echo(f"{len(changes)} change(s): indexing again", err=True)
            run_index(settings, [], embedder=embedder, quiet=quiet)
    except KeyboardInterrupt:
        pass


@cli.command("ask")
@click.argument("question", required=False)
@click.option("-k", "--top-k", type=click.IntRange(1, 100), help="Passages to retrieve.")
@click.option("--mode", type=click.Choice(["convex", "hybrid", "dense", "bm25"]), help="Retrieval mode.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming.")
@click.option("--max-new-tokens", type=click.IntRange(1, 8192), help="Longest answer in tokens.")
@click.option("--conversation", "conversation_id", help="Continue this conversation (id or prefix).")
@click.pass_context
def ask_command(ctx, question, top_k, mode, as_json, max_new_tokens, conversation_id) -> None:
    """Answer QUESTION from the indexed documents, with numbered sources.

    With no index yet, the bundled Python language reference is indexed first. When an answer
    server is up (`assistant serve`) it answers, with its models already loaded; typed at a
    terminal with none up, ask starts one (setting ``serve_idle_minutes``).
    """
    from . import serve

    settings = _settings(ctx)
    from .question import check_question

    try:
        question = check_question(DEFAULT_QUESTION if question is None else question)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    request = {"question": question, "conversation": conversation_id, "json": as_json,
               "top_k": top_k, "retrieval_mode": mode, "max_new_tokens": max_new_tokens}
    say = lambda message: click.echo(message, err=True)  # noqa: E731
    for _ in range(2):  # again once when the server was of another version
        conn = serve.connect(settings)
        if conn is None and settings.serve_idle_minutes > 0 and _at_terminal():
            minutes = settings.serve_idle_minutes
            starting = lambda: say(  # noqa: E731 (not when another ask's server came up)
                f"Starting the answer server: it keeps the models loaded for the next questions "
                f"until {minutes:g} minutes pass without one (`assistant serve --stop` ends it "
                f"now).")
            conn = serve.start(settings, _serve_argv(ctx, minutes), starting=starting)
            if conn is None:
                say("The answer server did not start (see serve.log in the data dir); answering "
                    "here.")
        if conn is None:
            break
        with conn:
            try:
                _print_turn(serve.ask(conn, settings, request), as_json)
                return
            except serve.StaleServer:
                say("note: the running answer server was another version of the program; it "
                    "has stopped.")
                serve.wait_stopped(settings)
                continue
            except serve.SettingsMismatch:
                say("note: the running answer server has other settings; answering here.")
            except serve.ServerError as exc:
                raise UserError(str(exc)) from None
            except KeyboardInterrupt:
                click.echo("\n[cancelled]", err=True)
                return
        break
    started = time.perf_counter()
    global _MODELS_IN_PROCESS
    _MODELS_IN_PROCESS = True
    from index.turns import answering

    # From here to the answer, background embedding (any `index` run of ours) waits for us.
    ctx.with_resource(answering())
    loading = start_generator(settings, say=say)
    with loading.models:
        embedder = load_embedder(settings)
    ensure_demo_index(settings, embedder)
    manager = build_manager(settings, say=say, embedder=embedder, generator=loading.result())
    messages = _turn_messages(manager, settings, request,
                              load_s=time.perf_counter() - started)
    _print_turn(messages, as_json)


def _at_terminal() -> bool:
    """Whether this command was typed at a terminal (its input or its output is one). Only
    then does ``ask`` start an answer server on demand, so that a script or a CI job never
    leaves a server process behind; a server that is already up serves scripts too."""
    return sys.stdin.isatty() or sys.stdout.isatty()


def _turn_messages(manager, settings: Settings, request: dict, *, load_s: float = 0.0,
                   prepare: bool = False, cancellation=None):
    """Answer one `ask` request with ``manager``: yields ``{"start": turn_state}`` once the
    passages are retrieved, ``{"fragment": str}`` as the answer streams, then ``{"end":
    {"json" or "sources", "status", "turn": turn_state}}`` (see
    :func:`assistant.output.turn_state`). Closing the generator early (the client left,
    Ctrl-C), or ``cancellation`` (:class:`assistant.serve.Cancellation`) firing, cancels the
    turn, which is kept marked cancelled. A request's ``turn_id`` answers a question the chat
    already recorded.

    Raises:
        UserError: a bad conversation id, or the question could not be answered.
    """
    from .generation import GenerationError
    from .output import turn_json, turn_state

    overrides = {"top_k": "top_k", "retrieval_mode": "mode", "max_new_tokens": "max_new_tokens"}
    saved = {attr: getattr(manager, attr) for attr in overrides.values()}
    for key, attr in overrides.items():
        if request.get(key) is not None:
            setattr(manager, attr, request[key])
    try:
        conversation_id = request.get("conversation")
        if conversation_id is not None:
            try:
                conversation_id = manager.history.resolve(conversation_id)
            except KeyError as exc:
                raise UserError(exc.args[0]) from None
        turn_id = request.get("turn_id")
        try:
            turn = manager.ask(request["question"], conversation_id=conversation_id,
                               turn_id=int(turn_id) if turn_id is not None else None)
        except (RuntimeError, ValueError, GenerationError) as exc:
            raise UserError(str(exc)) from None
        try:
            with (cancellation.watch(turn.cancel) if cancellation is not None
                  else contextlib.nullcontext()):
                yield {"start": turn_state(turn)}
                for fragment in turn:
                    yield {"fragment": fragment}
        except GenerationError as exc:
            raise UserError(str(exc)) from None
        except GeneratorExit:
            turn.cancel()
            for _ in turn:  # finish the turn so that history keeps it, marked cancelled
                pass
            raise
    finally:
        for attr, value in saved.items():
            setattr(manager, attr, value)
    device = getattr(manager.generator, "device", "")
    if request.get("json"):
        yield {"end": {"json": turn_json(turn, model=settings.generator_model, load_s=load_s,
                                         device=device), "turn": turn_state(turn)}}
    else:
        yield {"end": {**_ending(turn, settings, device), "turn": turn_state(turn)}}
    if prepare:  # after the answer went out: a head start for a follow-up, or nothing
        with contextlib.suppress(Exception):
            manager.prepare_follow_up(turn)


def _ending(turn, settings: Settings, device: str) -> dict:
    """The end of a streamed answer: its sources and status line."""
    from .output import search_figures, sources_text

    t = turn.timings()
    ttft = f"{t['first_token_s']:.2f} s" if t["first_token_s"] is not None else "-"
    tps = f"{t['tokens_per_s']:.1f}" if t["tokens_per_s"] else "-"
    done = f" · answer in {t['answer_s']:.2f} s" if t.get("answer_s") is not None else ""
    grounding = f"{turn.grounding} · " if turn.grounding else ""
    return {"sources": sources_text(turn), "status": (
        f"{' · '.join(search_figures(t))} · first token {ttft} · {tps} tokens/s{done} · "
        f"{settings.generator_model} on {device} · {grounding}conversation "
        f"{turn.conversation_id}")}


def _print_turn(messages, as_json: bool) -> None:
    """Print an answer's messages (see :func:`_turn_messages`) as `ask` shows them."""
    try:
        for message in messages:
            if "fragment" in message and not as_json:
                click.echo(visible(plain(message["fragment"])), nl=False)
            end = message.get("end")
            if end is None:
                continue
            if as_json:
                click.echo(json.dumps(end["json"], ensure_ascii=False, indent=2))
            else:
                click.echo("\n")
                click.echo(end["sources"])
                click.echo(end["status"], err=True)
    except KeyboardInterrupt:
        messages.close()
        click.echo("\n[cancelled]", err=True)


def _serve_argv(ctx: click.Context, idle_minutes: float) -> list[str]:
    """The command line of an `assistant serve` with this command's global options."""
    argv = [sys.executable, "-m", "assistant"]
    for name, flag in (("config_path", "--config"), ("data_dir", "--data-dir"),
                       ("index_dir", "--index-dir"), ("embedding_model", "--embedding-model"),
                       ("generator_model", "--model"), ("device", "--device")):
        value = ctx.find_root().params.get(name)
        if value is not None:
            argv += [flag, str(value)]
    return argv + ["serve", "--idle-minutes", f"{idle_minutes:g}"]


def serve_handler(manager, settings: Settings, *, idle_s: float = 0.0):
    """The answer server's request handler (see :data:`assistant.serve.Handler`): each answer
    request (from `ask` or the chat) answered by ``manager`` as in-process, while background
    embedding waits; ``{"op": "describe"}`` gets ``{"describe": manager.describe()}`` (with
    ``idle_s``, the server's idle timeout in seconds, its ``pid`` and ``resident_bytes``, see
    :func:`assistant.memory.resident_bytes`), ``{"op": "count", "text"}`` gets
    ``{"tokens": n}``, ``{"op": "ping"}`` (which only resets the idle timeout) ``{"pong":
    true}``."""
    from index.turns import answering

    def handle(request: dict, send, cancellation=None) -> None:
        op = request.get("op")
        if op == "describe":
            send({"describe": {**manager.describe(), "idle_s": idle_s, "pid": os.getpid(),
                               "resident_bytes": resident_bytes()}})
            return
        if op == "count":
            send({"tokens": manager.count_tokens(str(request.get("text", "")))})
            return
        if op == "ping":
            send({"pong": True})
            return
        with answering():
            messages = _turn_messages(manager, settings, request, prepare=True,
                                      cancellation=cancellation)
            try:
                for message in messages:
                    send(message)
            except UserError as exc:
                send({"error": str(exc)})
            finally:
                messages.close()
                release_free_memory(collect=False)  # what the answer's passes freed

    return handle


@cli.command("serve")
@click.option("--idle-minutes", type=click.FloatRange(0), default=None,
              help="Exit after this many minutes without a question (0: never). Default: the "
                   "serve_idle_minutes setting, or 10 when that is 0.")
@click.option("--stop", "stop_it", is_flag=True, help="Stop the running server.")
@click.pass_context
def serve_command(ctx, idle_minutes, stop_it) -> None:
    """Keep the models loaded and answer `assistant ask` from them (a Unix socket in the data
    dir, owner-only), until idle for --idle-minutes."""
    from . import serve

    settings = _settings(ctx)
    if stop_it:
        click.echo("Stopped the answer server." if serve.stop(settings)
                   else "No answer server is running.", err=True)
        return
    if serve.running(settings):  # before loading the models, which takes seconds
        raise UserError(f"an answer server is already running ({serve.socket_path(settings)})")
    if idle_minutes is None:
        idle_minutes = settings.serve_idle_minutes or 10.0
    say = lambda message: click.echo(message, err=True)  # noqa: E731
    loading = start_generator(settings, say=say)
    with loading.models:
        embedder = load_embedder(settings)
    ensure_demo_index(settings, embedder, say=say)
    manager = build_manager(settings, say=say, embedder=embedder, generator=loading.result())
    manager.warm_up()
    release_free_memory()
    try:
        serve.serve(settings, serve_handler(manager, settings, idle_s=60 * idle_minutes),
                    idle_s=60 * idle_minutes,
                    on_ready=lambda path: say(f"Answering on {path} (idle timeout "
                                              f"{idle_minutes:g} min; `assistant serve --stop` "
                                              f"stops it)."))
    except serve.ServerError as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        pass


@cli.command("chat")
@click.option("--continue", "-c", "resume_last", is_flag=True,
              help="Resume the most recent conversation.")
@click.option("--session", "session_id", help="Resume this conversation (id or prefix).")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.pass_context
def chat_command(ctx, resume_last, session_id, paths) -> None:
    """Open the chat app (a terminal UI) on the indexed documents.

    It answers through the answer server (`assistant serve`) when one is up, or starts one
    (setting ``serve_idle_minutes``; 0: never), so the models stay loaded after it closes;
    otherwise the models and the index load in its own process, in the background. With no
    index yet, the bundled Python language reference is indexed first. With PATHS, they are
    indexed in the background (`assistant index PATHS`) while the chat answers from what is
    already searchable; the status line shows the progress. Press F1 in the app for the keys.
    """
    settings = _settings(ctx)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UserError("chat needs a terminal; use `assistant ask QUESTION` in scripts")
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise UserError(f"no such file or folder: {visible(missing[0], one_line=True)}")
    from .tui import ChatApp
    from .tui.keys import check_keymap

    try:
        keymap = check_keymap(settings.keys)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    history = _open_history(settings)
    conversation_id = _pick_conversation(history, session_id, last=resume_last)
    if resume_last and conversation_id is None:
        click.echo("No conversation to continue yet: starting a new one.", err=True)

    from index.store import Store

    indexer = background_index(settings, paths) if paths else None

    served = []

    def load(say):
        if indexer is not None:
            while not Store.exists(settings.index_path) and indexer.poll() is None:
                say("indexing your documents: waiting for the first passages…")
                time.sleep(0.5)
        manager = served_manager(ctx, settings, history, say)
        if manager is not None:
            served.append(manager)
            return manager
        say("loading the models…")
        loading = start_generator(settings, say=say)
        with loading.models:
            embedder = load_embedder(settings)
        if indexer is None:
            ensure_demo_index(settings, embedder, say=say)
        manager = build_manager(settings, say=say, embedder=embedder,
                                generator=loading.result(), history=history)
        release_free_memory()
        return manager

    try:
        ChatApp(history=history, load=load, model_name=settings.generator_model, keymap=keymap,
                conversation_id=conversation_id,
                index_progress=(lambda: index_progress(settings, indexer))).run()
    finally:
        for manager in served:
            manager.close()
        if indexer is not None and indexer.poll() is None:
            indexer.terminate()  # what it published stays; `assistant index` goes on later
            try:
                indexer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                indexer.kill()


def served_manager(ctx: click.Context, settings: Settings, history, say):
    """The chat's dialogue manager answered by the answer server
    (:class:`assistant.served.ServedManager`), or None when the chat should load the models
    itself: no server is up and ``serve_idle_minutes`` is 0, the server has other settings, or
    it did not start. With ``serve_idle_minutes`` > 0 a server is started when none is up, as
    ``ask`` typed at a terminal does, and again when it has gone at a later question.
    ``say(text)`` reports progress."""
    from . import serve
    from .served import ServedManager

    minutes = settings.serve_idle_minutes
    shown: dict = {}  # what the status line showed once the server answered

    def start():
        conn = serve.start(settings, _serve_argv(ctx, minutes or 10.0),
                           starting=lambda: say("starting the answer server (it keeps the "
                                                "models loaded for the next questions)…"))
        if conn is not None and shown:  # started again mid-chat: the status line as it was
            say(f"{shown['device']} · answer server · {shown['passages']} passages in "
                f"{shown['documents']} documents")
        return conn

    for _ in range(2):  # again once when the server was of another version
        conn = serve.connect(settings)
        if conn is None and minutes > 0:
            conn = start()
        if conn is None:
            return None
        conn.close()
        manager = ServedManager(settings, history=history, restart=start)
        try:
            shown.update(manager.describe())
        except serve.StaleServer:
            serve.wait_stopped(settings)
            continue
        except (serve.ServerError, OSError, ValueError):
            return None  # other settings, or a broken server: the chat loads its own models
        return manager
    return None


def _server_figures(settings: Settings) -> str:
    """``, pid 1234, 2.1 GB resident, stops after 10 min idle`` from the running answer
    server, or "" when it cannot say (other settings, another version, busy for 1 s)."""
    from . import serve

    conn = serve.connect(settings)
    if conn is None:
        return ""
    try:
        with conn:
            info = serve.reply(conn, settings, {"op": "describe"}, timeout_s=1.0)["describe"]
    except (OSError, ValueError, KeyError, serve.ServerError):
        return ""
    parts = [f"pid {info['pid']}"] if info.get("pid") else []
    if info.get("resident_bytes"):
        parts.append(f"{info['resident_bytes'] / 1e9:.1f} GB resident")
    idle_s = info.get("idle_s") or 0
    parts.append(f"stops after {idle_s / 60:g} min idle" if idle_s else "stops when told")
    return ", " + ", ".join(parts)


def background_index(settings: Settings, paths) -> "subprocess.Popen":
    """Start `assistant index PATHS` for the chat (same data dir, index and embedder), its
    output in ``<data dir>/index.log``."""
    command = [sys.executable, "-m", "assistant", "--data-dir", str(settings.data_dir),
               "--index-dir", str(settings.index_path), "--embedding-model",
               settings.embedding_model, "index", "-q",
               *(str(Path(p).expanduser().resolve()) for p in paths)]
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    log = open(Path(settings.data_dir) / "index.log", "w", encoding="utf-8")
    try:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    finally:
        log.close()


def index_progress(settings: Settings, indexer=None) -> str:
    """The status line's index part: "indexing · 1,200 of 15,000 passages embedded" while an
    index run (``indexer``, a process) is going or passages wait for vectors; "index run
    failed (see …/index.log)" when it ended badly; "" otherwise."""
    from index.store import index_running, live_counts

    running = (indexer.poll() is None) if indexer is not None else \
        index_running(settings.index_path)
    embedded, passages = live_counts(settings.index_path)
    if indexer is not None and not running and indexer.returncode not in (0, None):
        return f"index run failed (see {Path(settings.data_dir) / 'index.log'})"
    if embedded < passages:
        return (f"{'indexing · ' if running else ''}{embedded:,} of {passages:,} passages "
                f"embedded{'' if running else ' (run `assistant index` to finish)'}")
    return "indexing…" if running else ""


def _open_history(settings: Settings):
    import sqlite3

    from .history import History

    try:
        return History(settings.history_path)
    except sqlite3.DatabaseError as exc:
        raise UserError(f"cannot open the history {settings.history_path}: {exc}") from None


def _pick_conversation(history, conversation_id: str | None, *, last: bool = False):
    """A full conversation id from an id prefix, or the last one when ``last``; None if none."""
    if conversation_id is not None:
        try:
            return history.resolve(conversation_id)
        except KeyError as exc:
            raise UserError(exc.args[0]) from None
    return history.last_conversation() if last else None


@cli.group("history")
def history_group() -> None:
    """List, show, export and delete past conversations."""


@history_group.command("list")
@click.option("--search", "-s", default="", help="Only conversations whose text matches.")
@click.option("--limit", "-n", type=click.IntRange(1), default=50, show_default=True,
              help="Most conversations to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def history_list(ctx, search, limit, as_json) -> None:
    """List conversations, most recent first."""
    rows = _open_history(_settings(ctx)).conversations(search=search, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("No conversations." if not search else f"No conversation matches {search!r}.")
        return
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["updated_at"]))
        click.echo(f"{row['id']}  {when}  {row['turns']:>3} turns  "
                   f"{visible(row['title'], one_line=True)}")


@history_group.command("show")
@click.argument("conversation_id", required=False)
@click.pass_context
def history_show(ctx, conversation_id) -> None:
    """Print a conversation (default: the last one) as Markdown."""
    from .export import to_markdown

    history = _open_history(_settings(ctx))
    cid = _pick_conversation(history, conversation_id, last=True)
    if cid is None:
        raise UserError("no conversations yet")
    click.echo(visible(to_markdown(history.conversation(cid), history.turns(cid))), nl=False)


@history_group.command("export")
@click.argument("conversation_id", required=False)
@click.option("--format", "fmt", type=click.Choice(["markdown", "json"]),
              help="Default: from the output file's suffix, else markdown.")
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False),
              help="Write to this file instead of stdout.")
@click.pass_context
def history_export(ctx, conversation_id, fmt, output) -> None:
    """Export a conversation (default: the last one) as Markdown, with the sources as
    footnotes, or as JSON."""
    from .export import to_json, to_markdown

    history = _open_history(_settings(ctx))
    cid = _pick_conversation(history, conversation_id, last=True)
    if cid is None:
        raise UserError("no conversations yet")
    fmt = fmt or ("json" if output and output.suffix.lower() == ".json" else "markdown")
    conversation, turns = history.conversation(cid), history.turns(cid)
    text = (json.dumps(to_json(conversation, turns), ensure_ascii=False, indent=2) + "\n"
            if fmt == "json" else visible(to_markdown(conversation, turns)))
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"Wrote conversation {cid} ({len(turns)} turns) to "
               f"{visible(str(output), one_line=True)}", err=True)


@history_group.command("delete")
@click.argument("conversation_id")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def history_delete(ctx, conversation_id, yes) -> None:
    """Delete a conversation and its turns."""
    history = _open_history(_settings(ctx))
    cid = _pick_conversation(history, conversation_id)
    row = history.conversation(cid)
    if not yes:
        click.confirm(f"Delete {cid} “{visible(row['title'], one_line=True)}” "
                      f"({len(history.turns(cid))} turns)?",
                      abort=True, err=True)
    history.delete(cid)
    click.echo(f"Deleted conversation {cid}.", err=True)


def _bench_index_dir(settings: Settings, work: Path, embedder) -> Path:
    """Where a benchmark corpus under ``work`` is indexed: one folder per embedder, chunking
    and embedding runtime, so changing any of them never reuses vectors made otherwise."""
    runtime = getattr(embedder, "runtime", "torch")
    return work / (f"index-{Path(embedder.name).name}-{settings.chunk_tokens}-"
                   f"{settings.chunk_overlap}" + ("" if runtime == "torch" else f"-{runtime}"))


def _bench_index(settings: Settings, folder: Path, embedder, *,
                 leave_out: frozenset[str] = frozenset()):
    """Index a benchmark corpus (``folder/corpus.jsonl``) once under the data dir; returns
    ``(retriever, settings pointing at that index)``. Later runs find every file unchanged and
    embed nothing. ``leave_out``: document ids to keep out (a separate index, named by them)."""
    import hashlib

    from index.store import Store

    from .evaluate import read_jsonl, write_corpus

    corpus_file = folder / "corpus.jsonl"
    if not corpus_file.is_file():
        raise UserError(f"no corpus.jsonl in {folder}")
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]
    work = Path(settings.data_dir) / "bench" / f"{folder.name}-{key}"
    if leave_out:
        work = work.with_name(work.name + "-without-" + hashlib.sha1(
            "\n".join(sorted(leave_out)).encode()).hexdigest()[:8])
    docs = work / "docs"
    try:
        count = write_corpus((d for d in read_jsonl(corpus_file) if d["_id"] not in leave_out),
                             docs)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    runtime = getattr(embedder, "runtime", "torch")
    index_dir = _bench_index_dir(settings, work, embedder)
    click.echo(f"{folder.name}: {count} documents; index {index_dir}", err=True)
    bench = settings.replace(index_dir=index_dir)
    report = run_index(bench, [docs], embedder=embedder, quiet=Store.exists(index_dir))
    if report.embedded:
        click.echo(f"embedded {report.embedded} passages in {report.embed_seconds:.0f} s "
                   f"({runtime})", err=True)
    return open_retriever(bench, embedder), bench


def _table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def cell(key: str, value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float) and value < 1.0001 and "ms" not in key and "_s" not in key:
            return f"{value:.3f}"
        return str(value)

    table = Table(title=title, title_justify="left")
    if len(rows) == 1 and len(rows[0]) > 8:  # one wide result (answers): a metric per line
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in rows[0].items():
            table.add_row(key, cell(key, value))
    else:
        for column in rows[0]:
            table.add_column(column, justify="left" if column == "mode" else "right")
        for row in rows:
            table.add_row(*(cell(k, v) for k, v in row.items()))
    console = Console()
    if not console.is_terminal:  # a file or a pipe: never cut columns to 80 characters
        console = Console(width=200)
    console.print(table)


def _bar(total: int, label: str):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                   transient=True)
    task = bar.add_task(label, total=total)
    return bar, lambda: bar.advance(task)


@cli.command("eval")
@click.option("--beir", "beir_dir", type=click.Path(path_type=Path, file_okay=False),
              help="A BEIR-format set: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv.")
@click.option("--split", default="train", show_default=True, help="Which qrels to use.")
@click.option("--squad", "squad_dir", type=click.Path(path_type=Path, file_okay=False),
              help="A SQuAD-style set: corpus.jsonl and a questions*.jsonl with answers and "
                   "gold_passage.")
@click.option("--squad-questions", "questions_name", help="Questions file inside --squad "
              "(default: the first questions*.jsonl).")
@click.option("--questions", "questions_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Real questions about real documents (JSON: corpora, questions with key "
                   "facts and gold sources, see benchmarks/questions/real.json): key-fact "
                   "recall, citation correctness and abstention per question form.")
@click.option("--subset", type=click.Choice(["all", "tune", "heldout"]), default="all",
              show_default=True, help="With --questions: which split of the questions to ask.")
@click.option("--own", is_flag=True, help="Your indexed corpus: the generator writes a question "
              "for sampled passages; report how often retrieval finds that passage.")
@click.option("--modes", default="bm25,dense,hybrid,convex", show_default=True,
              help="Retrieval modes to compare (comma-separated).")
@click.option("--alpha", type=click.FloatRange(0, 1), help="Dense weight for convex fusion.")
@click.option("--limit", type=click.IntRange(0), default=0,
              help="Retrieval queries to sample (0: all).")
@click.option("--qa-limit", type=click.IntRange(0), default=300, show_default=True,
              help="Questions to answer with the generator (0: all; answering is the slow part).")
@click.option("--no-qa", is_flag=True, help="With --squad, measure retrieval only.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--reader", "readers", default=None,
              help="Extractive readers to compare on the same questions, comma-separated: "
                   "blocks (passage key/value blocks), text (passages as prompt text). "
                   "Default: the configured one.")
@click.option("--unanswerable", type=click.FloatRange(0, 0.9), default=0.0,
              help="Leave this fraction of the question articles out of the index (chosen "
                   "with --seed): their questions have no answer there; report abstention.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def eval_command(ctx, beir_dir, split, squad_dir, questions_name, questions_file, subset, own,
                 modes, alpha, limit, qa_limit, no_qa, seed, readers, unanswerable,
                 as_json) -> None:
    """Measure retrieval and answers on benchmarks or on your own corpus, and print a table.

    Retrieval (BEIR): nDCG@10, recall@10/@100, MRR@10 per mode. QA (SQuAD): recall@1/@5 of
    the gold passage per mode, then, through the same pipeline as `ask`: exact match, token
    F1, citation accuracy and latency (median, p95). Benchmark corpora are indexed once under
    the data dir. Example: assistant eval --beir ../shared/bench/scifact --squad
    ../shared/bench/squad
    """
    import tempfile

    from . import evaluate as ev

    settings = _settings(ctx)
    if alpha is not None:
        settings = settings.replace(fusion_alpha=alpha)
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    from index.retrieval import MODES

    bad = [m for m in mode_list if m not in MODES]
    if bad:
        raise UserError(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    if not (beir_dir or squad_dir or own or questions_file):
        raise UserError("nothing to evaluate: give --beir DIR, --squad DIR, --questions FILE "
                        "or --own")
    out: dict = {"settings": {"embedding_model": settings.embedding_model,
                              "generator_model": settings.generator_model,
                              "chunk_tokens": settings.chunk_tokens,
                              "chunk_overlap": settings.chunk_overlap,
                              "fusion_alpha": settings.fusion_alpha, "seed": seed}}
    embedder = load_embedder(settings, for_index=True)
    if beir_dir:
        retriever, _ = _bench_index(settings, beir_dir, embedder)
        try:
            qrels = ev.read_qrels(beir_dir, split)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
        queries = [q for q in ev.read_jsonl(beir_dir / "queries.jsonl") if q["_id"] in qrels]
        queries = ev.sample(queries, limit, seed)
        bar, advance = _bar(len(queries) * len(mode_list), f"{beir_dir.name} retrieval")
        with bar:
            scores = ev.evaluate_retrieval(retriever, queries, qrels, mode_list, advance=advance)
        out["beir"] = {"name": beir_dir.name, "split": split, "results": [
            {k: v for k, v in s.row().items() if k not in ("recall@1", "recall@5")}
            for s in scores]}
        if not as_json:
            _table(out["beir"]["results"], f"{beir_dir.name} ({split} judgements, "
                                            f"{len(queries)} queries)")
    if squad_dir:
        names = [questions_name] if questions_name else sorted(
            p.name for p in squad_dir.glob("questions*.jsonl"))
        if not names or not (squad_dir / names[0]).is_file():
            raise UserError(f"no questions file in {squad_dir}")
        questions = ev.read_jsonl(squad_dir / names[0])
        left_out = ev.left_out_articles(questions, unanswerable, seed)
        leave = frozenset(d["_id"] for d in ev.read_jsonl(squad_dir / "corpus.jsonl")
                          if ev.article_of(d["_id"]) in left_out) if left_out else frozenset()
        retriever, bench = _bench_index(settings, squad_dir, embedder, leave_out=leave)
        for_retrieval = ev.sample(questions, limit, seed)
        qrels = {str(i): {q["gold_passage"]: 1} for i, q in enumerate(for_retrieval)}
        queries = [{"_id": str(i), "text": q["question"]} for i, q in enumerate(for_retrieval)]
        bar, advance = _bar(len(queries) * len(mode_list), f"{squad_dir.name} retrieval")
        with bar:
            scores = ev.evaluate_retrieval(retriever, queries, qrels, mode_list, advance=advance,
                                           passages=50)
        keep = ("mode", "queries", "recall@1", "recall@5", "recall@10", "MRR@10", "median_ms")
        rows = [{k: v for k, v in s.row().items() if k in keep} for s in scores]
        out["squad_retrieval"] = {"name": squad_dir.name, "questions": names[0], "results": rows}
        if not as_json:
            _table(rows, f"{squad_dir.name} retrieval ({names[0]}, {len(queries)} questions)")
        if not no_qa:
            reader_list = [r.strip() for r in (readers or settings.reader).split(",") if r.strip()]
            if any(r not in ("blocks", "text") for r in reader_list):
                raise UserError("--reader takes blocks, text or both (comma-separated)")
            history = _scratch_history(tempfile.mkdtemp(prefix="assistant-eval-"))
            managers = {}
            generator = None
            for name in reader_list:
                managers[name] = build_manager(bench.replace(reader=name), embedder=embedder,
                                               history=history, generator=generator)
                generator = managers[name].generator
            first = next(iter(managers.values()))
            skip = set(getattr(first, "example_questions", ()))
            asked = ev.sample([q for q in questions if q["question"] not in skip], qa_limit, seed)
            bar, advance = _bar(len(asked) * len(managers), f"{squad_dir.name} answers")
            results: dict[str, list] = {name: [] for name in managers}
            with bar:
                for q in asked:  # the readers take turns, so load on the machine hits both alike
                    answerable = ev.article_of(q["gold_passage"]) not in left_out
                    for name, manager in managers.items():
                        results[name].append(ev.answer_question(manager, q,
                                                                answerable=answerable))
                        advance()
            rows = []
            for name, manager in managers.items():
                summary = ev.qa_summary(results[name])
                label = f"{Path(settings.generator_model).name}, {name} reader"
                rows.append({"model": label, **summary})
                out.setdefault("squad_qa", []).append({
                    "model": settings.generator_model, "reader": name,
                    "mode": settings.retrieval_mode, "left_out_articles": sorted(left_out),
                    **summary, "answers": [r.__dict__ for r in results[name]]})
            if not as_json:
                reranked = (f"generator reranks top {settings.rerank_k}"
                            if first.reranks else
                            "retrieval order, no reranking")
                if first.prompt_style == "extractive" and settings.rerank_k > 1 and settings.read_k > 1:
                    reranked += f", reads up to {min(settings.read_k, settings.rerank_k)}"
                if left_out:
                    reranked += (f"; {len(left_out)} question articles left out of the index: "
                                 f"{sum(not r.answerable for r in results[reader_list[0]])} "
                                 f"questions unanswerable")
                for row in rows:
                    _table([row], f"{squad_dir.name} answers ({settings.retrieval_mode} "
                                  f"retrieval, top {settings.top_k}, {reranked})")
    if questions_file:
        out["questions"] = _eval_questions(settings, questions_file, subset, embedder,
                                           as_json=as_json)
    if own:
        from index.store import Store

        if not Store.exists(settings.index_path):
            raise UserError("no index yet: run `assistant index PATH` first")
        retriever = open_retriever(settings, embedder)
        generator = load_generator(settings, say=lambda m: click.echo(m, err=True))
        n = limit or 50
        click.echo(f"writing {n} questions with {settings.generator_model}…", err=True)
        questions = ev.own_questions(retriever.store, generator, limit=n, seed=seed)
        rows = ev.evaluate_own(retriever, questions, mode_list)
        out["own"] = {"questions": [q for _, q in questions][:10], "results": rows}
        if not as_json:
            _table(rows, f"your corpus ({len(questions)} generated questions)")
    if as_json:
        click.echo(json.dumps(out, ensure_ascii=False, indent=2))


def _eval_questions(settings: Settings, path: Path, subset: str, embedder, *,
                    as_json: bool) -> dict:
    """``eval --questions FILE``: index the file's corpora together once under the data dir,
    ask every question of ``subset`` as ``ask`` would (follow-ups after their history, in one
    conversation) and print per-form rows for each split (see :mod:`assistant.question_set`)."""
    import hashlib
    import tempfile

    from index.store import Store

    from . import question_set as qs
    from .corpus import write_python_reference

    try:
        corpora, questions = qs.load(path)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    key = hashlib.sha1(json.dumps({k: str(v) for k, v in sorted(corpora.items())}).encode())
    work = Path(settings.data_dir) / "bench" / f"questions-{key.hexdigest()[:8]}"
    roots = []
    for name, where in corpora.items():
        if isinstance(where, str):  # bundled:NAME
            if where != qs.BUNDLED + "python-reference":
                raise UserError(f"{path}: unknown bundled corpus {where}")
            roots.append(write_python_reference(work / "python-reference"))
        elif not where.exists():
            raise UserError(f"{path}: corpus {name} not found at {where}")
        else:
            roots.append(where)
    index_dir = _bench_index_dir(settings, work, embedder)
    bench = settings.replace(index_dir=index_dir)
    run_index(bench, roots, embedder=embedder, quiet=Store.exists(index_dir))
    history = _scratch_history(tempfile.mkdtemp(prefix="assistant-eval-"))
    manager = build_manager(bench, embedder=embedder, history=history)
    asked = [q for q in questions if subset == "all" or q.get("split", "tune") == subset]
    bar, advance = _bar(len(asked), f"{path.name} answers")
    results = []
    with bar:
        for q in asked:
            results.append(qs.ask(manager, q))
            advance()
    splits = list(dict.fromkeys(r.split for r in results))
    out = {"file": str(path), "subset": subset,
           "splits": {s: qs.rows([r for r in results if r.split == s]) for s in splits},
           "answers": [r.__dict__ for r in results]}
    if not as_json:
        for s in splits:  # percentages with one decimal (the table would show 0.0 as a ratio)
            shown = [{k: f"{v:.1f}" if isinstance(v, float) else v for k, v in row.items()}
                     for row in out["splits"][s]]
            _table(shown, f"{path.name}: {s} questions ({sum(r.split == s for r in results)})")
    return out


def _scratch_history(folder: str):
    from .history import History

    return History(Path(folder) / "history.db")


@cli.command("info")
@click.pass_context
def info_command(ctx) -> None:
    """Show settings, paths and index size (and what is wrong with a damaged index)."""
    from index.store import Store, StoreError, known_roots

    settings = _settings(ctx)
    show = lambda value: visible(str(value), one_line=True)  # noqa: E731
    click.echo(f"data dir:         {show(settings.data_dir)}")
    click.echo(f"index:            {show(settings.index_path)}")
    click.echo(f"history:          {show(settings.history_path)}")
    click.echo(f"embedding model:  {show(settings.embedding_model)}")
    click.echo(f"generator model:  {show(settings.generator_model)}")
    if is_remote(settings.generator_model):
        from .generation.remote import api_key

        _, source = api_key(settings.api_base, settings.api_key_env)
        click.echo(f"generation server: {show(settings.api_base)} (API key: {source}; "
                   f"timeout {settings.api_timeout:g} s, {settings.api_retries} retries)")
    else:
        click.echo(f"device:           {show(settings.device)}")
        click.echo(f"precision:        {show(settings.precision)}")
    from . import serve

    click.echo("answer server:    " + (f"running ({show(serve.socket_path(settings))}"
                                        f"{_server_figures(settings)})"
                                        if serve.running(settings) else "not running"))
    if not Store.exists(settings.index_path):
        click.echo("indexed:          nothing yet (`assistant index PATH`)")
        return
    problem = None
    try:
        store = Store.open(settings.index_path)
    except StoreError as exc:
        problem = str(exc)
        roots = known_roots(settings.index_path)
        click.echo("indexed:          damaged (see below)")
    else:
        stats = store.stats()
        roots = stats["roots"]
        click.echo(f"indexed:          {stats['documents']} documents, {stats['passages']} passages")
        if stats["embedded"] < stats["passages"]:
            click.echo(f"embedded:         {stats['embedded']} of {stats['passages']} passages "
                       "(the others are found by BM25 only until `assistant index` finishes)")
        meta = store.meta()
        click.echo(f"embedding runtime: {show(meta.get('embedding_runtime', 'torch'))}")
        click.echo(f"vector index:     {stats['vector_index']}")
        store.close()
    for root in roots:
        click.echo(f"  root:           {show(root)}")
    if problem:
        raise UserError(problem)


def describe_error(exc: BaseException) -> str:
    """An unexpected failure as one line for the user: what failed and on which file, with a
    hint for disk-full, permission and out-of-memory errors."""
    import errno
    import sqlite3

    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return ("out of memory (try a smaller model, --device cpu, fewer passages with -k, or "
                "a smaller max_file_mb)")
    if isinstance(exc, OSError):
        where = f": {visible(str(exc.filename), one_line=True)}" if exc.filename else ""
        what = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            return f"the disk is full{where} (nothing was lost; free some space and retry)"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"permission denied{where} (check the folder's owner and permissions)"
        return f"{what}{where}"
    if isinstance(exc, sqlite3.Error):
        text = str(exc)
        if "readonly" in text or "unable to open" in text:
            return f"cannot write a database ({text}): check the data dir's permissions"
        if "full" in text:
            return f"the disk is full ({text}); nothing was lost: free some space and retry"
        return f"database error: {text}"
    first = (str(exc).strip().splitlines() or [""])[0]
    return visible(f"{type(exc).__name__}: {first}" if first else type(exc).__name__,
                   one_line=True)


_MODELS_IN_PROCESS = False
"""Set by a one-shot ``ask`` that loads the models in this process (no answer server)."""


def _leave(code: int) -> None:
    """End the process now, skipping the interpreter's teardown: after a one-shot ``ask`` it
    freed the models' tensors and the libraries' state for 0.9–1.1 s after the answer was
    printed (measured here, BENCHMARKS.md "Round 3"). Everything ``ask`` writes is written by
    then: the history database commits each statement, and output streams are flushed here."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def main() -> None:
    """Console-script entry point: every failure ends as one line on stderr and a non-zero
    exit status; ``--debug`` or ``ASSISTANT_DEBUG=1`` shows the traceback instead. After a
    one-shot ``ask`` that loaded the models, the process ends without the interpreter's
    teardown (see :func:`_leave`)."""
    try:
        cli(prog_name="assistant")
    except SystemExit as exc:
        if _MODELS_IN_PROCESS and isinstance(exc.code, (int, type(None))):
            _leave(exc.code or 0)
        raise
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # the one error path
        if os.environ.get("ASSISTANT_DEBUG", "") not in ("", "0"):
            raise
        click.echo(f"error: {describe_error(exc)} (--debug shows the details)", err=True)
        sys.exit(1)
