// markov_block: the fused sequential stage of a DSpark draft block (vanilla Markov head).
//
// For k = 0..g-1, one launch per position: markov_tile_kernel, one CTA per vocabulary tile, all
// rows in chunks. Per chunk: bias = W1[prev] @ W2_tile^T (W2 tile staged once for every row;
// float32 accumulate, rounded to the weight dtype as SGLang's Linear output), logits =
// softcap(U_k) + bias (rounded to the logits dtype), then per (row, tile) the softmax
// statistics of logits / T and the grouped sampler's partial (dspark_sgl.markov, the design in
// GROUPED_SAMPLER.md): every group of 16 global columns j gets the key K_j = LSE_j + G_j from one
// Gumbel draw, and the tile's best group draws its token from its running sum with a second
// uniform. The last CTA to finish a chunk (a ticket counter in the workspace) merges the tiles'
// partials of the chunk's rows (largest key, ties to the lowest column, NaN above all) and writes
// x_k, its logit and key, the max and the sum. The sampled x_k is the previous token of position
// k + 1. Then one launch computes the confidence logits sigmoid((w . [h_k; W1[x_{k-1}]] + b) / T_k)
// for every (row, k). The full [R, g, V] logits are written only when the caller asks for them.
// An int8 W2 with per-row scales (w2_scale given; W1 16-bit) is staged as int8 and widened in shared
// memory to the MMA's 16-bit operand, its scales applied to the float32 dot products (markov_int8.cuh).
//
// Programmatic dependent launch (dependent_launch.cuh): positions 1..g-1 are programmatic
// dependents of the position before, and the confidence launch of the last position. A tile CTA
// resolves its Philox key and stages (an int8 W2: stages and widens) its W2 tile, none of which
// depends on an earlier position, then waits for the previous position's grid; every read of a
// previous token (and of the anchor), of the workspace, and every write comes after the wait.
// Each CTA triggers its dependents right after its wait. The next position launches only once every
// CTA of this one has triggered or exited, so its CTAs take SM slots and shared memory only after
// all of this position's CTAs are resident (none of them is ever kept waiting for a slot); they
// fill the slots that this position's last wave frees and stage their W2 tiles while it drains
// and merges. Triggering after the wait (not at entry) keeps the chain one position deep: position
// k + 2 cannot start before k has completed, so no more than one position's CTAs ever sit parked
// at a wait, and the code before a wait sees everything written before its primary started.
// Position 0 is launched normally: it follows the memset of the tickets, and a programmatic edge
// exists only between two kernels. The chain is graph-capturable (programmatic edges in CUDA
// graphs, CUDA 12.3+). Each position's CTAs all wait, so a position completes only after the one
// before it: after the confidence kernel's wait, every position's tokens are final.
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <type_traits>

#include "dspark_sgl/common.cuh"
#include "dspark_sgl/cooperative_launch.cuh"
#include "dspark_sgl/dependent_launch.cuh"
#include "dspark_sgl/launch.h"
#include "dspark_sgl/markov_int8.cuh"
#include "dspark_sgl/markov_tile.cuh"
#include "dspark_sgl/work_items.cuh"

namespace dspark_sgl {
namespace {

// One (row, tile) result: the drawn token with its group key and logit, and the statistics of
// the tile's logits, max = the raw logit max, sum = sum of exp((logit - max) / T).
struct MarkovPartial {
  float score;
  int32_t index;
  float logit;
  float max;
  float sum;
};

// The workspace of one block: partials [rows, tiles x segments], then (zeroed by the launcher before the
// first position) a ticket per row chunk (reset by the merging CTA after each use) and the count of
// merged chunks, all positions together (what the persistent kernel's positions wait for).
struct MarkovWorkspace {
  MarkovPartial* partials;
  unsigned* tickets;
  int32_t* merged;
};

constexpr int kGroupColumns = 16;                  // a sampler group: global columns [16 j, 16 j + 16)
constexpr int kThreadColumns = 2 * kGroupColumns;  // an epilogue thread's columns: two whole groups
constexpr float kLog2e = 1.44269504f, kLn2 = 0.693147181f;

// The Philox key of one position's draws.
struct DrawKey {
  uint64_t seed, offset;
  uint32_t position;
};

// The same, ready to draw: the round keys and the counter words every block of a position shares
// (philox_block's layout).
struct NoiseKey {
  PhiloxRoundKeys round_keys;
  uint32_t counter_z, counter_w;
  __device__ explicit NoiseKey(DrawKey key)
      : round_keys(philox_round_keys(key.seed)),
        counter_z((key.position & 0xFFu) | (kStreamDraft << 8) |
                  (static_cast<uint32_t>((key.offset >> 32) & 0xFFFFu) << 16)),
        counter_w(static_cast<uint32_t>(key.offset)) {}
  __device__ __forceinline__ Philox4x32 block(uint64_t row, uint32_t block) const {
    return philox4x32_10(Philox4x32{block, static_cast<uint32_t>(row), counter_z, counter_w}, round_keys);
  }
};

// The DRAFT-stream words of groups j and j + 1: group j's (u_G, u_C) are the uniforms of index 2 j
// and 2 j + 1, i.e. Philox block j / 2, words 2 (j % 2) and 2 (j % 2) + 1.
struct GroupNoise {
  uint32_t gumbel0, choice0, gumbel1, choice1;
};

// Philox block `block` of a row's draws, out of line: the second block of a thread whose groups
// straddle two (only when vocab_start % 32 == 16).
__device__ __noinline__ Philox4x32 next_noise_block(DrawKey key, uint64_t row, uint32_t block) {
  return philox_block(key.seed, key.offset, kStreamDraft, row, key.position, block);
}

// The fast path's: the first block with precomputed round keys.
__device__ __forceinline__ GroupNoise group_noise(const NoiseKey& noise, DrawKey key, uint64_t row, uint32_t j) {
  const Philox4x32 a = noise.block(row, j / 2);
  if ((j & 1u) == 0) return GroupNoise{a.x, a.y, a.z, a.w};
  const Philox4x32 b = next_noise_block(key, row, j / 2 + 1);
  return GroupNoise{a.z, a.w, b.x, b.y};
}

__device__ __forceinline__ GroupNoise group_noise(DrawKey key, uint64_t row, uint32_t j) {
  const Philox4x32 a = philox_block(key.seed, key.offset, kStreamDraft, row, key.position, j / 2);
  if ((j & 1u) == 0) return GroupNoise{a.x, a.y, a.z, a.w};
  const Philox4x32 b = next_noise_block(key, row, j / 2 + 1);
  return GroupNoise{a.z, a.w, b.x, b.y};
}

// The Gumbel noise of a group key: -ln(-logf(u)) with the outer log as MUFU.LG2 (its absolute error,
// about 2^-22 in log2, is below 2e-7 in G; the inner logf stays IEEE: near u = 1, -log(u) is
// tiny and needs its relative accuracy). The reference computes both logs in float32; the keys'
// contract allows 1e-4 relative.
__device__ __forceinline__ float group_gumbel(uint32_t bits) {
  return __fmul_rn(-kLn2, fast_log2(-logf(bits_to_unit_float(bits))));
}

// The largest float below s > 0 (s = 0 gives NaN, which fminf ignores): the within-group
// threshold is kept below the group's total, so a running sum above it always exists. t = s
// happens only by rounding (u_C < 1), a near-tie of the threshold with the last boundary.
__device__ __forceinline__ float below(float s) { return __uint_as_float(__float_as_uint(s) - 1u); }

// The first v with run[v] > t in a nondecreasing run[0..16) (15 if none: t >= run[15] only in an
// empty group, whose key never wins): a binary search (lo += step while run[lo + step - 1] <= t)
// whose probes are selects, no local memory. Returns v's bits (v = 8 b8 + 4 b4 + 2 b2 + b1).
struct SearchBits {
  bool b8, b4, b2, b1;
  __device__ __forceinline__ int value() const { return 8 * b8 + 4 * b4 + 2 * b2 + b1; }
};
__device__ __forceinline__ SearchBits search_running_sum(const float (&run)[kGroupColumns], float t) {
  const bool b8 = run[7] <= t;
  const bool b4 = (b8 ? run[11] : run[3]) <= t;
  const float p2[4] = {run[1], run[5], run[9], run[13]};
  const bool b2 = (b8 ? (b4 ? p2[3] : p2[2]) : (b4 ? p2[1] : p2[0])) <= t;
  const float p1[8] = {run[0], run[2], run[4], run[6], run[8], run[10], run[12], run[14]};
  const float q0 = b2 ? p1[1] : p1[0], q1 = b2 ? p1[3] : p1[2], q2 = b2 ? p1[5] : p1[4], q3 = b2 ? p1[7] : p1[6];
  const bool b1 = (b8 ? (b4 ? q3 : q2) : (b4 ? q1 : q0)) <= t;
  return SearchBits{b8, b4, b2, b1};
}

// The search's v, and val = vals[v] picked by selects on the same probe results (a register array
// indexed at run time would live in local memory).
__device__ __forceinline__ int first_above(const float (&run)[kGroupColumns], float t,
                                           const float (&vals)[kGroupColumns], float& val) {
  const SearchBits bits = search_running_sum(run, t);
  float h[8], q[4];
#pragma unroll
  for (int n = 0; n < 8; ++n) h[n] = bits.b8 ? vals[8 + n] : vals[n];
#pragma unroll
  for (int n = 0; n < 4; ++n) q[n] = bits.b4 ? h[4 + n] : h[n];
  const float d0 = bits.b2 ? q[2] : q[0], d1 = bits.b2 ? q[3] : q[1];
  val = bits.b1 ? d1 : d0;
  return bits.value();
}

// The float32 path's epilogue geometry (bias tile in shared memory): a thread owns kThreadColumns
// consecutive columns of one row, so kRowThreads = kTileV / 32 threads share a row. A row's threads
// are lanes l, l + 8 (, l + 16, l + 24): the 8 lanes of a quarter warp hold 8 consecutive rows of
// the same column segment, and with the bias rows kTileV + 4 floats apart (kBiasLd / 4 = 1 mod 8)
// their float4 reads fall on 8 distinct 16-byte bank groups: conflict-free. Row reductions are
// shuffles across lanes 8 apart. (16-bit weights: the MMA's accumulators, 4 lanes 1 apart a row.)
template <int kTileV>
struct EpilogueShape {
  static constexpr int kRowThreads = kTileV / kThreadColumns;
  static constexpr int kRowsPerWarp = 32 / kRowThreads;
  static constexpr int kBiasLd = kTileV + 4;
  static_assert(kTileV % kThreadColumns == 0 && (kBiasLd / 4) % 8 == 1, "conflict-free bias rows");
};

// A row's best partial across its kRowThreads threads, lanes kLaneStep apart (argmax_beats' order),
// reduced on argmax_key's integer keys: the key is converted once per thread, not at every step (the
// inverse gives the score back; a NaN comes back as a NaN, -0 as +0).
template <int kLaneStep, int kRowThreads>
__device__ __forceinline__ ArgMaxLogit row_best(ArgMaxLogit a) {
  int32_t key = argmax_key(a.score), index = a.index;
  float logit = a.logit;
#pragma unroll
  for (int delta = kLaneStep; delta < kLaneStep * kRowThreads; delta *= 2) {
    const int32_t k = __shfl_xor_sync(0xffffffffu, key, delta), i = __shfl_xor_sync(0xffffffffu, index, delta);
    const float l = __shfl_xor_sync(0xffffffffu, logit, delta);
    if (k > key || (k == key && i < index)) key = k, index = i, logit = l;
  }
  const float score = key == INT32_MAX ? NAN : __int_as_float(key >= 0 ? key : key ^ INT32_MAX);
  return ArgMaxLogit{score, index, logit};
}
template <int kLaneStep, int kRowThreads>
__device__ __forceinline__ float row_max(float x) {
#pragma unroll
  for (int delta = kLaneStep; delta < kLaneStep * kRowThreads; delta *= 2)
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, delta));
  return x;
}
template <int kLaneStep, int kRowThreads>
__device__ __forceinline__ float row_sum(float x) {
#pragma unroll
  for (int delta = kLaneStep; delta < kLaneStep * kRowThreads; delta *= 2) x += __shfl_xor_sync(0xffffffffu, x, delta);
  return x;
}

// Four consecutive logits of type BT as float32, or four -inf where !valid (16-byte aligned
// for float, 8-byte for 16-bit types).
template <typename BT>
__device__ __forceinline__ float4 load_quad(const BT* p, bool valid) {
  if constexpr (std::is_same<BT, float>::value) {
    return valid ? *reinterpret_cast<const float4*>(p) : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
  } else {
    constexpr unsigned kNegInf = std::is_same<BT, __half>::value ? 0xfc00fc00u : 0xff80ff80u;  // two -inf
    const uint2 raw = valid ? *reinterpret_cast<const uint2*>(p) : make_uint2(kNegInf, kNegInf);
    if constexpr (std::is_same<BT, __nv_bfloat16>::value) {
      return make_float4(bf16_bits_low(raw.x), bf16_bits_high(raw.x), bf16_bits_low(raw.y), bf16_bits_high(raw.y));
    } else {
      __half v[4];
      memcpy(v, &raw, sizeof(raw));
      return make_float4(to_float(v[0]), to_float(v[1]), to_float(v[2]), to_float(v[3]));
    }
  }
}

// Bias values 4 q .. 4 q + 3 of a thread's columns.
__device__ __forceinline__ float4 bias_quad(const float (&bias)[kThreadColumns], int q) {
  return make_float4(bias[4 * q], bias[4 * q + 1], bias[4 * q + 2], bias[4 * q + 3]);
}

// kPlain: no softcap, no logits kept, logits in the weights' dtype and vocab % 4 == 0 (the
// statistics form SGLang's step runs): vector loads of the base logits and no branch for the
// other cases in the epilogue. Otherwise every case, scalar loads.
//
// One thread's kThreadColumns logits (float32, -inf past the shard) from its bias values (float32
// registers: the MMA's accumulators) and base logits (`base`: column `at` of the flat [R, g, V] logits, where logits_out, if
// not null, keeps them); cap, logits_dtype: the softcap and the logits' dtype; count: its columns
// inside the shard. Returns their max (NaN ignored, as fmaxf). With base
// logits in the weights' 16-bit type the plain form rounds, adds and takes the max two values
// at a time (add_pair_rn: the same values as float32 arithmetic rounded to the type). An int8 W2's
// bias values arrive scaled (fl(dot * scale), the kernel's chunk loop).
template <typename BT, typename WT, bool kPlain>
__device__ __forceinline__ float thread_logits(float (&l)[kThreadColumns], const float (&bias)[kThreadColumns],
                                               const BT* base, int count, float cap, int logits_dtype,
                                               void* logits_out, int64_t at) {
  constexpr int kQuads = kThreadColumns / 4;
  if constexpr (kPlain && std::is_same<BT, WT>::value && sizeof(WT) == 2) {
    constexpr unsigned kNegInf = std::is_same<WT, __half>::value ? 0xfc00fc00u : 0xff80ff80u;
    unsigned pair[kThreadColumns / 2];
#pragma unroll
    for (int q = 0; q < kQuads; ++q) {
      const float4 b = bias_quad(bias, q);
      const uint2 raw = 4 * q < count ? *reinterpret_cast<const uint2*>(base + 4 * q) : make_uint2(kNegInf, kNegInf);
      pair[2 * q] = add_pair_rn<WT>(raw.x, pack_pair_rn<WT>(b.x, b.y));
      pair[2 * q + 1] = add_pair_rn<WT>(raw.y, pack_pair_rn<WT>(b.z, b.w));
    }
    unsigned top[kThreadColumns / 4];
#pragma unroll
    for (int i = 0; i < kThreadColumns / 4; ++i) top[i] = max_pair<WT>(pair[2 * i], pair[2 * i + 1]);
#pragma unroll
    for (int width = kThreadColumns / 8; width > 0; width /= 2)
#pragma unroll
      for (int i = 0; i < width; ++i) top[i] = max_pair<WT>(top[i], top[i + width]);
#pragma unroll
    for (int i = 0; i < kThreadColumns / 2; ++i) {
      const float2 x = unpack_pair<WT>(pair[i]);
      l[2 * i] = x.x, l[2 * i + 1] = x.y;
    }
    const float2 x = unpack_pair<WT>(top[0]);
    return fmaxf(x.x, x.y);
  } else {
    float m = -INFINITY;
#pragma unroll
    for (int q = 0; q < kQuads; ++q) {
      const float4 b = bias_quad(bias, q);
      float rb[4] = {b.x, b.y, b.z, b.w};
      round_pair_to_type<WT>(rb[0], rb[1]);
      round_pair_to_type<WT>(rb[2], rb[3]);
      float u[4];
      if constexpr (kPlain) {
        const float4 x = load_quad(base + 4 * q, 4 * q < count);
        u[0] = x.x, u[1] = x.y, u[2] = x.z, u[3] = x.w;
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i)
          u[i] = 4 * q + i < count ? softcap(load_float(base + 4 * q + i), cap) : -INFINITY;
      }
      float* x = l + 4 * q;
#pragma unroll
      for (int i = 0; i < 4; ++i) x[i] = __fadd_rn(u[i], rb[i]);
      if constexpr (kPlain) {
        round_pair_to_type<WT>(x[0], x[1]);
        round_pair_to_type<WT>(x[2], x[3]);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if constexpr (!kPlain) {
          x[i] = round_to_dtype(x[i], logits_dtype);
          if (logits_out != nullptr && 4 * q + i < count)
            store_as_dtype(logits_out, at + 4 * q + i, x[i], logits_dtype);
        }
        m = fmaxf(m, x[i]);
      }
    }
    return m;
  }
}

// The fast path's bound on |mc| = |fl(m log2(e) / T)|: below 2^30, |err| = |m c2 - mc| <= 32, so
// every term 2^(l c2 - mc) of a column l <= m is at most 2^32 and the max column's at least 2^-32
// (a 32-column sum stays far inside float range, no term of the max flushes to zero).
constexpr float kFastExpOffsetLimit = 1073741824.0f;  // 2^30

// One thread's partial on the rare path, and its sum of exp((l - m) / T).
struct RarePartial {
  ArgMaxLogit best;
  float sum;
};

// The rare path, out of line: greedy rows (T <= 0: the first-index argmax, NaN above every number,
// key = the logit) and the sampled rows the fast path cannot take: a thread holding a NaN (its
// first NaN, key NaN) or a +inf of x = l / T (its first, key +inf; l / T may overflow), a tile row
// of nothing but -inf (its first column, key -inf), and rows where |m log2(e) / T| is at least
// kFastExpOffsetLimit (the grouped sampler as the reference writes it: x = l / T, each group's max subtracted
// first, IEEE expf and logf; a thread beside another's +inf gets finite keys, which lose to it).
// A greedy row keeps the fast path's sum only where it is exact enough (|m log2(e)| below
// kFastExpOffsetLimit); otherwise its one pass recomputes the sum with the subtraction first.
// logits: the thread's kThreadColumns logits as the fast path computed them (thread_logits, -inf past
// the shard; a copy in local memory); count: how many of them lie in the shard (<= 0: none, an empty
// partial); col: the global column of the first (a multiple of 16); m: the (row, tile) max; sum: the
// fast path's sum of exp((l - m) / T), kept for a greedy row with finite logits, else recomputed with
// the subtraction first (it never overflows).
__device__ __noinline__ RarePartial rare_partial(const float* logits, int count, int32_t col, float m, float t,
                                                 float inv_t, float sum, uint64_t row, DrawKey key) {
  RarePartial out{ArgMaxLogit::empty(), 0.0f};
  const int n = min(count, kThreadColumns);
  if (n <= 0) return out;
  const float log2e_t = __fmul_rn(inv_t, kLog2e);
  if (!(t > 0.0f) && fabsf(__fmul_rn(m, log2e_t)) < kFastExpOffsetLimit && !(sum != sum)) {
    // A greedy row with finite logits (and -inf): the first-index argmax, the fast path's sum.
    const float* l = logits;
    float top = l[0];
    int at = 0;
#pragma unroll
    for (int i = 1; i < kThreadColumns; ++i) {  // columns past the shard are -inf: never above
      if (l[i] > top) top = l[i], at = i;
    }
    out.best = ArgMaxLogit{top, col + at, top};
    out.sum = sum;
    return out;
  }
  if (!(t > 0.0f)) {  // a greedy row holding a NaN, +inf or huge logits: one pass, NaN above every number
    for (int i = 0; i < n; ++i) {
      const float x = logits[i];
      if (m != -INFINITY) out.sum += fast_exp2(__fmul_rn(__fsub_rn(x, m), log2e_t));
      out.best.add(x, col + i, x);
    }
    return out;
  }
  if (m != -INFINITY)
    for (int i = 0; i < n; ++i) out.sum += fast_exp2(__fmul_rn(__fsub_rn(logits[i], m), log2e_t));
  int nan_at = -1, inf_at = -1;
  for (int i = n - 1; i >= 0; --i) {
    const float x = __fdiv_rn(logits[i], t);
    if (x != x) nan_at = i;
    if (x == INFINITY) inf_at = i;
  }
  if (nan_at >= 0) {
    out.best = ArgMaxLogit{NAN, col + nan_at, logits[nan_at]};  // x = l / T is NaN (l may not be)
  } else if (inf_at >= 0) {
    out.best = ArgMaxLogit{INFINITY, col + inf_at, logits[inf_at]};
  } else {
    const GroupNoise noise = group_noise(key, row, static_cast<uint32_t>(col) / kGroupColumns);
    for (int g = 0; g < 2; ++g) {
      const int lo = g * kGroupColumns, hi = min(n, lo + kGroupColumns);
      float x_max = -INFINITY;
      for (int i = lo; i < hi; ++i) x_max = fmaxf(x_max, __fdiv_rn(logits[i], t));
      if (x_max == -INFINITY) continue;  // no mass: K = -inf never wins
      float s = 0.0f;
      for (int i = lo; i < hi; ++i) s += expf(__fsub_rn(__fdiv_rn(logits[i], t), x_max));
      const float group_key = __fadd_rn(__fadd_rn(x_max, logf(s)), gumbel_from_bits(g ? noise.gumbel1 : noise.gumbel0));
      if (!argmax_beats(group_key, col + lo, out.best.score, out.best.index)) continue;
      const float target = fminf(__fmul_rn(bits_to_unit_float(g ? noise.choice1 : noise.choice0), s), below(s));
      float run = 0.0f;
      int pick = hi - 1;
      for (int i = lo; i < hi; ++i) {
        run += expf(__fsub_rn(__fdiv_rn(logits[i], t), x_max));
        if (run > target) {
          pick = i;
          break;
        }
      }
      out.best = ArgMaxLogit{group_key, col + pick, logits[pick]};
    }
    if (out.best.index == INT32_MAX) out.best = ArgMaxLogit{-INFINITY, col, logits[0]};  // no mass at all
  }
  return out;
}

// (raw max, sum of exp((x - max) / T)) with a fixed 1 / T; -inf maxima contribute nothing.
struct TileStats {
  float max;
  float sum;
  float inv_t;

  __device__ __forceinline__ void merge(const TileStats& o) {
    if (o.max == -INFINITY) return;
    if (max == -INFINITY) {
      max = o.max, sum = o.sum;
      return;
    }
    const float m = fmaxf(max, o.max);
    sum = sum * __expf((max - m) * inv_t) + o.sum * __expf((o.max - m) * inv_t);
    max = m;
  }
  __device__ __forceinline__ TileStats lane_xor(int delta, int width) const {
    return TileStats{__shfl_xor_sync(0xffffffffu, max, delta, width),
                     __shfl_xor_sync(0xffffffffu, sum, delta, width), inv_t};
  }
};

struct MarkovOutputs {
  int64_t* tokens;
  float* token_logits;
  float* token_scores;
  float* stat_max;
  float* stat_sum;
  const float* temperature;
  int64_t gamma;
};

// The last CTA of a chunk, out of line: merges the tiles' partials of rows [row0, row0 + rows)
// (one warp per row; the largest key, ties to the lowest column, NaN above every number, as
// argmax_beats), writes the position's outputs and resets the chunk's ticket for the next
// position (or a graph replay). Partials are read volatile: other CTAs wrote them (each fenced
// before taking its ticket).
__device__ __noinline__ void merge_chunk(MarkovOutputs out, const MarkovPartial* partials, int tiles,
                                         int64_t row0, int rows, int k, unsigned* ticket) {
  const int lane = threadIdx.x % 32;
  for (int r = threadIdx.x / 32; r < rows; r += blockDim.x / 32) {
    const int64_t row = row0 + r;
    const float t = out.temperature[row];
    const float safe_t = t > 0.0f ? t : 1.0f;
    ArgMaxLogit best = ArgMaxLogit::empty();
    TileStats stats{-INFINITY, 0.0f, t > 0.0f ? __frcp_rn(t) : 1.0f};
    for (int tile = lane; tile < tiles; tile += 32) {
      const volatile float* p = reinterpret_cast<const volatile float*>(partials + row * tiles + tile);
      best.add(p[0], __float_as_int(p[1]), p[2]);
      stats.merge(TileStats{p[3], p[4], stats.inv_t});
    }
    best = group_reduce<32>(best);
    stats = group_reduce<32>(stats);
    if (lane == 0) {
      const int64_t at = row * out.gamma + k;
      out.tokens[at] = best.index;
      out.token_logits[at] = best.logit;
      if (out.token_scores != nullptr) out.token_scores[at] = best.score;
      out.stat_max[at] = __fdiv_rn(stats.max, safe_t);  // max(l) / T == max(l / T): division is monotone
      out.stat_sum[at] = stats.sum;
    }
  }
  if (threadIdx.x == 0) *ticket = 0;
}

// Threads of the tile kernel: 16-bit weights, kMmaWarps warps, each computing 16 rows x 128 columns
// (half a 256-wide tile) of the bias with mma.sync into registers (MmaTileLayout, warp_bias_mma) and
// running the epilogue on them (each thread 32 columns of two rows; a partial per row and half tile);
// float32, 256 threads for 2048 values a chunk (the CUDA-core product on every thread into a shared
// bias tile, the epilogue on the first two warps: 32 rows of 2 threads; a partial per row and tile).
template <typename WT, int kTileWidth>
struct BlockShape {
  static constexpr bool kMma = WeightTraits<WT>::kTensorCores;
  static_assert(kMma ? kTileWidth % kMmaWarpColumns == 0 && kTileWidth <= kMmaMaxTileV : kTileWidth == 64,
                "a tile of whole 128-column segments (16-bit weights), 64 columns (float32)");
  static constexpr int kTileV = kTileWidth;
  static constexpr int kSegments = kMma ? kTileV / kMmaWarpColumns : 1;  // partials per row and tile
  static constexpr int kThreads = kMma ? 32 * 4 * kSegments : kTileThreads;
  static constexpr int kChunkRows = kMma ? kMmaChunkRows : kTileOutputs / 64;
};

// The float32 path's shared-memory tile (W2 and E dynamic; the bias tile static in the kernel).
using Fp32Layout = MarkovTileLayout<float, 64, kTileOutputs, EpilogueShape<64>::kBiasLd>;
template <typename WT>
using BlockLayout = std::conditional_t<WeightTraits<WT>::kTensorCores, MmaTileLayout, Fp32Layout>;

template <typename WT, int kTileV>
__host__ __device__ BlockLayout<WT> block_layout(int rank) {
  if constexpr (WeightTraits<WT>::kTensorCores) {
    return MmaTileLayout(rank, kTileV);
  } else {
    return Fp32Layout(rank);
  }
}

// The epilogue of one (row, tile) segment: the calling thread's kThreadColumns bias values (float32
// registers) of row `row`, its first column at global column col (a multiple of 16) and at `at` in
// the flat [R, g, V] logits, `count` of them in the shard (0 for a row past the block: !active;
// an int8 W2's values already scaled). The row's kRowThreads threads are lanes
// kLaneStep apart; every lane of the warp calls (the row reductions are full-warp shuffles). Returns
// the (row, tile) partial, reduced over the row's threads: the drawn token with its key and logit,
// the max and the sum of exp((l - max) / T).
template <typename BT, typename WT, bool kPlain, int kLaneStep, int kRowThreads>
__device__ __forceinline__ MarkovPartial segment_partial(const float (&bias)[kThreadColumns],
                                                        const MarkovBlockArgs& args, int64_t at, int count,
                                                        bool active, int row, int32_t col, const NoiseKey& noise_key,
                                                        DrawKey draw) {
  const BT* base = static_cast<const BT*>(args.base_logits) + at;
  ArgMaxLogit best = ArgMaxLogit::empty();
  const float t = active ? args.temperature[row] : 0.0f;
  const bool sampled = t > 0.0f;
  const float inv_t = sampled ? __fdividef(1.0f, t) : 1.0f;
  float l[kThreadColumns];
  const float m = row_max<kLaneStep, kRowThreads>(thread_logits<BT, WT, kPlain>(
      l, bias, base, count, args.softcap, args.logits_dtype, args.logits_out, at));
  // exp((l - m) / T) = 2^(l c2 - mc) * 2^err with c2 = log2(e) / T, mc = fl(m c2) and
  // err = m c2 - mc (exact, an FMA): one FFMA and one MUFU.EX2 a column, the FFMA's rounding
  // relative to its result (no cancellation). The sums below are taken against mc; the tile
  // sum is rescaled by 2^-err once, and the keys use mc itself: LSE_j = ln 2 (mc + log2 S'_j).
  const float c2 = __fmul_rn(inv_t, kLog2e);
  const float mc = __fmul_rn(m, c2);
  float run[kThreadColumns];  // each group's running sums of 2^(l c2 - mc), in column order
#pragma unroll
  for (int g = 0; g < 2; ++g) {
    float s = 0.0f;
#pragma unroll
    for (int v = 0; v < kGroupColumns; ++v) {
      s = __fadd_rn(s, fast_exp2(__fmaf_rn(l[g * kGroupColumns + v], c2, -mc)));
      run[g * kGroupColumns + v] = s;
    }
  }
  const float s0 = run[kGroupColumns - 1], s1 = run[kThreadColumns - 1];
  float sum = __fadd_rn(s0, s1);
  // Rare: greedy rows, a NaN (the sum is NaN), m = +-inf or |mc| >= kFastExpOffsetLimit.
  if (active && (!sampled || !(fabsf(mc) < kFastExpOffsetLimit) || sum != sum)) {
    const float rescaled = __fmul_rn(sum, fast_exp2(-__fmaf_rn(m, c2, -mc)));
    float logits[kThreadColumns];  // a copy for the out-of-line call: `l` keeps no address
#pragma unroll
    for (int i = 0; i < kThreadColumns; ++i) logits[i] = l[i];
    const RarePartial r = rare_partial(logits, count, col, m, t, inv_t, rescaled, static_cast<uint64_t>(row), draw);
    best = r.best, sum = r.sum;
  } else if (count > 0) {
    // K_j = ln 2 (mc + log2 S'_j) + G_j. A group whose terms all flush to 0 (S'_j = 0: 16
    // terms each under 2^-126) has LSE_j < m / T - 62 (126 - 32 = 94 binary orders below the
    // max term's 2^err >= 2^-32, |err| <= 32 under kFastExpOffsetLimit, plus ln 16) and never
    // wins: the tile's max group has S' >= 2^-32 and Gumbel draws span G_max - G_min < 19.5.
    const GroupNoise noise =
        group_noise(noise_key, draw, static_cast<uint64_t>(row), static_cast<uint32_t>(col) / kGroupColumns);
    const float lse_base = __fmul_rn(mc, kLn2);
    const float key0 = __fadd_rn(__fmaf_rn(fast_log2(s0), kLn2, lse_base), group_gumbel(noise.gumbel0));
    const float key1 = __fadd_rn(__fmaf_rn(fast_log2(s1), kLn2, lse_base), group_gumbel(noise.gumbel1));
    const bool second = key1 > key0;  // ties to the lower group
    // Within the group: the first column whose running sum exceeds t = u_C * S.
    const float s = second ? s1 : s0;
    const float target = fminf(__fmul_rn(bits_to_unit_float(second ? noise.choice1 : noise.choice0), s), below(s));
    float group[kGroupColumns], logits[kGroupColumns];  // the drawn group's running sums and logits
#pragma unroll
    for (int v = 0; v < kGroupColumns; ++v) {
      group[v] = second ? run[kGroupColumns + v] : run[v];
      logits[v] = second ? l[kGroupColumns + v] : l[v];
    }
    // Clamped to the thread's columns: a group without mass (its key -inf, which never wins; its
    // logit is then that of the unclamped column) makes first_above return 15, possibly past the
    // row's last column.
    float logit;
    const int i = min((second ? kGroupColumns : 0) + first_above(group, target, logits, logit), count - 1);
    best = ArgMaxLogit{second ? key1 : key0, col + i, logit};
    sum = __fmul_rn(sum, fast_exp2(-__fmaf_rn(m, c2, -mc)));
  }
  if (!active) sum = 0.0f;
  best = row_best<kLaneStep, kRowThreads>(best);
  sum = row_sum<kLaneStep, kRowThreads>(sum);
  return MarkovPartial{best.score, best.index, best.logit, m, sum};
}

// A tile CTA's shared memory: W2 (dynamic: rank-sized), E after it, an int8 W2's scales after E.
template <typename WT>
struct TileBuffers {
  WT* w2s;
  WT* es;
  float* w2_scales;
  __device__ TileBuffers(unsigned char* smem, const BlockLayout<WT>& layout)
      : w2s(reinterpret_cast<WT*>(smem)),
        es(reinterpret_cast<WT*>(smem + layout.e_offset())),
        w2_scales(reinterpret_cast<float*>(smem + layout.staged_bytes())) {}
};

// The Philox key of position k's draws (its seed and offset read where the caller keeps them).
__device__ __forceinline__ DrawKey position_key(const MarkovBlockArgs& args, int k) {
  DrawKey draw{0, 0, static_cast<uint32_t>(args.first_position + k)};
  args.philox.resolve(draw.seed, draw.offset);
  return draw;
}

// Stages W2 tile `tile` (shard columns [tile kTileV, tile kTileV + kTileV)) into buf.w2s; an int8 W2 is
// staged as int8 into the 16-bit tile's region and widened there, its scales into buf.w2_scales. Call with
// every thread of the CTA, after every read of the tile before (the W2 region is overwritten); on return
// every thread sees the tile. priority: the L2 eviction priority of the W2 lines read.
template <typename WS, int kTileV>
__device__ __forceinline__ void stage_w2_tile(const MarkovBlockArgs& args, unsigned tile,
                                              const BlockLayout<typename WeightStorage<WS>::type> layout,
                                              TileBuffers<typename WeightStorage<WS>::type> buf,
                                              L2Priority priority = L2Priority::kNormal) {
  using WT = typename WeightStorage<WS>::type;
  using Shape = BlockShape<WT, kTileV>;
  const int64_t vocab = args.vocab, rank = args.rank, v0 = int64_t(tile) * kTileV;
  WT* w2s = buf.w2s;
  if constexpr (WeightStorage<WS>::kInt8) {  // staged as int8 into the 16-bit tile's region, widened there
    const Int8W2Layout<kTileV> int8_layout(static_cast<int>(args.rank));
    stage_int8_tile<kTileV, Shape::kThreads>(reinterpret_cast<int8_t*>(w2s), buf.w2_scales, int8_layout,
                                      static_cast<const int8_t*>(args.w2), args.w2_scale, v0, vocab, priority);
    widen_int8_tile<WT, kTileV, Shape::kThreads>(w2s, int8_layout, layout);
  } else {
    const WT* w2 = static_cast<const WT*>(args.w2);
    // The lambdas capture by value: a reference would let `layout` escape into the out-of-line scalar
    // staging, and nvcc would then keep it in local memory, reloaded in the MMA's k-loop.
    stage_rows_at(
        w2s, kTileV, layout.rank, layout.k_padded, [rows = layout](int i) { return size_t(rows.w2_row(i)); },
        StagePlan<WT>(layout.k_padded),
        [=](int i) -> const WT* { return v0 + i < vocab ? w2 + (v0 + i) * rank : nullptr; }, priority);
  }
}

// Position k on tile `tile` of `tiles`, its W2 staged in buf.w2s: per chunk of rows, E = W1[x_{k-1}] (the
// previous position's tokens, which the caller has waited for), the bias and the epilogue into the
// tile's partials; then the chunk's ticket: the last of the `tiles` tiles to finish the chunk merges it
// (merge_chunk), then counts it in ws.merged. Every thread of the CTA calls; last_cta: a __shared__ flag.
template <typename BT, typename WS, int kTileV, bool kPlain>
__device__ __forceinline__ void tile_position(const MarkovBlockArgs& args, int k, unsigned tile, unsigned tiles,
                                              MarkovWorkspace ws,
                                              const BlockLayout<typename WeightStorage<WS>::type> layout,
                                              TileBuffers<typename WeightStorage<WS>::type> buf, DrawKey draw,
                                              const NoiseKey& noise_key, bool& last_cta) {
  using WT = typename WeightStorage<WS>::type;  // W1's type and the MMA's (W2's, unless int8)
  constexpr bool kInt8 = WeightStorage<WS>::kInt8;
  using Shape = BlockShape<WT, kTileV>;
  constexpr int kChunkRows = Shape::kChunkRows;
  const WT* w2s = buf.w2s;
  WT* es = buf.es;
  const float* w2_scales = buf.w2_scales;
  const int64_t vocab = args.vocab, rank = args.rank;
  const int64_t v0 = int64_t(tile) * kTileV;
  const int valid = static_cast<int>(min(int64_t(kTileV), vocab - v0));
  const int32_t col0 = static_cast<int32_t>(args.vocab_start + v0);  // a multiple of 16
  const WT* w1 = static_cast<const WT*>(args.w1);
  const StagePlan<WT> e_plan(layout.k_padded);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int rows = static_cast<int>(args.rows);  // < 2^31 (launch_markov_block checks)
  for (int row0 = 0; row0 < rows; row0 += kChunkRows) {
    const int chunk_rows = min(kChunkRows, rows - row0);
    // 16-bit weights: only the 16-row blocks of E holding a row are staged (a warp with none skips the
    // MMA); float32: every row.
    stage_rows(es, Shape::kMma ? min(kChunkRows, (chunk_rows + 15) / 16 * 16) : kChunkRows, layout.rank,
               layout.k_padded, layout.ld, e_plan, [&](int i) -> const WT* {
      const int64_t row = row0 + i;
      if (row >= args.rows) return nullptr;
      const int64_t prev = k == 0 ? args.anchor[row] : args.tokens[row * args.gamma + k - 1];
      return w1 + clamp_index(prev, args.vocab_total) * rank;
    });
    if constexpr (Shape::kMma) {
      // The warp's 16 rows (row block warp / 2, a warp-uniform test: its shuffles stay within the warp)
      // and 128 columns (half warp % 2). Thread (g, t) holds its columns 32 t .. 32 t + 31 (two groups)
      // of rows g and g + 8: the epilogue runs on them.
      const int block = warp / Shape::kSegments, half = warp % Shape::kSegments;
      if (block * 16 < chunk_rows) {
        float acc[kMmaTiles][4];
        warp_bias_mma<WT>(acc, w2s, es + size_t(block) * 16 * layout.ld, kMmaWarpColumns * half, layout);
        const int g = lane / 4, c = kMmaWarpColumns * half + kThreadColumns * (lane % 4);
        if constexpr (kInt8) {  // fl(dot * scale) once for both rows: accumulator j, s is column c + 2 j + s
#pragma unroll
          for (int j = 0; j < kMmaTiles; ++j) {
            const float2 s = *reinterpret_cast<const float2*>(w2_scales + c + 2 * j);
            acc[j][0] = __fmul_rn(acc[j][0], s.x), acc[j][1] = __fmul_rn(acc[j][1], s.y);
            acc[j][2] = __fmul_rn(acc[j][2], s.x), acc[j][3] = __fmul_rn(acc[j][3], s.y);
          }
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {  // rows g (accumulators 0, 1) and g + 8 (2, 3)
          float bias[kThreadColumns];
#pragma unroll
          for (int j = 0; j < kMmaTiles; ++j) bias[2 * j] = acc[j][2 * h], bias[2 * j + 1] = acc[j][2 * h + 1];
          const int local_row = 16 * block + g + 8 * h, row = row0 + local_row;
          const bool active = local_row < chunk_rows;
          const MarkovPartial p = segment_partial<BT, WT, kPlain, 1, 4>(
              bias, args, (int64_t(row) * args.gamma + k) * vocab + v0 + c, active ? valid - c : 0,
              active, row, col0 + c, noise_key, draw);
          if (active && lane % 4 == 0)
            ws.partials[(int64_t(row) * tiles + tile) * Shape::kSegments + half] = p;
        }
      }
    } else {
      using Epilogue = EpilogueShape<kTileV>;
      constexpr int kRowThreads = Epilogue::kRowThreads, kRowsPerWarp = Epilogue::kRowsPerWarp;
      constexpr int kBiasLd = Epilogue::kBiasLd;
      static_assert(kChunkRows * kRowThreads <= Shape::kThreads, "an epilogue thread per 32 columns of a chunk");
      __align__(128) __shared__ float bias_s[kChunkRows * kBiasLd];  // static: fixed addresses
      bias_tile<WT, kTileV, kTileOutputs, kTileThreads, kBiasLd>(w2s, es, bias_s, layout, chunk_rows);
      __syncthreads();
      // A warp holding no row of the chunk skips it (a warp-uniform test).
      if (warp * kRowsPerWarp < chunk_rows) {
        const int seg = lane / 8 % kRowThreads, c = seg * kThreadColumns;
        const int local_row = warp * kRowsPerWarp + lane % 8 + 8 * (lane / (8 * kRowThreads)), row = row0 + local_row;
        const bool active = local_row < chunk_rows;
        float bias[kThreadColumns];
#pragma unroll
        for (int q = 0; q < kThreadColumns / 4; ++q) {
          const float4 b = *reinterpret_cast<const float4*>(bias_s + local_row * kBiasLd + c + 4 * q);
          bias[4 * q] = b.x, bias[4 * q + 1] = b.y, bias[4 * q + 2] = b.z, bias[4 * q + 3] = b.w;
        }
        const MarkovPartial p = segment_partial<BT, WT, kPlain, 8, kRowThreads>(
            bias, args, (int64_t(row) * args.gamma + k) * vocab + v0 + c, active ? valid - c : 0,
            active, row, col0 + c, noise_key, draw);
        if (active && seg == 0) ws.partials[int64_t(row) * tiles + tile] = p;
      }
    }
    // Last-CTA ticket: every writer fences, then one thread counts this CTA in.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0)
      last_cta = atomicAdd(ws.tickets + row0 / kChunkRows, 1u) == tiles - 1;
    __syncthreads();
    if (last_cta) {
      __threadfence();
      merge_chunk(MarkovOutputs{args.tokens, args.token_logits, args.token_scores, args.stat_max,
                                args.stat_sum, args.temperature, args.gamma},
                  ws.partials, static_cast<int>(tiles) * Shape::kSegments, row0, chunk_rows, k,
                  ws.tickets + row0 / kChunkRows);
      // The chunk's outputs (and its ticket's reset) before its count: each writer fences, one thread counts.
      __threadfence();
      __syncthreads();
      if (threadIdx.x == 0) atomicAdd(ws.merged, 1);
    }
  }
}

// One position per launch: CTA b computes one tile of position k. Every other position walks the
// vocabulary tiles in the reverse of CTA order. CTAs start in about blockIdx order, so the first CTAs
// of position k + 1 read the W2 tiles that position k read last, while they are still in L2: an LRU
// cache that keeps C bytes of W2 serves the first C bytes of every position after the first, where one
// order every position would make each read a miss once W2 is larger than C. A tile's partials keep the
// tile's slot, so the merge and its results do not change.
template <typename BT, typename WS, int kTileV, bool kPlain>
__global__ void __maxnreg__(168)
    markov_tile_kernel(MarkovBlockArgs args, int k, MarkovWorkspace ws) {
  using WT = typename WeightStorage<WS>::type;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ bool last_cta;
  const BlockLayout<WT> layout = block_layout<WT, kTileV>(static_cast<int>(args.rank));
  const TileBuffers<WT> buf(smem, layout);
  const unsigned tile = (args.first_position + k) % 2 ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const DrawKey draw = position_key(args, k);
  const NoiseKey noise_key(draw);
  stage_w2_tile<WS, kTileV>(args, tile, layout, buf);
  // Position k > 0 is a programmatic dependent of position k - 1: everything above (the Philox
  // key, the W2 tile) overlaps the previous position's tail; every read of a previous token and of
  // the workspace, and every write, comes after this wait. Then the next position may launch.
  wait_for_primary_grid();
  allow_dependent_launch();
  tile_position<BT, WS, kTileV, kPlain>(args, k, tile, gridDim.x, ws, layout, buf, draw, noise_key, last_cta);
}

// Every position in one cooperative launch (all CTAs resident at once: a CTA waits for merges that every
// other CTA's tiles feed). CTA b owns tiles b, b + P, b + 2 P, ... (P = gridDim.x <= tiles) and walks
// them forward at even Philox positions, backward at odd ones, so each position starts on the tile the
// position before ended on: its W2 is still in shared memory and is not staged again (P tiles of W2 a
// position come from no memory at all), and the tiles after it are those the position before read
// last (the L2 reuse of the per-position order). The tile a CTA ends a position on is read with L2's
// evict-first priority: the next position finds it in shared memory, and its lines leave L2's room to
// the tiles it will read from there. Position k > 0 waits, before its first E (the
// previous tokens), until every chunk of position k - 1 is merged (ws.merged). A tile's partials keep
// its slot, so the results are the per-position kernel's.
template <typename BT, typename WS, int kTileV, bool kPlain>
__global__ void __maxnreg__(168) markov_persistent_kernel(MarkovBlockArgs args, MarkovWorkspace ws) {
  using WT = typename WeightStorage<WS>::type;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ bool last_cta;
  const BlockLayout<WT> layout = block_layout<WT, kTileV>(static_cast<int>(args.rank));
  const TileBuffers<WT> buf(smem, layout);
  // The confidence launch (a programmatic dependent) may take the slots this grid leaves free: every
  // CTA of a cooperative grid is resident from the start, so none of them waits for a slot.
  allow_dependent_launch();
  const unsigned tiles = static_cast<unsigned>(ceil_div(args.vocab, int64_t(kTileV))), ctas = gridDim.x;
  const int owned = static_cast<int>((tiles - 1 - blockIdx.x) / ctas) + 1;
  const int32_t chunks = static_cast<int32_t>(ceil_div(args.rows, int64_t(BlockShape<WT, kTileV>::kChunkRows)));
  for (int k = 0; k < args.gamma; ++k) {
    const DrawKey draw = position_key(args, k);
    const NoiseKey noise_key(draw);
    const bool forward = (args.first_position + k) % 2 == 0;
    for (int j = 0; j < owned; ++j) {
      const unsigned tile = blockIdx.x + static_cast<unsigned>(forward ? j : owned - 1 - j) * ctas;
      if (k == 0 || j > 0)
        stage_w2_tile<WS, kTileV>(args, tile, layout, buf,
                                  j == owned - 1 ? L2Priority::kEvictFirst : L2Priority::kNormal);
      if (k > 0 && j == 0) {  // position k - 1 merged: its tokens, partial slots and tickets are free
        if (threadIdx.x == 0) wait_for_count(ws.merged, k * chunks);
        __syncthreads();
      }
      tile_position<BT, WS, kTileV, kPlain>(args, k, tile, tiles, ws, layout, buf, draw, noise_key, last_cta);
    }
  }
}

// One warp per (row, position): z = w . [h_k; W1[x_{k-1}]] + b, c = sigmoid(z / T_k). As in
// SGLang, W1[x] is first cast to the hidden states' dtype, the features to the projection's
// (conf_dtype), and z is rounded to the projection's dtype.
template <typename HT, typename WT>
__global__ void markov_confidence_kernel(MarkovBlockArgs args) {
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= args.rows * args.gamma) return;
  const int64_t row = warp / args.gamma, k = warp % args.gamma;
  const HT* hidden = static_cast<const HT*>(args.hidden) + warp * args.hidden_size;
  const float* w = args.conf_weight;
  const int pd = args.conf_dtype;
  float acc = 0.0f;
  for (int64_t i = lane; i < args.hidden_size; i += 32)
    acc = fmaf(round_to_dtype(to_float(hidden[i]), pd), w[i], acc);
  // A programmatic dependent of the last position: the hidden-state half above overlaps its tail;
  // the tokens are read, and the outputs written, after every position has completed (each
  // position waited for the one before it).
  wait_for_primary_grid();
  if (args.conf_uses_markov) {
    const int64_t prev = k == 0 ? args.anchor[row] : args.tokens[row * args.gamma + k - 1];
    const WT* emb = static_cast<const WT*>(args.w1) + clamp_index(prev, args.vocab_total) * args.rank;
    for (int64_t i = lane; i < args.rank; i += 32)
      acc = fmaf(round_to_dtype(round_to_type<HT>(to_float(emb[i])), pd), w[args.hidden_size + i], acc);
  }
#pragma unroll
  for (int delta = 16; delta > 0; delta /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, delta);
  if (lane == 0) {
    const float z = round_to_dtype(
        __fadd_rn(acc, args.conf_bias != nullptr ? *args.conf_bias : args.conf_bias_value), pd);
    const float zt = args.sts_temperatures != nullptr ? __fdiv_rn(z, args.sts_temperatures[k]) : z;
    args.conf_logits[warp] = z;
    args.confidence[warp] = 1.0f / (1.0f + expf(-zt));
  }
}

bool plain_block(const MarkovBlockArgs& args, int weight_dtype) {
  return args.softcap <= 0.0f && args.logits_out == nullptr && args.logits_dtype == weight_dtype &&
         args.vocab % 4 == 0;
}

// Dynamic shared memory of the tile kernel: W2 (an int8 W2 widened to 16 bits in place) and E, then
// an int8 W2's scales (the float32 path's bias tile is static shared memory).
template <typename WT, int kTileV>
size_t tile_dynamic_bytes(int rank, bool int8_w2) {
  const BlockLayout<WT> layout = block_layout<WT, kTileV>(rank);
  return layout.staged_bytes() + (int8_w2 ? Int8W2Layout<kTileV>::scale_bytes() : 0);
}

// WS: the weights (WeightStorage: WT, or Int8W2<WT>).
template <typename BT, typename WS, int kTileV, bool kPlain>
cudaError_t launch_tiles(const MarkovBlockArgs& args, MarkovWorkspace ws, cudaStream_t stream) {
  using WT = typename WeightStorage<WS>::type;
  const size_t smem = tile_dynamic_bytes<WT, kTileV>(static_cast<int>(args.rank), WeightStorage<WS>::kInt8);
  cudaError_t err = cudaSuccess;
  const int tiles = static_cast<int>(ceil_div(args.vocab, kTileV));
  constexpr int kThreads = BlockShape<WT, kTileV>::kThreads;
  // Every position in one cooperative launch, where the device can hold its grid (and the merged-chunk
  // count, g x chunks, fits its int32 word).
  const int64_t merges = args.gamma * ceil_div(args.rows, int64_t(BlockShape<WT, kTileV>::kChunkRows));
  if (args.persistent && merges < INT32_MAX) {
    const auto persistent = markov_persistent_kernel<BT, WS, kTileV, kPlain>;
    err = cudaFuncSetAttribute(persistent, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    int ctas = 0;
    if (err == cudaSuccess) err = resident_grid_limit(persistent, kThreads, smem, &ctas);
    if (err != cudaSuccess) return err;
    if (ctas > 0) {
      err = launch_cooperative(persistent, dim3(std::min(tiles, ctas)), dim3(kThreads), smem, stream, args, ws);
      // Fewer CTAs resident than the occupancy says (a device shared under MPS): one launch per position.
      if (err != cudaErrorCooperativeLaunchTooLarge) return err;
    }
  }
  err = cudaFuncSetAttribute(markov_tile_kernel<BT, WS, kTileV, kPlain>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  // Position 0 behind the tickets' memset (a full boundary: not a kernel), every later one a
  // programmatic dependent of the position before it.
  markov_tile_kernel<BT, WS, kTileV, kPlain><<<tiles, BlockShape<WT, kTileV>::kThreads, smem, stream>>>(args, 0, ws);
  for (int k = 1; k < args.gamma; ++k) {
    err = launch_programmatic_dependent(markov_tile_kernel<BT, WS, kTileV, kPlain>, dim3(tiles),
                                        dim3(BlockShape<WT, kTileV>::kThreads), smem, stream, args, k, ws);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;  // position 0's launch error: launch_block's one cudaGetLastError
}

template <typename BT, typename WS, int kTileV>
cudaError_t launch_variant(const MarkovBlockArgs& args, int weight_dtype, MarkovWorkspace ws,
                           cudaStream_t stream) {
  if (plain_block(args, weight_dtype)) return launch_tiles<BT, WS, kTileV, true>(args, ws, stream);
  return launch_tiles<BT, WS, kTileV, false>(args, ws, stream);
}

template <typename BT, typename WT>
cudaError_t launch_for_weights(const MarkovBlockArgs& args, int weight_dtype, MarkovWorkspace ws,
                               cudaStream_t stream) {
  if constexpr (std::is_same<WT, float>::value) {  // fp32 weights: the CUDA-core 64-wide tile
    return launch_variant<BT, WT, 64>(args, weight_dtype, ws, stream);
  } else {  // 16-bit W1: the mma.sync tile at every R (mma_tile_vocab); W2 16-bit or int8 (per-row scales)
    const bool wide = mma_tile_vocab(static_cast<int>(args.rank)) == 256;
    if (args.w2_scale != nullptr)
      return wide ? launch_variant<BT, Int8W2<WT>, 256>(args, weight_dtype, ws, stream)
                  : launch_variant<BT, Int8W2<WT>, 128>(args, weight_dtype, ws, stream);
    return wide ? launch_variant<BT, WT, 256>(args, weight_dtype, ws, stream)
                : launch_variant<BT, WT, 128>(args, weight_dtype, ws, stream);
  }
}

template <typename WT>
cudaError_t launch_confidence(const MarkovBlockArgs& args, int hidden_dtype, cudaStream_t stream) {
  const int64_t warps = args.rows * args.gamma;
  const unsigned blocks = static_cast<unsigned>(ceil_div(warps * 32, 256));
  return with_dtype(hidden_dtype, [&](auto hidden) {  // a programmatic dependent of the last position
    return launch_programmatic_dependent(markov_confidence_kernel<typename decltype(hidden)::type, WT>, dim3(blocks),
                                         dim3(256), 0, stream, args);
  });
}

template <typename WT>
cudaError_t launch_block(const MarkovBlockArgs& args, int base_dtype, int weight_dtype, int hidden_dtype,
                         MarkovWorkspace ws, cudaStream_t stream) {
  cudaError_t err = with_dtype(base_dtype, [&](auto base) {
    return launch_for_weights<typename decltype(base)::type, WT>(args, weight_dtype, ws, stream);
  });
  if (err == cudaSuccess && args.hidden != nullptr) err = launch_confidence<WT>(args, hidden_dtype, stream);
  // One check after the last launch (position 0's <<<>>> included): no synchronising call between
  // a primary and its dependent (the emulator runs its queued launch at any runtime call).
  return err != cudaSuccess ? err : cudaGetLastError();
}

// Workspace layout (bytes from its start): partials, then the counters (16-byte aligned).
struct WorkspaceLayout {
  size_t partial_bytes, counter_offset, counter_words;
  WorkspaceLayout(int64_t rows, int64_t vocab, int weight_bytes) {
    // 16-bit weights: 2 ceil(V / 256) >= ceil(V / 128) partials a row, whichever tile the rank takes.
    const int tile_v = weight_bytes == 4 ? 64 : kMmaMaxTileV;
    const int64_t chunk = weight_bytes == 4 ? BlockShape<float, 64>::kChunkRows : kMmaChunkRows;
    const int64_t segments = weight_bytes == 4 ? 1 : kMmaMaxTileV / kMmaWarpColumns;
    partial_bytes = static_cast<size_t>(rows * ceil_div(vocab, tile_v) * segments) * sizeof(MarkovPartial);
    counter_offset = (partial_bytes + 15) / 16 * 16;
    counter_words = static_cast<size_t>(ceil_div(rows, chunk)) + 1;  // the tickets, the merged count
  }
  size_t total() const { return counter_offset + counter_words * sizeof(unsigned); }
};

}  // namespace

int markov_block_tile_vocab(int64_t rows, int weight_bytes) {
  // Verification's recompute of the Markov bias (chain_verify.cu, WMMA through a shared bias tile):
  // wider tiles halve the W1[prev] gathers per W2 byte once many rows share a tile. markov_block
  // itself uses mma_tile_vocab(r) (256, or 128 above r = 256) with 16-bit W1 at every R, 64 with float32
  // (an int8 W2 has no recompute: chain_verify refuses it).
  return weight_bytes == 2 && rows > 32 ? 128 : 64;
}

size_t markov_block_smem_bytes(int64_t rows, int64_t rank, int weight_bytes) {
  // The larger of markov_block's tile (W2 and E dynamic, the float32 path's bias tile static) and
  // chain_verify's (the default layout, all dynamic).
  const int r = static_cast<int>(rank);
  size_t dynamic;
  if (weight_bytes == 4) {
    dynamic = std::max(Fp32Layout(r).total_bytes(), MarkovTileLayout<float, 64>(r).total_bytes());
  } else if (weight_bytes == 1) {  // an int8 W2: markov_block only (chain_verify's recompute refuses it)
    dynamic = mma_tile_vocab(r) == 256 ? tile_dynamic_bytes<__half, 256>(r, true) : tile_dynamic_bytes<__half, 128>(r, true);
  } else {
    const size_t recompute = markov_block_tile_vocab(rows, weight_bytes) == 128 ? MarkovTileLayout<__half, 128>(r).total_bytes()
                                                                                : MarkovTileLayout<__half, 64>(r).total_bytes();
    dynamic = std::max(MmaTileLayout(r, mma_tile_vocab(r)).staged_bytes(), recompute);
  }
  // + stage_rows' static row tables and the last-CTA flag
  return dynamic + 2 * kMaxStagedRows * sizeof(void*) + 16;
}

size_t markov_block_workspace_bytes(int64_t rows, int64_t vocab, int weight_bytes) {
  return WorkspaceLayout(rows, vocab, weight_bytes).total();
}

std::string launch_markov_block(const MarkovBlockArgs& args, int base_dtype, int weight_dtype,
                                int hidden_dtype, void* workspace, uintptr_t cuda_stream) {
  if (args.rows < 1 || args.gamma < 1 || args.vocab < 1) return "markov_block: empty block";
  if (args.rank < 1 || args.rank > kMarkovMaxRank) return "markov_block: rank must be in [1, 512]";
  if (args.rows > 0x7FFFFFFF || args.vocab_start + args.vocab > 0x7FFFFFFF)
    return "markov_block: shape too large";
  if (args.vocab_start < 0 || args.vocab_start % 16 != 0 || args.vocab_start + args.vocab > args.vocab_total)
    return "markov_block: the shard [vocab_start, vocab_start + V) must start at a multiple of 16 (the "
           "grouped sampler's groups) inside [0, vocab_total)";
  if (args.first_position < 0 || args.first_position + args.gamma > 256)
    return "markov_block: first_position + gamma must be <= 256";
  if (args.w2_scale != nullptr && weight_dtype == 0)
    return "markov_block: an int8 W2 (w2_scale given) needs a 16-bit W1 (bfloat16 or float16)";
  const WorkspaceLayout wl(args.rows, args.vocab, args.w2_scale != nullptr ? 1 : weight_dtype == 0 ? 4 : 2);
  unsigned char* bytes = static_cast<unsigned char*>(workspace);
  unsigned* counters = reinterpret_cast<unsigned*>(bytes + wl.counter_offset);
  const MarkovWorkspace ws{reinterpret_cast<MarkovPartial*>(bytes), counters,
                           reinterpret_cast<int32_t*>(counters + wl.counter_words - 1)};
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(cuda_stream);
  // The tickets and the merged count start at zero (a memset node in a captured graph).
  cudaError_t err = cudaMemsetAsync(counters, 0, wl.counter_words * sizeof(unsigned), stream);
  if (err == cudaSuccess)
    err = with_dtype(weight_dtype, [&](auto weight) {
      return launch_block<typename decltype(weight)::type>(args, base_dtype, weight_dtype, hidden_dtype, ws,
                                                           stream);
    });
  return err == cudaSuccess ? std::string() : std::string("markov_block: ") + cudaGetErrorString(err);
}

}  // namespace dspark_sgl
