// haar2d, dct and wht as ColumnTransforms (see transforms.h), following stamp_onnx/transforms.py.
#include "transforms.h"

#include <numeric>
#include <stdexcept>

#include "gemm.h"

namespace stamp {
namespace {

// (a, b) = (a + b, a - b) over w features: one unnormalised Hadamard butterfly, in place.
inline void add_sub(float* __restrict a, float* __restrict b, int64_t w) {
  for (int64_t j = 0; j < w; ++j) {
    const float u = a[j], v = b[j];
    a[j] = u + v;
    b[j] = u - v;
  }
}

inline void scale_copy(const float* __restrict x, float* __restrict y, float k, int64_t w) {
  for (int64_t j = 0; j < w; ++j) y[j] = x[j] * k;
}

// --- DCT ----------------------------------------------------------------------------------

// Orthonormal DCT-II as a dense n x n matrix (transforms._dct_matrix: built in double, used in
// float32), applied by the blocked matrix product of gemm.cc.
class Dct final : public ColumnTransform {
 public:
  Dct(int64_t n, bool inverse) : n_(n) {
    std::vector<float> a(static_cast<size_t>(n * n));
    const double pi = std::acos(-1.0), inv_sqrt2 = 1.0 / std::sqrt(2.0), norm = std::sqrt(2.0 / n);
    for (int64_t k = 0; k < n; ++k) {
      for (int64_t t = 0; t < n; ++t) {
        // Same operation order as numpy: pi * (2t + 1) * k / (2n), cos, * sqrt(2 / n).
        double m = std::cos(pi * static_cast<double>(2 * t + 1) * static_cast<double>(k) / static_cast<double>(2 * n)) * norm;
        if (k == 0) m *= inv_sqrt2;
        // The inverse is the transpose.
        a[inverse ? t * n + k : k * n + t] = static_cast<float>(m);
      }
    }
    panels_ = pack_panels(a.data(), n);
  }

  int64_t scratch_floats(int64_t w) const override { return matmul_scratch_floats(w); }

  void apply(const float* x, float* y, int64_t ld, int64_t w, float* scratch) const override {
    matmul(panels_.data(), n_, x, y, ld, w, scratch);
  }

 private:
  int64_t n_;
  std::vector<float> panels_;  // the matrix (forward) or its transpose (inverse), packed
};

// --- WHT ----------------------------------------------------------------------------------

// transforms._wht_matrix: the n tokens split into blocks along the binary expansion of n
// (largest first); block p gets the orthonormal p x p Hadamard in sequency order; then all
// coefficients are merged by normalised sequency k / p (ties: larger block first).
// Here: the natural-order fast WHT of each block in place (O(p log p) butterflies), then a row
// permutation. The natural-order row of sequency k is bitreverse(gray(k)) (that is the order of
// transforms._sequency_hadamard's stable argsort of sign changes).
class Wht final : public ColumnTransform {
 public:
  Wht(int64_t n, bool inverse) : n_(n), inverse_(inverse), src_(n), scale_(n) {
    struct Key {
      int64_t k, size, block, start;
    };
    std::vector<Key> keys;
    int64_t start = 0, block = 0;
    for (int bit = 62; bit >= 0; --bit) {
      const int64_t size = int64_t{1} << bit;
      if (!(n & size)) continue;
      blocks_.push_back({start, size});
      for (int64_t k = 0; k < size; ++k) keys.push_back({k, size, block, start});
      start += size;
      ++block;
    }
    // k1 / size1 < k2 / size2 compared exactly (sizes are powers of two, products stay small).
    std::sort(keys.begin(), keys.end(), [](const Key& a, const Key& b) {
      const int64_t lhs = a.k * b.size, rhs = b.k * a.size;
      return lhs != rhs ? lhs < rhs : a.block < b.block;
    });
    for (int64_t r = 0; r < n; ++r) {
      const Key& key = keys[r];
      int bits = 0;
      while ((int64_t{1} << bits) < key.size) ++bits;
      const int64_t gray = key.k ^ (key.k >> 1);
      int64_t natural = 0;
      for (int b = 0; b < bits; ++b) natural |= ((gray >> b) & 1) << (bits - 1 - b);
      src_[r] = key.start + natural;
      // The reference matrix holds +-1/sqrt(p) (double, then float32): one scale per block.
      scale_[r] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(key.size)));
    }
  }

  int64_t scratch_floats(int64_t w) const override { return n_ * w; }

  void apply(const float* x, float* y, int64_t ld, int64_t w, float* z) const override {
    // Forward: z = x; blockwise natural WHT; y[r] = z[src[r]] / sqrt(p).
    // Inverse (M^T = blockdiag(H^T) P^T, the natural Hadamard is symmetric): z[src[r]] = x[r];
    // blockwise natural WHT; y[t] = z[t] / sqrt(p).
    for (int64_t r = 0; r < n_; ++r) copy_row(x + r * ld, z + (inverse_ ? src_[r] : r) * w, w);
    for (const auto& [start, size] : blocks_) {
      float* rows = z + start * w;
      for (int64_t h = 1; h < size; h *= 2)
        for (int64_t i = 0; i < size; i += 2 * h)
          for (int64_t t = i; t < i + h; ++t) add_sub(rows + t * w, rows + (t + h) * w, w);
    }
    if (inverse_) {
      // The block of natural row t: its scale is that of any r with src[r] in the block.
      for (const auto& [start, size] : blocks_) {
        const float k = static_cast<float>(1.0 / std::sqrt(static_cast<double>(size)));
        for (int64_t t = start; t < start + size; ++t) scale_copy(z + t * w, y + t * ld, k, w);
      }
    } else {
      for (int64_t r = 0; r < n_; ++r) scale_copy(z + src_[r] * w, y + r * ld, scale_[r], w);
    }
  }

 private:
  struct Block {
    int64_t start, size;
  };
  int64_t n_;
  bool inverse_;
  std::vector<Block> blocks_;
  std::vector<int64_t> src_;  // output row r = natural-order coefficient src_[r] of the blocks
  std::vector<float> scale_;  // 1/sqrt(block size) of output row r
};

// --- haar2d -------------------------------------------------------------------------------

// transforms.haar_bands: band of each of the n 1-D Haar coefficients, with the levels requested
// (a level that a short band skips still counts: ceil(n / 2^l) is 1 from then on).
std::vector<int64_t> haar_bands(int64_t n, int64_t levels) {
  std::vector<int64_t> band(n, 0);
  int64_t low = n;  // ceil(n / 2^l)
  for (int64_t l = 1; l <= levels; ++l) {
    low = (low + 1) / 2;
    if (low <= 1) {  // every remaining level adds one to each coefficient but the first
      for (int64_t i = 1; i < n; ++i) band[i] += levels - l + 1;
      break;
    }
    for (int64_t i = low; i < n; ++i) ++band[i];
  }
  return band;
}

// transforms._haar2d_forward / _haar2d_inverse on an H x W grid of tokens (row-major): 1-D Haar
// along each grid row (W tokens), then along each column (H tokens, W rows apart), then the
// coefficients reordered by transforms.grid_order. The inverse undoes the steps in reverse.
class Haar2d final : public ColumnTransform {
 public:
  Haar2d(int64_t n, int64_t levels, int64_t grid_width, bool inverse)
      : n_(n), inverse_(inverse), along_rows_(0, 0), along_cols_(0, 0) {
    grid_shape(n, grid_width, height_, width_);
    along_rows_ = HaarPlan(width_, levels);
    along_cols_ = HaarPlan(height_, levels);
    // grid_order: stable argsort of the group max(band(i), band(j)) of coefficient (i, j).
    const std::vector<int64_t> bi = haar_bands(height_, levels), bj = haar_bands(width_, levels);
    order_.resize(n);
    std::iota(order_.begin(), order_.end(), 0);
    auto group = [&](int64_t idx) { return std::max(bi[idx / width_], bj[idx % width_]); };
    std::stable_sort(order_.begin(), order_.end(), [&](int64_t a, int64_t b) { return group(a) < group(b); });
  }

  int64_t scratch_floats(int64_t w) const override {
    return (n_ + std::max(height_, width_)) * w + std::max(along_rows_.scratch_floats(w), along_cols_.scratch_floats(w));
  }

  void apply(const float* x, float* y, int64_t ld, int64_t w, float* scratch) const override {
    float* grid = scratch;                           // n tokens, row stride w
    float* line = grid + n_ * w;                     // one grid column, row stride w
    float* haar_scratch = line + std::max(height_, width_) * w;
    const int64_t col_stride = width_ * w;           // tokens of a grid column are W rows apart
    if (!inverse_) {
      for (int64_t i = 0; i < height_; ++i)
        haar_forward(along_rows_, x + i * width_ * ld, ld, grid + i * width_ * w, w, w, haar_scratch);
      for (int64_t j = 0; j < width_; ++j) {
        haar_forward(along_cols_, grid + j * w, col_stride, line, w, w, haar_scratch);
        for (int64_t i = 0; i < height_; ++i) copy_row(line + i * w, grid + j * w + i * col_stride, w);
      }
      for (int64_t r = 0; r < n_; ++r) copy_row(grid + order_[r] * w, y + r * ld, w);
    } else {
      for (int64_t r = 0; r < n_; ++r) copy_row(x + r * ld, grid + order_[r] * w, w);
      for (int64_t j = 0; j < width_; ++j) {
        haar_inverse(along_cols_, grid + j * w, col_stride, line, w, w, haar_scratch);
        for (int64_t i = 0; i < height_; ++i) copy_row(line + i * w, grid + j * w + i * col_stride, w);
      }
      for (int64_t i = 0; i < height_; ++i)
        haar_inverse(along_rows_, grid + i * width_ * w, w, y + i * width_ * ld, ld, w, haar_scratch);
    }
  }

 private:
  int64_t n_, height_ = 0, width_ = 0;
  bool inverse_;
  HaarPlan along_rows_, along_cols_;  // 1-D plans over W and over H tokens
  std::vector<int64_t> order_;        // output row r = grid coefficient order_[r]
};

int64_t isqrt(int64_t n) {
  auto r = static_cast<int64_t>(std::sqrt(static_cast<double>(n)));
  while (r > 0 && r > n / r) --r;               // r * r > n, without overflow
  while ((r + 1) <= n / (r + 1)) ++r;           // (r + 1)^2 <= n
  return r;
}

}  // namespace

void grid_shape(int64_t n, int64_t grid_width, int64_t& height, int64_t& width) {
  width = grid_width ? grid_width : std::max<int64_t>(isqrt(n), 1);
  if (n % width != 0 || (grid_width == 0 && width * width != n)) {
    const std::string what = grid_width ? "a grid of width " + std::to_string(grid_width) : "a square grid";
    throw std::invalid_argument("haar2d: " + std::to_string(n) + " tokens (after the prefix tokens) do not form " +
                                what +
                                "; set grid_width and prefix_tokens to the model's patch grid and its non-grid tokens");
  }
  height = n / width;
}

int64_t auto_levels(Kind kind, int64_t n, int64_t grid_width, int64_t low_band) {
  if ((kind != Kind::kHaar && kind != Kind::kHaar2d) || n < 1) return 0;
  int64_t height = 1, width = n;
  if (kind == Kind::kHaar2d) grid_shape(n, grid_width, height, width);
  const int64_t target = std::max<int64_t>(low_band, 1);
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  int64_t levels = 0;
  while (levels < kMaxLevels && ceil_div(height, int64_t{1} << levels) * ceil_div(width, int64_t{1} << levels) > target)
    ++levels;
  return levels;
}

std::shared_ptr<const ColumnTransform> make_column_transform(Kind kind, int64_t n, int64_t levels, int64_t grid_width,
                                                             bool inverse) {
  switch (kind) {
    case Kind::kDct:
      return std::make_shared<Dct>(n, inverse);
    case Kind::kWht:
      return std::make_shared<Wht>(n, inverse);
    case Kind::kHaar2d:
      return std::make_shared<Haar2d>(n, levels, grid_width, inverse);
    case Kind::kHaar:
      break;  // done in chunks by the kernels (HaarPlan), never as a ColumnTransform
  }
  throw std::logic_error("make_column_transform: no column plan for haar");
}

}  // namespace stamp
