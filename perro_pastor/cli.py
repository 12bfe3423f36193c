"""The `perro-pastor` command line: generate | chat | tokenize | perplexity | bench | inspect |
download | models | models-dir | demo.

Errors print one ``perro-pastor: error:`` line and exit with a code: 0 ok, 2 usage, 3 bad model
file, 4 download or backend failure, 130 interrupted. Every flag is checked before a model loads
(cli_args.check_args and the argparse types), so a bad flag answers in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

from .chat_cli import add_chat_cli
from .cli_args import (EXIT_BAD_MODEL, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliParser, UsageError,
                       add_model_args, add_sampler_args, check_args, fit_context, float_above,
                       int_at_least, load_model, sampler_from, was_interrupted)
from .downloader.download import add_cli as add_download_cli
from .errors import BackendError, DownloadError, ModelFormatError, PerroPastorError, TokenizerError
from .threads import let_blas_workers_sleep_at_once

# -----------------------------------------------------------------------------
# commands

def cmd_generate(args) -> int:
    from .model import GenerationStats
    model, adapters = load_model(args)
    stats = GenerationStats()
    streamed = False
    try:
        for token in model.generate(args.prompt, max_tokens=args.n, sampler=sampler_from(args), stats=stats,
                                    n_ctx=fit_context(args.ctx, model), adapters=adapters,
                                    grammar=args.grammar):
            if args.json:
                print(json.dumps({"id": token.id, "text": token.text}), flush=True)
            else:
                streamed = streamed or bool(token.text)  # before the print: Ctrl-C may land inside it
                print(token.text, end="", flush=True)
    except BaseException as exc:
        if streamed and was_interrupted(exc):
            print(flush=True)  # end the text's line: "interrupted" goes on a line of its own
        raise
    summary = {"prompt_tokens": stats.prompt_tokens, "generated_tokens": stats.generated_tokens,
               "prefill_tok_s": round(stats.prefill_tok_s, 2), "decode_tok_s": round(stats.decode_tok_s, 2),
               "backend": model.backend}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"\n[{stats.prompt_tokens} prompt tokens at {stats.prefill_tok_s:.1f} tok/s, "
              f"{stats.generated_tokens} generated at {stats.decode_tok_s:.1f} tok/s, {model.backend}]",
              file=sys.stderr)
    return EXIT_OK


def cmd_tokenize(args) -> int:
    from .formats import open_model_file
    from .paths import resolve_model
    from .tokenizer import Tokenizer
    mf = open_model_file(resolve_model(args.model), args.tokenizer)
    tok = Tokenizer.from_metadata(mf.metadata, mf.path.name, metadata_types=getattr(mf, "metadata_types", None))
    add_bos = False if args.no_bos else None
    parse_special = not args.no_parse_special
    if args.jsonl:
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(tok.encode(json.loads(line), add_bos=add_bos, parse_special=parse_special)))
    else:
        if args.text is None:
            raise ValueError("give TEXT, or --jsonl to read JSON strings from stdin")
        print(json.dumps(tok.encode(args.text, add_bos=add_bos, parse_special=parse_special)))
    return EXIT_OK


def cmd_perplexity(args) -> int:
    from .perplexity import perplexity
    try:  # before the model loads: a wrong path answers at once
        with open(args.file, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    model, adapters = load_model(args)
    result = perplexity(model, text, n_ctx=args.ctx, progress=not args.json, adapters=adapters)
    if args.json:
        print(json.dumps({"ppl": result.ppl, "ppl_err": result.ppl_err, "tokens": result.tokens,
                          "chunks": result.chunks, "backend": model.backend}))
    else:
        print(f"PPL = {result.ppl:.4f} +/- {result.ppl_err:.5f}")
    return EXIT_OK


def cmd_inspect(args) -> int:
    import numpy as np

    from .formats import open_model_file
    from .paths import resolve_model
    mf = open_model_file(resolve_model(args.model), args.tokenizer)
    n_params = sum(t.n_elements for t in mf.tensors.values())
    tensors = [{"name": t.name, "type": t.qtype.name, "shape": list(t.shape), "bytes": t.nbytes}
               for t in sorted(mf.tensors.values(), key=lambda t: layer_order(t.name))]

    def short(value):
        if isinstance(value, (list, tuple, np.ndarray)) and len(value) > 8:
            return f"[{len(value)} items]"
        if isinstance(value, str) and len(value) > 80:
            return value[:77] + "..."
        return value if not isinstance(value, np.ndarray) else value.tolist()

    metadata = {k: short(v) for k, v in mf.metadata.items()}
    if args.json:
        print(json.dumps({"path": str(mf.path), "format": mf.format, "version": mf.version,
                          "metadata": metadata, "tensors": tensors, "n_params": n_params}, default=str))
        return EXIT_OK
    print(f"{mf.path}  ({mf.format} v{mf.version}, {len(tensors)} tensors, {n_params:,} parameters)")
    for key, value in metadata.items():
        print(f"  {key} = {value}")
    print(f"  {'tensor':<34} {'type':<6} {'shape':<18} {'bytes':>12}")
    for t in tensors:
        print(f"  {t['name']:<34} {t['type']:<6} {str(t['shape']):<18} {t['bytes']:>12,}")
    return EXIT_OK


def layer_order(name: str) -> list:
    """Sort key that reads the numbers in a tensor name as numbers: blk.2 before blk.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def cmd_bench(args) -> int:
    from .bench import run_bench
    from .runtime_bench import runtime_report

    def progress(what: str) -> None:  # a bench is silent for a minute otherwise
        print(f"perro-pastor: bench: {what}", file=sys.stderr, flush=True)

    progress(f"loading {args.model} ({args.backend} backend)")
    model, adapters = load_model(args)
    if args.sessions:
        progress(f"{args.sessions} sessions, {args.n} tokens each, {args.budget_ms:g} ms tick budget")
        row = runtime_report(model, args.sessions, args.budget_ms, args.n, args.restore, adapters=adapters,
                             frame_ms=args.frame_ms)
    else:
        row = run_bench(model, n_prompt=args.p, n_gen=args.n, repeats=args.repeats, adapters=adapters,
                        progress=progress)
    row = {k: v for k, v in row.items() if v is not None}  # columns that do not apply to this backend
    if args.json:
        print(json.dumps(row))
    else:
        print(" | ".join(f"{k} {v}" for k, v in row.items()))
    return EXIT_OK


# -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="perro-pastor",
        description="Run quantized Llama-family models on the GPU (OpenGL 4.3 compute) or the CPU.",
        epilog="Exit codes: 0 ok, 2 usage, 3 bad model file, 4 download or backend failure.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="stream a continuation of a prompt")
    add_model_args(p)
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("-n", type=int_at_least(1), default=128, help="tokens to generate")
    p.add_argument("-c", "--ctx", type=int_at_least(1), default=None,
                   help="context window in tokens (default: prompt + -n, at most the model's)")
    add_sampler_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per token, then a summary")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("tokenize", help="print token ids as JSON")
    add_model_args(p, backend=False)
    p.add_argument("text", nargs="?")
    p.add_argument("--no-bos", action="store_true")
    p.add_argument("--no-parse-special", action="store_true")
    p.add_argument("--jsonl", action="store_true", help="read one JSON string per stdin line")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("perplexity", help="llama-perplexity's method: score the second half of each chunk")
    add_model_args(p)
    p.add_argument("-f", "--file", required=True)
    p.add_argument("-c", "--ctx", type=int_at_least(8), default=512, help="tokens per chunk")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_perplexity)

    p = sub.add_parser("inspect", help="metadata, tensor table and parameter count")
    p.add_argument("model")
    p.add_argument("--tokenizer")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("bench", help="prefill and decode speed, llama-bench style")
    add_model_args(p)
    p.add_argument("-p", type=int_at_least(1), default=128, help="prompt tokens")
    p.add_argument("-n", type=int_at_least(1), default=64, help="generated tokens")
    p.add_argument("--repeats", type=int_at_least(1), default=3)
    p.add_argument("--sessions", type=int_at_least(0), default=0,
                   help="NPC sessions generating at once under the scheduler (runtime figures)")
    p.add_argument("--budget-ms", type=float_above(0), default=4.0, help="with --sessions: tick budget")
    p.add_argument("--frame-ms", type=float_above(0), default=None,
                   help="with --sessions: one tick per frame of this many ms, the rest slept (a game's frame "
                        "loop); default: ticks back to back")
    p.add_argument("--restore", action="store_true", help="with --sessions: restore vs re-prefill")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    sub.add_parser("demo", help="the sample game: walk up to NPCs and talk (python -m sample_game --help)",
                   add_help=False)

    add_chat_cli(sub)
    add_download_cli(sub)
    return parser


def play_demo(argv: list[str]) -> int:
    """Hand over to the sample game (``perro-pastor-demo``): this process becomes it where the OS
    allows (POSIX), else waits for it. The library never imports the game, and the game sets its
    thread counts before NumPy loads (sample_game.__main__.share_the_cores)."""
    command = [sys.executable, "-m", "sample_game", *argv]
    if os.name == "posix":
        os.execv(sys.executable, command)  # does not return
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # before NumPy loads (with the model): a prompt's BLAS threads then leave the cores to the
    # decode that follows, and cli_args.load_model gives prompts every BLAS thread
    let_blas_workers_sleep_at_once()
    if argv[:1] == ["demo"]:  # the game is its own program (perro-pastor-demo) with its own flags
        return play_demo(argv[1:])
    args = build_parser().parse_args(argv)  # a bad flag exits 2 here, in one line
    try:
        check_args(args)
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, not in the interpreter's exit
        return code
    except BrokenPipeError:  # `perro-pastor inspect default | head`: the reader has all it wants
        quiet_stdout()
        return EXIT_OK
    except Exception as exc:
        if not was_interrupted(exc):  # Ctrl-C inside a numba kernel arrives as a SystemError
            return report(exc)
        print("perro-pastor: interrupted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("perro-pastor: interrupted", file=sys.stderr)
        return 130


def report(exc: Exception) -> int:
    """One ``perro-pastor: error:`` line for ``exc``; the exit code for its kind."""
    if isinstance(exc, (ModelFormatError, TokenizerError)):
        code = EXIT_BAD_MODEL
    elif isinstance(exc, (BackendError, DownloadError, PerroPastorError)):
        code = EXIT_FAILURE
    elif isinstance(exc, (ValueError, OSError)):
        code = EXIT_USAGE
    else:  # a bug: still one line, with the way to the traceback
        if os.environ.get("PERRO_PASTOR_DEBUG"):
            raise exc
        print(f"perro-pastor: error: unexpected {type(exc).__name__}: {exc} "
              "(PERRO_PASTOR_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_FAILURE
    print(f"perro-pastor: error: {exc}", file=sys.stderr)
    return code


def quiet_stdout() -> None:
    """Point stdout at the null device, so that Python's own flush at exit cannot fail again on
    the closed pipe (it would print "Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
