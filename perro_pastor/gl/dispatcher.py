"""What every launcher shares: compiled programs, launcher scratch buffers, and the dispatch call.

The launchers (``matvec_ops``, ``layer_ops``, ``sampling_ops``, ``fused_ops``) each hold the one
``Dispatcher`` of their ``Kernels``; every bind and every dispatch of the gl backend goes through
it (``bind``, ``bind_ubo``, ``call``, ``run``, ``barrier``), so that while ``recording`` is a list
it holds the calls that repeat them (``decode_plan.py``). A profiler outside the engine
(``perro_pastor.gl_figures``) may wrap ``run`` on the instance: the launchers, and a replayed
recording, look it up on every call.
"""

from __future__ import annotations

from functools import partial

from ..errors import BackendError
from .context import GLContext
from .shader_loader import compile_compute

# On a CPU rasterizer a dispatch runs inside glDispatchCompute, so its length is what a frame
# pays. A real GPU does the work in microseconds while each dispatch costs ~20 us of Python, so
# there every per-dispatch cap is HARDWARE_DISPATCH_SCALE times larger (measured on an H100:
# prefill 97 -> 280 tok/s).
HARDWARE_DISPATCH_SCALE = 16


def n_groups(n: int, size: int) -> int:
    """Work groups of ``size`` that cover ``n`` items."""
    return (n + size - 1) // size


def _run_again(gpu: "Dispatcher", prog, gx: int, gy: int, gz: int, uniforms: dict) -> None:
    """A recorded dispatch: through ``gpu.run`` as it is when replayed (a profiler may wrap it)."""
    gpu.run(prog, gx, gy, gz, **uniforms)


class Dispatcher:
    """Compiled programs (cached per shader + defines), scratch buffers and dispatches for one
    GL context."""

    def __init__(self, glctx: GLContext) -> None:
        self.glctx = glctx
        self.ctx = glctx.ctx
        self.software = glctx.limits.software
        self.dispatch_scale = 1 if self.software else HARDWARE_DISPATCH_SCALE
        self.dry_run = False  # launchers create their programs but dispatch nothing (warm-up)
        self.program_names: dict[int, str] = {}  # id(program) -> its shader file, for profilers
        self._programs: dict[tuple, object] = {}
        self._scratch: dict[str, object] = {}
        self._uniforms: dict[int, dict[str, object]] = {}  # id(program) -> the values last written
        # while a list: every bind, dispatch and barrier made through this dispatcher is also
        # appended to it, as a call that repeats it (gl/decode_plan.py replays them)
        self.recording: list | None = None
        self.generation = 0  # counts scratch buffers replaced: a recorded call may hold an old one

    def program(self, name: str, **defines: object):
        """``shaders/<name>`` compiled with ``defines`` (once per set of defines)."""
        key = (name, tuple(sorted(defines.items())))
        prog = self._programs.get(key)
        if prog is None:
            prog = compile_compute(self.ctx, name, defines)
            self._programs[key] = prog
            self.program_names[id(prog)] = name
        return prog

    def scratch(self, name: str, nbytes: int, zeroed: bool = False):
        """A launcher-owned buffer of at least nbytes, reused between calls (grown when too
        small; made zeroed with ``zeroed``, else uninitialised)."""
        buf = self._scratch.get(name)
        if buf is None or buf.size < nbytes:
            if buf is not None:
                buf.release()
                self.generation += 1
            buf = self.ctx.buffer(bytes(nbytes)) if zeroed else self.ctx.buffer(reserve=max(16, nbytes))
            self._scratch[name] = buf
        return buf

    def bind(self, buf, binding: int) -> None:
        """Bind ``buf`` (a buffer or a ``BufferSlice``) as shader storage block ``binding``. Every
        launcher binds through here (or ``bind_ubo``, ``call``), so a recording sees it."""
        buf.bind_to_storage_buffer(binding)
        if self.recording is not None:
            self.recording.append(partial(buf.bind_to_storage_buffer, binding))

    def bind_ubo(self, buf, binding: int, **range_: int) -> None:
        """Bind ``buf`` as uniform block ``binding`` (``offset``/``size`` as moderngl takes them)."""
        buf.bind_to_uniform_block(binding, **range_)
        if self.recording is not None:
            self.recording.append(partial(buf.bind_to_uniform_block, binding, **range_))

    def call(self, bind) -> None:
        """Run a prepared bind (a launcher's kept launch), recorded like ``bind``."""
        bind()
        if self.recording is not None:
            self.recording.append(bind)

    def run(self, prog, gx: int, gy: int = 1, gz: int = 1, **uniforms: object) -> None:
        """Set ``uniforms`` on ``prog`` and dispatch (gx, gy, gz) work groups (none in a dry run,
        or when a count is 0)."""
        # a program keeps its uniforms between dispatches: write only those that changed
        # (~7 us of Python each, ~10 per dispatch; most stay the same from token to token)
        last = self._uniforms.setdefault(id(prog), {})
        for k, v in uniforms.items():
            if k not in last or last[k] != v:
                prog[k] = v
                last[k] = v
        limit = self.glctx.limits.max_group_count
        if gx > limit[0] or gy > limit[1] or gz > limit[2]:
            raise BackendError(f"dispatch ({gx}, {gy}, {gz}) exceeds GL_MAX_COMPUTE_WORK_GROUP_COUNT {limit}")
        if gx and gy and gz and not self.dry_run:
            prog.run(gx, gy, gz)
        if self.recording is not None:
            self.recording.append(partial(_run_again, self, prog, gx, gy, gz, uniforms))

    def barrier(self) -> None:
        """Make SSBO writes of earlier dispatches visible to later ones.

        Not on a CPU renderer: there a dispatch has finished writing when glDispatchCompute
        returns, and llvmpipe implements glMemoryBarrier as a full glFinish, which inside a game
        waits for the rasterizer threads still drawing the last frame (0.02 ms median, but up
        to 150 ms, measured in the sample game)."""
        if not self.software:
            self.ctx.memory_barrier()
            if self.recording is not None:
                self.recording.append(self.ctx.memory_barrier)

    def release(self) -> None:
        """Free the compiled programs and scratch buffers (they are made on demand again)."""
        for obj in [*self._programs.values(), *self._scratch.values()]:
            obj.release()
        self._programs.clear()
        self._uniforms.clear()
        self._scratch.clear()
        self.program_names.clear()
