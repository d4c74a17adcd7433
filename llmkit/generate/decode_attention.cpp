// Decode attention for CPU: a few query rows per head against a long static or paged KV cache.
//
// out[b, h, i] = sum_s p[s] v[b, h, s],  p = softmax over the slots s with mask[b, s]
// of scale * q[b, h, i] . k[b, h, s].
//
// Every query row of a (batch, head) shares one mask row, which is the decode case
// (one new token; grouped query heads folded into the row axis). The cache is split
// into chunks of slots (flash-decoding): each (batch, head, chunk) task runs an
// online softmax over the chunk's allowed slots only, so unwritten slots cost a mask
// byte and nothing else, and the tasks spread over the threads even for 3 heads.
// The chunks' partial results are merged by their running maxima and sums. A paged task takes
// every head of its chunk (a slot holds all heads' rows side by side, so it reads each block in
// memory order) and prefetches its next block.
//
// A quantized cache (int8, or fp8 e4m3) holds codes plus one fp32 scale per (token, head) row:
// rows are dequantized as they are widened to fp32 for a block of slots, so the cache is read
// at its stored width and no dequantized copy of it is ever made.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kChunk = 128;  // slots per task, at most
constexpr int64_t kBlock = 32;   // slots scored together before one softmax rescale
// the running max before any slot: finite, because the file is built with -ffast-math
// (vectorised exp) under which infinities are not handled
constexpr float kNoMax = -1e30f;
// prefetches of the next block's rows go to L2 (prefetcht2), not L1: a block's K and V rows for every head
// (24 KB at SmolLM2's shapes) next to the block being read overflow a 32 KB L1 (measured on a 2-core Zen 4,
// bf16, 60 sequences of 360 slots from DRAM: 1.41 against 1.82 ms per layer; batch 1 over 3,000 slots
// 0.21 against 0.28 ms)
constexpr int kPrefetchLocality = 1;

template <typename T>
inline void to_float(const T* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]);
}

// bf16 is the top half of a float: a shift the compiler vectorises (c10's conversion does not)
template <>
inline void to_float(const at::BFloat16* src, float* dst, int64_t n) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = __builtin_bit_cast(float, static_cast<uint32_t>(bits[j]) << 16);
}

using Fp8 = c10::Float8_e4m3fn;

// cache element types with a scale per row; the others (fp32, bf16, fp16) are stored as they are
template <typename C>
constexpr bool kQuantized = std::is_same_v<C, int8_t> || std::is_same_v<C, Fp8>;

// every e4m3 code's value: widening becomes a table lookup the compiler vectorises as a gather
// (the codes our quantizer writes are finite; the two NaN codes never occur)
const std::array<float, 256> kFp8Values = [] {
  std::array<float, 256> table{};
  for (int i = 0; i < 256; ++i) table[i] = static_cast<float>(Fp8(static_cast<uint8_t>(i), Fp8::from_bits()));
  return table;
}();

// one cached row of n values as fp32: a plain widening, or codes times the row's scale
template <typename C>
inline void widen(const C* src, float, float* dst, int64_t n) {
  to_float(src, dst, n);
}

template <>
inline void widen(const int8_t* src, float scale, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]) * scale;
}

template <>
inline void widen(const Fp8* src, float scale, float* dst, int64_t n) {
  const uint8_t* bits = reinterpret_cast<const uint8_t*>(src);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = kFp8Values[bits[j]] * scale;
}

#if defined(__AVX512F__)
// the 16 lane sums of v[0..15] as one vector (lane t = sum of v[t]): a transpose-and-add tree, 45
// shuffles and adds where 16 separate horizontal sums take about three times as many
inline __m512 sum16(__m512 v[16]) {
  __m512 x[8], y[4], z[2];
  for (int i = 0; i < 8; ++i)  // each 128-bit lane: 2 partial sums of rows 2i and 2i+1
    x[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // each 128-bit lane: one partial sum of rows 4i .. 4i+3
    const __m512d a = _mm512_castps_pd(x[2 * i]), b = _mm512_castps_pd(x[2 * i + 1]);
    y[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  for (int i = 0; i < 2; ++i)  // 128-bit lanes: rows 8i..8i+3 (two halves), rows 8i+4..8i+7 (two halves)
    z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(y[2 * i], y[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], 0x88), _mm512_shuffle_f32x4(z[0], z[1], 0xDD));
}
#endif

// scores[t] = q . rows[t] for the n rows of a block (row length d, D when known at compile time)
template <int64_t D>
inline void dots(const float* __restrict q, const float* __restrict rows, int64_t n, int64_t d_,
                 float* __restrict scores) {
  const int64_t d = D > 0 ? D : d_;
  int64_t t = 0;
#if defined(__AVX512F__)
  if constexpr (D > 0 && D % 16 == 0) {  // 16 rows at a time, their lane sums added by one tree
    __m512 qv[D / 16];
    for (int64_t j = 0; j < D / 16; ++j) qv[j] = _mm512_loadu_ps(q + 16 * j);
    for (; t + 16 <= n; t += 16) {
      __m512 v[16];
      for (int r = 0; r < 16; ++r) {
        const float* row = rows + (t + r) * D;
        v[r] = _mm512_mul_ps(qv[0], _mm512_loadu_ps(row));
        for (int64_t j = 1; j < D / 16; ++j) v[r] = _mm512_fmadd_ps(qv[j], _mm512_loadu_ps(row + 16 * j), v[r]);
      }
      _mm512_storeu_ps(scores + t, sum16(v));
    }
  }
#endif
  for (; t < n; ++t) {
    const float* r = rows + t * d;
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < d; ++j) dot += q[j] * r[j];
    scores[t] = dot;
  }
}

// acc = acc * corr + sum_t w[t] rows[t]; with DV known the accumulator lives in registers
template <int64_t DV>
inline void accumulate(float* __restrict acc, float corr, const float* __restrict w, const float* __restrict rows,
                       int64_t n, int64_t dv_) {
#if defined(__AVX512F__)
  if constexpr (DV > 0 && DV % 16 == 0 && DV <= 128) {  // the accumulator in registers, for certain
    __m512 a[DV / 16];
    const __m512 c = _mm512_set1_ps(corr);
    for (int64_t j = 0; j < DV / 16; ++j) a[j] = _mm512_mul_ps(_mm512_loadu_ps(acc + 16 * j), c);
    for (int64_t t = 0; t < n; ++t) {
      const __m512 wt = _mm512_set1_ps(w[t]);
      for (int64_t j = 0; j < DV / 16; ++j) a[j] = _mm512_fmadd_ps(wt, _mm512_loadu_ps(rows + t * DV + 16 * j), a[j]);
    }
    for (int64_t j = 0; j < DV / 16; ++j) _mm512_storeu_ps(acc + 16 * j, a[j]);
    return;
  }
#endif
  if constexpr (DV > 0) {
    float a[DV];
#pragma omp simd
    for (int64_t j = 0; j < DV; ++j) a[j] = acc[j] * corr;
    for (int64_t t = 0; t < n; ++t) {
#pragma omp simd
      for (int64_t j = 0; j < DV; ++j) a[j] += w[t] * rows[t * DV + j];
    }
#pragma omp simd
    for (int64_t j = 0; j < DV; ++j) acc[j] = a[j];
  } else {
    for (int64_t j = 0; j < dv_; ++j) acc[j] *= corr;
    for (int64_t t = 0; t < n; ++t) {
#pragma omp simd
      for (int64_t j = 0; j < dv_; ++j) acc[j] += w[t] * rows[t * dv_ + j];
    }
  }
}

#if defined(__AVX512F__)
// fp32 caches, and bf16 caches on CPUs with AVX512-BF16, with heads of 64 or 128 values take a direct route:
// scores come from the stored K rows (bf16 by vdpbf16ps, two products per lane and instruction, where
// widening to fp32 first costs a conversion per value and twice the multiply-adds), and each V row is
// loaded (and widened) once in registers for a group of query rows, instead of once per query row
// through a buffer (fp32 on a 2-core Zen 4: 60 paged sequences x 360 slots 2.21 against 3.21 ms per layer,
// batch 1 over 3,000 slots 0.32 against 0.43 ms)
#if defined(__AVX512BF16__)
constexpr bool kBf16Dot = true;
#else
constexpr bool kBf16Dot = false;
#endif
template <typename C>
constexpr bool kDirect = std::is_same_v<C, float> || (kBf16Dot && std::is_same_v<C, at::BFloat16>);

// one query row in registers, multiplied with stored K rows of its element type
template <typename C, int64_t D>
struct QueryRow {  // fp32
  __m512 v[D / 16];
  explicit QueryRow(const float* q) {
    for (int64_t j = 0; j < D / 16; ++j) v[j] = _mm512_loadu_ps(q + 16 * j);
  }
  __m512 dot(const float* row) const {  // 16 lane sums of q . row
    __m512 acc = _mm512_mul_ps(v[0], _mm512_loadu_ps(row));
    for (int64_t j = 1; j < D / 16; ++j) acc = _mm512_fmadd_ps(v[j], _mm512_loadu_ps(row + 16 * j), acc);
    return acc;
  }
};

#if defined(__AVX512BF16__)
inline __m512bh bf16x32(const at::BFloat16* p) { return (__m512bh)_mm512_loadu_si512(p); }

template <int64_t D>
struct QueryRow<at::BFloat16, D> {
  __m512bh v[D / 32];
  explicit QueryRow(const at::BFloat16* q) {
    for (int64_t j = 0; j < D / 32; ++j) v[j] = bf16x32(q + 32 * j);
  }
  __m512 dot(const at::BFloat16* row) const {
    __m512 acc = _mm512_dpbf16_ps(_mm512_setzero_ps(), v[0], bf16x32(row));
    for (int64_t j = 1; j < D / 32; ++j) acc = _mm512_dpbf16_ps(acc, v[j], bf16x32(row + 32 * j));
    return acc;
  }
};
#endif

// 16 stored values from p as fp32 (bf16 is the top half of a float)
inline __m512 float16x(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 float16x(const at::BFloat16* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

// p[i * kBlock + t] = scale * q[i] . key(idx[t]) for the nq query rows q (nq, D) in the cache's element type;
// the K rows of slots pf[0 .. n_pf) (the next block) are prefetched meanwhile
template <int64_t D, typename Slots, typename C = typename Slots::Elem>
inline void direct_scores(const C* q, const Slots& sl, const int64_t* idx, int64_t n, int64_t nq, float scale,
                          float* p, const int64_t* pf, int64_t n_pf) {
  constexpr int64_t line = 64 / sizeof(C);
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < nq; ++i) {
    const QueryRow<C, D> qr(q + i * D);
    float* pi = p + i * kBlock;
    int64_t t = 0;
    for (; t + 16 <= n; t += 16) {  // 16 rows at a time, their lane sums added by one tree
      __m512 v[16];
      if (i == 0)  // the next block's rows, a few at a time: a burst of prefetches stalls on the miss buffers
        for (int64_t r = t; r < std::min(t + 16, n_pf); ++r)
          for (int64_t j = 0; j < D; j += line) __builtin_prefetch(sl.key(pf[r]) + j, 0, kPrefetchLocality);
      for (int r = 0; r < 16; ++r) v[r] = qr.dot(sl.key(idx[t + r]));
      _mm512_storeu_ps(pi + t, _mm512_mul_ps(sum16(v), sc));
    }
    for (; t < n; ++t) pi[t] = scale * _mm512_reduce_add_ps(qr.dot(sl.key(idx[t])));
  }
}

// acc[g] = acc[g] * corr[g] + sum_t p[g * kBlock + t] value(idx[t]) for G query rows, in registers; the V rows
// of slots pf[0 .. n_pf) are prefetched meanwhile
template <int64_t DV, int G, typename Slots>
inline void direct_pv(float* acc, const float* corr, const float* p, const Slots& sl, const int64_t* idx, int64_t n,
                      const int64_t* pf, int64_t n_pf) {
  constexpr int64_t line = 64 / sizeof(typename Slots::Elem);
  __m512 a[G][DV / 16];
  for (int g = 0; g < G; ++g)
    for (int64_t j = 0; j < DV / 16; ++j)
      a[g][j] = _mm512_mul_ps(_mm512_loadu_ps(acc + g * DV + 16 * j), _mm512_set1_ps(corr[g]));
  for (int64_t t = 0; t < n; ++t) {
    if (t < n_pf)
      for (int64_t j = 0; j < DV; j += line) __builtin_prefetch(sl.value(pf[t]) + j, 0, kPrefetchLocality);
    const auto* row = sl.value(idx[t]);
    __m512 v[DV / 16];
    for (int64_t j = 0; j < DV / 16; ++j) v[j] = float16x(row + 16 * j);
    for (int g = 0; g < G; ++g) {
      const __m512 w = _mm512_set1_ps(p[g * kBlock + t]);
      for (int64_t j = 0; j < DV / 16; ++j) a[g][j] = _mm512_fmadd_ps(w, v[j], a[g][j]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int64_t j = 0; j < DV / 16; ++j) _mm512_storeu_ps(acc + g * DV + 16 * j, a[g][j]);
}

// every query row's direct_pv, in groups that keep the accumulators in the 32 vector registers
template <int64_t DV, typename Slots>
inline void direct_pv_all(float* acc, const float* corr, const float* p, const Slots& sl, const int64_t* idx,
                          int64_t n, int64_t nq, const int64_t* pf, int64_t n_pf) {
  constexpr int kGroup = DV <= 64 ? 4 : 2;
  int64_t i = 0;
  for (; i + kGroup <= nq; i += kGroup)  // the first group prefetches
    direct_pv<DV, kGroup>(acc + i * DV, corr + i, p + i * kBlock, sl, idx, n, pf, i == 0 ? n_pf : 0);
  // the rest in one group too (SmolLM2's 3 query heads per K/V head): each V row widened once, not once per row
  // (bf16, 60 sequences x 330 slots from cache, one Zen 4 core: 0.95 against 1.08 ms per layer)
  const int64_t rest = nq - i, rest_pf = i == 0 ? n_pf : 0;
  if constexpr (kGroup == 4) {
    if (rest == 3) return direct_pv<DV, 3>(acc + i * DV, corr + i, p + i * kBlock, sl, idx, n, pf, rest_pf);
    if (rest == 2) return direct_pv<DV, 2>(acc + i * DV, corr + i, p + i * kBlock, sl, idx, n, pf, rest_pf);
  }
  if (rest == 1) direct_pv<DV, 1>(acc + i * DV, corr + i, p + i * kBlock, sl, idx, n, pf, rest_pf);
}
#else
template <typename C>
constexpr bool kDirect = false;
#endif

// Where a (batch, head)'s slots live. Static cache: rows of a contiguous (S, D) buffer, allowed by
// a mask row, scales (if quantized) in an (S,) row. Paged cache: slot s is row s % block_size of
// block table[s / block_size] in a pool of (num_blocks, block_size, Hkv, D), its scales in a
// (num_blocks, block_size, Hkv) pool; every slot below the sequence's length is allowed.
template <typename C>
struct StaticSlots {
  using Elem = C;
  static constexpr bool kScattered = false;  // rows at a fixed stride: the hardware prefetcher follows them
  const C* k;
  const C* v;
  const float* ks;  // scales; null unless quantized
  const float* vs;
  const bool* mask;
  int64_t d, dv;
  bool allowed(int64_t s) const { return mask[s]; }
  const C* key(int64_t s) const { return k + s * d; }
  const C* value(int64_t s) const { return v + s * dv; }
  float key_scale(int64_t s) const { return kQuantized<C> ? ks[s] : 1.f; }
  float value_scale(int64_t s) const { return kQuantized<C> ? vs[s] : 1.f; }
};

template <typename C>
struct PagedSlots {
  using Elem = C;
  static constexpr bool kScattered = true;  // rows in blocks anywhere in the pool
  const C* k;  // the pool at this head: k_pool + h * d
  const C* v;
  const float* ks;  // the scale pool at this head (k_scale + h); null unless quantized
  const float* vs;
  const int32_t* table;
  int64_t block_size, heads, row_stride_k, row_stride_v;  // a slot's stride: Hkv * d (and Hkv * dv)
  bool allowed(int64_t) const { return true; }
  int shift;  // log2(block_size) when that is a power of two (the usual case), else -1
  int64_t row(int64_t s) const {  // a shift where it can: a division per slot read costs as much as the arithmetic
    if (shift >= 0) return (static_cast<int64_t>(table[s >> shift]) << shift) | (s & (block_size - 1));
    return static_cast<int64_t>(table[s / block_size]) * block_size + s % block_size;
  }
  const C* key(int64_t s) const { return k + row(s) * row_stride_k; }
  const C* value(int64_t s) const { return v + row(s) * row_stride_v; }
  float key_scale(int64_t s) const { return kQuantized<C> ? ks[row(s) * heads] : 1.f; }
  float value_scale(int64_t s) const { return kQuantized<C> ? vs[row(s) * heads] : 1.f; }
};

// ask for the K and V rows of the given slots ahead of their use: one core keeps too few reads in
// flight on its own, and a paged sequence's slots are scattered over blocks the hardware prefetcher
// cannot guess
template <typename Slots>
inline void prefetch(const Slots* slots, int64_t heads, const int64_t* idx, int64_t n, int64_t d, int64_t dv) {
  constexpr int64_t line = 64 / sizeof(typename Slots::Elem);  // elements per cache line
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t j = 0; j < d; j += line) __builtin_prefetch(slots[h].key(idx[t]) + j, 0, kPrefetchLocality);
      for (int64_t j = 0; j < dv; j += line) __builtin_prefetch(slots[h].value(idx[t]) + j, 0, kPrefetchLocality);
    }
}

// the allowed slots among [b0, min(b0 + kBlock, s1)) into idx; returns how many
template <typename Slots>
inline int64_t allowed_slots(const Slots& slots, int64_t b0, int64_t s1, int64_t* idx) {
  int64_t n = 0;
  for (int64_t s = b0; s < std::min(b0 + kBlock, s1); ++s)
    if (slots.allowed(s)) idx[n++] = s;
  return n;
}

// One task: slots [s0, s1) of one batch row for `heads` K/V heads (slots[h]; they share the mask), each
// with its rows qf + h * nq * d (nq, d) already scaled (and, for a bf16 query, qb + h * nq * d unscaled).
// Writes, at part + h * part_stride, the head's [m (nq), l (nq), acc (nq, dv)]: running max, sum of exp,
// unnormalised output.
// Slots go in blocks, and a block's heads one after the other (a paged slot holds every head's row
// side by side, so the reads go through memory in order): the allowed K rows are widened (and
// dequantized) to fp32 once and scored against every query row, then the V rows likewise, so each
// query's accumulator stays in registers (fp32 and bf16 rows of 64 or 128 values skip the widening: kDirect).
template <int64_t D, int64_t DV, typename Slots>
void attend_chunk(const float* qf, const at::BFloat16* qb, float scale, const Slots* slots, int64_t heads,
                  int64_t s0, int64_t s1, int64_t nq, int64_t d_, int64_t dv_, float* part, int64_t part_stride) {
  using C = typename Slots::Elem;
  constexpr bool direct = kDirect<C> && D == DV && (D == 64 || D == 128);
  const int64_t d = D > 0 ? D : d_, dv = DV > 0 ? DV : dv_;
  for (int64_t h = 0; h < heads; ++h) {
    float* ph = part + h * part_stride;
    std::fill(ph, ph + nq, kNoMax);
    std::fill(ph + nq, ph + nq * (dv + 2), 0.f);
  }
  std::vector<float> rows(direct ? 0 : kBlock * std::max(d, dv));
  std::vector<float> p(nq * kBlock), corr(nq);
  int64_t idx[kBlock], next[kBlock];
  int64_t n = s0 < s1 ? allowed_slots(slots[0], s0, s1, idx) : 0;
  for (int64_t b0 = s0; b0 < s1; b0 += kBlock) {
    const int64_t n_next = b0 + kBlock < s1 ? allowed_slots(slots[0], b0 + kBlock, s1, next) : 0;
    // a paged cache's next block: prefetched all at once, or row by row along the direct route (measured: 1.1-1.2x
    // faster on scattered blocks; on a static cache's contiguous rows the hardware prefetcher does better alone)
    if constexpr (Slots::kScattered && !direct) prefetch(slots, heads, next, n_next, d, dv);
    const int64_t n_pf = Slots::kScattered ? n_next : 0;
    for (int64_t h = 0; h < heads && n > 0; ++h) {
      const Slots& sl = slots[h];
      float* m = part + h * part_stride;
      float* l = m + nq;
      float* acc = m + 2 * nq;
#if defined(__AVX512F__)
      if constexpr (direct && std::is_same_v<C, float>)  // fp32 queries come scaled
        direct_scores<D>(qf + h * nq * d, sl, idx, n, nq, 1.f, p.data(), next, n_pf);
      else if constexpr (direct)
        direct_scores<D>(qb + h * nq * d, sl, idx, n, nq, scale, p.data(), next, n_pf);
#endif
      if constexpr (!direct) {
        const float* qh = qf + h * nq * d;
        for (int64_t t = 0; t < n; ++t) widen(sl.key(idx[t]), sl.key_scale(idx[t]), rows.data() + t * d, d);
        for (int64_t i = 0; i < nq; ++i) dots<D>(qh + i * d, rows.data(), n, d, p.data() + i * kBlock);
      }
      for (int64_t i = 0; i < nq; ++i) {
        float* pi = p.data() + i * kBlock;
        float mx = m[i];
        for (int64_t t = 0; t < n; ++t) mx = std::max(mx, pi[t]);
        corr[i] = std::exp(m[i] - mx);  // 0 on the first block
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < n; ++t) {
          pi[t] = std::exp(pi[t] - mx);
          sum += pi[t];
        }
        l[i] = l[i] * corr[i] + sum;
        m[i] = mx;
      }
#if defined(__AVX512F__)
      if constexpr (direct) direct_pv_all<DV>(acc, corr.data(), p.data(), sl, idx, n, nq, next, n_pf);
#endif
      if constexpr (!direct) {
        for (int64_t t = 0; t < n; ++t) widen(sl.value(idx[t]), sl.value_scale(idx[t]), rows.data() + t * dv, dv);
        for (int64_t i = 0; i < nq; ++i)
          accumulate<DV>(acc + i * dv, corr[i], p.data() + i * kBlock, rows.data(), n, dv);
      }
    }
    std::copy(next, next + n_next, idx);
    n = n_next;
  }
}

// scaled fp32 copy of the queries
template <typename T>
std::vector<float> scaled_queries(const at::Tensor& q, double scale) {
  const at::Tensor qc = q.contiguous();
  std::vector<float> qf(qc.numel());
  to_float(qc.data_ptr<T>(), qf.data(), qf.size());
  for (float& x : qf) x *= static_cast<float>(scale);
  return qf;
}

// a bf16 query's own values (the bf16 route scores with them); null for other dtypes
template <typename T>
const at::BFloat16* raw_bf16(const at::Tensor& qc) {
  if constexpr (std::is_same_v<T, at::BFloat16>) return qc.data_ptr<at::BFloat16>();
  return nullptr;
}

// Merge the chunks of each (batch, head): rescale every chunk's partial sums to the common maximum.
template <typename T>
void merge_chunks(const std::vector<float>& parts, int64_t BH, int64_t chunks, int64_t nq, int64_t dv, T* op) {
  const int64_t part_size = nq * (dv + 2);
  std::vector<float> o(dv);
  for (int64_t bh = 0; bh < BH; ++bh) {
    for (int64_t i = 0; i < nq; ++i) {
      float mx = kNoMax;
      for (int64_t c = 0; c < chunks; ++c) mx = std::max(mx, parts[(bh * chunks + c) * part_size + i]);
      std::fill(o.begin(), o.end(), 0.f);
      float total = 0.f;
      for (int64_t c = 0; c < chunks; ++c) {
        const float* part = parts.data() + (bh * chunks + c) * part_size;
        if (part[nq + i] == 0.f) continue;  // no allowed slot in this chunk
        const float w = std::exp(part[i] - mx);
        total += w * part[nq + i];
        const float* a = part + 2 * nq + i * dv;
        for (int64_t j = 0; j < dv; ++j) o[j] += w * a[j];
      }
      const float inv = total > 0.f ? 1.f / total : 0.f;  // no allowed slot at all: zeros
      T* dst = op + (bh * nq + i) * dv;
      for (int64_t j = 0; j < dv; ++j) dst[j] = static_cast<T>(o[j] * inv);
    }
  }
}

template <typename Slots>
auto chunk_kernel(int64_t d, int64_t dv) {
  return d == 64 && dv == 64     ? attend_chunk<64, 64, Slots>
         : d == 128 && dv == 128 ? attend_chunk<128, 128, Slots>
                                 : attend_chunk<0, 0, Slots>;
}

// a scale tensor's data, or null for an unquantized cache
inline const float* scales(const std::optional<at::Tensor>& s) { return s ? s->data_ptr<float>() : nullptr; }

// queries and output in T, cache elements in C (T itself, int8 or fp8)
template <typename T, typename C>
void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask, double scale,
         const std::optional<at::Tensor>& k_scale, const std::optional<at::Tensor>& v_scale, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), nq = q.size(2), d = q.size(3);
  const int64_t S = k.size(2), dv = v.size(3);
  const bool* mp = mask.data_ptr<bool>();
  const int64_t mask_stride = mask.size(0) == 1 ? 0 : S;
  // attend over slots [0, span), the last allowed slot of any row and before, in equal chunks
  int64_t span = 0;
  for (int64_t b = 0; b < mask.size(0); ++b)
    for (int64_t s = S; s > span; --s)
      if (mp[b * S + s - 1]) {
        span = s;
        break;
      }
  const int64_t chunks = std::max<int64_t>(1, (span + kChunk - 1) / kChunk);
  const int64_t chunk_len = std::max<int64_t>(1, (span + chunks - 1) / chunks);
  const int64_t part_size = nq * (dv + 2);
  const std::vector<float> qf = scaled_queries<T>(q, scale);
  const at::Tensor qc = q.contiguous();
  const at::BFloat16* qb = raw_bf16<T>(qc);
  std::vector<float> parts(B * H * chunks * part_size);
  const C* kp = static_cast<const C*>(k.data_ptr());
  const C* vp = static_cast<const C*>(v.data_ptr());
  const float* ksp = scales(k_scale);
  const float* vsp = scales(v_scale);
  auto* attend = chunk_kernel<StaticSlots<C>>(d, dv);
  at::parallel_for(0, B * H * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task % chunks, bh = task / chunks, b = bh / H;
      const int64_t s0 = c * chunk_len, s1 = std::min(span, s0 + chunk_len);
      const StaticSlots<C> slots{kp + bh * S * d, vp + bh * S * dv, ksp ? ksp + bh * S : nullptr,
                                 vsp ? vsp + bh * S : nullptr, mp + b * mask_stride, d, dv};
      attend(qf.data() + bh * nq * d, qb ? qb + bh * nq * d : nullptr, scale, &slots, 1, s0, s1, nq, d, dv,
             parts.data() + task * part_size, 0);
    }
  });
  merge_chunks(parts, B * H, chunks, nq, dv, out.data_ptr<T>());
}

// q (B, Hkv, nq, D) against pools (num_blocks, block_size, Hkv, D): sequence b reads its first
// context_lens[b] slots through block_tables[b]; chunks of kChunk slots, all heads, are the parallel tasks.
template <typename T, typename C>
void run_paged(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
               const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
               const std::optional<at::Tensor>& k_scale, const std::optional<at::Tensor>& v_scale, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), nq = q.size(2), d = q.size(3), dv = v_pool.size(3);
  const int64_t block_size = k_pool.size(1), M = block_tables.size(1);
  const int32_t* lens = context_lens.data_ptr<int32_t>();
  int64_t longest = 1;
  for (int64_t b = 0; b < B; ++b) longest = std::max<int64_t>(longest, lens[b]);
  // chunks of at most kChunk slots, and at least 4 tasks per thread when the batch is small (at batch 1
  // a task per 128 slots would leave a thread idle at the end), but no chunk under kBlock slots
  const int64_t few = (4 * at::get_num_threads() + B - 1) / B;
  const int64_t chunks = std::max((longest + kChunk - 1) / kChunk, std::min(few, (longest + kBlock - 1) / kBlock));
  const int64_t chunk_len = (longest + chunks - 1) / chunks;
  const int64_t part_size = nq * (dv + 2);
  const std::vector<float> qf = scaled_queries<T>(q, scale);
  const at::Tensor qc = q.contiguous();
  const at::BFloat16* qb = raw_bf16<T>(qc);
  std::vector<float> parts(B * H * chunks * part_size);
  const C* kp = static_cast<const C*>(k_pool.data_ptr());
  const C* vp = static_cast<const C*>(v_pool.data_ptr());
  const float* ksp = scales(k_scale);
  const float* vsp = scales(v_scale);
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  auto* attend = chunk_kernel<PagedSlots<C>>(d, dv);
  const int shift = (block_size & (block_size - 1)) == 0 ? __builtin_ctzll(block_size) : -1;
  // a task is one chunk of one sequence, every head: its reads go through each block in order
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<PagedSlots<C>> slots;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task % chunks, b = task / chunks;
      const int64_t s0 = c * chunk_len, s1 = std::min<int64_t>(lens[b], s0 + chunk_len);
      slots.clear();
      for (int64_t h = 0; h < H; ++h)
        slots.push_back({kp + h * d, vp + h * dv, ksp ? ksp + h : nullptr, vsp ? vsp + h : nullptr, tables + b * M,
                         block_size, H, H * d, H * dv, shift});
      attend(qf.data() + b * H * nq * d, qb ? qb + b * H * nq * d : nullptr, scale, slots.data(), H, s0,
             std::max(s0, s1), nq, d, dv,
             parts.data() + (b * H * chunks + c) * part_size, chunks * part_size);
    }
  });
  merge_chunks(parts, B * H, chunks, nq, dv, out.data_ptr<T>());
}

// The cache's element type: q's own (unquantized), or int8 / fp8 e4m3 with fp32 scales shaped like the
// cache without its last dimension. Checks that k, v and their scales agree; true if quantized.
bool check_cache(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const std::optional<at::Tensor>& k_scale, const std::optional<at::Tensor>& v_scale) {
  TORCH_CHECK(k.scalar_type() == v.scalar_type(), op, ": k and v must share a dtype");
  TORCH_CHECK(k_scale.has_value() == v_scale.has_value(), op, ": give both k_scale and v_scale or neither");
  if (!k_scale) {
    TORCH_CHECK(q.scalar_type() == k.scalar_type(), op, ": q and an unquantized cache must share a dtype");
    return false;
  }
  TORCH_CHECK(k.scalar_type() == at::kChar || k.scalar_type() == at::kFloat8_e4m3fn, op,
              ": a cache with scales must be int8 or float8_e4m3fn, got ", k.scalar_type());
  for (const at::Tensor* s : {&*k_scale, &*v_scale}) {
    TORCH_CHECK(s->scalar_type() == at::kFloat && s->is_contiguous() && s->sizes() == k.sizes().slice(0, 3), op,
                ": scales must be contiguous float32 shaped like the cache without its last dimension");
  }
  return true;
}

// calls body(C{}) with C the cache's element type (int8_t, Fp8, or T for an unquantized cache)
template <typename T, typename F>
void dispatch_cache(const at::Tensor& k, bool quantized, F&& body) {
  if (!quantized) return body(T{});
  if (k.scalar_type() == at::kChar) return body(int8_t{});
  body(Fp8{});
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                            double scale, const std::optional<at::Tensor>& k_scale,
                            const std::optional<at::Tensor>& v_scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "decode_attention: q, k, v must be (B, H, T, D)");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
              "decode_attention: k must be (B, H, S, D) for q (B, H, T, D)");
  TORCH_CHECK(v.sizes().slice(0, 3) == k.sizes().slice(0, 3), "decode_attention: v must be (B, H, S, Dv)");
  TORCH_CHECK(mask.dim() == 2 && mask.size(1) == k.size(2) && (mask.size(0) == 1 || mask.size(0) == q.size(0)),
              "decode_attention: mask must be (B or 1, S)");
  const bool quantized = check_cache("decode_attention", q, k, v, k_scale, v_scale);
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options());
  const at::Tensor kc = k.contiguous(), vc = v.contiguous(), mc = mask.to(at::kBool).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "decode_attention", [&] {
    dispatch_cache<scalar_t>(k, quantized, [&](auto c) {
      run<scalar_t, decltype(c)>(q, kc, vc, mc, scale, k_scale, v_scale, out);
    });
  });
  return out;
}

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                                  const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                                  const std::optional<at::Tensor>& k_scale, const std::optional<at::Tensor>& v_scale) {
  TORCH_CHECK(q.dim() == 4 && k_pool.dim() == 4 && v_pool.dim() == 4,
              "paged_decode_attention: q must be (B, Hkv, T, D) and the pools (num_blocks, block_size, Hkv, D)");
  TORCH_CHECK(k_pool.size(2) == q.size(1) && k_pool.size(3) == q.size(3) &&
                  v_pool.sizes().slice(0, 3) == k_pool.sizes().slice(0, 3),
              "paged_decode_attention: pool shapes do not match q");
  TORCH_CHECK(k_pool.is_contiguous() && v_pool.is_contiguous(), "paged_decode_attention: pools must be contiguous");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == q.size(0) &&
                  block_tables.scalar_type() == at::kInt && context_lens.scalar_type() == at::kInt &&
                  context_lens.numel() == q.size(0),
              "paged_decode_attention: block_tables must be int32 (B, M) and context_lens int32 (B,)");
  const bool quantized = check_cache("paged_decode_attention", q, k_pool, v_pool, k_scale, v_scale);
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2), v_pool.size(3)}, q.options());
  const at::Tensor tables = block_tables.contiguous(), lens = context_lens.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode_attention", [&] {
    dispatch_cache<scalar_t>(k_pool, quantized, [&](auto c) {
      run_paged<scalar_t, decltype(c)>(q, k_pool, v_pool, tables, lens, scale, k_scale, v_scale, out);
    });
  });
  return out;
}

}  // namespace

// a fragment: other llmkit kernels register their own operators in the same namespace
TORCH_LIBRARY_FRAGMENT(llmkit, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor mask, float scale, Tensor? k_scale=None, "
        "Tensor? v_scale=None) -> Tensor");
  m.def("paged_decode_attention(Tensor q, Tensor k_pool, Tensor v_pool, Tensor block_tables, Tensor context_lens, "
        "float scale, Tensor? k_scale=None, Tensor? v_scale=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmkit, CPU, m) {
  m.impl("decode_attention", &decode_attention);
  m.impl("paged_decode_attention", &paged_decode_attention);
}
