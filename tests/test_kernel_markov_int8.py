"""The int8-W2 path of markov_block (per-row scales, dspark_sgl/markov_quant.py is the reference) on
the CPU emulator in CI and on a device when lent (the ``backend`` fixture): bit-identical logits
and statistics on exact inputs, tokens up to the grouped sampler's near-ties, a lossless round,
and the errors and fallbacks of bad inputs."""

from __future__ import annotations

import pytest
import torch
from draft_ties import assert_draft_tokens_match, is_draft_near_tie
from test_gpu_kernels import MARKOV_SHAPES, markov_case
from test_lossless import GAMMA, HIDDEN, VOCAB, check_iid_p, generate
from test_markov_quant import Int8World

from dspark_sgl import _dispatch, markov, rng
from dspark_sgl.markov_quant import Int8VanillaMarkovHead, int8_bias

BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
SEED, OFFSET = 7, 3


def int8_case(device, rows, gamma, vocab, rank, *, wdtype=BF16, bdtype=BF16, seed=0):
    """markov_case's inputs with an int8 head in place of W1, W2: W1 dyadic (k / 8) and W2 quantized
    from a real-valued matrix with rows of different magnitudes (so the scales differ). Every dot
    product W1[x] . q[v] is then exact in float32, and the scale multiply and the roundings are the
    same IEEE operations in kernel and reference: the logits are bit-identical."""
    case = markov_case(device, rows, gamma, vocab, rank, wdtype=wdtype, bdtype=bdtype, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    w2 = torch.randn(vocab, rank, generator=gen) * (0.01 + torch.rand(vocab, 1, generator=gen))
    float_head = markov.VanillaMarkovHead(case.pop("w1"), w2.to(device, wdtype))
    case.pop("w2")
    case["head"] = Int8VanillaMarkovHead.quantize(float_head)
    return case


def draft_int8(case, **kw) -> markov.DraftBlock:
    return markov.sample_block_with_head(
        case["base_logits"], case["anchor"], case["head"], case["temperature"], seed=SEED, offset=OFFSET, **kw
    )


def assert_int8_blocks_match(ours: markov.DraftBlock, ref: markov.DraftBlock, case) -> None:
    """Exact inputs: logits, the token's logit and the statistics bit-identical (the sum to
    ex2.approx), tokens up to near-ties of the reference's draw."""
    assert_draft_tokens_match(ours, ref, case["temperature"], seed=SEED, offset=OFFSET)
    same = (ours.tokens == ref.tokens).all(dim=1)  # rows with the reference's tokens: same logits
    if ours.logits is not None:
        assert torch.equal(ours.logits[same], ref.logits[same])
    assert torch.equal(ours.stats.token_logits[same], ref.stats.token_logits[same])
    assert torch.equal(ours.stats.max[same], ref.stats.max[same])
    torch.testing.assert_close(ours.stats.sum[same], ref.stats.sum[same], rtol=1e-5, atol=0)
    assert ours.stats.w2_scale is not None and torch.equal(ours.stats.w2_scale, case["head"].w2_scale)


# the exact-input test's shapes: one tile chunk, the big vocabularies, rank 200 (byte staging) with
# an odd vocabulary, rank 512, and rows past one chunk at either tile width
INT8_SHAPES = ["R1-g1", "R8-g5-big-V", "R33-g16-odd-V-r200", "rank512", "many-rows"]


@pytest.mark.race_schedule
@pytest.mark.parametrize("shape", INT8_SHAPES, ids=str)
@pytest.mark.parametrize(("wdtype", "bdtype"), [(BF16, BF16), (F16, F32)], ids=str)
def test_markov_block_int8_w2_is_bit_identical_on_exact_inputs(backend, shape, wdtype, bdtype):
    rows, gamma, vocab, rank = backend.size(*MARKOV_SHAPES[shape])
    case = int8_case(backend.device, rows, gamma, vocab, rank, wdtype=wdtype, bdtype=bdtype)
    ours = draft_int8(case)
    assert backend.ran("markov_block")
    with _dispatch.forced_reference():
        ref = draft_int8(case)
    assert_int8_blocks_match(ours, ref, case)
    # The kernel's logits are the documented bias: U_k + round(fl(W1[x] . q) * scale), in W1's dtype.
    prev = torch.cat([case["anchor"][:, None], ours.tokens[:, :-1]], dim=1)
    head = case["head"]
    for k in range(gamma):
        bias = int8_bias(head.w1, head.w2, head.w2_scale, prev[:, k])
        assert torch.equal(
            ours.logits[:, k], markov._round_logits(case["base_logits"][:, k].float() + bias, F32)
        )


@pytest.mark.parametrize("rank", [64, 40], ids=lambda r: f"r{r}")  # 16-byte staging; byte staging
@pytest.mark.parametrize("wdtype", [BF16, F16], ids=str)
def test_markov_block_int8_w2_widens_every_int8_value_exactly(backend, wdtype, rank):
    """The widening of the staged int8 tile (markov_int8.cuh: bit patterns and one subtraction, no
    conversion instruction) gives float(q) for every value q in [-127, 127]: with W1[n] the n-th unit
    row, scales 1 and zero base logits, row n's logit of token v is q[v, n] itself."""
    vocab = backend.size(1300, 300)  # several 128-wide tiles, the last one partial
    q = (torch.arange(vocab * rank).reshape(vocab, rank) % 255 - 127).to(torch.int8)
    w1 = torch.zeros(vocab, rank)
    w1[:rank] = torch.eye(rank)
    head = Int8VanillaMarkovHead(
        w1.to(backend.device, wdtype), q.to(backend.device), torch.ones(vocab).to(backend.device)
    )
    base = torch.zeros(rank, 1, vocab, dtype=wdtype, device=backend.device)
    anchor = torch.arange(rank, device=backend.device)
    block = markov.sample_block_with_head(
        base, anchor, head, torch.ones(rank, device=backend.device), seed=SEED, offset=OFFSET
    )
    assert backend.ran("markov_block")
    assert torch.equal(block.logits[:, 0].float().cpu(), q.T.float())


@pytest.mark.parametrize("wdtype", [BF16, F16], ids=str)
def test_markov_block_int8_w2_statistics_form_matches_the_reference(backend, wdtype):
    """keep_logits=False with the base logits in W1's dtype: the kernel's plain epilogue; the
    DraftStats it returns recompute the kernel's rows."""
    rows, gamma, vocab, rank = backend.size(*MARKOV_SHAPES["R8-g5-big-V"])
    case = int8_case(backend.device, rows, gamma, vocab, rank, wdtype=wdtype, bdtype=wdtype, seed=2)
    kw = dict(keep_logits=False, logits_dtype=wdtype)
    ours = draft_int8(case, **kw)
    assert backend.ran("markov_block") and ours.logits is None
    with _dispatch.forced_reference():
        ref = draft_int8(case, **kw)
    assert_int8_blocks_match(ours, ref, case)
    with _dispatch.forced_reference():
        kept = draft_int8(case, keep_logits=True, logits_dtype=wdtype)
    for k in range(gamma):
        positions = torch.full((rows,), k, dtype=torch.int64, device=backend.device)
        assert torch.equal(ours.stats.row_logits(ours.tokens, positions), kept.logits[:, k].float())


@pytest.mark.parametrize("softcap", [None, 30.0], ids=str)
def test_markov_block_int8_w2_tokens_differ_only_at_near_ties_on_real_valued_inputs(backend, softcap):
    rows, gamma, vocab, rank = backend.size((64, 5, 32000, 256), (12, 3, 1100, 64))
    case = markov_case(backend.device, rows, gamma, vocab, rank, dyadic=False, seed=1)
    head = Int8VanillaMarkovHead.quantize(markov.VanillaMarkovHead(case["w1"], case["w2"]))
    case["head"] = head
    ours = draft_int8(case, logit_softcap=softcap)
    assert backend.ran("markov_block")
    with _dispatch.forced_reference():
        ref = draft_int8(case, logit_softcap=softcap)
    # Teacher-force the reference sampler on our logits (given our x_{k-1}): our logits may differ
    # from the reference's by a bf16 step of the bias, far more than a near-tie of the draw.
    temperature = case["temperature"].cpu()
    for k in range(gamma):
        logits = ours.logits[:, k].float().cpu()
        drawn = markov.sample_from_logits(
            logits, temperature, seed=SEED, offset=OFFSET, stream=rng.Stream.DRAFT, position=k
        )
        mine = ours.tokens[:, k].cpu()
        for r in (drawn != mine).nonzero().flatten().tolist():
            assert is_draft_near_tie(
                logits[r],
                float(temperature[r]),
                int(mine[r]),
                int(drawn[r]),
                seed=SEED,
                offset=OFFSET,
                row=r,
                position=k,
            ), f"row {r} position {k}: {int(mine[r])} vs the reference's {int(drawn[r])} on our logits"
    # Real-valued W1: the float32 dot products differ from the reference's float64 sums by rounding
    # (a bf16 step of the bias at most); rows that drew other tokens go on from other tokens.
    same = (ours.tokens == ref.tokens).all(dim=1)
    torch.testing.assert_close(ours.logits[same], ref.logits[same], rtol=1e-2, atol=1e-2)


class Int8KernelWorld(Int8World):
    """test_markov_quant's int8 world with a bfloat16 W1 (the kernel's 16-bit MMA operand), on a device."""

    def __init__(self, seed: int, temperature: float, device: torch.device) -> None:
        super().__init__(seed, temperature)
        float_head = markov.VanillaMarkovHead(self.w1.to(device, BF16), self.w2.to(device, BF16))
        self.head = Int8VanillaMarkovHead.quantize(float_head)
        self.confidence = markov.ConfidenceHead(self.conf_weight.to(device), self.conf_bias)
        self.device = device

    def draft(self, anchor, temperature, seed, offset, keep_logits=True) -> markov.DraftBlock:
        rows = anchor.numel()
        return markov.sample_block_with_head(
            self.base.to(self.device).expand(rows, GAMMA, VOCAB),
            anchor,
            self.head,
            temperature,
            seed=seed,
            offset=offset,
            hidden=self.hidden.to(self.device).expand(rows, GAMMA, HIDDEN),
            confidence_head=self.confidence,
            keep_logits=keep_logits,
        )


def test_lossless_on_the_int8_w2_kernel(backend):
    world = Int8KernelWorld(seed=41, temperature=0.9, device=backend.device)
    rows = backend.size(2000, 500)
    tokens, _ = generate(world, "full", seed=42, rows=rows, device=backend.device, form="logits")
    assert backend.ran("markov_block")
    check_iid_p(f"int8-W2 kernel ({backend.name})", tokens, world.p())


def test_markov_block_int8_w2_rejects_bad_scales(backend):
    case = int8_case(backend.device, 4, 2, 512, 16)
    head = case["head"]
    good = head.w2_scale
    for bad, error, match in (
        (good[:-1], ValueError, r"head\.w2_scale must have shape \[512\]"),
        (good.double(), TypeError, r"head\.w2_scale must have dtype in \(float32\)"),
        (good[None], ValueError, r"head\.w2_scale must have shape"),
    ):
        head.w2_scale = bad
        with pytest.raises(error, match=match):
            draft_int8(case)
    if backend.device.type == "cuda":
        head.w2_scale = good.cpu()
        with pytest.raises(ValueError, match=r"head\.w2_scale is on cpu"):
            draft_int8(case)
    head.w2_scale = good
    head.w2 = head.w2.to(torch.int16)
    with pytest.raises(TypeError, match=r"head\.w2 must have dtype in \(int8\)"):
        draft_int8(case)
    assert not backend.ran("markov_block")


def test_markov_block_int8_w2_with_a_float32_w1_falls_back_with_a_reason(backend, caplog, monkeypatch):
    case = int8_case(backend.device, 4, 2, 512, 16, wdtype=F32)
    _dispatch._logged.clear()
    with caplog.at_level("INFO", logger="dspark_sgl"):
        block = draft_int8(case)
    assert not backend.ran("markov_block")
    messages = [r.getMessage() for r in caplog.records]
    assert any("an int8 W2 needs a 16-bit W1" in m for m in messages), messages
    with _dispatch.forced_reference():
        assert torch.equal(block.tokens, draft_int8(case).tokens)
    # The launcher refuses it too (a float32 W1 has no int8 instantiation).
    monkeypatch.setattr(markov, "_markov_kernel_unsupported", lambda *args: None)
    with pytest.raises(RuntimeError, match=r"int8 W2 \(w2_scale given\) needs a 16-bit W1"):
        draft_int8(case)
