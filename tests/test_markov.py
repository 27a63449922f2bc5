"""Markov heads, the confidence head and block sampling against hand-written formulas."""

from __future__ import annotations

import pytest
import torch
from conftest import record_p_value
from scipy import stats

from dspark_sgl import markov, rng


def make_inputs(rows=6, gamma=5, vocab=37, rank=7, hidden=9, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        base=torch.randn(rows, gamma, vocab, generator=gen).to(dtype),
        anchor=torch.randint(0, vocab, (rows,), generator=gen),
        w1=torch.randn(vocab, rank, generator=gen).to(dtype),
        w2=torch.randn(vocab, rank, generator=gen).to(dtype),
        hidden=torch.randn(rows, gamma, hidden, generator=gen).to(dtype),
        conf_weight=torch.randn(hidden + rank, generator=gen),
        temperature=torch.rand(rows, generator=gen) + 0.3,
    )


def test_markov_bias_is_w1_prev_times_w2_transposed():
    x = make_inputs(dtype=torch.bfloat16)
    prev = torch.tensor([0, 5, 36, 5])
    bias = markov.markov_bias(x["w1"], x["w2"], prev)
    expected = x["w1"][prev].double() @ x["w2"].double().T
    assert bias.dtype == torch.float32 and bias.shape == (4, 37)
    # Rounded to the weights' dtype (SGLang's bf16 Linear): within half a bf16 ulp.
    assert torch.equal(bias, bias.bfloat16().float())
    torch.testing.assert_close(bias.double(), expected, rtol=2**-8, atol=0)


def test_sample_block_logits_tokens_and_confidence_follow_the_definition():
    x = make_inputs()
    block = markov.sample_block(
        x["base"],
        x["anchor"],
        x["w1"],
        x["w2"],
        x["temperature"],
        seed=3,
        offset=8,
        hidden=x["hidden"],
        conf_weight=x["conf_weight"],
        conf_bias=0.25,
    )
    _rows, gamma, _vocab = x["base"].shape
    prev = x["anchor"]
    for k in range(gamma):
        logits_k = x["base"][:, k] + x["w1"][prev] @ x["w2"].T
        assert torch.allclose(block.logits[:, k], logits_k, atol=1e-5)
        drawn = markov.sample_from_logits(
            block.logits[:, k], x["temperature"], seed=3, offset=8, stream=rng.Stream.DRAFT, position=k
        )
        assert torch.equal(block.tokens[:, k], drawn)
        z = torch.cat([x["hidden"][:, k], x["w1"][prev]], dim=-1) @ x["conf_weight"] + 0.25
        assert torch.allclose(block.confidence[:, k], torch.sigmoid(z), atol=1e-6)
        assert torch.allclose(block.confidence_logits[:, k], z, atol=1e-5)
        prev = block.tokens[:, k]
    assert block.tokens.dtype == torch.int64 and block.logits.dtype == torch.float32


def test_greedy_rows_take_the_argmax_and_mix_with_sampled_rows():
    x = make_inputs(rows=8)
    temperature = torch.tensor([0.0, 1.0] * 4)
    block = markov.sample_block(x["base"], x["anchor"], x["w1"], x["w2"], temperature, seed=1, offset=0)
    greedy = block.logits[0::2].argmax(-1)
    assert torch.equal(block.tokens[0::2], greedy)
    assert not torch.equal(block.tokens[1::2], block.logits[1::2].argmax(-1))


def test_sts_temperatures_and_markov_free_confidence():
    x = make_inputs()
    sts = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5])
    with_sts = markov.sample_block(
        x["base"],
        x["anchor"],
        x["w1"],
        x["w2"],
        x["temperature"],
        seed=0,
        offset=0,
        hidden=x["hidden"],
        conf_weight=x["conf_weight"],
        conf_bias=0.1,
        sts_temperatures=sts,
    )
    assert torch.allclose(with_sts.confidence, torch.sigmoid(with_sts.confidence_logits / sts))
    h_only = markov.sample_block(
        x["base"],
        x["anchor"],
        x["w1"],
        x["w2"],
        x["temperature"],
        seed=0,
        offset=0,
        hidden=x["hidden"],
        conf_weight=x["conf_weight"][:9],
        conf_bias=0.1,
    )
    assert torch.allclose(h_only.confidence_logits, x["hidden"] @ x["conf_weight"][:9] + 0.1, atol=1e-5)


def test_logit_softcap_is_applied_to_the_base_before_the_bias():
    x = make_inputs()
    block = markov.sample_block(
        x["base"] * 20, x["anchor"], x["w1"], x["w2"], x["temperature"], seed=0, offset=0, logit_softcap=15.0
    )
    bias0 = x["w1"][x["anchor"]] @ x["w2"].T
    expected = 15.0 * torch.tanh(x["base"][:, 0] * 20 / 15.0) + bias0
    assert torch.allclose(block.logits[:, 0], expected, atol=1e-5)


def test_sampled_tokens_follow_q():
    rows, vocab = 30000, 6
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(1, 1, vocab, generator=gen).expand(rows, 1, vocab)
    w1, w2 = torch.randn(vocab, 2, generator=gen), torch.randn(vocab, 2, generator=gen)
    anchor = torch.full((rows,), 3)
    temperature = torch.full((rows,), 0.8)
    block = markov.sample_block(base, anchor, w1, w2, temperature, seed=2, offset=0)
    q = torch.softmax(block.logits[0, 0].double() / 0.8, -1)
    counts = torch.bincount(block.tokens[:, 0], minlength=vocab).double()
    p_value = stats.chisquare(counts.numpy(), (q * rows).numpy()).pvalue
    record_p_value("Markov sampler", "tokens ~ q", p_value)
    assert p_value > 1e-3


def test_same_seed_and_offset_reproduce_and_other_offsets_differ():
    x = make_inputs()
    args = (x["base"], x["anchor"], x["w1"], x["w2"], x["temperature"])
    a = markov.sample_block(*args, seed=4, offset=1)
    b = markov.sample_block(*args, seed=4, offset=1)
    c = markov.sample_block(*args, seed=4, offset=2)
    d = markov.sample_block(*args, seed=torch.tensor(4), offset=torch.tensor(1))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.tokens, d.tokens)
    assert not torch.equal(a.tokens, c.tokens)


def test_vanilla_head_class_matches_sample_block():
    x = make_inputs()
    head = markov.VanillaMarkovHead(x["w1"], x["w2"])
    a = markov.sample_block(x["base"], x["anchor"], x["w1"], x["w2"], x["temperature"], seed=1, offset=1)
    b = markov.sample_block_with_head(x["base"], x["anchor"], head, x["temperature"], seed=1, offset=1)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logits, b.logits)


def test_gated_head_formula():
    x = make_inputs()
    gen = torch.Generator().manual_seed(9)
    rank, hidden = 7, 9
    gw, gb = torch.randn(rank, hidden + rank, generator=gen), torch.randn(rank, generator=gen)
    head = markov.GatedMarkovHead(x["w1"], x["w2"], gw, gb)
    block = markov.sample_block_with_head(
        x["base"], x["anchor"], head, x["temperature"], seed=0, offset=0, hidden=x["hidden"]
    )
    prev = x["anchor"]
    for k in range(x["base"].shape[1]):
        emb = x["w1"][prev]
        gate = torch.sigmoid(torch.cat([x["hidden"][:, k], emb], -1) @ gw.T + gb)
        assert torch.allclose(block.logits[:, k], x["base"][:, k] + (gate * emb) @ x["w2"].T, atol=1e-5)
        prev = block.tokens[:, k]


def test_rnn_head_formula():
    x = make_inputs()
    gen = torch.Generator().manual_seed(10)
    rank, hidden = 7, 9
    jw, jb = (
        torch.randn(3 * rank, 2 * rank + hidden, generator=gen) * 0.3,
        torch.randn(3 * rank, generator=gen),
    )
    head = markov.RnnMarkovHead(x["w1"], x["w2"], jw, jb)
    block = markov.sample_block_with_head(
        x["base"], x["anchor"], head, x["temperature"], seed=0, offset=0, hidden=x["hidden"]
    )
    prev, state = x["anchor"], torch.zeros(6, rank)
    for k in range(x["base"].shape[1]):
        z = torch.cat([state, x["w1"][prev], x["hidden"][:, k]], -1)
        g, c, o = (z @ jw.T + jb).split(rank, -1)
        state = torch.sigmoid(g) * state + (1 - torch.sigmoid(g)) * torch.tanh(c)
        assert torch.allclose(block.logits[:, k], x["base"][:, k] + torch.tanh(o) @ x["w2"].T, atol=1e-5)
        prev = block.tokens[:, k]


def test_heads_that_need_hidden_say_so():
    x = make_inputs()
    head = markov.GatedMarkovHead(x["w1"], x["w2"], torch.randn(7, 16), torch.randn(7))
    with pytest.raises(ValueError, match="hidden"):
        markov.sample_block_with_head(x["base"], x["anchor"], head, x["temperature"], seed=0, offset=0)
    with pytest.raises(ValueError, match="gate_proj"):
        markov.GatedMarkovHead(x["w1"], x["w2"], torch.randn(5, 16), torch.randn(5))
    with pytest.raises(ValueError, match="joint_proj"):
        markov.RnnMarkovHead(x["w1"], x["w2"], torch.randn(21, 23), torch.randn(20))


def _stats_block(
    keep_logits: bool, softcap: float | None = None, seed: int = 0
) -> tuple[dict, markov.DraftBlock]:
    x = make_inputs(rows=7, seed=seed)
    x["temperature"][::3] = 0.0
    block = markov.sample_block(
        x["base"],
        x["anchor"],
        x["w1"],
        x["w2"],
        x["temperature"],
        seed=5,
        offset=1,
        logit_softcap=softcap,
        keep_logits=keep_logits,
    )
    return x, block


def test_draft_statistics_describe_the_logits_the_tokens_were_drawn_from():
    x, block = _stats_block(keep_logits=True, softcap=3.0)
    stats = block.stats
    safe_t = torch.where(x["temperature"] > 0, x["temperature"], torch.ones(7))[:, None, None]
    scaled = block.logits / safe_t
    assert torch.allclose(stats.max, scaled.amax(-1))
    assert torch.allclose(stats.sum, torch.exp(scaled - stats.max[..., None]).sum(-1))
    assert torch.equal(stats.token_logits, block.logits.gather(2, block.tokens[..., None]).squeeze(2))
    for k in range(block.tokens.shape[1]):
        position = torch.full((7,), k)
        assert torch.equal(stats.row_logits(block.tokens, position), block.logits[:, k])
    mixed = torch.arange(7) % block.tokens.shape[1]
    assert torch.equal(stats.row_logits(block.tokens, mixed), block.logits[torch.arange(7), mixed])


def test_keep_logits_false_drops_only_the_logits():
    _, kept = _stats_block(keep_logits=True)
    _, dropped = _stats_block(keep_logits=False)
    assert dropped.logits is None and dropped.verify_input() is dropped.stats
    assert kept.verify_input() is kept.logits
    assert torch.equal(dropped.tokens, kept.tokens)
    assert torch.equal(dropped.stats.max, kept.stats.max) and torch.equal(dropped.stats.sum, kept.stats.sum)
    with pytest.raises(ValueError, match="neither its logits nor its statistics"):
        markov.DraftBlock(tokens=kept.tokens, logits=None).verify_input()


def test_only_the_vanilla_head_can_drop_its_logits():
    x = make_inputs()
    rank, hidden = x["w1"].shape[1], x["hidden"].shape[2]
    head = markov.GatedMarkovHead(x["w1"], x["w2"], torch.randn(rank, hidden + rank), torch.randn(rank))
    with pytest.raises(ValueError, match="keep_logits=False needs the vanilla Markov head"):
        markov.sample_block_with_head(
            x["base"],
            x["anchor"],
            head,
            x["temperature"],
            seed=0,
            offset=0,
            hidden=x["hidden"],
            keep_logits=False,
        )
    block = markov.sample_block_with_head(
        x["base"], x["anchor"], head, x["temperature"], seed=0, offset=0, hidden=x["hidden"]
    )
    assert block.stats is None and block.logits is not None


def test_the_byte_rule_for_keeping_logits():
    # R = 1: writing 1 x 7 x V float32 twice is far cheaper than re-reading W2 (V x 256 bf16).
    assert not markov.stats_cheaper_than_logits(1, 7, 129280, 256, 2)
    # R = 256: 256 x 7 x V float32 twice dwarfs one more read of W2 and one base row per request.
    assert markov.stats_cheaper_than_logits(256, 7, 129280, 256, 2)


def test_logits_dtype_rounds_every_step_before_sampling():
    x = make_inputs(rows=5, seed=4)
    block = markov.sample_block(
        x["base"],
        x["anchor"],
        x["w1"],
        x["w2"],
        x["temperature"],
        seed=2,
        offset=6,
        logits_dtype=torch.bfloat16,
    )
    assert block.logits.dtype == torch.bfloat16
    rows, gamma, _vocab = x["base"].shape
    prev = x["anchor"]
    for k in range(gamma):
        rounded = (x["base"][:, k] + x["w1"][prev] @ x["w2"].T).to(torch.bfloat16)
        # The same float32 sum rounded to bf16 (one bf16 ulp apart at most on a rounding boundary).
        torch.testing.assert_close(block.logits[:, k].float(), rounded.float(), rtol=2**-7, atol=1e-6)
        expected = markov.sample_from_logits(
            block.logits[:, k].float(),
            x["temperature"],
            seed=2,
            offset=6,
            stream=rng.Stream.DRAFT,
            position=k,
        )
        assert torch.equal(block.tokens[:, k], expected)
        positions = torch.full((rows,), k)
        assert torch.equal(block.stats.row_logits(block.tokens, positions), block.logits[:, k].float())
        prev = block.tokens[:, k]
    with pytest.raises(TypeError, match="logits_dtype must be float32, bfloat16 or float16"):
        markov.sample_block(
            x["base"],
            x["anchor"],
            x["w1"],
            x["w2"],
            x["temperature"],
            seed=0,
            offset=0,
            logits_dtype=torch.int64,
        )
