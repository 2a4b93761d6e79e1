// Splitting a kernel's work across onnxruntime's own intra-op threads.
//
// The work goes to the session's thread pool through KernelContext_ParallelFor, so the kernels
// follow SessionOptions.intra_op_num_threads and never compete with onnxruntime's threads for
// the cores (a private pool did, and cost several percent of a whole model's latency).
#pragma once

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <vector>

namespace stamp {

// Below this many float elements of work, sharing out the work costs more than it saves: the
// kernel runs on the calling thread.
constexpr int64_t kMinParallelWork = 64 * 1024;
// Ranges handed to the pool: a few per core, so that a late or slowed thread costs less.
constexpr int64_t kMaxRanges = 16;

template <class Fn>
struct RangeJob {
  Fn* fn;
  int64_t units, ranges;
  std::vector<std::exception_ptr> errors;

  static void run(void* self, size_t i) {
    auto* job = static_cast<RangeJob*>(self);
    const int64_t r = static_cast<int64_t>(i);
    try {
      (*job->fn)(job->units * r / job->ranges, job->units * (r + 1) / job->ranges);
    } catch (...) {
      job->errors[i] = std::current_exception();
    }
  }
};

// Calls fn(begin, end) on contiguous ranges that cover [0, units) exactly once, on the session's
// intra-op threads. `work` is the total cost in element operations (it only decides whether
// sharing pays off). An exception thrown by a range is rethrown here once all have finished.
template <class Fn>
void parallel_for(const Ort::KernelContext& ctx, int64_t units, int64_t work, Fn&& fn) {
  if (units <= 0) return;
  if (units == 1 || work < kMinParallelWork) {
    fn(int64_t{0}, units);
    return;
  }
  using F = std::remove_reference_t<Fn>;
  RangeJob<F> job{&fn, units, std::min(units, kMaxRanges), {}};
  job.errors.resize(static_cast<size_t>(job.ranges));
  ctx.ParallelFor(&RangeJob<F>::run, static_cast<size_t>(job.ranges), 0, &job);
  for (auto& error : job.errors)
    if (error) std::rethrow_exception(error);
}

// Per-thread scratch memory that outlives a call (no allocation per range or per call).
inline float* thread_scratch(int64_t floats) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

}  // namespace stamp
