"""Can program links leave the frame thread? A measured yes, for EGL contexts (docs/loading.md).

    .venv/bin/python benchmarks/link_off_thread.py [--json FILE]

Loading the gl backend links ~24 compute programs; each link is one GL call of 1-9 ms on llvmpipe
with Mesa's shader cache warm (20-43 ms cold, 18-31 ms more for a process's first), and moderngl
holds the GIL through it, so a link stalls whatever frame it lands in. This script links the
same programs (the default model's, as ``perro_pastor.load`` compiles them) three ways and
reports the longest stretch the main thread could not run:

1. on the main thread, through moderngl (what loading does today): the stall is the link;
2. on a worker thread, on its own EGL context sharing objects with the main one, through ctypes
   (``CFUNCTYPE`` calls release the GIL), while the main thread ticks every 0.5 ms;
3. then it dispatches one of the worker-linked programs (rmsnorm) from the main, moderngl,
   context, through ctypes, and checks the result against float64: shared program objects work.

Only the mechanism is measured here; the engine still links on the GL thread (a wrapper for
ctypes-linked programs, and sharing code for GLX and WGL windows, are not written).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import threading
import time

import numpy as np

EGL_CONFIG_ID, EGL_NONE, EGL_OPENGL_API = 0x3028, 0x3038, 0x30A2
EGL_CONTEXT_MAJOR_VERSION, EGL_CONTEXT_MINOR_VERSION = 0x3098, 0x30FB
EGL_CONTEXT_OPENGL_PROFILE_MASK, EGL_CONTEXT_OPENGL_CORE_PROFILE_BIT = 0x30FD, 1
GL_COMPUTE_SHADER, GL_LINK_STATUS = 0x91B9, 0x8B82
U, I, P = ctypes.c_uint32, ctypes.c_int32, ctypes.c_void_p


def load_egl():
    egl = ctypes.CDLL("libEGL.so.1")
    for name, restype, argtypes in [
            ("eglGetCurrentDisplay", P, []), ("eglGetCurrentContext", P, []),
            ("eglGetProcAddress", P, [ctypes.c_char_p]),
            ("eglQueryContext", I, [P, P, I, ctypes.POINTER(I)]),
            ("eglChooseConfig", I, [P, ctypes.POINTER(I), ctypes.POINTER(P), I, ctypes.POINTER(I)]),
            ("eglBindAPI", I, [U]), ("eglCreateContext", P, [P, P, P, ctypes.POINTER(I)]),
            ("eglMakeCurrent", I, [P, P, P, P]), ("eglDestroyContext", I, [P, P])]:
        f = getattr(egl, name)
        f.restype, f.argtypes = restype, argtypes
    return egl


def gl_function(egl, name: str, restype, *argtypes, hold_gil: bool = False):
    """A GL entry point through ctypes; CFUNCTYPE releases the GIL during the call, PYFUNCTYPE
    keeps it (for the cheap calls a frame makes)."""
    kind = ctypes.PYFUNCTYPE if hold_gil else ctypes.CFUNCTYPE
    return kind(restype, *argtypes)(egl.eglGetProcAddress(name.encode()))


def shared_context(egl):
    """(display, a new context sharing objects with the current one), for another thread."""
    display, current = egl.eglGetCurrentDisplay(), egl.eglGetCurrentContext()
    if not display or not current:
        raise SystemExit("the current context is not an EGL context")
    config_id, config, n = I(0), P(0), I(0)
    egl.eglQueryContext(display, current, EGL_CONFIG_ID, ctypes.byref(config_id))
    if config_id.value:
        egl.eglChooseConfig(display, (I * 3)(EGL_CONFIG_ID, config_id.value, EGL_NONE), ctypes.byref(config), 1,
                            ctypes.byref(n))
    egl.eglBindAPI(EGL_OPENGL_API)
    attrs = (I * 7)(EGL_CONTEXT_MAJOR_VERSION, 4, EGL_CONTEXT_MINOR_VERSION, 3,
                    EGL_CONTEXT_OPENGL_PROFILE_MASK, EGL_CONTEXT_OPENGL_CORE_PROFILE_BIT, EGL_NONE)
    return display, egl.eglCreateContext(display, config, current, attrs)


def longest_stall(work) -> tuple[float, float]:
    """(wall ms of work() on a worker thread, the longest gap in ms between the main thread's
    0.5 ms ticks meanwhile)."""
    gaps, thread = [], threading.Thread(target=work)
    start = last = time.perf_counter()
    thread.start()
    while thread.is_alive():
        time.sleep(0.0005)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    thread.join()
    return (time.perf_counter() - start) * 1e3, max(gaps, default=0.0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    sys.setswitchinterval(0.0005)  # as the loader's worker runs (threads.frequent_gil_handover)

    import moderngl

    import perro_pastor
    from perro_pastor.gl import dispatcher as dispatcher_module
    from perro_pastor.gl import shader_loader

    ctx = moderngl.create_standalone_context(require=430, backend="egl")
    sources, compile_compute = [], shader_loader.compile_compute

    def recording(c, name, defines):
        sources.append((name, shader_loader.assemble(name, defines).text))
        return compile_compute(c, name, defines)
    dispatcher_module.compile_compute = recording
    perro_pastor.load("default", backend="gl", gl_context=ctx).close()  # also warms Mesa's cache
    dispatcher_module.compile_compute = compile_compute

    main_ms = []
    for _, text in sources:  # 1. on the main thread: each link is a stall
        t = time.perf_counter()
        ctx.compute_shader(text).release()
        main_ms.append((time.perf_counter() - t) * 1e3)

    egl = load_egl()
    display, worker_context = shared_context(egl)
    create_shader = gl_function(egl, "glCreateShader", U, U)
    shader_source = gl_function(egl, "glShaderSource", None, U, I, ctypes.POINTER(ctypes.c_char_p), P)
    compile_shader = gl_function(egl, "glCompileShader", None, U)
    create_program = gl_function(egl, "glCreateProgram", U)
    attach_shader = gl_function(egl, "glAttachShader", None, U, U)
    link_program = gl_function(egl, "glLinkProgram", None, U)
    get_program = gl_function(egl, "glGetProgramiv", None, U, U, ctypes.POINTER(I))
    finish = gl_function(egl, "glFinish", None)
    linked: list[tuple[str, int, bool, float]] = []

    def link_all() -> None:  # 2. on a worker, on its shared context
        egl.eglBindAPI(EGL_OPENGL_API)
        egl.eglMakeCurrent(display, None, None, worker_context)
        for name, text in sources:
            t = time.perf_counter()
            shader = create_shader(GL_COMPUTE_SHADER)
            shader_source(shader, 1, (ctypes.c_char_p * 1)(text.encode()), None)
            compile_shader(shader)
            program = create_program()
            attach_shader(program, shader)
            link_program(program)
            status = I(0)
            get_program(program, GL_LINK_STATUS, ctypes.byref(status))
            linked.append((name, program, bool(status.value), (time.perf_counter() - t) * 1e3))
        finish()  # the links are complete before the main context uses the programs
        egl.eglMakeCurrent(display, None, None, None)

    worker_wall_ms, worker_stall_ms = longest_stall(link_all)

    # 3. a worker-linked program, dispatched from the main context
    use_program = gl_function(egl, "glUseProgram", None, U, hold_gil=True)
    uniform_location = gl_function(egl, "glGetUniformLocation", I, U, ctypes.c_char_p, hold_gil=True)
    uniform_uint = gl_function(egl, "glUniform1ui", None, I, U, hold_gil=True)
    uniform_float = gl_function(egl, "glUniform1f", None, I, ctypes.c_float, hold_gil=True)
    dispatch = gl_function(egl, "glDispatchCompute", None, U, U, U, hold_gil=True)
    rmsnorm = next(program for name, program, ok, _ in linked if name == "rmsnorm.comp" and ok)
    rng = np.random.default_rng()
    dim, n_tokens, eps = 576, 3, 1e-5
    x = rng.standard_normal((n_tokens, dim)).astype(np.float32)
    weight = rng.standard_normal(dim).astype(np.float32)
    buffers = [ctx.buffer(x.tobytes()), ctx.buffer(weight.tobytes()), ctx.buffer(reserve=x.nbytes)]
    for binding, buf in enumerate(buffers):
        buf.bind_to_storage_buffer(binding)
    use_program(rmsnorm)
    uniform_uint(uniform_location(rmsnorm, b"dim"), dim)
    uniform_float(uniform_location(rmsnorm, b"eps"), eps)
    dispatch(n_tokens, 1, 1)
    got = np.frombuffer(buffers[2].read(), np.float32).reshape(n_tokens, dim)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64 ** 2).mean(axis=1, keepdims=True) + eps) * weight
    egl.eglDestroyContext(display, worker_context)

    result = dict(
        renderer=ctx.info["GL_RENDERER"], programs=len(sources),
        main_thread_link_ms=dict(max=round(max(main_ms), 1), median=round(float(np.median(main_ms)), 1),
                                 over_7ms=sum(ms > 7 for ms in main_ms)),
        worker_links_ok=all(ok for *_, ok, _ in linked),
        worker_link_ms_max=round(max(ms for *_, ms in linked), 1),
        worker_wall_ms=round(worker_wall_ms, 1), main_thread_longest_stall_ms=round(worker_stall_ms, 2),
        shared_program_max_rel_error=float(np.abs(got - want).max() / np.abs(want).max()),
        gl_error=ctx.error)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
