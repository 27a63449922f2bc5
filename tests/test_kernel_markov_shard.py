"""The markov_block kernel on a vocab shard (tensor parallelism) against its reference, on the
CPU emulator in CI and on a device when lent (the ``backend`` fixture)."""

from __future__ import annotations

import threading

import pytest
import torch
from draft_ties import assert_draft_tokens_match
from simulated_ranks import SimulatedRanks, shard_bounds
from test_gpu_kernels import assert_blocks_match, markov_case

from dspark_sgl import _dispatch, markov

# (start, end) of the rank's columns, the first Philox position of the call; the kernel's shards start
# at multiples of 16 (whole sampler groups): 272 = 17 x 16 puts a thread's two groups in two Philox blocks
SHARDS = {
    "first": (0, 272, 0),
    "middle-odd-group": (272, 560, 3),
    "last-uneven": (832, 1100, 6),
    "one-tile": (64, 100, 1),
}


@pytest.mark.parametrize("shard", list(SHARDS), ids=str)
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float32], ids=str)
def test_markov_block_on_a_shard_matches_the_reference(backend, shard, wdtype):
    """One position of one rank: noise keyed by the global columns' groups, global token ids, the
    winner's key."""
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
    assert bool(((ours.tokens >= start) & (ours.tokens < end)).all())
    assert torch.equal(ours.logits, ref.logits)  # one position: the logits do not depend on the draw
    assert_blocks_match(
        ours, ref, case["temperature"], seed=5, offset=9, first_position=position, vocab_start=start
    )


def test_markov_block_falls_back_for_a_shard_not_on_a_group_boundary(backend, caplog):
    """A shard starting inside a group of 16 draws its tail with noise of its own (the reference
    only): the kernel is not launched, and the log line says why."""
    case = markov_case(backend.device, 4, 1, 200, 16)
    head = markov.VanillaMarkovHead(case["w1"], case["w2"]).shard(40, 200)
    _dispatch._logged.clear()
    with caplog.at_level("INFO", logger="dspark_sgl"):
        block = markov.sample_block_with_head(
            case["base_logits"][..., 40:], case["anchor"], head, case["temperature"], seed=1, offset=0
        )
    assert not backend.ran("markov_block")
    assert bool(((block.tokens >= 40) & (block.tokens < 200)).all())
    assert any("not a multiple of 16" in r.getMessage() for r in caplog.records)


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
    # Every rank holds the same merged block; against the one-rank kernel it differs only at the
    # sampler's near-ties (each shard's tiles take other maxima: other roundings of the same keys).
    for block in blocks:
        assert torch.equal(block.tokens, blocks[0].tokens)
    assert_draft_tokens_match(blocks[0], whole, case["temperature"].cpu(), seed=2, offset=4)
    same = (blocks[0].tokens == whole.tokens).all(dim=1)
    assert torch.equal(blocks[0].logits[same], whole.logits[same])
    assert torch.equal(blocks[0].stats.max[same], whole.stats.max[same])
    torch.testing.assert_close(blocks[0].stats.sum[same], whole.stats.sum[same], rtol=1e-5, atol=0)
