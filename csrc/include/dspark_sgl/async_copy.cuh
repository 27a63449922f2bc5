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
//   - wait and commit are per thread: a thread must wait for its own copies;
//   - an L2Policy (l2_policy) gives the copied lines an L2 eviction priority: evict first for lines
//     no later read needs from L2 (they then leave room for the lines that one does). A hint only:
//     the bytes copied are the same.
// Under the CPU emulator (CUEMU) the same calls go to tests/cuemu's model of them, which lands
// a group's copies only at the wait that retires it and faults on a broken rule.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#ifdef __CUDACC__

namespace dspark_sgl {

enum class L2Priority : int { kNormal = 0, kEvictFirst = 1 };

// A cache policy for cp_async_16 (createpolicy: the priority for all of the lines a copy touches).
struct L2Policy {
  uint64_t bits;
};

__device__ __forceinline__ L2Policy l2_policy(L2Priority priority) {
#ifdef CUEMU
  return L2Policy{static_cast<uint64_t>(priority)};
#else
  uint64_t normal, first;
  asm("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;\n" : "=l"(normal));
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(first));
  return L2Policy{priority == L2Priority::kEvictFirst ? first : normal};
#endif
}

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

// The same, the lines given `policy`'s L2 eviction priority.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes, L2Policy policy) {
#ifdef CUEMU
  ::cuemu::async_copy_16(smem_dst, gmem_src, src_bytes, static_cast<int>(policy.bits));
#else
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(dst),
               "l"(__cvta_generic_to_global(gmem_src)), "r"(src_bytes), "l"(policy.bits)
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
