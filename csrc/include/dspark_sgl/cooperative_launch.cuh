// Cooperative launch: a grid whose CTAs are all resident at once, so that a CTA may wait for what any
// other CTA of the grid writes (wait_for_count on a count every CTA raises) without deadlocking.
//
// The contract: resident_grid_limit() gives the most CTAs of `kernel` at `threads` and `smem` that the
// device can hold at once (SM count x occupancy), or 0 where the device cannot launch cooperatively;
// launch_cooperative() launches with cudaLaunchAttributeCooperative, which the driver refuses
// (cudaErrorCooperativeLaunchTooLarge) rather than run a grid above that limit. Other work on the device
// can only delay the launch, never part of its grid. The launch is capturable into a CUDA graph (a
// cooperative kernel node). Under the CPU emulator (CUEMU) a cooperative grid runs every block on its own
// OS thread at once, and a grid that waits across blocks without the attribute deadlocks (a fault) as
// soon as it has more blocks than CUEMU_WORKERS.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "dspark_sgl/dependent_launch.cuh"

namespace dspark_sgl {

template <typename... Params>
cudaError_t resident_grid_limit(void (*kernel)(Params...), int threads, size_t smem, int* ctas) {
  *ctas = 0;
  int device = 0, cooperative = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
  if (err == cudaSuccess && cooperative)
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess && cooperative)
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
  if (err != cudaSuccess) return err;
  *ctas = cooperative ? sms * per_sm : 0;
  return cudaSuccess;
}

// Launches kernel<<<grid, block, smem, stream>>>(args...) cooperatively; returns its error
// (launch_with_attribute, dependent_launch.cuh).
template <typename... Params, typename... Args>
cudaError_t launch_cooperative(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                               Args&&... args) {
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeCooperative;
  attribute.val.cooperative = 1;
  return launch_with_attribute(attribute, kernel, grid, block, smem, stream, std::forward<Args>(args)...);
}

}  // namespace dspark_sgl
