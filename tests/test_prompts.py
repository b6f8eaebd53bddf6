from index.store import Passage

from assistant.prompts import build_block_prompt, build_prompt, load_template
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


def render(messages):
    """A chat template like SmolLM2's, the assistant's turn opened."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + (
        "<|im_start|>assistant\n")


def test_a_block_prompt_puts_the_passages_after_a_head_every_question_shares(squad_passages):
    ps = [passage(i, p["text"]) for i, p in enumerate(squad_passages[:3])]
    history = [("Where was it played?", "At Levi's Stadium [1].")]
    prompt = build_block_prompt("Who won?", ps, counter=FakeGenerator(), render=render,
                                budget_tokens=10_000, history=history)
    other = build_block_prompt("Why?", ps[1:], counter=FakeGenerator(), render=render,
                               budget_tokens=10_000, form="explanation")
    assert prompt.head == other.head  # so a passage's block serves any later question
    assert prompt.head.endswith(load_template("system.txt") + "\n\n")
    assert prompt.passages_used == 3 and prompt.labels == ["Source [1] ", "Source [2] ",
                                                           "Source [3] "]
    assert prompt.passages[0].startswith("(p0.md > Head):\n")  # the block has no number
    assert all(p.endswith("\n\n") for p in prompt.passages)
    # read in order, the pieces are the rendered messages
    shown = "".join(label + text for label, text in zip(prompt.labels, prompt.passages))
    assert prompt.head + shown.rstrip() + prompt.tail == render(prompt.messages)
    assert prompt.tail.index("Where was it played?") < prompt.tail.index("Who won?")
    assert "Explain how or why" in other.tail and other.labels[0] == "Source [1] "
    assert other.passages[0] == prompt.passages[1]  # the same block under another number


def test_a_block_prompt_keeps_to_its_budget_and_needs_the_system_text_kept(squad_passages):
    gen = FakeGenerator()
    ps = [passage(i, p["text"]) for i, p in enumerate(squad_passages[:5])]
    full = build_block_prompt("Who won?", ps, counter=gen, render=render, budget_tokens=100_000)
    assert full.passages_used == 5
    trimmed = build_block_prompt("Who won?", ps, counter=gen, render=render,
                                 budget_tokens=full.tokens - 150)
    assert trimmed.passages_used < 5 and trimmed.tokens <= full.tokens - 150
    tiny = build_block_prompt("Who won?", ps, counter=gen, render=render, budget_tokens=120)
    assert tiny.passages_used == 1 and tiny.tokens <= 120 and tiny.passages[0].strip().endswith("...")

    def no_system(messages):  # a template that leaves the system message out
        return render([m for m in messages if m["role"] != "system"])

    assert build_block_prompt("Who won?", ps, counter=gen, render=no_system,
                              budget_tokens=10_000) is None
