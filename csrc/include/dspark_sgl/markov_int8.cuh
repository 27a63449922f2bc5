// An int8 W2 with per-row scales in markov_block's tile kernel (dspark_sgl/markov_quant.py is
// the reference): W1 stays 16-bit (the MMA type WT), W2 [V, r] is int8 in [-127, 127] with one
// float32 scale per vocabulary row, and the bias is, in this order,
//
//     dot[n, v]  = W1[prev[n]] . q[v]               (the float32 MMA accumulator)
//     bias[n, v] = round_to_type<WT>(fl(dot * scale[v]))   (one float32 multiply, then WT)
//
// The CTA stages its int8 tile [kTileV, r] once with cp.async (16 bytes = 16 values a copy: half
// the bytes of a 16-bit tile in flight) and its kTileV scales with plain loads, then widens the
// tile in place to WT (int8 values are exact in bf16 and fp16, so the MMA's products are those of
// the reference), once for all of the CTA's row chunks; warp_bias_mma then runs unchanged. The
// epilogue multiplies the float32 accumulator values by their column's scale where it rounds the
// bias (scaled_bias).
#pragma once

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

// The int8 W2 tile [kTileV, r] is staged into the start of MmaTileLayout's 16-bit W2 region,
// in rows of ld8 = k_padded + 16 bytes (16-byte aligned for cp.async), then widened in place to
// the 16-bit rows warp_bias_mma reads (row i at w2_row(i) >= i ld elements): a row's 16-bit copy
// starts at or after its int8 copy (ld8 <= 2 ld bytes), so widening the rows from the last to the
// first, each batch read into registers before a barrier and written after it, never overwrites int8
// bytes still to be read.
template <int kTileV>
struct Int8W2Layout {
  int rank;
  int k_padded;
  int ld8;  // bytes between int8 rows

  __host__ __device__ explicit Int8W2Layout(int r) : rank(r), k_padded((r + 15) / 16 * 16), ld8(k_padded + 16) {}
  __host__ __device__ static constexpr size_t scale_bytes() { return size_t(kTileV) * sizeof(float); }
};

#ifdef __CUDACC__

// Stages rows [v0, v0 + kTileV) of the int8 W2 [vocab, rank] into `w2s` (int8 rows of ld8 bytes)
// and their scales into `scale_s` [kTileV], zero filling [rank, k_padded) and the rows past the
// vocabulary (scale 0). Call with all threads of the CTA; on return both are visible to every
// thread. With rank a multiple of 16 every 16-byte piece is one cp.async (the rows of a
// _dispatch.aligned tensor are then 16-byte aligned), all in one group; other ranks copy byte by byte.
template <int kTileV>
__device__ __forceinline__ void stage_int8_tile(int8_t* w2s, float* scale_s, const Int8W2Layout<kTileV>& layout,
                                                const int8_t* w2, const float* scale, int64_t v0, int64_t vocab) {
  const int rows = static_cast<int>(min(int64_t(kTileV), vocab - v0));
  for (int i = threadIdx.x; i < kTileV; i += blockDim.x) scale_s[i] = i < rows ? scale[v0 + i] : 0.0f;
  const int8_t* src = w2 + v0 * layout.rank;
  if (layout.rank % 16 == 0) {
    // Piece c of row i for idx = i * per_row + c; (i, c) advance by blockDim.x without a divide.
    const int per_row = layout.k_padded / 16;
    const int step_rows = blockDim.x / per_row, step_pieces = blockDim.x % per_row;
    int i = threadIdx.x / per_row, c = threadIdx.x % per_row;
    while (i < kTileV) {  // int8 W2 pieces
      const bool copy = i < rows;
      cp_async_16(w2s + size_t(i) * layout.ld8 + 16 * c, copy ? src + size_t(i) * layout.rank + 16 * c : nullptr,
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
      w2s[size_t(i) * layout.ld8 + k] = i < rows && k < layout.rank ? src[size_t(i) * layout.rank + k] : int8_t(0);
    }
  }
  __syncthreads();
}

// Four int8 values (the bytes of `word`, in order) as four WT values (exact), two 32-bit pairs.
template <typename WT>
__device__ __forceinline__ uint2 int8x4_to(unsigned word) {
  float v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = static_cast<float>(static_cast<int8_t>(word >> (8 * i)));
  return make_uint2(pack_pair_rn<WT>(v[0], v[1]), pack_pair_rn<WT>(v[2], v[3]));
}

// Widens the staged int8 tile in place into kTileV rows of WT (k_padded values) at the same address,
// row i at rows.w2_row(i) elements: the layout warp_bias_mma reads. Batches of rows from the last: each
// thread reads up to kPieces 16-byte pieces (16 values) into registers, the CTA synchronizes,
// then it writes them widened (32 bytes a piece). Call with all threads; on return the 16-bit tile
// is visible to every thread.
template <typename WT, int kTileV>
__device__ __forceinline__ void widen_int8_tile(WT* tile, const Int8W2Layout<kTileV>& layout,
                                                const MmaTileLayout& rows) {
  static_assert(sizeof(WT) == 2, "an int8 W2 widens to a 16-bit MMA operand");
  constexpr int kPieces = 8;
  const int8_t* bytes = reinterpret_cast<const int8_t*>(tile);
  const int per_row = layout.k_padded / 16;
  const int batch_rows = max(1, kPieces * static_cast<int>(blockDim.x) / per_row);
  const int step_rows = blockDim.x / per_row, step_pieces = blockDim.x % per_row;
  for (int hi = kTileV; hi > 0; hi -= batch_rows) {  // int8 W2 widening, from the last rows
    const int lo = max(0, hi - batch_rows);
    uint4 piece[kPieces];
    int dst_at[kPieces];  // the piece's first element in the 16-bit tile
    unsigned in_batch = 0;
    int i = lo + static_cast<int>(threadIdx.x) / per_row, c = static_cast<int>(threadIdx.x) % per_row;
#pragma unroll
    for (int n = 0; n < kPieces; ++n) {
      const bool in = i < hi;
      in_batch |= unsigned(in) << n;
      piece[n] = in ? *reinterpret_cast<const uint4*>(bytes + size_t(i) * layout.ld8 + 16 * c) : make_uint4(0, 0, 0, 0);
      dst_at[n] = rows.w2_row(i) + 16 * c;
      i += step_rows;
      c += step_pieces;
      if (c >= per_row) {
        c -= per_row;
        ++i;
      }
    }
    __syncthreads();  // every int8 byte of rows [lo, hi) is read before any is overwritten
#pragma unroll
    for (int n = 0; n < kPieces; ++n) {
      const uint2 a = int8x4_to<WT>(piece[n].x), b = int8x4_to<WT>(piece[n].y);
      const uint2 e = int8x4_to<WT>(piece[n].z), f = int8x4_to<WT>(piece[n].w);
      if ((in_batch >> n) & 1u) {
        *reinterpret_cast<uint4*>(tile + dst_at[n]) = make_uint4(a.x, a.y, b.x, b.y);
        *reinterpret_cast<uint4*>(tile + dst_at[n] + 8) = make_uint4(e.x, e.y, f.x, f.y);
      }
    }
  }
  __syncthreads();
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
