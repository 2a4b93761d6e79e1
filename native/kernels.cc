// The hot loops (see kernels.h), each compiled for AVX2 and for the baseline x86-64 ISA.
#include "kernels.h"

// target_clones builds one copy per ISA and an ifunc resolver that picks one at load time;
// flatten inlines every helper into each copy so that the helpers' loops get that ISA too.
// "avx2" enables no FMA (and -ffp-contract=off forbids contraction anyway): the arithmetic
// is the same IEEE float32 operations in every copy, only the vector width differs.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define STAMP_MULTIVERSION __attribute__((target_clones("avx2", "default"), flatten))
#else
#define STAMP_MULTIVERSION
#endif

namespace stamp {
namespace {

// Sink of the fused Haar pass (haar_forward_chunk): each finished coefficient row, with the
// range the butterfly computed on the way, is quantized straight into Y. The row is computed
// in T when T is wanted, else in one of two row buffers (in cache).
struct QdqSink {
  static constexpr bool kWantsRange = true;
  const TokenQdq& q;
  float* y;          // Y rows of the transformed tokens (after the prefix)
  float* t;          // T rows likewise, or null
  float* buffer[2];  // used when t is null
  int64_t d, prefix;

  float* row(int64_t pos, int slot) const { return t ? t + pos * d : buffer[slot]; }
  void done(int64_t pos, float* row, const Range& range) const { q.row(prefix + pos, row, y + pos * d, d, range); }
};

// Sink of the fused Haar pass for the integer codes: each finished coefficient row (in one of two
// row buffers) is written as codes and a scale.
struct CodesSink {
  static constexpr bool kWantsRange = true;
  const TokenCodes& codes;
  uint8_t* c;        // code rows of the transformed tokens (after the prefix), d + columns each
  float* s;          // their scales
  float* buffer[2];
  int64_t d, prefix;

  float* row(int64_t /*pos*/, int slot) const { return buffer[slot]; }
  void done(int64_t pos, float* row, const Range& range) const {
    codes.row(prefix + pos, row, c + pos * (d + codes.columns), s + pos, d, range);
  }
};

// Asks for the input rows of chunk c (of the tokens after the prefix, at x) to be loaded.
inline void prefetch_chunk(const HaarPlan& plan, const float* x, int64_t c, int64_t d) {
  if (c >= plan.chunks) return;
  const char* first = reinterpret_cast<const char*>(x + c * plan.chunk * d);
  const int64_t bytes = plan.chunk_tokens(c) * d * static_cast<int64_t>(sizeof(float));
  for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(first + offset);
}

}  // namespace

STAMP_MULTIVERSION
void haar_units(const HaarPass& pass, int64_t begin, int64_t end, float* scratch) {
  const int64_t per_slice = pass.units_per_slice(), d = pass.d, p = pass.prefix;
  for (int64_t u = begin; u < end; ++u) {
    const int64_t k = u % per_slice, offset = (u / per_slice) * pass.s * d;
    const float* x = pass.x + offset;
    float* y = pass.y + offset;
    if (k < p) {
      copy_row(x + k * d, y + k * d, d);
    } else if (pass.inverse) {
      haar_inverse_chunk(*pass.plan, x + p * d, d, y + p * d, d, k - p, d, scratch);
    } else {
      if (pass.prefetch) prefetch_chunk(*pass.plan, x + p * d, k - p + 1, d);
      RowSink sink{y + p * d, d};
      haar_forward_chunk(*pass.plan, x + p * d, d, k - p, d, scratch, sink);
    }
  }
}

STAMP_MULTIVERSION
void haar_qdq_units(const HaarPass& pass, const TokenQdq& q, int64_t begin, int64_t end, float* scratch) {
  const int64_t per_slice = pass.units_per_slice(), d = pass.d, p = pass.prefix;
  float* buffers = scratch + pass.plan->scratch_floats(d);
  for (int64_t u = begin; u < end; ++u) {
    const int64_t k = u % per_slice, offset = (u / per_slice) * pass.s * d;
    const float* x = pass.x + offset;
    float* y = pass.y + offset;
    float* t = pass.t ? pass.t + offset : nullptr;
    if (k < p) {  // a prefix token: quantized as it is
      if (t) copy_row(x + k * d, t + k * d, d);
      q.row(k, x + k * d, y + k * d, d);
      continue;
    }
    if (pass.prefetch) prefetch_chunk(*pass.plan, x + p * d, k - p + 1, d);
    QdqSink sink{q, y + p * d, t ? t + p * d : nullptr, {buffers, buffers + d}, d, p};
    haar_forward_chunk(*pass.plan, x + p * d, d, k - p, d, scratch, sink);
  }
}

STAMP_MULTIVERSION
void haar_codes_units(const HaarPass& pass, const TokenCodes& codes, uint8_t* c, float* s, int64_t begin, int64_t end,
                      float* scratch) {
  const int64_t per_slice = pass.units_per_slice(), d = pass.d, p = pass.prefix, width = d + codes.columns;
  float* buffers = scratch + pass.plan->scratch_floats(d);
  for (int64_t u = begin; u < end; ++u) {
    const int64_t k = u % per_slice, slice = u / per_slice;
    const float* x = pass.x + slice * pass.s * d;
    uint8_t* cs = c + slice * pass.s * width;
    float* ss = s + slice * pass.s;
    if (k < p) {  // a prefix token: quantized as it is
      codes.row(k, x + k * d, cs + k * width, ss + k, d);
      continue;
    }
    if (pass.prefetch) prefetch_chunk(*pass.plan, x + p * d, k - p + 1, d);
    CodesSink sink{codes, cs + p * width, ss + p, {buffers, buffers + d}, d, p};
    haar_forward_chunk(*pass.plan, x + p * d, d, k - p, d, scratch, sink);
  }
}

STAMP_MULTIVERSION
void codes_rows(const TokenCodes& codes, const float* x, uint8_t* c, float* scales, int64_t s, int64_t d, int64_t begin,
                int64_t end) {
  const int64_t width = d + codes.columns;
  for (int64_t r = begin; r < end; ++r) codes.row(r % s, x + r * d, c + r * width, scales + r, d);
}

STAMP_MULTIVERSION
void qdq_rows(const TokenQdq& q, const float* x, float* y, int64_t s, int64_t d, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) q.row(r % s, x + r * d, y + r * d, d);
}

STAMP_MULTIVERSION
void rotate_rows(const FeatureRotation& r, const float* x, float* y, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) rotate_row(r, x + i * r.d, y + i * r.d);
}

}  // namespace stamp
