"""The GL side of the backend: a moderngl context checked for compute, plus its limits.

The engine is a guest in a game's GL context, so it accepts the host's ``moderngl.Context``; tests
and tools create a headless one through EGL. Everything that depends on the driver (GL version,
SSBO size, work-group limits) is read once here, so a driver that cannot run the kernels gives one
clear ``BackendError`` at start-up instead of a compile error later.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BackendError

REQUIRED_VERSION = 430

# GL enums (not all are exported by moderngl).
GL_MAX_SHADER_STORAGE_BLOCK_SIZE = 0x90DE
GL_MAX_COMPUTE_WORK_GROUP_INVOCATIONS = 0x90EB
GL_MAX_COMPUTE_SHARED_MEMORY_SIZE = 0x8262
GL_MAX_COMPUTE_WORK_GROUP_COUNT = 0x91BE
GL_MAX_COMPUTE_WORK_GROUP_SIZE = 0x91BF

# What our kernels need at least (GL 4.3 guarantees all of these).
MIN_SSBO_BLOCK_SIZE = 1 << 24  # 16 MiB, the GL 4.3 minimum
MIN_INVOCATIONS = 256
MIN_SHARED_MEMORY = 16384
SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast", "swiftshader")
# On a CPU renderer a new buffer costs ~1.2 ms per MB (allocated and faulted in) inside one GL
# call, so weights go up in parts of at most this size there: no loading step stalls a frame on
# one big allocation (the default model's 28.7 MB embedding was one 50 ms step).
SOFTWARE_PART_BYTES = 2 << 20


@dataclass(frozen=True)
class GLLimits:
    """Driver limits the launchers size their dispatches and buffers with."""

    version: int  # e.g. 450
    renderer: str
    max_ssbo_block_size: int  # bytes one SSBO binding may expose
    max_invocations: int  # per work group
    max_group_size: tuple[int, int, int]
    max_group_count: tuple[int, int, int]
    max_shared_memory: int  # bytes of shared memory per work group

    @property
    def software(self) -> bool:
        """A CPU rasterizer (llvmpipe, softpipe, SwiftShader): dispatches run synchronously on the
        host's cores, so the launchers keep each one short enough for a frame budget."""
        return is_software_renderer(self.renderer)


def is_software_renderer(renderer: str) -> bool:
    """True for a ``GL_RENDERER`` string naming a CPU rasterizer (llvmpipe, softpipe, SwiftShader)."""
    name = renderer.lower()
    return any(s in name for s in SOFTWARE_RENDERERS)


def create_headless_context():
    """A standalone GL 4.3+ context through EGL (no window, works on llvmpipe)."""
    import moderngl

    try:
        return moderngl.create_standalone_context(require=REQUIRED_VERSION, backend="egl")
    except Exception as exc:
        raise BackendError(
            f"cannot create a headless OpenGL {REQUIRED_VERSION // 100}.{REQUIRED_VERSION % 100 // 10} "
            f"context through EGL: {exc}"
        ) from None


def read_limits(ctx) -> GLLimits:
    """Read version and compute limits from ``ctx``; ``BackendError`` if compute can't work here."""
    version = int(getattr(ctx, "version_code", 0) or 0)
    info = ctx.info
    renderer = str(info.get("GL_RENDERER", "unknown"))
    if version < REQUIRED_VERSION:
        raise BackendError(
            f"OpenGL {version // 100}.{version % 100 // 10} on {renderer!r} has no compute shaders: "
            f"the gl backend needs OpenGL 4.3 (GL_VERSION={info.get('GL_VERSION', '?')!r}); "
            "use backend='cpu'"
        )

    ssbo = info.get("GL_MAX_SHADER_STORAGE_BLOCK_SIZE")
    if ssbo is None:
        ssbo = _query_int(GL_MAX_SHADER_STORAGE_BLOCK_SIZE)
    # moderngl's info has no shared-memory size; ask GL directly on the current context.
    shared = info.get("GL_MAX_COMPUTE_SHARED_MEMORY_SIZE")
    if shared is None:
        shared = _query_int(GL_MAX_COMPUTE_SHARED_MEMORY_SIZE)
        if shared is None:  # no PyOpenGL: GL 4.3 guarantees 32 KiB
            shared = 32768
    limits = GLLimits(
        version=version,
        renderer=renderer,
        max_ssbo_block_size=int(ssbo or 0),
        max_invocations=int(info.get("GL_MAX_COMPUTE_WORK_GROUP_INVOCATIONS", 0) or 0),
        max_group_size=_triple(info.get("GL_MAX_COMPUTE_WORK_GROUP_SIZE")),
        max_group_count=_triple(info.get("GL_MAX_COMPUTE_WORK_GROUP_COUNT")),
        max_shared_memory=int(shared or 0),
    )
    check_limits(limits)
    return limits


def _triple(value) -> tuple[int, int, int]:
    if isinstance(value, (tuple, list)) and len(value) == 3:
        return (int(value[0]), int(value[1]), int(value[2]))
    return (0, 0, 0)


def _query_int(enum: int) -> int | None:
    """glGetInteger64v through PyOpenGL on the current context (moderngl lacks some enums)."""
    try:
        from OpenGL import GL  # noqa: PLC0415

        return int(GL.glGetIntegerv(enum))
    except Exception:
        return None


def check_limits(limits: GLLimits) -> None:
    """``BackendError`` naming each limit that is below what the kernels need."""
    problems = []
    if limits.max_ssbo_block_size < MIN_SSBO_BLOCK_SIZE:
        problems.append(f"GL_MAX_SHADER_STORAGE_BLOCK_SIZE={limits.max_ssbo_block_size} < {MIN_SSBO_BLOCK_SIZE}")
    if limits.max_invocations < MIN_INVOCATIONS:
        problems.append(f"GL_MAX_COMPUTE_WORK_GROUP_INVOCATIONS={limits.max_invocations} < {MIN_INVOCATIONS}")
    if limits.max_group_size[0] < MIN_INVOCATIONS:
        problems.append(f"GL_MAX_COMPUTE_WORK_GROUP_SIZE[0]={limits.max_group_size[0]} < {MIN_INVOCATIONS}")
    if min(limits.max_group_count) < 65535:
        problems.append(f"GL_MAX_COMPUTE_WORK_GROUP_COUNT={limits.max_group_count} < 65535")
    if limits.max_shared_memory < MIN_SHARED_MEMORY:
        problems.append(f"GL_MAX_COMPUTE_SHARED_MEMORY_SIZE={limits.max_shared_memory} < {MIN_SHARED_MEMORY}")
    if problems:
        raise BackendError(f"OpenGL driver {limits.renderer!r} limits too small for the gl backend: " + "; ".join(problems))


class GLContext:
    """A moderngl context (the host's or a headless one) with its checked limits."""

    def __init__(self, ctx=None, *, max_ssbo_bytes: int | None = None) -> None:
        self.ctx = ctx if ctx is not None else create_headless_context()
        self.owned = ctx is None
        self.limits = read_limits(self.ctx)
        # Injectable so tests can force weight tensors to split across several buffers.
        self.max_ssbo_bytes = max_ssbo_bytes or self.limits.max_ssbo_block_size
        # the largest buffer one weight part gets (weights split by whole rows above it)
        self.weight_part_bytes = (min(self.max_ssbo_bytes, SOFTWARE_PART_BYTES) if self.limits.software
                                  else self.max_ssbo_bytes)
        # GL objects whose owner was garbage-collected: a finalizer may run on any thread, where
        # GL calls are not allowed, so it only queues them here and the GL thread frees them
        self._orphans: list = []

    def release_later(self, objects: list) -> None:
        """Queue GL objects for ``release_orphans`` (safe from any thread: one list append)."""
        self._orphans.extend(objects)

    def release_orphans(self) -> None:
        """Free the queued GL objects; call on the GL thread (each pass and new cache does)."""
        while self._orphans:
            self._orphans.pop().release()

    def check_error(self, where: str = "") -> None:
        """Raise ``BackendError`` if GL recorded an error (reading it clears it)."""
        err = self.ctx.error
        if err != "GL_NO_ERROR":
            raise BackendError(f"OpenGL error {err} {where}".strip())

    def release(self) -> None:
        self.release_orphans()
        if self.owned:
            self.ctx.release()


def assert_no_gl_error(ctx) -> None:
    """Test helper: ``ctx.error`` (moderngl context or GLContext) must be ``GL_NO_ERROR``."""
    raw = ctx.ctx if isinstance(ctx, GLContext) else ctx
    err = raw.error
    assert err == "GL_NO_ERROR", f"GL error: {err}"
