// The hot loops of the kernels, over a range of work units (parallel_for hands out the ranges).
// kernels.cc compiles each of them twice, for AVX2 and for the baseline ISA, and picks one when
// the library loads (GCC target_clones): the loops are plain C++ that the compiler vectorizes.
#pragma once

#include <cstdint>

#include "qdq.h"
#include "rotation.h"
#include "transforms.h"

namespace stamp {

// Tensors are (batch, s, d) float32, rows of d features; the first `prefix` tokens of every
// batch slice are not transformed. Haar work units: per batch slice, first one unit per prefix
// token, then one per chunk of the plan (units_per_slice = prefix + plan.chunks).
struct HaarPass {
  const HaarPlan* plan;
  const float* x;
  float* y;
  float* t;  // TransformQDQ: the transformed tokens (optional output), or null
  int64_t s, d, prefix;
  bool inverse;   // SequenceTransform only
  bool prefetch;  // prefetch each next chunk's input rows (for tensors larger than the caches)

  int64_t units_per_slice() const { return prefix + plan->chunks; }
  // Floats of per-thread scratch that the passes below need.
  int64_t scratch_floats() const { return plan->scratch_floats(d) + 2 * d; }
};

// SequenceTransform haar, forward or inverse: units [begin, end).
void haar_units(const HaarPass& pass, int64_t begin, int64_t end, float* scratch);

// TransformQDQ haar: Y = token_qdq(forward(X)) (and T = forward(X) when pass.t is set) in one
// pass: each chunk is transformed in scratch and its coefficient rows quantized into Y at once.
void haar_qdq_units(const HaarPass& pass, const TokenQdq& q, int64_t begin, int64_t end, float* scratch);

// TransformQuantize haar: the integer codes of forward(X) and the per-token scales, in one pass
// as haar_qdq_units (pass.y and pass.t unused): c rows of pass.d + codes.columns, one scale each.
void haar_codes_units(const HaarPass& pass, const TokenCodes& codes, uint8_t* c, float* s, int64_t begin, int64_t end,
                      float* scratch);

// The integer codes of the rows [begin, end) of a (batch * s, d) tensor.
void codes_rows(const TokenCodes& codes, const float* x, uint8_t* c, float* scales, int64_t s, int64_t d, int64_t begin,
                int64_t end);

// Tensors from this size on get software prefetching in the Haar passes: beyond the caches the
// hardware prefetchers lag behind the chunked access (measured: 15-20% faster at 8 MiB), within
// them the prefetch instructions only cost time (7% slower at 1 MiB).
constexpr int64_t kPrefetchBytes = int64_t{4} << 20;

// y = token_qdq(x) for the rows [begin, end) of a (batch * s, d) tensor; y may be x.
void qdq_rows(const TokenQdq& q, const float* x, float* y, int64_t s, int64_t d, int64_t begin, int64_t end);

// FeatureRotation: y = x R for the rows [begin, end) of a (rows, r.d) tensor (y must not overlap x).
void rotate_rows(const FeatureRotation& r, const float* x, float* y, int64_t begin, int64_t end);

}  // namespace stamp
