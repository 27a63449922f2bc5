// The skinny GEMM of the Markov bias on one vocabulary tile, shared by the Markov block
// sampler and by chain verification's recompute of a rejected row.
//
// A CTA owns columns [v0, v0 + kTileV) of the vocabulary. It stages W2[v0 : v0 + kTileV]
// ([kTileV, r]) in shared memory once, then for each chunk of rows gathers E = W1[prev]
// ([chunk, r]) and computes bias = E @ W2_tile^T (float32). Two forms: markov_block's 16-bit
// weights run warp_bias_mma (mma.sync m16n8k16 into registers, MmaTileLayout's skewed W2 rows);
// verification's recompute and float32 weights run bias_tile into a shared bias tile (16-bit:
// WMMA m16n16k16; float32: CUDA-core FMAs). Tensor cores accumulate in float32: the products of
// 16-bit values are exact, only the summation order differs from the reference. Readers round
// each bias value to the weight type (round_to_type<WT>) before adding it, as SGLang's
// markov_w2 Linear in the weights' dtype does.
#pragma once

#include <mma.h>

#include <type_traits>

#include "dspark_sgl/async_copy.cuh"
#include "dspark_sgl/common.cuh"
#include "dspark_sgl/mma_fragment.cuh"

namespace dspark_sgl {

constexpr int kTileThreads = 256;
constexpr int kTileOutputs = 2048;  // kChunkRows * kTileV: one 16x16 WMMA tile per warp

template <typename WT>
struct WeightTraits {
  static constexpr bool kTensorCores = !std::is_same<WT, float>::value;
};

// Shared-memory geometry of one tile for rank r; kOutputs = kChunkRows * kTileV bias values
// per chunk (a multiple of kTileOutputs: each warp computes kOutputs / kTileOutputs WMMA tiles),
// stored row-major with a row stride of kBiasLd floats (>= kTileV, a multiple of 4: WMMA's ldm).
template <typename WT, int kTileV, int kOutputs = kTileOutputs, int kBiasLd = kTileV>
struct MarkovTileLayout {
  static_assert(kOutputs % kTileOutputs == 0, "whole WMMA tiles per warp");
  static_assert(kBiasLd >= kTileV && kBiasLd % 4 == 0, "a WMMA-storable bias row stride");
  static constexpr int kChunkRows = kOutputs / kTileV;
  int rank;
  int k_padded;  // r rounded up to the MMA depth (16) for 16-bit weights, r for float32
  int ld;        // leading dimension (elements) of the W2 tile and of E

  __host__ __device__ explicit MarkovTileLayout(int r) : rank(r) {
    if (WeightTraits<WT>::kTensorCores) {
      k_padded = (r + 15) / 16 * 16;
      ld = k_padded + 8;  // 16-byte skew against bank conflicts; a multiple of 8 (WMMA ldm)
    } else {
      k_padded = r;
      ld = r % 2 == 0 ? r + 1 : r;  // odd stride: consecutive columns hit distinct banks
    }
  }
  __host__ __device__ size_t w2_bytes() const { return size_t(kTileV) * ld * sizeof(WT); }
  __host__ __device__ size_t e_bytes() const { return size_t(kChunkRows) * ld * sizeof(WT); }
  __host__ __device__ size_t bias_bytes() const { return size_t(kChunkRows) * kBiasLd * sizeof(float); }
  __host__ __device__ size_t total_bytes() const {
    // Every region starts 128-byte aligned (WMMA needs 32).
    return align(w2_bytes()) + align(e_bytes()) + align(bias_bytes());
  }
  // The W2 tile and E only (a kernel keeping the bias tile in static shared memory), E after W2.
  __host__ __device__ size_t staged_bytes() const { return align(w2_bytes()) + align(e_bytes()); }
  __host__ __device__ size_t e_offset() const { return align(w2_bytes()); }
  __host__ __device__ int w2_row(int c) const { return c * ld; }  // the first element of W2 row c
  __host__ __device__ static size_t align(size_t b) { return (b + 127) / 128 * 128; }
};

// The register-resident tile of markov_block with 16-bit weights (mma.sync, mma_fragment.cuh): a
// CTA owns tile_v (256, or 128 where a wide tile's shared memory does not fit the rank) vocabulary
// columns and has 4 x tile_v / 128 warps; warp w computes 16 rows (row block w / (tile_v / 128)) x
// kMmaWarpColumns columns (segment w % (tile_v / 128)) of the bias, the float32 accumulators staying
// in registers for the epilogue. Shared memory holds the W2 tile (tile_v rows, the vocabulary columns
// v0 + c, k contiguous) and E (kMmaChunkRows rows of k_padded, linear with stride ld). W2 row c
// starts at w2_row(c) = c ld + 16 (c >> 5) elements: with ld / 8 odd (16-byte units), the 8 rows one
// ldmatrix matrix reads (c = 32 q + 2 j + s + const, q < 4, s < 2) fall on 8 distinct 16-byte bank
// groups; linear rows would put the rows 32 apart on the same ones.
constexpr int kMmaMaxTileV = 256;
constexpr int kMmaWarpColumns = 128;  // a warp's columns: one segment of a tile
constexpr int kMmaChunkRows = 64;     // 4 row blocks of 16
constexpr int kMmaTiles = kMmaWarpColumns / 8;  // n8 tiles of a warp: 4 accumulators each a thread

// The tile width markov_block takes with 16-bit W1 at rank r: 256 while its shared memory fits
// (r <= 256: 169 KB at r = 256), else 128 (200 KB at r = 512).
__host__ __device__ constexpr int mma_tile_vocab(int rank) { return rank <= 256 ? 256 : 128; }

struct MmaTileLayout {
  int rank;
  int k_padded;  // r rounded up to the MMA depth (16); the staging zero fills [r, k_padded)
  int ld;        // E's row stride and W2's base stride (elements): k_padded + 8, a multiple of 8
  int tile_v;    // the tile's columns (W2 rows)

  __host__ __device__ MmaTileLayout(int r, int tile_columns)
      : rank(r), k_padded((r + 15) / 16 * 16), ld(k_padded + 8), tile_v(tile_columns) {}
  // The first element of W2 row c (16-byte aligned), for the staging, the int8 widening and the MMA.
  __host__ __device__ int w2_row(int c) const { return c * ld + 16 * (c >> 5); }
  __host__ __device__ size_t w2_bytes() const { return size_t(w2_row(tile_v)) * 2; }
  __host__ __device__ size_t e_bytes() const { return size_t(kMmaChunkRows) * ld * 2; }
  // W2 then E, each region 128-byte aligned.
  __host__ __device__ size_t staged_bytes() const { return align(w2_bytes()) + align(e_bytes()); }
  __host__ __device__ size_t e_offset() const { return align(w2_bytes()); }
  __host__ __device__ static size_t align(size_t b) { return (b + 127) / 128 * 128; }
};

#ifdef __CUDACC__

// Copies `count` (<= kMaxStagedRows) rows of `rank` elements into shared memory rows of
// stride `ld`, zero filling [rank, k_padded) and rows whose source is null. src(i) gives
// row i's source; it is evaluated once per row. Call with all threads of the CTA; on return
// the rows are visible to every thread.
//
// 16-bit weights with rank a multiple of 8: every 16-byte piece of the tile is one cp.async
// (a zero fill for padding and null rows), all of them in one group, so the whole tile's
// loads are in flight at once. This needs 16-byte aligned sources (the launchers pass
// _dispatch.aligned tensors, so every row of a rank-multiple-of-8 matrix is) and destinations
// (MarkovTileLayout, MmaTileLayout: 128-byte aligned regions, ld a multiple of 8). Other ranks and float32
// weights (odd ld: rows not 16-byte aligned in shared memory) copy element by element.
constexpr int kMaxStagedRows = kMmaMaxTileV;

// Where the calling thread starts in the 16-byte pieces of rows of k_padded elements of type WT
// (piece c of row i for idx = i * per_row + c, idx = threadIdx.x + n * blockDim.x) and how it
// advances: the divisions stage_rows needs, computed once for any number of calls (used only by
// the 16-byte copies; a row narrower than 16 bytes gets a plan of one piece, never used).
template <typename WT>
struct StagePlan {
  int per_row, step_rows, step_pieces, first_row, first_piece;
  __device__ explicit StagePlan(int k_padded) {
    per_row = max(1, k_padded / (16 / int(sizeof(WT))));
    step_rows = blockDim.x / per_row, step_pieces = blockDim.x % per_row;
    first_row = threadIdx.x / per_row, first_piece = threadIdx.x % per_row;
  }
};

// Row i of a tile staged with a row stride of ld elements starts at element i * ld.
struct LinearRows {
  int ld;
  __device__ __forceinline__ size_t operator()(int i) const { return size_t(i) * ld; }
};

// stage_rows' element-by-element copy, out of line (ranks not a multiple of 8, float32 weights):
// rows whose source is null, and [rank, k_padded), are zero filled; row i starts at dst + row_at(i).
template <typename WT, typename RowAt>
__device__ __noinline__ void stage_rows_by_element(WT* dst, const WT* const* sources, int count, int rank,
                                                   int k_padded, RowAt row_at) {
  for (int idx = threadIdx.x; idx < count * k_padded; idx += blockDim.x) {
    const int i = idx / k_padded, k = idx % k_padded;
    const WT* s = sources[i];
    dst[row_at(i) + k] = (s != nullptr && k < rank) ? s[k] : WT(0.0f);
  }
}

// The same as stage_rows with row i at dst + row_at(i) (16-byte aligned for the 16-byte copies):
// a tile whose rows are not evenly spaced (MmaTileLayout's W2 rows). priority: the L2 eviction
// priority of the lines the 16-byte copies read.
template <typename WT, typename RowAt, typename SrcFn>
__device__ __forceinline__ void stage_rows_at(WT* dst, int count, int rank, int k_padded, RowAt row_at,
                                              const StagePlan<WT>& plan, SrcFn row_source,
                                              L2Priority priority = L2Priority::kNormal) {
  __shared__ const WT* sources[kMaxStagedRows];
  for (int i = threadIdx.x; i < count; i += blockDim.x) sources[i] = row_source(i);
  __syncthreads();
  constexpr int kVec = 16 / sizeof(WT);
  const bool vectorized = sizeof(WT) == 2 && rank % kVec == 0;
  if (vectorized) {
    const L2Policy policy = l2_policy(priority);
    // Piece c of row i for idx = i * per_row + c; (i, c) advance by blockDim.x without a divide.
    const int per_row = plan.per_row, step_rows = plan.step_rows, step_pieces = plan.step_pieces;
    if (step_pieces == 0) {
      // A row's pieces divide the CTA (k_padded / 8 divides blockDim.x, e.g. r = 256): each pass
      // copies whole rows, so the thread's piece, and whether it lies past the rank, are fixed.
      const int k = plan.first_piece * kVec;
      const bool in_rank = k < rank;
#pragma unroll 4
      for (int i = plan.first_row; i < count; i += step_rows) {
        const WT* s = sources[i];
        const bool copy = in_rank && s != nullptr;  // else a zero fill: nothing is read (s may be null)
        cp_async_16(dst + row_at(i) + k, s + (copy ? k : 0), copy ? 16 : 0, policy);
      }
    } else {
      int i = plan.first_row, c = plan.first_piece;
      while (i < count) {
        const WT* s = sources[i];
        const int k = c * kVec;
        const bool copy = s != nullptr && k < rank;  // else a zero fill: nothing is read
        cp_async_16(dst + row_at(i) + k, copy ? s + k : nullptr, copy ? 16 : 0, policy);
        i += step_rows;
        c += step_pieces;
        if (c >= per_row) {
          c -= per_row;
          ++i;
        }
      }
    }
    cp_async_commit();
    cp_async_wait<0>();
  } else {
    stage_rows_by_element(dst, sources, count, rank, k_padded, row_at);
  }
  __syncthreads();  // the rows are complete for every thread; `sources` is reused by the next call
}

template <typename WT, typename SrcFn>
__device__ __forceinline__ void stage_rows(WT* dst, int count, int rank, int k_padded, int ld, SrcFn row_source) {
  stage_rows_at(dst, count, rank, k_padded, LinearRows{ld}, StagePlan<WT>(k_padded), row_source);
}

// The same with the thread's plan given (a kernel staging rows in a loop computes it once).
template <typename WT, typename SrcFn>
__device__ __forceinline__ void stage_rows(WT* dst, int count, int rank, int k_padded, int ld,
                                           const StagePlan<WT>& plan, SrcFn row_source) {
  stage_rows_at(dst, count, rank, k_padded, LinearRows{ld}, plan, row_source);
}

// bias[kChunkRows, kTileV] (row-major, row stride kBiasLd, float32) = E @ W2_tile^T, at least for
// the first `valid_rows` rows (16-bit weights: the row blocks past them are skipped when a warp owns
// more than two, so E rows there need not be staged; float32 weights: every row). Call with all
// kThreads threads. With 16-bit weights each warp computes a kM x kN block of 16x16 tiles
// (kOutputs / (256 * warps) tiles), so each E fragment serves kN W2 fragments and each W2 fragment
// kM E fragments.
template <typename WT, int kTileV, int kOutputs = kTileOutputs, int kThreads = kTileThreads, int kBiasLd = kTileV>
__device__ __forceinline__ void bias_tile(const WT* w2s, const WT* es, float* bias,
                                          const MarkovTileLayout<WT, kTileV, kOutputs, kBiasLd>& layout,
                                          int valid_rows = kOutputs / kTileV) {
  constexpr int kChunkRows = MarkovTileLayout<WT, kTileV, kOutputs, kBiasLd>::kChunkRows;
  if constexpr (WeightTraits<WT>::kTensorCores) {
    namespace wmma = nvcuda::wmma;
    constexpr int kWarps = kThreads / 32, kBlocksM = kChunkRows / 16, kBlocksN = kTileV / 16;
    constexpr int kPerWarp = kOutputs / kWarps / 256;
    constexpr int kM = kPerWarp < kBlocksM ? kPerWarp : kBlocksM, kN = kPerWarp / kM;
    static_assert(kM * kN == kPerWarp && kBlocksN % kN == 0 && kBlocksM % kM == 0, "whole tiles per warp");
    static_assert((kBlocksN / kN) * (kBlocksM / kM) == kWarps, "every warp owns kM x kN tiles");
    const int warp = threadIdx.x / 32;
    const int n0 = warp % (kBlocksN / kN) * kN, m0 = warp / (kBlocksN / kN) * kM;
    // With more than two row blocks a warp computes only those holding a valid row (a
    // warp-uniform count); with two it computes both once the first holds one.
    const int blocks = min(kM, (valid_rows + 15) / 16 - m0);
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
      const WT* b_src = w2s + size_t(n0) * 16 * layout.ld;
      const size_t step = size_t(16) * layout.ld;
#pragma unroll 1
      for (int k0 = 0; k0 < layout.k_padded; k0 += 16) {
#pragma unroll
        for (int i = 0; i < M; ++i) wmma::load_matrix_sync(a[i], a_src + i * step + k0, layout.ld);
#pragma unroll
        for (int j = 0; j < kN; ++j) {
          wmma::load_matrix_sync(b, b_src + j * step + k0, layout.ld);
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
      run(std::integral_constant<int, kM>{}, m0);  // two blocks at most: both are computed
    }
  } else {
    constexpr int kGroups = kThreads / kTileV;
    constexpr int kRowsPerThread = kChunkRows / kGroups;
    const int col = threadIdx.x % kTileV, group = threadIdx.x / kTileV;
    float acc[kRowsPerThread];
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) acc[i] = 0.0f;
    const WT* w_row = w2s + size_t(col) * layout.ld;
    for (int k = 0; k < layout.rank; ++k) {
      const float w = to_float(w_row[k]);
#pragma unroll
      for (int i = 0; i < kRowsPerThread; ++i)
        acc[i] = fmaf(to_float(es[size_t(group + i * kGroups) * layout.ld + k]), w, acc[i]);
    }
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) bias[(group + i * kGroups) * kBiasLd + col] = acc[i];
  }
}

// One warp's 16 x kMmaWarpColumns bias block: acc[j][i] += E[row] . W2[col] over k < k_padded for the
// calling lane (g = lane / 4, t = lane % 4) at row = g + 8 (i >> 1) of the warp's 16 E rows (e: the
// first) and tile column col = col0 + 32 t + 2 j + (i & 1) (col0: the warp's first column, a multiple
// of 32). So each thread holds 32 consecutive columns of two rows, acc[j][0..1] of row g and
// acc[j][2..3] of row g + 8 (the epilogue's layout).
//
// The n-tiles' columns are permuted for this: position p of n-tile j (its B column p, the rows
// ldmatrix reads for it) is column col0 + 32 (p >> 1) + 2 j + (p & 1). Per k16 step: one ldmatrix_x4
// of A (lane i addresses E row i % 8 + 8 ((i / 8) & 1), k offset 8 (i / 16): a[0..3] in mma order),
// then per pair of n-tiles (2 jj, 2 jj + 1) one ldmatrix_x4 of B (matrix m = i / 8: n-tile
// 2 jj + (m >> 1), k half m & 1) and two MMAs. Call with all lanes of the warp (warp-uniform).
template <typename WT>
__device__ __forceinline__ void warp_bias_mma(float (&acc)[kMmaTiles][4], const WT* w2s, const WT* e, int col0,
                                              const MmaTileLayout& layout) {
  const int lane = threadIdx.x % 32, p = lane % 8, m = lane / 8;
  // Byte addresses in shared memory, advanced 32 bytes (16 values of k) a step. B: tile column
  // 32 (p >> 1) + 2 (m >> 1) + (p & 1) + 4 jj for the pair jj, below the next multiple of 32, so
  // w2_row advances by 4 ld per pair.
  SharedAddress a_at = shared_address(e + (p + 8 * (m & 1)) * layout.ld + 8 * (m >> 1));
  SharedAddress b_at[kMmaTiles / 2];
  const WT* b_first = w2s + layout.w2_row(col0 + 32 * (p >> 1) + 2 * (m >> 1) + (p & 1)) + 8 * (m & 1);
#pragma unroll
  for (int jj = 0; jj < kMmaTiles / 2; ++jj) b_at[jj] = shared_address(b_first + jj * 4 * layout.ld);
  constexpr int kStep = 16 * sizeof(WT);
  // One k16 step: A's fragment, then per pair of n-tiles B's and two MMAs.
  auto step = [&]() {
    uint32_t a[4];
    ldmatrix_x4(a, a_at);
    a_at += kStep;
#pragma unroll
    for (int jj = 0; jj < kMmaTiles / 2; ++jj) {
      uint32_t b[4];
      ldmatrix_x4(b, b_at[jj]);
      b_at[jj] += kStep;
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_m16n8k16<WT>(acc[2 * jj], a, b0);
      mma_m16n8k16<WT>(acc[2 * jj + 1], a, b1);
    }
  };
#pragma unroll
  for (int j = 0; j < kMmaTiles; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[j][i] = 0.0f;
  step();  // k0 = 0 (k_padded >= 16): on the zero accumulators, out of the loop
#pragma unroll 8
  for (int k0 = 16; k0 < layout.k_padded; k0 += 16) step();  // warp_bias_mma's k-loop
}

// The shared-memory regions of one tile, carved from the dynamic buffer.
template <typename WT, int kTileV, int kOutputs = kTileOutputs, int kBiasLd = kTileV>
struct MarkovTileSmem {
  WT* w2;
  WT* e;
  float* bias;

  __device__ MarkovTileSmem(unsigned char* base, const MarkovTileLayout<WT, kTileV, kOutputs, kBiasLd>& layout) {
    using L = MarkovTileLayout<WT, kTileV, kOutputs, kBiasLd>;
    w2 = reinterpret_cast<WT*>(base);
    e = reinterpret_cast<WT*>(base + L::align(layout.w2_bytes()));
    bias = reinterpret_cast<float*>(base + L::align(layout.w2_bytes()) + L::align(layout.e_bytes()));
  }
};

// Best score with the raw logit that produced it (the Markov sampler keeps the logit of
// the sampled token for verification).
struct ArgMaxLogit {
  float score;
  int32_t index;
  float logit;

  __device__ __forceinline__ static ArgMaxLogit empty() { return {-INFINITY, INT32_MAX, 0.0f}; }
  __device__ __forceinline__ void add(float s, int32_t i, float l) {
    if (argmax_beats(s, i, score, index)) {
      score = s;
      index = i;
      logit = l;
    }
  }
  __device__ __forceinline__ void merge(const ArgMaxLogit& o) { add(o.score, o.index, o.logit); }
  __device__ __forceinline__ ArgMaxLogit lane_xor(int delta, int width) const {
    return ArgMaxLogit{__shfl_xor_sync(0xffffffffu, score, delta, width),
                       __shfl_xor_sync(0xffffffffu, index, delta, width),
                       __shfl_xor_sync(0xffffffffu, logit, delta, width)};
  }
};

#endif  // __CUDACC__

}  // namespace dspark_sgl
