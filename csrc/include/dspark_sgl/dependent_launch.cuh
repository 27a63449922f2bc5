// Programmatic dependent launch (PDL, sm_90): a kernel launched as a programmatic dependent of the
// previous kernel in its stream (the primary) may start before the primary has finished, so its
// launch latency and its prologue overlap the primary's tail.
//
// The contract, on both sides:
//   - the dependent's threads may run any code before wait_for_primary_grid() that neither reads
//     memory the primary writes nor writes memory the primary reads or writes; after the wait,
//     every memory operation of the primary grid has completed and is visible. Memory written by
//     kernels before the primary is visible throughout only when the primary was launched
//     normally, or triggers after its own wait: in a chain K1 -> K2 -> K3 of dependents whose K2
//     triggers at once, K3's code before its wait may run while K1 is still running;
//   - allow_dependent_launch() in the primary only lets the dependent grid be scheduled (once every
//     CTA of the primary has called it or exited). It publishes nothing: what the primary writes
//     before the trigger is no more visible to the dependent than what it writes after it, so the
//     trigger's position decides speed, never correctness;
//   - in a kernel that is not launched as a dependent (or on an architecture without PDL) the wait
//     returns at once and the trigger does nothing: the ordinary stream order already holds.
// Under the CPU emulator (CUEMU) the calls go to tests/cuemu's adversarial model: a dependent's
// threads run up to their wait before the primary runs at all (a read before the wait sees what
// was there before the primary), then the primary, then the rest of the dependent.
//
// Host side: launch_programmatic_dependent() launches a kernel as the dependent of the previous
// launch in the stream (cudaLaunchKernelEx with cudaLaunchAttributeProgrammaticStreamSerialization;
// capturable into a CUDA graph, where the edge becomes a programmatic one). To chain launches
// (e.g. one per position): launch the first normally, every later one with this helper, and call
// wait_for_primary_grid() in each dependent before its first read of the previous launch's output.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

namespace dspark_sgl {

#ifdef __CUDACC__

// Primary side: this CTA lets the dependent grid launch (griddepcontrol.launch_dependents).
__device__ __forceinline__ void allow_dependent_launch() {
#ifdef CUEMU
  ::cuemu::grid_dependency_trigger();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Dependent side: blocks the calling thread until the primary grid has completed and its memory
// is visible (griddepcontrol.wait). Per thread: a thread that reads the primary's output calls it.
__device__ __forceinline__ void wait_for_primary_grid() {
#ifdef CUEMU
  ::cuemu::grid_dependency_wait();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

#endif  // __CUDACC__

// Launches kernel<<<grid, block, smem, stream>>>(args...) with one launch attribute (cudaLaunchKernelEx).
// Returns its error (a bad configuration is reported here, as cudaGetLastError would after a <<<>>>
// launch, and cleared: not left for an unrelated later check).
template <typename... Params, typename... Args>
cudaError_t launch_with_attribute(cudaLaunchAttribute attribute, void (*kernel)(Params...), dim3 grid, dim3 block,
                                  size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (err != cudaSuccess) cudaGetLastError();
  return err;
}

// Launches kernel<<<grid, block, smem, stream>>>(args...) as a programmatic dependent of the
// previous kernel launched into `stream`; returns its error (launch_with_attribute).
template <typename... Params, typename... Args>
cudaError_t launch_programmatic_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                          cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  return launch_with_attribute(attribute, kernel, grid, block, smem, stream, std::forward<Args>(args)...);
}

}  // namespace dspark_sgl
