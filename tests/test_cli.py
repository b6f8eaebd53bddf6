import json

import click
import pytest
from click.testing import CliRunner

from assistant.cli import cli


def all_commands(group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from all_commands(command, prefix + (name,))


def test_every_command_has_help_text():
    runner = CliRunner()
    for path, command in all_commands(cli):
        assert command.help, f"`assistant {' '.join(path)}` has no help text"
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output


def test_bad_config_is_one_line_error(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("top_k = 'lots'")
    result = CliRunner().invoke(cli, ["--config", str(config), "info"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: setting top_k")
    assert "Traceback" not in result.output


def test_ask_without_index_for_missing_model_is_clear(tmp_path):
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path), "--model", str(tmp_path / "nope"),
                                      "--embedding-model", str(tmp_path / "no-embedder"), "ask", "x"])
    assert result.exit_code == 1 and "error: cannot load embedding model" in result.output


@pytest.mark.slow
def test_index_then_ask_json_end_to_end(tmp_path, corpus_dir, shared_data_dir, real_generator):
    """The real MiniLM embedder, FAISS, SQLite and the embedded Gemma 3 270M, through the CLI."""
    runner = CliRunner()
    base = ["--data-dir", str(shared_data_dir), "--index-dir", str(tmp_path / "index")]
    result = runner.invoke(cli, [*base, "index", str(corpus_dir)])
    assert result.exit_code == 0, result.output
    assert "36 added" in result.output
    again = runner.invoke(cli, [*base, "index", str(corpus_dir)])
    report = " ".join(again.output.split())  # the console wraps long lines
    assert "0 added, 0 updated, 36 unchanged" in report and "0 passages added" in report
    assert "; 0 embedded" in report

    result = runner.invoke(cli, [*base, "ask", "--json", "--max-new-tokens", "48",
                                 "Where was Super Bowl 50 played?"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert data["status"] == "complete" and data["answer"].strip()
    assert data["model"] == "gemma-3-270m"
    # the short answer is a span of the passage it cites
    assert data["cited"] == [1] and data["short_answer"]
    assert data["short_answer"].lower() in " ".join(data["sources"][0]["text"].split()).lower()
    assert len(data["sources"]) == 5
    assert data["sources"][0]["path"].endswith("squad-00-000.md")
    assert "Denver Broncos" in data["sources"][0]["text"]
    assert data["timings"]["first_token_s"] > 0 and data["timings"]["retrieval_ms"] > 0
    assert data["timings"]["tokens_per_s"] > 0
    # support weights from the answer's attention over the passage blocks
    weights = [s["support"] for s in data["sources"]]
    assert all(0 <= w <= 1 for w in weights) and sum(weights) == pytest.approx(1, abs=1e-3)
    assert data["abstained"] is False and data["timings"]["blocks_computed"] == 5
    assert data["sentences"] and data["sentences"][0]["cites"] == [1]

    streamed = runner.invoke(cli, [*base, "ask", "--max-new-tokens", "24", "Where was Super Bowl 50 played?"])
    assert streamed.exit_code == 0
    assert "Sources:" in streamed.output and "squad-00-000.md" in streamed.output
    assert "support" in streamed.output

    # a question the documents cannot answer: said plainly, closest sources still listed
    result = runner.invoke(cli, [*base, "ask", "--json", "Who won the 2018 FIFA World Cup?"])
    data = json.loads(result.output[result.output.index("{"):])
    assert data["abstained"] is True and data["cited"] == []
    # "FIFA" and "Cup" are in no passage: said at once, without reading
    assert data["answer"] == ("I could not find this in your documents. They never mention "
                              "\u201cFIFA\u201d, \u201cCup\u201d.")
    assert len(data["sources"]) == 5


@pytest.mark.slow
def test_eval_questions_scores_a_question_file_end_to_end(tmp_path, corpus_dir, shared_data_dir,
                                                          real_generator):
    """`eval --questions FILE`: the file's corpus indexed, each question asked as `ask` would,
    rows per split and form."""
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps({
        "corpora": {"squad": str(corpus_dir)},
        "questions": [
            {"id": "q1", "split": "tune", "corpus": "squad", "form": "factoid",
             "question": "Which NFL team won Super Bowl 50?",
             "facts": [["Denver Broncos", "Broncos"]], "sources": [{"file": "squad-00-000.md"}]},
            {"id": "q2", "split": "heldout", "corpus": None, "form": "factoid",
             "question": "Who won the 2018 FIFA World Cup?", "answerable": False},
        ]}))
    result = CliRunner().invoke(cli, ["--data-dir", str(shared_data_dir), "eval", "--questions",
                                      str(questions), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index('{\n'):])["questions"]
    assert set(data["splits"]) == {"tune", "heldout"}
    tune = {row["form"]: row for row in data["splits"]["tune"]}
    assert tune["all"]["answerable"] == 1 and tune["factoid"]["form_accuracy"] == 100.0
    assert 0 <= tune["all"]["key_fact_recall"] <= 100
    held = data["splits"]["heldout"][-1]
    assert held["answerable"] == 0 and held["key_fact_recall"] is None
    assert held["abstention_recall"] == 100.0  # the World Cup question: not in the documents
    assert [a["id"] for a in data["answers"]] == ["q1", "q2"]


def test_after_loading_models_the_process_ends_at_once_with_its_output_and_status():
    """A one-shot ask that loaded the models leaves through os._exit (the interpreter's
    teardown took about a second): buffered output still reaches a pipe, the exit status is
    click's (2: usage error), and a normal exit without models is untouched."""
    import subprocess
    import sys

    script = ("import sys\nfrom assistant import cli\ncli._MODELS_IN_PROCESS = {flag}\n"
              "import atexit\natexit.register(lambda: print('teardown ran', file=sys.stderr))\n"
              "sys.stdout.write('x' * 100000)\nsys.argv = ['assistant', 'no-such-command']\n"
              "cli.main()\n")
    for flag in (True, False):
        done = subprocess.run([sys.executable, "-c", script.format(flag=flag)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stdout == "x" * 100000
        assert "No such command" in done.stderr
        assert ("teardown ran" in done.stderr) is (not flag)
