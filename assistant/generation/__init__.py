"""Answer generators: the protocol, and the Hugging Face transformers implementation.

This is the only module of ``assistant`` that imports torch and transformers, and it does so
lazily, so ``assistant --help`` and the TUI's first frame do not wait for them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol, Sequence

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


def cache_argument(model) -> str:
    """The name ``model.forward`` takes its key/value cache by: ``cache`` in transformers
    5.2x (``past_key_values`` still works there but warns on the user's terminal),
    ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else (
        "past_key_values")


def cache_of(output):
    """The key/value cache of a model output, under either name (see :func:`cache_argument`)."""
    return output["cache"] if "cache" in output else output["past_key_values"]


def quiet_hub() -> None:
    """Silence library progress bars and advisory logging (the CLI draws its own progress)."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers reads the progress-bar setting when first imported (maybe already, by the
    # embedder): its "Loading weights" and "Writing model shards" bars would draw over ours
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token",
                  "sep_token", "cls_token")


def load_tokenizer(path: str | Path, *, plain: bool = False):
    """The tokenizer of the model at ``path`` (a local directory or a hub id).

    ``plain``: for the embedded models' converted directories (``tokenizer.json`` written by
    transformers), build a ``PreTrainedTokenizerFast`` straight from ``tokenizer.json`` and
    the special tokens and chat template of ``tokenizer_config.json`` instead of the
    directory's tokenizer class: transformers 5's ``GemmaTokenizer`` rebuilds Gemma 3's
    262,144-entry vocabulary in Python and its ``from_pretrained`` parses the 33 MB file again
    in Python (2.4–3.6 s here, against about 1 s; BENCHMARKS.md, "Round 3"). The two give the
    same ids, special tokens, decoding and chat template for the embedded models (a slow
    test in ``tests/test_generation.py``); any other model loads through ``AutoTokenizer``.

    Raises:
        OSError: no tokenizer at ``path`` (a hub id is looked up in the local cache only
            first, then on the hub).
        ValueError: a tokenizer file transformers cannot read.
    """
    import json

    folder = Path(path)
    if plain and (folder / "tokenizer.json").is_file():
        import transformers

        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        kwargs = {k: config[k] for k in SPECIAL_TOKENS if isinstance(config.get(k), str)}
        template = folder / "chat_template.jinja"
        if template.is_file():
            kwargs["chat_template"] = template.read_text()
        elif config.get("chat_template"):
            kwargs["chat_template"] = config["chat_template"]
        # the class's own defaults (GemmaTokenizer pads on the left)
        kind = getattr(transformers, str(config.get("tokenizer_class")), None)
        kwargs["padding_side"] = getattr(kind, "padding_side", "right")
        if "model_max_length" in config:
            kwargs["model_max_length"] = config["model_max_length"]
        # tokenizer_file, not tokenizer_object: an object is deep-copied (1.2 s more here)
        return transformers.PreTrainedTokenizerFast(
            tokenizer_file=str(folder / "tokenizer.json"), **kwargs)
    from transformers import AutoTokenizer

    return _local_first(AutoTokenizer.from_pretrained, path)


def _local_first(load, path, **kwargs):
    """``load(path, **kwargs)`` from local files only (a directory, or a hub id already in
    the cache), else from the hub; a local directory that fails to load raises its
    ``OSError``."""
    try:
        return load(path, local_files_only=True, **kwargs)
    except OSError:
        if Path(path).exists():
            raise
        return load(path, **kwargs)


class GenerationError(Exception):
    """The model cannot be loaded or run; ``str()`` is a one-line explanation."""


@dataclass
class GenerationStats:
    """Timings and sizes of one generation.

    Attributes:
        prompt_tokens: tokens in the rendered prompt.
        new_tokens: tokens generated.
        first_token_s: seconds from the call until the first generated token was decoded
            (time to first token, prompt processing included).
        total_s: seconds from the call until generation ended.
        cancelled: True when stopped by :meth:`Reply.cancel` (not by a stop string).
        logprob: natural-log probability of the generated tokens, summed (the token that
            ended a one-line answer included), from the distribution each was chosen from;
            None until generation ends.
        blocks_computed: a reply over passage blocks (``generate_over``): how many of its
            passages' blocks were computed for it (the rest came from the block LRU); else
            None.
        reused_tokens: a reply over passage blocks: the leading tokens of its prompt after
            the blocks whose keys and values were computed before (``prepare_over``) instead
            of prefilled; else 0.
    """

    prompt_tokens: int = 0
    new_tokens: int = 0
    first_token_s: float | None = None
    total_s: float = 0.0
    cancelled: bool = False
    logprob: float | None = None
    blocks_computed: int | None = None
    reused_tokens: int = 0

    @property
    def mean_logprob(self) -> float | None:
        """``logprob`` per generated token (<= 0; 0 means certain): the answer's confidence."""
        if self.logprob is None or not self.new_tokens:
            return None
        return self.logprob / self.new_tokens

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: tokens after the first one per second after the first one."""
        if self.first_token_s is None or self.new_tokens < 2:
            return None
        decode = self.total_s - self.first_token_s
        return (self.new_tokens - 1) / decode if decode > 0 else None


@dataclass
class Reply:
    """A streaming answer: iterate it for text fragments; ``stats`` is complete afterwards.

    ``cancel()`` may be called from any thread; the iteration then ends after at most one
    more token and ``stats.cancelled`` is True.
    """

    fragments: Iterator[str]
    stats: GenerationStats = field(default_factory=GenerationStats)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def __iter__(self) -> Iterator[str]:
        return self.fragments

    def cancel(self) -> None:
        """Ask generation to stop as soon as possible."""
        self.cancel_event.set()

    def stop(self) -> None:
        """End generation early because the answer is complete (not a cancellation)."""
        self.stop_event.set()

    def text(self) -> str:
        """Consume the whole stream and return the text."""
        return "".join(self)


class Generator(Protocol):
    """A decoder model that streams a reply to chat messages."""

    name: str
    """Model name as configured."""
    device: str
    """Where it runs (``cpu``, ``cuda``, ...)."""
    context_window: int
    """Most tokens the model attends to (prompt + answer)."""

    has_chat_template: bool
    """True for instruction models (answers as chat); False for base models (extractive)."""
    has_blocks: bool
    """True when the generator offers passage blocks (``blocks``, ``bos``, ``end_ids()``:
    see :class:`~assistant.generation.blocks.BlockReader`; and for chat answers over them
    ``direct_decoding()``, ``render``, ``generate_over`` and ``prepare_over``, see
    :class:`TransformersGenerator`)."""

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` (no special tokens added)."""
        ...

    def complete(self, text: str, *, max_new_tokens: int = 32, temperature: float = 0.0,
                 stop: Sequence[str] = (), within: str | None = None,
                 shared_prefix: str = "") -> Reply:
        """Continue ``text`` as is (a base model's completion prompt); see
        :meth:`TransformersGenerator.complete`."""
        ...

    def score(self, prefixes: Sequence[str], continuation: str) -> list[float]:
        """Log-likelihood of ``continuation`` after each prefix (natural log, summed)."""
        ...

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of ``messages`` rendered with the model's chat template."""
        ...

    def generate(self, messages: Sequence[Message], *, max_new_tokens: int = 256,
                 temperature: float = 0.0, stop: Sequence[str] = ()) -> Reply:
        """Start generating a reply; returns at once with a streaming :class:`Reply`."""
        ...


LABEL_ID = "label"
"""The passage id under which passage labels (``Source [2] ``) are kept in the block LRU."""


def _over_key(over: tuple) -> tuple:
    """What a prompt over blocks is computed over: head, passages, labels and layout."""
    head, passages, labels, layout = over
    return (head, tuple((str(pid), text) for pid, text in passages), tuple(labels), layout)


def labelled(reader, prefix, blocks: list, labels: Sequence[str]) -> list:
    """``blocks`` with each one's label block (computed after ``prefix``, or from the LRU)
    right before it; ``blocks`` as they are without labels."""
    if not labels:
        return list(blocks)
    tags = reader.blocks(prefix, [(LABEL_ID, label) for label in labels])
    return [segment for pair in zip(tags, blocks) for segment in pair]


def copy_constraint(span_ids: Sequence[int], end_ids: Sequence[int]):
    """The allowed next tokens when an answer must copy a contiguous run of ``span_ids``.

    Returns a function from the answer's tokens so far (a list of ids) to the sorted ids that
    may come next: the token after each occurrence of the answer in ``span_ids`` plus
    ``end_ids``; any token of ``span_ids`` to start with. Cost: O(len(span_ids) * len(answer))
    per step, a few milliseconds for a 300-token passage.
    """
    span_ids = list(span_ids)
    first = sorted(set(span_ids))

    def allowed(answer: list[int]) -> list[int]:
        if not answer:
            return first
        size = len(answer)
        following = set(end_ids)
        for start in range(len(span_ids) - size):
            if span_ids[start:start + size] == answer:
                following.add(span_ids[start + size])
        return sorted(following)

    return allowed


class StopStrings:
    """Cuts a text stream at the first of some stop strings, holding back text that could be
    the start of one; feed fragments with :meth:`push`, then :meth:`flush`."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.keep = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""
        self.stopped = False

    def push(self, fragment: str) -> str:
        """Add a fragment; returns the text that is now safe to emit."""
        if self.stopped:
            return ""
        self.buffer += fragment
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buffer, self.stopped = self.buffer[:cut], "", True
            return out
        if self.keep == 0 or not self.stops:
            out, self.buffer = self.buffer, ""
            return out
        out, self.buffer = self.buffer[: -self.keep], self.buffer[-self.keep :]
        return out

    def flush(self) -> str:
        """The held-back text, at the end of the stream."""
        out, self.buffer = self.buffer, ""
        return out


def pick_device(requested: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; other values are checked
    against what this torch build can use.

    Raises:
        GenerationError: an unknown device, CUDA/MPS requested but not available, or a GPU
            number this machine does not have.
    """
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return requested
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GenerationError(f"device {requested!r} requested but torch sees no CUDA GPU")
        number = requested.partition(":")[2]
        if number and not (number.isdigit() and int(number) < torch.cuda.device_count()):
            raise GenerationError(f"device {requested!r}: this machine has "
                                  f"{torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
        return requested
    if requested == "mps":
        if not torch.backends.mps.is_available():
            raise GenerationError("device 'mps' requested but torch sees no Apple GPU")
        return requested
    raise GenerationError(f"unknown device {requested!r}: use auto, cpu, cuda, cuda:N or mps")


def start_prepack(path: str | Path, precision: str, device: str):
    """Start packing the weights of the local model folder ``path`` in float16 on background
    threads (:class:`~assistant.generation.precision.Prepack`) when ``precision`` on
    ``device`` will pack them (``fp16`` or ``mixed`` on a CPU) and the folder has
    safetensors files; else None. Call it as soon as torch is imported: the packing then runs
    beside the imports of transformers and the model's code, which keep one core busy with
    the GIL held (BENCHMARKS.md, "Loading")."""
    from . import precision as precisions

    if not any(Path(path).glob("*.safetensors")):
        return None
    try:
        device = pick_device(device)
        if device != "cpu" or precisions.resolve(precision, device) not in ("fp16", "mixed"):
            return None
    except (GenerationError, precisions.PrecisionError):
        return None  # the load itself reports it
    return precisions.Prepack(path)


@contextlib.contextmanager
def _no_gguf_progress_bar():
    """Silence transformers' plain-tqdm bar while de-quantising (it would draw over the chat
    app or the CLI's own messages); a no-op if transformers moves it."""
    from unittest import mock

    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    with mock.patch.object(gguf_utils, "tqdm", functools.partial(bar, disable=True)):
        yield


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantise a GGUF checkpoint once into a safetensors model directory.

    transformers de-quantises GGUF weights on every load (about 30 s for SmolLM2-135M here);
    the converted copy (float16 on disk, about 270 MB for 135M parameters) loads in about 1 s.
    Written to a temporary sibling folder first and renamed, so a killed conversion leaves
    nothing half-written.

    Raises:
        GenerationError: the GGUF cannot be read (``gguf`` package missing, corrupt file).
    """
    import shutil

    quiet_hub()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        with _no_gguf_progress_bar():
            model = AutoModelForCausalLM.from_pretrained(gguf_path.parent,
                                                         gguf_file=gguf_path.name)
    except (ImportError, OSError, ValueError, KeyError) as exc:
        raise GenerationError(f"cannot read GGUF model {gguf_path}: {exc}") from exc
    # The de-quantised weights are plain tensors now; drop the GGUF quantizer so
    # save_pretrained writes ordinary safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.float16)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


def model_files_key(path: str, precision: str, device: str) -> str | None:
    """What a cache computed by the model in local directory ``path`` depends on: its
    config, the names, sizes and modification times of its files, the precision, device and
    library versions. None for a model that is not a local directory (a hub id)."""
    import torch
    import transformers

    folder = Path(path)
    if not folder.is_dir():
        return None
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                   for f in folder.iterdir() if f.is_file())
    return repr((str(folder.resolve()), files, precision, device, torch.__version__,
                 transformers.__version__))


class TransformersGenerator:
    """A :class:`Generator` on a Hugging Face causal LM.

    Args:
        name: model name shown to the user.
        path: local directory or hub id to load from (a hub id is looked up in the local cache
            first; the network is used only when it is not cached).
        device: ``auto``, ``cpu``, ``cuda``, ... (see :func:`pick_device`).
        precision: ``auto``, ``fp32``, ``fp16``, ``mixed``, ``bf16``, ``int8`` or ``int4``
            weights (see :mod:`assistant.generation.precision`; ``auto``: bfloat16 on CUDA,
            ``mixed`` on an x86 CPU with bfloat16 arithmetic, float16 weights on other x86
            CPUs).
        model_lock: held while the model's weights are instantiated: transformers builds
            models under process-wide patches (weights first made on the ``meta`` device), so
            two models must not be built at once on two threads; the tokenizer loads outside
            it.
        cache_dir: where to keep the worked examples' key/value cache between processes
            (see :class:`~assistant.generation.blocks.PrefixStore`); only for a model loaded
            from a local directory. None: computed in every process.
        plain_tokenizer: load the tokenizer from ``tokenizer.json`` alone (see
            :func:`load_tokenizer`); for the embedded models' converted directories.
        screen_head: greedy replies in the direct decoding loop take each step's logits
            from the int4 copy of the output head, exact where a token can be chosen (see
            :class:`~assistant.generation.precision.Int4Head`; only where it runs and gains:
            a CPU, a head of at least 64 M weights, a ``cache_dir``).
        prepacked: a :class:`~assistant.generation.precision.Prepack` of ``path`` started
            before this (:func:`start_prepack`): its pieces replace packing the weights again.

    Raises:
        GenerationError: the model cannot be found or loaded, or the precision cannot run
            here.
    """

    def __init__(self, name: str, path: str, *, device: str = "auto", precision: str = "fp32",
                 model_lock=None, cache_dir: str | Path | None = None,
                 plain_tokenizer: bool = False, screen_head: bool = False,
                 prepacked=None):
        quiet_hub()
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from . import precision as precisions

        self.name = name
        self.screen_head = screen_head
        self.device = pick_device(device)
        try:
            self.precision = precisions.resolve(precision, self.device)
        except precisions.PrecisionError as exc:
            raise GenerationError(str(exc)) from None
        dtype = precisions.load_dtype(self.precision, self.device)
        try:
            if plain_tokenizer:
                # loaded beside the model: tokenizers parses tokenizer.json without the GIL
                # while the model's modules are imported (its own modules imported here
                # first, so the two threads never import the same module)
                import transformers.tokenization_utils_tokenizers  # noqa: F401

                with ThreadPoolExecutor(1, thread_name_prefix="tokenizer") as pool:
                    tokenizer = pool.submit(load_tokenizer, path, plain=True)
                    model = self._build(path, dtype, model_lock)
                    self.tokenizer = tokenizer.result()
            else:
                self.tokenizer = load_tokenizer(path)
                model = self._build(path, dtype, model_lock)
            self.model = model.to(self.device)
            self.model = precisions.apply(self.model.eval(), self.precision, self.device,
                                          head=self.has_chat_template, prepacked=prepacked)
        except precisions.PrecisionError as exc:
            raise GenerationError(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise GenerationError(f"cannot load generator {name!r} from {path}: "
                                  f"{str(exc).splitlines()[0]}") from exc
        except torch.OutOfMemoryError as exc:
            raise GenerationError(f"out of memory loading {name!r} on {self.device}") from exc
        self.model.eval()
        config = self.model.config
        self.context_window = int(
            getattr(config, "max_position_embeddings", None)
            or getattr(self.tokenizer, "model_max_length", 2048)
        )
        self._lock = threading.Lock()  # one generation at a time per model
        self._blocks = None
        self._prepared: tuple | None = None  # (blocks key, token ids, KV): prepare_over
        from .blocks import PrefixStore

        key = model_files_key(path, self.precision, self.device) if cache_dir else None
        self._prefixes = PrefixStore(cache_dir, key) if key else None

    @staticmethod
    def _build(path, dtype, model_lock):
        """The model at ``path`` with ``dtype`` weights, built under ``model_lock``; from the
        local files first, a hub id from the hub when they are not there."""
        from transformers import AutoModelForCausalLM

        with model_lock or contextlib.nullcontext():
            return _local_first(AutoModelForCausalLM.from_pretrained, path, dtype=dtype)

    has_blocks = True

    block_cache_bytes: int = 2**30
    """Bound of the passage-block LRU in bytes (Gemma 3 270M: about 37 KB per token in
    float32, so 1 GiB holds about 140 passages of 200 tokens)."""

    @property
    def blocks(self):
        """The :class:`~assistant.generation.blocks.BlockReader` of this model: passages as
        key/value blocks (made on first use)."""
        if self._blocks is None:
            from .blocks import BlockReader

            self._blocks = BlockReader(self.model, self.tokenizer, self.device, name=self.name,
                                       max_bytes=self.block_cache_bytes, lock=self._lock,
                                       prefixes=self._prefixes)
        return self._blocks

    @property
    def pad_id(self) -> int | None:
        """The padding token id: the tokenizer's own (0 is a valid id: Gemma's), else EOS."""
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    @property
    def bos(self) -> str:
        """The text of the beginning-of-sequence token ('' when the model has none)."""
        return self._bos()

    def end_ids(self) -> list[int]:
        """Token ids that end a one-line answer: any token holding a new line, and EOS."""
        return self._end_ids()

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` without special tokens."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _render(self, messages: Sequence[Message]) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        # A base model without a chat template: plain completion of the concatenated text.
        return self._bos() + "\n\n".join(m["content"] for m in messages)

    def _bos(self) -> str:
        # Prompts are tokenised without special tokens; models trained with a BOS token
        # (Gemma) degrade badly without it.
        return self.tokenizer.bos_token or ""

    @property
    def has_chat_template(self) -> bool:
        """True for instruction-tuned models whose tokenizer carries a chat template."""
        return bool(self.tokenizer.chat_template)

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of ``messages`` rendered with the chat template (special tokens included)."""
        return len(self.tokenizer(self._render(messages), add_special_tokens=False)["input_ids"])

    def generate(self, messages: Sequence[Message], *, max_new_tokens: int = 256,
                 temperature: float = 0.0, stop: Sequence[str] = ()) -> Reply:
        """Stream a reply; generation runs in a background thread.

        Decoding is greedy when ``temperature`` is 0, else sampled. Generation ends at the
        model's end-of-sequence token, after ``max_new_tokens``, at the first stop string
        (not included in the output) or on :meth:`Reply.cancel`.
        """
        return self._stream(self._render(messages), max_new_tokens=max_new_tokens,
                            temperature=temperature, stop=stop)

    def render(self, messages: Sequence[Message]) -> str:
        """``messages`` as the model reads them: its chat template with the assistant's turn
        opened (a model without one: the contents joined, after the BOS token)."""
        return self._render(messages)

    def generate_over(self, head: str, passages: Sequence[tuple[object, str]], tail: str, *,
                      labels: Sequence[str] = (), layout: str = "end",
                      max_new_tokens: int = 256, temperature: float = 0.0,
                      stop: Sequence[str] = ()) -> Reply:
        """Stream a reply to a rendered prompt whose passages are key/value blocks: ``head``
        (the prompt up to the passages), then one block per ``(passage id, text)`` (from the
        block LRU, else computed once after ``head``, see
        :meth:`BlockReader.blocks <assistant.generation.blocks.BlockReader.blocks>`), placed
        by ``layout`` (:meth:`BlockReader.place
        <assistant.generation.blocks.BlockReader.place>`), then ``tail`` (the rest of the
        prompt, up to where the reply starts), whose tokens and the reply's attend over the
        head and every block at once. ``labels`` (one per passage, e.g. ``Source [2] ``) are
        blocks of their own, computed after the head and placed right before their passages:
        a passage's block then does not depend on its number. Blocks are computed on the
        thread that iterates the reply, as the decoding is; the stream, stop strings and
        cancelling are :meth:`generate`'s. ``stats.prompt_tokens`` counts head, labels,
        blocks and tail; ``stats.blocks_computed`` the passages' blocks computed for it.

        Raises:
            GenerationError: the direct decoding loop is not available for this model or its
                generation settings (see :meth:`direct_decoding`; check it first), or an
                unknown ``layout``.
        """
        if not self.direct_decoding():
            raise GenerationError(f"{self.name}: passage blocks need the direct decoding loop, "
                                  "which this model or its generation settings do not allow")
        if layout not in ("start", "end", "sequence"):
            raise GenerationError(f"unknown block layout {layout!r} (start, end or sequence)")
        return self._stream(tail, max_new_tokens=max_new_tokens, temperature=temperature,
                            stop=stop, over=(head, list(passages), list(labels), layout))

    def prepare_over(self, head: str, passages: Sequence[tuple[object, str]], tail: str, *,
                     labels: Sequence[str] = (), layout: str = "end") -> int:
        """Compute, ahead of time, the keys and values of ``tail`` over ``head`` and the
        passage blocks placed as :meth:`generate_over` would place them, and keep them (the
        latest only). A later :meth:`generate_over` over the same head, passages, labels and
        layout whose prompt after the blocks starts with some of the same tokens reuses
        them and prefills only the rest (``stats.reused_tokens``). The chat prepares the
        conversation so far while the reader reads the answer, so that a follow-up over the
        same passages prefills only its own message. Exact: a token's keys and values depend
        only on what comes before it. Returns the tokens computed.

        Raises:
            GenerationError: as :meth:`generate_over`.
        """
        if not self.direct_decoding():
            raise GenerationError(f"{self.name}: passage blocks need the direct decoding loop")
        import torch

        from .blocks import Row

        over = (head, list(passages), list(labels), layout)
        context, start, _, _ = self._over_context(over)
        ids = self.blocks.tokens(tail)
        if not ids:
            return 0
        with self._lock, torch.inference_mode():
            _, new, _ = self.blocks.engine.run(
                [Row(context, ids, list(range(start, start + len(ids))))])
        self._prepared = (_over_key(over), ids, new[0])
        return len(ids)

    def _over_context(self, over: tuple, stats: "GenerationStats | None" = None):
        """``(context, start, passage_ids, tokens)`` of a prompt over blocks (``over`` as
        :meth:`generate_over` takes it): the head's cache and the placed label and passage
        blocks, the position after them, the passages' token ids (prompt-lookup drafts) and
        the tokens of head and blocks. Sets ``stats.blocks_computed``."""
        head, passages, labels, layout = over
        reader = self.blocks
        context = [reader.prefix(head)]  # these take the lock themselves
        before = reader.encoded
        blocks = reader.blocks(context[0], passages)
        if stats is not None:
            stats.blocks_computed = reader.encoded - before
        segments = labelled(reader, context[0], blocks, labels)
        placed, start = reader.place(segments, layout) if segments else ([], len(context[0]))
        return (context + placed, start, [t for b in blocks for t in b.ids],
                len(context[0]) + sum(len(b) for b in segments))

    def _prepared_part(self, over: tuple, ids: Sequence[int]):
        """The prepared keys and values (:meth:`prepare_over`) of the longest run of
        ``ids``' leading tokens, at most all but the last (whose logits are needed), when
        they were prepared over the same blocks; else None."""
        if self._prepared is None or self._prepared[0] != _over_key(over):
            return None
        _, done, kv = self._prepared
        same = 0
        for a, b in zip(done, ids[:-1]):
            if a != b:
                break
            same += 1
        return kv.head(same) if same else None

    def complete(self, text: str, *, max_new_tokens: int = 32, temperature: float = 0.0,
                 stop: Sequence[str] = (), within: str | None = None,
                 shared_prefix: str = "") -> Reply:
        """Continue ``text`` as is (no chat template; a base model's few-shot prompt), with
        the same streaming, stopping and cancelling as :meth:`generate`.

        With ``within``, decoding is constrained to copy: every token must continue a
        contiguous run of ``within``'s tokens (tokenised after a space, as it follows
        ``Answer:``), or end the answer with a new line or end-of-sequence token. The answer is
        then a span of ``within`` (or empty).

        ``shared_prefix``: a leading part of ``text`` that many calls share (a template's
        worked examples). Its key/value cache is computed once, kept (the latest prefix only)
        and copied into each call, so only the rest of the prompt is prefilled; the output is
        the same. Ignored when ``text`` does not start with it or it does not tokenise as a
        prefix of ``text``.
        """
        allowed = None
        if within is not None:
            span_ids = self.tokenizer(" " + " ".join(within.split()),
                                      add_special_tokens=False)["input_ids"]
            allowed = copy_constraint(span_ids, self._end_ids())
        prefix = self._bos() + shared_prefix if shared_prefix and text.startswith(
            shared_prefix) else None
        return self._stream(self._bos() + text, max_new_tokens=max_new_tokens,
                            temperature=temperature, stop=stop, allowed=allowed, prefix=prefix)

    def _prefix_cache(self, prefix_ids: list[int]):
        """The model's key/value cache after ``prefix_ids`` (computed on first use, then
        kept for the latest prefix); callers copy it. Call with ``self._lock`` held."""
        import torch

        key = tuple(prefix_ids)
        if getattr(self, "_cached_prefix", (None,))[0] != key:
            ids = torch.tensor([prefix_ids], device=self.device)
            cache = cache_of(self.model(input_ids=ids, use_cache=True, logits_to_keep=1))
            self._cached_prefix = (key, cache)
        return self._cached_prefix[1]

    def score(self, prefixes: Sequence[str], continuation: str) -> list[float]:
        """Log-likelihood (natural log, summed over tokens) of ``continuation`` after each of
        ``prefixes``: one float per prefix. Each prefix is run on its own (no padding), and
        logits are kept only for the continuation's positions ``(1, len(continuation), vocab)``,
        so the cost is one prompt prefill per prefix.

        Raises:
            GenerationError: out of memory.
        """
        import torch

        target = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not target:
            return [0.0 for _ in prefixes]
        scores = []
        with self._lock, torch.inference_mode():
            for prefix in prefixes:
                ids = self.tokenizer(self._bos() + prefix, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([ids + target], device=self.device)
                try:
                    logits = self.model(input_ids=ids, logits_to_keep=len(target) + 1).logits
                except torch.OutOfMemoryError as exc:
                    raise GenerationError(f"out of memory scoring on {self.device}") from exc
                logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)
                picked = logp.gather(-1, ids[0, -len(target):, None])
                scores.append(float(picked.sum()))
        return scores

    def _end_ids(self) -> list[int]:
        """Token ids that end a one-line answer: any token holding a new line, and EOS."""
        if not hasattr(self, "_ends"):
            ends = {i for t, i in self.tokenizer.get_vocab().items() if "\n" in t or "Ċ" in t}
            if self.tokenizer.eos_token_id is not None:
                ends.add(self.tokenizer.eos_token_id)
            self._ends = sorted(ends)
        return self._ends

    decode_loop: str = "direct"
    """How :meth:`generate` and :meth:`complete` decode: ``direct``, through
    :meth:`BlockModel.decode <assistant.generation.blocks.BlockModel.decode>` (the decoder
    written out over the model's own modules, prompt-lookup drafting; 40-48 tokens/s for
    SmolLM2-135M on this 2-core CPU against 22 through ``generate()``), for the architectures
    it supports and generation settings it implements (:meth:`direct_decoding`), else
    ``generate``, transformers' own ``generate()``."""

    UNSUPPORTED_SETTINGS = ("no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
                            "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                            "sequence_bias", "forced_bos_token_id", "forced_eos_token_id",
                            "min_length", "min_new_tokens", "min_p", "typical_p",
                            "epsilon_cutoff", "eta_cutoff", "exponential_decay_length_penalty",
                            "guidance_scale", "watermarking_config", "diversity_penalty")
    """Settings of a model's ``generation_config`` the direct loop does not implement; a
    model that sets any of them (to anything but the library's neutral default) decodes
    through ``generate()``."""

    def direct_decoding(self) -> bool:
        """True when :meth:`generate` and :meth:`complete` decode in the direct loop: it is
        chosen (:attr:`decode_loop`), the architecture has a
        :class:`~assistant.generation.blocks.DirectDecoder`, and the model's generation
        config asks for nothing but end tokens, repetition penalty, temperature, top-k and
        top-p."""
        if self.decode_loop != "direct" or self.blocks.engine._direct is None:
            return False
        config = getattr(self.model, "generation_config", None)
        neutral = (None, 0, 1.0, [], False)
        return not any(getattr(config, name, None) not in neutral
                       for name in self.UNSUPPORTED_SETTINGS)

    def _eos_ids(self) -> list[int]:
        """Token ids that end a reply: the generation config's end token(s) (what
        ``generate()`` stops at) and the tokenizer's."""
        ends = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ends = set(ends if isinstance(ends, (list, tuple)) else [ends] if ends is not None
                   else [])
        if self.tokenizer.eos_token_id is not None:
            ends.add(self.tokenizer.eos_token_id)
        return sorted(ends)

    def _stream(self, prompt: str, *, max_new_tokens: int, temperature: float,
                stop: Sequence[str], allowed=None, prefix: str | None = None,
                over: tuple | None = None) -> Reply:
        import torch

        started = time.perf_counter()
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        stats = GenerationStats(prompt_tokens=len(ids))
        prefix_ids = None
        if prefix:
            prefix_ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
            if len(prefix_ids) >= len(ids) or ids[:len(prefix_ids)] != prefix_ids:
                prefix_ids = None  # tokenised differently inside the prompt: no reuse
        cancel = threading.Event()
        stop_now = threading.Event()  # cancel, or a stop string seen
        job = dict(ids=ids, prefix=prefix if prefix_ids else None,
                   prefix_tokens=len(prefix_ids or ()), max_new_tokens=max_new_tokens,
                   temperature=temperature, allowed=allowed, stats=stats,
                   end_ids=self._end_ids() if "\n" in stop else None,  # end at the new line
                   stopped=lambda: cancel.is_set() or stop_now.is_set())
        direct = self.direct_decoding()
        if over is not None:  # generate_over: only the direct loop reads blocks
            job["over"] = over

        def fragments() -> Iterator[str]:
            # The direct loop runs on the thread that iterates the reply: torch's OpenMP
            # kernels ran 1.6-2.8x slower on a second thread beside one that had already run
            # any (the embedder): each thread gets its own OpenMP pool, and with more pool
            # threads than cores libgomp's workers sleep between kernels instead of spinning
            # (BENCHMARKS.md, "Round 5"). generate() cannot be iterated, so it keeps a thread.
            pieces = self._direct_pieces(**job) if direct else self._generate_pieces(**job)
            cutter = StopStrings(stop)
            try:
                for piece in pieces:
                    if stop_now.is_set() and not cutter.stopped:
                        break
                    if stats.first_token_s is None and piece:
                        stats.first_token_s = time.perf_counter() - started
                    out = cutter.push(piece)
                    if out:
                        yield out
                    if cutter.stopped:
                        stop_now.set()
                        break
                tail = cutter.flush()
                if tail:
                    yield tail
            except torch.OutOfMemoryError as exc:
                raise GenerationError(f"out of memory generating on {self.device}") from exc
            except GenerationError:
                raise
            except Exception as exc:
                raise GenerationError(f"generation failed: {exc}") from exc
            finally:
                stop_now.set()
                pieces.close()  # ends the decoding (and its thread) before the stats are read
                stats.total_s = time.perf_counter() - started
                stats.cancelled = cancel.is_set()

        return Reply(fragments(), stats, cancel, stop_now)

    def _sampler(self, temperature: float):
        """The :class:`~assistant.generation.blocks.Sampler` for ``temperature`` (None:
        greedy), with the model's own top-k / top-p (transformers' defaults 50 / 1.0)."""
        if temperature <= 0:
            return None
        from .blocks import Sampler

        config = self.model.generation_config
        top_k = getattr(config, "top_k", None)
        top_p = getattr(config, "top_p", None)
        return Sampler(temperature, 50 if top_k is None else int(top_k),
                       1.0 if top_p is None else float(top_p))

    def _direct_pieces(self, *, ids, prefix, prefix_tokens, max_new_tokens, temperature,
                       end_ids, allowed, stats, stopped, over=None) -> Iterator[str]:
        """Text pieces of the reply, decoded in
        :meth:`BlockModel.steps <assistant.generation.blocks.BlockModel.steps>` on the calling
        thread: ``ids`` prefilled (after the cached ``prefix`` when given; with ``over``,
        ``(head, passages, labels, layout)``, after the head's cache and the blocks, see
        :meth:`generate_over`), then each token detokenised as it is kept; fills ``stats``.
        Holds the model's lock while it runs."""
        import torch
        from transformers import TextStreamer

        from .blocks import Row

        class Pieces(TextStreamer):
            """transformers' incremental detokenising (whole words, no broken characters)."""

            def __init__(self, tokenizer):
                super().__init__(tokenizer, skip_special_tokens=True)
                self.ready: list[str] = []

            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    self.ready.append(text)

        reader = self.blocks
        context = [reader.prefix(prefix)] if prefix else []  # takes the lock itself
        rest, positions, draft = ids[prefix_tokens:], list(range(prefix_tokens, len(ids))), ids
        if over is not None:
            context, start, passage_ids, tokens = self._over_context(over, stats)
            rest, positions = ids, list(range(start, start + len(ids)))
            draft = passage_ids + ids
            stats.prompt_tokens = tokens + len(ids)
            kept = self._prepared_part(over, ids)
            if kept is not None:  # the conversation so far, computed ahead of time
                context = context + [kept]
                rest, positions = rest[len(kept):], positions[len(kept):]
                stats.reused_tokens = len(kept)
        penalty = getattr(self.model.generation_config, "repetition_penalty", None) or 1.0
        text = Pieces(self.tokenizer)
        with self._lock:
            with torch.inference_mode():
                logits, new, _ = reader.engine.run(
                    [Row(context, rest, positions)], logits_at=[len(rest) - 1])
            steps = reader.engine.steps(
                context + new, logits[0, 0], max_new_tokens=max_new_tokens,
                end_ids=end_ids if end_ids is not None else self._eos_ids(), allowed=allowed,
                cancelled=stopped, draft_from=draft, sampler=self._sampler(temperature),
                penalty=float(penalty), stop_loops=False,
                screen=reader.screen() if self.screen_head else None)
            try:
                while True:
                    token = next(steps)
                    text.put(torch.tensor([token]))
                    yield from text.ready
                    text.ready.clear()
            except StopIteration as finished:
                done = finished.value
                stats.new_tokens = len(done.ids) + int(done.ended)
                stats.logprob = done.logprob
            finally:
                steps.close()
        text.end()
        yield from text.ready

    def _generate_pieces(self, *, ids, prefix, prefix_tokens, max_new_tokens, temperature,
                         end_ids, allowed, stats, stopped) -> Iterator[str]:
        """The same as :meth:`_direct_pieces` through transformers' ``generate()`` (any
        architecture, any generation setting), on a thread of its own."""
        import torch
        from transformers import (LogitsProcessor, LogitsProcessorList, StoppingCriteria,
                                  StoppingCriteriaList, TextIteratorStreamer)

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):  # noqa: ARG002
                return torch.full((input_ids.shape[0],), stopped(), dtype=torch.bool,
                                  device=input_ids.device)

        class _TokenLogprobs(LogitsProcessor):
            """Keeps the log-softmax of the last step, and adds the chosen token's value."""

            def __init__(self):
                self.last, self.total = None, 0.0

            def add(self, token: int) -> None:
                if self.last is not None:
                    self.total += float(self.last[token])

            def __call__(self, input_ids, scores):
                if self.last is not None:
                    self.add(int(input_ids[0, -1]))
                self.last = torch.log_softmax(scores[0].float(), dim=-1)
                return scores

        logprobs = _TokenLogprobs()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True,
                                        skip_special_tokens=True)
        input_ids = torch.tensor([ids], device=self.device)
        kwargs = dict(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            streamer=streamer, max_new_tokens=max_new_tokens,
            stopping_criteria=StoppingCriteriaList([_Stop()]),
            logits_processor=LogitsProcessorList([logprobs]),
            pad_token_id=self.pad_id,
        )
        if end_ids is not None:
            kwargs["eos_token_id"] = end_ids
        if allowed is not None:
            kwargs["prefix_allowed_tokens_fn"] = lambda _b, seq: allowed(seq[len(ids):].tolist())
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    if prefix:
                        kwargs[cache_argument(self.model)] = copy.deepcopy(
                            self._prefix_cache(ids[:prefix_tokens]))
                    out = self.model.generate(**kwargs)
                if out.shape[1] > len(ids):
                    logprobs.add(int(out[0, -1]))
                    stats.logprob = logprobs.total
                stats.new_tokens = int(out.shape[1]) - len(ids)
            except BaseException as exc:  # raised again on the reading thread
                failure.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, name="generate", daemon=True)
        thread.start()
        try:
            yield from streamer
        finally:
            thread.join()  # a reader that stops early has made ``stopped()`` true first
        if failure:
            raise failure[0]
