"""The CUDA kernels markov_block, chain_verify and schedule_prefix against their references.

Every test takes the ``backend`` fixture (tests/kernel_backend.py): it runs on the CPU emulator in
CI at small shapes and on a lent GPU at full shapes; ``backend.size(full, small)`` picks the shape.
Equality is exact where the inputs make every float operation exact (dyadic weights and
confidences); elsewhere a differing token is accepted only when the reference's own decision was
a floating-point near-tie, which the helpers below check explicitly. The draft sampler's group sums
are float32 ex2.approx sums in the kernel and float64 in the reference: its tokens are compared up
to those near-ties (tests/draft_ties.py), except where every group's mass sits in one column. On a
device, .ci/gpu also runs this file under compute-sanitizer (memcheck, racecheck, synccheck).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import record_p_value
from draft_ties import assert_draft_tokens_match, is_draft_near_tie
from test_lossless import P_MIN, World, check_iid_p, chi_square, generate

from dspark_sgl import _checks, _dispatch, markov, rng, scheduler, verify

BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
DTYPES = (F32, BF16, F16)
CUDA_GRAPHS_ONLY = "CUDA graph capture and replay need a real device (the emulator launches synchronously)"


def needs_cuda_graphs(backend) -> None:
    if backend.name != "cuda":
        pytest.skip(CUDA_GRAPHS_ONLY)


# ---------------------------------------------------------------------------------------
# markov_block


def markov_case(device, rows, gamma, vocab, rank, *, wdtype=BF16, bdtype=BF16, dyadic=True, hidden=0, seed=0):
    """Inputs of one block on ``device``. Dyadic values make every product and sum of the
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
        base_logits=base.to(device, bdtype),
        anchor=torch.randint(0, vocab, (rows,), generator=gen).to(device),
        w1=w1.to(device, wdtype),
        w2=w2.to(device, wdtype),
        temperature=temperature.to(device),
    )
    if hidden:
        case["hidden"] = torch.randn(rows, gamma, hidden, generator=gen).to(device, bdtype)
        case["conf_weight"] = torch.randn(hidden + rank, generator=gen).to(device)
        case["conf_bias"] = 0.3
        case["sts_temperatures"] = (torch.rand(gamma, generator=gen) + 0.5).to(device)
    return case


def draft(case, *, seed=7, offset=3, **kw) -> markov.DraftBlock:
    return markov.sample_block(**case, seed=seed, offset=offset, **kw)


# (rows, gamma, vocab, rank) on a device, and on the emulator. 16-bit weights use 256-wide vocabulary
# tiles (128-wide above r = 256: "rank512") at every R, in chunks of 64 rows (16 rows a pair of warps;
# warps without a row skip the MMA); float32 weights 64-wide tiles in chunks of 32 rows.
MARKOV_SHAPES = {
    "R1-g1": ((1, 1, 1000, 256), (1, 1, 1000, 256)),
    "R1-g7-big-V": ((1, 7, 129280, 256), (1, 7, 4096, 256)),
    "R8-g5-big-V": ((8, 5, 151936, 256), (8, 5, 2048, 64)),
    # g = 16, odd vocabulary (not a multiple of either tile), rank not a multiple of 8 (scalar staging)
    "R33-g16-odd-V-r200": ((33, 16, 4099, 200), (33, 16, 1100, 200)),
    "rank512": ((64, 7, 129280, 512), (3, 2, 1536, 512)),
    # rows above one chunk on either path (a second 16-bit chunk of 6 rows: one warp's MMA)
    "many-rows": ((256, 5, 32000, 64), (70, 3, 1025, 64)),
}
# markov_block's launches: every position in one cooperative launch (the default), or one per position
MARKOV_LAUNCHES = {"persistent": "1", "per-position": "0"}
# (weight dtype, base-logit dtype): every instantiation on the exact-input test's first shapes
DTYPE_PAIRS = [(w, b) for w in DTYPES for b in DTYPES]


def assert_blocks_match(
    ours: markov.DraftBlock,
    ref: markov.DraftBlock,
    temperature: torch.Tensor,
    *,
    seed: int = 7,
    offset: int = 3,
    first_position: int = 0,
    vocab_start: int = 0,
) -> torch.Tensor:
    """Kernel and reference blocks of exact inputs: the tokens equal up to the grouped sampler's
    near-ties (``assert_draft_tokens_match``); on the rows whose tokens all agree, the logits,
    token logits and max bit-identical, the sums to float32 rounding, the keys (token_scores) to the
    kernel's ex2 / lg2 rounding. Returns those rows (bool [R])."""
    assert_draft_tokens_match(
        ours,
        ref,
        temperature.cpu(),
        seed=seed,
        offset=offset,
        first_position=first_position,
        vocab_start=vocab_start,
    )
    same = (ours.tokens == ref.tokens).all(dim=1)
    if ref.logits is not None:
        assert torch.equal(ours.logits[same], ref.logits[same])
    assert torch.equal(ours.stats.token_logits[same], ref.stats.token_logits[same])
    torch.testing.assert_close(ours.stats.max[same], ref.stats.max[same], rtol=0, atol=0)
    torch.testing.assert_close(ours.stats.sum[same], ref.stats.sum[same], rtol=1e-5, atol=0)
    torch.testing.assert_close(
        ours.stats.token_scores[same], ref.stats.token_scores[same], rtol=1e-5, atol=1e-5
    )
    if ref.confidence is not None:
        torch.testing.assert_close(
            ours.confidence_logits[same], ref.confidence_logits[same], rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(ours.confidence[same], ref.confidence[same], rtol=1e-5, atol=1e-6)
    return same


@pytest.mark.parametrize("launch", MARKOV_LAUNCHES, ids=str)
@pytest.mark.parametrize("shape", list(MARKOV_SHAPES), ids=str)
@pytest.mark.parametrize(("wdtype", "bdtype"), [(BF16, BF16), (F32, F32), (F16, F32), (BF16, F32)], ids=str)
def test_markov_block_is_bit_identical_on_exact_inputs(backend, monkeypatch, launch, shape, wdtype, bdtype):
    monkeypatch.setenv(markov.PERSISTENT_ENV, MARKOV_LAUNCHES[launch])
    rows, gamma, vocab, rank = backend.size(*MARKOV_SHAPES[shape])
    case = markov_case(backend.device, rows, gamma, vocab, rank, wdtype=wdtype, bdtype=bdtype, hidden=96)
    ours = draft(case, keep_logits=True)
    assert backend.ran("markov_block")
    with _dispatch.forced_reference():
        ref = draft(case, keep_logits=True)
    assert_blocks_match(ours, ref, case["temperature"])


@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
@pytest.mark.parametrize("shape", ["R1-g7-big-V", "R8-g5-big-V", "rank512"], ids=str)
def test_markov_block_plain_16bit_path_matches_on_exact_inputs(backend, shape, dtype):
    """What SGLang's statistics-form step runs (no logits kept, step logits in the weights'
    dtype, V % 4 == 0): the packed 16-bit adds and maxima of the plain epilogue."""
    rows, gamma, vocab, rank = backend.size(*MARKOV_SHAPES[shape])
    assert vocab % 4 == 0
    case = markov_case(backend.device, rows, gamma, vocab, rank, wdtype=dtype, bdtype=dtype, seed=2)
    ours = draft(case, keep_logits=False, logits_dtype=dtype)
    assert backend.ran("markov_block")
    assert ours.logits is None
    with _dispatch.forced_reference():
        ref = draft(case, keep_logits=False, logits_dtype=dtype)
    same = assert_blocks_match(ours, ref, case["temperature"])
    assert bool(same.any())


@pytest.mark.parametrize(("wdtype", "bdtype"), DTYPE_PAIRS, ids=str)
@pytest.mark.parametrize("shape", ["R8-g5-big-V", "many-rows"], ids=str)
def test_markov_block_is_bit_identical_for_every_dtype_pair(backend, shape, wdtype, bdtype):
    rows, gamma, vocab, rank = backend.size(*MARKOV_SHAPES[shape])
    case = markov_case(backend.device, rows, gamma, vocab, rank, wdtype=wdtype, bdtype=bdtype, hidden=24)
    case["hidden"] = case["hidden"].to(wdtype)  # the hidden-state dtype follows the weights here
    ours = draft(case, keep_logits=True)
    assert backend.ran("markov_block")
    with _dispatch.forced_reference():
        ref = draft(case, keep_logits=True)
    assert_blocks_match(ours, ref, case["temperature"])


def _masked_base(case):
    """-inf on a third of the base logits (never a whole row: every row keeps its anchor column)."""
    base = case["base_logits"]
    gen = torch.Generator().manual_seed(5)
    mask = torch.rand(base.shape, generator=gen) < 1 / 3
    mask[..., 0] = False
    case["base_logits"] = base.masked_fill(mask.to(base.device), float("-inf"))


def _confidence_without_the_markov_feature(case):
    case["conf_weight"] = case["conf_weight"][: case["hidden"].shape[-1]].contiguous()


def _confidence_bias_on_the_device(case):
    case["conf_bias"] = torch.tensor(-0.7, device=case["w1"].device)


def _no_sts(case):
    case["sts_temperatures"] = None


def _weights_off_16_bytes(case):
    """W1 and W2 as contiguous views 4 elements into their storage, not 16-byte aligned (the
    kernel's cp.async staging needs aligned rows: the launcher must realign them)."""
    for name in ("w1", "w2"):
        w = case[name]
        storage = torch.empty(w.numel() + 4, dtype=w.dtype, device=w.device)
        case[name] = storage[4:].view(w.shape)
        case[name].copy_(w)


MARKOV_VARIANTS = {
    "masked-base": _masked_base,
    "conf-without-markov-feature": _confidence_without_the_markov_feature,
    "conf-bias-tensor": _confidence_bias_on_the_device,
    "sts-none": _no_sts,
    "weights-off-16-bytes": _weights_off_16_bytes,
}


@pytest.mark.race_schedule
@pytest.mark.parametrize("variant", list(MARKOV_VARIANTS))
def test_markov_block_is_bit_identical_on_input_and_head_variants(backend, variant):
    rows, gamma, vocab, rank = backend.size((64, 7, 32000, 256), (40, 3, 1100, 64))
    for wdtype in (BF16, F32):  # both tile widths (rows > 32)
        case = markov_case(backend.device, rows, gamma, vocab, rank, wdtype=wdtype, bdtype=BF16, hidden=40)
        MARKOV_VARIANTS[variant](case)
        ours = draft(case, keep_logits=True)
        assert backend.ran("markov_block")
        with _dispatch.forced_reference():
            ref = draft(case, keep_logits=True)
        assert_blocks_match(ours, ref, case["temperature"])


@pytest.mark.race_schedule
@pytest.mark.parametrize("logits_dtype", [BF16, F16])
def test_markov_block_rounds_logits_to_the_step_dtype_like_the_reference(backend, logits_dtype):
    rows, gamma, vocab = backend.size((16, 7, 32000), (16, 4, 2048))
    case = markov_case(backend.device, rows, gamma, vocab, 256, wdtype=BF16, bdtype=BF16)
    ours = draft(case, keep_logits=True, logits_dtype=logits_dtype)
    with _dispatch.forced_reference():
        ref = draft(case, keep_logits=True, logits_dtype=logits_dtype)
    assert ours.logits.dtype == logits_dtype
    assert_blocks_match(ours, ref, case["temperature"])
    # A rejected row recomputed by chain_verify is rounded the same way.
    target = torch.cat([ours.logits, ours.logits[:, :1]], dim=1).to(BF16) + 0.5
    lens = torch.full((rows,), gamma, device=backend.device)
    assert_verify_matches(backend, target, ours.stats, ours, lens, case["temperature"])


def test_markov_block_draws_bit_identical_tokens_when_each_group_has_one_column_of_mass(backend):
    # Every group of 16 columns holds one finite logit (the rest -inf): each group's sum is one
    # exponential, exact on both sides, and the draw inside the group has one choice. The group keys
    # still differ by the kernel's ex2 / lg2 rounding (about 1e-6), far below the keys' spacing.
    rows, gamma, vocab, rank = backend.size((64, 5, 32000, 64), (24, 3, 1100, 64))
    case = markov_case(backend.device, rows, gamma, vocab, rank, seed=6)
    gen = torch.Generator().manual_seed(6)
    hot = torch.randint(0, 16, (rows, gamma, (vocab + 15) // 16), generator=gen)
    hot = (hot + 16 * torch.arange(hot.shape[-1])).clamp_max(vocab - 1)
    mask = torch.ones(rows, gamma, vocab, dtype=torch.bool).scatter_(2, hot, False)
    case["base_logits"] = case["base_logits"].masked_fill(mask.to(backend.device), float("-inf"))
    case["temperature"][::4] = 1.0
    for wdtype in (BF16, F32):
        case["w1"], case["w2"] = case["w1"].to(wdtype), case["w2"].to(wdtype)
        ours = draft(case, keep_logits=True)
        assert backend.ran("markov_block")
        with _dispatch.forced_reference():
            ref = draft(case, keep_logits=True)
        assert torch.equal(ours.tokens, ref.tokens)
        assert torch.equal(ours.logits, ref.logits)
        assert torch.equal(ours.stats.token_logits, ref.stats.token_logits)
        torch.testing.assert_close(ours.stats.token_scores, ref.stats.token_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.race_schedule
def test_markov_block_low_logit_columns_win_through_large_noise(backend):
    # One column 8 / T above the rest in scaled logits (T = 4): about a quarter of the rows are
    # won by another column through the groups' Gumbel draws; the kernel must pick the same (up to
    # the sampler's near-ties).
    rows, gamma, vocab, rank = backend.size((64, 5, 32000, 64), (16, 4, 1100, 64))
    gen = torch.Generator().manual_seed(3)
    case = markov_case(backend.device, rows, gamma, vocab, rank, seed=3)
    case["w1"] = (torch.randint(-2, 3, (vocab, rank), generator=gen) / 64).to(backend.device, BF16)
    base = torch.randint(-16, 17, (rows, gamma, vocab), generator=gen) / 16
    hot = torch.randint(0, vocab, (rows, gamma), generator=gen)
    base.scatter_(2, hot[:, :, None], 32.0)
    case["base_logits"] = base.to(backend.device, BF16)
    case["temperature"] = torch.full((rows,), 4.0, device=backend.device)
    ours = draft(case, keep_logits=True)
    assert backend.ran("markov_block")
    with _dispatch.forced_reference():
        ref = draft(case, keep_logits=True)
    assert_blocks_match(ours, ref, case["temperature"])
    won_by_noise = (ref.stats.token_logits < 16).float().mean().item()  # not the hot column
    assert 0.05 < won_by_noise < 0.6


@pytest.mark.race_schedule
def test_markov_block_mixes_greedy_unit_temperature_sampled_masked_and_nan_rows(backend, monkeypatch):
    # Greedy rows, T = 1 (no division), other temperatures, -inf columns, columns far below the
    # rest (never drawn), and NaN logits (value checks off) in one block.
    monkeypatch.setenv("DSPARK_SGL_CHECK_VALUES", "0")
    rows, gamma, vocab, rank = backend.size((48, 5, 32000, 64), (12, 3, 1100, 64))
    case = markov_case(backend.device, rows, gamma, vocab, rank, seed=4)
    _masked_base(case)
    base = case["base_logits"].float().cpu()
    gen = torch.Generator().manual_seed(4)
    far = torch.rand(base.shape, generator=gen) < 0.2
    far[..., 0] = False
    base = base.masked_fill(far, -40.0)
    nan_rows = (4, 5, 7)  # greedy, T = 1, T = 0.5
    base[4, 1, 17] = base[5, 1, 3] = base[7, 0, 600] = base[7, 0, 601] = float("nan")
    case["base_logits"] = base.to(backend.device, BF16)
    temperature = torch.tensor([0.0, 1.0, 0.7, 3.0, 0.0, 1.0, 2.5, 0.5, 1.0, 0.0, 1.3, 1.0])
    case["temperature"] = temperature.repeat(rows // 12 + 1)[:rows].to(backend.device)
    ours = draft(case, keep_logits=True)
    assert backend.ran("markov_block")
    with _dispatch.forced_reference():
        ref = draft(case, keep_logits=True)
    same = (ours.tokens == ref.tokens).all(dim=1)
    assert_draft_tokens_match(ours, ref, case["temperature"].cpu(), seed=7, offset=3)
    assert bool(same[list(nan_rows)].all())  # a NaN row draws its first NaN on both sides
    assert torch.equal(ours.logits.isnan(), ref.logits.isnan())
    torch.testing.assert_close(
        ours.stats.token_logits[same], ref.stats.token_logits[same], rtol=0, atol=0, equal_nan=True
    )
    assert ref.tokens[4, 1] == 17 and ref.tokens[5, 1] == 3 and ref.tokens[7, 0] == 600  # the first NaN wins
    clean = same.clone()
    clean[list(nan_rows)] = False
    torch.testing.assert_close(ours.stats.max[clean], ref.stats.max[clean], rtol=0, atol=0)
    torch.testing.assert_close(ours.stats.sum[clean], ref.stats.sum[clean], rtol=1e-5, atol=0)


def test_markov_block_rare_rows_plus_inf_overflowing_temperature_and_masked_tiles(backend, monkeypatch):
    # The out-of-line rare path's other cases (NaN rows: the test above), position 0 of each row:
    # row 0 (T = 1) and row 1 (greedy) hold two +inf logits: the first wins; row 2's x = l / T
    # overflows to +inf at one column only; row 3's x is finite but m log2(e) / T is beyond float
    # (the fast path's exp2 argument): its far largest logit wins; row 4 has whole vocabulary tiles
    # of -inf (both tile widths) beside finite ones; row 5 is -inf everywhere: its first column.
    monkeypatch.setenv("DSPARK_SGL_CHECK_VALUES", "0")
    rows, gamma, vocab, rank = backend.size((8, 2, 32000, 64), (8, 2, 1100, 64))
    case = markov_case(backend.device, rows, gamma, vocab, rank, seed=9)
    base = case["base_logits"].float().cpu()
    base[0, 0, 40] = base[0, 0, 900] = base[1, 0, 41] = base[1, 0, 700] = float("inf")
    base[2, 0, 77] = 1000.0
    base[3, 0, 55] = 248.0
    base[4, 0, 128:384] = float("-inf")
    base[5, 0, :] = float("-inf")
    case["base_logits"] = base.to(backend.device, BF16)
    temperature = torch.tensor([1.0, 0.0, 1e-36, 1e-36, 1.0, 1.0, 0.7, 0.0])
    case["temperature"] = temperature.to(backend.device)
    ours = draft(case, keep_logits=True)
    assert backend.ran("markov_block")
    with _dispatch.forced_reference():
        ref = draft(case, keep_logits=True)
    logits = ref.logits[:, 0].float().cpu()
    t = torch.tensor(1e-36, dtype=torch.float32)
    assert torch.isposinf(logits[2] / t).nonzero().flatten().tolist() == [77]  # the case it claims
    assert torch.isfinite(logits[3] / t).all() and torch.isinf(logits[3, 55] * math.log2(math.e) / t)
    expected = {0: 40, 1: 41, 2: 77, 3: 55, 5: 0}
    assert {r: int(ref.tokens[r, 0]) for r in expected} == expected
    assert {r: int(ours.tokens[r, 0]) for r in expected} == expected
    assert not bool(ref.logits[4, 0, 128:384].isfinite().any())
    assert not 128 <= int(ours.tokens[4, 0]) < 384
    assert_draft_tokens_match(ours, ref, case["temperature"].cpu(), seed=7, offset=3)
    assert torch.equal(ours.logits.isnan(), ref.logits.isnan())
    assert torch.equal(ours.logits.isinf(), ref.logits.isinf())
    scores = ours.stats.token_scores[:, 0].cpu()
    assert torch.isposinf(scores[[0, 2]]).all()  # +inf keys
    assert torch.isneginf(scores[5])  # an all -inf row's key
    assert torch.isposinf(ours.stats.token_logits[[0, 1], 0].cpu()).all()


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_markov_block_tokens_differ_only_at_near_ties_on_real_valued_inputs(backend, softcap):
    rows, gamma, vocab = backend.size((64, 7, 129280), (16, 4, 4096))
    case = markov_case(backend.device, rows, gamma, vocab, 256, dyadic=False, seed=1)
    ours = draft(case, keep_logits=True, logit_softcap=softcap)
    assert backend.ran("markov_block")
    # Teacher-force the reference on our tokens: position k's logits given our x_{k-1}.
    prev = torch.cat([case["anchor"][:, None], ours.tokens[:, :-1]], dim=1)
    t = case["temperature"]
    exact = 0
    for k in range(gamma):
        base = case["base_logits"][:, k].float()
        if softcap is not None:
            base = markov.softcap(base, softcap)
        # The bias in the weights' dtype (SGLang's Linear), as markov_bias computes it; summed in
        # another order, a bias may round to the neighbouring bf16 value (one ulp of it).
        bias = markov.markov_bias(case["w1"], case["w2"], prev[:, k])
        logits = base + bias
        slack = 1e-4 + 2.0**-7 * bias.abs()
        assert bool(((ours.logits[:, k] - logits).abs() <= slack).all()), f"position {k}"
        # The draw itself, from our logits: the reference's token up to the sampler's near-ties.
        step = ours.logits[:, k].float()
        ref_tokens, _ = markov.draft_sample(step, t, seed=7, offset=3, stream=rng.Stream.DRAFT, position=k)
        for r in (ref_tokens != ours.tokens[:, k]).nonzero()[:, 0].tolist():
            mine, theirs = int(ours.tokens[r, k]), int(ref_tokens[r])
            tie = is_draft_near_tie(
                step[r].cpu(), float(t[r]), mine, theirs, seed=7, offset=3, row=r, position=k
            )
            assert tie, f"position {k} row {r}: {mine} vs the reference's {theirs} is no near-tie"
        exact += int((ref_tokens == ours.tokens[:, k]).sum())
    assert exact >= 0.99 * rows * gamma


def test_markov_block_reads_seed_and_offset_from_device_tensors(backend):
    case = markov_case(backend.device, 8, 5, 4096, 64, hidden=32)
    seed, offset = backend.tensor(11), backend.tensor(0)
    for step in (1, 2, 2**40):
        offset.fill_(step)
        from_tensors = draft(case, seed=seed, offset=offset, keep_logits=False)
        from_ints = draft(case, seed=11, offset=step, keep_logits=False)
        assert backend.ran("markov_block")
        assert torch.equal(from_tensors.tokens, from_ints.tokens)
        assert torch.equal(from_tensors.stats.max, from_ints.stats.max)
        assert torch.equal(from_tensors.confidence, from_ints.confidence)


@pytest.mark.parametrize("launch", MARKOV_LAUNCHES, ids=str)
def test_markov_block_replays_in_a_cuda_graph(backend, monkeypatch, launch):
    needs_cuda_graphs(backend)
    monkeypatch.setenv(markov.PERSISTENT_ENV, MARKOV_LAUNCHES[launch])
    case = markov_case(backend.device, 8, 5, 4096, 64, hidden=32)
    seed, offset = backend.tensor(11), backend.tensor(0)
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


def test_markov_block_falls_back_for_heads_it_does_not_cover(backend, caplog):
    case = markov_case(backend.device, 4, 3, 512, 8, hidden=16)
    rank = 8
    head = markov.GatedMarkovHead(
        case["w1"],
        case["w2"],
        torch.randn(rank, 16 + rank, device=backend.device),
        torch.randn(rank, device=backend.device),
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
    assert not backend.ran("markov_block")
    assert any("GatedMarkovHead has no CUDA kernel" in r.getMessage() for r in caplog.records)


def test_markov_block_refuses_a_confidence_head_on_another_device(backend):
    if backend.name != "cuda":
        pytest.skip("needs a second device (the CPU beside a GPU); the emulator's device is the CPU")
    case = markov_case(backend.device, 4, 3, 512, 8, hidden=16)
    case["conf_weight"] = case["conf_weight"].cpu()
    case["sts_temperatures"] = None
    with pytest.raises(ValueError, match="the confidence head is on cpu"):
        draft(case)


# ---------------------------------------------------------------------------------------
# chain_verify


def verify_case(
    device, rows, gamma, vocab, *, tdtype=BF16, wdtype=BF16, logits_dtype=F32, seed=0, greedy_every=3, rank=64
):
    """A drafted block (kernel) and a target near the draft, so chains are partly accepted. The
    base logits are in the target's dtype (as the statistics form needs), the Markov weights (rank
    ``rank``) in ``wdtype``, the kept draft logits in ``logits_dtype``."""
    case = markov_case(
        device, rows, max(gamma, 1), vocab, rank, wdtype=wdtype, bdtype=tdtype, dyadic=False, seed=seed
    )
    case["temperature"][::greedy_every] = 0.0
    block = draft(case, keep_logits=True, logits_dtype=logits_dtype)
    gen = torch.Generator().manual_seed(seed + 100)
    noise = 0.8 * torch.randn(rows, gamma + 1, vocab, generator=gen).to(device)
    target = torch.cat([block.logits[:, :gamma], block.logits[:, :1]], dim=1) + noise
    lens = torch.randint(0, gamma + 1, (rows,), generator=gen).to(device)
    if gamma == 0:
        block = markov.DraftBlock(tokens=block.tokens[:, :0], logits=block.logits[:, :0], stats=None)
    return case, block, target.to(tdtype), lens


def assert_verify_matches(backend, target, draft_side, block, lens, temperature, seed=9, offset=4):
    """Kernel vs reference; a row may differ only where the reference's decision is a near-tie."""
    acc, out = verify.chain_verify(
        target, draft_side, block.tokens, lens, temperature, seed=seed, offset=offset
    )
    assert backend.ran("chain_verify")
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
    cols = torch.arange(g_plus_1, device=target.device)
    assert bool(((out >= 0) == (cols[None, :] <= acc[:, None].long())).all())
    return acc, out


def _near_tie(target_r, draft_side, block, r, lens, temperature, seed, offset, acc, ref_acc, out) -> bool:
    """Whether row r's reference decision at the first difference is a float near-tie."""
    device = target_r.device
    t = float(temperature[r])
    g = block.tokens.shape[1]
    scaled = target_r.float() / t
    p = torch.softmax(scaled, dim=-1)
    if isinstance(draft_side, markov.DraftStats):
        rows = block.tokens.shape[0]
        d_rows = torch.stack(
            [draft_side.row_logits(block.tokens, torch.full((rows,), k, device=device))[r] for k in range(g)]
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
        torch.tensor([r], device=device),
        torch.tensor([j], device=device),
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


# (rows, gamma, vocab) on a device, and on the emulator
VERIFY_SHAPES = {
    "R1-big-V": ((1, 5, 129280), (1, 5, 4096)),
    "R8-g7-big-V": ((8, 7, 151936), (8, 7, 4099)),
    "R64": ((64, 5, 32000), (64, 5, 1024)),
    "R256-odd-V": ((256, 7, 4099), (40, 3, 1001)),
    "g0": ((3, 0, 1000), (3, 0, 1000)),
    "g16": ((5, 16, 1000), (5, 16, 1000)),
}


@pytest.mark.parametrize("shape", list(VERIFY_SHAPES), ids=str)
@pytest.mark.parametrize("tdtype", [BF16, F32, F16], ids=str)
def test_chain_verify_from_logits_matches_the_reference(backend, shape, tdtype):
    rows, gamma, vocab = backend.size(*VERIFY_SHAPES[shape])
    case, block, target, lens = verify_case(backend.device, rows, gamma, vocab, tdtype=tdtype)
    assert_verify_matches(backend, target, block.logits, block, lens, case["temperature"])


@pytest.mark.parametrize("ddtype", DTYPES, ids=str)
@pytest.mark.parametrize("tdtype", DTYPES, ids=str)
def test_chain_verify_matches_the_reference_for_every_dtype_pair(backend, tdtype, ddtype):
    """Target dtype x draft dtype: the kept draft logits (logits form) or the Markov weights
    (statistics form) in ``ddtype``."""
    rows, gamma, vocab = backend.size((8, 7, 151936), (8, 3, 1100))
    case, block, target, lens = verify_case(
        backend.device, rows, gamma, vocab, tdtype=tdtype, wdtype=ddtype, logits_dtype=ddtype
    )
    assert block.logits.dtype == ddtype and block.stats.w2.dtype == ddtype
    for side in (block.logits, block.stats):
        assert_verify_matches(backend, target, side, block, lens, case["temperature"])


@pytest.mark.race_schedule
@pytest.mark.parametrize("shape", [s for s in VERIFY_SHAPES if s != "g0"], ids=str)
def test_chain_verify_from_draft_statistics_matches_the_reference(backend, shape):
    rows, gamma, vocab = backend.size(*VERIFY_SHAPES[shape])
    case, block, target, lens = verify_case(backend.device, rows, gamma, vocab, tdtype=BF16)
    acc, out = assert_verify_matches(backend, target, block.stats, block, lens, case["temperature"])
    # Both draft forms verify to the same tokens (up to the same near-ties).
    acc2, out2 = verify.chain_verify(
        target, block.logits, block.tokens, lens, case["temperature"], seed=9, offset=4
    )
    assert (acc == acc2).float().mean() >= 0.98 and (out == out2).all(dim=1).float().mean() >= 0.98


@pytest.mark.race_schedule
def test_chain_verify_in_two_launches_matches_the_reference(backend):
    """The statistics form where the recompute tile's shared memory would cost pass 1 occupancy
    (r = 256 at R > 32: the 128-wide tile, 84 KB) runs pass 2 as a programmatic dependent."""
    rows, gamma, vocab = backend.size((64, 5, 32000), (40, 3, 1100))
    case, block, target, lens = verify_case(backend.device, rows, gamma, vocab, tdtype=BF16, rank=256)
    assert_verify_matches(backend, target, block.stats, block, lens, case["temperature"])
    assert counters_at_rest()


@pytest.mark.race_schedule
def test_chain_verify_all_accepted_gives_a_bonus_and_greedy_rows_the_argmax(backend):
    case, block, _, _ = verify_case(backend.device, 16, 5, 4096, tdtype=F32, greedy_every=2)
    target = torch.cat([block.logits, block.logits[:, :1]], dim=1)  # target == draft: accept all
    lens = torch.full((16,), 5, device=backend.device)
    acc, out = verify.chain_verify(
        target, block.logits, block.tokens, lens, case["temperature"], seed=1, offset=1
    )
    assert backend.ran("chain_verify")
    assert bool((out.gather(1, acc.long()[:, None]) >= 0).all())  # a bonus / argmax token after them
    sampled = case["temperature"] > 0
    assert bool((acc[sampled] == 5).all())
    greedy = ~sampled
    expected = (block.tokens == target[:, :5].argmax(-1)).int().cumprod(1).sum(1)
    assert torch.equal(acc[greedy], expected[greedy].int())


def test_chain_verify_reads_seed_and_offset_from_device_tensors(backend):
    case, block, target, lens = verify_case(backend.device, 8, 5, 2048)
    seed, offset = backend.tensor(5), backend.tensor(0)
    for side in (block.logits, block.stats):
        for step in (3, 2**33):
            offset.fill_(step)
            acc, out = verify.chain_verify(
                target, side, block.tokens, lens, case["temperature"], seed=seed, offset=offset
            )
            eager = verify.chain_verify(
                target, side, block.tokens, lens, case["temperature"], seed=5, offset=step
            )
            assert backend.ran("chain_verify")
            assert torch.equal(acc, eager[0]) and torch.equal(out, eager[1])


@pytest.mark.parametrize(("rows", "rank"), [(32, 64), (40, 256)], ids=["one-launch", "two-launches"])
def test_chain_verify_replays_in_a_graph_with_fresh_offsets(backend, rows, rank):
    needs_cuda_graphs(backend)
    case, block, target, lens = verify_case(backend.device, rows, 7, 8192, rank=rank)
    seed, offset = backend.tensor(5), backend.tensor(0)
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


def counters_at_rest() -> bool:
    """Every cached chain_verify counter is zero again (each launch resets what it used)."""
    return all(not bool(c.any()) for c in verify._COUNTERS.values())


def accepting_case(backend, rows, gamma, vocab, *, reject_at=None, seed=0, greedy_every=3, rank=64):
    """A block whose target equals its draft logits (every sampled draft is accepted: p == q), with
    row r rejected at position ``reject_at[r]`` (None: not rejected): there the draft token's
    target logit is -1e4 (p = 0: a sampled row rejects) and the greedy argmax moves elsewhere."""
    case, block, _, _ = verify_case(
        backend.device, rows, gamma, vocab, tdtype=F32, seed=seed, greedy_every=greedy_every, rank=rank
    )
    target = torch.cat([block.logits[:, :gamma], block.logits[:, :1]], dim=1).float().clone()
    for r, j in enumerate(reject_at or []):
        if j is not None and j < gamma:
            x = int(block.tokens[r, j])
            target[r, j, x] = -1e4
            target[r, j, (x + 1) % vocab] = float(target[r, j].max()) + 1.0
    return case, block, target, torch.full((rows,), gamma, device=backend.device)


@pytest.mark.race_schedule
def test_chain_verify_rejects_at_every_position_with_all_positions_tested_at_once(backend):
    """Row r rejects at position r % (g + 1) (g + 1: nothing rejected): the ballot's first failure."""
    gamma = 7
    rows, vocab = backend.size((64, 32000), (16, 1024))
    reject_at = [r % (gamma + 1) for r in range(rows)]
    case, block, target, lens = accepting_case(backend, rows, gamma, vocab, reject_at=reject_at)
    for side in (block.logits, block.stats):
        acc, _ = assert_verify_matches(backend, target, side, block, lens, case["temperature"])
        assert acc.tolist() == [min(j, gamma) for j in reject_at]
        assert counters_at_rest()


@pytest.mark.race_schedule
def test_chain_verify_counters_serve_repeated_launches_and_the_rejected_flag_both_ways(backend):
    """One sequence on the same counters, as graph replays would run it: nothing rejected, some
    rows rejected, nothing rejected, every sampled row rejected; each call matches the reference,
    a repeated call gives the same tokens, and every counter is zero after every launch."""
    gamma = 5
    rows, vocab = backend.size((32, 8192), (12, 1024))
    verify.forget_counters()
    sequence = [[None] * rows, [r % gamma if r % 2 else None for r in range(rows)], [None] * rows, [1] * rows]
    for step, reject_at in enumerate(sequence):
        case, block, target, lens = accepting_case(
            backend, rows, gamma, vocab, reject_at=reject_at, seed=step
        )
        for side in (block.stats, block.logits):
            acc, out = assert_verify_matches(backend, target, side, block, lens, case["temperature"])
            expected = [gamma if j is None else j for j in reject_at]
            assert acc.tolist() == expected
            assert counters_at_rest()
            again = verify.chain_verify(
                target, side, block.tokens, lens, case["temperature"], seed=9, offset=4
            )
            assert torch.equal(again[0], acc) and torch.equal(again[1], out)
            assert counters_at_rest()
    assert len(verify._COUNTERS) == 1  # one buffer for the whole sequence


@pytest.mark.race_schedule
@pytest.mark.parametrize("temperature", [0.05, 1.0, 40.0], ids=str)
def test_chain_verify_bonus_draw_matches_the_reference_at_any_temperature(backend, temperature):
    """Every draft accepted, so every sampled row draws its bonus in pass 1 (bounded Gumbel): at
    T = 40 every column is a candidate, at T = 0.05 most are skipped; both vocabularies' layouts
    (16-byte groups, and scalar columns at an odd V)."""
    gamma = 3
    for vocab in backend.size((32768, 4099), (2048, 1001)):
        rows = backend.size(64, 24)
        _, block, target, lens = accepting_case(backend, rows, gamma, vocab, greedy_every=rows + 1)
        temp = torch.full((rows,), temperature, device=backend.device)
        acc, _ = assert_verify_matches(backend, target, block.logits, block, lens, temp)
        # p == q accepts unless the token's probability underflows to 0 (T = 0.05 rejects some)
        assert bool((acc == gamma).all()) or temperature < 1
        assert int((acc == gamma).sum()) >= rows // 2
        for seed in range(3):  # different noise: different winners, still the reference's
            ours = verify.chain_verify(target, block.logits, block.tokens, lens, temp, seed=seed, offset=7)
            with _dispatch.forced_reference():
                ref = verify.chain_verify(target, block.logits, block.tokens, lens, temp, seed=seed, offset=7)
            assert (ours[1] == ref[1]).all(dim=1).float().mean() >= 0.95


@pytest.mark.race_schedule
def test_chain_verify_bonus_draw_with_several_groups_a_thread(backend, monkeypatch):
    """Pass 1 sized for a device of one multiprocessor: one CTA a row and position, so each thread
    walks V / 1024 groups of 4 columns (fp32) or V / 2048 of 8 (bf16: two Philox blocks a group,
    computed together) of the bonus row, and every group after its first is tested against the
    running best (the candidate path, not the seeded first group). Every draft is accepted; the
    bonus tokens are the reference's at every temperature, for several seeds."""
    monkeypatch.setattr(_dispatch, "multiprocessor_count", lambda device: 1)
    rows, gamma, vocab = 16, 3, backend.size(32768, 8192)
    assert verify._stat_chunks(rows, gamma, vocab, backend.device) == 1
    case, block, target, lens = accepting_case(backend, rows, gamma, vocab, greedy_every=rows + 1)
    # the draft statistics hold at the case's temperature; full draft logits at any (in bf16 the
    # target and the draft logits are rounded alike: p == q still)
    runs = [(target, block.stats, case["temperature"])]
    for logits, draft in ((target, block.logits), (target.bfloat16(), block.logits.bfloat16())):
        runs += [(logits, draft, torch.full((rows,), t, device=backend.device)) for t in (0.7, 1.0, 3.0)]
    for logits, side, temp in runs:
        acc, _ = assert_verify_matches(backend, logits, side, block, lens, temp)
        assert bool((acc == gamma).all())
        for seed in range(3):
            ours = verify.chain_verify(logits, side, block.tokens, lens, temp, seed=seed, offset=5)
            with _dispatch.forced_reference():
                ref = verify.chain_verify(logits, side, block.tokens, lens, temp, seed=seed, offset=5)
            assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1][:, gamma], ref[1][:, gamma])


# ---------------------------------------------------------------------------------------
# schedule_prefix

SPS = scheduler.SpsTable([(1, 100.0), (32, 90.0), (256, 60.0), (1024, 30.0), (8704, 4.0)])


def dyadic_confidence(rows, gamma, seed):
    """Confidences whose survivals and float64 sums are exact: bit-identical schedules."""
    gen = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0.0, 0.5, 0.625, 0.75, 0.875, 1.0])
    return levels[torch.randint(1, 6, (rows, gamma), generator=gen)]


# Every scheduler mode that launches schedule_prefix: (confidence, stale) -> lengths.
SCHEDULER_MODES = {
    "causal": lambda c, s: scheduler.schedule_causal(c, SPS),
    "async": lambda c, s: scheduler.schedule_async(c, s, SPS),
    "async_prune": lambda c, s: scheduler.schedule_async(c, s, SPS, causal_prune=True),
    "topk_int": lambda c, s: scheduler.schedule_topk(c, c.numel() // 3),
    "topk_tensor": lambda c, s: scheduler.schedule_topk(c, torch.tensor(c.shape[0], device=c.device)),
    "topk_causal": lambda c, s: scheduler.schedule_topk_causal(
        c, torch.tensor(2 * c.shape[0], device=c.device), SPS
    ),
}
SCHEDULE_SHAPES = [(1, 1), (1, 16), (7, 5), (64, 7), (256, 16), (512, 16), (300, 3), (2500, 3)]


@pytest.mark.race_schedule
@pytest.mark.parametrize("shape", SCHEDULE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_schedulers_are_bit_identical_on_exact_confidences(backend, shape, dtype):
    rows, gamma = shape
    conf = dyadic_confidence(rows, gamma, seed=rows * gamma).to(dtype)
    stale = dyadic_confidence(rows, gamma, seed=rows + 1).to(dtype)
    conf[0, 0] = 0.0  # a request with nothing to verify
    for name, run in SCHEDULER_MODES.items():
        backend.launches.clear()
        ours = run(conf.to(backend.device), stale.to(backend.device))
        assert backend.ran("schedule_prefix"), name
        with _dispatch.forced_reference():
            ref = run(conf, stale)
        assert ours.dtype == torch.int32
        assert torch.equal(ours.cpu(), ref), name


@pytest.mark.parametrize("seed", range(8))
def test_schedule_causal_differs_only_at_theta_near_ties_on_random_confidences(backend, seed):
    gen = torch.Generator().manual_seed(seed)
    conf = torch.rand(256, 16, generator=gen)
    ours = scheduler.schedule_causal(conf.to(backend.device), SPS).cpu()
    assert backend.ran("schedule_prefix")
    with _dispatch.forced_reference():
        ref = scheduler.schedule_causal(conf, SPS)
    if not torch.equal(ours, ref):
        theta = scheduler.throughput_path(scheduler.prefix_survival(conf), SPS)
        n = int(min(ours.sum(), ref.sum()))
        assert math.isclose(float(theta[n + 1]), float(theta[n]), rel_tol=1e-12)


def test_schedule_prefix_is_one_graph_capturable_launch(backend):
    needs_cuda_graphs(backend)
    conf = torch.rand(256, 16, device=backend.device)
    stale = torch.rand(256, 16, device=backend.device)
    scheduler.schedule_async(conf, stale, SPS, causal_prune=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        lengths = scheduler.schedule_async(conf, stale, SPS, causal_prune=True)
    for _ in range(3):
        conf.copy_(torch.rand(256, 16, device=backend.device))
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
# Lossless on the kernels: the draft draw alone, then whole rounds (draft, schedule, verify).


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_markov_block_draws_the_softmax_of_its_logits(backend, temperature):
    """One fixed row of logits (V = 40: groups of 16, 16 and a partial 8) drawn by the kernel in
    many rows (each row its own noise) at two positions: the token counts of each position against
    softmax(l / T), chi-square with every expected count >= 5 (rarer cells pooled)."""
    rows, vocab = backend.size(20000, 4000), 40
    gen = torch.Generator().manual_seed(21)
    row_logits = torch.randint(-8, 9, (vocab,), generator=gen) / 8  # exact in bf16
    dev = backend.device
    weights = torch.zeros(vocab, 16, dtype=BF16, device=dev)  # no bias: the logits are the base logits
    block = markov.sample_block(
        row_logits.expand(rows, 2, vocab).to(dev, BF16),
        torch.zeros(rows, dtype=torch.int64, device=dev),
        weights,
        weights,
        torch.full((rows,), temperature, device=dev),
        seed=11,
        offset=5,
        keep_logits=False,
    )
    assert backend.ran("markov_block")
    p = torch.softmax(row_logits.double() / temperature, dim=0)
    assert float(p.min()) * rows >= 5
    for k in range(2):
        pv = chi_square(block.tokens[:, k].cpu(), p)
        record_p_value(f"markov_block draw ({backend.name}) T={temperature}", f"position {k}", pv)
        assert pv > P_MIN, f"position {k}: the kernel's draws are not softmax(l / T) (chi-square p={pv:.2e})"


# Lossless on the kernels: whole rounds.


# The emulator runs one policy per draft form and the async scheduler with both (a third of the
# device's cases), at 500 rows: every position's cells are expected >= 12 times, rarer pairs pool.
EMULATED_LOSSLESS = {("logits", "full"), ("stats", "causal"), ("logits", "async_prune")}


@pytest.mark.parametrize("form", ["logits", "stats"])
@pytest.mark.parametrize("policy", ["full", "causal", "async_prune"])
def test_lossless_on_the_kernels(backend, form, policy):
    if not backend.full and (form, policy) not in EMULATED_LOSSLESS:
        pytest.skip("the emulator runs a subset of the lossless rounds (see EMULATED_LOSSLESS)")
    world = World(seed=41, temperature=0.9)
    # 2000 rows x g = 4 stays within the scheduling kernel's 8192 candidates.
    rows = backend.size(2000, 500)
    tokens, _ = generate(world, policy, seed=42, rows=rows, device=backend.device, form=form)
    assert backend.ran("markov_block") and backend.ran("chain_verify")
    assert backend.ran("schedule_prefix") == (policy != "full")
    check_iid_p(f"kernels ({backend.name}), {form}, {policy}", tokens, world.p())
