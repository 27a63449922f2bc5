"""SGLang 0.5.23's path for the three kernels, as launches and the bytes each must move.

Read from its installed source (``sglang/srt/speculative/dspark_components/dspark_draft.py``,
``sglang/srt/models/dspark.py``, ``sglang/kernels/ops/speculative/dspark/markov_sample.py``,
``dspark_accept.py``, ``dspark_schedule.py``, ``sglang/kernels/ops/speculative/reject_sampling.py``),
on the paths ``benchmarks/sglang_baseline.py`` times: a vanilla Markov head with sampled
rows that keeps its step logits, ``accept_draft_tokens`` on its sampling path (every row
sampled, no top-k/top-p), and ``ScheduleVerifyLensTopk`` on a device.

Every tensor a launch reads or writes is counted once, although some kernels pass over a
row several times (``_softmax_temp_kernel`` three times, the sampling kernel twice): those
re-reads are assumed to hit L2. No instruction count is modeled (the Triton and cuBLAS
SASS is not built here). Both choices make SGLang's modeled time a lower bound, so a
modeled speed-up over it is conservative. Each function returns ``[(launch, bytes)]``.
"""

from __future__ import annotations

import math

Launches = list[tuple[str, int]]

# markov_sample.py: _BLOCK, the vocabulary columns of one partial-kernel program.
_SAMPLE_BLOCK = 1024


def markov_block(vocab: int, rows: int, gamma: int, rank: int, elem: int) -> Launches:
    """draft_markov_block: per position _draft_step (step_bias, then MarkovSampleStep.triton).

    ``elem``: bytes of one logit/weight (SGLang's step dtype is the weights' dtype).
    """
    parts = math.ceil(vocab / _SAMPLE_BLOCK)
    per_position = [
        # VanillaMarkov.get_prev_embeddings: markov_w1(token_ids), an embedding gather.
        ("markov_w1 embedding gather", rows * 8 + 2 * rows * rank * elem),
        # VanillaMarkov.project_bias: markov_w2(latent), one GEMM writing the [R, V] bias.
        ("markov_w2 GEMM (bias)", vocab * rank * elem + rows * rank * elem + rows * vocab * elem),
        # _markov_sample_partial_kernel: base + bias in, step logits (logits_out) and partials out.
        ("_markov_sample_partial_kernel", 3 * rows * vocab * elem + rows * 4 + rows * parts * 8),
        ("_markov_sample_finish_kernel", rows * parts * 8 + rows * 8),
    ]
    per_block = [
        ("torch.stack(draft_tokens)", 2 * rows * gamma * 8),
        ("noise.offset.add_(1)", 16),
    ]
    return per_position * gamma + per_block


def verify(vocab: int, rows: int, gamma: int, elem: int) -> Launches:
    """accept_draft_tokens -> AcceptSampling.triton (dspark_accept._accept_sampling_core).

    Draft logits [R, g, V] and target logits [R, g+1, V] in ``elem``-byte floats;
    SoftmaxTemp takes its Triton kernel (FlashInfer's softmax is not installed with 0.5.23).
    """
    return [
        # _draft_probs: SoftmaxTemp over the draft's corrected logits -> float32 probs.
        ("_softmax_temp_kernel (draft probs)", rows * gamma * vocab * (elem + 4)),
        ("_softmax_temp_kernel (target probs)", rows * (gamma + 1) * vocab * (elem + 4)),
        ("torch.rand uniform_samples", rows * gamma * 4),
        ("torch.rand uniform_samples_final", rows * 4),
        # One program per request: probs at the drafted tokens, then the residual over the
        # stop row of both float32 prob tensors.
        ("speculative_sampling_classic_kernel", 2 * rows * vocab * 4 + rows * gamma * (8 + 8) + rows * 16),
        ("_gather_two_level_bonus_kernel", rows * (4 + 4 + 8)),
        ("torch.zeros_like(correct_len)", rows * 4),
    ]


def schedule(rows: int, gamma: int) -> Launches:
    """ScheduleVerifyLensTopk.triton; the budget (compute_verify_token_budget) runs on the host."""
    return [
        ("_schedule_topk_prep_kernel", rows * gamma * 4 * 2 + rows * 4),
        ("_schedule_topk_selected_extra_kernel", rows * gamma * 4 + rows * 4),
        ("_schedule_topk_finalize_kernel", rows * 4 * 2),
    ]
