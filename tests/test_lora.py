"""LoRA adapters: run-time application vs merged weights, batching, hot-swap, both readers, and
every refused adapter (RELIABILITY.md row 23). All on a 2-layer F32 slice of the default model,
with random low-rank factors written by the gguf writer or safetensors."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import perro_pastor
from perro_pastor.backend import Segment, run_to_end
from perro_pastor.cpu import rope
from perro_pastor.errors import ModelFormatError
from perro_pastor.lora import load_adapter, parse_lora_arg
from perro_pastor.perplexity import perplexity
from perro_pastor.tools.merge_lora import main as merge_main, merge_lora
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


@pytest.fixture(scope="module")
def merged_a(base_path, work, adapter_files):
    """The slice with adapter a merged in at scale 0.7: the oracle for run-time adapter a."""
    m = load_merged(base_path, work, "a", [(adapter_files["a"], 0.7)])
    yield m
    m.close()


def load_merged(base_path, work, name, adapters, out_type="F32"):
    out = merge_lora(base_path, adapters, work / f"merged_{name}.gguf", out_type)
    return perro_pastor.load(out, backend="cpu")


def run(transformer, segments, all_logits=False):
    return run_to_end(transformer.forward_steps(segments, all_logits))


# -----------------------------------------------------------------------------
# equivalence with merged weights

def test_runtime_matches_merged_logits_and_perplexity(model, merged_a, adapter_files, tokens):
    a = load_adapter(adapter_files["a"], model, scale=0.7)
    assert a.rank == 8 and a.scale == pytest.approx(16 / 8 * 0.7)
    merged = merged_a
    tr = model.transformer
    n = len(tokens)
    got = run(tr, [Segment(tokens, 0, tr.new_cache(n), (a,))], all_logits=True)[0]
    want = merged.transformer.forward(tokens, 0, merged.transformer.new_cache(n), all_logits=True)
    plain = tr.forward(tokens, 0, tr.new_cache(n), all_logits=True)
    assert np.abs(got - plain).max() > 0.5, "the adapter should change the logits"
    np.testing.assert_allclose(got, want, atol=LOGIT_TOL, rtol=0)

    ppl_runtime = perplexity(SimpleNamespace(tokenizer=model.tokenizer, transformer=tr), TEXT, n_ctx=16,
                             adapters=(a,))
    ppl_merged = perplexity(merged, TEXT, n_ctx=16)
    ppl_plain = perplexity(model, TEXT, n_ctx=16)
    assert ppl_runtime.ppl == pytest.approx(ppl_merged.ppl, rel=1e-4)
    assert ppl_runtime.ppl != pytest.approx(ppl_plain.ppl, rel=1e-2)


def test_stacked_adapters_match_merge_of_both_via_cli(model, base_path, work, adapter_files, tokens, capsys):
    out = work / "merged_ab.gguf"
    rc = merge_main([str(base_path), f"{adapter_files['a']}:0.5", f"{adapter_files['b']}:-1.5", "-o", str(out)])
    assert rc == 0 and capsys.readouterr().out.strip() == str(out)
    assert not list(work.glob("*.part"))
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
    assert not list(work.glob("never.gguf*"))


def test_parse_lora_arg():
    assert parse_lora_arg("npc.gguf:0.25") == ("npc.gguf", 0.25)
    assert parse_lora_arg("npc.gguf") == ("npc.gguf", 1.0)
    assert parse_lora_arg("C:/x/npc.gguf") == ("C:/x/npc.gguf", 1.0)


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


def test_hot_swap_between_turns_matches_merged_models(model, base_path, work, merged_a, adapter_files, tokens):
    """Turn 1 under adapter A, turn 2 under B, on the same KV cache; the oracle runs turn 1 on
    the A-merged model and turn 2 on the B-merged model, sharing one cache the same way."""
    tr = model.transformer
    a, b = load_adapter(adapter_files["a"], model, 0.7), load_adapter(adapter_files["b"], model, 2.0)
    turn1, turn2 = tokens[:12], tokens[12:20]
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


def test_missing_alpha_means_scale_is_the_user_scale(model, work):
    """llama.cpp's rule: without adapter.lora.alpha the factors are applied at the user scale."""
    f = random_factors(model.config, 4, np.random.default_rng(8), layers=[1], projections=["w3"])
    ad = load_adapter(write_gguf_lora(work / "no_alpha.gguf", gguf_tensors(f), alpha=None), model, 0.3)
    assert ad.scale == pytest.approx(0.3)


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


# -----------------------------------------------------------------------------
# refused adapters (RELIABILITY.md row 23): one ModelFormatError naming the field or tensor

def one_pair(cfg, rank=4, seed=7):
    """A, B for blk.0.attn_q.weight (rows = cols = dim)."""
    return random_factors(cfg, rank, np.random.default_rng(seed), layers=[0], projections=["wq"])[(0, "wq")]


Q = "blk.0.attn_q.weight"


def gguf_case(name, cfg):
    a, b = one_pair(cfg)
    pair = {f"{Q}.lora_a": a, f"{Q}.lora_b": b}
    rows, cols = proj_shape(cfg, "w2")
    cases = {
        "wrong_arch": (dict(tensors=pair, arch="mistral"), r"general\.architecture is 'mistral', the base model is 'llama'"),
        "model_not_adapter": (dict(tensors=pair, general_type="model"), r"general\.type is 'model', expected 'adapter'"),
        "no_general_type": (dict(tensors=pair, general_type=None), r"general\.type is None"),
        "not_lora": (dict(tensors=pair, adapter_type="control_vector"), r"adapter\.type is 'control_vector'"),
        "negative_alpha": (dict(tensors=pair, alpha=-1.0), r"adapter\.lora\.alpha"),
        "missing_b": (dict(tensors={f"{Q}.lora_a": a}), rf"'{Q}' is missing its other half '{Q}\.lora_b'"),
        "missing_a": (dict(tensors={f"{Q}.lora_b": b}), rf"missing its other half '{Q}\.lora_a'"),
        "transposed_a": (dict(tensors={f"{Q}.lora_a": a.T.copy(), f"{Q}.lora_b": b}),
                         rf"'{Q}\.lora_a' \[4, 576\].*transposed"),
        "transposed_both": (dict(tensors={f"{Q}.lora_a": b.copy(), f"{Q}.lora_b": a.copy()}), r"transposed"),
        "rank_mismatch": (dict(tensors={f"{Q}.lora_a": a, f"{Q}.lora_b": b[:, :3].copy()}),
                          rf"rank mismatch: '{Q}\.lora_a' has rank 4, '{Q}\.lora_b' has rank 3"),
        "wrong_cols": (dict(tensors={f"{Q}.lora_a": np.zeros((4, 577), np.float32), f"{Q}.lora_b": b}),
                       rf"'{Q}\.lora_a' \[577, 4\].*does not fit base weight '{Q}' \[576, 576\]"),
        "wrong_rows": (dict(tensors={"blk.1.ffn_down.weight.lora_a": np.zeros((4, cols), np.float32),
                                     "blk.1.ffn_down.weight.lora_b": np.zeros((rows + 1, 4), np.float32)}),
                       r"'blk\.1\.ffn_down\.weight\.lora_b' \[4, 577\]"),
        "unknown_weight": (dict(tensors={"blk.0.attn_qq.weight.lora_a": a, "blk.0.attn_qq.weight.lora_b": b}),
                           r"'blk\.0\.attn_qq\.weight\.lora_a' targets 'blk\.0\.attn_qq\.weight', which is no projection"),
        "layer_past_end": (dict(tensors={"blk.2.attn_q.weight.lora_a": a, "blk.2.attn_q.weight.lora_b": b}),
                           r"'blk\.2\.attn_q\.weight\.lora_a'.*layers 0\.\.1"),
        "embedding_lora": (dict(tensors={"token_embd.weight.lora_a": a, "token_embd.weight.lora_b": b}),
                           r"'token_embd\.weight\.lora_a' targets 'token_embd\.weight', which run-time LoRA does not cover"),
        "not_a_half": (dict(tensors={Q: b}), rf"tensor '{Q}' is not a LoRA half"),
        "nan": (dict(tensors={f"{Q}.lora_a": np.where(a > 0.1, np.nan, a).astype(np.float32), f"{Q}.lora_b": b}),
                rf"'{Q}\.lora_a' holds NaN"),
        "empty": (dict(tensors={}), r"holds no LoRA tensors"),
    }
    return cases[name]


GGUF_CASES = ["wrong_arch", "model_not_adapter", "no_general_type", "not_lora", "negative_alpha", "missing_b",
              "missing_a", "transposed_a", "transposed_both", "rank_mismatch", "wrong_cols", "wrong_rows",
              "unknown_weight", "layer_past_end", "embedding_lora", "not_a_half", "nan", "empty"]


@pytest.mark.parametrize("case", GGUF_CASES)
def test_gguf_adapter_refused(model, tmp_path, case):
    kwargs, message = gguf_case(case, model.config)
    path = write_gguf_lora(tmp_path / f"{case}.gguf", **kwargs)
    with pytest.raises(ModelFormatError, match=message) as exc:
        load_adapter(path, model)
    assert f"{case}.gguf" in str(exc.value)


def test_base_model_given_as_adapter_refused(model, base_path):
    with pytest.raises(ModelFormatError, match=r"slice\.gguf: general\.type is .*expected 'adapter'"):
        load_adapter(base_path, model)


def test_truncated_adapter_refused_by_the_hardened_reader(model, tmp_path, adapter_files):
    data = adapter_files["a"].read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:len(data) - 100])
    with pytest.raises(ModelFormatError, match=r"cut\.gguf.*truncated"):
        load_adapter(tmp_path / "cut.gguf", model)


PEFT_Q = "base_model.model.model.layers.0.self_attn.q_proj"


def peft_case(name, cfg, folder: Path):
    a, b = one_pair(cfg)
    pair = {f"{PEFT_Q}.lora_A.weight": a, f"{PEFT_Q}.lora_B.weight": b}
    cases = {
        "unknown_target_module": (dict(tensors=pair, target_modules=["q_proj", "lm_head"]),
                                  r"unknown target module 'lm_head'"),
        "module_not_targeted": (dict(tensors=pair, target_modules=["v_proj"]),
                                rf"'{PEFT_Q}\.lora_A\.weight' is for module 'q_proj', which is not in target_modules"),
        "unknown_tensor": (dict(tensors={**pair, "base_model.model.lm_head.lora_A.weight": a}, target_modules=["q_proj"]),
                           r"'base_model\.model\.lm_head\.lora_A\.weight' matches no weight"),
        "wrong_parent": (dict(tensors={"base_model.model.model.layers.0.mlp.q_proj.lora_A.weight": a,
                                       "base_model.model.model.layers.0.mlp.q_proj.lora_B.weight": b}),
                         r"'base_model\.model\.model\.layers\.0\.mlp\.q_proj\.lora_A\.weight' matches no weight"),
        "layer_past_end": (dict(tensors={k.replace("layers.0", "layers.5"): v for k, v in pair.items()}),
                           r"layers\.5\.self_attn\.q_proj\.lora_[AB]\.weight' matches no weight.*N < 2"),
        "missing_b": (dict(tensors={f"{PEFT_Q}.lora_A.weight": a}),
                      rf"'{PEFT_Q}\.lora_A\.weight' has no matching lora_B"),
        "config_rank_mismatch": (dict(tensors=pair, r=8), r"rank mismatch: .*has rank 4, adapter_config\.json says r = 8"),
        "pair_rank_mismatch": (dict(tensors={**pair, f"{PEFT_Q}.lora_B.weight": b[:, :2].copy()}),
                               r"rank mismatch: .*lora_A\.weight' has rank 4, .*lora_B\.weight' has rank 2"),
        "transposed_a": (dict(tensors={**pair, f"{PEFT_Q}.lora_A.weight": a.T.copy()}),
                         r"lora_A\.weight' \[576, 4\].*transposed"),
        "wrong_shape": (dict(tensors={**pair, f"{PEFT_Q}.lora_B.weight": np.zeros((100, 4), np.float32)}),
                        r"lora_B\.weight' \[100, 4\] does not fit base weight 'blk\.0\.attn_q\.weight'"),
        "dora": (dict(tensors=pair, use_dora=True), r"use_dora = True"),
        "bias": (dict(tensors=pair, bias="all"), r"bias = 'all'"),
        "rank_pattern": (dict(tensors=pair, rank_pattern={"q_proj": 8}), r"rank_pattern"),
        "not_lora": (dict(tensors=pair, peft_type="IA3"), r"peft_type = 'IA3'"),
    }
    kwargs, message = cases[name]
    kwargs.setdefault("r", 4)
    return write_peft(folder, **kwargs), message


PEFT_CASES = ["unknown_target_module", "module_not_targeted", "unknown_tensor", "wrong_parent", "layer_past_end",
              "missing_b", "config_rank_mismatch", "pair_rank_mismatch", "transposed_a", "wrong_shape", "dora",
              "bias", "rank_pattern", "not_lora"]


@pytest.mark.parametrize("case", PEFT_CASES)
def test_peft_adapter_refused(model, tmp_path, case):
    folder, message = peft_case(case, model.config, tmp_path / case)
    with pytest.raises(ModelFormatError, match=message) as exc:
        load_adapter(folder, model)
    assert str(exc.value).startswith((f"{case}: adapter_config.json: ", f"{case}/adapter_model.safetensors: "))


def test_peft_unreadable_files_refused(model, tmp_path):
    a, b = one_pair(model.config)
    folder = write_peft(tmp_path / "p", {f"{PEFT_Q}.lora_A.weight": a, f"{PEFT_Q}.lora_B.weight": b}, r=4)
    assert load_adapter(folder / "adapter_model.safetensors", model).factors(0, "wq") is not None

    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match=r"adapter_config\.json is not valid JSON"):
        load_adapter(folder, model)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(ModelFormatError, match=r"cannot read adapter_config\.json"):
        load_adapter(folder, model)

    write_peft(folder, {}, r=4)
    (folder / "adapter_model.safetensors").write_bytes(b"\xff" * 12)
    with pytest.raises(ModelFormatError, match=r"p/adapter_model\.safetensors: not a valid safetensors file"):
        load_adapter(folder, model)

    # bf16, as a trainer might save it: a hand-made one-tensor file (numpy has no bfloat16)
    header = json.dumps({f"{PEFT_Q}.lora_A.weight": {"dtype": "BF16", "shape": [1, 2], "data_offsets": [0, 4]}})
    (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(4))
    with pytest.raises(ModelFormatError, match=r"lora_A\.weight' is BF16; save the adapter as float32"):
        load_adapter(folder, model)


# -----------------------------------------------------------------------------
# out-of-range strengths (issue 20): refused with the value named, never garbage

@pytest.mark.parametrize("scale", [1e30, -1e4, float("inf"), float("nan"), "0.5", True])
def test_user_scale_out_of_range_refused(model, adapter_files, scale):
    with pytest.raises(ValueError, match="LoRA scale"):
        load_adapter(adapter_files["a"], model, scale=scale)
    with pytest.raises(ValueError, match="LoRA scale"):
        load_adapter(adapter_files["a"], model).with_scale(scale)


def test_scale_and_alpha_at_the_limits_accepted(model, work):
    a, b = one_pair(model.config)
    ad = load_adapter(write_gguf_lora(work / "alpha_max.gguf", {f"{Q}.lora_a": a, f"{Q}.lora_b": b},
                                      alpha=1e4), model, scale=-1e3)
    assert ad.alpha == 1e4 and ad.user_scale == -1e3


def test_huge_alpha_refused_naming_it(model, tmp_path):
    a, b = one_pair(model.config)
    path = write_gguf_lora(tmp_path / "big.gguf", {f"{Q}.lora_a": a, f"{Q}.lora_b": b}, alpha=3e38)
    with pytest.raises(ModelFormatError, match=r"big\.gguf: adapter\.lora\.alpha .*got 3\.\d+e\+38"):
        load_adapter(path, model)
    folder = write_peft(tmp_path / "bigpeft", {f"{PEFT_Q}.lora_A.weight": a, f"{PEFT_Q}.lora_B.weight": b},
                        r=4, alpha=3e38)
    with pytest.raises(ModelFormatError, match=r"lora_alpha = 3e\+38"):
        load_adapter(folder, model)


@pytest.mark.parametrize("value", ["false", "true", 0, 1, "no"])
def test_peft_use_rslora_must_be_a_json_boolean(model, tmp_path, value):
    a, b = one_pair(model.config)
    folder = write_peft(tmp_path / "rs", {f"{PEFT_Q}.lora_A.weight": a, f"{PEFT_Q}.lora_B.weight": b},
                        r=4, alpha=8, use_rslora=value)
    with pytest.raises(ModelFormatError, match=r"use_rslora = .*expected true or false"):
        load_adapter(folder, model)
    for flag, unit in ((False, 2.0), (True, 4.0)):
        write_peft(folder, {f"{PEFT_Q}.lora_A.weight": a, f"{PEFT_Q}.lora_B.weight": b}, r=4, alpha=8,
                   use_rslora=flag)
        assert load_adapter(folder, model).unit_scale == unit


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
def test_peft_fifo_refused_not_read(model, tmp_path, name):
    a, b = one_pair(model.config)
    folder = write_peft(tmp_path / "f", {f"{PEFT_Q}.lora_A.weight": a, f"{PEFT_Q}.lora_B.weight": b}, r=4)
    (folder / name).unlink()
    os.mkfifo(folder / name)
    with pytest.raises(ModelFormatError, match=rf"f/{name}: not a regular file"):
        load_adapter(folder, model)
