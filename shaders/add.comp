#version 430
// add.comp: dst[i] += src[i]   (the residual connection x += xb when it is not fused into matvec)
//          or, with BROADCAST=1, dst[i] += src[i % width]   (a bias added to every row: qwen2's q/k/v)
//
// Threads: one invocation per element.
// Buffers: 0 src (n,) or (width,) f32 readonly, 1 dst (n,) f32 read-write
// Twin:    numpy `dst + src` (broadcast over rows)
#ifndef WG_SIZE
#error WG_SIZE is set by its launcher (gl/layer_ops.ADD_WG)
#endif
#ifndef BROADCAST
#define BROADCAST 0
#endif
layout(local_size_x = WG_SIZE) in;
layout(std430, binding = 0) readonly buffer SrcBuf { float src[]; };
layout(std430, binding = 1) buffer DstBuf { float dst[]; };
uniform uint n;
#if BROADCAST
uniform uint width;
#endif

void main() {
    uint i = gl_GlobalInvocationID.x;
#if BROADCAST
    if (i < n) dst[i] += src[i % width];
#else
    if (i < n) dst[i] += src[i];
#endif
}
