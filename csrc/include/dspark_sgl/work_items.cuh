// Work items in start order, and waits on the items started before: two phases of work in one
// launch without a grid-wide barrier (the forward-progress argument of decoupled look-back).
//
// The contract:
//   - take_work_item(): one thread per CTA takes the next ticket of a zero-at-rest int32 counter;
//     a CTA works on the item its ticket names, never on its blockIdx. Tickets are taken only by
//     running CTAs, so the CTA holding ticket t knows that every ticket < t is held by a CTA that
//     has started and that no CTA will ever wait for it. The CTA taking the last of `total`
//     tickets resets the counter: every launch leaves it zero.
//   - wait_for_count(): one thread spins until a counter's bits under `mask` reach `target`, then
//     fences and returns the word it saw (other bits of it may carry what the raisers add). A CTA may
//     only wait for counts that CTAs holding smaller tickets raise without waiting themselves:
//     those CTAs are running, so the wait ends without any assumption on how many CTAs are
//     resident. The raising side writes its results, __threadfence(), then atomicAdd()s the count.
//     The waiting thread's CTA reads those results after a __syncthreads() that follows the wait.
// Under the CPU emulator (CUEMU) both go to tests/cuemu's model: a wait that no running CTA can
// end faults (a deadlock on a GPU), and CUEMU_PARK_ITEM=t holds the CTA of ticket t right after it
// takes it, until every later CTA has finished or waits, exposing a CTA that reads what an earlier
// item writes without waiting for it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dspark_sgl {

#ifdef __CUDACC__

// The ticket of the calling thread's CTA (call from one thread); `total`: the grid's CTA count.
__device__ __forceinline__ int32_t take_work_item(int32_t* counter, int32_t total) {
#ifdef CUEMU
  return ::cuemu::take_work_item(counter, total);
#else
  const int32_t ticket = atomicAdd(counter, 1);
  if (ticket == total - 1) atomicExch(counter, 0);  // every CTA of this launch has its ticket
  return ticket;
#endif
}

// Spins (one thread) until (*counter & mask) >= target, then orders this thread's later reads after
// the writes that preceded the raising atomics; returns the counter's word that ended the wait. The
// sleep between polls stays short (no backoff): a wait ends a launch's first phase, so its wake-up
// latency is on the critical path, while a poll costs one L2 load.
__device__ __forceinline__ int32_t wait_for_count(const int32_t* counter, int32_t target, int32_t mask = -1) {
#ifdef CUEMU
  return ::cuemu::wait_for_count(counter, target, mask, "wait_for_count");
#else
  int32_t seen;
  for (;;) {
    asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];\n" : "=r"(seen) : "l"(counter) : "memory");
    if ((seen & mask) >= target) break;
    __nanosleep(32);
  }
  __threadfence();
  return seen;
#endif
}

#endif  // __CUDACC__

}  // namespace dspark_sgl
