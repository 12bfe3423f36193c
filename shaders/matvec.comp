#version 430
// matvec.comp: dst[t, r] (+)= scale * sum_c W[r, c] * x[t, c]   (W: rows x cols, GGML blocks of QUANT_*)
//
// Threads: x = one invocation per NR consecutive rows; each decoded x block is reused for NR rows.
//          y = token t (n_tokens = 1 is the decode mat-vec, T > 1 the batched prefill).
// Buffers: 0 W   (rows of this part: raw GGUF bytes, or REPACKED groups of 4 blocks)  readonly
//          1 x   (n_tokens, cols) f32, read as vec4             readonly (a UBO if X_VEC4S)
//          2 dst (n_tokens, dst_stride) f32; read too when accumulate = 1 (residual: dst += W x)
//          3, 4  with LORA: B and A x of a fused LoRA delta (below)
// Uniforms: rows row_begin..row_end of this buffer part, written to dst column part_row0 + r.
// REPACKED (Q4_0/Q4_1/Q8_0): per block, 8 x vec4s are loaded once and dotted with NR rows'
// blocks by dq_dot32 (two uvec4-aligned loads per block instead of ~17 unaligned words).
// Twin:    quant.matmul (x @ W.T)
#ifndef NR
#define NR 4
#endif
#ifndef WG_SIZE
#error WG_SIZE is set by its launcher (gl/matvec_ops.MATVEC_WG)
#endif
layout(local_size_x = WG_SIZE) in;
layout(std430, binding = 0) readonly restrict buffer WBuf { uint W[]; };
#ifdef REPACKED
layout(std430, binding = 0) readonly restrict buffer WBuf4 { uvec4 W4[]; };  // the same buffer
#define DQ_VEC4_LOADS
#endif
#ifdef X_VEC4S
// decode (n_tokens = 1, cols <= 4096): x as a uniform block. Every invocation reads the same x,
// and llvmpipe loads uniform-block values once per SIMD batch instead of once per lane.
layout(std140, binding = 1) uniform XBuf { vec4 x4[X_VEC4S]; };
#else
layout(std430, binding = 1) readonly restrict buffer XBuf { vec4 x4[]; };
#endif
layout(std430, binding = 2) buffer DstBuf { float dst[]; };
uniform uint row_begin;
uniform uint row_end;
uniform uint part_row0;
uniform uint cols;
uniform uint dst_stride;
uniform uint accumulate;
uniform float scale;  // 1 for weights; the LoRA scale for the B (A x) half of an adapter
#ifdef LORA
// A LoRA delta fused into a decode mat-vec (n_tokens = 1): dst[r] (+)= W[r] . x + lora_scale *
// B[r] . ax, with ax = A x computed by an earlier dispatch. Saves the B dispatch per projection.
// B is read as int8 with a scale per row: 1 + rank/4 words a row instead of rank (each lane
// loads its own row's words one by one on llvmpipe).
// B per row: its largest |value| (f32 bits), then the row as int8 (value * 127 / that), 4 per word
layout(std430, binding = 3) readonly restrict buffer LoraB { uint lora_b[]; };  // (rows, 1 + lora_quads)
#ifdef LORA_AX_VEC4S
// A x as a uniform block: every lane reads the same values (loaded once per SIMD batch on llvmpipe)
layout(std140, binding = 4) uniform LoraAx { vec4 lora_ax[LORA_AX_VEC4S]; };
#else
layout(std430, binding = 4) readonly restrict buffer LoraAx { vec4 lora_ax[]; };  // (4 * lora_quads,) f32
#endif
uniform uint lora_quads;  // the padded rank / 4
uniform uint lora_ax_quad0;  // where this projection's A x starts (A factors stacked per input)
uniform float lora_scale;
#endif
#include "common/dequant.glsl"

void main() {
    uint r0 = row_begin + gl_GlobalInvocationID.x * NR;
    if (r0 >= row_end) return;
    uint t = gl_GlobalInvocationID.y;
    uint nb = cols / QK;
    uint row_bytes = nb * BLOCK_BYTES;
    uint xq = t * (cols / 4u);

#ifdef REPACKED
    uint b0[NR];  // flat block index of each row's first block
    float acc[NR];
    for (uint r = 0u; r < NR; r++) {
        b0[r] = min(r0 + r, row_end - 1u) * nb;  // tail rows repeat the last row, unwritten
        acc[r] = 0.0;
    }
    for (uint ib = 0u; ib < nb; ib++) {
        vec4 xs[8];
        for (uint j = 0u; j < 8u; j++) xs[j] = x4[xq + ib * 8u + j];
        float sx = dot(((xs[0] + xs[1]) + (xs[2] + xs[3])) + ((xs[4] + xs[5]) + (xs[6] + xs[7])), vec4(1.0));
        for (uint r = 0u; r < NR; r++) acc[r] += dq_dot32(b0[r] + ib, xs, sx);
    }
#else
    uint base[NR];
    float acc[NR];
    for (uint r = 0u; r < NR; r++) {
        base[r] = min(r0 + r, row_end - 1u) * row_bytes;  // tail rows repeat the last row, unwritten
        acc[r] = 0.0;
    }
    for (uint ib = 0u; ib < nb; ib++) {
        uvec4 head[NR];
        for (uint r = 0u; r < NR; r++) head[r] = dq_head(base[r] + ib * BLOCK_BYTES);
        for (uint g = 0u; g < QK / 8u; g++) {
            uint xi = xq + (ib * QK + g * 8u) / 4u;
            vec4 xa = x4[xi], xb = x4[xi + 1u];
            for (uint r = 0u; r < NR; r++) {
                vec4 lo, hi;
                dequant8(base[r] + ib * BLOCK_BYTES, head[r], g, lo, hi);
                acc[r] += dot(lo, xa) + dot(hi, xb);
            }
        }
    }
#endif
#ifdef LORA
    for (uint r = 0u; r < NR; r++) {
        uint row = part_row0 + min(r0 + r, row_end - 1u);  // B is indexed by the weight's row
        uint b = row * (1u + lora_quads);
        float d = 0.0;
        for (uint k = 0u; k < lora_quads; k++) d += dot(unpackSnorm4x8(lora_b[b + 1u + k]), lora_ax[lora_ax_quad0 + k]);
        acc[r] += lora_scale * uintBitsToFloat(lora_b[b]) * d;
    }
#endif
    for (uint r = 0u; r < NR; r++) {
        if (r0 + r < row_end) {
            uint o = t * dst_stride + part_row0 + r0 + r;
            dst[o] = accumulate != 0u ? dst[o] + scale * acc[r] : scale * acc[r];
        }
    }
}
