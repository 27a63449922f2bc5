// Warp-level tensor-core fragments with the layouts the PTX ISA documents (sm_80 and later):
// mma.sync m16n8k16 (16-bit inputs, float32 accumulate) and ldmatrix m8n8 (.b16, not transposed).
//
// Fragments are 32-bit registers holding two 16-bit values each, the lower column in the low half.
// With g = lane / 4 and t = lane % 4 (PTX "Matrix Fragments for mma.m16n8k16 with floating point
// type"):
//   A [16 x 16] (row-major): a[0] = (row g, cols 2t, 2t+1), a[1] = (g + 8, 2t..), a[2] = (g, 2t + 8..),
//                            a[3] = (g + 8, 2t + 8..);
//   B [16 x 8] (k x n):      b[0] = (k 2t, 2t+1; n g), b[1] = (k 2t + 8, 2t + 9; n g);
//   C, D [16 x 8] float32:   c[0], c[1] = (row g, cols 2t, 2t+1), c[2], c[3] = (row g + 8, 2t..).
// ldmatrix (PTX "ldmatrix"): lane i gives the address of row i % 8 of matrix i / 8 (lanes 0-15 for
// .x2; the others' are not used), each row 8 consecutive 16-bit values, 16-byte aligned, in shared
// memory; lane l receives, for each matrix m, register r[m] = row l / 4, elements 2 (l % 4) and
// 2 (l % 4) + 1. So an 8 x 8 block whose rows are k-contiguous gives A's or B's registers directly:
// the row address of each lane is the only layout the caller chooses (any row may be any address).
// Every lane of the warp must execute each call (.sync.aligned: warp-uniform control flow).
//
// Under the CPU emulator (CUEMU) the calls go to tests/cuemu's model of these documented layouts
// (cuemu/mma_fragment.h), which faults on a misaligned or non-shared row address and on a lane
// missing from the collective, and sums each output in float32 in ascending k (the products of
// 16-bit values are exact; the tensor core's own summation order is not reproduced).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#ifdef __CUDACC__

#ifdef CUEMU
#include "cuemu/mma_fragment.h"
#endif

namespace dspark_sgl {

// d += A B for one m16n8k16 tile: T is __nv_bfloat16 or __half (A and B both of it), d float32.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(sizeof(T) == 2, "mma_m16n8k16 takes 16-bit inputs");
#ifdef CUEMU
  ::cuemu::mma_m16n8k16(d, a, b, std::is_same<T, __nv_bfloat16>::value);
#else
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

// A shared-memory byte address as ldmatrix takes it: 32 bits of the shared window on the device (byte
// arithmetic on it stays in 32-bit registers, folded into the instruction's offset where constant);
// the pointer itself under the emulator.
#ifdef CUEMU
using SharedAddress = uintptr_t;
__device__ __forceinline__ SharedAddress shared_address(const void* p) { return reinterpret_cast<uintptr_t>(p); }
#else
using SharedAddress = unsigned;
__device__ __forceinline__ SharedAddress shared_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
#endif

// Four 8 x 8 matrices of 16-bit values; row_address: this lane's row (row lane % 8 of matrix lane / 8).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], SharedAddress row_address) {
#ifdef CUEMU
  ::cuemu::ldmatrix(r, 4, reinterpret_cast<const void*>(row_address));
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(row_address));
#endif
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_address) {
  ldmatrix_x4(r, shared_address(row_address));
}

// Two 8 x 8 matrices; the row addresses of lanes 0-15 are used.
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], SharedAddress row_address) {
#ifdef CUEMU
  ::cuemu::ldmatrix(r, 2, reinterpret_cast<const void*>(row_address));
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(row_address));
#endif
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row_address) {
  ldmatrix_x2(r, shared_address(row_address));
}

}  // namespace dspark_sgl

#endif  // __CUDACC__
