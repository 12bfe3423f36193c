#version 430
// rmsnorm.comp: out[t, i] = x[t, i] / sqrt(mean_j(x[t, j]^2) + eps) * weight[i]
//
// Threads: work group (gl_WorkGroupID.x, token t) writes columns [x * chunk, (x + 1) * chunk) of
//          row t (chunk = dim: one group per row); its WG_SIZE invocations stride over them.
//          Each group sums the whole row's squares (a float tree in shared memory, no atomics),
//          so any dim works. A decode token with a fused LoRA delta runs chunks of at most
//          LORA_CHUNK columns, and each group also adds its chunk's part of A out
//          (common/lora_a.glsl).
// Buffers: 0 x      (n_tokens, dim) f32   readonly
//          1 weight (dim,) f32            readonly
//          2 out    (n_tokens, dim) f32   writeonly (may not alias x)
//          3, 4     with lora_rows > 0: A and its work buffer (common/lora_a.glsl)
// Twin:    cpu.rmsnorm
#ifndef WG_SIZE
#error WG_SIZE is set by its launcher (gl/layer_ops.RMSNORM_WG)
#endif
#define LORA_A_BINDING 3
#define LORA_WORK_BINDING 4
#ifndef LORA_CHUNK
#error LORA_CHUNK is set by its launcher (gl/layer_ops.RMSNORM_LORA_CHUNK)
#endif
layout(local_size_x = WG_SIZE) in;
layout(std430, binding = 0) readonly buffer XBuf { float x[]; };
layout(std430, binding = 1) readonly buffer WeightBuf { float weight[]; };
layout(std430, binding = 2) writeonly buffer OutBuf { float outv[]; };
uniform uint dim;
uniform uint chunk;  // columns per work group: dim, or WG_SIZE with lora_rows > 0
uniform float eps;
shared float partial[WG_SIZE];
#include "common/lora_a.glsl"

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint row = gl_WorkGroupID.y * dim;
    float ss = 0.0;
    for (uint i = tid; i < dim; i += WG_SIZE) ss += x[row + i] * x[row + i];
    partial[tid] = ss;
    barrier();
    for (uint s = WG_SIZE / 2u; s > 0u; s >>= 1) {
        if (tid < s) partial[tid] += partial[tid + s];
        barrier();
    }
    float scale = inversesqrt(partial[0] / float(dim) + eps);
    uint c0 = gl_WorkGroupID.x * chunk, c1 = min(dim, c0 + chunk);
    for (uint i = c0 + tid; i < c1; i += WG_SIZE) outv[row + i] = x[row + i] * scale * weight[i];
    if (lora_rows > 0u) {  // chunk <= LORA_CHUNK
        for (uint i = c0 + tid; i < c1; i += WG_SIZE) lora_x[i - c0] = x[row + i] * scale * weight[i];
        lora_a_part(c0, c1 - c0, gl_WorkGroupID.x, gl_NumWorkGroups.x);
    }
}
