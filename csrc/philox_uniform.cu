// philox_uniform: the float32 uniform grid [batch, vocab] of dspark_sgl.rng.uniform.
// Each thread produces four consecutive columns from one Philox call.
#include <cuda_runtime.h>

#include "dspark_sgl/launch.h"
#include "dspark_sgl/philox.cuh"

namespace dspark_sgl {
namespace {

__global__ void philox_uniform_kernel(float* __restrict__ out, const int64_t* __restrict__ rows,
                                      const int64_t* __restrict__ positions, int64_t vocab_size,
                                      int64_t num_blocks, PhiloxArgs philox, uint32_t stream) {
  const int64_t b = blockIdx.x;
  uint64_t seed, offset;
  philox.resolve(seed, offset);
  const uint64_t row = static_cast<uint64_t>(rows[b]);
  const uint32_t position = static_cast<uint32_t>(positions[b]);
  float* out_row = out + b * vocab_size;
  for (int64_t block = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; block < num_blocks;
       block += int64_t(gridDim.y) * blockDim.x) {
    const Philox4x32 r =
        philox_block(seed, offset, stream, row, position, static_cast<uint32_t>(block));
    const uint32_t words[4] = {r.x, r.y, r.z, r.w};
    const int64_t col0 = block * 4;
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      if (col0 + lane < vocab_size) out_row[col0 + lane] = bits_to_unit_float(words[lane]);
    }
  }
}

}  // namespace

std::string launch_philox_uniform(float* out, const int64_t* rows, const int64_t* positions,
                                  int64_t batch, int64_t vocab_size, uint64_t seed_value,
                                  const int64_t* seed_ptr, uint64_t offset_value,
                                  const int64_t* offset_ptr, uint32_t stream,
                                  uintptr_t cuda_stream) {
  if (batch == 0 || vocab_size == 0) return "";
  if (batch > 0x7FFFFFFF) return "philox_uniform: batch must be < 2^31";
  const int64_t num_blocks = (vocab_size + 3) / 4;
  constexpr int kThreads = 256;
  const int64_t grid_x = (num_blocks + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<unsigned>(batch),
                  static_cast<unsigned>(grid_x < 1024 ? grid_x : 1024));
  const PhiloxArgs philox{seed_value, seed_ptr, offset_value, offset_ptr};
  philox_uniform_kernel<<<grid, kThreads, 0, reinterpret_cast<cudaStream_t>(cuda_stream)>>>(
      out, rows, positions, vocab_size, num_blocks, philox, stream);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? std::string() : std::string(cudaGetErrorString(err));
}

}  // namespace dspark_sgl
