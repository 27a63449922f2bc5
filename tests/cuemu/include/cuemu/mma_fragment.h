// cuemu: mma.sync m16n8k16 and ldmatrix m8n8 (csrc/include/dspark_sgl/mma_fragment.cuh) on the CPU.
//
// Unlike WMMA (cuemu/wmma.h, layout-agnostic), these fragments have documented layouts that kernels
// rely on, so the model implements exactly those (PTX ISA, "Matrix Fragments for mma.m16n8k16 with
// floating point type" and "ldmatrix"); g = lane / 4, t = lane % 4:
//   A: a[0] = (g, 2t | 2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..);
//   B: b[0] = (k 2t | 2t+1, n g), b[1] = (k 2t+8..; n g);   C/D: c[0..1] = (g, 2t..), c[2..3] = (g+8, 2t..);
//   ldmatrix: lane i addresses row i % 8 of matrix i / 8; lane l receives row l / 4, elements
//   2 (l % 4) and 2 (l % 4) + 1 of matrix m in register m (the lower element in the low half).
// Both are warp collectives of all 32 lanes (a lane that is missing or in another collective
// faults). ldmatrix faults on a used row address that is not 16-byte aligned or not in the block's
// shared memory, and reads the rows at the collective (after every lane has arrived). The MMA
// decodes the 16-bit values and sums each output in float32 in ascending k onto the accumulator
// (the products are exact in float32), as the WMMA model does; the tensor core's internal order
// and rounding are not reproduced.
#pragma once

#include "cuemu/float16.h"
#include "cuemu/runtime.h"

namespace cuemu {

// `count` (1, 2 or 4) 8 x 8 matrices of 16-bit values into r[0..count).
inline void ldmatrix(uint32_t* r, int count, const void* row_address) {
  const uint64_t* all = warp_exchange(kLdmatrix, 0xffffffffu, reinterpret_cast<uintptr_t>(row_address));
  const unsigned lane = lane_id();
  for (int i = 0; i < 8 * count; ++i) {
    const void* p = reinterpret_cast<const void*>(static_cast<uintptr_t>(all[i]));
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
      fault("ldmatrix: lane %d's row address %p is not 16-byte aligned", i, p);
    if (!is_shared_address(p, 16)) fault("ldmatrix: lane %d's row address %p is not in shared memory", i, p);
  }
  for (int m = 0; m < count; ++m) {
    const uint16_t* row = reinterpret_cast<const uint16_t*>(static_cast<uintptr_t>(all[8 * m + lane / 4]));
    const int e = 2 * static_cast<int>(lane % 4);
    r[m] = static_cast<uint32_t>(row[e]) | (static_cast<uint32_t>(row[e + 1]) << 16);
  }
}

// d += A B (16 x 16 times 16 x 8), every lane holding its documented fragments.
inline void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b, bool bf16) {
  constexpr size_t kHalf = 16 * 16 + 16 * 8;
  float* scratch = warp_scratch(kHalf) + warp_parity() * kHalf;
  float* sa = scratch;            // A [16, 16] row-major
  float* sb = scratch + 16 * 16;  // B [16 (k), 8 (n)] row-major
  const int lane = static_cast<int>(lane_id()), g = lane / 4, t = lane % 4;
  auto value = [bf16](uint32_t word, int half) {
    const uint16_t bits = static_cast<uint16_t>(word >> (16 * half));
    return bf16 ? bf16_to_f32(bits) : f16_to_f32(bits);
  };
  for (int reg = 0; reg < 4; ++reg)
    for (int half = 0; half < 2; ++half)
      sa[(g + 8 * (reg & 1)) * 16 + 2 * t + half + 8 * (reg >> 1)] = value(a[reg], half);
  for (int reg = 0; reg < 2; ++reg)
    for (int half = 0; half < 2; ++half) sb[(2 * t + half + 8 * reg) * 8 + g] = value(b[reg], half);
  warp_exchange(kMmaSync, 0xffffffffu, 0);
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    float acc = d[i];
    for (int k = 0; k < 16; ++k) acc += sa[row * 16 + k] * sb[k * 8 + col];
    out[i] = acc;
  }
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

}  // namespace cuemu
