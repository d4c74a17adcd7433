// llama.cpp block-quantised matrices on the CPU: dequantisation and x @ W^T without a float copy of W.
//
// W is (N, row_bytes) uint8: each row is K / block weights in ggml blocks (layouts in
// llmkit/quant/gguf_types.py, the reference these kernels are tested against).
//
// gguf_mm(x (..., K), W) -> (..., N) has two paths:
// - few rows (decoding): parallel over output rows, each row's blocks are read once.
//   At most kFusedRows x rows on AVX-512: fused block dots (fused_dot, mm_rows_fused).
//   Otherwise a row is dequantised into an fp32 buffer that stays in L1 and dotted in
//   fp32 with every x row (exact fp32 products). With int8_activations, on AVX2 CPUs,
//   it is llama.cpp's recipe: x is quantised per 32-block to int8
//   (scale dx = max|x| / 127) and every 32 weights cost one int8 dot of unsigned weight
//   bytes with signed activation bytes (vpdpbusd with VNNI: AVX512-VNNI or AVX-VNNI;
//   vpmaddubsw + vpmaddwd without), whose 8 int32 lanes are scaled by dw * dx into an
//   fp32 accumulator. Q4 nibbles (0..15) and Q6_K values (0..63) are unsigned already;
//   the offsets (-8, -32) and Q4_1's and Q4_K's mins are paid once per block with the x
//   block's sum; Q8_0's signed weights move their sign onto x. This rounds x to 8 bits,
//   as llama.cpp does (relative error ~0.5% per product); other CPUs keep the fp32 path.
// - many rows (prefill, training): tiles of W rows are dequantised to fp32 and
//   multiplied with torch's GEMM, so the dequantisation is paid once per tile.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "q8_block.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define LLMKIT_INT8_DOT 1
#endif

namespace {

// ggml type ids
constexpr int64_t kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 8, kQ4_K = 12, kQ6_K = 14;
constexpr int64_t kSmallM = 8;      // at most this many x rows take the row-streaming path
constexpr int64_t kTileRows = 256;  // W rows dequantised per GEMM tile on the many-rows path
constexpr int64_t kFusedRows = 4;   // at most this many x rows read the blocks without a row buffer

struct Layout {
  int64_t block, bytes;
};

Layout layout(int64_t qtype) {
  switch (qtype) {
    case kQ8_0: return {32, 34};
    case kQ4_0: return {32, 18};
    case kQ4_1: return {32, 20};
    case kQ4_K: return {256, 144};
    case kQ6_K: return {256, 210};
  }
  TORCH_CHECK(false, "gguf: unsupported ggml type id ", qtype, " (supported: Q8_0=8, Q4_0=2, Q4_1=3, Q4_K=12, Q6_K=14)");
}

inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#ifdef __F16C__
  return _cvtsh_ss(h);
#else
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));
#endif
}

void deq_q8_0(const uint8_t* b, float* y) {
  const float d = f16(b);
  const int8_t* q = reinterpret_cast<const int8_t*>(b + 2);
#pragma omp simd
  for (int j = 0; j < 32; ++j) y[j] = d * q[j];
}

void deq_q4_0(const uint8_t* b, float* y) {
  const float d = f16(b);
  const uint8_t* qs = b + 2;
#pragma omp simd
  for (int j = 0; j < 16; ++j) {
    y[j] = d * (static_cast<int>(qs[j] & 15) - 8);
    y[j + 16] = d * (static_cast<int>(qs[j] >> 4) - 8);
  }
}

void deq_q4_1(const uint8_t* b, float* y) {
  const float d = f16(b), m = f16(b + 2);
  const uint8_t* qs = b + 4;
#pragma omp simd
  for (int j = 0; j < 16; ++j) {
    y[j] = d * (qs[j] & 15) + m;
    y[j + 16] = d * (qs[j] >> 4) + m;
  }
}

// ggml's get_scale_min_k4: 6-bit scale and min of sub-block j from the 12 packed bytes
inline void scale_min_k4(int j, const uint8_t* q, float* sc, float* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

void deq_q4_k(const uint8_t* b, float* y) {
  const float d = f16(b), dmin = f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 16;
  for (int g = 0; g < 4; ++g, qs += 32, y += 64) {
    float s0, m0, s1, m1;
    scale_min_k4(2 * g, scales, &s0, &m0);
    scale_min_k4(2 * g + 1, scales, &s1, &m1);
    const float d0 = d * s0, o0 = dmin * m0, d1 = d * s1, o1 = dmin * m1;
#pragma omp simd
    for (int l = 0; l < 32; ++l) {
      y[l] = d0 * (qs[l] & 15) - o0;
      y[l + 32] = d1 * (qs[l] >> 4) - o1;
    }
  }
}

void deq_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16(b + 208);
  for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, y += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      y[l] = d * sc[is] * (((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32);
      y[l + 32] = d * sc[is + 2] * (((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32);
      y[l + 64] = d * sc[is + 4] * (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
      y[l + 96] = d * sc[is + 6] * (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
    }
  }
}

using DeqFn = void (*)(const uint8_t*, float*);

DeqFn deq_fn(int64_t qtype) {
  switch (qtype) {
    case kQ8_0: return deq_q8_0;
    case kQ4_0: return deq_q4_0;
    case kQ4_1: return deq_q4_1;
    case kQ4_K: return deq_q4_k;
    case kQ6_K: return deq_q6_k;
  }
  layout(qtype);  // raises
  return nullptr;
}

inline void deq_row(DeqFn fn, Layout l, const uint8_t* row, int64_t k, float* y) {
  for (int64_t i = 0; i < k / l.block; ++i) fn(row + i * l.bytes, y + i * l.block);
}

void check_weight(const at::Tensor& w, int64_t qtype, int64_t k, const char* op) {
  const Layout l = layout(qtype);
  TORCH_CHECK(w.scalar_type() == at::kByte, op, ": the weight must be uint8 blocks, got ", w.scalar_type());
  TORCH_CHECK(w.device().is_cpu(), op, ": the weight must be on the CPU");
  TORCH_CHECK(k > 0 && k % l.block == 0, op, ": in_features=", k, " is not a multiple of the block size ", l.block);
  TORCH_CHECK(w.dim() >= 1 && w.size(-1) == k / l.block * l.bytes, op, ": weight rows have ", w.size(-1),
              " bytes, ", k / l.block * l.bytes, " expected for in_features=", k);
}

// (rows, k) fp32 from (rows, row_bytes) blocks
void dequantize_into(const uint8_t* w, int64_t rows, int64_t k, int64_t qtype, float* out) {
  const Layout l = layout(qtype);
  const DeqFn fn = deq_fn(qtype);
  const int64_t rb = k / l.block * l.bytes;
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) deq_row(fn, l, w + r * rb, k, out + r * k);
  });
}

at::Tensor gguf_dequantize(const at::Tensor& weight, int64_t qtype, int64_t in_features, at::ScalarType dtype) {
  check_weight(weight, qtype, in_features, "gguf_dequantize");
  const at::Tensor w = weight.contiguous();
  std::vector<int64_t> shape(w.sizes().begin(), w.sizes().end());
  shape.back() = in_features;
  at::Tensor out = at::empty(shape, w.options().dtype(at::kFloat));
  dequantize_into(w.data_ptr<uint8_t>(), w.numel() / std::max<int64_t>(w.size(-1), 1), in_features, qtype,
                  out.data_ptr<float>());
  return dtype == at::kFloat ? out : out.to(dtype);
}

#if defined(__AVX512F__)
// ---- a few x rows, every type: one weight row . one x row straight from the blocks, fp32 products,
// each block's codes widened in registers and scaled once (d * (q . x), plus Q4_1's and Q4_K's mins times
// sum(x)): about twice as fast as dequantising the row into a buffer first (a store and a load per weight)

// 32 weights . x from their codes as two vectors of 16 int32 (2 x 16 lanes of partial sums)
inline __m512 codes32_dot(__m512i lo, __m512i hi, const float* x) {
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_loadu_ps(x + 16),
                         _mm512_mul_ps(_mm512_cvtepi32_ps(lo), _mm512_loadu_ps(x)));
}

// 16 unsigned code bytes as int32
inline __m512i widen_u8(__m128i bytes) { return _mm512_cvtepu8_epi32(bytes); }

template <int64_t Q>
float fused_dot(const uint8_t* row, const float* x, const float* sx, int64_t nb) {
  __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  float offset = 0.f;
  const __m128i low4 = _mm_set1_epi8(15);
  if constexpr (Q == kQ4_K) {  // super-blocks of 8 sub-blocks: 32 code bytes hold sub-block 2g (low nibbles), 2g + 1
    for (int64_t b = 0; b < nb; b += 8, row += 144) {
      const float d = f16(row), dmin = f16(row + 2);
      for (int g = 0; g < 4; ++g) {
        const uint8_t* qs = row + 16 + 32 * g;
        const __m128i r0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
        const __m128i r1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs + 16));
        for (int h = 0; h < 2; ++h) {
          const int64_t sub = b + 2 * g + h;
          float sc, mn;
          scale_min_k4(2 * g + h, row + 4, &sc, &mn);
          const __m128i c0 = _mm_and_si128(h ? _mm_srli_epi16(r0, 4) : r0, low4);
          const __m128i c1 = _mm_and_si128(h ? _mm_srli_epi16(r1, 4) : r1, low4);
          acc[h] = _mm512_fmadd_ps(_mm512_set1_ps(d * sc), codes32_dot(widen_u8(c0), widen_u8(c1), x + 32 * sub),
                                   acc[h]);
          offset -= dmin * mn * sx[sub];
        }
      }
    }
  } else if constexpr (Q == kQ6_K) {  // super-blocks of 256: chunk k of each half has 16-weight scales 2k, 2k + 1
    const __m128i low2 = _mm_set1_epi8(3);
    for (int64_t b = 0; b < nb; b += 8, row += 210) {
      const int8_t* sc = reinterpret_cast<const int8_t*>(row + 192);
      const float d = f16(row + 208);
      for (int half = 0; half < 2; ++half) {
        const uint8_t* ql = row + 64 * half;
        const uint8_t* qh = row + 128 + 32 * half;
        for (int k = 0; k < 4; ++k) {
          const float* xc = x + 32 * (b + 4 * half + k);
          for (int part = 0; part < 2; ++part) {  // 16 weights each: 6-bit codes = low 4 bits | high 2 bits << 4
            const __m128i l4 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(ql + 32 * (k & 1) + 16 * part));
            const __m128i h2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qh + 16 * part));
            const __m128i lo = _mm_and_si128(k >= 2 ? _mm_srli_epi16(l4, 4) : l4, low4);
            const __m128i hi = _mm_and_si128(_mm_srli_epi16(h2, 2 * k), low2);
            const __m512i q = _mm512_sub_epi32(widen_u8(_mm_or_si128(lo, _mm_slli_epi16(hi, 4))),
                                               _mm512_set1_epi32(32));
            acc[part] = _mm512_fmadd_ps(_mm512_set1_ps(d * sc[4 * 2 * half + 2 * k + part]),
                                        _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_loadu_ps(xc + 16 * part)), acc[part]);
          }
        }
      }
    }
  } else {  // blocks of 32: Q8_0's signed bytes, or Q4_0's / Q4_1's nibbles (low nibbles are weights 0..15)
    constexpr int64_t bytes = Q == kQ8_0 ? 34 : Q == kQ4_0 ? 18 : 20;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = row + b * bytes;
      const float d = f16(blk);
      __m512 t;
      if constexpr (Q == kQ8_0) {
        t = codes32_dot(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2))),
                        _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 18))), x + 32 * b);
      } else {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (Q == kQ4_1 ? 4 : 2)));
        t = codes32_dot(widen_u8(_mm_and_si128(raw, low4)), widen_u8(_mm_and_si128(_mm_srli_epi16(raw, 4), low4)),
                        x + 32 * b);
      }
      acc[b & 1] = _mm512_fmadd_ps(_mm512_set1_ps(d), t, acc[b & 1]);
      if constexpr (Q == kQ4_0) offset -= 8.f * d * sx[b];
      if constexpr (Q == kQ4_1) offset += f16(blk + 2) * sx[b];
    }
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) + offset;
}

// out (m, n) for m <= kFusedRows x rows through fused_dot; the x blocks' sums pay the types' offsets and mins
template <int64_t Q>
void mm_rows_fused(const float* x, int64_t m, const uint8_t* w, int64_t n, int64_t k, float* out) {
  const int64_t nb = k / 32, rb = k / layout(Q).block * layout(Q).bytes;
  std::vector<float> sx;
  if constexpr (Q == kQ4_0 || Q == kQ4_1 || Q == kQ4_K) {
    sx.resize(m * nb);
    for (int64_t i = 0; i < m * nb; ++i) {
      float t = 0.f;
      for (int j = 0; j < 32; ++j) t += x[32 * i + j];
      sx[i] = t;
    }
  }
  at::parallel_for(0, n, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t j = n0; j < n1; ++j)
      for (int64_t i = 0; i < m; ++i)
        out[i * n + j] = fused_dot<Q>(w + j * rb, x + i * k, sx.empty() ? nullptr : sx.data() + i * nb, nb);
  });
}
#endif

// ---- few rows: fp32 dot products, fused with the blocks (AVX-512, at most kFusedRows x rows) or against a
// dequantised row in L1 ----
void mm_rows_fp32(const float* x, int64_t m, const uint8_t* w, int64_t n, int64_t k, int64_t qtype, float* out) {
#if defined(__AVX512F__)
  if (m <= kFusedRows) {
    switch (qtype) {
      case kQ8_0: return mm_rows_fused<kQ8_0>(x, m, w, n, k, out);
      case kQ4_0: return mm_rows_fused<kQ4_0>(x, m, w, n, k, out);
      case kQ4_1: return mm_rows_fused<kQ4_1>(x, m, w, n, k, out);
      case kQ4_K: return mm_rows_fused<kQ4_K>(x, m, w, n, k, out);
      case kQ6_K: return mm_rows_fused<kQ6_K>(x, m, w, n, k, out);
    }
  }
#endif
  const Layout l = layout(qtype);
  const DeqFn fn = deq_fn(qtype);
  const int64_t rb = k / l.block * l.bytes;
  at::parallel_for(0, n, 16, [&](int64_t n0, int64_t n1) {
    std::vector<float> row(k);
    for (int64_t j = n0; j < n1; ++j) {
      deq_row(fn, l, w + j * rb, k, row.data());
      for (int64_t i = 0; i < m; ++i) {
        const float* xi = x + i * k;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t c = 0; c < k; ++c) dot += row[c] * xi[c];
        out[i * n + j] = dot;
      }
    }
  });
}

#ifdef LLMKIT_INT8_DOT
// 8 int32 lanes, lane i = sum of the 4 products u[4i..4i+3] * s[4i..4i+3] (u unsigned, s signed bytes).
// VNNI does it in one instruction; AVX2 sums byte pairs to int16 first, which cannot saturate here:
// every u is at most 128 (Q8_0's |w|; Q4 nibbles are 15, Q6_K values 63) and |s| at most 127.
inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// x rows quantised per 32-block: int8 values, scale dx, and dx * sum(q) (the offset terms' factor)
struct Q8Rows {
  std::vector<int8_t> q;
  std::vector<float> d, s;
};

Q8Rows quantize_rows(const float* x, int64_t m, int64_t k) {
  const int64_t nb = k / llmkit_q8::kBlock;
  Q8Rows r{std::vector<int8_t>(m * k), std::vector<float>(m * nb), std::vector<float>(m * nb)};
  for (int64_t b = 0; b < m * nb; ++b) {
    int8_t* qb = r.q.data() + b * llmkit_q8::kBlock;
    r.d[b] = llmkit_q8::quantize_block(x + b * llmkit_q8::kBlock, qb);
    int sum = 0;
    for (int64_t j = 0; j < llmkit_q8::kBlock; ++j) sum += qb[j];
    r.s[b] = r.d[b] * sum;
  }
  return r;
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256i load32(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// 16 bytes of nibbles -> 32 unsigned bytes: the low nibbles, then the high ones (ggml's order)
inline __m256i nibbles16(const uint8_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(15));
}

// acc += scale * (int8 dot of unsigned weight bytes w with the x block xv), lane-wise
inline __m256 dot_acc(__m256 acc, __m256i w, __m256i xv, __m256 scale) {
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8s8(w, xv)), scale, acc);
}

// One weight row . one quantised x row, one unsigned-by-signed byte dot per 32 weights. Q8_0's
// signed weights move their sign onto x (|w| . sign(x, w)); the other types' weights are
// unsigned, and their offsets (Q4_0 -8, Q4_1 + m, Q4_K - dmin * min, Q6_K -32) cost a scalar
// (or one more dot) per block, using the x block's sum.
template <int64_t Q>
float row_dot(const uint8_t* row, const int8_t* xq, const float* dx, const float* sx, int64_t nb32) {
  // two accumulators (even and odd blocks or sub-blocks) halve the fma latency chain
  __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
  float offset[2] = {0.f, 0.f};
  if constexpr (Q == kQ8_0 || Q == kQ4_0 || Q == kQ4_1) {
    constexpr int64_t bytes = Q == kQ8_0 ? 34 : Q == kQ4_0 ? 18 : 20;
    auto block = [&](int64_t b, int p) {
      const uint8_t* blk = row + b * bytes;
      const float dw = f16(blk);
      const __m256i xv = load32(xq + 32 * b);
      const __m256 scale = _mm256_set1_ps(dw * dx[b]);
      if constexpr (Q == kQ8_0) {
        const __m256i w = load32(blk + 2);
        acc[p] = dot_acc(acc[p], _mm256_abs_epi8(w), _mm256_sign_epi8(xv, w), scale);
      } else {
        acc[p] = dot_acc(acc[p], nibbles16(blk + (Q == kQ4_1 ? 4 : 2)), xv, scale);
      }
      if constexpr (Q == kQ4_0) offset[p] -= 8.f * dw * sx[b];
      if constexpr (Q == kQ4_1) offset[p] += f16(blk + 2) * sx[b];
    };
    int64_t b = 0;
    for (; b + 1 < nb32; b += 2) {
      block(b, 0);
      block(b + 1, 1);
    }
    if (b < nb32) block(b, 0);
  } else if constexpr (Q == kQ4_K) {
    for (int64_t b = 0; b < nb32; b += 8, row += 144) {
      const float d = f16(row), dmin = f16(row + 2);
      for (int g = 0; g < 4; ++g) {
        const __m256i qs = load32(row + 16 + 32 * g);
        for (int h = 0; h < 2; ++h) {
          const int64_t s = 2 * g + h;
          float sc, mn;
          scale_min_k4(s, row + 4, &sc, &mn);
          const __m256i w = _mm256_and_si256(h ? _mm256_srli_epi16(qs, 4) : qs, _mm256_set1_epi8(15));
          acc[h] = dot_acc(acc[h], w, load32(xq + 32 * (b + s)), _mm256_set1_ps(d * sc * dx[b + s]));
          offset[h] -= dmin * mn * sx[b + s];
        }
      }
    }
  } else {  // Q6_K: 32-weight chunk c = 4 * half + k; its two 16-weight halves have their own scales
    const __m256i thirty_two = _mm256_set1_epi8(32);
    for (int64_t b = 0; b < nb32; b += 8, row += 210) {
      const int8_t* sc = reinterpret_cast<const int8_t*>(row + 192);
      const float d = f16(row + 208);
      for (int half = 0; half < 2; ++half) {
        const __m256i hb = load32(row + 128 + 32 * half);
        for (int k = 0; k < 4; ++k) {
          const int64_t c = 4 * half + k;
          const __m256i lb = load32(row + 64 * half + 32 * (k & 1));
          const __m256i lo = _mm256_and_si256(k >= 2 ? _mm256_srli_epi16(lb, 4) : lb, _mm256_set1_epi8(15));
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * k), _mm256_set1_epi8(3));
          const __m256i w = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
          const __m256i xv = load32(xq + 32 * (b + c));
          // (q - 32) . x = q . x - 32 . x, lane by lane so each lane keeps its 16-weight scale
          const __m256i dot = _mm256_sub_epi32(dot_u8s8(w, xv), dot_u8s8(thirty_two, xv));
          const float s0 = d * sc[2 * c] * dx[b + c], s1 = d * sc[2 * c + 1] * dx[b + c];
          acc[k & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_setr_ps(s0, s0, s0, s0, s1, s1, s1, s1),
                                       acc[k & 1]);
        }
      }
    }
  }
  return hsum(_mm256_add_ps(acc[0], acc[1])) + offset[0] + offset[1];
}

template <int64_t Q>
void mm_rows_vnni(const float* x, int64_t m, const uint8_t* w, int64_t n, int64_t k, float* out) {
  const Q8Rows xq = quantize_rows(x, m, k);
  const int64_t nb = k / 32, rb = k / layout(Q).block * layout(Q).bytes;
  at::parallel_for(0, n, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t j = n0; j < n1; ++j)
      for (int64_t i = 0; i < m; ++i)
        out[i * n + j] = row_dot<Q>(w + j * rb, xq.q.data() + i * k, xq.d.data() + i * nb, xq.s.data() + i * nb, nb);
  });
}

bool mm_rows_int8(const float* x, int64_t m, const uint8_t* w, int64_t n, int64_t k, int64_t qtype, float* out) {
  switch (qtype) {
    case kQ8_0: mm_rows_vnni<kQ8_0>(x, m, w, n, k, out); return true;
    case kQ4_0: mm_rows_vnni<kQ4_0>(x, m, w, n, k, out); return true;
    case kQ4_1: mm_rows_vnni<kQ4_1>(x, m, w, n, k, out); return true;
    case kQ4_K: mm_rows_vnni<kQ4_K>(x, m, w, n, k, out); return true;
    case kQ6_K: mm_rows_vnni<kQ6_K>(x, m, w, n, k, out); return true;
  }
  return false;
}
constexpr bool kInt8Dot = true;
#else
bool mm_rows_int8(const float*, int64_t, const uint8_t*, int64_t, int64_t, int64_t, float*) { return false; }
constexpr bool kInt8Dot = false;
#endif

at::Tensor gguf_mm(const at::Tensor& x, const at::Tensor& weight, int64_t qtype, int64_t in_features,
                   bool int8_activations) {
  check_weight(weight, qtype, in_features, "gguf_mm");
  TORCH_CHECK(weight.dim() == 2, "gguf_mm: the weight must be (out_features, row_bytes)");
  TORCH_CHECK(x.size(-1) == in_features, "gguf_mm: x has ", x.size(-1), " features, the weight ", in_features);
  TORCH_CHECK(x.device().is_cpu() && at::isFloatingType(x.scalar_type()), "gguf_mm: x must be a floating CPU tensor");
  const int64_t n = weight.size(0), k = in_features, m = x.numel() / k;
  const at::Tensor xf = x.reshape({m, k}).to(at::kFloat).contiguous();
  const at::Tensor w = weight.contiguous();
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  at::Tensor out = at::empty({m, n}, xf.options());
  if (m == 0) return out.reshape(shape).to(x.scalar_type());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  if (m <= kSmallM) {
    if (!(int8_activations && mm_rows_int8(xf.data_ptr<float>(), m, wp, n, k, qtype, out.data_ptr<float>())))
      mm_rows_fp32(xf.data_ptr<float>(), m, wp, n, k, qtype, out.data_ptr<float>());
    return out.reshape(shape).to(x.scalar_type());
  }
  // many rows: out^T tile = dequantised W tile @ x^T, so each tile writes whole rows of out^T
  at::Tensor out_t = at::empty({n, m}, xf.options());
  at::Tensor tile = at::empty({std::min(kTileRows, n), k}, xf.options());
  const int64_t rb = w.size(1);
  for (int64_t r0 = 0; r0 < n; r0 += kTileRows) {
    const int64_t rows = std::min(kTileRows, n - r0);
    at::Tensor t = tile.narrow(0, 0, rows);
    dequantize_into(wp + r0 * rb, rows, k, qtype, t.data_ptr<float>());
    at::Tensor dst = out_t.narrow(0, r0, rows);
    at::mm_out(dst, t, xf.t());
  }
  return out_t.t().contiguous().reshape(shape).to(x.scalar_type());
}

}  // namespace

// TORCH_LIBRARY(llmkit, ...) is llmkit/generate/decode_attention.cpp's; this file adds to that namespace
TORCH_LIBRARY_FRAGMENT(llmkit, m) {
  m.def("gguf_dequantize(Tensor weight, int qtype, int in_features, ScalarType dtype) -> Tensor");
  m.def("gguf_mm(Tensor x, Tensor weight, int qtype, int in_features, bool int8_activations) -> Tensor");
  // whether gguf_mm(..., int8_activations=True) can round x to int8 (built for AVX2) or stays in fp32
  m.def("gguf_int8_activations() -> bool", [] { return kInt8Dot; });
}

TORCH_LIBRARY_IMPL(llmkit, CPU, m) {
  m.impl("gguf_dequantize", &gguf_dequantize);
  m.impl("gguf_mm", &gguf_mm);
}
