"""The answer server: a real Unix socket, the CLI's own request handler over a dialogue manager
(real FAISS and SQLite, scripted generator), and, in the slow subset, `assistant serve` with the
embedded models answering `assistant ask` as the in-process path does."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from assistant import serve
from assistant.cli import cli, serve_handler
from assistant.config import Settings
from assistant.dialogue import DialogueManager
from assistant.history import History
from index.ingest import Indexer
from index.retrieval import Retriever
from index.store import Store
from tests.conftest import FakeGenerator


class Running:
    """``serve.serve`` in a thread; ``.join()`` waits for it to return."""

    def __init__(self, settings, handle, idle_s: float = 0):
        self.ready = threading.Event()
        self.thread = threading.Thread(target=serve.serve, args=(settings, handle), kwargs={
            "idle_s": idle_s, "on_ready": lambda path: self.ready.set()}, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def join(self, timeout: float = 10) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


def scripted_manager(tmp_path, corpus_dir, fake_embedder) -> DialogueManager:
    """A dialogue manager over a real index of ``corpus_dir`` with a slow scripted generator."""
    Indexer(tmp_path / "index", fake_embedder).run([corpus_dir])
    generator = FakeGenerator(["The Denver ", "Broncos ", "won. "] + ["more "] * 200, delay=0.01)
    return DialogueManager(retriever=Retriever(Store.open(tmp_path / "index"), fake_embedder),
                           generator=generator, history=History(tmp_path / "history.db"),
                           top_k=3)


@pytest.fixture
def served(tmp_path, corpus_dir, fake_embedder):
    """Settings, a manager over a real index with a slow scripted generator, and its server."""
    settings = Settings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir()
    manager = scripted_manager(tmp_path, corpus_dir, fake_embedder)
    server = Running(settings, serve_handler(manager, settings))
    yield settings, manager, server
    serve.stop(settings)
    server.join()


def test_the_socket_is_owner_only_and_answers_stream_then_end(served):
    settings, manager, _ = served
    path = serve.socket_path(settings)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    conn = serve.connect(settings)
    with conn:
        messages = list(serve.ask(conn, settings, {"question": "Who won Super Bowl 50?",
                                                   "max_new_tokens": 3}))
    fragments = [m["fragment"] for m in messages if "fragment" in m]
    assert "".join(fragments).startswith("The Denver Broncos won.")
    end = messages[-1]["end"]
    assert end["sources"].startswith("Sources:") and "conversation" in end["status"]
    assert manager.max_new_tokens == 256  # a request's overrides do not outlive it
    turns = manager.history.turns(manager.history.conversations()[0]["id"])
    assert turns[-1]["status"] == "complete"


def test_the_server_prepares_a_follow_up_after_the_answer_went_out(served):
    settings, manager, _ = served
    prepared = threading.Event()
    seen = []
    manager.prepare_follow_up = lambda turn: (seen.append((turn.question, turn.status)),
                                              prepared.set())
    with serve.connect(settings) as conn:
        messages = list(serve.ask(conn, settings, {"question": "Who won Super Bowl 50?",
                                                   "max_new_tokens": 3}))
    assert "end" in messages[-1]
    assert prepared.wait(10) and seen == [("Who won Super Bowl 50?", "complete")]


def test_json_requests_get_the_turn_object(served):
    settings, manager, _ = served
    with serve.connect(settings) as conn:
        messages = list(serve.ask(conn, settings, {"question": "Who won?", "json": True,
                                                   "max_new_tokens": 2}))
    data = messages[-1]["end"]["json"]
    assert data["question"] == "Who won?" and data["status"] == "complete"
    assert data["answer"].startswith("The Denver Broncos")


def test_errors_are_one_line_and_the_server_goes_on(served):
    settings, _, _ = served
    with serve.connect(settings) as conn:
        with pytest.raises(serve.ServerError, match="no conversation"):
            list(serve.ask(conn, settings, {"question": "Who won?", "conversation": "zzzz"}))
    with serve.connect(settings) as conn:  # the next request is answered
        assert list(serve.ask(conn, settings, {"question": "Who won?", "max_new_tokens": 1}))


def test_other_settings_are_refused(served):
    settings, _, _ = served
    other = settings.replace(top_k=7, fusion_alpha=0.9)
    with serve.connect(other) as conn:
        with pytest.raises(serve.SettingsMismatch, match="other settings"):
            list(serve.ask(conn, other, {"question": "Who won?"}))


def test_a_client_that_leaves_mid_answer_cancels_it_and_the_turn_is_kept(served):
    settings, manager, _ = served
    conn = serve.connect(settings)
    answer = serve.ask(conn, settings, {"question": "Who won Super Bowl 50?"})
    assert next(answer)["start"]["sources"]  # the passages retrieved, before any fragment
    got = [next(answer) for _ in range(3)]
    assert all("fragment" in m for m in got)
    answer.close()  # the client goes (as a process on Ctrl-C does)
    conn.close()
    conversation = manager.history.conversations()[0]["id"]
    deadline = time.monotonic() + 10
    while manager.history.turns(conversation)[-1]["status"] == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    row = manager.history.turns(conversation)[-1]
    assert row["status"] == "cancelled"
    assert row["answer"].startswith("The Denver Broncos") and len(row["answer"]) < 400


def test_a_server_of_another_version_answers_nothing_and_stops(served, monkeypatch):
    settings, manager, server = served
    monkeypatch.setattr(serve, "code_version", lambda: "edited since")  # the client's code
    with serve.connect(settings) as conn:
        with pytest.raises(serve.StaleServer, match="another version"):
            list(serve.ask(conn, settings, {"question": "Who won?"}))
    assert serve.wait_stopped(settings) and server.join()
    assert not manager.history.conversations()


def test_ask_at_a_terminal_starts_a_server_on_demand_and_a_script_does_not(
        tmp_path, corpus_dir, fake_embedder, monkeypatch):
    from assistant import cli as cli_module

    manager = scripted_manager(tmp_path, corpus_dir, fake_embedder)
    started, servers = [], []

    def start(settings, argv, starting):  # the server `assistant serve` would be, in a thread
        starting()
        started.append(argv)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        servers.append(Running(settings, serve_handler(manager, settings)))
        return serve.connect(settings)

    class LoadedHere(Exception):
        pass

    def load_here(*args, **kwargs):
        raise LoadedHere

    monkeypatch.setattr(serve, "start", start)
    monkeypatch.setattr(cli_module, "start_generator", load_here)
    args = ["--data-dir", str(tmp_path / "data"), "ask", "Who won Super Bowl 50?"]
    env = {"ASSISTANT_SERVE_IDLE_MINUTES": "10"}
    monkeypatch.setattr(cli_module, "_at_terminal", lambda: False)
    script = CliRunner().invoke(cli, args, env=env)
    assert isinstance(script.exception, LoadedHere) and not started  # answered in-process

    monkeypatch.setattr(cli_module, "_at_terminal", lambda: True)
    typed = CliRunner().invoke(cli, args, env=env)
    assert typed.exit_code == 0, typed.output
    assert "Starting the answer server" in typed.output and "10 minutes" in typed.output
    assert "The Denver Broncos won." in typed.output
    assert started[0][-3:] == ["serve", "--idle-minutes", "10"]
    again = CliRunner().invoke(cli, args, env=env)  # the server is up: used, not started again
    assert again.exit_code == 0 and len(started) == 1
    assert "Starting" not in again.output and "The Denver Broncos won." in again.output
    assert serve.stop(Settings(data_dir=tmp_path / "data")) and servers[0].join()
    assert len(manager.history.conversations()) == 2


def test_two_asks_starting_a_server_at_once_start_one(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    started = tmp_path / "started"
    # a stand-in for `assistant serve`: records that it ran, loads for a moment, listens
    server = (f"import socket, time; open({str(started)!r}, 'a').write('x'); time.sleep(0.5); "
              f"s = socket.socket(socket.AF_UNIX); s.bind({str(serve.socket_path(settings))!r}); "
              f"s.listen(8); time.sleep(5)")
    conns, said = [], []
    starts = [threading.Thread(target=lambda: conns.append(serve.start(
        settings, [sys.executable, "-c", server], wait_s=30,
        starting=lambda: said.append("starting")))) for _ in range(2)]
    for thread in starts:
        thread.start()
    for thread in starts:
        thread.join(30)
    assert len(conns) == 2 and all(conn is not None for conn in conns)
    assert started.read_text() == "x"  # one server process, both asks connected to it
    assert said == ["starting"]  # and only the ask that started it says so
    for conn in conns:
        conn.close()


def test_stop_and_idle_timeout_remove_the_socket(served, tmp_path):
    settings, _, server = served
    assert serve.stop(settings)
    assert server.join() and not serve.socket_path(settings).exists()
    assert serve.connect(settings) is None and not serve.stop(settings)

    idle = Running(settings, lambda request, send, cancellation: None, idle_s=0.3)
    assert idle.join(5) and not serve.socket_path(settings).exists()


def test_a_second_server_on_the_same_data_dir_is_refused(served):
    settings, _, _ = served
    with pytest.raises(serve.ServerError, match="already running"):
        serve.serve(settings, lambda request, send, cancellation: None, idle_s=1)


def test_a_stale_socket_file_is_not_a_server(tmp_path):
    settings = Settings(data_dir=tmp_path)
    serve.socket_path(settings).write_text("")
    assert serve.connect(settings) is None


@pytest.mark.slow
def test_assistant_serve_answers_ask_like_the_process_itself(tmp_path, corpus_dir,
                                                             shared_data_dir, real_generator,
                                                             monkeypatch):
    """`assistant serve` with the embedded models; `ask` through it gives the in-process
    answer, into the same history; `serve --stop` ends it."""
    base = ["--data-dir", str(shared_data_dir), "--index-dir", str(tmp_path / "index")]
    env = {**os.environ, "ASSISTANT_SERVE_IDLE_MINUTES": "0"}
    runner = CliRunner()
    assert runner.invoke(cli, [*base, "index", str(corpus_dir)]).exit_code == 0
    question = ["ask", "--json", "Where was Super Bowl 50 played?"]
    here = runner.invoke(cli, [*base, *question])
    assert here.exit_code == 0, here.output
    expected = json.loads(here.output[here.output.index("{"):])

    server = subprocess.Popen([sys.executable, "-m", "assistant", *base, "serve",
                               "--idle-minutes", "5"], env=env, stderr=subprocess.PIPE,
                              text=True)
    try:
        settings = Settings.load(overrides={"data_dir": shared_data_dir})
        deadline = time.monotonic() + 300
        while (probe := serve.connect(settings)) is None:
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        probe.close()
        served = runner.invoke(cli, [*base, *question])
        assert served.exit_code == 0, served.output
        assert "answering here" not in served.output, served.output
        data = json.loads(served.output[served.output.index("{"):])
        assert data["answer"] == expected["answer"] and data["cited"] == expected["cited"]
        assert data["timings"]["load_s"] == 0  # nothing was loaded for it
        # the chat's client gets the same answer and sources, recorded in the same history
        from assistant.served import ServedManager

        chat_settings = settings.replace(index_dir=tmp_path / "index")  # as the server's
        history = History(chat_settings.history_path)
        chat = ServedManager(chat_settings, history=history)
        assert chat.describe()["model"] == expected["model"]
        conversation = history.new_conversation()
        turn = chat.ask(expected["question"], conversation_id=conversation,
                        turn_id=history.start_turn(conversation, expected["question"]))
        assert "".join(turn) == expected["answer"] and turn.status == "complete"
        assert [s.path for s in turn.sources()] == [s["path"] for s in expected["sources"]]
        assert history.turns(conversation)[0]["answer"] == expected["answer"]
        shown = runner.invoke(cli, [*base, "history", "show", data["conversation_id"]])
        assert "Super Bowl 50" in shown.output
        bad = runner.invoke(cli, [*base, "ask", "--conversation", "zzzz", "x"])
        assert bad.exit_code == 1 and bad.output.startswith("error: ")
        stopped = runner.invoke(cli, [*base, "serve", "--stop"])
        assert "Stopped" in stopped.output
        assert server.wait(30) == 0
        # serve_idle_minutes > 0 at a terminal: ask starts a server itself, answers through it
        monkeypatch.setattr("assistant.cli._at_terminal", lambda: True)
        started = runner.invoke(cli, [*base, *question], env={"ASSISTANT_SERVE_IDLE_MINUTES": "1"})
        assert started.exit_code == 0, started.output
        assert "Starting the answer server" in started.output
        data = json.loads(started.output[started.output.index("{"):])
        assert data["answer"] == expected["answer"] and data["timings"]["load_s"] == 0
        assert serve.stop(settings)
    finally:
        if server.poll() is None:
            server.kill()


def test_info_says_whether_a_server_is_running(served):
    settings, _, _ = served
    args = ["--data-dir", str(settings.data_dir), "info"]
    shown = CliRunner().invoke(cli, args)
    assert "answer server:    running (" in shown.output and "serve.sock" in shown.output
    line = next(x for x in shown.output.splitlines() if x.startswith("answer server:"))
    assert f", pid {os.getpid()}, " in line and " GB resident, stops when told)" in line
    assert serve.stop(settings)
    served[2].join()
    assert "answer server:    not running" in CliRunner().invoke(cli, args).output


# --- the chat as a client of the server ----------------------------------------------------
def test_the_chat_client_streams_cancels_and_keeps_every_turn(served, tmp_path):
    from assistant.served import ServedManager

    settings, manager, _ = served
    history = History(tmp_path / "history.db")  # the chat's own connection to the same store
    client = ServedManager(settings, history=history)
    info = client.describe()
    assert info["served"] and info["model"] == "fake-generator" and info["passages"] > 0
    long = "Who won Super Bowl 50? " * 40  # over the bytes that cannot hold too many tokens
    assert client.count_tokens(long) == manager.generator.count_tokens(long)
    assert client.count_tokens("Who won?") >= manager.generator.count_tokens("Who won?")

    conversation = history.new_conversation()
    turn_id = history.start_turn(conversation, "Who won Super Bowl 50?")
    turn = client.ask("Who won Super Bowl 50?", conversation_id=conversation, turn_id=turn_id)
    assert turn.turn_id == turn_id and turn.query and turn.status == "pending"
    assert [s.number for s in turn.sources()] == [1, 2, 3]  # before any fragment, as retrieved
    fragments = iter(turn)
    first = [next(fragments) for _ in range(4)]
    began = time.monotonic()
    assert client.count_tokens(long) == 0  # the server is busy: the chat's UI does not wait
    assert time.monotonic() - began < 3
    turn.cancel()  # from the chat's UI thread: the server stops it and still ends it
    rest = list(fragments)
    assert turn.status == "cancelled" and turn.answer == "".join(first + rest)
    assert turn.answer.startswith("The Denver Broncos won.") and len(rest) < 100
    row = history.turns(conversation)[-1]
    assert row["id"] == turn_id and row["status"] == "cancelled"
    assert row["answer"] == turn.answer and len(row["sources"]) == 3

    again = history.start_turn(conversation, "And who lost?")
    short = settings.replace()  # the same settings: a follow-up in the same conversation
    turn = ServedManager(short, history=history).ask("And who lost?",
                                                     conversation_id=conversation, turn_id=again)
    text = "".join(turn)
    assert turn.status == "complete" and text.startswith("The Denver Broncos")
    assert turn.timings()["new_tokens"] > 0 and set(turn.cited()) <= {1, 2, 3}
    rows = history.turns(conversation)
    assert [r["status"] for r in rows] == ["cancelled", "complete"] and rows[1]["id"] == again


def test_a_chat_question_finds_the_server_gone_restarts_it_or_fails_kept(served, tmp_path):
    from assistant.served import ServedManager

    settings, manager, server = served
    history = History(tmp_path / "history.db")
    conversation = history.new_conversation()
    assert serve.stop(settings) and server.join()  # its idle timeout passed, say

    lost = history.start_turn(conversation, "Who won?")
    with pytest.raises(serve.ServerError, match="not running"):
        ServedManager(settings, history=history).ask("Who won?", conversation_id=conversation,
                                                     turn_id=lost)
    row = history.turns(conversation)[-1]
    assert row["status"] == "error" and "not running" in row["error"]  # not left pending

    restarted = []

    def restart():  # the server `assistant serve` would be, in a thread
        restarted.append(Running(settings, serve_handler(manager, settings)))
        return serve.connect(settings)

    client = ServedManager(settings, history=history, restart=restart)
    asked = history.start_turn(conversation, "Who won?")
    turn = client.ask("Who won?", conversation_id=conversation, turn_id=asked)
    fragments = iter(turn)
    assert next(fragments).startswith("The Denver") and len(restarted) == 1
    serve.cancel(turn._conn)
    list(fragments)
    assert turn.status == "cancelled"
    assert serve.stop(settings) and restarted[0].join()


def test_the_chat_uses_a_running_server_or_starts_one_or_loads_its_own(
        tmp_path, corpus_dir, fake_embedder, monkeypatch):
    import click

    from assistant.cli import served_manager

    manager = scripted_manager(tmp_path, corpus_dir, fake_embedder)
    settings = Settings(data_dir=tmp_path / "data", serve_idle_minutes=0)
    ctx = click.Context(cli)
    said, started = [], []

    def start(settings, argv, starting):
        starting()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        started.append(Running(settings, serve_handler(manager, settings, idle_s=600)))
        return serve.connect(settings)

    monkeypatch.setattr(serve, "start", start)
    assert served_manager(ctx, settings, manager.history, said.append) is None  # load here
    assert not started

    on_demand = settings.replace(serve_idle_minutes=10)
    client = served_manager(ctx, on_demand, manager.history, said.append)
    assert client is not None and len(started) == 1
    assert said and said[0].startswith("starting the answer server")
    assert client._pinging is not None  # keeps the server up while the chat is open
    assert serve.stop(on_demand) and started[0].join()  # it went (stopped, or idle)
    conversation = manager.history.new_conversation()
    turn = client.ask("Who won?", conversation_id=conversation,
                      turn_id=manager.history.start_turn(conversation, "Who won?"))
    assert len(started) == 2 and "".join(turn).startswith("The Denver Broncos")
    assert said[-1].startswith("cpu · answer server · ") and said[-1].endswith(" documents")
    client.close()
    # a server that is up serves the chat whatever serve_idle_minutes says
    assert served_manager(ctx, settings, manager.history, said.append) is not None
    # one with other settings does not: the chat loads its own models
    assert served_manager(ctx, settings.replace(top_k=9, fusion_alpha=0.1), manager.history,
                          said.append) is None
    assert len(started) == 2
    assert serve.stop(settings) and started[1].join()


async def test_the_chat_app_answers_through_the_server(served, tmp_path):
    from textual.widgets import Static

    from assistant.served import ServedManager
    from assistant.tui import ChatApp
    from assistant.tui.widgets import AnswerView, SourcesPane
    from tests.chat_app import ask, wait_for

    settings, manager, _ = served
    history = History(tmp_path / "history.db")
    app = ChatApp(history=history, model_name="fake-generator",
                  load=lambda say: ServedManager(settings, history=history))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.manager is not None)
        assert "answer server" in app.status.model_info
        await ask(pilot, "Who won Super Bowl 50?")
        await wait_for(pilot, lambda: app.query(AnswerView) and
                       app.query(AnswerView)[0].text.count("more") >= 3)
        assert len(app.query_one(SourcesPane).sources) == 3
        await pilot.press("escape")
        view = app.query(AnswerView)[0]
        await wait_for(pilot, lambda: view.status == "cancelled")
        assert "cancelled" in str(view.query_one(".answer-notes", Static).render())
        row = history.turns(app.conversation_id)[0]
        assert row["status"] == "cancelled" and row["answer"] == view.text
        assert "passages" in app.status.last


def test_a_client_that_leaves_before_the_first_fragment_cancels_at_once(
        tmp_path, corpus_dir, fake_embedder):
    """The server notices a client gone while the answer is still being read (nothing sent
    yet), not at its first fragment: the reading stops without writing anything."""
    settings = Settings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir()
    manager = scripted_manager(tmp_path, corpus_dir, fake_embedder)
    gate = threading.Event()
    manager.generator.gate = gate  # the "reading" holds until the gate opens
    server = Running(settings, serve_handler(manager, settings))
    try:
        conn = serve.connect(settings)
        answer = serve.ask(conn, settings, {"question": "Who won Super Bowl 50?"})
        assert "start" in next(answer)
        answer.close()
        conn.close()  # gone while the reading is held
        conversation = manager.history.conversations()[0]["id"]
        time.sleep(0.3)  # the server's watcher sees the end of input and cancels the turn
        gate.set()
        deadline = time.monotonic() + 10
        while manager.history.turns(conversation)[-1]["status"] == "pending":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        row = manager.history.turns(conversation)[-1]
        assert row["status"] == "cancelled" and row["answer"] == ""
    finally:
        serve.stop(settings)
        server.join()


def test_a_malformed_request_fails_alone_and_the_server_goes_on(served, capsys):
    settings, _, server = served
    with serve.connect(settings) as conn:  # a question that is no text: the handler fails
        with pytest.raises(serve.ServerError, match="could not answer: AttributeError"):
            list(serve.ask(conn, settings, {"question": 5}))
    with serve.connect(settings) as conn:  # not an object
        conn.sendall(b"[1, 2]\n")
        assert b"one JSON object per line" in conn.recv(4096)
    assert "AttributeError" in capsys.readouterr().err  # the traceback, for serve.log
    with serve.connect(settings) as conn:
        assert list(serve.ask(conn, settings, {"question": "Who won?", "max_new_tokens": 1}))
    assert server.thread.is_alive()
