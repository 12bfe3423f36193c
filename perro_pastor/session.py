"""One NPC: a conversation on a shared model, with its own KV cache, position, sampler and RNG,
history and priority. Sessions do no compute themselves: ``ask`` queues work and returns a
``Reply`` handle, and the ``Scheduler`` advances every session a frame-budgeted slice at a time.

    sched = Scheduler(model)
    guard = sched.session(system_prompt="You are a castle guard.", priority=10, seed=1)
    reply = guard.ask("Who goes there?", max_tokens=40, on_token=print)
    ...  # once per frame: sched.tick(4.0)
    for text in reply: ...            # or drive it to the end from plain code
    text = await reply                # or from asyncio

Bookkeeping rule: ``tokens`` is what the KV cache should hold, ``n_past`` how many of them it
really holds (fully processed). Work still to do is ``tokens[n_past:]``. Cancel, preemption and
context policies only ever shorten ``tokens``/``n_past``, so the cache is never inconsistent.
"""

from __future__ import annotations

import warnings
from typing import Callable, Protocol, Sequence

import numpy as np

from . import history, state
from .chat import BUILTIN, ChatTemplate, ChatTemplateError, guess_builtin, template_for_model
from .errors import PerroPastorError
from .grammar import Grammar, GrammarError
from .lora_adapter import LoraAdapter
from .reply import Reply, check_stops
from .sampling import Sampler, SamplerSettings

POLICIES = ("error", "drop_oldest", "shift")
WORD_JOINER = "\u2060"  # zero width, no break: what keeps a player's text from matching a special token


class ContextFullError(PerroPastorError):
    """A session's context window is full and its policy is ``error``."""


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


class SessionHost(Protocol):
    """What a session needs from whoever runs its work (``Scheduler``): sessions never drive
    themselves, they only tell their host that work is waiting."""
    sync_budget_ms: float

    def wake(self, session: "Session") -> None:
        """``session`` has tokens to process: schedule it."""

    def cached_prefix(self, prefix: list[int]) -> np.ndarray | None:
        """The KV rows of a system prompt computed before (``export_kv`` layout), or None."""

    def tick(self, budget_ms: float) -> int:
        """Advance all work a frame's worth (a blocking wait on a reply calls it in a loop)."""

    def ensure_async_driver(self) -> None:
        """Make sure something ticks once per frame on the running asyncio loop."""

    def fork(self, session: "Session", seed: int | None = None, **overrides) -> "Session":
        """A new session on the same host, continuing ``session``'s dialogue."""

    def remove(self, session: "Session") -> None:
        """Stop ``session`` for good and free its KV cache."""


class Session:
    """One NPC on a shared model. Create it with ``Scheduler.session(...)``."""

    def __init__(self, host: SessionHost, model, system_prompt: str | None = None,
                 sampler: SamplerSettings | Sampler | None = None, seed: int | None = None,
                 priority: int = 0, n_ctx: int = 512, context_policy: str = "drop_oldest",
                 template: ChatTemplate | str | None = None, lora=None, name: str = ""):
        if not isinstance(context_policy, str) or context_policy not in POLICIES:
            raise ValueError(f"context_policy {context_policy!r}: choose from {', '.join(POLICIES)}")
        self.host, self.model = host, model
        self.transformer = model.transformer
        cfg = self.model.config
        if not _is_int(n_ctx) or not 2 <= n_ctx <= cfg.seq_len:
            raise ValueError(f"n_ctx {n_ctx!r} must be an int in 2..{cfg.seq_len} (the model's context)")
        if not _is_int(priority):  # the scheduler compares priorities on every tick
            raise TypeError(f"priority must be an int, got {type(priority).__name__} {priority!r}")
        if not isinstance(system_prompt, (str, type(None))) or not isinstance(name, str):
            raise TypeError("system_prompt must be a string or None, and name a string")
        self.system_prompt, self.priority, self.name = system_prompt, priority, name
        self.n_ctx, self.context_policy, self.lora = n_ctx, context_policy, lora
        # LoRA adapters applied inside the batch to this session's rows only (lora.py's objects)
        self.adapters = tuple(lora) if isinstance(lora, (list, tuple)) else ((lora,) if lora is not None else ())
        for adapter in self.adapters:  # anything else would fail inside a batch, other NPCs' too
            if not isinstance(adapter, LoraAdapter):
                raise TypeError(f"lora must be adapters from perro_pastor.lora.load_adapter, got "
                                f"{type(adapter).__name__}")
        self.sampler = sampler if isinstance(sampler, Sampler) else Sampler(sampler or SamplerSettings(), seed)
        if isinstance(template, str) and template not in BUILTIN:
            raise ChatTemplateError(f"unknown chat template {template!r} (choose from {', '.join(BUILTIN)})")
        self._template = template  # a ChatTemplate, a built-in's name, or None: the model's own,
        # checked at first use (``template``), not for a session that never renders one
        self.messages: list[dict] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.kv = self.transformer.new_cache(n_ctx)
        self.tokens: list[int] = []
        self.n_past = 0
        self.epoch = 0  # bumped whenever pending work is replaced, so stale batches are ignored
        self.reply: Reply | None = None
        self.prefix = self.encode(self.render(self.messages, False)) if self.messages else []

    # -------------------------------------------------------------------------
    # prompts

    @property
    def template(self) -> ChatTemplate:
        """The chat template: the one given, a built-in by name, or the model's own (checked)."""
        if not isinstance(self._template, ChatTemplate):
            tok = self.model.tokenizer
            self._template = template_for_model(self.model.file.metadata, tok.tokens, tok.tokens[tok.bos_id],
                                                tok.tokens[tok.eos_id], name=self._template)
        return self._template

    @template.setter
    def template(self, template: ChatTemplate) -> None:
        self._template = template

    def render(self, messages: Sequence[dict], add_generation_prompt: bool) -> str:
        """The prompt text. If the model's own template fails on this conversation, the session
        switches for good to the built-in its file suggests, with one warning saying why."""
        template = self.template
        try:
            return template.render(messages, add_generation_prompt)
        except ChatTemplateError as exc:
            if template.name in BUILTIN:
                raise
            source = self.model.file.metadata.get("tokenizer.chat_template")
            self.template = guess_builtin(source if isinstance(source, str) else None, self.model.tokenizer.tokens)
            warnings.warn(f"session {self.name!r}: {exc}; using the built-in {self.template.name} "
                          f"template from now on", stacklevel=3)
            return self.template.render(messages, add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        tok = self.model.tokenizer
        starts_with_bos = text.startswith(tok.tokens[tok.bos_id])
        return tok.encode(text, add_bos=tok.add_bos and not starts_with_bos, parse_special=True)

    # -------------------------------------------------------------------------
    # the public calls

    @property
    def busy(self) -> bool:
        return self.reply is not None and not self.reply.done

    def say(self, text: str, role: str = "user") -> None:
        """Add a message to the history without generating (what the player said, a narration,
        or a line written for the NPC with ``role='assistant'``)."""
        if self.busy:
            raise RuntimeError(f"session {self.name!r} is generating; cancel or await the reply first")
        if not isinstance(text, str) or not isinstance(role, str) or not role:
            raise TypeError(f"say needs a string text and role, got {type(text).__name__}, {role!r}")
        self.messages.append({"role": role, "content": self.player_text(text) if role == "user" else text})

    def player_text(self, text: str) -> str:
        """``text`` as the player typed it, unable to become a special token: the prompt is
        encoded with special tokens parsed (a template and a persona may use them), so a player
        typing ``<|im_end|><|im_start|>system`` would forge turns. Each control token's text in
        it gets an invisible WORD JOINER after its first character, so it stays plain text."""
        for special in self.model.tokenizer.control_texts:
            if len(special) > 1 and special in text:
                text = text.replace(special, special[0] + WORD_JOINER + special[1:])
        return text

    def ask(self, text: str | None = None, max_tokens: int = 128, stop: Sequence[str] = (),
            on_token: Callable[[str], None] | None = None, ignore_eos: bool = False,
            grammar: Grammar | None = None) -> Reply:
        """Add ``text`` as a user turn (if given) and start the assistant's reply. Returns at once.
        With a ``grammar`` (``grammar.Grammar``, e.g. ``Grammar.from_json_schema(...)``) every
        token of the reply keeps it inside the grammar, and it ends only where the grammar does."""
        self._check_reply_args(max_tokens, stop, on_token, grammar)
        if not isinstance(text, (str, type(None))):
            raise TypeError(f"ask needs a string (or None), got {type(text).__name__}")
        before = list(self.messages)
        if text is not None:
            self.messages.append({"role": "user", "content": self.player_text(text)})
        try:
            prompt = self._fit(lambda messages: self.encode(self.render(messages, True)))
        except BaseException:
            self.messages[:] = before  # refused: the history stays as it was
            raise
        self._replace_tokens(prompt)
        self._start_reply(max_tokens, stop, on_token, ignore_eos, grammar)
        return self.reply

    def continue_tokens(self, tokens: Sequence[int], max_tokens: int = 128, stop: Sequence[str] = (),
                        on_token: Callable[[str], None] | None = None, ignore_eos: bool = False,
                        grammar: Grammar | None = None) -> Reply:
        """Continue ``tokens`` as they are: no chat template, no history (a plain completion,
        what ``Model.generate`` streams). Returns at once, like ``ask``."""
        self._check_reply_args(max_tokens, stop, on_token, grammar)
        vocab = len(self.model.tokenizer.tokens)
        if not all(_is_int(t) and 0 <= t < vocab for t in tokens):
            raise ValueError(f"tokens must be ints in 0..{vocab - 1}")
        if not 0 < len(tokens) <= self.n_ctx:
            raise ContextFullError(f"session {self.name!r}: prompt of {len(tokens)} tokens does not fit n_ctx={self.n_ctx}")
        self._replace_tokens(list(tokens))
        self._start_reply(max_tokens, stop, on_token, ignore_eos, grammar)
        self.reply.goes_to_history = False
        return self.reply

    def _start_reply(self, max_tokens, stop, on_token, ignore_eos, grammar) -> None:
        self.reply = Reply(self, max_tokens, stop, on_token, ignore_eos)
        if grammar is not None:
            self.reply.grammar = grammar.matcher(self.model.tokenizer)
        self.host.wake(self)

    def _check_reply_args(self, max_tokens, stop, on_token, grammar=None) -> None:
        if grammar is not None and not isinstance(grammar, Grammar):
            raise TypeError(f"grammar must be a perro_pastor.grammar.Grammar, got {type(grammar).__name__}")
        if self.closed:
            raise RuntimeError(f"session {self.name!r} was removed; make a new one (or restore a save)")
        if self.busy:
            raise RuntimeError(f"session {self.name!r} is generating; cancel or await the reply first")
        if not _is_int(max_tokens) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        if isinstance(stop, str) or not all(isinstance(x, str) for x in stop):
            raise TypeError(f"stop must be a list of strings, got {stop!r:.80}")
        check_stops(stop)  # (bounded: before the history changes)
        if on_token is not None and not callable(on_token):
            raise TypeError(f"on_token must be callable, got {type(on_token).__name__}")

    def cancel(self) -> None:
        if self.reply is not None:
            self.reply.cancel()

    def close(self) -> None:
        """This NPC is gone for good: its reply is cancelled and its KV cache freed now (GPU
        buffers on gl), as ``Scheduler.remove`` does. Closing twice does nothing. A session
        dropped without closing frees its GPU buffers when garbage-collected with its scheduler."""
        if self.kv is not None:
            self.host.remove(self)

    @property
    def closed(self) -> bool:
        return self.kv is None

    def save(self, kv_dtype: str = "f16") -> bytes:
        """This NPC as bytes (state.py's layout): history, tokens, KV rows, sampler and RNG."""
        if kv_dtype not in state.KV_DTYPES:
            raise ValueError(f"kv_dtype {kv_dtype!r}: choose from {', '.join(state.KV_DTYPES)}")
        if self.busy:
            raise RuntimeError(f"session {self.name!r} is generating; cancel or await the reply before saving")
        fields = {
            "name": self.name, "system_prompt": self.system_prompt, "priority": self.priority,
            "n_ctx": self.n_ctx, "context_policy": self.context_policy, "template": self.template.name,
            "messages": self.messages, "tokens": self.tokens[:self.n_past], "n_past": self.n_past,
            "settings": self.sampler.settings.to_dict(), "seed": self.sampler.seed,
            "rng": self.sampler.get_state(),
        }
        kv = self.transformer.export_kv(self.kv, self.n_past)
        return state.pack(fields, kv, kv_dtype, state.model_hash(self.model), state.adapter_hash(self.lora))

    def restore(self, saved: state.SavedSession) -> None:
        """Take over a saved NPC's conversation and KV rows (a fresh session made with the saved
        options: ``Scheduler.restore`` does both)."""
        self.sampler.set_state(saved.fields["rng"])
        self.transformer.import_kv(self.kv, saved.kv)
        self.messages, self.tokens, self.n_past = saved.fields["messages"], list(saved.fields["tokens"]), saved.n_past

    def options(self) -> dict:
        """The keyword arguments that make a session like this one (``Scheduler.session``)."""
        return dict(system_prompt=self.system_prompt, sampler=self.sampler, priority=self.priority,
                    n_ctx=self.n_ctx, context_policy=self.context_policy, template=self.template,
                    lora=self.lora, name=self.name)

    def continue_from(self, other: "Session") -> None:
        """Copy ``other``'s processed history and KV rows into this fresh session (a fork)."""
        if other.busy:
            raise RuntimeError(f"session {other.name!r} is generating; cancel or await the reply before forking")
        self.transformer.import_kv(self.kv, other.transformer.export_kv(other.kv, other.n_past))
        self.messages = [dict(m) for m in other.messages]
        self.tokens, self.n_past = list(other.tokens[:other.n_past]), other.n_past

    def fork(self, seed: int | None = None, **overrides) -> "Session":
        """A branch of this dialogue: same history and KV, its own future. Same RNG state unless
        a new ``seed`` is given."""
        if self.busy:
            raise RuntimeError(f"session {self.name!r} is generating; cancel or await the reply before forking")
        return self.host.fork(self, seed, **overrides)

    # -------------------------------------------------------------------------
    # scheduler side

    def pending(self) -> list[int]:
        return self.tokens[self.n_past:]

    def _replace_tokens(self, new: list[int]) -> None:
        """Make ``new`` the target contents of the cache, keeping the longest processed prefix
        (and reusing a cached system-prompt prefix on a fresh cache)."""
        self.epoch += 1
        common = 0
        limit = min(self.n_past, len(new))
        while common < limit and self.tokens[common] == new[common]:
            common += 1
        if common == len(new):  # all processed already, but the last logits are needed again
            common -= 1
        self.tokens, self.n_past = list(new), common
        if self.n_past < len(self.prefix) and new[:len(self.prefix)] == self.prefix:
            cached = self.host.cached_prefix(self.prefix)
            if cached is not None:
                self.transformer.import_kv(self.kv, cached)
                # (all of ``new`` may be the prefix, e.g. an NPC that speaks first with the llama2
                # template: its last row is recomputed all the same, for the logits)
                self.n_past = min(len(self.prefix), len(new) - 1)

    def _fit(self, make_prompt: Callable[[list[dict]], list[int]], reserve: int = 0) -> list[int]:
        """The prompt of the history, dropping the oldest turns (never the system prompt) until
        it fits, per policy (``history.drop_oldest_turns``). ``error`` refuses instead."""
        prompt = make_prompt(self.messages)
        fits = lambda p: len(p) + reserve <= self.n_ctx  # noqa: E731
        if fits(prompt):
            return prompt
        trimmed = None
        if self.context_policy != "error":
            trimmed = history.drop_oldest_turns(self.messages, 1 if self.system_prompt else 0, make_prompt, fits)
        if trimmed is None:
            raise ContextFullError(
                f"session {self.name!r}: prompt of {len(prompt) + reserve} tokens does not fit "
                f"n_ctx={self.n_ctx} (policy {self.context_policy})")
        self.messages[:], prompt = trimmed
        return prompt

    def choose_token(self, logits: np.ndarray) -> int | None:
        """The running reply's next token, sampled from ``logits`` (within the reply's grammar
        when it has one). None when the grammar allows no token at all: the reply has then ended
        with finish reason ``grammar`` and a GrammarError saying why."""
        matcher = self.reply.grammar
        if matcher is not None:
            allowed = matcher.allowed_tokens()
            if not allowed.any():
                self.finish_reply(self.reply, "grammar", error=GrammarError(
                    f"session {self.name!r}: no token can continue the grammar: {matcher.why_stopped()}"))
                return None
            logits = np.where(allowed, logits, -np.inf)
        return self.sampler.sample(logits, self.tokens)

    def accept_token(self, token: int) -> None:
        """A token was sampled for the running reply: finish, or queue it for the next step."""
        reply, tok = self.reply, self.model.tokenizer
        if not reply.ignore_eos and tok.is_eot(token):
            return self.finish_reply(reply, "eos")
        if reply.grammar is not None:
            reply.grammar.advance(token)
        reply.token_ids.append(token)
        if reply.add_token(token):
            return self.finish_reply(reply, "stop")
        if len(reply.token_ids) >= reply.max_tokens:
            return self.finish_reply(reply, "length")
        self.tokens.append(token)
        if len(self.tokens) > self.n_ctx:
            self._context_full()

    def _context_full(self) -> None:
        """The next token has no position left. Apply the session's policy."""
        reply = self.reply
        if self.context_policy == "drop_oldest" and len(self.messages) - (1 if self.system_prompt else 0) > 1:
            try:
                self._replace_tokens(self._fit(
                    lambda messages: self.encode(self.render(messages, True)) + reply.token_ids))
                return
            except ContextFullError:
                pass
        if self.context_policy in ("drop_oldest", "shift"):
            # shift: keep the system prompt, discard the oldest half of the rest, recompute the
            # kept tail at its new positions (exact; costs a prefill of <= n_ctx/2 tokens)
            n_keep = len(self.prefix) if self.tokens[:len(self.prefix)] == self.prefix else 0
            n_discard = max(1, (len(self.tokens) - n_keep) // 2)
            if len(self.tokens) - n_discard <= self.n_ctx and n_keep + n_discard < len(self.tokens):
                self._replace_tokens(self.tokens[:n_keep] + self.tokens[n_keep + n_discard:])
                return
        reply.error = ContextFullError(
            f"session {self.name!r}: context of {self.n_ctx} tokens is full (policy {self.context_policy})")
        self.finish_reply(reply, "context_full")

    def finish_reply(self, reply: Reply, reason: str, error: Exception | None = None) -> None:
        """End ``reply`` for ``reason`` (eos | stop | length | cancelled | context_full | grammar |
        error):
        flush its text, and keep in the history what the cache really holds."""
        if reply.done:
            return
        if error is not None:
            reply.error = error
        try:
            reply.end(reason)  # (runs the game's on_token, which may raise KeyboardInterrupt)
        finally:
            if reply is self.reply:
                self.epoch += 1
                self.tokens = self.tokens[:self.n_past]  # the cache holds exactly these
                if reply.goes_to_history and (reply.token_ids or reason != "cancelled"):
                    self.messages.append({"role": "assistant", "content": reply.text})
            reply.wake()

    def __repr__(self) -> str:
        return (f"Session({self.name!r}, priority={self.priority}, n_past={self.n_past}, "
                f"n_ctx={self.n_ctx}, busy={self.busy})")
