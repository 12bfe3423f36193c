#version 430
// argmax.comp: token = argmax_i logits[i] (lowest index on ties, like np.argmax), in two passes.
//
// Threads: PASS 1: work group g reduces logits[g*CHUNK .. (g+1)*CHUNK) to (max, index) in
//          partial[g]; PASS 2: one work group reduces the n partials and writes the id into
//          tokens[out_index], where the next embedding lookup reads it (no CPU round trip).
// Buffers: 0 logits (n,) f32 readonly (pass 1)
//          1 partial (n_groups,) uvec2: (value bits, index)    pass 1 writes, pass 2 reads
//          2 tokens int32, writeonly (pass 2)
// Twin:    np.argmax
#ifndef WG_SIZE
#error WG_SIZE is set by its launcher (gl/sampling_ops.ARGMAX_WG)
#endif
#ifndef PASS
#define PASS 1
#endif
#ifndef CHUNK
#error CHUNK (logits per work group of pass 1) is set by its launcher (gl/sampling_ops.ARGMAX_CHUNK)
#endif
layout(local_size_x = WG_SIZE) in;
layout(std430, binding = 0) readonly buffer LogitBuf { float logits[]; };
layout(std430, binding = 1) buffer PartialBuf { uvec2 partial[]; };
layout(std430, binding = 2) writeonly buffer TokBuf { int tokens[]; };
uniform uint n;  // pass 1: logits; pass 2: partials
#if PASS == 2
uniform uint out_index;
#endif
shared float best_v[WG_SIZE];
shared uint best_i[WG_SIZE];

// (va, ia) beats (vb, ib): larger value, or equal value and smaller index. NaN never wins.
bool better(float va, uint ia, float vb, uint ib) {
    return va > vb || (va == vb && ia < ib);
}

void main() {
    uint tid = gl_LocalInvocationID.x;
    float bv = -1.0 / 0.0;
    uint bi = 0xFFFFFFFFu;
#if PASS == 1
    uint begin = gl_WorkGroupID.x * CHUNK;
    for (uint i = begin + tid; i < min(begin + CHUNK, n); i += WG_SIZE) {
        if (better(logits[i], i, bv, bi)) { bv = logits[i]; bi = i; }
    }
#else
    for (uint i = tid; i < n; i += WG_SIZE) {
        uvec2 p = partial[i];
        float pv = uintBitsToFloat(p.x);
        if (better(pv, p.y, bv, bi)) { bv = pv; bi = p.y; }
    }
#endif
    best_v[tid] = bv;
    best_i[tid] = bi;
    barrier();
    for (uint s = WG_SIZE / 2u; s > 0u; s >>= 1) {
        if (tid < s && better(best_v[tid + s], best_i[tid + s], best_v[tid], best_i[tid])) {
            best_v[tid] = best_v[tid + s];
            best_i[tid] = best_i[tid + s];
        }
        barrier();
    }
    if (tid == 0u) {
#if PASS == 1
        partial[gl_WorkGroupID.x] = uvec2(floatBitsToUint(best_v[0]), best_i[0]);
#else
        tokens[out_index] = int(best_i[0] == 0xFFFFFFFFu ? 0u : best_i[0]);
#endif
    }
}
