// common/lora_a.glsl: A x of a fused LoRA delta, made by the kernel that makes x.
//
// A decode token's LoRA delta is scale * B (A x); matvec.comp adds B (.) in its epilogue and
// reads A x from a uniform block. A x itself is computed here, inside the dispatch that produces
// x (rmsnorm for q/k/v and w1/w3, attention for wo, swiglu for w2), so it costs no dispatch of its
// own: each work group dots the rows of A with its own chunk of x and writes a partial sum; the
// last group to finish (an atomic counter) adds the parts up into A x.
//
// Why here and not in a mat-vec of its own: on llvmpipe a dispatch has a fixed cost (~0.05 ms)
// and ~25 us of Python launching it, and a decode step with an adapter on every projection
// would make 4 more per layer; inside the producer, A x costs only its loads (docs/lora.md).
//
// The including shader defines LORA_A_BINDING and LORA_WORK_BINDING (two free SSBO bindings) and
// LORA_CHUNK (the most x values one work group makes), fills lora_x[0 .. n) with its chunk
// x[c0 .. c0 + n) (c0 and n multiples of 16), then calls lora_a_part in uniform control flow.
// With lora_rows = 0 nothing is read or written, so one program serves with and without LoRA.
//
// Buffers: LORA_A_BINDING    A (lora_rows, lora_cols) as int8 (lora_factors.a_rows_int8): each
//                            row's largest |value| (f32 bits; padded to a multiple of 4 words),
//                            then the rows * 127 / that, 16 per uvec4
//          LORA_WORK_BINDING  uint words: [0, LORA_AX_WORDS) A x (f32 bits; the uniform block
//                            matvec.comp reads), [LORA_AX_WORDS] the counter (0 between
//                            dispatches), from LORA_PARTS on the parts, (n_groups, lora_rows) f32
//                            bits (both words are stated in gl/shader_loader.py)
#ifndef COMMON_LORA_A_GLSL
#define COMMON_LORA_A_GLSL

#if !defined(LORA_AX_WORDS) || !defined(LORA_PARTS)
#error LORA_AX_WORDS and LORA_PARTS are defined by the loader (gl/shader_loader.SHARED_DEFINES)
#endif
#define LORA_COUNTER LORA_AX_WORDS

layout(std430, binding = LORA_A_BINDING) readonly restrict buffer LoraA { uint lora_a[]; };
layout(std430, binding = LORA_A_BINDING) readonly restrict buffer LoraA4 { uvec4 lora_a4[]; };  // the same
layout(std430, binding = LORA_WORK_BINDING) coherent restrict buffer LoraWork { uint lora_work[]; };
uniform uint lora_rows;  // rows of A (the stacked, padded ranks of the projections sharing x); 0: off
uniform uint lora_cols;  // width of A, = of x (a multiple of 16)
shared float lora_x[LORA_CHUNK];
shared bool lora_last_group;

// This work group's chunk x[c0 .. c0 + n) dotted with every row of A (one row per lane, in
// rounds of WG_SIZE); the last of n_groups groups also writes A x.
void lora_a_part(uint c0, uint n, uint group, uint n_groups) {
    uint tid = gl_LocalInvocationID.x;
    barrier();  // every lane's x values are in lora_x
    uint row_quads = lora_cols / 16u, q0 = (lora_rows + 3u) / 4u + c0 / 16u;
    for (uint r = tid; r < lora_rows; r += WG_SIZE) {
        uint q = q0 + r * row_quads;
        float s = 0.0;
        for (uint k = 0u; 16u * k < n; k++) {
            uvec4 a = lora_a4[q + k];
            uint i = 16u * k;
            s += dot(unpackSnorm4x8(a.x), vec4(lora_x[i], lora_x[i + 1u], lora_x[i + 2u], lora_x[i + 3u]))
               + dot(unpackSnorm4x8(a.y), vec4(lora_x[i + 4u], lora_x[i + 5u], lora_x[i + 6u], lora_x[i + 7u]))
               + dot(unpackSnorm4x8(a.z), vec4(lora_x[i + 8u], lora_x[i + 9u], lora_x[i + 10u], lora_x[i + 11u]))
               + dot(unpackSnorm4x8(a.w), vec4(lora_x[i + 12u], lora_x[i + 13u], lora_x[i + 14u], lora_x[i + 15u]));
        }
        lora_work[LORA_PARTS + group * lora_rows + r] = floatBitsToUint(uintBitsToFloat(lora_a[r]) * s);
    }
    memoryBarrierBuffer();  // the parts are visible before the counter moves
    barrier();
    if (tid == 0u) lora_last_group = atomicAdd(lora_work[LORA_COUNTER], 1u) == n_groups - 1u;
    barrier();
    if (lora_last_group) {
        memoryBarrierBuffer();
        for (uint r = tid; r < lora_rows; r += WG_SIZE) {
            float s = 0.0;
            for (uint g = 0u; g < n_groups; g++) s += uintBitsToFloat(lora_work[LORA_PARTS + g * lora_rows + r]);
            lora_work[r] = floatBitsToUint(s);
        }
        if (tid == 0u) lora_work[LORA_COUNTER] = 0u;  // ready for the next dispatch
    }
}

#endif
