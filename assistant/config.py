"""One frozen settings object: defaults < config file < ``ASSISTANT_*`` environment < flags.

The config file is TOML at ``$ASSISTANT_CONFIG`` or ``<user config dir>/assistant/config.toml``,
with the field names below as top-level keys (and a ``[keys]`` table for TUI bindings)::

    generator_model = "HuggingFaceTB/SmolLM2-360M-Instruct"
    top_k = 8
    [keys]
    new_chat = "ctrl+n"

Environment variables are the upper-cased field names with an ``ASSISTANT_`` prefix
(``ASSISTANT_TOP_K=8``). Nothing is read at import time.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

APP_NAME = "assistant"
MAX_TOP_K = 100
"""Most passages one question may retrieve (the ``-k`` flag has the same bound)."""
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,2})?")


REMOTE_PREFIX = "openai:"
"""A ``generator_model`` with this prefix is served remotely (``openai:NAME``: NAME as the
OpenAI-compatible server at ``api_base`` calls it; :mod:`assistant.generation.remote`)."""

OUTPUT_HEADS = ("full", "screened", "passages")
"""How the extractive reader's free readings compute logits (see :attr:`Settings.output_head`)."""

PRECISIONS = ("auto", "fp32", "fp16", "mixed", "bf16", "int8", "int4")
"""The generator precisions (see :attr:`Settings.precision`)."""


def is_remote(model: str) -> bool:
    """True when ``model`` names a model on an OpenAI-compatible server (``openai:NAME``)."""
    return model.startswith(REMOTE_PREFIX)


class ConfigError(Exception):
    """A setting has a bad value or the config file cannot be read; ``str()`` is one line."""


def _default_data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME))


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$ASSISTANT_CONFIG`` or the platform's user config dir + ``assistant/config.toml``."""
    env = os.environ if env is None else env
    if env.get("ASSISTANT_CONFIG"):
        return Path(env["ASSISTANT_CONFIG"]).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP_NAME)) / "config.toml"


@dataclass(frozen=True)
class Settings:
    """Everything the assistant can be configured with."""

    data_dir: Path = field(default_factory=_default_data_dir)
    """Where the index, history, converted models and bundled corpus live."""

    index_dir: Path | None = None
    """The index directory; default ``<data_dir>/index``."""

    embedding_model: str = "all-MiniLM-L6-v2"
    """Sentence-transformers model: the embedded default name, a local directory or a hub id."""

    embedding_runtime: str = "auto"
    """How passages are embedded: ``torch`` (sentence-transformers), ``onnx-int8`` (ONNX
    Runtime, int8 weights made locally once), ``onnx-fp32`` (ONNX Runtime, fused float32) or
    ``auto`` (the measured choice: BENCHMARKS.md, "Embedding runtimes"). Questions are always
    embedded with the runtime the index was built with; changing it re-embeds the index."""

    generator_model: str = "gemma-3-270m"
    """Decoder model: an embedded name (``gemma-3-270m``, ``SmolLM2-135M-Instruct``), a local
    directory, a Hugging Face hub id, or ``openai:NAME`` for model NAME on an
    OpenAI-compatible server at ``api_base`` (vLLM, llama.cpp's server, Ollama, TGI)."""

    api_base: str = ""
    """With ``generator_model = "openai:NAME"``: the server's API root, e.g.
    ``http://127.0.0.1:8000/v1`` (required: the assistant never sends your documents
    anywhere you did not name)."""

    api_key_env: str = "OPENAI_API_KEY"
    """The environment variable holding the server's API key; when it is unset the system
    keyring is asked (``keyring set assistant API_BASE``), else no key is sent. The key is
    never written to the config, history or logs."""

    api_timeout: float = 60.0
    """Seconds to wait for the server to connect, and for each next piece of an answer."""

    api_retries: int = 2
    """Retries of a request that could not connect or got 408, 409, 429 or 5xx, with
    exponential backoff (0.5 s doubling, at most 8 s; the server's Retry-After honoured)."""

    prompt_style: str = "auto"
    """``chat`` (instruction models), ``extractive`` (base models: few-shot span answers) or
    ``auto`` (extractive when the model has no chat template)."""

    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""

    serve_idle_minutes: float = 10.0
    """When above 0, an ``assistant ask`` typed at a terminal, or the chat, starts an answer
    server (``assistant serve``) if none is up and answers through it; the server keeps the
    models loaded until no question came for this many minutes (an open chat keeps it up), as
    Ollama keeps a model warm (its default is 5). 0: ``ask`` and the chat use a server only
    when one was started by hand. Scripts (no terminal on either end) never start one."""

    precision: str = "auto"
    """The generator's weights: ``auto`` (what measured fastest with the same answers:
    ``mixed`` on an x86 CPU with bfloat16 arithmetic, float16 weights on other x86 CPUs,
    bfloat16 on CUDA, float32 elsewhere), ``fp32``, ``fp16`` (on a CPU: float16 weights,
    float32 arithmetic; on CUDA: float16), ``mixed`` (CPU: ``fp16`` for decoding, bfloat16 for
    prefill products; needs AVX512-BF16 or AMX), ``bf16``, ``int8`` (on
    a CPU: faster, but its quantized activations change a base model's answers, see
    BENCHMARKS.md) or ``int4`` (CUDA with torchao; int8 on a GPU needs torchao too)."""

    top_k: int = 5
    """Passages retrieved per question and shown as numbered sources."""

    retrieval_mode: str = "convex"
    """``convex`` (dense + BM25 scores, min-max normalised, weighted by ``fusion_alpha``),
    ``hybrid`` (reciprocal rank fusion), ``dense`` or ``bm25``."""

    fusion_alpha: float = 0.5
    """Weight of dense scores in ``convex`` fusion (0 = BM25 only, 1 = dense only)."""

    rerank_k: int = 5
    """The top passages re-ordered by the generator's likelihood of the question after each
    (query-likelihood reranking, one prompt prefill per passage); 0 turns it off. A chat
    model over passage blocks (``reader = "blocks"``) keeps the retrieval order."""

    rerank_first: int = 0
    """With ``reader = "blocks"``, for a factoid (a span read from one passage): when above 0,
    encode and score only this many top passages at first, and the rest of the top
    ``rerank_k`` only when those explain the question poorly (see ``assistant/reader.py``,
    ``RERANK_MORE_BELOW``). With 2, the median SQuAD dev answer took 1.33 s instead of 2.60 s
    on a 2-core CPU, but token F1 was 1.0 lower on the reported 300 questions (0.5 higher on
    150 others; BENCHMARKS.md), so 0 (all at once) stays the default. Other answer forms quote
    sentences from several passages and always score all."""

    read_k: int = 3
    """Extractive answers (base models): how many of the reranked top passages may be read;
    the answer kept has the best reranked score plus answer confidence. 1 reads only the top
    passage (fastest)."""

    reader: str = "blocks"
    """How passages reach the generator: ``blocks`` (each passage's key/value cache computed
    once and reused; base models rerank, read and cite over the blocks and can abstain;
    instruction models write their answer attending over them, in retrieval order, with
    attention support per source and per sentence) or ``text`` (passages as prompt text,
    prefilled at each step: the earlier pipeline, kept for comparison)."""

    read_mode: str = "each"
    """With ``reader = "blocks"``: ``each`` reads the reranked passages one at a time and keeps
    the best answer; ``fused`` reads once with the question attending over the top
    ``read_k`` passages together."""

    abstain_threshold: float = 0.45
    """With ``reader = "blocks"``: answer "I could not find this in your documents" when the
    estimated probability that the passages hold the answer is below this; 0 never
    abstains. 0.45: the best cross-validated abstention F1 on the calibration questions
    among thresholds abstaining on at most 3 % of the answerable ones
    (:data:`assistant.reader.ABSTAIN`)."""

    answer_forms: bool = True
    """With ``reader = "blocks"``: shape each answer for its question form (a span for
    who/when/which; cited sentences for how/why, definitions, comparisons, lists, yes/no
    and summaries, see ``assistant/forms.py``); false gives every question a span."""

    output_head: str = "screened"
    """With ``reader = "blocks"``: ``passages`` computes, at each step of an extractive
    reading, only the logits of tokens its passages and question contain (Gemma 3's head has
    262,144 rows, a reading ~1,000): faster decoding, but 8–16 % of answers on SQuAD dev
    changed (a free reading may write a token its passages lack; token F1 stayed level);
    ``full`` computes the whole vocabulary's; ``screened`` takes every step's logits from a
    4-bit copy of the head and computes exactly the rows that could be chosen (the same
    tokens as ``full``, the log-probability's normaliser approximate; on a CPU with the
    PyTorch int4 kernel, for heads of at least 64 M weights, else ``full``; a chat model's
    greedy replies in the direct decoding loop use it too; the default: the same
    answers as ``full`` on 300 SQuAD dev questions and the question set's tune split, a
    decoding step 17–20 % faster on this project's 2-core Xeon, BENCHMARKS.md "Round 7"). A
    copy-constrained re-reading computes only its passage's tokens either way (exactly the
    same answer)."""

    chunk_tokens: int = 200
    """Passage size budget in embedder tokens (MiniLM reads at most 256)."""

    chunk_overlap: int = 40
    """Tokens repeated between consecutive passages of a section."""

    max_file_mb: float = 50.0
    """Files larger than this (MiB) are skipped by `index`."""

    checkpoint_seconds: float = 20.0
    """A long `index` run publishes what it has done (new text searchable, embeddings so far)
    at least this often, in seconds; a killed run loses at most this much work."""

    max_new_tokens: int = 256
    """Longest answer, in generator tokens."""

    context_tokens: int = 2048
    """Prompt budget in generator tokens (system + history + passages + question), capped by
    the model's own context window minus ``max_new_tokens``."""

    history_tokens: int = 512
    """Part of the prompt budget given to earlier turns of the conversation."""

    temperature: float = 0.0
    """0 decodes greedily; above 0 samples."""

    keys: Mapping[str, str] = field(default_factory=dict)
    """TUI key bindings by action name, overriding the defaults (see README)."""

    @property
    def index_path(self) -> Path:
        """The effective index directory."""
        return Path(self.index_dir) if self.index_dir else Path(self.data_dir) / "index"

    @property
    def history_path(self) -> Path:
        """The SQLite file holding conversations."""
        return Path(self.data_dir) / "history.db"

    @property
    def models_dir(self) -> Path:
        """Converted (safetensors) copies of embedded models."""
        return Path(self.data_dir) / "models"

    @property
    def prefix_cache_dir(self) -> Path:
        """Per-model files computed once and kept: the worked examples' key/value caches and
        the int4 copy of an output head (see ``assistant.generation.blocks.PrefixStore``)."""
        return self.models_dir / "prefix-cache"

    @classmethod
    def load(
        cls,
        *,
        config_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> "Settings":
        """Build settings from defaults, the config file, the environment and ``overrides``
        (flags; None values are ignored).

        Raises:
            ConfigError: unreadable TOML, an unknown key, or a value of the wrong type.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = config_path or default_config_path(env)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder, not a TOML file")
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read config file {path}: {exc}") from exc
            for key, value in data.items():
                values[key] = value
        elif config_path is not None:
            raise ConfigError(f"config file {config_path} does not exist")
        names = {f.name for f in fields(cls)}
        for name in names - {"keys"}:
            raw = env.get(f"ASSISTANT_{name.upper()}")
            if raw not in (None, ""):
                values[name] = raw
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = value
        unknown = set(values) - names
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(names))})")
        return cls(**{k: _coerce(cls, k, v) for k, v in values.items()}).validated()

    def validated(self) -> "Settings":
        """Check ranges; returns self.

        Raises:
            ConfigError: a value out of range.
        """
        if self.retrieval_mode not in ("convex", "hybrid", "dense", "bm25"):
            raise ConfigError(f"retrieval_mode must be convex, hybrid, dense or bm25, not {self.retrieval_mode!r}")
        if self.embedding_runtime not in ("auto", "torch", "onnx-int8", "onnx-fp32"):
            raise ConfigError("embedding_runtime must be auto, torch, onnx-int8 or onnx-fp32, "
                              f"not {self.embedding_runtime!r}")
        if self.prompt_style not in ("auto", "chat", "extractive"):
            raise ConfigError(f"prompt_style must be auto, chat or extractive, not {self.prompt_style!r}")
        if not 0 <= self.fusion_alpha <= 1:
            raise ConfigError("fusion_alpha must be between 0 and 1")
        if self.reader not in ("blocks", "text"):
            raise ConfigError(f"reader must be blocks or text, not {self.reader!r}")
        if self.read_mode not in ("each", "fused"):
            raise ConfigError(f"read_mode must be each or fused, not {self.read_mode!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be {', '.join(PRECISIONS[:-1])} or "
                              f"{PRECISIONS[-1]}, not {self.precision!r}")
        if not 0 <= self.serve_idle_minutes <= 7 * 24 * 60:
            raise ConfigError("serve_idle_minutes must be between 0 and 10080 (a week)")
        if is_remote(self.generator_model):
            if self.generator_model == REMOTE_PREFIX:
                raise ConfigError("generator_model openai:NAME needs the NAME the server uses")
            if not self.api_base:
                raise ConfigError(f"generator_model {self.generator_model} needs api_base, "
                                  "e.g. --api-base http://127.0.0.1:8000/v1")
        if not 0 < self.api_timeout <= 3600 or not 0 <= self.api_retries <= 10:
            raise ConfigError("api_timeout must be 0..3600 seconds and api_retries 0..10")
        if self.output_head not in OUTPUT_HEADS:
            raise ConfigError(f"output_head must be {', '.join(OUTPUT_HEADS[:-1])} or "
                              f"{OUTPUT_HEADS[-1]}, not {self.output_head!r}")
        if not 0 <= self.abstain_threshold <= 1:
            raise ConfigError("abstain_threshold must be between 0 and 1")
        if self.rerank_k < 0:
            raise ConfigError("rerank_k must be 0 (off) or more")
        if self.rerank_first < 0:
            raise ConfigError("rerank_first must be 0 (all at once) or more")
        if self.read_k < 1:
            raise ConfigError("read_k must be at least 1")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ConfigError(f"top_k must be between 1 and {MAX_TOP_K}")
        if not 0 <= self.rerank_k <= MAX_TOP_K or self.read_k > MAX_TOP_K:
            raise ConfigError(f"rerank_k and read_k must be at most {MAX_TOP_K}")
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, not {self.device!r}")
        if not 0 <= self.temperature <= 10:
            raise ConfigError("temperature must be between 0 (greedy) and 10")
        if not 0 <= self.checkpoint_seconds <= 86400:
            raise ConfigError("checkpoint_seconds must be between 0 and 86400")
        if not 0 < self.max_file_mb <= 1024:
            raise ConfigError("max_file_mb must be above 0 and at most 1024")
        if self.chunk_tokens > 100_000 or self.history_tokens < 0:
            raise ConfigError("chunk_tokens must be at most 100000 and history_tokens >= 0")
        if not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise ConfigError("need 0 <= chunk_overlap < chunk_tokens")
        if not 1 <= self.max_new_tokens <= 8192 or not 64 <= self.context_tokens <= 1_048_576:
            raise ConfigError("max_new_tokens must be 1..8192 and context_tokens 64..1048576")
        return self

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes).validated()


def make_private(settings: "Settings") -> list[Path]:
    """Owner-only permissions for what holds documents and conversations: the data dir and
    index dir (0700) and the history and index files (0600). Sets the process umask to 077
    so files made later are private too. Nothing is created.

    Returns:
        The paths whose permissions were changed (empty when all were private already).
    """
    os.umask(0o077)
    changed: list[Path] = []

    def fix(path: Path, mode: int) -> None:
        try:
            if path.exists() and path.stat().st_mode & 0o077:
                os.chmod(path, mode)
                changed.append(path)
        except OSError:
            pass  # not ours to change (e.g. a shared read-only index): leave it

    index = settings.index_path
    fix(Path(settings.data_dir), 0o700)
    fix(index, 0o700)
    history = settings.history_path
    for path in (history, Path(f"{history}-wal"), Path(f"{history}-shm")):
        fix(path, 0o600)
    if index.is_dir():
        for gen in index.glob("gen-*"):
            fix(gen, 0o700)
            for name in ("passages.db", "passages.faiss"):
                fix(gen / name, 0o600)
        for name in ("CURRENT", "lock"):
            fix(index / name, 0o600)
    return changed


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
"""How a switch may be written in the environment (``ASSISTANT_ANSWER_FORMS=false``)."""


def _coerce(cls: type, name: str, value: Any) -> Any:
    kind = {f.name: f for f in fields(cls)}[name].type
    try:
        if name in ("data_dir", "index_dir"):
            if not isinstance(value, (str, Path)) or not str(value).strip() or "\0" in str(value):
                raise TypeError(f"expected a folder path, got {value!r}")
            return Path(str(value)).expanduser()
        if name == "keys":
            if not isinstance(value, Mapping):
                raise TypeError("keys must be a table of action = key")
            return {str(k): str(v) for k, v in value.items()}
        if kind == "bool":
            if isinstance(value, bool):
                return value
            word = str(value).strip().lower() if isinstance(value, (str, int)) else None
            if word in _TRUE or word in _FALSE:
                return word in _TRUE
            raise TypeError(f"expected true or false, got {value!r}")
        if kind == "int":
            if isinstance(value, (float, bool)) or not isinstance(value, (int, str)):
                raise TypeError(f"expected an integer, got {value!r}")
            number = int(value)
            if abs(number) > 2**53:
                raise ValueError(f"{number} is out of range")
            return number
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError(f"expected a number, got {value!r}")
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"expected a finite number, got {value!r}")
            return number
        if not isinstance(value, (str, int, float)):
            raise TypeError(f"expected text, got {value!r}")
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: {exc}") from exc
