#version 430
// matmul_lanes.comp: dst[t, r] (+)= scale * sum_c W[r, c] * x[t, c]   (a batch of tokens: prefill, NPCs
// decoding together; W: rows x cols, GGML blocks of QUANT_*), for GPUs.
//
// Threads: a work group of WG_SIZE = ROWS x LANES invocations makes ROWS rows x TT tokens. The
//          LANES invocations of a row take every LANES-th group of 8 weights of it (consecutive
//          lanes read consecutive bytes); each group is decoded once and dotted with the x of all
//          TT tokens. x is staged in shared memory a chunk of XC columns at a time (TT x XC
//          floats), then the lanes' sums of each row are added up in shared memory.
//          matmul.comp (one invocation per NR rows, 8 to a work group) suits CPU rasterizers; on
//          a GPU it leaves most of the chip idle (H200: prefill 300 tok/s on the default model).
// Buffers: 0 W   (rows, cols) raw GGUF blocks (or REPACKED, common/dequant.glsl), one part readonly
//          1 x   (n_tokens, cols) f32, read as vec4                                   readonly
//          2 dst (n_tokens, dst_stride) f32; read too when accumulate = 1 (residual: dst += W x)
// Uniforms: rows (of W), cols, n_tokens, dst_stride, accumulate, scale (1, or a LoRA's); tile0 / tok_tile0: the first
//           row / token tile of this dispatch.
// Twin:    quant.matmul (x @ W.T)
#ifndef WG_SIZE
#error WG_SIZE is set by its launcher (gl/matvec_ops.LANES_WG)
#endif
#ifndef ROWS
#error ROWS is set by its launcher (gl/matvec_ops.LANES_ROWS)
#endif
#ifndef TT
#define TT 16
#endif
#ifndef XC
#define XC 256  // columns of x staged per chunk (a multiple of 8)
#endif
#define LANES (WG_SIZE / ROWS)
layout(local_size_x = WG_SIZE) in;
layout(std430, binding = 0) readonly restrict buffer WBuf { uint W[]; };
layout(std430, binding = 1) readonly restrict buffer XBuf { vec4 x4[]; };
layout(std430, binding = 2) restrict buffer DstBuf { float dst[]; };
uniform uint rows;
uniform uint cols;
uniform uint n_tokens;
uniform uint dst_stride;
uniform uint accumulate;
uniform float scale;
uniform uint tile0;
uniform uint tok_tile0;
#include "common/dequant.glsl"

shared vec4 xs4[TT * XC / 4u];
shared float red[WG_SIZE * TT];

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint lane = tid % LANES;
    uint row = (tile0 + gl_WorkGroupID.x) * ROWS + tid / LANES;
    uint t0 = (tok_tile0 + gl_WorkGroupID.y) * TT;
    bool live = row < rows;
    uint row_base = min(row, rows - 1u) * (cols / QK) * BLOCK_BYTES;

    float acc[TT];
    for (uint tt = 0u; tt < TT; tt++) acc[tt] = 0.0;

    for (uint c0 = 0u; c0 < cols; c0 += XC) {
        uint width = min(XC, cols - c0);
        // stage x[t0 .. t0+TT, c0 .. c0+width) (tokens past the batch read as 0)
        for (uint i = tid; i < TT * (width / 4u); i += WG_SIZE) {
            uint tt = i / (width / 4u), q = i % (width / 4u);
            xs4[tt * (XC / 4u) + q] = t0 + tt < n_tokens ? x4[(t0 + tt) * (cols / 4u) + c0 / 4u + q] : vec4(0.0);
        }
        barrier();
        for (uint g = lane; g < width / 8u; g += LANES) {
            uint i = c0 / 8u + g;  // this group of 8 in the whole row
            uint blk = row_base + (i / (QK / 8u)) * BLOCK_BYTES;
            vec4 lo, hi;
            dequant8(blk, dq_head(blk), i % (QK / 8u), lo, hi);
            for (uint tt = 0u; tt < TT; tt++) {
                acc[tt] += dot(lo, xs4[tt * (XC / 4u) + 2u * g]) + dot(hi, xs4[tt * (XC / 4u) + 2u * g + 1u]);
            }
        }
        barrier();
    }

    // add up the lanes of each row: invocation (row, lane) then sums tokens lane, lane + LANES, ...
    for (uint tt = 0u; tt < TT; tt++) red[tid * TT + tt] = acc[tt];
    barrier();
    uint row_first = tid - lane;  // invocation of lane 0 of this row
    for (uint tt = lane; tt < TT; tt += LANES) {
        float s = 0.0;
        for (uint l = 0u; l < LANES; l++) s += red[(row_first + l) * TT + tt];
        s *= scale;
        uint t = t0 + tt;
        if (live && t < n_tokens) {
            uint o = t * dst_stride + row;
            dst[o] = accumulate != 0u ? dst[o] + s : s;
        }
    }
}
