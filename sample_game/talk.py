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

PLAYER_PRIORITY = 10  # the villager the player talks to preempts the background chatter
CHATTER_PRIORITY = 0
REPLY_TOKENS = 48
CHATTER_TOKENS = 28
N_CTX = 512
BUBBLE_LINGER_S = 6.0  # a finished bubble stays this long
SAVE_VERSION = 1

TOPICS = ("the weather", "the harvest", "the sheep", "the market tomorrow", "a stranger in the village",
          "the old mill", "the festival", "a lost goat")


@dataclass
class Bubble:
    """What a villager is saying: ``full`` grows token by token, ``shown`` a word at a time."""
    speaker: str
    full: str = ""
    done: bool = False
    done_at: float = 0.0

    @property
    def shown(self) -> str:
        if self.done:
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
        self.sessions = {v.name: self._new_session(v) for v in self.villagers}
        # each persona's prompt is prefilled in the background while nobody talks (the player is
        # still walking up), so a villager's first reply starts without it
        for v in self.villagers:
            self.scheduler.warmup(v.persona, background=True, n_ctx=N_CTX, template=self.template)
        self.bubbles: dict[str, Bubble] = {}
        self.transcript: list[dict] = []
        self.chatter_enabled = chatter
        self.chat: dict | None = None  # {"pair": (a, b), "turn": 0..n, "reply": Reply}
        self.chat_cooldown_until = 0.0
        self.talk: dict | None = None  # {"name": ..., "reply": Reply}
        self.rng = random.Random(rng_seed)
        self.errors: list[str] = []  # failed replies, newest last
        self._reported: set = set()

    def _new_session(self, v):
        return self.scheduler.session(system_prompt=v.persona, sampler=v.sampler, seed=v.seed,
                                      priority=CHATTER_PRIORITY, n_ctx=N_CTX, name=v.name,
                                      template=self.template)

    # -------------------------------------------------------------------------
    # the player

    @property
    def busy_talking(self) -> bool:
        return self.talk is not None and not self.talk["reply"].done

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
        reply = session.ask(text, max_tokens=self.reply_tokens, stop=("\n",))
        self.bubbles[name] = Bubble(name)
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
        topic = self.rng.choice(TOPICS)
        prompt = (f"{b} walks past you in the village square. Say one short friendly sentence "
                  f"to {b} about {topic}.")
        self.chat = {"pair": (a, b), "turn": 0, "speaker": a}
        self._chat_say(a, prompt)

    def _chat_say(self, speaker: str, prompt: str) -> None:
        session = self.sessions[speaker]
        session.priority = CHATTER_PRIORITY
        self.chat["reply"] = session.ask(prompt, max_tokens=self.chatter_tokens, stop=("\n",))
        self.chat["speaker"] = speaker
        self.bubbles[speaker] = Bubble(speaker)

    def _advance_chat(self, now: float) -> None:
        chat = self.chat
        reply = chat["reply"]
        if not reply.done:
            return
        a, b = chat["pair"]
        line = reply.text.strip()
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
            bubble.full += reply.poll()
            if reply.done and not bubble.done:
                bubble.done, bubble.done_at = True, now
        for name in [n for n, b in self.bubbles.items() if b.done and now - b.done_at > BUBBLE_LINGER_S]:
            del self.bubbles[name]
        for session in self.sessions.values():  # a failed reply (e.g. a GPU error) is reported once
            reply = session.reply
            if reply is not None and reply.error is not None and reply not in self._reported:
                self._reported.add(reply)
                self.errors.append(f"{session.name}: {type(reply.error).__name__}: {reply.error}")
        if self.talk is not None and self.talk["reply"].done:
            name, reply = self.talk["name"], self.talk["reply"]
            if reply.text.strip():
                self.transcript.append({"speaker": name, "text": reply.text.strip(), "to": "Player"})
            self.sessions[name].priority = CHATTER_PRIORITY
            self.talk = None
        if self.chat is not None:
            self._advance_chat(now)
        elif self.chatter_enabled and now >= self.chat_cooldown_until:
            self._start_chat(now)

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
