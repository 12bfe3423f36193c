#version 430
// swiglu.comp: out[i] = silu(h1[i]) * h3[i],  silu(v) = v / (1 + exp(-v))
//
// Threads: one invocation per element.
// Buffers: 0 h1 (n,) f32 readonly, 1 h3 (n,) f32 readonly, 2 out (n,) f32 writeonly (may be h1's
//          buffer only through a separate binding of the same data: llama2.c writes into hb)
// Twin:    cpu.swiglu
#ifndef WG_SIZE
#define WG_SIZE 64
#endif
layout(local_size_x = WG_SIZE) in;
layout(std430, binding = 0) readonly buffer H1Buf { float h1[]; };
layout(std430, binding = 1) readonly buffer H3Buf { float h3[]; };
layout(std430, binding = 2) writeonly buffer OutBuf { float outv[]; };
uniform uint n;

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= n) return;
    float v = h1[i];
    outv[i] = v / (1.0 + exp(-v)) * h3[i];
}
