#version 430
// rmsnorm.comp: out[t, i] = x[t, i] / sqrt(mean_j(x[t, j]^2) + eps) * weight[i]
//
// Threads: one work group per token row; WG_SIZE invocations stride over the row, the sum of
//          squares is reduced in shared memory (a float tree, no atomics), so any dim works.
// Buffers: 0 x      (n_tokens, dim) f32   readonly
//          1 weight (dim,) f32            readonly
//          2 out    (n_tokens, dim) f32   writeonly (may not alias x)
// Twin:    cpu.rmsnorm
#ifndef WG_SIZE
#define WG_SIZE 256
#endif
layout(local_size_x = WG_SIZE) in;
layout(std430, binding = 0) readonly buffer XBuf { float x[]; };
layout(std430, binding = 1) readonly buffer WeightBuf { float weight[]; };
layout(std430, binding = 2) writeonly buffer OutBuf { float outv[]; };
uniform uint dim;
uniform float eps;
shared float partial[WG_SIZE];

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint row = gl_WorkGroupID.x * dim;
    float ss = 0.0;
    for (uint i = tid; i < dim; i += WG_SIZE) ss += x[row + i] * x[row + i];
    partial[tid] = ss;
    barrier();
    for (uint s = WG_SIZE / 2u; s > 0u; s >>= 1) {
        if (tid < s) partial[tid] += partial[tid + s];
        barrier();
    }
    float scale = inversesqrt(partial[0] / float(dim) + eps);
    for (uint i = tid; i < dim; i += WG_SIZE) outv[row + i] = x[row + i] * scale * weight[i];
}
