// cuemu runtime: fibers, the per-block scheduler, warp collectives, the grid launcher and
// the error state of the emulated CUDA runtime API. See include/cuemu/runtime.h.
//
// Environment:
//   CUEMU_WORKERS=n        OS threads running blocks (default: hardware threads, at most 2 on
//                          the CI machine); 1 makes a whole launch deterministic. Read at every
//                          launch.
//   CUEMU_SCHEDULE=forward|reverse|random[:seed]|greedy|greedy-reverse|greedy-random[:seed]
//                          how the scheduler interleaves a block's threads (a race-free kernel
//                          gives the same result under every schedule). forward/reverse/random:
//                          rounds in which every runnable thread advances to its next barrier
//                          or collective (all warps stay within one phase of each other).
//                          greedy*: one warp at a time runs as far as it can (until it blocks at
//                          __syncthreads or exits) before the next, in warp order, reverse warp
//                          order or a random one; this exposes code that orders two warps with
//                          only __syncwarp, or lanes that rely on implicit warp lockstep.
//   CUEMU_STRICT_EXIT=1    fault when a thread exits while others wait at __syncthreads
//   CUEMU_EARLY_BLOCKS=n   blocks of a programmatic dependent launch parked at griddepcontrol.wait
//                          before its primary runs (default 8)
//   CUEMU_PARK_ITEM=t      work items (take_work_item): the block that takes ticket t is held right
//                          after taking it until every other block of the launch has finished
//                          or waits in wait_for_count and no block is left to start (up to
//                          kMaxParkHelpers extra OS threads start blocks meanwhile, one more each
//                          time all others wait); then it resumes. A later item that reads what
//                          item t writes without waiting for it reads stale data. Read at every
//                          launch; unset or negative: off; not in a dependent launch's blocks
//                          that run before their primary
//   CUEMU_WAIT_TIMEOUT_S=n a wait_for_count that no detected deadlock ends faults after n s
//                          (default 60)
//   CUEMU_SMS=n            cudaDeviceGetAttribute(cudaDevAttrMultiProcessorCount) (default 4)
//   CUEMU_RESIDENT_BLOCKS=n the most blocks a cooperative launch may have (default CUEMU_SMS x the
//                          occupancy; fewer: a device whose multiprocessors are shared, e.g. MPS)
//   CUEMU_STACK_KB=n       fiber stack size (default 256)
//   CUEMU_VERBOSE=1        print every launch and fault to stderr
#include <link.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <deque>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cuemu/runtime.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#if defined(__x86_64__)
extern "C" void cuemu_ctx_switch(void** save_sp, void* load_sp);
extern "C" void cuemu_fiber_start();
#endif

thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace cuemu {

thread_local ThreadState* tl_thread = nullptr;
thread_local BlockInfo* tl_block = nullptr;

namespace {

// ---- context switching ---------------------------------------------------------------------
#if defined(__x86_64__)
asm(R"(
    .text
    .globl cuemu_ctx_switch
    .hidden cuemu_ctx_switch
    .type cuemu_ctx_switch,@function
cuemu_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuemu_ctx_switch,.-cuemu_ctx_switch
)");
struct Context {
  void* sp = nullptr;
};
#else
struct Context {
  ucontext_t uc;
};
#endif

// ---- state ----------------------------------------------------------------------------------
enum class FiberState { kRunnable, kWaiting, kDone };

// One cp.async the thread issued and no wait has retired yet.
struct AsyncCopy {
  unsigned char* dst;
  const unsigned char* src;
  int src_bytes;
  unsigned group;  // the number of groups the thread had committed when it issued the copy
};

struct Fiber {
  ThreadState ts;
  Context ctx;
  FiberState state = FiberState::kRunnable;
  const unsigned* wait_gen = nullptr;  // waiting until *wait_gen != wait_value
  unsigned wait_value = 0;
  const int32_t* count = nullptr;  // wait_for_count: waiting until (*count & count_mask) >= count_target
  int32_t count_target = 0, count_mask = -1;
  int32_t count_seen = 0;  // the counter's word that ended the wait (what the device's poll returns)
  const char* wait_what = nullptr;
  unsigned wait_mask = 0;
  char* stack = nullptr;
  size_t stack_size = 0;
  std::vector<AsyncCopy> async_copies;  // issue order
  unsigned async_groups = 0;            // groups committed so far
};

constexpr int kMaxThreads = 1024;
constexpr int kMaxWarps = kMaxThreads / 32;
constexpr size_t kWarpScratchFloats = 2 * 1024;

struct Warp {
  unsigned gen = 0;
  unsigned arrived = 0;  // lanes arrived at the pending collective
  unsigned pending_mask = 0, pending_kind = 0;
  unsigned existing = 0, exited = 0;
  uint64_t slots[2][32];
  float scratch[kWarpScratchFloats];
};

struct GridRun;

struct alignas(128) Worker {
  Context sched;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  BlockInfo info;
  std::vector<unsigned char> smem_storage;
  unsigned char* smem = nullptr;
  size_t smem_size = 0;
  // block barrier
  unsigned bar_gen = 0, bar_arrived = 0, live = 0;
  Fiber* current = nullptr;
  GridRun* launch = nullptr;
  bool aborted = false;
  std::mt19937 rng{12345};
  std::vector<int> order;
  std::vector<const int32_t*> took;  // the counters this block took a work item from

  Worker() = default;
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker();
};

thread_local Worker* tl_worker = nullptr;

struct GridRun {
  LaunchShape shape;
  BodyFn body;
  const void* arg;
  uint64_t blocks() const { return uint64_t(shape.grid.x) * shape.grid.y * shape.grid.z; }
  std::atomic<uint64_t> next_block{0};
  std::atomic<bool> aborted{false};
  // Programmatic dependent launch: 0 while the primary has not run (griddepcontrol.wait blocks),
  // 1 once it has, or when there is no primary. Written under dependency_mutex while every
  // thread that reads it is parked or not started.
  unsigned dependency_gen = 1;
  std::mutex dependency_mutex;
  std::condition_variable released, settled_cv;
  unsigned settled = 0;  // early threads that have parked a block or run out of blocks
  unsigned turn = 0;     // once resolved: the early thread whose parked block may resume
  bool early = false;    // run_until_waits ran blocks of this launch before its primary
  // Work items. `active`: OS threads inside worker_loop on this launch (counted by whoever starts
  // one, before it starts; each uncounts itself as it leaves). `stuck`: the workers whose block
  // has nothing to run but fibers in wait_for_count (under progress_mutex). Only active workers
  // raise counts, so all active workers stuck with no count reached is a deadlock.
  std::atomic<int> active{0};
  std::mutex progress_mutex;
  std::vector<const Worker*> stuck;
  int park_item = -1;  // CUEMU_PARK_ITEM at the launch
  uint64_t serial = 0;  // launches in stream order, from 0 (the copy trace's launch number)
  std::atomic<bool> park_taken{false};
  // The extra workers that start blocks while an item is parked; joined by run_blocks.
  std::vector<std::unique_ptr<Worker>> park_workers;
  std::vector<std::thread> park_threads;
};

constexpr size_t kMaxParkHelpers = 32;

thread_local bool tl_settled = false;  // this early thread has told the host it parked or ended
thread_local bool tl_parked = false;   // this early thread holds a parked block (it takes no more)
thread_local unsigned tl_early_index = 0;
thread_local bool tl_early = false;    // this thread is one of a dependent's early threads

// An early thread tells the host it will not take more blocks for now (parked or out of blocks).
void settle_early_thread(GridRun& L) {
  std::lock_guard<std::mutex> lock(L.dependency_mutex);
  if (!tl_settled) {
    tl_settled = true;
    ++L.settled;
    L.settled_cv.notify_all();
  }
}

// Called on an early thread whose block can only go on once the primary has run: tells the host
// and sleeps until the dependency resolves.
void park(GridRun& L) {
  std::unique_lock<std::mutex> lock(L.dependency_mutex);
  if (L.dependency_gen != 0) return;
  if (!tl_settled) {
    tl_settled = true;
    ++L.settled;
    L.settled_cv.notify_all();
  }
  tl_parked = true;
  L.released.wait(lock, [&] { return L.dependency_gen != 0 && L.turn == tl_early_index; });
}

// The copy trace (cuemu_trace_copies): per launch and block, each of the block's cp.async copies that
// read the traced range, in the order the block issued them: its offset into the range and its L2
// priority (1: evict first).
struct CopyTrace {
  uint64_t launch, block;
  std::vector<uint64_t> offsets;
  std::vector<uint8_t> evict_first;
};
std::mutex g_trace_mutex;
const unsigned char* g_trace_begin = nullptr;
size_t g_trace_bytes = 0;
std::map<std::pair<uint64_t, uint64_t>, CopyTrace> g_trace;
std::atomic<uint64_t> g_launch_serial{0};

void trace_copy(const void* src, int l2_priority) {
  std::lock_guard<std::mutex> lock(g_trace_mutex);
  const auto* p = static_cast<const unsigned char*>(src);
  if (g_trace_bytes == 0 || p < g_trace_begin || p >= g_trace_begin + g_trace_bytes) return;
  const BlockInfo& b = *tl_block;
  const uint64_t block = b.idx.x + uint64_t(b.grid.x) * (b.idx.y + uint64_t(b.grid.y) * b.idx.z);
  const uint64_t launch = tl_worker->launch->serial, offset = static_cast<uint64_t>(p - g_trace_begin);
  CopyTrace& t = g_trace.try_emplace({launch, block}, CopyTrace{launch, block, {}, {}}).first->second;
  t.offsets.push_back(offset);
  t.evict_first.push_back(static_cast<uint8_t>(l2_priority));
}

std::mutex g_error_mutex;
cudaError_t g_last_error = cudaSuccess;
cudaError_t g_sticky_error = cudaSuccess;
std::string g_error_message;
cudaError_t g_message_code = cudaSuccess;  // the error g_error_message describes
std::mutex g_attr_mutex;
std::unordered_map<const void*, int> g_max_dynamic_smem;

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}
bool verbose() {
  static const bool v = env_int("CUEMU_VERBOSE", 0) != 0;
  return v;
}

enum class Order { kForward, kReverse, kRandom, kGreedy, kGreedyReverse, kGreedyRandom };
Order schedule_order(unsigned* seed) {
  const char* v = std::getenv("CUEMU_SCHEDULE");
  *seed = 12345;
  if (!v || !*v || !std::strcmp(v, "forward")) return Order::kForward;
  if (!std::strcmp(v, "reverse")) return Order::kReverse;
  if (!std::strncmp(v, "random", 6)) {
    if (v[6] == ':') *seed = static_cast<unsigned>(std::strtoul(v + 7, nullptr, 10));
    return Order::kRandom;
  }
  if (!std::strcmp(v, "greedy")) return Order::kGreedy;
  if (!std::strcmp(v, "greedy-reverse")) return Order::kGreedyReverse;
  if (!std::strncmp(v, "greedy-random", 13)) {
    if (v[13] == ':') *seed = static_cast<unsigned>(std::strtoul(v + 14, nullptr, 10));
    return Order::kGreedyRandom;
  }
  std::fprintf(stderr, "cuemu: unknown CUEMU_SCHEDULE=%s\n", v);
  std::abort();
}

// ---- fibers -----------------------------------------------------------------------------
void switch_to(Context& from, Context& to) {
#if defined(__x86_64__)
  cuemu_ctx_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
}

[[noreturn]] void fiber_main();
void record_fault(const std::string& msg);


void init_fiber_context(Fiber& f) {
#if defined(__x86_64__)
  uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + f.stack_size) & ~uintptr_t(15);
  uint64_t* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;                                                    // fake return address of the entry
  *--sp = reinterpret_cast<uint64_t>(&cuemu_fiber_start);       // popped by `ret`
  for (int i = 0; i < 6; ++i) *--sp = 0;                        // rbp rbx r12 r13 r14 r15
  uint32_t csr[2];
  asm volatile("stmxcsr %0" : "=m"(csr[0]));
  asm volatile("fnstcw %0" : "=m"(csr[1]));
  *--sp = static_cast<uint64_t>(csr[0]) | (static_cast<uint64_t>(csr[1] & 0xffff) << 32);
  f.ctx.sp = sp;
#else
  getcontext(&f.ctx.uc);
  f.ctx.uc.uc_stack.ss_sp = f.stack;
  f.ctx.uc.uc_stack.ss_size = f.stack_size;
  f.ctx.uc.uc_link = nullptr;
  makecontext(&f.ctx.uc, reinterpret_cast<void (*)()>(&fiber_main), 0);
#endif
}

void ensure_fibers(Worker& w, unsigned n) {
  const size_t stack = static_cast<size_t>(env_int("CUEMU_STACK_KB", 256)) * 1024;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  while (w.fibers.size() < n) {
    w.fibers.emplace_back();
    Fiber& f = w.fibers.back();
    void* mem = mmap(nullptr, stack + page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (mem == MAP_FAILED) {
      std::fprintf(stderr, "cuemu: cannot map a fiber stack\n");
      std::abort();
    }
    mprotect(mem, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
    f.stack = static_cast<char*>(mem) + page;
    f.stack_size = stack;
  }
}

Worker::~Worker() {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  for (Fiber& f : fibers) munmap(f.stack - page, f.stack_size + page);
}

void yield_to_scheduler() {
  Worker& w = *tl_worker;
  Fiber* f = w.current;
  switch_to(f->ctx, w.sched);
}

void wait_until_changed(const unsigned* gen, unsigned value, const char* what, unsigned mask) {
  Worker& w = *tl_worker;
  Fiber* f = w.current;
  f->state = FiberState::kWaiting;
  f->wait_gen = gen;
  f->wait_value = value;
  f->wait_what = what;
  f->wait_mask = mask;
  yield_to_scheduler();
}

void yield_runnable() {
  Worker& w = *tl_worker;
  w.current->state = FiberState::kRunnable;
  yield_to_scheduler();
}

void release_block_barrier_if_complete(Worker& w) {
  if (w.bar_arrived > 0 && w.bar_arrived == w.live) {
    w.bar_arrived = 0;
    ++w.bar_gen;
  }
}

void on_thread_exit(Worker& w, Fiber& f) {
  if (!f.async_copies.empty()) {
    size_t uncommitted = 0;
    for (const AsyncCopy& c : f.async_copies) uncommitted += c.group == f.async_groups;
    fault("thread exits with %zu cp.async copies that no cp_async_wait retired (%zu of them never committed)",
          f.async_copies.size(), uncommitted);
  }
  --w.live;
  Warp& warp = w.warps[f.ts.warp];
  warp.exited |= 1u << f.ts.lane;
  if (warp.arrived != 0 && ((warp.pending_mask >> f.ts.lane) & 1u))
    fault("warp %u lane %u exited while lanes 0x%08x wait for it at a warp collective (mask 0x%08x)",
          f.ts.warp, f.ts.lane, warp.arrived, warp.pending_mask);
  if (w.bar_arrived > 0) {
    if (env_int("CUEMU_STRICT_EXIT", 0))
      fault("thread %u exited while %u threads wait at __syncthreads", f.ts.linear, w.bar_arrived);
    release_block_barrier_if_complete(w);
  }
}

[[noreturn]] void fiber_main() {
  Worker& w = *tl_worker;
  w.launch->body(w.launch->arg);
  Fiber& f = *w.current;
  on_thread_exit(w, f);
  f.state = FiberState::kDone;
  yield_to_scheduler();
  std::abort();  // a finished fiber is never resumed
}

// ---- one block ---------------------------------------------------------------------------
void report_deadlock(Worker& w) {
  std::string detail;
  std::unordered_map<std::string, int> counts;
  for (unsigned i = 0; i < w.fibers.size() && i < w.info.dim.x * w.info.dim.y * w.info.dim.z; ++i) {
    const Fiber& f = w.fibers[i];
    if (f.state != FiberState::kWaiting) continue;
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s (mask 0x%08x)", f.wait_what ? f.wait_what : "?", f.wait_mask);
    counts[buf]++;
  }
  for (auto& [k, n] : counts) detail += " " + std::to_string(n) + " thread(s) at " + k + ";";
  char head[96];
  std::snprintf(head, sizeof head, "deadlock in block (%u,%u,%u):", w.info.idx.x, w.info.idx.y, w.info.idx.z);
  record_fault(head + detail + " live threads " + std::to_string(w.live));
  w.aborted = true;
}

// The count a fiber in wait_for_count waits on: its counter's bits under its mask.
int32_t waited_count(const Fiber& f) { return __atomic_load_n(f.count, __ATOMIC_ACQUIRE) & f.count_mask; }

// A fiber of `w` in wait_for_count whose count is reached, else the first waiting one (or null).
const Fiber* count_waiter(const Worker& w, bool* reached) {
  const unsigned n = w.info.dim.x * w.info.dim.y * w.info.dim.z;
  const Fiber* first = nullptr;
  *reached = false;
  for (unsigned t = 0; t < n && t < w.fibers.size(); ++t) {
    const Fiber& f = w.fibers[t];
    if (f.state != FiberState::kWaiting || f.count == nullptr) continue;
    if (waited_count(f) >= f.count_target) {
      *reached = true;
      return &f;
    }
    if (first == nullptr) first = &f;
  }
  return first;
}

// Every runnable fiber of `w`'s block has run and some wait for counts that other blocks raise:
// sleeps until one is reached. Faults (sets w.aborted) when every active worker of the launch is
// stuck so with no count reached (a deadlock: no thread is left to raise one) or after
// CUEMU_WAIT_TIMEOUT_S; abandons the block when the launch aborts.
void wait_for_other_blocks(Worker& w, GridRun& L) {
  {
    std::lock_guard<std::mutex> lock(L.progress_mutex);
    L.stuck.push_back(&w);
  }
  if (tl_early) settle_early_thread(L);  // the host may start the next early thread meanwhile
  const auto start = std::chrono::steady_clock::now();
  const auto timeout = std::chrono::seconds(std::max(1, env_int("CUEMU_WAIT_TIMEOUT_S", 60)));
  const uint64_t total = L.blocks();
  std::string message;
  for (unsigned spin = 0;; ++spin) {
    bool reached;
    const Fiber* f = count_waiter(w, &reached);
    if (reached) break;
    if (L.aborted.load()) {
      w.aborted = true;  // another block faulted: this one is abandoned
      break;
    }
    bool deadlock = false;
    int active;
    size_t stuck;
    {
      std::lock_guard<std::mutex> lock(L.progress_mutex);
      active = L.active.load();
      stuck = L.stuck.size();
      if (stuck == static_cast<size_t>(active)) {
        deadlock = true;
        for (const Worker* o : L.stuck) {
          bool r;
          count_waiter(*o, &r);
          deadlock &= !r;
        }
      }
    }
    const bool timed_out = !deadlock && std::chrono::steady_clock::now() - start > timeout;
    if (deadlock || timed_out) {
      const uint64_t started = std::min(L.next_block.load(), total);
      char buf[512];
      if (deadlock)
        std::snprintf(buf, sizeof buf,
                      "%s: deadlock: the count is %d, the target %d, and no block can raise it (every one of "
                      "the %d running block(s) waits for a count; %llu of %llu blocks started)",
                      f->wait_what, waited_count(*f), f->count_target, active,
                      static_cast<unsigned long long>(started), static_cast<unsigned long long>(total));
      else
        std::snprintf(buf, sizeof buf,
                      "%s: the count is %d after %lld s (CUEMU_WAIT_TIMEOUT_S), the target %d (%llu of %llu "
                      "blocks started)",
                      f->wait_what, waited_count(*f), static_cast<long long>(timeout.count()), f->count_target,
                      static_cast<unsigned long long>(started), static_cast<unsigned long long>(total));
      char loc[128];
      std::snprintf(loc, sizeof loc, " [block (%u,%u,%u) thread (%u,%u,%u)]", w.info.idx.x, w.info.idx.y,
                    w.info.idx.z, f->ts.idx.x, f->ts.idx.y, f->ts.idx.z);
      message = std::string(buf) + loc;
      w.aborted = true;
      break;
    }
    if (spin < 64) std::this_thread::yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  {
    std::lock_guard<std::mutex> lock(L.progress_mutex);
    L.stuck.erase(std::find(L.stuck.begin(), L.stuck.end(), &w));
  }
  if (!message.empty()) record_fault(message);
}

void run_block(Worker& w, GridRun& L, uint64_t linear_block, Order order) {
  const dim3 g = L.shape.grid, b = L.shape.block;
  w.info.idx = uint3{static_cast<unsigned>(linear_block % g.x),
                     static_cast<unsigned>((linear_block / g.x) % g.y),
                     static_cast<unsigned>(linear_block / (uint64_t(g.x) * g.y))};
  w.info.dim = b;
  w.info.grid = g;
  const unsigned n = b.x * b.y * b.z;
  const unsigned nwarps = (n + 31) / 32;
  ensure_fibers(w, n);
  if (w.warps.size() < nwarps) w.warps.resize(nwarps);
  for (unsigned i = 0; i < nwarps; ++i) {
    Warp& wp = w.warps[i];
    wp.gen = 0;
    wp.arrived = 0;
    wp.pending_mask = wp.pending_kind = 0;
    wp.exited = 0;
    const unsigned lanes = std::min(32u, n - i * 32);
    wp.existing = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  }
  // Dynamic shared memory: a poison pattern (0xff bytes read as NaN / -1) at every block.
  if (L.shape.smem > 0) std::memset(w.smem, 0xff, L.shape.smem);
  w.bar_gen = 0;
  w.bar_arrived = 0;
  w.live = n;
  w.launch = &L;
  w.aborted = false;
  w.took.clear();
  for (unsigned t = 0; t < n; ++t) {
    Fiber& f = w.fibers[t];
    f.ts.idx = uint3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
    f.ts.linear = t;
    f.ts.lane = t % 32;
    f.ts.warp = t / 32;
    f.state = FiberState::kRunnable;
    f.wait_gen = nullptr;
    f.count = nullptr;
    f.async_copies.clear();  // an aborted block's fibers may have left some
    f.async_groups = 0;
    init_fiber_context(f);
  }
  w.order.resize(n);
  for (unsigned t = 0; t < n; ++t) w.order[t] = static_cast<int>(t);
  tl_block = &w.info;
  ::blockDim = b;
  ::gridDim = g;
  unsigned done = 0;
  // Resumes fiber t if it can run; returns whether it ran.
  auto step = [&](unsigned t) -> bool {
    Fiber& f = w.fibers[t];
    if (f.state == FiberState::kDone) return false;
    if (f.state == FiberState::kWaiting) {
      if (f.count != nullptr) {
        const int32_t seen = __atomic_load_n(f.count, __ATOMIC_ACQUIRE);
        if ((seen & f.count_mask) < f.count_target) return false;
        f.count_seen = seen;
        f.count = nullptr;
      } else if (*f.wait_gen == f.wait_value) {
        return false;
      }
      f.state = FiberState::kRunnable;
    }
    w.current = &f;
    tl_thread = &f.ts;
    switch_to(w.sched, f.ctx);
    if (f.state == FiberState::kDone) ++done;
    return true;
  };
  const bool greedy = order == Order::kGreedy || order == Order::kGreedyReverse || order == Order::kGreedyRandom;
  std::vector<int> warp_order(nwarps);
  for (unsigned i = 0; i < nwarps; ++i) warp_order[i] = static_cast<int>(order == Order::kGreedyReverse ? nwarps - 1 - i : i);
  while (done < n && !w.aborted) {
    bool progressed = false;
    if (greedy) {
      if (order == Order::kGreedyRandom) std::shuffle(warp_order.begin(), warp_order.end(), w.rng);
      for (unsigned k = 0; k < nwarps && !w.aborted; ++k) {
        const unsigned first = static_cast<unsigned>(warp_order[k]) * 32, last = std::min(n, first + 32);
        for (bool again = true; again && !w.aborted;) {  // this warp runs until all its lanes block
          again = false;
          for (unsigned t = first; t < last && !w.aborted; ++t) again |= step(t);
          progressed |= again;
        }
      }
    } else {
      if (order == Order::kReverse) {
        for (unsigned t = 0; t < n; ++t) w.order[t] = static_cast<int>(n - 1 - t);
      } else if (order == Order::kRandom) {
        std::shuffle(w.order.begin(), w.order.end(), w.rng);
      }
      for (unsigned k = 0; k < n && !w.aborted; ++k) progressed |= step(static_cast<unsigned>(w.order[k]));
    }
    if (!progressed && done < n && !w.aborted) {
      w.current = nullptr;
      bool at_dependency = false;  // threads held by griddepcontrol.wait: the primary must run first
      bool at_count = false;       // threads in wait_for_count: other blocks must raise a count
      for (unsigned t = 0; t < n; ++t) {
        const Fiber& f = w.fibers[t];
        at_dependency |= f.state == FiberState::kWaiting && f.wait_gen == &L.dependency_gen &&
                         *f.wait_gen == f.wait_value;
        at_count |= f.state == FiberState::kWaiting && f.count != nullptr;
      }
      if (at_dependency) {
        park(L);
      } else if (at_count) {
        wait_for_other_blocks(w, L);  // until a count is reached; a deadlock sets w.aborted
      } else {
        report_deadlock(w);  // sets w.aborted
      }
    }
  }
  tl_thread = nullptr;
  w.current = nullptr;
}

// A hardware fault inside a kernel (a misaligned vector access, an unmapped address, a fiber
// stack overflow, an integer division by zero) becomes a launch fault of that block instead
// of killing the process: the handler runs on an alternate stack and switches straight to the
// worker's scheduler; the faulting fiber is abandoned.
struct sigaction g_previous[32];
void on_signal(int sig, siginfo_t* info, void* uctx) {
  Worker* w = tl_worker;
  if (w == nullptr || w->current == nullptr) {
    sigaction(sig, &g_previous[sig], nullptr);  // not ours: the previous handler or the default
    raise(sig);
    return;
  }
  char buf[256];
  const char* what = sig == SIGFPE ? "integer division by zero or overflow (a GPU does not trap)"
                     : sig == SIGBUS ? "bus error (misaligned access)"
                                     : "illegal or misaligned memory access (SIGSEGV)";
  std::snprintf(buf, sizeof buf, "%s at address %p [block (%u,%u,%u) thread (%u,%u,%u)]", what, info->si_addr,
                w->info.idx.x, w->info.idx.y, w->info.idx.z, w->current->ts.idx.x, w->current->ts.idx.y,
                w->current->ts.idx.z);
  record_fault(buf);
  w->aborted = true;
  static const unsigned never = 0;
  w->current->state = FiberState::kWaiting;
  w->current->wait_gen = &never;
  w->current->wait_value = 0;
  w->current->count = nullptr;
  (void)uctx;
  switch_to(w->current->ctx, w->sched);
}

void install_signal_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = &on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE}) sigaction(sig, &sa, &g_previous[sig]);
  });
  static thread_local std::vector<char> alt;
  if (alt.empty()) {
    alt.resize(64 * 1024);
    stack_t ss;
    ss.ss_sp = alt.data();
    ss.ss_size = alt.size();
    ss.ss_flags = 0;
    sigaltstack(&ss, nullptr);
  }
}

// Runs blocks of `L` until none is left; the caller has counted this thread in L.active.
void worker_loop(Worker& w, GridRun& L) {
  install_signal_handlers();
  tl_worker = &w;
  unsigned seed;
  const Order order = schedule_order(&seed);
  w.rng.seed(seed);
  if (L.shape.smem > 0) {
    if (w.smem_storage.size() < L.shape.smem + 4096) w.smem_storage.resize(L.shape.smem + 4096);
    w.smem = reinterpret_cast<unsigned char*>(
        (reinterpret_cast<uintptr_t>(w.smem_storage.data()) + 4095) & ~uintptr_t(4095));
  }
  w.smem_size = L.shape.smem;
  const uint64_t total = L.blocks();
  uint64_t ran = 0;
  for (;;) {
    if (L.aborted.load(std::memory_order_relaxed)) break;
    const uint64_t blk = L.next_block.fetch_add(1, std::memory_order_relaxed);
    if (blk >= total) break;
    run_block(w, L, blk, order);
    if (tl_parked) break;  // an early thread: the blocks after the primary run on the pool
    ++ran;
    if (w.aborted) L.aborted.store(true);
  }
  if (verbose()) std::fprintf(stderr, "cuemu: worker %p ran %llu of %llu blocks\n", static_cast<void*>(&w),
                              static_cast<unsigned long long>(ran), static_cast<unsigned long long>(total));
  tl_block = nullptr;
  tl_worker = nullptr;
  L.active.fetch_sub(1);
}

// The pool grows to the largest CUEMU_WORKERS of any launch (a deque: workers never move).
std::deque<Worker>& workers() {
  static std::deque<Worker> pool;
  return pool;
}
size_t worker_count() {
  const int n = env_int("CUEMU_WORKERS", 0);
  return static_cast<size_t>(std::max(1, n > 0 ? n : static_cast<int>(std::thread::hardware_concurrency())));
}

const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorCooperativeLaunchTooLarge: return "cudaErrorCooperativeLaunchTooLarge";
  }
  return "cudaErrorUnknown";
}

}  // namespace

// ---- collectives and barriers (called from kernel code on a fiber) -------------------------
namespace {
void record_fault(const std::string& msg) {
  set_last_error(cudaErrorLaunchFailure, "cuemu fault: " + msg);
  {
    std::lock_guard<std::mutex> lock(g_error_mutex);
    g_sticky_error = cudaErrorLaunchFailure;
  }
  if (verbose() || env_int("CUEMU_ABORT_ON_FAULT", 0)) std::fprintf(stderr, "cuemu fault: %s\n", msg.c_str());
  if (env_int("CUEMU_ABORT_ON_FAULT", 0)) std::abort();
}
}  // namespace

void fiber_entry() { fiber_main(); }

void fault(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  Worker* w = tl_worker;
  if (!w || !w->current) {
    std::fprintf(stderr, "cuemu fault outside a kernel: %s\n", buf);
    std::abort();
  }
  char loc[128];
  std::snprintf(loc, sizeof loc, " [block (%u,%u,%u) thread (%u,%u,%u)]", w->info.idx.x, w->info.idx.y,
                w->info.idx.z, w->current->ts.idx.x, w->current->ts.idx.y, w->current->ts.idx.z);
  record_fault(std::string(buf) + loc);
  w->aborted = true;
  static const unsigned never = 0;
  w->current->state = FiberState::kWaiting;  // never resumed: the block is abandoned
  w->current->wait_gen = &never;
  w->current->wait_value = 0;
  w->current->count = nullptr;
  switch_to(w->current->ctx, w->sched);
  std::abort();
}

void block_barrier(const char* what) {
  Worker& w = *tl_worker;
  ++w.bar_arrived;
  const unsigned my_gen = w.bar_gen;
  if (w.bar_arrived == w.live) {
    w.bar_arrived = 0;
    ++w.bar_gen;
    yield_runnable();
  } else {
    wait_until_changed(&w.bar_gen, my_gen, what, 0);
  }
}

const uint64_t* warp_exchange(unsigned kind, unsigned mask, uint64_t value) {
  static const char* const kNames[] = {"?", "__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                       "__shfl_xor_sync", "a vote", "__match_sync", "__reduce_sync",
                                       "wmma::load_matrix_sync", "wmma::store_matrix_sync", "wmma::mma_sync"};
  Worker& w = *tl_worker;
  Fiber& f = *w.current;
  Warp& wp = w.warps[f.ts.warp];
  const unsigned lane = f.ts.lane, bit = 1u << lane;
  if (!(mask & bit)) fault("%s with mask 0x%08x omits the calling lane %u", kNames[kind], mask, lane);
  if (mask & ~wp.existing)
    fault("%s with mask 0x%08x names lanes that do not exist (warp has 0x%08x)", kNames[kind], mask, wp.existing);
  if (mask & wp.exited)
    fault("%s with mask 0x%08x names lanes that have exited (0x%08x)", kNames[kind], mask, wp.exited);
  if (wp.arrived == 0) {
    wp.pending_mask = mask;
    wp.pending_kind = kind;
  } else if (wp.pending_mask != mask || wp.pending_kind != kind) {
    fault("warp %u: lane %u reaches %s (mask 0x%08x) while lanes 0x%08x wait at %s (mask 0x%08x)", f.ts.warp, lane,
          kNames[kind], mask, wp.arrived, kNames[wp.pending_kind], wp.pending_mask);
  }
  const unsigned buf = wp.gen & 1u;
  wp.slots[buf][lane] = value;
  wp.arrived |= bit;
  const unsigned my_gen = wp.gen;
  if ((wp.arrived & mask) == mask) {
    wp.arrived = 0;
    ++wp.gen;
    yield_runnable();
  } else {
    wait_until_changed(&wp.gen, my_gen, kNames[kind], mask);
  }
  return wp.slots[buf];
}

float* warp_scratch(size_t floats_per_buffer) {
  if (2 * floats_per_buffer > kWarpScratchFloats) fault("warp scratch request too large");
  return tl_worker->warps[tl_worker->current->ts.warp].scratch;
}

unsigned warp_parity() { return tl_worker->warps[tl_worker->current->ts.warp].gen & 1u; }

unsigned exited_lanes_mask() { return tl_worker->warps[tl_worker->current->ts.warp].exited; }

// ---- cp.async -------------------------------------------------------------------------------
namespace {
struct TlsSearch {
  uintptr_t code;  // an address inside this module's code
  uintptr_t lo = 0, hi = 0;
};

int find_module_tls(dl_phdr_info* info, size_t, void* data) {
  TlsSearch& s = *static_cast<TlsSearch*>(data);
  bool mine = false;
  size_t tls_size = 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    const uintptr_t start = info->dlpi_addr + ph.p_vaddr;
    if (ph.p_type == PT_LOAD && s.code >= start && s.code < start + ph.p_memsz) mine = true;
    if (ph.p_type == PT_TLS) tls_size = ph.p_memsz;
  }
  if (!mine) return 0;
  if (info->dlpi_tls_data != nullptr) {
    s.lo = reinterpret_cast<uintptr_t>(info->dlpi_tls_data);
    s.hi = s.lo + tls_size;
  }
  return 1;
}

// Static __shared__ variables are thread_local: the calling OS thread's block of this module's
// thread-local storage (the runtime's own thread_locals are in it too; kernels cannot name them).
bool in_static_shared(const void* p, size_t n) {
  static thread_local uintptr_t lo = 0, hi = 0;
  if (hi == 0) {
    TlsSearch s{reinterpret_cast<uintptr_t>(&find_module_tls)};
    dl_iterate_phdr(&find_module_tls, &s);
    lo = s.lo;
    hi = s.hi;
  }
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  return a >= lo && a + n <= hi;
}

bool in_dynamic_shared(const void* p, size_t n) {
  const Worker& w = *tl_worker;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), base = reinterpret_cast<uintptr_t>(w.smem);
  return w.smem_size > 0 && a >= base && a + n <= base + w.smem_size;
}

bool in_shared(const void* p, size_t n) { return in_dynamic_shared(p, n) || in_static_shared(p, n); }
}  // namespace

void async_copy_16(void* dst, const void* src, int src_bytes, int l2_priority) {
  if (src_bytes != 0 && src_bytes != 16) fault("cp_async_16: src_bytes %d is neither 0 nor 16", src_bytes);
  if (l2_priority != 0 && l2_priority != 1) fault("cp_async_16: L2 priority %d is not a policy", l2_priority);
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0) fault("cp_async_16: destination %p is not 16-byte aligned", dst);
  if (reinterpret_cast<uintptr_t>(src) % 16 != 0) fault("cp_async_16: source %p is not 16-byte aligned", src);
  if (!in_shared(dst, 16))
    fault("cp_async_16: destination %p is not in shared memory (dynamic %p + %zu, or a static __shared__)", dst,
          static_cast<void*>(tl_worker->smem), tl_worker->smem_size);
  if (src_bytes != 0 && in_shared(src, 16))
    fault("cp_async_16: source %p is in shared memory (cp.async reads global memory)", src);
  if (src_bytes != 0) trace_copy(src, l2_priority);
  Fiber& f = *tl_worker->current;
  f.async_copies.push_back(AsyncCopy{static_cast<unsigned char*>(dst), static_cast<const unsigned char*>(src),
                                     src_bytes, f.async_groups});
}

void async_commit_group() { ++tl_worker->current->async_groups; }

void async_wait_group(int n) {
  Fiber& f = *tl_worker->current;
  if (n < 0) fault("cp_async_wait<%d>: a negative group count", n);
  // Groups g with g + n < committed are retired: at most the n newest committed stay pending;
  // copies issued after the last commit (group == committed) are in no group and stay too.
  size_t kept = 0;
  for (AsyncCopy& c : f.async_copies) {
    if (uint64_t(c.group) + unsigned(n) < f.async_groups) {
      if (c.src_bytes == 16) std::memcpy(c.dst, c.src, 16);
      else std::memset(c.dst, 0, 16);
    } else {
      f.async_copies[kept++] = c;
    }
  }
  f.async_copies.resize(kept);
}

bool is_shared_address(const void* p, size_t n) { return in_shared(p, n); }

unsigned char* dynamic_shared_base() { return tl_worker->smem; }
size_t dynamic_shared_size() { return tl_worker->smem_size; }

// ---- launch -----------------------------------------------------------------------------
void set_last_error(cudaError_t e, const std::string& msg) {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  if (g_last_error == cudaSuccess || e != cudaSuccess) {
    g_last_error = e;
    g_error_message = msg;
    g_message_code = e;
  }
}

void set_func_attribute(const void* func, int attr, int value, cudaError_t* err) {
  *err = cudaSuccess;
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    constexpr int kOptinMax = 232448;  // sm_90: 227 KiB per block
    if (value < 0 || value > kOptinMax) {
      *err = cudaErrorInvalidValue;
      set_last_error(*err, "cudaFuncSetAttribute: MaxDynamicSharedMemorySize " + std::to_string(value) +
                               " > 232448 (sm_90 opt-in limit)");
      return;
    }
    std::lock_guard<std::mutex> lock(g_attr_mutex);
    g_max_dynamic_smem[func] = value;
  }
}

int sm_count() { return std::max(1, env_int("CUEMU_SMS", 4)); }

int blocks_per_sm(unsigned threads, size_t dynamic_smem) {
  constexpr size_t kSmemPerSm = 233472, kReservedPerBlock = 1024;  // sm_90: 228 KiB, 1 KiB a block
  const size_t by_smem = kSmemPerSm / (dynamic_smem + kReservedPerBlock);
  return static_cast<int>(std::min<size_t>({2048 / std::max(1u, threads), 32, by_smem}));
}

size_t max_dynamic_shared(const void* func) {
  std::lock_guard<std::mutex> lock(g_attr_mutex);
  auto it = g_max_dynamic_smem.find(func);
  return it == g_max_dynamic_smem.end() ? 48 * 1024 : static_cast<size_t>(it->second);
}

namespace {

bool context_faulted() {
  std::lock_guard<std::mutex> lock(g_error_mutex);
  return g_sticky_error != cudaSuccess;
}

// Runs the blocks of `L` not taken yet on the worker pool (the calling thread is worker 0).
void run_blocks(GridRun& L) {
  if (context_faulted()) {  // a faulted context runs nothing
    L.aborted.store(true);
  } else {
    auto& pool = workers();
    const dim3 g = L.shape.grid, b = L.shape.block;
    const uint64_t blocks = L.blocks();
    // A cooperative launch: a worker per block, all of them at once (co-resident, as the GPU keeps them);
    // the ones past the pool's size live for this launch only (each maps a fiber stack per thread).
    const size_t n = static_cast<size_t>(L.shape.cooperative ? blocks : std::min<uint64_t>(worker_count(), blocks));
    const size_t pooled = std::min(n, std::max(pool.size(), worker_count()));
    while (pool.size() < pooled) pool.emplace_back();
    std::vector<std::unique_ptr<Worker>> extra;
    for (size_t i = pooled; i < n; ++i) extra.push_back(std::make_unique<Worker>());
    auto worker = [&](size_t i) -> Worker& { return i < pooled ? pool[i] : *extra[i - pooled]; };
    if (verbose())
      std::fprintf(stderr, "cuemu: launch grid (%u,%u,%u) block (%u,%u,%u) smem %zu on %zu worker(s)\n", g.x, g.y,
                   g.z, b.x, b.y, b.z, L.shape.smem, n);
    L.active.fetch_add(static_cast<int>(n));
    std::vector<std::thread> helpers;
    for (size_t i = 1; i < n; ++i) helpers.emplace_back([&, i] { worker_loop(worker(i), L); });
    worker_loop(worker(0), L);
    for (auto& t : helpers) t.join();
  }
  // Every thread that could park an item has ended: no helper starts after this.
  for (auto& t : L.park_threads) t.join();
  L.park_threads.clear();
}

int early_block_limit() {
  static const int limit = std::max(1, env_int("CUEMU_EARLY_BLOCKS", 8));
  return limit;
}


// A queued launch; `early` are the threads of a dependent's blocks parked at their wait.
struct QueuedLaunch {
  std::unique_ptr<GridRun> run;
  void* arg = nullptr;
  void (*destroy)(void*) = nullptr;
  std::vector<std::thread> early;
  // The workers of the parked blocks, freed when the launch finishes: every loaded build (each
  // mutant is one) would otherwise keep CUEMU_EARLY_BLOCKS x threads fiber stacks mapped.
  std::vector<std::unique_ptr<Worker>> early_workers;

  ~QueuedLaunch() { destroy(arg); }
};

std::mutex g_stream_mutex;  // the one emulated stream: launches and synchronisations in order
std::unique_ptr<QueuedLaunch> g_queued;
std::atomic<int> g_early_dependent_launches{0};

// The dependent's blocks up to their waits, one thread at a time (deterministic): each early
// thread runs blocks until one parks (or the grid runs out), then the next thread starts.
void run_until_waits(QueuedLaunch& q) {
  GridRun& L = *q.run;
  const uint64_t total = L.blocks();
  L.early = true;  // before any early thread starts: no work item of this launch is parked
  for (int i = 0; i < early_block_limit(); ++i) {
    if (L.next_block.load() >= total || L.aborted.load() || context_faulted()) break;
    q.early_workers.push_back(std::make_unique<Worker>());
    Worker& w = *q.early_workers.back();
    L.active.fetch_add(1);
    q.early.emplace_back([&L, &w, i] {
      tl_settled = false;
      tl_parked = false;
      tl_early = true;
      tl_early_index = static_cast<unsigned>(i);
      worker_loop(w, L);
      settle_early_thread(L);
    });
    std::unique_lock<std::mutex> lock(L.dependency_mutex);
    L.settled_cv.wait(lock, [&] { return L.settled == static_cast<unsigned>(i + 1); });
  }
}

// Runs a queued launch to completion: a dependent's parked blocks resume one at a time, in the
// order they parked (CUEMU_WORKERS=1 stays deterministic), then the rest run on the pool.
void finish(QueuedLaunch& q) {
  GridRun& L = *q.run;
  for (size_t i = 0; i < q.early.size(); ++i) {
    {
      std::lock_guard<std::mutex> lock(L.dependency_mutex);
      L.dependency_gen = 1;
      L.turn = static_cast<unsigned>(i);
    }
    L.released.notify_all();
    q.early[i].join();
  }
  {
    std::lock_guard<std::mutex> lock(L.dependency_mutex);
    L.dependency_gen = 1;
  }
  run_blocks(L);
  q.early_workers.clear();
}

void synchronize_locked() {
  if (!g_queued) return;
  std::unique_ptr<QueuedLaunch> q = std::move(g_queued);
  finish(*q);
}

}  // namespace

void synchronize() {
  std::lock_guard<std::mutex> lock(g_stream_mutex);
  synchronize_locked();
}

cudaError_t enqueue_grid(const LaunchShape& shape, BodyFn body, void* arg, void (*destroy)(void*),
                         bool programmatic_dependent) {
  auto q = std::make_unique<QueuedLaunch>();
  q->arg = arg;
  q->destroy = destroy;
  const dim3 g = shape.grid, b = shape.block;
  const uint64_t threads = uint64_t(b.x) * b.y * b.z;
  if (g.x == 0 || g.y == 0 || g.z == 0 || threads == 0 || threads > 1024 || b.x > 1024 || b.y > 1024 ||
      b.z > 64 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535) {
    char buf[200];
    std::snprintf(buf, sizeof buf, "invalid launch configuration: grid (%u,%u,%u) block (%u,%u,%u)", g.x, g.y, g.z,
                  b.x, b.y, b.z);
    set_last_error(cudaErrorInvalidConfiguration, buf);
    return cudaErrorInvalidConfiguration;
  }
  if (shape.smem > max_dynamic_shared(shape.func)) {
    set_last_error(cudaErrorInvalidValue, "launch with " + std::to_string(shape.smem) +
                                              " bytes of dynamic shared memory above the kernel's limit " +
                                              std::to_string(max_dynamic_shared(shape.func)));
    return cudaErrorInvalidValue;
  }
  if (shape.cooperative) {
    const int limit = env_int("CUEMU_RESIDENT_BLOCKS", -1);
    const uint64_t resident = limit >= 0 ? uint64_t(limit)
                                         : uint64_t(blocks_per_sm(static_cast<unsigned>(threads), shape.smem)) * sm_count();
    if (uint64_t(g.x) * g.y * g.z > resident) {
      set_last_error(cudaErrorCooperativeLaunchTooLarge,
                     "cooperative launch of " + std::to_string(uint64_t(g.x) * g.y * g.z) + " blocks above the " +
                         std::to_string(resident) + " that can be resident at once (CUEMU_SMS x occupancy, or "
                         "CUEMU_RESIDENT_BLOCKS)");
      return cudaErrorCooperativeLaunchTooLarge;
    }
  }
  q->run = std::make_unique<GridRun>();
  q->run->shape = shape;
  q->run->body = body;
  q->run->arg = arg;
  q->run->park_item = env_int("CUEMU_PARK_ITEM", -1);
  std::lock_guard<std::mutex> lock(g_stream_mutex);
  q->run->serial = g_launch_serial++;
  if (programmatic_dependent && g_queued) {  // the primary has not run yet: the dependent goes first
    q->run->dependency_gen = 0;
    if (verbose()) std::fprintf(stderr, "cuemu: programmatic dependent launch: blocks up to their wait first\n");
    run_until_waits(*q);
    ++g_early_dependent_launches;
  }
  synchronize_locked();  // the launch before this one (a dependent's primary) runs now
  g_queued = std::move(q);
  return cudaSuccess;
}

namespace {

// Holds the calling block (its OS thread) with work item `ticket` until every other active worker
// has left or is stuck in wait_for_count and no block is left to start; while all others are
// stuck and blocks are left, starts one more worker (up to kMaxParkHelpers) to start them.
void hold_parked_item(GridRun& L, int32_t ticket) {
  const uint64_t total = L.blocks();
  if (verbose()) std::fprintf(stderr, "cuemu: work item %d parked\n", ticket);
  for (;;) {
    if (L.aborted.load()) break;
    {
      std::lock_guard<std::mutex> lock(L.progress_mutex);
      if (L.stuck.size() + 1 == static_cast<size_t>(L.active.load())) {  // no other worker makes progress
        if (L.next_block.load() >= total || L.park_workers.size() >= kMaxParkHelpers) break;
        L.park_workers.push_back(std::make_unique<Worker>());
        Worker* helper = L.park_workers.back().get();
        L.active.fetch_add(1);
        L.park_threads.emplace_back([&L, helper] { worker_loop(*helper, L); });
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  if (verbose())
    std::fprintf(stderr, "cuemu: work item %d resumes (%zu helper worker(s))\n", ticket, L.park_workers.size());
}

}  // namespace

int32_t take_work_item(int32_t* counter, int32_t total) {
  Worker& w = *tl_worker;
  GridRun& L = *w.launch;
  const uint64_t blocks = L.blocks();
  if (total <= 0 || static_cast<uint64_t>(total) != blocks)
    fault("take_work_item: total %d is not the grid's block count %llu", total,
          static_cast<unsigned long long>(blocks));
  if (std::find(w.took.begin(), w.took.end(), counter) != w.took.end())
    fault("take_work_item: a second item from counter %p in one block (one thread of a block takes one)",
          static_cast<void*>(counter));
  w.took.push_back(counter);
  const int32_t ticket = __atomic_fetch_add(counter, 1, __ATOMIC_SEQ_CST);
  if (ticket < 0 || ticket >= total)
    fault("take_work_item: ticket %d out of [0, %d): the counter %p was not zero at the launch", ticket, total,
          static_cast<void*>(counter));
  if (ticket == total - 1) __atomic_store_n(counter, 0, __ATOMIC_SEQ_CST);  // every block has its ticket
  if (ticket == L.park_item && !L.early && !L.park_taken.exchange(true)) hold_parked_item(L, ticket);
  return ticket;
}

int32_t wait_for_count(const int32_t* counter, int32_t target, int32_t mask, const char* what) {
  int32_t seen = __atomic_load_n(counter, __ATOMIC_ACQUIRE);
  if ((seen & mask) < target) {
    Fiber& f = *tl_worker->current;
    f.state = FiberState::kWaiting;  // runnable again once (*counter & mask) >= target (run_block's step)
    f.count = counter;
    f.count_target = target;
    f.count_mask = mask;
    f.wait_what = what;
    f.wait_mask = 0;
    yield_to_scheduler();
    seen = f.count_seen;  // the word the step that woke this fiber saw, not a later one
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return seen;
}

void grid_dependency_wait() {
  Worker& w = *tl_worker;
  GridRun& L = *w.launch;
  if (L.dependency_gen != 0) return;  // not a dependent, or the primary has completed
  wait_until_changed(&L.dependency_gen, 0, "griddepcontrol.wait", 0);
}

void grid_dependency_trigger() {
  if (tl_worker == nullptr || tl_worker->current == nullptr) {
    std::fprintf(stderr, "cuemu: griddepcontrol.launch_dependents outside a kernel\n");
    std::abort();
  }
}

}  // namespace cuemu

#if defined(__x86_64__)
extern "C" void cuemu_fiber_start() { cuemu::fiber_entry(); }
#endif

// ---- runtime API ------------------------------------------------------------------------------
cudaError_t cudaGetLastError() {
  cuemu::synchronize();
  std::lock_guard<std::mutex> lock(cuemu::g_error_mutex);
  const cudaError_t e = cuemu::g_last_error;
  if (cuemu::g_sticky_error == cudaSuccess) cuemu::g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  cuemu::synchronize();
  std::lock_guard<std::mutex> lock(cuemu::g_error_mutex);
  return cuemu::g_last_error;
}
const char* cudaGetErrorName(cudaError_t e) { return cuemu::error_name(e); }
const char* cudaGetErrorString(cudaError_t e) {
  // The message of the most recent error of this kind (the emulator's diagnosis), else its name.
  static thread_local std::string s;
  std::lock_guard<std::mutex> lock(cuemu::g_error_mutex);
  s = e == cuemu::g_message_code && !cuemu::g_error_message.empty() ? cuemu::g_error_message
                                                                      : std::string(cuemu::error_name(e));
  return s.c_str();
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (attr == cudaDevAttrCooperativeLaunch && device == 0) {
    *value = 1;
    return cudaSuccess;
  }
  if (attr != cudaDevAttrMultiProcessorCount || device != 0) {
    cuemu::set_last_error(cudaErrorInvalidValue, "cudaDeviceGetAttribute: attribute " +
                                                     std::to_string(static_cast<int>(attr)) + " of device " +
                                                     std::to_string(device) + " is not emulated");
    return cudaErrorInvalidValue;
  }
  *value = cuemu::sm_count();
  return cudaSuccess;
}

int __syncthreads_count(int predicate) {
  // Reduce through a per-worker counter: two barriers, as bar.red.popc.
  static thread_local int acc;
  static thread_local int result;
  cuemu::block_barrier("__syncthreads_count");
  if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) acc = 0;
  cuemu::block_barrier("__syncthreads_count");
  acc += predicate != 0;
  cuemu::block_barrier("__syncthreads_count");
  result = acc;
  return result;
}
int __syncthreads_and(int predicate) {
  return __syncthreads_count(predicate) == static_cast<int>(blockDim.x * blockDim.y * blockDim.z);
}
int __syncthreads_or(int predicate) { return __syncthreads_count(predicate) != 0; }

// Reset the sticky fault state (tests call this between cases).
extern "C" __attribute__((visibility("default"))) void cuemu_reset() {
  cuemu::synchronize();
  std::lock_guard<std::mutex> lock(cuemu::g_error_mutex);
  cuemu::g_last_error = cudaSuccess;
  cuemu::g_sticky_error = cudaSuccess;
  cuemu::g_error_message.clear();
  cuemu::g_message_code = cudaSuccess;
}
extern "C" __attribute__((visibility("default"))) const char* cuemu_last_message() {
  std::lock_guard<std::mutex> lock(cuemu::g_error_mutex);
  return cuemu::g_error_message.c_str();
}
// Programmatic dependent launches whose blocks ran up to their waits before their primary.
extern "C" __attribute__((visibility("default"))) int cuemu_early_dependent_launches() {
  return cuemu::g_early_dependent_launches.load();
}
// CUEMU_EARLY_BLOCKS: the most blocks of a dependent that run up to their wait before the primary.
extern "C" __attribute__((visibility("default"))) int cuemu_early_block_limit() { return cuemu::early_block_limit(); }
// Launches queued and not run yet (a launcher must end with cudaGetLastError: zero after it).
extern "C" __attribute__((visibility("default"))) int cuemu_queued_launches() {
  std::lock_guard<std::mutex> lock(cuemu::g_stream_mutex);
  return cuemu::g_queued ? 1 : 0;
}
// Runs the queued launch (the harness's check after every kernel call).
extern "C" __attribute__((visibility("default"))) void cuemu_synchronize() { cuemu::synchronize(); }
// The copy trace: cuemu_trace_copies(begin, bytes) clears it and records, from then on, the cp.async
// copies whose source lies in [begin, begin + bytes) (bytes 0: none). cuemu_trace_size() entries,
// ordered by (launch, block); cuemu_trace_entry(i, out) writes {launch, block, lowest offset read,
// copies} of entry i (launch: the launch's place in stream order, block: its linear index).
extern "C" __attribute__((visibility("default"))) void cuemu_trace_copies(const void* begin, size_t bytes) {
  cuemu::synchronize();
  std::lock_guard<std::mutex> lock(cuemu::g_trace_mutex);
  cuemu::g_trace.clear();
  cuemu::g_trace_begin = static_cast<const unsigned char*>(begin);
  cuemu::g_trace_bytes = bytes;
}
extern "C" __attribute__((visibility("default"))) size_t cuemu_trace_size() {
  cuemu::synchronize();
  std::lock_guard<std::mutex> lock(cuemu::g_trace_mutex);
  return cuemu::g_trace.size();
}
extern "C" __attribute__((visibility("default"))) int cuemu_trace_entry(size_t i, uint64_t* out) {
  std::lock_guard<std::mutex> lock(cuemu::g_trace_mutex);
  if (i >= cuemu::g_trace.size()) return 0;
  const cuemu::CopyTrace& t = std::next(cuemu::g_trace.begin(), static_cast<std::ptrdiff_t>(i))->second;
  out[0] = t.launch, out[1] = t.block;
  out[2] = *std::min_element(t.offsets.begin(), t.offsets.end());  // an entry holds at least one copy
  out[3] = t.offsets.size();
  return 1;
}
// The offsets of entry i's copies in issue order, and whether each asked L2 to evict its lines first:
// writes the first `max` of each to offsets and evict_first, returns how many there are.
extern "C" __attribute__((visibility("default"))) size_t cuemu_trace_offsets(size_t i, uint64_t* offsets,
                                                                             uint8_t* evict_first, size_t max) {
  std::lock_guard<std::mutex> lock(cuemu::g_trace_mutex);
  if (i >= cuemu::g_trace.size()) return 0;
  const cuemu::CopyTrace& t = std::next(cuemu::g_trace.begin(), static_cast<std::ptrdiff_t>(i))->second;
  std::copy_n(t.offsets.begin(), std::min(max, t.offsets.size()), offsets);
  std::copy_n(t.evict_first.begin(), std::min(max, t.evict_first.size()), evict_first);
  return t.offsets.size();
}
