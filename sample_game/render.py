"""Drawing with pyglet shapes and labels: the village, speech bubbles, the typing box, the HUD,
the loading screen and the model picker. Only reads game state; every label's text is set only
when it changes (re-laying out text is the expensive part of a pyglet frame).
"""

from __future__ import annotations

import math
import time

import pyglet
from pyglet import shapes
from pyglet.gl import GL_ONE, GL_ZERO
from pyglet.text import Label

from . import layout, world
from .stats import GRAPH_FRAMES

FONT = 12
BUBBLE_W = 260
BUBBLE_W_WIDE = 380
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
ROAD = (194, 170, 120)
SHADOW = (78, 130, 60)  # a shadow on the grass (opaque: the grass colour, darker)
SKIN = (240, 200, 160)
PLATE = (35, 38, 50)
BUBBLE_INK = (45, 45, 60)
PLAYER_LOOK = {"color": (245, 245, 245), "hair": (90, 60, 40), "legs": (60, 80, 140)}
MOOD_COLORS = {"happy": (250, 210, 60), "calm": (110, 200, 120), "sad": (90, 140, 230),
               "angry": (225, 70, 60)}
DOOR_DARK = (35, 25, 20)
HAIR = {"Mara": (150, 80, 40), "Tomas": (200, 200, 200), "Ines": (40, 30, 30)}
TREES = ((40, 160), (300, 200), (640, 180), (900, 120), (620, 420), (270, 440))
# where bubbles may go: above the typing box, below the HUD
BUBBLE_AREA = (0, 46, world.WIDTH, world.PLAY_AREA.h - 50)


def shade(rgb, f: float) -> tuple[int, int, int]:
    """``rgb`` darker (f < 1) or lighter (f > 1)."""
    return tuple(max(0, min(255, int(c * f if f <= 1 else c + (255 - c) * (f - 1)))) for c in rgb)


def clear(rgb: tuple[int, int, int]) -> None:
    """Fill the frame with one colour: the cheapest full-screen operation there is."""
    gl = pyglet.gl
    gl.glClearColor(rgb[0] / 255, rgb[1] / 255, rgb[2] / 255, 1.0)
    gl.glClear(gl.GL_COLOR_BUFFER_BIT)


def _free_ground(x: float, y: float) -> bool:
    """Grass with nothing built on it (for tufts and flowers)."""
    if 52 <= y <= 108 or (447 <= x <= 503 and y <= 308) or y > world.PLAY_AREA.h - 6:
        return False
    return not any(r.contains(x, y, 14) for r in world.OBSTACLES) and not any(
        h.rect.contains(x, y - 30, 20) for h in world.HOUSES)


class Layers:
    """The draw order, bottom to top. Every shape of a layer is drawn in one call per kind, so
    the count of layers (not of shapes) is what costs on llvmpipe."""
    NAMES = ("ground", "detail", "build", "build2", "build3", "legs", "body", "head", "face",
             "plate", "label", "bubble_edge", "bubble", "bubble_text", "ui", "ui_text")

    def __init__(self):
        for i, name in enumerate(self.NAMES):
            setattr(self, name, pyglet.graphics.Group(order=i))


class Figure:
    """A person: shadow, legs that step, a shaded body, a head with hair and eyes that show the
    way they face, and a name on a plate."""

    def __init__(self, batch, L: Layers, name: str, color, hair, legs=(70, 60, 55)):
        def rect(group, c, w, h):
            return shapes.Rectangle(0, 0, w, h, color=c, **OPAQUE, batch=batch, group=group)
        self.shadow = shapes.Ellipse(0, 0, 12, 4, segments=8, color=SHADOW, **OPAQUE, batch=batch, group=L.detail)
        self.legs = [rect(L.legs, legs, 5, 10), rect(L.legs, legs, 5, 10)]
        self.body = rect(L.body, color, 18, 17)
        self.belt = rect(L.head, shade(color, 0.7), 18, 3)
        self.side = rect(L.head, shade(color, 0.8), 5, 17)
        self.hair = shapes.Circle(0, 0, 8, segments=10, color=hair, **OPAQUE, batch=batch, group=L.head)
        self.head = shapes.Circle(0, 0, 6.5, segments=10, color=SKIN, **OPAQUE, batch=batch, group=L.face)
        self.eyes = [rect(L.plate, INK[:3], 2, 2), rect(L.plate, INK[:3], 2, 2)]
        self.label = Label(name, x=0, y=0, anchor_x="center", anchor_y="center", font_size=9,
                           color=(255, 255, 255, 255), batch=batch, group=L.label)
        self.plate = shapes.Rectangle(0, 0, self.label.content_width + 10, 15, color=PLATE, **OPAQUE,
                                      batch=batch, group=L.plate)
        # the mood (a coloured face by the name plate) and a waving hand: hidden until a reply sets them
        self.mood = shapes.Circle(0, 0, 5, segments=8, color=(0, 0, 0), **OPAQUE, batch=batch, group=L.plate)
        self.mood_eyes = rect(L.label, INK[:3], 5, 1)
        self.hand = shapes.Circle(0, 0, 3, segments=6, color=SKIN, **OPAQUE, batch=batch, group=L.face)
        self.mood.visible = self.mood_eyes.visible = self.hand.visible = False
        self._state = None

    def update(self, x: float, y: float, facing: str, stride: float, moving: bool,
               mood: str | None = None, wave: float | None = None) -> None:
        phase = math.sin(stride / 7.0) if moving else 0.0
        state = (round(x, 1), round(y, 1), facing, round(phase, 2), mood,
                 None if wave is None else round(math.sin(wave * 9.0), 1))
        if state == self._state:
            return  # nothing moved: no vertex is rewritten
        self._state = state
        bob = abs(phase) * 1.5
        self.shadow.position = (x, y - 17)
        side_view = facing in ("left", "right")
        for i, leg in enumerate(self.legs):
            swing = phase if i == 0 else -phase
            dx = swing * 3 if side_view else 0
            dy = max(0.0, swing) * 3 if not side_view else 0
            leg.position = (x - 6 + 7 * i + dx - (2 if side_view else 0) * (1 - 2 * i), y - 17 + dy)
        self.body.position = (x - 9, y - 9 + bob)
        self.belt.position = (x - 9, y - 6 + bob)
        self.side.position = (x + 4 if facing != "right" else x - 9, y - 9 + bob)
        hx, hy = x, y + 14 + bob
        back = {"left": 2, "right": -2}.get(facing, 0)
        self.hair.position = (hx + back, hy + 2 if facing != "up" else hy)
        self.head.position = (hx + {"left": -1, "right": 1}.get(facing, 0), hy - 1)
        self.head.visible = facing != "up"  # from behind: all hair
        ex = {"down": (-4, 2), "left": (-6, -2), "right": (0, 4)}.get(facing)
        for eye, off in zip(self.eyes, ex or (0, 0)):
            eye.visible = ex is not None
            eye.position = (hx + off, hy - 1)
        self.label.position = (x, y - 31, 0)
        self.plate.position = (x - self.plate.width / 2, y - 38)
        self.mood.visible = self.mood_eyes.visible = mood in MOOD_COLORS
        if mood in MOOD_COLORS:
            self.mood.color = MOOD_COLORS[mood]
            mx = x + self.plate.width / 2 + 7
            self.mood.position = (mx, y - 31)
            self.mood_eyes.position = (mx - 2.5, y - 30)
        self.hand.visible = wave is not None
        if wave is not None:  # a hand beside the head, swinging
            self.hand.position = (x + 12 + 3 * math.sin(wave * 9.0), hy + 4)


class BubbleView:
    """A speech bubble: an outlined rounded box, a tail pointing at the speaker, wrapped text."""

    def __init__(self, batch, L: Layers, fill):
        def box(group, c):
            return shapes.RoundedRectangle(0, 0, BUBBLE_W, 10, 7, segments=3, color=c, **OPAQUE,
                                           batch=batch, group=group)
        self.edge, self.box = box(L.bubble_edge, BUBBLE_INK), box(L.bubble, fill)
        self.tail_edge = shapes.Triangle(0, 0, 1, 0, 0, 1, color=BUBBLE_INK, **OPAQUE, batch=batch,
                                         group=L.bubble_edge)
        self.tail = shapes.Triangle(0, 0, 1, 0, 0, 1, color=fill, **OPAQUE, batch=batch, group=L.bubble)
        self.label = Label("", x=0, y=0, width=BUBBLE_W - 16, multiline=True, font_size=FONT - 1,
                           color=INK, anchor_y="bottom", batch=batch, group=L.bubble_text)
        self.size = (BUBBLE_W, 10)
        self.placement = None

    @property
    def parts(self):
        return (self.edge, self.box, self.tail_edge, self.tail, self.label)

    def set_text(self, text: str) -> None:
        if self.label.text != text:
            wide = len(text) > 200  # a long reply: a wider bubble, so it is not too tall to fit
            width = (BUBBLE_W_WIDE if wide else BUBBLE_W) - 16
            if self.label.width != width:
                self.label.width = width
            self.label.text = text
            w = min(width + 16, max(60, self.label.content_width + 18))
            self.size = (w, self.label.content_height + 12)

    def place(self, p) -> None:
        if p == self.placement:
            return
        self.placement = p
        x, y, w, h = p.rect
        self.box.position, self.box.width, self.box.height = (x, y), w, h
        self.edge.position, self.edge.width, self.edge.height = (x - 2, y - 2), w + 4, h + 4
        self.label.position = (x + 8, y + 6, 0)
        (bx1, by1, bx2, by2), (tx, ty) = p.base, p.tip
        # the tail's fill starts inside the box, over the outline; its outline is 2 px wider
        ex, ey = (0, 2) if p.side in ("above", "below") else (2, 0)
        mx, my = (bx1 + bx2) / 2, (by1 + by2) / 2
        dx, dy = tx - mx, ty - my
        n = math.hypot(dx, dy) or 1.0
        for tri, grow, tip in ((self.tail_edge, 2.0, 2.5), (self.tail, 0.0, 0.0)):
            tri.position = (bx1 - ex * grow / 2, by1 - ey * grow / 2)
            tri.x2, tri.y2 = bx2 + ex * grow / 2, by2 + ey * grow / 2
            tri.x3, tri.y3 = tx + dx / n * tip, ty + dy / n * tip


class Scene:
    """The village and its people. Everything still is made once; per frame only the people and
    the bubbles that moved are rewritten."""

    def __init__(self, villagers):
        # The scenery is made once and never touched again: per frame it costs llvmpipe only its
        # pixels (drawn directly: copying a baked full-frame texture was slower, ~2.4 ms). The
        # grass is the clear colour (see ``clear``) and shapes rarely overlap, so few pixels are
        # drawn twice.
        self.static = self.batch = b = pyglet.graphics.Batch()
        self.L = L = Layers()
        self.keep: list = []
        self._door_parts: dict[str, list] = {}  # house label -> the shapes of its door drawn open

        def rect(x, y, w, h, c, g):
            self.keep.append(shapes.Rectangle(x, y, w, h, color=c, **OPAQUE, batch=b, group=g))

        def circle(x, y, r, c, g, segments=None):
            self.keep.append(shapes.Circle(x, y, r, segments=segments, color=c, **OPAQUE, batch=b, group=g))

        def ellipse(x, y, a, e, c, g):
            self.keep.append(shapes.Ellipse(x, y, a, e, segments=max(6, int(max(a, e) / 3)), color=c,
                                            **OPAQUE, batch=b, group=g))

        def tri(p, c, g):
            self.keep.append(shapes.Triangle(*p, color=c, **OPAQUE, batch=b, group=g))

        def line(x1, y1, x2, y2, c, g, w=1.0):
            self.keep.append(shapes.Line(x1, y1, x2, y2, thickness=w, color=c, **OPAQUE, batch=b, group=g))

        self._ground(rect, circle, ellipse, tri)
        for h in world.HOUSES:
            self._house(h, rect, circle, tri, line)
        w = world.WELL
        cx, cy = w.x + w.w / 2, w.y + w.h / 2
        ellipse(cx + 4, cy - 6, w.w / 2 + 4, w.h / 2, SHADOW, L.ground)
        for radius, color, g in ((w.w / 2, (135, 135, 145), L.build), (w.w / 2 - 5, (95, 95, 105), L.build2),
                                 (w.w / 3, (45, 80, 150), L.build3)):
            circle(cx, cy, radius, color, g)
        ellipse(cx - 3, cy + 3, 5, 2, (130, 170, 225), L.legs)
        for tx, ty in TREES:
            ellipse(tx + 6, ty - 18, 24, 8, SHADOW, L.ground)
            rect(tx - 4, ty - 24, 8, 14, (110, 75, 45), L.build)
            circle(tx, ty, 22, (46, 110, 50), L.build2, segments=16)
            circle(tx + 6, ty - 5, 14, (38, 96, 44), L.build3, segments=12)
            circle(tx - 7, ty + 7, 10, (72, 140, 64), L.build3, segments=10)
        b = self.batch
        self.figures = {v.name: Figure(b, L, v.name, v.color, HAIR.get(v.name, (80, 50, 30)))
                        for v in villagers}
        self.villagers = {v.name: v for v in villagers}
        self.player = Figure(b, L, "You", PLAYER_LOOK["color"], PLAYER_LOOK["hair"], PLAYER_LOOK["legs"])
        self.hint = Label("", x=world.WIDTH / 2, y=20, anchor_x="center", font_size=FONT,
                          color=(255, 255, 255, 255), batch=b, group=L.ui_text)
        self.hint_plate = shapes.Rectangle(0, 10, 10, 22, color=PLATE, **OPAQUE, batch=b, group=L.ui)
        self.doors = {label: parts for label, parts in self._door_parts.items()}
        self._open: set[str] = set()
        self.bubbles: dict[str, BubbleView] = {}
        self.bubble_rects: dict[str, tuple[int, int, int, int]] = {}
        self._layout_key = self._lines_key = None
        self.typing_bg = shapes.Rectangle(20, 8, world.WIDTH - 40, 34, color=(255, 255, 240), **OPAQUE,
                                          batch=b, group=L.ui)
        self.typing = Label("", x=30, y=19, font_size=FONT, color=INK, batch=b, group=L.ui_text)
        self.scenery = [(h.rect.x - 12, h.rect.y, h.rect.w + 24, h.rect.h + 15) for h in world.HOUSES]

    def _ground(self, rect, circle, ellipse, tri) -> None:
        import random
        L, rng, b = self.L, random.Random(7), self.batch
        # the roads, with darker edges and pebbles
        rect(0, 60, world.WIDTH, 40, ROAD, L.ground)
        rect(455, 0, 40, 300, ROAD, L.ground)
        for x, y, w, h in ((0, 97, 455, 3), (495, 97, world.WIDTH - 495, 3), (0, 60, 455, 3),
                           (495, 60, world.WIDTH - 495, 3), (455, 100, 3, 200), (492, 100, 3, 200),
                           (455, 0, 3, 60), (492, 0, 3, 60)):
            rect(x, y, w, h, (168, 144, 98), L.detail)
        for _ in range(20):
            if rng.random() < 0.7:
                x, y = rng.uniform(4, world.WIDTH - 4), rng.uniform(65, 95)
            else:
                x, y = rng.uniform(460, 490), rng.uniform(4, 295)
            self.keep.append(shapes.Ellipse(x, y, rng.uniform(1.5, 3), rng.uniform(1, 2), segments=4, color=rng.choice(
                ((170, 150, 110), (210, 190, 145))), **OPAQUE, batch=b, group=L.detail))
        tufts = 0
        while tufts < 70:  # grass tufts: two blades each
            x, y = rng.uniform(6, world.WIDTH - 6), rng.uniform(4, world.PLAY_AREA.h - 8)
            if not _free_ground(x, y):
                continue
            tufts += 1
            c = rng.choice(((70, 130, 55), (80, 145, 60), (130, 190, 95)))
            for dx, lean in ((-2, -3), (2, 3)):
                tri((x + dx - 1.2, y, x + dx + 1.2, y, x + dx + lean, y + rng.uniform(5, 9)), c, L.detail)
        flowers = 0
        while flowers < 26:
            x, y = rng.uniform(6, world.WIDTH - 6), rng.uniform(4, world.PLAY_AREA.h - 8)
            if not _free_ground(x, y):
                continue
            flowers += 1
            circle(x, y, 2.5, rng.choice(((250, 250, 250), (245, 210, 70), (230, 120, 160), (160, 140, 230))),
                   L.detail, segments=4)

    def _house(self, h, rect, circle, tri, line) -> None:
        L, r = self.L, h.rect
        wall_h, cx = r.h * 0.7, r.x + r.w / 2
        base, top = r.y + wall_h, r.y + r.h + 15
        rect(r.x + r.w, r.y - 8, 8, wall_h, SHADOW, L.ground)  # the shadow, down and right
        rect(r.x + 8, r.y - 8, r.w - 8, 8, SHADOW, L.ground)
        rect(r.x + r.w * 0.7, base, 14, (top - base) * 0.75, (150, 80, 60), L.ground)  # chimney
        rect(r.x + r.w * 0.7 - 2, base + (top - base) * 0.75, 18, 5, (100, 60, 50), L.ground)
        rect(r.x, r.y, r.w * 0.8, wall_h, h.wall, L.build)
        rect(r.x + r.w * 0.8, r.y, r.w * 0.2, wall_h, shade(h.wall, 0.82), L.build2)  # the shady side
        for k in (1, 2, 3):
            line(r.x, r.y + wall_h * k / 4, r.x + r.w, r.y + wall_h * k / 4, shade(h.wall, 0.9), L.build2)
        rect(r.x - 2, r.y, r.w + 4, 7, (140, 135, 130), L.build3)  # stone footing
        # the roof: a lit and a shaded half, tile rows, a dark eave
        tri((r.x - 12, base, cx, base, cx, top), shade(h.roof, 1.15), L.build)
        tri((cx, base, r.x + r.w + 12, base, cx, top), shade(h.roof, 0.8), L.build)
        for k in (1, 2, 3):
            y = base + (top - base) * k / 4
            half = (r.w / 2 + 12) * (1 - k / 4)
            line(cx - half, y, cx + half, y, shade(h.roof, 0.65), L.build2)
        rect(r.x - 12, base - 3, r.w + 24, 5, shade(h.roof, 0.55), L.build2)
        # the door: frame, planks, knob, step
        rect(cx - 14, r.y, 28, 40, (70, 45, 30), L.build2)
        rect(cx - 11, r.y, 22, 37, (120, 80, 50), L.build3)
        line(cx, r.y, cx, r.y + 37, (95, 62, 40), L.legs)
        circle(cx + 6, r.y + 18, 2, (230, 200, 90), L.legs, segments=8)
        rect(cx - 17, r.y - 5, 34, 6, (150, 145, 140), L.build2)
        # the door drawn open (hidden until a villager opens it): the dark inside, the door swung out
        opened = [shapes.Rectangle(cx - 11, r.y, 22, 37, color=DOOR_DARK, **OPAQUE, batch=self.batch, group=L.body),
                  shapes.Rectangle(cx + 11, r.y - 2, 7, 40, color=(120, 80, 50), **OPAQUE, batch=self.batch,
                                   group=L.head)]
        for part in opened:
            part.visible = False
        self._door_parts[h.label] = opened
        # two windows with frames, glass and a cross
        wy = r.y + 20
        for wx in (r.x + 16, r.x + r.w - 16 - 24):
            rect(wx - 3, wy - 3, 30, 28, (245, 240, 225), L.build2)
            rect(wx, wy, 24, 22, (110, 160, 205), L.build3)
            rect(wx + 2, wy + 12, 8, 8, (170, 205, 235), L.legs)  # the sky in the glass
            line(wx + 12, wy, wx + 12, wy + 22, (245, 240, 225), L.body, 2)
            line(wx, wy + 11, wx + 24, wy + 11, (245, 240, 225), L.body, 2)
        # the sign over the door
        label = Label(h.label, x=cx, y=r.y + 49, anchor_x="center", anchor_y="center", font_size=9,
                      color=(250, 240, 210, 255), batch=self.static, group=L.label)
        rect(cx - label.content_width / 2 - 6, r.y + 42, label.content_width + 12, 14, (90, 60, 35), L.plate)
        self.keep.append(label)

    def bubble_view(self, name: str) -> BubbleView:
        view = self.bubbles.get(name)
        if view is None:
            fill = (255, 248, 215) if name == "Player" else (255, 255, 255)
            view = self.bubbles[name] = BubbleView(self.batch, self.L, fill)
        return view

    def set_bubbles(self, lines, player) -> None:
        """``lines``: ``(name, text)`` most important first ("Player" is the player's own line);
        an empty text hides that bubble. Places them so that they cover no one and no other."""
        key = (tuple(lines), round(player.x), round(player.y),
               tuple((round(v.x), round(v.y)) for v in self.villagers.values()))  # (followers walk)
        if key == self._lines_key:
            return  # the same lines, nobody moved: nothing to do this frame
        self._lines_key = key
        wanted, order = {}, []
        for name, text in lines:
            view = self.bubble_view(name)
            visible = bool(text)
            for part in view.parts:
                if part.visible != visible:
                    part.visible = visible
            if visible:
                view.set_text(safe_text(text))
                x, y = (player.x, player.y) if name == "Player" else (self.villagers[name].x, self.villagers[name].y)
                order.append((name, x, y, *view.size))
                wanted[name] = view
        key = (tuple(order), round(player.x), round(player.y),
               tuple((round(v.x), round(v.y)) for v in self.villagers.values()))
        if key == self._layout_key:
            return  # nothing moved and no bubble changed size: the places stand
        self._layout_key = key
        people = [layout.person_rect(player.x, player.y)] + [
            layout.person_rect(v.x, v.y) for v in self.villagers.values()]
        previous = {n: v.placement for n, v in wanted.items() if v.placement is not None}
        placed = layout.place_bubbles(order, people, self.scenery, BUBBLE_AREA, previous)
        self.bubble_rects = {}
        for name, p in placed.items():
            wanted[name].place(p)
            self.bubble_rects[name] = tuple(int(v) for v in p.rect)

    def draw(self, player, hint: str, typing: str | None, facing: dict[str, str] | None = None,
             open_doors: set[str] = frozenset(), moods: dict[str, str] | None = None,
             waving: set[str] = frozenset()) -> None:
        clear(GRASS)
        self.player.update(player.x, player.y, world.facing_name(*player.facing), player.stride, player.moving)
        now = time.perf_counter()
        for name, fig in self.figures.items():
            v = self.villagers[name]
            fig.update(v.x, v.y, (facing or {}).get(name, "down"), 0.0, False,
                       (moods or {}).get(name), now if name in waving else None)
        if set(open_doors) != self._open:
            self._open = set(open_doors)
            for label, parts in self.doors.items():
                for part in parts:
                    part.visible = label in self._open
        if self.hint.text != hint:
            self.hint.text = hint
            self.hint_plate.width = self.hint.content_width + 20
            self.hint_plate.x = world.WIDTH / 2 - self.hint_plate.width / 2
        self.hint_plate.visible = bool(hint) and typing is None
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
    """The model picker: one row per catalog entry or local file, in three columns (name, size
    right-aligned, state), each its own label: the font is proportional, so padding with spaces
    cannot line columns up. The status line wraps inside the panel, above which the rows stop."""

    ROWS = 13
    X, W = 200, 560  # the panel's text area

    def __init__(self):
        self.batch = b = pyglet.graphics.Batch()
        self.panel = shapes.Rectangle(180, 70, 600, 390, color=(20, 24, 34), **OPAQUE, batch=b,
                                      group=pyglet.graphics.Group(order=-2))
        self.title = Label("Models (Up/Down, Enter: load or download, Esc: close)", x=self.X, y=430,
                           font_size=FONT, color=(240, 240, 240, 255), batch=b)
        self.rows: list[tuple[Label, Label, Label]] = []
        self.cursor = shapes.Rectangle(self.X - 8, 0, self.W + 16, 19, color=(50, 58, 80), **OPAQUE, batch=b,
                                       group=pyglet.graphics.Group(order=-1))
        self.status = Label("", x=self.X, y=80, width=self.W, multiline=True, anchor_y="bottom",
                            font_size=FONT - 1, color=(200, 220, 160, 255), batch=b)

    def draw(self, entries: list[tuple[str, str, str]], index: int, status: str) -> None:
        _set(self.status, safe_text(status[:400]))
        first = max(0, min(index - self.ROWS // 2, len(entries) - self.ROWS))
        shown = entries[first:first + self.ROWS]
        while len(self.rows) < len(shown):
            y = 400 - 20 * len(self.rows)
            self.rows.append((Label("", x=self.X, y=y, font_size=FONT - 1, batch=self.batch),
                              Label("", x=self.X + 380, y=y, anchor_x="right", font_size=FONT - 1, batch=self.batch),
                              Label("", x=self.X + 400, y=y, font_size=FONT - 1, batch=self.batch)))
        for i, row in enumerate(self.rows):
            cols = shown[i] if i < len(shown) else ("", "", "")
            if isinstance(cols, str):
                cols = (cols, "", "")
            picked = first + i == index
            color = (255, 230, 120, 255) if picked else (200, 200, 210, 255)
            for label, text in zip(row, cols):
                _set(label, safe_text(text))
                if label.color != color:
                    label.color = color
            if picked:
                self.cursor.y = row[0].y - 5
        self.cursor.visible = 0 <= index - first < len(shown)
        self.batch.draw()
