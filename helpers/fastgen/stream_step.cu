// The streaming decode step: GPT-2's whole greedy token in one CUDA kernel launch (batch 1, 16-bit weights).
//
// One block per multiprocessor. Before the first token, the host repacked the weights so that each block's share
// of the whole token (its rows of every layer's q, k, v product, its rows of the attention's projection, its
// hidden units of the MLP, its rows of the output layer) lies in one contiguous stream, cut into pieces of at
// most SLOT_BYTES, in the order the block uses them (stream_step.py, `plan`). The block copies its stream into a
// ring of SLOTS pieces in shared memory with asynchronous copies (on Hopper and later one bulk copy a piece by
// the Tensor Memory Accelerator; before, every thread's share in 16-byte cp.async copies), SLOTS - 1 pieces ahead
// of the piece it computes on. Those copies do not stop at a stage's end: while a block waits for the other blocks (a count
// in global memory, one arrival per block per stage), its next pieces keep arriving, so the memory stays busy
// across every wait. That is what the workbook's Triton kernels do not do: Triton's language keeps no ring of
// shared-memory buffers filled ahead across stages and waits.
//
// Stages of one token: per layer the q, k, v product (kind 0), the attention of one head with its rows of the
// projection (kind 1), the MLP (kind 2); then the output layer (kind 3), whose last block picks the token.
// Activations are fp32 in global memory (the L2 cache), read with ld.global.cg (not the multiprocessor's own
// L1, which does not see other blocks' writes); where blocks split a sum they meet in fp32 atomic adds.
//
// Compiled at run time by NVRTC; the host defines before this text: C (width), H (heads), D (head size),
// N_LAYER, VOCAB, CACHE_LEN, HIDDEN (MLP width), NTHREADS, SLOTS, SLOT_BYTES, FP16 (1: fp16 weights, 0: bf16),
// WAIT_LIMIT, PROFILE_AT (the word of counts PROFILE's clocks start at), PAIRS (column pairs of the MLP's
// output per thread), POS_PER_THREAD (cached positions per thread).

#ifndef NO_WAIT  // ablations (stream_step.ABLATE), for timing what a part costs; their tokens are wrong
#define NO_WAIT 0  // 1: waits pass at once
#endif
#ifndef NO_COPY
#define NO_COPY 0  // 1: no weights copied (the pieces compute on whatever the slots hold)
#endif
#ifndef ROWS
#define ROWS 4  // rows of weights a warp multiplies at once
#endif
#ifndef COPY_BULK
#define COPY_BULK 0  // 1: one bulk copy a piece (Hopper's TMA, sm_90+) instead of every thread's 16-byte copies
#endif
#ifndef COPY_FROM
#define COPY_FROM 0  // the first thread that copies (32: warp 0, which arrives and waits, issues no copies)
#endif
#ifndef KV_GROUPS
#define KV_GROUPS 0  // 1: attention reads the cache with head size / 8 threads a position (coalesced; see attend)
#endif
#ifndef PROFILE
#define PROFILE 0  // 1: each block writes its clock at every stage's wait and end into counts (stream_step.profile)
#endif
#ifndef ARRIVE_RELEASE
#define ARRIVE_RELEASE 0  // 1: arrive with one release add instead of a fence and a relaxed add
#endif

typedef unsigned short half_t;  // a 16-bit float's bits (bf16 or fp16)
typedef unsigned int u32;
#define NWARPS (NTHREADS / 32)
#define INF __int_as_float(0x7f800000)  // +infinity (NVRTC has no math.h)
#define GAVE_UP (1u << 30)
#define F_FIRST 1  // the piece starts its stage (wait for the stage before, set the stage up)
#define F_LAST 2   // the piece ends its stage (finish it, arrive)
#define PIECE_FIELDS 8  // kind, layer, lo, hi, head, offset (elements), flags, unused

// --- 16-bit floats, from their bits -------------------------------------------------------------------------
__device__ __forceinline__ float lo16(u32 w) {  // the first of two packed 16-bit floats
#if FP16
    float f;
    asm("{.reg .b16 l, h; mov.b32 {l, h}, %1; cvt.f32.f16 %0, l;}" : "=f"(f) : "r"(w));
    return f;
#else
    return __uint_as_float(w << 16);
#endif
}
__device__ __forceinline__ float hi16(u32 w) {  // the second
#if FP16
    float f;
    asm("{.reg .b16 l, h; mov.b32 {l, h}, %1; cvt.f32.f16 %0, h;}" : "=f"(f) : "r"(w));
    return f;
#else
    return __uint_as_float(w & 0xffff0000u);
#endif
}
__device__ __forceinline__ float to_f(half_t h) { return lo16((u32)h); }
__device__ __forceinline__ half_t from_f(float f) {  // round to nearest even, as PyTorch's casts
    half_t h;
#if FP16
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
#else
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
#endif
    return h;
}

// --- sums and waits --------------------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float s) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}
__device__ __forceinline__ float warp_max(float s) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s = fmaxf(s, __shfl_xor_sync(0xffffffffu, s, o));
    return s;
}
__device__ float block_sum(float s, float* red) {  // every thread gets the block's sum; red: NWARPS floats
    s = warp_sum(s);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
    __syncthreads();
    float t = 0.f;
#pragma unroll
    for (int w = 0; w < NWARPS; ++w) t += red[w];
    __syncthreads();
    return t;
}
__device__ float block_max(float s, float* red) {
    s = warp_max(s);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
    __syncthreads();
    float t = -INF;
#pragma unroll
    for (int w = 0; w < NWARPS; ++w) t = fmaxf(t, red[w]);
    __syncthreads();
    return t;
}

// Wait until the count reaches `target` (thread 0 polls; the block waits at the barrier after). A count that
// does not fill in WAIT_LIMIT polls gives up: the first to give up flags it and adds GAVE_UP to the count, so
// every later wait passes at once (the token is wrong, the host's check() raises), rather than a hang.
__device__ void wait_count(u32* counts, u32 target) {
    if (threadIdx.x == 0 && !NO_WAIT) {
        int n;  // signed: a count set below zero (the give-up test) waits rather than wrapping around
        for (long long polls = 0;; ++polls) {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(n) : "l"(counts) : "memory");
            if (n >= (int)target) break;
            if (polls >= WAIT_LIMIT) {
                if (atomicExch(counts + 2, 1u) == 0u) atomicAdd(counts, GAVE_UP);
                break;
            }
        }
    }
    __syncthreads();
}
// Arrive at the count: every thread's writes are done (the barrier), then thread 0 fences (which covers what the
// block wrote before the barrier) and adds 1, without waiting for the add's answer.
__device__ void arrive(u32* counts) {
    __syncthreads();
    if (threadIdx.x == 0) {
#if ARRIVE_RELEASE
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counts) : "memory");
#else
        asm volatile("fence.acq_rel.gpu;\n\tred.relaxed.gpu.global.add.u32 [%0], 1;" ::"l"(counts) : "memory");
#endif
    }
}
__device__ __forceinline__ float ldcg(const float* p) { return __ldcg(p); }

// --- the pieces' arithmetic ----------------------------------------------------------------------------------
// Rows of 16-bit weights in shared memory (C values each, `stride` bytes apart) times the fp32 vector x (shared
// memory): a warp computes up to ROWS rows at once (their loads and sums interleave, rather than one row's
// additions waiting on the last), n of them; every lane gets the sums in s.
__device__ __forceinline__ void rows_dot(const unsigned char* w, int stride, int n, const float* x, float* s) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < ROWS; ++j) s[j] = 0.f;
    for (int k = lane; k < C / 8; k += 32) {  // 8 values a load
        const float4 a = reinterpret_cast<const float4*>(x)[2 * k];
        const float4 b = reinterpret_cast<const float4*>(x)[2 * k + 1];
#pragma unroll
        for (int j = 0; j < ROWS; ++j) {
            if (j < n) {
                const uint4 v = reinterpret_cast<const uint4*>(w + j * stride)[k];
                s[j] += lo16(v.x) * a.x + hi16(v.x) * a.y + lo16(v.y) * a.z + hi16(v.y) * a.w;
                s[j] += lo16(v.z) * b.x + hi16(v.z) * b.y + lo16(v.w) * b.z + hi16(v.w) * b.w;
            }
        }
    }
#pragma unroll
    for (int j = 0; j < ROWS; ++j) s[j] = warp_sum(s[j]);
}

// LayerNorm of x (C fp32 in shared memory) into y (shared memory), with 16-bit gamma and beta in global memory.
// Each thread holds elements j = tid + k NTHREADS (k < CPT) of gamma and beta in g and be, loaded before the wait.
#define CPT ((C + NTHREADS - 1) / NTHREADS)
__device__ void layer_norm(const float* x, float* y, const float* g, const float* be, float eps, float* red) {
    float s = 0.f;
    for (int j = threadIdx.x; j < C; j += NTHREADS) s += x[j];
    const float mean = block_sum(s, red) / C;
    s = 0.f;
    for (int j = threadIdx.x; j < C; j += NTHREADS) s += (x[j] - mean) * (x[j] - mean);
    const float inv = rsqrtf(block_sum(s, red) / C + eps);
#pragma unroll
    for (int k = 0; k < CPT; ++k) {
        const int j = threadIdx.x + k * NTHREADS;
        if (j < C) y[j] = (x[j] - mean) * inv * g[k] + be[k];
    }
    __syncthreads();
}
// gamma and beta's elements of this thread (see layer_norm), read from global memory
__device__ __forceinline__ void load_norm(const half_t* gamma, const half_t* beta, float* g, float* be) {
#pragma unroll
    for (int k = 0; k < CPT; ++k) {
        const int j = threadIdx.x + k * NTHREADS;
        g[k] = j < C ? to_f(gamma[j]) : 0.f;
        be[k] = j < C ? to_f(beta[j]) : 0.f;
    }
}

__device__ __forceinline__ float gelu_tanh(float h) {  // GPT-2's tanh GELU
    return 0.5f * h * (1.f + tanhf(0.7978845608028654f * (h + 0.044715f * h * h * h)));
}

// The addresses of one layer's small tensors, one row of the host's table per layer (stream_step.COLUMNS).
struct Layer {
    const half_t *ln1_w, *ln1_b, *qkv_b;
    half_t *cache_k, *cache_v;
    const half_t *proj_b, *ln2_w, *ln2_b, *fc_b, *out_b;
};
__device__ Layer layer_at(const long long* table, int layer) {
    const long long* t = table + layer * 10;
    Layer L;
    L.ln1_w = (const half_t*)t[0];
    L.ln1_b = (const half_t*)t[1];
    L.qkv_b = (const half_t*)t[2];
    L.cache_k = (half_t*)t[3];
    L.cache_v = (half_t*)t[4];
    L.proj_b = (const half_t*)t[5];
    L.ln2_w = (const half_t*)t[6];
    L.ln2_b = (const half_t*)t[7];
    L.fc_b = (const half_t*)t[8];
    L.out_b = (const half_t*)t[9];
    return L;
}

// The attention's last step: att = the sum over warps of part (NWARPS, D) / denom; part written before a barrier.
__device__ __forceinline__ void warps_sum(const float* part, float* att, float denom) {
    if (threadIdx.x < D) {
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < NWARPS; ++w) s += part[w * D + threadIdx.x];
        att[threadIdx.x] = s / denom;
    }
    __syncthreads();
}

#if KV_GROUPS
// Attention of head `head` for the query in q (global, fp32) over cached positions 0..pos, into att (D floats,
// shared memory). G threads share a position, each holding 8 of its D values (one 16-byte load of the key, one
// of the value), so a warp reads 32 / G whole positions, contiguous in the cache; the block reads P positions a
// round. Each thread keeps its own running max, sum and 8 weighted values over its positions (the online
// softmax); the threads' parts are then rescaled to the block's max and summed. kv holds the keys and values of
// the thread's first KV_AHEAD positions, loaded before the block waited (positions before pos were written by
// earlier tokens; the one at pos only now, so it is loaded here).
#define G (D / 8)        // threads a position (a power of two, at most 32: stream_step.refuse checks the head size)
#define P (NTHREADS / G)  // positions a round
#define KV_AHEAD 4       // rounds of keys and values read before the wait
__device__ __forceinline__ float dot8(uint4 k, const float* q) {
    return lo16(k.x) * q[0] + hi16(k.x) * q[1] + lo16(k.y) * q[2] + hi16(k.y) * q[3] + lo16(k.z) * q[4] +
           hi16(k.z) * q[5] + lo16(k.w) * q[6] + hi16(k.w) * q[7];
}
__device__ void attend(const float* q_g, const half_t* ck, const half_t* cv, int pos, const uint4* kv,
                       float* qs, float* att, float* part, float* red) {
    const int tid = threadIdx.x, c = tid % G, ps = tid / G, lane = tid & 31, warp = tid >> 5;
    if (tid < D) qs[tid] = ldcg(q_g + tid) * rsqrtf((float)D);
    __syncthreads();
    float q[8], acc[8], m = -INF, total = 0.f;
#pragma unroll
    for (int d = 0; d < 8; ++d) q[d] = qs[8 * c + d], acc[d] = 0.f;
    const uint4* k4 = reinterpret_cast<const uint4*>(ck);  // (CACHE_LEN, G) 16-byte chunks
    const uint4* v4 = reinterpret_cast<const uint4*>(cv);
    // one position's key and value: the score, summed over the G threads of the position (the whole warp takes
    // part in the shuffles, so every thread goes through the same rounds), then the online softmax
    auto take = [&](bool valid, uint4 k, uint4 v) {
        float s = dot8(k, q);
#pragma unroll
        for (int o = 1; o < G; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (valid) {
            const float top = fmaxf(m, s), shrink = __expf(m - top), e = __expf(s - top);
            total = total * shrink + e;
            const float w[8] = {lo16(v.x), hi16(v.x), lo16(v.y), hi16(v.y), lo16(v.z), hi16(v.z), lo16(v.w), hi16(v.w)};
#pragma unroll
            for (int d = 0; d < 8; ++d) acc[d] = acc[d] * shrink + e * w[d];
            m = top;
        }
    };
    const int rounds = pos / P + 1;  // the same for every thread
#pragma unroll
    for (int r = 0; r < KV_AHEAD; ++r) {
        if (r < rounds) {
            const int p = ps + r * P;
            uint4 k = kv[r], v = kv[KV_AHEAD + r];
            if (p == pos) k = __ldcg(k4 + (size_t)p * G + c), v = __ldcg(v4 + (size_t)p * G + c);
            take(p <= pos, k, v);
        }
    }
    for (int r = KV_AHEAD; r < rounds; ++r) {
        const int p = ps + r * P;
        uint4 k = make_uint4(0, 0, 0, 0), v = k;
        if (p <= pos) k = __ldcg(k4 + (size_t)p * G + c), v = __ldcg(v4 + (size_t)p * G + c);
        take(p <= pos, k, v);
    }
    const float top = block_max(m, red);  // position 0 is some thread's: top is finite
    const float scale = m == -INF ? 0.f : __expf(m - top);
    const float denom = block_sum(c == 0 ? total * scale : 0.f, red);  // each position's group once
    // sum acc * scale over the block: over the lanes of a warp that hold the same values (lanes c, c + G, ...)
    // with shuffles, then over warps in shared memory
#pragma unroll
    for (int d = 0; d < 8; ++d) {
        float a = acc[d] * scale;
#pragma unroll
        for (int o = G; o < 32; o <<= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
        if (lane < G) part[warp * D + 8 * c + d] = a;
    }
    __syncthreads();
    warps_sum(part, att, denom);
}
#else
// Attention of head `head` for the query in q (global, fp32) over cached positions 0..pos, into att (D floats,
// shared memory). Each thread takes positions tid, tid + NTHREADS, ... with its own running max, sum and
// weighted values (the online softmax); the threads' parts are then rescaled to the block's max and summed.
// kv holds the keys and values of the thread's first position, loaded before the block waited (positions
// before pos were written by earlier tokens; the one at pos only now, so it is loaded here).
__device__ void attend(const float* q_g, const half_t* ck, const half_t* cv, int pos, const uint4* kv_first,
                       float* qs, float* att, float* part, float* red) {
    const int tid = threadIdx.x;
    if (tid < D) qs[tid] = ldcg(q_g + tid) * rsqrtf((float)D);
    __syncthreads();
    float m = -INF, total = 0.f, acc[D];
#pragma unroll
    for (int d = 0; d < D; ++d) acc[d] = 0.f;
#pragma unroll
    for (int i = 0; i < POS_PER_THREAD; ++i) {
        const int p = tid + i * NTHREADS;
        if (p > pos) break;
        uint4 k[D / 8], v[D / 8];
#pragma unroll
        for (int c = 0; c < D / 8; ++c) {
            if (i == 0 && p < pos) {
                k[c] = kv_first[c];
                v[c] = kv_first[D / 8 + c];
            } else {
                k[c] = __ldcg(reinterpret_cast<const uint4*>(ck + (size_t)p * D) + c);
                v[c] = __ldcg(reinterpret_cast<const uint4*>(cv + (size_t)p * D) + c);
            }
        }
        float s = 0.f;
#pragma unroll
        for (int c = 0; c < D / 8; ++c) {
            s += lo16(k[c].x) * qs[8 * c] + hi16(k[c].x) * qs[8 * c + 1] + lo16(k[c].y) * qs[8 * c + 2];
            s += hi16(k[c].y) * qs[8 * c + 3] + lo16(k[c].z) * qs[8 * c + 4] + hi16(k[c].z) * qs[8 * c + 5];
            s += lo16(k[c].w) * qs[8 * c + 6] + hi16(k[c].w) * qs[8 * c + 7];
        }
        const float top = fmaxf(m, s), shrink = __expf(m - top), e = __expf(s - top);
        total = total * shrink + e;
#pragma unroll
        for (int c = 0; c < D / 8; ++c) {
            acc[8 * c] = acc[8 * c] * shrink + e * lo16(v[c].x);
            acc[8 * c + 1] = acc[8 * c + 1] * shrink + e * hi16(v[c].x);
            acc[8 * c + 2] = acc[8 * c + 2] * shrink + e * lo16(v[c].y);
            acc[8 * c + 3] = acc[8 * c + 3] * shrink + e * hi16(v[c].y);
            acc[8 * c + 4] = acc[8 * c + 4] * shrink + e * lo16(v[c].z);
            acc[8 * c + 5] = acc[8 * c + 5] * shrink + e * hi16(v[c].z);
            acc[8 * c + 6] = acc[8 * c + 6] * shrink + e * lo16(v[c].w);
            acc[8 * c + 7] = acc[8 * c + 7] * shrink + e * hi16(v[c].w);
        }
        m = top;
    }
    const float top = block_max(m, red);  // every thread has position 0 or none: top is finite
    const float scale = m == -INF ? 0.f : __expf(m - top);
    const float denom = block_sum(total * scale, red);
    // sum acc * scale over the block: over each warp's lanes with shuffles, then over warps in shared memory
    const int lane = tid & 31, warp = tid >> 5;
#pragma unroll
    for (int d = 0; d < D; ++d) {
        const float s = warp_sum(acc[d] * scale);
        if (lane == 0) part[warp * D + d] = s;
    }
    __syncthreads();
    warps_sum(part, att, denom);
}
#endif

extern "C" __global__ void __launch_bounds__(NTHREADS, 1) stream_step(
    const half_t* __restrict__ stream,   // the packed weights, each block's share contiguous
    const int* __restrict__ pieces,      // (blocks, max_pieces, PIECE_FIELDS)
    const int* __restrict__ n_pieces,    // (blocks,)
    const long long* __restrict__ table, // (N_LAYER, 10) addresses of each layer's small tensors
    const half_t* __restrict__ wte, const half_t* __restrict__ wpe,
    const half_t* __restrict__ lnf_w, const half_t* __restrict__ lnf_b,
    float* act,                          // (4, C): the residual in turn (2 rows), the residual after attention, q
    float* best,                         // (2, blocks): each block's best logit and its row
    u32* counts,                         // arrivals, output-layer blocks done, gave up, unused; PROFILE's marks
    long long* tok, long long* pos_p, long long* out,
    int max_pieces, float eps) {
    extern __shared__ __align__(16) unsigned char smem[];
    unsigned char* ring = smem;                                   // SLOTS pieces of weights
    float* xs = reinterpret_cast<float*>(smem + SLOTS * SLOT_BYTES);  // (C,) the LayerNorm's output
    float* xr = xs + C;                                          // (C,) the residual the stage read
    float* qs = xr + C;                                          // (D,) the query, scaled
    float* att = qs + D;                                         // (D,) the attention's output
    float* gs = att + D;                                         // (SLOT_BYTES / (4 C),) the MLP's GELU outputs
    float* part = gs + SLOT_BYTES / (4 * C) + 4;                 // (NWARPS, D) partial sums
    float* red = part + NWARPS * D;                              // (NWARPS,) scratch of the block sums
    __shared__ float best_w[NWARPS];
    __shared__ int row_w[NWARPS];

    const int b = blockIdx.x, nb = gridDim.x, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int* my = pieces + (size_t)b * max_pieces * PIECE_FIELDS;
    const int np = n_pieces[b];
    const int pos = (int)*pos_p;  // stays until the last block of the output layer advances it
    const long long token = *tok;  // likewise
    float* x_mid = act + 2 * C;
    float* q_g = act + 3 * C;
#if PROFILE  // per stage (8 words): clock at the wait's start, its end, the stage set up (its input read and
    // normed), its pieces computed, its end (arrived), and cycles waiting for copies
    u32* prof = counts + PROFILE_AT + (size_t)b * 8 * (3 * N_LAYER + 2);  // after the line the waits poll
    const long long t0 = clock64();
    if (tid == 0) {
        unsigned long long g;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g));
        prof[8 * (3 * N_LAYER + 1) + 1] = (u32)g;  // the block's start in ns, to line blocks up
        for (int k = 0; k < 8 * (3 * N_LAYER + 1); ++k) prof[k] = 0;
    }
#define MARK(k) do { if (tid == 0) prof[k] = (u32)(clock64() - t0); } while (0)
#else
#define MARK(k) do { } while (0)
#endif

    // copy piece i into its slot (issue), and wait until it has landed (landed)
#if COPY_BULK
    // one thread copies a whole piece with one bulk copy (the Tensor Memory Accelerator of Hopper and later),
    // whose arrival completes a phase of the slot's barrier in shared memory; an empty piece completes it at once
    __shared__ __align__(8) unsigned long long full[SLOTS];
    if (tid == 0) {
        for (int s = 0; s < SLOTS; ++s)
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"((u32)__cvta_generic_to_shared(full + s)));
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    auto issue = [&](int i) {
        if (tid == 0 && i < np) {
            const int* f = my + i * PIECE_FIELDS;
            const int kind = f[0], n = f[3] - f[2];
            const u32 bytes = NO_COPY ? 0u : 2u * n * (kind == 1 ? D : kind == 2 ? 2 * C : C);
            const u32 bar = (u32)__cvta_generic_to_shared(full + i % SLOTS);
            if (bytes) {
                const char* src = reinterpret_cast<const char*>(stream + (size_t)(unsigned)f[5]);
                const u32 dst = (u32)__cvta_generic_to_shared(ring + (i % SLOTS) * SLOT_BYTES);
                asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
                asm volatile(
                    "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                    ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
            } else {
                asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
            }
        }
    };
    auto landed = [&](int i) {  // wait for piece i's phase of its slot's barrier
        const u32 bar = (u32)__cvta_generic_to_shared(full + i % SLOTS), parity = (i / SLOTS) & 1;
        u32 done = 0;
        while (!done)
            asm volatile("{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
                         "selp.u32 %0, 1, 0, p;\n\t}" : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    };
#else
    // every thread copies its share of a piece in 16-byte asynchronous copies, one group per piece
    auto issue = [&](int i) {
        if (i < np && !NO_COPY) {
            const int* f = my + i * PIECE_FIELDS;
            const int kind = f[0], n = f[3] - f[2];
            const int elems = n * (kind == 1 ? D : kind == 2 ? 2 * C : C);
            const char* src = reinterpret_cast<const char*>(stream + (size_t)(unsigned)f[5]);
            const u32 dst = (u32)__cvta_generic_to_shared(ring + (i % SLOTS) * SLOT_BYTES);
            for (int c = tid - COPY_FROM; c >= 0 && c < elems / 8; c += NTHREADS - COPY_FROM)
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst + 16 * c), "l"(src + 16 * c)
                             : "memory");
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
    };
    auto landed = [&](int i) {  // this thread's copies of piece i (the block's, after the next barrier)
        asm volatile("cp.async.wait_group %0;" ::"n"(SLOTS - 1) : "memory");
    };
#endif
    for (int i = 0; i < SLOTS - 1; ++i) issue(i);

    float acc[2 * PAIRS];  // the MLP's output columns 2 t, 2 t + 1, t = tid + k NTHREADS, summed over pieces
    float top = -INF;  // the output layer: this warp's best logit and row
    int top_row = 0;
#if KV_GROUPS
    uint4 kv[2 * KV_AHEAD];  // the attention: keys, then values, of this thread's first KV_AHEAD positions
#else
    uint4 kv[D / 4];  // the attention: the key and value at this thread's first cached position
#endif

    for (int i = 0; i < np; ++i) {
        issue(i + SLOTS - 1);
        const int* f = my + i * PIECE_FIELDS;
        const int kind = f[0], layer = f[1], lo = f[2], hi = f[3], head = f[4], flags = f[6];
        const int stage = kind == 3 ? 3 * N_LAYER : 3 * layer + kind;
#if PROFILE
        const long long c0 = clock64();
#endif
        landed(i);
#if PROFILE
        if (tid == 0) prof[8 * stage + 5] += (u32)(clock64() - c0);
#endif
        const unsigned char* slot = ring + (i % SLOTS) * SLOT_BYTES;
        const Layer L = layer_at(table, kind == 3 ? 0 : layer);
#if KV_GROUPS
        if (kind == 1 && hi > lo) {  // keys and values cached by earlier tokens: read before waiting
            const uint4* ck = reinterpret_cast<const uint4*>(L.cache_k + (size_t)head * CACHE_LEN * D);
            const uint4* cv = reinterpret_cast<const uint4*>(L.cache_v + (size_t)head * CACHE_LEN * D);
#pragma unroll
            for (int r = 0; r < KV_AHEAD; ++r) {
                const int p = tid / G + r * P, at = p * G + tid % G;  // (see attend)
                kv[r] = p < pos ? __ldcg(ck + at) : make_uint4(0, 0, 0, 0);
                kv[KV_AHEAD + r] = p < pos ? __ldcg(cv + at) : make_uint4(0, 0, 0, 0);
            }
        }
#else
        if (kind == 1 && hi > lo && tid < pos) {  // keys and values cached by earlier tokens: read before waiting
            const uint4* ck = reinterpret_cast<const uint4*>(L.cache_k + ((size_t)head * CACHE_LEN + tid) * D);
            const uint4* cv = reinterpret_cast<const uint4*>(L.cache_v + ((size_t)head * CACHE_LEN + tid) * D);
#pragma unroll
            for (int c = 0; c < D / 8; ++c) {
                kv[c] = __ldcg(ck + c);
                kv[D / 8 + c] = __ldcg(cv + c);
            }
        }
#endif
        if (flags & F_FIRST) {
            // What no other block writes is read before the wait, so that its latency passes while waiting: the
            // norm's gamma and beta, the token's embedding, the biases block 0 starts the layer's sums with. Each
            // thread reads and writes its own elements j = tid + k NTHREADS (as layer_norm does).
            float g[CPT], be[CPT], e[CPT], pb[CPT], ob[CPT];
            if (kind != 1) {
                load_norm(kind == 0 ? L.ln1_w : kind == 2 ? L.ln2_w : lnf_w,
                          kind == 0 ? L.ln1_b : kind == 2 ? L.ln2_b : lnf_b, g, be);
            }
            if (kind == 0) {
#pragma unroll
                for (int k = 0; k < CPT; ++k) {
                    const int j = tid + k * NTHREADS;
                    e[k] = j < C && layer == 0 ? to_f(wte[(size_t)token * C + j]) + to_f(wpe[(size_t)pos * C + j]) : 0.f;
                    pb[k] = j < C && b == 0 ? to_f(L.proj_b[j]) : 0.f;
                    ob[k] = j < C && b == 0 ? to_f(L.out_b[j]) : 0.f;
                }
            }
            MARK(8 * stage);
            if (stage > 0) wait_count(counts, (u32)stage * nb);
            MARK(8 * stage + 1);
            // the stage's input (C fp32 in xr), then its norm (xs)
            const float* x_in = kind == 0 ? act + (layer % 2) * C : kind == 2 ? x_mid : act + (N_LAYER % 2) * C;
            if (kind != 1) {
#pragma unroll
                for (int k = 0; k < CPT; ++k) {
                    const int j = tid + k * NTHREADS;
                    if (j < C) xr[j] = kind == 0 && layer == 0 ? e[k] : ldcg(x_in + j);
                }
            }
            if (kind == 0 && b == 0) {  // start the sums this layer's later stages add into
                float* x_out = act + ((layer + 1) % 2) * C;
#pragma unroll
                for (int k = 0; k < CPT; ++k) {
                    const int j = tid + k * NTHREADS;
                    if (j < C) x_mid[j] = xr[j] + pb[k], x_out[j] = ob[k];
                }
            }
            if (kind != 1) layer_norm(xr, xs, g, be, eps, red);
            if (kind == 2) {
#pragma unroll
                for (int k = 0; k < 2 * PAIRS; ++k) acc[k] = 0.f;
            }
            MARK(8 * stage + 2);
        }
        __syncthreads();  // every thread's copies of piece i have landed (each waited for its own)

        if (kind == 0) {  // rows lo..hi of the q, k, v product: q to global, k and v into the cache at pos
            for (int r0 = lo + warp * ROWS; r0 < hi; r0 += NWARPS * ROWS) {
                float y[ROWS];
                const float bias = lane < ROWS && r0 + lane < hi ? to_f(L.qkv_b[r0 + lane]) : 0.f;  // read first
                rows_dot(slot + (size_t)(r0 - lo) * C * 2, C * 2, hi - r0, xs, y);
                if (lane < ROWS && r0 + lane < hi) {  // lane j stores row r0 + j
                    float yj = y[0];
#pragma unroll
                    for (int j = 1; j < ROWS; ++j) yj = lane == j ? y[j] : yj;
                    const int r = r0 + lane;
                    const float v = yj + bias;
                    const int which = r / C, j = r % C, h = j / D;
                    const size_t at = ((size_t)h * CACHE_LEN + pos) * D + j % D;
                    if (which == 0) q_g[j] = v;
                    else if (which == 1) L.cache_k[at] = from_f(v);
                    else L.cache_v[at] = from_f(v);
                }
            }
        } else if (kind == 1) {  // head's attention, times rows lo..hi of the projection's columns for that head
            if (hi > lo) {
                attend(q_g + head * D, L.cache_k + (size_t)head * CACHE_LEN * D,
                       L.cache_v + (size_t)head * CACHE_LEN * D, pos, kv, qs, att, part, red);
                for (int r = lo + warp; r < hi; r += NWARPS) {
                    const u32* w = reinterpret_cast<const u32*>(slot + (size_t)(r - lo) * D * 2);
                    float s = 0.f;
                    for (int k = lane; k < D / 2; k += 32) s += lo16(w[k]) * att[2 * k] + hi16(w[k]) * att[2 * k + 1];
                    s = warp_sum(s);
                    if (lane == 0) atomicAdd(x_mid + r, s);
                }
            }
        } else if (kind == 2) {  // hidden units lo..hi: GELU(LN(x) fc + b), times their columns of out
            for (int u0 = warp * ROWS; u0 < hi - lo; u0 += NWARPS * ROWS) {
                float h[ROWS];
                const float bias = lane < ROWS && u0 + lane < hi - lo ? to_f(L.fc_b[lo + u0 + lane]) : 0.f;
                rows_dot(slot + (size_t)u0 * 4 * C, 4 * C, hi - lo - u0, xs, h);
                if (lane < ROWS && u0 + lane < hi - lo) {
                    float hj = h[0];
#pragma unroll
                    for (int j = 1; j < ROWS; ++j) hj = lane == j ? h[j] : hj;
                    gs[u0 + lane] = gelu_tanh(hj + bias);
                }
            }
            __syncthreads();
#pragma unroll
            for (int k = 0; k < PAIRS; ++k) {
                const int t = tid + k * NTHREADS;
                if (2 * t < C) {
                    for (int u = 0; u < hi - lo; ++u) {
                        const u32 w = reinterpret_cast<const u32*>(slot + (size_t)u * 4 * C + 2 * C)[t];
                        acc[2 * k] += gs[u] * lo16(w);
                        acc[2 * k + 1] += gs[u] * hi16(w);
                    }
                }
            }
        } else {  // rows lo..hi of the output layer: each warp keeps its best logit (the first row on a tie)
            for (int r0 = lo + warp * ROWS; r0 < hi; r0 += NWARPS * ROWS) {
                float y[ROWS];
                rows_dot(slot + (size_t)(r0 - lo) * C * 2, C * 2, hi - r0, xs, y);
#pragma unroll
                for (int j = 0; j < ROWS; ++j)
                    if (r0 + j < hi && y[j] > top) top = y[j], top_row = r0 + j;
            }
        }

        if (flags & F_LAST) {
            MARK(8 * stage + 3);
            if (kind == 2) {  // add the block's part of the MLP's output (block 0 also the residual)
                float* x_out = act + ((layer + 1) % 2) * C;
#pragma unroll
                for (int k = 0; k < PAIRS; ++k) {
                    const int t = tid + k * NTHREADS;
                    if (2 * t < C) {
                        atomicAdd(x_out + 2 * t, acc[2 * k] + (b == 0 ? xr[2 * t] : 0.f));
                        atomicAdd(x_out + 2 * t + 1, acc[2 * k + 1] + (b == 0 ? xr[2 * t + 1] : 0.f));
                    }
                }
            }
            if (kind != 3) {
                arrive(counts);
            } else {  // the block's best row, then the last block to finish picks the token among the blocks'
                if (lane == 0) best_w[warp] = top, row_w[warp] = top_row;
                __syncthreads();
                if (tid == 0) {
                    float bv = -INF;
                    int br = 0x7fffffff;
                    for (int w = 0; w < NWARPS; ++w)
                        if (best_w[w] > bv || (best_w[w] == bv && row_w[w] < br)) bv = best_w[w], br = row_w[w];
                    best[b] = bv;
                    best[nb + b] = __int_as_float(br);
                    __threadfence();
                    if (atomicAdd(counts + 1, 1u) == (u32)nb - 1) {  // every block's best is written
                        __threadfence();
                        float tv = -INF;
                        int tr = 0x7fffffff;
                        for (int o = 0; o < nb; ++o) {
                            const float v = ldcg(best + o);
                            const int r = __float_as_int(ldcg(best + nb + o));
                            if (v > tv || (v == tv && r < tr)) tv = v, tr = r;
                        }
                        out[pos + 1] = tr;
                        *tok = tr;
                        *pos_p = pos + 1;
                        counts[0] = 0;  // every block has passed every wait of this token
                        counts[1] = 0;
                    }
                }
            }
        }
        if (flags & F_LAST) MARK(8 * stage + 4);
        __syncthreads();  // piece i's slot is free for piece i + SLOTS
    }
    MARK(8 * (3 * N_LAYER + 1));
#if !COPY_BULK
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}
