"""The fused decode path (gl/fused_ops.py, 6 dispatches a layer on a GPU) end to end on llvmpipe,
where it is not the default (matvec.comp is faster there) but runs all the same: against the cpu
backend on the default model over 64 greedy tokens, against the unfused gl path on every family
(GQA ratios 1 to 4, biases, q/k norms, post-norms, GeGLU, NeoX rope), and with weights that do not
fit one dispatch (Gemma 3's 262k-row classifier in buffer parts takes the plain path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perro_pastor.errors import BackendError
from perro_pastor.gl_figures import DecodeFigures
from perro_pastor.model import load

from family_models import write_family_model

GEMMA3 = Path(__file__).parent / "assets" / "gemma-3-270m-q4_k_m.gguf"
PROMPT = "Once upon a time, in a village by the sea, there lived"


def gl_model(path):
    try:
        return load(path, backend="gl")
    except BackendError as exc:
        pytest.skip(f"no GL 4.3: {exc}")


def decode(transformer, prompt: list[int], n: int, n_ctx: int = 128) -> tuple[list[int], np.ndarray]:
    """Greedy tokens after ``prompt`` and the logits each was picked from."""
    kv = transformer.new_cache(n_ctx)
    logits = transformer.forward(np.array(prompt), 0, kv)
    tokens, rows = [], []
    for i in range(n):
        rows.append(logits)
        tokens.append(int(np.argmax(logits)))
        logits = transformer.forward(np.array(tokens[-1:]), len(prompt) + i, kv)
    return tokens, np.array(rows)


def test_default_model_64_greedy_tokens_as_on_the_cpu_backend():
    model, cpu = gl_model("default"), load("default", backend="cpu")
    try:
        model.transformer.fused_decode = True
        prompt = cpu.tokenizer.encode(PROMPT)
        got, got_logits = decode(model.transformer, prompt, 64)
        want, want_logits = decode(cpu.transformer, prompt, 64)
        assert got == want
        assert np.abs(got_logits - want_logits).max() < 0.01 * np.abs(want_logits).max()
        # the id picked on the GPU (argmax.comp, 4 bytes read back) is the same token
        kv = model.transformer.new_cache(128)
        first = model.transformer.decode_greedy(np.array(prompt), 0, kv)
        assert [first, model.transformer.decode_greedy(np.array([first]), len(prompt), kv)] == want[:2]
    finally:
        model.close()
        cpu.close()


def test_a_fused_decode_step_makes_at_most_7_dispatches_a_layer():
    """6 on a GPU; on llvmpipe the w1/w3 dispatch is split in two to keep each under a frame's
    budget (FusedOps.tile_slices)."""
    model = gl_model("default")
    try:
        tr = model.transformer
        tr.fused_decode = True
        kv = tr.new_cache(8)
        tr.forward(np.array([1, 2]), 0, kv)
        figures = DecodeFigures.attach(tr)
        tr.forward(np.array([3]), 2, kv)
        assert figures.layer_dispatches <= 7
        tr.fused_decode = False
        tr.forward(np.array([4]), 3, kv)
        assert figures.layer_dispatches == 12
        figures.detach()
    finally:
        model.close()


@pytest.fixture(scope="module")
def family_path(tmp_path_factory):
    made = {}

    def get(arch: str) -> Path:
        if arch not in made:
            made[arch] = write_family_model(arch, tmp_path_factory.mktemp(arch) / f"{arch}-tiny.gguf")
        return made[arch]
    return get


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "phi3", "gemma2", "phi3-longrope"])
def test_each_family_decodes_the_same_fused_and_unfused(arch, family_path):
    model = gl_model(family_path(arch))
    try:
        tr = model.transformer
        prompt = model.tokenizer.encode("The miller's daughter")[:12]
        runs = []
        for fused in (False, True):
            tr.fused_decode = fused
            runs.append(decode(tr, prompt, 6, n_ctx=32))
        (plain, plain_logits), (fused_tokens, fused_logits) = runs
        assert fused_tokens == plain
        np.testing.assert_allclose(fused_logits, plain_logits, atol=2e-3 * np.abs(plain_logits).max())
    finally:
        model.close()


@pytest.mark.skipif(not GEMMA3.exists(), reason="test asset missing (make assets)")
def test_weights_in_buffer_parts_take_the_plain_path():
    model, cpu = gl_model(GEMMA3), load(GEMMA3, backend="cpu")
    try:
        tr = model.transformer
        tr.fused_decode = True
        assert not tr.kernels.fused.fits(tr.weights.wcls) or len(tr.weights.wcls.parts) == 1
        prompt = cpu.tokenizer.encode("The capital of France is")
        got, got_logits = decode(tr, prompt, 4, n_ctx=32)
        want, want_logits = decode(cpu.transformer, prompt, 4, n_ctx=32)
        assert got == want
        assert np.abs(got_logits - want_logits).max() < 0.02 * np.abs(want_logits).max()
    finally:
        model.close()
        cpu.close()
