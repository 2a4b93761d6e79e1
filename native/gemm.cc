// y = A x as a cache- and register-blocked product (the scheme of Goto's GEMM):
//
//   for each block of kKc rows of x (k):   pack it into strips of kNr columns (scratch, in L2)
//     for each block of kMc rows of A:      A's panels for these k (in L2)
//       for each strip:                     kKc x kNr floats (in L1)
//         for each panel of kMr rows:       the register tile below: kMr x kNr outputs
//
// The tile keeps its kMr x kNr sums in 12 vector registers, streaming a broadcast of A and
// two vectors of the strip per k. The first k block stores the tile, later ones add to it.
// It is compiled twice: with AVX2 + FMA (vectors of 8 floats: 6 x 16 tiles) and for the
// baseline ISA (vectors of 4 floats: 6 x 8 tiles); matmul() picks one by the CPU. (Not with
// target_clones as in kernels.cc: the two copies differ in their vector type, not only ISA.)
#include "gemm.h"

#include <algorithm>
#include <cstring>

// Unlike the QDQ code (kernels.cc: -ffp-contract=off keeps it bit-exact with numpy), this file
// lets a * b + c contract to an FMA: the DCT only has to match the reference within float
// rounding, and TransformQDQ quantizes the values computed here, whatever they are.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define STAMP_GEMM_AVX2 1
#endif

namespace stamp {
namespace {

constexpr int64_t kMr = 6;    // tile rows (A panel height)
constexpr int64_t kKc = 256;  // k per block: a strip is at most kKc x 16 floats = 16 KB
constexpr int64_t kMc = 120;  // A rows per block: kMc x kKc floats = 120 KB (a multiple of kMr)

// The product for vectors of kLanes floats: tiles of kMr x kNr, kNr = 2 kLanes.
template <int kLanes>
struct Product {
  static constexpr int64_t kNr = 2 * kLanes;
  static_assert(kMatmulStrip % kNr == 0, "blocks of kMatmulStrip columns must be whole strips");

  typedef float Vec __attribute__((vector_size(4 * kLanes)));
  typedef float UnalignedVec __attribute__((vector_size(4 * kLanes), aligned(4), may_alias));
  // The kLanes floats at p, at any alignment.
  static UnalignedVec& vec(float* p) { return *reinterpret_cast<UnalignedVec*>(p); }
  static const UnalignedVec& vec(const float* p) { return *reinterpret_cast<const UnalignedVec*>(p); }

  // Rows [0, kc) of x, features [0, w), as strips of kNr features: strip j holds x[k][j kNr + c]
  // at b[(j kc + k) kNr + c], zero past w.
  static void pack_strips(const float* x, int64_t ld, int64_t kc, int64_t w, float* b) {
    for (int64_t j0 = 0; j0 < w; j0 += kNr, b += kc * kNr) {
      const int64_t cols = std::min(kNr, w - j0);
      for (int64_t k = 0; k < kc; ++k) {
        float* dst = b + k * kNr;
        std::memcpy(dst, x + k * ld + j0, sizeof(float) * cols);
        std::fill(dst + cols, dst + kNr, 0.0f);
      }
    }
  }

  // c (rows x cols of a kMr x kNr tile, rows ldc apart) = or += the product of an A panel
  // (kc x kMr, k-major) and a strip (kc x kNr, k-major).
  static void tile(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int64_t rows, int64_t cols,
                   bool add) {
    Vec sum[kMr][2] = {};
    for (int64_t k = 0; k < kc; ++k, a += kMr, b += kNr) {
      // The panel's pass over the first strip brings it in from L3: ask for it 32 k ahead.
      __builtin_prefetch(a + 32 * kMr);
      const Vec b0 = vec(b), b1 = vec(b + kLanes);
#pragma GCC unroll 8
      for (int64_t r = 0; r < kMr; ++r) {
        sum[r][0] += a[r] * b0;
        sum[r][1] += a[r] * b1;
      }
    }
    if (rows == kMr && cols == kNr) {
#pragma GCC unroll 8
      for (int64_t r = 0; r < kMr; ++r, c += ldc) {
        vec(c) = add ? vec(c) + sum[r][0] : sum[r][0];
        vec(c + kLanes) = add ? vec(c + kLanes) + sum[r][1] : sum[r][1];
      }
      return;
    }
    float edge[kMr][kNr];  // a tile at the bottom or right edge: only its part inside c
    for (int64_t r = 0; r < kMr; ++r) {
      vec(edge[r]) = sum[r][0];
      vec(edge[r] + kLanes) = sum[r][1];
    }
    for (int64_t r = 0; r < rows; ++r, c += ldc)
      for (int64_t j = 0; j < cols; ++j) c[j] = add ? c[j] + edge[r][j] : edge[r][j];
  }

  static void run(const float* panels, int64_t n, const float* x, float* y, int64_t ld, int64_t w, float* scratch) {
    for (int64_t k0 = 0; k0 < n; k0 += kKc) {
      const int64_t kc = std::min(kKc, n - k0);
      pack_strips(x + k0 * ld, ld, kc, w, scratch);
      for (int64_t i0 = 0; i0 < n; i0 += kMc) {
        const int64_t i1 = std::min(i0 + kMc, n);
        for (int64_t j0 = 0; j0 < w; j0 += kNr) {
          const float* strip = scratch + j0 * kc;  // strip j0 / kNr
          for (int64_t i = i0; i < i1; i += kMr)
            tile(kc, panels + i * n + k0 * kMr, strip, y + i * ld + j0, ld, std::min(kMr, n - i),
                 std::min(kNr, w - j0), k0 > 0);
        }
      }
    }
  }
};

#ifdef STAMP_GEMM_AVX2
// flatten: everything inlined here, so compiled for AVX2 + FMA.
__attribute__((target("avx2,fma"), flatten)) void run_avx2(const float* panels, int64_t n, const float* x, float* y,
                                                            int64_t ld, int64_t w, float* scratch) {
  Product<8>::run(panels, n, x, y, ld, w, scratch);
}
#endif

}  // namespace

std::vector<float> pack_panels(const float* a, int64_t n) {
  // Panel p: rows [p kMr, p kMr + kMr) (zero past n), element (r, k) at (p n + k) kMr + r.
  const int64_t panels = (n + kMr - 1) / kMr;
  std::vector<float> packed(static_cast<size_t>(panels * kMr * n), 0.0f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < n; ++k) packed[((i / kMr) * n + k) * kMr + i % kMr] = a[i * n + k];
  return packed;
}

int64_t matmul_scratch_floats(int64_t w) {
  const int64_t strip = kMatmulStrip;  // the widest strips
  return kKc * ((w + strip - 1) / strip) * strip;
}

void matmul(const float* panels, int64_t n, const float* x, float* y, int64_t ld, int64_t w, float* scratch) {
#ifdef STAMP_GEMM_AVX2
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return run_avx2(panels, n, x, y, ld, w, scratch);
#endif
  Product<4>::run(panels, n, x, y, ld, w, scratch);
}

}  // namespace stamp
