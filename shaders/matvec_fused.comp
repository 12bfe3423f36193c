#version 430
// matvec_fused.comp: a decode token's mat-vec with the work around it fused in, for GPUs.
//
//   dst_w[r] (+)= inv_rms * sum_c W_w[r, c] * x[c] * norm[c]      (each weight w < N_W)
//
//   NORM 1:  x is the residual stream, RMS-normalized here (inv_rms = 1 / sqrt(mean(x^2) + eps),
//            times the norm's weight): the block's pre-norm needs no dispatch of its own.
//            NORM 0: x is used as it is (inv_rms = 1, no norm weight).
//   N_W 3:   the rows of three weights of one type (wq, wk, wv) stacked in one dispatch, each
//            written to its own dst; a work group's rows all belong to one weight.
//   GATE 1:  two weights (w1, w3) read with the same row: dst[r] = act(W_0 x)[r] * (W_1 x)[r],
//            act = SiLU (SwiGLU), or tanh-GELU with GELU 1 (Gemma's GeGLU).
//   accumulate = 1: dst[r] += ..., the residual add of wo and w2.
//
// Threads: a work group of WG_SIZE invocations makes ROWS rows; the LANES = WG_SIZE / ROWS
//          invocations of a row take every LANES-th group of 8 weights of it (consecutive lanes
//          read consecutive bytes), and a tree in shared memory adds the lanes up. x (one token)
//          is staged in shared memory once per work group, its squares summed on the way.
//          matvec.comp (one invocation per row) suits CPU rasterizers; a GPU wants many
//          invocations per row: on an H200 the decode mat-vecs of matvec.comp left the GPU idle.
// Buffers: 0 .. N_W-1  W_w  (rows_w, cols) raw GGUF blocks (or REPACKED, common/dequant.glsl)
//          3  x     (cols,) f32, read as vec4                        readonly
//          4  norm  (cols,) f32 (NORM 1)                             readonly
//          5 .. 5+N_W-1 dst_w (rows_w,) f32 (GATE: one dst)
// Uniforms: rows0, rows1 (rows of W_0, W_1 when stacked), rows_total, tile0 (first row tile of
//           this dispatch), cols, eps, accumulate.
// Twin:    gl/fused_ops.fused_matvec_reference (cpu_ops.rmsnorm, quant.matmul, cpu_ops.swiglu)
#ifndef WG_SIZE
#error WG_SIZE is set by its launcher (gl/fused_ops.FUSED_WG)
#endif
#ifndef ROWS
#error ROWS is set by its launcher (gl/fused_ops.FUSED_ROWS)
#endif
#ifndef XS_VEC4S
#error XS_VEC4S (cols / 4) is set by its launcher
#endif
#ifndef N_W
#define N_W 1
#endif
#ifndef NORM
#define NORM 0
#endif
#ifndef GATE
#define GATE 0
#endif
#ifndef GELU
#define GELU 0
#endif
#define LANES (WG_SIZE / ROWS)
#if GATE
#define N_DST 1
#else
#define N_DST N_W
#endif
layout(local_size_x = WG_SIZE) in;
// One block per weight, indexed by `wsel` below (the same for a whole work group).
layout(std430, binding = 0) readonly restrict buffer WBuf { uint words[]; } wbuf[N_W];
layout(std430, binding = 3) readonly restrict buffer XBuf { vec4 x4[]; };
layout(std430, binding = 4) readonly restrict buffer NormBuf { vec4 norm4[]; };
layout(std430, binding = 5) restrict buffer DstBuf { float v[]; } dst[N_DST];
uniform uint rows0;
uniform uint rows1;
uniform uint tile0;
uniform uint rows_total;  // rows of all N_W weights together
uniform uint cols;
uniform float eps;
uniform uint accumulate;

uint wsel;  // which weight the decode functions read
#define W wbuf[wsel].words
#include "common/dequant.glsl"

shared vec4 xs4[XS_VEC4S];
shared float red0[WG_SIZE];
#if GATE
shared float red1[WG_SIZE];
#endif

// sum over this lane's groups of 8 weights of row `row` of the selected weight, times xs
float row_part(uint row, uint lane) {
    uint row_base = row * (cols / QK) * BLOCK_BYTES;
    float acc = 0.0;
    for (uint i = lane; i < cols / 8u; i += LANES) {
        uint blk = row_base + (i / (QK / 8u)) * BLOCK_BYTES;
        vec4 lo, hi;
        dequant8(blk, dq_head(blk), i % (QK / 8u), lo, hi);
        acc += dot(lo, xs4[2u * i]) + dot(hi, xs4[2u * i + 1u]);
    }
    return acc;
}

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint lane = tid % LANES;

    // x into shared memory (times the norm's weight), and its sum of squares
    float ss = 0.0;
    for (uint i = tid; i < cols / 4u; i += WG_SIZE) {
        vec4 xv = x4[i];
        ss += dot(xv, xv);
#if NORM
        xv *= norm4[i];
#endif
        xs4[i] = xv;
    }
    red0[tid] = ss;
    barrier();
#if NORM
    for (uint s = WG_SIZE / 2u; s > 0u; s >>= 1) {
        if (tid < s) red0[tid] += red0[tid + s];
        barrier();
    }
    float inv_rms = inversesqrt(red0[0] / float(cols) + eps);
    barrier();  // everyone has read red0[0] before it is reused
#else
    float inv_rms = 1.0;
#endif

    // which weight this work group's rows belong to, and the row within it
    uint row = (tile0 + gl_WorkGroupID.x) * ROWS + tid / LANES;
    bool live = row < rows_total;  // the last tile may run past the end
    wsel = 0u;
#if N_W == 3
    if (row >= rows0 + rows1) { wsel = 2u; row -= rows0 + rows1; }
    else if (row >= rows0) { wsel = 1u; row -= rows0; }
#endif
    red0[tid] = live ? row_part(row, lane) : 0.0;
#if GATE
    wsel = 1u;
    red1[tid] = live ? row_part(row, lane) : 0.0;
#endif
    barrier();
    for (uint s = LANES / 2u; s > 0u; s >>= 1) {
        if (lane < s) {
            red0[tid] += red0[tid + s];
#if GATE
            red1[tid] += red1[tid + s];
#endif
        }
        barrier();
    }
    if (lane != 0u || !live) return;
    float y = inv_rms * red0[tid];
#if GATE
    float up = inv_rms * red1[tid];
#if GELU  // tanh-approximate GELU; tanh's argument clamped (exp would overflow)
    float u = clamp(0.7978845608 * (y + 0.044715 * y * y * y), -15.0, 15.0);
    y = 0.5 * y * (1.0 + tanh(u)) * up;
#else
    y = y / (1.0 + exp(-y)) * up;
#endif
    dst[0].v[row] = accumulate != 0u ? dst[0].v[row] + y : y;
#else
    dst[wsel].v[row] = accumulate != 0u ? dst[wsel].v[row] + y : y;
#endif
}
