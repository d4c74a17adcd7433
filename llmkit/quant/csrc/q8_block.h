// llama.cpp's Q8 activations, shared by the GGUF and int8 kernels: 32 values rounded to int8 with one scale.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace llmkit_q8 {

constexpr int64_t kBlock = 32;

// q[c] = round(x[c] / d) with d = max|x| / 127 (all zeros when x is); returns d. Divides rather than
// multiplying by 1 / d, so ties round as llmkit.quant.primitives.round_activations_int8 does.
inline float quantize_block(const float* x, int8_t* q) {
  float amax = 0.f;
  for (int64_t c = 0; c < kBlock; ++c) amax = std::max(amax, std::fabs(x[c]));
  const float d = amax / 127.f;
  for (int64_t c = 0; c < kBlock; ++c) q[c] = d > 0.f ? static_cast<int8_t>(std::nearbyint(x[c] / d)) : 0;
  return d;
}

}  // namespace llmkit_q8
