"""Passage blocks on tiny models built from configs (Gemma 3 with a 4-token sliding window,
Llama/SmolLM2, Qwen2): the same logits as the concatenated prompt, order and batch do not
matter, the LRU never serves changed text, and attention mass is accounted for."""

from __future__ import annotations

import threading

import pytest
import torch

from assistant.generation.blocks import BlockCache, BlockReader, Row
from tests.conftest import tiny_model

PREFIX = "<bos>Context: The game was in 2016.\nQuestion: When?\nAnswer: 2016\n\n"
PASSAGES = [
    "Context: Denver beat Carolina in Santa Clara to win Super Bowl 50.\n",
    "Context: The halftime show was headlined by the British rock group Coldplay.\n",
    "Context: Gold was used to emphasize the 50th anniversary.\n",
]
LEAD, TARGET, TAIL = "Question:", " Who won Super Bowl 50?", "\nAnswer:"


def reader_for(model, tokenizer, max_bytes: int = 10**9) -> BlockReader:
    return BlockReader(model, tokenizer, "cpu", name="tiny", max_bytes=max_bytes,
                       lock=threading.Lock())


def first_passage_prompt(kind: str, tokenizer):
    """A tiny model, its block reader, and the prompt examples + passage 0 + question run
    over the passage's block, ready to decode."""
    model = tiny_model(kind, len(tokenizer))
    reader = reader_for(model, tokenizer)
    prefix = reader.prefix(PREFIX)
    blocks = reader.blocks(prefix, [(0, PASSAGES[0])])
    return model, reader, reader.score(prefix, blocks, lead=LEAD, target=TARGET,
                                       tail=TAIL).states[0]


def concatenated_logits(model, reader, parts: list[str]) -> torch.Tensor:
    """Logits ``(seq_len, vocab)`` of the prompt given as text parts, read as one sequence."""
    ids = [i for part in parts for i in reader.tokens(part)]
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("kind", ["gemma3", "llama", "qwen2"])
def test_one_block_then_the_question_equals_the_concatenated_prompt(kind, tiny_tokenizer):
    model = tiny_model(kind, len(tiny_tokenizer))
    reader = reader_for(model, tiny_tokenizer)
    prefix = reader.prefix(PREFIX)
    blocks = reader.blocks(prefix, [(i, p) for i, p in enumerate(PASSAGES)])
    scored = reader.score(prefix, blocks, lead=LEAD, target=TARGET, tail=TAIL)
    target = reader.tokens(TARGET)
    for i, passage in enumerate(PASSAGES):
        logits = concatenated_logits(model, reader, [PREFIX, passage, LEAD, TARGET, TAIL])
        assert torch.allclose(scored.states[i].first_logits, logits[-1], atol=1e-4)
        # the question's log-likelihood from the same logits
        start = logits.shape[0] - len(reader.tokens(TAIL)) - len(target) - 1
        logp = torch.log_softmax(logits[start:start + len(target)], dim=-1)
        expected = float(logp.gather(-1, torch.tensor(target)[:, None]).sum())
        assert scored.loglik[i] == pytest.approx(expected, abs=1e-3)
        # and a fused reading over this one block is the same prompt again
        fused = reader.fused(prefix, [blocks[i]], LEAD + TARGET + TAIL)
        assert torch.allclose(fused.first_logits, logits[-1], atol=1e-4)


@pytest.mark.parametrize("kind", ["gemma3", "llama", "qwen2"])
def test_greedy_decoding_over_a_block_matches_generate(kind, tiny_tokenizer):
    model, reader, state = first_passage_prompt(kind, tiny_tokenizer)
    text, done = reader.decode(state, max_new_tokens=6, end_ids=[])
    ids = [i for part in (PREFIX, PASSAGES[0], LEAD, TARGET, TAIL) for i in reader.tokens(part)]
    expected = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    assert done.ids == expected and len(done.ids) == 6
    assert text == tiny_tokenizer.decode(expected)
    assert done.logprob < 0


@pytest.mark.parametrize("kind", ["gemma3", "llama", "qwen2"])
def test_the_direct_decoder_computes_what_the_model_computes(kind, tiny_tokenizer):
    """Decoding passes of 1 and 3 tokens after a context longer than Gemma's 4-token sliding
    window: the direct decoder's hidden states equal transformers' decoder's, and both leave
    the same keys and values in the cache."""
    import importlib

    from assistant.generation.blocks import (DirectDecoder, _rms_weight, _rope_factors,
                                             _rotate, growing_cache)

    model, reader, state = first_passage_prompt(kind, tiny_tokenizer)
    engine = reader.engine
    assert isinstance(engine._direct, DirectDecoder)
    context = state.context
    key_pos = torch.cat([s.positions for s in context])
    start = int(key_pos.max()) + 1
    caches = {way: growing_cache(context, 2) for way in ("direct", "model")}
    for run in ([5], [7, 8, 9]):
        positions = torch.arange(start, start + len(run))
        key_pos = torch.cat([key_pos, positions])
        ok = torch.ones(1, key_pos.shape[0], dtype=torch.bool)
        masks = engine._masks(key_pos[None], ok, positions[None],
                              key_pos.shape[0] - len(run) + torch.arange(len(run)))
        ids = torch.tensor([run])
        direct = engine._direct(ids, positions[None], masks, caches["direct"])
        with torch.inference_mode():
            plain = model.get_decoder()(input_ids=ids, position_ids=positions[None],
                                        attention_mask=masks, use_cache=True,
                                        **{engine._decoder_cache_arg: caches["model"]})
        assert torch.allclose(direct, plain.last_hidden_state, atol=1e-5)
        start += len(run)
    for a, b in zip(caches["direct"].layers, caches["model"].layers):
        assert a.filled == b.filled == key_pos.shape[0]
        assert torch.allclose(a.keys, b.keys, atol=1e-5)
        assert torch.allclose(a.values, b.values, atol=1e-5)
    # its fused norms give the modules' own bits (random weights: Gemma's 1 + w included)
    norms = [m for m in model.modules() if id(m) in engine._direct.norms]
    assert len(norms) >= 2 * model.config.num_hidden_layers
    for module in norms:
        with torch.no_grad():
            module.weight.normal_()
        engine._direct.norms[id(module)] = _rms_weight(module)
        x = torch.randn(2, 3, module.weight.shape[0]) * 3
        assert torch.equal(engine._direct._norm(module, x), module(x))
    # and its rotation gives the model's own apply_rotary_pos_emb bits
    cos, sin = torch.randn(2, 1, 3, 16), torch.randn(2, 1, 3, 16)
    q, k = torch.randn(2, 4, 3, 16), torch.randn(2, 1, 3, 16)
    factors = _rope_factors(cos[:, 0], sin[:, 0])
    own = importlib.import_module(type(model.get_decoder().layers[0].self_attn).__module__)
    expected = own.apply_rotary_pos_emb(q, k, cos[:, 0], sin[:, 0])
    assert torch.equal(_rotate(q, *factors), expected[0])
    assert torch.equal(_rotate(k, *factors), expected[1])


def test_other_architectures_decode_through_transformers(tiny_tokenizer):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from assistant.generation.blocks import DirectDecoder

    config = Gemma2Config(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                          head_dim=16)
    assert DirectDecoder.of(Gemma2ForCausalLM(config), ["full_attention"] * 2) is None


def test_a_stored_prefix_is_read_back_instead_of_run_again(tiny_tokenizer, tmp_path):
    """The worked examples' cache written by one process is read by the next without a
    forward pass, identical; a damaged file is computed again and replaced; another model
    key or other text never reads it."""
    from assistant.generation.blocks import PrefixStore

    model = tiny_model("gemma3", len(tiny_tokenizer))
    store = PrefixStore(tmp_path / "prefixes", "tiny-gemma fp32 cpu")

    def reader(runs: list):
        made = BlockReader(model, tiny_tokenizer, "cpu", name="tiny", max_bytes=10**9,
                           lock=threading.Lock(), prefixes=store)
        run = made.engine.run
        made.engine.run = lambda *a, **k: runs.append(1) or run(*a, **k)
        return made

    runs: list = []
    first = reader(runs).prefix(PREFIX)
    assert runs == [1] and len(list(store.folder.iterdir())) == 1
    runs.clear()
    again = reader(runs).prefix(PREFIX)
    assert runs == []
    assert all(torch.equal(a, b) for a, b in zip(first.keys + first.values,
                                                  again.keys + again.values))
    assert torch.equal(first.positions, again.positions) and again.ids == first.ids
    path = store.path(first.ids)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    third = reader(runs).prefix(PREFIX)
    assert runs == [1] and torch.equal(third.keys[0], first.keys[0])
    assert reader(runs).prefix(PREFIX) is not None and runs == [1]  # rewritten whole
    assert PrefixStore(store.folder, "another model").path(first.ids) != path
    assert store.path(first.ids[:-1]) != path


def test_blocks_in_any_order_or_batch_are_the_same(tiny_tokenizer):
    model = tiny_model("gemma3", len(tiny_tokenizer))
    one = reader_for(model, tiny_tokenizer)
    other = reader_for(model, tiny_tokenizer)
    items = [(i, p) for i, p in enumerate(PASSAGES)]
    a = one.blocks(one.prefix(PREFIX), items, batch=1)
    b = other.blocks(other.prefix(PREFIX), items[::-1], batch=3)[::-1]  # padded together
    for x, y in zip(a, b):
        assert torch.equal(x.positions, y.positions)
        for kx, ky in zip(x.keys + x.values, y.keys + y.values):
            assert torch.allclose(kx, ky, atol=1e-5)


def test_the_lru_never_serves_a_block_of_changed_text(tiny_tokenizer):
    model = tiny_model("llama", len(tiny_tokenizer))
    reader = reader_for(model, tiny_tokenizer)
    prefix = reader.prefix(PREFIX)
    first = reader.blocks(prefix, [(7, PASSAGES[0])])[0]
    assert reader.blocks(prefix, [(7, PASSAGES[0])])[0] is first  # served again
    assert reader.encoded == 1
    changed = reader.blocks(prefix, [(7, PASSAGES[1])])[0]  # same passage id, new text
    assert changed is not first and reader.encoded == 2
    assert changed.ids == reader.tokens(PASSAGES[1])
    # another prefix: a new block too
    other = reader.prefix(PREFIX + "Context: x\nQuestion: y\nAnswer: x\n\n")
    assert reader.blocks(other, [(7, PASSAGES[0])])[0] is not first and reader.encoded == 3


def test_the_lru_is_bounded_in_bytes(tiny_tokenizer):
    model = tiny_model("llama", len(tiny_tokenizer))
    reader = reader_for(model, tiny_tokenizer)
    prefix = reader.prefix(PREFIX)
    block = reader.blocks(prefix, [(0, PASSAGES[0])])[0]
    cache = BlockCache(max_bytes=int(block.nbytes * 2.5))
    for key in range(4):
        cache.put((key,), block)
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    assert cache.get((0,)) is None and cache.get((3,)) is block


@pytest.mark.parametrize("kind, overrides", [
    ("gemma3", {}),  # the sliding and the global layer rotate with different RoPE bases
    # YaRN scales RoPE's cos and sin (attention factor 1 + 0.1 ln 4): a move must not
    ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                "original_max_position_embeddings": 256}}),
])
def test_shifted_keys_equal_keys_computed_at_the_new_positions(kind, overrides, tiny_tokenizer):
    model = tiny_model(kind, len(tiny_tokenizer), **overrides)
    reader = reader_for(model, tiny_tokenizer)
    ids = reader.tokens(PASSAGES[0])
    _, at_10, _ = reader.engine.run([Row([], ids, list(range(10, 10 + len(ids))))])
    _, at_47, _ = reader.engine.run([Row([], ids, list(range(47, 47 + len(ids))))])
    moved = reader.engine.shifted(at_10[0], 37)
    assert torch.equal(moved.positions, at_47[0].positions)
    for x, y in zip(moved.keys, at_47[0].keys):
        assert torch.allclose(x, y, atol=1e-5)


@pytest.mark.parametrize("layout", ["start", "end", "sequence"])
def test_attention_mass_sums_to_one_over_blocks_and_the_rest(layout, tiny_tokenizer):
    model = tiny_model("gemma3", len(tiny_tokenizer))
    reader = reader_for(model, tiny_tokenizer)
    prefix = reader.prefix(PREFIX)
    blocks = reader.blocks(prefix, [(i, p) for i, p in enumerate(PASSAGES)])
    masses, other = reader.support(prefix, blocks, LEAD + TARGET + TAIL,
                                   reader.tokens(" Denver"), layout=layout)
    assert len(masses) == 2 and len(masses[0]) == 2 and len(masses[0][0]) == 3
    for layer in range(2):
        for head in range(2):
            total = sum(masses[layer][head]) + other[layer][head]
            assert total == pytest.approx(1.0, abs=1e-4)
            assert all(0 <= m <= 1 for m in masses[layer][head])
    # the global layer sees every block; the 4-token window of the sliding layer sees none
    assert sum(masses[1][0]) > 0
    assert sum(masses[0][0]) == pytest.approx(0.0, abs=1e-6)


def test_recording_some_layers_stops_after_them_with_the_same_masses(tiny_tokenizer, monkeypatch):
    """The support heads' layers alone: the same masses for them as a pass recording every
    layer, none for the others, and no layer after the last one asked for is run."""
    from assistant.reader import support_weights

    model = tiny_model("gemma3", len(tiny_tokenizer), num_hidden_layers=3,
                       layer_types=["sliding_attention", "full_attention", "full_attention"])
    reader = reader_for(model, tiny_tokenizer)
    prefix = reader.prefix(PREFIX)
    blocks = reader.blocks(prefix, [(i, p) for i, p in enumerate(PASSAGES)])
    args = (prefix, blocks, LEAD + TARGET + TAIL, reader.tokens(" Denver Broncos"))
    every, _ = reader.support(*args)
    ran = []
    last = model.model.layers[2]
    monkeypatch.setattr(last, "forward", lambda *a, **k: ran.append(2) or ())
    some, _ = reader.support(*args, layers={1})
    assert ran == [] and some[0] == [] and some[2] == [] and some[1] == every[1]
    assert support_weights(some, [(1, 0), (1, 1)]) == support_weights(every, [(1, 0), (1, 1)])


def test_the_support_of_each_sentence_comes_from_the_same_pass(tiny_tokenizer):
    """An answer's parts in one support pass: over all of them, the masses are the parts'
    masses weighted by their token counts, and the same as the pass over the whole answer."""
    model = tiny_model("gemma3", len(tiny_tokenizer))
    reader = reader_for(model, tiny_tokenizer)
    prefix = reader.prefix(PREFIX)
    blocks = reader.blocks(prefix, [(i, p) for i, p in enumerate(PASSAGES)])
    parts = [reader.tokens(" Denver Broncos won."), reader.tokens(" Coldplay headlined.")]
    text = LEAD + TARGET + TAIL
    whole, per_part = reader.support_parts(prefix, blocks, text, parts)
    once, _ = reader.support(prefix, blocks, text, parts[0] + parts[1])
    a, b = len(parts[0]), len(parts[1])
    for layer in range(2):
        for head in range(2):
            assert whole[layer][head] == pytest.approx(once[layer][head], abs=1e-6)
            mixed = [(a * x + b * y) / (a + b) for x, y in zip(per_part[0][layer][head],
                                                                per_part[1][layer][head])]
            assert whole[layer][head] == pytest.approx(mixed, abs=1e-5)
    assert per_part[0][1][0] != per_part[1][1][0]  # each part its own


def test_attention_lands_on_the_block_planted_to_hold_the_answer(tiny_tokenizer):
    """A one-layer Llama whose queries and keys use the same projection and whose RoPE barely
    turns (a huge base): a token attends to earlier copies of itself. The answer's tokens are
    words of the second passage only, so its block must get the most support."""
    from assistant.reader import support_weights

    model = tiny_model("llama", len(tiny_tokenizer), num_hidden_layers=1, rope_theta=1e12)
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        attn.k_proj.weight.normal_(0, 0.5)  # same-token dot products far above the rest
        attn.q_proj.weight.copy_(attn.k_proj.weight.repeat(2, 1))
    reader = reader_for(model, tiny_tokenizer)
    prefix = reader.prefix(PREFIX)
    blocks = reader.blocks(prefix, [(i, p) for i, p in enumerate(PASSAGES)])
    answer = reader.tokens(" British rock group Coldplay")
    masses, _ = reader.support(prefix, blocks, LEAD + " Who headlined the show?" + TAIL, answer)
    weights = support_weights(masses)
    assert sum(weights) == pytest.approx(1.0)
    assert max(range(3), key=weights.__getitem__) == 1
    assert weights[1] > 1.8 * max(weights[0], weights[2])  # measured 0.50 vs 0.26, 0.24


def test_a_stored_block_owns_only_its_own_memory(tiny_tokenizer):
    model = tiny_model("gemma3", len(tiny_tokenizer))
    reader = reader_for(model, tiny_tokenizer)
    prefix = reader.prefix(PREFIX)
    block = reader.blocks(prefix, [(i, p) for i, p in enumerate(PASSAGES)], batch=3)[0]
    for t in block.keys + block.values:
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_drafted_decoding_gives_the_greedy_tokens_in_fewer_passes(kind, tiny_tokenizer):
    _, reader, state = first_passage_prompt(kind, tiny_tokenizer)
    engine = reader.engine

    def run(source):
        return engine.decode(state.context, state.first_logits, max_new_tokens=12, end_ids=[],
                             draft_from=source)

    plain = run([])
    assert len(plain.ids) == 12 and plain.passes == 12
    # proposals that are exactly what greedy decoding picks: all accepted, few passes
    copied = run([5, 6] + plain.ids)
    assert copied.ids == plain.ids and copied.passes < 6
    assert copied.logprob == pytest.approx(plain.logprob, abs=1e-3)
    # proposals that are all wrong: rejected, cut from the cache, same tokens
    wrong = run([(i + 1) % len(tiny_tokenizer) for i in plain.ids] + plain.ids[:1] + [7] * 12)
    assert wrong.ids == plain.ids
    assert wrong.logprob == pytest.approx(plain.logprob, abs=1e-3)


def test_lookup_proposes_what_follows_the_answer_in_the_passage():
    from assistant.generation.blocks import _lookup

    passage = [10, 11, 12, 13, 14, 11, 12, 20]
    assert _lookup([11, 12], passage, 3) == [13, 14, 11]  # first occurrence of the 2-gram
    assert _lookup([99, 12], passage, 2) == [13]  # the last token alone: a weak guess, one
    assert _lookup([99, 12], passage, 2, weak=2) == [13, 14]
    assert _lookup([10, 11, 12], passage, 6) == [13, 14, 11, 12, 20]  # the passage's end
    assert _lookup([99], passage, 5) == []
    assert _lookup([14], passage, 0) == []


def test_a_loop_the_passages_do_not_hold_ends_a_free_answer():
    from assistant.generation.blocks import looping

    zeros = [5, 1] + [0] * 8
    assert looping(zeros, source=[7, 8, 9])                      # "1 0 0 0 0 0 0 0 0"
    assert not looping(zeros, source=[1] + [0] * 9)              # the passage holds the run
    assert looping([3, 4] * 4, source=[3, 4, 5])                 # a two-token cycle
    assert not looping([3, 4] * 3 + [3], source=[])              # shorter than the window
    assert not looping(list(range(8)), source=[])                # no cycle
    assert not looping([0] * 8, source=[], window=0)             # switched off


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_a_restricted_head_gives_the_greedy_tokens_when_they_are_in_it(kind, tiny_tokenizer):
    _, reader, state = first_passage_prompt(kind, tiny_tokenizer)
    engine = reader.engine
    plain = engine.decode(state.context, state.first_logits, max_new_tokens=8, end_ids=[3])
    # a vocabulary with the greedy tokens and unrelated others: the same tokens, and each
    # step's log-probability is at least the full one (normalised over fewer tokens)
    vocab = sorted(set(plain.ids) | set(range(20, 60)))
    cut = engine.decode(state.context, state.first_logits, max_new_tokens=8, end_ids=[3],
                        vocab=vocab)
    assert cut.ids == plain.ids
    # the log-probability is still over the whole vocabulary: the same as the full head's
    assert cut.logprob == pytest.approx(plain.logprob, abs=1e-4)
    # and with drafts (several tokens per pass) too
    drafted = engine.decode(state.context, state.first_logits, max_new_tokens=8, end_ids=[3],
                            vocab=vocab, draft_from=[5, 6] + plain.ids)
    assert drafted.ids == plain.ids and drafted.passes < plain.passes
    assert drafted.logprob == pytest.approx(plain.logprob, abs=1e-4)
    # the head's logits are the model's own for those rows
    head = engine.head_rows(vocab)
    hidden = torch.randn(2, engine.model.config.hidden_size)
    full = engine.model.get_output_embeddings()(hidden)
    assert torch.allclose(head(hidden), full[:, head.ids], atol=1e-5)


def test_an_int4_head_gives_the_exact_logits_where_they_can_be_chosen():
    """The screened head's largest logit is the float head's; the others are exact or int4
    values that stay below it."""
    from assistant.generation.precision import Int4Head

    torch.manual_seed(1)
    for rows, hidden in [(1000, 64), (1003, 128)]:  # 1003: not a multiple of the kernel's 16
        weight = (torch.randn(rows, hidden) * 0.05).half()
        head = Int4Head.quantize(weight)
        states = torch.randn(3, hidden) * 3
        exact = states @ weight.float().t()
        logits = head(states)
        assert logits.shape == exact.shape
        assert torch.equal(logits.argmax(-1), exact.argmax(-1))
        best = exact.max(-1, keepdim=True).values
        assert torch.allclose(logits.max(-1, keepdim=True).values, best, atol=1e-4)
        off = (logits - exact).abs()
        assert 0 < float(off.max()) < 0.25 * float(exact.abs().max())  # int4 rows ...
        assert bool((logits[off > 1e-4] < best.expand_as(off)[off > 1e-4]).all())  # ... below
        # stored and read back for the same weights; refused for others
        again = Int4Head.from_tensors(weight, head.tensors())
        assert torch.equal(again(states), logits)
        assert Int4Head.from_tensors(weight[:-16], head.tensors()) is None
        assert Int4Head.from_tensors(weight, {"packed": head.packed}) is None  # another layout
        assert head(torch.randn(4, hidden)) is None  # more states: the whole head is faster


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_a_screened_head_decodes_the_full_heads_tokens(kind, tiny_tokenizer, tmp_path,
                                                      monkeypatch):
    from assistant.generation import precision
    from assistant.generation.blocks import PrefixStore
    from assistant.generation.precision import Int4Head

    model = tiny_model(kind, len(tiny_tokenizer), hidden_size=64)
    store = PrefixStore(tmp_path / "prefixes", f"tiny-{kind}")
    small = BlockReader(model, tiny_tokenizer, "cpu", name="tiny", max_bytes=10**9,
                        lock=threading.Lock(), prefixes=store)
    assert small.screen() is None  # a head this small decodes as fast from float16
    monkeypatch.setattr(precision, "SCREEN_MIN_WEIGHTS", 0)
    reader = BlockReader(model, tiny_tokenizer, "cpu", name="tiny", max_bytes=10**9,
                         lock=threading.Lock())
    assert reader.screen() is None  # no folder to keep it in: not quantized in every process
    reader = BlockReader(model, tiny_tokenizer, "cpu", name="tiny", max_bytes=10**9,
                         lock=threading.Lock(), prefixes=store)
    prefix = reader.prefix(PREFIX)
    blocks = reader.blocks(prefix, [(0, PASSAGES[0])])
    state = reader.score(prefix, blocks, lead=LEAD, target=TARGET, tail=TAIL).states[0]
    text, full = reader.decode(state, max_new_tokens=12, end_ids=[], drafts=False)
    screened_text, screened = reader.decode(state, max_new_tokens=12, end_ids=[],
                                            drafts=False, head="screened")
    assert isinstance(reader.screen(), Int4Head)
    assert screened.ids == full.ids and screened_text == text
    assert screened.logprob == pytest.approx(full.logprob, abs=0.05 * len(full.ids))
    # with drafts: several rows per pass, the same tokens
    _, drafted = reader.decode(state, max_new_tokens=12, end_ids=[], head="screened")
    assert drafted.ids == full.ids
    # a new process reads the stored copy instead of quantizing again
    stored = list(store.folder.glob("head-int4-*.safetensors"))
    assert len(stored) == 1
    fresh = BlockReader(model, tiny_tokenizer, "cpu", name="tiny", max_bytes=10**9,
                        lock=threading.Lock(), prefixes=store)
    assert torch.equal(fresh.screen().packed, reader.screen().packed)
    stored[0].write_bytes(b"not a safetensors file")  # a damaged copy is quantized again
    damaged = BlockReader(model, tiny_tokenizer, "cpu", name="tiny", max_bytes=10**9,
                          lock=threading.Lock(), prefixes=store)
    assert torch.equal(damaged.screen().packed, reader.screen().packed)


def test_a_restricted_head_never_chooses_outside_it(tiny_tokenizer):
    _, reader, state = first_passage_prompt("gemma3", tiny_tokenizer)
    plain = reader.engine.decode(state.context, state.first_logits, max_new_tokens=6, end_ids=[])
    vocab = [t for t in range(5, 40) if t not in plain.ids[:1]]
    cut = reader.engine.decode(state.context, state.first_logits, max_new_tokens=6, end_ids=[],
                               vocab=vocab)
    assert cut.ids and set(cut.ids) <= set(vocab) and cut.ids[0] != plain.ids[0]


@pytest.mark.parametrize("within", [None, PASSAGES[0]])
def test_a_reading_restricted_to_its_prompt_copies_as_the_full_head_does(within, tiny_tokenizer):
    _, reader, state = first_passage_prompt("gemma3", tiny_tokenizer)
    text, full = reader.decode(state, max_new_tokens=8, end_ids=[], within=within)
    cut_text, cut = reader.decode(state, max_new_tokens=8, end_ids=[], within=within,
                                  head="passages")
    prompt = set(i for kv in state.context for i in kv.ids)
    assert set(cut.ids) <= prompt | set(reader.tokens(" " + " ".join(PASSAGES[0].split())))
    if within is not None:  # a copy is inside the head anyway: the same answer
        assert cut_text == text and cut.ids == full.ids


def _attention_case(seed: int = 0):
    """Grouped-query attention inputs: 3 rows, 4 heads over 2 key/value heads, 37 queries
    after 13 context keys, causal over the queries, one context key padded out per row."""
    generator = torch.Generator().manual_seed(seed)
    b, heads, kv, q, context, d = 3, 4, 2, 37, 13, 16
    keys = context + q
    query = torch.randn(b, heads, q, d, generator=generator)
    key = torch.randn(b, kv, keys, d, generator=generator)
    value = torch.randn(b, kv, keys, d, generator=generator)
    allowed = torch.ones(b, 1, q, keys, dtype=torch.bool)
    allowed[..., context:] = torch.ones(q, q, dtype=torch.bool).tril()
    for row in range(b):
        allowed[row, :, :, row] = False
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return query, key, value, mask


def test_prefill_attention_in_bfloat16_matches_sdpa_whole_or_in_runs_of_queries(monkeypatch):
    from transformers.integrations.sdpa_attention import repeat_kv

    from assistant.generation import blocks

    query, key, value, mask = _attention_case()
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, repeat_kv(key, 2), repeat_kv(value, 2), attn_mask=mask, scale=0.25)
    expected = expected.transpose(1, 2)  # (batch, q, heads, d), as the attention returns
    exact = blocks._small_attention(query, key, value, mask, 0.25)
    assert torch.allclose(exact, expected, atol=1e-5)
    whole = blocks._bf16_attention(query, key, value, mask, 0.25)
    monkeypatch.setattr(blocks, "BF16_CHUNK", 4 * 4 * key.shape[2] * 5)  # runs of 5 queries
    runs = blocks._bf16_attention(query, key, value, mask, 0.25)
    assert whole.dtype == runs.dtype == torch.float32 and whole.shape == expected.shape
    assert torch.allclose(runs, whole, atol=2e-2)
    # bfloat16 keeps 8 significant bits: outputs of unit scale within a few hundredths
    assert (whole - expected).abs().max() < 5e-2
    assert (whole - expected).abs().mean() < 5e-3
    # a mask shared by the batch (batch dimension 1) is broadcast
    shared = blocks._bf16_attention(query, key, value, mask[:1], 0.25)
    again = blocks._bf16_attention(query, key, value, mask[:1].expand_as(mask).contiguous(),
                                   0.25)
    assert torch.equal(shared, again)


def test_blocks_encoded_with_bfloat16_attention_give_the_prompts_logits(tiny_tokenizer,
                                                                        monkeypatch):
    """Under ``mixed`` the attention layers are marked ``bf16_prefill``; blocks of at least
    BF16_QUERY tokens are then encoded with bfloat16 attention, within its rounding of the
    float32 prompt (Gemma 3 with a short sliding window, so both layer kinds take it)."""
    from assistant.generation import blocks, precision

    model = tiny_model("gemma3", len(tiny_tokenizer))
    assert precision.mark_bf16_attention(model) == 2  # its two attention layers
    monkeypatch.setattr(blocks, "SMALL_QUERY", 0)
    monkeypatch.setattr(blocks, "BF16_QUERY", 1)
    used = []
    original = blocks._bf16_attention
    monkeypatch.setattr(blocks, "_bf16_attention",
                        lambda *a, **k: used.append(a) or original(*a, **k))
    reader = reader_for(model, tiny_tokenizer)
    prefix = reader.prefix(PREFIX)
    block = reader.blocks(prefix, [(0, PASSAGES[0])])
    scored = reader.score(prefix, block, lead=LEAD, target=TARGET, tail=TAIL)
    assert used  # the bfloat16 path encoded the block
    logits = concatenated_logits(model, reader, [PREFIX, PASSAGES[0], LEAD, TARGET, TAIL])
    assert torch.allclose(scored.states[0].first_logits, logits[-1], atol=5e-2)
    assert int(scored.states[0].first_logits.argmax()) == int(logits[-1].argmax())
