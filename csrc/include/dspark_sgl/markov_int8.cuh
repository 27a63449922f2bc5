// An int8 W2 with per-row scales in markov_block's tile kernel (dspark_sgl/markov_quant.py is
// the reference): W1 stays 16-bit (the MMA type WT), W2 [V, r] is int8 in [-127, 127] with one
// float32 scale per vocabulary row, and the bias is, in this order,
//
//     dot[n, v]  = W1[prev[n]] . q[v]               (the float32 MMA accumulator)
//     bias[n, v] = round_to_type<WT>(fl(dot * scale[v]))   (one float32 multiply, then WT)
//
// The CTA stages its int8 tile [kTileV, r] once with cp.async (16 bytes = 16 values a copy: half
// the bytes of a 16-bit tile in flight) and its kTileV scales with plain loads, then widens the
// tile in place to WT with integer bit tricks and one exact 16-bit subtraction per pair, no
// conversion instruction (int8 values are exact in bf16 and fp16, so the MMA's products are those
// of the reference), once for all of the CTA's row chunks; warp_bias_mma then runs unchanged. The
// chunk loop multiplies the float32 accumulators by their column's scale before the epilogue rounds
// the bias.
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

// The int8 W2 tile [kTileV, r] is staged into the start of MmaTileLayout's 16-bit W2 region as
// one contiguous run of kTileV rows of k_padded bytes (ld8 = k_padded, a multiple of 16: every row
// 16-byte aligned for cp.async), then widened in place to the 16-bit rows warp_bias_mma reads (row
// i at widened_at(i, 0, rows) = rows.w2_row(i)). A row's 16-bit copy starts at or after its int8
// copy (i * ld8 <= 2 i ld bytes), so widening batches of rows from the last to the first, each
// batch read into registers before a barrier and written after it, never overwrites int8 bytes
// still to be read.
template <int kTileV>
struct Int8W2Layout {
  int rank;
  int k_padded;
  int ld8;  // bytes between int8 rows

  __host__ __device__ explicit Int8W2Layout(int r) : rank(r), k_padded((r + 15) / 16 * 16), ld8(k_padded) {}
  __host__ __device__ static constexpr size_t scale_bytes() { return size_t(kTileV) * sizeof(float); }
};

#ifdef __CUDACC__

// Stages rows [v0, v0 + kTileV) of the int8 W2 [vocab, rank] into `w2s` (int8 rows of ld8 bytes)
// and their scales into `scale_s` [kTileV], zero filling [rank, k_padded) and the rows past the
// vocabulary (scale 0). Call with all kThreads threads of the CTA; on return both are visible to
// every thread. With rank a multiple of 16 (ld8 = rank) the tile's rows are the same contiguous run
// of bytes in W2 and in the tile: its 16-byte piece p is at 16 p in both (W2 rows of a
// _dispatch.aligned tensor are then 16-byte aligned), one cp.async each, all in one group; other
// ranks copy byte by byte. priority: the L2 eviction priority of the copied W2 lines.
template <int kTileV, int kThreads>
__device__ __forceinline__ void stage_int8_tile(int8_t* w2s, float* scale_s, const Int8W2Layout<kTileV>& layout,
                                                const int8_t* w2, const float* scale, int64_t v0, int64_t vocab,
                                                L2Priority priority = L2Priority::kNormal) {
  const int rows = static_cast<int>(min(int64_t(kTileV), vocab - v0));
  const int8_t* src = w2 + v0 * layout.rank;
  if (layout.rank % 16 == 0) {
    const int copied = rows * (layout.rank / 16), pieces = kTileV * (layout.rank / 16);
    const int8_t* from = src + 16 * threadIdx.x;
    int8_t* to = w2s + 16 * threadIdx.x;
    const L2Policy policy = l2_policy(priority);
    for (int p = threadIdx.x; p < copied; p += kThreads, from += 16 * kThreads, to += 16 * kThreads)
      cp_async_16(to, from, 16, policy);  // int8 W2 pieces
    for (int p = copied + threadIdx.x; p < pieces; p += kThreads) cp_async_16(w2s + 16 * p, nullptr, 0);
    cp_async_commit();
    for (int i = threadIdx.x; i < kTileV; i += kThreads) scale_s[i] = i < rows ? scale[v0 + i] : 0.0f;
    cp_async_wait<0>();
  } else {
    for (int i = threadIdx.x; i < kTileV; i += kThreads) scale_s[i] = i < rows ? scale[v0 + i] : 0.0f;
    for (int idx = threadIdx.x; idx < kTileV * layout.k_padded; idx += kThreads) {
      const int i = idx / layout.k_padded, k = idx % layout.k_padded;
      w2s[size_t(i) * layout.ld8 + k] = i < rows && k < layout.rank ? src[size_t(i) * layout.rank + k] : int8_t(0);
    }
  }
  __syncthreads();
}

// Where chunk j (8 values, 16 bytes) of row i of the widened 16-bit W2 tile starts, in elements
// from the tile's start: the layout warp_bias_mma reads (MmaTileLayout::w2_row). Every widened store
// goes through it. widen_int8_tile's in-place order stays valid while every chunk of row i lies at
// or after byte i * ld8 of the tile, where row i's int8 copy starts (batch [lo, hi) then writes
// nothing below the int8 rows [0, lo) still to be read): w2_row(i) >= i ld >= i k_padded elements.
__device__ __forceinline__ int widened_at(int i, int j, const MmaTileLayout& rows) {
  return rows.w2_row(i) + 8 * j;
}

// Four int8 values (the bytes of `word`, in order) as four WT values (exact), two 32-bit pairs,
// with no conversion instruction: integer bit patterns and one exact 16-bit subtraction per pair.
//   bfloat16: for a byte b, the patterns 0x4300 | (b & 0x7f) and 0x4300 | (b & 0x80) are the values
//     128 + (b & 0x7f) and 128 or 256 (b's sign bit lands on the exponent's low bit); their
//     difference is b, exact. A pair: one byte permute, two masks, one bf16x2 subtraction.
//   half: 0x6400 | (b ^ 0x80) is 1024 + (b + 128) (ten mantissa bits of unit 1), minus 1152
//     (0x6480) is b. A word: one XOR, then per pair one byte permute and one f16x2 subtraction.
// `zero` must be 0: a caller passing a value the compiler cannot fold (widen_int8_tile) keeps the
// permute's constant byte source in one register; with a literal, ptxas rematerializes a selector
// for each permute (about one more instruction a pair in markov_tile_kernel).
template <typename WT>
__device__ __forceinline__ uint2 int8x4_to(unsigned word, unsigned zero = 0) {
  static_assert(sizeof(WT) == 2, "an int8 value widens to a 16-bit type");
  if constexpr (std::is_same<WT, __nv_bfloat16>::value) {
    // (bytes 1, 0) and (bytes 3, 2) in the low bytes of two halves whose high bytes are 0x43
    const unsigned high = 0x43434343u | zero;
    const unsigned lo = __byte_perm(word, high, 0x4140), hi = __byte_perm(word, high, 0x4342);
    return make_uint2(sub_pair_rn<WT>(lo & 0xff7fff7fu, lo & 0xff80ff80u),
                      sub_pair_rn<WT>(hi & 0xff7fff7fu, hi & 0xff80ff80u));
  } else {
    const unsigned high = 0x64646464u | zero, biased = word ^ 0x80808080u;  // each byte b + 128, unsigned
    const unsigned lo = __byte_perm(biased, high, 0x4140), hi = __byte_perm(biased, high, 0x4342);
    return make_uint2(sub_pair_rn<WT>(lo, 0x64806480u), sub_pair_rn<WT>(hi, 0x64806480u));
  }
}

// Widens the staged int8 tile in place into kTileV rows of WT (k_padded values, at widened_at) at
// the same address, the layout warp_bias_mma reads. Thread t widens piece c = t % per_row (16 values) of
// rows t / per_row + n * row_step (row_step = kThreads / per_row rows a pass; the last
// kThreads % per_row threads idle): constant strides, no divide in the loop. Batches of kPieces
// passes from the last rows: each thread reads its pieces of the batch into registers, the CTA
// synchronizes, then it writes them widened (32 bytes a piece). Call with all kThreads threads; on
// return the 16-bit tile is visible to every thread.
template <typename WT, int kTileV, int kThreads>
__device__ __forceinline__ void widen_int8_tile(WT* tile, const Int8W2Layout<kTileV>& layout,
                                                const MmaTileLayout& rows) {
  constexpr int kPieces = 8;
  const int8_t* bytes = reinterpret_cast<const int8_t*>(tile);
  const int per_row = layout.k_padded / 16;
  const int row_step = kThreads / per_row, batch_rows = kPieces * row_step;  // per_row <= 32 < kThreads
  const int c = static_cast<int>(threadIdx.x) % per_row;
  const int first = static_cast<int>(threadIdx.x) < row_step * per_row ? static_cast<int>(threadIdx.x) / per_row
                                                                         : batch_rows;  // idle: no row
  // 0 (ld8 <= 512) that nvcc cannot fold: int8x4_to's constant byte source then stays in one
  // register instead of a selector rebuilt for every permute (see int8x4_to)
  const unsigned zero = unsigned(layout.ld8) >> 16;
  uint4 piece[kPieces];  // a piece outside the batch keeps its last value, converted and not stored
#pragma unroll
  for (int n = 0; n < kPieces; ++n) piece[n] = make_uint4(0, 0, 0, 0);
  for (int hi = kTileV; hi > 0; hi -= batch_rows) {  // int8 W2 widening, from the last rows
    const int lo = hi - batch_rows;                  // rows [max(lo, 0), hi): the batch
#pragma unroll
    for (int n = 0; n < kPieces; ++n) {
      const int i = lo + first + n * row_step;
      if (unsigned(i) < unsigned(hi)) piece[n] = *reinterpret_cast<const uint4*>(bytes + i * layout.ld8 + 16 * c);
    }
    __syncthreads();  // every int8 byte of the batch's rows is read before any is overwritten
#pragma unroll
    for (int n = 0; n < kPieces; ++n) {
      const int i = lo + first + n * row_step;
      const uint2 a = int8x4_to<WT>(piece[n].x, zero), b = int8x4_to<WT>(piece[n].y, zero);
      const uint2 e = int8x4_to<WT>(piece[n].z, zero), f = int8x4_to<WT>(piece[n].w, zero);
      if (unsigned(i) < unsigned(hi)) {
        *reinterpret_cast<uint4*>(tile + widened_at(i, 2 * c, rows)) = make_uint4(a.x, a.y, b.x, b.y);
        *reinterpret_cast<uint4*>(tile + widened_at(i, 2 * c + 1, rows)) = make_uint4(e.x, e.y, f.x, f.y);
      }
    }
  }
  __syncthreads();
}

#endif  // __CUDACC__

}  // namespace dspark_sgl
