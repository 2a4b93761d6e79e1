// Splitting a kernel's work across CPU threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <thread>
#include <vector>

namespace stamp {

// Below this many float elements of work per extra thread, starting a thread costs more than it
// saves (a thread start is ~20 us, a copy moves ~20 floats per ns): tensors under 64K elements
// run on the calling thread.
constexpr int64_t kMinWorkPerThread = 32 * 1024;

// Threads to use: std::thread::hardware_concurrency(), or the environment variable
// STAMP_ONNX_THREADS when it is a positive integer (e.g. 1 for single-threaded measurements).
inline int max_threads() {
  static const int threads = [] {
    if (const char* env = std::getenv("STAMP_ONNX_THREADS")) {
      const int n = std::atoi(env);
      if (n > 0) return n;
    }
    return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  }();
  return threads;
}

// Calls fn(begin, end) on contiguous ranges that cover [0, units) exactly once, in parallel.
// `work` is the total cost in element operations (used only to decide how many threads pay off).
// The calling thread takes the first range. An exception thrown by any range is rethrown here
// once every thread has finished.
template <class Fn>
void parallel_for(int64_t units, int64_t work, Fn&& fn) {
  if (units <= 0) return;
  const int64_t threads = std::min<int64_t>({max_threads(), units, std::max<int64_t>(1, work / kMinWorkPerThread)});
  if (threads <= 1 || work < 2 * kMinWorkPerThread) {
    fn(int64_t{0}, units);
    return;
  }
  std::vector<std::exception_ptr> errors(threads);
  auto run = [&](int64_t t) {
    try {
      fn(units * t / threads, units * (t + 1) / threads);
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  int64_t started = 1;
  try {
    pool.reserve(threads - 1);
    for (; started < threads; ++started) pool.emplace_back(run, started);
  } catch (...) {
    // No more threads (resource limits): the ranges left run on this thread.
  }
  run(0);
  for (int64_t t = started; t < threads; ++t) run(t);
  for (auto& thread : pool) thread.join();
  for (auto& error : errors)
    if (error) std::rethrow_exception(error);
}

}  // namespace stamp
