// common/bytes.glsl: read bytes, halves and words at any byte offset of the weight buffer W.
//
// GGUF quant blocks are packed back to back (Q8_0 is 34 bytes, Q6_K 210), so a block field can
// start at any even byte. The including shader declares `uint W[]` before including this file.
// Every 16-bit field in GGML blocks starts at an even byte, so w_u16 never straddles two words.
#ifndef COMMON_BYTES_GLSL
#define COMMON_BYTES_GLSL

uint w_u8(uint byte_off) {
    return (W[byte_off >> 2] >> ((byte_off & 3u) << 3)) & 0xFFu;
}

uint w_u16(uint byte_off) {  // byte_off must be even
    return (W[byte_off >> 2] >> ((byte_off & 2u) << 3)) & 0xFFFFu;
}

float w_f16(uint byte_off) {  // IEEE half at an even byte offset
    return unpackHalf2x16(w_u16(byte_off)).x;
}

uint w_u32(uint byte_off) {  // byte_off must be even; 4-byte aligned reads take one load
    uint lo = W[byte_off >> 2];
    if ((byte_off & 2u) == 0u) return lo;
    return (lo >> 16) | (W[(byte_off >> 2) + 1u] << 16);
}

// The four bytes of a word as separate lanes.
uvec4 u8x4(uint w) {
    return (uvec4(w) >> uvec4(0u, 8u, 16u, 24u)) & 0xFFu;
}

// The four bytes of a word as signed int8 values.
vec4 i8x4(uint w) {
    return vec4(ivec4(uvec4(w) << uvec4(24u, 16u, 8u, 0u)) >> 24);
}

#endif
