"""Launcher: ``python -m sample_game``, ``perro-pastor demo`` and ``make demo`` all end here.

    python -m sample_game [--model NAME] [--backend auto|gl|cpu]
    python -m sample_game --autoplay [--frames N] [--report FILE.json] [--screenshot FILE.png]

Without a display ($DISPLAY unset) the game runs headless through EGL in autoplay mode and
prints the transcript and the frame statistics instead of failing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

SKIP_FRAMES = 1  # the first frame compiles shaders and rasterizes fonts (warm-up): not counted


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="perro-pastor-demo",
        description="PerroPastor's village demo: walk up to a villager and talk (also: perro-pastor demo)")
    p.add_argument("--model", default="default", help="default, a path, or a file in the model folder")
    p.add_argument("--backend", default="auto", choices=("auto", "gl", "cpu"))
    p.add_argument("--autoplay", action="store_true", help="play the scripted scene, then exit")
    p.add_argument("--frames", type=int, default=6000, help="autoplay: stop after this many frames")
    p.add_argument("--report", type=Path, help="autoplay: write the JSON report here")
    p.add_argument("--screenshot", type=Path, help="autoplay: save a PNG as the reply completes")
    p.add_argument("--reply-tokens", type=int, default=None, help="cap on tokens per reply")
    p.add_argument("--save-file", type=Path, default=None, help="where F5 saves and F9 loads")
    p.add_argument("--headless", action="store_true", help="render through EGL without a window")
    args = p.parse_args(argv)
    if args.frames < 1:
        p.error(f"--frames must be >= 1, got {args.frames}")
    return args


def make_window(headless: bool):
    """A 960x540 window with a GL 4.3 core context (compute shaders), and moderngl on it."""
    import pyglet
    if headless:
        pyglet.options["headless"] = True
    pyglet.options["debug_gl"] = False  # glGetError after every call costs frames
    import pyglet.window
    from .world import HEIGHT, WIDTH
    gl_config = pyglet.gl.Config(major_version=4, minor_version=3, forward_compatible=True,
                                 double_buffer=True, depth_size=0)
    try:
        window = pyglet.window.Window(WIDTH, HEIGHT, caption="PerroPastor village", config=gl_config,
                                      vsync=False)
    except pyglet.window.NoSuchConfigException:
        print("sample_game: no OpenGL 4.3 context here; the model runs on the cpu", file=sys.stderr)
        window = pyglet.window.Window(WIDTH, HEIGHT, caption="PerroPastor village", vsync=False)
    try:
        import moderngl
        ctx = moderngl.create_context()
    except Exception as exc:
        print(f"sample_game: no moderngl context ({exc}); the model runs on the cpu", file=sys.stderr)
        ctx = None
    return window, ctx


def hook_keys(window, game) -> None:
    from pyglet.window import key

    @window.event
    def on_key_press(symbol, modifiers):
        game.on_action(game.controls.key_down(key.symbol_string(symbol)), time.perf_counter())
        return True  # keep pyglet's default Escape-closes-the-window out of it

    @window.event
    def on_key_release(symbol, modifiers):
        game.controls.key_up(key.symbol_string(symbol))

    @window.event
    def on_text(text):
        game.controls.text(text)

    @window.event
    def on_close():
        game.quit = True


def save_screenshot(path: Path) -> None:
    import pyglet
    path.parent.mkdir(parents=True, exist_ok=True)
    pyglet.image.get_buffer_manager().get_color_buffer().save(str(path))


def choose_backend(requested: str, ctx) -> str:
    """The model's backend for this window. ``auto`` takes the gl backend on a GPU; on a CPU
    rasterizer (llvmpipe) the cpu backend, because there both draw on the same cores and NumPy's
    BLAS decodes ~3x faster than compute shaders in the game (docs/sample_game.md)."""
    from perro_pastor.model import draws_on_cpu
    if ctx is None:
        return "cpu"
    if requested != "auto":
        return requested
    if draws_on_cpu(ctx):
        renderer = ctx.info.get("GL_RENDERER", "")
        print(f"perro-pastor: {renderer} draws on the CPU; generating with the cpu backend "
              "(--backend gl to use compute shaders anyway)", file=sys.stderr)
        return "cpu"
    return "auto"


def share_the_cores(backend: str) -> None:
    """Thread settings for a game whose model and renderer share the CPU, read by OpenBLAS and
    Mesa when they start (so before NumPy is imported and before the GL context exists).
    Settings the user made win.

    - OpenBLAS workers spin ~0.1 s after each call before they sleep; in a frame loop that is
      one core taken from the renderer for good. ``OPENBLAS_THREAD_TIMEOUT=4`` makes them sleep
      at once (each call wakes them instead).
    - llvmpipe rasterizes on a thread per core; next to two BLAS threads on two cores that
      oversubscribes the machine and stretches random steps by 10+ ms. One raster thread
      (``LP_NUM_THREADS``, which GPU drivers ignore); not with ``--backend gl``, whose
      compute shaders run on those threads.

    Measured on the 2-core machine (docs/sample_game.md): 4.9-5.0 -> 6.7-6.8 tok/s, frame
    max 54 -> 40-45 ms."""
    from perro_pastor.threads import let_blas_workers_sleep_at_once  # (imports no NumPy)
    let_blas_workers_sleep_at_once()
    if backend != "gl":
        os.environ.setdefault("LP_NUM_THREADS", "1")


def run(args: argparse.Namespace) -> dict | None:
    share_the_cores(args.backend)
    from .autoplay import Autoplay
    from .game import FRAME_MS, Game
    window, ctx = make_window(args.headless)
    backend = choose_backend(args.backend, ctx)
    save_path = args.save_file
    if save_path is None:
        import platformdirs
        save_path = Path(platformdirs.user_data_dir("perro_pastor", appauthor=False)) / "village-save.json"
    game = Game(args.model, backend, ctx, save_path=save_path, reply_tokens=args.reply_tokens)
    hook_keys(window, game)
    auto = Autoplay() if args.autoplay else None
    shot_taken, shot_rects = False, {}
    frame, last = 0, time.perf_counter()
    try:
        while not game.quit and not (auto and (auto.finished or frame >= args.frames)):
            start = time.perf_counter()
            game.sync()  # the last frame's background tick has finished: the village is ours
            window.dispatch_events()
            if auto is not None:
                auto.update(game, start)
            game.update(start - last, start, start)
            t_draw = time.perf_counter()
            window.switch_to()
            game.draw(start)  # clears the frame itself
            shot_now = auto is not None and args.screenshot and auto.want_screenshot
            if shot_now:
                save_screenshot(args.screenshot)
                shot_taken, shot_rects = True, game.bubble_rects()
            window.flip()
            game.render_ms = 0.9 * game.render_ms + 0.1 * (time.perf_counter() - t_draw) * 1000.0
            # pace to 60 fps; the frame's time is start to start, what a player sees
            spare = FRAME_MS / 1000.0 - (time.perf_counter() - start)
            if spare > 0:
                time.sleep(spare)
            now = time.perf_counter()
            if frame >= SKIP_FRAMES and not shot_now:  # (PNG encoding is not the game's frame)
                game.stats.add_frame(game.phase, (now - start) * 1000.0)
            last, frame = start, frame + 1
        if auto is not None and args.screenshot and not shot_taken:
            game.draw(time.perf_counter())
            save_screenshot(args.screenshot)
            shot_rects = game.bubble_rects()
    finally:
        game.sync()
        if game.village is not None:
            game.village.cancel_all()
    if auto is None:
        window.close()
        return None
    village = game.village
    report = game.stats.report(village.scheduler.tokens_generated if village else 0, game.load_s)
    report.update({
        "model": str(args.model), "backend": game.model.backend if game.model else None,
        "frames_total": frame, "script_finished": auto.finished, "headless": bool(args.headless),
        "render_ms_avg": game.render_ms, "frame_budget_ms": FRAME_MS,
        "transcript": [{"speaker": e["speaker"], "text": e["text"]} for e in (village.transcript if village else [])],
        "bubble_rects": shot_rects, "screenshot": str(args.screenshot) if args.screenshot else None,
        "load_error": str(game.loader.error) if game.loader and game.loader.error else None,
        "errors": game.errors,
        "actions": list(village.acts.performed) if village else [],
        "inventory": list(village.acts.inventory) if village else [],
        "grammar_warm_s": game.grammar_warm_s,
    })
    window.close()
    return report


def print_report(report: dict) -> None:
    for line in report["transcript"]:
        print(f"{line['speaker']:>7}: {line['text']}")
    print(f"frames: generating p50 {report['frame_ms_p50']:.1f} p95 {report['frame_ms_p95']:.1f} "
          f"p99 {report['frame_ms_p99']:.1f} max {report['frame_ms_max']:.1f} ms; "
          f"idle p99 {report['idle_frame_ms_p99']:.1f} ms; loading max {report['load_frame_ms_max']:.1f} ms")
    load = f"{report['load_s']:.2f} s" if report["load_s"] is not None else "did not finish"
    print(f"load {load}; {report['tokens_generated']} tokens at {report['tok_s']:.1f} tok/s "
          f"({report['backend']})")
    print(f"actions: {', '.join(a['npc'] + ' ' + a['action'] for a in report['actions']) or 'none'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and sys.platform.startswith("linux"):
        if not args.autoplay:
            print("sample_game: no display; running headless autoplay", file=sys.stderr)
        args.headless = args.autoplay = True
    report = run(args)
    if report is None:
        return 0
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2))
    print_report(report)
    return 0 if report["transcript"] else 1


if __name__ == "__main__":
    sys.exit(main())
