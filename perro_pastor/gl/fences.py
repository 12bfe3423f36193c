"""Fences: whether the GPU has finished the work submitted so far, asked without waiting.

On a GPU, ``glDispatchCompute`` only queues work. The pass's one read-back (the logits) would
then block the game's thread until the queue drains: a frame hitch as long as the whole pass.
So the pass places a fence after its last dispatch and yields; the scheduler asks ``poll``
before every step (``glClientWaitSync`` with a zero timeout) and runs no step of this backend
until the fence has signalled, and the read that follows costs only the copy. moderngl has no
sync objects, so this goes through PyOpenGL on the same (current) context.

On a CPU renderer (llvmpipe) a dispatch has finished when the call returns: no fence is placed
and ``ready`` is always True.
"""

from __future__ import annotations

from ..errors import BackendError


class Fences:
    """At most one fence in flight: the backend's is the one after the latest pass's last
    dispatch; a pass run ahead keeps one of its own (``run_ahead.DrawnToken``)."""

    def __init__(self, software: bool) -> None:
        self.software = software
        self._sync = None

    def place(self) -> bool:
        """Fence the work submitted so far and flush it to the GPU. False (nothing placed) on a
        CPU renderer, where there is nothing to wait for."""
        if self.software:
            return False
        from OpenGL import GL  # noqa: PLC0415 -- PyOpenGL: moderngl has no glFenceSync
        self.release()
        self._sync = GL.glFenceSync(GL.GL_SYNC_GPU_COMMANDS_COMPLETE, 0)
        GL.glFlush()  # a fence that is never submitted never signals
        return True

    def ready(self) -> bool:
        """True when no fence is pending or the pending one has signalled; never waits."""
        if self._sync is None:
            return True
        from OpenGL import GL  # noqa: PLC0415
        status = GL.glClientWaitSync(self._sync, 0, 0)
        if status == GL.GL_TIMEOUT_EXPIRED:
            return False
        if status == GL.GL_WAIT_FAILED:
            raise BackendError("glClientWaitSync failed (the GL context was lost?)")
        self.release()
        return True

    def release(self) -> None:
        if self._sync is not None:
            from OpenGL import GL  # noqa: PLC0415
            GL.glDeleteSync(self._sync)
            self._sync = None
