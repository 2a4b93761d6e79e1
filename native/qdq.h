// Per-token min-max fake quantization, bit for bit as stamp_onnx.quant.qdq (numpy, float32).
//
// For one token (a row of w features) at b bits, with qmax = 2^b - 1, all in float32:
//   rmin = min(0, min x)   rmax = max(0, max x)   span = rmax - rmin
//   scale = span == 0 ? 1 : span / qmax
//   zp = clip(round(-rmin / scale), 0, qmax)
//   q = clip(round(x / scale) + zp, 0, qmax)        round = half to even
//   y = (q - zp) * scale
// Every step is one IEEE float32 operation, as in numpy, so the results are identical as long as
// the compiler neither contracts (FMA) nor reassociates: build without -ffast-math and with
// -ffp-contract=off. x / scale is a true division (x * (1 / scale) would round differently).
// std::nearbyint rounds half to even in the default rounding mode, like np.round.
//
// Non-finite inputs follow numpy too: a NaN anywhere in a row makes the whole row NaN (numpy's
// min/max propagate it); an infinity gives scale = inf and NaN outputs, which the plain formula
// reproduces.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace stamp {

// Bit widths the quantizer accepts (2^16 - 1 is exact in float32).
constexpr int kMinBits = 2;
constexpr int kMaxBits = 16;

inline float qmax_for_bits(int bits) { return static_cast<float>((1 << bits) - 1); }

namespace detail {

typedef float f32x4 __attribute__((vector_size(16)));
typedef int32_t i32x4 __attribute__((vector_size(16)));

// rmin = min(0, min x), rmax = max(0, max x) over x[0, w). Returns false if x holds a NaN.
// Explicit 4-lane vectors (GCC/Clang vector extensions, no intrinsics): GCC does not vectorize a
// float min/max reduction without -ffast-math, but it does map these lane-wise selects to
// minps/maxps. Min and max are exact in any order, so the lanes change nothing.
inline bool row_range(const float* x, int64_t w, float& rmin, float& rmax) {
  f32x4 lo[4] = {}, hi[4] = {};
  i32x4 nan = {};
  int64_t j = 0;
  for (; j + 16 <= w; j += 16) {
    for (int k = 0; k < 4; ++k) {
      f32x4 v;
      std::memcpy(&v, x + j + 4 * k, sizeof v);
      lo[k] = v < lo[k] ? v : lo[k];
      hi[k] = v > hi[k] ? v : hi[k];
      nan |= v != v;
    }
  }
  float l = 0.0f, h = 0.0f;
  bool has_nan = false;
  for (int i = 0; i < 4; ++i) {
    has_nan |= nan[i] != 0;
    for (int k = 0; k < 4; ++k) {
      l = lo[k][i] < l ? lo[k][i] : l;
      h = hi[k][i] > h ? hi[k][i] : h;
    }
  }
  for (; j < w; ++j) {
    const float v = x[j];
    l = v < l ? v : l;
    h = v > h ? v : h;
    has_nan |= v != v;
  }
  rmin = l;
  rmax = h;
  return !has_nan;
}

}  // namespace detail

// y = qdq(x) for one row of w features; y may be x (in place) but must not overlap it otherwise.
inline void qdq_row(const float* x, float* y, int64_t w, float qmax) {
  float rmin, rmax;
  if (!detail::row_range(x, w, rmin, rmax)) {
    for (int64_t j = 0; j < w; ++j) y[j] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  const float span = rmax - rmin;
  const float scale = span == 0.0f ? 1.0f : span / qmax;
  float zp = std::nearbyint(-rmin / scale);
  // np.clip's float max/min: NaN stays NaN (scale = inf gives -rmin / scale = NaN), -0 becomes +0.
  if (!std::isnan(zp)) {
    zp = zp > 0.0f ? zp : 0.0f;
    zp = zp < qmax ? zp : qmax;
  }
  // A plain loop: GCC vectorizes it (divps, roundps, max/min, sub, mul). zp is NaN, +0 or
  // positive, so round(x / scale) + zp is never -0 and these selects equal np.clip (NaN kept).
  for (int64_t j = 0; j < w; ++j) {
    float q = std::nearbyint(x[j] / scale) + zp;
    q = q < 0.0f ? 0.0f : q;
    q = q > qmax ? qmax : q;
    y[j] = (q - zp) * scale;
  }
}

// Mixed precision: token `pos` (its index on the token axis) is quantized with hp bits when
// pos < hp_tokens, with lp bits otherwise.
struct TokenQdq {
  int64_t hp_tokens = 0;
  int hp_bits = 8;
  int lp_bits = 4;

  float qmax(int64_t pos) const { return qmax_for_bits(pos < hp_tokens ? hp_bits : lp_bits); }
  void row(int64_t pos, const float* x, float* y, int64_t w) const { qdq_row(x, y, w, qmax(pos)); }
};

}  // namespace stamp
