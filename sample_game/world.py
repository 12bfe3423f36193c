"""The village: its layout, the player and the villagers, as plain data with no window and no
model, so movement, collisions and "who is close enough to talk to" are unit-testable.

Coordinates are pyglet's: pixels, origin at the bottom left of the 960x540 window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from perro_pastor.sampling import SamplerSettings

WIDTH, HEIGHT = 960, 540
PLAYER_SPEED = 180.0  # pixels per second
PLAYER_RADIUS = 12
TALK_RADIUS = 70.0  # how close the player must stand to talk to a villager


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float

    def contains(self, px: float, py: float, margin: float = 0.0) -> bool:
        return (self.x - margin <= px <= self.x + self.w + margin
                and self.y - margin <= py <= self.y + self.h + margin)


@dataclass(frozen=True)
class House:
    rect: Rect
    wall: tuple[int, int, int]
    roof: tuple[int, int, int]
    label: str


# The play area excludes a strip at the top for the HUD.
PLAY_AREA = Rect(0, 0, WIDTH, HEIGHT - 70)

HOUSES = (
    House(Rect(70, 300, 150, 100), (222, 184, 135), (165, 60, 45), "Bakery"),
    House(Rect(400, 330, 140, 90), (190, 190, 200), (70, 80, 110), "Forge"),
    House(Rect(740, 280, 150, 110), (210, 200, 160), (120, 90, 50), "Barn"),
)
WELL = Rect(455, 165, 40, 40)
OBSTACLES = tuple(h.rect for h in HOUSES) + (WELL,)


@dataclass
class Villager:
    """An NPC: where it stands, who it is (the system prompt) and how it samples.

    Greedy decoding loops on this small model, so every villager samples with a temperature,
    top-k and a repetition penalty; different settings give each a slightly different voice."""
    name: str
    x: float
    y: float
    color: tuple[int, int, int]
    persona: str
    sampler: SamplerSettings
    seed: int
    greeting: str = ""


VILLAGERS = (
    Villager("Mara", 150, 260, (214, 96, 120),
             "You are Mara, the baker of a small mountain village. You are warm and chatty and "
             "you love bread, honey cakes and gossip. Answer in one or two short sentences.",
             SamplerSettings(temperature=0.7, top_k=40, top_p=0.95, repeat_penalty=1.15), seed=11,
             greeting="Fresh bread today!"),
    Villager("Tomas", 820, 230, (90, 140, 210),
             "You are Tomas, an old shepherd with a clever sheepdog named Perro. You are calm, "
             "a little grumpy, and you talk about sheep, weather and the hills. Answer in one or "
             "two short sentences.",
             SamplerSettings(temperature=0.8, top_k=50, top_p=0.9, repeat_penalty=1.2), seed=23,
             greeting="Mind the sheep."),
    Villager("Ines", 470, 290, (230, 160, 40),
             "You are Ines, the village blacksmith. You are proud, direct and practical, and you "
             "talk about tools, horseshoes and hard work. Answer in one or two short sentences.",
             SamplerSettings(temperature=0.6, top_k=30, top_p=0.9, repeat_penalty=1.1), seed=37,
             greeting="Need something forged?"),
)


@dataclass
class Player:
    x: float = 480.0
    y: float = 90.0
    facing: tuple[float, float] = (0.0, 1.0)
    stride: float = 0.0  # pixels walked so far: the walk animation's phase
    moving: bool = False  # moved in the last ``move``
    obstacles: tuple[Rect, ...] = field(default=OBSTACLES, repr=False)

    def move(self, dx: float, dy: float, dt: float) -> None:
        """Walk along (dx, dy) (any length; diagonals are not faster) for ``dt`` seconds,
        sliding along walls: each axis is tried on its own so a blocked axis does not stop the
        other."""
        length = math.hypot(dx, dy)
        self.moving = False
        if length == 0 or dt <= 0:
            return
        x0, y0 = self.x, self.y
        dx, dy = dx / length, dy / length
        self.facing = (dx, dy)
        step = PLAYER_SPEED * min(dt, 0.1)  # a long frame never teleports the player
        nx = min(max(self.x + dx * step, PLAY_AREA.x + PLAYER_RADIUS), PLAY_AREA.w - PLAYER_RADIUS)
        if not self._blocked(nx, self.y):
            self.x = nx
        ny = min(max(self.y + dy * step, PLAY_AREA.y + PLAYER_RADIUS), PLAY_AREA.h - PLAYER_RADIUS)
        if not self._blocked(self.x, ny):
            self.y = ny
        walked = math.hypot(self.x - x0, self.y - y0)
        self.moving, self.stride = walked > 0, self.stride + walked

    def _blocked(self, x: float, y: float) -> bool:
        return any(r.contains(x, y, PLAYER_RADIUS) for r in self.obstacles)


def facing_name(dx: float, dy: float) -> str:
    """``left``/``right``/``up``/``down``: the way a character facing (dx, dy) is drawn."""
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "up" if dy > 0 else "down"


def nearest_villager(player: Player, villagers, radius: float = TALK_RADIUS):
    """The closest villager within ``radius`` of the player, or None."""
    best, best_d = None, radius
    for v in villagers:
        d = math.hypot(v.x - player.x, v.y - player.y)
        if d <= best_d:
            best, best_d = v, d
    return best
