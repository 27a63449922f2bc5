// cuemu: nvcuda::wmma on the CPU.
//
// Layout-agnostic: a fragment's elements are spread over the 32 lanes in an order of our own
// choosing (lane l holds logical elements l, l + 32, l + 64, ... in row-major order), which is
// all the CUDA documentation promises code may rely on (nothing). load/store/mma are warp
// collectives: every lane of the warp must call them with the same pointer and ldm (checked),
// pointers must be 256-bit aligned and ldm a multiple of 16 bytes (checked). mma_sync
// multiplies exactly (16-bit products are exact in float32) and sums k in ascending order
// in float32 onto the accumulator: the tensor core's internal summation order and rounding
// are not reproduced, so results are bit-identical only where every partial sum is exact.
#pragma once

#include "cuemu/runtime.h"

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

namespace detail {
template <typename Use, int M, int N, int K>
struct Shape;
template <int M, int N, int K>
struct Shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct Shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct Shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};
template <typename T>
struct Storage {
  using type = T;
};
template <>
struct Storage<precision::tf32> {
  using type = float;
};
inline float as_float(float x) { return x; }
inline float as_float(__half x) { return __half2float(x); }
inline float as_float(__nv_bfloat16 x) { return __bfloat162float(x); }
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert((M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) ||
                    (M == 8 && N == 32 && K == 16) || (M == 16 && N == 16 && K == 8),
                "cuemu: unsupported WMMA shape");
  using S = detail::Shape<Use, M, N, K>;
  using storage_element_type = typename detail::Storage<T>::type;
  using element_type = storage_element_type;
  static constexpr int rows = S::rows, cols = S::cols;
  static constexpr int num_elements = rows * cols / 32;
  storage_element_type x[num_elements];
  // Logical (row, col) of element i of this lane.
  static int logical(int lane, int i) { return i * 32 + lane; }
};

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const typename fragment<Use, M, N, K, T, L>::storage_element_type& v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

namespace detail {
inline void check_collective(unsigned kind, const void* ptr, unsigned ldm, size_t elem_bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(ptr) % 32 != 0)
    ::cuemu::fault("%s: pointer %p is not 256-bit aligned", what, ptr);
  if ((ldm * elem_bytes) % 16 != 0)
    ::cuemu::fault("%s: ldm %u is not a multiple of 16 bytes (%zu-byte elements)", what, ldm, elem_bytes);
  const uint64_t mine = reinterpret_cast<uintptr_t>(ptr) ^ (static_cast<uint64_t>(ldm) << 48);
  const uint64_t* all = ::cuemu::warp_exchange(kind, 0xffffffffu, mine);
  for (int l = 0; l < 32; ++l)
    if (all[l] != mine)
      ::cuemu::fault("%s: lane %u and lane %d pass different pointers or ldm", what, ::cuemu::lane_id(), l);
}
template <typename F, typename P>
inline void load(F& f, const P* p, unsigned ldm, bool row_major_mem) {
  const int lane = static_cast<int>(::cuemu::lane_id());
  for (int i = 0; i < F::num_elements; ++i) {
    const int e = F::logical(lane, i), r = e / F::cols, c = e % F::cols;
    f.x[i] = row_major_mem ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
  }
}
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename L, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P* p, unsigned ldm) {
  static_assert(!std::is_same<Use, accumulator>::value, "accumulator loads need a layout_t");
  detail::check_collective(::cuemu::kWmmaLoad, p, ldm, sizeof(P), "wmma::load_matrix_sync");
  detail::load(f, p, ldm, std::is_same<L, row_major>::value);
}
template <int M, int N, int K, typename T, typename P>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T, void>& f, const P* p, unsigned ldm, layout_t layout) {
  detail::check_collective(::cuemu::kWmmaLoad, p, ldm, sizeof(P), "wmma::load_matrix_sync");
  detail::load(f, p, ldm, layout == mem_row_major);
}

template <int M, int N, int K, typename T, typename P>
inline void store_matrix_sync(P* p, const fragment<accumulator, M, N, K, T, void>& f, unsigned ldm, layout_t layout) {
  using F = fragment<accumulator, M, N, K, T, void>;
  detail::check_collective(::cuemu::kWmmaStore, p, ldm, sizeof(P), "wmma::store_matrix_sync");
  const int lane = static_cast<int>(::cuemu::lane_id());
  for (int i = 0; i < F::num_elements; ++i) {
    const int e = F::logical(lane, i), r = e / F::cols, c = e % F::cols;
    (layout == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r]) = static_cast<P>(f.x[i]);
  }
}

// d = a @ b + c. Every lane stages its a and b elements in the warp's scratch (the half of
// the double buffer that this collective's generation selects), the collective makes them
// visible, then each lane computes its own d elements.
template <int M, int N, int K, typename TA, typename LA, typename LB, typename TC, typename TD>
inline void mma_sync(fragment<accumulator, M, N, K, TD, void>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TA, LB>& b, const fragment<accumulator, M, N, K, TC, void>& c) {
  using FA = fragment<matrix_a, M, N, K, TA, LA>;
  using FB = fragment<matrix_b, M, N, K, TA, LB>;
  using FC = fragment<accumulator, M, N, K, TC, void>;
  constexpr size_t kHalf = size_t(M) * K + size_t(K) * N;
  float* scratch = ::cuemu::warp_scratch(kHalf) + ::cuemu::warp_parity() * kHalf;
  float* sa = scratch;           // [M, K] row-major
  float* sb = scratch + M * K;   // [K, N] row-major
  const int lane = static_cast<int>(::cuemu::lane_id());
  for (int i = 0; i < FA::num_elements; ++i) sa[FA::logical(lane, i)] = detail::as_float(a.x[i]);
  for (int i = 0; i < FB::num_elements; ++i) sb[FB::logical(lane, i)] = detail::as_float(b.x[i]);
  ::cuemu::warp_exchange(::cuemu::kWmmaMma, 0xffffffffu, 0);
  float out[FC::num_elements];
  for (int i = 0; i < FC::num_elements; ++i) {
    const int e = FC::logical(lane, i), r = e / N, col = e % N;
    float acc = static_cast<float>(c.x[i]);
    if constexpr (sizeof(TA) == 2) {  // 16-bit inputs: the product is exact, so * then + is an FMA
      for (int k = 0; k < K; ++k) acc += sa[r * K + k] * sb[k * N + col];
    } else {
      for (int k = 0; k < K; ++k) acc = std::fmaf(sa[r * K + k], sb[k * N + col], acc);
    }
    out[i] = acc;
  }
  for (int i = 0; i < FC::num_elements; ++i) d.x[i] = static_cast<TD>(out[i]);
}

}  // namespace wmma
}  // namespace nvcuda
