from index.store import Passage

from assistant.prompts import build_prompt, load_template
from tests.conftest import FakeGenerator


def passage(i, text):
    return Passage(i, 1, f"/docs/p{i}.md", "T", "Head", None, 1, 2, text)


def test_passages_are_numbered_and_history_included(squad_passages):
    ps = [passage(i, p["text"]) for i, p in enumerate(squad_passages[:3])]
    prompt = build_prompt("Who won?", ps, counter=FakeGenerator(), budget_tokens=10_000,
                          history=[("Where was it played?", "At Levi's Stadium [1].")])
    roles = [m["role"] for m in prompt.messages]
    assert roles == ["system", "user", "assistant", "user"]
    body = prompt.messages[-1]["content"]
    assert "Source [1] (p0.md > Head):" in body and "Source [3]" in body
    assert body.index(ps[0].text) < body.index(ps[2].text)
    assert "Who won?" in body
    assert prompt.messages[0]["content"] == load_template("system.txt")


def test_budget_drops_lowest_ranked_passages_then_cuts(squad_passages):
    gen = FakeGenerator()
    ps = [passage(i, p["text"]) for i, p in enumerate(squad_passages[:5])]
    full = build_prompt("Who won?", ps, counter=gen, budget_tokens=100_000)
    assert full.passages_used == 5
    budget = full.tokens - 150
    trimmed = build_prompt("Who won?", ps, counter=gen, budget_tokens=budget)
    assert trimmed.passages_used < 5 and trimmed.tokens <= budget
    tiny = build_prompt("Who won?", ps, counter=gen, budget_tokens=120)
    assert tiny.passages_used == 1 and tiny.tokens <= 120
    assert tiny.messages[-1]["content"].count("Source [") == 1


def test_history_is_kept_within_its_budget():
    history = [(f"question {i} " * 20, f"answer {i} " * 20) for i in range(10)]
    prompt = build_prompt("now?", [], counter=FakeGenerator(), budget_tokens=10_000,
                          history=history, history_tokens=200)
    kept = [m["content"] for m in prompt.messages if m["role"] == "assistant"]
    assert kept and len(kept) < 10
    assert kept[-1].startswith("answer 9")  # the newest turns are the ones kept
