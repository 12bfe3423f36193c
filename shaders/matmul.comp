#version 430
// matmul.comp: dst[t, r] (+)= scale * sum_c W[r, c] * x[t, c]   (batched prefill; W: rows x cols, GGML blocks of QUANT_*)
//
// Threads: x = one invocation per NR consecutive rows; y = one work group per tile of TT tokens.
//          Each group of 8 weights (REPACKED: 4 weights of a block whose words were loaded once)
//          is decoded once into registers and dotted with the x of all TT tokens, so the weight
//          gathers and the decode are paid once
//          per TT tokens; matvec.comp with n_tokens = T pays them T times. The x index depends only
//          on the work group and loop counters (never on the lane), so every lane reads the same x.
// Buffers: 0 W   (rows of this part: raw GGUF bytes, or REPACKED groups of 4 blocks)  readonly
//          1 x   (n_tokens, cols) f32, read as vec4                                 readonly
//          2 dst (n_tokens, dst_stride) f32; read too when accumulate = 1 (residual: dst += W x)
// Uniforms: rows row_begin..row_end of this buffer part, written to dst column part_row0 + r;
//           tokens tok_begin..tok_end (the launcher splits long dispatches by rows and tokens).
// Twin:    quant.matmul (x @ W.T)
#ifndef NR
#define NR 2
#endif
#ifndef TT
#define TT 8
#endif
#ifndef WG_SIZE
#error WG_SIZE is set by its launcher (gl/matvec_ops.MATMUL_WG)
#endif
layout(local_size_x = WG_SIZE) in;
layout(std430, binding = 0) readonly restrict buffer WBuf { uint W[]; };
#ifdef REPACKED
layout(std430, binding = 0) readonly restrict buffer WBuf4 { uvec4 W4[]; };  // the same buffer
#define DQ_VEC4_LOADS
#endif
#ifdef X_VEC4S
// x of this dispatch's tokens as a uniform block (the launcher binds rows tok_begin..): llvmpipe
// loads a uniform-block value once per SIMD batch, while an SSBO read inside a loop is a per-lane
// gather even when every lane reads the same address.
layout(std140, binding = 1) uniform XBuf { vec4 x4[X_VEC4S]; };
#else
layout(std430, binding = 1) readonly restrict buffer XBuf { vec4 x4[]; };
#endif
layout(std430, binding = 2) buffer DstBuf { float dst[]; };
uniform uint row_begin;
uniform uint row_end;
uniform uint part_row0;
uniform uint tok_begin;
uniform uint tok_end;
uniform uint cols;
uniform uint dst_stride;
uniform uint accumulate;
uniform float scale;  // 1 for weights; the LoRA scale for the B (A x) half of an adapter
#include "common/dequant.glsl"

void main() {
    uint r0 = row_begin + gl_GlobalInvocationID.x * NR;
    uint t0 = tok_begin + gl_WorkGroupID.y * TT;
    uint nb = cols / QK;
    uint cols4 = cols / 4u;
#ifdef X_VEC4S
    uint xbase = tok_begin;  // the uniform block starts at token tok_begin
#else
    uint xbase = 0u;
#endif
    // x row (in vec4s) of each token of the tile; a tail tile repeats the last token, unwritten
    uint xrow[TT];
    for (uint t = 0u; t < TT; t++) xrow[t] = (min(t0 + t, tok_end - 1u) - xbase) * cols4;
    uint rows[NR];  // tail rows repeat the last row, unwritten
    for (uint r = 0u; r < NR; r++) rows[r] = min(r0 + r, row_end - 1u);
    float acc[NR * TT];
    for (uint i = 0u; i < NR * TT; i++) acc[i] = 0.0;

#ifdef REPACKED
    for (uint ib = 0u; ib < nb; ib++) {
        uvec4 q0[NR], q1[NR];
        vec2 dm[NR];
        for (uint r = 0u; r < NR; r++) dq_load(rows[r] * nb + ib, q0[r], q1[r], dm[r]);
        for (uint j = 0u; j < 8u; j++) {
            vec4 w[NR];  // weights 4j .. 4j+3 of each row's block
            for (uint r = 0u; r < NR; r++) w[r] = dq_quad(q0[r], q1[r], dm[r], j);
            for (uint t = 0u; t < TT; t++) {
                vec4 xj = x4[xrow[t] + ib * 8u + j];
                for (uint r = 0u; r < NR; r++) acc[r * TT + t] += dot(w[r], xj);
            }
        }
    }
#else
    uint row_bytes = nb * BLOCK_BYTES;
    for (uint ib = 0u; ib < nb; ib++) {
        uvec4 head[NR];
        for (uint r = 0u; r < NR; r++) head[r] = dq_head(rows[r] * row_bytes + ib * BLOCK_BYTES);
        for (uint g = 0u; g < QK / 8u; g++) {
            vec4 lo[NR], hi[NR];
            for (uint r = 0u; r < NR; r++) dequant8(rows[r] * row_bytes + ib * BLOCK_BYTES, head[r], g, lo[r], hi[r]);
            uint xc = (ib * QK + g * 8u) / 4u;
            for (uint t = 0u; t < TT; t++) {
                vec4 xa = x4[xrow[t] + xc], xb = x4[xrow[t] + xc + 1u];
                for (uint r = 0u; r < NR; r++) acc[r * TT + t] += dot(lo[r], xa) + dot(hi[r], xb);
            }
        }
    }
#endif
    if (r0 >= row_end) return;
    for (uint t = 0u; t < TT; t++) {
        if (t0 + t >= tok_end) break;
        for (uint r = 0u; r < NR; r++) {
            if (r0 + r < row_end) {
                uint o = (t0 + t) * dst_stride + part_row0 + r0 + r;
                dst[o] = accumulate != 0u ? dst[o] + scale * acc[r * TT + t] : scale * acc[r * TT + t];
            }
        }
    }
}
