"""Decode passes that run ahead of the CPU: a session's next pass starts on the GPU before the
CPU has read the token the last pass drew.

With the token drawn on the GPU (``sample.comp``), the only thing a decode pass needs from the
CPU is the id of its input token. Without run-ahead the CPU reads that id after the pass's fence
signals and writes it back for the next pass, so in a game's frame loop each token costs a
pass's submission *and* the wait for the GPU to finish it: one token a 60 Hz frame on an H200 at
a 4 ms budget (docs/figures/gl_h200_frame_loop.jsonl). Here the next pass copies the id on the
GPU instead (``glCopyBufferSubData``: into the token buffer the embedding reads, and into the last
entry of its sampling penalty window), and the CPU learns each id one pass later, from a ring of
drawn ids, without waiting (each pass has its own fence).

A drawn id lives in the ring until it is read: ``RING`` slots, more than the scheduler ever
keeps in flight (two). Each slot is a buffer of its own: reading a buffer waits for every GPU
write queued to it, and with one shared buffer the read of pass t's id would wait for pass t+1
to finish too.
"""

from __future__ import annotations

import numpy as np

from .fences import Fences

RING = 8
GL_BUFFER_UPDATE_BARRIER_BIT = 0x200  # copies read what shaders wrote


class DrawnToken:
    """A token drawn on the GPU that the CPU may not have read yet: its slot in the ring of
    drawn ids (a 4-byte buffer) and the fence after the pass that drew it (``fences.Fences``,
    with nothing placed on a CPU renderer, where a pass has finished when its calls return)."""

    def __init__(self, buffer, fence: Fences) -> None:
        self.buffer, self.fence = buffer, fence

    def ready(self) -> bool:
        """Whether the id can be read without waiting; never waits."""
        return self.fence.ready()

    def read(self) -> int:
        """The id (call when ``ready``; earlier, the read waits for the GPU)."""
        return int(np.frombuffer(self.buffer.read(size=4), np.int32)[0])

    def release(self) -> None:
        """Forget the fence (a dropped pass: nobody will read its id)."""
        self.fence.release()


class DrawnRing:
    """Where drawn ids wait for the CPU: each pass that runs ahead copies its id to the next slot."""

    def __init__(self, ctx, software: bool) -> None:
        self.ctx, self.software = ctx, software
        self.slots = [ctx.buffer(bytes(4)) for _ in range(RING)]
        self.next_slot = 0

    def keep(self, source, source_index: int) -> DrawnToken:
        """Copy the id at ``source[source_index]`` (just written by sample.comp) into the ring's
        next slot and fence the work submitted so far."""
        slot = self.slots[self.next_slot]
        self.next_slot = (self.next_slot + 1) % RING
        self.ctx.memory_barrier(GL_BUFFER_UPDATE_BARRIER_BIT)
        self.ctx.copy_buffer(slot, source, size=4, read_offset=4 * source_index)
        fence = Fences(self.software)
        fence.place()
        return DrawnToken(slot, fence)

    def copy_to(self, drawn: DrawnToken, target, target_index: int) -> None:
        """Write ``drawn``'s id into ``target[target_index]`` on the GPU (in command order: after
        the pass that drew it, before the dispatches that follow)."""
        self.ctx.copy_buffer(target, drawn.buffer, size=4, write_offset=4 * target_index)

    def release(self) -> None:
        for slot in self.slots:
            slot.release()
