// Host-side declarations of the kernel launchers bound in module.cpp.
// Launchers take raw device pointers and a cudaStream_t so the extension does not
// link libtorch: the Python layer validates tensors and passes pointers.
#pragma once

#include <cstdint>
#include <string>

namespace dspark_sgl {

// Returns an empty string on success, else the CUDA error text.
std::string launch_philox_uniform(float* out, const int64_t* rows, const int64_t* positions,
                                  int64_t batch, int64_t vocab_size, uint64_t seed_value,
                                  const int64_t* seed_ptr, uint64_t offset_value,
                                  const int64_t* offset_ptr, uint32_t stream, uintptr_t cuda_stream);

}  // namespace dspark_sgl
