"""How the chat app looks (pytest-textual-snapshot): main screen after an answer, help, and the
conversations panel, at 80x24 and 120x40. Update with ``pytest --snapshot-update`` after a
deliberate change and review the SVGs."""

import shutil
import time
from pathlib import Path

import pytest

from assistant.history import History
from assistant.tui.widgets import AnswerView, turn_figures
from tests.chat_app import ask, make_app, wait_for
from tests.conftest import FakeGenerator

ANSWER = ["The **Denver Broncos** ", "defeated the Carolina Panthers ", "24–10 ",
          "to win Super Bowl 50 [1]. ", "The game was played at Levi's Stadium [2]."]
FIXED_TIME = 1_790_000_000.0  # conversation times shown in the list


@pytest.fixture
def tmp_path():
    """A fixed folder: the passage view shows the source's full path, so it must not vary."""
    folder = Path("/tmp/assistant-snapshots")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.delenv("TZ")
    time.tzset()


async def steady(pilot) -> None:
    """Cursors that do not blink (always drawn where focused): a snapshot taken mid-blink
    showed the question box's first letter in reverse or not, at random."""
    for screen in pilot.app.screen_stack:
        for widget in screen.query("Input, TextArea"):
            widget.cursor_blink = False
    await pilot.pause()


def answered_app(tmp_path):
    app = make_app(tmp_path, FakeGenerator(ANSWER))

    async def run_before(pilot):
        await wait_for(pilot, lambda: app.manager is not None)
        await ask(pilot, "Which NFL team won Super Bowl 50?")
        await wait_for(pilot, lambda: app.query(AnswerView)
                       and app.query(AnswerView).last().status == "complete")
        # timings differ run to run; show fixed figures
        app.status.set_last(turn_figures(3, {"retrieval_ms": 12.0, "first_token_s": 0.42,
                                             "tokens_per_s": 21.5}))
        app.history.db.execute("UPDATE conversations SET created_at = ?, updated_at = ?",
                               [FIXED_TIME, FIXED_TIME])
        await steady(pilot)

    return app, run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_main_screen_after_an_answer(snap_compare, tmp_path, size):
    app, run_before = answered_app(tmp_path)
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_help_screen(snap_compare, tmp_path, size):
    app = make_app(tmp_path)

    async def run_before(pilot):
        await wait_for(pilot, lambda: app.manager is not None)
        await pilot.press("f1")
        await steady(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_conversations_panel(snap_compare, tmp_path, size):
    history = History(tmp_path / "history.db")
    for i, question in enumerate(["Who were the Normans?", "Which team won Super Bowl 50?",
                                  "What is a context manager?"]):
        cid = history.new_conversation()
        history.finish_turn(history.start_turn(cid, question), answer="An answer [1].")
        history.db["conversations"].update(cid, {"created_at": FIXED_TIME + i * 3600,
                                                 "updated_at": FIXED_TIME + i * 3600})
    app = make_app(tmp_path, history=history)

    async def run_before(pilot):
        await wait_for(pilot, lambda: app.manager is not None)
        await pilot.press("ctrl+s")
        await steady(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)

