"""The chat app, driven through Textual's pilot, with a real index and history."""

import io
import stat
import threading
from contextlib import nullcontext

import pytest
from rich.console import Console
from textual.widgets import Static

from assistant.history import History
from assistant.tui.app import source_command
from assistant.tui.keys import check_keymap
from assistant.tui.screens import ConfirmScreen, HelpScreen, TextPrompt
from assistant.tui.widgets import (AnswerView, PromptArea, SessionList, SessionsPanel,
                                   SourceList, SourcesPane, UserMessage, highlight)
from tests.chat_app import ask, build_index, make_app, wait_for
from tests.conftest import FakeGenerator


def answers(app) -> list[AnswerView]:
    return list(app.query(AnswerView))


async def test_answer_streams_in_and_sources_fill(tmp_path):
    fragments = ["The Denver ", "Broncos ", "defeated ", "the Carolina ", "Panthers", "."]
    app = make_app(tmp_path, FakeGenerator(fragments, delay=0.15))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.manager is not None)
        await ask(pilot, "Which NFL team won Super Bowl 50?")
        await wait_for(pilot, lambda: answers(app) and answers(app)[0].text)
        view = answers(app)[0]
        assert view.status == "pending" and view.text != "".join(fragments)  # still streaming
        # sources are shown as soon as retrieval is done, before the answer ends
        pane = app.query_one(SourcesPane)
        assert len(pane.sources) == 3 and app.query_one(SourceList).option_count == 3
        await wait_for(pilot, lambda: view.status == "complete")
        assert view.text.startswith("The Denver Broncos defeated the Carolina Panthers. [")
        assert "Panthers" in view.markdown.source
        assert [str(m.render()) for m in app.query(UserMessage)] == [
            "Which NFL team won Super Bowl 50?"]
        # the passage on show is the first source, with the question's words marked
        shown = str(app.query_one("#passage", Static).render())
        assert pane.sources[0]["text"][:40] in shown.replace("\n", " ")
        assert "3 passages" in app.status.last and "tok/s" in app.status.last
        assert "36 documents" in app.status.model_info
        assert app.query_one(PromptArea).text == ""
        rows = app.history.turns(app.conversation_id)
        assert len(rows) == 1 and rows[0]["status"] == "complete"
        assert rows[0]["answer"] == view.text and len(rows[0]["sources"]) == 3
        assert sum(s["cited"] for s in rows[0]["sources"]) >= 1
        assert "Super Bowl" in " ".join(s["text"] for s in rows[0]["sources"])


async def test_loading_and_every_answer_run_on_one_models_thread(tmp_path):
    """The models load and answer on one thread, whatever thread Textual's worker pool hands
    out (the index poll keeps a second one busy): torch's kernels run 1.3-2.5x slower on a
    thread beside another live one that has run any."""
    import time

    seen = []

    class Recording(FakeGenerator):
        def generate(self, messages, **kwargs):
            reply = super().generate(messages, **kwargs)
            stream = reply.fragments

            def fragments():
                seen.append(threading.current_thread().name)
                yield from stream

            reply.fragments = fragments()
            return reply

    app = make_app(tmp_path, Recording(["Denver won [1]."]))
    load = app.loader

    def loader(say):
        seen.append(threading.current_thread().name)
        return load(say)

    app.loader = loader
    app.index_progress = lambda: (time.sleep(0.3), "indexing")[1]
    prepared = []
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.manager is not None)
        # between turns the app gives a follow-up its head start, on the same thread
        app.manager.prepare_follow_up = lambda turn: prepared.append(
            (threading.current_thread().name, turn.question, turn.status))
        for n, question in enumerate(("Who won Super Bowl 50?", "Where was it played?",
                                      "Who lost it?"), start=1):
            await ask(pilot, question)
            await wait_for(pilot, lambda: not app.busy and len(prepared) == n)
    assert len(seen) == 4 and len(set(seen)) == 1 and seen[0].startswith("models"), seen
    assert [(name, q) for name, q, _ in prepared] == [
        (seen[0], "Who won Super Bowl 50?"), (seen[0], "Where was it played?"),
        (seen[0], "Who lost it?")]
    assert {status for _, _, status in prepared} == {"complete"}


async def test_question_is_recorded_when_sent_even_while_loading(tmp_path):
    gate = threading.Event()
    app = make_app(tmp_path, gate=gate)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.manager is None
        assert "loading" in app.status.model_info
        await ask(pilot, "Who won Super Bowl 50?")
        await pilot.pause(0.1)
        rows = app.history.turns(app.conversation_id)
        assert [(r["question"], r["status"]) for r in rows] == [("Who won Super Bowl 50?", "pending")]
        assert "waiting for the model" in str(
            answers(app)[0].query_one(".answer-notes", Static).render())
        gate.set()
        await wait_for(pilot, lambda: answers(app)[0].status == "complete")
        rows = app.history.turns(app.conversation_id)
        assert len(rows) == 1 and rows[0]["status"] == "complete" and rows[0]["answer"]


async def test_escape_cancels_and_keeps_the_partial_answer(tmp_path):
    app = make_app(tmp_path, FakeGenerator(["word "] * 300, delay=0.02))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.manager is not None)
        await ask(pilot, "Who won Super Bowl 50?")
        await wait_for(pilot, lambda: answers(app) and answers(app)[0].text.count("word") >= 5)
        await pilot.press("escape")
        view = answers(app)[0]
        await wait_for(pilot, lambda: view.status == "cancelled")
        assert 5 <= view.text.count("word") < 300
        assert "cancelled" in str(view.query_one(".answer-notes", Static).render())
        assert view.has_class("-cancelled")
        row = app.history.turns(app.conversation_id)[0]
        assert row["status"] == "cancelled" and row["answer"] == view.text
        # the app is ready for the next question
        await ask(pilot, "Where was it played?")
        await wait_for(pilot, lambda: len(answers(app)) == 2)


async def test_resume_after_restart_and_follow_up(tmp_path):
    gen = FakeGenerator(["Levi's Stadium."])
    app = make_app(tmp_path, gen)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.manager is not None)
        await ask(pilot, "Where was Super Bowl 50 played?")
        await wait_for(pilot, lambda: answers(app) and answers(app)[0].status == "complete")
        first_id = app.conversation_id
        await pilot.press("ctrl+q")
    history = History(tmp_path / "history.db")
    assert history.last_conversation() == first_id
    app = make_app(tmp_path, gen, history=history, conversation_id=history.last_conversation())
    async with app.run_test(size=(100, 30)) as pilot:
        # the stored conversation is on screen, with its sources, before the models load
        assert [str(m.render()) for m in app.query(UserMessage)] == [
            "Where was Super Bowl 50 played?"]
        assert answers(app)[0].text.startswith("Levi's Stadium.")
        assert len(app.query_one(SourcesPane).sources) == 3
        assert app.sub_title == "Where was Super Bowl 50 played?"
        await wait_for(pilot, lambda: app.manager is not None)
        await ask(pilot, "and who won it?")
        await wait_for(pilot, lambda: len(answers(app)) == 2 and answers(app)[1].status == "complete")
    turns = history.turns(first_id)
    assert [t["ordinal"] for t in turns] == [1, 2]
    assert turns[1]["retrieval_query"] == "Where was Super Bowl 50 played? and who won it?"
    # the earlier exchange is part of the prompt
    assert any("Where was Super Bowl 50 played?" in m["content"] for m in gen.calls[-1][:-1])


async def test_sessions_search_rename_and_delete_with_confirmation(tmp_path):
    history = History(tmp_path / "history.db")
    for question in ("Who were the Normans?", "Which team won Super Bowl 50?"):
        cid = history.new_conversation()
        history.finish_turn(history.start_turn(cid, question), answer="An answer.")
    app = make_app(tmp_path, history=history)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+s")
        panel = app.query_one(SessionsPanel)
        sessions = app.query_one(SessionList)
        assert panel.display and sessions.option_count == 2
        await pilot.press(*"normans")
        await wait_for(pilot, lambda: sessions.option_count == 1)
        normans = history.conversations(search="normans")[0]["id"]
        await pilot.press("enter")  # from the search box to the list
        assert app.focused is sessions
        await pilot.press("r")
        assert isinstance(app.screen, TextPrompt)
        await pilot.press("ctrl+a", "ctrl+k", *"Norman history", "enter")
        assert history.conversation(normans)["title"] == "Norman history"
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")  # keeps it
        assert len(history.conversations()) == 2
        await pilot.press("d")
        await pilot.press("y")
        await wait_for(pilot, lambda: len(history.conversations()) == 1)
        assert history.conversations()[0]["title"] == "Which team won Super Bowl 50?"
        # resume the other one from the list
        await pilot.click("#session-search")
        await pilot.press("end", *["backspace"] * 7)
        await wait_for(pilot, lambda: sessions.option_count == 1
                       and sessions.get_option_at_index(0).id is not None)
        sessions.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.conversation_id is not None)
        assert not panel.display
        assert [str(m.render()) for m in app.query(UserMessage)] == ["Which team won Super Bowl 50?"]


async def test_help_lists_bindings_and_the_keymap_rebinds(tmp_path):
    app = make_app(tmp_path, keymap=check_keymap({"new_chat": "ctrl+t"}))
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_for(pilot, lambda: app.manager is not None)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        console = Console(width=120, record=True, file=io.StringIO())
        console.print(app.screen.table)
        text = console.export_text()
        for words in ("Ctrl+T", "Start a new conversation", "Ctrl+R", "Copy the last answer",
                      "Esc", "Cancel the answer"):
            assert words in text
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await ask(pilot, "Who won Super Bowl 50?")
        await wait_for(pilot, lambda: answers(app) and answers(app)[0].status == "complete")
        await pilot.press("ctrl+r")
        assert app.clipboard == answers(app)[0].text
        await pilot.press("ctrl+t")  # new chat, rebound
        await wait_for(pilot, lambda: not answers(app))
        assert app.conversation_id is None


def test_keymap_with_unknown_binding_is_one_line_error():
    with pytest.raises(ValueError, match="unknown key binding.*new_chats"):
        check_keymap({"new_chats": "ctrl+t"})


async def test_loading_error_and_missing_index_show_in_the_app(tmp_path):
    app = make_app(tmp_path, load_error=RuntimeError("cannot load model 'nope': not found\nTraceback"))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.load_error)
        errors = [str(w.render()) for w in app.query(".error")]
        assert errors == ["Cannot start the assistant: cannot load model 'nope': not found"]
        await ask(pilot, "Who won?")
        assert app.history.conversations() == []  # nothing to answer with: not sent
        assert app.query_one(PromptArea).text == "Who won?"  # and not lost
    app = make_app(tmp_path / "empty", with_index=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.manager is not None)
        assert any("No index yet" in str(w.render()) for w in app.query(".error"))
        await ask(pilot, "Who won?")
        await wait_for(pilot, lambda: answers(app) and answers(app)[0].status == "error")
        assert "assistant index" in str(answers(app)[0].query_one(".answer-notes", Static).render())
        row = app.history.turns(app.conversation_id)[0]
        assert row["status"] == "error" and row["question"] == "Who won?"


async def test_open_source_runs_the_editor_at_the_line(tmp_path, monkeypatch):
    log = tmp_path / "editor.log"
    editor = tmp_path / "editor.sh"
    editor.write_text(f'#!/bin/sh\necho "$@" > {log}\n')
    editor.chmod(editor.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("EDITOR", str(editor))
    app = make_app(tmp_path)
    monkeypatch.setattr(app, "suspend", nullcontext)  # headless: nothing to hand over
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.manager is not None)
        await ask(pilot, "Which NFL team won Super Bowl 50?")
        await wait_for(pilot, lambda: answers(app) and answers(app)[0].status == "complete")
        await pilot.press("ctrl+o")
        assert app.focused is app.query_one(SourceList)
        await pilot.press("down", "o")
        await wait_for(pilot, log.exists)
        second = app.query_one(SourcesPane).sources[1]
        assert log.read_text().split() == [f"+{second['line_start']}", second["path"]]


def test_source_command_prefers_editor_then_pager(tmp_path):
    text = tmp_path / "a.md"
    assert source_command(text, 12, {"EDITOR": "nvim -R"}) == ["nvim", "-R", "+12", str(text)]
    assert source_command(text, None, {"PAGER": "most"}) == ["most", str(text)]
    assert source_command(text, 3, {}) == ["less", "+3", str(text)]


def test_highlight_marks_query_words_and_their_inflections():
    text = highlight("The with statement wraps statements.", "How does the with statement work?")
    marked = {text.plain[s.start:s.end] for s in text.spans}
    assert marked == {"statement", "statements"}


@pytest.mark.slow
async def test_real_models_answer_in_the_app(tmp_path, real_embedder, real_generator,
                                             squad_passages):
    from tests.chat_app import build_index

    build_index(tmp_path, real_embedder, squad_passages[:8])
    app = make_app(tmp_path, real_generator, embedder=real_embedder)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.manager is not None, timeout=60)
        await ask(pilot, "Which NFL team represented the AFC at Super Bowl 50?")
        await wait_for(pilot, lambda: answers(app) and answers(app)[0].status != "pending",
                       timeout=180)
        view = answers(app)[0]
        assert view.status == "complete" and view.text.strip()
        row = app.history.turns(app.conversation_id)[0]
        assert row["answer"] == view.text and row["new_tokens"] > 0
        assert row["first_token_s"] > 0 and row["tokens_per_s"] > 0
        assert any("Super Bowl" in s["text"] for s in row["sources"])


async def test_one_question_at_a_time_while_the_models_load(tmp_path):
    gate = threading.Event()
    generator = FakeGenerator(["The Denver Broncos ", "won."], delay=0.05)
    app = make_app(tmp_path, generator, gate=gate)
    async with app.run_test(size=(100, 30)) as pilot:
        await ask(pilot, "Who won Super Bowl 50?")
        await ask(pilot, "Where was it played?")  # refused: the first still waits
        await pilot.pause(0.1)
        assert app.busy and len(answers(app)) == 1
        assert app.query_one(PromptArea).text == "Where was it played?"  # kept for later
        gate.set()
        await wait_for(pilot, lambda: answers(app)[0].status == "complete")
        await wait_for(pilot, lambda: not app.busy)
        assert len(generator.calls) == 1  # one answer worker, not one per question typed
        rows = app.history.turns(app.conversation_id)
        assert [(r["question"], r["status"]) for r in rows] == [
            ("Who won Super Bowl 50?", "complete")]


async def test_escape_cancels_a_question_waiting_for_the_models(tmp_path):
    gate = threading.Event()
    generator = FakeGenerator(["An answer [1]."])
    app = make_app(tmp_path, generator, gate=gate)
    async with app.run_test(size=(100, 30)) as pilot:
        await ask(pilot, "Who won Super Bowl 50?")
        await pilot.pause(0.1)
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert not app.busy and answers(app)[0].status == "cancelled"
        gate.set()
        await wait_for(pilot, lambda: app.manager is not None)
        await pilot.pause(0.2)
        assert generator.calls == []
        assert [r["status"] for r in app.history.turns(app.conversation_id)] == ["cancelled"]


async def test_wordless_question_is_refused_and_nothing_recorded(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.manager is not None)
        await ask(pilot, "?!")
        await pilot.pause(0.1)
        assert answers(app) == [] and app.conversation_id is None
        assert app.history.conversations() == []


async def test_control_characters_from_documents_never_reach_the_screen(tmp_path):
    hostile = [{"_id": "evil", "title": "Evil\x1b[2J heading",
                "text": "Super Bowl 50 was won by the Broncos.\x1bc\x1b]52;c;cGF5bG9hZA==\x07"}]
    build_index(tmp_path, passages=hostile)
    generator = FakeGenerator(["The Broncos\x1b[31m won [1]."])
    app = make_app(tmp_path, generator)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.manager is not None)
        await ask(pilot, "Who won Super Bowl 50?")
        await wait_for(pilot, lambda: answers(app) and answers(app)[0].status == "complete")
        await pilot.pause(0.2)
        shown = [answers(app)[0].text, str(app.query_one("#passage", Static).render()),
                 *(str(app.query_one(SourceList).get_option_at_index(i).prompt)
                   for i in range(app.query_one(SourceList).option_count))]
        for text in shown:
            assert "\x1b" not in text and "\x07" not in text, text
        assert "\\x1b" in answers(app)[0].text and "\\x1bc" in shown[1]
        screen = "".join(segment.text for strip in app.screen._compositor.render_strips()
                         for segment in strip)
        assert "\x1b" not in screen and "\x07" not in screen


async def test_chat_answers_and_shows_progress_while_passages_are_embedded(tmp_path):
    """An index run is still embedding (its text already published): the chat answers from
    the BM25-searchable passages and its status line says how far embedding has got."""
    from assistant.cli import index_progress
    from assistant.config import Settings
    from index.ingest import Indexer
    from tests.conftest import FakeEmbedder, load_jsonl, write_corpus

    docs = tmp_path / "docs"
    write_corpus(docs, load_jsonl("squad_passages.jsonl"))
    embedder, published, go_on = FakeEmbedder(), threading.Event(), threading.Event()

    def hold() -> None:  # before each embedding batch: stop after the first
        published.set()
        go_on.wait(30)

    worker = threading.Thread(target=Indexer(tmp_path / "index", embedder, batch_size=8,
                                             checkpoint_seconds=0.0, wait_turn=hold).run,
                              args=([docs],))
    worker.start()
    assert published.wait(30)
    settings = Settings(data_dir=tmp_path, index_dir=tmp_path / "index")
    app = make_app(tmp_path, FakeGenerator(["The Denver Broncos."]), embedder=embedder)
    app.index_progress = lambda: index_progress(settings)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.manager is not None)
            await wait_for(pilot, lambda: "passages embedded" in app.status.index_info)
            assert app.status.index_info.startswith("indexing · 0 of ")
            await ask(pilot, "Which NFL team won Super Bowl 50?")
            await wait_for(pilot, lambda: answers(app) and answers(app)[0].status == "complete")
            assert "Super Bowl" in " ".join(s["text"] for s in app.query_one(SourcesPane).sources)
            go_on.set()
            worker.join(30)
            await wait_for(pilot, lambda: app.status.index_info == "", timeout=10)
    finally:
        go_on.set()
        worker.join(30)


def test_the_sentences_an_answer_quotes_are_marked_in_the_passage():
    passage = ("Lists are mutable sequences, typically\nused to store items. Lists may be "
               "constructed in several ways.")
    answer = "Lists are mutable sequences, typically used to store items. [1] Tuples are \\*not\\*."
    text = highlight(passage, "", answer)
    marked = [(text.plain[s.start:s.end], str(s.style)) for s in text.spans]
    assert marked == [("Lists are mutable sequences, typically\nused to store items.",
                       "underline on dark_green")]
    assert highlight(passage, "", "").spans == []


async def test_the_sources_pane_marks_what_the_answer_quoted(tmp_path):
    quote = ("Super Bowl 50 was an American football game to determine the champion of the "
             "National Football League (NFL) for the 2015 season.")
    app = make_app(tmp_path, FakeGenerator([quote]))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.manager is not None)
        await ask(pilot, "Which game determined the NFL champion for the 2015 season?")
        await wait_for(pilot, lambda: answers(app) and answers(app)[0].status == "complete")
        pane = app.query_one(SourcesPane)
        assert pane.answer == answers(app)[0].text
        quoted = [s for s in pane.sources if quote in " ".join(s["text"].split())]
        assert quoted
        pane._show_passage(pane.sources.index(quoted[0]))
        shown = app.query_one("#passage", Static).render()
        marked = [shown.plain[s.start:s.end] for s in shown.spans if "underline" in str(s.style)]
        assert [" ".join(m.split()) for m in marked] == [quote]


async def test_a_burst_of_keys_ending_in_enter_sends_the_whole_question(tmp_path):
    """Keys that arrive together (a fast typist, a paste without bracketed paste, tmux
    send-keys) reach the app in one read: Enter must send all the text typed before it."""
    from textual import events

    app = make_app(tmp_path, FakeGenerator(["Denver Broncos."]))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.manager is not None)
        question = "Which NFL team won Super Bowl 50?"
        for ch in question:  # queued at once, as the driver does for one read
            app.post_message(events.Key(ch, ch))
        app.post_message(events.Key("enter", "\r"))
        await wait_for(pilot, lambda: list(app.query(UserMessage)))
        assert [str(m.render()) for m in app.query(UserMessage)] == [question]
        await wait_for(pilot, lambda: answers(app) and answers(app)[0].status == "complete")
        assert app.query_one(PromptArea).text == ""
