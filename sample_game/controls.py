"""Keyboard handling as plain classes: key names in, movement and actions out.

The window translates pyglet's key symbols to names (``pyglet.window.key.symbol_string``:
"LEFT", "A", "ENTER", "F5", ...) and typed characters to ``text``; everything else lives here
so it can be tested without a window. The game reads ``Controls.move_vector()`` each frame
and acts on the ``Action`` returned by ``key_down``/``text``.

Modes:
- ``walk``: arrows/WASD move; E/Enter talk to the villager in reach; F2 model picker;
  F5 save; F9 load; Escape quit.
- ``type``: characters go into the line being typed; Enter sends it, Escape drops it.
- ``picker``: Up/Down choose a model, Enter loads or downloads it, Escape closes.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE = 120  # characters a player can type in one line

MOVE_KEYS = {
    "LEFT": (-1, 0), "A": (-1, 0), "RIGHT": (1, 0), "D": (1, 0),
    "UP": (0, 1), "W": (0, 1), "DOWN": (0, -1), "S": (0, -1),
}
CONFIRM_KEYS = ("ENTER", "RETURN", "NUM_ENTER")


@dataclass(frozen=True)
class Action:
    """What the player asked for: ``kind`` is one of talk, send, cancel, quit, save, load,
    picker, pick, picker_close; ``text`` carries the line for ``send``, ``index`` the row for
    ``pick``."""
    kind: str
    text: str = ""
    index: int = -1


class TextLine:
    """The line being typed: printable characters only, at most ``limit`` of them."""

    def __init__(self, limit: int = MAX_LINE):
        self.limit, self.text = limit, ""

    def insert(self, chars: str) -> None:
        chars = "".join(c for c in chars if c.isprintable())
        self.text = (self.text + chars)[: self.limit]

    def backspace(self) -> None:
        self.text = self.text[:-1]

    def take(self) -> str:
        text, self.text = self.text.strip(), ""
        return text


class Controls:
    def __init__(self):
        self.mode = "walk"
        self.held: set[str] = set()
        self.line = TextLine()
        self.picker_index = 0
        self.picker_size = 0
        self._swallow = ""

    # -- movement
    def move_vector(self) -> tuple[int, int]:
        """Direction from the held movement keys (only while walking); opposite keys cancel."""
        if self.mode != "walk":
            return (0, 0)
        dx = sum(MOVE_KEYS[k][0] for k in self.held if k in MOVE_KEYS)
        dy = sum(MOVE_KEYS[k][1] for k in self.held if k in MOVE_KEYS)
        return (max(-1, min(1, dx)), max(-1, min(1, dy)))

    # -- events
    def key_up(self, name: str) -> None:
        self.held.discard(name)

    def key_down(self, name: str) -> Action | None:
        if self.mode == "walk":
            self.held.add(name)
            if name in ("E",) + CONFIRM_KEYS:
                # the window sends the E's character right after this press: swallow it
                return Action("talk", text="e" if name == "E" else "")
            if name == "ESCAPE":
                return Action("quit")
            if name == "F5":
                return Action("save")
            if name == "F9":
                return Action("load")
            if name == "F2":
                return Action("picker")
            return None
        if self.mode == "type":
            if name in CONFIRM_KEYS:
                text = self.line.take()
                self.mode = "walk"
                return Action("send", text=text) if text else Action("cancel")
            if name == "BACKSPACE":
                self.line.backspace()
            elif name == "ESCAPE":
                self.line.take()
                self.mode = "walk"
                return Action("cancel")
            return None
        if self.mode == "picker":
            if name in ("UP", "W") and self.picker_size:
                self.picker_index = (self.picker_index - 1) % self.picker_size
            elif name in ("DOWN", "S") and self.picker_size:
                self.picker_index = (self.picker_index + 1) % self.picker_size
            elif name in CONFIRM_KEYS and self.picker_size:
                return Action("pick", index=self.picker_index)
            elif name in ("ESCAPE", "F2"):
                self.mode = "walk"
                return Action("picker_close")
        return None

    def text(self, chars: str) -> None:
        """Typed characters (pyglet's on_text). Ignored unless a line is being typed, so the
        E that opened the dialogue does not end up in it."""
        if self.mode == "type":
            swallow, self._swallow = self._swallow, ""
            if swallow and chars.lower() == swallow:
                return
            self.line.insert(chars)

    # -- mode changes the game makes
    def start_typing(self, swallow: str = "") -> None:
        """Type a line; ``swallow`` is the character of the key that opened it (if any)."""
        self.mode, self.held, self._swallow = "type", set(), swallow
        self.line.take()

    def open_picker(self, size: int) -> None:
        self.mode, self.held = "picker", set()
        self.picker_size, self.picker_index = size, min(self.picker_index, max(size - 1, 0))
