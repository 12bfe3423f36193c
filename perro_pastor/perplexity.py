"""Perplexity, measured the way llama.cpp's `llama-perplexity` does, so figures compare directly.

The text is tokenized once (BOS as the vocab's metadata says), cut into chunks of ``n_ctx``
tokens, each chunk evaluated from an empty cache (its first token replaced by BOS when the vocab
adds one), and only the second half of each chunk scored: those tokens all have at least
n_ctx/2 tokens of context.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from .backend import forward_one


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    ppl_err: float
    tokens: int  # tokens scored
    chunks: int


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def perplexity(model, text: str, n_ctx: int = 512, progress: bool = False,
               adapters: tuple = (), max_chunks: int | None = None) -> PerplexityResult:
    """llama-perplexity's figure for ``text`` (see the module docstring), with LoRA ``adapters``
    applied at run time; ``max_chunks``: only the first chunks (llama-perplexity's ``--chunks``)."""
    if n_ctx < 8:
        raise ValueError(f"perplexity needs a context of at least 8 tokens, got {n_ctx}")
    tok = model.tokenizer
    tokens = tok.encode(text)  # BOS as the metadata says, like llama.cpp
    add_bos = bool(tokens) and tok.add_bos
    n_chunks = len(tokens) // n_ctx
    if max_chunks is not None:
        n_chunks = min(n_chunks, max_chunks)
    if n_chunks < 1:
        raise ValueError(f"need at least {n_ctx} tokens for -c {n_ctx}; the text has {len(tokens)}")
    first = n_ctx // 2
    nll_sum = nll2_sum = 0.0
    count = 0
    kv = model.transformer.new_cache(n_ctx)
    for c in range(n_chunks):
        chunk = np.array(tokens[c * n_ctx:(c + 1) * n_ctx])
        if add_bos:
            chunk[0] = tok.bos_id
        logits = forward_one(model.transformer, chunk, 0, kv, adapters, all_logits=True).astype(np.float64)
        logp = log_softmax(logits[first:n_ctx - 1])
        nll = -logp[np.arange(len(logp)), chunk[first + 1:n_ctx]]
        nll_sum += float(nll.sum())
        nll2_sum += float((nll * nll).sum())
        count += len(nll)
        if progress:
            print(f"[{c + 1}/{n_chunks}] running PPL = {math.exp(nll_sum / count):.4f}", file=sys.stderr)

    mean = nll_sum / count
    variance = nll2_sum / count - mean * mean
    ppl = math.exp(mean)
    err = math.sqrt(variance / (count - 1)) * ppl if variance > 0 and count > 1 else 0.0
    return PerplexityResult(ppl, err, count, n_chunks)
