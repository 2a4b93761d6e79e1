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
// min/max propagate it, ours skip it, so NaN is tracked on the side); an infinity gives
// scale = inf and NaN outputs, which the plain formula reproduces.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace stamp {

// Bit widths the quantizer accepts (2^16 - 1 is exact in float32).
constexpr int kMinBits = 2;
constexpr int kMaxBits = 16;

inline float qmax_for_bits(int bits) { return static_cast<float>((1 << bits) - 1); }

// rmin = min(0, min x) and rmax = max(0, max x) of a token (the accumulators start at 0), and
// whether the token holds a NaN.
struct Range {
  float lo = 0.0f;
  float hi = 0.0f;
  bool nan = false;
};

// Range of x[0, w). An OpenMP simd min/max reduction (-fopenmp-simd, no runtime library): GCC
// does not vectorize a float min/max reduction without -ffast-math otherwise. Min and max are
// exact in any order, so vector lanes change nothing; a NaN is tracked separately.
inline Range row_range(const float* x, int64_t w) {
  float lo = 0.0f, hi = 0.0f;
  int nan = 0;
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(| : nan)
  for (int64_t j = 0; j < w; ++j) {
    const float v = x[j];
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
    nan |= v != v;
  }
  return {lo, hi, nan != 0};
}

// scale and zero point (as a float) of a row whose range is r, at qmax.
inline void row_params(const Range& r, float qmax, float& scale, float& zp) {
  const float span = r.hi - r.lo;
  scale = span == 0.0f ? 1.0f : span / qmax;
  zp = std::nearbyint(-r.lo / scale);
  // np.clip's float max/min: NaN stays NaN (scale = inf gives -rmin / scale = NaN), -0 becomes +0.
  if (!std::isnan(zp)) {
    zp = zp > 0.0f ? zp : 0.0f;
    zp = zp < qmax ? zp : qmax;
  }
}

// q = clip(round(x / scale) + zp, 0, qmax) for each of the w values, handed to out(j, q). A plain
// loop that GCC vectorizes once out is inlined (div, round, max/min, and out's arithmetic). zp is
// NaN, +0 or positive, so round(x / scale) + zp is never -0 and these selects equal np.clip (NaN kept).
template <class Out>
inline void quantize_row(const float* x, int64_t w, float qmax, float scale, float zp, Out&& out) {
  for (int64_t j = 0; j < w; ++j) {
    float q = std::nearbyint(x[j] / scale) + zp;
    q = q < 0.0f ? 0.0f : q;
    q = q > qmax ? qmax : q;
    out(j, q);
  }
}

// y = qdq(x) for one row of w features whose range is r; y may be x (in place) but must not
// overlap it otherwise.
inline void qdq_apply(const float* x, float* y, int64_t w, float qmax, const Range& r) {
  if (r.nan) {  // numpy: the whole row NaN (which NaN payload each element gets is not reproduced)
    for (int64_t j = 0; j < w; ++j) y[j] = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  float scale, zp;
  row_params(r, qmax, scale, zp);
  quantize_row(x, w, qmax, scale, zp, [&](int64_t j, float q) { y[j] = (q - zp) * scale; });
}

inline void qdq_row(const float* x, float* y, int64_t w, float qmax) { qdq_apply(x, y, w, qmax, row_range(x, w)); }

// Integer codes (--target integer), as stamp_onnx.core.quant.integer_codes_group: the same q and
// zp as qdq_apply, written as uint8 codes around the shared zero point 128 instead of (q - zp) *
// scale. Tokens of up to 7 bits: c = q - zp + 128 (|q - zp| <= 127) and the `columns` extra
// codes are 128; 8-bit tokens: c = q and the extra codes are zp (the integer GEMM's weight rows
// take them back). *s gets the token's scale. A row with a NaN gets scale NaN and codes 128 (its
// GEMM output is NaN, as the fake-quant layer's).
constexpr float kCodeZeroPoint = 128.0f;

inline void codes_apply(const float* x, uint8_t* c, float* s, int64_t w, int64_t columns, float qmax, const Range& r) {
  const bool folded = qmax <= 127.0f;
  if (r.nan) {
    for (int64_t j = 0; j < w + columns; ++j) c[j] = 128;
    *s = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  float scale, zp;
  row_params(r, qmax, scale, zp);
  const float shift = folded ? kCodeZeroPoint - zp : 0.0f;  // exact: small integers in float32
  quantize_row(x, w, qmax, scale, zp, [&](int64_t j, float q) { c[j] = static_cast<uint8_t>(static_cast<int>(q + shift)); });
  const uint8_t extra = static_cast<uint8_t>(folded ? 128 : static_cast<int>(zp));
  for (int64_t j = 0; j < columns; ++j) c[w + j] = extra;
  *s = scale;
}

// Mixed precision: token `pos` (its index on the token axis) is quantized with hp bits when
// pos < hp_tokens, then with mid_bits[i] while pos < mid_ends[i] (the middle tiers, ends
// cumulative from 0), with lp bits otherwise.
struct TokenQdq {
  int64_t hp_tokens = 0;
  int hp_bits = 8;
  int lp_bits = 4;
  std::vector<int64_t> mid_ends;
  std::vector<int> mid_bits;

  int bits(int64_t pos) const {
    if (pos < hp_tokens) return hp_bits;
    for (size_t i = 0; i < mid_ends.size(); ++i)
      if (pos < mid_ends[i]) return mid_bits[i];
    return lp_bits;
  }
  float qmax(int64_t pos) const { return qmax_for_bits(bits(pos)); }
  void row(int64_t pos, const float* x, float* y, int64_t w) const { qdq_row(x, y, w, qmax(pos)); }
  void row(int64_t pos, const float* x, float* y, int64_t w, const Range& r) const { qdq_apply(x, y, w, qmax(pos), r); }
};

// TokenQdq's quantizer writing integer codes: rows of w + columns codes and one scale per token.
struct TokenCodes {
  TokenQdq q;
  int64_t columns = 0;  // zero_point_columns

  void row(int64_t pos, const float* x, uint8_t* c, float* s, int64_t w, const Range& r) const {
    codes_apply(x, c, s, w, columns, q.qmax(pos), r);
  }
  void row(int64_t pos, const float* x, uint8_t* c, float* s, int64_t w) const { row(pos, x, c, s, w, row_range(x, w)); }
};

}  // namespace stamp
