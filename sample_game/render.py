"""Drawing with pyglet shapes and labels: the village, speech bubbles, the typing box, the HUD,
the loading screen and the model picker. Only reads game state; every label's text is set only
when it changes (re-laying out text is the expensive part of a pyglet frame).
"""

from __future__ import annotations

import pyglet
from pyglet import shapes
from pyglet.gl import GL_ONE, GL_ZERO
from pyglet.text import Label

from . import world
from .stats import GRAPH_FRAMES

FONT = 12
BUBBLE_W = 260
INK = (20, 20, 30, 255)
GRAPH = world.Rect(700, world.HEIGHT - 64, 240, 56)
GRAPH_MAX_MS = 50.0
# Every shape drawn here is opaque, so its "blending" is a plain copy (source 1, destination 0):
# llvmpipe then skips reading the pixels underneath, ~25% of a frame's drawing (docs/sample_game.md).
OPAQUE = {"blend_src": GL_ONE, "blend_dest": GL_ZERO}


# Characters whose glyphs are rasterized up front. A glyph the font lacks sends pyglet on a
# font-fallback search that can take a second, so anything else is shown as "?".
PUNCTUATION = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
               "\u2014": "-", "\u2026": "...", "\u00a0": " "}
WARM_CHARS = "".join(chr(c) for c in range(32, 127)) + "".join(
    chr(c) for c in range(0xC0, 0x100) if chr(c).isprintable())
_WARM = set(WARM_CHARS) | {"\n"}


def safe_text(text: str) -> str:
    text = "".join(PUNCTUATION.get(c, c) for c in text)
    return "".join(c if c in _WARM else "?" for c in text)


def _set(label: Label, text: str) -> None:
    if label.text != text:
        label.text = text


GRASS = (106, 168, 79)
NIGHT = (30, 34, 46)


def clear(rgb: tuple[int, int, int]) -> None:
    """Fill the frame with one colour: the cheapest full-screen operation there is."""
    gl = pyglet.gl
    gl.glClearColor(rgb[0] / 255, rgb[1] / 255, rgb[2] / 255, 1.0)
    gl.glClear(gl.GL_COLOR_BUFFER_BIT)


class Scene:
    """The village and its people."""

    def __init__(self, villagers):
        self.batch = pyglet.graphics.Batch()
        # draw order: ground and houses, people and labels, bubble boxes, bubble text
        self.bg, self.fg, self.top, self.text = (pyglet.graphics.Group(order=i) for i in range(4))
        b = self.batch
        # the grass is the clear colour (see ``clear``): a full-screen blended rectangle costs
        # llvmpipe ~10x a glClear
        self.keep = [shapes.Rectangle(x, y, w, h, color=(194, 170, 120), **OPAQUE, batch=b, group=self.bg)
                     for x, y, w, h in ((0, 60, world.WIDTH, 40), (455, 0, 40, 300))]
        for h in world.HOUSES:
            r = h.rect
            self.keep += [
                shapes.Rectangle(r.x, r.y, r.w, r.h * 0.7, color=h.wall, **OPAQUE, batch=b, group=self.bg),
                shapes.Triangle(r.x - 10, r.y + r.h * 0.7, r.x + r.w + 10, r.y + r.h * 0.7,
                                r.x + r.w / 2, r.y + r.h + 15, color=h.roof, **OPAQUE, batch=b, group=self.bg),
                shapes.Rectangle(r.x + r.w / 2 - 12, r.y, 24, 36, color=(90, 60, 40), **OPAQUE, batch=b, group=self.bg),
                Label(h.label, x=r.x + r.w / 2, y=r.y + r.h * 0.45, anchor_x="center", font_size=10,
                      color=(60, 40, 30, 255), batch=b, group=self.fg)]
        w = world.WELL
        for radius, color in ((w.w / 2, (120, 120, 130)), (w.w / 3, (40, 70, 140))):
            self.keep.append(shapes.Circle(w.x + w.w / 2, w.y + w.h / 2, radius, color=color, **OPAQUE,
                                           batch=b, group=self.bg))
        for tx, ty in ((40, 160), (300, 200), (640, 180), (900, 120), (620, 420), (270, 440)):
            self.keep.append(shapes.Circle(tx, ty, 22, color=(46, 110, 50), **OPAQUE, batch=b, group=self.bg))
        for v in villagers:
            self.keep += [shapes.Circle(v.x, v.y, 14, color=v.color, **OPAQUE, batch=b, group=self.fg),
                          Label(v.name, x=v.x, y=v.y - 30, anchor_x="center", font_size=10,
                                color=INK, batch=b, group=self.fg)]
        self.player_outline = shapes.Circle(0, 0, world.PLAYER_RADIUS, color=(40, 40, 60), **OPAQUE,
                                            batch=b, group=self.fg)
        self.player = shapes.Circle(0, 0, world.PLAYER_RADIUS - 3, color=(250, 250, 250), **OPAQUE,
                                    batch=b, group=self.top)
        self.hint = Label("", x=world.WIDTH / 2, y=20, anchor_x="center", font_size=FONT, color=INK,
                          batch=b, group=self.text)
        self.bubbles: dict[str, tuple] = {}
        self.bubble_rects: dict[str, tuple[int, int, int, int]] = {}
        self.typing_bg = shapes.Rectangle(20, 8, world.WIDTH - 40, 34, color=(255, 255, 240), **OPAQUE,
                                          batch=b, group=self.top)
        self.typing = Label("", x=30, y=19, font_size=FONT, color=INK, batch=b, group=self.text)

    def bubble(self, v, text: str):
        """Draw (or update) ``v``'s speech bubble; an empty text hides it."""
        parts = self.bubbles.get(v.name)
        if parts is None:
            box = shapes.Rectangle(0, 0, BUBBLE_W, 10, color=(255, 255, 255), **OPAQUE,
                                   batch=self.batch, group=self.top)
            tail = shapes.Triangle(v.x - 6, v.y + 22, v.x + 6, v.y + 22, v.x, v.y + 14,
                                   color=(255, 255, 255), **OPAQUE, batch=self.batch, group=self.top)
            label = Label("", x=0, y=0, width=BUBBLE_W - 16, multiline=True, font_size=FONT - 1,
                          color=INK, anchor_y="bottom", batch=self.batch, group=self.text)
            parts = self.bubbles[v.name] = (box, tail, label)
        box, tail, label = parts
        visible = bool(text)
        for p in parts:
            p.visible = visible
        if not visible:
            self.bubble_rects.pop(v.name, None)
            return
        text = safe_text(text)
        if label.text != text:
            label.text = text
            h = label.content_height + 12
            x = min(max(v.x - BUBBLE_W / 2, 4), world.WIDTH - BUBBLE_W - 4)
            y = min(v.y + 22, world.HEIGHT - 72 - h)
            box.x, box.y, box.height = x, y, h
            label.x, label.y = x + 8, y + 6
            self.bubble_rects[v.name] = (int(x), int(y), BUBBLE_W, int(h))

    def draw(self, player, hint: str, typing: str | None) -> None:
        clear(GRASS)
        self.player.position = self.player_outline.position = (player.x, player.y)
        _set(self.hint, hint)
        self.typing_bg.visible = self.typing.visible = typing is not None
        if typing is not None:
            _set(self.typing, safe_text(typing) + "_")
        self.batch.draw()


class Hud:
    """Top strip: fps, frame time and its graph, tok/s, the scheduler's per-frame budget.

    Text and graph are refreshed every ``EVERY`` frames: laying out text and rebuilding shapes
    are Python work that would otherwise cost more than the frame they describe."""

    EVERY = 6  # frames; text on frame 1, second line on 3, graph on 5

    def __init__(self):
        self.batch = pyglet.graphics.Batch()
        b = self.batch
        self.panel = shapes.Rectangle(0, world.HEIGHT - 70, world.WIDTH, 70, color=(25, 28, 38), **OPAQUE, batch=b)
        self.left = Label("", x=10, y=world.HEIGHT - 22, font_size=FONT, color=(230, 230, 230, 255), batch=b)
        self.left2 = Label("", x=10, y=world.HEIGHT - 48, font_size=FONT - 1, color=(170, 200, 230, 255), batch=b)
        self.toast = Label("", x=world.WIDTH / 2, y=world.HEIGHT - 100, anchor_x="center", font_size=FONT,
                           color=(255, 255, 200, 255), batch=b)
        g = GRAPH
        self.graph_bg = shapes.Rectangle(g.x, g.y, g.w, g.h, color=(45, 50, 65), **OPAQUE, batch=b)
        self.marks = [shapes.Line(g.x, g.y + g.h * ms / GRAPH_MAX_MS, g.x + g.w, g.y + g.h * ms / GRAPH_MAX_MS,
                                  color=c, **OPAQUE, batch=b)
                      for ms, c in ((16.7, (90, 160, 90)), (25.0, (200, 160, 60)))]
        # the graph: one GL_LINES vertex list (a segment per pair of frames), rewritten in place
        n = 2 * (GRAPH_FRAMES - 1)
        program = pyglet.graphics.get_default_shader()
        self.graph = program.vertex_list(
            n, pyglet.gl.GL_LINES, batch=b, group=pyglet.graphics.ShaderGroup(program, order=1),
            position=("f", (0.0,) * 3 * n), colors=("Bn", (240, 240, 120, 255) * n))
        self.frame = 0

    def draw(self, stats, text: str, text2: str, toast: str) -> None:
        self.frame += 1
        _set(self.toast, toast)
        if self.frame % self.EVERY == 1:  # spread the refreshes over different frames
            _set(self.left, text)
        elif self.frame % self.EVERY == 3:
            _set(self.left2, text2)
        elif self.frame % self.EVERY == 5:
            g = GRAPH
            ms = list(stats.recent)[-GRAPH_FRAMES:]
            ms = [0.0] * (GRAPH_FRAMES - len(ms)) + ms
            step = g.w / (GRAPH_FRAMES - 1)
            ys = [g.y + g.h * min(m, GRAPH_MAX_MS) / GRAPH_MAX_MS for m in ms]
            coords = []
            for i in range(GRAPH_FRAMES - 1):
                coords += (g.x + i * step, ys[i], 0.0, g.x + (i + 1) * step, ys[i + 1], 0.0)
            self.graph.position[:] = coords
        self.batch.draw()


class LoadingScreen:
    def __init__(self):
        self.batch = pyglet.graphics.Batch()
        b, cx = self.batch, world.WIDTH / 2
        self.keep = [Label("PerroPastor village", x=cx, y=330, anchor_x="center", font_size=26,
                           color=(240, 240, 240, 255), batch=b),
                     shapes.Rectangle(cx - 200, 250, 400, 24, color=(70, 75, 95), **OPAQUE, batch=b)]
        self.bar = shapes.Rectangle(cx - 198, 252, 0, 20, color=(110, 190, 110), **OPAQUE, batch=b)
        self.phase = Label("", x=cx, y=215, anchor_x="center", font_size=FONT, color=(200, 200, 200, 255), batch=b)

    def draw(self, progress: float, phase: str) -> None:
        clear(NIGHT)
        self.bar.width = 396 * max(0.0, min(1.0, progress))
        _set(self.phase, phase)
        self.batch.draw()


class PickerPanel:
    """The model picker: one row per catalog entry or local file."""

    def __init__(self):
        self.batch = pyglet.graphics.Batch()
        self.panel = shapes.Rectangle(180, 70, 600, 390, color=(20, 24, 34), **OPAQUE, batch=self.batch)
        self.title = Label("Models (Up/Down, Enter: load or download, Esc: close)", x=200, y=430,
                           font_size=FONT, color=(240, 240, 240, 255), batch=self.batch)
        self.rows: list[Label] = []
        self.status = Label("", x=200, y=85, font_size=FONT - 1, color=(200, 220, 160, 255), batch=self.batch)

    def draw(self, entries: list[str], index: int, status: str) -> None:
        first = max(0, min(index - 7, len(entries) - 15))
        shown = entries[first:first + 15]
        while len(self.rows) < len(shown):
            self.rows.append(Label("", x=200, y=400 - 20 * len(self.rows), font_size=FONT - 1,
                                   batch=self.batch))
        for i, row in enumerate(self.rows):
            text = ""
            if i < len(shown):
                text = ("> " if first + i == index else "  ") + shown[i]
            _set(row, text)
            row.color = (255, 230, 120, 255) if first + i == index else (200, 200, 210, 255)
        _set(self.status, status)
        self.batch.draw()
