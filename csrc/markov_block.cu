// markov_block: the fused sequential stage of a DSpark draft block (vanilla Markov head).
//
// For k = 0..g-1, one launch per position: markov_tile_kernel, one CTA per vocabulary tile, all
// rows in chunks. Per chunk: bias = W1[prev] @ W2_tile^T (W2 tile staged once for every row;
// float32 accumulate, rounded to the weight dtype as SGLang's Linear output), logits =
// softcap(U_k) + bias (rounded to the logits dtype), then per (row, tile) the softmax
// statistics of logits / T and the Gumbel-max winner. The winner's search is bounded: a column
// whose logit is below candidate_floor(row max) cannot win, so it draws no noise (no Philox, no
// logf); the others (the candidates) get the reference's exact score out of line. The last CTA
// to finish a chunk (a ticket counter in the workspace) merges the tiles' partials of the
// chunk's rows and writes x_k, its logit and score, the max and the sum. The sampled x_k is the
// previous token of position k + 1. Then one launch computes the confidence logits
// sigmoid((w . [h_k; W1[x_{k-1}]] + b) / T_k) for every (row, k).
// The full [R, g, V] logits are written only when the caller asks for them.
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <type_traits>

#include "dspark_sgl/common.cuh"
#include "dspark_sgl/launch.h"
#include "dspark_sgl/markov_tile.cuh"

namespace dspark_sgl {
namespace {

// One (row, tile) result: the winner and the statistics of the tile's logits, max = the raw
// logit max, sum = sum of exp((logit - max) / T).
struct MarkovPartial {
  float score;
  int32_t index;
  float logit;
  float max;
  float sum;
};

// The workspace of one block: partials [rows, tiles], then (zeroed by the launcher before the
// first position, reset by the merging CTA after each use) a ticket per row chunk and each
// row's running logit max (an ordered key, 0 = none yet).
struct MarkovWorkspace {
  MarkovPartial* partials;
  unsigned* tickets;
  unsigned* row_max;
};

// Bounds of the Gumbel noise -logf(-logf(u)) over every uniform bits_to_unit_float can give,
// u in [2^-24, 1 - 2^-24]: G(1 - 2^-24) = 16.635532 and G(2^-24) = -2.8115408 in float32, each
// widened by more than 30 ulps of logf's rounding.
constexpr float kGumbelMax = 16.6356f;
constexpr float kGumbelMin = -2.8116f;

// The lowest logit that can still win a sampled row whose logits reach m (greedy rows: m
// itself). Every other column loses: its score fl(fl(l / T) + G) <= fl(l / T) + G_max is
// below the max column's fl(fl(m / T) + G) >= fl(m / T) + G_min. The margin covers the
// roundings: m * (1/T) with 1/T to ~2 ulp against m / T (under 2^-21 relative), both
// additions and the products here (the 2^-18 and 2^-21 relative terms), so the bound is
// exact, never approximate.
__device__ __forceinline__ float candidate_floor(float m, float t, float inv_t) {
  if (!(t > 0.0f) || !(fabsf(m) < INFINITY)) return m;  // greedy rows, +-inf
  const float y = __fmul_rn(m, inv_t);
  const float x = __fsub_rn(__fsub_rn(y, (kGumbelMax - kGumbelMin) + 1e-3f), __fmul_rn(fabsf(y), 0x1p-18f));
  const float l = __fmul_rn(x, t);
  return fmaxf(__fsub_rn(l, __fmul_rn(fabsf(l), 0x1p-21f)), -FLT_MAX);  // -inf columns never qualify
}

// Order-preserving unsigned keys: of a float (max), and of an argmax candidate (score in the
// high word with argmax_key's order, the smaller index winning ties); 0 is below every key.
__device__ __forceinline__ unsigned float_key(float x) {
  const unsigned b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_float(unsigned k) {
  return k <= float_key(-INFINITY) ? -INFINITY : __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
__device__ __forceinline__ unsigned long long argmax_key64(float score, int32_t index) {
  const unsigned hi = static_cast<unsigned>(argmax_key(score)) ^ 0x80000000u;
  return (static_cast<unsigned long long>(hi) << 32) | (0xffffffffu - static_cast<unsigned>(index));
}

template <int kWidth>
__device__ __forceinline__ float group_max(float x) {
#pragma unroll
  for (int delta = kWidth / 2; delta > 0; delta /= 2)
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, delta, kWidth));
  return x;
}
template <int kWidth>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int delta = kWidth / 2; delta > 0; delta /= 2) x += __shfl_xor_sync(0xffffffffu, x, delta, kWidth);
  return x;
}

// The Philox key of one position's draws.
struct DrawKey {
  uint64_t seed, offset;
  uint32_t position;
};

// The exact Gumbel-max key of a sampled column, the reference's operations: fl(fl(l / T) + G)
// (no division at T = 1).
__device__ __forceinline__ float exact_score(float logit, float t, uint32_t bits) {
  return __fadd_rn(t == 1.0f ? logit : __fdiv_rn(logit, t), gumbel_from_bits(bits));
}

// A lower bound of `best` for may_beat: below it by its subtraction's rounding (|best| 2^-21)
// and by 1e-5, more than logf's two roundings inside G (< 5e-6).
__device__ __forceinline__ float beat_floor(float best) {
  return __fsub_rn(__fsub_rn(best, __fmul_rn(fabsf(best), 0x1p-21f)), 1e-5f);
}

// Whether a sampled column (logit l, uniform bits) may still beat the score `best` of an earlier
// column (a tie goes to the earlier one), decided from u without logf, given best_lo =
// beat_floor(best): it cannot when G(u) <= best - fl(l / T), i.e. u <= exp(-exp(-(best -
// fl(l / T)))). Every step is bounded the safe way: x_up >= fl(l / T) (1/T to ~2 ulp, a 2^-20
// relative margin), d_lo <= best - fl(l / T) - 5e-6, e_hi >= exp(-d_lo) and u_lo <=
// exp(-e_hi), both exponentials as ex2.approx (< 2^-22 relative) of an FMA whose rounding
// (< 1e-5 below 2^7) and log2(e)'s (< 2e-6) a 4.4e-5 margin on the exponent covers. u and
// u_lo are compared scaled by 2^24 (u * 2^24 = (bits >> 8) | 1, an integer). NaN or infinite
// inputs make d_lo NaN or -inf: the column is scored exactly.
__device__ __forceinline__ bool may_beat(float best_lo, float logit, float inv_t, uint32_t bits) {
  constexpr float kLog2e = 1.44269504f, kMargin = 4.4e-5f;
  const float xs = __fmul_rn(logit, inv_t);
  const float x_up = __fmaf_rn(fabsf(xs), 0x1p-20f, xs);
  const float d_lo = __fsub_rn(best_lo, x_up);
  const float e_hi = fast_exp2(__fmaf_rn(-d_lo, kLog2e, kMargin));
  const float u_lo_scaled = fast_exp2(__fmaf_rn(-e_hi, kLog2e, 24.0f - kMargin));  // u_lo * 2^24
  return !(static_cast<float>((bits >> 8) | 1u) <= u_lo_scaled);
}

// The rare path, out of line: one thread's candidate columns (logit >= floor_logit, or NaN)
// against its best so far, one Philox block per quad that holds a candidate; a sampled
// candidate is scored exactly (in the inner loop, one column at a time) only when may_beat
// (greedy rows: the score is the logit).
// logits: the thread's row in shared memory, quads of 4 columns at first, first + stride,
// ...; valid: the columns of the tile inside the shard; col0: the global column of the
// tile's first column. Columns come in increasing order, so a tie never replaces the best.
__device__ __noinline__ ArgMaxLogit score_candidates(ArgMaxLogit best, const float* logits, int first,
                                                     int stride, int quads, int valid, float floor_logit,
                                                     float t, float inv_t, int32_t col0, uint64_t row,
                                                     DrawKey key) {
  // argmax_key of the best so far (below every score while there is none): a later column
  // replaces it only with a strictly larger key.
  int32_t best_key = best.index == INT32_MAX ? INT32_MIN : argmax_key(best.score);
  for (int q = 0; q < quads; ++q) {
    const int c = first + q * stride;
    if (c >= valid) break;
    const float4 v = *reinterpret_cast<const float4*>(logits + c);
    const float l[4] = {v.x, v.y, v.z, v.w};
    unsigned mask = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) mask |= (c + i < valid && !(l[i] < floor_logit)) ? 1u << i : 0u;
    if (mask == 0) continue;
    uint32_t words[4] = {0, 0, 0, 0};
    const bool sampled = t > 0.0f;
    if (sampled) {
      const Philox4x32 r = philox_block(key.seed, key.offset, kStreamDraft, row, key.position,
                                        static_cast<uint32_t>(col0 + c) / 4);
      words[0] = r.x, words[1] = r.y, words[2] = r.z, words[3] = r.w;
    }
    // The quad's columns that may beat the best before it (a stale best only lets more through).
    unsigned exact = sampled ? 0u : mask;
    const float best_lo = beat_floor(best.score);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (sampled && ((mask >> i) & 1u) && may_beat(best_lo, l[i], inv_t, words[i])) exact |= 1u << i;
    while (exact != 0) {
      const int i = __ffs(exact) - 1;
      exact &= exact - 1;
      const float logit = i == 0 ? l[0] : (i == 1 ? l[1] : (i == 2 ? l[2] : l[3]));
      const uint32_t bits = i == 0 ? words[0] : (i == 1 ? words[1] : (i == 2 ? words[2] : words[3]));
      const float score = sampled ? exact_score(logit, t, bits) : logit;
      const int32_t k = argmax_key(score);
      if (k > best_key) best = ArgMaxLogit{score, col0 + c + i, logit}, best_key = k;
    }
  }
  return best;
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
// (one warp per row), writes the position's outputs and resets the rows' running max and
// the chunk's ticket for the next position (or a graph replay). Partials are read volatile:
// other CTAs wrote them (each fenced before taking its ticket).
__device__ __noinline__ void merge_chunk(MarkovOutputs out, const MarkovPartial* partials, int tiles,
                                         int64_t row0, int rows, int k, unsigned* row_max, unsigned* ticket) {
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
      row_max[row] = 0;
    }
  }
  if (threadIdx.x == 0) *ticket = 0;
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

// kPlain: no softcap, no logits kept, logits in the weights' dtype and vocab % 4 == 0 (the
// statistics form SGLang's step runs): vector loads of the base logits and no branch for the
// other cases in the epilogue. Otherwise every case, scalar loads.
// Threads and bias values per chunk of the tile kernel: 16-bit weights, 128 threads for 4096
// values (each warp four WMMA tiles, each thread 32 logits of one row); float32, 256 for 2048.
template <typename WT>
struct BlockShape {
  static constexpr int kThreads = WeightTraits<WT>::kTensorCores ? 128 : kTileThreads;
  static constexpr int kOutputs = WeightTraits<WT>::kTensorCores ? 2 * kTileOutputs : kTileOutputs;
};

template <typename BT, typename WT, int kTileV, bool kPlain>
__global__ void __launch_bounds__(BlockShape<WT>::kThreads)
    markov_tile_kernel(MarkovBlockArgs args, int k, MarkovWorkspace ws) {
  extern __shared__ __align__(128) unsigned char smem[];
  constexpr int kThreads = BlockShape<WT>::kThreads, kOutputs = BlockShape<WT>::kOutputs;
  using Layout = MarkovTileLayout<WT, kTileV, kOutputs>;
  constexpr int kChunkRows = Layout::kChunkRows;
  constexpr int kRowThreads = kThreads / kChunkRows;  // threads of one row, consecutive lanes
  constexpr int kQuads = kTileV / 4 / kRowThreads;        // 4-column groups per thread
  const Layout layout(static_cast<int>(args.rank));
  MarkovTileSmem<WT, kTileV, kOutputs> tile(smem, layout);
  __shared__ unsigned long long best_key[kChunkRows];
  __shared__ bool last_cta;

  const int64_t vocab = args.vocab, rank = args.rank;
  const int64_t v0 = int64_t(blockIdx.x) * kTileV;
  const int valid = static_cast<int>(min(int64_t(kTileV), vocab - v0));
  const int32_t col0 = static_cast<int32_t>(args.vocab_start + v0);
  const WT* w1 = static_cast<const WT*>(args.w1);
  const WT* w2 = static_cast<const WT*>(args.w2);
  const BT* base = static_cast<const BT*>(args.base_logits);
  DrawKey draw{0, 0, static_cast<uint32_t>(args.first_position + k)};
  args.philox.resolve(draw.seed, draw.offset);

  stage_rows(tile.w2, kTileV, layout.rank, layout.k_padded, layout.ld, [&](int i) -> const WT* {
    return v0 + i < vocab ? w2 + (v0 + i) * rank : nullptr;
  });

  const int seg = threadIdx.x % kRowThreads, local_row = threadIdx.x / kRowThreads;
  for (int64_t row0 = 0; row0 < args.rows; row0 += kChunkRows) {
    const int chunk_rows = static_cast<int>(min(int64_t(kChunkRows), args.rows - row0));
    // 64-row chunks (16-bit weights, 64-wide tiles): the MMA reads only the 16-row blocks of E
    // holding a row (bias_tile skips the others when a warp owns more than two)
    stage_rows(tile.e, WeightTraits<WT>::kTensorCores && kChunkRows > 32 ? min(kChunkRows, (chunk_rows + 15) / 16 * 16)
                                                                          : kChunkRows,
               layout.rank, layout.k_padded, layout.ld, [&](int i) -> const WT* {
      const int64_t row = row0 + i;
      if (row >= args.rows) return nullptr;
      const int64_t prev = k == 0 ? args.anchor[row] : args.tokens[row * args.gamma + k - 1];
      return w1 + clamp_index(prev, args.vocab_total) * rank;
    });
    if (threadIdx.x < kChunkRows) best_key[threadIdx.x] = 0;
    __syncthreads();
    bias_tile<WT, kTileV, kOutputs, kThreads>(tile.w2, tile.e, tile.bias, layout, chunk_rows);
    __syncthreads();

    // Epilogue: this thread's kQuads x 4 columns of one row, all in registers. A warp holding
    // no row of the block skips it (a warp-uniform test: its shuffles stay within the warp).
    const int64_t row = row0 + local_row;
    const bool active = local_row < chunk_rows;
    const bool warp_active = threadIdx.x / 32 * (32 / kRowThreads) < chunk_rows;
    float m = -INFINITY, sum = 0.0f;
    ArgMaxLogit best = ArgMaxLogit::empty();
    unsigned long long mine = 0;
    if (warp_active) {
    const float t = active ? args.temperature[row] : 0.0f;
    const float inv_t = t > 0.0f ? __fdividef(1.0f, t) : 1.0f;  // ~2 ulp: candidate_floor's margin covers it
    const float seen_max = active ? key_float(*reinterpret_cast<volatile unsigned*>(ws.row_max + row)) : -INFINITY;
    const int64_t flat = (row * args.gamma + k) * vocab;
    float* row_bias = tile.bias + local_row * kTileV;
    float logit[kQuads][4];
#pragma unroll
    for (int q = 0; q < kQuads; ++q) {
      const int c = (q * kRowThreads + seg) * 4;
      const float4 b = *reinterpret_cast<const float4*>(row_bias + c);
      const float bias[4] = {b.x, b.y, b.z, b.w};
      float u[4];
      if constexpr (kPlain) {
        const float4 x = load_quad(base + flat + v0 + c, active && c < valid);
        u[0] = x.x, u[1] = x.y, u[2] = x.z, u[3] = x.w;
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i)
          u[i] = active && c + i < valid ? softcap(load_float(base + flat + v0 + c + i), args.softcap) : -INFINITY;
      }
      float rb[4] = {bias[0], bias[1], bias[2], bias[3]};
      round_pair_to_type<WT>(rb[0], rb[1]);
      round_pair_to_type<WT>(rb[2], rb[3]);
#pragma unroll
      for (int i = 0; i < 4; ++i) logit[q][i] = __fadd_rn(u[i], rb[i]);
      if constexpr (kPlain) {
        round_pair_to_type<WT>(logit[q][0], logit[q][1]);
        round_pair_to_type<WT>(logit[q][2], logit[q][3]);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if constexpr (!kPlain) {
          logit[q][i] = round_to_dtype(logit[q][i], args.logits_dtype);
          if (args.logits_out != nullptr && active && c + i < valid)
            store_as_dtype(args.logits_out, flat + v0 + c + i, logit[q][i], args.logits_dtype);
        }
        m = fmaxf(m, logit[q][i]);
      }
    }
    const float thread_max = m;     // NaN logits are not numbers to fmaxf
    m = group_max<kRowThreads>(m);  // the (row, tile) max
    const float floor_logit = candidate_floor(fmaxf(m, seen_max), t, inv_t);
    const float log2e_t = __fmul_rn(inv_t, 1.44269504f);  // exp(x / T) = 2^(x * log2(e) / T)
#pragma unroll
    for (int q = 0; q < kQuads; ++q)
#pragma unroll
      for (int i = 0; i < 4; ++i)
        sum += fast_exp2(__fmul_rn(__fsub_rn(logit[q][i], m), log2e_t));  // 2^-inf = 0: masked columns
    // Candidates: a logit >= floor_logit (then the thread's max is one) or NaN (then the sum is
    // NaN; so it is when every logit of the tile row is -inf, where every column is a candidate).
    const bool any = !(thread_max < floor_logit) || sum != sum;
    sum = group_sum<kRowThreads>(m == -INFINITY ? 0.0f : sum);
    if (active && any) {
#pragma unroll
      for (int q = 0; q < kQuads; ++q)
        *reinterpret_cast<float4*>(row_bias + (q * kRowThreads + seg) * 4) =
            make_float4(logit[q][0], logit[q][1], logit[q][2], logit[q][3]);
      best = score_candidates(best, row_bias, seg * 4, kRowThreads * 4, kQuads, valid, floor_logit, t, inv_t,
                              col0, static_cast<uint64_t>(row), draw);
    }
    mine = best.index != INT32_MAX ? argmax_key64(best.score, best.index) : 0ull;
    if (mine != 0) atomicMax(&best_key[local_row], mine);
    if (active && seg == 0 && m > seen_max) atomicMax(ws.row_max + row, float_key(m));
    }
    __syncthreads();
    if (active) {
      MarkovPartial* p = ws.partials + row * gridDim.x + blockIdx.x;
      const unsigned long long winner = best_key[local_row];
      if (mine != 0 && mine == winner) p->score = best.score, p->index = best.index, p->logit = best.logit;
      if (seg == 0) {
        if (winner == 0) p->score = -INFINITY, p->index = INT32_MAX, p->logit = 0.0f;
        p->max = m, p->sum = sum;
      }
    }
    // Last-CTA ticket: every writer fences, then one thread counts this CTA in.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0)
      last_cta = atomicAdd(ws.tickets + row0 / kChunkRows, 1u) == gridDim.x - 1;
    __syncthreads();
    if (last_cta) {
      __threadfence();
      merge_chunk(MarkovOutputs{args.tokens, args.token_logits, args.token_scores, args.stat_max,
                                args.stat_sum, args.temperature, args.gamma},
                  ws.partials, static_cast<int>(gridDim.x), row0, chunk_rows, k, ws.row_max,
                  ws.tickets + row0 / kChunkRows);
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

template <typename WT, int kTileV>
using BlockLayout = MarkovTileLayout<WT, kTileV, BlockShape<WT>::kOutputs>;

bool plain_block(const MarkovBlockArgs& args, int weight_dtype) {
  return args.softcap <= 0.0f && args.logits_out == nullptr && args.logits_dtype == weight_dtype &&
         args.vocab % 4 == 0;
}

template <typename BT, typename WT, int kTileV, bool kPlain>
cudaError_t launch_tiles(const MarkovBlockArgs& args, MarkovWorkspace ws, cudaStream_t stream) {
  const BlockLayout<WT, kTileV> layout(static_cast<int>(args.rank));
  const size_t smem = layout.total_bytes();
  cudaError_t err = cudaFuncSetAttribute(markov_tile_kernel<BT, WT, kTileV, kPlain>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const int tiles = static_cast<int>(ceil_div(args.vocab, kTileV));
  for (int k = 0; k < args.gamma; ++k)
    markov_tile_kernel<BT, WT, kTileV, kPlain><<<tiles, BlockShape<WT>::kThreads, smem, stream>>>(args, k, ws);
  return cudaGetLastError();
}

template <typename BT, typename WT, int kTileV>
cudaError_t launch_variant(const MarkovBlockArgs& args, int weight_dtype, MarkovWorkspace ws,
                           cudaStream_t stream) {
  if (plain_block(args, weight_dtype)) return launch_tiles<BT, WT, kTileV, true>(args, ws, stream);
  return launch_tiles<BT, WT, kTileV, false>(args, ws, stream);
}

template <typename BT, typename WT>
cudaError_t launch_for_weights(const MarkovBlockArgs& args, int weight_dtype, MarkovWorkspace ws,
                               cudaStream_t stream) {
  if constexpr (std::is_same<WT, float>::value) {  // fp32 weights: the CUDA-core 64-wide tile
    return launch_variant<BT, WT, 64>(args, weight_dtype, ws, stream);
  } else {
    if (markov_block_tile_vocab(args.rows, static_cast<int>(sizeof(WT))) == 128)
      return launch_variant<BT, WT, 128>(args, weight_dtype, ws, stream);
    return launch_variant<BT, WT, 64>(args, weight_dtype, ws, stream);
  }
}

template <typename WT>
cudaError_t launch_confidence(const MarkovBlockArgs& args, int hidden_dtype, cudaStream_t stream) {
  const int64_t warps = args.rows * args.gamma;
  const unsigned blocks = static_cast<unsigned>(ceil_div(warps * 32, 256));
  return with_dtype(hidden_dtype, [&](auto hidden) {
    markov_confidence_kernel<typename decltype(hidden)::type, WT><<<blocks, 256, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

template <typename WT>
cudaError_t launch_block(const MarkovBlockArgs& args, int base_dtype, int weight_dtype, int hidden_dtype,
                         MarkovWorkspace ws, cudaStream_t stream) {
  const cudaError_t err = with_dtype(base_dtype, [&](auto base) {
    return launch_for_weights<typename decltype(base)::type, WT>(args, weight_dtype, ws, stream);
  });
  if (err != cudaSuccess || args.hidden == nullptr) return err;
  return launch_confidence<WT>(args, hidden_dtype, stream);
}

// Workspace layout (bytes from its start): partials, then the counters (16-byte aligned).
struct WorkspaceLayout {
  size_t partial_bytes, counter_offset, counter_words;
  WorkspaceLayout(int64_t rows, int64_t vocab, int weight_bytes) {
    const int tile_v = markov_block_tile_vocab(rows, weight_bytes);
    const int64_t chunk = (weight_bytes == 4 ? kTileOutputs : 2 * kTileOutputs) / tile_v;
    partial_bytes = static_cast<size_t>(rows * ceil_div(vocab, tile_v)) * sizeof(MarkovPartial);
    counter_offset = (partial_bytes + 15) / 16 * 16;
    counter_words = static_cast<size_t>(ceil_div(rows, chunk) + rows);
  }
  size_t total() const { return counter_offset + counter_words * sizeof(unsigned); }
};

}  // namespace

void markov_gumbel_bounds(float* gumbel_max, float* gumbel_min) {
  *gumbel_max = kGumbelMax;
  *gumbel_min = kGumbelMin;
}

int markov_block_tile_vocab(int64_t rows, int weight_bytes) {
  // Wider tiles halve the W1[prev] gathers per W2 byte once many rows share a tile.
  return weight_bytes == 2 && rows > 32 ? 128 : 64;
}

size_t markov_block_smem_bytes(int64_t rows, int64_t rank, int weight_bytes) {
  // The larger of markov_block's tile (BlockLayout) and chain_verify's (the default layout).
  const int r = static_cast<int>(rank);
  size_t dynamic;
  if (weight_bytes == 4) {
    dynamic = MarkovTileLayout<float, 64>(r).total_bytes();
  } else if (markov_block_tile_vocab(rows, weight_bytes) == 128) {
    dynamic = BlockLayout<__half, 128>(r).total_bytes();
  } else {
    dynamic = BlockLayout<__half, 64>(r).total_bytes();
  }
  // + stage_rows' static row tables and the epilogue's per-row winners
  return dynamic + 2 * kMaxStagedRows * sizeof(void*) + 2 * kTileOutputs / 64 * sizeof(uint64_t) + 16;
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
  if (args.vocab_start < 0 || args.vocab_start % 4 != 0 || args.vocab_start + args.vocab > args.vocab_total)
    return "markov_block: the shard [vocab_start, vocab_start + V) must start at a multiple of 4 "
           "inside [0, vocab_total)";
  if (args.first_position < 0 || args.first_position + args.gamma > 256)
    return "markov_block: first_position + gamma must be <= 256";
  const WorkspaceLayout wl(args.rows, args.vocab, weight_dtype == 0 ? 4 : 2);
  unsigned char* bytes = static_cast<unsigned char*>(workspace);
  unsigned* counters = reinterpret_cast<unsigned*>(bytes + wl.counter_offset);
  const MarkovWorkspace ws{reinterpret_cast<MarkovPartial*>(bytes), counters,
                           counters + (wl.counter_words - args.rows)};
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(cuda_stream);
  // The tickets and running maxima start at zero (a memset node in a captured graph).
  cudaError_t err = cudaMemsetAsync(counters, 0, wl.counter_words * sizeof(unsigned), stream);
  if (err == cudaSuccess)
    err = with_dtype(weight_dtype, [&](auto weight) {
      return launch_block<typename decltype(weight)::type>(args, base_dtype, weight_dtype, hidden_dtype, ws,
                                                           stream);
    });
  return err == cudaSuccess ? std::string() : std::string("markov_block: ") + cudaGetErrorString(err);
}

}  // namespace dspark_sgl
