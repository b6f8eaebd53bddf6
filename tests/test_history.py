import pytest

from assistant.history import History, SourceRecord, migrations


def test_migrations_are_numbered_and_applied_once(tmp_path):
    h = History(tmp_path / "h.db")
    names = [m.name for m in migrations.applied(h.db)]
    assert names == ["m001_conversations", "m002_turn_search", "m003_support"]
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


def test_a_history_from_before_support_weights_is_migrated_and_kept(tmp_path):
    import sqlite3

    import sqlite_utils

    from assistant.history import m001_conversations, m002_turn_search

    path = tmp_path / "old.db"
    db = sqlite_utils.Database(sqlite3.connect(str(path)))
    m001_conversations(db)
    m002_turn_search(db)
    db["conversations"].insert({"id": "abc", "title": "Old", "created_at": 1.0,
                                "updated_at": 1.0})
    db["turns"].insert({"id": 1, "conversation_id": "abc", "ordinal": 1, "question": "Q?",
                        "answer": "A [1].", "status": "complete"})
    db["turn_sources"].insert({"turn_id": 1, "number": 1, "passage_id": 1, "path": "/d/a.md",
                               "title": "", "heading": "", "score": 0.5, "text": "A.",
                               "cited": 1})
    for name in ("m001_conversations", "m002_turn_search"):  # as an older release left it
        migrations.ensure_migrations_table(db)
        db[migrations.migrations_table].insert({"migration_set": migrations.name,
                                                "name": name, "applied_at": "then"})
    db.conn.close()
    h = History(path)
    turn = h.turns("abc")[0]
    assert turn["answer"] == "A [1]." and turn["abstained"] is None
    assert turn["sources"][0]["support"] is None
    t = h.start_turn("abc", "Another?")
    h.finish_turn(t, answer="None here.", abstained=True, timings={"answer_s": 1.5},
                  sources=[SourceRecord(1, 2, "/d/b.md", "", "", None, 1, 2, 0.4, "B.", False,
                                        support=0.25)])
    new = h.turns("abc")[1]
    assert new["abstained"] == 1 and new["answer_s"] == 1.5
    assert new["sources"][0]["support"] == 0.25
