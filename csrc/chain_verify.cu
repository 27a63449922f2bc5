// chain_verify: tree-free chain verification (rejection sampling, residual resample, bonus).
//
// One launch that waits on nothing (not the host, not another launch): chain_verify_kernel. Each
// CTA takes a work item in start order (work_items.cuh); the first items are pass 1's, the rest
// pass 2's, so pass 2 waits only on CTAs that are already running. Where pass 2's recompute tile
// (dynamic shared memory every CTA of the launch would carry) would cost pass 1 occupancy
// (fused_fits: the statistics form at r = 256 and R > 32, fp32 weights, r = 512), the two passes
// are two launches instead, pass 2 a programmatic dependent of pass 1 (dependent_launch.cuh).
//   pass 1 (verify_rows)    one item per (chunk, j, row): every verified target row j <= l_r is
//                           read once, in `chunks` CTAs along V. Each CTA writes the softmax
//                           statistics of t / T of its slab, the raw argmax (greedy) and, at
//                           the last verified row j = l_r of a sampled request, the bounded
//                           Gumbel-max draw of t / T + G (the bonus); with full draft logits it
//                           also reads draft row j < l_r for q's statistics. The last CTA of a
//                           request (a ticket in `counters`, reset by that CTA) merges the
//                           chunks and runs the acceptance tests u_j q_j(x_j) < p_j(x_j) of all
//                           positions in parallel (a warp ballot finds the first failure),
//                           writes accept_lens and out_tokens, and raises the merged-request
//                           word (its merged count, and its rejected count when the request is
//                           sampled and rejected) in one atomic.
//   pass 2 (residual_*)     a few persistent CTAs (at most kResidualCtasPerSm a multiprocessor)
//                           wait until every request is merged (or, split, for pass 1's grid),
//                           take the rejected count from the same word, and exit at once when
//                           nothing was rejected: no W2 byte read. Otherwise they draw the correction
//                           argmax(log max(0, p_s - q_s) + G) (the bonus at s when every residual
//                           is 0) at the stop row s of each rejected sampled request, walking
//                           their items (logits form: (chunk, row) slabs of the stop rows; without
//                           full draft logits the draft row at s is recomputed from the Markov
//                           head, residual_from_markov: W2 tiles, each read once for all rows).
//                           The last tile of a row (a ticket) merges it; the last pass-2 CTA
//                           resets the word.
// Counters (int32, a layout independent of R): [0] the pass-2 CTA ticket, [1] the work-item ticket,
// [32] the merged-request word (merged and rejected requests), then from [64] kMaxRows pass-1 tickets and
// kMaxRows pass-2 tickets. They are created zero and every launch leaves them zero.
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <type_traits>

#include "dspark_sgl/common.cuh"
#include "dspark_sgl/dependent_launch.cuh"
#include "dspark_sgl/launch.h"
#include "dspark_sgl/markov_tile.cuh"
#include "dspark_sgl/work_items.cuh"

namespace dspark_sgl {
namespace {

constexpr int kRowThreads = 256;
constexpr int kRowWarps = kRowThreads / 32;
constexpr int kMaxGamma = 32;        // positions fit one warp's ballot
constexpr int32_t kNoIndex = INT32_MAX;

// The largest Gumbel value -logf(-logf(u)) the 32-bit uniform can give: u <= 1 - 2^-24, so
// G <= -log(-log(1 - 2^-24)) = 16.6355 (IEEE logf within 1 ulp); 16.64 leaves 4e-3 to spare.
constexpr float kGumbelMax = 16.64f;
// Relative slack of the Gumbel skip test: covers x * (1/T) against the IEEE x / T (<= 3 ulp)
// and the rounding of the threshold and of the score (see gumbel_threshold).
constexpr float kSkipSlack = 9.5367431640625e-07f;  // 2^-20

constexpr int64_t kMaxRows = 65535;
// The merged-request word, which pass 2 polls, on a 128-byte line of its own (the tickets beside it
// are hot).
enum CounterSlot : int { kResidualTicket = 0, kItemTicket = 1, kMergedRequests = 32, kGlobalCounters = 64 };
// The merged-request word: the requests merged in bits 0-15 (R <= kMaxRows), the sampled ones among
// them that were rejected in bits 16-31. Each request adds both with one atomic, so the poll that
// sees every request merged also knows whether pass 2 has work: no further read before it exits.
constexpr int32_t kMergedMask = 0xFFFF;
constexpr uint32_t kRejectedUnit = 1u << 16;
__device__ __forceinline__ uint32_t rejected_requests(int32_t merged_word) {
  return static_cast<uint32_t>(merged_word) >> 16;
}
// Pass-2 CTAs per multiprocessor: enough to stream W2 (or the stop rows) when rows are rejected,
// few enough that their wait and exit cost little when none is.
constexpr int kResidualCtasPerSm = 4;
// Pass 1 is a bandwidth-bound stream of the logits: at least 3 CTAs of 256 threads a multiprocessor
// (at most 85 registers a thread; a fused launch's shared memory allows as many, fused_fits).
constexpr int kRowCtasPerSm = 3;
static_assert(kRowThreads == kTileThreads, "one block shape serves both passes");

__device__ __forceinline__ int32_t* global_counter(const ChainVerifyArgs& a, CounterSlot s) { return a.counters + s; }
__device__ __forceinline__ int32_t* pass1_tickets(const ChainVerifyArgs& a) { return a.counters + kGlobalCounters; }
__device__ __forceinline__ int32_t* pass2_tickets(const ChainVerifyArgs& a) {
  return a.counters + kGlobalCounters + kMaxRows;
}

// A column whose fast-scaled logit ys = x * (1/T) is below this cannot beat `best` with any
// Gumbel value: the IEEE x / T is within |ys| 2^-22 of ys, the score rn(x / T + G) is at most
// rn(x / T + kGumbelMax), and the slack (|best| + kGumbelMax) 2^-20 exceeds both roundings.
// NaN or +inf scores give a NaN threshold: nothing is skipped.
__device__ __forceinline__ float gumbel_threshold(float best) {
  return __fsub_rn(__fsub_rn(best, kGumbelMax), __fmul_rn(__fadd_rn(fabsf(best), kGumbelMax), kSkipSlack));
}

// One CTA's chunk of one (request, position).
struct RowPartial {
  SoftmaxStats target;  // of t / T
  ArgMax argmax;        // of the raw target logits (greedy rows)
  SoftmaxStats draft;   // of d / T (full draft logits, j < l_r)
  ArgMax bonus;         // of t / T + G (sampled rows, j == l_r)

  __device__ __forceinline__ static RowPartial empty() {
    return {SoftmaxStats::empty(), ArgMax::empty(), SoftmaxStats::empty(), ArgMax::empty()};
  }
  __device__ __forceinline__ void merge(const RowPartial& o) {
    target.merge(o.target);
    argmax.merge(o.argmax);
    draft.merge(o.draft);
    bonus.merge(o.bonus);
  }
  __device__ __forceinline__ RowPartial lane_xor(int delta, int width) const {
    return {target.lane_xor(delta, width), argmax.lane_xor(delta, width), draft.lane_xor(delta, width),
            bonus.lane_xor(delta, width)};
  }
};

struct StopInfo {
  int32_t stop;
  int32_t flags;  // kSampled | kRejected
  float t_max, t_sum, d_max, d_sum;
};
constexpr int32_t kSampled = 1, kRejected = 2;

// kG consecutive elements as float: one 16-byte load when kG fills it, else scalar loads.
template <typename T, int kG>
__device__ __forceinline__ void load_group(const T* p, float (&out)[kG]) {
  if constexpr (kG == 4 && std::is_same<T, float>::value) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  } else if constexpr (kG == 8 && std::is_same<T, __nv_bfloat16>::value) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // bf16 -> float is a shift: one instruction an element
      out[2 * i] = __uint_as_float(words[i] << 16);
      out[2 * i + 1] = __uint_as_float(words[i] & 0xFFFF0000u);
    }
  } else if constexpr (kG == 8 && std::is_same<T, __half>::value) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const __half2 pair = *reinterpret_cast<const __half2*>(&words[i]);
      out[2 * i] = __low2float(pair), out[2 * i + 1] = __high2float(pair);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kG; ++i) out[i] = load_float(p + i);
  }
}

__device__ __forceinline__ uint32_t philox_word(const Philox4x32& r, int64_t col) {
  const int i = static_cast<int>(col & 3);
  return i == 0 ? r.x : (i == 1 ? r.y : (i == 2 ? r.z : r.w));
}

// The bonus draw's noise source at one (request, position): Philox blocks of 4 columns.
struct BonusNoise {
  uint64_t seed, offset, row;
  uint32_t position;

  __device__ __forceinline__ Philox4x32 block(int64_t col) const {
    return philox_block(seed, offset, kStreamResample, row, position, static_cast<uint32_t>(col / 4));
  }
  // The N blocks from column v0 (a multiple of 4), computed together.
  template <int N>
  __device__ __forceinline__ void blocks(int32_t v0, Philox4x32 (&out)[N]) const {
    philox_blocks<N>(seed, offset, kStreamResample, row, position, static_cast<uint32_t>(v0 / 4), out);
  }
};

// How far below one `best` a column's fast-scaled logit s_fast = x * (1/T) is, less every
// rounding: a Gumbel value G < headroom(s_fast) cannot lift the column's score rn(x / T + G) to
// `best`. headroom = best - s_fast - (|best| + |s_fast|) 2^-20 - 2^-16, computed as
// (base - s_fast) - |s_fast| 2^-20 with base = best - (|best| 2^-20 + 2^-16) once per best. The
// slack covers the IEEE x / T against s_fast (|s_fast| 2^-22), the score's rounding (|best| 2^-24),
// the error of the computed G (within 4e-6 for G in [-3, 16.64]) and the four roundings here
// (each within (|best| + |s_fast|) 2^-24 and 2^-40). NaN in, NaN out (not skipped); so is a +inf best.
// Computed once per best: every column a candidate path tests against the same best shares it.
struct SkipBound {
  float base;
  __device__ __forceinline__ static SkipBound of(float best) {
    return {__fsub_rn(best, __fmaf_rn(fabsf(best), kSkipSlack, 1.52587890625e-05f))};
  }
  __device__ __forceinline__ float headroom(float s_fast) const {
    return __fmaf_rn(-fabsf(s_fast), kSkipSlack, __fsub_rn(base, s_fast));
  }
};

// A lower bound of exp(-exp(-y)) for y > 0 in units of 2^-24 (uniform_units): a uniform u below
// it has -log(-log(u)) < y. Two ex2.approx (2 ulp each) give exp(-exp(-y)) within 2^-20 relative;
// the factor (1 - 2^-18) 2^24 covers that and scales exactly.
__device__ __forceinline__ float gumbel_uniform_floor(float y) {
  constexpr float kLog2e = 1.4426950408889634f;
  return __fmul_rn(fast_exp2(-__fmul_rn(fast_exp2(-__fmul_rn(y, kLog2e)), kLog2e)), 16777152.0f);
}

// kG columns as float, passed by value (registers) to the out-of-line candidate path.
template <int kG>
struct Group {
  float x[kG];
};

// The reference's score of one column of the bonus draw: rn(x / T + G), the IEEE x / T and the two
// IEEE logf of G = -log(-log(u)). Out of line: the bounded draw scores few columns exactly.
__device__ __noinline__ float exact_gumbel_score(float x, float t, uint32_t bits) {
  return __fadd_rn(__fdiv_rn(x, t), gumbel_from_bits(bits));
}

// Whether a column needs its exact score: not when its Gumbel value cannot lift it to the best
// (headroom kGumbelMax or more, or a uniform below gumbel_uniform_floor of its headroom). Every
// test is evaluated (no branches): almost every column reaches the uniform test.
__device__ __forceinline__ bool bonus_needs_score(float headroom, uint32_t bits) {
  const bool far = headroom >= kGumbelMax;
  const bool below = (headroom > 0.0f) & (uniform_units(bits) < gumbel_uniform_floor(headroom));
  return !(far | below);
}

// Adds the exact scores of the columns in `need` (bit i: column v0 + i) to `best`, one out-of-line
// call each; the column's value and bits are picked by selects (no local-memory array).
template <int kG>
__device__ __forceinline__ void add_exact_scores(ArgMax& best, uint32_t need, const Group<kG>& group,
                                                 const uint32_t (&bits)[kG], int32_t v0, float t) {
  while (need != 0) {
    const int i = __ffs(static_cast<int>(need)) - 1;
    need &= need - 1;
    float x = group.x[0];
    uint32_t u = bits[0];
#pragma unroll
    for (int k = 1; k < kG; ++k)
      if (i == k) x = group.x[k], u = bits[k];
    best.add(exact_gumbel_score(x, t, u), v0 + i);
  }
}

// A group's Philox words, one a column: its kG / 4 blocks computed together.
template <int kG>
__device__ __forceinline__ void group_bits(const BonusNoise& noise, int32_t v0, uint32_t (&bits)[kG]) {
  static_assert(kG % 4 == 0 && kG <= 32, "whole Philox blocks, one bit a column");
  Philox4x32 words[kG / 4];
  noise.blocks<kG / 4>(v0, words);
#pragma unroll
  for (int q = 0; q < kG / 4; ++q)
    bits[4 * q] = words[q].x, bits[4 * q + 1] = words[q].y, bits[4 * q + 2] = words[q].z, bits[4 * q + 3] = words[q].w;
}

// The Gumbel candidates of one group (the bonus draw's candidate path): the group's Philox words
// (the caller found a column of it within kGumbelMax of the best, and a block of 4 far columns
// beside it is rare), then only a column whose uniform can lift it to the best (bonus_needs_score)
// pays for its exact score. Every test uses the best at the group's start (a later, higher best
// would only skip more). Returns the new best; out of line, so the hot loop keeps its registers.
template <int kG>
__device__ __noinline__ ArgMax bonus_candidates(Group<kG> group, int32_t v0, float t, float inv_t,
                                                BonusNoise noise, ArgMax best) {
  uint32_t bits[kG];
  group_bits<kG>(noise, v0, bits);
  const SkipBound bound = SkipBound::of(best.score);
  uint32_t need = 0;
#pragma unroll
  for (int i = 0; i < kG; ++i)
    if (bonus_needs_score(bound.headroom(__fmul_rn(group.x[i], inv_t)), bits[i])) need |= 1u << i;
  add_exact_scores<kG>(best, need, group, bits, v0, t);
  return best;
}

// A thread's first candidate group (its best still empty, so every block is near): all its Philox
// words first; the column of the highest approximate score (MUFU logs: a choice, never a result)
// is scored exactly (the seed) and becomes the best that the other columns are tested against, so
// that they rarely need their exact score. Any column's exact score is a lower bound of the row's
// winning score: the draw is the reference's either way. Out of line, called about once a thread.
template <int kG>
__device__ __noinline__ ArgMax bonus_first_candidates(Group<kG> group, int32_t v0, float t, float inv_t,
                                                      BonusNoise noise, ArgMax best) {
  uint32_t bits[kG];
  group_bits<kG>(noise, v0, bits);
  int seeded = 0;
  float likeliest = -INFINITY;
#pragma unroll
  for (int i = 0; i < kG; ++i) {  // x / T + G less a constant: G = -ln 2 (log2(-log2 u) + log2(ln 2))
    const float approx = __fmul_rn(group.x[i], inv_t) -
                         0.6931471805599453f * fast_log2(-fast_log2(bits_to_unit_float(bits[i])));
    if (approx > likeliest) likeliest = approx, seeded = i;
  }
  add_exact_scores<kG>(best, 1u << seeded, group, bits, v0, t);  // the seed
  const SkipBound bound = SkipBound::of(best.score);
  uint32_t need = 0;
#pragma unroll
  for (int i = 0; i < kG; ++i)
    if (i != seeded && bonus_needs_score(bound.headroom(__fmul_rn(group.x[i], inv_t)), bits[i])) need |= 1u << i;
  add_exact_scores<kG>(best, need, group, bits, v0, t);
  return best;
}

// One thread's running statistics of its slab of a row, in the exp2 domain of the raw logits:
// max (raw), sum of 2^((x - max) k) with k = log2(e) / T (= sum exp(x / T - max / T)), and the
// first index of the max. Non-finite input (NaN, +inf, overflow of max * k) makes the sum NaN:
// the caller then rescans the slab exactly (scan_exact).
struct FastScan {
  float max_raw;
  float max_k;  // max_raw * k; -FLT_MAX while max_raw is -inf, so that a -inf logit adds 0
  float sum;
  int32_t index;

  // `first`: the thread's first column (kNoIndex for an empty slab): an all -inf slab's argmax.
  __device__ __forceinline__ static FastScan empty(int32_t first) { return {-INFINITY, -FLT_MAX, 0.0f, first}; }

  // Adds one group; returns its maximum (fmaxf: a NaN is dropped here and caught by ok()).
  template <int kG>
  __device__ __forceinline__ float add(const Group<kG>& g, int32_t v0, float k) {
    float m = g.x[0];
#pragma unroll
    for (int i = 1; i < kG; ++i) m = fmaxf(m, g.x[i]);
    if (m > max_raw) *this = raised(*this, g, m, v0, k);  // rare after the first groups
#pragma unroll
    for (int i = 0; i < kG; ++i) sum += fast_exp2(fmaf(g.x[i], k, -max_k));
    return m;
  }
  __device__ __forceinline__ bool ok() const { return sum == sum; }
  // The softmax statistics of x / T (the max is the IEEE max / T: division by T > 0 is monotone).
  __device__ __forceinline__ SoftmaxStats stats(float t) const {
    return max_raw == -INFINITY ? SoftmaxStats::empty() : SoftmaxStats{__fdiv_rn(max_raw, t), sum};
  }
  __device__ __forceinline__ ArgMax argmax() const { return ArgMax{max_raw, index}; }

  // A group holding a new maximum m: rescale the sum, take the group's first index of m.
  // Out of line: the hot loop keeps its registers.
  template <int kG>
  __device__ __noinline__ static FastScan raised(FastScan s, Group<kG> g, float m, int32_t v0, float k) {
    s.sum = __fmul_rn(s.sum, fast_exp2(__fmul_rn(__fsub_rn(s.max_raw, m), k)));
    s.max_raw = m;
    s.max_k = __fmul_rn(m, k);
#pragma unroll
    for (int i = kG - 1; i >= 0; --i)
      if (g.x[i] == s.max_raw) s.index = v0 + i;
    return s;
  }
};

// This thread's slab of one row: columns [start, end) in groups of kG, blockDim.x * kG apart
// (vocab < 2^31: 32-bit column indices).
struct Slab {
  int32_t start, end;
  __device__ __forceinline__ int32_t first(int kG) const { return start + kG * static_cast<int32_t>(threadIdx.x); }
  // f(p, v0) for each of this thread's groups: p = row + v0.
  template <int kG, typename T, typename F>
  __device__ __forceinline__ void for_each(const T* row, F&& f) const {
    const int32_t step = kG * static_cast<int32_t>(blockDim.x);
    const T* p = row + first(kG);
    for (int32_t v0 = first(kG); v0 < end; v0 += step, p += step) f(p, v0);
  }
};

// The reference's operations element by element (common.cuh: NaN first, -inf adds nothing), over
// the same columns as the fast scan of kG-column groups (this thread's groups).
template <typename T, int kG>
__device__ void scan_exact(const T* row, const Slab& slab, float t, bool bonus, const BonusNoise& noise,
                           SoftmaxStats& stats, ArgMax& argmax, ArgMax& best) {
  stats = SoftmaxStats::empty();
  argmax = ArgMax::empty();
  best = ArgMax::empty();
  slab.for_each<kG>(row, [&](const T* p, int32_t v0) {
    for (int i = 0; i < kG && v0 + i < slab.end; ++i) {
      const int32_t v = v0 + i;
      const float x = load_float(p + i);
      const float scaled = __fdiv_rn(x, t);
      stats.add(scaled);
      argmax.add(x, v);
      if (bonus) best.add(__fadd_rn(scaled, gumbel_from_bits(philox_word(noise.block(v), v))), v);
    }
  });
}

// Statistics (and the bonus draw when `bonus`) of this thread's slab of one row.
template <typename T, int kG>
__device__ __forceinline__ void scan_row(const T* row, const Slab& slab, float t, bool bonus,
                                         const BonusNoise& noise, SoftmaxStats& stats, ArgMax& argmax,
                                         ArgMax& best) {
  const float k = __fdiv_rn(1.4426950408889634f, t);
  FastScan scan = FastScan::empty(slab.first(kG) < slab.end ? slab.first(kG) : kNoIndex);
  best = ArgMax::empty();
  if (bonus) {
    const float inv_t = __frcp_rn(t);
    float threshold = gumbel_threshold(best.score);
    if constexpr (kG == 1) {  // unaligned rows: one column at a time, candidates inline
      slab.for_each<1>(row, [&](const T* p, int32_t v) {
        Group<1> one;
        load_group<T, 1>(p, one.x);
        scan.add(one, v, k);
        if (!(__fmul_rn(one.x[0], inv_t) < threshold)) {
          best.add(__fadd_rn(__fdiv_rn(one.x[0], t), gumbel_from_bits(philox_word(noise.block(v), v))), v);
          threshold = gumbel_threshold(best.score);
        }
      });
    } else {
      slab.for_each<kG>(row, [&](const T* p, int32_t v0) {
        Group<kG> group;
        load_group<T, kG>(p, group.x);
        const float m = scan.add(group, v0, k);
        if (!(__fmul_rn(m, inv_t) < threshold)) {  // a Gumbel candidate (NaN: the exact rescan)
          best = best.score == -INFINITY ? bonus_first_candidates<kG>(group, v0, t, inv_t, noise, best)
                                         : bonus_candidates<kG>(group, v0, t, inv_t, noise, best);
          threshold = gumbel_threshold(best.score);
        }
      });
    }
  } else {
    slab.for_each<kG>(row, [&](const T* p, int32_t v0) {
      Group<kG> plain;
      load_group<T, kG>(p, plain.x);
      scan.add(plain, v0, k);
    });
  }
  if (scan.ok()) {
    stats = scan.stats(t);
    argmax = scan.argmax();
  } else {
    scan_exact<T, kG>(row, slab, t, bonus, noise, stats, argmax, best);
  }
}

// 16-byte groups when every row starts 16-byte aligned (V a multiple of the group), else scalar.
template <typename T, typename F>
__device__ __forceinline__ void with_group(int64_t vocab, F&& f) {
  constexpr int kG = 16 / sizeof(T);
  if (vocab % kG == 0) {
    f(std::integral_constant<int, kG>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

__device__ __forceinline__ int64_t chunk_columns(int64_t vocab, int chunks) {
  return ceil_div(ceil_div(vocab, chunks), 8) * 8;
}

// Merges row `j`'s chunk partials with the lanes of one warp; the result is lane 0's.
__device__ __forceinline__ RowPartial merge_chunks(const RowPartial* p, int chunks) {
  RowPartial s = RowPartial::empty();
  for (int c = threadIdx.x % 32; c < chunks; c += 32) s.merge(p[c]);
  return group_reduce<32>(s);
}

// The last CTA of a request: merges every position, tests them all at once, writes the chain.
// pass_2_resets: a pass 2 (this launch's CTAs, or the dependent launch's) reads the merged-request
// word and resets it; else the last merger does.
template <typename TT, typename DT>
__device__ void accept_request(const ChainVerifyArgs& args, const RowPartial* partials, StopInfo* stops,
                               int64_t row, int64_t len, bool sampled, float safe_t, bool pass_2_resets) {
  __shared__ SoftmaxStats s_target[kMaxGamma + 1], s_draft[kMaxGamma + 1];
  __shared__ int32_t s_argmax[kMaxGamma + 1], s_bonus[kMaxGamma + 1];
  __shared__ uint32_t s_accept[kMaxGamma];
  const int64_t g = args.gamma, vocab = args.vocab;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t* tokens = args.draft_tokens + row * g;
  uint64_t seed, offset;
  args.philox.resolve(seed, offset);
  for (int64_t j = warp; j <= len; j += kRowWarps) {
    const RowPartial s = merge_chunks(partials + (row * (g + 1) + j) * args.stat_chunks, args.stat_chunks);
    if (lane != 0) continue;  // lanes may merge floats in different orders: lane 0 decides
    s_target[j] = s.target, s_draft[j] = s.draft, s_argmax[j] = s.argmax.index, s_bonus[j] = s.bonus.index;
    if (j == len) continue;
    const int64_t x = clamp_index(tokens[j], vocab);
    bool accept;
    if (sampled) {
      const TT* target = static_cast<const TT*>(args.target_logits) + (row * (g + 1) + j) * vocab;
      const float p = s.target.prob(__fdiv_rn(load_float(target + x), safe_t));
      float q;
      if (args.draft_logits != nullptr) {
        const DT* draft = static_cast<const DT*>(args.draft_logits) + (row * g + j) * vocab;
        q = s.draft.prob(__fdiv_rn(load_float(draft + x), safe_t));
      } else {
        const SoftmaxStats d{args.draft_max[row * g + j], args.draft_sum[row * g + j]};
        q = d.prob(__fdiv_rn(args.draft_token_logits[row * g + j], safe_t));
      }
      const float u = bits_to_unit_float(philox_block(seed, offset, kStreamAccept, static_cast<uint64_t>(row),
                                                      static_cast<uint32_t>(j), 0u)
                                             .x);
      accept = __fmul_rn(u, q) < p;
    } else {
      accept = x == s.argmax.index;
    }
    s_accept[j] = accept;
  }
  __syncthreads();
  if (warp != 0) return;
  const unsigned failed = __ballot_sync(0xffffffffu, lane < len && !s_accept[lane]);
  const int64_t stop = failed != 0 ? __ffs(static_cast<int>(failed)) - 1 : len;
  const bool rejected = stop < len;
  // Greedy: the argmax; sampled and all accepted: the bonus; rejected: pass 2 writes it.
  const int64_t next = !sampled ? s_argmax[stop] : (rejected ? -1 : s_bonus[stop]);
  int64_t* out = args.out_tokens + row * (g + 1);
  for (int64_t i = lane; i <= g; i += 32) out[i] = i < stop ? tokens[i] : (i == stop ? next : -1);
  __syncwarp();  // the whole chain before lane 0 publishes it (pass 2 overwrites out[stop])
  if (lane != 0) return;
  args.accept_lens[row] = static_cast<int32_t>(stop);
  StopInfo info{static_cast<int32_t>(stop), (sampled ? kSampled : 0) | (rejected ? kRejected : 0),
                s_target[stop].max, s_target[stop].sum, s_draft[stop].max, s_draft[stop].sum};
  if (rejected && args.draft_logits == nullptr) {
    info.d_max = args.draft_max[row * g + stop];
    info.d_sum = args.draft_sum[row * g + stop];
  }
  stops[row] = info;
  pass1_tickets(args)[row] = 0;  // every CTA of this request has taken its ticket
  __threadfence();  // the chain and the stop before the merged-request word
  auto* merged = reinterpret_cast<uint32_t*>(global_counter(args, kMergedRequests));
  const uint32_t seen = atomicAdd(merged, 1u + (sampled && rejected ? kRejectedUnit : 0u));
  if ((seen & kMergedMask) == static_cast<uint32_t>(args.rows) - 1 && !pass_2_resets) *merged = 0;
}

// Pass 1's item (chunk_id, j, row).
template <typename TT, typename DT>
__device__ __forceinline__ void verify_rows(const ChainVerifyArgs& args, RowPartial* partials, StopInfo* stops,
                                            int64_t chunk_id, int64_t j, int64_t row, bool pass_2_resets) {
  const int64_t g = args.gamma, vocab = args.vocab;
  const int64_t len = clamp_index(args.verify_lens[row], g + 1);
  if (j > len) return;  // uniform per CTA; these CTAs take no row ticket
  const float t = args.temperature[row];
  const bool sampled = t > 0.0f;
  const float safe_t = sampled ? t : 1.0f;
  const int64_t chunk = chunk_columns(vocab, args.stat_chunks);
  const Slab slab{static_cast<int32_t>(chunk_id * chunk), static_cast<int32_t>(min(vocab, chunk_id * chunk + chunk))};
  uint64_t seed, offset;
  args.philox.resolve(seed, offset);
  const BonusNoise noise{seed, offset, static_cast<uint64_t>(row), static_cast<uint32_t>(j)};
  const TT* target = static_cast<const TT*>(args.target_logits) + (row * (g + 1) + j) * vocab;
  RowPartial mine = RowPartial::empty();
  with_group<TT>(vocab, [&](auto group) {
    scan_row<TT, decltype(group)::value>(target, slab, safe_t, sampled && j == len, noise, mine.target,
                                         mine.argmax, mine.bonus);
  });
  if (args.draft_logits != nullptr && j < len) {
    const DT* draft = static_cast<const DT*>(args.draft_logits) + (row * g + j) * vocab;
    ArgMax unused_argmax, unused_bonus;
    with_group<DT>(vocab, [&](auto group) {
      scan_row<DT, decltype(group)::value>(draft, slab, safe_t, false, noise, mine.draft, unused_argmax,
                                           unused_bonus);
    });
  }
  __shared__ RowPartial s_merge[kRowWarps];
  mine = block_merge(mine, s_merge);
  __shared__ int s_last;
  if (threadIdx.x == 0) {
    partials[(row * (g + 1) + j) * args.stat_chunks + chunk_id] = mine;
    __threadfence();
    const int expected = static_cast<int>((len + 1) * args.stat_chunks);
    s_last = atomicAdd(pass1_tickets(args) + row, 1) == expected - 1;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  accept_request<TT, DT>(args, partials, stops, row, len, sampled, safe_t, pass_2_resets);
}

// ---- pass 2 ---------------------------------------------------------------------------

// The last of the `ctas` pass-2 CTAs (every one has read the merged-request word by now) resets it.
__device__ __forceinline__ void finish_residual_cta(const ChainVerifyArgs& args, int ctas) {
  __syncthreads();
  if (threadIdx.x != 0) return;
  __threadfence();  // this CTA's read of the word before its ticket (the last one resets it)
  int32_t* ticket = global_counter(args, kResidualTicket);
  if (atomicAdd(ticket, 1) == ctas - 1) {
    *global_counter(args, kMergedRequests) = 0;
    *ticket = 0;
  }
}

// The tile partials of `row` written by this CTA are complete: take the row's ticket (one thread
// per row, after a barrier). True for the last of `tiles`.
__device__ __forceinline__ bool last_tile_of_row(const ChainVerifyArgs& args, int64_t row, int tiles) {
  __threadfence();
  return atomicAdd(pass2_tickets(args) + row, 1) == tiles - 1;
}

__device__ __forceinline__ bool needs_residual(const StopInfo& info) {
  return (info.flags & (kSampled | kRejected)) == (kSampled | kRejected);
}

// The bonus draw at the stop row when every residual entry is 0 (p_s == q_s after rounding; rare):
// one warp, every column exactly. The result is lane 0's.
template <typename TT>
__device__ ArgMax stop_row_bonus(const ChainVerifyArgs& args, int64_t row, int64_t s) {
  uint64_t seed, offset;
  args.philox.resolve(seed, offset);
  const BonusNoise noise{seed, offset, static_cast<uint64_t>(row), static_cast<uint32_t>(s)};
  const TT* target = static_cast<const TT*>(args.target_logits) + (row * (args.gamma + 1) + s) * args.vocab;
  const float t = args.temperature[row];
  ArgMax best = ArgMax::empty();
  for (int32_t v = threadIdx.x % 32; v < args.vocab; v += 32)
    best.add(__fadd_rn(__fdiv_rn(load_float(target + v), t), gumbel_from_bits(philox_word(noise.block(v), v))), v);
  return group_reduce<32>(best);
}

// One warp merges the residual partials of `row` and writes the token at its stop.
template <typename TT>
__device__ __forceinline__ void write_residual_token(const ChainVerifyArgs& args, const StopInfo* stops,
                                                     const ArgMax* partials, int parts, int64_t row) {
  __threadfence();
  ArgMax best = ArgMax::empty();
  for (int part = threadIdx.x % 32; part < parts; part += 32) best.merge(partials[row * parts + part]);
  best = group_reduce<32>(best);
  const int64_t s = stops[row].stop;
  if (!(best.score > -INFINITY)) best = stop_row_bonus<TT>(args, row, s);  // uniform per warp
  if (threadIdx.x % 32 != 0) return;
  args.out_tokens[row * (args.gamma + 1) + s] = best.index;
  pass2_tickets(args)[row] = 0;
}

// Rows of `args` whose last tile this CTA was (filled by one thread per row), merged by warps.
struct LastRows {
  int64_t* rows;
  int* count;

  __device__ __forceinline__ void push(int64_t row) { rows[atomicAdd(count, 1)] = row; }
  template <typename TT>
  __device__ __forceinline__ void write(const ChainVerifyArgs& args, const StopInfo* stops, const ArgMax* partials,
                                        int tiles) {
    __syncthreads();
    for (int i = threadIdx.x / 32; i < *count; i += blockDim.x / 32)
      write_residual_token<TT>(args, stops, partials, tiles, rows[i]);
    __syncthreads();
    if (threadIdx.x == 0) *count = 0;
  }
};

// log p_s(v) <= x / T - (t_max + log t_sum): the residual max(0, p - q) <= p bounds the score
// rn(logf(residual) + G). This is the headroom of a column against the best (SkipBound) with the
// extra rounding of that bound (|log_norm| and |s_fast| at 2^-20).
__device__ __forceinline__ float residual_headroom(const SkipBound& bound, float s_fast, float log_norm) {
  return __fsub_rn(bound.headroom(__fsub_rn(s_fast, log_norm)),
                   __fmul_rn(__fadd_rn(fabsf(log_norm), fabsf(s_fast)), kSkipSlack));
}

// One residual column exactly: the reference's p, q, max(0, p - q) and score logf(r) + G.
__device__ __forceinline__ void residual_column(ArgMax& best, const StopInfo& info, float ts, float ds,
                                                uint32_t bits, int32_t v) {
  const float p = SoftmaxStats{info.t_max, info.t_sum}.prob(ts);
  const float q = SoftmaxStats{info.d_max, info.d_sum}.prob(ds);
  const float residual = __fsub_rn(p, q);
  if (residual > 0.0f) best.add(__fadd_rn(logf(residual), gumbel_from_bits(bits)), v);
}

// What the residual draw of one rejected row needs per column (pass 2, full draft logits).
template <typename DT>
struct ResidualRow {
  const DT* draft;
  StopInfo info;
  float t, inv_t, log_norm;
  int32_t end;
  BonusNoise noise;
};

// One block of 4 columns of a rejected row's stop row (the rare path of the residual draw): the
// headroom of each column's bound log p, Philox for the block when one is within kGumbelMax, the
// uniform bound, and the exact score for the columns left. Out of line; returns the new best.
template <typename DT>
__device__ __noinline__ ArgMax residual_candidates(Group<4> group, int32_t v0, ResidualRow<DT> rr, ArgMax best) {
  const SkipBound bound = SkipBound::of(best.score);
  float room[4];
  bool near = false;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    room[i] = residual_headroom(bound, __fmul_rn(group.x[i], rr.inv_t), rr.log_norm);
    near |= !(room[i] >= kGumbelMax) && v0 + i < rr.end;
  }
  if (!near) return best;
  const Philox4x32 words = rr.noise.block(v0);
  const uint32_t bits[4] = {words.x, words.y, words.z, words.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if (v0 + i >= rr.end || room[i] >= kGumbelMax) continue;
    if (room[i] > 0.0f && uniform_units(bits[i]) < gumbel_uniform_floor(room[i])) continue;
    residual_column(best, rr.info, __fdiv_rn(group.x[i], rr.t), __fdiv_rn(load_float(rr.draft + v0 + i), rr.t),
                    bits[i], v0 + i);
  }
  return best;
}

// Full draft logits, pass 2: items (chunk, row), `parts` chunks a row, walked by `ctas` CTAs
// from item k; the CTAs of a rejected sampled row draw the residual at its stop row s over their
// chunk with a bounded Gumbel draw (per block of 4 columns: the headroom of log p, then Philox and
// the uniform bound, then the exact score). The last chunk of a row (a ticket) merges the row and
// writes the token.
template <typename TT, typename DT>
__device__ void residual_from_logits(const ChainVerifyArgs& args, const StopInfo* stops, ArgMax* partials, int k,
                                     int ctas, int parts) {
  const int64_t g = args.gamma, vocab = args.vocab;
  uint64_t seed, offset;
  args.philox.resolve(seed, offset);
  const int64_t chunk = chunk_columns(vocab, parts);
  __shared__ ArgMax s_best[kRowWarps];
  __shared__ int s_last;
  for (int64_t item = k; item < int64_t(parts) * args.rows; item += ctas) {
    const int64_t row = item / parts, part = item % parts;
    const StopInfo info = stops[row];
    if (!needs_residual(info)) continue;  // uniform per CTA
    const Slab slab{static_cast<int32_t>(part * chunk), static_cast<int32_t>(min(vocab, (part + 1) * chunk))};
    const float t = args.temperature[row];
    const float inv_t = __frcp_rn(t);
    const float log_norm = __fadd_rn(info.t_max, logf(info.t_sum));
    const int64_t s = info.stop;
    const BonusNoise noise{seed, offset, static_cast<uint64_t>(row), static_cast<uint32_t>(s)};
    const TT* target = static_cast<const TT*>(args.target_logits) + (row * (g + 1) + s) * vocab;
    const DT* draft = static_cast<const DT*>(args.draft_logits) + (row * g + s) * vocab;
    const ResidualRow<DT> rr{draft, info, t, inv_t, log_norm, slab.end, noise};
    ArgMax best = ArgMax::empty();
    float threshold = -INFINITY;  // of the group's largest x * (1/T): gumbel_threshold of log p's bound
    slab.for_each<4>(target, [&](const TT* p, int32_t v0) {
      Group<4> group;
#pragma unroll
      for (int i = 0; i < 4; ++i) group.x[i] = v0 + i < slab.end ? load_float(p + i) : -INFINITY;
      const float m = fmaxf(fmaxf(group.x[0], group.x[1]), fmaxf(group.x[2], group.x[3]));
      if (!(__fmul_rn(m, inv_t) < threshold)) {  // a candidate block (NaN included)
        best = residual_candidates<DT>(group, v0, rr, best);
        threshold = __fsub_rn(__fadd_rn(log_norm, gumbel_threshold(best.score)),
                              __fmul_rn(__fadd_rn(fabsf(log_norm), __fadd_rn(fabsf(best.score), kGumbelMax)),
                                        2.0f * kSkipSlack));
      }
    });
    best = block_merge(best, s_best);
    if (threadIdx.x == 0) {
      partials[row * parts + part] = best;
      s_last = last_tile_of_row(args, row, parts);
    }
    __syncthreads();
    if (s_last && threadIdx.x < 32) write_residual_token<TT>(args, stops, partials, parts, row);
    __syncthreads();  // s_last is read by every thread before the next item writes it
  }
}

// Statistics form: the draft row at s is softcap(U_s) + W1[x_{s-1}] @ W2^T (the product rounded to
// the weight dtype, as markov_block), recomputed here for the rejected rows only: the W2 tiles of
// kTileV rows, walked by `ctas` CTAs from tile k.
template <typename TT, typename WT, int kTileV>
__device__ void residual_from_markov(const ChainVerifyArgs& args, const StopInfo* stops, ArgMax* partials, int k,
                                     int ctas) {
  extern __shared__ __align__(128) unsigned char smem[];
  using Layout = MarkovTileLayout<WT, kTileV>;
  constexpr int kChunkRows = Layout::kChunkRows;
  constexpr int kLanesPerRow = kTileV / 4;
  constexpr int kRowsPerPass = kTileThreads / kLanesPerRow;
  const Layout layout(static_cast<int>(args.rank));
  MarkovTileSmem<WT, kTileV> tile(smem, layout);
  const int64_t g = args.gamma, vocab = args.vocab, rank = args.rank;
  const int tiles = static_cast<int>(ceil_div(vocab, kTileV));
  const WT* w1 = static_cast<const WT*>(args.w1);
  const WT* w2 = static_cast<const WT*>(args.w2);
  uint64_t seed, offset;
  args.philox.resolve(seed, offset);
  __shared__ int64_t s_rows[kChunkRows];
  __shared__ int s_count;
  if (threadIdx.x == 0) s_count = 0;
  LastRows last{s_rows, &s_count};
  for (int tile_id = k; tile_id < tiles; tile_id += ctas) {
    const int64_t v0 = int64_t(tile_id) * kTileV;
    __syncthreads();  // the previous tile's rows are read: its shared memory may be overwritten
    stage_rows(tile.w2, kTileV, layout.rank, layout.k_padded, layout.ld, [&](int i) -> const WT* {
      return v0 + i < vocab ? w2 + (v0 + i) * rank : nullptr;
    });
    const int lane = threadIdx.x % kLanesPerRow, group = threadIdx.x / kLanesPerRow;
    for (int64_t row0 = 0; row0 < args.rows; row0 += kChunkRows) {
      const int64_t mine = row0 + threadIdx.x;
      const bool chunk_rejected = threadIdx.x < kChunkRows && mine < args.rows && needs_residual(stops[mine]);
      if (!__syncthreads_or(chunk_rejected)) continue;  // no GEMM for chunks without a rejection
      stage_rows(tile.e, kChunkRows, layout.rank, layout.k_padded, layout.ld, [&](int i) -> const WT* {
        const int64_t row = row0 + i;
        if (row >= args.rows) return nullptr;
        const StopInfo info = stops[row];
        if (!needs_residual(info)) return nullptr;
        const int64_t prev = info.stop == 0 ? args.anchor[row] : args.draft_tokens[row * g + info.stop - 1];
        return w1 + clamp_index(prev, vocab) * rank;
      });
      __syncthreads();
      bias_tile<WT, kTileV>(tile.w2, tile.e, tile.bias, layout);
      __syncthreads();
      for (int pass = 0; pass < kChunkRows / kRowsPerPass; ++pass) {
        const int local_row = pass * kRowsPerPass + group;
        const int64_t row = row0 + local_row;
        const StopInfo info = row < args.rows ? stops[row] : StopInfo{0, 0, 0.f, 0.f, 0.f, 0.f};
        const bool active = needs_residual(info);  // lane groups stay in the shuffles below
        ArgMax acc = ArgMax::empty();
        const int64_t col0 = v0 + lane * 4;
        if (active && col0 < vocab) {
          const float safe_t = args.temperature[row];
          const int64_t s = info.stop;
          const Philox4x32 r = philox_block(seed, offset, kStreamResample, static_cast<uint64_t>(row),
                                            static_cast<uint32_t>(s), static_cast<uint32_t>(col0 / 4));
          const TT* target = static_cast<const TT*>(args.target_logits) + (row * (g + 1) + s) * vocab;
          const TT* base = static_cast<const TT*>(args.base_logits) + (row * g + s) * vocab;  // s < g
          for (int i = 0; i < 4 && col0 + i < vocab; ++i) {
            const float ts = __fdiv_rn(load_float(target + col0 + i), safe_t);
            const float logit = round_to_dtype(
                __fadd_rn(softcap(load_float(base + col0 + i), args.softcap),
                          round_to_type<WT>(tile.bias[local_row * kTileV + lane * 4 + i])),
                args.logits_dtype);
            residual_column(acc, info, ts, __fdiv_rn(logit, safe_t), philox_word(r, col0 + i),
                            static_cast<int32_t>(col0 + i));
          }
        }
        acc = group_reduce<kLanesPerRow>(acc);
        if (active && lane == 0) partials[row * tiles + tile_id] = acc;
      }
      __syncthreads();
      if (chunk_rejected && last_tile_of_row(args, mine, tiles)) last.push(mine);
      last.write<TT>(args, stops, partials, tiles);
    }
  }
}

// Work items of one launch: `rows_items` pass-1 items, then, unless `split`, `residual_ctas`
// pass-2 CTAs.
//   fused: one launch, pass 2 waiting for the merged-request word (an in-kernel handoff);
//   split: a pass-1 launch, then a pass-2 launch (rows_items == 0) of residual_ctas CTAs as its
//   programmatic dependent, where each CTA's blockIdx is its item and it waits for the primary grid.
// kTileV == 0: the residual from full draft logits (WT unused); else from the Markov head.
struct WorkItems {
  int32_t rows_items, residual_ctas, residual_parts;  // residual_parts: chunks a row (logits form)
  bool split;
};

template <typename TT, typename DT, typename WT, int kTileV>
__global__ void __launch_bounds__(kRowThreads, kRowCtasPerSm)
    chain_verify_kernel(ChainVerifyArgs args, RowPartial* row_partials, StopInfo* stops, ArgMax* resample,
                        WorkItems items) {
  const bool split_residual = items.rows_items == 0;
  __shared__ int32_t s_item;
  if (threadIdx.x == 0 && !split_residual)
    s_item = take_work_item(global_counter(args, kItemTicket),
                            items.rows_items + (items.split ? 0 : items.residual_ctas));
  __syncthreads();
  const int32_t item = split_residual ? static_cast<int32_t>(blockIdx.x) : s_item;
  if (item < items.rows_items) {
    // A split pass 2 may launch now: it waits for this grid's completion before it reads anything
    // this grid writes, so the trigger's position only decides how early its prologue runs.
    allow_dependent_launch();
    const int64_t chunks = args.stat_chunks, per_row = chunks * (args.gamma + 1);
    verify_rows<TT, DT>(args, row_partials, stops, item % chunks, (item % per_row) / chunks, item / per_row,
                        items.residual_ctas > 0);
    return;
  }
  __shared__ uint32_t s_rejected;
  if (split_residual) {
    wait_for_primary_grid();  // pass 1 complete: the merged-request word and the stop rows are final
    if (threadIdx.x == 0) s_rejected = rejected_requests(*global_counter(args, kMergedRequests));
  } else if (threadIdx.x == 0) {  // only pass-1 items, all started before this one, raise the word
    s_rejected = rejected_requests(
        wait_for_count(global_counter(args, kMergedRequests), static_cast<int32_t>(args.rows), kMergedMask));
  }
  __syncthreads();
  if (s_rejected != 0) {  // uniform
    const int k = item - items.rows_items;
    if constexpr (kTileV == 0) {
      residual_from_logits<TT, DT>(args, stops, resample, k, items.residual_ctas, items.residual_parts);
    } else {
      residual_from_markov<TT, WT, kTileV>(args, stops, resample, k, items.residual_ctas);
    }
  }
  finish_residual_cta(args, items.residual_ctas);
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

struct Workspace {
  RowPartial* rows;
  StopInfo* stops;
  ArgMax* resample;
};

Workspace carve(void* base, int64_t rows, int64_t gamma, int stat_chunks) {
  auto* p = static_cast<unsigned char*>(base);
  Workspace w;
  w.rows = reinterpret_cast<RowPartial*>(p);
  p += align256(sizeof(RowPartial) * rows * (gamma + 1) * stat_chunks);
  w.stops = reinterpret_cast<StopInfo*>(p);
  p += align256(sizeof(StopInfo) * rows);
  w.resample = reinterpret_cast<ArgMax*>(p);
  return w;
}

// The pass-2 CTAs: at most kResidualCtasPerSm a multiprocessor, at most one an item; none at g = 0.
cudaError_t residual_ctas(const ChainVerifyArgs& args, int64_t work, int32_t& ctas) {
  ctas = 0;
  if (args.gamma == 0) return cudaSuccess;
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  ctas = static_cast<int32_t>(std::min<int64_t>(work, int64_t(kResidualCtasPerSm) * std::max(sms, 1)));
  return cudaSuccess;
}

// Pass 2 fused into pass 1's launch only where its dynamic shared memory (which every CTA of the
// launch carries) leaves pass 1 at least kFusedCtasPerSm CTAs a multiprocessor (sm_90: 228 KB a
// multiprocessor, 1 KB reserved a CTA; the kernel's static shared memory is about 5.5 KB): the
// statistics form at r = 256 with 16-bit weights fuses at R <= 32 (the 64-wide tile, 58 KB).
constexpr int kFusedCtasPerSm = 3;
constexpr size_t kSharedMemoryPerSm = 228 * 1024, kReservedPerCta = 1024, kFusedStaticBytes = 6144;
constexpr bool fused_fits(size_t smem) {
  return kFusedCtasPerSm * (smem + kFusedStaticBytes + kReservedPerCta) <= kSharedMemoryPerSm;
}

// residual_work: pass 2's items (W2 tiles, or chunks x rows); fused: both passes in one launch,
// else pass 1, then pass 2 as its programmatic dependent.
template <typename TT, typename DT, typename WT, int kTileV>
cudaError_t launch_passes(const ChainVerifyArgs& args, const Workspace& w, size_t smem, int64_t residual_work,
                          int32_t residual_parts, bool fused, cudaStream_t stream) {
  auto kernel = chain_verify_kernel<TT, DT, WT, kTileV>;
  const int32_t rows_items = static_cast<int32_t>(args.stat_chunks * (args.gamma + 1) * args.rows);
  int32_t ctas = 0;
  cudaError_t err = residual_ctas(args, residual_work, ctas);
  if (err == cudaSuccess && smem > 0 && ctas > 0)
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  if (fused || ctas == 0) {
    const WorkItems items{rows_items, ctas, residual_parts, false};
    kernel<<<static_cast<unsigned>(rows_items + ctas), kRowThreads, ctas > 0 ? smem : 0, stream>>>(
        args, w.rows, w.stops, w.resample, items);
    return cudaGetLastError();
  }
  kernel<<<static_cast<unsigned>(rows_items), kRowThreads, 0, stream>>>(args, w.rows, w.stops, w.resample,
                                                                        WorkItems{rows_items, ctas, residual_parts, true});
  err = launch_programmatic_dependent(kernel, dim3(static_cast<unsigned>(ctas)), dim3(kRowThreads), smem, stream,
                                      args, w.rows, w.stops, w.resample, WorkItems{0, ctas, residual_parts, true});
  if (err != cudaSuccess) {  // pass 1 runs without the pass 2 that resets its merged-request word
    cudaMemsetAsync(args.counters + kMergedRequests, 0, sizeof(int32_t), stream);
    return err;
  }
  return cudaGetLastError();
}

template <typename TT, typename DT>
cudaError_t launch_typed(const ChainVerifyArgs& args, int weight_dtype, const Workspace& w, cudaStream_t stream) {
  if (args.draft_logits != nullptr) {  // no shared memory: always fused
    // As many chunks a stop row as pass 1 ran CTAs per request, at least 2048 columns each.
    const int64_t parts = std::min<int64_t>(args.stat_chunks * (args.gamma + 1), ceil_div(args.vocab, 2048));
    return launch_passes<TT, DT, float, 0>(args, w, 0, parts * args.rows, static_cast<int32_t>(parts), true,
                                           stream);
  }
  const bool wide = markov_block_tile_vocab(args.rows, weight_dtype == 0 ? 4 : 2) == 128;
  return with_dtype(weight_dtype, [&](auto weight) {
    using WT = typename decltype(weight)::type;
    auto markov = [&](auto tile_v) {
      constexpr int kTileV = decltype(tile_v)::value;
      const size_t smem = args.gamma == 0 ? 0 : MarkovTileLayout<WT, kTileV>(static_cast<int>(args.rank)).total_bytes();
      return launch_passes<TT, TT, WT, kTileV>(args, w, smem, ceil_div(args.vocab, kTileV), 0, fused_fits(smem),
                                               stream);
    };
    if constexpr (std::is_same<WT, float>::value) {  // fp32 weights: the CUDA-core 64-wide tile
      return markov(std::integral_constant<int, 64>{});
    } else {
      return wide ? markov(std::integral_constant<int, 128>{}) : markov(std::integral_constant<int, 64>{});
    }
  });
}

template <typename TT>
cudaError_t launch_for_target(const ChainVerifyArgs& args, int draft_dtype, int weight_dtype, const Workspace& w,
                              cudaStream_t stream) {
  if (args.draft_logits == nullptr) return launch_typed<TT, TT>(args, weight_dtype, w, stream);
  return with_dtype(draft_dtype, [&](auto draft) {
    return launch_typed<TT, typename decltype(draft)::type>(args, weight_dtype, w, stream);
  });
}

}  // namespace

size_t chain_verify_workspace_bytes(int64_t rows, int64_t gamma, int64_t vocab, int stat_chunks,
                                    int weight_bytes) {
  (void)weight_bytes;
  const int64_t tiles = ceil_div(vocab, 64);  // the narrowest recompute tile
  return align256(sizeof(RowPartial) * rows * (gamma + 1) * stat_chunks) + align256(sizeof(StopInfo) * rows) +
         sizeof(ArgMax) * rows * tiles;
}

size_t chain_verify_counter_bytes() { return sizeof(int32_t) * (kGlobalCounters + 2 * kMaxRows); }

std::string launch_chain_verify(const ChainVerifyArgs& args, int target_dtype, int draft_dtype, int weight_dtype,
                                void* workspace, uintptr_t cuda_stream) {
  if (args.rows < 1 || args.vocab < 1) return "chain_verify: empty batch";
  if (args.vocab > 0x7FFFFFFF) return "chain_verify: vocabulary must be < 2^31";
  if (args.gamma < 0 || args.gamma > kMaxGamma) return "chain_verify: g must be in [0, 32]";
  if (args.rows > kMaxRows) return "chain_verify: at most 65535 rows";
  if (args.stat_chunks < 1 || args.stat_chunks > 65535) return "chain_verify: bad stat_chunks";
  if ((args.gamma + 1) * args.stat_chunks * args.rows + int64_t(kResidualCtasPerSm) * 1024 > 0x7FFFFFFF)
    return "chain_verify: too many chunks";
  if (args.counters == nullptr) return "chain_verify: no counters";
  if (args.draft_logits == nullptr && args.gamma > 0 && (args.rank < 1 || args.rank > kMarkovMaxRank))
    return "chain_verify: rank must be in [1, 512]";
  const Workspace w = carve(workspace, args.rows, args.gamma, args.stat_chunks);
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(cuda_stream);
  const cudaError_t err = with_dtype(target_dtype, [&](auto target) {
    return launch_for_target<typename decltype(target)::type>(args, draft_dtype, weight_dtype, w, stream);
  });
  return err == cudaSuccess ? std::string() : std::string("chain_verify: ") + cudaGetErrorString(err);
}

}  // namespace dspark_sgl
