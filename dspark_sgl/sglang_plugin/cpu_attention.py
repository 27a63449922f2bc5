"""Attention of a DSPARK verify (or draft) block over a paged KV cache, in plain torch (CPU path).

A ``TARGET_VERIFY`` batch carries, per request ``i``, ``q_lens[i]`` query tokens packed one
request after the other: the block that follows the request's ``prefix_lens[i]`` committed
tokens. Each query attends to the request's prefix, read through ``req_to_token[row_i,
:prefix_lens[i]]``, followed by the block's own KV slots ``block_loc[start_i : start_i +
q_lens[i]]`` (already written to the cache). The target's layers are causal (block token
``j`` sees the prefix and block tokens ``<= j``); the draft's are bidirectional (every block
token sees the whole block). Rows of ``q`` after ``sum(q_lens)`` (padding) come out as zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.functional import scaled_dot_product_attention

__all__ = ["block_attention"]


def block_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: Sequence[int],
    prefix_lens: Sequence[int],
    q_lens: Sequence[int],
    block_loc: torch.Tensor,
    *,
    causal: bool,
    scaling: float,
) -> torch.Tensor:
    """Attention output ``[N, Hq, Dv]`` in ``q``'s dtype.

    q: ``[N, Hq, D]``; k_cache ``[S, Hk, D]`` and v_cache ``[S, Hk, Dv]`` (any float dtype,
    cast to ``q``'s), Hq a multiple of Hk (grouped-query heads); req_to_token ``[rows, L]``
    int; req_pool_indices, prefix_lens, q_lens: one int per request; block_loc ``[>= sum
    q_lens]`` int, the KV slots of the packed block tokens.
    """
    if q.dim() != 3 or k_cache.dim() != 3 or v_cache.dim() != 3:
        raise ValueError(
            f"q, k_cache, v_cache must be 3-D, got {tuple(q.shape)}, {k_cache.shape}, {v_cache.shape}"
        )
    heads, kv_heads = q.shape[1], k_cache.shape[1]
    if kv_heads < 1 or heads % kv_heads or v_cache.shape[1] != kv_heads:
        raise ValueError(
            f"q has {heads} heads, k_cache {kv_heads}, v_cache {v_cache.shape[1]}: need Hq % Hk == 0"
        )
    if not len(req_pool_indices) == len(prefix_lens) == len(q_lens):
        raise ValueError(
            f"req_pool_indices, prefix_lens, q_lens differ in length: "
            f"{len(req_pool_indices)}, {len(prefix_lens)}, {len(q_lens)}"
        )
    total = sum(int(n) for n in q_lens)
    if any(int(n) < 0 for n in q_lens) or total > q.shape[0] or total > block_loc.shape[0]:
        raise ValueError(
            f"q_lens {list(q_lens)} do not fit q ({q.shape[0]} rows) and block_loc ({block_loc.shape[0]})"
        )
    if any(not 0 <= int(n) <= req_to_token.shape[1] for n in prefix_lens):
        raise ValueError(f"prefix_lens {list(prefix_lens)} outside [0, {req_to_token.shape[1]}]")
    out = q.new_zeros((q.shape[0], heads, v_cache.shape[2]))
    loc = block_loc.to(torch.int64)
    start = 0
    for row, prefix, n in zip(req_pool_indices, prefix_lens, q_lens, strict=True):
        prefix, n = int(prefix), int(n)
        if n == 0:
            continue
        slots = torch.cat([req_to_token[int(row), :prefix].to(torch.int64), loc[start : start + n]])
        keys = k_cache[slots].to(q.dtype).movedim(0, 1)  # [Hk, prefix + n, D]
        values = v_cache[slots].to(q.dtype).movedim(0, 1)
        queries = q[start : start + n].movedim(0, 1)  # [Hq, n, D]
        mask = None
        if causal:
            key_pos = torch.arange(prefix + n, device=q.device)
            query_pos = torch.arange(n, device=q.device) + prefix
            mask = key_pos[None, :] <= query_pos[:, None]
        block = scaled_dot_product_attention(
            queries[None],
            keys[None],
            values[None],
            attn_mask=mask,
            scale=scaling,
            enable_gqa=heads != kv_heads,
        )[0]
        out[start : start + n] = block.movedim(0, 1)
        start += n
    return out
