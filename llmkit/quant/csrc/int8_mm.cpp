// Weight-only int8 matmul on the CPU: y = (x @ W^T) * scales, W (N, K) int8, one fp32 scale per output row.
//
// Decoding multiplies one to a few activation rows by every weight, so each weight is used once
// per row and the kernel's job is to stream W. aten._weight_int8pack_mm serves that case poorly
// (on SmolLM2-135M it took about 60% of an int8 decode step), so the few-rows path is ours, parallel
// over the rows of W, in one of two numerics:
// - exact (default): each int8 weight is widened to fp32 and multiplied into fp32 accumulators
//   against x in fp32: the products of dequantising W, up to the order of the sums.
// - int8 activations (llama.cpp's decode recipe, opt-in): x is rounded per 32-block to int8 with
//   a scale d = max|x| / 127, and 64 weights cost one VNNI instruction (vpdpbusd: unsigned bytes
//   times signed bytes, summed in fours into int32 lanes). W's signed bytes become unsigned by
//   flipping their top bit (w + 128); each lane starts from -128 times its 4 activations' sum, so it
//   ends holding an exact part of one block's integer dot product, scaled by its block's d in fp32.
//   Three times fewer instructions per weight than the exact path; each product moves by the
//   rounding of x (~0.5%). CPUs without AVX512-VNNI compute the same integers with plain loops.
// Many rows (prefill, perplexity) are a GEMM problem: W is widened to x's dtype and multiplied by
// torch's GEMM (oneDNN, AMX where present), the scales applied to the result; with int8
// activations x is first rounded to its int8 grid (in float), so every path computes the same numbers.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "q8_block.h"

#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define LLMKIT_VNNI512 1
#endif

namespace {

constexpr int64_t kSmallM = 8;  // at most this many x rows take the row-streaming path
constexpr int64_t kBlock = llmkit_q8::kBlock;  // activation block of the int8 numerics (llama.cpp's Q8 block)
constexpr int64_t kPrefetch = 2048;  // bytes ahead of the weights being read that the row kernels ask for

// ---- exact: fp32 products ----

// sum over c < k of x[c] * w[c]. Decoding streams W from memory once per token and a core alone
// keeps too few cache-line reads in flight to reach the memory's bandwidth, so each 64 weights
// also ask for the line kPrefetch bytes ahead (the rows of a task are contiguous, so this runs
// on into the next row); four accumulators keep consecutive FMAs from waiting on each other.
inline float dot_fp32(const float* x, const int8_t* w, int64_t k) {
  int64_t c = 0;
  float sum = 0.f;
#if defined(__AVX512F__)
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (; c + 64 <= k; c += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(w + c + kPrefetch), _MM_HINT_T0);
    for (int u = 0; u < 4; ++u) {
      const __m128i wc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + c + 16 * u));
      acc[u] = _mm512_fmadd_ps(_mm512_loadu_ps(x + c + 16 * u), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(wc)), acc[u]);
    }
  }
  for (; c + 16 <= k; c += 16) {
    const __m128i wc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + c));
    acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(x + c), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(wc)), acc[0]);
  }
  sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
#endif
  for (; c < k; ++c) sum += x[c] * static_cast<float>(w[c]);
  return sum;
}

// ---- int8 activations ----

// x rows rounded per block: q (m, k) int8 and d (m, k / kBlock) scales; for the VNNI loop also, per
// group of 4 columns (one int32 lane), its block's d and -128 * sum(q), the excess the unsigned weights add
struct Q8Rows {
  std::vector<int8_t> q;
  std::vector<float> d, lane_d;
  std::vector<int32_t> lane_excess;
};

Q8Rows quantize_rows(const float* x, int64_t m, int64_t k) {
  const int64_t nb = k / kBlock;
  Q8Rows r{std::vector<int8_t>(m * k), std::vector<float>(m * nb), std::vector<float>(m * k / 4),
           std::vector<int32_t>(m * k / 4)};
  for (int64_t b = 0; b < m * nb; ++b) {
    int8_t* qb = r.q.data() + b * kBlock;
    r.d[b] = llmkit_q8::quantize_block(x + b * kBlock, qb);
    for (int64_t l = 0; l < kBlock / 4; ++l) {
      r.lane_d[b * kBlock / 4 + l] = r.d[b];
      r.lane_excess[b * kBlock / 4 + l] = -128 * (qb[4 * l] + qb[4 * l + 1] + qb[4 * l + 2] + qb[4 * l + 3]);
    }
  }
  return r;
}

// out[r] = sum over blocks of d_b * (q_b . w_b) for the R weight rows w + r * k and x row i of q8;
// R rows at a time share the loads of q and of the lane vectors and keep R accumulators in flight
template <int R>
inline void dot_q8(const Q8Rows& q8, int64_t i, const int8_t* w, int64_t k, float* out) {
  const int8_t* q = q8.q.data() + i * k;
  const float* d = q8.d.data() + i * (k / kBlock);
  int64_t c = 0;
  float sum[R] = {};
#ifdef LLMKIT_VNNI512
  const float* lane_d = q8.lane_d.data() + i * k / 4;
  const int32_t* lane_excess = q8.lane_excess.data() + i * k / 4;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (; c + 64 <= k; c += 64) {
    const __m512i qc = _mm512_loadu_si512(q + c), excess = _mm512_loadu_si512(lane_excess + c / 4);
    const __m512 scale = _mm512_loadu_ps(lane_d + c / 4);
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w + r * k + c + kPrefetch), _MM_HINT_T0);
      // starting from -128 * sum(q) makes each lane the exact q . w of its 4 columns
      const __m512i u = _mm512_xor_si512(_mm512_loadu_si512(w + r * k + c), flip);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(excess, u, qc)), scale, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) sum[r] = _mm512_reduce_add_ps(acc[r]);
#endif
  for (; c < k; c += kBlock)
    for (int r = 0; r < R; ++r) {
      int32_t block = 0;
      for (int64_t t = c; t < c + kBlock; ++t)
        block += static_cast<int32_t>(q[t]) * static_cast<int32_t>(w[r * k + t]);
      sum[r] += d[c / kBlock] * static_cast<float>(block);
    }
  for (int r = 0; r < R; ++r) out[r] = sum[r];
}

// x rounded to its int8 grid in float, for the GEMM path: the numbers the row kernel multiplies
at::Tensor round_to_grid(const at::Tensor& x2) {
  const at::Tensor blocks = x2.to(at::kFloat).reshape({x2.size(0), -1, kBlock});
  const at::Tensor d = blocks.abs().amax(-1, true) / 127.f;
  return (at::round(blocks / at::where(d > 0, d, at::ones_like(d))) * d).reshape(x2.sizes()).to(x2.scalar_type());
}

// a small float tensor's values copied into fp32 by a plain loop (decode-sized: an ATen .to() would
// cost more in dispatch than the conversion)
std::vector<float> as_fp32(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  std::vector<float> v(c.numel());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, c.scalar_type(), "int8_mm", [&] {
    const scalar_t* p = c.data_ptr<scalar_t>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(p[i]);
  });
  return v;
}

at::Tensor int8_mm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales, bool int8_activations) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar, "int8_mm: the weight must be (N, K) int8");
  const int64_t n = weight.size(0), k = weight.size(1);
  TORCH_CHECK(x.size(-1) == k, "int8_mm: x has ", x.size(-1), " features, the weight ", k);
  TORCH_CHECK(scales.numel() == n, "int8_mm: ", scales.numel(), " scales for ", n, " weight rows");
  TORCH_CHECK(x.device().is_cpu() && at::isFloatingType(x.scalar_type()), "int8_mm: x must be a floating CPU tensor");
  TORCH_CHECK(!int8_activations || k % kBlock == 0, "int8_mm: int8 activations need in_features divisible by ",
              kBlock, ", got ", k);
  const int64_t m = x.numel() / k;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  if (m > kSmallM) {
    at::Tensor x2 = x.reshape({m, k});
    if (int8_activations) x2 = round_to_grid(x2);
    return (at::mm(x2, weight.to(x.scalar_type()).t()) * scales.to(x.scalar_type())).reshape(shape);
  }
  at::Tensor out = at::empty(shape, x.options());
  if (m == 0) return out;
  const std::vector<float> xf = as_fp32(x), sf = as_fp32(scales);
  const at::Tensor w = weight.contiguous();
  const int8_t* wp = w.data_ptr<int8_t>();
  const Q8Rows q8 = int8_activations ? quantize_rows(xf.data(), m, k) : Q8Rows{};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "int8_mm", [&] {
    scalar_t* op = out.data_ptr<scalar_t>();
    // 64 weight rows per task: enough work to pay for the dispatch, few enough to balance the threads
    at::parallel_for(0, n, 64, [&](int64_t j0, int64_t j1) {
      float dots[4];
      for (int64_t j = j0; j < j1;) {
        const int64_t rows = int8_activations && j + 4 <= j1 ? 4 : 1;
        for (int64_t i = 0; i < m; ++i) {
          if (!int8_activations) dots[0] = dot_fp32(xf.data() + i * k, wp + j * k, k);
          else if (rows == 4) dot_q8<4>(q8, i, wp + j * k, k, dots);
          else dot_q8<1>(q8, i, wp + j * k, k, dots);
          for (int64_t r = 0; r < rows; ++r) op[i * n + j + r] = static_cast<scalar_t>(sf[j + r] * dots[r]);
        }
        j += rows;
      }
    });
  });
  return out;
}

}  // namespace

// TORCH_LIBRARY(llmkit, ...) is llmkit/generate/decode_attention.cpp's; this file adds to that namespace
TORCH_LIBRARY_FRAGMENT(llmkit, m) {
  m.def("int8_mm(Tensor x, Tensor weight, Tensor scales, bool int8_activations) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmkit, CPU, m) { m.impl("int8_mm", &int8_mm); }
