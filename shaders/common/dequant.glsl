// common/dequant.glsl: one decode API for every GGML weight type, chosen by `#define QUANT_<TYPE>`.
//
// Every type is seen as blocks of QK weights taking BLOCK_BYTES bytes, stored exactly as in the
// GGUF file (float types are treated as blocks of 8). The single entry point is
//
//     void dequant8(uint blk, uint g, out vec4 lo, out vec4 hi)
//
//     uvec4 dq_head(uint blk)                      // the block's scale words, read once
//     void dequant8(uint blk, uvec4 head, uint g, out vec4 lo, out vec4 hi)
//
// dequant8 returns weights 8g .. 8g+7 of the block starting at byte `blk` of W, scales applied.
// dq_head loads the block's header (scales, mins, high bits) into registers once per block, so a
// kernel decoding all QK/8 groups reads each header word once. Eight weights always share one
// scale and sit in consecutive bytes in every layout, so a decode is two word reads plus a little
// bit twiddling. NumPy twin: quant.dequantize (the layouts are
// checked bit for bit against gguf.quants there). The includer declares `uint W[]` first.
//
// REPACKED (Q4_0, Q4_1, Q8_0; see perro_pastor/gl/buffers.py): blocks are regrouped at upload in
// fours so every field is 16-byte aligned: one uvec4 of the 4 blocks' scale words (the block's
// f16 d, or f16 pair d, m, as in the file), then each block's quant bytes as whole uvec4s
// (RP_QUADS of them). Block b (flat, row-major within a buffer part) is found without any table,
// so `blk` stays b * BLOCK_BYTES and dq_head/dequant8 keep working for the embedding lookup;
// the mat-vec instead calls dq_dot32, which decodes a whole block from uvec4 loads (W4, the same
// buffer seen as uvec4[]) and dots it with 32 x values. Measured on llvmpipe: ~1.5-2x the raw
// layout (docs/gl_kernels.md).
#ifndef COMMON_DEQUANT_GLSL
#define COMMON_DEQUANT_GLSL
#include "common/bytes.glsl"

// Low (shift 0) or high (shift 4) nibbles of the 4 bytes in a word.
vec4 nib4(uint w, uint shift) {
    return vec4((uvec4(w >> shift) >> uvec4(0u, 8u, 16u, 24u)) & 0xFu);
}

// Byte b (0..15) of a header held in registers.
uint head_u8(uvec4 h, uint b) {
    return (h[b >> 2] >> ((b & 3u) << 3)) & 0xFFu;
}

// Bits b..b+3 of `bits`, one per lane, as 0.0 or 1.0.
vec4 bit4(uint bits, uint b) {
    return vec4((uvec4(bits >> b) >> uvec4(0u, 1u, 2u, 3u)) & 1u);
}

#if defined(REPACKED)
// ---- repacked Q4_0 / Q4_1 / Q8_0: groups of 4 blocks, [scales uvec4][4 x RP_QUADS uvec4] ----
#define QK 32u
#if defined(QUANT_Q4_0)
#define BLOCK_BYTES 18u
#define RP_QUADS 1u
#elif defined(QUANT_Q4_1)
#define BLOCK_BYTES 20u
#define RP_QUADS 1u
#elif defined(QUANT_Q8_0)
#define BLOCK_BYTES 34u
#define RP_QUADS 2u
#else
#error "REPACKED is defined only for Q4_0, Q4_1 and Q8_0"
#endif
#define RP_GROUP (1u + 4u * RP_QUADS)  // uvec4s per group of 4 blocks

uint rp_scale_word(uint b) { return W[(b >> 2) * RP_GROUP * 4u + (b & 3u)]; }
uint rp_quad0(uint b) { return (b >> 2) * RP_GROUP + 1u + (b & 3u) * RP_QUADS; }  // uvec4 index

uvec4 dq_head(uint blk) { return uvec4(rp_scale_word(blk / BLOCK_BYTES), 0u, 0u, 0u); }
void dequant8(uint blk, uvec4 head, uint g, out vec4 lo, out vec4 hi) {
    uint q = rp_quad0(blk / BLOCK_BYTES) * 4u;  // word index of the block's quant bytes
    vec2 dm = unpackHalf2x16(head.x);
#if defined(QUANT_Q8_0)
    lo = dm.x * i8x4(W[q + 2u * g]);
    hi = dm.x * i8x4(W[q + 2u * g + 1u]);
#else
    uint s = (g >> 1) * 4u;
    uint qi = q + 2u * (g & 1u);
#if defined(QUANT_Q4_0)
    lo = dm.x * (nib4(W[qi], s) - 8.0);
    hi = dm.x * (nib4(W[qi + 1u], s) - 8.0);
#else
    lo = dm.x * nib4(W[qi], s) + dm.y;
    hi = dm.x * nib4(W[qi + 1u], s) + dm.y;
#endif
#endif
}

#ifdef DQ_VEC4_LOADS
// sum_j w[b, j] * xs[j/4][j%4] for block b, with sx = the sum of the 32 x values (the Q4 offsets
// factor out of the dot: sum d*(q-8)*x = d*(q.x - 8*sx), sum (d*q+m)*x = d*q.x + m*sx).
float dq_dot32(uint b, vec4 xs[8], float sx) {
    vec2 dm = unpackHalf2x16(rp_scale_word(b));
    uint i = rp_quad0(b);
    vec4 s = vec4(0.0);
#if defined(QUANT_Q8_0)
    uvec4 q0 = W4[i], q1 = W4[i + 1u];
    for (uint w = 0u; w < 4u; w++) {
        s += i8x4(q0[w]) * xs[w];
        s += i8x4(q1[w]) * xs[4u + w];
    }
    return dm.x * dot(s, vec4(1.0));
#else
    uvec4 q = W4[i];  // byte j: weight j in the low nibble, weight 16 + j in the high one
    for (uint w = 0u; w < 4u; w++) {
        s += vec4((uvec4(q[w]) >> uvec4(0u, 8u, 16u, 24u)) & 0xFu) * xs[w];
        s += vec4((uvec4(q[w]) >> uvec4(4u, 12u, 20u, 28u)) & 0xFu) * xs[4u + w];
    }
#if defined(QUANT_Q4_0)
    return dm.x * (dot(s, vec4(1.0)) - 8.0 * sx);
#else
    return dm.x * dot(s, vec4(1.0)) + dm.y * sx;
#endif
#endif
}

// A block's quant words and scales, loaded once (q1 only for Q8_0), then weights 4j .. 4j+3 of
// the block (j < 4: low nibbles / first 16 bytes; j >= 4: high nibbles / last 16) decoded on demand by dq_quad: a mat-mat keeps NR blocks' words
// in registers instead of NR x 32 decoded floats, which llvmpipe spills to the stack (~1.3x).
void dq_load(uint b, out uvec4 q0, out uvec4 q1, out vec2 dm) {
    dm = unpackHalf2x16(rp_scale_word(b));
    uint i = rp_quad0(b);
    q0 = W4[i];
#if defined(QUANT_Q8_0)
    q1 = W4[i + 1u];
#else
    q1 = uvec4(0u);
#endif
}

vec4 dq_quad(uvec4 q0, uvec4 q1, vec2 dm, uint j) {
#if defined(QUANT_Q8_0)
    return dm.x * i8x4(j < 4u ? q0[j] : q1[j - 4u]);
#else
    // byte k of q0: weight k in the low nibble, weight 16 + k in the high one
    vec4 q = vec4((uvec4(q0[j & 3u]) >> (uvec4(0u, 8u, 16u, 24u) + (j < 4u ? 0u : 4u))) & 0xFu);
#if defined(QUANT_Q4_0)
    return dm.x * q + (-8.0 * dm.x);
#else
    return dm.x * q + dm.y;
#endif
#endif
}
#endif

#elif defined(QUANT_F32)
#define QK 8u
#define BLOCK_BYTES 32u
uvec4 dq_head(uint blk) { return uvec4(0u); }
void dequant8(uint blk, uvec4 head, uint g, out vec4 lo, out vec4 hi) {
    uint i = blk >> 2;
    lo = uintBitsToFloat(uvec4(W[i], W[i + 1u], W[i + 2u], W[i + 3u]));
    hi = uintBitsToFloat(uvec4(W[i + 4u], W[i + 5u], W[i + 6u], W[i + 7u]));
}

#elif defined(QUANT_F16)
#define QK 8u
#define BLOCK_BYTES 16u
uvec4 dq_head(uint blk) { return uvec4(0u); }
void dequant8(uint blk, uvec4 head, uint g, out vec4 lo, out vec4 hi) {
    uint i = blk >> 2;
    lo = vec4(unpackHalf2x16(W[i]), unpackHalf2x16(W[i + 1u]));
    hi = vec4(unpackHalf2x16(W[i + 2u]), unpackHalf2x16(W[i + 3u]));
}

#elif defined(QUANT_BF16)
#define QK 8u
#define BLOCK_BYTES 16u
vec2 bf16x2(uint w) {  // bfloat16 is the top half of an f32
    return uintBitsToFloat(uvec2(w << 16, w & 0xFFFF0000u));
}
uvec4 dq_head(uint blk) { return uvec4(0u); }
void dequant8(uint blk, uvec4 head, uint g, out vec4 lo, out vec4 hi) {
    uint i = blk >> 2;
    lo = vec4(bf16x2(W[i]), bf16x2(W[i + 1u]));
    hi = vec4(bf16x2(W[i + 2u]), bf16x2(W[i + 3u]));
}

#elif defined(QUANT_Q8_0)
// d: f16 @0, qs: int8[32] @2.  w = d * q
#define QK 32u
#define BLOCK_BYTES 34u
uvec4 dq_head(uint blk) { return uvec4(w_u16(blk), 0u, 0u, 0u); }
void dequant8(uint blk, uvec4 head, uint g, out vec4 lo, out vec4 hi) {
    float d = unpackHalf2x16(head.x).x;
    uint q = blk + 2u + 8u * g;
    lo = d * i8x4(w_u32(q));
    hi = d * i8x4(w_u32(q + 4u));
}

#elif defined(QUANT_Q4_0)
// d: f16 @0, qs: u8[16] @2; weight j<16 is the low nibble of qs[j], j>=16 the high nibble of qs[j-16].
#define QK 32u
#define BLOCK_BYTES 18u
uvec4 dq_head(uint blk) { return uvec4(w_u16(blk), 0u, 0u, 0u); }
void dequant8(uint blk, uvec4 head, uint g, out vec4 lo, out vec4 hi) {
    float d = unpackHalf2x16(head.x).x;
    uint q = blk + 2u + 8u * (g & 1u);
    uint s = (g >> 1) * 4u;
    lo = d * (nib4(w_u32(q), s) - 8.0);
    hi = d * (nib4(w_u32(q + 4u), s) - 8.0);
}

#elif defined(QUANT_Q4_1)
// d, m: f16 @0,@2, qs: u8[16] @4 (20-byte blocks stay 4-byte aligned).  w = d * q + m
#define QK 32u
#define BLOCK_BYTES 20u
uvec4 dq_head(uint blk) { return uvec4(W[blk >> 2], 0u, 0u, 0u); }
void dequant8(uint blk, uvec4 head, uint g, out vec4 lo, out vec4 hi) {
    uint i = blk >> 2;
    vec2 dm = unpackHalf2x16(head.x);
    uint s = (g >> 1) * 4u;
    uint qi = i + 1u + 2u * (g & 1u);
    lo = dm.x * nib4(W[qi], s) + dm.y;
    hi = dm.x * nib4(W[qi + 1u], s) + dm.y;
}

#elif defined(QUANT_Q5_0)
// d: f16 @0, qh: u32 @2 (bit j = 5th bit of weight j), qs: u8[16] @6.  w = d * (q - 16)
#define QK 32u
#define BLOCK_BYTES 22u
uvec4 dq_head(uint blk) { return uvec4(w_u16(blk), w_u32(blk + 2u), 0u, 0u); }
void dequant8(uint blk, uvec4 head, uint g, out vec4 lo, out vec4 hi) {
    float d = unpackHalf2x16(head.x).x;
    uint qh = head.y >> (8u * g);
    uint q = blk + 6u + 8u * (g & 1u);
    uint s = (g >> 1) * 4u;
    lo = d * (nib4(w_u32(q), s) + 16.0 * bit4(qh, 0u) - 16.0);
    hi = d * (nib4(w_u32(q + 4u), s) + 16.0 * bit4(qh, 4u) - 16.0);
}

#elif defined(QUANT_Q5_1)
// d, m: f16 @0,@2, qh: u32 @4, qs: u8[16] @8.  w = d * q + m
#define QK 32u
#define BLOCK_BYTES 24u
uvec4 dq_head(uint blk) { return uvec4(W[blk >> 2], W[(blk >> 2) + 1u], 0u, 0u); }
void dequant8(uint blk, uvec4 head, uint g, out vec4 lo, out vec4 hi) {
    uint i = blk >> 2;
    vec2 dm = unpackHalf2x16(head.x);
    uint qh = head.y >> (8u * g);
    uint qi = i + 2u + 2u * (g & 1u);
    uint s = (g >> 1) * 4u;
    lo = dm.x * (nib4(W[qi], s) + 16.0 * bit4(qh, 0u)) + dm.y;
    hi = dm.x * (nib4(W[qi + 1u], s) + 16.0 * bit4(qh, 4u)) + dm.y;
}

#elif defined(QUANT_Q2_K)
// scales: u8[16] @0 (low 4 bits scale, high 4 bits min), qs: u8[64] @16 (2-bit), d, dmin: f16 @80,@82.
// Weight i: half h = i/128, shift 2*((i%128)/32), byte qs[32h + i%32], sub-block (i/16).
#define QK 256u
#define BLOCK_BYTES 84u
uvec4 dq_head(uint blk) {  // the 16 scale bytes
    uint i = blk >> 2;
    return uvec4(W[i], W[i + 1u], W[i + 2u], W[i + 3u]);
}
void dequant8(uint blk, uvec4 head, uint g, out vec4 lo, out vec4 hi) {
    uint h = g >> 4, j = (g & 15u) >> 2, l0 = (g & 3u) * 8u;
    uint sc = head_u8(head, h * 8u + j * 2u + (l0 >> 4));
    vec2 dm = unpackHalf2x16(W[(blk >> 2) + 20u]);
    float dl = dm.x * float(sc & 0xFu), ml = dm.y * float(sc >> 4);
    uint qi = ((blk + 16u + h * 32u + l0) >> 2);
    uint sh = 2u * j;
    lo = dl * vec4((u8x4(W[qi]) >> sh) & 3u) - ml;
    hi = dl * vec4((u8x4(W[qi + 1u]) >> sh) & 3u) - ml;
}

#elif defined(QUANT_Q3_K)
// hmask: u8[32] @0, qs: u8[64] @32 (2-bit), scales: 12 bytes @96 (16 6-bit scales), d: f16 @108.
// w = d * (scale - 32) * (q2 - (hmask bit ? 0 : 4))
#define QK 256u
#define BLOCK_BYTES 110u
uvec4 dq_head(uint blk) {  // 12 scale bytes, then d
    return uvec4(w_u32(blk + 96u), w_u32(blk + 100u), w_u32(blk + 104u), w_u16(blk + 108u));
}
void dequant8(uint blk, uvec4 head, uint g, out vec4 lo, out vec4 hi) {
    uint h = g >> 4, j = (g & 15u) >> 2, l0 = (g & 3u) * 8u;
    uint is = h * 8u + j * 2u + (l0 >> 4);
    uint low4 = is < 8u ? (head_u8(head, is) & 0xFu) : (head_u8(head, is - 8u) >> 4);
    uint high2 = (head_u8(head, 8u + (is & 3u)) >> (2u * (is >> 2))) & 3u;
    float dl = unpackHalf2x16(head.w).x * float(int(low4 | (high2 << 4)) - 32);
    uint q = blk + 32u + h * 32u + l0;
    uint m = blk + l0;
    uint sh = 2u * j, hb = h * 4u + j;
    vec4 q0 = vec4((u8x4(w_u32(q)) >> sh) & 3u) - 4.0 * (1.0 - vec4((u8x4(w_u32(m)) >> hb) & 1u));
    vec4 q1 = vec4((u8x4(w_u32(q + 4u)) >> sh) & 3u) - 4.0 * (1.0 - vec4((u8x4(w_u32(m + 4u)) >> hb) & 1u));
    lo = dl * q0;
    hi = dl * q1;
}

#elif defined(QUANT_Q4_K) || defined(QUANT_Q5_K)
// d, dmin: f16 @0,@2, scales: 12 bytes @4 (8 6-bit scale/min pairs),
// Q4_K: qs: u8[128] @16.   Q5_K: qh: u8[32] @16, qs: u8[128] @48.
// Weight i: group gr = i/64, nibble (i/32)%2 of byte qs[32gr + i%32]; Q5_K 5th bit = qh[i%32] bit i/32.
#define QK 256u
#if defined(QUANT_Q4_K)
#define BLOCK_BYTES 144u
#define QS_OFF 16u
#else
#define BLOCK_BYTES 176u
#define QS_OFF 48u
#endif
uvec4 dq_head(uint blk) {  // d and dmin, then the 12 scale bytes (header bytes 4..15)
    uint i = blk >> 2;
    return uvec4(W[i], W[i + 1u], W[i + 2u], W[i + 3u]);
}
void dequant8(uint blk, uvec4 head, uint g, out vec4 lo, out vec4 hi) {
    uint gr = g >> 3, sub = (g >> 2) & 1u, l0 = (g & 3u) * 8u;
    uint is = 2u * gr + sub;
    uint s = 4u;  // scale bytes start at header byte 4
    uint sc, mn;
    if (is < 4u) {
        sc = head_u8(head, s + is) & 63u;
        mn = head_u8(head, s + is + 4u) & 63u;
    } else {
        sc = (head_u8(head, s + is + 4u) & 0xFu) | ((head_u8(head, s + is - 4u) >> 6) << 4);
        mn = (head_u8(head, s + is + 4u) >> 4) | ((head_u8(head, s + is) >> 6) << 4);
    }
    vec2 dm = unpackHalf2x16(head.x);
    float d1 = dm.x * float(sc), m1 = dm.y * float(mn);
    uint qi = (blk + QS_OFF + gr * 32u + l0) >> 2;
    vec4 q0 = nib4(W[qi], 4u * sub);
    vec4 q1 = nib4(W[qi + 1u], 4u * sub);
#if defined(QUANT_Q5_K)
    uint hi_i = (blk + 16u + l0) >> 2;
    q0 += 16.0 * vec4((u8x4(W[hi_i]) >> is) & 1u);
    q1 += 16.0 * vec4((u8x4(W[hi_i + 1u]) >> is) & 1u);
#endif
    lo = d1 * q0 - m1;
    hi = d1 * q1 - m1;
}

#elif defined(QUANT_Q6_K)
// ql: u8[128] @0 (low 4 bits), qh: u8[64] @128 (high 2 bits), scales: int8[16] @192, d: f16 @208.
// Weight i: h = i/128, k = (i%128)/32, l = i%32: low = nibble k/2 of ql[64h + 32(k%2) + l],
// high = bits 2k of qh[32h + l], scale sc[8h + l/16 + 2k].  w = d * sc * (q - 32)
#define QK 256u
#define BLOCK_BYTES 210u
uvec4 dq_head(uint blk) {  // the 16 int8 scales
    return uvec4(w_u32(blk + 192u), w_u32(blk + 196u), w_u32(blk + 200u), w_u32(blk + 204u));
}
void dequant8(uint blk, uvec4 head, uint g, out vec4 lo, out vec4 hi) {
    uint h = g >> 4, k = (g & 15u) >> 2, l0 = (g & 3u) * 8u;
    uint sc = head_u8(head, h * 8u + (l0 >> 4) + 2u * k);
    float dl = w_f16(blk + 208u) * float(int(sc << 24) >> 24);
    uint ql = blk + h * 64u + (k & 1u) * 32u + l0;
    uint qh = blk + 128u + h * 32u + l0;
    uint s = 4u * (k >> 1), sh = 2u * k;
    lo = dl * (nib4(w_u32(ql), s) + 16.0 * vec4((u8x4(w_u32(qh)) >> sh) & 3u) - 32.0);
    hi = dl * (nib4(w_u32(ql + 4u), s) + 16.0 * vec4((u8x4(w_u32(qh + 4u)) >> sh) & 3u) - 32.0);
}

#else
#error "define one QUANT_<TYPE> (F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K)"
#endif

#endif
