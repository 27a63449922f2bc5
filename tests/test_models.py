"""Draft models: batch-composition independence for every backbone, the Gemma4 and
DeepSeek-V4 specifics, and configuration parsing."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import draft_config_dict

from dspark_sgl import markov
from dspark_sgl.models import ContextCache, DraftConfig, DSparkDraft

VOCAB = 96


def _gemma_raw(**overrides) -> dict:
    raw = draft_config_dict(
        VOCAB,
        architectures=["Gemma4DSparkModel"],
        model_type="gemma4_text",
        rope_parameters={
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6}
        },
        final_logit_softcapping=3.0,
        attention_k_eq_v=True,
        markov_head_type="gated",
    )
    raw.pop("rope_theta")
    raw.update(overrides)
    return raw


def _v4_raw() -> dict:
    return {
        "model_type": "deepseek_v4",
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "head_dim": 16,
        "moe_intermediate_size": 16,
        "dspark_block_size": 5,
        "dspark_markov_rank": 8,
        "dspark_noise_token_id": VOCAB - 1,
        "dspark_target_layer_ids": [1, 3],
        "dspark_n_routed_experts": 4,
        "dspark_num_experts_per_tok": 2,
        "sliding_window": 4,
        "scoring_func": "sigmoid",  # the older simplified layout (V4 itself: sqrtsoftplus)
    }


RAWS = {
    "qwen3": lambda: draft_config_dict(VOCAB, markov_head_type="rnn"),
    "gemma4": _gemma_raw,
    "deepseek_v4": _v4_raw,
}


def _random_draft(raw: dict, dtype=torch.float32, seed: int = 0) -> DSparkDraft:
    torch.manual_seed(seed)
    draft = DSparkDraft(DraftConfig.from_dict(raw))
    with torch.no_grad():
        for name, p in draft.named_parameters():
            p.copy_(
                1 + 0.1 * torch.randn_like(p) if name.endswith("norm.weight") else 0.2 * torch.randn_like(p)
            )
    return draft.to(dtype).eval()


def _context(draft: DSparkDraft, lengths: list[int], taps: dict[int, torch.Tensor], dtype) -> ContextCache:
    cache = ContextCache(draft, len(lengths), torch.device("cpu"), dtype)
    rows = torch.arange(len(lengths)).repeat_interleave(torch.tensor(lengths))
    positions = torch.cat([torch.arange(n) for n in lengths])
    cache.append(torch.cat([taps[n] for n in lengths]), positions, rows)
    return cache


@pytest.mark.parametrize("arch", list(RAWS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_draft_output_does_not_depend_on_batch_composition(arch, dtype):
    draft = _random_draft(RAWS[arch](), dtype)
    width = draft.config.num_taps * draft.config.hidden_size
    gen = torch.Generator().manual_seed(1)
    taps = {n: torch.randn(n, width, generator=gen).to(dtype) for n in (3, 6, 11)}
    anchors = {3: 5, 6: 17, 11: 40}
    temp = torch.zeros(1)

    def run(lengths: list[int]):
        ctx = _context(draft, lengths, taps, dtype)
        anchor = torch.tensor([anchors[n] for n in lengths])
        hidden = draft.backbone(anchor, ctx.lengths.clone(), ctx)
        block = draft.draft(anchor, ctx.lengths.clone(), ctx, temp.expand(len(lengths)), seed=0, offset=0)
        return hidden, block

    alone_h, alone = run([6])
    for lengths, index in (([3, 6, 11], 1), ([11, 6], 1), ([6, 3], 0)):
        h, block = run(lengths)
        tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(h[index].float(), alone_h[0].float(), **tol)
        torch.testing.assert_close(block.logits[index], alone.logits[0], **tol)
        torch.testing.assert_close(block.confidence[index], alone.confidence[0], **tol)
        if dtype == torch.float32:
            assert torch.equal(block.tokens[index], alone.tokens[0])


def test_gemma4_specifics():
    draft = _random_draft(_gemma_raw())
    cfg = draft.config
    assert cfg.arch == "gemma4" and cfg.hidden_act == "gelu_pytorch_tanh"
    assert cfg.embed_scale == float(torch.tensor(math.sqrt(32), dtype=torch.bfloat16))
    attn = draft.layers[0].self_attn
    assert attn.v_proj is None and attn.scaling == 1.0
    assert hasattr(draft.layers[0], "pre_feedforward_layernorm")
    # Proportional partial RoPE: a quarter of the pairs rotate, exponents over the full head.
    assert torch.count_nonzero(attn.inv_freq) == 1 and attn.inv_freq[0] == 1.0
    torch.testing.assert_close(
        draft.embed(torch.tensor([3])), draft.embed_tokens.weight[3:4] * cfg.embed_scale
    )
    # The softcap is applied to the base logits before the Markov bias.
    ctx = _context(draft, [4], {4: torch.randn(4, 64)}, torch.float32)
    anchor, pos = torch.tensor([7]), ctx.lengths.clone()
    block = draft.draft(anchor, pos, ctx, torch.zeros(1), seed=0, offset=0)
    hidden = draft.backbone(anchor, pos, ctx)
    base = draft.base_logits(hidden)
    head = draft.markov_head.sampler()
    bias, _ = head.step(anchor, hidden[:, 0].float(), None)
    torch.testing.assert_close(block.logits[:, 0], 3.0 * torch.tanh(base[:, 0] / 3.0) + bias)
    assert not torch.allclose(block.logits[:, 0], 3.0 * torch.tanh((base[:, 0] + bias) / 3.0))


def test_deepseek_v4_moe_and_sliding_window():
    draft = _random_draft(_v4_raw())
    moe = draft.layers[0].mlp
    x = torch.randn(6, 32)
    scores = torch.sigmoid(x @ moe.gate.weight.T)
    chosen = (scores + moe.gate.e_score_correction_bias).topk(2, dim=-1).indices
    expected = moe.shared_experts(x)
    for t in range(6):
        w = scores[t, chosen[t]] / scores[t, chosen[t]].sum()
        for e, weight in zip(chosen[t].tolist(), w, strict=True):
            expected[t] += weight * moe.experts[e](x[t : t + 1])[0]
    torch.testing.assert_close(moe(x), expected, atol=1e-5, rtol=1e-5)
    # Window 4: the block at anchor position 10 sees context positions > 10 + k - 4 only.
    width = 2 * 32
    taps = torch.randn(10, width)
    ctx = _context(draft, [10], {10: taps}, torch.float32)
    changed = taps.clone()
    changed[:5] += 3.0  # positions 0..4, never inside any slot's window
    ctx2 = _context(draft, [10], {10: changed}, torch.float32)
    anchor, pos = torch.tensor([3]), torch.tensor([10])
    torch.testing.assert_close(draft.backbone(anchor, pos, ctx), draft.backbone(anchor, pos, ctx2))
    changed[9] += 3.0
    ctx3 = _context(draft, [10], {10: changed}, torch.float32)
    assert not torch.allclose(draft.backbone(anchor, pos, ctx), draft.backbone(anchor, pos, ctx3))


def test_dflash_draft_samples_each_slot_from_its_base_logits():
    raw = draft_config_dict(
        VOCAB, markov_rank=0, enable_confidence_head=False, confidence_head_with_markov=False
    )
    draft = _random_draft(raw)
    assert draft.markov_head is None and draft.confidence_head is None
    ctx = _context(draft, [5], {5: torch.randn(5, 64)}, torch.float32)
    block = draft.draft(torch.tensor([2]), ctx.lengths.clone(), ctx, torch.ones(1), seed=4, offset=2)
    base = draft.base_logits(draft.backbone(torch.tensor([2]), ctx.lengths.clone(), ctx))
    torch.testing.assert_close(block.logits, base)
    for k in range(draft.gamma):
        expected = markov.sample_from_logits(
            base[:, k], torch.ones(1), seed=4, offset=2, stream=markov.rng.Stream.DRAFT, position=k
        )
        assert torch.equal(block.tokens[:, k], expected)
    assert block.confidence is None


def test_sts_temperatures_are_applied_and_validated():
    draft = _random_draft(draft_config_dict(VOCAB))
    ctx = _context(draft, [5], {5: torch.randn(5, 64)}, torch.float32)
    args = (torch.tensor([2]), ctx.lengths.clone(), ctx, torch.zeros(1))
    raw = draft.draft(*args, seed=0, offset=0)
    temps = torch.tensor([1.0, 2.0, 3.0, 4.0])
    draft.set_sts_temperatures(temps)
    calibrated = draft.draft(*args, seed=0, offset=0)
    torch.testing.assert_close(calibrated.confidence, torch.sigmoid(raw.confidence_logits / temps))
    with pytest.raises(ValueError, match="4 temperatures"):
        draft.set_sts_temperatures(torch.ones(3))
    with pytest.raises(ValueError, match="> 0"):
        draft.set_sts_temperatures(torch.tensor([1.0, 0.0, 1.0, 1.0]))


def test_config_layouts_and_errors():
    v4 = DraftConfig.from_dict(_v4_raw())
    assert (v4.arch, v4.block_size, v4.mask_token_id, v4.target_layer_ids) == (
        "deepseek_v4",
        5,
        VOCAB - 1,
        [1, 3],
    )
    assert (v4.num_key_value_heads, v4.n_routed_experts, v4.num_experts_per_tok) == (1, 4, 2)
    assert v4.enable_confidence_head and not v4.confidence_head_bias
    v5_rope = draft_config_dict(VOCAB, rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    assert DraftConfig.from_dict(v5_rope).rope_theta == 5e5
    dflash = DraftConfig.from_dict(draft_config_dict(VOCAB, markov_rank=0, enable_confidence_head=False))
    assert not dflash.is_dspark and not dflash.enable_confidence_head
    bad = [
        ({"markov_rank": 0, "enable_confidence_head": True}, "confidence_head_with_markov needs markov_rank"),
        ({"num_key_value_heads": 3}, "not a multiple"),
        ({"hidden_size": "32"}, "'hidden_size' must be an integer"),
        ({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3"}, "only Gemma4"),
        ({"dflash_config": [1]}, "'dflash_config' must be an object"),
    ]
    for overrides, pattern in bad:
        with pytest.raises(ValueError, match=pattern):
            DraftConfig.from_dict(draft_config_dict(VOCAB, **overrides))
    missing = draft_config_dict(VOCAB)
    del missing["mask_token_id"]
    with pytest.raises(ValueError, match="missing 'mask_token_id'"):
        DraftConfig.from_dict(missing)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        DraftConfig.from_dict({**_v4_raw(), "dspark_num_experts_per_tok": 9})
