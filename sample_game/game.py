"""The game: state, per-frame update and drawing. The window and the frame loop are in
``__main__``; this class only needs a GL context to draw into (pyglet's current one).

Per frame: input -> movement -> model loading or ``scheduler.tick(budget)`` -> conversations ->
draw. The tick's budget is what is left of the frame after everything else, so a frame stays
near ``FRAME_MS`` while villagers talk (the scheduler never starts a step it predicts would
overrun, and a step is at most one sub-block of one layer).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from pathlib import Path


from . import world
from .controls import Controls
from .loading import ModelLoader
from .picker import ModelPicker
from .stats import FrameStats, percentile
from .talk import Village

FRAME_MS = 1000.0 / 60.0
MIN_BUDGET_MS, MAX_BUDGET_MS = 4.0, 14.0  # a floor, so tok/s holds when drawing is slow
MIN_MARGIN_MS, MAX_MARGIN_MS = 1.0, 6.0  # kept free of the frame for ticks that overrun
OVERRUN_FRAMES = 120  # the last two seconds of ticks size the margin
# cpu backend: the model computes on one thread (its ticks run on BackgroundTicks' worker), the
# game draws on the other core. A second compute thread that the renderer keeps off its core
# stretched prompt steps to 20-35 ms (prefill step p99 8-22 -> 7-8 ms; docs/sample_game.md)
TICK_THREADS = 1
TOAST_S = 3.0


class BackgroundTicks:
    """Scheduler ticks on a worker thread, overlapping the frame's drawing (cpu backend).

    The compiled cpu kernels release the GIL, so while a tick computes on one core the frame
    thread draws on the other. The frame thread starts a tick at the end of ``update`` and
    ``wait``s for it at the start of the next frame, before it touches the village again: the
    scheduler is only ever used by one thread at a time. The worker runs the kernels on one
    thread (numba's setting is per thread), leaving the other core to the game."""

    def __init__(self):
        self._go, self._done = threading.Event(), threading.Event()
        self._done.set()
        self._job: tuple | None = None
        self.last_tick_ms = 0.0
        self.error: BaseException | None = None
        self._worker = threading.Thread(target=self._run, name="perro-pastor ticks", daemon=True)
        self._worker.start()

    def start(self, scheduler, budget_ms: float) -> None:
        self.wait()
        self._job = (scheduler, budget_ms)
        self._done.clear()
        self._go.set()

    def wait(self) -> None:
        """Wait for the running tick; an exception it raised is raised here, on the frame
        thread, as if the tick had run there."""
        self._done.wait()
        error, self.error = self.error, None
        if error is not None:
            raise error

    def _run(self) -> None:
        limited = None  # the model whose threads this worker has limited
        while True:
            self._go.wait()
            self._go.clear()
            scheduler, budget_ms = self._job
            start = time.perf_counter()
            try:
                if scheduler.model is not limited:
                    scheduler.model.limit_threads(TICK_THREADS)  # a setting of this thread
                    limited = scheduler.model
                scheduler.tick(budget_ms)
            except BaseException as exc:  # noqa: BLE001 -- handed to the frame thread by wait()
                self.error = exc
            finally:
                self.last_tick_ms = (time.perf_counter() - start) * 1000.0
                self._done.set()


class Game:
    def __init__(self, model_name: str = "default", backend: str = "auto", gl_context=None,
                 save_path: Path | None = None, chatter: bool = True, reply_tokens: int | None = None):
        self.model_name, self.backend, self.gl_context = model_name, backend, gl_context
        self.save_path = save_path
        self.chatter, self.reply_tokens = chatter, reply_tokens
        self.player = world.Player()
        # this game's own villagers: a follower walks (world.VILLAGERS stays where it was)
        self.villagers = tuple(dataclasses.replace(v) for v in world.VILLAGERS)
        self.controls = Controls()
        self.stats = FrameStats()
        self.picker = ModelPicker()
        self.loader: ModelLoader | None = ModelLoader(model_name, backend, gl_context)
        self.background: BackgroundTicks | None = None  # cpu backend: ticks overlap drawing
        self.ticking = False  # a background tick was started and not yet waited for
        self.village: Village | None = None
        self.model = None
        self.load_s: float | None = None
        self.grammar_warm_s: float | None = None  # the reply grammar's warm-up, in the loader
        self.talking_to: str | None = None
        self.budget_ms = MAX_BUDGET_MS
        self.render_ms = 2.0  # moving average of the draw cost, to size the scheduler budget
        self.overruns: deque[float] = deque(maxlen=OVERRUN_FRAMES)  # ms each recent tick ran past its budget
        self.toast, self.toast_until = "", 0.0
        self.quit = False
        self.loaded_this_frame = False
        self.errors: list[str] = []
        self._errors_seen = 0
        self._transcript: list[dict] = []
        self._views = None

    # -------------------------------------------------------------------------
    # input

    def on_action(self, action, now: float) -> None:
        if action is None:
            return
        kind = action.kind
        if kind == "quit":
            self.quit = True
        elif kind == "talk":
            near = world.nearest_villager(self.player, self.villagers)
            if near is not None and self.village is not None:
                self.talking_to = near.name
                self.controls.start_typing(swallow=action.text)
        elif kind == "send" and self.talking_to and self.village is not None:
            self.village.ask(self.talking_to, action.text, now)
        elif kind == "cancel":
            self.talking_to = None
        elif kind == "save":
            self.save_game()
        elif kind == "load":
            self.load_game()
        elif kind == "picker":
            self.picker.refresh()
            self.controls.open_picker(len(self.picker.rows))
        elif kind == "pick":
            name = self.picker.choose(action.index)
            if name is not None:
                self.controls.mode = "walk"
                self.switch_model(name)

    def say(self, text: str, now: float | None = None) -> None:
        self.toast, self.toast_until = text, (now or time.perf_counter()) + TOAST_S

    # -------------------------------------------------------------------------
    # model

    def sync(self) -> None:
        """Wait for a tick running in the background; called at the start of every frame,
        before input or anything else touches the village."""
        if self.background is not None and self.ticking:
            self.ticking = False
            self.background.wait()
            self.overruns.append(self.background.last_tick_ms - self.budget_ms)

    def switch_model(self, name: str) -> None:
        self.sync()
        if self.loader is not None:
            self.loader.cancel()
        if self.village is not None:
            self.village.cancel_all()
            self._transcript = self.village.transcript  # the story so far survives a model switch
        self.village, self.model_name = None, name
        self.loader = ModelLoader(name, self.backend, self.gl_context)

    def _poll_loader(self, now: float) -> None:
        model = self.loader.poll()
        if self.loader.error is not None:
            self.say(f"could not load {self.model_name}: {self.loader.error}", now)
            self.loader = None
            return
        if model is not None:
            old, self.model = self.model, model
            if model.backend == "cpu":
                self.background = self.background or BackgroundTicks()  # one worker for the game
            else:
                self.background = None
            if old is not None:
                release = getattr(old.transformer, "release", None)  # GL objects, if any
                if release is not None:
                    release()
                old.close()
            self.load_s = self.loader.load_s
            self.grammar_warm_s = self.loader.grammar_warm_s
            self._errors_seen = 0
            self.village = Village(model, self.villagers, chatter=self.chatter,
                                  reply_tokens=self.reply_tokens, template=self.loader.template)
            self.village.transcript = self._transcript
            self.loaded_this_frame = True  # this frame did loading work: file it as such
            self.loader = None

    # -------------------------------------------------------------------------
    # save / load

    def save_game(self) -> None:
        if self.village is None or self.save_path is None:
            return
        try:
            data = self.village.save((self.player.x, self.player.y), self.model_name)
            self.save_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.save_path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(self.save_path)  # never a half-written save
            self.say(f"saved to {self.save_path}")
        except (OSError, RuntimeError) as exc:
            self.say(f"not saved: {exc}")

    def load_game(self) -> None:
        if self.village is None or self.save_path is None:
            return
        try:
            self.player.x, self.player.y = self.village.load(self.save_path.read_bytes())
            self.say(f"loaded {self.save_path}")
        except Exception as exc:  # a bad save file must never end the game
            self.say(f"not loaded: {exc}")

    # -------------------------------------------------------------------------
    # per frame

    @property
    def phase(self) -> str:
        if self.village is None or self.loaded_this_frame:
            return "loading"
        if self.village.generating:
            return "generating"
        return "warming" if self.village.warming else "idle"

    def update(self, dt: float, now: float, frame_start: float) -> None:
        self.sync()
        self.loaded_this_frame = False
        dx, dy = self.controls.move_vector()
        self.player.move(dx, dy, dt)
        if self.loader is not None:
            self._poll_loader(now)
        if self.picker.poll():
            self.controls.picker_size = len(self.picker.rows)
        if self.village is None or self.loaded_this_frame:
            return  # (a frame that finished loading has spent its budget)
        # the scheduler gets what is left of this frame after drawing, less a margin for how far
        # ticks have recently run past their budget (a step runs long when the machine is busy)
        left = FRAME_MS - (time.perf_counter() - frame_start) * 1000.0 - self.render_ms - self.margin_ms()
        self.budget_ms = min(max(left, MIN_BUDGET_MS), MAX_BUDGET_MS)
        if self.background is not None:
            # the tick runs beside the drawing (started below): it need not leave room for it
            self.budget_ms = min(max(left + self.render_ms, MIN_BUDGET_MS), MAX_BUDGET_MS)
        elif self.village.generating or self.village.warming:
            tick_start = time.perf_counter()
            self.village.scheduler.tick(self.budget_ms)
            self.overruns.append((time.perf_counter() - tick_start) * 1000.0 - self.budget_ms)
        self.village.update(now)  # what the last tick made (this frame's, or the background one's)
        self.village.acts.step(self.villagers, self.player, dt, now)  # followers walk
        self.stats.add_tokens(now, self.village.scheduler.tokens_generated)
        if len(self.village.errors) > self._errors_seen:
            self._errors_seen = len(self.village.errors)
            error = self.village.errors[-1]
            self.errors.append(error)
            if self.backend == "auto" and self.model.backend != "cpu":
                # the GPU path failed mid-game: keep playing on the cpu backend
                self.say(f"gpu backend failed ({error}); reloading on the cpu", now)
                self.backend = "cpu"
                self.switch_model(self.model_name)
            else:
                self.say(f"reply failed: {error}", now)
        if self.background is not None and self.village is not None \
                and (self.village.generating or self.village.warming):
            self.background.start(self.village.scheduler, self.budget_ms)
            self.ticking = True

    def margin_ms(self) -> float:
        """The frame's safety margin: the 90th percentile of recent tick overruns, 1 to 6 ms."""
        if not self.overruns:
            return MIN_MARGIN_MS
        return min(max(percentile(list(self.overruns), 90), MIN_MARGIN_MS), MAX_MARGIN_MS)

    def hud_lines(self) -> tuple[str, str]:
        s = self.stats
        last = s.recent[-1] if s.recent else 0.0
        backend = self.model.backend if self.model is not None else "-"
        sched = self.village.scheduler if self.village is not None else None
        tick = sched.tick_ms[-1] if sched is not None and sched.tick_ms else 0.0
        line1 = (f"{s.fps():5.1f} fps   frame {last:5.1f} ms   {s.tok_s_recent():5.1f} tok/s   "
                 f"budget {self.budget_ms:4.1f} ms (used {tick:4.1f})")
        line2 = (f"{Path(str(self.model_name)).name[:28]} [{backend}]  "
                 "WASD walk  E talk  F2 models  F5/F9 save/load")
        inventory = self.village.acts.inventory if self.village is not None else []
        if inventory:
            line2 += "   Bag: " + ", ".join(inventory[-4:])
        return line1, line2

    def hint(self) -> str:
        if self.controls.mode != "walk" or self.village is None:
            return ""
        near = world.nearest_villager(self.player, self.villagers)
        return f"Press E to talk to {near.name}" if near else ""

    def facing(self) -> dict[str, str]:
        """Which way each villager looks: at the player when near, else at whom they chat with."""
        out, p = {}, self.player
        chat = self.village.chat if self.village is not None else None
        where = {v.name: (v.x, v.y) for v in self.villagers}
        for v in self.villagers:
            target = None
            if (v.x - p.x) ** 2 + (v.y - p.y) ** 2 < 160 ** 2:
                target = (p.x, p.y)
            elif chat is not None and v.name in chat["pair"]:
                a, b = chat["pair"]
                target = where[b if v.name == a else a]
            out[v.name] = world.facing_name(target[0] - v.x, target[1] - v.y) if target else "down"
        return out

    def bubble_lines(self) -> list[tuple[str, str]]:
        """(name, text) for every bubble, most important first: the player's own line and the
        villager answering it, then the chatter."""
        bubbles = self.village.bubbles if self.village is not None else {}
        partner = self.village.player_to if self.village is not None else None
        names = ["Player"] + sorted((v.name for v in self.villagers), key=lambda n: n != partner)
        return [(n, bubbles[n].shown if n in bubbles else "") for n in names]

    def draw(self, now: float) -> None:
        from .render import Hud, LoadingScreen, PickerPanel, Scene
        if self._views is None:
            # build and draw everything once up front: the first draw of each view compiles
            # shaders and rasterizes glyphs (a long frame), better spent under the loading screen
            self._views = (Scene(self.villagers), Hud(), LoadingScreen(), PickerPanel())
            from .render import WARM_CHARS
            names = ["Player"] + [v.name for v in self.villagers]
            self._views[0].set_bubbles([(n, WARM_CHARS) for n in names], self.player)
            self._views[0].draw(self.player, "Press E", WARM_CHARS)
            self._views[3].draw([("warm-up", "0 MiB", "installed")], 0, "status")
            self._views[0].set_bubbles([(n, "") for n in names], self.player)
        scene, hud, loading, picker = self._views
        if self.village is None and self.loader is not None:
            loading.draw(self.loader.progress, f"loading {self.model_name}: {self.loader.phase}")
        else:
            scene.set_bubbles(self.bubble_lines(), self.player)
            typing = None
            if self.controls.mode == "type":
                typing = f"You to {self.talking_to}: {self.controls.line.text}"
            acts = self.village.acts if self.village is not None else None
            scene.draw(self.player, self.hint(), typing, self.facing(),
                       acts.open_doors(now) if acts else set(), acts.moods if acts else {},
                       {v.name for v in self.villagers if acts and acts.is_waving(v.name, now)})
        toast = self.toast if now < self.toast_until else ""
        hud.draw(self.stats, *self.hud_lines(), toast)
        if self.controls.mode == "picker":
            picker.draw(self.picker.columns(), self.controls.picker_index, self.picker.status)

    def bubble_rects(self) -> dict:
        return dict(self._views[0].bubble_rects) if self._views else {}
