// The DCT's matrix product (gemm.cc): y = A x for a fixed n x n float32 matrix A, applied to
// n rows of w features (a block of feature columns, as in transforms.h).
#pragma once

#include <cstdint>
#include <vector>

namespace stamp {

// Width of the column strips the product works on: blocks of features that are a multiple of
// it waste no part of a tile.
constexpr int64_t kMatmulStrip = 16;

// A (row-major n x n) in the layout matmul() reads: panels of consecutive rows, k-major.
std::vector<float> pack_panels(const float* a, int64_t n);

// Floats of scratch that matmul() needs for w features.
int64_t matmul_scratch_floats(int64_t w);

// y = A x; panels from pack_panels; rows of x and y ld floats apart; y must not overlap x.
// Float32 with FMA where the CPU has it: within float rounding of the exact product, but not
// bit-exact with numpy (which nothing downstream needs: TransformQDQ quantizes these values).
void matmul(const float* panels, int64_t n, const float* x, float* y, int64_t ld, int64_t w, float* scratch);

}  // namespace stamp
