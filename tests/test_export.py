import json

from click.testing import CliRunner

from assistant.cli import cli
from assistant.export import to_json, to_markdown
from assistant.history import History, SourceRecord


def source(number, path, cited, line=3):
    return SourceRecord(number, number, path, "t", f"Heading {number}", None, line, line + 4,
                        0.5 / number, f"passage {number} text", cited)


def two_turn_history(path):
    h = History(path)
    cid = h.new_conversation()
    t1 = h.start_turn(cid, "Where did the Normans come from?")
    h.finish_turn(t1, answer="From Normandy [1], in France [1, 2].",
                  sources=[source(1, "/d/normans.md", True), source(2, "/d/france.md", True),
                           source(3, "/d/other.md", False)])
    t2 = h.start_turn(cid, "and when?")
    h.finish_turn(t2, answer="In the 10th", status="cancelled",
                  sources=[source(1, "/d/normans.md", False, line=20)])
    h.start_turn(cid, "still there?")  # never answered: the app was killed
    return h, cid


def test_markdown_export_has_footnote_sources(tmp_path):
    h, cid = two_turn_history(tmp_path / "h.db")
    md = to_markdown(h.conversation(cid), h.turns(cid))
    assert md.startswith("# Where did the Normans come from?\n")
    assert "From Normandy [^1.1], in France [^1.1][^1.2]." in md
    assert "[^1.1]: `/d/normans.md:3-7` — Heading 1" in md
    assert "[^1.2]: `/d/france.md:3-7` — Heading 2" in md
    assert "- [3] `/d/other.md:3-7` — Heading 3" in md  # retrieved, not cited
    assert "## and when?\n\nIn the 10th\n\n*(answer cancelled)*" in md
    assert "## still there?\n\n*(no answer: interrupted)*" in md
    # every footnote reference has its definition
    import re
    refs = set(re.findall(r"\[\^(\d+\.\d+)\](?!:)", md))
    defs = set(re.findall(r"^\[\^(\d+\.\d+)\]:", md, re.M))
    assert refs == defs == {"1.1", "1.2"}


def test_json_export_round_trips(tmp_path):
    h, cid = two_turn_history(tmp_path / "h.db")
    data = json.loads(json.dumps(to_json(h.conversation(cid), h.turns(cid))))
    assert data["id"] == cid and [t["status"] for t in data["turns"]] == [
        "complete", "cancelled", "pending"]
    assert data["turns"][0]["sources"][1] == {
        **data["turns"][0]["sources"][1], "cited": True, "location": "/d/france.md:3-7"}


def test_history_commands(tmp_path):
    h, cid = two_turn_history(tmp_path / "history.db")
    base = ["--data-dir", str(tmp_path)]
    runner = CliRunner()
    listed = runner.invoke(cli, [*base, "history", "list"])
    assert listed.exit_code == 0 and cid in listed.output and "3 turns" in listed.output
    assert runner.invoke(cli, [*base, "history", "list", "--search", "zebra"]).output.startswith(
        "No conversation matches")
    shown = runner.invoke(cli, [*base, "history", "show", cid[:5]])
    assert shown.exit_code == 0 and "[^1.1]: `/d/normans.md:3-7`" in shown.output
    out = tmp_path / "c.json"
    assert runner.invoke(cli, [*base, "history", "export", "-o", str(out)]).exit_code == 0
    assert json.loads(out.read_text())["id"] == cid  # the last conversation, as JSON by suffix
    out_md = tmp_path / "c.md"
    runner.invoke(cli, [*base, "history", "export", cid, "-o", str(out_md)])
    assert out_md.read_text().startswith("# Where did the Normans")
    refused = runner.invoke(cli, [*base, "history", "delete", cid], input="n\n")
    assert refused.exit_code == 1 and h.conversations()
    missing = runner.invoke(cli, [*base, "history", "show", "nope"])
    assert missing.exit_code == 1 and missing.output.strip() == "error: no conversation with id 'nope'"
    assert runner.invoke(cli, [*base, "history", "delete", cid, "--yes"]).exit_code == 0
    assert h.conversations() == []


def test_chat_needs_a_terminal(tmp_path):
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path), "chat"])
    assert result.exit_code == 1
    assert result.output.strip() == ("error: chat needs a terminal; use `assistant ask QUESTION` "
                                     "in scripts")


def test_json_sentences_keep_their_citations_and_hide_an_unshown_span():
    from types import SimpleNamespace

    from assistant.output import sentence_support, short_answer

    sources = [SimpleNamespace(number=1, support=0.7), SimpleNamespace(number=2, support=0.2)]
    turn = SimpleNamespace(
        answer="Lists are mutable. [1] Tuples are not.  [2] Both hold items [1, 2].\n\n"
               "A claim with no source.",
        short_answer="mutable sequences", sources=lambda: sources)
    got = sentence_support(turn)
    assert [s["text"] for s in got] == ["Lists are mutable.", "Tuples are not.",
                                        "Both hold items.", "A claim with no source."]
    assert [s["cites"] for s in got] == [[1], [2], [1, 2], []]
    assert got[1]["support"] == {"2": 0.2} and [s["unsupported"] for s in got] == [
        False, False, False, True]
    assert short_answer(turn) == ""  # read, but not what the answer shows
    turn.answer, turn.short_answer = "**with\\_item** [1]", "with_item"
    assert short_answer(turn) == "with_item"
    # sentences are plain text for scripts: no bold, no Markdown escapes (a literal \*\* stays)
    turn.answer = ("**with\\_item** [1] The manager\u2019s \"\\_\\_enter\\_\\_()\" is "
                   "called. [1] Powers use 2\\*\\*3. [2]")
    assert [s["text"] for s in sentence_support(turn)] == [
        "with_item", "The manager\u2019s \"__enter__()\" is called.", "Powers use 2**3."]
    # quoted sentences carry the support of their own tokens, the rest the turn's
    turn.reading = SimpleNamespace(
        sentences=[(1, "The  manager\u2019s \"__enter__()\" is called.")],
        sentence_support=[[0.61234, 0.3]])
    got = sentence_support(turn)
    assert [s["support"] for s in got] == [{"1": 0.7}, {"1": 0.6123}, {"2": 0.2}]


def test_ask_prints_a_passage_own_markup_without_escapes():
    from assistant.extractive import markdown_escape
    from assistant.output import plain

    said = 'The context manager\u2019s "__enter__()" is *loaded* [see 3] `x`, a\\b.'
    shown = f"**{markdown_escape('a_b')}** [1] {markdown_escape(said)} [2]"
    assert plain(shown) == f"**a_b** [1] {said} [2]"
