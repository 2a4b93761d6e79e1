// The FeatureRotation plan (see rotation.h): the block sizes and the mixing matrix.
#include "rotation.h"

#include <cmath>

namespace stamp {

FeatureRotation::FeatureRotation(int64_t features) : d(features), p(features & -features), m(features / p) {
  // M = C / sqrt(p), C the orthonormal DCT-II of size m as rows (transforms._dct_matrix, as the
  // Dct plan of transforms.cc builds it), [[1]] when m = 1; in double, rounded to float once.
  const double pi = std::acos(-1.0), inv_sqrt2 = 1.0 / std::sqrt(2.0), norm = std::sqrt(2.0 / m);
  const double inv_sqrt_p = 1.0 / std::sqrt(static_cast<double>(p));
  mix.resize(static_cast<size_t>(m * m));
  for (int64_t k = 0; k < m; ++k) {
    for (int64_t t = 0; t < m; ++t) {
      double c = 1.0;
      if (m > 1) {
        c = std::cos(pi * static_cast<double>(2 * t + 1) * static_cast<double>(k) / static_cast<double>(2 * m)) * norm;
        if (k == 0) c *= inv_sqrt2;
      }
      mix[k * m + t] = static_cast<float>(c * inv_sqrt_p);
    }
  }
}

int64_t FeatureRotation::row_cost() const {
  int64_t stages = 0;
  while ((int64_t{1} << stages) < p) ++stages;
  return d * (stages + 2 * m);
}

}  // namespace stamp
