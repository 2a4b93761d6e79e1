// Splitting a kernel's work across CPU threads: a small persistent pool of std::threads.
//
// Starting a thread costs ~30 us here, as much as a whole kernel call on a 1 MiB activation, so
// the worker threads are started once per process and wait for work: they spin briefly after a
// job (back-to-back kernel calls then start at once) and then sleep on a condition variable.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <functional>
#include <vector>

namespace stamp {

// Below this many float elements of work per extra thread, sharing out the work costs more than
// it saves: tensors under 64K elements run on the calling thread.
constexpr int64_t kMinWorkPerThread = 32 * 1024;

// Threads to use, the calling one included: std::thread::hardware_concurrency(), or the
// environment variable STAMP_ONNX_THREADS when it is a positive integer (e.g. 1 to measure the
// single-threaded speed).
int max_threads();

// Runs task(i) for every i in [0, tasks) on the pool and the calling thread; returns when all
// are done. If the pool is busy with another caller's job, runs them all on the calling thread.
// `task` must not throw.
void run_tasks(int tasks, const std::function<void(int)>& task);

// Calls fn(begin, end) on contiguous ranges that cover [0, units) exactly once, in parallel.
// `work` is the total cost in element operations (it only decides how many threads pay off).
// There are a few ranges per thread, claimed dynamically, so that a thread that starts late
// (a sleeping worker takes ~15 us to wake here) or is slowed down costs less.
// An exception thrown by any range is rethrown here once every range has finished.
template <class Fn>
void parallel_for(int64_t units, int64_t work, Fn&& fn) {
  if (units <= 0) return;
  int64_t threads = max_threads();
  if (units < threads) threads = units;
  if (work / kMinWorkPerThread < threads) threads = work / kMinWorkPerThread;
  if (threads <= 1 || work < 2 * kMinWorkPerThread) {
    fn(int64_t{0}, units);
    return;
  }
  constexpr int64_t kRangesPerThread = 4;
  const int64_t ranges = std::min(units, threads * kRangesPerThread);
  std::vector<std::exception_ptr> errors(ranges);
  run_tasks(static_cast<int>(ranges), [&](int i) {
    try {
      fn(units * i / ranges, units * (i + 1) / ranges);
    } catch (...) {
      errors[i] = std::current_exception();
    }
  });
  for (auto& error : errors)
    if (error) std::rethrow_exception(error);
}

// Per-thread scratch memory that outlives a call (no allocation per range or per call).
inline float* thread_scratch(int64_t floats) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

}  // namespace stamp
