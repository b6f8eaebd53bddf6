"""The GPU path, measured on models built from the real configs with random weights (weights
cannot travel to a lent GPU machine; speed does not depend on their values).

For Gemma 3 270M and Qwen2.5-1.5B-Instruct (configs below, as published), in bfloat16:

- decode tokens/s with a static key/value cache, eager and with CUDA graphs
  (``torch.compile(mode="reduce-overhead")``), against the memory roofline: the bytes of
  weights read per token (every parameter once; a tied embedding read only as the output
  head) divided by the card's bandwidth (``--bandwidth`` GB/s, default the H200's 4,800);
- time to first token for a 5-passage prompt (5 × 200 passage tokens + question), the
  passages prefilled as one batch of 5 blocks and the question after them, as the block
  reader does.

    python benchmarks/gpu_speed.py [--device cuda] [--new-tokens 128] [--bandwidth 4800]

``--device cpu --new-tokens 8 --no-compile --models gemma-3-270m`` runs the same code on a CPU as a smoke test (its numbers mean
nothing for a GPU). Not yet run on a GPU: none was lent to the issue that wrote it.
"""

from __future__ import annotations

import argparse
import time

import torch

GEMMA3_270M = dict(
    model_type="gemma3_text", hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
    num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144,
    max_position_embeddings=32768, sliding_window=512, query_pre_attn_scalar=256,
    layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3,
    rope_parameters={"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                     "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}},
    tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6)
QWEN25_15B = dict(
    model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
    num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
    max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True,
    rms_norm_eps=1e-6)
MODELS = {"gemma-3-270m": GEMMA3_270M, "Qwen2.5-1.5B-Instruct": QWEN25_15B}


def build(config: dict, device: str, dtype):
    """A causal LM with random weights from ``config``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(config)
    cfg = AutoConfig.for_model(values.pop("model_type"), **values)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def weight_bytes(model) -> int:
    """Bytes read per decoded token: every parameter once (a tied embedding counts once, as
    the output head; the input embedding reads one row)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def decode_tps(model, device: str, new_tokens: int, compiled: bool) -> float:
    """Greedy tokens/s after a 64-token prompt, static cache."""
    prompt = torch.randint(10, 1000, (1, 64), device=device)
    forward = model.forward
    if compiled:
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=False)
    try:
        kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                      cache_implementation="static", pad_token_id=0)
        model.generate(prompt, **kwargs)  # compile / warm up
        sync(device)
        started = time.perf_counter()
        model.generate(prompt, **kwargs)
        sync(device)
        return new_tokens / (time.perf_counter() - started)
    finally:
        model.forward = forward


def five_passage_ttft(model, device: str, passage_tokens: int = 200) -> float:
    """Seconds to the first answer token: 5 passages prefilled as one batch, then the
    question (20 tokens) over all of their caches, then one token chosen."""
    from transformers import DynamicCache

    from assistant.generation import cache_argument, cache_of

    passages = torch.randint(10, 1000, (5, passage_tokens), device=device)
    question = torch.randint(10, 1000, (1, 20), device=device)

    def once() -> float:
        sync(device)
        started = time.perf_counter()
        with torch.inference_mode():
            out = model(input_ids=passages, use_cache=True)
            cache = cache_of(out)
            layers = []
            for layer in cache.layers:  # the 5 blocks side by side, as one sequence
                k = layer.keys.transpose(0, 1).reshape(1, layer.keys.shape[1], -1,
                                                       layer.keys.shape[-1])
                v = layer.values.transpose(0, 1).reshape(1, layer.values.shape[1], -1,
                                                         layer.values.shape[-1])
                layers.append((k, v))
            fused = DynamicCache(ddp_cache_data=layers)
            positions = torch.arange(passage_tokens, passage_tokens + 20, device=device)[None]
            logits = model(input_ids=question, position_ids=positions, use_cache=True,
                           logits_to_keep=1, **{cache_argument(model): fused}).logits
            int(logits[0, -1].argmax())
        sync(device)
        return time.perf_counter() - started

    once()
    return min(once() for _ in range(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--bandwidth", type=float, default=4800.0, help="GB/s")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    dtype = torch.bfloat16
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"{name}, bfloat16, random weights from the real configs, {args.new_tokens} new "
          f"tokens\n")
    print("| model | weights GB read per token | roofline tok/s | eager tok/s | "
          "CUDA graphs tok/s | % of roofline | 5-passage first token s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label in args.models.split(","):
        config = MODELS[label]
        model = build(config, args.device, dtype)
        gb = weight_bytes(model) / 1e9
        roofline = args.bandwidth / gb
        eager = decode_tps(model, args.device, args.new_tokens, compiled=False)
        graphs = None if args.no_compile else decode_tps(model, args.device, args.new_tokens,
                                                         compiled=True)
        best = max(eager, graphs or 0)
        ttft = five_passage_ttft(model, args.device)
        print(f"| {label} | {gb:.2f} | {roofline:.0f} | {eager:.0f} | "
              f"{'-' if graphs is None else f'{graphs:.0f}'} | {100 * best / roofline:.0f} % | "
              f"{ttft:.3f} |", flush=True)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
