// Philox4x32-10 and the counter layout shared by every dspark_sgl kernel.
//
// Must match dspark_sgl/rng.py exactly:
//   key     = (seed & 0xffffffff, seed >> 32)
//   counter = (col / 4, row, position | stream << 8 | (offset >> 32 & 0xffff) << 16,
//              offset & 0xffffffff), output lane = col % 4
//   uniform = float(((x >> 9) << 1) | 1) * 2^-24, strictly inside (0, 1)
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define DSPARK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DSPARK_HOST_DEVICE inline
#endif

namespace dspark_sgl {

struct Philox4x32 {
  uint32_t x, y, z, w;
};

// The 64-bit product a * b as (hi, lo). On the device __umulhi and a 32-bit multiply: where the
// round keys are not hoisted, nvcc compiles the 64-bit C++ form to IMAD.WIDE.U32 plus an add of a
// zero high word (20 extra instructions per Philox block in chain_verify's candidate path, read
// from the sm_90a SASS); the numbers are the same.
DSPARK_HOST_DEVICE void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__) && !defined(CUEMU)
  hi = __umulhi(a, b);
  lo = a * b;
#else
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
#endif
}

constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;  // the key schedule's Weyl steps

// One Philox4x32 round under the round key (k0, k1).
DSPARK_HOST_DEVICE Philox4x32 philox_round(Philox4x32 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  uint32_t hi0, lo0, hi1, lo1;
  mulhilo32(kM0, ctr.x, hi0, lo0);
  mulhilo32(kM1, ctr.z, hi1, lo1);
  return Philox4x32{hi1 ^ ctr.y ^ k0, lo1, hi0 ^ ctr.w ^ k1, lo0};
}

// Philox4x32-10 of N counters under one key, their rounds interleaved: each round key is computed
// once for all N (the same numbers as N calls of the one-counter form below).
template <int N>
DSPARK_HOST_DEVICE void philox4x32_10(Philox4x32 (&ctr)[N], uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
#pragma unroll
    for (int n = 0; n < N; ++n) ctr[n] = philox_round(ctr[n], k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

DSPARK_HOST_DEVICE Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t k0, uint32_t k1) {
  Philox4x32 one[1] = {ctr};
  philox4x32_10<1>(one, k0, k1);
  return one[0];
}

// The round keys of Philox4x32-10 for one seed, computed once for a key that draws many blocks;
// philox4x32_10(ctr, keys) gives the same numbers as philox4x32_10(ctr, k0, k1).
struct PhiloxRoundKeys {
  uint32_t k0[10], k1[10];
};

DSPARK_HOST_DEVICE PhiloxRoundKeys philox_round_keys(uint64_t seed) {
  PhiloxRoundKeys keys{};
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    keys.k0[round] = k0, keys.k1[round] = k1;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return keys;
}

DSPARK_HOST_DEVICE Philox4x32 philox4x32_10(Philox4x32 ctr, const PhiloxRoundKeys& keys) {
#pragma unroll
  for (int round = 0; round < 10; ++round) ctr = philox_round(ctr, keys.k0[round], keys.k1[round]);
  return ctr;
}

// The (seed, offset) of one launch. Either may be read from device memory so a
// captured CUDA graph draws fresh numbers on every replay.
struct PhiloxArgs {
  uint64_t seed_value;
  const int64_t* seed_ptr;
  uint64_t offset_value;
  const int64_t* offset_ptr;

#ifdef __CUDACC__
  __device__ __forceinline__ void resolve(uint64_t& seed, uint64_t& offset) const {
    seed = seed_ptr ? static_cast<uint64_t>(*seed_ptr) : seed_value;
    offset = offset_ptr ? static_cast<uint64_t>(*offset_ptr) : offset_value;
  }
#endif
};

// The counter of columns [4 * block, 4 * block + 4) (the layout above).
DSPARK_HOST_DEVICE Philox4x32 philox_counter(uint64_t offset, uint32_t stream, uint64_t row, uint32_t position,
                                             uint32_t block) {
  return Philox4x32{block, static_cast<uint32_t>(row),
                    (position & 0xFFu) | (stream << 8) | (static_cast<uint32_t>((offset >> 32) & 0xFFFFu) << 16),
                    static_cast<uint32_t>(offset)};
}

// Four consecutive uniform draws for columns [4 * block, 4 * block + 4).
DSPARK_HOST_DEVICE Philox4x32 philox_block(uint64_t seed, uint64_t offset, uint32_t stream,
                                           uint64_t row, uint32_t position, uint32_t block) {
  return philox4x32_10(philox_counter(offset, stream, row, position, block), static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32));
}

// philox_block for N consecutive blocks from `block`, computed together (philox4x32_10<N>).
template <int N>
DSPARK_HOST_DEVICE void philox_blocks(uint64_t seed, uint64_t offset, uint32_t stream, uint64_t row,
                                      uint32_t position, uint32_t block, Philox4x32 (&out)[N]) {
#pragma unroll
  for (int n = 0; n < N; ++n) out[n] = philox_counter(offset, stream, row, position, block + n);
  philox4x32_10<N>(out, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// The uniform of 32 random bits in units of 2^-24: the odd integer ((bits >> 9) << 1) | 1, exact in
// a float (below 2^24).
DSPARK_HOST_DEVICE float uniform_units(uint32_t bits) { return static_cast<float>((bits >> 8) | 1u); }

DSPARK_HOST_DEVICE float bits_to_unit_float(uint32_t bits) {
  return uniform_units(bits) * 5.9604644775390625e-08f;  // 2^-24
}

}  // namespace dspark_sgl
