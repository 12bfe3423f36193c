"""Loading a model: file -> validated reader -> Config + weights + tokenizer -> a backend.

    model = perro_pastor.load("default")             # the embedded SmolLM2-135M
    for piece in model.generate("Once upon a time", max_tokens=32):
        print(piece.text, end="", flush=True)
"""

from __future__ import annotations

import glob
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .backend import Transformer
from .config import Config
from .cpu import CpuTransformer
from .float_weights import DEFAULT_CACHE_BUDGET
from .errors import BackendError, ModelFormatError, TokenizerError
from .formats import ModelFile, open_model_file
from .gl.context import GLContext, is_software_renderer
from .paths import resolve_model
from .sampling import Sampler, SamplerSettings
from .scheduler import Scheduler
from .tokenizer import StreamDecoder, Tokenizer
from .weights import Weights, bind_weights

BACKENDS = ("cpu", "gl", "auto")
# generate reads its prompt in passes of at most this many tokens: one pass over a whole long
# prompt holds all its activations and attention scores at once (cpu, 1,943 tokens: 841 MB peak
# against 471 MB in 256-token passes, which also ran faster, 251 against 205 tok/s)
PROMPT_PASS_TOKENS = 256


@dataclass
class Token:
    id: int
    text: str  # complete UTF-8 text this token finished (may be "" mid-character)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.generated_tokens / self.decode_s if self.decode_s else 0.0


class Model:
    """One loaded model: its file, config, weight table, tokenizer and a compute backend. Shared by
    sessions. Made by ``load`` (or ``load_async``)."""

    def __init__(self, file: ModelFile, parts: "ModelParts", transformer: Transformer):
        self.file = file
        self.config, self.weights, self.tokenizer = parts.config, parts.weights, parts.tokenizer
        self.transformer = transformer

    @property
    def backend(self) -> str:
        return self.transformer.name

    def limit_threads(self, n_threads: int | None) -> None:
        """Use at most ``n_threads`` CPU threads for this model's work (None: the defaults). The
        compiled kernels' count is per thread, so a game whose renderer shares the cores calls
        it on the thread that ticks the scheduler; BLAS in prompt passes is limited for every
        thread. The gl backend computes on the GPU and ignores it."""
        self.transformer.limit_threads(n_threads)

    def generate(self, prompt: str | list[int], max_tokens: int = 128,
                 sampler: Sampler | None = None, n_ctx: int | None = None,
                 stats: GenerationStats | None = None, stop_at_eos: bool = True,
                 adapters: tuple = (), grammar=None) -> Iterator[Token]:
        """Stream the continuation of ``prompt`` (text, or token ids) token by token, with LoRA
        ``adapters`` (``lora.load_adapter``) applied at run time, inside ``grammar``
        (``grammar.Grammar``) if given. It runs as an NPC's reply does:
        a session on a scheduler (of its own), one step per tick."""
        sampler = sampler or Sampler(SamplerSettings())
        stats = stats if stats is not None else GenerationStats()
        tokens = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            raise ValueError("empty prompt: nothing to continue (the vocab adds no BOS)")
        n_ctx = min(n_ctx or len(tokens) + max_tokens, self.config.seq_len)
        if len(tokens) >= n_ctx:
            raise ValueError(f"prompt of {len(tokens)} tokens does not fit a context of {n_ctx}")
        max_tokens = min(max_tokens, n_ctx - len(tokens))
        stats.prompt_tokens = len(tokens)
        if max_tokens < 1:
            return
        scheduler = Scheduler(self, prefill_chunk=min(len(tokens), PROMPT_PASS_TOKENS))
        session = scheduler.session(sampler=sampler, n_ctx=n_ctx, lora=tuple(adapters), name="generate")
        decoder = StreamDecoder(self.tokenizer)
        shown = 0  # of reply.token_ids
        start = time.perf_counter()
        try:
            reply = session.continue_tokens(tokens, max_tokens, ignore_eos=not stop_at_eos, grammar=grammar)
            while not reply.done:
                scheduler.tick(0)  # one step: a dispatch group, or sampling
                for token in reply.token_ids[shown:]:
                    if not shown:  # the first token: the prompt's pass and its sampling are done
                        stats.prefill_s, start = time.perf_counter() - start, time.perf_counter()
                    shown += 1
                    stats.generated_tokens += 1
                    yield Token(token, decoder.feed(token))
                    stats.decode_s = time.perf_counter() - start
            if reply.error is not None:
                raise reply.error
            if not shown:  # the first token sampled ended the reply
                stats.prefill_s = time.perf_counter() - start
            else:
                stats.decode_s = time.perf_counter() - start
            stats.generated_tokens += reply.finish_reason == "eos"  # sampled, not shown
        finally:
            session.close()  # cancelled, off the scheduler, its KV cache freed now

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class ModelParts:
    """What a model file holds besides its weights' bytes, read and checked: no compute yet."""
    config: Config
    weights: Weights
    tokenizer: Tokenizer

    @classmethod
    def read(cls, file: ModelFile) -> "ModelParts":
        """The config, the weight table and the tokenizer of ``file``; ModelFormatError when they
        do not agree."""
        name = file.path.name
        config = Config.from_metadata(file.metadata, where=name)
        weights = bind_weights(file, config)
        try:
            tokenizer = Tokenizer.from_metadata(file.metadata, name,
                                                metadata_types=getattr(file, "metadata_types", None))
        except TokenizerError as exc:
            raise ModelFormatError(str(exc)) from exc
        if tokenizer.vocab_size != config.vocab_size:
            raise ModelFormatError(f"{name}: tokenizer has {tokenizer.vocab_size} tokens, "
                                   f"the model's embedding has {config.vocab_size}")
        return cls(config, weights, tokenizer)


def open_gl(backend: str, gl_context=None):
    """The GL context a model with ``backend`` computes on (a ``gl.context.GLContext`` around
    ``gl_context``, or a headless one), or None for the cpu backend. "gl" needs OpenGL 4.3
    (BackendError without it). "auto" takes the GPU, and the cpu backend, saying so in one
    line, where GL 4.3 is missing or the renderer runs on the CPU (llvmpipe: there compute
    shaders share the game's cores and decode several times slower than the cpu backend)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "cpu":
        return None
    if backend == "auto" and gl_context is None and no_gpu_device():
        print("perro_pastor: no GPU device here (/dev/dri/renderD*, /dev/nvidia*, /dev/dxg); "
              "using the cpu backend (backend gl for OpenGL's software renderer)", file=sys.stderr)
        return None
    try:
        glctx = GLContext(gl_context)
    except (BackendError, ImportError) as exc:
        if backend == "gl":
            raise BackendError(f"gl backend unavailable: {exc}") from exc
        print(f"perro_pastor: gl backend unavailable ({exc}); using cpu", file=sys.stderr)
        return None
    if backend == "auto" and glctx.limits.software:
        print(f"perro_pastor: {glctx.limits.renderer} runs on the CPU; using the cpu backend "
              "(backend gl to use compute shaders anyway)", file=sys.stderr)
        glctx.release()
        return None
    return glctx


# Device nodes through which a Linux GL driver reaches a GPU: Mesa's (DRM render nodes),
# NVIDIA's proprietary driver, WSL2's GPU paravirtualization.
GPU_DEVICE_NODES = ("/dev/dri/renderD*", "/dev/nvidia[0-9]*", "/dev/dxg")


def no_gpu_device() -> bool:
    """On Linux, True when none of GPU_DEVICE_NODES exists: any GL context there would be a
    software renderer, so `auto` takes the cpu backend without opening one (Mesa's llvmpipe
    alone raised `generate`'s peak memory from 349 to 430 MB). Elsewhere False (GL decides)."""
    return sys.platform.startswith("linux") and not any(glob.glob(pattern) for pattern in GPU_DEVICE_NODES)


def draws_on_cpu(gl_context) -> bool:
    """True when a game's moderngl context renders on the CPU (llvmpipe, SwiftShader): there the
    game and compute shaders would share the same cores, and the cpu backend is the faster pick."""
    return is_software_renderer(str(gl_context.info.get("GL_RENDERER", "")))


def make_backend(kind: str, file: ModelFile, cfg: Config, weights: Weights, gl_context=None,
                 dtype=np.float32, cpu_cache_bytes: int = DEFAULT_CACHE_BUDGET, cpu_kernels: str = "auto"):
    glctx = open_gl(kind, gl_context)
    if glctx is not None:
        try:
            from .gl.forward import GlTransformer  # only now: it loads moderngl and the shaders
            return GlTransformer(file, cfg, weights, ctx=glctx)
        except (BackendError, ImportError) as exc:
            if kind == "gl":
                raise BackendError(f"gl backend unavailable: {exc}") from exc
            print(f"perro_pastor: gl backend unavailable ({exc}); using cpu", file=sys.stderr)
    return CpuTransformer(file, cfg, weights, dtype=dtype, cache_budget=cpu_cache_bytes, kernels=cpu_kernels)


def load(name_or_path: str | Path, backend: str = "auto", tokenizer_path: str | Path | None = None,
         gl_context=None, dtype=np.float32, cpu_cache_bytes: int = DEFAULT_CACHE_BUDGET,
         cpu_kernels: str = "auto") -> Model:
    """Open, validate and prepare a model: `default`, a path, or a name in the model folder.

    ``cpu_kernels`` picks the cpu backend's products: "numba" (compiled, over the packed
    quantized weights), "numpy" (the reference: float matrices dequantized once), or "auto"
    (numba when installed). ``cpu_cache_bytes`` bounds the dequantized weights the NumPy path
    keeps in RAM; past it, weights are dequantized block-wise inside each matmul."""
    path = resolve_model(str(name_or_path))
    file = open_model_file(path, tokenizer_path)
    try:
        parts = ModelParts.read(file)
        transformer = make_backend(backend, file, parts.config, parts.weights, gl_context, dtype,
                                   cpu_cache_bytes, cpu_kernels)
        return Model(file, parts, transformer)
    except BaseException:
        file.close()
        raise
