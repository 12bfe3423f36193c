"""`perro-pastor chat -m MODEL [--system TEXT] [--backend ...]`: talk to one NPC in the terminal.

Each line typed is a user turn; the reply streams as it is generated, through the same Session
and Scheduler a game uses. Ctrl-C during a reply cancels it (the conversation goes on); Ctrl-D or
an empty line at EOF ends the chat. Register with ``add_chat_cli(subparsers)``.
"""

from __future__ import annotations

import argparse
import sys

from .cli_args import EXIT_OK, add_model_args, add_sampler_args, load_model, sampler_from


def add_chat_cli(subparsers) -> None:
    p = subparsers.add_parser("chat", help="interactive, streaming chat with one NPC")
    add_model_args(p)
    p.add_argument("--system", default=None, help="system prompt (the NPC's persona)")
    p.add_argument("-n", type=int, default=256, help="max tokens per reply")
    p.add_argument("-c", "--ctx", type=int, default=2048, help="context window (tokens)")
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
                        n_ctx=min(args.ctx, model.config.seq_len), context_policy=args.context_policy,
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
        reply = npc.ask(line.rstrip("\n"), max_tokens=args.n)
        try:
            for piece in reply:
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:
            reply.cancel()
            stdout.write(" [cancelled]")
        stdout.write("\n")
        stdout.flush()
    return EXIT_OK
