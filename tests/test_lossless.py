"""Lossless verification, statistically.

The batch dimension holds independent trials. A target with the same distribution p at
every position and a Markov draft whose q depends on the previous token generate several
rounds; chi-square tests check that each emitted position is distributed as p and that
consecutive emitted pairs are distributed as p x p, for every way of choosing verify
lengths. A bigram target adds a test with context-dependent p.
"""

from __future__ import annotations

import pytest
import torch
from conftest import record_p_value
from scipy import stats

from dspark_sgl import markov, scheduler, verify

VOCAB = 5
GAMMA = 4
RANK = 2
HIDDEN = 3
TRIALS = 20000
POSITIONS = 6  # emitted positions checked; one round emits >= 1, so POSITIONS rounds suffice
P_MIN = 1e-3


class World:
    """Target p (fixed or bigram), a Markov draft and a confidence head, all seeded."""

    def __init__(self, seed: int, temperature: float, bigram: bool = False) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.temperature = temperature
        if bigram:
            self.target = 1.2 * torch.randn(VOCAB, VOCAB, generator=gen)
        else:
            self.target = (1.2 * torch.randn(VOCAB, generator=gen)).expand(VOCAB, VOCAB).clone()
        self.base = torch.randn(GAMMA, VOCAB, generator=gen)
        self.w1 = 1.5 * torch.randn(VOCAB, RANK, generator=gen)
        self.w2 = 1.5 * torch.randn(VOCAB, RANK, generator=gen)
        self.hidden = torch.randn(GAMMA, HIDDEN, generator=gen)
        self.conf_weight = torch.randn(HIDDEN + RANK, generator=gen)
        self.conf_bias = 1.0

    def p(self, prev: int | None = None) -> torch.Tensor:
        t = self.temperature if self.temperature > 0 else 1.0
        return torch.softmax(self.target[0 if prev is None else prev] / t, dim=-1).double()

    def draft(
        self,
        anchor: torch.Tensor,
        temperature: torch.Tensor,
        seed: int,
        offset: int,
        keep_logits: bool = True,
    ) -> markov.DraftBlock:
        rows, device = anchor.numel(), anchor.device
        return markov.sample_block(
            self.base.to(device).expand(rows, GAMMA, VOCAB),
            anchor,
            self.w1.to(device),
            self.w2.to(device),
            temperature,
            seed=seed,
            offset=offset,
            hidden=self.hidden.to(device).expand(rows, GAMMA, HIDDEN),
            conf_weight=self.conf_weight.to(device),
            conf_bias=self.conf_bias,
            keep_logits=keep_logits,
        )


def generate(
    world: World,
    policy: str,
    *,
    seed: int,
    rows: int = TRIALS,
    rounds: int = POSITIONS,
    temperature: torch.Tensor | None = None,
    device: str = "cpu",
    form: str = "logits",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Emitted tokens [rows, rounds] (first `rounds` positions, on the CPU) and all verify
    lengths used. ``form``: verify from the block's logits or from its DraftStats."""
    if temperature is None:
        temperature = torch.full((rows,), world.temperature)
    temperature = temperature.to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    anchor = torch.randint(0, VOCAB, (rows,), generator=gen).to(device)
    emitted = torch.full((rows, rounds * (GAMMA + 1)), -1, dtype=torch.int64, device=device)
    count = torch.zeros(rows, dtype=torch.int64, device=device)
    stale = [torch.ones(rows, GAMMA, device=device)] * 2  # confidences of two rounds ago
    # SPS tables on the scale of this batch: drops make the scheduler stop part-way.
    sps = scheduler.SpsTable([(rows, 1.0), (2 * rows, 0.62), (3 * rows, 0.45), ((GAMMA + 1) * rows, 0.3)])
    used_lens = []
    row_ids = torch.arange(rows, device=device)
    target = world.target.to(device)
    for rnd in range(rounds):
        block = world.draft(anchor, temperature, seed, rnd, keep_logits=form == "logits")
        chain = torch.cat([anchor[:, None], block.tokens], dim=1)
        target_logits = target[chain]
        if policy == "full":
            lens = torch.full((rows,), GAMMA, dtype=torch.int32, device=device)
        elif policy == "random":
            lens = torch.randint(0, GAMMA + 1, (rows,), generator=gen, dtype=torch.int32).to(device)
        elif policy == "causal":
            lens = scheduler.schedule_causal(block.confidence, sps)
        elif policy in ("async", "async_prune"):
            lens = scheduler.schedule_async(
                block.confidence, stale[0], sps, causal_prune=policy == "async_prune"
            )
            stale = [stale[1], block.confidence]
        else:
            raise AssertionError(policy)
        used_lens.append(lens)
        accept, out = verify.chain_verify(
            target_logits, block.verify_input(), block.tokens, lens, temperature, seed=seed, offset=rnd
        )
        n_out = accept.to(torch.int64) + 1
        cols = torch.arange(GAMMA + 1, device=device)
        valid = cols[None, :] < n_out[:, None]
        dest = (count[:, None] + cols[None, :])[valid]
        emitted[row_ids[:, None].expand(-1, GAMMA + 1)[valid], dest] = out[valid]
        count += n_out
        anchor = out.gather(1, accept.to(torch.int64)[:, None]).squeeze(1)
    assert bool((count >= rounds).all())
    return emitted[:, :rounds].cpu(), torch.stack(used_lens).cpu()


def chi_square(
    observed_tokens: torch.Tensor, expected_probs: torch.Tensor, min_expected: float = 5.0
) -> float:
    """Chi-square p-value of token counts against ``expected_probs``; the cells expected fewer
    than ``min_expected`` times are pooled into one (the test's approximation needs >= 5)."""
    cells = expected_probs.numel()
    observed = torch.bincount(observed_tokens, minlength=cells).double()
    probs = expected_probs.reshape(-1).double()
    expected = probs / probs.sum() * observed_tokens.numel()
    rare = expected < min_expected
    if bool(rare.any()):
        observed = torch.cat([observed[~rare], observed[rare].sum().reshape(1)])
        expected = torch.cat([expected[~rare], expected[rare].sum().reshape(1)])
    return float(stats.chisquare(observed.numpy(), expected.numpy()).pvalue)


def check_iid_p(name: str, tokens: torch.Tensor, p: torch.Tensor) -> None:
    """Every position ~ p and every consecutive pair ~ p x p."""
    for t in range(tokens.shape[1]):
        pv = chi_square(tokens[:, t], p)
        record_p_value(name, f"position {t}", pv)
        assert pv > P_MIN, f"{name}: position {t} is not distributed as p (chi-square p={pv:.2e})"
    pair_p = torch.outer(p, p)
    for t in range(tokens.shape[1] - 1):
        pv = chi_square(tokens[:, t] * VOCAB + tokens[:, t + 1], pair_p)
        record_p_value(name, f"pair ({t},{t + 1})", pv)
        assert pv > P_MIN, f"{name}: pair ({t},{t + 1}) is not distributed as p x p (p={pv:.2e})"


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_lossless_full_block(temperature):
    world = World(seed=11, temperature=temperature)
    tokens, _ = generate(world, "full", seed=3)
    check_iid_p(f"full block T={temperature}", tokens, world.p())


def test_lossless_random_fixed_verify_lengths():
    world = World(seed=12, temperature=1.0)
    tokens, lens = generate(world, "random", seed=4)
    assert set(lens.unique().tolist()) == set(range(GAMMA + 1))
    check_iid_p("random verify lengths", tokens, world.p())


def test_lossless_when_verifying_from_draft_statistics():
    world = World(seed=31, temperature=0.8)
    tokens, _ = generate(world, "random", seed=32, form="stats")
    check_iid_p("draft statistics, random lengths", tokens, world.p())


def test_lossless_schedule_causal_in_the_loop():
    world = World(seed=13, temperature=1.0)
    tokens, lens = generate(world, "causal", seed=5)
    # The scheduler really prunes: lengths vary and are neither all 0 nor all g.
    assert 0.3 < lens.float().mean() < GAMMA - 0.3 and lens.unique().numel() >= 3
    check_iid_p("schedule_causal in the loop", tokens, world.p())


def test_lossless_schedule_async_in_the_loop():
    world = World(seed=14, temperature=1.0)
    tokens, lens = generate(world, "async", seed=6)
    assert 0.3 < lens.float().mean() < GAMMA - 0.3 and lens.unique().numel() >= 3
    check_iid_p("schedule_async in the loop", tokens, world.p())


def test_lossless_schedule_async_with_causal_prune_in_the_loop():
    world = World(seed=18, temperature=1.0)
    tokens, lens = generate(world, "async_prune", seed=10)
    assert 0.3 < lens.float().mean() < GAMMA - 0.3 and lens.unique().numel() >= 3
    check_iid_p("schedule_async + causal prune", tokens, world.p())


def test_lossless_bigram_target_pairs():
    """Context-dependent target: (y1, y2) ~ P[a](y1) P[y1](y2) from a fixed anchor a."""
    world = World(seed=15, temperature=1.0, bigram=True)
    rows = TRIALS
    tokens = _generate_from_anchor(world, rows, anchor_token=2, seed=7)
    p1 = world.p(2)
    pv = chi_square(tokens[:, 0], p1)
    record_p_value("bigram target", "position 0", pv)
    assert pv > P_MIN
    joint = p1[:, None] * torch.stack([world.p(a) for a in range(VOCAB)])
    pv = chi_square(tokens[:, 0] * VOCAB + tokens[:, 1], joint)
    record_p_value("bigram target", "pair (0,1)", pv)
    assert pv > P_MIN


def _generate_from_anchor(world: World, rows: int, anchor_token: int, seed: int) -> torch.Tensor:
    temperature = torch.full((rows,), world.temperature)
    anchor = torch.full((rows,), anchor_token, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    first, second = torch.full((rows,), -1), torch.full((rows,), -1)
    for rnd in range(2):
        block = world.draft(anchor, temperature, seed, rnd)
        chain = torch.cat([anchor[:, None], block.tokens], dim=1)
        lens = torch.randint(0, GAMMA + 1, (rows,), generator=gen, dtype=torch.int32)
        accept, out = verify.chain_verify(
            world.target[chain], block.logits, block.tokens, lens, temperature, seed=seed, offset=rnd
        )
        if rnd == 0:
            first = out[:, 0]
            second = torch.where(accept > 0, out[:, 1], second)
        else:
            second = torch.where(second < 0, out[:, 0], second)
        anchor = out.gather(1, accept.to(torch.int64)[:, None]).squeeze(1)
    return torch.stack([first, second], dim=1)


def test_greedy_rows_emit_the_target_argmax_and_mixed_batches_stay_lossless():
    """Half the rows greedy, half sampled, in one batch: greedy rows emit argmax p exactly."""
    world = World(seed=16, temperature=1.0)
    rows = TRIALS
    temperature = torch.where(torch.arange(rows) % 2 == 0, torch.tensor(0.0), torch.tensor(1.0))
    tokens, _ = generate(world, "random", seed=8, rows=rows, temperature=temperature)
    greedy, sampled = tokens[0::2], tokens[1::2]
    assert bool((greedy == world.target[0].argmax()).all())
    check_iid_p("mixed batch, sampled rows", sampled, world.p())


def test_greedy_bigram_matches_sequential_argmax():
    world = World(seed=17, temperature=0.0, bigram=True)
    rows = 64
    tokens, _ = generate(world, "random", seed=9, rows=rows, temperature=torch.zeros(rows))
    gen = torch.Generator().manual_seed(9 + 1)
    anchor = torch.randint(0, VOCAB, (rows,), generator=gen)
    greedy_next = world.target.argmax(dim=-1)
    expected = []
    prev = anchor
    for _ in range(tokens.shape[1]):
        prev = greedy_next[prev]
        expected.append(prev)
    assert torch.equal(tokens, torch.stack(expected, dim=1))
