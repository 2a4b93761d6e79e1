// ONNX Runtime custom-op kernels for the ai.stamp domain (version 1), CPU execution provider:
//
//   SequenceTransform(X) -> Y        transform / levels / inverse / prefix_tokens / grid_width / low_band
//                                    (levels -1: chosen per call from the token count, auto_levels)
//   TokenQDQ(X) -> Y                 hp_tokens / hp_bits / lp_bits (/ mid_tokens / mid_bits: middle tiers)
//   TransformQDQ(X) -> (Y, T?)       forward transform then TokenQDQ; T (optional) = the transform
//   FeatureRotation(X) -> Y          features: Y = X R along the last axis (rotation.h)
//   TokenQuantize(X) -> (C, S)       TokenQDQ's quantizer writing uint8 codes and per-token scales
//   TransformQuantize(X) -> (C, S)   the same after the forward transform (--target integer)
//
// X is float32 of rank >= 2: tokens on axis -2, features on axis -1, every leading axis batch
// (FeatureRotation: rank >= 1, every row of features on its own). Semantics: stamp_onnx/ops.py
// and its references transforms.forward / inverse, quant.token_qdq (TokenQDQ bit for bit) and
// weights.feature_rotation. Built against the C API of the headers (version 21)
// with the classic Ort::CustomOpBase, whose GetOutputCharacteristic makes T optional.
//
// Errors (bad attributes at session creation, bad input at run time) come back to ONNX Runtime
// as an OrtStatus, never as an exception crossing the C API.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "gemm.h"
#include "kernels.h"
#include "parallel.h"
#include "qdq.h"
#include "rotation.h"
#include "transforms.h"

namespace stamp {
namespace {

constexpr const char* kDomain = "ai.stamp";
// Most feature columns per unit of work of the column transforms (haar2d, dct, wht).
constexpr int64_t kColumnBlock = 256;
// Units of work a DCT is cut into, when its columns allow (see ColumnBlocks). More units share
// the work more evenly but re-read the matrix more (measured on 2 cores, 2047 tokens x 1024
// features: 4 or 8 units alike, 16 units of 64 columns 10-20% slower).
constexpr int64_t kDctUnits = 8;
// Largest odd factor m of FeatureRotation's features: its mixing matrix holds m^2 floats (1 GiB).
constexpr int64_t kMaxRotationOdd = 16 * 1024 - 1;

// An error in the node or its input: reported as ORT_INVALID_ARGUMENT.
[[noreturn]] void invalid(const std::string& op, const std::string& what) {
  throw Ort::Exception("ai.stamp." + op + ": " + what, ORT_INVALID_ARGUMENT);
}

// --- attributes ---------------------------------------------------------------------------

class Attributes {
 public:
  Attributes(const OrtKernelInfo* info, std::string op) : info_(info), op_(std::move(op)) {}

  const std::string& op() const { return op_; }

  // An int attribute; `fallback` when it is absent (required when there is no fallback).
  int64_t integer(const char* name, std::optional<int64_t> fallback = std::nullopt) const {
    int64_t value = 0;
    if (OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_int64(info_, name, &value)) {
      Ort::GetApi().ReleaseStatus(status);
      if (present(name)) invalid(op_, std::string("attribute ") + name + " must be an int");
      if (!fallback) invalid(op_, std::string("missing attribute ") + name);
      return *fallback;
    }
    return value;
  }

  std::string string(const char* name) const {
    size_t size = 0;
    if (OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_string(info_, name, nullptr, &size)) {
      Ort::GetApi().ReleaseStatus(status);
      if (present(name)) invalid(op_, std::string("attribute ") + name + " must be a string");
      invalid(op_, std::string("missing attribute ") + name);
    }
    std::string value(size, '\0');
    Ort::ThrowOnError(Ort::GetApi().KernelInfoGetAttribute_string(info_, name, value.data(), &size));
    value.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
    return value;
  }

  // An ints attribute; empty when it is absent.
  std::vector<int64_t> integers(const char* name) const {
    size_t size = 0;
    if (OrtStatus* status = Ort::GetApi().KernelInfoGetAttributeArray_int64(info_, name, nullptr, &size)) {
      Ort::GetApi().ReleaseStatus(status);
      if (present(name)) invalid(op_, std::string("attribute ") + name + " must be ints");
      return {};
    }
    std::vector<int64_t> values(size);
    if (size) Ort::ThrowOnError(Ort::GetApi().KernelInfoGetAttributeArray_int64(info_, name, values.data(), &size));
    return values;
  }

  int64_t at_least(const char* name, int64_t value, int64_t minimum) const {
    if (value < minimum) invalid(op_, std::string("attribute ") + name + " must be >= " + std::to_string(minimum) +
                                          ", got " + std::to_string(value));
    return value;
  }

 private:
  // Whether the node has the attribute with another type (the typed getters fail either way).
  bool present(const char* name) const {
    float f;
    int64_t i;
    size_t size = 0;
    for (OrtStatus* status : {Ort::GetApi().KernelInfoGetAttribute_float(info_, name, &f),
                              Ort::GetApi().KernelInfoGetAttribute_int64(info_, name, &i),
                              Ort::GetApi().KernelInfoGetAttribute_string(info_, name, nullptr, &size)}) {
      if (!status) return true;
      Ort::GetApi().ReleaseStatus(status);
    }
    return false;
  }

  const OrtKernelInfo* info_;
  std::string op_;
};

struct TransformAttrs {
  Kind kind = Kind::kHaar;
  int64_t levels = 0;    // kAutoLevels: auto_levels(n, low_band) for n tokens after the prefix
  int64_t low_band = 0;
  int64_t prefix = 0;
  int64_t grid_width = 0;
  bool inverse = false;

  int64_t levels_for(int64_t n) const {
    return levels == kAutoLevels ? auto_levels(kind, n, grid_width, low_band) : levels;
  }
  static constexpr int64_t kAutoLevels = -1;
};

TransformAttrs read_transform(const Attributes& a, bool has_inverse) {
  TransformAttrs t;
  const std::string name = a.string("transform");
  if (name == "haar") t.kind = Kind::kHaar;
  else if (name == "haar2d") t.kind = Kind::kHaar2d;
  else if (name == "dct") t.kind = Kind::kDct;
  else if (name == "wht") t.kind = Kind::kWht;
  else invalid(a.op(), "attribute transform must be one of haar, haar2d, dct, wht, got '" + name + "'");
  const bool haar = t.kind == Kind::kHaar || t.kind == Kind::kHaar2d;
  t.levels = a.at_least("levels", a.integer("levels", haar ? std::nullopt : std::optional<int64_t>(0)),
                        haar ? TransformAttrs::kAutoLevels : 0);
  if (t.levels == TransformAttrs::kAutoLevels) t.low_band = a.at_least("low_band", a.integer("low_band"), 0);
  t.prefix = a.at_least("prefix_tokens", a.integer("prefix_tokens", 0), 0);
  t.grid_width = a.at_least("grid_width", a.integer("grid_width", 0), 0);
  if (has_inverse) {
    const int64_t inverse = a.integer("inverse", 0);
    if (inverse != 0 && inverse != 1) invalid(a.op(), "attribute inverse must be 0 or 1, got " + std::to_string(inverse));
    t.inverse = inverse == 1;
  }
  return t;
}

int checked_bits(const Attributes& a, const char* name, int64_t value) {
  if (value < kMinBits || value > kMaxBits)
    invalid(a.op(), std::string("attribute ") + name + " must be in " + std::to_string(kMinBits) + ".." +
                        std::to_string(kMaxBits) + ", got " + std::to_string(value));
  return static_cast<int>(value);
}

TokenQdq read_qdq(const Attributes& a) {
  TokenQdq q;
  q.hp_tokens = a.at_least("hp_tokens", a.integer("hp_tokens"), 0);
  q.hp_bits = checked_bits(a, "hp_bits", a.integer("hp_bits"));
  q.lp_bits = checked_bits(a, "lp_bits", a.integer("lp_bits"));
  const std::vector<int64_t> counts = a.integers("mid_tokens"), bits = a.integers("mid_bits");
  if (counts.size() != bits.size())
    invalid(a.op(), "attributes mid_tokens and mid_bits must have one length, got " + std::to_string(counts.size()) +
                        " and " + std::to_string(bits.size()));
  int64_t end = q.hp_tokens;
  for (size_t i = 0; i < counts.size(); ++i) {
    end += a.at_least("mid_tokens", counts[i], 1);
    q.mid_ends.push_back(end);
    q.mid_bits.push_back(checked_bits(a, "mid_bits", bits[i]));
  }
  return q;
}

FeatureRotation read_rotation(const Attributes& a) {
  const int64_t d = a.at_least("features", a.integer("features"), 1);
  const int64_t odd = d / (d & -d);
  if (odd > kMaxRotationOdd)
    invalid(a.op(), "attribute features = " + std::to_string(d) + " has the odd factor " + std::to_string(odd) +
                        ", more than the " + std::to_string(kMaxRotationOdd) + " the kernel takes");
  return FeatureRotation(d);
}

// --- tensors ------------------------------------------------------------------------------

// X viewed as (batch, s, d).
struct Input {
  std::vector<int64_t> dims;
  int64_t batch = 1, s = 0, d = 0;
  const float* data = nullptr;

  int64_t elements() const { return batch * s * d; }
};

Input read_input(Ort::KernelContext& ctx, const std::string& op) {
  Ort::ConstValue x = ctx.GetInput(0);
  Input in;
  in.dims = x.GetTensorTypeAndShapeInfo().GetShape();
  const size_t rank = in.dims.size();
  if (rank < 2)
    invalid(op, "input X must have rank >= 2 (..., tokens, features), got rank " + std::to_string(rank));
  for (size_t i = 0; i + 2 < rank; ++i) in.batch *= in.dims[i];
  in.s = in.dims[rank - 2];
  in.d = in.dims[rank - 1];
  in.data = x.GetTensorData<float>();
  return in;
}

// --- plans --------------------------------------------------------------------------------

// Column-transform plans of one kernel, by token count. Compute may run concurrently (one
// session, several Run calls), hence the lock; plans are immutable once built.
class PlanCache {
 public:
  std::shared_ptr<const ColumnTransform> get(const TransformAttrs& t, int64_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [tokens, plan] : plans_)
      if (tokens == n) return plan;
    auto plan = make_column_transform(t.kind, n, t.levels_for(n), t.grid_width, t.inverse);
    if (plans_.size() >= kMaxPlans) plans_.erase(plans_.begin());  // oldest first
    plans_.emplace_back(n, plan);
    return plan;
  }

 private:
  static constexpr size_t kMaxPlans = 8;  // a DCT plan holds an n x n matrix
  std::mutex mutex_;
  std::vector<std::pair<int64_t, std::shared_ptr<const ColumnTransform>>> plans_;
};

// --- the shared passes ----------------------------------------------------------------------

// The blocks of feature columns of the column transforms: `count` per batch slice, starting on
// multiples of kMatmulStrip (whole strips of the DCT's matrix product), their widths within one
// strip of each other and at most kColumnBlock. A DCT costs n^2 per column: its columns are cut
// into more blocks, for kDctUnits units of work in all when there are enough columns, so that
// the threads get equal shares of it (576 features: 8 blocks of 64 or 80, not 256, 256, 64).
struct ColumnBlocks {
  int64_t d, strips, count;

  ColumnBlocks(Kind kind, int64_t batch, int64_t features)
      : d(features), strips((d + kMatmulStrip - 1) / kMatmulStrip) {
    count = (strips + kColumnBlock / kMatmulStrip - 1) / (kColumnBlock / kMatmulStrip);
    if (kind == Kind::kDct) count = std::max(count, std::min(strips, (kDctUnits + batch - 1) / batch));
  }

  int64_t begin(int64_t block) const { return std::min(d, strips * block / count * kMatmulStrip); }
  int64_t max_width() const { return std::min(d, (strips + count - 1) / count * kMatmulStrip); }
};

// Tokens [p, s) of every batch slice of x, transformed by the plan into out; tokens [0, p) copied.
// Units of work: (batch slice, block of feature columns).
void transform_columns(const Ort::KernelContext& ctx, const ColumnTransform& plan, const Input& in, int64_t p,
                       float* out, int64_t cost, const ColumnBlocks& blocks) {
  const int64_t slice = in.s * in.d;
  parallel_for(ctx, in.batch * blocks.count, in.elements() * cost, [&](int64_t begin, int64_t end) {
    float* scratch = thread_scratch(plan.scratch_floats(blocks.max_width()));
    for (int64_t u = begin; u < end; ++u) {
      const int64_t b = u % blocks.count, j0 = blocks.begin(b), w = blocks.begin(b + 1) - j0;
      const float* x = in.data + (u / blocks.count) * slice + j0;
      float* y = out + (u / blocks.count) * slice + j0;
      for (int64_t r = 0; r < p; ++r) copy_row(x + r * in.d, y + r * in.d, w);
      plan.apply(x + p * in.d, y + p * in.d, in.d, w, scratch);
    }
  });
}

// y = token_qdq(x) row by row (x may be y).
void quantize(const Ort::KernelContext& ctx, const TokenQdq& q, const float* x, float* y, int64_t s, int64_t d,
              int64_t rows) {
  parallel_for(ctx, rows, rows * d, [&](int64_t begin, int64_t end) { qdq_rows(q, x, y, s, d, begin, end); });
}

// The Haar passes: units of work = (batch slice, prefix token or chunk of 2^levels tokens).
template <class Fn>
void haar_parallel(const Ort::KernelContext& ctx, const HaarPass& pass, int64_t batch, Fn&& units) {
  parallel_for(ctx, batch * pass.units_per_slice(), batch * pass.s * pass.d, [&](int64_t begin, int64_t end) {
    units(begin, end, thread_scratch(pass.scratch_floats()));
  });
}

// Rough cost per element of a column transform, in element operations (for thread decisions).
int64_t column_cost(Kind kind, int64_t n) { return kind == Kind::kDct ? std::max<int64_t>(1, n / 4) : 8; }

// --- kernels ------------------------------------------------------------------------------

class SequenceTransformKernel {
 public:
  static constexpr const char* kName = "SequenceTransform";
  static constexpr size_t kOutputs = 1;

  explicit SequenceTransformKernel(const OrtKernelInfo* info) {
    Attributes a(info, kName);
    t_ = read_transform(a, /*has_inverse=*/true);
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const Input in = read_input(ctx, kName);
    float* y = ctx.GetOutput(0, in.dims).GetTensorMutableData<float>();
    if (in.elements() == 0) return;
    const int64_t p = std::min(t_.prefix, in.s), n = in.s - p;
    if (n == 0) {  // every token is a prefix token: identity
      std::memcpy(y, in.data, sizeof(float) * in.elements());
      return;
    }
    if (t_.kind != Kind::kHaar) {
      const auto plan = plans_.get(t_, n);
      transform_columns(ctx, *plan, in, p, y, column_cost(t_.kind, n), ColumnBlocks(t_.kind, in.batch, in.d));
      return;
    }
    // Haar: one chunked pass.
    const HaarPlan plan(n, t_.levels_for(n));
    const bool prefetch = in.elements() * static_cast<int64_t>(sizeof(float)) >= kPrefetchBytes;
    const HaarPass pass{&plan, in.data, y, nullptr, in.s, in.d, p, t_.inverse, prefetch};
    haar_parallel(ctx, pass, in.batch, [&](int64_t begin, int64_t end, float* scratch) {
      haar_units(pass, begin, end, scratch);
    });
  }

 private:
  TransformAttrs t_;
  PlanCache plans_;
};

class TokenQdqKernel {
 public:
  static constexpr const char* kName = "TokenQDQ";
  static constexpr size_t kOutputs = 1;

  explicit TokenQdqKernel(const OrtKernelInfo* info) {
    Attributes a(info, kName);
    q_ = read_qdq(a);
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const Input in = read_input(ctx, kName);
    float* y = ctx.GetOutput(0, in.dims).GetTensorMutableData<float>();
    if (in.elements() == 0) return;
    quantize(ctx, q_, in.data, y, in.s, in.d, in.batch * in.s);
  }

 private:
  TokenQdq q_;
};

class TransformQdqKernel {
 public:
  static constexpr const char* kName = "TransformQDQ";
  static constexpr size_t kOutputs = 2;  // Y, and the optional T

  explicit TransformQdqKernel(const OrtKernelInfo* info) {
    Attributes a(info, kName);
    t_ = read_transform(a, /*has_inverse=*/false);
    q_ = read_qdq(a);
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const Input in = read_input(ctx, kName);
    float* y = ctx.GetOutput(0, in.dims).GetTensorMutableData<float>();
    float* t = nullptr;  // a node may omit T, or name it ""
    if (ctx.GetOutputCount() > 1) {
      Ort::UnownedValue value = ctx.GetOutput(1, in.dims);
      if (value) t = value.GetTensorMutableData<float>();
    }
    if (in.elements() == 0) return;
    const int64_t p = std::min(t_.prefix, in.s), n = in.s - p;
    if (t_.kind != Kind::kHaar && n > 0) {
      // Transform into T (or straight into Y), then quantize the rows into Y (in place if so).
      float* out = t ? t : y;
      const auto plan = plans_.get(t_, n);
      transform_columns(ctx, *plan, in, p, out, column_cost(t_.kind, n), ColumnBlocks(t_.kind, in.batch, in.d));
      quantize(ctx, q_, out, y, in.s, in.d, in.batch * in.s);
      return;
    }
    // Haar (and any transform with no token after the prefix): the fused one-pass kernel.
    const HaarPlan plan(n, t_.kind == Kind::kHaar ? t_.levels_for(n) : 0);
    const bool prefetch = in.elements() * static_cast<int64_t>(sizeof(float)) >= kPrefetchBytes;
    const HaarPass pass{&plan, in.data, y, t, in.s, in.d, p, false, prefetch};
    haar_parallel(ctx, pass, in.batch, [&](int64_t begin, int64_t end, float* scratch) {
      haar_qdq_units(pass, q_, begin, end, scratch);
    });
  }

 private:
  TransformAttrs t_;
  TokenQdq q_;
  PlanCache plans_;
};

// TokenQuantize and TransformQuantize (--target integer): the quantizer's integer codes C (uint8,
// (..., s, d + zero_point_columns)) and per-token scales S ((..., s, 1)); TransformQuantize first
// applies the forward transform (Haar fused in one pass, the others into a scratch tensor).
TokenCodes read_codes(const Attributes& a) {
  TokenCodes codes;
  codes.q = read_qdq(a);
  std::vector<int> widths = codes.q.mid_bits;
  widths.push_back(codes.q.hp_bits);
  widths.push_back(codes.q.lp_bits);
  for (int bits : widths)
    if (bits > 8) invalid(a.op(), "integer codes take 2-8 bits, got " + std::to_string(bits));
  codes.columns = a.at_least("zero_point_columns", a.integer("zero_point_columns", 0), 0);
  return codes;
}

struct CodeOutputs {
  uint8_t* c;
  float* s;
};

CodeOutputs code_outputs(Ort::KernelContext& ctx, const Input& in, int64_t columns) {
  std::vector<int64_t> dims = in.dims;
  dims.back() = in.d + columns;
  uint8_t* c = ctx.GetOutput(0, dims).GetTensorMutableData<uint8_t>();
  dims.back() = 1;
  float* s = ctx.GetOutput(1, dims).GetTensorMutableData<float>();
  return {c, s};
}

void quantize_codes(const Ort::KernelContext& ctx, const TokenCodes& codes, const float* x, CodeOutputs out, int64_t s,
                    int64_t d, int64_t rows) {
  parallel_for(ctx, rows, rows * d, [&](int64_t begin, int64_t end) { codes_rows(codes, x, out.c, out.s, s, d, begin, end); });
}

class TokenQuantizeKernel {
 public:
  static constexpr const char* kName = "TokenQuantize";
  static constexpr size_t kOutputs = 2;
  static constexpr size_t kRequiredOutputs = 2;
  static ONNXTensorElementDataType OutputType(size_t index) {
    return index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }

  explicit TokenQuantizeKernel(const OrtKernelInfo* info) : codes_(read_codes(Attributes(info, kName))) {}

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const Input in = read_input(ctx, kName);
    const CodeOutputs out = code_outputs(ctx, in, codes_.columns);
    if (in.elements() == 0) return;
    quantize_codes(ctx, codes_, in.data, out, in.s, in.d, in.batch * in.s);
  }

 private:
  TokenCodes codes_;
};

class TransformQuantizeKernel {
 public:
  static constexpr const char* kName = "TransformQuantize";
  static constexpr size_t kOutputs = 2;
  static constexpr size_t kRequiredOutputs = 2;
  static ONNXTensorElementDataType OutputType(size_t index) { return TokenQuantizeKernel::OutputType(index); }

  explicit TransformQuantizeKernel(const OrtKernelInfo* info) {
    Attributes a(info, kName);
    t_ = read_transform(a, /*has_inverse=*/false);
    codes_ = read_codes(a);
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const Input in = read_input(ctx, kName);
    const CodeOutputs out = code_outputs(ctx, in, codes_.columns);
    if (in.elements() == 0) return;
    const int64_t p = std::min(t_.prefix, in.s), n = in.s - p;
    if (t_.kind != Kind::kHaar && n > 0) {  // transform into scratch, then write the codes
      std::vector<float> transformed(static_cast<size_t>(in.elements()));
      const auto plan = plans_.get(t_, n);
      transform_columns(ctx, *plan, in, p, transformed.data(), column_cost(t_.kind, n),
                        ColumnBlocks(t_.kind, in.batch, in.d));
      quantize_codes(ctx, codes_, transformed.data(), out, in.s, in.d, in.batch * in.s);
      return;
    }
    const HaarPlan plan(n, t_.kind == Kind::kHaar ? t_.levels_for(n) : 0);
    const bool prefetch = in.elements() * static_cast<int64_t>(sizeof(float)) >= kPrefetchBytes;
    const HaarPass pass{&plan, in.data, nullptr, nullptr, in.s, in.d, p, false, prefetch};
    haar_parallel(ctx, pass, in.batch, [&](int64_t begin, int64_t end, float* scratch) {
      haar_codes_units(pass, codes_, out.c, out.s, begin, end, scratch);
    });
  }

 private:
  TransformAttrs t_;
  TokenCodes codes_;
  PlanCache plans_;
};

// Rows of d features (every leading axis a row), each rotated on its own: units of work are rows.
class FeatureRotationKernel {
 public:
  static constexpr const char* kName = "FeatureRotation";
  static constexpr size_t kOutputs = 1;

  explicit FeatureRotationKernel(const OrtKernelInfo* info) : r_(read_rotation(Attributes(info, kName))) {}

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Ort::ConstValue input = ctx.GetInput(0);
    const std::vector<int64_t> dims = input.GetTensorTypeAndShapeInfo().GetShape();
    if (dims.empty()) invalid(kName, "input X must have rank >= 1 (..., features), got a scalar");
    if (dims.back() != r_.d)
      invalid(kName, "input X has " + std::to_string(dims.back()) + " features on its last axis, the node's "
                     "attribute features is " + std::to_string(r_.d));
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < dims.size(); ++i) rows *= dims[i];
    float* y = ctx.GetOutput(0, dims).GetTensorMutableData<float>();
    if (rows == 0) return;
    const float* x = input.GetTensorData<float>();
    parallel_for(ctx, rows, rows * r_.row_cost(), [&](int64_t begin, int64_t end) {
      rotate_rows(r_, x, y, begin, end);
    });
  }

 private:
  FeatureRotation r_;
};

// --- ONNX Runtime glue ----------------------------------------------------------------------

// An exception as a status. Our own Ort::Exceptions already name the op; others get its name.
OrtStatus* to_status(const std::exception& e, const char* op) {
  if (const auto* ort = dynamic_cast<const Ort::Exception*>(&e))
    return Ort::GetApi().CreateStatus(ort->GetOrtErrorCode(), ort->what());
  const std::string message = std::string("ai.stamp.") + op + ": " + e.what();
  const bool input_error = dynamic_cast<const std::invalid_argument*>(&e) != nullptr;
  return Ort::GetApi().CreateStatus(input_error ? ORT_INVALID_ARGUMENT : ORT_RUNTIME_EXCEPTION, message.c_str());
}

// The classic custom-op interface in its status-returning form (CreateKernelV2 / ComputeV2),
// so that no C++ exception crosses into ONNX Runtime.
template <class Kernel>
struct KernelHolder {
  Kernel kernel;
  explicit KernelHolder(const OrtKernelInfo* info) : kernel(info) {}
  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      kernel.Compute(context);
      return nullptr;
    } catch (const std::exception& e) {
      return to_status(e, Kernel::kName);
    }
  }
};

// Output types of a kernel: float, the first required and the others optional, unless the kernel
// declares OutputType(index) and kRequiredOutputs (the integer-code kernels).
template <class Kernel, class = void>
struct Outputs {
  static constexpr size_t kRequired = 1;
  static ONNXTensorElementDataType type(size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};
template <class Kernel>
struct Outputs<Kernel, std::void_t<decltype(Kernel::OutputType(0))>> {
  static constexpr size_t kRequired = Kernel::kRequiredOutputs;
  static ONNXTensorElementDataType type(size_t index) { return Kernel::OutputType(index); }
};

template <class Kernel>
struct Op : Ort::CustomOpBase<Op<Kernel>, KernelHolder<Kernel>, /*WithStatus=*/true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** op_kernel) const {
    try {
      *op_kernel = new KernelHolder<Kernel>(info);
      return nullptr;
    } catch (const std::exception& e) {
      return to_status(e, Kernel::kName);
    }
  }
  const char* GetName() const { return Kernel::kName; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return Kernel::kOutputs; }
  ONNXTensorElementDataType GetOutputType(size_t index) const { return Outputs<Kernel>::type(index); }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index < Outputs<Kernel>::kRequired ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

}  // namespace
}  // namespace stamp

// Entry point that SessionOptions.register_custom_ops_library looks up.
extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (!api) {  // CreateStatus is in every API version
    return api_base->GetApi(1)->CreateStatus(
        ORT_FAIL, ("stamp_onnx native ops need ONNX Runtime >= 1.21 (C API version " +
                   std::to_string(ORT_API_VERSION) + ")").c_str());
  }
  Ort::InitApi(api);
  static const stamp::Op<stamp::SequenceTransformKernel> sequence_transform;
  static const stamp::Op<stamp::TokenQdqKernel> token_qdq;
  static const stamp::Op<stamp::TransformQdqKernel> transform_qdq;
  static const stamp::Op<stamp::FeatureRotationKernel> feature_rotation;
  static const stamp::Op<stamp::TokenQuantizeKernel> token_quantize;
  static const stamp::Op<stamp::TransformQuantizeKernel> transform_quantize;
  // A domain must outlive every session that uses it: keep one per registration.
  static std::mutex mutex;
  static std::vector<Ort::CustomOpDomain> domains;
  try {
    Ort::CustomOpDomain domain(stamp::kDomain);
    domain.Add(&sequence_transform);
    domain.Add(&token_qdq);
    domain.Add(&transform_qdq);
    domain.Add(&feature_rotation);
    domain.Add(&token_quantize);
    domain.Add(&transform_quantize);
    Ort::UnownedSessionOptions(options).Add(domain);
    std::lock_guard<std::mutex> lock(mutex);
    domains.push_back(std::move(domain));
    return nullptr;
  } catch (const std::exception& e) {
    return stamp::to_status(e, "RegisterCustomOps");
  }
}
