// FeatureRotation: y = x R along the features, R = C_m (x) H_p as stamp_onnx/weights.py's
// feature_rotation(d) builds it (d = p m, p the largest power of two dividing d, m odd).
//
// A row x of d features is viewed as m blocks of p (feature f = a p + b) and
// y = C X H, computed as (C X) H: the m x m DCT-II mixing the blocks, m^2 p multiply-adds, then
// the natural-order (Sylvester) fast Walsh-Hadamard transform of every block in place, p log2(p)
// additions each, instead of the d^2 multiply-adds of the dense product (576 = 9 x 64: 9
// multiply-adds and 6 additions per feature instead of 576 multiply-adds). The 1/sqrt(p) of the
// orthonormal H is folded into the mixing matrix (M = C / sqrt(p), rounded once from double;
// just the scale 1/sqrt(p) when m = 1), so the butterflies are plain additions. Float32 without
// FMA: within float rounding of x R, not bit-exact with the function body (MLAS MatMuls).
#pragma once

#include <cstdint>
#include <vector>

namespace stamp {

struct FeatureRotation {
  int64_t d = 0, p = 0, m = 0;
  std::vector<float> mix;  // M = C / sqrt(p), m x m row-major; [1 / sqrt(p)] when m = 1

  explicit FeatureRotation(int64_t features);

  // Per-row operations, for the kernels' cost estimates (parallel_for only compares them).
  int64_t row_cost() const;
};

// --- the row -----------------------------------------------------------------------------
//
// Per row: for each output block k and each chunk of 64 columns (all p when p < 64), the sums
// of M[k, a] x_a are accumulated in (up to) eight vectors of 8 features, the Hadamard stages
// that stay within the chunk (h = 1 .. 32) are done on those registers, and the chunk is stored;
// the stages h = 64 .. p / 2 (p > 64) follow in place on the stored row, three at a time (each
// a pass over the block). 576 = 9 x 64 and 1536 = 3 x 512 take one and two passes.
// p < 8 (d = 7, 12, ...): plain scalar loops. Every butterfly is (u + v, u - v) in float32, as
// the plain stage-by-stage transform computes it.

// 8 floats: one AVX2 register, or a pair of SSE ones in the baseline copy of kernels.cc. Only
// ever a local or a reference (never passed by value: its ABI differs between the two copies).
typedef float V8 __attribute__((vector_size(32)));
typedef float UnalignedV8 __attribute__((vector_size(32), aligned(4), may_alias));

// The 8 floats at p, at any alignment (as gemm.cc reads its strips).
inline const UnalignedV8& load8(const float* p) { return *reinterpret_cast<const UnalignedV8*>(p); }
inline UnalignedV8& at8(float* p) { return *reinterpret_cast<UnalignedV8*>(p); }

// Stages h = 1, 2, 4 within v: stage h is v[j] = v[j ^ h] + sign * v[j] (sign -1 where bit h of
// j is set), the same additions as the butterfly (a product with -1 is exact, u - v is u + (-v)).
inline void hadamard_in_vector(V8& v) {
  const V8 odd = {1, -1, 1, -1, 1, -1, 1, -1}, pairs = {1, 1, -1, -1, 1, 1, -1, -1};
  const V8 halves = {1, 1, 1, 1, -1, -1, -1, -1};
  v = __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6) + v * odd;
  v = __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5) + v * pairs;
  v = __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3) + v * halves;
}

// The stages between n vectors of consecutive features (h = 8, 16, ..., 4 n): butterflies of
// whole vectors.
template <int n>
inline void hadamard_across(V8* v) {
  for (int s = 1; s < n; s *= 2)
    for (int q = 0; q < n; ++q)
      if (!(q & s)) {
        const V8 a = v[q], b = v[q + s];
        v[q] = a + b;
        v[q + s] = a - b;
      }
}

// Output block k, columns [j0, j0 + 8 n), of a row: M X on registers, then its stages h < 8 n.
template <int n>
inline void mix_and_transform(const FeatureRotation& r, const float* __restrict x, float* __restrict y, int64_t k,
                              int64_t j0) {
  const int64_t p = r.p, m = r.m;
  const float* c = r.mix.data() + k * m;
  V8 sum[n];
  for (int v = 0; v < n; ++v) sum[v] = c[0] * load8(x + j0 + 8 * v);
  for (int64_t a = 1; a < m; ++a) {
    const float* row = x + a * p + j0;
    for (int v = 0; v < n; ++v) sum[v] += c[a] * load8(row + 8 * v);
  }
  for (int v = 0; v < n; ++v) hadamard_in_vector(sum[v]);
  hadamard_across<n>(sum);
  for (int v = 0; v < n; ++v) at8(y + k * p + j0 + 8 * v) = sum[v];
}

// kStages stages at once (h, 2h, 4h for 3), in place on z (p features, h a multiple of 8): the
// butterflies of 2^kStages vectors h apart, loaded once.
template <int kStages>
inline void hadamard_stages(float* z, int64_t p, int64_t h) {
  constexpr int n = 1 << kStages;
  for (int64_t i = 0; i < p; i += n * h) {
    for (int64_t t = i; t < i + h; t += 8) {
      V8 v[n];
      for (int q = 0; q < n; ++q) v[q] = load8(z + t + q * h);
      hadamard_across<n>(v);
      for (int q = 0; q < n; ++q) at8(z + t + q * h) = v[q];
    }
  }
}

// p < 8: y = M X, then the stages of every block, on scalars.
inline void rotate_row_scalar(const FeatureRotation& r, const float* __restrict x, float* __restrict y) {
  const int64_t p = r.p, m = r.m;
  for (int64_t k = 0; k < m; ++k) {
    const float* c = r.mix.data() + k * m;
    float* out = y + k * p;
    for (int64_t j = 0; j < p; ++j) out[j] = c[0] * x[j];
    for (int64_t a = 1; a < m; ++a)
      for (int64_t j = 0; j < p; ++j) out[j] += c[a] * x[a * p + j];
    for (int64_t h = 1; h < p; h *= 2)
      for (int64_t i = 0; i < p; i += 2 * h)
        for (int64_t j = i; j < i + h; ++j) {
          const float u = out[j], v = out[j + h];
          out[j] = u + v;
          out[j + h] = u - v;
        }
  }
}

// y = x R for one row (y must not overlap x).
inline void rotate_row(const FeatureRotation& r, const float* __restrict x, float* __restrict y) {
  const int64_t p = r.p, m = r.m;
  if (p < 8) {
    rotate_row_scalar(r, x, y);
    return;
  }
  for (int64_t k = 0; k < m; ++k) {
    switch (p) {
      case 8: mix_and_transform<1>(r, x, y, k, 0); break;
      case 16: mix_and_transform<2>(r, x, y, k, 0); break;
      case 32: mix_and_transform<4>(r, x, y, k, 0); break;
      default:
        for (int64_t j0 = 0; j0 < p; j0 += 64) mix_and_transform<8>(r, x, y, k, j0);
    }
  }
  if (p <= 64) return;
  for (int64_t k = 0; k < m; ++k) {
    float* block = y + k * p;
    int64_t h = 64;
    for (; 8 * h <= p; h *= 8) hadamard_stages<3>(block, p, h);
    if (4 * h <= p) hadamard_stages<2>(block, p, h);
    else if (2 * h <= p) hadamard_stages<1>(block, p, h);
  }
}

}  // namespace stamp
