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

Probabilities are ``exp(x / T - max) / sum`` from each row's softmax statistics, so the
draft side may be given either as its logits or as the Markov sampler's
:class:`~dspark_sgl.markov.DraftStats` (statistics, the drafted tokens' logits, and what
recomputes the one draft row a rejection needs); both give the same tokens. On a GPU the
``chain_verify`` CUDA kernel (csrc/chain_verify.cu) runs either form.
"""

from __future__ import annotations

import math

import torch

from dspark_sgl import _checks, _dispatch, rng
from dspark_sgl.markov import DraftStats, softmax_stats

__all__ = ["chain_verify"]

_KERNEL_MAX_GAMMA = 32
_KERNEL_MAX_ROWS = 65535


def _check_stats(stats: DraftStats, rows: int, gamma: int, vocab: int, device: torch.device) -> None:
    for name in ("max", "sum", "token_logits"):
        _checks.tensor(
            f"draft_logits.{name}",
            getattr(stats, name),
            dtypes=(torch.float32,),
            shape=(rows, gamma),
            device=device,
        )
    _checks.tensor(
        "draft_logits.base_logits",
        stats.base_logits,
        dtypes=_checks.FLOAT_DTYPES,
        shape=(rows, gamma, vocab),
        device=device,
    )
    _checks.tensor("draft_logits.anchor", stats.anchor, dtypes=(torch.int64,), shape=(rows,), device=device)
    _checks.tensor("draft_logits.w1", stats.w1, dtypes=_checks.FLOAT_DTYPES, ndim=2, device=device)
    w2_dtypes = _checks.FLOAT_DTYPES if stats.w2_scale is None else (torch.int8,)  # markov_quant
    _checks.tensor("draft_logits.w2", stats.w2, dtypes=w2_dtypes, ndim=2, device=device)
    if stats.w2_scale is not None:
        _checks.tensor(
            "draft_logits.w2_scale",
            stats.w2_scale,
            dtypes=(torch.float32,),
            shape=(stats.w2.shape[0],),
            device=device,
        )
    if stats.w2.shape[0] != vocab or stats.w1.shape != stats.w2.shape:
        raise ValueError(
            f"draft_logits.w1 {list(stats.w1.shape)} / w2 {list(stats.w2.shape)} "
            f"do not fit vocabulary {vocab}"
        )
    _checks.in_range("draft_logits.anchor", stats.anchor, 0, stats.w1.shape[0])
    _checks.not_nan("draft_logits.max", stats.max)
    _checks.finite("draft_logits.sum", stats.sum)


def _check_inputs(
    target_logits: torch.Tensor,
    draft_logits: torch.Tensor | DraftStats,
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
    if isinstance(draft_logits, DraftStats):
        _check_stats(draft_logits, rows, gamma, vocab, device)
    else:
        _checks.tensor(
            "draft_logits",
            draft_logits,
            dtypes=_checks.FLOAT_DTYPES,
            shape=(rows, gamma, vocab),
            device=device,
        )
        _checks.not_nan("draft_logits", draft_logits)
    _checks.tensor("draft_tokens", draft_tokens, dtypes=(torch.int64,), shape=(rows, gamma), device=device)
    _checks.tensor("verify_lens", verify_lens, dtypes=_checks.INT_DTYPES, shape=(rows,), device=device)
    _checks.temperature("temperature", temperature, rows, device)
    _checks.in_range("draft_tokens", draft_tokens, 0, vocab)
    _checks.in_range("verify_lens", verify_lens, 0, gamma + 1)
    _checks.not_nan("target_logits", target_logits)
    return rows, gamma, vocab


def chain_verify(
    target_logits: torch.Tensor,
    draft_logits: torch.Tensor | DraftStats,
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
    from (``DraftBlock.logits``), or the block's :class:`~dspark_sgl.markov.DraftStats`
    (``DraftBlock.stats``, drafted at the same temperatures); draft_tokens: [R, g] int64;
    verify_lens: [R] int32/int64 in [0, g]; temperature: [R] float32 (0 = greedy).

    Returns ``accept_lens`` [R] int32 (accepted drafts, <= verify_lens) and
    ``out_tokens`` [R, g+1] int64: the accepted drafts, then the correction or bonus
    at index ``accept_lens[r]``, then -1.
    """
    rows, gamma, vocab = _check_inputs(target_logits, draft_logits, draft_tokens, verify_lens, temperature)
    device = target_logits.device
    rng.check_seed_offset(seed, offset, device)
    if _dispatch.use_kernel(
        "chain_verify", device, lambda: _kernel_unsupported(target_logits, draft_logits, rows, gamma)
    ):
        return _chain_verify_cuda(
            target_logits, draft_logits, draft_tokens, verify_lens, temperature, seed, offset
        )

    if rng.noise_unused(temperature):
        return _chain_verify_greedy(target_logits, draft_tokens, verify_lens)
    sampled = temperature > 0
    safe_t = torch.where(sampled, temperature, torch.ones_like(temperature))[:, None, None]
    target_scaled = target_logits.float() / safe_t  # [R, g+1, V]
    row_ids = torch.arange(rows, device=device)
    positions = torch.arange(gamma, device=device)
    if isinstance(draft_logits, DraftStats):
        d_max, d_sum, d_token = draft_logits.max, draft_logits.sum, draft_logits.token_logits
    elif gamma > 0:
        d_max, d_sum = softmax_stats(draft_logits.float() / safe_t)
        d_token = draft_logits.float().gather(2, draft_tokens[:, :, None]).squeeze(2)

    # Acceptance of each draft position (before truncation to the verify length).
    if gamma > 0:
        t_max, t_sum = softmax_stats(target_scaled[:, :gamma])
        t_token = target_scaled[:, :gamma].gather(2, draft_tokens[:, :, None]).squeeze(2)
        p_x = torch.exp(t_token - t_max) / t_sum
        q_x = torch.exp(d_token / safe_t[:, :, 0] - d_max) / d_sum
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
    noise = rng.gumbel(seed, offset, rng.Stream.RESAMPLE, row_ids, stop, vocab)
    score = logits_stop + noise
    if gamma > 0:
        draft_stop = stop.clamp(max=gamma - 1)
        if isinstance(draft_logits, DraftStats):
            d_row = draft_logits.row_logits(draft_tokens, draft_stop)
        else:
            d_row = draft_logits.float()[row_ids, draft_stop]
        p_stop = _probs(logits_stop, *softmax_stats(logits_stop))
        q_stop = _probs(d_row / safe_t[:, 0], d_max[row_ids, draft_stop], d_sum[row_ids, draft_stop])
        residual = (p_stop - q_stop).clamp(min=0.0)
        has_residual = rejected & (residual > 0).any(dim=-1)
        score = torch.where(has_residual[:, None], torch.log(residual) + noise, score)
    next_token = torch.where(sampled, score.argmax(dim=-1), logits_stop.argmax(dim=-1))
    return accept_lens.to(torch.int32), _chain_tokens(draft_tokens, stop, next_token)


def _chain_tokens(draft_tokens: torch.Tensor, stop: torch.Tensor, next_token: torch.Tensor) -> torch.Tensor:
    """out_tokens [R, g+1]: the drafts before ``stop`` [R], ``next_token`` [R] at it, then -1."""
    rows, gamma = draft_tokens.shape
    positions = torch.arange(gamma + 1, device=draft_tokens.device)
    out_tokens = torch.cat([draft_tokens, draft_tokens.new_full((rows, 1), -1)], dim=1)
    out_tokens.masked_fill_(positions[None, :] >= stop[:, None], -1)
    return out_tokens.scatter_(1, stop[:, None], next_token[:, None])


def _chain_verify_greedy(
    target_logits: torch.Tensor, draft_tokens: torch.Tensor, verify_lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row greedy (host-known, CPU): accept while the draft is the target's argmax,
    emit the argmax at the stop. No softmax statistics and no random draws; the same
    tokens as the general path (which takes these argmaxes for greedy rows)."""
    gamma = draft_tokens.shape[1]
    best = target_logits.argmax(dim=-1)  # [R, g+1]
    positions = torch.arange(gamma, device=draft_tokens.device)
    accept = (draft_tokens == best[:, :gamma]) & (positions[None, :] < verify_lens[:, None].to(torch.int64))
    stop = accept.to(torch.int64).cumprod(dim=1).sum(dim=1)
    next_token = best.gather(1, stop[:, None]).squeeze(1)
    return stop.to(torch.int32), _chain_tokens(draft_tokens, stop, next_token)


def _probs(scaled: torch.Tensor, peak: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """``exp(scaled - max) / sum`` per row: [R, V] from [R, V], [R], [R]."""
    return torch.exp(scaled - peak[:, None]) / total[:, None]


def _kernel_unsupported(
    target_logits: torch.Tensor, draft_logits: torch.Tensor | DraftStats, rows: int, gamma: int
) -> str | None:
    """Why the ``chain_verify`` kernel cannot run these inputs (None when it can)."""
    if gamma > _KERNEL_MAX_GAMMA:
        return f"g = {gamma} > {_KERNEL_MAX_GAMMA}"
    if rows > _KERNEL_MAX_ROWS:
        return f"{rows} rows > {_KERNEL_MAX_ROWS}"
    if isinstance(draft_logits, DraftStats) and gamma > 0:
        if draft_logits.w2_scale is not None:
            return "the statistics form of an int8 W2 has no CUDA kernel path yet"
        if draft_logits.w1.dtype != draft_logits.w2.dtype:
            return "the statistics form needs w1 and w2 of one dtype"
        if draft_logits.w2.shape[1] > 512:
            return f"Markov rank {draft_logits.w2.shape[1]} > 512"
        if draft_logits.base_logits.dtype != target_logits.dtype:
            return "the statistics form needs base_logits in the dtype of target_logits"
        w2 = draft_logits.w2
        smem = _dispatch.kernel("markov_block_smem_bytes")(rows, w2.shape[1], w2.element_size())
        return _dispatch.shared_memory_unsupported("chain_verify", smem, target_logits.device)
    return None


ROW_CTAS_PER_SM = 3  # chain_verify.cu kRowCtasPerSm: pass 1's CTAs resident a multiprocessor


def stat_chunks(rows: int, gamma: int, vocab: int, multiprocessors: int) -> int:
    """CTAs per (row, position) of pass 1: about one wave of ROW_CTAS_PER_SM CTAs a multiprocessor,
    at least 2048 columns a CTA (256 threads of 8 columns)."""
    wanted = math.ceil(ROW_CTAS_PER_SM * multiprocessors / (rows * (gamma + 1)))
    return max(1, min(wanted, math.ceil(vocab / 2048)))


def _stat_chunks(rows: int, gamma: int, vocab: int, device: torch.device) -> int:
    return stat_chunks(rows, gamma, vocab, _dispatch.multiprocessor_count(device))


# chain_verify's int32 tickets and merged-request word, one buffer per (device, stream) for any
# batch size: created zero, left zero by every launch, so graph replays need no reset. Never
# replaced once cached (a captured graph keeps its address); inside a capture an uncached one is
# made (a fill node of that graph) and not cached.
_COUNTERS: dict[tuple[torch.device, int], torch.Tensor] = {}


def _counter_key(device: torch.device) -> tuple[torch.device, int]:
    return device, _dispatch.current_stream_handle(device) if device.type == "cuda" else 0


def _counters(device: torch.device) -> torch.Tensor:
    """The zero-at-rest counters of ``chain_verify`` for ``device``'s current stream."""
    cached = _COUNTERS.get(_counter_key(device))
    if cached is not None:
        return cached
    words = _dispatch.kernel("chain_verify_counter_bytes")() // 4
    counters = torch.zeros(words, dtype=torch.int32, device=device)
    if not _dispatch.capture_active(device):
        _COUNTERS[_counter_key(device)] = counters
    return counters


def forget_counters() -> None:
    """Drop the cached counters (another extension is loaded, or a failed launch may have left
    them non-zero); the next call makes zero ones."""
    _COUNTERS.clear()


def _chain_verify_cuda(
    target_logits: torch.Tensor,
    draft_logits: torch.Tensor | DraftStats,
    draft_tokens: torch.Tensor,
    verify_lens: torch.Tensor,
    temperature: torch.Tensor,
    seed: rng.SeedLike,
    offset: rng.SeedLike,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``chain_verify`` kernel: same outputs as the reference above."""
    rows, g_plus_1, vocab = target_logits.shape
    gamma = g_plus_1 - 1
    device = target_logits.device
    target = _dispatch.aligned(target_logits)
    stats = draft_logits if isinstance(draft_logits, DraftStats) else None
    draft = None if stats is not None or gamma == 0 else _dispatch.aligned(draft_logits)
    entries = {"draft_max": 0, "draft_sum": 0, "draft_token_logits": 0, "base_logits": 0, "anchor": 0}
    entries.update({"w1": 0, "w2": 0, "weight_dtype": 0, "rank": 0, "softcap": 0.0, "logits_dtype": 0})
    weight_bytes = 2
    if stats is not None and gamma > 0:
        w1, w2 = _dispatch.aligned(stats.w1), _dispatch.aligned(stats.w2)
        weight_bytes = w2.element_size()
        inputs = [stats.max.contiguous(), stats.sum.contiguous(), stats.token_logits.contiguous()]
        inputs += [_dispatch.aligned(stats.base_logits), stats.anchor.contiguous(), w1, w2]
        entries.update(
            {
                "draft_max": _dispatch.pointer(inputs[0]),
                "draft_sum": _dispatch.pointer(inputs[1]),
                "draft_token_logits": _dispatch.pointer(inputs[2]),
                "base_logits": _dispatch.pointer(inputs[3]),
                "anchor": _dispatch.pointer(inputs[4]),
                "w1": _dispatch.pointer(w1),
                "w2": _dispatch.pointer(w2),
                "weight_dtype": _dispatch.dtype_code(w2),
                "rank": w2.shape[1],
                "softcap": float(stats.logit_softcap) if stats.logit_softcap is not None else 0.0,
                "logits_dtype": _dispatch.dtype_code(stats.logits_dtype),
            }
        )
    chunks = _stat_chunks(rows, gamma, vocab, device)
    workspace_bytes = _dispatch.kernel("chain_verify_workspace_bytes")(
        rows, gamma, vocab, chunks, weight_bytes
    )
    workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=device)
    tokens = draft_tokens.contiguous()
    lens = verify_lens.to(torch.int64).contiguous()
    accept_lens = torch.empty(rows, dtype=torch.int32, device=device)
    out_tokens = torch.empty(rows, gamma + 1, dtype=torch.int64, device=device)
    counters = _counters(device)
    arguments = {
        "target_logits": _dispatch.pointer(target),
        "target_dtype": _dispatch.dtype_code(target),
        "draft_logits": _dispatch.pointer(draft),
        "draft_dtype": _dispatch.dtype_code(draft) if draft is not None else 0,
        **entries,
        "draft_tokens": _dispatch.pointer(tokens),
        "verify_lens": _dispatch.pointer(lens),
        "temperature": _dispatch.pointer(temperature.contiguous()),
        "rows": rows,
        "gamma": gamma,
        "vocab": vocab,
        **_dispatch.philox_args(seed, offset),
        "stat_chunks": chunks,
        "counters": _dispatch.pointer(counters),
        "accept_lens": _dispatch.pointer(accept_lens),
        "out_tokens": _dispatch.pointer(out_tokens),
        "workspace": _dispatch.pointer(workspace),
        "cuda_stream": _dispatch.current_stream_handle(device),
    }
    try:
        _dispatch.launch("chain_verify", device, arguments)
    except RuntimeError:
        if _COUNTERS.get(_counter_key(device)) is counters:  # a failed launch may leave them non-zero
            del _COUNTERS[_counter_key(device)]
        raise
    return accept_lens, out_tokens
