// cuemu: a CUDA-subset CPU runtime for testing hand-written kernels without a GPU.
//
// A kernel's source is compiled as ordinary C++ (after tests/cuemu/translate.py rewrites the
// two constructs C++ cannot parse: `k<<<grid, block, smem, stream>>>(args)` and
// `extern __shared__ T name[];`). Every CUDA thread of a block is a fiber on one OS thread;
// fibers switch only at __syncthreads, at warp collectives (__syncwarp, shuffles, votes, matches,
// WMMA) and at exit, so a block runs deterministically, and blocks of a grid run on
// CUEMU_WORKERS OS threads. Static __shared__ variables are thread_local (one block per OS
// thread at a time), dynamic shared memory is a per-worker buffer filled with a poison
// pattern at every block start.
//
// Checked (a fault fails the launch with a message): a warp collective whose lanes disagree
// on the kind or mask, a mask that names exited or missing lanes or omits the caller, a
// shuffle reading a lane outside the mask, a deadlock (some threads at a barrier nobody
// else reaches), WMMA pointers / ldm that are misaligned or differ between lanes, dynamic
// shared memory above the kernel's cudaFuncSetAttribute limit, launch shapes past the
// hardware limits, and cp.async misuse (below).
//
// cp.async (csrc/include/dspark_sgl/async_copy.cuh): each thread keeps its pending copies in
// issue order, tagged with their commit group. A copy reads its source and writes its
// destination only when the issuing thread's cp_async_wait<N> retires its group (as late as a
// GPU may land it), so a read before the wait, or by another thread before the issuing
// thread's wait and a __syncthreads, sees what was there: the poison pattern in dynamic
// shared memory. Faults: a destination that is not 16-byte aligned or not in shared memory
// (the block's dynamic buffer or a static __shared__ variable, i.e. the module's thread-local
// storage), a source that is not 16-byte aligned or lies in shared memory, src_bytes other
// than 0 or 16, and a thread that exits with copies no wait retired (committed or not): no
// thread can read such a copy safely, so it is a bug even where a GPU would land it.
//
// Launches are asynchronous, as on a GPU: a launch is queued and runs at the next runtime call
// (another launch, cudaGetLastError / cudaPeekAtLastError, a synchronisation, a memset or memcpy;
// not cudaFuncSetAttribute), so every launcher must end with cudaGetLastError (it always did).
// A launch configuration error is still reported at the launch.
//
// Programmatic dependent launch (csrc/include/dspark_sgl/dependent_launch.cuh): a launch with
// cudaLaunchAttributeProgrammaticStreamSerialization runs adversarially against the queued launch
// before it (its primary): its first blocks run until every thread has reached
// griddepcontrol.wait (grid_dependency_wait) or exited BEFORE the primary runs at all, so a read
// of the primary's output before the wait sees what was there before; then the primary runs;
// then the parked blocks resume one at a time, in the order they parked (CUEMU_WORKERS=1 stays
// deterministic), and the remaining blocks run (their waits return at once: a block
// that starts after the primary has completed is legal on a GPU too). At most
// CUEMU_EARLY_BLOCKS (default 8) blocks are parked at once (each holds an OS thread, as its
// static __shared__ variables are thread-local); blocks that exit without waiting do not count,
// so a kernel that never waits runs entirely before its primary. The trigger
// (griddepcontrol.launch_dependents) is accepted and does nothing: the model already lets the
// dependent start as early as any trigger could. Without a queued primary (a runtime call in
// between ran it) the wait returns at once; cuemu_early_dependent_launches() counts the dependent
// launches that did run before their primary.
//
// Work items (csrc/include/dspark_sgl/work_items.cuh): take_work_item is a fetch-add on the
// counter (the taker of the last ticket resets it; faults on a second take by one block, a total
// other than the grid's block count, a ticket out of range). A thread in wait_for_count is not
// runnable until the count reaches its target; the block's other threads run meanwhile, and once
// none can, its OS thread sleeps until a count is reached. It faults (a deadlock, naming the
// count and the target) when every OS thread of the launch is stuck so and no count is reached,
// or after CUEMU_WAIT_TIMEOUT_S. CUEMU_PARK_ITEM holds one item back (runtime.cpp).
#pragma once

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuemu/float16.h"

#define CUEMU 1

// ---- qualifiers ----------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __maxnreg__(...)
#define __align__(n) alignas(n)
#define __shared__ static thread_local
#define __constant__
#define __managed__
#define __grid_constant__

// ---- vector and index types -------------------------------------------------------------
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(8) uint2 { unsigned int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) double2 { double x, y; };
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

// ---- runtime API types ------------------------------------------------------------------
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchFailure = 719,
  cudaErrorCooperativeLaunchTooLarge = 720,
};
using cudaError = cudaError_t;
struct CUstream_st;
using cudaStream_t = CUstream_st*;
// cudaLaunchKernelEx's configuration (driver_types.h layout; the emulator implements the
// programmatic stream serialization and cooperative attributes and rejects the others).
enum cudaLaunchAttributeID : int {
  cudaLaunchAttributeIgnore = 0,
  cudaLaunchAttributeCooperative = 2,
  cudaLaunchAttributeClusterDimension = 4,
  cudaLaunchAttributeProgrammaticStreamSerialization = 6,
  cudaLaunchAttributeProgrammaticEvent = 7,
};
union cudaLaunchAttributeValue {
  char pad[64];
  int cooperative;
  int programmaticStreamSerializationAllowed;
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  char pad[8 - sizeof(cudaLaunchAttributeID)];
  cudaLaunchAttributeValue val;
};
enum cudaFuncAttribute : int {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};
// cudaDeviceGetAttribute emulates the SM count (CUEMU_SMS, default 4: persistent loops loop) and
// cooperative launch support (always 1).
enum cudaDeviceAttr : int {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrCooperativeLaunch = 95,
};
enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

namespace cuemu {

// ---- execution state visible to kernel code -----------------------------------------------
struct ThreadState {
  uint3 idx;
  unsigned linear, lane, warp;
};
struct BlockInfo {
  uint3 idx;
  dim3 dim;
  dim3 grid;
};
extern thread_local ThreadState* tl_thread;
extern thread_local BlockInfo* tl_block;

// Collective kinds (lanes of one warp must agree on the kind and the mask).
enum Collective : unsigned {
  kSyncWarp = 1,
  kShflIdx,
  kShflUp,
  kShflDown,
  kShflBfly,
  kVote,
  kMatch,
  kReduce,
  kWmmaLoad,
  kWmmaStore,
  kWmmaMma,
  kLdmatrix,
  kMmaSync,
};

// Block-wide barrier (__syncthreads); `what` names it in a deadlock report.
void block_barrier(const char* what = "__syncthreads");
// Arrive at a warp collective: publishes this lane's value and waits for every lane of
// `mask`; returns the 32 published values (valid until this lane's next collective).
const uint64_t* warp_exchange(unsigned kind, unsigned mask, uint64_t value);
// Per-warp scratch a collective's participants may fill before and read after it (WMMA).
float* warp_scratch(size_t floats_per_buffer);
// The generation parity of the warp's next collective (selects the scratch half).
unsigned warp_parity();
[[noreturn]] void fault(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] void fiber_entry();
unsigned char* dynamic_shared_base();
// Whether [p, p + n) lies in the calling block's shared memory (dynamic, or a static __shared__).
bool is_shared_address(const void* p, size_t n);
size_t dynamic_shared_size();
unsigned exited_lanes_mask();  // lanes of the caller's warp that have exited
// cp.async of the calling thread (see the header comment): queue a 16-byte copy (src_bytes 16)
// or zero fill (0), with an L2 eviction priority (0 normal, 1 evict first: a hint the copy trace
// records, the bytes copied are the same); close the queued copies into a group; land every group but
// the newest n.
void async_copy_16(void* dst, const void* src, int src_bytes, int l2_priority = 0);
void async_commit_group();
void async_wait_group(int n);
// Programmatic dependent launch, in kernel code (see the header comment).
void grid_dependency_wait();
void grid_dependency_trigger();
// Work items (csrc/include/dspark_sgl/work_items.cuh; one thread of a block calls each): the next
// ticket of a zero-at-rest counter (the taker of total - 1 resets it; total must be the grid's
// block count; a block takes one ticket per counter), and a wait until (*counter & mask) >= target
// that lets the block's other threads run, faults on a deadlock (`what` names it) and returns the
// counter's word that ended it. See runtime.cpp for CUEMU_PARK_ITEM.
int32_t take_work_item(int32_t* counter, int32_t total);
int32_t wait_for_count(const int32_t* counter, int32_t target, int32_t mask, const char* what);
// Runs the queued launch (every runtime call that orders against kernels calls it).
void synchronize();

template <typename T>
inline T* dynamic_shared() {
  return reinterpret_cast<T*>(dynamic_shared_base());
}

inline unsigned lane_id() { return tl_thread->lane; }

inline uint64_t to_word(const void* p, size_t n) {
  uint64_t v = 0;
  std::memcpy(&v, p, n);
  return v;
}

// PTX shfl.sync source-lane rule: c = ((32 - width) << 8) | clamp (clamp 0 for .up).
inline unsigned shfl_source(unsigned kind, unsigned lane, unsigned b, int width, bool* in_range) {
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0)
    fault("shuffle width %d is not a power of two in [1, 32]", width);
  const unsigned segmask = static_cast<unsigned>(32 - width) & 0x1fu;
  const unsigned clamp = kind == kShflUp ? 0u : 0x1fu;
  const unsigned max_lane = (lane & segmask) | (clamp & ~segmask);
  const unsigned min_lane = lane & segmask;
  int j;
  bool ok;
  b &= 0x1fu;
  switch (kind) {
    case kShflUp:
      j = static_cast<int>(lane) - static_cast<int>(b);
      ok = j >= static_cast<int>(max_lane);
      break;
    case kShflDown:
      j = static_cast<int>(lane + b);
      ok = j <= static_cast<int>(max_lane);
      break;
    case kShflBfly:
      j = static_cast<int>(lane ^ b);
      ok = j <= static_cast<int>(max_lane);
      break;
    default:  // idx
      j = static_cast<int>(min_lane | (b & ~segmask));
      ok = j <= static_cast<int>(max_lane);
      break;
  }
  *in_range = ok;
  return ok ? static_cast<unsigned>(j) : lane;
}

template <typename T>
inline T shuffle(unsigned kind, unsigned mask, T var, unsigned b, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type > 8 bytes");
  const uint64_t* all = warp_exchange(kind, mask, to_word(&var, sizeof(T)));
  bool in_range;
  const unsigned src = shfl_source(kind, tl_thread->lane, b, width, &in_range);
  if (!((mask >> src) & 1u))
    fault("warp %u lane %u: shuffle reads lane %u, which is not in mask 0x%08x (undefined on a GPU)",
          tl_thread->warp, tl_thread->lane, src, mask);
  T r;
  std::memcpy(&r, &all[src], sizeof(T));
  return r;
}

// Launch configuration checks and the per-kernel attribute table.
void set_func_attribute(const void* func, int attr, int value, cudaError_t* err);
size_t max_dynamic_shared(const void* func);
void set_last_error(cudaError_t e, const std::string& msg);

// A launch: the kernel's parameters by value, run once per thread.
struct LaunchShape {
  dim3 grid, block;
  size_t smem;
  const void* func;
  // cudaLaunchAttributeCooperative: every block runs at once (its own OS thread); the grid must fit
  // in CUEMU_SMS x the occupancy that cudaOccupancyMaxActiveBlocksPerMultiprocessor reports.
  bool cooperative = false;
};
using BodyFn = void (*)(const void* launch);
// Queues a launch (runs the one queued before it); `arg` is owned by the launch (freed with
// `destroy`). Returns the configuration error, if any (also the last error).
cudaError_t enqueue_grid(const LaunchShape& shape, BodyFn body, void* arg, void (*destroy)(void*),
                         bool programmatic_dependent);

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  LaunchShape shape;
  bool programmatic_dependent = false;

  template <typename... A>
  cudaError_t operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    struct Bound {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> params;
    };
    Bound* bound = new Bound{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    return enqueue_grid(
        shape,
        [](const void* p) {
          const Bound& b = *static_cast<const Bound*>(p);
          std::apply(b.kernel, b.params);  // each thread gets its own copy of the parameters
        },
        bound, [](void* p) { delete static_cast<Bound*>(p); }, programmatic_dependent);
  }
};

template <typename... P>
inline Launch<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem = 0,
                           cudaStream_t = nullptr) {
  return Launch<P...>{kernel, LaunchShape{grid, block, smem, reinterpret_cast<const void*>(kernel)}};
}

}  // namespace cuemu

#define threadIdx (::cuemu::tl_thread->idx)
#define blockIdx (::cuemu::tl_block->idx)
// Variables, not macros: cudaLaunchConfig_t has members of these names (set at every block start).
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
#define warpSize 32

// ---- synchronisation ------------------------------------------------------------------------
inline void __syncthreads() { ::cuemu::block_barrier(); }
int __syncthreads_count(int predicate);
int __syncthreads_and(int predicate);
int __syncthreads_or(int predicate);
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::cuemu::warp_exchange(::cuemu::kSyncWarp, mask, 0); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }
[[noreturn]] inline void __trap() { ::cuemu::fault("__trap() called"); }
inline unsigned __activemask() { return 0xffffffffu & ~::cuemu::exited_lanes_mask(); }

// ---- warp shuffles and votes -----------------------------------------------------------------
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return ::cuemu::shuffle(::cuemu::kShflIdx, mask, var, static_cast<unsigned>(src_lane), width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::cuemu::shuffle(::cuemu::kShflUp, mask, var, delta, width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::cuemu::shuffle(::cuemu::kShflDown, mask, var, delta, width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return ::cuemu::shuffle(::cuemu::kShflBfly, mask, var, static_cast<unsigned>(lane_mask), width);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const uint64_t* all = ::cuemu::warp_exchange(::cuemu::kVote, mask, predicate != 0);
  unsigned r = 0;
  for (unsigned l = 0; l < 32; ++l)
    if (((mask >> l) & 1u) && all[l]) r |= 1u << l;
  return r;
}
inline int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) == mask; }
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
// The lanes of `mask` whose `value` equals the caller's (match.any.sync.b32 / .b64).
template <typename T>
inline unsigned __match_any_sync(unsigned mask, T value) {
  static_assert((sizeof(T) == 4 || sizeof(T) == 8) && std::is_integral<T>::value,
                "__match_any_sync takes a 32- or 64-bit integer");
  const uint64_t* all = ::cuemu::warp_exchange(::cuemu::kMatch, mask, ::cuemu::to_word(&value, sizeof(T)));
  const uint64_t mine = all[::cuemu::tl_thread->lane];
  unsigned r = 0;
  for (unsigned l = 0; l < 32; ++l)
    if (((mask >> l) & 1u) && all[l] == mine) r |= 1u << l;
  return r;
}

// ---- atomics (relaxed, as on the GPU; real atomics because blocks run in parallel) ----------
template <typename T>
inline T cuemu_atomic_rmw_float(T* p, T v, int op) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "");
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  U* q = reinterpret_cast<U*>(p);
  U old_bits = __atomic_load_n(q, __ATOMIC_RELAXED);
  for (;;) {
    T old;
    std::memcpy(&old, &old_bits, sizeof(T));
    T nv = op == 0 ? old + v : (op == 1 ? std::fmax(old, v) : std::fmin(old, v));
    U new_bits;
    std::memcpy(&new_bits, &nv, sizeof(T));
    if (__atomic_compare_exchange_n(q, &old_bits, new_bits, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return old;
  }
}
#define CUEMU_INT_ATOMICS(T)                                                                    \
  inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }          \
  inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }          \
  inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }          \
  inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }            \
  inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }          \
  inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }        \
  inline T atomicCAS(T* p, T cmp, T v) {                                                         \
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);          \
    return cmp;                                                                                  \
  }                                                                                              \
  inline T atomicMax(T* p, T v) {                                                                \
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                \
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
    }                                                                                            \
    return old;                                                                                  \
  }                                                                                              \
  inline T atomicMin(T* p, T v) {                                                                \
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                \
    while (old > v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
    }                                                                                            \
    return old;                                                                                  \
  }
CUEMU_INT_ATOMICS(int)
CUEMU_INT_ATOMICS(unsigned int)
CUEMU_INT_ATOMICS(unsigned long long)
CUEMU_INT_ATOMICS(long long)
#undef CUEMU_INT_ATOMICS
inline float atomicAdd(float* p, float v) { return cuemu_atomic_rmw_float(p, v, 0); }
inline double atomicAdd(double* p, double v) { return cuemu_atomic_rmw_float(p, v, 0); }
inline float atomicExch(float* p, float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  const uint32_t o = __atomic_exchange_n(reinterpret_cast<uint32_t*>(p), b, __ATOMIC_RELAXED);
  float r;
  std::memcpy(&r, &o, 4);
  return r;
}

// ---- arithmetic intrinsics ---------------------------------------------------------------
// The _rn forms are plain IEEE operations: build with -ffp-contract=off so that nothing else
// is fused either (nvcc fuses a * b + c into an FMA by default; see README: not emulated).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
// Fast-math intrinsics: the GPU's approximations are not reproduced (IEEE libm instead).
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

inline unsigned __float_as_uint(float f) { return cuemu::f32_bits(f); }
inline float __uint_as_float(unsigned u) { return cuemu::bits_f32(u); }
inline int __float_as_int(float f) { return static_cast<int>(cuemu::f32_bits(f)); }
inline float __int_as_float(int i) { return cuemu::bits_f32(static_cast<uint32_t>(i)); }
inline long long __double_as_longlong(double d) {
  long long r;
  std::memcpy(&r, &d, 8);
  return r;
}
inline double __longlong_as_double(long long v) {
  double r;
  std::memcpy(&r, &v, 8);
  return r;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
// __byte_perm(x, y, s) (PTX prmt): byte n of the result is byte s<4n+2:4n> of the eight bytes of
// {y, x} (x's bytes 0-3, y's 4-7), as the CUDA Math API documents it. A selector with a nibble's
// bit 3 set faults: the documentation leaves that bit out, and prmt's default mode then replicates
// the selected byte's sign instead of copying it. The upper 16 bits of s are documented unused.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  if (s & 0x8888u)
    ::cuemu::fault("__byte_perm: selector 0x%04x sets a nibble's bit 3 (sign replication)", s & 0xffffu);
  const unsigned long long bytes = (static_cast<unsigned long long>(y) << 32) | x;
  unsigned r = 0;
  for (int n = 0; n < 4; ++n) r |= static_cast<unsigned>((bytes >> (8 * ((s >> (4 * n)) & 7u))) & 0xffu) << (8 * n);
  return r;
}
inline unsigned umin(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned umax(unsigned a, unsigned b) { return a > b ? a : b; }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// CUDA's global min/max overloads: the usual arithmetic conversions, as math_functions.hpp.
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point<C>::value) return std::fmin(C(a), C(b));
  else return C(a) < C(b) ? C(a) : C(b);
}
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point<C>::value) return std::fmax(C(a), C(b));
  else return C(a) > C(b) ? C(a) : C(b);
}

inline long long clock64() { return static_cast<long long>(__builtin_ia32_rdtsc()); }


// ---- runtime API ------------------------------------------------------------------------
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);
inline cudaError_t cudaDeviceSynchronize() { return cudaPeekAtLastError(); }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaPeekAtLastError(); }
struct cudaLaunchConfig_t {
  dim3 gridDim;
  dim3 blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned int numAttrs;
};
// The variadic cudaLaunchKernelEx of cuda_runtime.h (the arguments coerced to the kernel's types).
template <typename... P, typename... A>
inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* config, void (*kernel)(P...), A&&... args) {
  bool dependent = false, cooperative = false;
  for (unsigned i = 0; i < config->numAttrs; ++i) {
    const cudaLaunchAttribute& a = config->attrs[i];
    if (a.id == cudaLaunchAttributeProgrammaticStreamSerialization) {
      dependent = a.val.programmaticStreamSerializationAllowed != 0;
    } else if (a.id == cudaLaunchAttributeCooperative) {
      cooperative = a.val.cooperative != 0;
    } else if (a.id != cudaLaunchAttributeIgnore) {
      ::cuemu::set_last_error(cudaErrorInvalidValue, "cudaLaunchKernelEx: launch attribute " +
                                                         std::to_string(static_cast<int>(a.id)) +
                                                         " is not emulated");
      return cudaErrorInvalidValue;
    }
  }
  const ::cuemu::Launch<P...> launch{
      kernel,
      ::cuemu::LaunchShape{config->gridDim, config->blockDim, config->dynamicSmemBytes,
                           reinterpret_cast<const void*>(kernel), cooperative},
      dependent};
  return launch(std::forward<A>(args)...);
}
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  cudaError_t err = cudaSuccess;
  ::cuemu::set_func_attribute(reinterpret_cast<const void*>(func), attr, value, &err);
  return err;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) {
  ::cuemu::synchronize();
  std::memset(p, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int v, size_t n) { return cudaMemsetAsync(p, v, n); }
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t = nullptr) {
  ::cuemu::synchronize();
  std::memmove(d, s, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind k) { return cudaMemcpyAsync(d, s, n, k); }
inline cudaError_t cudaMalloc(void** p, size_t n) {
  *p = std::aligned_alloc(256, (n + 255) / 256 * 256);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
inline cudaError_t cudaFree(void* p) {
  ::cuemu::synchronize();
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
namespace cuemu {
int blocks_per_sm(unsigned threads, size_t dynamic_smem);
}
// sm_90's limits: 2048 threads, 32 blocks and 228 KiB of shared memory a multiprocessor, 1 KiB of it
// reserved per block (static shared memory and registers are not known to the emulator: not counted).
template <typename F>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, F*, int block_size, size_t dynamic_smem) {
  if (block_size < 1 || block_size > 1024) return cudaErrorInvalidValue;
  *blocks = ::cuemu::blocks_per_sm(static_cast<unsigned>(block_size), dynamic_smem);
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
