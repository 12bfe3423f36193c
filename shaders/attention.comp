#version 430
// attention.comp: causal grouped-query attention of T query tokens against one layer's KV cache.
//
//   for query head h at position p = pos0 + t, with key/value head g = h / (n_heads / n_kv_heads):
//     s_j = q[t,h] . k[j,g] / sqrt(hs)      for first <= j <= p  (first = p - window + 1 if windowed)
//     out[t,h] = sum_j softmax(s)_j v[j,g]  (softmax with the max subtracted: stable)
//
// Threads: one work group per (head h, token t) = (gl_WorkGroupID.x, .y); invocations stride over
//          positions j for the scores, then over pairs of output features; max and sum are float
//          tree reductions in shared memory.
// Buffers: 0 q       (T, n_heads, hs) f32                                   readonly
//          1 k_cache, 2 v_cache (seq_len, n_kv_heads, hs) f32, or f16 pairs (KV_F16=1), from
//            element cache_base                                            readonly
//          3 att     (n_heads * T, seq_len) f32 scratch: scores, then probabilities
//          4 out     (T, n_heads, hs) f32                                  writeonly
//          5, 6      with lora_rows > 0 (one token: a fused LoRA delta on wo): A and its work
//                    buffer; each head's group adds its part of A out (common/lora_a.glsl)
//          7 positions (T,) int32 with POS_BUFFER = 1: query t's position, in place of pos0 + t
// Twin:    cpu.attention
#ifndef WG_SIZE
#define WG_SIZE 64
#endif
#ifndef KV_F16
#define KV_F16 0
#endif
#ifndef POS_BUFFER
#define POS_BUFFER 0
#endif
#ifndef MAX_HEAD_SIZE
#error MAX_HEAD_SIZE is defined by the loader (gl/shader_loader.SHARED_DEFINES)
#endif
#define LORA_A_BINDING 5
#define LORA_WORK_BINDING 6
#define LORA_CHUNK MAX_HEAD_SIZE
layout(local_size_x = WG_SIZE) in;
layout(std430, binding = 0) readonly buffer QBuf { vec2 q[]; };
#if KV_F16
layout(std430, binding = 1) readonly buffer KCache { uint k_cache[]; };
layout(std430, binding = 2) readonly buffer VCache { uint v_cache[]; };
#define LOAD2(buf, i) unpackHalf2x16(buf[i])
#else
layout(std430, binding = 1) readonly buffer KCache { vec2 k_cache[]; };
layout(std430, binding = 2) readonly buffer VCache { vec2 v_cache[]; };
#define LOAD2(buf, i) buf[i]
#endif
layout(std430, binding = 3) coherent buffer AttBuf { float att[]; };
layout(std430, binding = 4) writeonly buffer OutBuf { vec2 outv[]; };
uniform uint head_size;
uniform uint n_heads;
uniform uint n_kv_heads;
#if POS_BUFFER  // query t sits at positions[t] (a decode plan writes it once per step)
layout(std430, binding = 7) readonly buffer PosBuf { int positions[]; };
#else
uniform uint pos0;  // query t sits at pos0 + t
#endif
uniform uint seq_len;
uniform uint cache_base;
uniform uint sliding_window;  // 0 = attend to every earlier position
uniform float score_scale;  // 1/sqrt(head_size), times the model's query scale (Phi-3 LongRoPE, Gemma 27B)
#ifndef SOFTCAP
#define SOFTCAP 0
#endif
#if SOFTCAP
uniform float softcap;  // (Gemma 2) scores -> softcap * tanh(score / softcap)
#endif

shared vec2 q_s[MAX_HEAD_SIZE / 2];
shared float red[WG_SIZE];
#include "common/lora_a.glsl"

// Tree reduction over the work group; op 0 = max, 1 = sum.
float reduce(float v, uint op) {
    uint tid = gl_LocalInvocationID.x;
    red[tid] = v;
    barrier();
    for (uint s = WG_SIZE / 2u; s > 0u; s >>= 1) {
        if (tid < s) red[tid] = op == 0u ? max(red[tid], red[tid + s]) : red[tid] + red[tid + s];
        barrier();
    }
    float r = red[0];
    barrier();  // everyone has read red[0] before it is reused
    return r;
}

void main() {
    uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
    uint half_hs = head_size / 2u;
    uint g = h / (n_heads / n_kv_heads);
#if POS_BUFFER
    uint pos = uint(positions[t]);
#else
    uint pos = pos0 + t;
#endif
    uint first = (sliding_window > 0u && pos + 1u > sliding_window) ? pos + 1u - sliding_window : 0u;
    uint att_row = (t * n_heads + h) * seq_len;
    uint kv_row = n_kv_heads * half_hs;  // pairs per cache position
    uint kv0 = cache_base / 2u + g * half_hs;

    for (uint i = tid; i < half_hs; i += WG_SIZE) q_s[i] = q[(t * n_heads + h) * half_hs + i];
    barrier();

    // scores s_j, and their maximum
    float scale = score_scale;
    float m = -3.0e38;
    for (uint j = first + tid; j <= pos; j += WG_SIZE) {
        float s = 0.0;
        uint kj = kv0 + j * kv_row;
        for (uint i = 0u; i < half_hs; i++) s += dot(q_s[i], LOAD2(k_cache, kj + i));
        s *= scale;
#if SOFTCAP
        s = softcap * tanh(clamp(s / softcap, -15.0, 15.0));
#endif
        att[att_row + j] = s;
        m = max(m, s);
    }
    m = reduce(m, 0u);

    // exp(s_j - max): each invocation rewrites only the entries it wrote above
    float sum = 0.0;
    for (uint j = first + tid; j <= pos; j += WG_SIZE) {
        float e = exp(att[att_row + j] - m);
        att[att_row + j] = e;
        sum += e;
    }
    sum = reduce(sum, 1u);
    memoryBarrierBuffer();
    barrier();

    // weighted sum of values, one output pair per invocation
    float inv_sum = 1.0 / sum;
    for (uint i = tid; i < half_hs; i += WG_SIZE) {
        vec2 acc = vec2(0.0);
        for (uint j = first; j <= pos; j++) acc += att[att_row + j] * LOAD2(v_cache, kv0 + j * kv_row + i);
        outv[(t * n_heads + h) * half_hs + i] = acc * inv_sum;
        if (lora_rows > 0u) {
            lora_x[2u * i] = acc.x * inv_sum;
            lora_x[2u * i + 1u] = acc.y * inv_sum;
        }
    }
    if (lora_rows > 0u) lora_a_part(h * head_size, head_size, h, n_heads);
}
