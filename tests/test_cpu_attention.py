"""``cpu_attention.block_attention`` (the CPU verify/draft attention) against a dense reference.

The reference builds each request's whole sequence (prefix tokens then block tokens) as
plain dense tensors and computes ``softmax(q k^T * scale + mask) v`` with explicit loops
over heads; the function under test reads the same keys and values through a shuffled
paged cache (``req_to_token`` and the block's slots), at ragged per-request lengths.
"""

from __future__ import annotations

import math

import pytest
import torch

from dspark_sgl.sglang_plugin.cpu_attention import block_attention

HEADS, KV_HEADS, DIM, V_DIM = 4, 2, 16, 12


def _dense_reference(q, keys, values, prefix, causal, scale):
    """q [n, Hq, D]; keys [prefix + n, Hk, D]; values [prefix + n, Hk, Dv] -> [n, Hq, Dv] (float64)."""
    n = q.shape[0]
    group = q.shape[1] // keys.shape[1]
    out = torch.zeros(n, q.shape[1], values.shape[2], dtype=torch.float64)
    for h in range(q.shape[1]):
        k = keys[:, h // group].double()
        v = values[:, h // group].double()
        for i in range(n):
            scores = (k @ q[i, h].double()) * scale
            if causal:
                scores[prefix + i + 1 :] = -math.inf
            out[i, h] = torch.softmax(scores, dim=0) @ v
    return out


def _paged_case(prefix_lens, q_lens, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    slots = sum(prefix_lens) + sum(q_lens) + 5
    order = torch.randperm(slots, generator=gen)  # KV slots in no particular order
    k_cache = torch.randn(slots, KV_HEADS, DIM, generator=gen).to(dtype)
    v_cache = torch.randn(slots, KV_HEADS, V_DIM, generator=gen).to(dtype)
    rows = torch.randperm(len(prefix_lens) + 2, generator=gen)[: len(prefix_lens)].tolist()
    req_to_token = torch.zeros(len(prefix_lens) + 2, max(prefix_lens) + 9, dtype=torch.int32)
    used = 0
    for row, prefix in zip(rows, prefix_lens, strict=True):
        req_to_token[row, :prefix] = order[used : used + prefix].to(torch.int32)
        used += prefix
    block_loc = order[used : used + sum(q_lens)].to(torch.int64)
    q = torch.randn(sum(q_lens) + 3, HEADS, DIM, generator=gen).to(dtype)  # 3 padding rows
    return q, k_cache, v_cache, req_to_token, rows, block_loc


@pytest.mark.parametrize("causal", [True, False], ids=["causal (target)", "bidirectional (draft)"])
@pytest.mark.parametrize(
    "prefix_lens, q_lens",
    [([5], [8]), ([3, 11, 7], [1, 3, 2]), ([1, 20, 4, 9], [8, 1, 5, 8]), ([6, 2], [0, 4])],
    ids=["one request", "ragged 1-3", "ragged 1-8", "an empty block"],
)
def test_block_attention_matches_the_dense_reference(prefix_lens, q_lens, causal):
    q, k_cache, v_cache, req_to_token, rows, block_loc = _paged_case(prefix_lens, q_lens, seed=sum(q_lens))
    scale = DIM**-0.5
    out = block_attention(
        q, k_cache, v_cache, req_to_token, rows, prefix_lens, q_lens, block_loc, causal=causal, scaling=scale
    )
    assert out.shape == (q.shape[0], HEADS, V_DIM) and out.dtype == q.dtype
    start = 0
    for row, prefix, n in zip(rows, prefix_lens, q_lens, strict=True):
        slots = torch.cat([req_to_token[row, :prefix].long(), block_loc[start : start + n]])
        expected = _dense_reference(
            q[start : start + n], k_cache[slots], v_cache[slots], prefix, causal, scale
        )
        torch.testing.assert_close(out[start : start + n].double(), expected, atol=1e-5, rtol=1e-5)
        start += n
    assert torch.count_nonzero(out[start:]) == 0  # padding rows


def test_causal_and_bidirectional_differ_only_where_the_mask_cuts():
    prefix_lens, q_lens = [4, 6], [3, 5]
    case = _paged_case(prefix_lens, q_lens, seed=7)
    common = dict(
        zip(("q", "k_cache", "v_cache", "req_to_token", "req_pool_indices", "block_loc"), case, strict=True)
    )
    causal = block_attention(**common, prefix_lens=prefix_lens, q_lens=q_lens, causal=True, scaling=0.25)
    full = block_attention(**common, prefix_lens=prefix_lens, q_lens=q_lens, causal=False, scaling=0.25)
    # the last token of each block sees everything either way; the others do not
    torch.testing.assert_close(causal[[2, 7]], full[[2, 7]])
    assert not torch.allclose(causal[[0, 3]], full[[0, 3]])


def test_bf16_cache_is_read_in_the_query_dtype():
    prefix_lens, q_lens = [5, 3], [2, 3]
    q, k_cache, v_cache, req_to_token, rows, block_loc = _paged_case(prefix_lens, q_lens, seed=3)
    caches = (k_cache.bfloat16(), v_cache.bfloat16())
    ours = block_attention(
        q.bfloat16(), *caches, req_to_token, rows, prefix_lens, q_lens, block_loc, causal=True, scaling=0.25
    )
    start = 0
    for row, prefix, n in zip(rows, prefix_lens, q_lens, strict=True):
        slots = torch.cat([req_to_token[row, :prefix].long(), block_loc[start : start + n]])
        qb = q[start : start + n].bfloat16().float()
        expected = _dense_reference(qb, k_cache[slots].bfloat16().float(), v_cache[slots].bfloat16().float(),
                                    prefix, True, 0.25)  # fmt: skip
        torch.testing.assert_close(ours[start : start + n].double(), expected, atol=2e-2, rtol=2e-2)
        start += n


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(q_lens=[2, 9]), "do not fit"),
        (dict(prefix_lens=[3]), "differ in length"),
        (dict(prefix_lens=[3, 99]), "prefix_lens"),
        (dict(q_lens=[-1, 2]), "do not fit"),
    ],
)
def test_bad_lengths_are_named(change, message):
    q, k_cache, v_cache, req_to_token, rows, block_loc = _paged_case([3, 4], [2, 2], seed=1)
    args = dict(prefix_lens=[3, 4], q_lens=[2, 2]) | change
    with pytest.raises(ValueError, match=message):
        block_attention(
            q, k_cache, v_cache, req_to_token, rows, causal=True, scaling=1.0, block_loc=block_loc, **args
        )


def test_heads_must_group():
    q, k_cache, v_cache, req_to_token, rows, block_loc = _paged_case([3], [2], seed=2)
    with pytest.raises(ValueError, match="Hq % Hk"):
        block_attention(
            q[:, :3], k_cache, v_cache, req_to_token, rows, [3], [2], block_loc, causal=True, scaling=1.0
        )
