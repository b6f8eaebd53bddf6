import copy

import pytest

from assistant.attribution import best_source
from assistant.extractive import extractive_prompt
from assistant.generation import StopStrings, copy_constraint
from assistant.prompts import build_prompt


def test_stop_strings_cut_across_fragments():
    cutter = StopStrings(["\\n\\n", "Question:"])
    out = "".join(cutter.push(p) for p in ["Denver Bro", "ncos won.\\nQues", "tion: next"])
    assert out == "Denver Broncos won.\\n" and cutter.stopped
    plain = StopStrings([])
    assert plain.push("abc") == "abc" and plain.flush() == ""


@pytest.mark.slow
def test_real_model_streams_a_grounded_answer(real_generator, squad_passages):
    from index.store import Passage

    p = squad_passages[0]
    passage = Passage(1, 1, "/docs/superbowl.md", p["title"], p["title"], None, 1, 1, p["text"])
    prompt = build_prompt("Which team won Super Bowl 50?", [passage], counter=real_generator,
                          budget_tokens=1024)
    assert prompt.passages_used == 1 and prompt.tokens == real_generator.prompt_tokens(prompt.messages)
    reply = real_generator.generate(prompt.messages, max_new_tokens=40)
    fragments = list(reply)
    text = "".join(fragments)
    assert len(fragments) > 3  # streamed, not returned at once
    # grounded: most of what it says comes from the passage (SmolLM2-135M paraphrases, and
    # often answers a neighbouring question, so the exact answer is not asserted here)
    assert best_source(text, [p["text"]]) == 1, text
    stats = reply.stats
    assert 0 < stats.new_tokens <= 40 and stats.prompt_tokens == prompt.tokens
    assert stats.first_token_s is not None and stats.first_token_s <= stats.total_s
    assert stats.tokens_per_s and stats.tokens_per_s > 1 and not stats.cancelled


def _cancel_after(reply, pieces: int) -> list[str]:
    """Read ``reply`` to the end, cancelling it once ``pieces`` pieces have come; returns
    every piece read."""
    got = []
    for piece in reply:
        got.append(piece)
        if len(got) == pieces:
            reply.cancel()
    return got


@pytest.mark.slow
def test_real_model_can_be_cancelled_and_stopped(real_generator):
    messages = [{"role": "user", "content": "Count from one to one hundred in words."}]
    reply = real_generator.generate(messages, max_new_tokens=200)
    _cancel_after(reply, 3)
    assert reply.stats.cancelled and reply.stats.new_tokens < 20

    # a base model continues a list; the stop string ends it at the first comma
    listing = [{"role": "user", "content": "Numbers in words: one, two, three,"}]
    stopped = real_generator.generate(listing, max_new_tokens=200, stop=[","])
    text = stopped.text()
    assert "," not in text and not stopped.stats.cancelled and stopped.stats.new_tokens < 30


def test_copy_constraint_follows_runs_of_the_span():
    allowed = copy_constraint([5, 6, 7, 5, 8], end_ids=[0])
    assert allowed([]) == [5, 6, 7, 8]  # any token of the span starts an answer
    assert allowed([5]) == [0, 6, 8]  # what follows either 5, or the end
    assert allowed([5, 6]) == [0, 7]
    assert allowed([7, 5, 8]) == [0]  # the span's last token: only the end
    assert allowed([6, 5]) == [0]  # not a run of the span: nothing but the end


@pytest.mark.slow
def test_real_model_copies_a_span_when_constrained(real_generator, squad_passages):
    passage = " ".join(squad_passages[0]["text"].split())
    prompt = extractive_prompt("What is the capital of France?", passage)
    free = "".join(real_generator.complete(prompt, max_new_tokens=12, stop=["\n"])).strip()
    copied = "".join(real_generator.complete(prompt, max_new_tokens=12, stop=["\n"],
                                             within=passage)).strip()
    assert "Paris" in free  # what the model knows, not what the passage says
    from assistant.extractive import extractive_prefix  # the examples' cache changes nothing

    assert "".join(real_generator.complete(prompt, max_new_tokens=12, stop=["\n"],
                                           shared_prefix=extractive_prefix())).strip() == free
    assert copied and copied in passage


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory, tiny_tokenizer):
    """A two-layer Gemma 3 built from a config with random weights (one sliding-window layer,
    window 4 tokens, so prompts cross it) and a byte-level BPE tokenizer trained on the
    extractive template: the architecture of the embedded default in a few hundred kB."""
    from tests.conftest import tiny_model

    folder = tmp_path_factory.mktemp("tiny-gemma")
    tiny_model("gemma3", len(tiny_tokenizer)).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    from assistant.generation import TransformersGenerator

    return TransformersGenerator("tiny-gemma", str(folder), device="cpu")


@pytest.mark.parametrize("loop", ["direct", "generate"])
def test_a_shared_prefix_is_cached_and_changes_nothing(tiny_gemma, loop, monkeypatch):
    from assistant.extractive import extractive_prefix

    monkeypatch.setattr(tiny_gemma, "decode_loop", loop)
    head = extractive_prefix()
    assert head.count("Context: ") == 10 and head.endswith("\n\n")
    outputs = []
    for question in ("Who won Super Bowl 50?", "Where was it played?"):
        prompt = extractive_prompt(question, "Denver beat Carolina in Santa Clara.")
        plain = tiny_gemma.complete(prompt, max_new_tokens=6)
        text = plain.text()
        cached = tiny_gemma.complete(prompt, max_new_tokens=6, shared_prefix=head)
        assert cached.text() == text and cached.stats.new_tokens == plain.stats.new_tokens
        assert cached.stats.logprob == pytest.approx(plain.stats.logprob, abs=1e-4)
        assert cached.stats.logprob < 0 and cached.stats.mean_logprob <= 0
        outputs.append(text)
    # computed once, for the prompt's own tokens of `head`
    key = (tiny_gemma._cached_prefix[0] if loop == "generate"
           else tiny_gemma.blocks._prefix[1].ids)
    assert list(key) == tiny_gemma.tokenizer("<bos>" + head, add_special_tokens=False)["input_ids"]
    # a prefix the prompt does not start with is ignored
    other = tiny_gemma.complete(prompt, max_new_tokens=6, shared_prefix="Nothing like it")
    assert other.text() == outputs[-1]


@pytest.fixture(scope="module")
def tiny_gemma_dir(tiny_gemma):
    return tiny_gemma.model.name_or_path


@pytest.mark.parametrize("precision, tolerance", [("int8", 0.05), ("fp16", 0.002)])
def test_int8_and_fp16_weights_give_the_float32_greedy_answer(tiny_gemma, tiny_gemma_dir,
                                                              precision, tolerance):
    """Dynamic int8 quantization, or float16 storage, of every Linear layer (the output head
    included) on a fixed prompt: the same greedy tokens through the block reader, logits close
    to float32 (float16 weights with float32 arithmetic: much closer than int8)."""
    import torch

    from assistant.generation import TransformersGenerator
    from assistant.reader import LEAD, TAIL

    int8 = TransformersGenerator("tiny-gemma", tiny_gemma_dir, device="cpu", precision=precision)
    assert int8.precision == precision
    if precision == "fp16":  # every Linear, the output head included, packed in pieces
        from assistant.generation.precision import Fp16Linear

        assert not any(type(m) is torch.nn.Linear for m in int8.model.modules())
        assert isinstance(int8.model.get_output_embeddings(), Fp16Linear)
        assert int8.model.get_input_embeddings().weight.dtype == torch.float16
    else:  # int8 keeps a base model's head in float32 (see precision.apply)
        assert any("quantized" in type(m).__module__ for m in int8.model.modules())

    def answer(generator, head):
        blocks = generator.blocks
        prefix = blocks.prefix("<bos>Context: The game was in 2016.\nAnswer: 2016\n\n")
        block = blocks.blocks(prefix, [(0, "Context: Denver beat Carolina to win.\n")])
        state = blocks.score(prefix, block, lead=LEAD, target=" Who won?", tail=TAIL).states[0]
        return state.first_logits, blocks.decode(state, max_new_tokens=8, end_ids=[],
                                                 head=head)[1].ids

    ref_logits, ref_ids = answer(tiny_gemma, "full")
    logits, ids = answer(int8, "full")
    assert ids == ref_ids
    assert torch.allclose(logits, ref_logits, atol=tolerance * float(ref_logits.abs().max()))
    assert answer(int8, "passages")[1] == answer(tiny_gemma, "passages")[1]


def test_a_float16_embedding_gives_the_float32_rows_of_float16_weights():
    """Gemma 3's scaled embedding (rows times sqrt(hidden) in float32) and a plain one: kept
    in float16, the same float32 output when the weights are float16 numbers (as the
    embedded models' are)."""
    import torch
    from torch.nn import Embedding
    from transformers.models.gemma3.modeling_gemma3 import Gemma3TextScaledWordEmbedding

    from assistant.generation.precision import Fp16Embedding

    ids = torch.tensor([[0, 5, 99, 5]])
    for module in (Gemma3TextScaledWordEmbedding(100, 64, 0, embed_scale=64 ** 0.5),
                   Embedding(100, 64)):
        with torch.no_grad():
            module.weight.copy_(torch.randn(100, 64).half().float())
        small = Fp16Embedding(module)
        assert small.weight.dtype == torch.float16
        out = small(ids)
        assert out.dtype == torch.float32 and torch.equal(out, module(ids))


def test_a_linear_packed_in_fp16_pieces_computes_the_float16_rounded_product(monkeypatch):
    """A layer bigger than one piece is packed in pieces whose outputs are concatenated: the
    product equals float32 arithmetic over the float16-rounded weight, bias included, and
    ``weight()`` gives that weight back."""
    import torch

    from assistant.generation import precision

    monkeypatch.setattr(precision, "PACK_ROWS", 16)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Linear(40, 8, bias=False))
    x = torch.randn(3, 5, 24)
    rounded = [layer.weight.detach().half().float() for layer in model]
    expected = torch.nn.functional.linear(
        torch.nn.functional.linear(x, rounded[0], model[0].bias.detach()), rounded[1])
    precision.pack_fp16(model, threads=2)
    assert [len(layer.pieces) for layer in model] == [3, 1]
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert torch.equal(model[0].weight(), rounded[0])


def test_weights_packed_from_the_files_while_loading_are_used_only_where_they_match(
        tmp_path, tiny_tokenizer, monkeypatch):
    """``start_prepack`` packs a saved model's weights from its safetensors files; packing the
    loaded model then takes those pieces (the same objects) and gives the logits of packing it
    after loading. A model whose weights differ from the files packs its own; an untied input
    embedding is not packed; fp32, or a folder without safetensors, packs nothing."""
    import torch
    from transformers import AutoModelForCausalLM

    from assistant.generation import precision, start_prepack
    from tests.conftest import tiny_model

    monkeypatch.setattr(precision, "PACK_ROWS", 64)  # the 300-row head: several pieces
    ids = torch.tensor([[2, 5, 17, 40, 9]])
    for kind, tied in (("gemma3", True), ("qwen2", False)):
        folder = tmp_path / kind
        tiny_model(kind, len(tiny_tokenizer), tie_word_embeddings=tied).save_pretrained(folder)
        packed = start_prepack(folder, "fp16", "cpu")
        assert packed is not None and packed.folder == folder

        def load():
            return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

        reference = precision.pack_fp16(load(), threads=1)
        model = precision.pack_fp16(load(), threads=1, prepacked=packed)
        assert packed.error is None
        key = "model.embed_tokens.weight" if tied else "lm_head.weight"
        assert model.lm_head.pieces is packed.pieces(key, load().lm_head.weight)
        assert len(model.lm_head.pieces) == -(-len(tiny_tokenizer) // 64) > 1
        assert ("model.embed_tokens.weight" in packed._packed) == tied
        with torch.no_grad():
            assert torch.equal(model(ids).logits, reference(ids).logits)
            other = load()
            other.model.layers[0].mlp.up_proj.weight.add_(0.5)
            expected = precision.pack_fp16(copy.deepcopy(other), threads=1)
            mixed = precision.pack_fp16(other, threads=1, prepacked=packed)
            assert mixed.lm_head.pieces is packed.pieces(key, load().lm_head.weight)
            assert torch.equal(mixed(ids).logits, expected(ids).logits)
            assert not torch.equal(mixed(ids).logits, model(ids).logits)
    assert start_prepack(tmp_path / "gemma3", "fp32", "cpu") is None
    assert start_prepack(tmp_path, "fp16", "cpu") is None  # no safetensors files


def test_a_model_is_ready_to_prepack_only_when_its_folder_is_on_disk(tmp_path):
    from assistant.models import ready_path

    assert ready_path("gemma-3-270m", tmp_path) is None  # not converted yet
    (tmp_path / "gemma-3-270m").mkdir()
    (tmp_path / "gemma-3-270m" / "config.json").write_text("{}")
    assert ready_path("gemma-3-270m", tmp_path) == str(tmp_path / "gemma-3-270m")
    assert ready_path(str(tmp_path), tmp_path / "models") == str(tmp_path)  # a local folder
    assert ready_path("google/gemma-3-270m", tmp_path) is None  # a hub id


def test_an_unreadable_weights_file_leaves_the_layers_to_pack_themselves(tmp_path):
    import torch

    from assistant.generation import start_prepack

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    packed = start_prepack(tmp_path, "fp16", "cpu")
    assert packed.pieces("model.embed_tokens.weight", torch.zeros(4, 4)) is None
    assert packed.error is not None


def test_the_prefix_cache_on_disk_is_keyed_by_the_model_files_and_precision(tiny_gemma_dir,
                                                                           tmp_path):
    from assistant.generation import TransformersGenerator, model_files_key

    stores = [TransformersGenerator("tiny-gemma", tiny_gemma_dir, device="cpu", precision=p,
                                    cache_dir=tmp_path).blocks.prefixes for p in ("fp32", "fp16")]
    assert all(store is not None and store.folder == tmp_path for store in stores)
    assert stores[0].path([1, 2, 3]) != stores[1].path([1, 2, 3])
    assert model_files_key("google/gemma-3-270m", "fp32", "cpu") is None  # a hub id
    plain = TransformersGenerator("tiny-gemma", tiny_gemma_dir, device="cpu")
    assert plain.blocks.prefixes is None


def test_an_unknown_or_unavailable_precision_is_a_one_line_error(tiny_gemma_dir):
    from assistant.generation import GenerationError, TransformersGenerator

    with pytest.raises(GenerationError, match="unknown precision 'int3'"):
        TransformersGenerator("tiny-gemma", tiny_gemma_dir, device="cpu", precision="int3")
    with pytest.raises(GenerationError, match="'int4' runs on CUDA only"):
        TransformersGenerator("tiny-gemma", tiny_gemma_dir, device="cpu", precision="int4")


def test_auto_precision_is_mixed_or_fp16_weights_on_an_x86_cpu_and_bf16_on_cuda(monkeypatch):
    from assistant.generation import precision
    from assistant.generation.precision import PrecisionError, packed_fp16, resolve

    for native in (True, False):
        monkeypatch.setattr(precision, "native_bf16", lambda native=native: native)
        cpu = ("mixed" if native else "fp16") if packed_fp16() else "fp32"
        assert resolve("auto", "cpu") == cpu
    assert resolve("auto", "mps") == "fp32"
    assert resolve("auto", "cuda:0") == "bf16"
    assert resolve("fp32", "cpu") == "fp32"
    with pytest.raises(PrecisionError, match="'mixed' is for CPUs with bfloat16"):
        resolve("mixed", "cpu")  # native_bf16 is False here now
    with pytest.raises(PrecisionError, match="'mixed' is for CPUs"):
        resolve("mixed", "cuda:0")


def test_mixed_precision_multiplies_many_rows_in_bfloat16_and_few_in_float16():
    """Under ``mixed`` a decoder product of at least PREFILL_ROWS rows (prefill) is bfloat16
    arithmetic over a bfloat16 copy of the weight; fewer rows (decoding) go through the
    float16-packed weight; the output head keeps no bfloat16 copy."""
    import torch

    from assistant.generation import precision

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(24, 40)
            self.head = torch.nn.Linear(40, 50, bias=False)

        def get_output_embeddings(self):
            return self.head

        def forward(self, x):
            return self.head(self.layer(x))

    torch.manual_seed(0)
    model = Tiny()
    weight, bias = model.layer.weight.detach().clone(), model.layer.bias.detach().clone()
    precision.pack_fp16(model, threads=1, prefill_bf16=True)
    assert model.layer.bf16.dtype == torch.bfloat16 and model.head.bf16 is None
    many = torch.randn(precision.PREFILL_ROWS, 24)
    expected = torch.nn.functional.linear(many.bfloat16(), weight.bfloat16()).float() + bias
    assert torch.equal(model.layer(many), expected)
    few = many[:precision.PREFILL_ROWS - 1]
    rounded = torch.nn.functional.linear(few, weight.half().float(), bias)
    assert torch.allclose(model.layer(few), rounded, atol=1e-5)
    assert not torch.equal(model.layer(few), expected[:-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma-3-270m", "SmolLM2-135M-Instruct"])
def test_the_plain_tokenizer_of_an_embedded_model_is_its_own_tokenizer(name, shared_data_dir):
    """The embedded models load their tokenizer from tokenizer.json alone (1 s instead of
    2.4–3.6 s for Gemma 3): the same ids, special tokens, decoding and chat template as the
    directory's own tokenizer class."""
    from pydoc_data.topics import topics
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from assistant.generation import load_tokenizer
    from assistant.models import generator_path

    path = generator_path(name, shared_data_dir / "models")
    own, plain = AutoTokenizer.from_pretrained(path), load_tokenizer(path, plain=True)
    assert isinstance(plain, PreTrainedTokenizerFast)
    texts = [topics[k] for k in sorted(topics)[:20]]
    texts += ["<start_of_turn>user\nWhat is  a tuple?<end_of_turn>\n", "naïve café — 日本語\t\ttabs"]
    for text in texts:
        for special in (True, False):
            ids = own(text, add_special_tokens=special)["input_ids"]
            assert plain(text, add_special_tokens=special)["input_ids"] == ids
        assert plain.decode(ids) == own.decode(ids)
        assert plain.decode(ids, skip_special_tokens=True) == own.decode(ids, skip_special_tokens=True)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id",
                 "all_special_ids", "padding_side", "chat_template", "model_max_length"):
        assert getattr(plain, attr) == getattr(own, attr), attr
    assert len(plain) == len(own)
    if own.chat_template:
        messages = [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "What is a tuple?"}]
        assert (plain.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                == own.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


CHAT_TEMPLATE = ("{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "<bos>assistant:")


@pytest.fixture(scope="module", params=["gemma3", "llama", "qwen2"])
def tiny_chat(request, tmp_path_factory, tiny_tokenizer):
    """A tiny instruction model of each architecture the direct loop writes out (Gemma 3
    with a sliding window the prompt crosses, Llama as SmolLM2, Qwen2 with q/k/v biases):
    random weights, a chat template."""
    from transformers import AutoTokenizer

    from assistant.generation import TransformersGenerator
    from tests.conftest import tiny_model

    folder = tmp_path_factory.mktemp(f"tiny-chat-{request.param}")
    tiny_model(request.param, len(tiny_tokenizer)).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return TransformersGenerator(f"tiny-{request.param}", str(folder), device="cpu")


CHAT = [{"role": "system", "content": "Context: Denver beat Carolina 24-10 in Santa Clara."},
        {"role": "user", "content": "Who won Super Bowl 50, and where was it played?"}]


def _reply(generator, loop, monkeypatch, **kwargs):
    monkeypatch.setattr(generator, "decode_loop", loop)
    reply = generator.generate(CHAT, **kwargs)
    return list(reply), reply.stats


@pytest.mark.parametrize("penalty", [None, 1.3])
def test_the_direct_loop_answers_what_generate_answers(tiny_chat, penalty, monkeypatch):
    """Greedy decoding in the direct loop (prefill over explicit masks, the decoder written
    out, prompt-lookup drafts) against transformers' generate(): the same text, the same
    number of tokens and the same log-probability, with and without the model's repetition
    penalty; a stop string cuts both at the same place."""
    assert tiny_chat.direct_decoding()
    monkeypatch.setattr(tiny_chat.model.generation_config, "repetition_penalty", penalty)
    pieces, direct = _reply(tiny_chat, "direct", monkeypatch, max_new_tokens=24)
    reference, generated = _reply(tiny_chat, "generate", monkeypatch, max_new_tokens=24)
    assert "".join(pieces) == "".join(reference) and len(pieces) > 1  # streamed
    assert direct.new_tokens == generated.new_tokens > 0
    assert direct.logprob == pytest.approx(generated.logprob, abs=1e-3)
    assert direct.prompt_tokens == generated.prompt_tokens
    text = "".join(reference)
    assert len(text) > 4
    cut = text[len(text) // 2:][:2]  # a stop string from the middle of the answer
    for loop in ("direct", "generate"):
        stopped, stats = _reply(tiny_chat, loop, monkeypatch, max_new_tokens=24, stop=[cut])
        assert "".join(stopped) == text[:text.index(cut)] and not stats.cancelled


def test_a_screened_head_writes_the_same_chat_reply(tmp_path, tiny_tokenizer, monkeypatch):
    """A chat model's greedy reply in the direct loop with the int4-screened output head:
    the same text and token count as with the whole head; the copy is made once, in the
    cache folder."""
    from transformers import AutoTokenizer

    from assistant.generation import TransformersGenerator, precision
    from tests.conftest import tiny_model

    monkeypatch.setattr(precision, "SCREEN_MIN_WEIGHTS", 0)  # a tiny head gains nothing
    calls = []
    screen = precision.Int4Head.__call__
    monkeypatch.setattr(precision.Int4Head, "__call__",
                        lambda self, hidden: calls.append(len(hidden)) or screen(self, hidden))
    folder = tmp_path / "chat"
    tiny_model("llama", len(tiny_tokenizer), hidden_size=64).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    replies = {}
    for screened in (False, True):
        generator = TransformersGenerator("tiny-llama", str(folder), device="cpu",
                                          cache_dir=tmp_path / "cache", screen_head=screened)
        replies[screened] = _reply(generator, "direct", monkeypatch, max_new_tokens=24)
    (plain, plain_stats), (screened, screened_stats) = replies[False], replies[True]
    assert "".join(screened) == "".join(plain) and len("".join(plain)) > 4
    assert screened_stats.new_tokens == plain_stats.new_tokens
    assert calls  # its steps went through the screen
    assert len(list((tmp_path / "cache").glob("head-int4-*.safetensors"))) == 1


def test_a_penalised_model_decodes_through_the_direct_loop_only_when_it_can(tiny_chat,
                                                                          monkeypatch):
    config = tiny_chat.model.generation_config
    monkeypatch.setattr(config, "repetition_penalty", 1.2)
    assert tiny_chat.direct_decoding()
    monkeypatch.setattr(config, "no_repeat_ngram_size", 3)  # not written out: generate()
    assert not tiny_chat.direct_decoding()
    monkeypatch.setattr(config, "no_repeat_ngram_size", None)
    monkeypatch.setattr(tiny_chat, "decode_loop", "generate")
    assert not tiny_chat.direct_decoding()


def test_the_direct_loop_decodes_on_the_thread_that_reads_it(tiny_chat, monkeypatch):
    """No generation thread: the passes run on the reader's thread (a second thread of
    OpenMP kernels beside the embedder's made them 1.6x slower here)."""
    import threading

    from assistant.generation.blocks import BlockModel

    seen = set()
    step = BlockModel._step

    def spy(self, *args, **kwargs):
        seen.add(threading.current_thread().name)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(BlockModel, "_step", spy)
    pieces, stats = _reply(tiny_chat, "direct", monkeypatch, max_new_tokens=8)
    assert seen == {threading.current_thread().name} and stats.new_tokens > 1


def test_the_direct_loop_can_be_cancelled_or_left_and_frees_the_model(tiny_chat, monkeypatch):
    monkeypatch.setattr(tiny_chat, "decode_loop", "direct")
    monkeypatch.setattr(tiny_chat.model.generation_config, "eos_token_id", 399)  # never ends
    reply = tiny_chat.generate(CHAT, max_new_tokens=60)
    got = _cancel_after(reply, 2)
    # the passes end at the cancel: what was decoded but not yet shown comes as one piece
    assert reply.stats.cancelled and reply.stats.new_tokens < 60 and len(got) <= 3
    left = tiny_chat.generate(CHAT, max_new_tokens=60)
    next(iter(left))
    left.fragments.close()  # a reader that stops reading: the model's lock is released
    assert not tiny_chat._lock.locked()
    assert tiny_chat.generate(CHAT, max_new_tokens=3).stats.new_tokens == 0  # not started
    again = tiny_chat.generate(CHAT, max_new_tokens=3)
    assert again.text() and again.stats.new_tokens == 3


def test_sampling_draws_from_the_cut_distribution():
    import torch

    from assistant.generation.blocks import Sampler

    logp = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    draw = Sampler(1.0, top_k=0, top_p=0.7, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(torch.tensor([draw(logp) for _ in range(400)]), minlength=4)
    assert counts[2] == counts[3] == 0  # outside the nucleus (0.5 + 0.3 reaches 0.7)
    assert 0.5 < counts[0] / counts[1] * 0.3 / 0.5 < 2  # 5:3 inside it
    top1 = Sampler(1.0, top_k=1, generator=torch.Generator().manual_seed(1))
    assert {top1(logp) for _ in range(20)} == {0}
    cold = Sampler(0.05, top_k=0, generator=torch.Generator().manual_seed(2))
    assert sum(cold(logp) == 0 for _ in range(50)) == 50  # a low temperature is nearly greedy
    with pytest.raises(ValueError):
        Sampler(0.0)(logp)


def test_a_sampled_reply_in_the_direct_loop_follows_the_seed(tiny_chat, monkeypatch):
    import torch

    texts = []
    for _ in range(2):
        torch.manual_seed(7)
        pieces, stats = _reply(tiny_chat, "direct", monkeypatch, max_new_tokens=12,
                               temperature=1.0)
        texts.append("".join(pieces))
        assert stats.new_tokens > 0 and stats.logprob < 0
    assert texts[0] == texts[1]


HEAD = "<bos>system: Answer from the sources.\n\n"
SOURCES = ["Source [1] (a.txt):\nDenver beat Carolina 24-10 in Santa Clara.\n\n",
           "Source [2] (b.txt):\nThe halftime show was headlined by Coldplay.\n\n",
           "Source [3] (c.txt):\nGold was used to emphasize the 50th anniversary.\n\n"]
TAIL = "\n<bos>user: Who won Super Bowl 50?\n<bos>assistant:"


def test_a_reply_over_one_passage_block_is_the_reply_to_the_same_tokens(tiny_chat):
    """One block between the head and the tail is the prompt read as one sequence: the same
    text, token count and log-probability as generate() on those tokens."""
    import torch

    reply = tiny_chat.generate_over(HEAD, [("a", SOURCES[0])], TAIL, max_new_tokens=12)
    pieces = list(reply)
    tokens = tiny_chat.blocks.tokens
    ids = tokens(HEAD) + tokens(SOURCES[0]) + tokens(TAIL)
    out = tiny_chat.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                   pad_token_id=0, output_scores=True,
                                   return_dict_in_generate=True)
    new = out.sequences[0, len(ids):].tolist()
    assert "".join(pieces) == tiny_chat.tokenizer.decode(new, skip_special_tokens=True)
    assert reply.stats.new_tokens == len(new) > 0 and reply.stats.prompt_tokens == len(ids)
    logprob = sum(float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(out.scores, new))
    assert reply.stats.logprob == pytest.approx(logprob, abs=1e-3)


def test_a_reply_over_blocks_reuses_them_whatever_their_order(tiny_chat):
    """Blocks come from the LRU for a later question (another tail), and with every block
    ending right before the tail the answer does not depend on the passages' order."""
    items = [(i, text) for i, text in enumerate(SOURCES)]
    first = tiny_chat.generate_over(HEAD, items, TAIL, max_new_tokens=10).text()
    computed = tiny_chat.blocks.encoded
    again = tiny_chat.generate_over(HEAD, items[::-1], TAIL, max_new_tokens=10)
    assert again.text() == first and tiny_chat.blocks.encoded == computed
    assert again.stats.prompt_tokens == sum(
        len(tiny_chat.blocks.tokens(t)) for t in [HEAD, *SOURCES, TAIL])
    later = tiny_chat.generate_over(HEAD, items[1:], "\n<bos>user: Who sang?\n<bos>assistant:",
                                    max_new_tokens=4)
    later.text()
    assert tiny_chat.blocks.encoded == computed


def test_numbered_labels_apart_let_a_passage_block_serve_under_any_number(tiny_chat):
    """With the numbers as label blocks of their own, a later turn listing the same passages
    in another order computes no block again, passages' or labels'; the reply counts the
    label tokens in its prompt and only the passages in ``blocks_computed``."""
    bodies = [(i, text.split(" ", 2)[2]) for i, text in enumerate(SOURCES)]  # "(a.txt):..."
    labels = ["Source [1] ", "Source [2] ", "Source [3] "]
    first = tiny_chat.generate_over(HEAD, bodies, TAIL, labels=labels, max_new_tokens=6)
    first.text()
    assert first.stats.blocks_computed in (0, 3)  # 0: another test computed them already
    computed = tiny_chat.blocks.encoded
    again = tiny_chat.generate_over(HEAD, bodies[::-1], TAIL, labels=labels, max_new_tokens=6)
    again.text()
    assert tiny_chat.blocks.encoded == computed and again.stats.blocks_computed == 0
    tokens = tiny_chat.blocks.tokens
    assert again.stats.prompt_tokens == (len(tokens(HEAD)) + len(tokens(TAIL))
                                         + sum(len(tokens(t)) for _, t in bodies)
                                         + sum(len(tokens(label)) for label in labels))


def test_a_prepared_conversation_is_reused_by_the_follow_up_over_the_same_blocks(tiny_chat):
    """prepare_over computes the conversation so far; a follow-up over the same blocks
    prefills only the rest, with the same reply (text, tokens, log-probability) as when it
    prefills everything; over other blocks nothing is reused."""
    items = [(i, text) for i, text in enumerate(SOURCES)]
    earlier = "\n<bos>user: Who won Super Bowl 50?\n<bos>assistant: Denver.\n"
    follow = earlier + "<bos>user: Where was it played?\n<bos>assistant:"
    tiny_chat._prepared = None
    fresh = tiny_chat.generate_over(HEAD, items, follow, layout="sequence", max_new_tokens=10)
    text = fresh.text()
    assert fresh.stats.reused_tokens == 0
    computed = tiny_chat.prepare_over(HEAD, items, earlier, layout="sequence")
    assert computed == len(tiny_chat.blocks.tokens(earlier)) > 5
    again = tiny_chat.generate_over(HEAD, items, follow, layout="sequence", max_new_tokens=10)
    assert again.text() == text and again.stats.new_tokens == fresh.stats.new_tokens
    assert again.stats.logprob == pytest.approx(fresh.stats.logprob, abs=1e-4)
    assert 0 < again.stats.reused_tokens <= computed
    assert again.stats.prompt_tokens == fresh.stats.prompt_tokens
    # other passages, or another layout: the prepared tokens are not theirs
    other = tiny_chat.generate_over(HEAD, items[:2], follow, layout="sequence",
                                    max_new_tokens=2)
    other.text()
    moved = tiny_chat.generate_over(HEAD, items, follow, layout="end", max_new_tokens=2)
    moved.text()
    assert other.stats.reused_tokens == 0 and moved.stats.reused_tokens == 0
    # a prompt that is all prepared still prefills its last token (its logits are needed)
    tiny_chat.prepare_over(HEAD, items, follow, layout="sequence")
    whole = tiny_chat.generate_over(HEAD, items, follow, layout="sequence", max_new_tokens=10)
    assert whole.text() == text
    assert whole.stats.reused_tokens == len(tiny_chat.blocks.tokens(follow)) - 1


def test_a_reply_over_blocks_needs_the_direct_loop(tiny_chat, monkeypatch):
    from assistant.generation import GenerationError

    monkeypatch.setattr(tiny_chat, "decode_loop", "generate")
    with pytest.raises(GenerationError, match="direct decoding loop"):
        tiny_chat.generate_over(HEAD, [("a", SOURCES[0])], TAIL)
