"""The sample game: input handling, movement and bubbles without a window; conversations and
save/load on a real (2-layer) model; a short headless autoplay (EGL) and a run in a real window
under Xvfb, each checked through its JSON report and its screenshot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sample_game import world
from sample_game.controls import MAX_LINE, Controls, TextLine
from sample_game.stats import FrameStats, percentile
from sample_game import layout
from sample_game.talk import Bubble, hard_limit, opening_prompt, sentence_end, trim_to_sentence
from sample_game.actions import ACTIONS, Acts, parse_reply, partial_say

ROOT = Path(__file__).resolve().parents[1]
REPORT_KEYS = ("frame_ms_p50", "frame_ms_p95", "frame_ms_p99", "frame_ms_max", "idle_frame_ms_p99",
               "warm_frame_ms_p99", "load_s", "tokens_generated", "tok_s", "transcript")


# -----------------------------------------------------------------------------
# input handling, no window

def test_move_vector_from_held_keys():
    c = Controls()
    assert c.move_vector() == (0, 0)
    c.key_down("LEFT")
    assert c.move_vector() == (-1, 0)
    c.key_down("W")
    assert c.move_vector() == (-1, 1)
    c.key_down("RIGHT")  # opposite keys cancel
    assert c.move_vector() == (0, 1)
    c.key_up("W"), c.key_up("LEFT"), c.key_up("RIGHT")
    assert c.move_vector() == (0, 0)


def test_talk_then_type_a_line_and_send():
    c = Controls()
    action = c.key_down("E")
    assert action.kind == "talk"
    c.start_typing(swallow=action.text)
    c.text("e")  # the character of the E that opened the line: swallowed
    c.key_up("E")
    c.text("Hi the")
    c.text("re\x07")  # control characters are dropped
    c.key_down("BACKSPACE")
    c.text("e!")
    assert c.move_vector() == (0, 0)  # typing WASD does not walk
    c.key_down("W")
    assert c.move_vector() == (0, 0)
    sent = c.key_down("ENTER")
    assert (sent.kind, sent.text) == ("send", "Hi there!")
    assert c.mode == "walk" and c.line.text == ""


def test_typing_edge_cases():
    c = Controls()
    c.text("ignored")  # walking: characters do nothing
    c.start_typing()
    c.text("e")  # nothing to swallow: kept
    assert c.line.text == "e"
    assert c.key_down("ESCAPE").kind == "cancel" and c.mode == "walk"
    c.start_typing()
    assert c.line.text == ""
    assert c.key_down("ENTER").kind == "cancel"  # an empty line sends nothing
    line = TextLine()
    line.insert("x" * (MAX_LINE + 30))
    assert len(line.text) == MAX_LINE


def test_walk_mode_actions_and_picker_navigation():
    c = Controls()
    assert [c.key_down(k).kind for k in ("F5", "F9", "ESCAPE", "F2")] == ["save", "load", "quit", "picker"]
    assert c.key_down("Q") is None
    c.open_picker(3)
    assert c.mode == "picker" and c.held == set()
    c.key_down("UP")  # wraps to the last row
    assert c.picker_index == 2
    c.key_down("DOWN")
    c.key_down("DOWN")
    pick = c.key_down("ENTER")
    assert (pick.kind, pick.index) == ("pick", 1)
    assert c.key_down("ESCAPE").kind == "picker_close" and c.mode == "walk"
    c.open_picker(0)
    assert c.key_down("ENTER") is None  # nothing to pick


# -----------------------------------------------------------------------------
# the world

def test_player_moves_at_constant_speed_and_is_clamped():
    p = world.Player(x=300, y=150)
    p.move(1, 0, 0.1)
    assert p.x == pytest.approx(300 + world.PLAYER_SPEED * 0.1)
    q = world.Player(x=300, y=150)
    q.move(1, 1, 0.1)  # diagonals are not faster
    assert (q.x - 300) ** 2 + (q.y - 150) ** 2 == pytest.approx((world.PLAYER_SPEED * 0.1) ** 2)
    for _ in range(200):
        q.move(-1, -1, 0.05)
    assert (q.x, q.y) == (world.PLAYER_RADIUS, world.PLAYER_RADIUS)


def test_player_is_blocked_by_a_house_and_slides_along_it():
    house = world.HOUSES[0].rect
    p = world.Player(x=house.x + house.w / 2, y=house.y - world.PLAYER_RADIUS - 1)
    p.move(0, 1, 0.05)
    assert p.y == house.y - world.PLAYER_RADIUS - 1  # up is blocked
    p.move(1, 1, 0.05)
    assert p.x > house.x + house.w / 2  # but the sideways half of a diagonal still moves


def test_nearest_villager_within_reach():
    mara = next(v for v in world.VILLAGERS if v.name == "Mara")
    assert world.nearest_villager(world.Player(x=mara.x + 20, y=mara.y), world.VILLAGERS) is mara
    assert world.nearest_villager(world.Player(x=mara.x + world.TALK_RADIUS + 1, y=mara.y),
                                  world.VILLAGERS) is None
    for v in world.VILLAGERS:  # everyone stands where the player can reach them
        assert not any(r.contains(v.x, v.y, world.PLAYER_RADIUS) for r in world.OBSTACLES)


def test_bubble_shows_whole_words_until_done():
    b = Bubble("Mara")
    b.full = "Fresh br"
    assert b.shown == "Fresh"
    b.full += "ead and hon"
    assert b.shown == "Fresh bread and"
    b.done = True
    assert b.shown == "Fresh bread and hon"


def test_player_walk_phase_and_facing():
    p = world.Player()
    p.move(1, 0, 0.05)
    assert p.moving and p.stride == pytest.approx(world.PLAYER_SPEED * 0.05)
    assert world.facing_name(*p.facing) == "right"
    p.move(0, 0, 0.05)
    assert not p.moving and p.stride == pytest.approx(world.PLAYER_SPEED * 0.05)
    assert [world.facing_name(*f) for f in ((-1, 0.2), (0.1, 1), (0.3, -1))] == ["left", "up", "down"]


def test_sentence_end_and_trim():
    assert sentence_end("Fresh bread. More") == len("Fresh bread.")
    assert sentence_end("No end yet") == -1
    assert sentence_end("Ask Mr. Brown") == -1  # an abbreviation is no sentence end
    assert sentence_end('She said "Yes!" and') == len('She said "Yes!"')
    assert sentence_end("Is it 3.5 miles") == -1
    assert trim_to_sentence("Bread is good. Honey cakes are bet") == "Bread is good."
    assert trim_to_sentence("Really? Yes! And then") == "Really? Yes!"
    assert trim_to_sentence("The sheep ran up the hill and,") == "The sheep ran up the hill and..."
    assert trim_to_sentence("  All done.  ") == "All done."
    assert trim_to_sentence("") == ""
    assert hard_limit(48) > 48 and hard_limit(8) >= 12


def test_opening_prompts_vary():
    import random
    rng, recent = random.Random(1), []
    prompts = [opening_prompt(rng, "Mara", "Tomas", [], recent) for _ in range(30)]
    assert len(set(prompts)) == len(prompts)
    for a, b in zip(recent, recent[1:]):  # scene, way of speaking and topic all change each time
        assert all(x != y for x, y in zip(a, b))
    said = opening_prompt(rng, "Mara", "Tomas", ["Lovely weather today!"], recent)
    assert "Lovely weather today!" in said  # named as a line not to repeat


def _people(player, villagers):
    return [layout.person_rect(player[0], player[1])] + [layout.person_rect(x, y) for x, y in villagers]


def test_bubbles_cover_neither_the_player_nor_each_other():
    area = (0, 46, 960, 420)
    crowd = [(150, 260), (230, 250), (200, 330)]  # three villagers close together
    for player in ((150, 200), (190, 300), (150, 330), (480, 90)):
        people = _people(player, crowd)
        bubbles = [("Player", *player, 200, 40), ("A", *crowd[0], 260, 120), ("B", *crowd[1], 260, 60),
                   ("C", *crowd[2], 200, 40)]
        placed = layout.place_bubbles(bubbles, people, (), area)
        rects = [p.rect for p in placed.values()]
        for i, r in enumerate(rects):
            assert area[0] <= r[0] and r[0] + r[2] <= area[0] + area[2]
            assert area[1] <= r[1] and r[1] + r[3] <= area[1] + area[3]
            assert all(layout.overlap(r, o) == 0 for o in people), (player, r)
            assert all(layout.overlap(r, q) == 0 for q in rects[i + 1:]), (player, r)
        for name, (_, x, y, *_) in zip(placed, bubbles):  # each tail points at its speaker
            tx, ty = placed[name].tip
            assert abs(tx - x) <= 16 and abs(ty - y) <= 32


def test_bubble_near_the_top_goes_below_or_beside_and_stays_put():
    people = _people((480, 300), [(480, 440)])
    placed = layout.place_bubbles([("A", 480, 440, 260, 100)], people, (), (0, 46, 960, 420))
    assert placed["A"].side != "above" and layout.overlap(placed["A"].rect, people[1]) == 0
    # the player walks a little: the bubble keeps its place while it still covers no one
    again = layout.place_bubbles([("A", 480, 440, 260, 100)], _people((470, 290), [(480, 440)]), (),
                                 (0, 46, 960, 420), previous=placed)
    assert again["A"] == placed["A"]


def test_percentiles_and_report_kinds():
    assert percentile([], 99) == 0.0
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50, 99, 100)
    s = FrameStats()
    for ms in (10.0, 20.0, 30.0):
        s.add_frame("generating", ms)
    s.add_frame("idle", 5.0)
    r = s.report(tokens=6, load_s=1.5)
    assert (r["frame_ms_max"], r["idle_frame_ms_p99"], r["tok_s"]) == (30.0, 5.0, 6 / 0.06)


# -----------------------------------------------------------------------------
# structured replies and actions, no model

def test_partial_say_streams_the_say_field_of_a_growing_reply():
    doc = '{"say": "Hi \\"you\\",\\nfriend\\u0021", "action": "wave", "mood": "happy"}'
    assert partial_say(doc) == ('Hi "you", friend!', True)
    assert partial_say(doc[:3]) == ("", False)
    assert partial_say('{"say": "Hi \\') == ("Hi ", False)  # a half-read escape is left out
    assert partial_say('{ "say" :"Good day to') == ("Good day to", False)
    assert parse_reply(doc) == {"say": 'Hi "you",\nfriend!', "action": "wave", "mood": "happy"}
    for bad in ('{"say": "x", "action": "fly", "mood": "happy"}', '{"say": "x"', "[1]",
                '{"say": 3, "action": "none", "mood": "calm"}'):
        assert parse_reply(bad) is None


class _Reply:
    def __init__(self, text, finish_reason):
        self.text, self.finish_reason, self._new = text, finish_reason, text
        self.done, self.error, self.token_ids = True, None, [0] * 10

    def poll(self):
        new, self._new = self._new, ""
        return new


class _Session:
    def __init__(self, name, reply):
        self.name, self.reply, self.busy, self.priority = name, reply, False, 10
        self.messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply.text}]


def _village_with_reply(name, text, finish_reason):
    """A Village whose one session has just finished ``text``, as the player's question."""
    from sample_game.talk import Village
    village = Village.__new__(Village)
    reply = _Reply(text, finish_reason)
    village.sessions = {name: _Session(name, reply)}
    village.bubbles = {name: Bubble(name, json_reply=True), "Player": Bubble("Player", "Hi", streaming=False)}
    village.acts, village.transcript, village.errors, village._reported = Acts(), [], [], set()
    village.talk, village.chat, village.chatter_enabled, village.player_to = {"name": name, "reply": reply}, None, False, name
    return village


def test_a_canned_json_reply_is_shown_and_its_action_performed():
    village = _village_with_reply("Mara", '{"say": "Here, a honey cake for you!", "action": "give_item", '
                                          '"mood": "happy"}', "eos")
    village.update(1.0)
    assert village.bubbles["Mara"].shown == "Here, a honey cake for you!"
    assert village.transcript[-1] == {"speaker": "Mara", "text": "Here, a honey cake for you!", "to": "Player"}
    assert village.acts.performed == [{"npc": "Mara", "action": "give_item"}]
    assert village.acts.inventory == ["honey cake"] and village.acts.moods == {"Mara": "happy"}
    for action, check in (("open_door", lambda a: a.open_doors(2.0) == {"Forge"}),
                          ("follow", lambda a: "Ines" in a.following),
                          ("wave", lambda a: a.is_waving("Ines", 2.0))):
        v = _village_with_reply("Ines", f'{{"say": "Sure.", "action": "{action}", "mood": "calm"}}', "eos")
        v.update(1.0)
        assert check(v.acts), action


def test_a_cut_or_broken_reply_shows_what_was_said_and_does_nothing():
    for text, reason, shown in (('{"say": "Take this bread. And also the', "length", "Take this bread."),
                                ('{"say": "Well", "action": "give_item", "mo', "grammar", "Well"),
                                ('{"say": "', "length", "..."),
                                ("not json at all", "eos", "...")):
        village = _village_with_reply("Mara", text, reason)
        village.update(1.0)
        assert village.bubbles["Mara"].shown == shown, text
        assert village.acts.performed == [] and village.errors == []
        assert json.loads(village.sessions["Mara"].messages[-1]["content"])["action"] == "none"


def test_a_follower_walks_after_the_player_then_home_and_doors_close():
    import dataclasses
    acts = Acts()
    mara = dataclasses.replace(world.VILLAGERS[0])
    home = (mara.x, mara.y)
    player = world.Player(x=mara.x + 200, y=80)
    acts.perform("Mara", "follow", now=0.0)
    acts.perform("Mara", "open_door", now=0.0)
    for i in range(120):
        acts.step([mara], player, 1 / 60, now=i / 60)
    assert (mara.x - player.x) ** 2 + (mara.y - player.y) ** 2 < 60 ** 2  # caught up
    for i in range(600):
        acts.step([mara], player, 1 / 60, now=20.0 + i / 60)
    assert (round(mara.x), round(mara.y)) == (round(home[0]), round(home[1]))  # back home
    assert acts.open_doors(5.0) == {"Bakery"} and acts.open_doors(30.0) == set()
    assert world.VILLAGERS[0].x == home[0]  # the module's villagers never move


# -----------------------------------------------------------------------------
# conversations on a real model (2 layers, fast)

@pytest.fixture(scope="module")
def small_model_path(tmp_path_factory) -> Path:
    from perro_pastor.paths import default_model_path
    from perro_pastor.tools.requantize import requantize
    path = tmp_path_factory.mktemp("game") / "smollm2-2layers-f16.gguf"
    requantize(default_model_path(), path, "F16", n_layers=2)
    return path


def _drive(village, until, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not until():
        assert time.monotonic() < deadline, "conversation did not finish in time"
        village.scheduler.tick(20.0)
        village.update(time.monotonic())


def test_loader_then_conversation_save_and_load(small_model_path):
    from sample_game.loading import ModelLoader
    from sample_game.talk import Village
    loader = ModelLoader(str(small_model_path), backend="cpu")
    progress = []
    while loader.poll() is None:
        assert loader.error is None
        progress.append(loader.progress)
        time.sleep(0.01)
    assert progress == sorted(progress) and loader.progress == 1.0 and loader.load_s > 0
    model = loader.model
    village = Village(model, world.VILLAGERS, chatter=False, reply_tokens=6)
    village.ask("Mara", "Hello there!", time.monotonic())
    with pytest.raises(RuntimeError, match="wait for the reply"):
        village.save((1, 2), "m")
    _drive(village, lambda: village.talk is None)
    assert [e["speaker"] for e in village.transcript] == ["Player", "Mara"]
    assert village.bubbles["Mara"].shown == village.transcript[1]["text"]
    assert village.bubbles["Player"].shown == "Hello there!"  # the player's line stays up
    reply = village.transcript[1]["text"]
    if village.sessions["Mara"].reply.finish_reason in ("length", "cancelled"):  # never cut mid-sentence
        assert reply[-1] in '.!?"\')*' or reply.endswith("..."), reply
    # the history keeps the reply as JSON (a cut one as a valid reply with no action)
    assert json.loads(village.sessions["Mara"].messages[-1]["content"])["say"].strip() == reply
    if village.sessions["Mara"].reply.finish_reason != "eos":
        assert village.acts.performed == []  # a cut reply performs nothing
    data = village.save((123.0, 45.0), "m")

    other = Village(model, world.VILLAGERS, chatter=False, reply_tokens=6)
    with pytest.raises(ValueError, match="corrupt"):
        other.load(data[:-20])
    assert other.load(data) == (123.0, 45.0)
    mara = other.sessions["Mara"]
    assert mara.messages == village.sessions["Mara"].messages
    assert mara.n_past == village.sessions["Mara"].n_past > 0
    assert other.transcript == village.transcript
    other.ask("Mara", "And tomorrow?", time.monotonic())  # the restored NPC talks on
    _drive(other, lambda: other.talk is None)
    assert len(other.transcript) == 4


def test_background_chatter_takes_turns(small_model_path):
    from perro_pastor.model import load
    from sample_game.talk import Village
    model = load(small_model_path, backend="cpu")
    village = Village(model, world.VILLAGERS, chatter=True, reply_tokens=5)
    village.update(0.0)
    a, b = village.chat["pair"]
    assert village.sessions[a].busy and village.sessions[a].priority < village.sessions[b].priority + 1
    _drive(village, lambda: len(village.transcript) >= 2)
    speakers = [e["speaker"] for e in village.transcript[:2]]
    assert speakers == [a, b]
    village.ask(b, "Sorry to interrupt!", time.monotonic())  # the player preempts the chatter
    assert village.chat is None and village.sessions[b].priority > village.sessions[a].priority
    village.ask(a, "Actually, you.", time.monotonic())  # turning away cancels the first question
    assert not village.sessions[b].busy and village.sessions[a].priority > village.sessions[b].priority
    _drive(village, lambda: village.talk is None)
    assert village.transcript[-1]["speaker"] == a


def test_auto_backend_is_cpu_on_a_cpu_rasterizer():
    from sample_game.__main__ import choose_backend

    class Ctx:
        def __init__(self, renderer):
            self.info = {"GL_RENDERER": renderer}
    assert choose_backend("auto", Ctx("llvmpipe (LLVM 15.0.6, 256 bits)")) == "cpu"
    assert choose_backend("auto", Ctx("NVIDIA H100 80GB HBM3/PCIe/SSE2")) == "auto"
    assert choose_backend("gl", Ctx("llvmpipe (LLVM 15.0.6, 256 bits)")) == "gl"
    assert choose_backend("auto", None) == "cpu"  # no GL 4.3 window at all


def test_thread_settings_leave_the_users_own(monkeypatch):
    from sample_game.__main__ import share_the_cores
    for name in ("OPENBLAS_THREAD_TIMEOUT", "LP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    share_the_cores("gl")  # compute shaders run on llvmpipe's threads: all of them stay
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "4" and "LP_NUM_THREADS" not in os.environ
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "10")
    share_the_cores("auto")
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "10" and os.environ["LP_NUM_THREADS"] == "1"


def test_loader_reports_a_missing_model():
    from perro_pastor.errors import ModelFormatError
    from sample_game.loading import ModelLoader
    loader = ModelLoader("/nonexistent/model.gguf", backend="cpu")
    deadline = time.monotonic() + 10
    while not loader.done and time.monotonic() < deadline:
        loader.poll()
        time.sleep(0.01)
    assert isinstance(loader.error, ModelFormatError) and loader.model is None


# -----------------------------------------------------------------------------
# whole game runs: headless (EGL) and a real window (Xvfb)

def _run_game(tmp_path: Path, model: Path, env_display: str | None, extra=()) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    if env_display:
        env["DISPLAY"] = env_display
    report, shot = tmp_path / "report.json", tmp_path / "shot.png"
    cmd = [sys.executable, "-m", "sample_game", "--autoplay", "--backend", "cpu", "--model", str(model),
           "--frames", "2500", "--reply-tokens", "8", "--report", str(report), "--screenshot", str(shot),
           *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    data["_stdout"], data["_shot"] = proc.stdout, shot
    return data


def _check_report_and_screenshot(r: dict) -> None:
    for key in REPORT_KEYS:
        assert key in r, key
    for key in REPORT_KEYS[:5]:
        assert isinstance(r[key], float) and r[key] >= 0
    assert r["frame_ms_max"] >= r["frame_ms_p99"] >= r["frame_ms_p95"] >= r["frame_ms_p50"] > 0
    assert r["load_s"] > 0 and r["tokens_generated"] > 0 and r["tok_s"] > 0
    speakers = [e["speaker"] for e in r["transcript"]]
    assert speakers[:2] == ["Player", "Mara"] and all(e["text"] for e in r["transcript"][:2])
    assert r["script_finished"], r
    assert "Mara:" in r["_stdout"]

    import numpy as np
    import pyglet
    pyglet.options["headless"] = True
    img = pyglet.image.load(str(r["_shot"]))
    pixels = np.frombuffer(img.get_data("RGB", img.width * 3), np.uint8).reshape(img.height, img.width, 3)
    pixels = pixels[::-1]  # get_data rows run bottom-up; flip to the window's y
    assert (img.width, img.height) == (world.WIDTH, world.HEIGHT)
    assert pixels.std() > 20  # not blank
    x, y, w, h = r["bubble_rects"]["Mara"]
    inner = pixels[world.HEIGHT - (y + h) + 4: world.HEIGHT - y - 4, x + 6: x + w - 6]
    dark = (inner.max(axis=2) < 120).sum()  # glyph pixels on the white bubble
    white = (inner.min(axis=2) > 235).sum()
    assert white > inner.shape[0] * inner.shape[1] * 0.3, "no white bubble at the reported place"
    assert dark > 40, "the bubble has no text pixels"


@pytest.mark.skipif(sys.platform != "linux", reason="EGL headless")
def test_headless_autoplay_report_and_screenshot(tmp_path, small_model_path):
    r = _run_game(tmp_path, small_model_path, env_display=None)
    assert isinstance(r["actions"], list)  # actions performed: {npc, action} each
    assert all(a["action"] in ACTIONS and a["action"] != "none" for a in r["actions"])
    assert r["headless"] is True
    _check_report_and_screenshot(r)


@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="xvfb-run is not installed")
def test_real_window_under_xvfb(tmp_path, small_model_path):
    xvfb = subprocess.Popen(["Xvfb", ":97", "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        assert xvfb.poll() is None, "Xvfb did not start"
        r = _run_game(tmp_path, small_model_path, env_display=":97")
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=10)
    assert r["headless"] is False
    _check_report_and_screenshot(r)


def test_model_picker_lists_the_folder_and_loads_installed_files(tmp_path, small_model_path):
    from sample_game.picker import ModelPicker
    (tmp_path / "tiny.gguf").write_bytes(small_model_path.read_bytes())
    picker = ModelPicker(tmp_path)
    picker.refresh()
    names = [r["name"] for r in picker.rows]
    assert names[0] == "default" and "tiny.gguf" in names
    cols = picker.columns()
    assert len(cols) == len(names) and all(len(c) == 3 for c in cols) and cols[0][0] == "default"
    assert picker.choose(0) == "default"
    assert picker.choose(names.index("tiny.gguf")) == str(tmp_path / "tiny.gguf")
    assert not picker.poll()  # no download finished


def test_background_ticks_run_off_the_frame_thread_and_hand_back_errors():
    """The cpu backend's ticks run on a worker while the frame draws; wait() returns after the
    tick, and an exception the tick raised is raised on the frame thread."""
    import threading

    from sample_game.game import BackgroundTicks

    class Model:
        def __init__(self):
            self.limited = []

        def limit_threads(self, n):
            self.limited.append((n, threading.current_thread()))

    class Scheduler:
        def __init__(self):
            self.threads, self.fail = [], False
            self.model = Model()

        def tick(self, budget_ms):
            self.threads.append(threading.current_thread())
            time.sleep(budget_ms / 1000)
            if self.fail:
                raise RuntimeError("a session broke")

    sched, ticks = Scheduler(), BackgroundTicks()
    ticks.start(sched, 5.0)
    ticks.wait()
    assert sched.threads == [ticks._worker] and ticks.last_tick_ms >= 5.0
    assert sched.model.limited == [(1, ticks._worker)]  # the model computes on one thread there
    sched.fail = True
    ticks.start(sched, 1.0)
    with pytest.raises(RuntimeError, match="a session broke"):
        ticks.wait()
    sched.fail = False
    ticks.start(sched, 1.0)  # the worker survived the error
    ticks.wait()
    assert len(sched.threads) == 3
