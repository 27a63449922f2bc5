// chain_verify: tree-free chain verification (rejection sampling, residual resample, bonus).
//
// Four launches, none of which waits on the host:
//   verify_stats_kernel    grid (chunks, g+1, R): for every verified position j <= l_r, the
//                          target's softmax statistics of t / T and its argmax (greedy), and
//                          the draft's statistics when full draft logits are given. Several
//                          CTAs per (row, position) so that small batches fill the GPU.
//   verify_accept_kernel   one warp per request: merges the chunks, runs the acceptance tests
//                          u_j * q_j(x_j) < p_j(x_j) left to right (greedy: x_j == argmax),
//                          writes accept_lens, the accepted tokens and greedy rows' token.
//   verify_resample_kernel one CTA per vocabulary tile, every sampled request: the Gumbel-max
//                          winner of the residual max(0, p_s - q_s) and of the bonus p_s at the
//                          stop position s. Without full draft logits, the draft row at s is
//                          recomputed from the Markov head (W2 tile read once for all rows).
//   verify_finalize_kernel one CTA per request: merges the tiles, writes the token at s.
// Every vocabulary row is read once, plus the target (and draft) row at s of sampled rows.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "dspark_sgl/common.cuh"
#include "dspark_sgl/launch.h"
#include "dspark_sgl/markov_tile.cuh"

namespace dspark_sgl {
namespace {

constexpr int kStatThreads = 256;
constexpr int kResampleTileV = 128;  // full-logits resample: one warp per row, 4 columns a lane
constexpr int kMaxGamma = 32;

struct StatPartial {
  float t_max, t_sum;
  float argmax_score;
  int32_t argmax_index;
  float d_max, d_sum;
};

struct StopInfo {
  int32_t stop;
  int32_t flags;  // kSampled | kRejected
  float t_max, t_sum, d_max, d_sum;
};
constexpr int32_t kSampled = 1, kRejected = 2;

// Gumbel-max winners over a tile: of log(residual) + G (rejected rows) and of t / T + G.
struct ResamplePartial {
  ArgMax residual;
  ArgMax bonus;

  __device__ __forceinline__ static ResamplePartial empty() { return {ArgMax::empty(), ArgMax::empty()}; }
  __device__ __forceinline__ void merge(const ResamplePartial& o) {
    residual.merge(o.residual);
    bonus.merge(o.bonus);
  }
  __device__ __forceinline__ ResamplePartial lane_xor(int delta, int width) const {
    return {residual.lane_xor(delta, width), bonus.lane_xor(delta, width)};
  }
};

template <typename T>
__device__ __forceinline__ void load4(const T* p, float out[4]);
template <>
__device__ __forceinline__ void load4(const float* p, float out[4]) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
}
template <>
__device__ __forceinline__ void load4(const __nv_bfloat16* p, float out[4]) {
  const uint2 v = *reinterpret_cast<const uint2*>(p);
  const __nv_bfloat162 a = *reinterpret_cast<const __nv_bfloat162*>(&v.x);
  const __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162*>(&v.y);
  out[0] = __low2float(a), out[1] = __high2float(a), out[2] = __low2float(b), out[3] = __high2float(b);
}
template <>
__device__ __forceinline__ void load4(const __half* p, float out[4]) {
  const uint2 v = *reinterpret_cast<const uint2*>(p);
  const __half2 a = *reinterpret_cast<const __half2*>(&v.x);
  const __half2 b = *reinterpret_cast<const __half2*>(&v.y);
  out[0] = __low2float(a), out[1] = __high2float(a), out[2] = __low2float(b), out[3] = __high2float(b);
}

template <typename TT, typename DT>
__global__ void __launch_bounds__(kStatThreads)
    verify_stats_kernel(ChainVerifyArgs args, StatPartial* partials) {
  const int64_t row = blockIdx.z, j = blockIdx.y, chunk_id = blockIdx.x;
  const int64_t g = args.gamma, vocab = args.vocab;
  if (j > clamp_index(args.verify_lens[row], g + 1)) return;  // uniform per CTA
  const float t = args.temperature[row];
  const float safe_t = t > 0.0f ? t : 1.0f;
  const int64_t chunk = ceil_div(ceil_div(vocab, args.stat_chunks), 4) * 4;
  const int64_t start = chunk_id * chunk, end = min(vocab, start + chunk);
  const TT* target = static_cast<const TT*>(args.target_logits) + (row * (g + 1) + j) * vocab;
  const DT* draft = args.draft_logits != nullptr && j < g
                        ? static_cast<const DT*>(args.draft_logits) + (row * g + j) * vocab
                        : nullptr;
  SoftmaxStats ts = SoftmaxStats::empty(), ds = SoftmaxStats::empty();
  ArgMax am = ArgMax::empty();
  const bool vectorized = vocab % 4 == 0;  // rows and chunks start 4-aligned
  for (int64_t v0 = start + 4 * threadIdx.x; v0 < end; v0 += 4 * blockDim.x) {
    float x[4], d[4];
    const int n = end - v0 < 4 ? static_cast<int>(end - v0) : 4;
    if (vectorized) {
      load4(target + v0, x);
      if (draft != nullptr) load4(draft + v0, d);
    } else {
      for (int i = 0; i < n; ++i) {
        x[i] = load_float(target + v0 + i);
        if (draft != nullptr) d[i] = load_float(draft + v0 + i);
      }
    }
    for (int i = 0; i < n; ++i) {
      ts.add(__fdiv_rn(x[i], safe_t));
      am.add(x[i], static_cast<int32_t>(v0 + i));
      if (draft != nullptr) ds.add(__fdiv_rn(d[i], safe_t));
    }
  }
  __shared__ SoftmaxStats s_ts[kStatThreads / 32], s_ds[kStatThreads / 32];
  __shared__ ArgMax s_am[kStatThreads / 32];
  ts = block_merge(ts, s_ts);
  ds = block_merge(ds, s_ds);
  am = block_merge(am, s_am);
  if (threadIdx.x == 0) {
    partials[(row * (g + 1) + j) * args.stat_chunks + chunk_id] =
        StatPartial{ts.max, ts.sum, am.score, am.index, ds.max, ds.sum};
  }
}

struct PositionStats {
  SoftmaxStats target;
  ArgMax argmax;
  SoftmaxStats draft;
};

__device__ PositionStats merge_chunks(const StatPartial* p, int chunks) {
  PositionStats s{SoftmaxStats::empty(), ArgMax::empty(), SoftmaxStats::empty()};
  for (int c = threadIdx.x; c < chunks; c += 32) {
    s.target.merge(SoftmaxStats{p[c].t_max, p[c].t_sum});
    s.argmax.add(p[c].argmax_score, p[c].argmax_index);
    s.draft.merge(SoftmaxStats{p[c].d_max, p[c].d_sum});
  }
  s.target = group_reduce<32>(s.target);
  s.argmax = group_reduce<32>(s.argmax);
  s.draft = group_reduce<32>(s.draft);
  return s;  // identical in every lane
}

template <typename TT, typename DT>
__global__ void verify_accept_kernel(ChainVerifyArgs args, const StatPartial* partials,
                                     StopInfo* stops) {
  const int64_t row = blockIdx.x, g = args.gamma, vocab = args.vocab;
  const int64_t len = clamp_index(args.verify_lens[row], g + 1);
  const float t = args.temperature[row];
  const bool sampled = t > 0.0f;
  const float safe_t = sampled ? t : 1.0f;
  uint64_t seed, offset;
  args.philox.resolve(seed, offset);
  const TT* target = static_cast<const TT*>(args.target_logits);
  const int64_t* tokens = args.draft_tokens + row * g;
  const StatPartial* row_partials = partials + row * (g + 1) * args.stat_chunks;

  int64_t stop = len;
  PositionStats s{};
  for (int64_t j = 0; j < len; ++j) {
    s = merge_chunks(row_partials + j * args.stat_chunks, args.stat_chunks);
    const int64_t x = clamp_index(tokens[j], vocab);
    bool accept;
    if (sampled) {
      const float p = s.target.prob(__fdiv_rn(load_float(target + (row * (g + 1) + j) * vocab + x), safe_t));
      float q;
      if (args.draft_logits != nullptr) {
        const DT* draft = static_cast<const DT*>(args.draft_logits) + (row * g + j) * vocab;
        q = s.draft.prob(__fdiv_rn(load_float(draft + x), safe_t));
      } else {
        const SoftmaxStats d{args.draft_max[row * g + j], args.draft_sum[row * g + j]};
        q = d.prob(__fdiv_rn(args.draft_token_logits[row * g + j], safe_t));
      }
      const float u = bits_to_unit_float(philox_block(seed, offset, kStreamAccept,
                                                      static_cast<uint64_t>(row),
                                                      static_cast<uint32_t>(j), 0u).x);
      accept = __fmul_rn(u, q) < p;
    } else {
      accept = x == s.argmax.index;
    }
    // Lanes may merge float statistics in different orders: lane 0 decides for the warp.
    accept = __shfl_sync(0xffffffffu, accept, 0);
    if (!accept) {
      stop = j;
      break;
    }
  }
  if (stop == len) s = merge_chunks(row_partials + stop * args.stat_chunks, args.stat_chunks);
  if (threadIdx.x != 0) return;
  const bool rejected = stop < len;
  args.accept_lens[row] = static_cast<int32_t>(stop);
  int64_t* out = args.out_tokens + row * (g + 1);
  for (int64_t i = 0; i <= g; ++i) out[i] = i < stop ? tokens[i] : -1;
  if (!sampled) out[stop] = s.argmax.index;
  StopInfo info{static_cast<int32_t>(stop), (sampled ? kSampled : 0) | (rejected ? kRejected : 0),
                s.target.max, s.target.sum, s.draft.max, s.draft.sum};
  if (rejected && args.draft_logits == nullptr) {
    info.d_max = args.draft_max[row * g + stop];
    info.d_sum = args.draft_sum[row * g + stop];
  }
  stops[row] = info;
}

// The residual and bonus candidates of one element; `draft_scaled` is used only when rejected.
__device__ __forceinline__ void resample_element(ResamplePartial& acc, const StopInfo& info,
                                                 float target_scaled, float draft_scaled,
                                                 float gumbel, int32_t v) {
  acc.bonus.add(__fadd_rn(target_scaled, gumbel), v);
  if (info.flags & kRejected) {
    const float p = SoftmaxStats{info.t_max, info.t_sum}.prob(target_scaled);
    const float q = SoftmaxStats{info.d_max, info.d_sum}.prob(draft_scaled);
    const float residual = __fsub_rn(p, q);
    if (residual > 0.0f) acc.residual.add(__fadd_rn(logf(residual), gumbel), v);
  }
}

// Full draft logits: one warp per sampled row, 4 columns per lane.
template <typename TT, typename DT>
__global__ void __launch_bounds__(kStatThreads)
    verify_resample_kernel(ChainVerifyArgs args, const StopInfo* stops, ResamplePartial* partials) {
  const int64_t g = args.gamma, vocab = args.vocab;
  const int64_t col0 = int64_t(blockIdx.x) * kResampleTileV + (threadIdx.x % 32) * 4;
  uint64_t seed, offset;
  args.philox.resolve(seed, offset);
  for (int64_t row = threadIdx.x / 32; row < args.rows; row += blockDim.x / 32) {
    const StopInfo info = stops[row];
    if (!(info.flags & kSampled)) continue;  // uniform per warp
    const float safe_t = args.temperature[row];
    const int64_t s = info.stop;
    ResamplePartial acc = ResamplePartial::empty();
    if (col0 < vocab) {
      const Philox4x32 r = philox_block(seed, offset, kStreamResample, static_cast<uint64_t>(row),
                                        static_cast<uint32_t>(s), static_cast<uint32_t>(col0 / 4));
      const uint32_t words[4] = {r.x, r.y, r.z, r.w};
      const TT* target = static_cast<const TT*>(args.target_logits) + (row * (g + 1) + s) * vocab;
      const DT* draft = (info.flags & kRejected)
                            ? static_cast<const DT*>(args.draft_logits) + (row * g + s) * vocab
                            : nullptr;
      for (int i = 0; i < 4 && col0 + i < vocab; ++i) {
        const float ts = __fdiv_rn(load_float(target + col0 + i), safe_t);
        const float dsc = draft != nullptr ? __fdiv_rn(load_float(draft + col0 + i), safe_t) : 0.0f;
        resample_element(acc, info, ts, dsc, gumbel_from_bits(words[i]),
                         static_cast<int32_t>(col0 + i));
      }
    }
    acc = group_reduce<32>(acc);
    if (threadIdx.x % 32 == 0) partials[row * gridDim.x + blockIdx.x] = acc;
  }
}

// Statistics form: the draft row at s is softcap(U_s) + W1[x_{s-1}] @ W2^T (the product rounded to
// the weight dtype, as markov_block), recomputed here.
template <typename TT, typename WT, int kTileV>
__global__ void __launch_bounds__(kTileThreads)
    verify_resample_markov_kernel(ChainVerifyArgs args, const StopInfo* stops,
                                  ResamplePartial* partials) {
  extern __shared__ __align__(128) unsigned char smem[];
  using Layout = MarkovTileLayout<WT, kTileV>;
  constexpr int kChunkRows = Layout::kChunkRows;
  constexpr int kLanesPerRow = kTileV / 4;
  constexpr int kRowsPerPass = kTileThreads / kLanesPerRow;
  const Layout layout(static_cast<int>(args.rank));
  MarkovTileSmem<WT, kTileV> tile(smem, layout);
  const int64_t g = args.gamma, vocab = args.vocab, rank = args.rank;
  const int64_t v0 = int64_t(blockIdx.x) * kTileV;
  const WT* w1 = static_cast<const WT*>(args.w1);
  const WT* w2 = static_cast<const WT*>(args.w2);
  uint64_t seed, offset;
  args.philox.resolve(seed, offset);

  stage_rows(tile.w2, kTileV, layout.rank, layout.k_padded, layout.ld, [&](int i) -> const WT* {
    return v0 + i < vocab ? w2 + (v0 + i) * rank : nullptr;
  });
  const int lane = threadIdx.x % kLanesPerRow, group = threadIdx.x / kLanesPerRow;
  for (int64_t row0 = 0; row0 < args.rows; row0 += kChunkRows) {
    stage_rows(tile.e, kChunkRows, layout.rank, layout.k_padded, layout.ld, [&](int i) -> const WT* {
      const int64_t row = row0 + i;
      if (row >= args.rows) return nullptr;
      const StopInfo info = stops[row];
      if ((info.flags & (kSampled | kRejected)) != (kSampled | kRejected)) return nullptr;
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
      const bool active = info.flags & kSampled;  // lane groups stay in the shuffles below
      ResamplePartial acc = ResamplePartial::empty();
      const int64_t col0 = v0 + lane * 4;
      if (active && col0 < vocab) {
        const float safe_t = args.temperature[row];
        const int64_t s = info.stop;
        const Philox4x32 r = philox_block(seed, offset, kStreamResample, static_cast<uint64_t>(row),
                                          static_cast<uint32_t>(s), static_cast<uint32_t>(col0 / 4));
        const uint32_t words[4] = {r.x, r.y, r.z, r.w};
        const TT* target = static_cast<const TT*>(args.target_logits) + (row * (g + 1) + s) * vocab;
        const bool rejected = info.flags & kRejected;
        // s < g on rejected rows only: the draft row exists there.
        const TT* base = rejected ? static_cast<const TT*>(args.base_logits) + (row * g + s) * vocab : nullptr;
        for (int i = 0; i < 4 && col0 + i < vocab; ++i) {
          const float ts = __fdiv_rn(load_float(target + col0 + i), safe_t);
          float dsc = 0.0f;
          if (rejected) {
            const float logit = round_to_dtype(
                __fadd_rn(softcap(load_float(base + col0 + i), args.softcap),
                          round_to_type<WT>(tile.bias[local_row * kTileV + lane * 4 + i])),
                args.logits_dtype);
            dsc = __fdiv_rn(logit, safe_t);
          }
          resample_element(acc, info, ts, dsc, gumbel_from_bits(words[i]),
                           static_cast<int32_t>(col0 + i));
        }
      }
      acc = group_reduce<kLanesPerRow>(acc);
      if (active && lane == 0) partials[row * gridDim.x + blockIdx.x] = acc;
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kStatThreads)
    verify_finalize_kernel(ChainVerifyArgs args, const StopInfo* stops,
                           const ResamplePartial* partials, int tiles) {
  const int64_t row = blockIdx.x;
  const StopInfo info = stops[row];
  if (!(info.flags & kSampled)) return;  // uniform per CTA
  ResamplePartial best = ResamplePartial::empty();
  for (int tile = threadIdx.x; tile < tiles; tile += blockDim.x) best.merge(partials[row * tiles + tile]);
  __shared__ ResamplePartial warp_best[kStatThreads / 32];
  best = block_merge(best, warp_best);
  if (threadIdx.x == 0) {
    const bool has_residual = best.residual.score > -INFINITY;
    args.out_tokens[row * (args.gamma + 1) + info.stop] = has_residual ? best.residual.index : best.bonus.index;
  }
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

struct Workspace {
  StatPartial* stats;
  StopInfo* stops;
  ResamplePartial* resample;
};

Workspace carve(void* base, int64_t rows, int64_t gamma, int stat_chunks) {
  auto* p = static_cast<unsigned char*>(base);
  Workspace w;
  w.stats = reinterpret_cast<StatPartial*>(p);
  p += align256(sizeof(StatPartial) * rows * (gamma + 1) * stat_chunks);
  w.stops = reinterpret_cast<StopInfo*>(p);
  p += align256(sizeof(StopInfo) * rows);
  w.resample = reinterpret_cast<ResamplePartial*>(p);
  return w;
}

template <typename TT, typename WT, int kTileV>
cudaError_t launch_markov_resample(const ChainVerifyArgs& args, const Workspace& w,
                                   cudaStream_t stream) {
  const MarkovTileLayout<WT, kTileV> layout(static_cast<int>(args.rank));
  const size_t smem = layout.total_bytes();
  cudaError_t err = cudaFuncSetAttribute(verify_resample_markov_kernel<TT, WT, kTileV>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const int tiles = static_cast<int>(ceil_div(args.vocab, kTileV));
  verify_resample_markov_kernel<TT, WT, kTileV>
      <<<tiles, kTileThreads, smem, stream>>>(args, w.stops, w.resample);
  verify_finalize_kernel<<<static_cast<unsigned>(args.rows), kStatThreads, 0, stream>>>(
      args, w.stops, w.resample, tiles);
  return cudaGetLastError();
}

template <typename TT, typename DT>
cudaError_t launch_typed(const ChainVerifyArgs& args, int weight_dtype, const Workspace& w,
                         cudaStream_t stream) {
  const dim3 stat_grid(args.stat_chunks, static_cast<unsigned>(args.gamma + 1),
                       static_cast<unsigned>(args.rows));
  verify_stats_kernel<TT, DT><<<stat_grid, kStatThreads, 0, stream>>>(args, w.stats);
  verify_accept_kernel<TT, DT><<<static_cast<unsigned>(args.rows), 32, 0, stream>>>(args, w.stats,
                                                                                  w.stops);
  if (args.draft_logits != nullptr || args.gamma == 0) {  // g == 0: only bonus draws
    const int tiles = static_cast<int>(ceil_div(args.vocab, kResampleTileV));
    verify_resample_kernel<TT, DT><<<tiles, kStatThreads, 0, stream>>>(args, w.stops, w.resample);
    verify_finalize_kernel<<<static_cast<unsigned>(args.rows), kStatThreads, 0, stream>>>(
        args, w.stops, w.resample, tiles);
    return cudaGetLastError();
  }
  const bool wide = markov_block_tile_vocab(args.rows, weight_dtype == 0 ? 4 : 2) == 128;
  return with_dtype(weight_dtype, [&](auto weight) {
    using WT = typename decltype(weight)::type;
    if constexpr (std::is_same<WT, float>::value) {  // fp32 weights: the CUDA-core 64-wide tile
      return launch_markov_resample<TT, WT, 64>(args, w, stream);
    } else {
      return wide ? launch_markov_resample<TT, WT, 128>(args, w, stream)
                  : launch_markov_resample<TT, WT, 64>(args, w, stream);
    }
  });
}

template <typename TT>
cudaError_t launch_for_target(const ChainVerifyArgs& args, int draft_dtype, int weight_dtype,
                              const Workspace& w, cudaStream_t stream) {
  if (args.draft_logits == nullptr) return launch_typed<TT, TT>(args, weight_dtype, w, stream);
  return with_dtype(draft_dtype, [&](auto draft) {
    return launch_typed<TT, typename decltype(draft)::type>(args, weight_dtype, w, stream);
  });
}

}  // namespace

size_t chain_verify_workspace_bytes(int64_t rows, int64_t gamma, int64_t vocab, int stat_chunks,
                                    int weight_bytes) {
  (void)weight_bytes;
  const int64_t tiles = ceil_div(vocab, 64);  // the narrowest tile of either resample kernel
  return align256(sizeof(StatPartial) * rows * (gamma + 1) * stat_chunks) +
         align256(sizeof(StopInfo) * rows) + sizeof(ResamplePartial) * rows * tiles;
}

std::string launch_chain_verify(const ChainVerifyArgs& args, int target_dtype, int draft_dtype,
                                int weight_dtype, void* workspace, uintptr_t cuda_stream) {
  if (args.rows < 1 || args.vocab < 1) return "chain_verify: empty batch";
  if (args.vocab > 0x7FFFFFFF) return "chain_verify: vocabulary must be < 2^31";
  if (args.gamma < 0 || args.gamma > kMaxGamma) return "chain_verify: g must be in [0, 32]";
  if (args.rows > 65535) return "chain_verify: at most 65535 rows";
  if (args.stat_chunks < 1 || args.stat_chunks > 65535) return "chain_verify: bad stat_chunks";
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
