"""Where speech bubbles go, as plain geometry (no window): each bubble is tried at a few places
around its speaker and takes the one that covers least of what must stay visible -- the player,
the people, the other bubbles, and (less important) the houses.

Rects are ``(x, y, w, h)`` tuples in pyglet's coordinates (origin bottom left).
"""

from __future__ import annotations

from dataclasses import dataclass

HEAD = 24  # a speaker's head top is this far above its (x, y)
FEET = 18  # and its feet this far below
GAP = 10  # between the bubble and the speaker's body

# how much covering one pixel of each kind of thing costs
COST_BUBBLE = 4.0  # another bubble: text under text is unreadable
COST_PERSON = 3.0  # the player or a villager
COST_SCENERY = 0.3  # a house: rather not, but better than a person
COST_RANK = 25.0  # per rank of the candidate (prefer above, then beside, then below)


@dataclass(frozen=True)
class Placement:
    """A bubble's rect and its tail: a triangle with its base on the bubble's edge
    (``base`` = two points) and its ``tip`` at the speaker."""
    rect: tuple[float, float, float, float]
    side: str
    base: tuple[float, float, float, float]
    tip: tuple[float, float]


def overlap(a, b) -> float:
    """The area two rects share."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def person_rect(x: float, y: float) -> tuple[float, float, float, float]:
    """The box a character's body takes (with its name plate below it)."""
    return (x - 16, y - FEET - 16, 32, HEAD + FEET + 16)


def _clamp(v: float, lo: float, hi: float) -> float:
    return min(max(v, lo), hi) if lo <= hi else lo


def candidates(x: float, y: float, w: float, h: float, area) -> list[Placement]:
    """The places a ``w`` x ``h`` bubble may take around a speaker at (x, y), best first,
    each clamped into ``area``."""
    ax, ay, aw, ah = area
    out = []
    top, bottom = y + HEAD + GAP, y - FEET - 16 - GAP - h  # (below: under the name plate)
    spots = []
    for far in (0, 70):  # next to the speaker, then further out (a longer tail) if crowded
        spots += [("above", x - w / 2, top + far), ("above", x - w + 36, top + far), ("above", x - 36, top + far),
                  ("right", x + 20 + GAP + far, y - h / 2 + 6), ("left", x - 20 - GAP - w - far, y - h / 2 + 6),
                  ("below", x - w / 2, bottom - far), ("below", x - w + 36, bottom - far),
                  ("below", x - 36, bottom - far)]
    for side, bx, by in spots:
        bx = _clamp(bx, ax + 2, ax + aw - w - 2)
        by = _clamp(by, ay + 2, ay + ah - h - 2)
        if side == "above":
            cx = _clamp(x, bx + 14, bx + w - 14)
            base, tip = (cx - 7, by + 1, cx + 7, by + 1), (x, y + HEAD - 4)
        elif side == "below":
            cx = _clamp(x, bx + 14, bx + w - 14)
            base, tip = (cx - 7, by + h - 1, cx + 7, by + h - 1), (x, y - FEET - 14)
        else:
            cy = _clamp(y + 6, by + 10, by + h - 10)
            edge = bx + 1 if side == "right" else bx + w - 1
            base, tip = (edge, cy - 6, edge, cy + 6), (x + (14 if side == "right" else -14), y + 8)
        out.append(Placement((bx, by, w, h), side, base, tip))
    return out


def place_bubbles(bubbles, people, scenery=(), area=(0, 0, 960, 470), previous=None) -> dict:
    """Place ``bubbles`` (``(name, x, y, w, h)``: the speaker's position and the bubble's size,
    most important first) so that they cover neither ``people`` (rects: the player and every
    villager, speakers included) nor each other, and the ``scenery`` (houses) as little as
    they can. ``previous`` (name -> Placement, last frame's answer) is kept while it is still
    as good as the best, so bubbles do not hop about as the player walks.
    Returns name -> Placement."""
    placed: dict[str, Placement] = {}
    previous = previous or {}
    for name, x, y, w, h in bubbles:
        def cost(p: Placement, rank: int) -> float:
            r = p.rect
            c = sum(overlap(r, q.rect) for q in placed.values()) * COST_BUBBLE
            c += sum(overlap(r, o) for o in people) * COST_PERSON
            c += sum(overlap(r, o) for o in scenery) * COST_SCENERY
            return c + rank * COST_RANK
        options = candidates(x, y, w, h, area)
        best = min(range(len(options)), key=lambda i: cost(options[i], i))
        choice = options[best]
        old = previous.get(name)
        if old is not None:
            same = [i for i, p in enumerate(options) if p.rect == old.rect]
            if same and cost(options[same[0]], 0) <= cost(choice, 0) + 1e-6:
                choice = options[same[0]]
        placed[name] = choice
    return placed
