"""The markov_block kernel on a vocab shard (tensor parallelism) against its reference, on the
CPU emulator in CI and on a device when lent (the ``backend`` fixture)."""

from __future__ import annotations

import threading

import pytest
import torch
from simulated_ranks import SimulatedRanks, shard_bounds
from test_gpu_kernels import markov_case

from dspark_sgl import _dispatch, markov

# (start, end) of the rank's columns, the first Philox position of the call
SHARDS = {
    "first": (0, 276, 0),
    "middle": (276, 552, 3),
    "last-uneven": (828, 1100, 6),
    "one-tile": (64, 100, 1),
}


@pytest.mark.parametrize("shard", list(SHARDS), ids=str)
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float32], ids=str)
def test_markov_block_on_a_shard_matches_the_reference(backend, shard, wdtype):
    """One position of one rank: global-column noise, global token ids, the winner's key."""
    rows, vocab = backend.size((64, 129280), (12, 1100))
    start, end, position = SHARDS[shard]
    if backend.full:
        start, end = start * 117, min(end * 117, vocab)
    case = markov_case(backend.device, rows, 1, vocab, 64, wdtype=wdtype, bdtype=torch.bfloat16)
    head = markov.VanillaMarkovHead(case["w1"], case["w2"]).shard(start, end)
    args = (case["base_logits"][..., start:end], case["anchor"], head, case["temperature"])
    kwargs = dict(seed=5, offset=9, first_position=position)
    ours = markov.sample_block_with_head(*args, **kwargs)
    assert backend.ran("markov_block")
    with _dispatch.forced_reference():
        ref = markov.sample_block_with_head(*args, **kwargs)
    assert torch.equal(ours.tokens, ref.tokens)
    assert bool(((ours.tokens >= start) & (ours.tokens < end)).all())
    assert torch.equal(ours.logits, ref.logits)
    assert torch.equal(ours.stats.token_logits, ref.stats.token_logits)
    assert torch.equal(ours.stats.max, ref.stats.max)
    torch.testing.assert_close(ours.stats.sum, ref.stats.sum, rtol=1e-5, atol=0)
    torch.testing.assert_close(ours.stats.token_scores, ref.stats.token_scores, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_kernel_exchange_equals_the_unsharded_kernel(backend, monkeypatch, world):
    """Simulated ranks each run the kernel on their slice; after the exchange the tokens and
    gathered logits equal the one-rank kernel block (kernel calls serialised: the emulator
    runs one launch at a time)."""
    rows, gamma, vocab = backend.size((16, 5, 32000), (8, 3, 700))
    case = markov_case(backend.device, rows, gamma, vocab, 64)
    full = markov.VanillaMarkovHead(case["w1"], case["w2"])
    whole = markov.sample_block_with_head(
        case["base_logits"], case["anchor"], full, case["temperature"], seed=2, offset=4
    )
    lock = threading.Lock()
    kernel = _dispatch.kernel

    def serialised(op):
        launcher = kernel(op)

        def run(*a, **k):
            with lock:
                return launcher(*a, **k)

        return run

    monkeypatch.setattr(_dispatch, "kernel", serialised)
    ranks = SimulatedRanks(world)
    bounds = shard_bounds(vocab, world)

    def rank_block(r):
        start, end, _ = bounds[r]
        gather = ranks.gather(r)
        return markov.sample_block_sharded(
            case["base_logits"][..., start:end],
            case["anchor"],
            full.shard(start, end),
            case["temperature"],
            seed=2,
            offset=4,
            gather_stacked=gather.gather_stacked,
            gather_logits=gather,
        )

    blocks = ranks.run(rank_block)
    assert backend.ran("markov_block")
    for block in blocks:
        assert torch.equal(block.tokens, whole.tokens)
        assert torch.equal(block.logits, whole.logits)
        assert torch.equal(block.stats.max, whole.stats.max)
        torch.testing.assert_close(block.stats.sum, whole.stats.sum, rtol=1e-5, atol=0)
