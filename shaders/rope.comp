#version 430
// rope.comp: rotate adjacent pairs (v[2i], v[2i+1]) of every q and k head by angle pos * inv_freq[i]
//            (GGML "normal" mode, as llama2.c), then optionally store k and v in the KV cache.
//
//   v'[2i]   = v[2i] cos(a) - v[2i+1] sin(a)
//   v'[2i+1] = v[2i] sin(a) + v[2i+1] cos(a)      a = pos(t) * inv_freq[i]
//
// Pairs i >= n_rot (partial rotary) pass through. inv_freq is computed on the host, so base,
// linear and llama3 scaling are all just different tables.
// Threads: x = pair i, y = head slot (q heads, then k heads, then v heads when writing the cache),
//          z = token t.
// Buffers: 0 q (T, n_heads, hs) f32 read-write, 1 k (T, n_kv_heads, hs) f32 read-write,
//          2 v (T, n_kv_heads, hs) f32 readonly, 3 inv_freq (n_rot,) f32 readonly,
//          4 positions (T,) int32 readonly (POS_BUFFER=1; else pos(t) = pos0 + t),
//          5 k_cache, 6 v_cache (seq_len, n_kv_heads, hs) f32 or f16 (KV_F16) per layer, writeonly,
//          starting at element cache_base (WRITE_CACHE=1)
// Twin:    cpu.rope (and the cache store of cpu.CpuTransformer)
#ifndef WG_SIZE
#error WG_SIZE is set by its launcher (gl/layer_ops.ROPE_WG)
#endif
#ifndef POS_BUFFER
#define POS_BUFFER 0
#endif
#ifndef WRITE_CACHE
#define WRITE_CACHE 0
#endif
#ifndef KV_F16
#define KV_F16 0
#endif
layout(local_size_x = WG_SIZE) in;
layout(std430, binding = 0) buffer QBuf { vec2 q[]; };
layout(std430, binding = 1) buffer KBuf { vec2 k[]; };
layout(std430, binding = 3) readonly buffer FreqBuf { float inv_freq[]; };
uniform uint head_size;
uniform uint n_heads;
uniform uint n_kv_heads;
uniform uint n_rot;  // rotated pairs per head
#if POS_BUFFER
layout(std430, binding = 4) readonly buffer PosBuf { int positions[]; };
#else
uniform uint pos0;
#endif
#if WRITE_CACHE
layout(std430, binding = 2) readonly buffer VBuf { vec2 v[]; };
#if KV_F16
layout(std430, binding = 5) writeonly buffer KCache { uint k_cache[]; };
layout(std430, binding = 6) writeonly buffer VCache { uint v_cache[]; };
#define PACK(p) packHalf2x16(p)
#else
layout(std430, binding = 5) writeonly buffer KCache { vec2 k_cache[]; };
layout(std430, binding = 6) writeonly buffer VCache { vec2 v_cache[]; };
#define PACK(p) (p)
#endif
uniform uint cache_base;  // first element of this layer's cache (even)
uniform uint seq_len;
#endif

vec2 rotate(vec2 p, float angle) {
    float c = cos(angle), s = sin(angle);
    return vec2(p.x * c - p.y * s, p.x * s + p.y * c);
}

void main() {
    uint i = gl_GlobalInvocationID.x;  // pair index within the head
    uint half_hs = head_size / 2u;
    if (i >= half_hs) return;
    uint h = gl_GlobalInvocationID.y;
    uint t = gl_GlobalInvocationID.z;
#if POS_BUFFER
    uint pos = uint(positions[t]);
#else
    uint pos = pos0 + t;
#endif
    float angle = i < n_rot ? float(pos) * inv_freq[i] : 0.0;
    if (h < n_heads) {
        uint o = (t * n_heads + h) * half_hs + i;
        if (i < n_rot) q[o] = rotate(q[o], angle);
        return;
    }
    h -= n_heads;
    uint kv = h % n_kv_heads;  // slot n_heads + kv: key head; + n_kv_heads more: value head
    uint o = (t * n_kv_heads + kv) * half_hs + i;
    if (h < n_kv_heads) {
        vec2 r = i < n_rot ? rotate(k[o], angle) : k[o];
        k[o] = r;
#if WRITE_CACHE
        if (pos < seq_len) k_cache[cache_base / 2u + (pos * n_kv_heads + kv) * half_hs + i] = PACK(r);
#endif
    }
#if WRITE_CACHE
    else if (pos < seq_len) {
        v_cache[cache_base / 2u + (pos * n_kv_heads + kv) * half_hs + i] = PACK(v[o]);
    }
#endif
}
