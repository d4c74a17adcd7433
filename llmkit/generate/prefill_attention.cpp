// Prompt (prefill) attention for CPU over a paged KV cache: flash attention with register-tiled
// matrix products.
//
// Sequence i's T_i query rows are the last T_i of its context of S_i slots (a prompt chunk after
// its cached prefix), so query row r sees slots [0, S_i - T_i + r]. For each (sequence, K/V head),
// the slots' K and V rows are first copied out of their blocks into a packed layout the products
// read with plain vector loads; then each task (sequence, K/V head, tile of query positions times
// the head's grouped query heads) runs an online softmax over blocks of kKeys slots: scores
// S = Q K^T of a row tile, the running max and sum per row, P = exp(S - max), O = O * corr + P V.
// Blocks past a tile's last position are skipped (causal), and only the diagonal blocks are masked.
//
// bf16 uses AVX512-BF16's vdpbf16ps, which multiplies pairs of bf16 values: K is packed as pairs of
// consecutive dimensions of kKeys slots ([D/2][kKeys] words), V as pairs of consecutive slots
// ([S/2][Dv] words), and the bf16 P of a row is a row of such pairs. fp32 uses fused multiply-adds on
// K^T ([D][kKeys] per block) and V as is. Scores, softmax and O accumulate in fp32 (P is rounded to
// bf16 for the bf16 product, as in torch's own flash attention).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
constexpr int64_t kKeys = 32;      // slots per block: two 16-lane vectors of scores per row
constexpr int64_t kTileRows = 96;  // query rows (positions x grouped heads) per task, about
constexpr int kQkRows = 12;        // score rows in registers: 24 accumulators + 2 K vectors + a broadcast
constexpr int kPvRows = 6;         // output rows in registers, 64 values each: 24 accumulators + 4 V vectors
// a masked score (and the running max before any slot): finite, because the file is built with -ffast-math,
// under which infinities are not handled; 2 to the power of it minus any real maximum is 0
constexpr float kMasked = -1e30f;

#if defined(__AVX512BF16__)
constexpr bool kHasBf16 = true;
#else
constexpr bool kHasBf16 = false;
#endif

// 2^x for x <= 0 to about fp32 precision: 2^round(x) times a degree-6 polynomial of the rest (|f| <= 1/2,
// relative error ~1e-7); below -150 (masked slots) exactly 0
inline __m512 exp2(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-200.f));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.5403530e-4f);  // (ln 2)^k / k!, k = 6 .. 0
  for (const float c : {1.3333558e-3f, 9.6181291e-3f, 5.5504109e-2f, 2.4022651e-1f, 6.9314718e-1f, 1.f})
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

// calls f(std::integral_constant<int, n>{}) for a runtime n in [1, N]: register tiles of every height
template <int N, typename F>
inline void with_rows(int n, F&& f) {
  if constexpr (N > 0) {
    if (n == N) return f(std::integral_constant<int, N>{});
    with_rows<N - 1>(n, f);
  }
}

// The layout of one (sequence, K/V head)'s packed K and V: slots padded with zeros to whole blocks.
//   bf16: K block b = [D/2][kKeys] words (dims 2p, 2p+1 of each slot), V = [S/2][Dv] words (slots 2m, 2m+1)
//   fp32: K block b = [D][kKeys] floats, V = [S][Dv] floats
template <typename T>
struct Packed {
  static constexpr bool kPairs = std::is_same_v<T, at::BFloat16>;
  using Word = std::conditional_t<kPairs, uint32_t, float>;  // what a vector lane holds
  static constexpr int64_t kPer = kPairs ? 2 : 1;           // values per word along the packed axis
  int64_t d, dv;
  int64_t k_words(int64_t blocks) const { return blocks * kKeys * d / kPer; }
  int64_t v_words(int64_t blocks) const { return blocks * kKeys * dv / kPer; }
};

// Copy slots [0, s) of head h out of the pools (through the block table) into the packed layout.
template <typename T>
void pack(const T* k_pool, const T* v_pool, const int32_t* table, int64_t block_size, int64_t hkv, int64_t h,
          int64_t s, const Packed<T>& lay, typename Packed<T>::Word* kp, typename Packed<T>::Word* vp) {
  using Word = typename Packed<T>::Word;
  const int64_t d = lay.d, dv = lay.dv, blocks = (s + kKeys - 1) / kKeys;
  std::memset(kp, 0, lay.k_words(blocks) * sizeof(Word));
  std::memset(vp, 0, lay.v_words(blocks) * sizeof(Word));
  T* kt = reinterpret_cast<T*>(kp);
  T* vt = reinterpret_cast<T*>(vp);
  for (int64_t j = 0; j < s; ++j) {
    const int64_t row = static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size;
    const T* krow = k_pool + (row * hkv + h) * d;
    const T* vrow = v_pool + (row * hkv + h) * dv;
    const int64_t b = j / kKeys, n = j % kKeys;
    T* kb = kt + b * kKeys * d;
    if constexpr (Packed<T>::kPairs) {
      for (int64_t p = 0; p < d / 2; ++p) {  // word (p, n) = dims 2p, 2p+1 of slot n
        kb[(p * kKeys + n) * 2] = krow[2 * p];
        kb[(p * kKeys + n) * 2 + 1] = krow[2 * p + 1];
      }
      T* vm = vt + (j / 2) * dv * 2 + (j % 2);  // word (m, c) = column c of slots 2m, 2m+1
      for (int64_t c = 0; c < dv; ++c) vm[2 * c] = vrow[c];
    } else {
      for (int64_t c = 0; c < d; ++c) kb[c * kKeys + n] = krow[c];
      std::memcpy(vt + j * dv, vrow, dv * sizeof(T));
    }
  }
}

// s[r][0 .. kKeys) = q_r . k_n for NR query rows (each a pointer to its D values) and one packed K block
template <typename T, int NR>
inline void scores(const T* const* q, const typename Packed<T>::Word* kb, int64_t d, float* s) {
  __m512 acc[NR][2];
  for (int r = 0; r < NR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  if constexpr (Packed<T>::kPairs) {
#if defined(__AVX512BF16__)
    for (int64_t p = 0; p < d / 2; ++p) {
      const __m512bh k0 = (__m512bh)_mm512_loadu_si512(kb + p * kKeys);
      const __m512bh k1 = (__m512bh)_mm512_loadu_si512(kb + p * kKeys + 16);
      for (int r = 0; r < NR; ++r) {  // the pair (q[2p], q[2p+1]) in every lane
        const __m512bh qp = (__m512bh)_mm512_set1_epi32(reinterpret_cast<const int32_t*>(q[r])[p]);
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], qp, k0);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], qp, k1);
      }
    }
#endif
  } else {
    for (int64_t c = 0; c < d; ++c) {
      const __m512 k0 = _mm512_loadu_ps(kb + c * kKeys), k1 = _mm512_loadu_ps(kb + c * kKeys + 16);
      for (int r = 0; r < NR; ++r) {
        const __m512 qc = _mm512_set1_ps(q[r][c]);
        acc[r][0] = _mm512_fmadd_ps(qc, k0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(qc, k1, acc[r][1]);
      }
    }
  }
  for (int r = 0; r < NR; ++r) {
    _mm512_storeu_ps(s + r * kKeys, acc[r][0]);
    _mm512_storeu_ps(s + r * kKeys + 16, acc[r][1]);
  }
}

// o[r][c0 .. c0 + 16 NV) = o[r][..] * corr[r] + sum_n p[r][n] v[n][..] for NR rows over one block's
// kKeys slots. p: NR rows of kKeys / kPer words (bf16 pairs, or floats); vb: the block's packed V.
template <typename T, int NR, int NV>
inline void accumulate(float* o, int64_t dv, int64_t c0, const float* corr, const typename Packed<T>::Word* p,
                       const typename Packed<T>::Word* vb) {
  constexpr int64_t words = kKeys / Packed<T>::kPer;
  __m512 acc[NR][NV];
  for (int r = 0; r < NR; ++r) {
    const __m512 c = _mm512_set1_ps(corr[r]);
    for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_mul_ps(_mm512_loadu_ps(o + r * dv + c0 + 16 * j), c);
  }
  for (int64_t m = 0; m < words; ++m) {
    if constexpr (Packed<T>::kPairs) {
#if defined(__AVX512BF16__)
      __m512bh v[NV];
      for (int j = 0; j < NV; ++j) v[j] = (__m512bh)_mm512_loadu_si512(vb + m * dv + c0 + 16 * j);
      for (int r = 0; r < NR; ++r) {
        const __m512bh pm = (__m512bh)_mm512_set1_epi32(static_cast<int32_t>(p[r * words + m]));
        for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], pm, v[j]);
      }
#endif
    } else {
      __m512 v[NV];
      for (int j = 0; j < NV; ++j) v[j] = _mm512_loadu_ps(vb + m * dv + c0 + 16 * j);
      for (int r = 0; r < NR; ++r) {
        const __m512 pm = _mm512_set1_ps(p[r * words + m]);
        for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_fmadd_ps(pm, v[j], acc[r][j]);
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(o + r * dv + c0 + 16 * j, acc[r][j]);
}

// One task: rows [r0, r1) of sequence `seq`'s (positions x grouped heads) for K/V head h.
struct Task {
  int64_t seq, h, r0, r1, cost;
};

struct Sequence {
  int64_t q0, t, s;  // first query row in q, query rows, context slots
  int64_t packed;    // offset of its heads' packed K (and V) in words
};

template <typename T>
void attend_tile(const Task& task, const Sequence& sq, const T* q, int64_t q_stride, int64_t heads, int64_t group,
                 const Packed<T>& lay, const typename Packed<T>::Word* kp, const typename Packed<T>::Word* vp,
                 float scale, T* out, int64_t out_stride) {
  using Word = typename Packed<T>::Word;
  const int64_t d = lay.d, dv = lay.dv, rows = task.r1 - task.r0, offset = sq.s - sq.t;
  constexpr int64_t words = kKeys / Packed<T>::kPer;
  std::vector<const T*> qrow(rows);
  std::vector<int64_t> last(rows);  // each row's last allowed slot
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t r = task.r0 + i, pos = r / group, head = task.h * group + r % group;
    qrow[i] = q + (sq.q0 + pos) * q_stride + head * d;
    last[i] = offset + pos;
  }
  std::vector<float> s(rows * kKeys), o(rows * dv, 0.f), m(rows, kMasked), l(rows, 0.f), corr(rows);
  std::vector<Word> p(rows * words);
  const __m512 scale2 = _mm512_set1_ps(scale * static_cast<float>(M_LOG2E)), masked = _mm512_set1_ps(kMasked);
  const int64_t blocks = last[rows - 1] / kKeys + 1;
  for (int64_t b = 0; b < blocks; ++b) {
    const Word* kb = kp + b * kKeys * d / Packed<T>::kPer;
    const Word* vb = vp + b * kKeys * dv / Packed<T>::kPer;
    for (int64_t i = 0; i < rows; i += kQkRows)
      with_rows<kQkRows>(static_cast<int>(std::min<int64_t>(kQkRows, rows - i)),
                         [&](auto nr) { scores<T, decltype(nr)::value>(qrow.data() + i, kb, d, s.data() + i * kKeys); });
    for (int64_t i = 0; i < rows; ++i) {  // online softmax of the block's scores, row by row, in base 2
      float* si = s.data() + i * kKeys;
      const int64_t allowed = last[i] - b * kKeys + 1;  // slots of this block the row sees, from its first
      __m512 x0 = _mm512_mul_ps(_mm512_loadu_ps(si), scale2), x1 = _mm512_mul_ps(_mm512_loadu_ps(si + 16), scale2);
      if (allowed < kKeys) {  // a diagonal block
        const __mmask16 k0 = allowed >= 16 ? 0xFFFF : allowed <= 0 ? 0 : (1u << allowed) - 1;
        const __mmask16 k1 = allowed >= kKeys ? 0xFFFF : allowed <= 16 ? 0 : (1u << (allowed - 16)) - 1;
        x0 = _mm512_mask_blend_ps(k0, masked, x0);
        x1 = _mm512_mask_blend_ps(k1, masked, x1);
      }
      const float mx = std::max(m[i], _mm512_reduce_max_ps(_mm512_max_ps(x0, x1)));
      const __m512 mv = _mm512_set1_ps(mx);
      const __m512 p0 = exp2(_mm512_sub_ps(x0, mv)), p1 = exp2(_mm512_sub_ps(x1, mv));
      corr[i] = std::exp2(m[i] - mx);  // 0 on the first block
      l[i] = l[i] * corr[i] + _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
      m[i] = mx;
      if constexpr (Packed<T>::kPairs) {
#if defined(__AVX512BF16__)
        _mm512_storeu_si512(p.data() + i * words, (__m512i)_mm512_cvtne2ps_pbh(p1, p0));
#endif
      } else {
        _mm512_storeu_ps(p.data() + i * words, p0);
        _mm512_storeu_ps(p.data() + i * words + 16, p1);
      }
    }
    for (int64_t i = 0; i < rows; i += kPvRows) {
      const int nr = static_cast<int>(std::min<int64_t>(kPvRows, rows - i));
      for (int64_t c0 = 0; c0 < dv; c0 += 64) {
        const int nv = static_cast<int>(std::min<int64_t>(4, (dv - c0) / 16));
        with_rows<kPvRows>(nr, [&](auto r) {
          with_rows<4>(nv, [&](auto v) {
            accumulate<T, decltype(r)::value, decltype(v)::value>(o.data() + i * dv, dv, c0, corr.data() + i,
                                                                  p.data() + i * words, vb);
          });
        });
      }
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t r = task.r0 + i, pos = r / group, head = task.h * group + r % group;
    T* dst = out + (sq.q0 + pos) * out_stride + head * dv;
    const float inv = 1.f / l[i];
    for (int64_t c = 0; c < dv; ++c) dst[c] = static_cast<T>(o[i * dv + c] * inv);
  }
}

template <typename T>
void run(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool, const at::Tensor& tables,
         at::IntArrayRef query_lens, at::IntArrayRef context_lens, double scale, at::Tensor& out) {
  using Word = typename Packed<T>::Word;
  const int64_t heads = q.size(1), d = q.size(2), hkv = k_pool.size(2), dv = v_pool.size(3);
  const int64_t group = heads / hkv, block_size = k_pool.size(1), width = tables.size(1);
  const Packed<T> lay{d, dv};
  std::vector<Sequence> seqs;
  int64_t q0 = 0, words = 0;
  for (size_t i = 0; i < query_lens.size(); ++i) {
    const int64_t s = context_lens[i], blocks = (s + kKeys - 1) / kKeys;
    seqs.push_back({q0, query_lens[i], s, words});
    q0 += query_lens[i];
    words += hkv * (lay.k_words(blocks) + lay.v_words(blocks));
  }
  std::vector<Word> packed(words);
  const T* kpool = k_pool.data_ptr<T>();
  const T* vpool = v_pool.data_ptr<T>();
  const int32_t* tp = tables.data_ptr<int32_t>();
  // where head h of sequence i has its packed K and V
  auto k_of = [&](const Sequence& sq, int64_t h) {
    const int64_t blocks = (sq.s + kKeys - 1) / kKeys;
    return packed.data() + sq.packed + h * (lay.k_words(blocks) + lay.v_words(blocks));
  };
  auto v_of = [&](const Sequence& sq, int64_t h) { return k_of(sq, h) + lay.k_words((sq.s + kKeys - 1) / kKeys); };
  const int64_t n = static_cast<int64_t>(seqs.size());
  at::parallel_for(0, n * hkv, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Sequence& sq = seqs[i / hkv];
      pack<T>(kpool, vpool, tp + (i / hkv) * width, block_size, hkv, i % hkv, sq.s, lay, k_of(sq, i % hkv),
              v_of(sq, i % hkv));
    }
  });
  // tasks of about kTileRows rows (whole positions), dearest first, taken by the threads as they free up
  const int64_t tile = std::max<int64_t>(1, kTileRows / group) * group;
  std::vector<Task> tasks;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < hkv; ++h)
      for (int64_t r0 = 0; r0 < seqs[i].t * group; r0 += tile) {
        const int64_t r1 = std::min(seqs[i].t * group, r0 + tile);
        const int64_t slots = seqs[i].s - seqs[i].t + (r1 - 1) / group + 1;
        tasks.push_back({i, h, r0, r1, (r1 - r0) * slots});
      }
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
  std::atomic<int64_t> next{0};
  const T* qp = q.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    for (int64_t i = next++; i < static_cast<int64_t>(tasks.size()); i = next++) {
      const Task& task = tasks[i];
      const Sequence& sq = seqs[task.seq];
      attend_tile<T>(task, sq, qp, q.stride(0), heads, group, lay, k_of(sq, task.h), v_of(sq, task.h),
                     static_cast<float>(scale), op, heads * dv);
    }
  });
}
#endif

bool supported(c10::ScalarType dtype, int64_t d, int64_t dv) {
#if defined(__AVX512F__)
  const bool bf16 = dtype == at::kBFloat16 && kHasBf16 && d % 2 == 0;
  return (dtype == at::kFloat || bf16) && dv % 16 == 0 && d > 0;
#else
  return false;
#endif
}

at::Tensor paged_prefill_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                                   const at::Tensor& block_tables, at::IntArrayRef query_lens,
                                   at::IntArrayRef context_lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_pool.dim() == 4 && v_pool.dim() == 4,
              "paged_prefill_attention: q must be (N, H, D) and the pools (num_blocks, block_size, Hkv, D)");
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) == q.size(2), "paged_prefill_attention: q's heads must be contiguous");
  TORCH_CHECK(k_pool.size(3) == q.size(2) && q.size(1) % k_pool.size(2) == 0 &&
                  v_pool.sizes().slice(0, 3) == k_pool.sizes().slice(0, 3),
              "paged_prefill_attention: pool shapes do not match q");
  TORCH_CHECK(k_pool.is_contiguous() && v_pool.is_contiguous(), "paged_prefill_attention: pools must be contiguous");
  TORCH_CHECK(k_pool.scalar_type() == q.scalar_type() && v_pool.scalar_type() == q.scalar_type(),
              "paged_prefill_attention: q and the pools must share a dtype");
  TORCH_CHECK(supported(q.scalar_type(), q.size(2), v_pool.size(3)),
              "paged_prefill_attention: unsupported dtype or head size on this CPU");
  const int64_t b = static_cast<int64_t>(query_lens.size());
  TORCH_CHECK(static_cast<int64_t>(context_lens.size()) == b && block_tables.dim() == 2 &&
                  block_tables.size(0) == b && block_tables.scalar_type() == at::kInt,
              "paged_prefill_attention: one query length, context length and int32 block-table row per sequence");
  int64_t total = 0;
  for (int64_t i = 0; i < b; ++i) {
    TORCH_CHECK(query_lens[i] >= 1 && context_lens[i] >= query_lens[i] &&
                    context_lens[i] <= block_tables.size(1) * k_pool.size(1),
                "paged_prefill_attention: sequence ", i, " has ", query_lens[i], " queries over ", context_lens[i],
                " slots");
    total += query_lens[i];
  }
  TORCH_CHECK(total == q.size(0), "paged_prefill_attention: query lengths sum to ", total, ", q has ", q.size(0));
  at::Tensor out = at::empty({q.size(0), q.size(1), v_pool.size(3)}, q.options());
#if defined(__AVX512F__)
  const at::Tensor tables = block_tables.contiguous();
  if (q.scalar_type() == at::kFloat) run<float>(q, k_pool, v_pool, tables, query_lens, context_lens, scale, out);
  else run<at::BFloat16>(q, k_pool, v_pool, tables, query_lens, context_lens, scale, out);
#endif
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmkit, m) {
  m.def("paged_prefill_supported(ScalarType dtype, int head_dim, int v_head_dim) -> bool", &supported);
  m.def("paged_prefill_attention(Tensor q, Tensor k_pool, Tensor v_pool, Tensor block_tables, int[] query_lens, "
        "int[] context_lens, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmkit, CPU, m) {
  m.impl("paged_prefill_attention", &paged_prefill_attention);
}
