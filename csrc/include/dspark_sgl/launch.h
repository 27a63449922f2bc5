// Host-side declarations of the kernel launchers bound in module.cpp.
// Launchers take raw device pointers and a cudaStream_t so the extension does not
// link libtorch: the Python layer (markov.py, verify.py, scheduler.py) validates tensors, allocates
// outputs and workspaces, and passes pointers. Every launcher returns an empty string
// on success, else the error text; none of them synchronises with the host.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "dspark_sgl/philox.cuh"

namespace dspark_sgl {

// dspark_sgl.rng.Stream
constexpr uint32_t kStreamDraft = 1;
constexpr uint32_t kStreamAccept = 2;
constexpr uint32_t kStreamResample = 3;

constexpr int64_t kMarkovMaxRank = 512;
constexpr int64_t kScheduleMaxCandidates = 8192;

std::string launch_philox_uniform(float* out, const int64_t* rows, const int64_t* positions,
                                  int64_t batch, int64_t vocab_size, uint64_t seed_value,
                                  const int64_t* seed_ptr, uint64_t offset_value,
                                  const int64_t* offset_ptr, uint32_t stream, uintptr_t cuda_stream);

// ---- markov_block -------------------------------------------------------------------
// All tensors contiguous. base_logits [R, g, V]; w1, w2 [V, r] (same dtype, or with w2_scale
// [V] float32 non-null: w2 int8 in [-127, 127] with per-row scales, w1 bf16 or fp16, the weight
// dtype code W1's; dspark_sgl/markov_quant.py orders the bias's operations); anchor [R]
// int64; temperature [R] float32. Outputs: tokens [R, g] int64, token_logits / stat_max /
// stat_sum [R, g] float32, logits_out [R, g, V] in logits_dtype or null (the logits are
// rounded to logits_dtype before anything uses them). With hidden [R, g, H]
// non-null: conf_weight [H (+ r)] float32, conf_bias [1] float32 (or conf_bias_value),
// conf_dtype: the projection's dtype code (features and the raw logit are rounded to it, as
// SGLang's DSparkConfidenceHead computes in its weight dtype), sts_temperatures [g] float32
// or null, outputs conf_logits / confidence [R, g] float32.
// A vocab shard: w2 / base_logits hold the global columns [vocab_start, vocab_start + V)
// (vocab_start % 16 == 0: whole sampler groups) of a vocabulary of vocab_total = rows of w1; the
// noise is keyed by the global columns' groups and tokens are global ids. first_position: the
// Philox position of k = 0. token_scores [R, g] float32 (or null): the drawn tokens' group keys
// (the logit on greedy rows).
struct MarkovBlockArgs {
  const void* base_logits;
  const int64_t* anchor;
  const void* w1;
  const void* w2;
  const float* w2_scale;  // null: w2 in W1's dtype; else int8 W2's per-row scales [V]
  const float* temperature;
  int64_t rows, gamma, vocab, rank;
  int64_t vocab_start, vocab_total, first_position;
  float softcap;  // <= 0: none
  PhiloxArgs philox;
  const void* hidden;
  int64_t hidden_size;
  const float* conf_weight;
  int conf_uses_markov;
  const float* conf_bias;  // device scalar, or null to use conf_bias_value
  float conf_bias_value;
  int conf_dtype;
  const float* sts_temperatures;
  int64_t* tokens;
  float* token_logits;
  float* token_scores;
  float* stat_max;
  float* stat_sum;
  void* logits_out;
  int logits_dtype;
  float* conf_logits;
  float* confidence;
  int persistent;  // 1: every position in one cooperative launch where the device can hold its grid
};

int markov_block_tile_vocab(int64_t rows, int weight_bytes);
size_t markov_block_workspace_bytes(int64_t rows, int64_t vocab, int weight_bytes);
// Shared memory per CTA of the tile kernels (markov_block and chain_verify's recompute).
size_t markov_block_smem_bytes(int64_t rows, int64_t rank, int weight_bytes);
std::string launch_markov_block(const MarkovBlockArgs& args, int base_dtype, int weight_dtype,
                                int hidden_dtype, void* workspace, uintptr_t cuda_stream);

// ---- chain_verify -------------------------------------------------------------------
// target_logits [R, g+1, V]; draft_tokens [R, g] int64; verify_lens [R] int64;
// temperature [R] float32. The draft side is either draft_logits [R, g, V] (any float
// dtype) or, with draft_logits null, the Markov sampler's statistics draft_max /
// draft_sum / draft_token_logits [R, g] float32 plus what recomputes a rejected row:
// base_logits [R, g, V] (dtype of target_logits), anchor [R], w1 / w2 [V, r], softcap.
// Outputs: accept_lens [R] int32, out_tokens [R, g+1] int64. counters: int32
// [chain_verify_counter_bytes() / 4], zero before the first launch; every launch leaves them zero
// (the work-item and row tickets, the rejected and merged request counts), so one buffer serves
// every launch of a stream.
struct ChainVerifyArgs {
  const void* target_logits;
  const void* draft_logits;
  const float* draft_max;
  const float* draft_sum;
  const float* draft_token_logits;
  const void* base_logits;
  const int64_t* anchor;
  const void* w1;
  const void* w2;
  int64_t rank;
  float softcap;
  int logits_dtype;  // the Markov sampler's logits dtype (a recomputed row is rounded to it)
  const int64_t* draft_tokens;
  const int64_t* verify_lens;
  const float* temperature;
  int64_t rows, gamma, vocab;
  PhiloxArgs philox;
  int stat_chunks;  // CTAs per (row, position) in pass 1
  int32_t* counters;
  int32_t* accept_lens;
  int64_t* out_tokens;
};

size_t chain_verify_workspace_bytes(int64_t rows, int64_t gamma, int64_t vocab, int stat_chunks,
                                    int weight_bytes);
size_t chain_verify_counter_bytes();
std::string launch_chain_verify(const ChainVerifyArgs& args, int target_dtype, int draft_dtype,
                                int weight_dtype, void* workspace, uintptr_t cuda_stream);

// ---- schedule_prefix ----------------------------------------------------------------
// confidence / budget_confidence [R, g] (dtype code), R * g <= 8192; SPS table
// sps_tokens / sps_speeds [points] float64. Output lengths [R] int32 and, when
// take_out is non-null, the number of admitted candidates (int64).
enum BudgetSource : int { kBudgetNone = 0, kBudgetGiven = 1 };

struct SchedulePrefixArgs {
  int rows, gamma;
  const double* sps_tokens;
  const double* sps_speeds;
  int sps_points;
  int causal;         // Algorithm 1's early stop
  int budget_source;  // kBudgetGiven: budget_ptr (int64, device) or budget_value
  const int64_t* budget_ptr;
  int64_t budget_value;
  int32_t* lengths;
  int64_t* take_out;
};

size_t schedule_prefix_smem_bytes(int64_t rows, int64_t gamma, bool two_segments);
// budget_confidence non-null: the budget is the first argmax of Theta over it (async).
std::string launch_schedule_prefix(const SchedulePrefixArgs& args, const void* confidence,
                                   const void* budget_confidence, int dtype, uintptr_t cuda_stream);

}  // namespace dspark_sgl
