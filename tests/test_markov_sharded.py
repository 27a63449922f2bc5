"""The vocab-sharded Markov block (tensor parallelism) against the unsharded one (CPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import record_p_value
from scipy import stats
from simulated_ranks import SimulatedRanks, shard_bounds

from dspark_sgl import markov, rng

TEMPERATURES = torch.tensor([0.0, 0.7, 1.0, 1.3, 0.0, 0.9, 2.0])


def _inputs(vocab: int, rank: int = 8, rows: int = 7, gamma: int = 5, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        base=torch.randn(rows, gamma, vocab, generator=gen) * 2,
        anchor=torch.randint(0, vocab, (rows,), generator=gen),
        w1=torch.randn(vocab, rank, generator=gen).to(dtype),
        w2=torch.randn(vocab, rank, generator=gen).to(dtype),
    )


def run_sharded(
    full: markov.VanillaMarkovHead, base, anchor, temperature, world: int, pad_to: int = 64, **kwargs
):
    """Every simulated rank's ``sample_block_sharded`` result, and the number of collectives."""
    ranks = SimulatedRanks(world)
    bounds = shard_bounds(full.vocab_size, world, pad_to)

    def rank_block(r: int) -> markov.DraftBlock:
        start, end, _ = bounds[r]
        gather = ranks.gather(r)
        return markov.sample_block_sharded(
            base[..., start:end],
            anchor,
            full.shard(start, end),
            temperature,
            seed=3,
            offset=5,
            gather_stacked=gather.gather_stacked,
            gather_logits=gather,
            **kwargs,
        )

    return ranks.run(rank_block), ranks.calls


@pytest.mark.parametrize("world", [2, 4, 8])
@pytest.mark.parametrize("bias_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("keep_logits", [True, False])
def test_sharded_block_equals_unsharded(world, bias_dtype, keep_logits):
    """V = 100 over SGLang's 64-padded partition: shards at multiples of 16, a partial last
    group, and at 8 ranks an empty one."""
    x = _inputs(100, dtype=bias_dtype)
    full = markov.VanillaMarkovHead(x["w1"], x["w2"])
    ref = markov.sample_block_with_head(x["base"], x["anchor"], full, TEMPERATURES, seed=3, offset=5)
    blocks, calls = run_sharded(full, x["base"], x["anchor"], TEMPERATURES, world, keep_logits=keep_logits)
    gamma = x["base"].shape[1]
    assert calls == gamma + (1 if keep_logits else 0)  # one exchange per position (+ the logits)
    for block in blocks:
        assert torch.equal(block.tokens, ref.tokens)
        if keep_logits:
            assert torch.equal(block.logits, ref.logits)
        else:
            assert block.logits is None
        assert torch.equal(block.stats.max, ref.stats.max)
        assert torch.equal(block.stats.token_logits, ref.stats.token_logits)
        assert torch.equal(block.stats.token_scores, ref.stats.token_scores)
        torch.testing.assert_close(block.stats.sum, ref.stats.sum, rtol=2e-6, atol=0)


def test_sync_between_positions_feeds_the_next_position():
    """The synced token (SGLang's tp_sync, a broadcast from rank 0) is what the next
    position's bias reads: a sync that rewrites tokens changes the rest of the block."""
    x = _inputs(48, gamma=4)
    full = markov.VanillaMarkovHead(x["w1"], x["w2"])
    greedy = torch.zeros(7)
    synced = []

    def sync(tokens):
        synced.append(tokens.clone())
        return (tokens + 1) % 48

    blocks, _ = run_sharded(full, x["base"], x["anchor"], greedy, 2, sync=sync, keep_logits=False)
    prev, expected = x["anchor"], []
    for k in range(4):
        logits = x["base"][:, k] + markov.markov_bias(x["w1"], x["w2"], prev)
        prev = (logits.argmax(-1) + 1) % 48
        expected.append(prev)
    assert len(synced) == 2 * 4
    for block in blocks:
        assert torch.equal(block.tokens, torch.stack(expected, 1))


def test_sharded_sampling_is_softmax():
    """Sharded over 2 ranks, x_1 ~ softmax((U_1 + B(x_0)) / T) and x_2 | x_1 likewise."""
    vocab, rows, temperature = 12, 6000, 0.9
    gen = torch.Generator().manual_seed(11)
    w1, w2 = torch.randn(vocab, 3, generator=gen), torch.randn(vocab, 3, generator=gen)
    base = torch.randn(2, vocab, generator=gen).expand(rows, 2, vocab).contiguous()
    anchor = torch.full((rows,), 5)
    full = markov.VanillaMarkovHead(w1, w2)
    ranks = SimulatedRanks(2)
    bounds = [(0, 8), (8, 12)]

    def rank_block(r):
        start, end = bounds[r]
        gather = ranks.gather(r)
        return markov.sample_block_sharded(
            base[..., start:end],
            anchor,
            full.shard(start, end),
            torch.full((rows,), temperature),
            seed=17,
            offset=2,
            gather_stacked=gather.gather_stacked,
            keep_logits=False,
        )

    tokens = ranks.run(rank_block)[0].tokens
    q1 = torch.softmax((base[0, 0] + markov.markov_bias(w1, w2, anchor[:1])[0]) / temperature, -1)
    mode = int(torch.bincount(tokens[:, 0], minlength=vocab).argmax())
    q2 = torch.softmax((base[0, 1] + markov.markov_bias(w1, w2, torch.tensor([mode]))[0]) / temperature, -1)
    second = tokens[tokens[:, 0] == mode, 1]
    for what, sample, q in (("x_1", tokens[:, 0], q1), ("x_2 | x_1", second, q2)):
        expected = q.double() * sample.numel()
        keep = expected >= 5
        counts = torch.bincount(sample, minlength=vocab).double()
        observed = torch.cat([counts[keep], counts[~keep].sum().reshape(1)])
        expected = torch.cat([expected[keep], expected[~keep].sum().reshape(1)])
        if expected[-1] == 0:
            observed, expected = observed[:-1], expected[:-1]
        p_value = stats.chisquare(
            observed.numpy(), expected.numpy() * observed.sum().item() / expected.sum().item()
        ).pvalue
        record_p_value("sharded Markov sampler", what, p_value)
        assert p_value > 1e-3, what


def test_merge_breaks_ties_to_the_lowest_global_id_and_ignores_the_sign_bit():
    """Equal keys on two ranks: the lower global id wins, as the whole row's first-index
    argmax; an index whose +0 came back as -0 (SGLang's NVLink sentinel) is still 0."""
    rank0 = markov.pack_shard_candidates(torch.tensor([2.0, 1.0]), torch.tensor([0, 3]))
    rank1 = markov.pack_shard_candidates(torch.tensor([2.0, 1.0]), torch.tensor([8, 9]))
    rank0[0, 1] = -0.0
    tokens, *_ = markov.merge_shard_candidates(torch.cat([rank1, rank0]), 2)
    assert tokens.tolist() == [0, 3]
    empty = markov.empty_shard_candidates(2, torch.device("cpu"))
    tokens, _, peak, total, _ = markov.merge_shard_candidates(torch.cat([empty, rank1]), 2)
    assert tokens.tolist() == [8, 9] and torch.isfinite(total).all() and torch.equal(peak, torch.zeros(2))


def test_shard_noise_is_keyed_by_global_column():
    rows, position = torch.arange(3), torch.tensor(4)
    whole = rng.uniform(9, 2, rng.Stream.DRAFT, rows, position, 64)
    for start, width in ((0, 16), (4, 9), (13, 20), (60, 4)):
        part = rng.uniform(9, 2, rng.Stream.DRAFT, rows, position, width, vocab_start=start)
        assert torch.equal(part, whole[:, start : start + width])


def test_shard_arguments_are_checked():
    x = _inputs(40)
    with pytest.raises(ValueError, match="exceed the vocabulary of w1"):
        markov.VanillaMarkovHead(x["w1"], x["w2"][:20], vocab_start=24)
    full = markov.VanillaMarkovHead(x["w1"], x["w2"])
    with pytest.raises(ValueError, match="shard"):
        full.shard(8, 44)
    with pytest.raises(ValueError, match="needs a head over the whole vocabulary"):
        full.shard(0, 20).shard(0, 4)
    with pytest.raises(ValueError, match="gather_logits"):
        markov.sample_block_sharded(
            x["base"][..., :20],
            x["anchor"],
            full.shard(0, 20),
            TEMPERATURES,
            seed=0,
            offset=0,
            gather_stacked=lambda t: t,
        )
    with pytest.raises(ValueError, match="gathered must be"):
        markov.merge_shard_candidates(torch.zeros(3, 5), 3)
    with pytest.raises(ValueError, match="vocab_start"):
        rng.uniform(0, 0, rng.Stream.DRAFT, torch.arange(2), torch.tensor(0), 4, vocab_start=-4)
    with pytest.raises(ValueError, match="first_position"):
        markov.sample_block_with_head(
            x["base"], x["anchor"], full, TEMPERATURES, seed=0, offset=0, first_position=-1
        )
    with pytest.raises(ValueError, match="draft position"):
        markov.sample_block_with_head(
            x["base"], x["anchor"], full, TEMPERATURES, seed=0, offset=0, first_position=252
        )


def test_shards_not_starting_at_a_multiple_of_16_agree_and_keep_greedy_rows():
    """SGLang's partition width need not be a multiple of 16 (a 64-padded vocab over 32 or 64
    ranks): every rank still takes the same exchange (the misaligned ones on reference ops) and
    decides the same tokens; greedy rows equal the unsharded block. Sampled rows draw a split
    group's tail with noise of its own (softmax still: tests/test_draft_sampler.py)."""
    x = _inputs(50, dtype=torch.bfloat16)
    full = markov.VanillaMarkovHead(x["w1"], x["w2"])
    ref = markov.sample_block_with_head(x["base"], x["anchor"], full, TEMPERATURES, seed=3, offset=5)
    assert [s % 16 for s, _, _ in shard_bounds(50, 5, pad_to=2)] == [0, 10, 4, 14, 8]
    blocks, _ = run_sharded(full, x["base"], x["anchor"], TEMPERATURES, 5, pad_to=2, keep_logits=True)
    greedy = TEMPERATURES == 0
    assert bool(greedy.any()) and bool((~greedy).any())
    for block in blocks:
        assert torch.equal(block.tokens, blocks[0].tokens)
        assert torch.equal(block.tokens[greedy], ref.tokens[greedy])
        assert torch.equal(block.stats.token_scores, blocks[0].stats.token_scores)