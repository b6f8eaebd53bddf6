"""A generator on another machine: any server that speaks the OpenAI-compatible chat API
(vLLM, llama.cpp's server, Ollama, TGI, ``transformers serve``).

This is the only module that imports the ``openai`` client. Retries with exponential backoff
on connection errors, 408/409/429 and 5xx answers (honouring ``Retry-After``) are the client's
own (``max_retries``: 0.5 s doubling to at most 8 s, with jitter; see openai-python's
``_base_client``). What needs the model's internals is not offered: no ``score`` (so no
query-likelihood reranking: passages keep their retrieval order), no passage blocks (so no
attention citations or abstention: citations come from the model's own ``[n]`` markers and
word overlap, :mod:`assistant.attribution`).
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Iterator, Sequence
from urllib.parse import urlsplit

from ..config import REMOTE_PREFIX, is_remote
from . import GenerationError, GenerationStats, Message, Reply

KEYRING_SERVICE = "assistant"
"""The system keyring's service name for API keys (the user name is the API base URL):
``keyring set assistant http://host:8000/v1``."""

CHARS_PER_TOKEN = 3.0
"""Characters per token assumed when counting without the server's tokenizer: English
averages about 4 characters per token with BPE vocabularies of 32k-150k entries (OpenAI's
tokenizer guide); 3 errs towards shorter prompts, so they fit the model's window."""


def api_key(api_base: str, env_name: str, env=None) -> tuple[str, str]:
    """The API key for ``api_base`` and where it came from: the environment variable
    ``env_name``, else the system keyring (service :data:`KEYRING_SERVICE`, user
    ``api_base`` without a trailing slash), else none (local servers usually check no key).

    Returns:
        ``(key, source)``; source is ``$NAME``, ``keyring`` or ``none`` (the key is
        ``"none"`` then: the client needs some value). The key itself is never logged.
    """
    env = os.environ if env is None else env
    if env_name and env.get(env_name):
        return env[env_name], f"${env_name}"
    try:
        import keyring
        from keyring.errors import KeyringError

        try:
            stored = keyring.get_password(KEYRING_SERVICE, api_base.rstrip("/"))
        except (KeyringError, RuntimeError, OSError):
            stored = None  # no usable keyring backend (a headless machine)
    except ImportError:
        stored = None
    if stored:
        return stored, "keyring"
    return "none", "none"


class RemoteGenerator:
    """Streams chat completions from an OpenAI-compatible server.

    Args:
        name: ``openai:NAME`` (:data:`~assistant.config.REMOTE_PREFIX`); NAME is sent as
            the request's ``model``.
        api_base: the server's API root, e.g. ``http://127.0.0.1:8000/v1``.
        key: the API key (see :func:`api_key`); sent as a bearer token, nowhere else.
        key_source: where the key came from (``$NAME``, ``keyring`` or ``none``), and
        key_env: the variable it is read from, for the message when the server refuses it.
        timeout: seconds to wait for the connection and for each read of the stream.
        retries: retries of a request that failed to connect or got 408/409/429/5xx.
        context_window: the model's window in tokens (the server does not say it).

    Raises:
        GenerationError: ``api_base`` is not an http(s) URL.
    """

    has_chat_template = True
    has_blocks = False

    def __init__(self, name: str, api_base: str, *, key: str = "none", key_source: str = "none",
                 key_env: str = "OPENAI_API_KEY", timeout: float = 60.0, retries: int = 2,
                 context_window: int = 32768):
        import openai

        parts = urlsplit(api_base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise GenerationError(f"api_base must be an http(s) URL such as "
                                  f"http://127.0.0.1:8000/v1, not {api_base!r}")
        self.name = name
        self.model = name[len(REMOTE_PREFIX):] if is_remote(name) else name
        self.api_base = api_base.rstrip("/")
        self.device = self.api_base
        self.context_window = context_window
        self.key_source, self.key_env = key_source, key_env
        self._openai = openai
        self._client = openai.OpenAI(base_url=self.api_base, api_key=key or "none",
                                     timeout=timeout, max_retries=retries)

    def count_tokens(self, text: str) -> int:
        """Estimated tokens in ``text`` (:data:`CHARS_PER_TOKEN`; the tokenizer is remote)."""
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Estimated tokens of ``messages`` once the server applies its chat template (4 per
        message for the role markers)."""
        return sum(self.count_tokens(m["content"]) + 4 for m in messages)

    def complete(self, text: str, *, max_new_tokens: int = 32, temperature: float = 0.0,
                 stop: Sequence[str] = (), within: str | None = None,
                 shared_prefix: str = "") -> Reply:
        """Not offered: a remote chat model answers as chat (``prompt_style = chat``).

        Raises:
            GenerationError: always.
        """
        raise GenerationError(f"{self.name} is a chat model on a server: set prompt_style = "
                              "\"chat\" (extractive reading needs a local model)")

    def generate(self, messages: Sequence[Message], *, max_new_tokens: int = 256,
                 temperature: float = 0.0, stop: Sequence[str] = ()) -> Reply:
        """Start a streamed chat completion; returns at once. The request is sent when the
        reply is first iterated. ``cancel()`` (any thread) closes the HTTP stream, so the
        server stops generating.

        Errors surface while iterating, as :class:`GenerationError` with one line that names
        the server: not reachable, key refused, unknown model, an error status, or the
        connection lost mid-answer (the text so far was already yielded).
        """
        stats = GenerationStats(prompt_tokens=self.prompt_tokens(messages))
        cancel = _ClosingEvent()
        stop_event = threading.Event()
        request = dict(model=self.model, messages=list(messages), stream=True,
                       max_tokens=max_new_tokens, temperature=temperature,
                       stream_options={"include_usage": True})
        if stop:
            request["stop"] = list(stop)[:4]  # the API's limit

        def fragments() -> Iterator[str]:
            started = time.perf_counter()
            stream = None
            try:
                if cancel.is_set():
                    return
                try:
                    stream = self._client.chat.completions.create(**request)
                except self._openai.OpenAIError as exc:
                    raise self._error(exc) from None
                cancel.on_set(stream.close)
                for chunk in stream:
                    if chunk.usage is not None:
                        stats.prompt_tokens = chunk.usage.prompt_tokens or stats.prompt_tokens
                        stats.new_tokens = chunk.usage.completion_tokens or stats.new_tokens
                    text = chunk.choices[0].delta.content if chunk.choices else None
                    if text:
                        if stats.first_token_s is None:
                            stats.first_token_s = time.perf_counter() - started
                        stats.new_tokens += 1  # chunks; the usage chunk corrects it
                        yield text
                    if cancel.is_set() or stop_event.is_set():
                        break
            except GenerationError:
                raise
            except Exception as exc:  # the stream broke (server gone, closed by cancel)
                if not cancel.is_set():
                    raise GenerationError(
                        f"the generation server at {self.api_base} stopped mid-answer "
                        f"({_one_line(exc)})") from None
            finally:
                if stream is not None:
                    stream.close()
                stats.total_s = time.perf_counter() - started
                stats.cancelled = cancel.is_set()

        return Reply(fragments(), stats, cancel, stop_event)

    def _error(self, exc: Exception) -> GenerationError:
        """A one-line message for a failed request, naming the server (never the key)."""
        o = self._openai
        where = f"the generation server at {self.api_base}"
        if isinstance(exc, o.APITimeoutError):
            return GenerationError(f"{where} did not answer in time")
        if isinstance(exc, o.APIConnectionError):
            return GenerationError(f"cannot reach {where}: is it running?")
        if isinstance(exc, o.AuthenticationError):
            if self.key_source == "none":
                return GenerationError(f"{where} needs an API key (401): set ${self.key_env} or "
                                       f"run `keyring set {KEYRING_SERVICE} {self.api_base}`")
            return GenerationError(f"{where} refused the API key from {self.key_source} (401)")
        if isinstance(exc, o.NotFoundError):
            return GenerationError(f"{where} has no model {self.model!r} or no chat API "
                                   f"(404): {_detail(exc)}")
        if isinstance(exc, o.APIStatusError):
            return GenerationError(f"{where} answered {exc.status_code}: {_detail(exc)}")
        return GenerationError(f"{where}: {_one_line(exc)}")


class _ClosingEvent(threading.Event):
    """A cancel flag that also runs a callback when set (closing the HTTP stream, which
    unblocks a read waiting for the next token)."""

    def __init__(self):
        super().__init__()
        self._callbacks = []

    def on_set(self, callback) -> None:
        self._callbacks.append(callback)
        if self.is_set():
            callback()

    def set(self) -> None:
        super().set()
        for callback in self._callbacks:
            try:
                callback()
            except Exception:  # closing an already broken stream
                pass


def _detail(exc) -> str:
    """The server's own explanation in an error answer, on one line."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") or inner.get("detail") if isinstance(inner, dict) else inner
        if message:
            return _one_line(message)
    return _one_line(getattr(exc, "message", exc))


def _one_line(value) -> str:
    text = " ".join(str(value).split())
    return text[:300] or type(value).__name__
