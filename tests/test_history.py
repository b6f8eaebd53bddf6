import pytest

from assistant.history import History, SourceRecord, migrations


def test_migrations_are_numbered_and_applied_once(tmp_path):
    h = History(tmp_path / "h.db")
    names = [m.name for m in migrations.applied(h.db)]
    assert names == ["m001_conversations", "m002_turn_search"]
    h.close()
    h = History(tmp_path / "h.db")  # re-opening applies nothing twice
    assert [m.name for m in migrations.applied(h.db)] == names


def test_conversations_search_rename_delete(tmp_path):
    h = History(tmp_path / "h.db")
    a = h.new_conversation()
    t = h.start_turn(a, "Where did the Normans come from?")
    h.finish_turn(t, answer="From Normandy [1].", sources=[SourceRecord(
        1, 7, "/d/n.md", "Normans", "Origins", None, 1, 3, 0.5, "text", True)])
    b = h.new_conversation()
    h.finish_turn(h.start_turn(b, "Who won Super Bowl 50?"), answer="Denver.")
    assert h.conversation(a)["title"] == "Where did the Normans come from?"
    assert [c["id"] for c in h.conversations()] == [b, a]
    assert [c["id"] for c in h.conversations(search="normandy")] == [a]
    assert h.conversations(search="Super Bowl")[0]["id"] == b
    h.rename(a, "Normans")
    assert h.conversation(a)["title"] == "Normans"
    assert h.resolve(a[:6]) == a
    assert h.turns(a)[0]["sources"][0]["heading"] == "Origins"
    h.delete(a)
    with pytest.raises(KeyError):
        h.conversation(a)
    assert h.db.execute("SELECT count(*) FROM turn_sources").fetchone()[0] == 0
    assert h.last_conversation() == b
