"""`perro-pastor chat -m MODEL [--system TEXT] [--backend ...]`: talk to one NPC in the terminal.

Each line typed is a user turn; the reply streams as it is generated, through the same Session
and Scheduler a game uses, and its speed follows on stderr (dim on a terminal), so stdout holds
only the replies. Ctrl-C during a reply cancels it (the conversation goes on); Ctrl-D or
an empty line at EOF ends the chat. Register with ``add_chat_cli(subparsers)``.
"""

from __future__ import annotations

import argparse
import sys
import time

from .cli_args import (EXIT_OK, add_model_args, add_sampler_args, fit_context, int_at_least, load_model,
                       sampler_from, was_interrupted)


def add_chat_cli(subparsers) -> None:
    p = subparsers.add_parser("chat", help="interactive, streaming chat with one NPC")
    add_model_args(p)
    p.add_argument("--system", default=None, help="system prompt (the NPC's persona)")
    p.add_argument("-n", type=int_at_least(1), default=256, help="max tokens per reply")
    p.add_argument("-c", "--ctx", type=int_at_least(16), default=2048,
                   help="context window (tokens; at most the model's)")
    p.add_argument("--template", default=None, choices=("chatml", "llama2", "llama3", "zephyr"),
                   help="a built-in template instead of the model's own")
    p.add_argument("--context-policy", default="drop_oldest", choices=("error", "drop_oldest", "shift"))
    add_sampler_args(p)
    p.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    from .scheduler import Scheduler
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    model, adapters = load_model(args)
    sched = Scheduler(model)
    npc = sched.session(system_prompt=args.system, sampler=sampler_from(args),
                        n_ctx=fit_context(args.ctx, model), context_policy=args.context_policy,
                        template=args.template, name="chat", lora=adapters or None)
    interactive = stdin.isatty()
    while True:
        if interactive:
            stdout.write("> ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        reply = npc.ask(line.rstrip("\n"), max_tokens=args.n, grammar=getattr(args, "grammar", None))
        start = time.perf_counter()
        first = None  # when the first piece came: the prompt's pass is done
        try:
            for piece in reply:
                first = first or time.perf_counter()
                stdout.write(piece)
                stdout.flush()
        except BaseException as exc:  # Ctrl-C may land inside a numba kernel (cli_args.was_interrupted)
            if not was_interrupted(exc):
                raise
            reply.cancel()
            stdout.write(" [cancelled]")
        stdout.write("\n")
        stdout.flush()
        speed_line(len(reply.token_ids), start, first, time.perf_counter())
    return EXIT_OK


def speed_line(n_tokens: int, start: float, first: float | None, end: float) -> None:
    """``[24 tokens, 31.5 tok/s, first after 0.42 s]`` on stderr, dim when it is a terminal."""
    if not n_tokens or first is None:
        return
    rate = f"{(n_tokens - 1) / (end - first):.1f} tok/s" if n_tokens > 1 and end > first else "- tok/s"
    text = f"[{n_tokens} tokens, {rate}, first after {first - start:.2f} s]"
    dim = sys.stderr.isatty()
    print(f"\x1b[2m{text}\x1b[0m" if dim else text, file=sys.stderr, flush=True)
