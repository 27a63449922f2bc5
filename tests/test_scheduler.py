"""Scheduler: SPS table, Algorithm 1, the asynchronous budget, and the paper's Appendix A."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from conftest import record_p_value
from scipy import stats

from dspark_sgl import markov, scheduler, verify
from dspark_sgl.scheduler import SpsTable

# ---------------------------------------------------------------- SPS table


def test_sps_table_interpolates_linearly_and_clamps():
    table = SpsTable([(1, 100.0), (9, 60.0), (17, 20.0)])
    assert table(1) == 100.0 and table(9) == 60.0
    assert table(5) == pytest.approx(80.0)
    assert table(13) == pytest.approx(40.0)
    assert table(0) == 100.0 and table(1000) == 20.0
    looked = table.lookup(torch.tensor([0, 1, 5, 9, 13, 17, 99]))
    assert torch.allclose(
        looked, torch.tensor([100.0, 100.0, 80.0, 60.0, 40.0, 20.0, 20.0], dtype=torch.float64)
    )


def test_sps_table_single_point_is_constant():
    table = SpsTable([(4, 7.0)])
    assert table(1) == 7.0 and table(100) == 7.0
    assert torch.equal(table.lookup(torch.tensor([1, 4, 9])), torch.full((3,), 7.0, dtype=torch.float64))


def test_sps_table_json_round_trip_in_sglang_format(tmp_path):
    table = SpsTable([(1, 50.0), (16, 45.5), (64, 30.25)], max_batch_tokens=128)
    path = tmp_path / "sps.json"
    table.save(path)
    data = json.loads(path.read_text())
    assert data == {
        "sample_batch_tokens": [1, 16, 64],
        "sample_steps_per_sec": [50.0, 45.5, 30.25],
        "max_batch_tokens": 128,
    }
    loaded = SpsTable.load(path)
    assert loaded.tokens == table.tokens and loaded.steps_per_sec == table.steps_per_sec
    assert loaded.max_batch_tokens == 128


def test_sps_table_reads_a_file_written_like_sglang():
    text = '{"sample_batch_tokens":[8,32,128],"sample_steps_per_sec":[90.0,70.0,20.0],"max_batch_tokens":256}'
    table = SpsTable.from_json(text)
    assert table.tokens == [8, 32, 128] and table.max_batch_tokens == 256
    with pytest.raises(ValueError, match="additive"):
        SpsTable.from_json(
            '{"bias_seconds": 0.01, "bs_probes": [1], "alpha_seconds": [0.0], '
            '"m_probes": [1], "theta_seconds": [0.0]}'
        )
    with pytest.raises(ValueError, match="lacks"):
        SpsTable.from_json('{"sample_batch_tokens": [1]}')
    with pytest.raises(ValueError, match="JSON"):
        SpsTable.from_json("{not json")


@pytest.mark.parametrize(
    "points, match",
    [
        ([], "at least one"),
        ([(1, 10.0), (1, 9.0)], "strictly increasing"),
        ([(4, 10.0), (2, 9.0)], "strictly increasing"),
        ([(1, 10.0), (2, 11.0)], "must not increase"),
        ([(0, 10.0)], ">= 1"),
        ([(1, 0.0)], "> 0"),
        ([(1, float("nan"))], "finite"),
        ([(1, 10.0, 3)], "point 0"),
    ],
)
def test_sps_table_rejects_bad_points(points, match):
    with pytest.raises(ValueError, match=match):
        SpsTable(points)


def test_sps_table_from_measurements_enforces_monotone():
    table = SpsTable.from_measurements([(16, 50.0), (1, 60.0), (8, 61.0), (32, 52.0)])
    assert table.tokens == [1, 8, 16, 32]
    assert table.steps_per_sec == [60.0, 60.0, 50.0, 50.0]
    assert SpsTable([(1, 1.0), (2, 2.0)], require_non_increasing=False)(2) == 2.0


# ---------------------------------------------------------------- literal Algorithm 1


def ranked(conf: torch.Tensor) -> list[tuple[float, int, int]]:
    """(a, j, r) with a > 0 in admission order: a descending, then j, then r."""
    a = torch.cumprod(conf.float(), dim=1)
    cands = [(float(a[r, j]), j, r) for r in range(a.shape[0]) for j in range(a.shape[1]) if a[r, j] > 0]
    return sorted(cands, key=lambda c: (-c[0], c[1], c[2]))


def algorithm1(conf: torch.Tensor, sps: SpsTable) -> tuple[list[int], list[tuple[int, int]]]:
    """A line-by-line transcription of the paper's Algorithm 1 (with the break)."""
    rows = conf.shape[0]
    lengths = [0] * rows
    best_lengths = [0] * rows
    batch, tau = rows, float(rows)
    best = rows * sps(rows)
    admitted: list[tuple[int, int]] = []
    for a, j, r in ranked(conf):
        lengths[r] = j + 1
        batch += 1
        tau += a
        theta = tau * sps(batch)
        if theta > best:
            best = theta
            best_lengths = list(lengths)
            admitted.append((r, j))
        else:
            break
    return best_lengths, admitted


def retrospective(conf: torch.Tensor, sps: SpsTable) -> list[int]:
    """Global search without the break (the first maximiser)."""
    rows = conf.shape[0]
    lengths = [0] * rows
    batch, tau = rows, float(rows)
    best, best_lengths = rows * sps(rows), [0] * rows
    for a, j, r in ranked(conf):
        lengths[r] = j + 1
        batch += 1
        tau += a
        if tau * sps(batch) > best:
            best, best_lengths = tau * sps(batch), list(lengths)
    return best_lengths


def random_shape(gen: torch.Generator, rows_below: int, gamma_below: int) -> tuple[int, int]:
    """(rows, gamma) drawn uniformly from [1, rows_below) x [1, gamma_below)."""
    rows = int(torch.randint(1, rows_below, (1,), generator=gen))
    return rows, int(torch.randint(1, gamma_below, (1,), generator=gen))


def random_table(gen: torch.Generator, max_tokens: int) -> SpsTable:
    xs = sorted(set([1, *torch.randint(2, max_tokens + 1, (4,), generator=gen).tolist()]))
    drops = torch.rand(len(xs), generator=gen).sort(descending=True).values
    return SpsTable([(x, float(10 * d + 0.1)) for x, d in zip(xs, drops, strict=True)])


def random_confidence(gen: torch.Generator, rows: int, gamma: int) -> torch.Tensor:
    conf = torch.rand(rows, gamma, generator=gen) ** 0.3
    conf[torch.rand(rows, gamma, generator=gen) < 0.1] = 0.0
    conf[torch.rand(rows, gamma, generator=gen) < 0.1] = 1.0
    return conf


def test_schedule_causal_equals_a_literal_algorithm1_and_prefixes_are_contiguous():
    gen = torch.Generator().manual_seed(0)
    nontrivial = 0
    for _ in range(300):
        rows, gamma = random_shape(gen, 7, 8)
        conf = random_confidence(gen, rows, gamma)
        sps = random_table(gen, rows * (gamma + 1))
        expected, admitted = algorithm1(conf, sps)
        got = scheduler.schedule_causal(conf, sps)
        assert got.dtype == torch.int32 and got.tolist() == expected
        # The admitted set is exactly the union of per-request prefixes.
        assert sorted(admitted) == sorted((r, j) for r in range(rows) for j in range(expected[r]))
        nontrivial += any(0 < x < gamma for x in expected)
    assert nontrivial > 30


def test_schedule_causal_never_below_verifying_nothing():
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        rows, gamma = random_shape(gen, 9, 9)
        conf = random_confidence(gen, rows, gamma)
        sps = random_table(gen, rows * (gamma + 1))
        lens = scheduler.schedule_causal(conf, sps)
        theta = float(scheduler.expected_throughput(conf, lens, sps))
        assert theta >= rows * sps(rows) - 1e-12
        assert bool(((lens >= 0) & (lens <= gamma)).all())


def _is_unimodal(values: list[float]) -> bool:
    peak = max(range(len(values)), key=lambda i: (values[i], -i))
    rising = all(values[i] < values[i + 1] for i in range(peak))
    falling = all(values[i] >= values[i + 1] for i in range(peak, len(values) - 1))
    return rising and falling


def test_schedule_causal_is_the_exact_optimum_when_theta_is_unimodal():
    """Brute force over every length vector (R <= 3, g <= 3) with smooth SPS curves."""
    gen = torch.Generator().manual_seed(2)
    checked = 0
    for _ in range(150):
        rows, gamma = random_shape(gen, 4, 4)
        conf = torch.rand(rows, gamma, generator=gen) ** 0.5
        t0, t1 = 1.0, float(torch.rand(1, generator=gen)) * 0.6
        sps = SpsTable([(b, 1.0 / (t0 + t1 * b)) for b in range(1, rows * (gamma + 1) + 1)])
        path = [rows * sps(rows)]
        tau = float(rows)
        for n, (a, _, _) in enumerate(ranked(conf), start=1):
            tau += a
            path.append(tau * sps(rows + n))
        if not _is_unimodal(path):
            continue
        checked += 1
        best = max(
            float(scheduler.expected_throughput(conf, torch.tensor(lens, dtype=torch.int32), sps))
            for lens in itertools.product(range(gamma + 1), repeat=rows)
        )
        got = float(scheduler.expected_throughput(conf, scheduler.schedule_causal(conf, sps), sps))
        assert got == pytest.approx(best, rel=1e-12, abs=1e-12)
    assert checked > 100


def test_verify_budget_and_topk_match_a_literal_global_search():
    gen = torch.Generator().manual_seed(3)
    for _ in range(200):
        rows, gamma = random_shape(gen, 7, 8)
        conf = random_confidence(gen, rows, gamma)
        sps = random_table(gen, rows * (gamma + 1))
        expected = retrospective(conf, sps)
        budget = scheduler.verify_budget(conf, sps)
        assert budget.dim() == 0 and int(budget) == sum(expected)
        assert scheduler.schedule_topk(conf, budget).tolist() == expected


def test_schedule_topk_is_prefix_contiguous_and_respects_the_budget():
    gen = torch.Generator().manual_seed(4)
    for _ in range(100):
        rows, gamma = random_shape(gen, 7, 8)
        conf = random_confidence(gen, rows, gamma)
        valid = sum(1 for _ in ranked(conf))
        for budget in (0, 1, rows, rows * gamma, 10 * rows * gamma):
            lens = scheduler.schedule_topk(conf, budget)
            assert int(lens.sum()) == min(budget, valid)
            order = ranked(conf)[: min(budget, valid)]
            assert sorted((r, j) for _, j, r in order) == sorted(
                (r, j) for r in range(rows) for j in range(int(lens[r]))
            )


def test_schedule_async_uses_stale_budget_and_current_ranking():
    conf = torch.tensor([[0.9, 0.9, 0.9], [0.2, 0.9, 0.9]])
    stale = torch.tensor([[0.9, 0.1, 0.1], [0.9, 0.1, 0.1]])
    sps = SpsTable([(1, 10.0), (2, 9.9), (3, 9.8), (4, 9.7), (8, 1.0)])
    budget = int(scheduler.verify_budget(stale, sps))
    lens = scheduler.schedule_async(conf, stale, sps)
    assert int(lens.sum()) == budget == 2
    assert lens.tolist() == [2, 0]  # the current ranking gives both slots to request 0


def test_zero_confidence_is_never_scheduled():
    conf = torch.tensor([[0.0, 0.9], [0.9, 0.0]])
    flat = SpsTable([(1, 1.0)])
    assert scheduler.schedule_causal(conf, flat).tolist() == [0, 1]
    assert scheduler.schedule_topk(conf, 10).tolist() == [0, 1]


def test_flat_sps_verifies_every_positive_candidate():
    conf = torch.tensor([[0.5, 0.5, 0.5], [0.9, 0.1, 0.5]])
    assert scheduler.schedule_causal(conf, SpsTable([(1, 3.0)])).tolist() == [3, 3]


# ---------------------------------------------------------------- Appendix A


def appendix_a_rounds(policy: str, trials: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's counterexample: V = {A, B}, gamma = 2, R = 1 per scheduling decision.

    Draft q1 = (0.5, 0.5); target p1 = (0.7, 0.3). Confidence c1 = 0.8 before x1 is drawn,
    c2 = 0.9 if x1 = A and ~0 if x1 = B (through the head's W1[x1] feature).
    SPS(1) = 1.0, SPS(2) = 0.5, SPS(3) = 0.45. Returns (first emitted tokens, lengths).
    """
    rows = trials
    logit = math.log
    w1 = torch.tensor([[0.0], [-40.0]])  # W1[A] = 0, W1[B] = -40: c2 collapses after x1 = B
    w2 = torch.zeros(2, 1)  # no Markov bias: q = softmax(base) = (0.5, 0.5)
    hidden = torch.tensor([[logit(0.8 / 0.2)], [logit(0.9 / 0.1)]]).expand(rows, 2, 1)
    anchor = torch.zeros(rows, dtype=torch.int64)  # x0 = A, W1[x0] = 0
    temperature = torch.ones(rows)
    block = markov.sample_block(
        torch.zeros(rows, 2, 2),
        anchor,
        w1,
        w2,
        temperature,
        seed=seed,
        offset=0,
        hidden=hidden,
        conf_weight=torch.tensor([1.0, 1.0]),
        conf_bias=0.0,
    )
    sps = SpsTable([(1, 1.0), (2, 0.5), (3, 0.45)])
    # One scheduling decision per trial (R = 1); the two possible confidence rows are cached.
    decide = (
        scheduler.schedule_causal
        if policy == "causal"
        else (lambda c, s: scheduler.schedule_topk(c, scheduler.verify_budget(c, s)))
    )
    cache: dict[tuple[float, ...], int] = {}
    lens = torch.empty(rows, dtype=torch.int32)
    for i in range(rows):
        key = tuple(block.confidence[i].tolist())
        if key not in cache:
            cache[key] = int(decide(block.confidence[i : i + 1], sps)[0])
        lens[i] = cache[key]
    target = torch.log(torch.tensor([0.7, 0.3])).expand(rows, 3, 2)
    _, out = verify.chain_verify(target, block.logits, block.tokens, lens, temperature, seed=seed, offset=1)
    return out[:, 0], lens


def test_appendix_a_confidences_are_as_in_the_paper():
    rows = 64
    w1 = torch.tensor([[0.0], [-40.0]])
    hidden = torch.tensor([[math.log(4.0)], [math.log(9.0)]]).expand(rows, 2, 1)
    block = markov.sample_block(
        torch.zeros(rows, 2, 2),
        torch.zeros(rows, dtype=torch.int64),
        w1,
        torch.zeros(2, 1),
        torch.ones(rows),
        seed=0,
        offset=0,
        hidden=hidden,
        conf_weight=torch.tensor([1.0, 1.0]),
        conf_bias=0.0,
    )
    assert torch.allclose(block.confidence[:, 0], torch.tensor(0.8))
    is_a = block.tokens[:, 0] == 0
    assert torch.allclose(block.confidence[is_a, 1], torch.tensor(0.9))
    assert bool((block.confidence[~is_a, 1] < 1e-15).all())


def test_appendix_a_retrospective_search_is_biased_towards_085():
    trials = 40000
    tokens, lens = appendix_a_rounds("retrospective", trials, seed=21)
    assert set(lens.unique().tolist()) == {0, 2}
    freq_a = float((tokens == 0).double().mean())
    sigma = math.sqrt(0.85 * 0.15 / trials)
    assert abs(freq_a - 0.85) < 5 * sigma, freq_a
    counts = [int((tokens == 0).sum()), int((tokens == 1).sum())]
    p_target = stats.chisquare(counts, [0.7 * trials, 0.3 * trials]).pvalue
    p_biased = stats.chisquare(counts, [0.85 * trials, 0.15 * trials]).pvalue
    record_p_value("Appendix A retrospective", f"vs (0.85, 0.15), P(A)={freq_a:.4f}", p_biased)
    record_p_value(
        "Appendix A retrospective",
        f"vs target (0.7, 0.3), P(A)={freq_a:.4f}",
        p_target,
        expect_lossless=False,
    )
    assert p_target < 1e-12 and p_biased > 1e-3


def test_appendix_a_causal_scheduler_recovers_the_target():
    trials = 40000
    tokens, lens = appendix_a_rounds("causal", trials, seed=22)
    assert bool((lens == 0).all())  # Theta_1 = 0.9 < Theta_0 = 1.0: stop before x1
    counts = [int((tokens == 0).sum()), int((tokens == 1).sum())]
    p_target = stats.chisquare(counts, [0.7 * trials, 0.3 * trials]).pvalue
    record_p_value("Appendix A causal", f"vs target (0.7, 0.3), P(A)={counts[0] / trials:.4f}", p_target)
    assert p_target > 1e-3


def test_async_causal_prune_is_the_smaller_of_the_budget_and_algorithm1():
    gen = torch.Generator().manual_seed(5)
    for _ in range(150):
        rows, gamma = random_shape(gen, 7, 8)
        conf, stale = random_confidence(gen, rows, gamma), random_confidence(gen, rows, gamma)
        sps = random_table(gen, rows * (gamma + 1))
        budget = sum(retrospective(stale, sps))
        causal, _ = algorithm1(conf, sps)
        take = min(budget, sum(causal))
        expected = [0] * rows
        for _, j, r in ranked(conf)[:take]:
            expected[r] = j + 1
        got = scheduler.schedule_async(conf, stale, sps, causal_prune=True)
        assert got.tolist() == expected
