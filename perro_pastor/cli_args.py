"""What the `perro-pastor` commands share: model and sampler flags, loading a model from them,
and the exit codes (cli.py and chat_cli.py both build on it).

The command line imports the engine only inside the command that runs: `--help`, `tokenize`,
`inspect` and `models` start in a few tens of milliseconds rather than ~0.6 s (NumPy, numba),
and `demo` hands over to the game before NumPy loads."""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_USAGE, EXIT_BAD_MODEL, EXIT_FAILURE = 0, 2, 3, 4


def add_model_args(p: argparse.ArgumentParser, backend: bool = True) -> None:
    p.add_argument("-m", "--model", default="default", help="path, model-folder name, or 'default'")
    p.add_argument("--tokenizer", help="tokenizer.bin for llama2.c checkpoints (default: beside the model)")
    if backend:
        p.add_argument("--backend", choices=("cpu", "gl", "auto"), default="auto")
        p.add_argument("--cpu-cache-mb", type=int, default=3072,
                       help="cpu backend: dequantized weights kept in RAM; the rest is decoded on the fly")
        p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                       help="LoRA adapter (GGUF or PEFT folder) applied at run time; repeatable")


def add_sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temp", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.1)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("--seed", type=int, default=None)


def load_model(args, backend: str | None = None):
    """The model the flags name, and the LoRA adapters of its ``--lora`` flags (applied at run
    time: the model itself is never changed)."""
    from .model import load
    backend = backend or getattr(args, "backend", "cpu")
    if backend != "gl" and not cpu_kernels_cached():
        print("perro-pastor: compiling the cpu kernels (first run only, up to a minute)...", file=sys.stderr)
    model = load(args.model, backend=backend,
                 tokenizer_path=args.tokenizer, cpu_cache_bytes=args.cpu_cache_mb << 20)
    try:
        return model, adapters_from(args, model)
    except BaseException:
        model.close()
        raise


def cpu_kernels_cached() -> bool:
    try:
        from . import cpu_kernels
    except ImportError:
        return True  # no numba: nothing to compile (the cpu backend says so itself)
    return cpu_kernels.cache_is_warm()


def adapters_from(args, model) -> tuple:
    from .lora import load_adapter, parse_lora_arg
    return tuple(load_adapter(path, model, scale) for path, scale in map(parse_lora_arg, args.lora))


def sampler_from(args):
    from .sampling import Sampler, SamplerSettings
    settings = SamplerSettings(temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                               min_p=args.min_p, repeat_penalty=args.repeat_penalty,
                               repeat_last_n=args.repeat_last_n)
    return Sampler(settings, seed=args.seed)
