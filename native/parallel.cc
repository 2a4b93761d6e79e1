// The persistent thread pool behind parallel_for (see parallel.h).
#include "parallel.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>

namespace stamp {
namespace {

using Clock = std::chrono::steady_clock;
// How long an idle worker keeps polling for the next job before it sleeps. Short, and yielding
// as it polls, so that the other operators of a model (ONNX Runtime's own threads) keep the CPU.
constexpr auto kSpin = std::chrono::microseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// One call of run_tasks: lives on the caller's stack until every worker has let go of it.
struct Job {
  const std::function<void(int)>* task;
  int tasks;
  std::atomic<int> next{0};      // next task index to claim
  std::atomic<int> pending;      // tasks not finished yet
  std::atomic<int> attached{0};  // workers still holding a pointer to this job
};

class Pool {
 public:
  explicit Pool(int workers) {
    threads_.reserve(workers);
    for (int i = 0; i < workers; ++i) {
      try {
        threads_.emplace_back([this] { work(); });
      } catch (...) {
        break;  // no more threads (resource limits): run with fewer
      }
    }
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    for (auto& thread : threads_) thread.join();
  }

  void run(int tasks, const std::function<void(int)>& task) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock() || threads_.empty()) {  // another caller has the pool: run here
      for (int i = 0; i < tasks; ++i) task(i);
      return;
    }
    Job job;
    job.task = &task;
    job.tasks = tasks;
    job.pending.store(tasks, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    execute(job);
    {
      // No worker attaches after this; wait for those attached to finish and detach.
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = nullptr;
    }
    for (int spins = 0; job.pending.load(std::memory_order_acquire) > 0 ||
                        job.attached.load(std::memory_order_acquire) > 0;
         ++spins) {
      if (spins < 4096) cpu_relax();
      else std::this_thread::yield();  // a worker was descheduled: give it the CPU
    }
  }

 private:
  // Claim and run tasks of the job until none is left.
  static void execute(Job& job) {
    for (int i; (i = job.next.fetch_add(1, std::memory_order_relaxed)) < job.tasks;) {
      (*job.task)(i);
      job.pending.fetch_sub(1, std::memory_order_release);
    }
  }

  void work() {
    uint64_t seen = generation_.load(std::memory_order_acquire);
    for (;;) {
      const auto until = Clock::now() + kSpin;
      for (int polls = 1; generation_.load(std::memory_order_acquire) == seen && Clock::now() < until; ++polls) {
        if (polls % 64) cpu_relax();
        else std::this_thread::yield();
      }
      Job* job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        seen = generation_.load(std::memory_order_acquire);
        if (stop_) return;
        job = job_;
        if (job) job->attached.fetch_add(1, std::memory_order_relaxed);
      }
      if (!job) continue;  // woke after that job was over
      execute(*job);
      job->attached.fetch_sub(1, std::memory_order_release);  // last access to the job
    }
  }

  std::mutex busy_;   // held by the caller whose job the pool runs
  std::mutex mutex_;  // guards job_, stop_ and generation_ changes
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  Job* job_ = nullptr;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// The process's pool, started on first use. After fork() the child has none of the parent's
// threads: it starts its own and leaves the parent's pool object alone (never destroyed).
Pool& pool() {
  static std::mutex mutex;
  static pid_t owner = 0;
  static std::unique_ptr<Pool> current;
  std::lock_guard<std::mutex> lock(mutex);
  const pid_t pid = getpid();
  if (current && owner != pid) (void)current.release();  // inherited: its threads are not here
  if (!current) {
    current = std::make_unique<Pool>(max_threads() - 1);
    owner = pid;
  }
  return *current;
}

}  // namespace

int max_threads() {
  static const int threads = [] {
    if (const char* env = std::getenv("STAMP_ONNX_THREADS")) {
      const int n = std::atoi(env);
      if (n > 0) return n;
    }
    return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  }();
  return threads;
}

void run_tasks(int tasks, const std::function<void(int)>& task) {
  if (tasks <= 1) {
    if (tasks == 1) task(0);
    return;
  }
  pool().run(tasks, task);
}

}  // namespace stamp
