#version 430
// sample.comp: draw the next token on the GPU; only its id is ever read back.
//
// Same chain and meaning as sampling.Sampler (llama.cpp's order):
//   0. logit bias: logits[id] += bias for the n_bias (id, bias) pairs (ids distinct; -inf bans)
//   1. repetition penalty on ids tokens[recent_begin .. +recent_count) (each id once):
//      l > 0 ? l / penalty : l * penalty           (applied to `logits` in place)
//   2. temperature == 0: greedy argmax (lowest id on ties)
//   3. top-k: keep l >= the k-th largest logit
//   4. top-p: keep the smallest most-likely set whose softmax mass (over the top-k set) >= top_p
//   5. min-p: keep exp(l - max) >= min_p
//   6. draw from softmax(l / temperature) over what is kept, u = PCG hash of (seed, step)
// Logits are mapped to order-preserving uint keys. Top-k is a radix select (4 passes of a
// 256-bin shared histogram); top-p a 32-step bisection on the keys, over a shared copy of the
// candidates when at most MAX_CAND pass top-k and min-p. Exact, no sort, no float atomics.
// Threads: ONE work group; invocation tid owns the contiguous id range [tid*chunk, (tid+1)*chunk).
// Buffers: 0 logits (n,) f32 (penalised in place), 1 tokens int32 (recent ids; the result is
//          written at out_index), 2 probs (n,) f32 scratch, 3 bias: n_bias (id, f32 bits) pairs
// Twin:    sampling.Sampler.sample (same filters; a different RNG stream)
#ifndef WG_SIZE
#define WG_SIZE 256
#endif
layout(local_size_x = WG_SIZE) in;
layout(std430, binding = 0) coherent buffer LogitBuf { float logits[]; };
layout(std430, binding = 1) coherent buffer TokBuf { int tokens[]; };
layout(std430, binding = 2) buffer ProbBuf { float probs[]; };
layout(std430, binding = 3) readonly buffer BiasBuf { uint bias[]; };
uniform uint n;
uniform float temperature;
uniform uint top_k;     // 0 = off
uniform float top_p;    // 1 = off
uniform float min_p;    // 0 = off
uniform float penalty;  // 1 = off
uniform uint recent_begin;
uniform uint recent_count;
uniform uint out_index;
uniform uint seed;
uniform uint step;
uniform uint n_bias;

shared float red_f[WG_SIZE];
shared uint red_u[WG_SIZE];
#define MAX_CAND 512u
shared uint hist[256];
shared float cand[MAX_CAND];
shared uint n_cand;

uint pcg_hash(uint v) {
    uint state = v * 747796405u + 2891336453u;
    uint word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Order-preserving map float -> uint (larger float, larger uint).
uint key(float f) {
    uint u = floatBitsToUint(f);
    return (u & 0x80000000u) != 0u ? ~u : u | 0x80000000u;
}

// Work-group sums: every invocation posts its part, invocation 0 adds them up. Two barriers
// instead of a log2(WG_SIZE)-step tree keep llvmpipe's JIT and run time small.
float sum_f(float v) {
    uint tid = gl_LocalInvocationID.x;
    red_f[tid] = v;
    barrier();
    if (tid == 0u) {
        float acc = 0.0;
        for (uint j = 0u; j < WG_SIZE; j++) acc += red_f[j];
        red_f[0] = acc;
    }
    barrier();
    float r = red_f[0];
    barrier();
    return r;
}

uint sum_u(uint v) {
    uint tid = gl_LocalInvocationID.x;
    red_u[tid] = v;
    barrier();
    if (tid == 0u) {
        uint acc = 0u;
        for (uint j = 0u; j < WG_SIZE; j++) acc += red_u[j];
        red_u[0] = acc;
    }
    barrier();
    uint r = red_u[0];
    barrier();
    return r;
}

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint chunk = (n + WG_SIZE - 1u) / WG_SIZE;
    uint begin = min(n, tid * chunk), end = min(n, begin + chunk);

    // 0. logit bias (distinct ids: one invocation each)
    for (uint b = tid; b < n_bias; b += WG_SIZE) {
        uint id = bias[2u * b];
        if (id < n) logits[id] += uintBitsToFloat(bias[2u * b + 1u]);
    }
    memoryBarrierBuffer();
    barrier();

    // 1. repetition penalty, once per distinct recent id
    for (uint w = tid; w < recent_count; w += WG_SIZE) {
        int id = tokens[recent_begin + w];
        bool first = id >= 0 && uint(id) < n;
        for (uint e = 0u; e < w && first; e++) first = tokens[recent_begin + e] != id;
        if (first) {
            float l = logits[id];
            logits[id] = l > 0.0 ? l / penalty : l * penalty;
        }
    }
    memoryBarrierBuffer();
    barrier();

    // 2. maximum and its (lowest) id
    float bv = -1.0 / 0.0;
    uint bi = 0u;
    for (uint i = begin; i < end; i++) if (logits[i] > bv) { bv = logits[i]; bi = i; }
    red_f[tid] = bv;
    red_u[tid] = bi;
    barrier();
    if (tid == 0u) {
        for (uint j = 1u; j < WG_SIZE; j++) {
            if (red_f[j] > red_f[0]) { red_f[0] = red_f[j]; red_u[0] = red_u[j]; }
        }
    }
    barrier();
    float m = red_f[0];
    uint best = red_u[0];
    barrier();
    if (temperature <= 0.0) {
        if (tid == 0u) tokens[out_index] = int(best);
        return;
    }

    // 3. top-k: radix select of the k-th largest key, 8 bits per pass (shared histogram)
    uint thr = 0u;
    if (top_k > 0u && top_k < n) {
        uint need = top_k, mask = 0u;
        for (int d = 3; d >= 0; d--) {
            uint sh = uint(d) * 8u;
            for (uint b = tid; b < 256u; b += WG_SIZE) hist[b] = 0u;
            barrier();
            for (uint i = begin; i < end; i++) {
                uint kk = key(logits[i]);
                if ((kk & mask) == thr) atomicAdd(hist[(kk >> sh) & 255u], 1u);
            }
            barrier();
            if (tid == 0u) {  // walk the digits from the top until `need` keys are covered
                uint b = 255u;
                while (b > 0u && hist[b] < need) { need -= hist[b]; b--; }
                red_u[0] = thr | (b << sh);
                red_u[1] = need;
            }
            barrier();
            thr = red_u[0];
            need = red_u[1];
            mask |= 255u << sh;
            barrier();
        }
    }

    // 4. top-p over the top-k set, with probabilities at temperature 1 (as the cpu sampler).
    // Only candidates that also pass min-p can change the outcome; when they are few (the usual
    // case) they are copied to shared memory and the bisection runs there.
    float z = 0.0;
    uint mine = 0u;
    for (uint i = begin; i < end; i++) {
        float p = key(logits[i]) >= thr ? exp(logits[i] - m) : 0.0;
        probs[i] = p;
        z += p;
        mine += p >= min_p && p > 0.0 ? 1u : 0u;
    }
    z = sum_f(z);
    if (top_p < 1.0) {
        if (tid == 0u) n_cand = 0u;
        barrier();
        uint total = sum_u(mine);
        bool small = total <= MAX_CAND;
        if (small) {
            for (uint i = begin; i < end; i++) {
                if (probs[i] >= min_p && probs[i] > 0.0) cand[atomicAdd(n_cand, 1u)] = logits[i];
            }
        }
        barrier();
        uint tp = 0u;
        for (int bit = 31; bit >= 0; bit--) {
            uint c = tp | (1u << uint(bit));
            float mass = 0.0;
            if (small) {
                for (uint j = tid; j < total; j += WG_SIZE) mass += key(cand[j]) >= c ? exp(cand[j] - m) : 0.0;
            } else {
                for (uint i = begin; i < end; i++) mass += key(logits[i]) >= c ? probs[i] : 0.0;
            }
            if (sum_f(mass) >= top_p * z) tp = c;
        }
        thr = max(thr, tp);
    }

    // 5, 6. min-p, then weights at the temperature; prefix sums over invocations pick the token
    float s = 0.0;
    for (uint i = begin; i < end; i++) {
        bool kept = key(logits[i]) >= thr && probs[i] >= min_p;
        float w = kept ? exp((logits[i] - m) / temperature) : 0.0;
        probs[i] = w;
        s += w;
    }
    red_f[tid] = s;
    barrier();
    if (tid == 0u) {  // exclusive prefix sum over WG_SIZE partial sums, then choose the owner
        float acc = 0.0;
        for (uint j = 0u; j < WG_SIZE; j++) {
            float v = red_f[j];
            red_f[j] = acc;
            acc += v;
        }
        float u = float(pcg_hash(seed ^ pcg_hash(step + 0x9E3779B9u)) >> 8) * (1.0 / 16777216.0);
        float target = u * acc;
        uint owner = 0u;
        for (uint j = 0u; j < WG_SIZE; j++) {
            float hi = j + 1u < WG_SIZE ? red_f[j + 1u] : acc;
            if (hi > red_f[j] && red_f[j] <= target) owner = j;  // non-empty range starting at or before target
        }
        red_u[0] = owner;
        red_f[WG_SIZE - 1u] = target - red_f[owner];
        // (red_f[WG_SIZE-1] is no longer needed as a prefix: owner is known)
    }
    barrier();
    if (tid == red_u[0]) {
        float left = red_f[WG_SIZE - 1u];
        uint pick = best;
        float acc = 0.0;
        for (uint i = begin; i < end; i++) {
            if (probs[i] > 0.0) {
                pick = i;
                acc += probs[i];
                if (acc > left) break;
            }
        }
        tokens[out_index] = int(pick);
    }
}
