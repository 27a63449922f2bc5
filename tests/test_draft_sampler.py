"""The grouped draft sampler (markov.draft_sample): its definition, its distribution, its
non-finite rules, shards and the near-tie helper the kernel tests compare with."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import record_p_value
from draft_ties import is_draft_near_tie
from scipy import stats

from dspark_sgl import markov, rng

GROUP = markov.DRAFT_GROUP


def naive_draft(
    logits: torch.Tensor, t: float, seed: int, offset: int, row: int, position: int, start: int = 0
):
    """One row, written from the definition with Python floats (float32 only where the
    reference rounds: x = l / T and the key)."""
    vocab = logits.numel()
    groups = math.ceil(vocab / GROUP)
    u = rng.uniform(
        seed,
        offset,
        rng.Stream.DRAFT,
        torch.tensor([row]),
        torch.tensor([position]),
        2 * groups,
        2 * (start // GROUP),
    )[0]
    x = (logits.float() / t).tolist()
    best, best_key = None, -math.inf
    for j in range(groups):
        cols = range(j * GROUP, min(vocab, (j + 1) * GROUP))
        m = max(x[c] for c in cols)
        lse = m + math.log(sum(math.exp(x[c] - m) for c in cols))
        g = float(-torch.log(-torch.log(u[2 * j : 2 * j + 1])))
        key = float(torch.tensor(lse, dtype=torch.float32) + torch.tensor(g))
        if key > best_key:
            best, best_key = j, key
    cols = range(best * GROUP, min(vocab, (best + 1) * GROUP))
    m = max(x[c] for c in cols)
    mass = [math.exp(x[c] - m) for c in cols]
    cut = float(u[2 * best + 1]) * sum(mass)
    running = 0.0
    for c, e in zip(cols, mass, strict=True):
        running += e
        if running > cut:
            return c, best_key
    return cols[-1], best_key


@pytest.mark.parametrize("vocab", [16, 37, 100])
def test_draft_sample_follows_its_definition(vocab):
    gen = torch.Generator().manual_seed(vocab)
    rows = 24
    logits = torch.randn(rows, vocab, generator=gen) * 3
    temperature = torch.rand(rows, generator=gen) * 1.5 + 0.2
    temperature[::5] = 1.0
    index, key = markov.draft_sample(
        logits, temperature, seed=11, offset=3, stream=rng.Stream.DRAFT, position=2
    )
    assert index.dtype == torch.int64 and key.dtype == torch.float32 and index.shape == key.shape == (rows,)
    for r in range(rows):
        want, want_key = naive_draft(logits[r], float(temperature[r]), 11, 3, r, 2)
        assert int(index[r]) == want
        assert float(key[r]) == pytest.approx(want_key, rel=1e-6, abs=1e-6)


def test_greedy_rows_take_the_first_argmax_and_key_the_logit():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0] * 5, [0.0] * 20, [float("nan"), 1.0] * 10])
    temperature = torch.zeros(3)
    index, key = markov.draft_sample(
        logits, temperature, seed=0, offset=0, stream=rng.Stream.DRAFT, position=0
    )
    assert index.tolist() == [1, 0, 0]
    assert key[:2].tolist() == [3.0, 0.0] and math.isnan(key[2])


def test_non_finite_rows_draw_the_first_nan_then_the_first_inf_then_the_first_column():
    inf, nan = float("inf"), float("nan")
    logits = torch.randn(4, 40)
    logits[0, 33], logits[0, 5] = nan, inf  # NaN outranks +inf
    logits[1, 21], logits[1, 30] = inf, inf
    logits[2] = -inf
    logits[3, :] = -inf
    logits[3, 18] = 0.5  # one column with mass
    index, key = markov.draft_sample(
        logits, torch.ones(4), seed=1, offset=1, stream=rng.Stream.DRAFT, position=0
    )
    assert index.tolist() == [33, 21, 0, 18]
    assert math.isnan(key[0]) and key[1] == inf and key[2] == -inf and math.isfinite(key[3])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_draft_sample_is_lossless(temperature):
    """Tokens ~ softmax(l / T) over several groups and a partial one (chi-square)."""
    rows, vocab = 40000, 37
    gen = torch.Generator().manual_seed(9)
    logits = (torch.randn(vocab, generator=gen) * 0.8).expand(rows, vocab)
    index, _ = markov.draft_sample(
        logits, torch.full((rows,), temperature), seed=5, offset=2, stream=rng.Stream.DRAFT, position=1
    )
    q = torch.softmax(logits[0].double() / temperature, -1)
    expected = q * rows
    assert float(expected.min()) >= 5
    counts = torch.bincount(index, minlength=vocab).double()
    p_value = stats.chisquare(counts.numpy(), expected.numpy()).pvalue
    record_p_value("grouped draft sampler", f"tokens ~ q at T={temperature}", p_value)
    assert p_value > 1e-3


def test_shards_aligned_to_groups_give_the_whole_rows_tokens_and_keys():
    rows, vocab = 64, 96
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(rows, vocab, generator=gen)
    temperature = torch.full((rows,), 0.9)
    draw = dict(seed=7, offset=4, stream=rng.Stream.DRAFT, position=3)
    whole, whole_key = markov.draft_sample(logits, temperature, **draw)
    best_key = torch.full((rows,), -math.inf)
    best = torch.zeros(rows, dtype=torch.int64)
    for start, end in ((0, 32), (32, 48), (48, 96)):
        local, key = markov.draft_sample(logits[:, start:end], temperature, vocab_start=start, **draw)
        better = key > best_key
        best = torch.where(better, local + start, best)
        best_key = torch.where(better, key, best_key)
    assert torch.equal(best, whole)
    assert torch.equal(best_key, whole_key)


def test_a_shard_starting_inside_a_group_still_draws_softmax():
    """Shards at columns 0, 8 and 29 of V = 37: the split groups' tails draw their own noise,
    so the merged draw is not the whole row's but is still softmax (chi-square)."""
    rows, vocab = 40000, 37
    gen = torch.Generator().manual_seed(4)
    logits = (torch.randn(vocab, generator=gen) * 0.8).expand(rows, vocab)
    temperature = torch.ones(rows)
    draw = dict(seed=8, offset=1, stream=rng.Stream.DRAFT, position=0)
    best_key = torch.full((rows,), -math.inf)
    best = torch.zeros(rows, dtype=torch.int64)
    for start, end in ((0, 8), (8, 29), (29, 37)):
        local, key = markov.draft_sample(logits[:, start:end], temperature, vocab_start=start, **draw)
        assert int(local.min()) >= 0 and int(local.max()) < end - start
        better = key > best_key
        best = torch.where(better, local + start, best)
        best_key = torch.where(better, key, best_key)
    whole, _ = markov.draft_sample(logits, temperature, **draw)
    assert not torch.equal(best, whole)
    expected = torch.softmax(logits[0].double(), -1) * rows
    counts = torch.bincount(best, minlength=vocab).double()
    p_value = stats.chisquare(counts.numpy(), expected.numpy()).pvalue
    record_p_value("grouped draft sampler", "misaligned shards: tokens ~ q", p_value)
    assert p_value > 1e-3


def test_the_near_tie_helper_accepts_only_rounding_level_differences():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(48, generator=gen)
    index, _ = markov.draft_sample(
        logits[None], torch.ones(1), seed=2, offset=0, stream=rng.Stream.DRAFT, position=0
    )
    token = int(index[0])
    other = (token + GROUP) % 48  # another group: its key is O(1) away
    assert not is_draft_near_tie(logits, 1.0, token, other, seed=2, offset=0, row=0, position=0)
    neighbour = token ^ 1  # same group, a running-sum boundary O(mass) from the cut
    assert not is_draft_near_tie(logits, 1.0, token, neighbour, seed=2, offset=0, row=0, position=0)
    # Two groups with the same mass and noise drawn so their keys tie: a near-tie.
    tied = torch.full((32,), -math.inf)
    tied[3], tied[20] = 1.0, 1.0
    keys, *_ = markov.draft_groups(
        tied[None], torch.ones(1), seed=2, offset=0, stream=rng.Stream.DRAFT, position=0
    )
    shift = float(keys[0, 0] - keys[0, 1])
    tied[20] = 1.0 + shift
    assert is_draft_near_tie(tied, 1.0, 3, 20, seed=2, offset=0, row=0, position=0)
