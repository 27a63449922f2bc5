// schedule_prefix: confidence-scheduled verify lengths in one launch (one CTA of 512 threads).
//
// Mirrors dspark_sgl/scheduler.py for R * g <= 8192 candidates per segment (the current
// confidences; for schedule_async also the stale ones that fix the budget):
//   survival a[r, j] = prod_{i <= j} c[r, i]   (left to right in float64, rounded to float32)
//   candidates ordered by a descending, ties by (j, r): a stable LSD radix sort of 32-bit keys
//     (4 passes of 8 bits; a warp ranks its keys' digits with __match_any_sync) over candidates
//     laid out position-major, so stability is the (j, r) tie-break. No comparison network.
//   Theta[n] = (R + sum of the first n survivals in float64) * SPS(R + n), with SPS(R + n)
//     evaluated once for every n into shared memory
//   causal take   = length of the leading run of strict Theta gains (Algorithm 1)
//   budget K      = first argmax of Theta over the stale confidences (schedule_async)
//   lengths[r]    = how many of request r's candidates are among the first `take`.
// Both segments are sorted together (the segment as the key's top bit) when they fit one sort
// of 8192 keys, and one after the other otherwise. Float64 arithmetic uses the _rn intrinsics
// so nvcc never contracts it into an FMA.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "dspark_sgl/common.cuh"
#include "dspark_sgl/launch.h"

namespace dspark_sgl {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSortKeys = 8192;  // keys of one sort
constexpr int kSortThreads = 256;   // 8 warps, at most 32 keys each
constexpr int kDigitBits = 8;
constexpr int kDigits = 1 << kDigitBits;
constexpr int kPasses = 32 / kDigitBits;
constexpr int kCountersPerThread = 8;  // of one pass's 256 x warps counters, per sorting thread
constexpr int kWalkThreads = kThreads / 2;       // a Theta walk per half of the block
constexpr int kWalkWarps = kWalkThreads / 32;
constexpr int kWalkRanks = kMaxSortKeys / kWalkThreads;  // consecutive ranks per walking thread
constexpr int kSmemPoints = 512;                          // SPS points staged into shared memory

// Sort keys: the high word orders, the low word is the request index r. For a > 0 (the
// candidates that count) the order key is kInfBits - bits(a) (bits are order-preserving for
// non-negative floats), so larger survivals sort first; a <= 0 and NaN share kInvalidKey, after
// every valid candidate; slots past the last candidate hold kPadKey. The top bit is the segment.
constexpr uint32_t kInfBits = 0x7F800000u;
constexpr uint32_t kInvalidKey = 0x7FFFFFFFu;
constexpr uint32_t kPadKey = 0xFFFFFFFFu;
constexpr uint32_t kStaleSegmentBit = 0x80000000u;

// One sort of `keys` candidates: `items` keys per thread (1 to 32) on 8 warps (the fewest
// threads at the most keys each: a pass's scan costs the same per thread however many keys it
// holds), `warps * 32 * items` slots in all.
struct SortShape {
  int items;
  int warps;
  __host__ __device__ int slots() const { return warps * 32 * items; }
};

__host__ __device__ inline SortShape sort_shape(int keys) {
  SortShape s{1, 8};
  while (s.items * kSortThreads < keys) s.items <<= 1;
  while (s.slots() < keys) s.warps <<= 1;
  return s;
}

// The sorts of one launch: both segments in one sort when they fit, else stale, then current.
struct SortPlan {
  int count;      // candidates per segment (R * g)
  bool stale;     // a second segment (schedule_async)
  bool combined;  // both segments in one sort
  __host__ __device__ int units() const { return stale && !combined ? 2 : 1; }
  __host__ __device__ int unit_keys() const { return combined ? 2 * count : count; }
};

__host__ __device__ inline SortPlan sort_plan(int rows, int gamma, bool stale) {
  const int count = rows * gamma;
  return SortPlan{count, stale, stale && 2 * count <= kMaxSortKeys};
}

struct WalkResult {
  int valid;   // candidates with a > 0
  int stop;    // Algorithm 1: the leading run of strict Theta gains
  int argmax;  // first argmax of Theta[0..N]
};

struct Scratch {
  double warp_sum[kWarps];
  double warp_best[kWarps];
  int warp_argmax[kWarps];
  int warp_stop[kWarps];
  int warp_valid[kWarps];
  uint32_t warp_total[kWarps];
  WalkResult result[2];
};

// Shared memory, in bytes from the base (every part 16-byte aligned). lengths [R] int32 reuse
// the SPS table once the walks are done.
struct Layout {
  size_t keys, counters, sps, points, scratch, total;
};

__host__ __device__ inline size_t align16(size_t n) { return (n + 15) / 16 * 16; }

// Counters of one pass: (digit, warp) at digit * (warps + 1) + warp (see radix_sort).
__host__ __device__ inline int counter_buffer(int warps) { return kDigits * (warps + 1); }

__host__ __device__ inline Layout schedule_layout(int rows, int gamma, bool stale) {
  const SortPlan plan = sort_plan(rows, gamma, stale);
  const SortShape shape = sort_shape(plan.unit_keys());
  Layout l{};
  l.keys = 0;
  l.counters = align16(l.keys + sizeof(uint64_t) * shape.slots());
  l.sps = align16(l.counters + sizeof(uint32_t) * 2 * counter_buffer(shape.warps));
  l.points = align16(l.sps + sizeof(double) * (plan.count + 1));
  l.scratch = align16(l.points + sizeof(double) * 2 * kSmemPoints);
  l.total = align16(l.scratch + sizeof(Scratch));
  return l;
}

__device__ __forceinline__ uint32_t order_key(double product) {
  const float a = static_cast<float>(product);
  return a > 0.0f ? kInfBits - __float_as_uint(a) : kInvalidKey;
}

__device__ __forceinline__ double key_gain(uint64_t key) {
  const uint32_t order = static_cast<uint32_t>(key >> 32) & kInvalidKey;
  return order == kInvalidKey ? 0.0 : static_cast<double>(__uint_as_float(kInfBits - order));
}

__device__ __forceinline__ bool key_valid(uint64_t key) {
  return (static_cast<uint32_t>(key >> 32) & kInvalidKey) != kInvalidKey;
}

// Candidate (r, j) of segment s (first, then second) at slot s * R * g + j * R + r
// (position-major); the second segment's keys have kStaleSegmentBit. One thread per request
// multiplies its confidences left to right, exactly as prefix_survival. Slots
// [segments * R * g, slots) get kPadKey.
template <typename T>
__device__ void write_survival_keys(const T* first, const T* second, int segments, int rows, int gamma,
                                    uint64_t* keys, int slots) {
  const int count = rows * gamma;
  for (int task = threadIdx.x; task < segments * rows; task += blockDim.x) {
    const bool in_second = task >= rows;
    const int r = in_second ? task - rows : task;
    const T* c = (in_second ? second : first) + r * gamma;
    uint2* out = reinterpret_cast<uint2*>(keys + (in_second ? count : 0) + r);  // {low, high} words
    const uint32_t high = in_second ? kStaleSegmentBit : 0u;
    double product = 1.0;
#pragma unroll 4
    for (int j = 0; j < gamma; ++j, out += rows) {
      product = __dmul_rn(product, static_cast<double>(to_float(c[j])));
      *out = make_uint2(static_cast<uint32_t>(r), high | order_key(product));
    }
  }
  for (int i = segments * count + threadIdx.x; i < slots; i += blockDim.x)
    keys[i] = static_cast<uint64_t>(kPadKey) << 32;
}

// Stable LSD radix sort of the slots by their high word, ascending, in place. A warp owns
// kItems * 32 consecutive slots (item-major, lane-minor, so register order is slot order).
// Per pass: a warp counts each digit in its column of counters (digit-major rows of
// warps + 1 words: the odd stride puts one warp's distinct digits in distinct banks);
// __match_any_sync groups the lanes that share a digit, every lane of a group reads the counter,
// the lowest advances it. A key's rank among its warp's keys of that digit (< 512) rides in bits
// 16..31 of its low word (r < 8192 uses 0..12) until the scatter. An exclusive scan over (digit, warp) then turns counts into first slots,
// and every key goes to its slot. Counter buffers alternate; a pass clears the next pass's buffer
// while it scans. counters[0] must be zero on entry and is zero again on exit. warps is a power
// of two >= 8 (a thread scans 8 counters of one digit row). Ends with a barrier.
template <int kItems>
__device__ void radix_sort(uint64_t* keys, uint32_t* counters, int warps, uint32_t* warp_total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool sorting = warp < warps;
  const int stride = warps + 1;
  const uint32_t stride_bytes = stride * sizeof(uint32_t);
  const uint32_t lanes_below = (1u << lane) - 1u;
  // Thread t scans flat counters [8t, 8t + 8) of the digit-major order: one digit row.
  const int flat = threadIdx.x * kCountersPerThread;
  const int mine = (flat >> (__ffs(warps) - 1)) * stride + (flat & (warps - 1));
  uint64_t key[kItems];
  if (sorting) {
#pragma unroll
    for (int i = 0; i < kItems; ++i) key[i] = keys[(warp * kItems + i) * 32 + lane];
  }
#pragma unroll 1
  for (int pass = 0; pass < kPasses; ++pass) {
    uint32_t* count = counters + (pass & 1) * counter_buffer(warps);
    uint32_t* next = counters + ((pass + 1) & 1) * counter_buffer(warps);
    unsigned char* column = reinterpret_cast<unsigned char*>(count + warp);  // digit rows: stride_bytes
    const int shift = pass * kDigitBits;
    if (sorting) {
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const uint32_t digit = (static_cast<uint32_t>(key[i] >> 32) >> shift) & (kDigits - 1);
        const uint32_t peers = __match_any_sync(0xffffffffu, digit);
        const uint32_t below = peers & lanes_below;
        uint32_t* slot = reinterpret_cast<uint32_t*>(column + digit * stride_bytes);
        const uint32_t base = *slot;
        __syncwarp();
        if (below == 0) *slot = base + __popc(peers);
        __syncwarp();
        key[i] += static_cast<uint64_t>(base + __popc(below)) << 16;
      }
    }
    __syncthreads();
    uint32_t first[kCountersPerThread];
    uint32_t sum = 0, inclusive = 0;
    if (sorting) {
#pragma unroll
      for (int k = 0; k < kCountersPerThread; ++k) {
        first[k] = sum;
        sum += count[mine + k];
        next[mine + k] = 0u;
      }
      inclusive = sum;
#pragma unroll
      for (int offset = 1; offset < 32; offset <<= 1) {
        const uint32_t v = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += v;
      }
      if (lane == 31) warp_total[warp] = inclusive;
    }
    __syncthreads();
    if (sorting) {
      uint32_t before = lane < warp ? warp_total[lane] : 0u;
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) before += __shfl_xor_sync(0xffffffffu, before, offset);
      const uint32_t start = before + inclusive - sum;
#pragma unroll
      for (int k = 0; k < kCountersPerThread; ++k) count[mine + k] = first[k] + start;
    }
    __syncthreads();
    if (sorting) {
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const uint32_t digit = (static_cast<uint32_t>(key[i] >> 32) >> shift) & (kDigits - 1);
        const uint32_t low = static_cast<uint32_t>(key[i]);
        const uint32_t first_slot = *reinterpret_cast<const uint32_t*>(column + digit * stride_bytes);
        keys[first_slot + (low >> 16)] = key[i] & ~static_cast<uint64_t>(0xFFFF0000u);
      }
    }
    __syncthreads();
    if (sorting && pass + 1 < kPasses) {
#pragma unroll
      for (int i = 0; i < kItems; ++i) key[i] = keys[(warp * kItems + i) * 32 + lane];
    }
  }
}

// SpsTable.lookup at x = R + n for n = 0..count into sps[]: clamp to the table, bucketize
// (right=True) clamped to [1, points - 1], linear interpolation. A thread takes consecutive
// n and walks them interval by interval (table tokens are integers: interval hi holds the x
// below xs[hi]), so the inner loop is one division per entry.
__device__ void sps_table(const double* xs, const double* ys, int points, int rows, int count, double* sps) {
  const int entries = count + 1;
  const int per_thread = (entries + blockDim.x - 1) / blockDim.x;
  int n = min(static_cast<int>(threadIdx.x) * per_thread, entries);
  const int n1 = min(n + per_thread, entries);
  if (points == 1) {
    for (; n < n1; ++n) sps[n] = ys[0];
    return;
  }
  const double first = xs[0], last = xs[points - 1];
  // Table tokens are integers (SpsTable), so the clamp of R + n to [first, last] is an integer one.
  const int first_token = static_cast<int>(fmax(fmin(first, 1e9), -1e9));
  const int last_token = static_cast<int>(fmax(fmin(last, 1e9), -1e9));
  while (n < n1) {
    const double x0 = fmin(fmax(static_cast<double>(rows + n), first), last);
    int lo = 0, hi = points;  // first index with xs[i] > x0
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (xs[mid] <= x0) lo = mid + 1; else hi = mid;
    }
    hi = min(max(lo, 1), points - 1);
    const double x_lo = xs[hi - 1], width = __dsub_rn(xs[hi], xs[hi - 1]);
    const double y_lo = ys[hi - 1], rise = __dsub_rn(ys[hi], ys[hi - 1]);
    // Entries of this interval: x < xs[hi], or all the rest in the last one.
    const int end = hi == points - 1 ? n1 : min(n1, max(n + 1, static_cast<int>(xs[hi]) - rows));
    for (; n < end; ++n) {
      const double x = static_cast<double>(min(max(rows + n, first_token), last_token));
      sps[n] = __dadd_rn(y_lo, __dmul_rn(__ddiv_rn(__dsub_rn(x, x_lo), width), rise));
    }
  }
}

// Argmax merge: the larger Theta, ties to the smaller n.
__device__ __forceinline__ void merge_best(double& best, int& argmax, double other, int other_n) {
  if (other > best || (other == best && other_n < argmax)) {
    best = other;
    argmax = other_n;
  }
}

// Walks Theta along sorted segments: half h of the block walks keys[h * count, + count) when
// h < walks, each thread kWalkRanks consecutive ranks; half argmax_half (the stale segment's)
// finds the first argmax, the other Algorithm 1's stop. The float64 prefix sums are a per-thread
// run, a warp shuffle scan and the sums of the earlier warps of the half. Writes
// scratch->result[h]; ends with a barrier.
__device__ void theta_walks(const uint64_t* keys, int walks, int argmax_half, int count, int rows,
                            const double* sps, Scratch* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int half = threadIdx.x / kWalkThreads, t = threadIdx.x % kWalkThreads;
  const int first_warp = half * kWalkWarps;
  const uint64_t* seg = keys + (half < walks ? half * count : 0);
  const int n0 = half < walks ? min(t * kWalkRanks, count) : count;
  const int n1 = min(n0 + kWalkRanks, count);

  double run = 0.0;
  int valid = 0;
  for (int n = n0; n < n1; ++n) {
    const uint64_t key = seg[n];
    run = __dadd_rn(run, key_gain(key));
    valid += key_valid(key);
  }
  double inclusive = run;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const double v = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive = __dadd_rn(inclusive, v);
  }
  double exclusive = __shfl_up_sync(0xffffffffu, inclusive, 1);
  if (lane == 0) exclusive = 0.0;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) valid += __shfl_xor_sync(0xffffffffu, valid, offset);
  if (lane == 31) scratch->warp_sum[warp] = inclusive;
  if (lane == 0) scratch->warp_valid[warp] = valid;
  __syncthreads();
  // Sum of the earlier warps of this half (lanes < kWalkWarps hold one warp each), in every lane.
  double before = lane < warp - first_warp ? scratch->warp_sum[first_warp + lane] : 0.0;
  int half_valid = lane < kWalkWarps ? scratch->warp_valid[first_warp + lane] : 0;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    before = __dadd_rn(before, __shfl_xor_sync(0xffffffffu, before, offset));
    half_valid += __shfl_xor_sync(0xffffffffu, half_valid, offset);
  }
  double running = __dadd_rn(before, exclusive);  // sum of the ranks before n0

  // Valid candidates are the first half_valid ranks; past them Theta is -inf, which neither
  // improves (Algorithm 1 stops at half_valid at the latest) nor wins the argmax.
  const double r = static_cast<double>(rows);
  const int valid_end = min(n1, half_valid);
  double theta_prev = __dmul_rn(__dadd_rn(r, running), sps[n0]);
  int stop = INT_MAX;
  double best = -INFINITY;
  int argmax = INT_MAX;
  if (t == 0 && half < walks) {
    best = theta_prev;
    argmax = 0;
  }
  if (half == argmax_half) {
#pragma unroll 4
    for (int i = 0; i < kWalkRanks; ++i) {
      const int n = n0 + i;
      if (n >= valid_end) break;
      running = __dadd_rn(running, key_gain(seg[n]));
      const double theta = __dmul_rn(__dadd_rn(r, running), sps[n + 1]);
      if (theta > best) {
        best = theta;
        argmax = n + 1;
      }
    }
  } else {
#pragma unroll 4
    for (int i = 0; i < kWalkRanks; ++i) {
      const int n = n0 + i;
      if (n >= valid_end) break;
      running = __dadd_rn(running, key_gain(seg[n]));
      const double theta = __dmul_rn(__dadd_rn(r, running), sps[n + 1]);
      if (!(theta > theta_prev)) {
        stop = n;
        break;
      }
      theta_prev = theta;
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    stop = min(stop, __shfl_xor_sync(0xffffffffu, stop, offset));
    merge_best(best, argmax, __shfl_xor_sync(0xffffffffu, best, offset),
               __shfl_xor_sync(0xffffffffu, argmax, offset));
  }
  if (lane == 0) {
    scratch->warp_stop[warp] = stop;
    scratch->warp_best[warp] = best;
    scratch->warp_argmax[warp] = argmax;
  }
  __syncthreads();
  if (warp == first_warp) {
    stop = lane < kWalkWarps ? scratch->warp_stop[first_warp + lane] : INT_MAX;
    best = lane < kWalkWarps ? scratch->warp_best[first_warp + lane] : -INFINITY;
    argmax = lane < kWalkWarps ? scratch->warp_argmax[first_warp + lane] : INT_MAX;
#pragma unroll
    for (int offset = kWalkWarps / 2; offset > 0; offset >>= 1) {
      stop = min(stop, __shfl_xor_sync(0xffffffffu, stop, offset));
      merge_best(best, argmax, __shfl_xor_sync(0xffffffffu, best, offset),
                 __shfl_xor_sync(0xffffffffu, argmax, offset));
    }
    if (lane == 0) scratch->result[half] = WalkResult{half_valid, min(stop, half_valid), argmax};
  }
  __syncthreads();
}

template <typename T, int kItems>
__global__ void __launch_bounds__(kThreads, 1)
    schedule_kernel(SchedulePrefixArgs args, const T* confidence, const T* budget_confidence) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int rows = args.rows, gamma = args.gamma;
  const bool stale = budget_confidence != nullptr;
  const SortPlan plan = sort_plan(rows, gamma, stale);
  const SortShape shape = sort_shape(plan.unit_keys());
  const Layout layout = schedule_layout(rows, gamma, stale);
  uint64_t* keys = reinterpret_cast<uint64_t*>(smem + layout.keys);
  uint32_t* counters = reinterpret_cast<uint32_t*>(smem + layout.counters);
  double* sps = reinterpret_cast<double*>(smem + layout.sps);
  int* lengths = reinterpret_cast<int*>(sps);  // once the walks are done: R <= R * g + 1 entries
  Scratch* scratch = reinterpret_cast<Scratch*>(smem + layout.scratch);

  const bool staged = args.sps_points <= kSmemPoints;
  double* xs = staged ? reinterpret_cast<double*>(smem + layout.points) : nullptr;
  double* ys = staged ? xs + kSmemPoints : nullptr;
  for (int i = threadIdx.x; i < counter_buffer(shape.warps); i += blockDim.x) counters[i] = 0u;
  if (staged) {
    for (int i = threadIdx.x; i < args.sps_points; i += blockDim.x) {
      xs[i] = args.sps_tokens[i];
      ys[i] = args.sps_speeds[i];
    }
  }
  __syncthreads();
  sps_table(staged ? xs : args.sps_tokens, staged ? ys : args.sps_speeds, args.sps_points, rows, plan.count,
            sps);

  int64_t budget = INT64_MAX;
  if (args.budget_source == kBudgetGiven) {
    budget = args.budget_ptr != nullptr ? *args.budget_ptr : args.budget_value;
    budget = budget < 0 ? 0 : budget;
  }
  WalkResult current{};
#pragma unroll 1
  for (int unit = 0; unit < plan.units(); ++unit) {
    // Combined: current then stale in one sort. Apart: stale (unit 0), then current (unit 1).
    const bool stale_alone = plan.units() == 2 && unit == 0;
    const int segments = plan.combined ? 2 : 1;
    write_survival_keys(stale_alone ? budget_confidence : confidence, budget_confidence, segments, rows, gamma,
                        keys, shape.slots());
    __syncthreads();
    radix_sort<kItems>(keys, counters, shape.warps, scratch->warp_total);
    theta_walks(keys, segments, stale_alone ? 0 : (plan.combined ? 1 : -1), plan.count, rows, sps, scratch);
    if (stale_alone) {
      budget = scratch->result[0].argmax;
    } else {
      current = scratch->result[0];
      if (plan.combined) budget = scratch->result[1].argmax;
    }
  }

  int64_t take = current.valid;
  take = take < budget ? take : budget;
  if (args.causal && current.stop < take) take = current.stop;
  for (int r = threadIdx.x; r < rows; r += blockDim.x) lengths[r] = 0;
  __syncthreads();
  for (int n = threadIdx.x; n < take; n += blockDim.x) atomicAdd(&lengths[static_cast<uint32_t>(keys[n])], 1);
  __syncthreads();
  for (int r = threadIdx.x; r < rows; r += blockDim.x) args.lengths[r] = lengths[r];
  if (threadIdx.x == 0 && args.take_out != nullptr) *args.take_out = take;
}

template <typename T>
cudaError_t launch_items(int items, const SchedulePrefixArgs& args, const T* confidence,
                         const T* budget_confidence, size_t smem, cudaStream_t stream) {
  auto run = [&](auto kernel) {
    const cudaError_t attr =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (attr != cudaSuccess) return attr;
    kernel<<<1, kThreads, smem, stream>>>(args, confidence, budget_confidence);
    return cudaGetLastError();
  };
  switch (items) {
    case 1:
      return run(schedule_kernel<T, 1>);
    case 2:
      return run(schedule_kernel<T, 2>);
    case 4:
      return run(schedule_kernel<T, 4>);
    case 8:
      return run(schedule_kernel<T, 8>);
    case 16:
      return run(schedule_kernel<T, 16>);
    case 32:
      return run(schedule_kernel<T, 32>);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

size_t schedule_prefix_smem_bytes(int64_t rows, int64_t gamma, bool two_segments) {
  return schedule_layout(static_cast<int>(rows), static_cast<int>(gamma), two_segments).total;
}

std::string launch_schedule_prefix(const SchedulePrefixArgs& args, const void* confidence,
                                   const void* budget_confidence, int dtype, uintptr_t cuda_stream) {
  if (args.rows < 1 || args.gamma < 1) return "schedule_prefix: rows and gamma must be >= 1";
  if (int64_t(args.rows) * args.gamma > kScheduleMaxCandidates)
    return "schedule_prefix: rows * gamma must be <= 8192";
  if (args.sps_points < 1) return "schedule_prefix: the SPS table is empty";
  if (dtype < 0 || dtype > 2) return "schedule_prefix: unsupported confidence dtype code";
  const bool stale = budget_confidence != nullptr;
  const size_t smem = schedule_prefix_smem_bytes(args.rows, args.gamma, stale);
  const int items = sort_shape(sort_plan(args.rows, args.gamma, stale).unit_keys()).items;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(cuda_stream);
  const cudaError_t err = with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_items<T>(items, args, static_cast<const T*>(confidence),
                           static_cast<const T*>(budget_confidence), smem, stream);
  });
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace dspark_sgl
