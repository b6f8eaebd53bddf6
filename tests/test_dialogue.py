import threading

import pytest

from assistant.dialogue import ANCHOR_TOKENS, DialogueManager
from assistant.history import History
from assistant.output import search_figures, turn_json
from index.ingest import Indexer
from index.retrieval import Retriever
from index.store import Store
from tests.conftest import FakeGenerator


@pytest.fixture
def retriever(tmp_path, corpus_dir, fake_embedder):
    Indexer(tmp_path / "index", fake_embedder).run([corpus_dir])
    return Retriever(Store.open(tmp_path / "index"), fake_embedder)


def manager(tmp_path, retriever, generator):
    return DialogueManager(retriever=retriever, generator=generator,
                           history=History(tmp_path / "history.db"), top_k=3)


def block_manager(history, retriever, generator, *, read_k, **options):
    """A manager reading the top 3 passages as blocks, reranked, never abstaining."""
    return DialogueManager(retriever=retriever, generator=generator, history=history, top_k=3,
                           rerank_k=3, read_k=read_k, prompt_style="extractive",
                           abstain_threshold=0, **options)


def test_a_turn_streams_cites_and_is_recorded(tmp_path, retriever):
    gen = FakeGenerator(["The Denver Broncos ", "defeated the Carolina Panthers", ". "])
    m = manager(tmp_path, retriever, gen)
    turn = m.ask("Which NFL team won Super Bowl 50?")
    rows = m.history.turns(turn.conversation_id)
    assert rows[0]["status"] == "pending" and rows[0]["question"].startswith("Which NFL")
    fragments = list(turn)
    assert "".join(fragments) == turn.answer
    assert turn.answer.startswith("The Denver Broncos defeated the Carolina Panthers. [")
    assert turn.status == "complete" and turn.cited()
    prompt = gen.calls[0][-1]["content"]
    assert "Source [1]" in prompt and "Which NFL team won Super Bowl 50?" in prompt
    row = m.history.turns(turn.conversation_id)[0]
    assert row["status"] == "complete" and row["answer"] == turn.answer
    assert [s["number"] for s in row["sources"]] == [1, 2, 3]
    assert sum(s["cited"] for s in row["sources"]) == 1
    assert "Super Bowl" in row["sources"][turn.cited()[0] - 1]["text"]
    assert row["retrieval_ms"] is not None and row["new_tokens"] == 3


def test_cancel_keeps_the_partial_answer(tmp_path, retriever):
    gen = FakeGenerator(["word "] * 200, delay=0.01)
    m = manager(tmp_path, retriever, gen)
    turn = m.ask("Who won?")
    got = []
    for fragment in turn:
        got.append(fragment)
        if len(got) == 5:
            turn.cancel()
    assert 5 <= len(got) < 200
    row = m.history.turns(turn.conversation_id)[0]
    assert row["status"] == "cancelled" and row["answer"] == "".join(got)


def test_follow_up_uses_conversation(tmp_path, retriever):
    gen = FakeGenerator(["Levi's Stadium."])
    m = manager(tmp_path, retriever, gen)
    first = m.ask("Where was Super Bowl 50 played?")
    list(first)
    second = m.ask("And who won it?", conversation_id=first.conversation_id)
    list(second)
    assert second.query.startswith("Where was Super Bowl 50 played?")
    roles = [msg["role"] for msg in gen.calls[1]]
    assert roles == ["system", "user", "assistant", "user"]
    assert [t["ordinal"] for t in m.history.turns(first.conversation_id)] == [1, 2]


def test_no_index_is_a_clear_error_and_the_question_is_kept(tmp_path):
    m = manager(tmp_path, None, FakeGenerator())
    with pytest.raises(RuntimeError, match="no index yet"):
        m.ask("Anything?")
    cid = m.history.last_conversation()
    row = m.history.turns(cid)[0]
    assert (row["question"], row["status"]) == ("Anything?", "error")


def test_question_survives_a_crash_mid_answer(tmp_path, retriever):
    gate = threading.Event()
    m = manager(tmp_path, retriever, FakeGenerator(["never"], gate=gate))
    turn = m.ask("What happens if we crash?")
    # the process dies before the answer: the question is already on disk
    other = History(tmp_path / "history.db")
    assert other.turns(turn.conversation_id)[0]["question"] == "What happens if we crash?"
    gate.set()


def test_a_question_naming_what_the_documents_never_mention_is_not_read(tmp_path, retriever):
    gen = FakeGenerator(["Never said."])
    m = manager(tmp_path, retriever, gen)
    turn = m.ask("Did the Broncos play at the Hogwarts stadium?")
    answer = "".join(turn)
    assert turn.abstained and answer == turn.answer
    assert answer.startswith("I could not find this in your documents.") and "“Hogwarts”" in answer
    assert gen.calls == [] and turn.reading.features == {"absent": ["Hogwarts"]}
    assert turn.sources_shown == 3 and turn.cited() == []  # the closest are still listed
    row = m.history.turns(turn.conversation_id)[0]
    assert row["status"] == "complete" and row["abstained"] == 1 and len(row["sources"]) == 3
    # a name the passages hold, or a misspelling of one of theirs, is read as usual
    for question in ("Which NFL team won Super Bowl 50?", "Which team did the Bronccos beat?"):
        assert not m.ask(question).abstained
    assert len(gen.calls) == 2
    # with abstention off, even an unknown name is read
    off = DialogueManager(retriever=retriever, generator=gen, history=m.history, top_k=3,
                          abstain_threshold=0)
    assert not off.ask("Did the Broncos play at the Hogwarts stadium?").abstained
    assert len(gen.calls) == 3


def test_base_model_answers_with_an_aligned_span(tmp_path, retriever):
    gen = FakeGenerator([" the Denver", " Broncos.", "\n"], chat=False)
    m = manager(tmp_path, retriever, gen)
    assert m.prompt_style == "extractive"
    turn = m.ask("Which NFL team won Super Bowl 50?")
    text = "".join(turn)
    prompt = gen.calls[0][0]["content"]
    assert prompt.count("Context: ") == 11 and prompt.endswith(
        "Question: Which NFL team won Super Bowl 50?\nAnswer:")
    assert " ".join(turn.hits[0].passage.text.split()) in prompt  # the top passage is read
    head = gen.prefixes[0]  # the worked examples, the same for every question: cached
    assert prompt.startswith(head) and head.count("Context: ") == 10
    assert turn.short_answer == "the Denver Broncos"  # as the passage has it
    assert text.startswith("**the Denver Broncos** [1]\n\n> ") and turn.cited() == [1]
    assert len(turn.sources()) == 3  # every retrieved passage is listed
    row = m.history.turns(turn.conversation_id)[0]
    assert row["answer"] == text and row["status"] == "complete"


def test_answer_not_in_the_passage_is_read_again_as_a_copied_span(tmp_path, retriever):
    gen = FakeGenerator([" Dan", " Fouts", "\n"], chat=False)  # a name from the examples
    m = manager(tmp_path, retriever, gen)
    turn = m.ask("Which NFL team won Super Bowl 50?")
    text = "".join(turn)
    assert len(gen.calls) == 2 and gen.calls[1] == gen.calls[0]  # same prompt, read again
    top = " ".join(turn.hits[0].passage.text.split())
    assert turn.short_answer and turn.short_answer in top and "Fouts" not in text
    assert turn.cited() == [1]
    assert m.history.turns(turn.conversation_id)[0]["answer"] == text


def test_answer_found_in_the_passage_is_read_once(tmp_path, retriever):
    gen = FakeGenerator([" Denver", " Broncos", "\n"], chat=False)
    m = manager(tmp_path, retriever, gen)
    turn = m.ask("Which NFL team won Super Bowl 50?")
    "".join(turn)
    assert len(gen.calls) == 1 and turn.short_answer == "Denver Broncos"


class ScoringFake(FakeGenerator):
    """A base model that also reranks: ``score`` gives the passages likelihoods 0, -1, -2 in
    retrieval order (so reranking keeps that order), and each reading answers with the first
    two words of the passage it reads, with the mean token log-probability ``confidence[n]``
    for the n-th passage read (0-based, in the order read)."""

    def __init__(self, confidence):
        super().__init__(chat=False)
        self.confidence = list(confidence)
        self.read = []

    def score(self, prefixes, continuation):
        return [-float(i) for i in range(len(prefixes))]

    def complete(self, text, *, max_new_tokens=32, temperature=0.0, stop=(), within=None,
                 shared_prefix=""):
        context = text.rsplit("Context: ", 1)[1].split("\nQuestion:")[0]
        self.fragments = [" " + " ".join(context.split()[:2]), "\n"]
        reply = super().complete(text, max_new_tokens=max_new_tokens, within=within)
        self.read.append(context)
        reply.stats.logprob = self.confidence[len(self.read) - 1] * len(self.fragments)
        return reply


def test_a_confident_answer_from_the_second_passage_beats_an_unsure_first(tmp_path, retriever):
    # reranked scores: 1 + 2*1 = 3 for the top passage, r2 + 1 (r2 in [0, 1]) for the second
    gen = ScoringFake(confidence=[-1.5, -0.01, -0.01])  # top answer: 3 - 3 = 0; second ~ 1 + r2
    m = DialogueManager(retriever=retriever, generator=gen, history=History(tmp_path / "h.db"),
                        top_k=3, rerank_k=3, read_k=3)
    turn = m.ask("Which NFL team won Super Bowl 50?")
    text = "".join(turn)
    second = " ".join(turn.hits[1].passage.text.split())
    assert gen.read[1] == second and turn.short_answer == " ".join(second.split()[:2])
    assert turn.cited() == [2] and text.startswith(f"**{turn.short_answer}** [2]")
    # the third passage's score (<= 1) cannot beat the second answer's value: never read
    assert len(gen.read) == 2
    assert turn.timings()["first_token_s"] == pytest.approx(turn.answer_ready_s, abs=1e-3)
    stored = m.history.turns(turn.conversation_id)[0]
    assert stored["answer"] == text and [s["cited"] for s in stored["sources"]] == [0, 1, 0]


def test_a_confident_top_answer_is_the_only_reading(tmp_path, retriever):
    gen = ScoringFake(confidence=[-0.1, -0.0, -0.0])  # 3 - 0.2 beats any other score (<= 2)
    m = DialogueManager(retriever=retriever, generator=gen, history=History(tmp_path / "h.db"),
                        top_k=3, rerank_k=3, read_k=3)
    turn = m.ask("Which NFL team won Super Bowl 50?")
    "".join(turn)
    assert len(gen.read) == 1 and turn.cited() == [1]
    assert DialogueManager(retriever=retriever, generator=gen, history=m.history,
                           rerank_k=0).ask("Who won?").read_k == 1  # no reranking: top only


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory, tiny_tokenizer):
    """A TransformersGenerator on a two-layer Gemma 3 built from a config (random weights)."""
    from assistant.generation import TransformersGenerator
    from tests.conftest import tiny_model

    folder = tmp_path_factory.mktemp("tiny-gemma-blocks")
    tiny_model("gemma3", len(tiny_tokenizer)).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return TransformersGenerator("tiny-gemma", str(folder), device="cpu")


def test_a_block_turn_reranks_cites_with_support_and_reuses_blocks(tmp_path, retriever,
                                                                  tiny_generator):
    history = History(tmp_path / "history.db")
    m = block_manager(history, retriever, tiny_generator, read_k=2)
    assert m.reads_blocks
    turn = m.ask("Which NFL team won Super Bowl 50?")
    answer = "".join(turn)
    assert turn.status == "complete" and answer == turn.answer
    assert turn.reading is not None and turn.reading.encoded == 3
    assert [h.rank for h in turn.hits] == [1, 2, 3]  # reranked order, renumbered
    # abstention's cover feature weighs the question's words by the index's frequencies
    from assistant.reader import coverage

    texts = [h.passage.text for h in turn.hits]
    assert turn.reading.features["cover"] == pytest.approx(
        coverage(turn.question, texts, retriever.word_passages))
    assert len(turn.support) == 3 and sum(turn.support) == pytest.approx(1.0, abs=1e-6)
    timings = turn.timings()
    assert timings["blocks_computed"] == 3 and timings["answer_s"] > 0
    # what the status line shows: the search itself, then the reranking it includes
    search, rerank = search_figures(timings)
    rerank_s = timings["encode_s"] + timings["score_s"]
    assert rerank == f"reranking {rerank_s:.2f} s"
    assert search == f"retrieval {timings['retrieval_ms'] - 1000 * rerank_s:.0f} ms"
    assert search_figures({"retrieval_ms": 23.4}) == ["retrieval 23 ms"]
    row = history.turns(turn.conversation_id)[0]
    assert [s["support"] for s in row["sources"]] == [round(w, 4) for w in turn.support]
    assert row["abstained"] == 0 and row["answer_s"] > 0
    # a follow-up that retrieves the same passages prefills none of them again
    again = m.ask("Which NFL team won Super Bowl 50?", conversation_id=turn.conversation_id)
    list(again)
    assert again.reading.encoded == 0 and again.timings()["blocks_computed"] == 0
    assert again.answer == turn.answer
    # the same question over the same passages: the reading itself is not done again
    assert turn.reading.read >= 1 and again.reading.read == 0
    assert again.timings()["read_s"] == 0.0 and again.timings()["tokens_per_s"] is None
    # a request to say more searches and reads the question it is about: the same passages,
    # no block computed again, the same span read; after a factoid, more is sentences
    more = m.ask("Can you say more about that?", conversation_id=turn.conversation_id)
    list(more)
    assert more.query == turn.query and more.reading.encoded == 0
    assert more.reading.raw_span == turn.reading.raw_span and more.form == "explanation"
    assert more.reading.read == 0  # the reading of the question it is about
    assert more.question == "Can you say more about that?" and more.status == "complete"
    # and saying more again quotes what was not said yet
    again = m.ask("Go on.", conversation_id=turn.conversation_id)
    list(again)
    quoted = {text for _, text in more.reading.sentences}
    assert again.reading.sentences and not quoted & {t for _, t in again.reading.sentences}


def test_a_block_turn_shows_its_text_before_the_support_pass(tmp_path, retriever,
                                                             tiny_generator):
    history = History(tmp_path / "history.db")
    m = block_manager(history, retriever, tiny_generator, read_k=1)
    turn = m.ask("How did the Denver Broncos win Super Bowl 50?")
    shown = []
    measured = turn.support_job

    def support(reading):
        shown.append(turn.answer)  # what the reader had been shown when support began
        return measured(reading)

    turn.support_job = support
    pieces = list(turn)
    assert shown == ["".join(pieces)] and turn.answer == shown[0]
    assert len(turn.support) == 3 and sum(turn.support) == pytest.approx(1.0, abs=1e-6)
    timings = turn.timings()  # the text's time leaves the support pass out; the total has it
    assert timings["total_s"] == pytest.approx(timings["first_token_s"] + timings["support_s"],
                                               abs=1e-3)
    row = history.turns(turn.conversation_id)[0]  # recorded after the support pass
    assert [s["support"] for s in row["sources"]] == [round(w, 4) for w in turn.support]


def test_the_text_reader_stays_selectable(tmp_path, retriever, tiny_generator):
    m = DialogueManager(retriever=retriever, generator=tiny_generator,
                        history=History(tmp_path / "history.db"), top_k=3, rerank_k=3,
                        read_k=1, prompt_style="extractive", reader="text")
    assert not m.reads_blocks
    turn = m.ask("Which NFL team won Super Bowl 50?")
    list(turn)
    assert turn.reading is None and turn.status == "complete" and turn.support == []
    assert turn.timings()["answer_s"] > 0


def test_cancelling_a_block_turn_stops_the_reading(tmp_path, retriever, tiny_generator):
    m = block_manager(History(tmp_path / "history.db"), retriever, tiny_generator, read_k=3)
    turn = m.ask("Which NFL team won Super Bowl 50?")
    turn.cancel()  # before the reading starts: no passage is read past the first token
    list(turn)
    assert turn.status == "cancelled"
    assert turn.reading.read == 1 and turn.reading.new_tokens <= 1
    assert turn.support == []
    # a cancelled reading is not kept: asking again reads
    again = m.ask("Which NFL team won Super Bowl 50?")
    list(again)
    assert again.status == "complete" and again.reading.read >= 1


def test_a_how_question_gets_cited_sentences_streamed_one_by_one(tmp_path, retriever,
                                                                  tiny_generator):
    history = History(tmp_path / "history.db")
    m = block_manager(history, retriever, tiny_generator, read_k=1)
    turn = m.ask("How did the Denver Broncos win Super Bowl 50?")
    pieces = list(turn)
    assert turn.form == "explanation" and turn.status == "complete"
    assert "".join(pieces) == turn.answer and len(pieces) == len(turn.reading.sentences) > 1
    for (number, sentence), piece in zip(turn.reading.sentences, pieces):
        assert piece.strip().endswith(f"[{number}]")  # each sentence streams with its source
        assert " ".join(sentence.split()[:3]) in turn.hits[number - 1].passage.text
    assert turn.short_answer == turn.reading.raw_span  # the span stays the short answer
    # the span only anchors the quoted sentence: its reading stops early
    assert 1 <= turn.reading.new_tokens <= ANCHOR_TOKENS
    # --json: each sentence with the citation that follows its full stop
    data = turn_json(turn, model="tiny")
    assert [s["cites"] for s in data["sentences"]] == [[n] for n, _ in turn.reading.sentences]
    assert not any(s["unsupported"] for s in data["sentences"])
    assert data["short_answer"] in turn.answer  # '' unless the answer shows the span
    assert history.turns(turn.conversation_id)[0]["answer"] == turn.answer
    # a follow-up with no verb of its own keeps the form; spans when forms are off
    follow = m.ask("and the Panthers?", conversation_id=turn.conversation_id)
    list(follow)
    assert follow.form == "explanation"
    plain = block_manager(history, retriever, tiny_generator, read_k=1, answer_forms=False)
    spans = plain.ask("How did the Denver Broncos win Super Bowl 50?")
    list(spans)
    assert spans.form == "factoid" and spans.reading.sentences == []


def test_summarise_this_conversation_answers_from_history_with_turn_numbers(tmp_path,
                                                                            retriever):
    gen = FakeGenerator(["The Denver Broncos won. It was close."])
    m = manager(tmp_path, retriever, gen)
    first = m.ask("Which NFL team won Super Bowl 50?")
    list(first)
    cid = first.conversation_id
    calls = len(gen.calls)
    recap = m.ask("Summarise this conversation", conversation_id=cid)
    assert "".join(recap) == recap.answer
    assert recap.form == "conversation" and recap.hits == [] and len(gen.calls) == calls
    assert recap.answer.startswith("In this conversation:\n- Turn 1 — Which NFL team won "
                                   "Super Bowl 50?: The Denver Broncos won.")
    said = m.ask("What did you say about the Broncos?", conversation_id=cid)
    list(said)
    assert "Turn 1" in said.answer and "Turn 2" not in said.answer
    nothing = m.ask("what did you say about bicycles?", conversation_id=cid)
    list(nothing)
    assert nothing.answer == "Nothing in this conversation was about bicycles."
    rows = m.history.turns(cid)
    assert [r["status"] for r in rows] == ["complete"] * 4 and rows[1]["answer"] == recap.answer


def test_a_chat_model_gets_the_form_instruction_and_key_sentences(tmp_path, retriever):
    gen = FakeGenerator(["The Broncos won. [1]"])
    m = manager(tmp_path, retriever, gen)
    turn = m.ask("How did the Denver Broncos win Super Bowl 50?")
    list(turn)
    prompt = gen.calls[0][-1]["content"]
    assert turn.form == "explanation"
    assert "Explain how or why in two to four sentences." in prompt
    key = prompt.split("Key sentences:\n", 1)[1].split("\nQuestion:")[0].strip().splitlines()
    assert key and all(line.startswith("[") for line in key)
    number = int(key[0][1:key[0].index("]")])
    assert key[0].split("] ", 1)[1][:30] in " ".join(turn.hits[number - 1].passage.text.split())
    gen2 = FakeGenerator(["Denver. [1]"])
    m2 = manager(tmp_path, retriever, gen2)
    list(m2.ask("Which NFL team won Super Bowl 50?"))
    factoid = gen2.calls[0][-1]["content"]
    assert "Answer in one short sentence." in factoid and "Key sentences" not in factoid


@pytest.fixture(scope="module")
def tiny_chat_generator(tmp_path_factory, tiny_tokenizer):
    """A TransformersGenerator on a two-layer Llama (SmolLM2's architecture) built from a
    config, with a chat template: an instruction model."""
    from transformers import AutoTokenizer

    from assistant.generation import TransformersGenerator
    from tests.conftest import tiny_model
    from tests.test_generation import CHAT_TEMPLATE

    folder = tmp_path_factory.mktemp("tiny-llama-chat")
    # a window the three passages fit in (the tiny tokenizer spends many tokens on them)
    tiny_model("llama", len(tiny_tokenizer), max_position_embeddings=8192).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return TransformersGenerator("tiny-llama-chat", str(folder), device="cpu")


def test_a_chat_turn_attends_over_blocks_with_support_per_sentence(tmp_path, retriever,
                                                                   tiny_chat_generator):
    gen = tiny_chat_generator
    history = History(tmp_path / "history.db")
    m = DialogueManager(retriever=retriever, generator=gen, history=history, top_k=3,
                        max_new_tokens=24, context_tokens=6000)
    assert m.prompt_style == "chat" and m.chats_over_blocks
    m.warm_up()  # the head's cache and one tiny block
    before = gen.blocks.encoded
    assert before >= 1
    turn = m.ask("Which NFL team won Super Bowl 50?")
    answer = "".join(turn)
    assert turn.status == "complete" and answer == turn.answer and answer.strip()
    assert turn.prompt.passages_used == 3 and "Source [3]" in turn.prompt.messages[0]["content"]
    assert [h.rank for h in turn.hits] == [1, 2, 3]  # retrieval order: not reranked
    assert len(turn.support) == 3 and sum(turn.support) == pytest.approx(1.0, abs=1e-6)
    assert turn.sentence_weights
    for text, weights in turn.sentence_weights:
        assert text and sum(weights) == pytest.approx(1.0, abs=1e-6)
    timings = turn.timings()
    assert timings["support_s"] > 0 and timings["prompt_tokens"] == turn.prompt.tokens
    assert timings["blocks_computed"] == 3  # one block per passage (their labels apart)
    computed = gen.blocks.encoded
    row = history.turns(turn.conversation_id)[0]
    assert [s["support"] for s in row["sources"]] == [round(w, 4) for w in turn.support]
    # a follow-up over the same passages computes no block again
    again = m.ask("Which NFL team won Super Bowl 50?", conversation_id=turn.conversation_id)
    list(again)
    assert again.status == "complete" and gen.blocks.encoded == computed
    assert again.timings()["blocks_computed"] == 0
    assert "Which NFL team won Super Bowl 50?" in again.prompt.messages[1]["content"]
    # between turns the chat prepares the conversation so far over these passages: a
    # request to say more (the same passages, in the same order) prefills only its message
    assert m.prepare_follow_up(again) > 0
    more = m.ask("Can you say more about that?", conversation_id=turn.conversation_id)
    list(more)
    assert more.status == "complete" and [h.passage.id for h in more.hits] == \
        [h.passage.id for h in again.hits]
    assert more.reply.stats.reused_tokens > 0 and more.timings()["blocks_computed"] == 0
    assert m.prepare_follow_up(more) > 0


def test_a_chat_model_can_still_read_passages_as_prompt_text(tmp_path, retriever,
                                                             tiny_chat_generator):
    m = DialogueManager(retriever=retriever, generator=tiny_chat_generator,
                        history=History(tmp_path / "history.db"), top_k=3, reader="text",
                        max_new_tokens=8)
    assert not m.chats_over_blocks
    turn = m.ask("Which NFL team won Super Bowl 50?")
    list(turn)
    assert turn.status == "complete" and turn.support == [] and turn.sentence_weights == []
    assert "Source [1]" in turn.prompt.messages[-1]["content"]


def test_chat_support_averages_the_layers_chosen_for_the_model(tmp_path, retriever,
                                                               tiny_chat_generator, monkeypatch):
    """A model with support layers chosen records only those (the pass stops after them) and
    gets the same weights as a pass recording every layer, averaged over those layers' heads;
    any other model averages every head of every layer."""
    from assistant import chat_reader
    from assistant.reader import support_weights

    gen = tiny_chat_generator
    hits = retriever.search("Which NFL team won Super Bowl 50?", k=3).hits
    answer = "The Denver Broncos won. They beat Carolina."
    everything = chat_reader.ChatReader(gen)
    assert everything.layers == ()
    prompt = everything.prompt("Which NFL team won Super Bowl 50?", hits, budget_tokens=6000)
    weights, sentences = everything.support(prompt, hits, answer)
    assert [text for text, _ in sentences] == ["The Denver Broncos won.", "They beat Carolina."]
    api = gen.blocks
    prefix = api.prefix(prompt.head)
    blocks = api.blocks(prefix, [(h.passage.id, t) for h, t in zip(hits, prompt.passages)])
    segments = chat_reader.labelled(api, prefix, blocks, prompt.labels)
    assert len(segments) == 6  # each passage after its label
    parts = [api.tokens(p) for p in chat_reader.answer_sentences(answer)]
    masses, _ = api.support_parts(prefix, segments, prompt.tail, parts, layout="end")
    masses = [[[row[i] + row[i + 1] for i in range(0, 6, 2)] for row in layer]
              for layer in masses]  # a label's mass counts for its passage
    assert weights == pytest.approx(support_weights(masses), abs=1e-6)
    monkeypatch.setitem(chat_reader.SUPPORT_LAYERS, gen.name, (0,))
    chosen = chat_reader.ChatReader(gen)
    first_layer, _ = chosen.support(prompt, hits, answer)
    heads = [(0, h) for h in range(len(masses[0]))]
    assert first_layer == pytest.approx(support_weights(masses, heads), abs=1e-6)
    assert first_layer != pytest.approx(weights, abs=1e-6)


def test_a_failed_support_pass_leaves_the_chat_answer_complete(tmp_path, retriever,
                                                               tiny_chat_generator):
    m = DialogueManager(retriever=retriever, generator=tiny_chat_generator,
                        history=History(tmp_path / "history.db"), top_k=3, max_new_tokens=8,
                        context_tokens=6000)
    turn = m.ask("Which NFL team won Super Bowl 50?")

    def fails(text):
        raise RuntimeError("out of memory")

    turn.chat_support = fails
    answer = "".join(turn)
    assert turn.status == "complete" and answer and turn.support == []
    row = m.history.turns(turn.conversation_id)[0]
    assert row["status"] == "complete" and row["answer"] == answer


def test_a_factoid_scores_its_top_passages_first_and_the_rest_when_they_explain_it_poorly(
        retriever, tiny_generator):
    from assistant.reader import ExtractiveReader

    question = "Which NFL team won Super Bowl 50?"
    hits = retriever.search(question, k=3, mode="convex").hits
    options = dict(rerank_k=3, read_k=2, abstain_below=0)
    every = ExtractiveReader(tiny_generator, **options).read(question, hits)
    assert every.scored == 3 and len(every.support) == 3
    # the first passage explains the question well enough: the others are not scored
    one = ExtractiveReader(tiny_generator, rerank_first=1, more_below=float("-inf"),
                           **options).read(question, hits)
    assert one.scored == 1 and len(one.support) == 1 and one.answer.source in (1, None)
    assert [h.passage.id for h in one.hits] == [h.passage.id for h in hits]
    assert [h.rank for h in one.hits] == [1, 2, 3]
    # ... and poorly: all are scored, and the reading is the one that scored all at once
    more = ExtractiveReader(tiny_generator, rerank_first=1, more_below=float("inf"),
                            **options).read(question, hits)
    assert more.scored == 3 and more.encoded == 0  # the blocks came from the cache
    assert [h.passage.id for h in more.hits] == [h.passage.id for h in every.hits]
    assert more.raw_span == every.raw_span and more.ids == every.ids
    assert more.features["pmi"] == pytest.approx(every.features["pmi"], abs=1e-3)
    # with two scored, retrieval's top passage stays first unless the second passage makes
    # the question more likely by the margin
    ids = [h.passage.id for h in hits]
    for margin, first in ((1e9, ids[0]), (-1e9, ids[1])):
        two = ExtractiveReader(tiny_generator, rerank_first=2, more_below=float("-inf"),
                               first_margin=margin, **options).read(question, hits)
        assert two.scored == 2 and two.hits[0].passage.id == first
        assert {h.passage.id for h in two.hits[:2]} == set(ids[:2])
        assert two.hits[2].passage.id == ids[2]


def test_a_factoid_turn_shows_support_only_for_the_passages_it_scored(
        tmp_path, retriever, tiny_generator, monkeypatch):
    import assistant.reader

    monkeypatch.setattr(assistant.reader, "RERANK_MORE_BELOW", float("-inf"))
    history = History(tmp_path / "history.db")
    m = block_manager(history, retriever, tiny_generator, read_k=2, rerank_first=1)
    turn = m.ask("Which NFL team won Super Bowl 50?")
    list(turn)
    assert turn.form == "factoid" and turn.reading.scored == 1 and turn.reading.encoded <= 1
    assert len(turn.hits) == 3 and turn.support == [pytest.approx(1.0)]
    row = history.turns(turn.conversation_id)[0]
    assert [s["support"] is None for s in row["sources"]] == [False, True, True]
    # an answer that quotes sentences scores every passage at once
    how = m.ask("How did the Denver Broncos win Super Bowl 50?")
    list(how)
    assert how.form == "explanation" and how.reading.scored == 3 and len(how.support) == 3


def test_a_source_the_answer_added_shows_no_retrieval_score(tmp_path):
    """A passage the composer added from a retrieved passage's document (its opening, the
    sections under a heading) was not retrieved: no score of 0.000 is shown for it."""
    from assistant.dialogue import Turn
    from assistant.output import sources_text
    from assistant.prompts import Prompt
    from assistant.tui.widgets import source_label
    from index.retrieval import Hit
    from index.store import Passage

    def passage(pid: int, line: int) -> Passage:
        return Passage(pid, 1, "/docs/pass.md", "pass", "The pass statement", None, line,
                       line + 3, "pass is a null operation.")

    turn = Turn("c1", 1, "What is pass?", "What is pass?",
                [Hit(passage(7, 10), 1.323, 1), Hit(passage(2, 1), 0.0, 0)], 5.0,
                Prompt([], 2, 0), None, "m", None)
    retrieved, added = turn.sources()
    assert (retrieved.score, added.score) == (1.323, None)
    text = sources_text(turn)
    assert "[1] /docs/pass.md:10-13 — The pass statement (score 1.323)" in text
    assert "[2] /docs/pass.md:1-4 — The pass statement (added from the same document)" in text
    assert turn_json(turn, model="m")["sources"][1]["score"] is None
    labels = [source_label(vars(s)).plain for s in (retrieved, added)]
    assert labels[0].endswith("  1.323") and labels[1].endswith("  added")
