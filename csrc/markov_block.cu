// markov_block: the fused sequential stage of a DSpark draft block (vanilla Markov head).
//
// For k = 0..g-1 (two launches per position):
//   markov_tile_kernel   one CTA per vocabulary tile, all rows: bias = W1[prev] @ W2_tile^T
//                        (W2 tile read once for every row; float32 accumulate, rounded to the
//                        weight dtype as SGLang's Linear output), logits = softcap(U_k) + bias
//                        (rounded to the logits dtype: fp32, or SGLang's bf16/fp16 step dtype),
//                        per row and tile: the Gumbel-max (or greedy argmax) winner with its
//                        logit, and the softmax statistics of logits / T.
//   markov_reduce_kernel one CTA per row: merges the tiles, writes x_k, its logit, max, sum.
// The sampled x_k is the previous token of position k + 1. Then one launch computes the
// confidence logits sigmoid((w . [h_k; W1[x_{k-1}]] + b) / T_k) for every (row, k).
// The full [R, g, V] float32 logits are written only when the caller asks for them.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "dspark_sgl/common.cuh"
#include "dspark_sgl/launch.h"
#include "dspark_sgl/markov_tile.cuh"

namespace dspark_sgl {
namespace {

struct MarkovPartial {
  float score;
  int32_t index;
  float logit;
  float max;
  float sum;
};

template <typename BT, typename WT, int kTileV>
__global__ void __launch_bounds__(kTileThreads)
    markov_tile_kernel(MarkovBlockArgs args, int k, MarkovPartial* partials) {
  extern __shared__ __align__(128) unsigned char smem[];
  using Layout = MarkovTileLayout<WT, kTileV>;
  constexpr int kChunkRows = Layout::kChunkRows;
  constexpr int kLanesPerRow = kTileV / 4;  // each lane owns 4 consecutive columns
  constexpr int kRowsPerPass = kTileThreads / kLanesPerRow;
  const Layout layout(static_cast<int>(args.rank));
  MarkovTileSmem<WT, kTileV> tile(smem, layout);

  const int64_t vocab = args.vocab, rank = args.rank;
  const int64_t v0 = int64_t(blockIdx.x) * kTileV;
  const WT* w1 = static_cast<const WT*>(args.w1);
  const WT* w2 = static_cast<const WT*>(args.w2);
  const BT* base = static_cast<const BT*>(args.base_logits);
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
      const int64_t prev = k == 0 ? args.anchor[row] : args.tokens[row * args.gamma + k - 1];
      return w1 + clamp_index(prev, args.vocab_total) * rank;
    });
    __syncthreads();
    bias_tile<WT, kTileV>(tile.w2, tile.e, tile.bias, layout);
    __syncthreads();
    for (int pass = 0; pass < kChunkRows / kRowsPerPass; ++pass) {
      const int local_row = pass * kRowsPerPass + group;
      const int64_t row = row0 + local_row;
      // Lanes of inactive rows still join the shuffles below (full-warp masks).
      const bool active = row < args.rows;
      const float t = active ? args.temperature[row] : 0.0f;
      const bool sampled = t > 0.0f;
      const float safe_t = sampled ? t : 1.0f;
      const int64_t col0 = v0 + lane * 4;
      const int64_t flat = (row * args.gamma + k) * vocab;
      uint32_t words[4] = {0, 0, 0, 0};
      if (active && sampled && col0 < vocab) {
        // Keyed by the global column: a vocab shard draws what the whole row would.
        const Philox4x32 r =
            philox_block(seed, offset, kStreamDraft, static_cast<uint64_t>(row),
                         static_cast<uint32_t>(args.first_position + k),
                         static_cast<uint32_t>((args.vocab_start + col0) / 4));
        words[0] = r.x, words[1] = r.y, words[2] = r.z, words[3] = r.w;
      }
      ArgMaxLogit best = ArgMaxLogit::empty();
      SoftmaxStats stats = SoftmaxStats::empty();
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t v = col0 + i;
        if (!active || v >= vocab) continue;  // not break: a fully unrolled loop keeps words[] in registers
        const float u = softcap(load_float(base + flat + v), args.softcap);
        const float logit =
            round_to_dtype(__fadd_rn(u, round_to_type<WT>(tile.bias[local_row * kTileV + lane * 4 + i])),
                           args.logits_dtype);
        if (args.logits_out != nullptr) store_as_dtype(args.logits_out, flat + v, logit, args.logits_dtype);
        const float scaled = __fdiv_rn(logit, safe_t);
        stats.add(scaled);
        const float score = sampled ? __fadd_rn(scaled, gumbel_from_bits(words[i])) : logit;
        best.add(score, static_cast<int32_t>(args.vocab_start + v), logit);
      }
      best = group_reduce<kLanesPerRow>(best);
      stats = group_reduce<kLanesPerRow>(stats);
      if (active && lane == 0) {
        partials[row * gridDim.x + blockIdx.x] =
            MarkovPartial{best.score, best.index, best.logit, stats.max, stats.sum};
      }
    }
    __syncthreads();  // E and bias are overwritten by the next chunk
  }
}

__global__ void __launch_bounds__(kTileThreads)
    markov_reduce_kernel(MarkovBlockArgs args, int k, const MarkovPartial* partials, int tiles) {
  const int64_t row = blockIdx.x;
  ArgMaxLogit best = ArgMaxLogit::empty();
  SoftmaxStats stats = SoftmaxStats::empty();
  for (int tile = threadIdx.x; tile < tiles; tile += blockDim.x) {
    const MarkovPartial p = partials[row * tiles + tile];
    best.add(p.score, p.index, p.logit);
    stats.merge(SoftmaxStats{p.max, p.sum});
  }
  __shared__ ArgMaxLogit warp_best[kTileThreads / 32];
  __shared__ SoftmaxStats warp_stats[kTileThreads / 32];
  best = block_merge(best, warp_best);
  stats = block_merge(stats, warp_stats);
  if (threadIdx.x == 0) {
    const int64_t at = row * args.gamma + k;
    args.tokens[at] = best.index;
    args.token_logits[at] = best.logit;
    if (args.token_scores != nullptr) args.token_scores[at] = best.score;
    args.stat_max[at] = stats.max;
    args.stat_sum[at] = stats.sum;
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

template <typename BT, typename WT, int kTileV>
cudaError_t launch_tiles(const MarkovBlockArgs& args, MarkovPartial* partials, cudaStream_t stream) {
  const MarkovTileLayout<WT, kTileV> layout(static_cast<int>(args.rank));
  const size_t smem = layout.total_bytes();
  cudaError_t err = cudaFuncSetAttribute(markov_tile_kernel<BT, WT, kTileV>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const int tiles = static_cast<int>(ceil_div(args.vocab, kTileV));
  for (int k = 0; k < args.gamma; ++k) {
    markov_tile_kernel<BT, WT, kTileV><<<tiles, kTileThreads, smem, stream>>>(args, k, partials);
    markov_reduce_kernel<<<static_cast<unsigned>(args.rows), kTileThreads, 0, stream>>>(
        args, k, partials, tiles);
  }
  return cudaGetLastError();
}

template <typename BT, typename WT>
cudaError_t launch_for_weights(const MarkovBlockArgs& args, MarkovPartial* partials,
                               cudaStream_t stream) {
  if constexpr (std::is_same<WT, float>::value) {  // fp32 weights: the CUDA-core 64-wide tile
    return launch_tiles<BT, WT, 64>(args, partials, stream);
  } else {
    if (markov_block_tile_vocab(args.rows, static_cast<int>(sizeof(WT))) == 128)
      return launch_tiles<BT, WT, 128>(args, partials, stream);
    return launch_tiles<BT, WT, 64>(args, partials, stream);
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
cudaError_t launch_block(const MarkovBlockArgs& args, int base_dtype, int hidden_dtype,
                         MarkovPartial* partials, cudaStream_t stream) {
  const cudaError_t err = with_dtype(base_dtype, [&](auto base) {
    return launch_for_weights<typename decltype(base)::type, WT>(args, partials, stream);
  });
  if (err != cudaSuccess || args.hidden == nullptr) return err;
  return launch_confidence<WT>(args, hidden_dtype, stream);
}

}  // namespace

int markov_block_tile_vocab(int64_t rows, int weight_bytes) {
  // Wider tiles halve the W1[prev] gathers per W2 byte once many rows share a tile.
  return weight_bytes == 2 && rows > 32 ? 128 : 64;
}

size_t markov_block_smem_bytes(int64_t rows, int64_t rank, int weight_bytes) {
  const int r = static_cast<int>(rank);
  size_t dynamic;
  if (weight_bytes == 4) {
    dynamic = MarkovTileLayout<float, 64>(r).total_bytes();
  } else if (markov_block_tile_vocab(rows, weight_bytes) == 128) {
    dynamic = MarkovTileLayout<__half, 128>(r).total_bytes();
  } else {
    dynamic = MarkovTileLayout<__half, 64>(r).total_bytes();
  }
  return dynamic + 2 * kMaxStagedRows * sizeof(void*);  // + stage_rows' static row tables
}

size_t markov_block_workspace_bytes(int64_t rows, int64_t vocab, int weight_bytes) {
  const int tile_v = markov_block_tile_vocab(rows, weight_bytes);
  return static_cast<size_t>(rows * ceil_div(vocab, tile_v)) * sizeof(MarkovPartial);
}

std::string launch_markov_block(const MarkovBlockArgs& args, int base_dtype, int weight_dtype,
                                int hidden_dtype, void* workspace, uintptr_t cuda_stream) {
  if (args.rows < 1 || args.gamma < 1 || args.vocab < 1) return "markov_block: empty block";
  if (args.rank < 1 || args.rank > kMarkovMaxRank) return "markov_block: rank must be in [1, 512]";
  if (args.rows > 0x7FFFFFFF || args.vocab_start + args.vocab > 0x7FFFFFFF)
    return "markov_block: shape too large";
  if (args.vocab_start < 0 || args.vocab_start % 4 != 0 || args.vocab_start + args.vocab > args.vocab_total)
    return "markov_block: the shard [vocab_start, vocab_start + vocab) must start at a multiple of 4 "
           "inside [0, vocab_total)";
  if (args.first_position < 0 || args.first_position + args.gamma > 256)
    return "markov_block: first_position + gamma must be <= 256";
  auto* partials = static_cast<MarkovPartial*>(workspace);
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(cuda_stream);
  const cudaError_t err = with_dtype(weight_dtype, [&](auto weight) {
    return launch_block<typename decltype(weight)::type>(args, base_dtype, hidden_dtype, partials, stream);
  });
  return err == cudaSuccess ? std::string() : std::string("markov_block: ") + cudaGetErrorString(err);
}

}  // namespace dspark_sgl
