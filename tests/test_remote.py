"""Remote generation against a real OpenAI-compatible server (``transformers serve`` on the
embedded SmolLM2, with a bearer-key check: tests/servers/openai_server.py), started and
stopped by the tests on 127.0.0.1; no mock of the HTTP API."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from assistant.config import ConfigError, Settings
from assistant.dialogue import DialogueManager
from assistant.generation import GenerationError
from assistant.generation.remote import RemoteGenerator, api_key
from assistant.history import History
from index.ingest import Indexer
from index.retrieval import Retriever
from index.store import Store

SERVER = Path(__file__).parent / "servers" / "openai_server.py"
KEY = "test-key-123"
QUESTION = "Which NFL team won Super Bowl 50?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, key: str = KEY, timeout: float = 240.0):
    """Start the server; returns ``(process, api_base)`` once it answers.

    Raises:
        AssertionError: it did not come up within ``timeout`` seconds.
    """
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), model_dir, str(port), key],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    ready, said = threading.Event(), []

    def watch() -> None:
        for line in proc.stdout:  # uvicorn's access log comes here too: keep the pipe drained
            said.append(line)
            if line == "ready\n":
                ready.set()

    threading.Thread(target=watch, daemon=True).start()
    if not ready.wait(timeout):
        proc.kill()
        raise AssertionError(f"the OpenAI-compatible test server did not start in {timeout} s: "
                             + "".join(said[-5:]))
    return proc, f"http://127.0.0.1:{port}/v1"


def stop(proc) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def smol_dir(shared_data_dir) -> str:
    from assistant.models import generator_path

    return generator_path("SmolLM2-135M-Instruct", shared_data_dir / "models")


@pytest.fixture(scope="module")
def server(smol_dir):
    proc, api_base = start_server(smol_dir)
    yield api_base
    stop(proc)


def remote(api_base: str, smol_dir: str, key: str = KEY, **kw) -> RemoteGenerator:
    return RemoteGenerator(f"openai:{smol_dir}", api_base, key=key, key_source="$TEST_KEY",
                           key_env="TEST_KEY", **kw)


@pytest.fixture
def retriever(tmp_path, corpus_dir, fake_embedder):
    Indexer(tmp_path / "index", fake_embedder).run([corpus_dir])
    return Retriever(Store.open(tmp_path / "index"), fake_embedder)


def manager(tmp_path, retriever, generator, **kw) -> DialogueManager:
    return DialogueManager(retriever=retriever, generator=generator,
                           history=History(tmp_path / "history.db"), top_k=3,
                           context_tokens=700, **kw)


# ---- no server needed -------------------------------------------------------------------
def test_a_server_that_is_not_running_is_a_one_line_error_naming_it():
    api_base = f"http://127.0.0.1:{free_port()}/v1"
    gen = RemoteGenerator("openai:m", api_base, retries=0, timeout=5)
    with pytest.raises(GenerationError) as info:
        "".join(gen.generate([{"role": "user", "content": "hi"}]))
    message = str(info.value)
    assert api_base in message and "\n" not in message and "running" in message


def test_settings_need_an_api_base_and_a_model_name(tmp_path):
    env = {"ASSISTANT_CONFIG": str(tmp_path / "none.toml")}
    with pytest.raises(ConfigError, match="api_base"):
        Settings.load(env=env, overrides={"generator_model": "openai:qwen"})
    with pytest.raises(ConfigError, match="NAME"):
        Settings.load(env=env, overrides={"generator_model": "openai:", "api_base": "http://h/v1"})
    with pytest.raises(GenerationError, match="http"):
        RemoteGenerator("openai:m", "localhost:8000")
    s = Settings.load(env=env, overrides={"generator_model": "openai:qwen",
                                          "api_base": "http://127.0.0.1:8000/v1"})
    assert s.api_key_env == "OPENAI_API_KEY" and s.api_retries == 2


def test_the_key_comes_from_the_environment_and_is_never_shown(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from assistant.cli import cli, load_generator

    assert api_key("http://h/v1", "MY_KEY", env={"MY_KEY": "s3cret"}) == ("s3cret", "$MY_KEY")
    monkeypatch.setenv("MY_KEY", "s3cret")
    monkeypatch.setenv("ASSISTANT_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("ASSISTANT_API_KEY_ENV", "MY_KEY")
    args = ["--data-dir", str(tmp_path / "data"), "--model", "openai:qwen",
            "--api-base", "http://127.0.0.1:9/v1"]
    out = CliRunner().invoke(cli, args + ["info"])
    assert out.exit_code == 0, out.output
    assert "generation server: http://127.0.0.1:9/v1 (API key: $MY_KEY" in out.output
    assert "s3cret" not in out.output
    settings = Settings.load(overrides={"generator_model": "openai:qwen",
                                        "api_base": "http://127.0.0.1:9/v1"})
    gen = load_generator(settings)
    assert isinstance(gen, RemoteGenerator) and gen.model == "qwen"
    assert gen.has_chat_template and not gen.has_blocks and not hasattr(gen, "score")


# ---- against a real server --------------------------------------------------------------
@pytest.mark.slow
def test_a_remote_answer_streams_with_citations_into_history(tmp_path, retriever, server,
                                                            smol_dir):
    gen = remote(server, smol_dir)
    m = manager(tmp_path, retriever, gen, max_new_tokens=60)
    turn = m.ask(QUESTION)
    fragments = list(turn)
    assert len(fragments) > 3 and turn.status == "complete", turn.error
    assert turn.cited(), turn.answer  # the model's [n] or word overlap with a source
    assert "retrieval order" in turn.grounding and "word overlap" in turn.grounding
    stats = turn.reply.stats
    assert stats.prompt_tokens > 50 and stats.new_tokens > 3 and stats.first_token_s > 0
    row = m.history.turns(turn.conversation_id)[0]
    assert row["status"] == "complete" and row["answer"] == turn.answer
    assert any(s["cited"] for s in row["sources"])
    assert KEY not in str(row)


@pytest.mark.slow
def test_cancel_closes_the_stream_and_the_server_answers_the_next(tmp_path, retriever, server,
                                                                 smol_dir):
    m = manager(tmp_path, retriever, remote(server, smol_dir), max_new_tokens=200)
    turn = m.ask("Describe everything the passages say about Super Bowl 50, in detail.")
    got = []
    started = time.monotonic()
    for fragment in turn:
        got.append(fragment)
        if len(got) == 3:
            turn.cancel()
    assert time.monotonic() - started < 60
    assert turn.status == "cancelled" and turn.reply.stats.new_tokens < 50
    row = m.history.turns(turn.conversation_id)[0]
    assert row["status"] == "cancelled" and row["answer"] == turn.answer and turn.answer
    again = m.ask(QUESTION)
    assert "".join(again) and again.status == "complete"


@pytest.mark.slow
def test_a_wrong_key_is_a_one_line_error_and_the_question_is_kept(tmp_path, retriever, server,
                                                                  smol_dir):
    m = manager(tmp_path, retriever, remote(server, smol_dir, key="wrong"))
    turn = m.ask(QUESTION)
    with pytest.raises(GenerationError) as info:
        list(turn)
    message = str(info.value)
    assert "refused the API key from $TEST_KEY (401)" in message and server in message
    assert "wrong" not in message and "\n" not in message
    row = m.history.turns(turn.conversation_id)[0]
    assert row["question"] == QUESTION and row["status"] == "error" and "401" in row["error"]


@pytest.mark.slow
async def test_the_app_streams_a_remote_answer_cancels_with_escape_and_survives_a_killed_server(
        tmp_path, smol_dir):
    from textual.widgets import Static

    from assistant.tui.widgets import AnswerView
    from tests.chat_app import ask, make_app, wait_for

    proc, api_base = start_server(smol_dir)
    try:
        gen = remote(api_base, smol_dir)
        app = make_app(tmp_path, gen)
        answers = lambda: list(app.query(AnswerView))  # noqa: E731
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.manager is not None)
            app.manager.max_new_tokens = 48
            await ask(pilot, QUESTION)
            await wait_for(pilot, lambda: answers() and answers()[0].status != "pending",
                           timeout=120)
            first = answers()[0]
            assert first.status == "complete" and "[" in first.text
            assert "retrieval order" in app.status.last

            app.manager.max_new_tokens = 400
            await ask(pilot, "Tell me everything about the game, at length.")
            await wait_for(pilot, lambda: len(answers()) == 2 and len(answers()[1].text) > 10,
                           timeout=120)
            await pilot.press("escape")
            second = answers()[1]
            await wait_for(pilot, lambda: second.status == "cancelled", timeout=30)

            await ask(pilot, "Tell me everything about the halftime show, at length.")
            await wait_for(pilot, lambda: len(answers()) == 3 and len(answers()[2].text) > 10,
                           timeout=120)
            proc.kill()  # the server dies mid-answer
            third = answers()[2]
            await wait_for(pilot, lambda: third.status != "pending", timeout=60)
            note = str(third.query_one(".answer-notes", Static).render())
            assert third.status == "error" and "stopped mid-answer" in note
            rows = app.history.turns(app.conversation_id)
            assert [r["status"] for r in rows] == ["complete", "cancelled", "error"]
            assert rows[2]["answer"] and rows[2]["answer"] == third.text  # the partial is kept
    finally:
        stop(proc)
