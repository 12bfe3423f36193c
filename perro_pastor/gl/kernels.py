"""Kernel launchers: one Python call per shader in ``shaders/``, named after the op.

Each launcher binds buffers to the fixed roles the shader header lists, sets its uniforms and
dispatches. Shapes are passed explicitly so a narrated forward pass reads like llama2.c:

    kernels.rmsnorm(s.xb, s.x, w.rms_att_weight, dim=cfg.dim, eps=cfg.rms_eps)
    kernels.matvec(s.q, w.wq, s.xb)

``Kernels`` is plain composition: one ``Dispatcher`` (programs, scratch, the dispatch call) shared
by four groups of launchers (``fused``: the decode mat-vec with its norm, gate and stacking), whose launchers it offers under their op names.
"""

from __future__ import annotations

from .context import GLContext
from .dispatcher import Dispatcher
from .fused_ops import FusedOps
from .layer_ops import LayerOps
from .matvec_ops import MATMUL_MIN_TOKENS, MatvecOps
from .sampling_ops import SamplingOps


class Kernels:
    """Every launcher of the gl backend for one GL context (``gpu``: what they share)."""

    def __init__(self, glctx: GLContext, *, max_weights_per_dispatch: int | None = None,
                 matvec_rows_per_invocation: int = 8, matvec_x_ubo: bool = True,
                 max_macs_per_dispatch: int | None = None,
                 matmul_min_tokens: int = MATMUL_MIN_TOKENS, matmul_lanes: bool | None = None) -> None:
        self.glctx = glctx
        self.gpu = Dispatcher(glctx)
        self.matvecs = MatvecOps(self.gpu, max_weights_per_dispatch=max_weights_per_dispatch,
                                 matvec_rows_per_invocation=matvec_rows_per_invocation,
                                 matvec_x_ubo=matvec_x_ubo, max_macs_per_dispatch=max_macs_per_dispatch,
                                 matmul_min_tokens=matmul_min_tokens, matmul_lanes=matmul_lanes)
        self.layer_ops = LayerOps(self.gpu)
        self.fused = FusedOps(self.gpu, self.matvecs.max_weights_per_dispatch)  # decode: norm + projections
        self.sampling = SamplingOps(self.gpu)

        # the launchers, by op name
        self.embedding = self.matvecs.embedding
        self.matvec = self.matvecs.matvec
        self.matmul = self.matvecs.matmul
        self.lora = self.matvecs.lora
        self.lora_ax = self.matvecs.lora_ax
        self.dispatch_shape = self.matvecs.dispatch_shape
        self.rmsnorm = self.layer_ops.rmsnorm
        self.rope = self.layer_ops.rope
        self.attention = self.layer_ops.attention
        self.swiglu = self.layer_ops.swiglu
        self.add = self.layer_ops.add
        self.argmax = self.sampling.argmax
        self.sample = self.sampling.sample

    def release(self) -> None:
        """Free the compiled programs and launcher scratch (they are made on demand again)."""
        self.matvecs.release()
        self.fused.release()
        self.gpu.release()


__all__ = ["Kernels"]
