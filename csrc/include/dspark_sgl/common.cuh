// Device helpers shared by the dspark_sgl kernels: dtype codes, float loads, the
// first-index argmax and online-softmax reductions, and Gumbel noise.
//
// Numerics follow the PyTorch references in dspark_sgl/: every value is float32, the
// argmax keeps the smallest index among equal scores and ranks NaN above every number
// (torch.argmax and SGLang's Markov sampler: the first NaN wins), softmax
// statistics are (max, sum of exp(x - max)), and Gumbel noise is -log(-log(u)) with
// IEEE logf (no fast-math anywhere in this library).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "dspark_sgl/philox.cuh"

namespace dspark_sgl {

// Element types of logits and weights, as passed from Python (dspark_sgl._dispatch.dtype_code).
enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

inline int dtype_size(DType d) { return d == DType::kFloat32 ? 4 : 2; }

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with the C++ element type of a dtype code (host side: choosing a
// kernel instantiation); an unknown code is cudaErrorInvalidValue.
template <typename F>
cudaError_t with_dtype(int code, F&& f) {
  switch (static_cast<DType>(code)) {
    case DType::kFloat32:
      return f(TypeTag<float>{});
    case DType::kBFloat16:
      return f(TypeTag<__nv_bfloat16>{});
    case DType::kFloat16:
      return f(TypeTag<__half>{});
  }
  return cudaErrorInvalidValue;
}

#ifdef __CUDACC__

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ float load_float(const T* p) {
  return to_float(*p);
}

// A total order on float scores as int32: numbers by value (-0 == +0), every NaN above +inf
// (s != s is the NaN test: no fast-math in this library). Integer keys keep the NaN rule
// free of extra registers.
__device__ __forceinline__ int32_t argmax_key(float s) {
  const int32_t bits = __float_as_int(__fadd_rn(s, 0.0f));  // -0 + 0 = +0
  return s != s ? INT32_MAX : (bits >= 0 ? bits : bits ^ INT32_MAX);
}

// Whether candidate (s, i) beats the best so far (score, index): NaN ranks above every
// number, equal scores (or two NaNs) go to the smaller index. torch.argmax's order.
__device__ __forceinline__ bool argmax_beats(float s, int32_t i, float score, int32_t index) {
  const int32_t a = argmax_key(s), b = argmax_key(score);
  return a > b || (a == b && i < index);
}

// Index and score of the best candidate (argmax_beats' order).
struct ArgMax {
  float score;
  int32_t index;

  __device__ __forceinline__ static ArgMax empty() { return ArgMax{-INFINITY, INT32_MAX}; }

  __device__ __forceinline__ void add(float s, int32_t i) {
    if (argmax_beats(s, i, score, index)) {
      score = s;
      index = i;
    }
  }
  __device__ __forceinline__ void merge(const ArgMax& o) { add(o.score, o.index); }
  __device__ __forceinline__ ArgMax lane_xor(int delta, int width) const {
    return ArgMax{__shfl_xor_sync(0xffffffffu, score, delta, width),
                  __shfl_xor_sync(0xffffffffu, index, delta, width)};
  }
};

// Running (max, sum exp(x - max)) of a softmax; -inf entries contribute nothing.
struct SoftmaxStats {
  float max;
  float sum;

  __device__ __forceinline__ static SoftmaxStats empty() { return SoftmaxStats{-INFINITY, 0.0f}; }

  __device__ __forceinline__ void add(float x) {
    if (x == -INFINITY) return;
    if (x > max) {
      sum = sum * expf(max - x) + 1.0f;  // expf(-inf) == 0 for the first entry
      max = x;
    } else {
      sum += expf(x - max);
    }
  }
  __device__ __forceinline__ void merge(const SoftmaxStats& o) {
    if (o.max == -INFINITY) return;
    if (max == -INFINITY) {
      *this = o;
      return;
    }
    const float m = fmaxf(max, o.max);
    sum = sum * expf(max - m) + o.sum * expf(o.max - m);
    max = m;
  }
  __device__ __forceinline__ SoftmaxStats lane_xor(int delta, int width) const {
    return SoftmaxStats{__shfl_xor_sync(0xffffffffu, max, delta, width),
                        __shfl_xor_sync(0xffffffffu, sum, delta, width)};
  }
  // softmax probability of a value x under these statistics: exp(x - max) / sum.
  __device__ __forceinline__ float prob(float x) const {
    return x == -INFINITY ? 0.0f : expf(x - max) / sum;
  }
};

// Butterfly reduction over `kWidth` consecutive lanes (a power of two <= 32, aligned
// groups) of any partial result T with merge() and lane_xor() (the value of lane ^ delta).
// Every lane of the group must take part.
template <int kWidth, typename T>
__device__ __forceinline__ T group_reduce(T a) {
#pragma unroll
  for (int delta = kWidth / 2; delta > 0; delta /= 2) a.merge(a.lane_xor(delta, kWidth));
  return a;
}

// Merges one partial per thread across the CTA: warps first, then thread 0 merges the
// warps through `shared` (blockDim / 32 entries). The result is valid in thread 0 only.
template <typename T>
__device__ __forceinline__ T block_merge(T value, T* shared) {
  value = group_reduce<32>(value);
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = value;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < blockDim.x / 32; ++w) value.merge(shared[w]);
  return value;
}

// 2^x on the special-function unit: one MUFU.EX2 (ex2.approx.ftz: about 2^-22 relative error,
// results below 2^-126 flush to zero); for softmax terms and the kernels' Gumbel bounds, never
// for a value that must match the reference bit for bit. The CPU emulator has no PTX; it
// computes exp2f.
__device__ __forceinline__ float fast_exp2(float x) {
#ifdef CUEMU
  return exp2f(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

// log2(x) on the special-function unit: one MUFU.LG2 (lg2.approx.ftz: about 2^-22 absolute
// error, subnormal inputs flush to zero, so log2 of them is -inf); for the grouped sampler's
// group keys, whose contract allows a 1e-4 relative difference. The emulator computes log2f.
__device__ __forceinline__ float fast_log2(float x) {
#ifdef CUEMU
  return log2f(x);
#else
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

// The two bfloat16 values packed in a 32-bit word (the first in the low half), as float32.
__device__ __forceinline__ float bf16_bits_low(unsigned bits) { return __uint_as_float(bits << 16); }
__device__ __forceinline__ float bf16_bits_high(unsigned bits) { return __uint_as_float(bits & 0xffff0000u); }

// (a, b) rounded to the element type T and back (identity for float), as one packed
// conversion for 16-bit types.
template <typename T>
__device__ __forceinline__ void round_pair_to_type(float& a, float& b) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    const __nv_bfloat162 p = __floats2bfloat162_rn(a, b);
    unsigned bits;
    memcpy(&bits, &p, sizeof(bits));
    a = bf16_bits_low(bits), b = bf16_bits_high(bits);
  } else if constexpr (std::is_same<T, __half>::value) {
    const __half2 p = __floats2half2_rn(a, b);
    a = __low2float(p), b = __high2float(p);
  }
}

// Packed 16-bit arithmetic on two values of type T (bfloat16 or half) held in one 32-bit word,
// the first value in the low half: (a, b) rounded to T and packed (cvt.rn.{bf16x2,f16x2}.f32,
// the same rounding as round_pair_to_type), the sum of two packed pairs rounded once to T
// (add.rn: no contraction into an FMA), and their maximum (max: a NaN half yields the other
// operand, as fmaxf). The emulator computes each in float32 and rounds to T, which equals the
// single rounding: see add_pair_rn.
template <typename T>
__device__ __forceinline__ unsigned pack_pair_rn(float a, float b) {
  static_assert(sizeof(T) == 2, "16-bit types only");
  unsigned bits;
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    const __nv_bfloat162 p = __floats2bfloat162_rn(a, b);
    memcpy(&bits, &p, sizeof(bits));
  } else {
    const __half2 p = __floats2half2_rn(a, b);
    memcpy(&bits, &p, sizeof(bits));
  }
  return bits;
}

// The two values of a packed pair as float32 (exact).
template <typename T>
__device__ __forceinline__ float2 unpack_pair(unsigned bits) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    return make_float2(bf16_bits_low(bits), bf16_bits_high(bits));
  } else {
    __half2 p;
    memcpy(&p, &bits, sizeof(bits));
    return make_float2(__low2float(p), __high2float(p));
  }
}

// (a.lo + b.lo, a.hi + b.hi), each exact sum rounded once to T. This equals rounding the float32
// sum to T (what the scalar path computes): a and b are T values (q = 8 significand bits for
// bfloat16, 11 for half), float32 has p = 24 >= 2q + 2, so by Figueroa's theorem ("When is double
// rounding innocuous?", 1995) RN_q(RN_24(a + b)) = RN_q(a + b) for every sum that is a normal
// number. Subnormal sums of two T values are multiples of T's smallest subnormal and exact in
// float32 (no first rounding). Overflow agrees too: bfloat16 has float32's exponent range; for
// half, a float32 sum rounds up to half's overflow threshold 65520 only from [65520 - 2^-9, 65520),
// which needs a summand below 4 next to one above 65516, and no half lies in (65504, 65520).
// +-inf and NaN operands give +-inf and NaN either way (NaN payloads may differ; a NaN is only
// ever tested for).
template <typename T>
__device__ __forceinline__ unsigned add_pair_rn(unsigned a, unsigned b) {
#ifdef CUEMU
  const float2 x = unpack_pair<T>(a), y = unpack_pair<T>(b);
  return pack_pair_rn<T>(x.x + y.x, x.y + y.y);
#else
  unsigned d;
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm("add.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  } else {
    asm("add.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  }
  return d;
#endif
}

// (a.lo - b.lo, a.hi - b.hi), each exact difference rounded once to T (add_pair_rn's argument
// holds for differences: the emulator's float32 difference rounded to T is the same value).
template <typename T>
__device__ __forceinline__ unsigned sub_pair_rn(unsigned a, unsigned b) {
#ifdef CUEMU
  const float2 x = unpack_pair<T>(a), y = unpack_pair<T>(b);
  return pack_pair_rn<T>(x.x - y.x, x.y - y.y);
#else
  unsigned d;
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm("sub.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  } else {
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  }
  return d;
#endif
}

// (max(a.lo, b.lo), max(a.hi, b.hi)): exact; a NaN half yields the other operand (fmaxf's rule).
template <typename T>
__device__ __forceinline__ unsigned max_pair(unsigned a, unsigned b) {
#ifdef CUEMU
  const float2 x = unpack_pair<T>(a), y = unpack_pair<T>(b);
  return pack_pair_rn<T>(fmaxf(x.x, y.x), fmaxf(x.y, y.y));
#else
  unsigned d;
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm("max.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  } else {
    asm("max.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  }
  return d;
#endif
}

__device__ __forceinline__ float gumbel_from_bits(uint32_t bits) {
  return -logf(-logf(bits_to_unit_float(bits)));
}

// Rounds a float32 logit to the dtype the caller keeps logits in (SGLang samples from its
// step dtype): kFloat32 leaves it unchanged.
__device__ __forceinline__ float round_to_dtype(float x, int dtype) {
  if (dtype == static_cast<int>(DType::kBFloat16)) return __bfloat162float(__float2bfloat16_rn(x));
  if (dtype == static_cast<int>(DType::kFloat16)) return __half2float(__float2half_rn(x));
  return x;
}

__device__ __forceinline__ void store_as_dtype(void* base, int64_t i, float x, int dtype) {
  if (dtype == static_cast<int>(DType::kBFloat16)) {
    static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(x);
  } else if (dtype == static_cast<int>(DType::kFloat16)) {
    static_cast<__half*>(base)[i] = __float2half_rn(x);
  } else {
    static_cast<float*>(base)[i] = x;
  }
}

// Token ids and lengths are validated in Python; kernels still clamp every id they use as
// an address so that unchecked input (value checks off) can never read out of bounds.
__device__ __forceinline__ int64_t clamp_index(int64_t i, int64_t n) {
  return i < 0 ? 0 : (i >= n ? n - 1 : i);
}

// Gemma's logit soft-cap, cap * tanh(x / cap) with an IEEE division (dspark_sgl.markov.softcap
// writes the same operations); cap <= 0 means none.
__device__ __forceinline__ float softcap(float x, float cap) {
  return cap > 0.0f ? __fmul_rn(cap, tanhf(__fdiv_rn(x, cap))) : x;
}

// x rounded to the element type T and back (identity for float): a 16-bit GEMM's output.
template <typename T>
__device__ __forceinline__ float round_to_type(float x) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) return __bfloat162float(__float2bfloat16_rn(x));
  if constexpr (std::is_same<T, __half>::value) return __half2float(__float2half_rn(x));
  return x;
}

#endif  // __CUDACC__

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace dspark_sgl
