"""LoRA adapters: run-time application vs merged weights, batching, hot-swap, both readers, and
every refused adapter (RELIABILITY.md row 23). All on a 2-layer F32 slice of the default model,
with random low-rank factors written by the gguf writer or safetensors."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import perro_pastor
from perro_pastor.cpu import Segment, rope, run_to_end
from perro_pastor.errors import ModelFormatError
from perro_pastor.lora import AdaptedTransformer, load_adapter
from perro_pastor.perplexity import perplexity
from perro_pastor.tools.merge_lora import main as merge_main, merge_lora, parse_adapter_arg
from perro_pastor.tools.requantize import requantize

from lora_fixtures import (gguf_tensors, peft_tensors, proj_shape, random_factors, write_gguf_lora,
                           write_peft)

TEXT = ("The shepherd dog ran along the hill, gathering the sheep before the storm. "
        "Its owner whistled twice, and the dog turned left, then right, then lay down in the grass.")
# f32 logits of a 2-layer model, runtime delta vs merged weight: rounding only
LOGIT_TOL = 2e-3


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lora")


@pytest.fixture(scope="module")
def base_path(work) -> Path:
    return requantize("default", work / "slice.gguf", "F32", n_layers=2)


@pytest.fixture(scope="module")
def model(base_path):
    m = perro_pastor.load(base_path, backend="cpu")
    yield m
    m.close()


@pytest.fixture(scope="module")
def tokens(model) -> np.ndarray:
    return np.array(model.tokenizer.encode(TEXT))


@pytest.fixture(scope="module")
def adapter_files(work, model) -> dict[str, Path]:
    """Two full GGUF adapters (every projection of every layer), different ranks and alphas."""
    rng = np.random.default_rng(1)
    return {
        "a": write_gguf_lora(work / "a.gguf", gguf_tensors(random_factors(model.config, 8, rng)), alpha=16),
        "b": write_gguf_lora(work / "b.gguf", gguf_tensors(random_factors(model.config, 4, rng)), alpha=2),
    }


def load_merged(base_path, work, name, adapters, out_type="F32"):
    out = merge_lora(base_path, adapters, work / f"merged_{name}.gguf", out_type)
    return perro_pastor.load(out, backend="cpu")


def run(transformer, segments, all_logits=False):
    return run_to_end(transformer.forward_steps(segments, all_logits))


# -----------------------------------------------------------------------------
# equivalence with merged weights

def test_runtime_matches_merged_logits_and_perplexity(model, base_path, work, adapter_files, tokens):
    a = load_adapter(adapter_files["a"], model, scale=0.7)
    assert a.rank == 8 and a.scale == pytest.approx(16 / 8 * 0.7)
    merged = load_merged(base_path, work, "a", [(adapter_files["a"], 0.7)])
    tr = model.transformer
    n = len(tokens)
    got = run(tr, [Segment(tokens, 0, tr.new_cache(n), (a,))], all_logits=True)[0]
    want = merged.transformer.forward(tokens, 0, merged.transformer.new_cache(n), all_logits=True)
    plain = tr.forward(tokens, 0, tr.new_cache(n), all_logits=True)
    assert np.abs(got - plain).max() > 0.5, "the adapter should change the logits"
    np.testing.assert_allclose(got, want, atol=LOGIT_TOL, rtol=0)

    ppl_runtime = perplexity(SimpleNamespace(tokenizer=model.tokenizer,
                                             transformer=AdaptedTransformer(tr, (a,))), TEXT, n_ctx=16)
    ppl_merged = perplexity(merged, TEXT, n_ctx=16)
    ppl_plain = perplexity(model, TEXT, n_ctx=16)
    assert ppl_runtime.ppl == pytest.approx(ppl_merged.ppl, rel=1e-4)
    assert ppl_runtime.ppl != pytest.approx(ppl_plain.ppl, rel=1e-2)
    merged.close()


def test_stacked_adapters_match_merge_of_both_via_cli(model, base_path, work, adapter_files, tokens, capsys):
    out = work / "merged_ab.gguf"
    rc = merge_main([str(base_path), f"{adapter_files['a']}:0.5", f"{adapter_files['b']}:-1.5", "-o", str(out)])
    assert rc == 0 and capsys.readouterr().out.strip() == str(out)
    merged = perro_pastor.load(out, backend="cpu")
    a, b = load_adapter(adapter_files["a"], model, 0.5), load_adapter(adapter_files["b"], model, -1.5)
    tr = model.transformer
    got = run(tr, [Segment(tokens, 0, tr.new_cache(len(tokens)), (a, b))])[0]
    want = merged.transformer.forward(tokens, 0, merged.transformer.new_cache(len(tokens)))
    np.testing.assert_allclose(got, want, atol=LOGIT_TOL, rtol=0)
    merged.close()


def test_merge_cli_refuses_bad_adapter_with_one_line(base_path, work, capsys):
    rc = merge_main([str(base_path), str(base_path), "-o", str(work / "never.gguf")])
    err = capsys.readouterr().err
    assert rc == 1 and "general.type" in err and err.count("\n") == 1


def test_parse_adapter_arg():
    assert parse_adapter_arg("npc.gguf:0.25") == ("npc.gguf", 0.25)
    assert parse_adapter_arg("npc.gguf") == ("npc.gguf", 1.0)
    assert parse_adapter_arg("C:/x/npc.gguf") == ("C:/x/npc.gguf", 1.0)


# -----------------------------------------------------------------------------
# batching and hot-swap

def test_segments_with_different_adapters_batch_like_solo_runs(model, adapter_files, tokens):
    tr = model.transformer
    a, b = load_adapter(adapter_files["a"], model), load_adapter(adapter_files["b"], model, 3.0)
    jobs = [(tokens[:11], (a,)), (tokens[5:20], (b,)), (tokens[:7], ()), (tokens[3:12], (b, a))]
    solo_caches = [tr.new_cache(32) for _ in jobs]
    batch_caches = [tr.new_cache(32) for _ in jobs]
    solo = [run(tr, [Segment(t, 0, kv, ad)])[0] for (t, ad), kv in zip(jobs, solo_caches)]
    batch = run(tr, [Segment(t, 0, kv, ad) for (t, ad), kv in zip(jobs, batch_caches)])
    for s, g in zip(solo, batch):
        np.testing.assert_allclose(g, s, atol=1e-4, rtol=0)
    # then one decode step each, at different positions, still in one batch
    nxt = [np.array([int(np.argmax(s))]) for s in solo]
    solo = [run(tr, [Segment(t, len(j[0]), kv, j[1])])[0] for t, j, kv in zip(nxt, jobs, solo_caches)]
    batch = run(tr, [Segment(t, len(j[0]), kv, j[1]) for t, j, kv in zip(nxt, jobs, batch_caches)])
    for s, g in zip(solo, batch):
        np.testing.assert_allclose(g, s, atol=1e-4, rtol=0)
    assert np.abs(solo[0] - solo[2]).max() > 0.5  # adapters matter


def test_hot_swap_between_turns_matches_merged_models(model, base_path, work, adapter_files, tokens):
    """Turn 1 under adapter A, turn 2 under B, on the same KV cache; the oracle runs turn 1 on
    the A-merged model and turn 2 on the B-merged model, sharing one cache the same way."""
    tr = model.transformer
    a, b = load_adapter(adapter_files["a"], model), load_adapter(adapter_files["b"], model, 2.0)
    turn1, turn2 = tokens[:12], tokens[12:20]
    merged_a = load_merged(base_path, work, "hot_a", [(adapter_files["a"], 1.0)])
    merged_b = load_merged(base_path, work, "hot_b", [(adapter_files["b"], 2.0)])

    kv = tr.new_cache(32)
    run(tr, [Segment(turn1, 0, kv, (a,))])
    got = run(tr, [Segment(turn2, len(turn1), kv, (b,))])[0]

    kv_ref = tr.new_cache(32)
    merged_a.transformer.forward(turn1, 0, kv_ref)
    want = merged_b.transformer.forward(turn2, len(turn1), kv_ref)
    np.testing.assert_allclose(got, want, atol=LOGIT_TOL, rtol=0)

    kv_stay = tr.new_cache(32)
    run(tr, [Segment(turn1, 0, kv_stay, (a,))])
    stayed = run(tr, [Segment(turn2, len(turn1), kv_stay, (a,))])[0]
    assert np.abs(stayed - got).max() > 0.5, "swapping should change the second turn"
    merged_a.close()
    merged_b.close()


def test_with_scale_shares_factors(model, adapter_files):
    a = load_adapter(adapter_files["a"], model, 1.0)
    half = a.with_scale(0.5)
    assert half.scale == pytest.approx(a.scale / 2)
    assert half.factors(1, "w2")[0] is a.factors(1, "w2")[0]


# -----------------------------------------------------------------------------
# readers: types, mixed ranks, PEFT and its q/k row permutation

def test_f16_and_q8_0_factors_are_dequantized(model, work):
    import gguf
    rng = np.random.default_rng(2)
    (a, b), = random_factors(model.config, 32, rng, layers=[1], projections=["wv"]).values()
    write_gguf_lora(work / "f16.gguf", gguf_tensors({(1, "wv"): (a, b)}), f16=True)
    ad = load_adapter(work / "f16.gguf", model)
    np.testing.assert_array_equal(ad.factors(1, "wv")[0], a.astype(np.float16).astype(np.float32))

    q = gguf.GGMLQuantizationType.Q8_0
    w = gguf.GGUFWriter(str(work / "q8.gguf"), "llama")
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 32)
    for name, t in gguf_tensors({(1, "wv"): (a, b)}).items():
        data = gguf.quants.quantize(t, q)
        w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=q)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    got_a, got_b = load_adapter(work / "q8.gguf", model).factors(1, "wv")
    np.testing.assert_array_equal(got_b, gguf.quants.dequantize(gguf.quants.quantize(b, q), q))
    np.testing.assert_allclose(got_a, a, atol=0.01)


def test_mixed_ranks_scale_each_tensor_by_its_own_rank(model, work):
    rng = np.random.default_rng(3)
    f = random_factors(model.config, 4, rng, layers=[0], projections=["wq", "wk"])
    f.update(random_factors(model.config, 8, rng, layers=[0], projections=["wo"]))
    ad = load_adapter(write_gguf_lora(work / "mixed.gguf", gguf_tensors(f), alpha=6), model, 0.5)
    assert ad.rank == 4
    for key, (a, b) in f.items():
        got_a, got_b = ad.factors(*key)
        want = 6 / a.shape[0] * 0.5 * (b @ a)
        np.testing.assert_allclose(ad.scale * (got_b @ got_a), want, rtol=1e-5, atol=1e-7)


def hf_rope(x: np.ndarray, pos: int, inv_freq: np.ndarray) -> np.ndarray:
    """Hugging Face's rotate_half RoPE on (n_heads, hs): pairs (i, i + hs/2)."""
    half = x.shape[-1] // 2
    c, s = np.cos(pos * inv_freq), np.sin(pos * inv_freq)
    x0, x1 = x[..., :half], x[..., half:]
    return np.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)


def test_peft_q_k_permutation_preserves_attention_scores(model, work):
    """The deltas of q and k, computed HF's way (HF rows, rotate_half RoPE) and ours (loaded B,
    interleaved RoPE), must give the same q.k score for every head: the permutation is right."""
    cfg = model.config
    rng = np.random.default_rng(4)
    f = random_factors(cfg, 4, rng, layers=[1], projections=["wq", "wk"])
    ad = load_adapter(write_peft(work / "peft_rope", peft_tensors(f), r=4, alpha=4), model)
    x1, x2 = rng.normal(size=cfg.dim), rng.normal(size=cfg.dim)
    inv_freq = model.transformer.inv_freq
    hs, p1, p2 = cfg.head_size, 7, 3

    def scores(q_of, k_of, rotate):
        q = rotate(q_of(x1).reshape(cfg.n_heads, hs), p1)
        k = rotate(k_of(x2).reshape(cfg.n_kv_heads, hs), p2)
        return np.array([q[h] @ k[h // cfg.kv_mul] for h in range(cfg.n_heads)])

    def delta(a, b):
        return lambda x: b @ (a @ x)

    hf = scores(delta(*f[(1, "wq")]), delta(*f[(1, "wk")]), lambda v, p: hf_rope(v, p, inv_freq))
    ours = scores(delta(*ad.factors(1, "wq")), delta(*ad.factors(1, "wk")),
                  lambda v, p: rope(v[None], np.array([p]), inv_freq)[0])
    np.testing.assert_allclose(ours, hf, rtol=1e-6, atol=1e-9)
    assert not np.allclose(ad.factors(1, "wq")[1], f[(1, "wq")][1])  # rows did move


def test_peft_matches_gguf_with_explicitly_permuted_rows(model, work, tokens):
    """GGUF row 2i+c of a head is HF row c*hs/2 + i (llama.cpp's converter); a PEFT adapter must
    behave exactly like the GGUF adapter built with that index formula."""
    cfg = model.config
    rng = np.random.default_rng(5)
    f = random_factors(cfg, 4, rng)
    peft = load_adapter(write_peft(work / "peft_full", peft_tensors(f), r=4, alpha=8,
                                   target_modules="all-linear"), model, 0.5)

    def to_gguf_rows(n_head):
        hs = cfg.head_size
        src = [h * hs + c * hs // 2 + i for h in range(n_head) for i in range(hs // 2) for c in (0, 1)]
        return np.array(src)

    g = {k: (a, b[to_gguf_rows(cfg.n_heads if k[1] == "wq" else cfg.n_kv_heads)] if k[1] in ("wq", "wk") else b)
         for k, (a, b) in f.items()}
    gg = load_adapter(write_gguf_lora(work / "from_peft.gguf", gguf_tensors(g), alpha=8), model, 0.5)
    tr = model.transformer
    got = run(tr, [Segment(tokens, 0, tr.new_cache(64), (peft,))])[0]
    want = run(tr, [Segment(tokens, 0, tr.new_cache(64), (gg,))])[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_merge_cli_with_peft_and_f16_output(model, base_path, work, tokens):
    rng = np.random.default_rng(6)
    folder = write_peft(work / "peft_merge", peft_tensors(random_factors(model.config, 8, rng)), r=8,
                        alpha=32, use_rslora=True)
    ad = load_adapter(folder, model, 0.5)
    assert ad.scale == pytest.approx(32 / np.sqrt(8) * 0.5)
    out = work / "merged_peft_f16.gguf"
    assert merge_main([str(base_path), f"{folder}:0.5", "-o", str(out), "--type", "F16"]) == 0
    merged = perro_pastor.load(out, backend="cpu")
    assert merged.file.tensors["blk.0.attn_q.weight"].qtype.name == "F16"
    assert merged.file.tensors["blk.0.attn_norm.weight"].qtype.name == "F32"
    tr = model.transformer
    got = run(tr, [Segment(tokens, 0, tr.new_cache(64), (ad,))])[0]
    want = merged.transformer.forward(tokens, 0, merged.transformer.new_cache(64))
    plain = tr.forward(tokens, 0, tr.new_cache(64))
    err = np.abs(got - want).max()
    assert err < 0.1 * np.abs(got - plain).max()  # F16 rounding, far below the adapter's effect
    merged.close()
