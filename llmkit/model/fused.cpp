// Fused element-wise ops for CPU inference: RMSNorm, SiLU(gate) * up, and rotary embeddings.
//
// Each op reads its inputs once and writes its output once, where torch's eager version runs
// 3-8 kernels with a tensor in memory between each (RMSNorm alone: widen, square, mean, add,
// rsqrt, multiply, narrow, multiply by the weight). Values are rounded where the eager version
// rounds them (a bf16 result of every bf16 op), so results match it: RoPE and the products bit
// for bit, RMSNorm up to the order of its fp32 sum, SiLU up to its exp's last bits.
//
// Plain loops that the compiler vectorises for the host (-O3 -march=native); bf16 is handled as
// its 16 bits (the top half of a float), rounded to nearest even. -ffp-contract=off keeps a*b + c*d
// from being contracted into a fused multiply-add that eager torch does not do.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace {

constexpr int64_t kGrain = 32768;  // values per thread at least: smaller ops run on one thread

// rows of `width` values per parallel task, for kGrain values at least
inline int64_t rows_per_task(int64_t width) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(width, 1)); }

inline float widen(float x) { return x; }
inline float widen(uint16_t x) {
  const uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// f rounded to the storage type: itself, or its nearest bf16 (ties to even; NaN is not kept)
template <typename S>
inline S narrow(float f);
template <>
inline float narrow<float>(float f) { return f; }
template <>
inline uint16_t narrow<uint16_t>(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// f as the storage type would hold it (float -> float, or rounded through bf16)
template <typename S>
inline float round_as(float f) { return widen(narrow<S>(f)); }

// e^x to fp32 precision (~1 unit of the last place): x = n ln2 + r with ln 2 split in two (Cody and Waite), so
// r is exact enough even for large |x|; e^r by its degree-7 Taylor polynomial (|r| <= ln2 / 2, truncation
// error 5e-9); written with integer bit operations so that the loops around it vectorise
inline float exp_approx(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float n = std::nearbyint(x * 1.44269504f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln 2 = 0.693359375 - 2.12194440e-4
  float p = 1.f / 5040;
  p = p * r + 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const uint32_t scale = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float s;
  std::memcpy(&s, &scale, 4);
  return p * s;
}

// storage type of a tensor's elements: float, or bf16's bits
template <typename F>
void with_storage(const at::Tensor& t, const char* op, F&& f) {
  if (t.scalar_type() == at::kFloat) return f(float{});
  if (t.scalar_type() == at::kBFloat16) return f(uint16_t{});
  TORCH_CHECK(false, op, ": float32 or bfloat16 expected, got ", t.scalar_type());
}

template <typename S>
S* data(const at::Tensor& t) { return reinterpret_cast<S*>(t.data_ptr()); }

// ---- RMSNorm: out = w * round(x * rsqrt(mean(x^2) + eps)), per row of the last axis ----
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous() && x.dtype() == weight.dtype(),
              "rms_norm: contiguous x and weight of one dtype expected");
  const int64_t dim = x.size(-1);
  TORCH_CHECK(weight.numel() == dim, "rms_norm: weight has ", weight.numel(), " values for rows of ", dim);
  const int64_t rows = dim ? x.numel() / dim : 0;
  at::Tensor out = at::empty_like(x);
  with_storage(x, "rms_norm", [&](auto tag) {
    using S = decltype(tag);
    const S* xs = data<S>(x);
    const S* ws = data<S>(weight);
    S* os = data<S>(out);
    at::parallel_for(0, rows, rows_per_task(dim), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const S* xr = xs + r * dim;
        S* o = os + r * dim;
        float ss = 0.f;
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < dim; ++j) ss += widen(xr[j]) * widen(xr[j]);
        const float inv = 1.f / std::sqrt(ss / static_cast<float>(dim) + static_cast<float>(eps));
#pragma omp simd
        for (int64_t j = 0; j < dim; ++j) o[j] = narrow<S>(widen(ws[j]) * round_as<S>(widen(xr[j]) * inv));
      }
    });
  });
  return out;
}

// ---- SwiGLU's product: round(silu(gate)) * up ----
at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up) {
  TORCH_CHECK(gate.is_contiguous() && up.is_contiguous() && gate.sizes() == up.sizes() && gate.dtype() == up.dtype(),
              "silu_mul: contiguous gate and up of one shape and dtype expected");
  at::Tensor out = at::empty_like(gate);
  with_storage(gate, "silu_mul", [&](auto tag) {
    using S = decltype(tag);
    const S* g = data<S>(gate);
    const S* u = data<S>(up);
    S* o = data<S>(out);
    at::parallel_for(0, gate.numel(), kGrain, [&](int64_t i0, int64_t i1) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) {
        const float x = widen(g[i]);
        o[i] = narrow<S>(round_as<S>(x / (1.f + exp_approx(-x))) * widen(u[i]));
      }
    });
  });
  return out;
}

// ---- rotary embedding of the first R dims of every head: x * cos + partner(x) * sin ----
// x (B, H, T, D) with any strides; cos, sin (B, T, R) float32 contiguous. "half" pairs dim i with
// i + R/2 (partner = [-x2, x1]), "interleaved" pairs 2i with 2i + 1. The result is (B, T, H, D) in
// memory, returned as a (B, H, T, D) view like eager's, with dims past R copied.
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool interleaved) {
  TORCH_CHECK(x.dim() == 4 && x.stride(3) == 1, "rope: x (B, H, T, D) with contiguous heads expected");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() &&
                  sin.is_contiguous() && cos.sizes() == sin.sizes() && cos.dim() == 3,
              "rope: float32 contiguous cos and sin (B, T, R) expected");
  const int64_t b = x.size(0), h = x.size(1), t = x.size(2), d = x.size(3), r = cos.size(2);
  TORCH_CHECK(cos.size(0) == b && cos.size(1) == t && r <= d && r % 2 == 0, "rope: cos/sin ", cos.sizes(),
              " do not fit x ", x.sizes());
  at::Tensor out = at::empty({b, t, h, d}, x.options());
  with_storage(x, "rope", [&](auto tag) {
    using S = decltype(tag);
    const S* xs = data<S>(x);
    S* os = data<S>(out);
    const float* cs = cos.data_ptr<float>();
    const float* ss = sin.data_ptr<float>();
    const int64_t half = r / 2;
    at::parallel_for(0, b * t, rows_per_task(h * d), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t bi = p / t, ti = p % t;
        const float* c = cs + p * r;
        const float* s = ss + p * r;
        for (int64_t hi = 0; hi < h; ++hi) {
          const S* xr = xs + bi * x.stride(0) + hi * x.stride(1) + ti * x.stride(2);
          S* o = os + (p * h + hi) * d;
          // eager multiplies by cos and sin cast to x's dtype and rounds each product and the sum
          if (interleaved) {
#pragma omp simd
            for (int64_t i = 0; i < half; ++i) {
              const float x0 = widen(xr[2 * i]), x1 = widen(xr[2 * i + 1]);
              const float c0 = round_as<S>(c[2 * i]), c1 = round_as<S>(c[2 * i + 1]);
              const float s0 = round_as<S>(s[2 * i]), s1 = round_as<S>(s[2 * i + 1]);
              o[2 * i] = narrow<S>(round_as<S>(x0 * c0) + round_as<S>(-x1 * s0));
              o[2 * i + 1] = narrow<S>(round_as<S>(x1 * c1) + round_as<S>(x0 * s1));
            }
          } else {
#pragma omp simd
            for (int64_t i = 0; i < half; ++i) {
              const float x0 = widen(xr[i]), x1 = widen(xr[i + half]);
              o[i] = narrow<S>(round_as<S>(x0 * round_as<S>(c[i])) + round_as<S>(-x1 * round_as<S>(s[i])));
              o[i + half] =
                  narrow<S>(round_as<S>(x1 * round_as<S>(c[i + half])) + round_as<S>(x0 * round_as<S>(s[i + half])));
            }
          }
          for (int64_t i = r; i < d; ++i) o[i] = xr[i];
        }
      }
    });
  });
  return out.permute({0, 2, 1, 3});
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llmkit, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("silu_mul(Tensor gate, Tensor up) -> Tensor");
  m.def("rope(Tensor x, Tensor cos, Tensor sin, bool interleaved) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmkit, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("silu_mul", &silu_mul);
  m.impl("rope", &rope);
}
