"""chain_verify semantics on hand-built cases (the distributions are in test_lossless.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dspark_sgl import markov, rng, verify


def _random_case(rows=5, gamma=4, vocab=11, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(rows, gamma + 1, vocab, generator=gen),
        torch.randn(rows, gamma, vocab, generator=gen),
        torch.randint(0, vocab, (rows, gamma), generator=gen),
    )


def test_output_layout_accepted_prefix_then_one_token_then_padding():
    target, draft, tokens = _random_case()
    lens = torch.tensor([4, 2, 0, 3, 1], dtype=torch.int32)
    accept, out = verify.chain_verify(target, draft, tokens, lens, torch.ones(5), seed=1, offset=2)
    assert accept.dtype == torch.int32 and out.dtype == torch.int64 and out.shape == (5, 5)
    for r in range(5):
        n = int(accept[r])
        assert 0 <= n <= int(lens[r])
        assert torch.equal(out[r, :n], tokens[r, :n])
        assert 0 <= int(out[r, n]) < 11
        assert bool((out[r, n + 1 :] == -1).all())


def test_identical_draft_and_target_accept_everything():
    target, _, _ = _random_case()
    draft_logits = target[:, :4].clone()
    tokens = torch.stack(
        [torch.multinomial(torch.softmax(draft_logits[r], -1), 1).squeeze(-1) for r in range(5)]
    )
    lens = torch.tensor([4, 3, 2, 1, 0], dtype=torch.int32)
    accept, _ = verify.chain_verify(target, draft_logits, tokens, lens, torch.ones(5), seed=0, offset=0)
    assert accept.tolist() == lens.tolist()


def test_zero_probability_draft_token_is_always_rejected():
    target, draft, tokens = _random_case(rows=3)
    target[:, 0, 7] = float("-inf")
    tokens[:, 0] = 7
    accept, out = verify.chain_verify(
        target, draft, tokens, torch.full((3,), 4), torch.ones(3), seed=5, offset=0
    )
    assert accept.tolist() == [0, 0, 0]
    assert bool((out[:, 0] != 7).all())  # the correction never picks a token p gives 0


def test_accept_decision_is_u_times_q_below_p():
    target, draft, tokens = _random_case(rows=64, gamma=1, vocab=4, seed=3)
    temperature = torch.full((64,), 0.9)
    accept, _ = verify.chain_verify(
        target, draft, tokens, torch.ones(64, dtype=torch.int64), temperature, seed=7, offset=3
    )
    p = torch.softmax(target[:, 0] / 0.9, -1).gather(1, tokens).squeeze(1)
    q = torch.softmax(draft[:, 0] / 0.9, -1).gather(1, tokens).squeeze(1)
    u = rng.uniform_scalar(7, 3, rng.Stream.ACCEPT, torch.arange(64), torch.zeros(64, dtype=torch.int64))
    assert accept.tolist() == (u * q < p).int().tolist()
    assert 0 < int(accept.sum()) < 64


def test_bonus_and_correction_use_the_resample_stream_at_the_stop_position():
    target, draft, tokens = _random_case(rows=8, gamma=3, vocab=9, seed=4)
    lens = torch.zeros(8, dtype=torch.int32)  # nothing verified: the bonus comes from p_0
    _, out = verify.chain_verify(target, draft, tokens, lens, torch.ones(8), seed=2, offset=6)
    noise = rng.gumbel(2, 6, rng.Stream.RESAMPLE, torch.arange(8), torch.zeros(8, dtype=torch.int64), 9)
    assert torch.equal(out[:, 0], (target[:, 0] + noise).argmax(-1))


def test_greedy_rows_exact_match_then_target_argmax():
    vocab = 6
    target = torch.full((2, 4, vocab), -5.0)
    for j, tok in enumerate([1, 2, 3, 4]):
        target[:, j, tok] = 5.0
    tokens = torch.tensor([[1, 2, 0], [1, 2, 3]])
    draft = torch.randn(2, 3, vocab)
    accept, out = verify.chain_verify(
        target, draft, tokens, torch.tensor([3, 2]), torch.zeros(2), seed=0, offset=0
    )
    assert accept.tolist() == [2, 2]
    assert out.tolist() == [[1, 2, 3, -1], [1, 2, 3, -1]]


@pytest.mark.parametrize("seed", range(4))
def test_all_greedy_shortcut_gives_the_general_paths_tokens(seed):
    """An all-greedy CPU batch skips the statistics and draws; a sampled row added to the
    batch forces the general path, whose greedy rows must come out the same."""
    target, draft, _ = _random_case(rows=6, gamma=5, vocab=9, seed=seed)
    gen = torch.Generator().manual_seed(100 + seed)
    best = target.argmax(-1)
    # Drafts that follow the target's argmax for a random prefix, so every stop occurs.
    tokens = torch.where(torch.rand(6, 5, generator=gen) < 0.7, best[:, :5], torch.randint(0, 9, (6, 5)))
    lens = torch.randint(0, 6, (6,), generator=gen)
    fast = verify.chain_verify(target, draft, tokens, lens, torch.zeros(6), seed=seed, offset=3)
    extra = (torch.cat([target, target[:1]]), torch.cat([draft, draft[:1]]), torch.cat([tokens, tokens[:1]]))
    mixed = verify.chain_verify(
        *extra, torch.cat([lens, lens[:1]]), torch.tensor([0.0] * 6 + [1.0]), seed=seed, offset=3
    )
    assert torch.equal(fast[0], mixed[0][:6]) and torch.equal(fast[1], mixed[1][:6])
    assert fast[0].dtype == torch.int32 and fast[1].dtype == torch.int64


def test_positions_beyond_the_verify_length_are_never_accepted():
    vocab = 5
    target = torch.zeros(1, 4, vocab)
    target[0, :, 2] = 10.0
    tokens = torch.full((1, 3), 2)
    for length in range(4):
        accept, out = verify.chain_verify(
            target, torch.randn(1, 3, vocab), tokens, torch.tensor([length]), torch.zeros(1), seed=0, offset=0
        )
        assert int(accept[0]) == length and int(out[0, length]) == 2


def test_gamma_zero_emits_one_bonus_token():
    target = torch.randn(3, 1, 7)
    accept, out = verify.chain_verify(
        target,
        torch.empty(3, 0, 7),
        torch.empty(3, 0, dtype=torch.int64),
        torch.zeros(3, dtype=torch.int32),
        torch.tensor([0.0, 1.0, 2.0]),
        seed=1,
        offset=1,
    )
    assert accept.tolist() == [0, 0, 0] and out.shape == (3, 1)
    assert int(out[0, 0]) == int(target[0, 0].argmax())


def test_bf16_inputs_are_accepted_and_computed_in_fp32():
    target, draft, tokens = _random_case()
    lens = torch.full((5,), 4)
    a32 = verify.chain_verify(
        target.bfloat16().float(), draft.bfloat16().float(), tokens, lens, torch.ones(5), seed=3, offset=0
    )
    a16 = verify.chain_verify(
        target.bfloat16(), draft.bfloat16(), tokens, lens, torch.ones(5), seed=3, offset=0
    )
    assert torch.equal(a32[0], a16[0]) and torch.equal(a32[1], a16[1])


def _drafted(rows=9, gamma=5, vocab=23, rank=4, softcap=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, gamma, vocab, generator=gen)
    w1, w2 = torch.randn(vocab, rank, generator=gen), torch.randn(vocab, rank, generator=gen)
    anchor = torch.randint(0, vocab, (rows,), generator=gen)
    temperature = torch.rand(rows, generator=gen) + 0.4
    temperature[::4] = 0.0
    block = markov.sample_block(
        base, anchor, w1, w2, temperature, seed=2, offset=3, logit_softcap=softcap, keep_logits=True
    )
    # A target close to the draft so that chains are partly accepted.
    target = torch.cat([block.logits, torch.randn(rows, 1, vocab, generator=gen)], dim=1)
    target = target + 0.7 * torch.randn(rows, gamma + 1, vocab, generator=gen)
    lens = torch.randint(0, gamma + 1, (rows,), generator=gen)
    return block, target, lens, temperature


@pytest.mark.parametrize("softcap", [None, 2.5])
def test_statistics_form_gives_the_tokens_of_the_logits_form(softcap):
    accepted = 0
    for seed in range(12):
        block, target, lens, temperature = _drafted(softcap=softcap, seed=seed)
        a1, o1 = verify.chain_verify(
            target, block.logits, block.tokens, lens, temperature, seed=seed, offset=4
        )
        a2, o2 = verify.chain_verify(
            target, block.stats, block.tokens, lens, temperature, seed=seed, offset=4
        )
        assert torch.equal(a1, a2) and torch.equal(o1, o2)
        accepted += int(a1.sum())
    assert 0 < accepted < 12 * 9 * 5  # both acceptances and rejections were exercised


def test_statistics_form_rejects_bad_statistics():
    block, target, lens, temperature = _drafted()
    stats = block.stats

    def run(**changes):
        bad = dataclasses.replace(stats, **changes)
        verify.chain_verify(target, bad, block.tokens, lens, temperature, seed=0, offset=0)

    with pytest.raises(ValueError, match=r"draft_logits.max must have shape \[9, 5\]"):
        run(max=stats.max[:, :4])
    with pytest.raises(TypeError, match=r"draft_logits\.sum must have dtype"):
        run(sum=stats.sum.double())
    with pytest.raises(ValueError, match=r"draft_logits\.sum contains NaN"):
        run(sum=torch.full_like(stats.sum, float("nan")))
    with pytest.raises(ValueError, match="do not fit vocabulary"):
        run(w2=stats.w2[:5])
    with pytest.raises(ValueError, match="do not fit vocabulary"):
        run(w1=stats.w1[:5])
    with pytest.raises(ValueError, match=r"draft_logits\.anchor values must be in"):
        run(anchor=stats.anchor + 100)
    with pytest.raises(ValueError, match=r"draft_logits.base_logits must have shape"):
        run(base_logits=stats.base_logits[:, :, :3])


def test_statistics_form_matches_logits_kept_in_bf16():
    gen = torch.Generator().manual_seed(5)
    rows, gamma, vocab, rank = 8, 4, 19, 3
    base = torch.randn(rows, gamma, vocab, generator=gen)
    w1, w2 = torch.randn(vocab, rank, generator=gen), torch.randn(vocab, rank, generator=gen)
    temperature = torch.rand(rows, generator=gen) + 0.5
    block = markov.sample_block(
        base, torch.arange(rows), w1, w2, temperature, seed=1, offset=1, logits_dtype=torch.bfloat16
    )
    target = torch.cat([block.logits.float(), torch.randn(rows, 1, vocab, generator=gen)], dim=1) + 0.5
    lens = torch.full((rows,), gamma)
    a1, o1 = verify.chain_verify(target, block.logits, block.tokens, lens, temperature, seed=2, offset=2)
    a2, o2 = verify.chain_verify(target, block.stats, block.tokens, lens, temperature, seed=2, offset=2)
    assert torch.equal(a1, a2) and torch.equal(o1, o2)
