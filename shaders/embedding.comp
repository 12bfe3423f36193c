#version 430
// embedding.comp: out[t, :] = dequant(W[tokens[token_offset + t], :])   (W: vocab x dim, QUANT_*)
//
// Threads: x = one invocation per 8 consecutive features, y = token t.
// Buffers: 0 W      rows part_row0 .. part_row0 + part_rows - 1 of the (vocab, dim) table, as
//                   uploaded (raw GGUF bytes or REPACKED)                         readonly
//          1 tokens (int32) token ids on the GPU   readonly   (the sampler writes them there)
//          2 out    (n_tokens, dim) f32            writeonly
// A table split across buffers is one dispatch per part: each writes only the tokens whose row
// it holds, so the ids never visit the CPU. Ids outside 0..vocab-1 are clamped, so a bad id
// reads a real row instead of out of bounds.
// Twin:    cpu_ops.embedding (times scale)
#ifndef WG_SIZE
#error WG_SIZE is set by its launcher (gl/matvec_ops.EMBEDDING_WG)
#endif
layout(local_size_x = WG_SIZE) in;
layout(std430, binding = 0) readonly buffer WBuf { uint W[]; };
layout(std430, binding = 1) readonly buffer TokBuf { int tokens[]; };
layout(std430, binding = 2) writeonly buffer OutBuf { vec4 out4[]; };
uniform uint dim;
uniform uint vocab;
uniform uint token_offset;
uniform uint part_row0;
uniform uint part_rows;
uniform float scale;  // 1, or sqrt(dim) for Gemma
#include "common/dequant.glsl"

void main() {
    uint i8 = gl_GlobalInvocationID.x;  // which group of 8 features
    if (i8 * 8u >= dim) return;
    uint t = gl_GlobalInvocationID.y;
    uint tok = uint(clamp(tokens[token_offset + t], 0, int(vocab) - 1));
    if (tok < part_row0 || tok >= part_row0 + part_rows) return;  // another part's row
    uint i = i8 * 8u;
    uint blk = (tok - part_row0) * (dim / QK) * BLOCK_BYTES + (i / QK) * BLOCK_BYTES;
    vec4 lo, hi;
    dequant8(blk, dq_head(blk), (i % QK) / 8u, lo, hi);
    uint o = (t * dim + i) / 4u;
    out4[o] = lo * scale;
    out4[o + 1u] = hi * scale;
}
