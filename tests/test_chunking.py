import pytest

from index.chunking import Section, chunk_sections, whitespace_token_counter


def words(n, start=0):
    return " ".join(f"w{i}" for i in range(start, start + n))


def test_short_section_is_one_passage_with_its_lines(squad_passages):
    text = squad_passages[0]["text"]
    chunks = chunk_sections([Section(text, heading="Super Bowl 50", line_start=3)], max_tokens=400)
    assert len(chunks) == 1
    assert chunks[0].text == text
    assert (chunks[0].heading, chunks[0].line_start, chunks[0].line_end) == ("Super Bowl 50", 3, 3)


def test_paragraphs_are_packed_within_budget_and_overlap(squad_passages):
    text = "\n\n".join(p["text"] for p in squad_passages[:6])
    chunks = chunk_sections([Section(text)], max_tokens=80, overlap=20)
    assert len(chunks) > 6
    for chunk in chunks:
        assert chunk.n_tokens <= 80
        assert whitespace_token_counter([chunk.text])[0] <= 88
    # consecutive passages share text (the overlap)
    shared = sum(1 for a, b in zip(chunks, chunks[1:])
                 if set(a.text.split()[-5:]) & set(b.text.split()[:40]))
    assert shared >= len(chunks) // 2
    # every word of the section is in some passage
    assert set(text.split()) <= set(" ".join(c.text for c in chunks).split())


def test_line_numbers_point_at_the_paragraphs():
    text = "alpha one\nalpha two\n\n\nbeta one\n\ngamma one\ngamma two"
    chunks = chunk_sections([Section(text, line_start=10)], max_tokens=5, overlap=0,
                            count_tokens=lambda ts: [len(t.split()) for t in ts])
    assert [(c.text.split()[0], c.line_start, c.line_end) for c in chunks] == [
        ("alpha", 10, 11), ("beta", 14, 14), ("gamma", 16, 17)]


def test_long_paragraph_is_split_by_sentence_and_words():
    text = words(500)  # one "sentence" with no punctuation
    chunks = chunk_sections([Section(text)], max_tokens=100, overlap=0)
    assert len(chunks) >= 6
    assert all(c.n_tokens <= 110 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == text.split()


def test_sections_are_not_merged_and_pages_are_kept():
    chunks = chunk_sections([Section("page one text", page=1), Section("page two text", page=2)])
    assert [(c.text, c.page) for c in chunks] == [("page one text", 1), ("page two text", 2)]


def test_inexact_lines_keep_section_line_only():
    chunks = chunk_sections([Section("some text\n\nmore", line_start=42, lines_exact=False)])
    assert (chunks[0].line_start, chunks[0].line_end) == (42, None)


@pytest.mark.parametrize("max_tokens,overlap", [(0, 0), (10, 10), (10, -1)])
def test_bad_budgets_are_rejected(max_tokens, overlap):
    with pytest.raises(ValueError):
        chunk_sections([Section("x")], max_tokens=max_tokens, overlap=overlap)
