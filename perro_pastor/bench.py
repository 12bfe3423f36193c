"""`perro-pastor bench`: prefill and decode speed, llama-bench style, as medians over repeats.

The row holds only the columns that apply: the dispatch figures and the renderer come with the
gl backend alone."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

from .backend import forward_one
from .gl_figures import DecodeFigures


def run_bench(model, n_prompt: int = 128, n_gen: int = 64, repeats: int = 3, adapters: tuple = (),
              progress: Callable[[str], None] | None = None) -> dict:
    """The bench row; ``progress`` hears one line before each phase (they take seconds each)."""
    if min(n_prompt, n_gen, repeats) < 1:
        raise ValueError(f"bench needs n_prompt, n_gen and repeats >= 1, got {n_prompt}, {n_gen}, {repeats}")
    say = progress or (lambda what: None)
    cfg = model.config
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, cfg.vocab_size, size=n_prompt)
    transformer = model.transformer
    prefill, decode = [], []
    say("warm-up pass (first-use costs: caches, compiles)")
    forward_one(transformer, prompt[:8], 0, transformer.new_cache(16), adapters)  # warm-up: caches, shader compiles
    figures = DecodeFigures.attach(transformer)  # gl: times its dispatches from here on; cpu: None
    for r in range(1, repeats + 1):
        say(f"run {r}/{repeats}: prefill {n_prompt} tokens, then decode {n_gen}")
        kv = transformer.new_cache(n_prompt + n_gen + 1)
        start = time.perf_counter()
        logits = forward_one(transformer, prompt, 0, kv, adapters)
        prefill.append(n_prompt / (time.perf_counter() - start))
        token = int(np.argmax(logits))
        start = time.perf_counter()
        for i in range(n_gen):
            logits = forward_one(transformer, np.array([token]), n_prompt + i, kv, adapters)
            token = int(np.argmax(logits))
        decode.append(n_gen / (time.perf_counter() - start))
    row = {
        "backend": model.backend,
        "model": model.file.path.name,
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "prefill_tok_s": round(statistics.median(prefill), 2),
        "decode_tok_s": round(statistics.median(decode), 2),
        "host_ms_per_token": round(1000 / statistics.median(decode), 3),
    }
    if figures is not None:  # gl only: the cpu backend has no dispatches or renderer
        row.update(figures.stats())
        figures.detach()
    if getattr(transformer, "int_activations", False):  # cpu: decode on rounded activations
        row["int_activations"] = True
        row["activation_bits"] = 8 if getattr(transformer.store, "vnni", False) else 9  # (VNNI: 8)
    return row
