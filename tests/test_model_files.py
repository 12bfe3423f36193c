"""Whole models from every supported file format, end to end through `load`: the logits of a
llama2.c checkpoint against a float64 forward written straight from llama2.c's run.c math on the
checkpoint's own arrays (no readers, no name table), and byte mutations of a complete GGUF model
only ever raising ModelFormatError."""

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perro_pastor.errors import ModelFormatError
from perro_pastor.model import load
from perro_pastor.sampling import GREEDY, Sampler
from perro_pastor.tools.requantize import requantize

from fixtures_formats import (llama_ggml_tensors, pack_ggml, ggml_vocab_texts, write_llama2c,
                              write_tokenizer_bin)

DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ = 64, 96, 2, 4, 2, 300, 32


def spm_pieces(n: int) -> list[str]:
    """A Llama-style SentencePiece vocabulary: <unk>, <s>, </s>, all 256 byte pieces, then words."""
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    return pieces + [f"▁w{i}" for i in range(n - len(pieces))]


def llama2c_reference(ws, tokens):
    """llama2.c's forward in float64, token by token, from the PyTorch-layout arrays."""
    f = {k: v.astype(np.float64) for k, v in ws.items()}
    hs, kv_mul = DIM // HEADS, HEADS // KV_HEADS
    keys = np.zeros((LAYERS, SEQ, KV_HEADS, hs))
    values = np.zeros((LAYERS, SEQ, KV_HEADS, hs))

    def norm(x, w):
        return x / np.sqrt(np.mean(x * x) + 1e-5) * w

    def rotate(vec, pos):
        out = vec.copy()
        for i in range(0, vec.size, 2):
            freq = 1.0 / 10000.0 ** ((i % hs) / hs)
            c, s = np.cos(pos * freq), np.sin(pos * freq)
            out[i], out[i + 1] = vec[i] * c - vec[i + 1] * s, vec[i] * s + vec[i + 1] * c
        return out

    for pos, token in enumerate(tokens):
        x = f["tok_embeddings"][token].copy()
        for l in range(LAYERS):
            xb = norm(x, f["rms_att"][l])
            q = rotate(f["wq"][l] @ xb, pos)
            keys[l, pos] = rotate(f["wk"][l] @ xb, pos).reshape(KV_HEADS, hs)
            values[l, pos] = (f["wv"][l] @ xb).reshape(KV_HEADS, hs)
            att = np.zeros(DIM)
            for h in range(HEADS):
                qh = q[h * hs:(h + 1) * hs]
                scores = keys[l, :pos + 1, h // kv_mul] @ qh / np.sqrt(hs)
                p = np.exp(scores - scores.max())
                att[h * hs:(h + 1) * hs] = (p / p.sum()) @ values[l, :pos + 1, h // kv_mul]
            x = x + f["wo"][l] @ att
            xb = norm(x, f["rms_ffn"][l])
            h1, h3 = f["w1"][l] @ xb, f["w3"][l] @ xb
            x = x + f["w2"][l] @ (h1 / (1 + np.exp(-h1)) * h3)
    return f["tok_embeddings"] @ norm(x, f["rms_final"])


@pytest.fixture(scope="module")
def llama2c_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama2c")
    ws = write_llama2c(folder / "model.bin", DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ, seed=7)
    write_tokenizer_bin(folder / "tokenizer.bin", spm_pieces(VOCAB))
    return folder / "model.bin", ws


def test_llama2c_checkpoint_matches_run_c_math(llama2c_model):
    path, ws = llama2c_model
    model = load(path, backend="cpu", dtype=np.float64)
    tokens = [1, 12, 290, 5, 117, 22]
    got = model.transformer.forward(np.array(tokens), 0, model.transformer.new_cache(SEQ))
    np.testing.assert_allclose(got, llama2c_reference(ws, tokens), rtol=1e-9, atol=1e-9)
    assert model.tokenizer.bos_id == 1 and model.config.rope_base == 10000.0


def test_llama2c_generates_text(llama2c_model):
    path, _ = llama2c_model
    tokens = list(load(path, backend="cpu").generate([1, 12], max_tokens=5, sampler=Sampler(GREEDY),
                                                      stop_at_eos=False))
    assert len(tokens) == 5 and all(0 <= t.id < VOCAB for t in tokens)


def test_ggjt_v3_model_loads_and_runs(tmp_path):
    n_vocab, n_embd, n_ff, n_layer = 300, 32, 64, 1
    rng = np.random.default_rng(1)
    data = pack_ggml("ggjt", 3, (n_vocab, n_embd, 256, 4, n_layer, 8, 0), ggml_vocab_texts(n_vocab),
                     llama_ggml_tensors(n_vocab, n_embd, n_ff, n_layer, rng))
    path = tmp_path / "old.bin"
    path.write_bytes(data)
    model = load(path, backend="cpu")
    logits = model.transformer.forward(np.array([1, 100, 200]), 0, model.transformer.new_cache(8))
    assert logits.shape == (n_vocab,) and np.isfinite(logits).all()


@pytest.fixture(scope="module")
def gguf_model_bytes(llama2c_model, tmp_path_factory):
    path, _ = llama2c_model
    out = requantize(path, tmp_path_factory.mktemp("gguf") / "tiny.gguf", "Q8_0")
    return out.read_bytes()


def test_llama2c_converted_to_gguf_gives_the_same_logits(llama2c_model, tmp_path):
    path, _ = llama2c_model
    f32 = requantize(path, tmp_path / "tiny-f32.gguf", "F32")
    a, b = load(path, backend="cpu"), load(f32, backend="cpu")
    tokens = np.array([1, 9, 33, 2, 17])
    np.testing.assert_array_equal(a.transformer.forward(tokens, 0, a.transformer.new_cache(8)),
                                  b.transformer.forward(tokens, 0, b.transformer.new_cache(8)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_gguf_models_only_raise_model_format_error(gguf_model_bytes, tmp_path, data):
    blob = bytearray(gguf_model_bytes)
    # mutate the header, metadata and tensor table (the first few KiB), where structure lives
    for _ in range(data.draw(st.integers(1, 8))):
        blob[data.draw(st.integers(0, min(len(blob), 6000) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del blob[data.draw(st.integers(0, len(blob) - 1)):]
    path = tmp_path / "mutant.gguf"
    path.write_bytes(bytes(blob))
    start = time.perf_counter()
    try:
        model = load(path, backend="cpu")
        model.transformer.forward(np.array([1, 2]), 0, model.transformer.new_cache(4))
    except ModelFormatError:
        pass
    assert time.perf_counter() - start < 2.0
