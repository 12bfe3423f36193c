"""Greedy continuations against llama.cpp's own (its examples/simple, built from the vendored
llama.cpp in llama-cpp-python 0.3.36, on the embedded default model and on Gemma 3 270M;
recorded below).

llama.cpp multiplies Q4_1 weights by activations rounded to 8 bits per 32 values; our cpu backend
rounds them to 9 bits in decode passes and not at all in prompt passes, the gl backend never. So
where the two best logits are within that noise the engines may legitimately pick different
tokens. The test therefore walks llama.cpp's path token by token (teacher forcing): at every step
llama.cpp's token must be our argmax, or within MARGIN of it; and our argmax must agree on most
steps.

MARGIN is llama.cpp's rounding noise, measured: its 8-bit rounding, emulated over these four texts,
shifts the gap between our best logit and the next three by 0.09 (median), 0.23 (p90) and 0.44
(p99), against float activations. (After "The capital of France is Paris.\n\nThe", llama.cpp
emitted " United", 0.22 below " answer" with float activations and 0.27 below with 9-bit ones.)
"""

from pathlib import Path

import numpy as np
import pytest

from perro_pastor.model import load

MARGIN = 0.45  # logits: the p99 of llama.cpp's rounding noise on the gap between candidates (above)
MIN_AGREEMENT = 0.75  # share of steps where our own argmax is llama.cpp's token

# prompt -> llama.cpp's printed prompt + 24 greedy tokens (llama-simple -n 24)
LLAMA_CPP = {
    "Once upon a time, in a small village,":
        "Once upon a time, in a small village, there was a wise old wizard named Elwes. Elwes was a "
        "master of magic and had been watching",
    "The capital of France is":
        "The capital of France is Paris.\n\nThe United States has a population of approximately 311 "
        "million people.\n\nThe United States",
    "def fibonacci(n):":
        "def fibonacci(n):\n    if n == 0:\n        return 1\n    return n * fibonacci(n - 1)\n",
    "<|im_start|>user\nWhat is the best way to cook rice?<|im_end|>\n<|im_start|>assistant\n":
        "<|im_start|>user\nWhat is the best way to cook rice?<|im_end|>\n<|im_start|>assistant\nThe "
        "best way to cook rice is to cook it in a way that allows the natural starch to break down "
        "and release its",
}


# Gemma 3 270M Q4_K_M (tests/assets), the same llama-simple -n 24 (it prints <bos> first)
GEMMA3 = Path(__file__).parent / "assets" / "gemma-3-270m-q4_k_m.gguf"
LLAMA_CPP_GEMMA3 = {
    "Once upon a time, in a small village,":
        "Once upon a time, in a small village, there lived a family of four. They were very happy. "
        "They had a lot of money, and they had a lot",
    "The capital of France is":
        "The capital of France is the capital of the country of France. It is the largest city in "
        "France. It is the capital of the country of",
    "def fibonacci(n):":
        "def fibonacci(n):\n    if n == 0:\n        return 0\n    elif n == 1:\n        return",
}


@pytest.fixture(scope="module", params=["cpu", "gl"])
def model(request):
    return load("default", backend=request.param)


@pytest.fixture(scope="module", params=["cpu", "gl"])
def gemma3(request):
    return load(GEMMA3, backend=request.param)


def next_llama_token(tokenizer, logits, remaining: bytes) -> int:
    """The token llama.cpp must have emitted: one of our near-best candidates whose bytes start
    the rest of its text (our argmax if it qualifies, else the longest such piece)."""
    best = float(logits.max())
    candidates = [int(t) for t in np.argsort(-logits)[:16] if best - logits[t] < MARGIN]
    fits = [t for t in candidates if remaining.startswith(tokenizer.token_to_bytes(t) or b"\0")]
    assert fits, (f"no candidate within {MARGIN} of our best continues llama.cpp's text "
                  f"{remaining[:30]!r}: ours {[tokenizer.token_to_bytes(t) for t in candidates]}")
    if candidates[0] in fits:
        return candidates[0]
    return max(fits, key=lambda t: len(tokenizer.token_to_bytes(t)))


@pytest.mark.parametrize("prompt", LLAMA_CPP)
def test_greedy_tokens_match_llama_cpp(model, prompt):
    walk_llama_cpp_path(model, prompt, LLAMA_CPP[prompt])


@pytest.mark.parametrize("prompt", LLAMA_CPP_GEMMA3)
def test_gemma3_greedy_tokens_match_llama_cpp(gemma3, prompt):
    walk_llama_cpp_path(gemma3, prompt, LLAMA_CPP_GEMMA3[prompt])


def walk_llama_cpp_path(model, prompt: str, continuation: str) -> None:
    """Teacher-force llama.cpp's continuation; count the steps where it is our argmax too."""
    remaining = continuation[len(prompt):].encode()
    tokens = model.tokenizer.encode(prompt)
    kv = model.transformer.new_cache(len(tokens) + 32)
    logits = model.transformer.forward(np.array(tokens), 0, kv)
    agree = steps = 0
    while remaining:
        token = next_llama_token(model.tokenizer, logits, remaining)
        agree += token == int(np.argmax(logits))
        remaining = remaining[len(model.tokenizer.token_to_bytes(token)):]
        logits = model.transformer.forward(np.array([token]), len(tokens) + steps, kv)
        steps += 1
    assert steps >= 20 and agree / steps >= MIN_AGREEMENT, f"agreed on {agree} of {steps} steps"
