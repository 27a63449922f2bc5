"""The CUDA kernels markov_block, chain_verify and schedule_prefix against their references.

Run on the lent GPU (skipped elsewhere). Equality is exact where the inputs make every
float operation exact (dyadic weights and confidences); elsewhere a differing token is
accepted only when the reference's own decision was a floating-point near-tie, which the
helpers below check explicitly. Memory safety: run this file under
``compute-sanitizer --tool memcheck``.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import requires_gpu
from test_lossless import World, check_iid_p, generate

from dspark_sgl import _checks, _dispatch, markov, rng, scheduler, verify

pytestmark = [pytest.mark.gpu, requires_gpu]

CUDA = torch.device("cuda")
BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32


def _kernel_ran(op: str) -> bool:
    return _dispatch.kernel_path(op, CUDA)[0]


# ---------------------------------------------------------------------------------------
# markov_block


def markov_case(rows, gamma, vocab, rank, *, wdtype=BF16, bdtype=BF16, dyadic=True, hidden=0, seed=0):
    """Inputs of one block on the GPU. Dyadic values make every product and sum of the
    bias exact in float32, so kernel and reference logits are bit-identical."""
    gen = torch.Generator().manual_seed(seed)
    if dyadic:
        w1 = torch.randint(-4, 5, (vocab, rank), generator=gen) / 8
        w2 = torch.randint(-4, 5, (vocab, rank), generator=gen) / 8
        base = torch.randint(-64, 65, (rows, gamma, vocab), generator=gen) / 16
    else:
        w1 = 0.05 * torch.randn(vocab, rank, generator=gen)
        w2 = 0.05 * torch.randn(vocab, rank, generator=gen)
        base = 2.0 * torch.randn(rows, gamma, vocab, generator=gen)
    temperature = torch.rand(rows, generator=gen) + 0.3
    temperature[::3] = 0.0
    case = dict(
        base_logits=base.to(CUDA, bdtype),
        anchor=torch.randint(0, vocab, (rows,), generator=gen).to(CUDA),
        w1=w1.to(CUDA, wdtype),
        w2=w2.to(CUDA, wdtype),
        temperature=temperature.to(CUDA),
    )
    if hidden:
        case["hidden"] = torch.randn(rows, gamma, hidden, generator=gen).to(CUDA, bdtype)
        case["conf_weight"] = torch.randn(hidden + rank, generator=gen).to(CUDA)
        case["conf_bias"] = 0.3
        case["sts_temperatures"] = (torch.rand(gamma, generator=gen) + 0.5).to(CUDA)
    return case


def draft(case, *, seed=7, offset=3, **kw) -> markov.DraftBlock:
    return markov.sample_block(**case, seed=seed, offset=offset, **kw)


MARKOV_SHAPES = [
    # rows, gamma, vocab, rank
    (1, 1, 1000, 256),
    (1, 7, 129280, 256),
    (8, 5, 151936, 256),
    (33, 16, 4099, 200),  # odd vocabulary, rank not a multiple of 8 (scalar staging)
    (64, 7, 129280, 512),
    (256, 5, 32000, 64),
]


@pytest.mark.parametrize("shape", MARKOV_SHAPES, ids=str)
@pytest.mark.parametrize(("wdtype", "bdtype"), [(BF16, BF16), (F32, F32), (F16, F32), (BF16, F32)], ids=str)
def test_markov_block_is_bit_identical_on_exact_inputs(shape, wdtype, bdtype):
    rows, gamma, vocab, rank = shape
    case = markov_case(rows, gamma, vocab, rank, wdtype=wdtype, bdtype=bdtype, hidden=96)
    ours = draft(case, keep_logits=True)
    assert _kernel_ran("markov_block")
    with _dispatch.forced_reference():
        ref = draft(case, keep_logits=True)
    assert torch.equal(ours.logits, ref.logits)
    assert torch.equal(ours.tokens, ref.tokens)
    assert torch.equal(ours.stats.token_logits, ref.stats.token_logits)
    torch.testing.assert_close(ours.stats.max, ref.stats.max, rtol=0, atol=0)
    torch.testing.assert_close(ours.stats.sum, ref.stats.sum, rtol=1e-5, atol=0)
    torch.testing.assert_close(ours.confidence_logits, ref.confidence_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.confidence, ref.confidence, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("logits_dtype", [BF16, F16])
def test_markov_block_rounds_logits_to_the_step_dtype_like_the_reference(logits_dtype):
    case = markov_case(16, 7, 32000, 256, wdtype=BF16, bdtype=BF16)
    ours = draft(case, keep_logits=True, logits_dtype=logits_dtype)
    with _dispatch.forced_reference():
        ref = draft(case, keep_logits=True, logits_dtype=logits_dtype)
    assert ours.logits.dtype == logits_dtype
    assert torch.equal(ours.logits, ref.logits) and torch.equal(ours.tokens, ref.tokens)
    # A rejected row recomputed by chain_verify is rounded the same way.
    target = torch.cat([ours.logits, ours.logits[:, :1]], dim=1).to(BF16) + 0.5
    lens = torch.full((16,), 7, device=CUDA)
    assert_verify_matches(target, ours.stats, ours, lens, case["temperature"])


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_markov_block_tokens_differ_only_at_near_ties_on_real_valued_inputs(softcap):
    rows, gamma, vocab = 64, 7, 129280
    case = markov_case(rows, gamma, vocab, 256, dyadic=False, seed=1)
    ours = draft(case, keep_logits=True, logit_softcap=softcap)
    # Teacher-force the reference on our tokens: position k's scores given our x_{k-1}.
    prev = torch.cat([case["anchor"][:, None], ours.tokens[:, :-1]], dim=1)
    t = case["temperature"]
    sampled = t > 0
    safe_t = torch.where(sampled, t, torch.ones_like(t))[:, None]
    rows_idx = torch.arange(rows, device=CUDA)
    exact = 0
    for k in range(gamma):
        base = case["base_logits"][:, k].float()
        if softcap is not None:
            base = softcap * torch.tanh(base / softcap)
        logits = base + case["w1"][prev[:, k]].float() @ case["w2"].float().T
        torch.testing.assert_close(ours.logits[:, k], logits, rtol=1e-5, atol=1e-4)
        noise = rng.gumbel(7, 3, rng.Stream.DRAFT, rows_idx, torch.full_like(rows_idx, k), vocab)
        score = torch.where(sampled[:, None], logits / safe_t + noise, logits)
        best = score.argmax(-1)
        chosen = score.gather(1, ours.tokens[:, k : k + 1]).squeeze(1)
        gap = score[rows_idx, best] - chosen
        assert bool((gap <= 1e-4 * (1 + score[rows_idx, best].abs())).all()), f"position {k}: {gap.max()}"
        exact += int((best == ours.tokens[:, k]).sum())
    assert exact >= 0.99 * rows * gamma


def test_markov_block_reads_seed_and_offset_from_device_tensors_and_replays_in_a_graph():
    case = markov_case(8, 5, 4096, 64, hidden=32)
    seed, offset = torch.tensor(11, device=CUDA), torch.tensor(0, device=CUDA)
    draft(case, seed=seed, offset=offset, keep_logits=False)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = draft(case, seed=seed, offset=offset, keep_logits=False)
    for step in (1, 2, 2**40):
        offset.fill_(step)
        graph.replay()
        torch.cuda.synchronize()
        eager = draft(case, seed=11, offset=step, keep_logits=False)
        assert torch.equal(captured.tokens, eager.tokens)
        assert torch.equal(captured.stats.max, eager.stats.max)
        assert torch.equal(captured.confidence, eager.confidence)


def test_markov_block_falls_back_for_heads_it_does_not_cover(caplog):
    case = markov_case(4, 3, 512, 8, hidden=16)
    rank = 8
    head = markov.GatedMarkovHead(
        case["w1"], case["w2"], torch.randn(rank, 16 + rank, device=CUDA), torch.randn(rank, device=CUDA)
    )
    _dispatch._logged.clear()
    with caplog.at_level("INFO", logger="dspark_sgl"):
        block = markov.sample_block_with_head(
            case["base_logits"],
            case["anchor"],
            head,
            case["temperature"],
            seed=0,
            offset=0,
            hidden=case["hidden"],
        )
    assert block.tokens.shape == (4, 3)
    assert any("GatedMarkovHead has no CUDA kernel" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------
# chain_verify


def verify_case(rows, gamma, vocab, *, tdtype=BF16, seed=0, greedy_every=3):
    """A drafted block (kernel) and a target near the draft, so chains are partly accepted."""
    case = markov_case(rows, max(gamma, 1), vocab, 64, bdtype=tdtype, dyadic=False, seed=seed)
    case["temperature"][::greedy_every] = 0.0
    block = draft(case, keep_logits=True)
    gen = torch.Generator().manual_seed(seed + 100)
    noise = 0.8 * torch.randn(rows, gamma + 1, vocab, generator=gen).to(CUDA)
    target = torch.cat([block.logits[:, :gamma], block.logits[:, :1]], dim=1) + noise
    lens = torch.randint(0, gamma + 1, (rows,), generator=gen).to(CUDA)
    if gamma == 0:
        block = markov.DraftBlock(tokens=block.tokens[:, :0], logits=block.logits[:, :0], stats=None)
    return case, block, target.to(tdtype), lens


def assert_verify_matches(target, draft_side, block, lens, temperature, seed=9, offset=4):
    """Kernel vs reference; a row may differ only where the reference's decision is a near-tie."""
    acc, out = verify.chain_verify(
        target, draft_side, block.tokens, lens, temperature, seed=seed, offset=offset
    )
    assert _kernel_ran("chain_verify")
    with _dispatch.forced_reference():
        ref_acc, ref_out = verify.chain_verify(
            target, draft_side, block.tokens, lens, temperature, seed=seed, offset=offset
        )
    rows, g_plus_1, _ = target.shape
    greedy = temperature == 0
    # Greedy rows compare token ids only: exact.
    assert torch.equal(acc[greedy], ref_acc[greedy]) and torch.equal(out[greedy], ref_out[greedy])
    differ = (acc != ref_acc) | (out != ref_out).any(dim=1)
    for r in differ.nonzero().flatten().tolist():
        assert _near_tie(
            target[r], draft_side, block, r, lens, temperature, seed, offset, acc[r], ref_acc[r], out[r]
        )
    assert int(differ.sum()) <= max(1, rows // 50)
    # Layout: accepted drafts, one token, then -1.
    cols = torch.arange(g_plus_1, device=CUDA)
    assert bool(((out >= 0) == (cols[None, :] <= acc[:, None].long())).all())
    return acc, out


def _near_tie(target_r, draft_side, block, r, lens, temperature, seed, offset, acc, ref_acc, out) -> bool:
    """Whether row r's reference decision at the first difference is a float near-tie."""
    t = float(temperature[r])
    g = block.tokens.shape[1]
    scaled = target_r.float() / t
    p = torch.softmax(scaled, dim=-1)
    if isinstance(draft_side, markov.DraftStats):
        rows = block.tokens.shape[0]
        d_rows = torch.stack(
            [draft_side.row_logits(block.tokens, torch.full((rows,), k, device=CUDA))[r] for k in range(g)]
        )
    else:
        d_rows = draft_side[r].float()
    q = torch.softmax(d_rows / t, dim=-1)
    j = int(min(acc, ref_acc))
    if int(acc) != int(ref_acc):
        x = int(block.tokens[r, j])
        u = float(rng.uniform_scalar(seed, offset, rng.Stream.ACCEPT, torch.tensor(r), torch.tensor(j)))
        return abs(u * float(q[j, x]) - float(p[j, x])) <= 1e-5 * float(p[j, x]) + 1e-30
    # Same stop, different token: compare the two candidates' reference scores.
    noise = rng.gumbel(
        seed,
        offset,
        rng.Stream.RESAMPLE,
        torch.tensor([r], device=CUDA),
        torch.tensor([j], device=CUDA),
        p.shape[-1],
    )[0]
    rejected = j < int(lens[r])
    score = scaled[j] + noise
    if rejected:
        residual = (p[j] - q[j]).clamp(min=0)
        if bool((residual > 0).any()):
            score = torch.log(residual) + noise
    ours = score[int(out[j])]
    best = score.max()
    return float(best - ours) <= 1e-4 * (1 + abs(float(best)))


VERIFY_SHAPES = [(1, 5, 129280), (8, 7, 151936), (64, 5, 32000), (256, 7, 4099), (3, 0, 1000), (5, 16, 1000)]


@pytest.mark.parametrize("shape", VERIFY_SHAPES, ids=str)
@pytest.mark.parametrize("tdtype", [BF16, F32, F16], ids=str)
def test_chain_verify_from_logits_matches_the_reference(shape, tdtype):
    rows, gamma, vocab = shape
    case, block, target, lens = verify_case(rows, gamma, vocab, tdtype=tdtype)
    assert_verify_matches(target, block.logits, block, lens, case["temperature"])


@pytest.mark.parametrize("shape", [s for s in VERIFY_SHAPES if s[1] > 0], ids=str)
def test_chain_verify_from_draft_statistics_matches_the_reference(shape):
    rows, gamma, vocab = shape
    case, block, target, lens = verify_case(rows, gamma, vocab, tdtype=BF16)
    acc, out = assert_verify_matches(target, block.stats, block, lens, case["temperature"])
    # Both draft forms verify to the same tokens (up to the same near-ties).
    acc2, out2 = verify.chain_verify(
        target, block.logits, block.tokens, lens, case["temperature"], seed=9, offset=4
    )
    assert (acc == acc2).float().mean() >= 0.98 and (out == out2).all(dim=1).float().mean() >= 0.98


def test_chain_verify_all_accepted_gives_a_bonus_and_greedy_rows_the_argmax():
    case, block, _, _ = verify_case(16, 5, 4096, tdtype=F32, greedy_every=2)
    target = torch.cat([block.logits, block.logits[:, :1]], dim=1)  # target == draft: accept all
    lens = torch.full((16,), 5, device=CUDA)
    acc, out = verify.chain_verify(
        target, block.logits, block.tokens, lens, case["temperature"], seed=1, offset=1
    )
    assert bool((out.gather(1, acc.long()[:, None]) >= 0).all())  # a bonus / argmax token after them
    sampled = case["temperature"] > 0
    assert bool((acc[sampled] == 5).all())
    greedy = ~sampled
    expected = (block.tokens == target[:, :5].argmax(-1)).int().cumprod(1).sum(1)
    assert torch.equal(acc[greedy], expected[greedy].int())


def test_chain_verify_replays_in_a_graph_with_fresh_offsets():
    case, block, target, lens = verify_case(32, 7, 8192)
    seed, offset = torch.tensor(5, device=CUDA), torch.tensor(0, device=CUDA)
    for side in (block.logits, block.stats):
        verify.chain_verify(target, side, block.tokens, lens, case["temperature"], seed=seed, offset=offset)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            acc, out = verify.chain_verify(
                target, side, block.tokens, lens, case["temperature"], seed=seed, offset=offset
            )
        for step in (3, 4, 2**33):
            offset.fill_(step)
            graph.replay()
            torch.cuda.synchronize()
            eager = verify.chain_verify(
                target, side, block.tokens, lens, case["temperature"], seed=5, offset=step
            )
            assert torch.equal(acc, eager[0]) and torch.equal(out, eager[1])


# ---------------------------------------------------------------------------------------
# schedule_prefix

SPS = scheduler.SpsTable([(1, 100.0), (32, 90.0), (256, 60.0), (1024, 30.0), (8704, 4.0)])


def dyadic_confidence(rows, gamma, seed):
    """Confidences whose survivals and float64 sums are exact: bit-identical schedules."""
    gen = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0.0, 0.5, 0.625, 0.75, 0.875, 1.0])
    return levels[torch.randint(1, 6, (rows, gamma), generator=gen)]


SCHEDULE_SHAPES = [(1, 1), (1, 16), (7, 5), (64, 7), (256, 16), (512, 16), (300, 3)]


@pytest.mark.parametrize("shape", SCHEDULE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_schedulers_are_bit_identical_on_exact_confidences(shape, dtype):
    rows, gamma = shape
    conf = dyadic_confidence(rows, gamma, seed=rows * gamma).to(dtype)
    stale = dyadic_confidence(rows, gamma, seed=rows + 1).to(dtype)
    conf[0, 0] = 0.0  # a request with nothing to verify
    runs = {
        "causal": lambda c, s: scheduler.schedule_causal(c, SPS),
        "async": lambda c, s: scheduler.schedule_async(c, s, SPS),
        "async_prune": lambda c, s: scheduler.schedule_async(c, s, SPS, causal_prune=True),
        "topk_int": lambda c, s: scheduler.schedule_topk(c, rows * gamma // 3),
        "topk_tensor": lambda c, s: scheduler.schedule_topk(c, torch.tensor(rows, device=c.device)),
        "topk_causal": lambda c, s: scheduler.schedule_topk_causal(
            c, torch.tensor(2 * rows, device=c.device), SPS
        ),
    }
    for name, run in runs.items():
        ours = run(conf.to(CUDA), stale.to(CUDA))
        assert _kernel_ran("schedule_prefix")
        ref = run(conf, stale)
        assert ours.dtype == torch.int32
        assert torch.equal(ours.cpu(), ref), name


@pytest.mark.parametrize("seed", range(8))
def test_schedule_causal_differs_only_at_theta_near_ties_on_random_confidences(seed):
    gen = torch.Generator().manual_seed(seed)
    conf = torch.rand(256, 16, generator=gen)
    ours = scheduler.schedule_causal(conf.to(CUDA), SPS).cpu()
    ref = scheduler.schedule_causal(conf, SPS)
    if not torch.equal(ours, ref):
        theta = scheduler.throughput_path(scheduler.prefix_survival(conf), SPS)
        n = int(min(ours.sum(), ref.sum()))
        assert math.isclose(float(theta[n + 1]), float(theta[n]), rel_tol=1e-12)


def test_schedule_prefix_is_one_graph_capturable_launch():
    conf = torch.rand(256, 16, device=CUDA)
    stale = torch.rand(256, 16, device=CUDA)
    scheduler.schedule_async(conf, stale, SPS, causal_prune=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lengths = scheduler.schedule_async(conf, stale, SPS, causal_prune=True)
    for _ in range(3):
        conf.copy_(torch.rand(256, 16, device=CUDA))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(lengths, scheduler.schedule_async(conf, stale, SPS, causal_prune=True))
    # With value checks off (as on the plugin's hot path) a schedule is exactly one launch.
    for run in (
        lambda: scheduler.schedule_causal(conf, SPS),
        lambda: scheduler.schedule_async(conf, stale, SPS, causal_prune=True),
    ):
        assert _count_device_ops(run) == 1


def _count_device_ops(fn) -> int:
    """Kernels, copies and memsets that ``fn`` puts on the GPU."""
    with (
        _checks.trusted_values(),
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof,
    ):
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


# ---------------------------------------------------------------------------------------
# Lossless on the kernels: whole rounds (draft, schedule, verify) on the GPU.


@pytest.mark.parametrize("form", ["logits", "stats"])
@pytest.mark.parametrize("policy", ["full", "causal", "async_prune"])
def test_lossless_on_the_gpu_kernels(form, policy):
    world = World(seed=41, temperature=0.9)
    # 2000 rows x g = 4 stays within the scheduling kernel's 8192 candidates.
    tokens, _ = generate(world, policy, seed=42, rows=2000, device="cuda", form=form)
    assert _kernel_ran("markov_block") and _kernel_ran("chain_verify") and _kernel_ran("schedule_prefix")
    check_iid_p(f"GPU kernels, {form}, {policy}", tokens, world.p())


def test_markov_block_refuses_a_confidence_head_on_another_device():
    case = markov_case(4, 3, 512, 8, hidden=16)
    case["conf_weight"] = case["conf_weight"].cpu()
    case["sts_temperatures"] = None
    with pytest.raises(ValueError, match="the confidence head is on cpu"):
        draft(case)
