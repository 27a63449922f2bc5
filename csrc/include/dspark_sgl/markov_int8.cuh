// An int8 W2 with per-row scales in markov_block's tile kernel (dspark_sgl/markov_quant.py is
// the reference): W1 stays 16-bit (the MMA type WT), W2 [V, r] is int8 in [-127, 127] with one
// float32 scale per vocabulary row, and the bias is, in this order,
//
//     dot[n, v]  = W1[prev[n]] . q[v]               (the float32 MMA accumulator)
//     bias[n, v] = round_to_type<WT>(fl(dot * scale[v]))   (one float32 multiply, then WT)
//
// The CTA stages its int8 tile [kTileV, r] once with cp.async (16 bytes = 16 values a copy: half
// the shared memory and half the bytes of a 16-bit tile) and its kTileV scales with plain loads.
// The MMA converts each 16x16 block of W2 to WT (int8 values are exact in bf16 and fp16, so the
// products are those of the reference) into a per-warp operand buffer and loads its fragment
// from there; the epilogue multiplies the float32 accumulator values by their column's scale
// where it rounds the bias (scaled_bias).
#pragma once

#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "dspark_sgl/async_copy.cuh"
#include "dspark_sgl/common.cuh"
#include "dspark_sgl/markov_tile.cuh"

namespace dspark_sgl {

// A tile kernel's weight parameter: WT (W1 and W2 both of type WT) or Int8W2<WT> (W1 of type WT,
// W2 int8 with per-row scales). WeightStorage gives W1's type (the MMA's) and which it is.
template <typename WT>
struct Int8W2 {};
template <typename W>
struct WeightStorage {
  using type = W;
  static constexpr bool kInt8 = false;
};
template <typename WT>
struct WeightStorage<Int8W2<WT>> {
  using type = WT;
  static constexpr bool kInt8 = true;
};

// Shared-memory geometry of the int8 W2 regions of one tile for rank r (each region 128-byte
// aligned): the tile [kTileV, r] in rows of ld bytes (r rounded up to the MMA depth, + 16: rows
// stay 16-byte aligned for cp.async, skewed against bank conflicts), two 16x16 WT operand
// buffers per warp, and the tile's kTileV scales. The 16-bit regions of MarkovTileLayout (E,
// the bias tile) follow them.
template <int kTileV, int kWarps>
struct Int8W2Layout {
  int rank;
  int k_padded;
  int ld;

  __host__ __device__ explicit Int8W2Layout(int r) : rank(r), k_padded((r + 15) / 16 * 16), ld(k_padded + 16) {}
  __host__ __device__ size_t w2_bytes() const { return size_t(kTileV) * ld; }
  __host__ __device__ static constexpr size_t operand_bytes() { return size_t(kWarps) * 2 * 256 * 2; }
  __host__ __device__ static constexpr size_t scale_bytes() { return size_t(kTileV) * sizeof(float); }
  __host__ __device__ size_t total_bytes() const {
    return align(w2_bytes()) + align(operand_bytes()) + align(scale_bytes());
  }
  __host__ __device__ static constexpr size_t align(size_t b) { return (b + 127) / 128 * 128; }
};

#ifdef __CUDACC__

// The int8 regions carved from the start of the dynamic buffer; `end` is where the rest begins.
template <typename WT, int kTileV, int kWarps>
struct Int8W2Smem {
  int8_t* w2;
  WT* operand;
  float* scale;
  unsigned char* end;

  __device__ Int8W2Smem(unsigned char* base, const Int8W2Layout<kTileV, kWarps>& layout) {
    using L = Int8W2Layout<kTileV, kWarps>;
    w2 = reinterpret_cast<int8_t*>(base);
    operand = reinterpret_cast<WT*>(base + L::align(layout.w2_bytes()));
    scale = reinterpret_cast<float*>(base + L::align(layout.w2_bytes()) + L::align(L::operand_bytes()));
    end = base + layout.total_bytes();
  }
};

// Stages rows [v0, v0 + kTileV) of the int8 W2 [vocab, rank] and their scales into `tile`, zero
// filling [rank, k_padded) and the rows past the vocabulary (scale 0). Call with all threads of
// the CTA; on return the tile is visible to every thread. With rank a multiple of 16 every
// 16-byte piece is one cp.async (the rows of a _dispatch.aligned tensor are then 16-byte aligned),
// all in one group; other ranks copy byte by byte.
template <typename WT, int kTileV, int kWarps>
__device__ __forceinline__ void stage_int8_tile(const Int8W2Smem<WT, kTileV, kWarps>& tile,
                                                const Int8W2Layout<kTileV, kWarps>& layout, const int8_t* w2,
                                                const float* scale, int64_t v0, int64_t vocab) {
  const int rows = static_cast<int>(min(int64_t(kTileV), vocab - v0));
  for (int i = threadIdx.x; i < kTileV; i += blockDim.x) tile.scale[i] = i < rows ? scale[v0 + i] : 0.0f;
  const int8_t* src = w2 + v0 * layout.rank;
  if (layout.rank % 16 == 0) {
    // Piece c of row i for idx = i * per_row + c; (i, c) advance by blockDim.x without a divide.
    const int per_row = layout.k_padded / 16;
    const int step_rows = blockDim.x / per_row, step_pieces = blockDim.x % per_row;
    int i = threadIdx.x / per_row, c = threadIdx.x % per_row;
    while (i < kTileV) {  // int8 W2 pieces
      const bool copy = i < rows;
      cp_async_16(tile.w2 + size_t(i) * layout.ld + 16 * c, copy ? src + size_t(i) * layout.rank + 16 * c : nullptr,
                  copy ? 16 : 0);
      i += step_rows;
      c += step_pieces;
      if (c >= per_row) {
        c -= per_row;
        ++i;
      }
    }
    cp_async_commit();
    cp_async_wait<0>();
  } else {
    for (int idx = threadIdx.x; idx < kTileV * layout.k_padded; idx += blockDim.x) {
      const int i = idx / layout.k_padded, k = idx % layout.k_padded;
      tile.w2[size_t(i) * layout.ld + k] = i < rows && k < layout.rank ? src[size_t(i) * layout.rank + k] : int8_t(0);
    }
  }
  __syncthreads();
}

// Eight int8 values (bytes of `raw`, in order) as eight WT values (exact), packed for a 16-byte store.
template <typename WT>
__device__ __forceinline__ uint4 int8x8_to(uint2 raw) {
  unsigned out[4];
#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const unsigned word = p < 2 ? raw.x : raw.y;
    const int shift = 16 * (p % 2);
    const float lo = static_cast<float>(static_cast<int8_t>(word >> shift));
    const float hi = static_cast<float>(static_cast<int8_t>(word >> (shift + 8)));
    out[p] = pack_pair_rn<WT>(lo, hi);
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

// bias[kChunkRows, kTileV] (row-major, row stride kBiasLd, float32) = E @ q_tile^T, the
// unscaled dot products, at least for the first `valid_rows` rows: bias_tile's warp tiling
// (Layout, a MarkovTileLayout of WT, gives E's geometry), with each W2 fragment converted from the
// int8 tile into the warp's operand buffers (two, used in turn: one __syncwarp a fragment).
template <typename WT, int kTileV, int kOutputs, int kThreads, int kBiasLd, typename Layout>
__device__ __forceinline__ void bias_tile_int8(const int8_t* w2s, int ld8, WT* operand, const WT* es,
                                               float* bias, const Layout& layout, int valid_rows) {
  static_assert(WeightTraits<WT>::kTensorCores, "the int8 W2 path converts to a 16-bit MMA operand");
  namespace wmma = nvcuda::wmma;
  constexpr int kChunkRows = Layout::kChunkRows;
  constexpr int kWarps = kThreads / 32, kBlocksM = kChunkRows / 16, kBlocksN = kTileV / 16;
  constexpr int kPerWarp = kOutputs / kWarps / 256;
  constexpr int kM = kPerWarp < kBlocksM ? kPerWarp : kBlocksM, kN = kPerWarp / kM;
  static_assert(kM * kN == kPerWarp && kBlocksN % kN == 0 && kBlocksM % kM == 0, "whole tiles per warp");
  static_assert((kBlocksN / kN) * (kBlocksM / kM) == kWarps, "every warp owns kM x kN tiles");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n0 = warp % (kBlocksN / kN) * kN, m0 = warp / (kBlocksN / kN) * kM;
  const int blocks = min(kM, (valid_rows + 15) / 16 - m0);
  WT* buffers = operand + warp * 2 * 256;
  // Lane l converts row l / 2 of a 16x16 W2 block, columns 8 (l % 2) .. + 8 (col-major B: row n
  // of the block is W2 row n, its 16 k values contiguous, in the buffer with ldm 16).
  const int8_t* b_lane = w2s + size_t(n0 * 16 + lane / 2) * ld8 + 8 * (lane % 2);
  WT* b_dst = buffers + (lane / 2) * 16 + 8 * (lane % 2);
  int parity = 0;  // the buffer of the next fragment, alternating across calls of run
  auto run = [&](auto rows_tag, int m_first) {
    constexpr int M = decltype(rows_tag)::value;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[M][kN];
#pragma unroll
    for (int i = 0; i < M; ++i)
#pragma unroll
      for (int j = 0; j < kN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    wmma::fragment<wmma::matrix_a, 16, 16, 16, WT, wmma::row_major> a[M];
    wmma::fragment<wmma::matrix_b, 16, 16, 16, WT, wmma::col_major> b;
    const WT* a_src = es + size_t(m_first) * 16 * layout.ld;
    const size_t step = size_t(16) * layout.ld;
#pragma unroll 1
    for (int k0 = 0; k0 < layout.k_padded; k0 += 16) {  // int8 W2: convert, then MMA
#pragma unroll
      for (int i = 0; i < M; ++i) wmma::load_matrix_sync(a[i], a_src + i * step + k0, layout.ld);
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        const uint2 raw = *reinterpret_cast<const uint2*>(b_lane + size_t(j) * 16 * ld8 + k0);
        // The buffer written now was last read two fragments ago, before the previous __syncwarp.
        *reinterpret_cast<uint4*>(b_dst + parity * 256) = int8x8_to<WT>(raw);
        __syncwarp();
        wmma::load_matrix_sync(b, buffers + parity * 256, 16);
        parity ^= 1;
#pragma unroll
        for (int i = 0; i < M; ++i) wmma::mma_sync(acc[i][j], a[i], b, acc[i][j]);
      }
    }
#pragma unroll
    for (int i = 0; i < M; ++i)
#pragma unroll
      for (int j = 0; j < kN; ++j)
        wmma::store_matrix_sync(bias + (m_first + i) * 16 * kBiasLd + (n0 + j) * 16, acc[i][j], kBiasLd,
                                wmma::mem_row_major);
  };
  if constexpr (kM > 2) {
    if (blocks >= kM) {
      run(std::integral_constant<int, kM>{}, m0);
    } else {
      for (int i = 0; i < blocks; ++i) run(std::integral_constant<int, 1>{}, m0 + i);  // a part-filled chunk
    }
  } else if (blocks > 0) {
    run(std::integral_constant<int, kM>{}, m0);
  }
}

// Four float32 dot products of consecutive columns with their W2 scales applied, fl(dot * scale)
// (kScaled: an int8 W2; otherwise b unchanged), before the bias is rounded to W1's type.
template <bool kScaled>
__device__ __forceinline__ float4 scaled_bias(float4 b, const float* scale) {
  if constexpr (kScaled) {
    const float4 s = *reinterpret_cast<const float4*>(scale);
    return make_float4(__fmul_rn(b.x, s.x), __fmul_rn(b.y, s.y), __fmul_rn(b.z, s.z), __fmul_rn(b.w, s.w));
  } else {
    return b;
  }
}

#endif  // __CUDACC__

}  // namespace dspark_sgl
