// Asynchronous global -> shared copies (PTX cp.async, sm_80 and later; this build is sm_90a).
//
// A thread issues 16-byte copies with cp_async_16, closes the copies issued since the last
// commit into a group with cp_async_commit, and waits with cp_async_wait<N> until at most
// its N most recently committed groups are still pending. The rules:
//   - both addresses are 16-byte aligned; the destination is shared memory (dynamic or
//     static), the source global memory;
//   - src_bytes is 16 (copy) or 0 (the 16 destination bytes are zero-filled and the source is
//     not read: it may then be any aligned address, null included);
//   - the copy's bytes are visible to the issuing thread only after the cp_async_wait that
//     retires its group, and to *other* threads only after that wait and a __syncthreads;
//   - copies issued after the last commit belong to no group: no wait retires them;
//   - wait and commit are per thread: a thread must wait for its own copies.
// Under the CPU emulator (CUEMU) the same calls go to tests/cuemu's model of them, which lands
// a group's copies only at the wait that retires it and faults on a broken rule.
#pragma once

#include <cuda_runtime.h>

#ifdef __CUDACC__

namespace dspark_sgl {

// Starts copying 16 bytes from gmem_src (src_bytes 16) or zero-filling them (src_bytes 0)
// into smem_dst. Both pointers 16-byte aligned.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes) {
#ifdef CUEMU
  ::cuemu::async_copy_16(smem_dst, gmem_src, src_bytes);
#else
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst),
               "l"(__cvta_generic_to_global(gmem_src)), "r"(src_bytes)
               : "memory");
#endif
}

// Closes the calling thread's copies issued since its last commit into one group (an empty
// group when there are none; it still counts for cp_async_wait).
__device__ __forceinline__ void cp_async_commit() {
#ifdef CUEMU
  ::cuemu::async_commit_group();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Blocks the calling thread until at most N of its most recently committed groups are pending:
// every older group's bytes are then in shared memory (other threads: after a __syncthreads).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(N >= 0, "cp.async.wait_group counts pending groups");
#ifdef CUEMU
  ::cuemu::async_wait_group(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

}  // namespace dspark_sgl

#endif  // __CUDACC__
