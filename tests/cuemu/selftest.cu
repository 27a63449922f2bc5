// Self-tests of the emulator: small kernels whose right answer is known, and kernels with planted
// bugs that the emulator must report or expose. tests/cuemu/test_emulator.py builds this file with
// the runtime into a shared library and calls the st_* entry points through ctypes; each returns
// "" or the launch's error text.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "dspark_sgl/async_copy.cuh"
#include "dspark_sgl/dependent_launch.cuh"
#include "dspark_sgl/markov_int8.cuh"
#include "dspark_sgl/mma_fragment.cuh"
#include "dspark_sgl/work_items.cuh"

namespace {

__global__ void shuffle_sources(int* out, int width) {
  const int lane = threadIdx.x % 32;
  const int base = threadIdx.x * 4;
  out[base + 0] = __shfl_xor_sync(0xffffffffu, lane, 5, width);
  out[base + 1] = __shfl_up_sync(0xffffffffu, lane, 3, width);
  out[base + 2] = __shfl_down_sync(0xffffffffu, lane, 3, width);
  out[base + 3] = __shfl_sync(0xffffffffu, lane, 37, width);
}

// Undefined on a GPU (hangs or corrupts): half of warp 0 waits at a full-mask shuffle while
// the other half waits at __syncthreads.
__global__ void divergent_barrier(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x % 32 < 16) __syncthreads();
  else v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// Lanes 16..31 skip a full-mask shuffle and exit while lanes 0..15 wait for them.
__global__ void exited_lanes(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void wmma_bf16(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c, int lda, int ldb, int col_b) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.5f);
  wmma::load_matrix_sync(fa, a, lda);
  if (col_b) {
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
    wmma::load_matrix_sync(fb, b, ldb);
    wmma::mma_sync(acc, fa, fb, acc);
  } else {
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
    wmma::load_matrix_sync(fb, b, ldb);
    wmma::mma_sync(acc, fa, fb, acc);
  }
  wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}

__global__ void atomic_sum(unsigned long long* total, float* ftotal) {
  atomicAdd(total, static_cast<unsigned long long>(blockIdx.x * blockDim.x + threadIdx.x));
  atomicAdd(ftotal, 1.0f);
}

// Reverses a block's values through shared memory; `sync` 0 drops the barrier (a race).
__global__ void reverse_block(const int* in, int* out, int sync) {
  __shared__ int buf[256];
  buf[threadIdx.x] = in[blockIdx.x * 256 + threadIdx.x];
  if (sync) __syncthreads();
  out[blockIdx.x * 256 + threadIdx.x] = buf[255 - threadIdx.x];
}

__global__ void dynamic_smem_sum(const float* in, float* out) {
  extern __shared__ __align__(16) float tile[];
  tile[threadIdx.x] = in[threadIdx.x];
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) tile[threadIdx.x] += tile[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = tile[0];
}

__global__ void convert_16bit(const float* in, uint16_t* bf16, uint16_t* f16, float* back, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const __nv_bfloat16 b = __float2bfloat16_rn(in[i]);
  const __half h = __float2half_rn(in[i]);
  bf16[i] = __bfloat16_as_ushort(b);
  f16[i] = __half_as_ushort(h);
  back[2 * i] = __bfloat162float(b);
  back[2 * i + 1] = __half2float(h);
}

// out[i] = __byte_perm(x[i], y[i], s[i]) for i < n (one thread each).
__global__ void byte_perm(const unsigned* x, const unsigned* y, const unsigned* s, unsigned* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __byte_perm(x[i], y[i], s[i]);
}

// The int8 W2 widening of markov_int8.cuh on every byte: thread t widens the word of bytes
// 4t .. 4t + 3 (as int8) to bf16 (out_bf16[4t ..]) and to half (out_f16[4t ..]), as bit patterns.
__global__ void widen_int8(uint16_t* out_bf16, uint16_t* out_f16) {
  const unsigned b = 4 * threadIdx.x;
  const unsigned word = b | (b + 1) << 8 | (b + 2) << 16 | (b + 3) << 24;
  const uint2 w = dspark_sgl::int8x4_to<__nv_bfloat16>(word), h = dspark_sgl::int8x4_to<__half>(word);
  const unsigned words[4] = {w.x, w.y, h.x, h.y};
  for (int k = 0; k < 4; ++k) {
    uint16_t* out = k < 2 ? out_bf16 : out_f16;
    out[b + 2 * (k % 2)] = static_cast<uint16_t>(words[k] & 0xffffu);
    out[b + 2 * (k % 2) + 1] = static_cast<uint16_t>(words[k] >> 16);
  }
}

// Per warp: ballot, all, any of (lane % 3 == 0); per block: __syncthreads_count of odd threads.
__global__ void votes(unsigned* out) {
  const int p = threadIdx.x % 3 == 0;
  const unsigned ballot = __ballot_sync(0xffffffffu, p);
  const int all = __all_sync(0xffffffffu, threadIdx.x < 1000);
  const int any = __any_sync(0xffffffffu, threadIdx.x == 40);
  const int count = __syncthreads_count(threadIdx.x % 2);
  if (threadIdx.x % 32 == 0) {
    const int w = threadIdx.x / 32;
    out[4 * w + 0] = ballot;
    out[4 * w + 1] = all;
    out[4 * w + 2] = any;
    out[4 * w + 3] = count;
  }
}

// Per lane: __match_any_sync of (lane % 5) (32-bit) and of (lane / 8) << 40 (64-bit); a
// 16-lane mask for the upper half-warp of warp 1.
__global__ void matches(unsigned* out) {
  const unsigned lane = threadIdx.x % 32;
  out[3 * threadIdx.x] = __match_any_sync(0xffffffffu, lane % 5);
  out[3 * threadIdx.x + 1] = __match_any_sync(0xffffffffu, static_cast<unsigned long long>(lane / 8) << 40);
  out[3 * threadIdx.x + 2] = lane >= 16 ? __match_any_sync(0xffff0000u, lane % 3) : 0u;
}

// Warp 1 reads what warp 0 wrote, ordered only by __syncwarp (a bug: it needs __syncthreads).
// One phase of lockstep (the default schedule) hides it; a greedy schedule that runs warp 1 first
// exposes it.
__global__ void cross_warp_syncwarp(int* out) {
  extern __shared__ int buf[];  // dynamic: poisoned at every block, so no earlier launch's values
  buf[threadIdx.x] = static_cast<int>(threadIdx.x) + 1;
  __syncwarp();
  out[threadIdx.x] = buf[(threadIdx.x + 32) % 64];
}

// cp.async groups: thread t copies in[t] (group A), in[32 + t] (group B) and zero-fills slot
// 64 + t from a source holding data (group C); out[8t ..] records slot t before any wait, then
// slots t and 32 + t after wait<2>, slot 32 + t after wait<1>, slot 64 + t (four words) after
// wait<0>. A copy issued after the last commit stays pending through a wait<0> (out[8t + 7]).
__global__ void async_copy_groups(const int4* in, int* out) {
  using namespace dspark_sgl;
  extern __shared__ __align__(16) int4 slots[];  // 128 slots, poisoned at the block start
  const int t = threadIdx.x;
  int* o = out + 8 * t;
  cp_async_16(&slots[t], &in[t], 16);
  cp_async_commit();
  cp_async_16(&slots[32 + t], &in[32 + t], 16);
  cp_async_commit();
  cp_async_16(&slots[64 + t], &in[t], 0);
  cp_async_commit();
  o[0] = slots[t].x;
  cp_async_wait<2>();
  o[1] = slots[t].x;
  o[2] = slots[32 + t].x;
  cp_async_wait<1>();
  o[3] = slots[32 + t].x;
  cp_async_16(&slots[96 + t], &in[64 + t], 16);  // not committed yet
  cp_async_wait<0>();
  o[4] = slots[64 + t].x | slots[64 + t].y | slots[64 + t].z | slots[64 + t].w;
  o[5] = slots[64 + t].w;
  o[6] = slots[t].x;
  o[7] = slots[96 + t].x;
  cp_async_commit();
  cp_async_wait<0>();
}

// Each thread copies in[t] into slot t, waits, and reads its neighbour's slot (t + 1) % n;
// `sync` 0 drops the __syncthreads between the wait and the read (a race).
__global__ void async_copy_neighbour(const int4* in, int* out, int sync) {
  using namespace dspark_sgl;
  extern __shared__ __align__(16) int4 slots[];
  const int t = threadIdx.x, n = blockDim.x;
  cp_async_16(&slots[t], &in[t], 16);
  cp_async_commit();
  cp_async_wait<0>();
  if (sync) __syncthreads();
  out[t] = slots[(t + 1) % n].x;
}

// The copy trace: thread t of block b copies in[(gridDim.x - 1 - b) * stride + t] (with L2's evict-first
// priority where evict_first is set) and other[t], and zero-fills a slot naming in[0] as its source
// (src_bytes 0 reads nothing); out[b * n + t] is the copy of in.
__global__ void async_copy_traced(const int4* in, const int4* other, int stride, int evict_first, int4* out) {
  using namespace dspark_sgl;
  extern __shared__ __align__(16) int4 slots[];
  const int t = threadIdx.x, n = blockDim.x;
  cp_async_16(&slots[t], &in[(gridDim.x - 1 - blockIdx.x) * stride + t], 16,
              l2_policy(evict_first ? L2Priority::kEvictFirst : L2Priority::kNormal));
  cp_async_16(&slots[n + t], &other[t], 16);
  cp_async_16(&slots[2 * n + t], &in[0], 0);
  cp_async_commit();
  cp_async_wait<0>();
  out[blockIdx.x * n + t] = slots[t];
}

// One rule broken per `kind` (0: none, with a static __shared__ destination): 1 a misaligned
// destination, 2 a misaligned source, 3 a global destination, 4 src_bytes 8, 5 a source in
// shared memory, 6 the thread exits with a committed copy never waited for, 7 with a copy
// never committed.
__global__ void async_copy_misuse(const int4* in, int4* global_out, int kind) {
  using namespace dspark_sgl;
  extern __shared__ __align__(16) int4 slots[];
  __shared__ int4 static_slots[32];  // int4 is 16-byte aligned
  const int t = threadIdx.x;
  void* dst = &static_slots[t];
  const void* src = &in[t];
  int bytes = 16;
  if (kind == 1) dst = reinterpret_cast<char*>(&slots[t]) + 4;
  if (kind == 2) src = reinterpret_cast<const char*>(&in[t]) + 8;
  if (kind == 3) dst = &global_out[t];
  if (kind == 4) bytes = 8;
  if (kind == 5) src = &slots[t];
  cp_async_16(dst, src, bytes);
  if (kind == 7) return;
  cp_async_commit();
  if (kind == 6) return;
  cp_async_wait<0>();
  global_out[t] = static_slots[t];
}

// Programmatic dependent launch. The primary triggers at once and writes `value` to data[0, n).
__global__ void pdl_primary(int* data, int n, int value) {
  dspark_sgl::allow_dependent_launch();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) data[i] = value;
}

// The dependent: each thread reads data[i] before the wait (before[i]) and after it (after[i]);
// kept[i] says whether the static and dynamic shared memory written before the wait still hold
// it after. Thread 0 waits only after a barrier the others reach after their waits: the block
// holds threads at the barrier and at the wait at once. `wait` 0 drops both waits (a bug).
__global__ void pdl_dependent(const int* data, int* before, int* after, int* kept, int wait) {
  __shared__ int block_tag;
  extern __shared__ int own[];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  before[i] = data[i];
  if (threadIdx.x == 0) block_tag = 1000 + blockIdx.x;
  own[threadIdx.x] = i;
  if (wait && threadIdx.x != 0) dspark_sgl::wait_for_primary_grid();
  __syncthreads();
  if (wait && threadIdx.x == 0) dspark_sgl::wait_for_primary_grid();
  after[i] = data[i];
  kept[i] = block_tag == 1000 + static_cast<int>(blockIdx.x) && own[threadIdx.x] == i;
}

// One link of a chain of dependents: reads *in before and after its wait, then writes *out.
__global__ void pdl_relay(const int* in, int* out, int* seen, int value) {
  seen[0] = *in;
  dspark_sgl::wait_for_primary_grid();
  seen[1] = *in;
  *out = value;
}

// Two phases through work items: items < n1 write their slice data[item * blockDim.x ..] and
// raise *done; items >= n1 wait for *done >= target (n1; n1 + 1 is never reached), then sum all
// of phase 1's slices into out[item - n1]. `wait` 0 drops the wait (a bug: a reader may see a
// slice before it is written). misuse 1: thread 0 takes a second item, 2: total is one short.
// tagged 1: each writer also adds 1 << 16 (a second count in the high half), the readers wait on
// the low half (mask 0xFFFF) and store the high half of the word that ended the wait in
// tags[item - n1]; tagged 2: the same without the mask (a bug: the first writer ends the wait).
// Every block counts itself in, then waits until all gridDim.x have (a grid-wide rendezvous: only a
// grid whose blocks are all resident at once, a cooperative launch, can finish it); seen[block] is the
// count its wait saw.
__global__ void grid_rendezvous(int32_t* arrived, int32_t* seen) {
  if (threadIdx.x == 0) {
    atomicAdd(arrived, 1);
    seen[blockIdx.x] = dspark_sgl::wait_for_count(arrived, static_cast<int32_t>(gridDim.x));
  }
  __syncthreads();
}

__global__ void work_items(int32_t* counter, int32_t* done, int* data, unsigned long long* out, int n1, int target,
                           int wait, int misuse, int tagged, int* tags) {
  __shared__ int item;
  const int total = static_cast<int>(gridDim.x) - (misuse == 2);
  if (threadIdx.x == 0) item = dspark_sgl::take_work_item(counter, total);
  if (threadIdx.x == 0 && misuse == 1) dspark_sgl::take_work_item(counter, total);
  __syncthreads();
  if (item < n1) {
    data[item * blockDim.x + threadIdx.x] = item * 1000 + static_cast<int>(threadIdx.x) + 1;
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence();
      atomicAdd(done, tagged ? 1 + (1 << 16) : 1);
    }
    return;
  }
  if (wait && threadIdx.x == 0) {
    const int32_t seen = dspark_sgl::wait_for_count(done, target, tagged == 1 ? 0xFFFF : -1);
    tags[item - n1] = static_cast<int>(static_cast<uint32_t>(seen) >> 16);
  }
  __syncthreads();
  unsigned long long sum = 0;
  for (int i = threadIdx.x; i < n1 * static_cast<int>(blockDim.x); i += blockDim.x) sum += data[i];
  atomicAdd(&out[item - n1], sum);
}

std::string result() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string(cudaGetErrorString(e));
}

thread_local std::string g_text;
const char* ret(std::string s) {
  g_text = std::move(s);
  return g_text.c_str();
}

// One m16n8k16 tile through ldmatrix: A's 16 rows and B's 8 columns (k-contiguous rows of 16 values)
// are copied into shared memory slots slot_a[row] / slot_b[n] (any permutation), each lane
// addresses the documented row, and d = A B + c is written out in the accumulator layout
// (d [16, 8] row-major); a_regs [32, 4] gets each lane's A registers as ldmatrix_x4 returned them.
// misuse: 0 none, 1 a row address 8 bytes off, 2 a row in global memory, 3 lanes 16-31 skip the MMA.
template <typename T>
__global__ void mma_tile(const T* a, const T* b, const float* c, const int* slot_a, const int* slot_b, float* d,
                         uint32_t* a_regs, int misuse) {
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  T* rows = reinterpret_cast<T*>(smem_bytes);  // 24 slots of 16 values
  const int lane = threadIdx.x % 32;
  for (int i = lane; i < 16 * 16; i += 32) rows[slot_a[i / 16] * 16 + i % 16] = a[i];
  for (int i = lane; i < 8 * 16; i += 32) rows[slot_b[i / 16] * 16 + i % 16] = b[i];
  __syncwarp();
  const int a_row = lane % 8 + 8 * (lane / 8 % 2), a_col = 8 * (lane / 16);
  const T* a_at = rows + slot_a[a_row] * 16 + a_col;
  if (misuse == 1 && lane == 5) a_at += 4;
  if (misuse == 2 && lane == 9) a_at = a + a_row * 16 + a_col;
  uint32_t ra[4], rb[2];
  dspark_sgl::ldmatrix_x4(ra, a_at);
  dspark_sgl::ldmatrix_x2(rb, rows + slot_b[lane % 8] * 16 + 8 * (lane / 8 % 2));
  const int g = lane / 4, t = lane % 4;
  float acc[4];
  for (int i = 0; i < 4; ++i) acc[i] = c[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2];
  if (misuse == 3 && lane >= 16) return;
  dspark_sgl::mma_m16n8k16<T>(acc, ra, rb);
  for (int i = 0; i < 4; ++i) d[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = acc[i];
  for (int i = 0; i < 4; ++i) a_regs[lane * 4 + i] = ra[i];
}

}  // namespace

#define CUEMU_EXPORT extern "C" __attribute__((visibility("default")))

CUEMU_EXPORT const char* st_shuffle_sources(int* out, int threads, int width) {
  shuffle_sources<<<1, threads>>>(out, width);
  return ret(result());
}
CUEMU_EXPORT const char* st_divergent_barrier(int* out) {
  divergent_barrier<<<1, 128>>>(out);
  return ret(result());
}
CUEMU_EXPORT const char* st_exited_lanes(int* out) {
  exited_lanes<<<1, 64>>>(out);
  return ret(result());
}
CUEMU_EXPORT const char* st_wmma_bf16(const uint16_t* a, const uint16_t* b, float* c, int lda, int ldb, int col_b) {
  wmma_bf16<<<1, 32>>>(reinterpret_cast<const __nv_bfloat16*>(a), reinterpret_cast<const __nv_bfloat16*>(b), c,
                       lda, ldb, col_b);
  return ret(result());
}
CUEMU_EXPORT const char* st_atomic_sum(unsigned long long* total, float* ftotal, int blocks) {
  atomic_sum<<<blocks, 256>>>(total, ftotal);
  return ret(result());
}
CUEMU_EXPORT const char* st_reverse_block(const int* in, int* out, int blocks, int sync) {
  reverse_block<<<blocks, 256>>>(in, out, sync);
  return ret(result());
}
CUEMU_EXPORT const char* st_convert_16bit(const float* in, uint16_t* bf16, uint16_t* f16, float* back, int n) {
  convert_16bit<<<(n + 255) / 256, 256>>>(in, bf16, f16, back, n);
  return ret(result());
}
CUEMU_EXPORT const char* st_byte_perm(const unsigned* x, const unsigned* y, const unsigned* s, unsigned* out, int n) {
  byte_perm<<<(n + 127) / 128, 128>>>(x, y, s, out, n);
  return ret(result());
}
CUEMU_EXPORT const char* st_widen_int8(uint16_t* out_bf16, uint16_t* out_f16) {
  widen_int8<<<1, 64>>>(out_bf16, out_f16);
  return ret(result());
}
CUEMU_EXPORT const char* st_votes(unsigned* out) {
  votes<<<1, 96>>>(out);
  return ret(result());
}
CUEMU_EXPORT const char* st_matches(unsigned* out) {
  matches<<<1, 64>>>(out);
  return ret(result());
}
CUEMU_EXPORT const char* st_cross_warp_syncwarp(int* out) {
  cross_warp_syncwarp<<<1, 64, 64 * sizeof(int)>>>(out);
  return ret(result());
}
CUEMU_EXPORT const char* st_dynamic_smem_sum(const float* in, float* out, int threads, int opt_in) {
  if (opt_in) cudaFuncSetAttribute(dynamic_smem_sum, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  dynamic_smem_sum<<<1, threads, 64 * 1024>>>(in, out);
  return ret(result());
}
CUEMU_EXPORT const char* st_async_copy_groups(const int4* in, int* out) {
  async_copy_groups<<<1, 32, 128 * sizeof(int4)>>>(in, out);
  return ret(result());
}
CUEMU_EXPORT const char* st_async_copy_neighbour(const int4* in, int* out, int threads, int sync) {
  async_copy_neighbour<<<1, threads, threads * sizeof(int4)>>>(in, out, sync);
  return ret(result());
}
CUEMU_EXPORT const char* st_async_copy_traced(const int4* in, const int4* other, int blocks, int threads,
                                              int stride, int evict_first, int4* out) {
  async_copy_traced<<<blocks, threads, 3 * threads * sizeof(int4)>>>(in, other, stride, evict_first, out);
  return ret(result());
}
CUEMU_EXPORT const char* st_async_copy_misuse(const int4* in, int4* global_out, int kind) {
  async_copy_misuse<<<1, 32, 32 * sizeof(int4)>>>(in, global_out, kind);
  return ret(result());
}
// `blocks` x `threads` dependent threads on a primary that writes 5 over data's earlier values;
// `queued` 0: a cudaGetLastError between the launches runs the primary first; `wait` 0: the
// dependent never waits.
CUEMU_EXPORT const char* st_dependent_launch(int* data, int* before, int* after, int* kept, int blocks, int threads,
                                             int queued, int wait) {
  pdl_primary<<<2, 64>>>(data, blocks * threads, 5);
  if (!queued && cudaGetLastError() != cudaSuccess) return ret(result());
  const cudaError_t e = dspark_sgl::launch_programmatic_dependent(pdl_dependent, dim3(blocks), dim3(threads),
                                                                  threads * sizeof(int), nullptr, data, before,
                                                                  after, kept, wait);
  if (e != cudaSuccess) return ret(cudaGetErrorString(e));
  return ret(result());
}
// A -> B -> C, each the programmatic dependent of the one before: A writes cell[0] = 1, B reads
// cell[0] (seen[0, 2)) and writes cell[1] = 2, C reads cell[1] (seen[2, 4)) and writes cell[2] = 3.
CUEMU_EXPORT const char* st_dependent_chain(int* cell, int* seen) {
  pdl_relay<<<1, 32>>>(cell + 3, cell, seen + 4, 1);
  cudaError_t e = dspark_sgl::launch_programmatic_dependent(pdl_relay, dim3(1), dim3(32), 0, nullptr,
                                                            static_cast<const int*>(cell), cell + 1, seen, 2);
  if (e == cudaSuccess)
    e = dspark_sgl::launch_programmatic_dependent(pdl_relay, dim3(1), dim3(32), 0, nullptr,
                                                  static_cast<const int*>(cell + 1), cell + 2, seen + 2, 3);
  if (e != cudaSuccess) return ret(cudaGetErrorString(e));
  return ret(result());
}
// The launch errors cudaLaunchKernelEx returns: 0 a block of 2048 threads, 1 an attribute the
// emulator does not model (a cluster dimension).
CUEMU_EXPORT const char* st_dependent_launch_error(int* cell, int kind) {
  cudaLaunchAttribute attribute[1] = {};
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(1);
  config.blockDim = dim3(kind == 0 ? 2048 : 32);
  config.attrs = attribute;
  config.numAttrs = kind == 0 ? 0 : 1;
  const cudaError_t e = cudaLaunchKernelEx(&config, pdl_relay, static_cast<const int*>(cell), cell + 1, cell + 2, 0);
  cudaGetLastError();
  return ret(e == cudaSuccess ? std::string() : std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e));
}
// mma_tile in bf16 (fp16 0) or fp16 (1); see mma_tile for misuse.
CUEMU_EXPORT const char* st_mma_tile(const uint16_t* a, const uint16_t* b, const float* c, const int* slot_a,
                                     const int* slot_b, float* d, uint32_t* a_regs, int fp16, int misuse) {
  if (fp16)
    mma_tile<__half><<<1, 32, 24 * 16 * 2>>>(reinterpret_cast<const __half*>(a), reinterpret_cast<const __half*>(b),
                                             c, slot_a, slot_b, d, a_regs, misuse);
  else
    mma_tile<__nv_bfloat16><<<1, 32, 24 * 16 * 2>>>(reinterpret_cast<const __nv_bfloat16*>(a),
                                                    reinterpret_cast<const __nv_bfloat16*>(b), c, slot_a, slot_b,
                                                    d, a_regs, misuse);
  return ret(result());
}
// grid_rendezvous on `blocks` blocks of 64 threads, cooperative (cudaLaunchAttributeCooperative) or not.
CUEMU_EXPORT const char* st_grid_rendezvous(int32_t* arrived, int32_t* seen, int blocks, int cooperative) {
  cudaLaunchAttribute attribute[1] = {};
  attribute[0].id = cudaLaunchAttributeCooperative;
  attribute[0].val.cooperative = cooperative;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(64);
  config.attrs = attribute;
  config.numAttrs = 1;
  const cudaError_t e = cudaLaunchKernelEx(&config, grid_rendezvous, arrived, seen);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return ret(std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e));
  }
  return ret(result());
}
// cudaOccupancyMaxActiveBlocksPerMultiprocessor of grid_rendezvous at `threads` and `smem` bytes.
CUEMU_EXPORT int st_occupancy(int threads, size_t smem) {
  int blocks = -1;
  return cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, grid_rendezvous, threads, smem) == cudaSuccess
             ? blocks
             : -1;
}
// work_items on n1 + n2 blocks of 64 threads.
CUEMU_EXPORT const char* st_work_items(int32_t* counter, int32_t* done, int* data, unsigned long long* out, int n1,
                                       int n2, int target, int wait, int misuse, int tagged, int* tags) {
  work_items<<<n1 + n2, 64>>>(counter, done, data, out, n1, target, wait, misuse, tagged, tags);
  return ret(result());
}
// cudaDeviceGetAttribute(value, attr, 0): "" or the error's name.
CUEMU_EXPORT const char* st_device_attribute(int* value, int attr) {
  const cudaError_t e = cudaDeviceGetAttribute(value, static_cast<cudaDeviceAttr>(attr), 0);
  cudaGetLastError();
  return ret(e == cudaSuccess ? std::string() : std::string(cudaGetErrorName(e)));
}
