// The workbook's q8_0 matrix product for CPUs: y = x @ W.T with W in blocks of 32 int8 values, one scale each.
//
// Built and loaded by helpers/q8.py (torch.utils.cpp_extension, with -O3 -march=native; ATen and the operator
// registry only, no Python bindings, so that it compiles in seconds), which also holds the
// same arithmetic in PyTorch (q8.matmul_reference) to test it against. What it does, as llama.cpp does on a CPU:
//   1. quantize each row of x to int8 in blocks of 32 (one float scale per block, absmax / 127);
//   2. for each block, a dot product of 32 int8 weights with 32 int8 activations in integer arithmetic
//      (one AVX-512 VNNI instruction does 64 of these products and sums them in groups of four);
//   3. multiply the block's integer sum by its two scales (weights' and activations') and add it up in float;
//   4. split the output rows between threads (at::parallel_for, OpenMP), each thread streaming its rows.
// The weights are stored interleaved: 4 output rows' blocks side by side, so that one thread reads one
// sequential stream (what the hardware prefetcher follows best) while it computes 4 rows at once, and asks for
// the weights a little ahead of use (software prefetch), which can put more reads in flight than the hardware
// prefetcher alone does.
// Layout: codes (N/4, B, 4, 32) int8 seen as a 2-D (N, B*32) tensor; scales (N/4, B, 4) fp16 seen as (N, B).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

// Each build's operators, and its C++ names, live in a namespace of their own (several builds can be loaded in
// one process: the tests' and notebook 03c's variants). Default: faster_gpt2.
#ifndef Q8_NS
#define Q8_NS faster_gpt2
#endif

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#define Q8_X86 1
#endif

namespace {

// Step 1: x (M, K) float -> xq (M, B*32) int8 and xs (M, B) float scales; columns past K are zero.
void quantize_rows(const float* x, int64_t M, int64_t K, int64_t B, int8_t* xq, float* xs) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t k0 = b * 32, k1 = std::min<int64_t>(K, k0 + 32);
      float amax = 0.f;
      for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(x[m * K + k]));
      const float d = amax / 127.f, inv = d > 0.f ? 1.f / d : 0.f;
      xs[m * B + b] = d;
      for (int64_t k = k0; k < k1; ++k) xq[m * B * 32 + k] = (int8_t)std::nearbyint(x[m * K + k] * inv);
      for (int64_t k = k1; k < k0 + 32; ++k) xq[m * B * 32 + k] = 0;  // padding past K
    }
  }
}

// Steps 2-3 for one block of 4 rows, any CPU: plain loops (the compiler vectorizes what it can).
void four_rows_portable(const int8_t* wg, const at::Half* sg, const int8_t* xr, const float* xs, int64_t B,
                        float out[4]) {
  for (int r = 0; r < 4; ++r) out[r] = 0.f;
  for (int64_t b = 0; b < B; ++b) {
    for (int r = 0; r < 4; ++r) {
      int32_t acc = 0;
      for (int k = 0; k < 32; ++k) acc += (int32_t)wg[b * 128 + r * 32 + k] * (int32_t)xr[b * 32 + k];
      out[r] += (float)acc * (float)sg[b * 4 + r] * xs[b];
    }
  }
}

#ifdef Q8_X86
#ifndef Q8_PF
#define Q8_PF 1536
#endif
// Ask for the weights Q8_PF bytes ahead of those being used (0 leaves it all to the hardware prefetcher, which
// stops at each 4 KiB page). Whether the hint pays differs between CPUs: helpers/q8.py's "no_prefetch" variant
// builds the kernel without it, and notebook 03c times both on the learner's CPU.
inline void prefetch_ahead(const int8_t* p, int bytes) {
  if (Q8_PF > 0)
    for (int i = 0; i < bytes; i += 64) _mm_prefetch((const char*)(p + Q8_PF + i), _MM_HINT_T0);
}

inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// 32 int8 products summed in 8 int32 lanes. The instructions multiply unsigned by signed bytes, so x's sign
// moves onto w: |x| * (w * sign(x)) = x * w.
inline __m256i dot32(__m256i abs_x, __m256i x, __m256i w) {
  const __m256i w_signed = _mm256_sign_epi8(w, x);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), abs_x, w_signed);  // VNNI: one instruction
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), abs_x, w_signed);
#else
  const __m256i pairs = _mm256_maddubs_epi16(abs_x, w_signed);  // AVX2: 16 sums of two products (int16)
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));         // then 8 sums of four (int32)
#endif
}

// Steps 2-3 for 4 rows with AVX2 (256-bit registers: one block of 32 per instruction).
void four_rows_avx2(const int8_t* wg, const at::Half* sg, const int8_t* xr, const float* xs, int64_t B,
                    float out[4]) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t b = 0; b < B; ++b) {
    const int8_t* wb = wg + b * 128;  // this block of the 4 rows: 4 x 32 int8, contiguous
    prefetch_ahead(wb, 128);
    const __m256i xv = _mm256_loadu_si256((const __m256i*)(xr + b * 32));
    const __m256i ax = _mm256_sign_epi8(xv, xv);
    const __m128 scale = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i*)(sg + b * 4))), _mm_set1_ps(xs[b]));
    alignas(16) float s[4];
    _mm_store_ps(s, scale);
    for (int r = 0; r < 4; ++r) {
      const __m256i d = dot32(ax, xv, _mm256_loadu_si256((const __m256i*)(wb + r * 32)));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(s[r]), acc[r]);
    }
  }
  for (int r = 0; r < 4; ++r) out[r] = hsum256(acc[r]);
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
// Steps 2-3 for 4 rows with AVX-512 VNNI (512-bit registers: two blocks per instruction).
void four_rows_avx512(const int8_t* wg, const at::Half* sg, const int8_t* xr, const float* xs, int64_t B,
                      float out[4]) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  int64_t b = 0;
  for (; b + 1 < B; b += 2) {
    const int8_t* wb = wg + b * 128;  // blocks b and b+1 of the 4 rows: 2 x 4 x 32 int8, contiguous
    prefetch_ahead(wb, 256);
    const __m512i xv = _mm512_loadu_si512((const void*)(xr + b * 32));
    const __m512i ax = _mm512_abs_epi8(xv);
    const __mmask64 negative = _mm512_movepi8_mask(xv);
    // the 8 weight scales (4 rows x 2 blocks) times x's two block scales
    const __m256 s8 = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(sg + b * 4))),
                                    _mm256_set_m128(_mm_set1_ps(xs[b + 1]), _mm_set1_ps(xs[b])));
    const __m512 s16 = _mm512_castps256_ps512(s8);
    for (int r = 0; r < 4; ++r) {
      const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(wb + r * 32))),
                                           _mm256_loadu_si256((const __m256i*)(wb + 128 + r * 32)), 1);
      const __m512i w_signed = _mm512_mask_sub_epi8(w, negative, _mm512_setzero_si512(), w);
      const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ax, w_signed);
      // lanes 0-7 are block b (scale of row r), lanes 8-15 block b+1 (scale of row r, 4 entries later)
      const __m512i pick = _mm512_set_epi32(r + 4, r + 4, r + 4, r + 4, r + 4, r + 4, r + 4, r + 4, r, r, r, r, r, r, r, r);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_permutexvar_ps(pick, s16), acc[r]);
    }
  }
  for (int r = 0; r < 4; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
  if (b < B) {  // an odd last block
    float tail[4];
    four_rows_avx2(wg + b * 128, sg + b * 4, xr + b * 32, xs + b, 1, tail);
    for (int r = 0; r < 4; ++r) out[r] += tail[r];
  }
}
#endif
#endif

}  // namespace

// Which of the paths above this build uses.
std::string q8_isa() {
#if defined(Q8_X86) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
  return "AVX-512 VNNI";
#elif defined(Q8_X86) && ((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__))
  return "AVX2 with VNNI";
#elif defined(Q8_X86)
  return "AVX2";
#else
  return "portable C++";
#endif
}

namespace Q8_NS {
// The product on raw pointers (the decode step of q8_step.cpp calls it too): x (M, K) float; w, s the
// interleaved codes (Np, B*32) and scales (Np, B); y (M, N) float.
void q8_matmul_raw(const float* x, int64_t M, int64_t K, const int8_t* w, const at::Half* s, int64_t Np, int64_t B,
                   int64_t N, float* y) {
  const int64_t Kp = B * 32;
  // the quantized rows live in buffers kept by the calling thread, reused by the next call: a decode step makes
  // 49 calls, and this saves two allocations (and zeroing) in each
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<float> xs;
  xq.resize(M * Kp);
  xs.resize(M * B);
  quantize_rows(x, M, K, B, xq.data(), xs.data());
  const int8_t* xqp = xq.data();
  const float* xsp = xs.data();
  at::parallel_for(0, Np / 4, 16, [&](int64_t g0, int64_t g1) {  // step 4: threads over row groups
    for (int64_t g = g0; g < g1; ++g) {
      const int8_t* wg = w + g * 4 * Kp;
      const at::Half* sg = s + g * 4 * B;
      for (int64_t m = 0; m < M; ++m) {
        float out[4];
#if defined(Q8_X86) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
        four_rows_avx512(wg, sg, xqp + m * Kp, xsp + m * B, B, out);
#elif defined(Q8_X86)
        four_rows_avx2(wg, sg, xqp + m * Kp, xsp + m * B, B, out);
#else
        four_rows_portable(wg, sg, xqp + m * Kp, xsp + m * B, B, out);
#endif
        for (int r = 0; r < 4 && g * 4 + r < N; ++r) y[m * N + g * 4 + r] = out[r];
      }
    }
  });
}

}  // namespace Q8_NS

// x (M, K) float32; codes (Np, B*32) int8 and scales (Np, B) fp16 in the interleaved layout (Np = N rounded up
// to 4); returns y (M, N) float32.
at::Tensor q8_matmul(at::Tensor x, at::Tensor codes, at::Tensor scales, int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "q8_matmul: x must be 2-D float32");
  TORCH_CHECK(codes.scalar_type() == at::kChar && scales.scalar_type() == at::kHalf, "q8_matmul: codes int8, scales fp16");
  TORCH_CHECK(codes.size(0) % 4 == 0 && codes.size(0) >= N && codes.size(1) % 32 == 0, "q8_matmul: bad code shape");
  TORCH_CHECK(scales.size(0) == codes.size(0) && scales.size(1) * 32 == codes.size(1), "q8_matmul: bad scale shape");
  TORCH_CHECK(x.size(1) <= codes.size(1), "q8_matmul: x is wider than the weights");
  x = x.contiguous();
  auto y = at::empty({x.size(0), N}, x.options());
  Q8_NS::q8_matmul_raw(x.data_ptr<float>(), x.size(0), x.size(1), codes.data_ptr<int8_t>(), scales.data_ptr<at::Half>(),
                codes.size(0), codes.size(1) / 32, N, y.data_ptr<float>());
  return y;
}

// The operators. In the namespace faster_gpt2, helpers/q8.py declares q8_matmul (with its shape function for
// torch.compile) and this file gives its CPU code. Other builds (the tests' AVX2 and plain C++ paths, a timed
// first build) use a namespace of their own, Q8_NS, and declare q8_matmul here too (Q8_DECLARE).
TORCH_LIBRARY_FRAGMENT(Q8_NS, m) {
  m.def("q8_isa() -> str", &q8_isa);
#ifdef Q8_DECLARE
  m.def("q8_matmul(Tensor x, Tensor codes, Tensor scales, int n) -> Tensor");
#endif
}

TORCH_LIBRARY_IMPL(Q8_NS, CPU, m) {
  m.impl("q8_matmul", &q8_matmul);
}
