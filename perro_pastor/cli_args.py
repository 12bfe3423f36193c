"""What the `perro-pastor` commands share: the parser, model and sampler flags and their checks
(all made before a model loads), loading a model from them, and the exit codes (cli.py and
chat_cli.py both build on it).

The command line imports the engine only inside the command that runs: `--help`, `tokenize`,
`inspect` and `models` start in a few tens of milliseconds rather than ~0.6 s (NumPy, numba),
and `demo` hands over to the game before NumPy loads."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys

EXIT_OK, EXIT_USAGE, EXIT_BAD_MODEL, EXIT_FAILURE = 0, 2, 3, 4


class UsageError(ValueError):
    """A flag's value is wrong: one ``perro-pastor: error:`` line and exit 2, before any model loads."""


# -----------------------------------------------------------------------------
# parsing: every flag is checked here, before a command loads anything

class CliParser(argparse.ArgumentParser):
    """argparse whose errors read like every other error of the command: one line, exit 2
    (argparse's own style is the usage block, then ``perro-pastor generate: error: ...``)."""

    def error(self, message: str):
        # "argument -n: must be >= 1, got 0" (our types' wording) reads better as "-n must be ..."
        message = re.sub(r"^argument (\S+): must be ", r"\1 must be ", message)
        self.exit(EXIT_USAGE, f"perro-pastor: error: {message} (see: {self.prog} --help)\n")


def was_interrupted(exc: BaseException) -> bool:
    """Ctrl-C, also when it lands inside a numba kernel, which then raises SystemError ("returned a
    result with an exception set") with the KeyboardInterrupt as its context."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def int_at_least(minimum: int):
    """An argparse ``type``: an integer >= ``minimum`` (``-n 0`` is refused at parse time)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def float_above(bound: float):
    """An argparse ``type``: a finite float > ``bound``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and value > bound):
            raise argparse.ArgumentTypeError(f"must be a number > {bound:g}, got {text}")
        return value
    return parse



def add_model_args(p: argparse.ArgumentParser, backend: bool = True) -> None:
    p.add_argument("-m", "--model", default="default", help="path, model-folder name, or 'default'")
    p.add_argument("--tokenizer", help="tokenizer.bin for llama2.c checkpoints (default: beside the model)")
    if backend:
        p.add_argument("--backend", choices=("cpu", "gl", "auto"), default="auto")
        p.add_argument("--cpu-cache-mb", type=int_at_least(0), default=3072,
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
    p.add_argument("--seed", type=int_at_least(0), default=None)
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--grammar-file", metavar="FILE.gbnf",
                       help="keep the output inside a GBNF grammar (llama.cpp's syntax)")
    shape.add_argument("--json-schema", metavar="FILE.json",
                       help="output one JSON document valid against this JSON Schema")


# The SamplerSettings field each sampler flag sets: its checks name the field, the CLI the flag.
SAMPLER_FLAGS = {"temperature": ("--temp", "temp"), "top_k": ("--top-k", "top_k"),
                 "top_p": ("--top-p", "top_p"), "min_p": ("--min-p", "min_p"),
                 "repeat_penalty": ("--repeat-penalty", "repeat_penalty"),
                 "repeat_last_n": ("--repeat-last-n", "repeat_last_n")}


def check_args(args) -> None:
    """What argparse's types cannot see, checked before any model loads: the sampler flags,
    by SamplerSettings' own rules (so the CLI and the library cannot disagree). Raises UsageError."""
    if hasattr(args, "temp"):
        args.sampler_settings = sampler_settings_from(args)
    if hasattr(args, "grammar_file"):
        args.grammar = grammar_from(args)


def grammar_from(args):
    """The ``--grammar-file`` / ``--json-schema`` grammar, compiled (None without either)."""
    from .grammar import Grammar, GrammarError
    path = args.grammar_file or args.json_schema
    if path is None:
        return None
    flag = "--grammar-file" if args.grammar_file else "--json-schema"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if args.grammar_file:
            return Grammar(text)
        return Grammar.from_json_schema(json.loads(text))
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None
    except (GrammarError, ValueError) as exc:  # (json.JSONDecodeError is a ValueError)
        raise UsageError(f"{flag} {path}: {exc}") from None


def sampler_settings_from(args):
    from .sampling import SamplerSettings
    try:
        return SamplerSettings(**{field: getattr(args, dest) for field, (_, dest) in SAMPLER_FLAGS.items()})
    except ValueError as exc:
        field = str(exc).split(" ", 1)[0]
        flag, dest = SAMPLER_FLAGS.get(field, (None, None))
        raise UsageError(f"{flag} {getattr(args, dest)}: {exc}" if flag else str(exc)) from None


def fit_context(requested: int | None, model, flag: str = "-c") -> int | None:
    """``requested`` capped to the model's context, saying so on stderr when it is."""
    limit = model.config.seq_len
    if requested is not None and requested > limit:
        print(f"perro-pastor: {flag} {requested} is more than this model's context of {limit} tokens; "
              f"using {limit}", file=sys.stderr)
        return limit
    return requested


def load_model(args, backend: str | None = None):
    """The model the flags name, and the LoRA adapters of its ``--lora`` flags (applied at run
    time: the model itself is never changed)."""
    from .model import load
    backend = backend or getattr(args, "backend", "cpu")
    if backend != "gl" and not cpu_kernels_cached():
        print("perro-pastor: compiling the cpu kernels (first run only, up to a minute)...", file=sys.stderr)
    model = load(args.model, backend=backend,
                 tokenizer_path=args.tokenizer, cpu_cache_bytes=args.cpu_cache_mb << 20)
    from .threads import blas_threads_now, blas_workers_sleep_at_once
    if model.backend == "cpu" and blas_workers_sleep_at_once():
        # prompts on every BLAS thread: their workers do not spin into the decode (cli.main)
        model.transformer.prefill_blas_threads = blas_threads_now()
    try:
        return model, adapters_from(args, model)
    except BaseException:
        model.close()
        raise


def cpu_kernels_cached() -> bool:
    try:
        from . import cpu_kernels_warm
    except ImportError:
        return True  # no numba: nothing to compile (the cpu backend says so itself)
    return cpu_kernels_warm.cache_is_warm()


def adapters_from(args, model) -> tuple:
    from .lora import load_adapter, parse_lora_arg
    return tuple(load_adapter(path, model, scale) for path, scale in map(parse_lora_arg, args.lora))


def sampler_from(args):
    from .sampling import Sampler
    settings = getattr(args, "sampler_settings", None) or sampler_settings_from(args)
    return Sampler(settings, seed=args.seed)
