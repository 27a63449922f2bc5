// schedule_prefix: confidence-scheduled verify lengths in one launch (one CTA).
//
// Mirrors dspark_sgl/scheduler.py for R * g <= 8192 candidates:
//   survival a[r, j] = prod_{i <= j} c[r, i]   (left to right in float64, rounded to float32)
//   candidates sorted by a descending, ties by (j, r)   (bitonic sort of unique 64-bit keys)
//   Theta[n] = (R + sum of the first n survivals in float64) * SPS(R + n)
//   causal take   = length of the leading run of strict Theta gains (Algorithm 1)
//   budget K      = first argmax of Theta over the stale confidences (schedule_async)
//   lengths[r]    = how many of request r's candidates are among the first `take`.
// Float64 arithmetic uses the _rn intrinsics so nvcc never contracts it into an FMA.
#include <cuda_runtime.h>

#include <cstdint>

#include "dspark_sgl/common.cuh"
#include "dspark_sgl/launch.h"

namespace dspark_sgl {
namespace {

constexpr int kScheduleThreads = 1024;
constexpr uint64_t kPadKey = ~uint64_t(0);

template <typename T>
__device__ void load_survival_keys(const T* confidence, int rows, int gamma, uint64_t* keys) {
  // One thread per request: sequential products, exactly as prefix_survival.
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    double product = 1.0;
    for (int j = 0; j < gamma; ++j) {
      product = __dmul_rn(product, static_cast<double>(to_float(confidence[r * gamma + j])));
      const float a = static_cast<float>(product);
      // a > 0 maps to its bits (order-preserving for non-negative floats); 0 and -0 to 0.
      const uint32_t bits = a > 0.0f ? __float_as_uint(a) : 0u;
      const uint32_t candidate = static_cast<uint32_t>(j * rows + r);  // position-major
      keys[j * rows + r] = (static_cast<uint64_t>(~bits) << 32) | candidate;
    }
  }
}

// Sorts `segments` independent runs of `padded` keys ascending (padded is a power of two).
// Thread t handles pairs t, t + blockDim, ...; for a distance j <= 32 the 32 pairs of a warp
// lie in one block of 64 keys that only this warp touches, so those stages need only a
// warp barrier (most of the stages), the others a block barrier.
__device__ void bitonic_sort(uint64_t* keys, int padded, int segments) {
  const int pairs = padded * segments / 2;
  for (int k = 2; k <= padded; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int t = threadIdx.x; t < pairs; t += blockDim.x) {
        const int i = 2 * j * (t / j) + (t % j);
        const bool up = ((i & (padded - 1)) & k) == 0;
        const uint64_t a = keys[i], b = keys[i + j];
        if ((a > b) == up) {
          keys[i] = b;
          keys[i + j] = a;
        }
      }
      const int next_j = j > 1 ? j >> 1 : k;  // the first distance of the next merge is k
      if (j <= 32 && next_j <= 32) {
        __syncwarp();
      } else {
        __syncthreads();
      }
    }
  }
  __syncthreads();
}

__device__ __forceinline__ double sps_lookup(const double* xs, const double* ys, int points, double x) {
  // SpsTable.lookup: clamp, bucketize(right=True) clamped to [1, n-1], linear interpolation.
  x = fmin(fmax(x, xs[0]), xs[points - 1]);
  if (points == 1) return ys[0];
  int lo = 0, hi = points;  // first index with xs[i] > x
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (xs[mid] <= x) lo = mid + 1; else hi = mid;
  }
  hi = min(max(lo, 1), points - 1);
  lo = hi - 1;
  const double frac = __ddiv_rn(__dsub_rn(x, xs[lo]), __dsub_rn(xs[hi], xs[lo]));
  return __dadd_rn(ys[lo], __dmul_rn(frac, __dsub_rn(ys[hi], ys[lo])));
}

__device__ __forceinline__ double key_gain(uint64_t key) {
  const uint32_t bits = ~static_cast<uint32_t>(key >> 32);
  return key == kPadKey || bits == 0u ? 0.0 : static_cast<double>(__uint_as_float(bits));
}

__device__ __forceinline__ bool key_valid(uint64_t key) {
  return key != kPadKey && static_cast<uint32_t>(key >> 32) != 0xFFFFFFFFu;
}

struct PathResult {
  int valid;        // candidates with a > 0
  int causal_take;  // leading run of strict Theta gains
  int argmax;       // first argmax of Theta[0..N]
};

// Walks Theta along one sorted segment of `count` real candidates. Every thread owns a
// contiguous chunk of ranks; the float64 prefix sums are a block-wide exclusive scan.
__device__ PathResult theta_path(const uint64_t* keys, int count, int rows, const double* xs,
                                 const double* ys, int points, double* scratch) {
  const int tid = threadIdx.x;
  const int chunk = static_cast<int>(ceil_div(count, blockDim.x));
  const int n0 = min(tid * chunk, count), n1 = min(n0 + chunk, count);
  double local = 0.0;
  int local_valid = 0;
  for (int n = n0; n < n1; ++n) {
    local = __dadd_rn(local, key_gain(keys[n]));
    local_valid += key_valid(keys[n]);
  }
  // Exclusive scan of the per-thread sums (Hillis-Steele over shared memory).
  double* sums = scratch;                         // [blockDim]
  int* counts = reinterpret_cast<int*>(sums + blockDim.x);  // [blockDim]
  sums[tid] = local;
  counts[tid] = local_valid;
  __syncthreads();
  for (int step = 1; step < blockDim.x; step <<= 1) {
    const double add = tid >= step ? sums[tid - step] : 0.0;
    const int add_count = tid >= step ? counts[tid - step] : 0;
    __syncthreads();
    sums[tid] = __dadd_rn(sums[tid], add);
    counts[tid] += add_count;
    __syncthreads();
  }
  double running = tid > 0 ? sums[tid - 1] : 0.0;  // sum of the ranks before n0
  const int total_valid = counts[blockDim.x - 1];
  __syncthreads();

  int stop = INT32_MAX;
  double best = -INFINITY;
  int best_n = INT32_MAX;
  const double r = static_cast<double>(rows);
  double theta_prev = __dmul_rn(__dadd_rn(r, running), sps_lookup(xs, ys, points, r + n0));
  if (tid == 0) {
    best = theta_prev;
    best_n = 0;
  }
  for (int n = n0; n < n1; ++n) {
    double theta_next = -INFINITY;
    if (key_valid(keys[n])) {
      running = __dadd_rn(running, key_gain(keys[n]));
      theta_next = __dmul_rn(__dadd_rn(r, running), sps_lookup(xs, ys, points, r + n + 1));
    }
    if (!(theta_next > theta_prev) && stop == INT32_MAX) stop = n;
    if (theta_next > best) {
      best = theta_next;
      best_n = n + 1;
    }
    theta_prev = theta_next;
  }
  // Block reductions: min stop; (max Theta, min index).
  int* stops = reinterpret_cast<int*>(scratch);
  double* bests = scratch + blockDim.x;  // after the int region (blockDim doubles >= ints)
  int* best_ns = reinterpret_cast<int*>(bests + blockDim.x);
  stops[tid] = stop;
  bests[tid] = best;
  best_ns[tid] = best_n;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half >>= 1) {
    if (tid < half) {
      stops[tid] = min(stops[tid], stops[tid + half]);
      const double ob = bests[tid + half];
      const int on = best_ns[tid + half];
      if (ob > bests[tid] || (ob == bests[tid] && on < best_ns[tid])) {
        bests[tid] = ob;
        best_ns[tid] = on;
      }
    }
    __syncthreads();
  }
  PathResult result{total_valid, min(stops[0], count), best_ns[0]};
  __syncthreads();
  return result;
}

template <typename T>
__global__ void __launch_bounds__(kScheduleThreads)
    schedule_kernel(SchedulePrefixArgs args, const T* confidence, const T* budget_confidence) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int rows = args.rows, gamma = args.gamma, count = rows * gamma;
  int padded = 1;
  while (padded < count) padded <<= 1;
  const int segments = budget_confidence != nullptr ? 2 : 1;
  uint64_t* keys = reinterpret_cast<uint64_t*>(smem);
  double* scratch = reinterpret_cast<double*>(keys + padded * segments);  // 3 * blockDim
  int* lengths = reinterpret_cast<int*>(scratch + 3 * blockDim.x);      // [rows]

  for (int i = threadIdx.x; i < padded * segments; i += blockDim.x) keys[i] = kPadKey;
  for (int i = threadIdx.x; i < rows; i += blockDim.x) lengths[i] = 0;
  __syncthreads();
  load_survival_keys(confidence, rows, gamma, keys);
  if (budget_confidence != nullptr) load_survival_keys(budget_confidence, rows, gamma, keys + padded);
  __syncthreads();
  bitonic_sort(keys, padded, segments);

  const PathResult current =
      theta_path(keys, count, rows, args.sps_tokens, args.sps_speeds, args.sps_points, scratch);
  int64_t take = current.valid;
  int64_t budget = INT64_MAX;
  if (budget_confidence != nullptr) {
    budget = theta_path(keys + padded, count, rows, args.sps_tokens, args.sps_speeds,
                        args.sps_points, scratch)
                 .argmax;
  } else if (args.budget_source == kBudgetGiven) {
    budget = args.budget_ptr != nullptr ? *args.budget_ptr : args.budget_value;
    budget = budget < 0 ? 0 : budget;
  }
  take = take < budget ? take : budget;
  if (args.causal && current.causal_take < take) take = current.causal_take;

  for (int n = threadIdx.x; n < take; n += blockDim.x) {
    const uint32_t candidate = static_cast<uint32_t>(keys[n]);
    atomicAdd(&lengths[candidate % rows], 1);
  }
  __syncthreads();
  for (int r = threadIdx.x; r < rows; r += blockDim.x) args.lengths[r] = lengths[r];
  if (threadIdx.x == 0 && args.take_out != nullptr) *args.take_out = take;
}

}  // namespace

size_t schedule_prefix_smem_bytes(int64_t rows, int64_t gamma, bool two_segments) {
  int64_t padded = 1;
  while (padded < rows * gamma) padded <<= 1;
  return static_cast<size_t>(padded * (two_segments ? 2 : 1) * 8 + 3 * kScheduleThreads * 8 +
                             rows * 4);
}

std::string launch_schedule_prefix(const SchedulePrefixArgs& args, const void* confidence,
                                   const void* budget_confidence, int dtype, uintptr_t cuda_stream) {
  if (args.rows < 1 || args.gamma < 1) return "schedule_prefix: rows and gamma must be >= 1";
  if (int64_t(args.rows) * args.gamma > kScheduleMaxCandidates)
    return "schedule_prefix: rows * gamma must be <= 8192";
  if (args.sps_points < 1) return "schedule_prefix: the SPS table is empty";
  if (dtype < 0 || dtype > 2) return "schedule_prefix: unsupported confidence dtype code";
  const size_t smem = schedule_prefix_smem_bytes(args.rows, args.gamma, budget_confidence != nullptr);
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(cuda_stream);
  const cudaError_t err = with_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const cudaError_t attr = cudaFuncSetAttribute(
        schedule_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (attr != cudaSuccess) return attr;
    schedule_kernel<T><<<1, kScheduleThreads, smem, stream>>>(
        args, static_cast<const T*>(confidence), static_cast<const T*>(budget_confidence));
    return cudaGetLastError();
  });
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace dspark_sgl
