"""The autoplay script: it plays through the same ``Controls`` a keyboard would.

1. wait for loading to finish;
2. walk to an NPC (along the road, then up to them);
3. ask a question (E, type, Enter);
4. wait for the streamed reply (the screenshot is taken as it completes);
5. let two NPCs chat (background chatter is switched on only now), then stop.
"""

from __future__ import annotations

from . import world

# a question that invites an action (give_item, open_door, follow...): the report counts them
QUESTION = "Hello! Could you give me something, or show me your shop?"
CHAT_LINES = 2  # chatter lines to wait for in step 5


class Autoplay:
    def __init__(self, target: str = "Mara", question: str = QUESTION):
        self.target = next(v for v in world.VILLAGERS if v.name == target)
        self.question = question
        self.step = "loading"
        self.finished = False
        self.want_screenshot = False  # True on the frame the reply completes
        self._chat_mark = 0

    def _hold(self, game, keys: set[str]) -> None:
        """Make exactly ``keys`` the held movement keys."""
        c = game.controls
        for k in list(c.held):
            if k not in keys:
                c.key_up(k)
        for k in keys - c.held:
            c.key_down(k)

    def update(self, game, now: float) -> None:
        """Advance the script one frame (call before ``game.update``)."""
        self.want_screenshot = False
        c, p, t = game.controls, game.player, self.target
        if game.village is None and self.step != "loading":
            self.step = "loading"  # the model is being (re)loaded, e.g. after a gpu failure: ask again
        if self.step == "loading":
            game.chatter = False
            if game.village is not None:
                game.village.chatter_enabled = False
                self.step = "walk"
        if self.step == "walk":
            near = world.nearest_villager(p, game.villagers)
            if near is not None and near.name == t.name:
                self._hold(game, set())
                self.step = "ask"
            elif abs(p.x - t.x) > 4:  # along the road first, then straight up
                self._hold(game, {"LEFT"} if p.x > t.x else {"RIGHT"})
            else:
                self._hold(game, {"UP"} if p.y < t.y else {"DOWN"})
        elif self.step == "ask":
            game.on_action(c.key_down("E"), now)
            c.text("e")  # the window's on_text for the same key press: swallowed
            c.key_up("E")
            c.text(self.question)
            game.on_action(c.key_down("ENTER"), now)
            self.step = "reply"
        elif self.step == "reply":
            if game.village.talk is None:
                self.want_screenshot = True
                game.village.chatter_enabled = True
                self._chat_mark = len(game.village.transcript)
                self.step = "chat"
        elif self.step == "chat":
            lines = [e for e in game.village.transcript[self._chat_mark:] if e["speaker"] != "Player"]
            if len(lines) >= CHAT_LINES:
                self.finished = True
