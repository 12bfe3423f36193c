"""Conversations: one session per villager on a shared scheduler, the player's questions at high
priority, background chatter between two villagers at low priority, speech bubbles that fill
word by word, the transcript, and save/load of every villager's conversation state.

No window here: the game calls ``update(now)`` once per frame *after* ``scheduler.tick``.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass

from perro_pastor.scheduler import Scheduler

from .actions import JSON_TOKENS, Acts, npc_grammar, parse_reply, partial_say, persona_rules

PLAYER_PRIORITY = 10  # the villager the player talks to preempts the background chatter
CHATTER_PRIORITY = 0
REPLY_TOKENS = 48  # soft limits: past them a reply ends at its next sentence end...
CHATTER_TOKENS = 28
OVERRUN = 0.5  # ...or at this much more (then it is cut back to its last sentence end)
N_CTX = 512
BUBBLE_LINGER_S = 6.0  # a finished bubble stays this long
SAVE_VERSION = 1

TOPICS = ("the weather", "the harvest", "the sheep", "the market tomorrow", "a stranger in the village",
          "the old mill", "the festival", "a lost goat", "the river", "a broken cart", "the new bell",
          "the wolves in the hills", "a wedding next week", "the price of flour", "the mayor's hat",
          "a letter from the city")
# how an opening line is asked for: never twice the same way in a row, so no villager opens the
# same way twice (the small model repeats a prompt's answer closely)
OPENERS = ("Ask {b} a short question about {topic}.",
           "Tell {b} a piece of gossip about {topic}, in one short sentence.",
           "Complain to {b} about {topic}, in one short sentence.",
           "Share some good news with {b} about {topic}, in one short sentence.",
           "Make a small joke to {b} about {topic}.",
           "Warn {b} about {topic}, in one short sentence.")
SCENES = ("{b} walks past you in the village square.", "You meet {b} by the well.",
          "{b} stops by your door in the morning.", "You bump into {b} on the road at dusk.")
SENTENCE_ENDS = ".!?"
CLOSERS = "\"')]*"  # may follow a sentence end: 'Yes." she said' ends after the quote


def sentence_end(text: str, start: int = 0) -> int:
    """The index just past the first sentence end in ``text`` at or after ``start`` (a ., ! or ?
    followed by a space or the end of the text, with any closing quotes), or -1."""
    i = start
    while i < len(text):
        if text[i] in SENTENCE_ENDS:
            j = i + 1
            while j < len(text) and (text[j] in SENTENCE_ENDS or text[j] in CLOSERS):
                j += 1
            if j == len(text) or text[j].isspace():
                if not _abbreviation(text, i):
                    return j
            i = j
        else:
            i += 1
    return -1


def _abbreviation(text: str, dot: int) -> bool:
    """``text[dot]`` ends "Mr." / "e.g." / a single letter, not a sentence."""
    if text[dot] != ".":
        return False
    word = text[:dot].rsplit(None, 1)[-1] if text[:dot].strip() else ""
    return word.lower() in ("mr", "mrs", "ms", "dr", "st", "e.g", "i.e", "etc") or len(word) == 1 and word.isalpha()


def trim_to_sentence(text: str) -> str:
    """``text`` up to its last sentence end; a text with none is kept, with "..." after its last
    whole word, so a reply never stops mid-sentence without saying so."""
    text = text.strip()
    last, i = -1, 0
    while (j := sentence_end(text, i)) != -1:
        last, i = j, j
    if last > 0:
        return text[:last].strip()
    if not text or text[-1] in SENTENCE_ENDS + CLOSERS:
        return text
    return text.rstrip(",;:- ") + "..."


def hard_limit(soft: int) -> int:
    """The token cap of a reply whose soft limit is ``soft``."""
    return soft + max(4, int(soft * OVERRUN))


def opening_prompt(rng, a: str, b: str, said: list[str], recent: list[str]) -> str:
    """The prompt for ``a``'s opening line to ``b``: a scene, a way of speaking and a topic drawn
    from ``rng``, none of them the same as in ``recent`` (earlier prompts, newest last; the
    chosen one is appended). ``said`` (``a``'s earlier lines) are named as lines not to repeat."""
    def fresh(options, i):  # not one of the last few used (fewer than there are options)
        used = {r[i] for r in recent[-min(3, len(options) - 1):]} if recent else set()
        return rng.choice([o for o in options if o not in used])
    for _ in range(20):
        key = scene, opener, topic = fresh(SCENES, 0), fresh(OPENERS, 1), fresh(TOPICS, 2)
        if key not in recent:
            break
    recent.append(key)
    del recent[:-200]
    prompt = f"{scene.format(b=b)} {opener.format(b=b, topic=topic)}"
    if said:
        prompt += f' Say something new, not "{said[-1]}".'
    return prompt


@dataclass
class Bubble:
    """What a villager is saying: ``full`` grows token by token, ``shown`` a word at a time."""
    speaker: str
    full: str = ""
    done: bool = False
    done_at: float = 0.0
    streaming: bool = True  # False: a line said whole (the player's), shown whole at once
    json_reply: bool = False  # ``full`` is a growing JSON reply: only its "say" is shown

    @property
    def shown(self) -> str:
        if self.json_reply:  # (until it is done: then ``full`` is replaced by what was said)
            say, closed = partial_say(self.full)
            if closed:
                return say.strip()
            cut = say.rfind(" ")
            return say[:cut].strip() if cut > 0 else ""
        if self.done or not self.streaming:
            return self.full.strip()
        cut = max(self.full.rfind(" "), self.full.rfind("\n"))
        return self.full[:cut].strip() if cut > 0 else ""


class Village:
    """The villagers' minds. ``villagers`` are ``world.Villager``s (name, persona, sampler)."""

    def __init__(self, model, villagers, chatter: bool = True, rng_seed: int = 5,
                 reply_tokens: int | None = None, template=None):
        self.model, self.villagers, self.template = model, list(villagers), template
        self.reply_tokens = reply_tokens or REPLY_TOKENS
        self.chatter_tokens = min(CHATTER_TOKENS, self.reply_tokens)
        self.scheduler = Scheduler(model)
        self.grammar = npc_grammar()  # the player's replies: one JSON object (actions.py)
        self.acts = Acts()
        self.sessions = {v.name: self._new_session(v) for v in self.villagers}
        # each persona's prompt is prefilled in the background while nobody talks (the player is
        # still walking up), so a villager's first reply starts without it
        for v in self.villagers:
            self.scheduler.warmup(self.system_prompt(v), background=True, n_ctx=N_CTX,
                                  template=self.template)
        self.bubbles: dict[str, Bubble] = {}
        self.transcript: list[dict] = []
        self.chatter_enabled = chatter
        self.chat: dict | None = None  # {"pair": (a, b), "turn": 0..n, "reply": Reply}
        self.chat_cooldown_until = 0.0
        self.talk: dict | None = None  # {"name": ..., "reply": Reply}
        self.rng = random.Random(rng_seed)
        self.errors: list[str] = []  # failed replies, newest last
        self._reported: set = set()
        self._recent_prompts: list = []
        self.player_to: str | None = None  # who the player's bubble speaks to

    @staticmethod
    def system_prompt(v) -> str:
        return v.persona + persona_rules(v.name)

    def _new_session(self, v):
        return self.scheduler.session(system_prompt=self.system_prompt(v), sampler=v.sampler, seed=v.seed,
                                      priority=CHATTER_PRIORITY, n_ctx=N_CTX, name=v.name,
                                      template=self.template)

    # -------------------------------------------------------------------------
    # the player

    @property
    def busy_talking(self) -> bool:
        return self.talk is not None and not self.talk["reply"].done

    def _reply(self, session, prompt: str, soft: int):
        reply = session.ask(prompt, max_tokens=hard_limit(soft), stop=("\n",))
        reply.soft_limit = soft  # past it, the reply ends at its next sentence end (update)
        return reply

    def ask(self, name: str, text: str, now: float):
        """The player says ``text`` to villager ``name``; the reply streams into its bubble."""
        session = self.sessions[name]
        if self.talk is not None and not self.talk["reply"].done:  # the player turned away
            self.talk["reply"].cancel()
            self.sessions[self.talk["name"]].priority = CHATTER_PRIORITY
        if self.chat is not None and name in self.chat["pair"]:
            self._stop_chat(now)  # the villager turns to the player
        if session.busy:
            session.cancel()
        session.priority = PLAYER_PRIORITY
        self.transcript.append({"speaker": "Player", "text": text, "to": name})
        # one JSON object (say, action, mood): a say of up to ~reply_tokens, plus its frame
        reply = session.ask(text, max_tokens=hard_limit(self.reply_tokens) + JSON_TOKENS,
                            grammar=self.grammar)
        self.bubbles[name] = Bubble(name, json_reply=True)
        self.bubbles["Player"] = Bubble("Player", full=text, streaming=False)  # the player's line stays up
        self.player_to = name
        self.talk = {"name": name, "reply": reply}
        return reply

    # -------------------------------------------------------------------------
    # background chatter: a asks b, b answers, a answers back, ...

    def _start_chat(self, now: float) -> None:
        idle = [v.name for v in self.villagers
                if not self.sessions[v.name].busy and (self.talk is None or self.talk["name"] != v.name)]
        if len(idle) < 2:
            return
        a, b = self.rng.sample(idle, 2)
        said = [e["text"] for e in self.transcript if e["speaker"] == a]
        prompt = opening_prompt(self.rng, a, b, said, self._recent_prompts)
        self.chat = {"pair": (a, b), "turn": 0, "speaker": a}
        self._chat_say(a, prompt)

    def _chat_say(self, speaker: str, prompt: str) -> None:
        session = self.sessions[speaker]
        session.priority = CHATTER_PRIORITY
        self.chat["reply"] = self._reply(session, prompt, self.chatter_tokens)
        self.chat["speaker"] = speaker
        self.bubbles[speaker] = Bubble(speaker)

    def _advance_chat(self, now: float) -> None:
        chat = self.chat
        reply = chat["reply"]
        if not reply.done:
            return
        a, b = chat["pair"]
        line = self.bubbles[chat["speaker"]].full if chat["speaker"] in self.bubbles else reply.text
        line = line.strip()
        if line:
            self.transcript.append({"speaker": chat["speaker"], "text": line,
                                    "to": b if chat["speaker"] == a else a})
        chat["turn"] += 1
        if chat["turn"] >= 3 or not line:  # a short exchange, then a pause
            self._stop_chat(now)
            return
        listener = b if chat["speaker"] == a else a
        self._chat_say(listener, f'{chat["speaker"]} says to you: "{line}" Answer {chat["speaker"]} '
                                 "in one short sentence.")

    def _stop_chat(self, now: float) -> None:
        if self.chat is not None:
            reply = self.chat.get("reply")
            if reply is not None and not reply.done:
                reply.cancel()
                self.bubbles.pop(self.chat["speaker"], None)
        self.chat = None
        self.chat_cooldown_until = now + 2.0

    # -------------------------------------------------------------------------
    # once per frame

    def update(self, now: float) -> None:
        for name, session in self.sessions.items():  # stream new text into the bubbles
            bubble = self.bubbles.get(name)
            reply = session.reply
            if bubble is None or reply is None:
                continue
            new = reply.poll()
            if new and not bubble.done:
                bubble.full += new
                soft = getattr(reply, "soft_limit", None)
                if soft is not None and len(reply.token_ids) >= soft and not reply.done:
                    end = sentence_end(bubble.full, max(0, len(bubble.full) - len(new) - 1))
                    if end != -1:  # past the soft limit, a sentence just ended: so does the reply
                        bubble.full = bubble.full[:end]
                        reply.cancel()
            if reply.done and not bubble.done:
                if bubble.json_reply:
                    self._finish_json(name, session, reply, bubble, now)
                elif reply.finish_reason in ("length", "cancelled"):
                    bubble.full = trim_to_sentence(bubble.full)
                    if session.messages and session.messages[-1]["role"] == "assistant":
                        session.messages[-1]["content"] = bubble.full  # what the player read
                bubble.done, bubble.done_at = True, now
                player = self.bubbles.get("Player")
                if self.player_to == name and player is not None:
                    player.done, player.done_at = True, now  # both lines linger together
        for name in [n for n, b in self.bubbles.items() if b.done and now - b.done_at > BUBBLE_LINGER_S]:
            del self.bubbles[name]
        for session in self.sessions.values():  # a failed reply (e.g. a GPU error) is reported once
            reply = session.reply
            if reply is not None and reply.error is not None and reply not in self._reported \
                    and reply.finish_reason != "grammar":  # (a grammar stop is handled: no action)
                self._reported.add(reply)
                self.errors.append(f"{session.name}: {type(reply.error).__name__}: {reply.error}")
        if self.talk is not None and self.talk["reply"].done:
            name, reply = self.talk["name"], self.talk["reply"]
            bubble = self.bubbles.get(name)
            text = (bubble.full if bubble is not None else reply.text).strip()
            if text:
                self.transcript.append({"speaker": name, "text": text, "to": "Player"})
            self.sessions[name].priority = CHATTER_PRIORITY
            self.talk = None
        if self.chat is not None:
            self._advance_chat(now)
        elif self.chatter_enabled and now >= self.chat_cooldown_until:
            self._start_chat(now)

    def _finish_json(self, name, session, reply, bubble, now: float) -> None:
        """A JSON reply is done: the bubble keeps what was said; a complete, valid reply's action
        is performed and its mood shown. A cut or invalid one does nothing (and is kept in the
        history as a valid reply with no action, so the villager does not learn broken JSON)."""
        parsed = parse_reply(bubble.full) if reply.finish_reason == "eos" else None
        if parsed is not None:
            bubble.full = parsed["say"]
            self.acts.moods[name] = parsed["mood"]
            self.acts.perform(name, parsed["action"], now)
        else:
            say, closed = partial_say(bubble.full)
            bubble.full = say if closed else trim_to_sentence(say)
            bubble.full = bubble.full.strip() or "..."  # (speechless: still a line to show)
            if session.messages and session.messages[-1]["role"] == "assistant":
                session.messages[-1]["content"] = json.dumps(
                    {"say": bubble.full, "action": "none", "mood": self.acts.moods.get(name, "calm")})
        bubble.json_reply = False
        bubble.full = bubble.full.strip()

    @property
    def generating(self) -> bool:
        return any(s.busy for s in self.sessions.values())

    @property
    def warming(self) -> bool:
        """Background work is pending (the personas' warm-up): ticks still have work to do."""
        return bool(self.scheduler.jobs)

    def cancel_all(self) -> None:
        for s in self.sessions.values():
            s.cancel()
        self.chat, self.talk = None, None

    # -------------------------------------------------------------------------
    # save / load

    def save(self, player_xy: tuple[float, float], model_name: str) -> bytes:
        """Everything needed to continue later: each villager's session (KV cache, history,
        sampler RNG), the transcript and where the player stands. Background chatter is
        cancelled first (a session cannot be saved mid-reply); the player's reply must be done."""
        if self.busy_talking:
            raise RuntimeError("wait for the reply to finish before saving")
        self._stop_chat(0.0)
        self.update(0.0)
        state = {
            "version": SAVE_VERSION, "model": model_name, "player": list(player_xy),
            "transcript": self.transcript,
            "npcs": {name: base64.b64encode(s.save(kv_dtype="f16")).decode()
                     for name, s in self.sessions.items()},
        }
        return json.dumps(state).encode()

    def load(self, data: bytes) -> tuple[float, float]:
        """Restore a ``save``; returns the player's position. Raises ValueError (or the
        library's StateError) before changing anything if the file does not fit."""
        try:
            state = json.loads(data)
            version = state["version"]
            blobs = {name: base64.b64decode(state["npcs"][name]) for name in self.sessions}
            transcript, player = list(state["transcript"]), state["player"]
            x, y = float(player[0]), float(player[1])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"save file is corrupt: {type(exc).__name__}: {exc}") from None
        if version != SAVE_VERSION:
            raise ValueError(f"save file version {version}, this game reads version {SAVE_VERSION}")
        restored = {}
        try:
            for name, blob in blobs.items():
                restored[name] = self.scheduler.restore(blob)
        except Exception:
            for s in restored.values():
                self.scheduler.remove(s)
            raise
        self.cancel_all()
        for name, old in self.sessions.items():
            self.scheduler.remove(old)
            self.sessions[name] = restored[name]
        self.bubbles.clear()
        self.transcript = transcript
        return x, y
