// Dense matmul for a few activation rows on the CPU: y = x @ W^T (+ bias), W (N, K) fp32 or bf16.
//
// A decode step multiplies one row per sequence by every weight, so the product should stream W
// from memory once, whatever the number of rows. torch's GEMM does not for a few rows: it re-reads
// or repacks W per call and runs far below the memory's bandwidth (on a 2-core Zen 4 with MKL, fp32
// 576 x 1536: 9.5 GB/s at 1 row, 7 GB/s at 4, 4.5 GB/s at 16, where 25 GB/s are there to read).
// Here each W row is read once and multiplied into the accumulators of up to kTile x rows at a
// time (x, at most 16 rows of fp32, stays in L1/L2 while W streams past), two W rows per step so
// that the loads of x are shared, with the line kPrefetch bytes ahead requested as in int8_mm.
// Products and sums are fp32 (bf16 weights are widened exactly, as the GEMM does); the sums run in
// another order than the GEMM's, so results match it to rounding, not bitwise.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kMaxRows = 16;     // the op's limit: beyond it the GEMM's reuse of W pays
constexpr int64_t kTile = 8;         // x rows per pass over a W row pair: 16 accumulators in registers
constexpr int64_t kPrefetch = 6144;  // bytes of W ahead of the reads that each step asks for

#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {  // bf16 -> fp32 is a 16-bit shift, exact
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// out[i * ldo] = x[i] . w for the T x rows (fp32, stride k): one W row read once, in order (a single
// stream the hardware prefetcher follows), two accumulators per x row so consecutive FMAs overlap
template <int T, typename W>
inline void dots_T(const float* x, const W* w, int64_t k, float* out, int64_t ldo) {
  __m512 acc[2][T];
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < T; ++i) acc[h][i] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= k; c += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(w + c) + kPrefetch, _MM_HINT_T0);
    if (sizeof(W) == 4) _mm_prefetch(reinterpret_cast<const char*>(w + c + 16) + kPrefetch, _MM_HINT_T0);
    const __m512 w0 = load16(w + c), w1 = load16(w + c + 16);
    for (int i = 0; i < T; ++i) {
      acc[0][i] = _mm512_fmadd_ps(_mm512_loadu_ps(x + i * k + c), w0, acc[0][i]);
      acc[1][i] = _mm512_fmadd_ps(_mm512_loadu_ps(x + i * k + c + 16), w1, acc[1][i]);
    }
  }
  for (int i = 0; i < T; ++i) {
    float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][i], acc[1][i]));
    for (int64_t t = c; t < k; ++t) s += x[i * k + t] * static_cast<float>(w[t]);
    out[i * ldo] = s;
  }
}
#endif

// the portable version of one x row against one W row (the compiler vectorises the reduction)
template <typename W>
inline float dot(const float* x, const W* w, int64_t k) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < k; ++c) s += x[c] * static_cast<float>(w[c]);
  return s;
}

// y[i, j] for rows i < m of xf (fp32, m x k) and W rows j in [j0, j1), into yf (fp32, m x n)
template <typename W>
void rows_block(const float* xf, int64_t m, const W* w, int64_t k, int64_t n, int64_t j0, int64_t j1, float* yf) {
  int64_t j = j0;
#if defined(__AVX512F__)
  for (; j < j1; ++j)
    for (int64_t i0 = 0; i0 < m; i0 += kTile) {
      const float* x = xf + i0 * k;
      float* out = yf + i0 * n + j;
      switch (std::min(kTile, m - i0)) {
        case 1: dots_T<1>(x, w + j * k, k, out, n); break;
        case 2: dots_T<2>(x, w + j * k, k, out, n); break;
        case 3: dots_T<3>(x, w + j * k, k, out, n); break;
        case 4: dots_T<4>(x, w + j * k, k, out, n); break;
        case 5: dots_T<5>(x, w + j * k, k, out, n); break;
        case 6: dots_T<6>(x, w + j * k, k, out, n); break;
        case 7: dots_T<7>(x, w + j * k, k, out, n); break;
        default: dots_T<8>(x, w + j * k, k, out, n); break;
      }
    }
#endif
  for (; j < j1; ++j)
    for (int64_t i = 0; i < m; ++i) yf[i * n + j] = dot(xf + i * k, w + j * k, k);
}

at::Tensor few_rows_mm(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(weight.dim() == 2, "few_rows_mm: the weight must be (N, K)");
  const int64_t n = weight.size(0), k = weight.size(1);
  TORCH_CHECK(x.size(-1) == k, "few_rows_mm: x has ", x.size(-1), " features, the weight ", k);
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "few_rows_mm: CPU tensors only");
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16,
              "few_rows_mm: fp32 or bf16 weights, got ", weight.scalar_type());
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "few_rows_mm: x and the weight must share a dtype");
  TORCH_CHECK(!bias || bias->numel() == n, "few_rows_mm: the bias must have ", n, " elements");
  const int64_t m = x.numel() / std::max<int64_t>(k, 1);
  TORCH_CHECK(m <= kMaxRows, "few_rows_mm: at most ", kMaxRows, " rows, got ", m);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  at::Tensor out = at::empty(shape, x.options());
  if (m == 0 || n == 0) return out;
  const at::Tensor xf = x.reshape({m, k}).to(at::kFloat).contiguous();
  const at::Tensor w = weight.contiguous();
  std::vector<float> yf(m * n);
  const float* xp = xf.data_ptr<float>();
  // 32 W rows (at least 18 KB of reads) per task: enough to pay for the dispatch, small enough to balance
  at::parallel_for(0, (n + 1) / 2, 16, [&](int64_t p0, int64_t p1) {
    const int64_t j0 = 2 * p0, j1 = std::min(n, 2 * p1);
    if (w.scalar_type() == at::kFloat) rows_block(xp, m, w.data_ptr<float>(), k, n, j0, j1, yf.data());
    else rows_block(xp, m, w.data_ptr<at::BFloat16>(), k, n, j0, j1, yf.data());
  });
  const float* bp = nullptr;
  at::Tensor bf;
  if (bias) {
    bf = bias->to(at::kFloat).contiguous();
    bp = bf.data_ptr<float>();
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "few_rows_mm", [&] {
    scalar_t* op = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) op[i * n + j] = static_cast<scalar_t>(yf[i * n + j] + (bp ? bp[j] : 0.f));
  });
  return out;
}

}  // namespace

// TORCH_LIBRARY(llmkit, ...) is llmkit/generate/decode_attention.cpp's; this file adds to that namespace
TORCH_LIBRARY_FRAGMENT(llmkit, m) { m.def("few_rows_mm(Tensor x, Tensor weight, Tensor? bias) -> Tensor"); }

TORCH_LIBRARY_IMPL(llmkit, CPU, m) { m.impl("few_rows_mm", &few_rows_mm); }
