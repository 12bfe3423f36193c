"""What villagers do when the player talks to them: each reply is one small JSON object,

    {"say": "Here, take a loaf!", "action": "give_item", "mood": "happy"}

constrained by a grammar compiled from ``SCHEMA`` (once per process: every matcher shares its
state and mask caches). The game shows ``say`` in the bubble (streamed: ``partial_say`` reads it
out of the JSON as it grows) and performs ``action`` in the scene; ``mood`` shows by the name
plate. A reply that is cut (``length``), stopped by the grammar or not valid JSON shows what was
said and does nothing.

No window and no model here: the state (inventory, open doors, who follows, who waves, moods) is
plain data, so it is unit-testable.
"""

from __future__ import annotations

import json
import math
import threading

from . import world

SAY_MAX = 120
ACTIONS = ("none", "give_item", "open_door", "follow", "wave")
MOODS = ("happy", "calm", "sad", "angry")
SCHEMA = {
    "type": "object",
    "properties": {  # "say" first: it streams into the bubble while the rest is still to come
        "say": {"type": "string", "maxLength": SAY_MAX},
        "action": {"enum": list(ACTIONS)},
        "mood": {"enum": list(MOODS)},
    },
    "required": ["say", "action", "mood"],
    "additionalProperties": False,
}
JSON_TOKENS = 28  # a reply's token cap is its say's soft limit plus this much for the JSON around it
ITEMS = {"Mara": "honey cake", "Tomas": "wool", "Ines": "horseshoe"}
HOMES = {"Mara": "Bakery", "Tomas": "Barn", "Ines": "Forge"}  # whose door opens
FOLLOW_S = 10.0  # a villager follows the player this long, then walks home
WAVE_S = 2.5
DOOR_S = 12.0  # an opened door closes again after this long
FOLLOW_SPEED = 150.0
FOLLOW_GAP = 46.0  # a follower stays this far behind the player

_grammar = None
_grammar_lock = threading.Lock()


def npc_grammar():
    """The reply grammar, compiled on first use and kept."""
    global _grammar
    with _grammar_lock:
        if _grammar is None:
            from perro_pastor.grammar import Grammar
            _grammar = Grammar.from_json_schema(SCHEMA)
        return _grammar


WARM_DOCS = (
    '{"say": "Good morning! Here, take this.", "action": "give_item", "mood": "happy"}',
    '{"say":"' + "Come in, " * 13 + 'x", "action":"open_door","mood":"calm"}',  # a say of 120 chars
    '{ "say" : "I said \\"no\\".\\n Go away\\u0021", "action" : "none", "mood" : "angry" }',
    '{\n  "say": "Follow me, friend.",\n  "action": "follow",\n  "mood": "sad"\n}',
    '{"say": "", "action": "wave", "mood": "happy"}',
)


def warm_grammar(tokenizer) -> int:
    """Compute the masks of every state a reply is likely to reach (each costs 10-50 ms the first
    time), byte by byte through ``WARM_DOCS``, so that the first reply does not stall frames.
    Returns the grammar's state count. Call it off the frame thread, before replies start."""
    grammar = npc_grammar()
    for doc in WARM_DOCS:
        m = grammar.matcher(tokenizer)
        m.allowed_tokens()
        for b in doc.encode():
            if not m.accepts_bytes(bytes([b])):
                break
            m.advance_bytes(bytes([b]))
            m.allowed_tokens()
    return grammar.n_states


def persona_rules(name: str) -> str:
    """What the system prompt adds to a villager's persona: the JSON, and what its actions mean."""
    item, home = ITEMS.get(name, "a small gift"), HOMES.get(name, "house")
    # short: every token here is prefilled for each villager (the grammar enforces the format)
    return (f' To the player, answer in JSON with "say", "action" and "mood". Actions: give_item '
            f'(give a {item}), open_door (open the {home}), follow (walk with the player), wave, '
            f'none. To villagers, answer in plain words.')


def partial_say(text: str) -> tuple[str, bool]:
    """The ``say`` string of a JSON reply that may still be growing: (what it says so far,
    whether its closing quote has come). Escapes are decoded; a half-read escape is left out."""
    i = text.find('"say"')
    if i < 0:
        return "", False
    i = text.find(":", i + 5)
    if i < 0:
        return "", False
    i = text.find('"', i + 1)
    if i < 0:
        return "", False
    out, i = [], i + 1
    simple = {'"': '"', "\\": "\\", "/": "/", "b": "", "f": "", "n": " ", "r": "", "t": " "}
    while i < len(text):
        c = text[i]
        if c == '"':
            return "".join(out), True
        if c == "\\":
            if i + 1 >= len(text):
                break
            e = text[i + 1]
            if e == "u":
                if i + 6 > len(text):
                    break
                try:
                    out.append(chr(int(text[i + 2:i + 6], 16)))
                except ValueError:
                    pass
                i += 6
                continue
            out.append(simple.get(e, e))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out), False


def parse_reply(text: str) -> dict | None:
    """The reply as {"say", "action", "mood"}, or None when it is not a valid one."""
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("say"), str):
        return None
    if doc.get("action") not in ACTIONS or doc.get("mood") not in MOODS:
        return None
    return {"say": doc["say"], "action": doc["action"], "mood": doc["mood"]}


class Acts:
    """The scene's state that replies change, and the performing of actions."""

    def __init__(self):
        self.inventory: list[str] = []
        self.doors: dict[str, float] = {}      # house label -> when it closes again
        self.following: dict[str, float] = {}  # villager -> until when
        self.waving: dict[str, float] = {}     # villager -> until when
        self.moods: dict[str, str] = {}
        self.performed: list[dict] = []        # {"npc", "action"}, oldest first
        self.homes: dict[str, tuple[float, float]] = {}  # where each villager stood at first

    def perform(self, npc: str, action: str, now: float) -> bool:
        """Do ``action`` for villager ``npc``; False for "none" or an unknown action."""
        if action == "give_item":
            self.inventory.append(ITEMS.get(npc, "a small gift"))
        elif action == "open_door":
            self.doors[HOMES.get(npc, "Bakery")] = now + DOOR_S
        elif action == "follow":
            self.following[npc] = now + FOLLOW_S
        elif action == "wave":
            self.waving[npc] = now + WAVE_S
        else:
            return False
        self.performed.append({"npc": npc, "action": action})
        return True

    def open_doors(self, now: float) -> set[str]:
        return {h for h, until in self.doors.items() if now < until}

    def is_waving(self, npc: str, now: float) -> bool:
        return now < self.waving.get(npc, 0.0)

    def step(self, villagers, player, dt: float, now: float) -> None:
        """Move followers after the player (then back home once their time is up)."""
        for v in villagers:
            self.homes.setdefault(v.name, (v.x, v.y))
            if now < self.following.get(v.name, 0.0):
                dx, dy = player.x - v.x, player.y - v.y
                d = math.hypot(dx, dy)
                if d <= FOLLOW_GAP:
                    continue
                tx, ty = player.x - dx / d * FOLLOW_GAP, player.y - dy / d * FOLLOW_GAP
            else:
                self.following.pop(v.name, None)
                tx, ty = self.homes[v.name]
            _walk(v, tx, ty, dt)


def _walk(v, tx: float, ty: float, dt: float) -> None:
    """Move villager ``v`` toward (tx, ty), sliding along walls as the player does."""
    dx, dy = tx - v.x, ty - v.y
    d = math.hypot(dx, dy)
    if d < 1.0:
        return
    body = world.Player(x=v.x, y=v.y)
    step = min(d, FOLLOW_SPEED * min(dt, 0.1))
    body.move(dx, dy, step / world.PLAYER_SPEED)
    v.x, v.y = body.x, body.y
