"""The int8 W2 of the vanilla Markov head (dspark_sgl/markov_quant.py): the quantizer, the bias
formula, drafting and both verification forms with it, losslessness, bad inputs, the eval
switch and the kernel fallback."""

from __future__ import annotations

import pytest
import torch
from test_lossless import GAMMA, HIDDEN, VOCAB, World, check_iid_p, generate

from dspark_sgl import _dispatch, markov, verify
from dspark_sgl.markov_quant import Int8VanillaMarkovHead, int8_bias, quantize_w2

BF16 = torch.bfloat16


def _weights(vocab: int, rank: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(vocab, rank, generator=gen).to(dtype)
    w2 = (torch.randn(vocab, rank, generator=gen) * torch.rand(vocab, 1, generator=gen) * 3).to(dtype)
    return w1, w2


@pytest.mark.parametrize("dtype", [torch.float32, BF16, torch.float16])
def test_quantize_w2_is_symmetric_per_row_within_half_a_step(dtype):
    _, w2 = _weights(300, 48, dtype)
    w2[7] = 0.0  # an all-zero row
    q, scale = quantize_w2(w2)
    assert q.dtype == torch.int8 and q.shape == w2.shape
    assert scale.dtype == torch.float32 and scale.shape == (300,)
    assert int(q.min()) >= -127 and int(q.max()) <= 127
    w = w2.float()
    torch.testing.assert_close(scale, w.abs().amax(dim=1) / 127, rtol=0, atol=0)
    assert bool((q.abs().amax(dim=1)[scale > 0] == 127).all())  # each row's largest weight is +-127
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] * (0.5 + 1e-5)).all())
    assert float(scale[7]) == 0.0 and not bool(q[7].any())


def test_quantize_w2_keeps_weights_on_the_grid():
    scale = torch.tensor([0.25, 2.0**-7])
    q = torch.randint(-127, 128, (2, 16), dtype=torch.int8)
    q[:, 0] = 127
    got_q, got_scale = quantize_w2(q.float() * scale[:, None])
    assert torch.equal(got_q, q) and torch.equal(got_scale, scale)


def test_int8_bias_is_the_documented_order():
    """dot in float64 rounded to float32, times the row scale in float32, rounded to W1's dtype."""
    w1, w2 = _weights(40, 16, BF16, seed=1)
    q, scale = quantize_w2(w2)
    prev = torch.tensor([3, 0, 39, 3])
    got = int8_bias(w1, q, scale, prev)
    want = torch.empty(4, 40)
    for n in range(4):
        for v in range(40):
            dot = sum(float(w1[prev[n], k]) * int(q[v, k]) for k in range(16))  # exact: few small terms
            f32 = torch.tensor(dot, dtype=torch.float32) * scale[v]
            want[n, v] = f32.to(BF16).float()
    assert torch.equal(got, want)
    assert got.dtype == torch.float32
    # float32 weights: no rounding after the scale
    f32 = int8_bias(w1.float(), q, scale, prev)
    assert torch.equal(f32, (w1.float()[prev].double() @ q.double().T).float() * scale)


def test_the_int8_head_drafts_and_verification_recomputes_the_same_rows():
    w1, w2 = _weights(VOCAB * 20, 8, BF16, seed=2)
    head = Int8VanillaMarkovHead.quantize(markov.VanillaMarkovHead(w1, w2))
    assert head.w2.dtype == torch.int8 and head.bias_dtype == BF16
    rows, gamma, vocab = 6, 4, w1.shape[0]
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(rows, gamma, vocab, generator=gen)
    anchor = torch.randint(0, vocab, (rows,), generator=gen)
    temperature = torch.tensor([1.0, 0.7, 0.0, 1.3, 1.0, 0.0])
    block = markov.sample_block_with_head(base, anchor, head, temperature, seed=5, offset=2)
    stats = block.stats
    assert stats is not None and stats.w2_scale is head.w2_scale and stats.w2.dtype == torch.int8
    # Every row's logits are U_k + int8_bias(W1[x_{k-1}]), and the statistics' recompute equals them.
    prev = torch.cat([anchor[:, None], block.tokens[:, :-1]], dim=1)
    for k in range(gamma):
        want = base[:, k] + int8_bias(w1, head.w2, head.w2_scale, prev[:, k])
        assert torch.equal(block.logits[:, k], want)
        position = torch.full((rows,), k)
        assert torch.equal(stats.row_logits(block.tokens, position), block.logits[:, k])
    # The float head drafts different logits (the test exercises the quantized bias).
    float_block = markov.sample_block_with_head(
        base, anchor, markov.VanillaMarkovHead(w1, w2), temperature, seed=5, offset=2
    )
    assert not torch.equal(float_block.logits[:, 0], block.logits[:, 0])
    # Both verification forms give the same decisions and tokens.
    target = torch.randn(rows, gamma + 1, vocab, generator=gen)
    lens = torch.tensor([4, 3, 4, 2, 0, 4], dtype=torch.int32)
    from_logits = verify.chain_verify(target, block.logits, block.tokens, lens, temperature, seed=9, offset=1)
    from_stats = verify.chain_verify(target, stats, block.tokens, lens, temperature, seed=9, offset=1)
    assert torch.equal(from_logits[0], from_stats[0]) and torch.equal(from_logits[1], from_stats[1])


class Int8World(World):
    """test_lossless's world with its Markov draft's W2 quantized to int8 (rank 2: coarse)."""

    def __init__(self, seed: int, temperature: float) -> None:
        super().__init__(seed, temperature)
        self.head = Int8VanillaMarkovHead.quantize(markov.VanillaMarkovHead(self.w1, self.w2))
        self.confidence = markov.ConfidenceHead(self.conf_weight, self.conf_bias)

    def draft(self, anchor, temperature, seed, offset, keep_logits=True) -> markov.DraftBlock:
        rows = anchor.numel()
        return markov.sample_block_with_head(
            self.base.expand(rows, GAMMA, VOCAB),
            anchor,
            self.head,
            temperature,
            seed=seed,
            offset=offset,
            hidden=self.hidden.expand(rows, GAMMA, HIDDEN),
            confidence_head=self.confidence,
            keep_logits=keep_logits,
        )


@pytest.mark.parametrize(
    ("form", "policy", "temperature"), [("logits", "full", 1.0), ("stats", "random", 0.8)]
)
def test_lossless_with_the_int8_head(form, policy, temperature):
    world = Int8World(seed=41, temperature=temperature)
    tokens, _ = generate(world, policy, seed=42, form=form)
    check_iid_p(f"int8 W2, {form}, {policy} lengths, T={temperature}", tokens, world.p())


def test_quantize_w2_rejects_bad_input():
    with pytest.raises((TypeError, ValueError), match="w2"):
        quantize_w2(torch.ones(4, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="w2"):
        quantize_w2(torch.ones(4))
    with pytest.raises(ValueError, match="w2 contains NaN or Inf"):
        quantize_w2(torch.tensor([[1.0, float("nan")]]))


def test_the_int8_head_rejects_bad_input():
    w1, w2 = _weights(10, 4)
    q, scale = quantize_w2(w2)
    with pytest.raises((TypeError, ValueError), match="w2"):
        Int8VanillaMarkovHead(w1, w2, scale)  # a float W2
    with pytest.raises(ValueError, match="w2_scale"):
        Int8VanillaMarkovHead(w1, q, scale[:5])
    with pytest.raises((TypeError, ValueError), match="w2_scale"):
        Int8VanillaMarkovHead(w1, q, scale.double())
    with pytest.raises(ValueError, match=r"w1 .* and w2 .* must both be"):
        Int8VanillaMarkovHead(w1[:, :3], q, scale)
    bad = q.clone()
    bad[0, 0] = -128
    with pytest.raises(ValueError, match="-128"):
        Int8VanillaMarkovHead(w1, bad, scale)
    with pytest.raises(ValueError, match="w2_scale must be >= 0"):
        Int8VanillaMarkovHead(w1, q, -scale)
    with pytest.raises(ValueError, match="w2_scale contains NaN or Inf"):
        Int8VanillaMarkovHead(w1, q, torch.full_like(scale, float("inf")))
    head = Int8VanillaMarkovHead(w1, q, scale)
    with pytest.raises(ValueError, match="cannot be vocab-sharded"):
        head.shard(0, 5)
    with pytest.raises(ValueError, match="cannot be vocab-sharded"):
        markov.sample_block_sharded(
            torch.zeros(1, 2, 10),
            torch.tensor([0]),
            head,
            torch.ones(1),
            seed=0,
            offset=0,
            gather_stacked=lambda t: t,
            keep_logits=False,
        )
    with pytest.raises(TypeError, match="float VanillaMarkovHead"):
        Int8VanillaMarkovHead.quantize(head)
    with pytest.raises(ValueError, match="whole vocabulary"):
        Int8VanillaMarkovHead.quantize(markov.VanillaMarkovHead(w1, w2).shard(0, 5))


def test_verification_rejects_statistics_with_a_bad_scale():
    w1, w2 = _weights(VOCAB * 4, 4, seed=6)
    head = Int8VanillaMarkovHead.quantize(markov.VanillaMarkovHead(w1, w2))
    base = torch.randn(2, GAMMA, w1.shape[0])
    temperature = torch.ones(2)
    block = markov.sample_block_with_head(base, torch.tensor([0, 1]), head, temperature, seed=0, offset=0)
    block.stats.w2_scale = block.stats.w2_scale[:-1]
    target = torch.randn(2, GAMMA + 1, w1.shape[0])
    lens = torch.full((2,), GAMMA, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"draft_logits\.w2_scale"):
        verify.chain_verify(target, block.stats, block.tokens, lens, temperature, seed=0, offset=0)


def test_the_kernel_path_drafts_and_verification_falls_back_with_a_reason(backend, caplog):
    """markov_block drafts with a 16-bit W1's int8 head; chain_verify's statistics form has no
    int8 recompute and runs the reference (the dispatcher logs why)."""
    w1, w2 = _weights(512, 16, BF16, seed=7)
    head = Int8VanillaMarkovHead.quantize(
        markov.VanillaMarkovHead(w1.to(backend.device), w2.to(backend.device))
    )
    base = torch.randn(4, 3, 512).to(backend.device)
    anchor = torch.tensor([0, 5, 9, 511], device=backend.device)
    temperature = torch.ones(4, device=backend.device)
    _dispatch._logged.clear()
    with caplog.at_level("INFO", logger="dspark_sgl"):
        block = markov.sample_block_with_head(base, anchor, head, temperature, seed=0, offset=0)
        target = torch.randn(4, 4, 512).to(backend.device)
        lens = torch.full((4,), 3, dtype=torch.int32, device=backend.device)
        verify.chain_verify(target, block.stats, block.tokens, lens, temperature, seed=0, offset=0)
    assert backend.ran("markov_block") and not backend.ran("chain_verify")
    messages = [r.getMessage() for r in caplog.records]
    assert any("statistics form of an int8 W2 has no CUDA kernel path" in m for m in messages), messages
