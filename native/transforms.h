// Sequence transforms along the token axis, as stamp_onnx/transforms.py defines them.
//
// Data layout everywhere: a token is a row of features; rows are `ld` floats apart and the
// routines touch w <= ld features of each row (a block of feature columns: every transform acts
// on each feature column independently, so column blocks are independent units of work).
//
// Haar is done in chunks (see HaarPlan); haar2d, dct and wht are ColumnTransforms built once
// per token count and applied to column blocks.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "qdq.h"

namespace stamp {

enum class Kind { kHaar, kHaar2d, kDct, kWht };

// 1/sqrt(2) rounded to float32, as numpy rounds the Python float INV_SQRT2 in float32 arithmetic.
inline float inv_sqrt2() { return static_cast<float>(1.0 / std::sqrt(2.0)); }

// y0 = (a + b) / sqrt(2), y1 = (a - b) / sqrt(2) over w features (two float ops each, as numpy).
// The forward step uses it on (even, odd) -> (low, high), the inverse on (low, high) -> (even, odd).
inline void butterfly(const float* __restrict a, const float* __restrict b, float* __restrict y0,
                      float* __restrict y1, int64_t w) {
  const float k = inv_sqrt2();
  for (int64_t j = 0; j < w; ++j) {
    const float u = a[j], v = b[j];
    y0[j] = (u + v) * k;
    y1[j] = (u - v) * k;
  }
}

// The same, also giving the range (qdq.h) of y1 and, when r0 is set, of y0: the fused kernel
// quantizes the rows it finishes, and their range comes with no second pass over them.
inline void butterfly_range(const float* __restrict a, const float* __restrict b, float* __restrict y0,
                            float* __restrict y1, int64_t w, Range* r0, Range& r1) {
  const float k = inv_sqrt2();
  float lo0 = 0.0f, hi0 = 0.0f, lo1 = 0.0f, hi1 = 0.0f;
  int nan0 = 0, nan = 0;
  if (r0) {
#pragma omp simd reduction(min : lo0, lo1) reduction(max : hi0, hi1) reduction(| : nan0, nan)
    for (int64_t j = 0; j < w; ++j) {
      const float u = a[j], v = b[j], low = (u + v) * k, high = (u - v) * k;
      y0[j] = low;
      y1[j] = high;
      lo0 = low < lo0 ? low : lo0;
      hi0 = low > hi0 ? low : hi0;
      lo1 = high < lo1 ? high : lo1;
      hi1 = high > hi1 ? high : hi1;
      nan0 |= low != low;
      nan |= high != high;
    }
    *r0 = {lo0, hi0, nan0 != 0};
  } else {
#pragma omp simd reduction(min : lo1) reduction(max : hi1) reduction(| : nan)
    for (int64_t j = 0; j < w; ++j) {
      const float u = a[j], v = b[j], high = (u - v) * k;
      y0[j] = (u + v) * k;
      y1[j] = high;
      lo1 = high < lo1 ? high : lo1;
      hi1 = high > hi1 ? high : hi1;
      nan |= high != high;
    }
  }
  r1 = {lo1, hi1, nan != 0};
}

inline void copy_row(const float* x, float* y, int64_t w) { std::memcpy(y, x, sizeof(float) * w); }

// --- Haar, in chunks ----------------------------------------------------------------------
//
// Every Haar level pairs tokens (2i, 2i+1) of its band, so the 2^L consecutive input tokens of
// chunk c (L = levels applied) produce exactly their own coefficients at every level:
// a_L[c], d_L[c], d_(L-1)[2c, 2c+1], ..., d_1[2^(L-1) c, ...]. The last chunk may be shorter; the
// odd-band rule of transforms.py (an odd last token is carried to the low band unchanged) then
// applies inside it, and it is also the global band's last token. So the whole transform is the
// small level-by-level transform of each chunk, done in an in-cache scratch buffer, with every
// finished coefficient written straight to its place in the layout [a_L | d_L | ... | d_1]:
// d_l starts at band[l] = ceil(n / 2^l) (the low band's length after level l), a_L at 0.
struct HaarPlan {
  int64_t n = 0;               // tokens transformed
  int levels = 0;              // levels applied: min(requested, ceil(log2 n))
  int64_t chunk = 1;           // 2^levels input tokens per chunk
  int64_t chunks = 0;          // ceil(n / chunk), also the length of a_L
  std::vector<int64_t> band;   // band[l] = ceil(n / 2^l), l = 0..levels

  HaarPlan(int64_t tokens, int64_t requested_levels) : n(tokens) {
    band.push_back(n);
    // transforms.haar_band_lengths: a band shorter than 2 tokens stops the levels.
    while (levels < requested_levels && band.back() >= 2) {
      band.push_back((band.back() + 1) / 2);
      ++levels;
    }
    chunk = int64_t{1} << levels;
    chunks = band.back();
  }

  // Floats of scratch that haar_forward_chunk / haar_inverse_chunk need for w features: the low
  // bands of one chunk (forward: at most chunk and at most n + levels rows in all; inverse: two
  // halves of inverse_half() rows). Only when levels is near log2(n) does a chunk hold most of n.
  int64_t scratch_floats(int64_t w) const { return std::min(chunk, 2 * n + levels + 2) * w; }
  int64_t inverse_half() const { return std::min(chunk / 2, n); }
  // Tokens of chunk c.
  int64_t chunk_tokens(int64_t c) const { return std::min(chunk, n - c * chunk); }
};

// Forward Haar of chunk c. x: the n input tokens (row stride ld). Output goes through the sink:
//   float* sink.row(pos, slot): where coefficient `pos` (index in [a_L | d_L | ... | d_1]) is to
//       be written; slot 0 for detail rows, 1 for the a_L row (it can be pending together with
//       the last detail row, so a sink that hands out its own buffers needs two);
//   void sink.done(pos, row[, range]): called once that row holds its final value, with the
//       row's Range when Sink::kWantsRange.
template <class Sink>
void haar_forward_chunk(const HaarPlan& p, const float* x, int64_t ld, int64_t c, int64_t w, float* scratch,
                        Sink& sink) {
  int64_t m = p.chunk_tokens(c);            // tokens in the current band of this chunk
  const float* src = x + c * p.chunk * ld;  // the current band (input tokens, then low rows)
  int64_t stride = ld;
  float* free_rows = scratch;  // each level's low band goes to fresh scratch rows
  float* low = nullptr;
  Range low_range;
  bool have_low_range = false;
  for (int l = 1; l <= p.levels; ++l) {
    const int64_t pairs = m / 2;
    const int64_t detail = p.band[l] + c * (p.chunk >> l);  // position of this chunk's first d_l
    // m <= 2 at the last level: its one low row is a_L[c], written straight to its destination.
    const bool last = l == p.levels;
    low = last ? sink.row(c, 1) : free_rows;
    for (int64_t i = 0; i < pairs; ++i) {
      float* high = sink.row(detail + i, 0);
      const float* a = src + 2 * i * stride;
      if constexpr (Sink::kWantsRange) {
        Range high_range;
        butterfly_range(a, a + stride, low + i * w, high, w, last ? &low_range : nullptr, high_range);
        have_low_range = last;
        sink.done(detail + i, high, high_range);
      } else {
        butterfly(a, a + stride, low + i * w, high, w);
        sink.done(detail + i, high);
      }
    }
    if (m & 1) copy_row(src + (m - 1) * stride, low + pairs * w, w);  // odd token: carried
    m -= pairs;
    src = low;
    stride = w;
    free_rows += m * w;
  }
  if (p.levels == 0) {  // no level applies: the token is its own coefficient
    low = sink.row(c, 1);
    copy_row(src, low, w);
  }
  if constexpr (Sink::kWantsRange) {  // a_L[c]
    sink.done(c, low, have_low_range ? low_range : row_range(low, w));
  } else {
    sink.done(c, low);
  }
}

// Inverse Haar of chunk c: y holds the coefficients (row stride ld_in, layout as above); the
// chunk's input tokens are written to out (row stride ld_out). out must not overlap y.
inline void haar_inverse_chunk(const HaarPlan& p, const float* y, int64_t ld_in, float* out, int64_t ld_out, int64_t c,
                               int64_t w, float* scratch) {
  if (p.levels == 0) {
    copy_row(y + c * ld_in, out + c * ld_out, w);
    return;
  }
  int64_t size[64];  // size[l]: this chunk's low-band length after level l
  size[0] = p.chunk_tokens(c);
  for (int l = 1; l <= p.levels; ++l) size[l] = (size[l - 1] + 1) / 2;
  // Levels alternate between two scratch halves (a level's output is at most chunk / 2 and at
  // most n rows, except at level 1, which writes the output directly).
  float* half[2] = {scratch, scratch + p.inverse_half() * w};
  const float* low = y + c * ld_in;  // a_L[c]
  int64_t low_stride = ld_in;
  for (int l = p.levels; l >= 1; --l) {
    const int64_t m = size[l - 1], pairs = m / 2;
    const float* high = y + (p.band[l] + c * (p.chunk >> l)) * ld_in;
    float* dst = l == 1 ? out + c * p.chunk * ld_out : half[l & 1];
    const int64_t dst_stride = l == 1 ? ld_out : w;
    for (int64_t i = 0; i < pairs; ++i)
      butterfly(low + i * low_stride, high + i * ld_in, dst + 2 * i * dst_stride, dst + (2 * i + 1) * dst_stride, w);
    if (m & 1) copy_row(low + (size[l] - 1) * low_stride, dst + (m - 1) * dst_stride, w);  // carried token
    low = dst;
    low_stride = dst_stride;
  }
}

// Sink writing coefficients to rows of y (row stride ld): the plain transform.
struct RowSink {
  static constexpr bool kWantsRange = false;
  float* y;
  int64_t ld;
  float* row(int64_t pos, int /*slot*/) const { return y + pos * ld; }
  void done(int64_t /*pos*/, float* /*row*/) const {}
};

// Whole-sequence Haar (all chunks) on w features; out must not overlap x.
inline void haar_forward(const HaarPlan& p, const float* x, int64_t ld_in, float* out, int64_t ld_out, int64_t w,
                         float* scratch) {
  RowSink sink{out, ld_out};
  for (int64_t c = 0; c < p.chunks; ++c) haar_forward_chunk(p, x, ld_in, c, w, scratch, sink);
}

inline void haar_inverse(const HaarPlan& p, const float* y, int64_t ld_in, float* out, int64_t ld_out, int64_t w,
                         float* scratch) {
  for (int64_t c = 0; c < p.chunks; ++c) haar_inverse_chunk(p, y, ld_in, out, ld_out, c, w, scratch);
}

// --- haar2d, dct, wht: transforms of whole columns ------------------------------------------

// One direction (forward or inverse) of a transform of n tokens, planned once per n.
class ColumnTransform {
 public:
  virtual ~ColumnTransform() = default;
  // Floats of scratch apply() needs for w features.
  virtual int64_t scratch_floats(int64_t w) const = 0;
  // y = transform of the n tokens of x, features [0, w); rows ld floats apart; y must not overlap x.
  virtual void apply(const float* x, float* y, int64_t ld, int64_t w, float* scratch) const = 0;
};

// The plans (they throw std::invalid_argument for a token count haar2d cannot take).
std::shared_ptr<const ColumnTransform> make_column_transform(Kind kind, int64_t n, int64_t levels, int64_t grid_width,
                                                             bool inverse);

// transforms.grid_shape: (height, width) of the grid of n tokens; throws std::invalid_argument.
void grid_shape(int64_t n, int64_t grid_width, int64_t& height, int64_t& width);

// transforms.auto_levels: the fewest levels (at most kMaxLevels) after which the low band of n
// transformed tokens (haar2d: the LL band of their grid) holds at most max(low_band, 1) tokens.
constexpr int64_t kMaxLevels = 16;
int64_t auto_levels(Kind kind, int64_t n, int64_t grid_width, int64_t low_band);

}  // namespace stamp
