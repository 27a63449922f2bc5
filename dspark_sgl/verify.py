"""Tree-free chain verification: rejection sampling with residual resampling and a bonus.

For row r with verify length l = verify_lens[r] and temperature T > 0, with
``p_j = softmax(target_logits[r, j] / T)`` and ``q_j = softmax(draft_logits[r, j] / T)``:
for j = 0..l-1 accept ``x_j`` when ``u_j * q_j(x_j) < p_j(x_j)`` (``u_j`` from
:mod:`dspark_sgl.rng` stream ``ACCEPT`` at (row r, position j)); stop at the first
rejection s and emit a correction drawn from ``norm(max(0, p_s - q_s))`` (from ``p_s``
when every residual entry is exactly 0); if all l are accepted, emit a bonus drawn from
``p_l``. Draws use Gumbel-max with stream ``RESAMPLE`` at (row r, position s):
``argmax(log residual + G)`` for a correction, ``argmax(target_logits / T + G)`` for a
bonus. Greedy rows (T == 0) accept while ``x_j == argmax target_logits[r, j]`` and emit
``argmax target_logits[r, s]``. Positions j >= l are never accepted.

The output distribution of every emitted token is exactly the target's, whatever the
verify lengths, provided ``verify_lens`` does not depend on the draft tokens it admits
(see :mod:`dspark_sgl.scheduler`).
"""

from __future__ import annotations

import torch

from dspark_sgl import _checks, rng

__all__ = ["chain_verify"]


def _check_inputs(
    target_logits: torch.Tensor,
    draft_logits: torch.Tensor,
    draft_tokens: torch.Tensor,
    verify_lens: torch.Tensor,
    temperature: torch.Tensor,
) -> tuple[int, int, int]:
    _checks.tensor("target_logits", target_logits, dtypes=_checks.FLOAT_DTYPES, ndim=3)
    rows, g_plus_1, vocab = target_logits.shape
    device = target_logits.device
    gamma = g_plus_1 - 1
    if gamma < 0:
        raise ValueError(
            f"target_logits must have g + 1 >= 1 positions, got shape {list(target_logits.shape)}"
        )
    rng.check_position(gamma)
    _checks.tensor(
        "draft_logits", draft_logits, dtypes=_checks.FLOAT_DTYPES, shape=(rows, gamma, vocab), device=device
    )
    _checks.tensor("draft_tokens", draft_tokens, dtypes=(torch.int64,), shape=(rows, gamma), device=device)
    _checks.tensor("verify_lens", verify_lens, dtypes=_checks.INT_DTYPES, shape=(rows,), device=device)
    _checks.temperature("temperature", temperature, rows, device)
    _checks.in_range("draft_tokens", draft_tokens, 0, vocab)
    _checks.in_range("verify_lens", verify_lens, 0, gamma + 1)
    _checks.not_nan("target_logits", target_logits)
    _checks.not_nan("draft_logits", draft_logits)
    return rows, gamma, vocab


def chain_verify(
    target_logits: torch.Tensor,
    draft_logits: torch.Tensor,
    draft_tokens: torch.Tensor,
    verify_lens: torch.Tensor,
    temperature: torch.Tensor,
    *,
    seed: rng.SeedLike,
    offset: rng.SeedLike,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify a drafted chain per row.

    target_logits: [R, g+1, V] (float32/bf16/fp16), the target's logits at the anchor
    and each draft position; draft_logits: [R, g, V], the logits the drafts were sampled
    from (``DraftBlock.logits``); draft_tokens: [R, g] int64; verify_lens: [R] int32/int64
    in [0, g]; temperature: [R] float32 (0 = greedy).

    Returns ``accept_lens`` [R] int32 (accepted drafts, <= verify_lens) and
    ``out_tokens`` [R, g+1] int64: the accepted drafts, then the correction or bonus
    at index ``accept_lens[r]``, then -1.
    """
    rows, gamma, vocab = _check_inputs(target_logits, draft_logits, draft_tokens, verify_lens, temperature)
    device = target_logits.device
    rng.check_seed_offset(seed, offset, device)

    sampled = temperature > 0
    safe_t = torch.where(sampled, temperature, torch.ones_like(temperature))[:, None, None]
    target_scaled = target_logits.float() / safe_t  # [R, g+1, V]
    row_ids = torch.arange(rows, device=device)
    positions = torch.arange(gamma, device=device)

    # Acceptance of each draft position (before truncation to the verify length).
    if gamma > 0:
        p = torch.softmax(target_scaled[:, :gamma], dim=-1)
        q = torch.softmax(draft_logits.float() / safe_t, dim=-1)
        index = draft_tokens.unsqueeze(-1)
        p_x = p.gather(-1, index).squeeze(-1)
        q_x = q.gather(-1, index).squeeze(-1)
        u = rng.uniform_scalar(seed, offset, rng.Stream.ACCEPT, row_ids[:, None], positions[None, :])
        accept_sampled = u * q_x < p_x
        accept_greedy = draft_tokens == target_logits[:, :gamma].argmax(dim=-1)
        accept = torch.where(sampled[:, None], accept_sampled, accept_greedy)
        accept &= positions[None, :] < verify_lens[:, None].to(torch.int64)
        accept_lens = accept.to(torch.int64).cumprod(dim=1).sum(dim=1)
    else:
        accept_lens = torch.zeros(rows, dtype=torch.int64, device=device)

    # Correction (after a rejection) or bonus (all verified drafts accepted) at `stop`.
    stop = accept_lens
    rejected = stop < verify_lens.to(torch.int64)
    stop_index = stop[:, None, None].expand(rows, 1, vocab)
    logits_stop = target_scaled.gather(1, stop_index).squeeze(1)  # [R, V]
    if rng.noise_unused(temperature):
        next_token = logits_stop.argmax(dim=-1)
    else:
        next_token = _sampled_or_greedy(
            logits_stop, draft_logits, stop, rejected, sampled, safe_t, seed, offset, row_ids
        )

    out_tokens = torch.full((rows, gamma + 1), -1, dtype=torch.int64, device=device)
    if gamma > 0:
        keep = positions[None, :] < stop[:, None]
        out_tokens[:, :gamma] = torch.where(keep, draft_tokens, out_tokens[:, :gamma])
    out_tokens.scatter_(1, stop[:, None], next_token[:, None])
    return accept_lens.to(torch.int32), out_tokens


def _sampled_or_greedy(
    logits_stop: torch.Tensor,
    draft_logits: torch.Tensor,
    stop: torch.Tensor,
    rejected: torch.Tensor,
    sampled: torch.Tensor,
    safe_t: torch.Tensor,
    seed: rng.SeedLike,
    offset: rng.SeedLike,
    row_ids: torch.Tensor,
) -> torch.Tensor:
    """The token at ``stop`` [R]: residual resample after a rejection, bonus draw otherwise
    (sampled rows), or the target argmax (greedy rows)."""
    rows, vocab = logits_stop.shape
    gamma = draft_logits.shape[1]
    noise = rng.gumbel(seed, offset, rng.Stream.RESAMPLE, row_ids, stop, vocab)
    bonus_score = logits_stop + noise
    if gamma > 0:
        draft_stop_index = stop.clamp(max=gamma - 1)[:, None, None].expand(rows, 1, vocab)
        p_stop = torch.softmax(logits_stop, dim=-1)
        q_stop = torch.softmax(
            draft_logits.float().gather(1, draft_stop_index).squeeze(1) / safe_t[:, 0], dim=-1
        )
        residual = (p_stop - q_stop).clamp(min=0.0)
        has_residual = rejected & (residual > 0).any(dim=-1)
        score = torch.where(has_residual[:, None], torch.log(residual) + noise, bonus_score)
    else:
        score = bonus_score
    return torch.where(sampled, score.argmax(dim=-1), logits_stop.argmax(dim=-1))
