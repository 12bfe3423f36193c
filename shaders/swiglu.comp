#version 430
// swiglu.comp: out[i] = silu(h1[i]) * h3[i],  silu(v) = v / (1 + exp(-v))
//
// Threads: one invocation per element. With lora_rows > 0 (a decode token's fused LoRA delta on
//          w2), each work group also adds its WG_SIZE elements' part of A out (common/lora_a.glsl).
// Buffers: 0 h1 (n,) f32 readonly, 1 h3 (n,) f32 readonly, 2 out (n,) f32 writeonly (may be h1's
//          buffer only through a separate binding of the same data: llama2.c writes into hb)
//          3, 4 with lora_rows > 0: A and its work buffer (common/lora_a.glsl)
// Twin:    cpu_ops.swiglu (cpu_ops.geglu with GELU=1)
#ifndef WG_SIZE
#error WG_SIZE is set by its launcher (gl/layer_ops.SWIGLU_WG)
#endif
#define LORA_A_BINDING 3
#define LORA_WORK_BINDING 4
#ifndef LORA_CHUNK
#error LORA_CHUNK is set by its launcher (gl/layer_ops.SWIGLU_LORA_CHUNK)
#endif
#ifndef GELU
#define GELU 0
#endif
layout(local_size_x = WG_SIZE) in;
layout(std430, binding = 0) readonly buffer H1Buf { float h1[]; };
layout(std430, binding = 1) readonly buffer H3Buf { float h3[]; };
layout(std430, binding = 2) writeonly buffer OutBuf { float outv[]; };
uniform uint n;
uniform uint chunk;  // elements per work group: WG_SIZE, or up to LORA_CHUNK with lora_rows > 0
#include "common/lora_a.glsl"

void main() {
    uint c0 = gl_WorkGroupID.x * chunk, c1 = min(n, c0 + chunk);
    for (uint i = c0 + gl_LocalInvocationID.x; i < c1; i += WG_SIZE) {
        float v = h1[i];
#if GELU  // GeGLU (Gemma): tanh-approximate GELU; tanh's argument clamped (exp would overflow)
        float u = clamp(0.7978845608 * (v + 0.044715 * v * v * v), -15.0, 15.0);
        float out_i = 0.5 * v * (1.0 + tanh(u)) * h3[i];
#else
        float out_i = v / (1.0 + exp(-v)) * h3[i];
#endif
        outv[i] = out_i;
        if (lora_rows > 0u) lora_x[i - c0] = out_i;
    }
    if (lora_rows > 0u) lora_a_part(c0, c1 - c0, gl_WorkGroupID.x, gl_NumWorkGroups.x);
}
