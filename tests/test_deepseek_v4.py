"""Our DeepSeek-V4 draft against SGLang 0.5.23's own torch code, on tiny random weights (CPU).

Compared directly: checkpoint names (``_remap_dspark_weight_name``), mHC parameter shapes
(``make_hc_mixing_params`` / ``make_hc_head_params``), mHC pre / post / head
(``_mhc_pre_torch`` / ``_mhc_post_torch`` / ``hc_head_torch``), the router
(``biased_topk_impl``, sqrtsoftplus), RoPE (``apply_rotary_emb`` + ``precompute_freqs_cis``),
the RMS norms (``RMSNorm.forward_native``) and the confidence head (``DSparkConfidenceHead``).
SGLang's attention core runs only on its DSV4 backend (CUDA/NPU kernels and a KV pool), so
the attention is compared with a reference built from SGLang's pieces and the softmax with
sink of SGLang's DSV4 attention test kit; a whole stage and the base logits are compared with
that reference composed with SGLang's functions. Not comparable on the CPU: SGLang's stage
``forward`` itself (its attention backend), FusedMoE's expert kernels, the block mask.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import pytest
import torch
from tiny_v4 import random_v4_draft, v4_draft_raw, write_v4_pair

from dspark_sgl.checkpoint import load_draft
from dspark_sgl.models import deepseek_v4 as names
from dspark_sgl.models.v4_attention import rope_interleaved

STUBS = Path(__file__).parent / "stubs"


@pytest.fixture(scope="module")
def sgl():
    """SGLang's V4 modules (skipped where they do not import)."""
    if importlib.util.find_spec("sglang") is None:
        pytest.skip("sglang is not installed")
    added = importlib.util.find_spec("torchvision") is None
    if added:
        sys.path.insert(0, str(STUBS))
    try:
        mods = types.SimpleNamespace(
            dspark=importlib.import_module("sglang.srt.models.deepseek_v4_dspark"),
            v4=importlib.import_module("sglang.srt.models.deepseek_v4"),
            mhc=importlib.import_module("sglang.kernels.ops.layernorm.mhc"),
            topk=importlib.import_module("sglang.srt.layers.moe.topk"),
            rope=importlib.import_module("sglang.kernels.ops.attention.dsv4.rope"),
            norm=importlib.import_module("sglang.srt.layers.layernorm"),
            heads=importlib.import_module("sglang.srt.models.dspark"),
        )
    except Exception as exc:
        pytest.skip(f"SGLang's DeepSeek-V4 modules do not import here: {exc!r}")
    finally:
        if added:
            sys.path.remove(str(STUBS))
    return mods


@pytest.fixture(scope="module")
def draft():
    return random_v4_draft()


def _sglang_param(ours: str, last: int) -> str:
    """Our parameter name -> the parameter of SGLang's DeepseekV4ForCausalLMDSpark."""
    renames = {
        "fc.": "stages.0.main_proj.",
        "hidden_norm.": "stages.0.main_norm.",
        "norm.": f"stages.{last}.norm.",
        "hc_head.": f"stages.{last}.hc_head_",
    }
    for prefix, theirs in renames.items():
        if ours.startswith(prefix):
            return theirs + ours[len(prefix) :]
    if ours.startswith("layers."):
        return "stages." + ours[len("layers.") :].replace("hc_attn.", "hc_attn_").replace(
            "hc_ffn.", "hc_ffn_"
        )
    return ours


def test_checkpoint_names_are_sglangs(sgl, draft):
    """Every tensor of our V4 checkpoint maps to the parameter SGLang's loader fills with it."""
    last = draft.config.num_hidden_layers - 1
    ours = names.to_v4_names(list(draft.state_dict()), last + 1)
    fake = types.SimpleNamespace(confidence_head=object())
    remap = sgl.dspark.DeepseekV4ForCausalLMDSpark._remap_dspark_weight_name
    assert len(ours) > 60
    for param, v4 in ours.items():
        assert remap(fake, v4) == _sglang_param(param, last), v4
    assert names.from_v4_names(list(ours.values()), last + 1) == {v: k for k, v in ours.items()}
    # What SGLang drops, we drop; what SGLang cannot load, we refuse by name.
    assert remap(fake, "mtp.0.ffn.gate.bias_vl") is None
    assert (
        names.from_v4_names(["mtp.0.ffn.gate.bias_vl", "mtp.0.embed.weight", "layers.3.attn.wq_a.weight"], 2)
        == {}
    )
    refused = {
        "mtp.0.attn.wq_a.scale": "FP8",
        "mtp.0.ffn.gate.tid2eid": "hash-routed",
        "mtp.0.hc_head_fn": "last stage",
        "mtp.1.main_proj.weight": "stage 0",
    }
    for bad, match in refused.items():
        with pytest.raises(ValueError, match=match):
            names.from_v4_names([bad], 2)


def test_parameter_shapes_are_sglangs(sgl, draft):
    cfg = draft.config
    n, h = cfg.hc_mult, cfg.hidden_size
    mix = [p.shape for p in sgl.v4.make_hc_mixing_params(n, h)]
    head = [p.shape for p in sgl.v4.make_hc_head_params(n, h)]
    layer = draft.layers[0]
    assert [layer.hc_attn.fn.shape, layer.hc_ffn.fn.shape, layer.hc_attn.base.shape, layer.hc_ffn.base.shape,
            layer.hc_attn.scale.shape, layer.hc_ffn.scale.shape] == mix  # fmt: skip
    assert [draft.hc_head.fn.shape, draft.hc_head.base.shape, draft.hc_head.scale.shape] == head
    attn, d, heads = layer.self_attn, cfg.head_dim, cfg.num_attention_heads
    # MqaAttentionBase's linears (out, in), as the module builds them
    expected = {
        "wq_a": (cfg.q_lora_rank, h),
        "wq_b": (heads * d, cfg.q_lora_rank),
        "wkv": (d, h),
        "wo_a": (cfg.o_groups * cfg.o_lora_rank, heads * d // cfg.o_groups),
        "wo_b": (h, cfg.o_groups * cfg.o_lora_rank),
    }
    for name, shape in expected.items():
        assert tuple(getattr(attn, name).weight.shape) == shape, name
    assert attn.attn_sink.shape == (heads,) and draft.fc.weight.shape == (h, cfg.num_taps * h)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mhc_pre_post_and_head_are_sglangs(sgl, draft, dtype):
    layer, cfg = draft.layers[1], draft.config
    x = (torch.randn(7, cfg.hc_mult, cfg.hidden_size) * 2).to(dtype)
    y, post, comb = layer.hc_attn.pre(x)
    hc = layer.hc_attn
    their_post, their_comb, their_y = sgl.mhc._mhc_pre_torch(
        x, hc.fn, hc.scale, hc.base, cfg.rms_norm_eps, cfg.hc_eps, cfg.hc_eps, 2.0, cfg.hc_sinkhorn_iters
    )
    assert torch.equal(y, their_y) and y.dtype == dtype
    assert torch.equal(post, their_post.squeeze(-1)) and torch.equal(comb, their_comb)
    out = torch.randn(7, cfg.hidden_size).to(dtype)
    mixed = hc.post(out, x, post, comb)
    assert torch.equal(mixed, sgl.mhc._mhc_post_torch(out, x, their_post, their_comb))
    head = draft.hc_head
    theirs = sgl.v4.hc_head_torch(
        x, head.fn, head.scale, head.base, norm_eps=cfg.rms_norm_eps, hc_eps=cfg.hc_eps
    )
    assert torch.equal(head(x), theirs)


def test_router_is_sglangs_sqrtsoftplus_topk(sgl, draft):
    moe, cfg = draft.layers[0].mlp, draft.config
    assert moe.scoring_func == "sqrtsoftplus"
    x = torch.randn(40, cfg.hidden_size)
    logits = x @ moe.gate.weight.T
    weights, ids = sgl.topk.biased_topk_impl(
        x, logits, moe.gate.e_score_correction_bias, cfg.num_experts_per_tok, True, "sqrtsoftplus",
        routed_scaling_factor=cfg.routed_scaling_factor, apply_routed_scaling_factor_on_output=True,
    )  # fmt: skip
    expected = moe.shared_experts(x)
    for e, expert in enumerate(moe.experts):
        w = (weights * (ids == e)).sum(-1, keepdim=True)
        expected = expected + w * expert(x)
    torch.testing.assert_close(moe(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("inverse", [False, True])
def test_rope_is_sglangs(sgl, inverse):
    x = torch.randn(9, 4, 8)
    positions = torch.tensor([0, 1, 2, 5, 17, 63, 127, 128, 300])
    freqs = sgl.rope.precompute_freqs_cis(
        dim=8, seqlen=512, original_seq_len=0, base=10000.0, factor=1.0, beta_fast=32, beta_slow=1
    )
    theirs = sgl.dspark.apply_rotary_emb(x.clone(), freqs[positions], inverse=inverse)
    assert torch.equal(rope_interleaved(x, positions, 10000.0, inverse=inverse), theirs)


def _sgl_norm(sgl, module, x):
    norm = sgl.norm.RMSNorm(module.weight.shape[0], eps=module.eps)
    norm.weight.data.copy_(module.weight.data)
    return norm.forward_native(x)


def _reference_attention(sgl, attn, x, positions, ctx_x, ctx_positions, window):
    """DSparkAttention's math from SGLang's pieces: RMSNorm.forward_native, apply_rotary_emb,
    the DSV4 test kit's softmax with sink, and DSparkAttention's wo_a einsum."""
    freqs = sgl.rope.precompute_freqs_cis(
        dim=attn.rope_dim,
        seqlen=512,
        original_seq_len=0,
        base=attn.theta,
        factor=1.0,
        beta_fast=32,
        beta_slow=1,
    )
    r = attn.rope_dim

    def rot(t, pos, inverse=False):
        t = t.clone()
        sgl.dspark.apply_rotary_emb(t[..., -r:], freqs[pos], inverse=inverse)
        return t

    q = attn.wq_b(_sgl_norm(sgl, attn.q_norm, attn.wq_a(x))).view(-1, attn.num_heads, attn.head_dim)
    q = q * torch.rsqrt(q.float().square().mean(-1, keepdim=True) + attn.eps).to(q.dtype)
    q = rot(q, positions)
    kv = torch.cat([_sgl_norm(sgl, attn.kv_norm, attn.wkv(t)) for t in (ctx_x, x)])
    kv_pos = torch.cat([ctx_positions, positions])
    kv = rot(kv[:, None], kv_pos)[:, 0]
    outs = []
    for i, p in enumerate(positions.tolist()):
        visible = torch.cat([(ctx_positions > p - window), torch.ones(len(positions), dtype=torch.bool)])
        keys = kv[visible].float()
        scores = torch.einsum("hd,kd->hk", q[i].float(), keys) * attn.head_dim**-0.5
        probs = torch.softmax(torch.cat([scores, attn.attn_sink.view(-1, 1)], dim=-1), dim=-1)[:, :-1]
        outs.append(torch.einsum("hk,kd->hd", probs, keys))
    o = rot(torch.stack(outs).to(x.dtype), positions, inverse=True)
    o = o.view(o.shape[0], attn.groups, -1)
    wo_a = attn.wo_a.weight.view(attn.groups, attn.o_rank, -1)
    o = torch.einsum("bgd,grd->bgr", o.float(), wo_a.float()).to(q.dtype)
    return attn.wo_b(o.reshape(o.shape[0], -1))


def test_attention_equals_the_reference_from_sglangs_pieces(sgl, draft):
    attn = draft.layers[0].self_attn
    attn.sliding_window = 6
    gen = torch.Generator().manual_seed(3)
    gamma, ctx_len = 4, 9
    x = torch.randn(1, gamma, draft.config.hidden_size, generator=gen)
    ctx_x = torch.randn(ctx_len, draft.config.hidden_size, generator=gen)
    ctx_pos = torch.arange(ctx_len)
    positions = torch.arange(ctx_len, ctx_len + gamma)
    k, v = attn.project_kv(ctx_x, ctx_pos)
    ours = attn(x, positions[None], k[None], v[None], ctx_pos[None], torch.ones(1, ctx_len, dtype=torch.bool))
    theirs = _reference_attention(sgl, attn, x[0], positions, ctx_x, ctx_pos, 6)
    attn.sliding_window = draft.config.sliding_window
    torch.testing.assert_close(ours[0], theirs, rtol=1e-5, atol=1e-6)


def test_backbone_base_logits_and_confidence_equal_sglangs_composition(sgl, draft):
    """One block through every stage, composed of SGLang's functions (mHC, norms, router,
    hc head, confidence head) and the attention reference above, against our backbone."""
    from dspark_sgl.models import ContextCache

    cfg = draft.config
    vocab_w = torch.randn(cfg.vocab_size, cfg.hidden_size) * 0.2
    draft.attach_target_vocab(vocab_w, vocab_w.clone())
    gen = torch.Generator().manual_seed(5)
    ctx_len, gamma = 6, cfg.block_size
    taps = torch.randn(ctx_len, cfg.num_taps * cfg.hidden_size, generator=gen)
    cache = ContextCache(draft, 1, torch.device("cpu"), torch.float32)
    cache.append(taps, torch.arange(ctx_len), torch.zeros(ctx_len, dtype=torch.int64))
    anchor = torch.tensor([7])
    hidden = draft.backbone(anchor, torch.tensor([ctx_len]), cache)

    ctx_x = _sgl_norm(sgl, draft.hidden_norm, draft.fc(taps))  # project_target_hidden
    positions = torch.arange(ctx_len, ctx_len + gamma)
    block = draft.block_inputs(anchor)[0]
    x = draft.embed_tokens(block).unsqueeze(1).repeat(1, cfg.hc_mult, 1)  # forward_embed
    for layer in draft.layers:
        sublayers = (
            (layer.hc_attn, layer.input_layernorm, "attn"),
            (layer.hc_ffn, layer.post_attention_layernorm, "ffn"),
        )
        for hc, norm, sub in sublayers:
            post, comb, y = sgl.mhc._mhc_pre_torch(
                x,
                hc.fn,
                hc.scale,
                hc.base,
                cfg.rms_norm_eps,
                cfg.hc_eps,
                cfg.hc_eps,
                2.0,
                cfg.hc_sinkhorn_iters,
            )
            y = _sgl_norm(sgl, norm, y)
            if sub == "attn":
                out = _reference_attention(
                    sgl, layer.self_attn, y, positions, ctx_x, torch.arange(ctx_len), 128
                )
            else:
                out = layer.mlp(y)  # its router is SGLang's (test above); FusedMoE has no CPU path
            x = sgl.mhc._mhc_post_torch(out, x, post, comb)
    head = draft.hc_head
    collapsed = sgl.v4.hc_head_torch(
        x, head.fn, head.scale, head.base, norm_eps=cfg.rms_norm_eps, hc_eps=cfg.hc_eps
    )
    theirs_hidden = _sgl_norm(sgl, draft.norm, collapsed)
    torch.testing.assert_close(hidden[0], theirs_hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(draft.base_logits(hidden)[0], theirs_hidden @ vocab_w.T, rtol=1e-5, atol=1e-5)

    conf = sgl.heads.DSparkConfidenceHead(
        hidden_size=cfg.hidden_size, markov_rank=cfg.markov_rank, with_markov=True, bias=False
    )
    conf.proj.weight.data.copy_(draft.confidence_head.proj.weight.data)
    block_out = draft.draft(anchor, torch.tensor([ctx_len]), cache, torch.zeros(1), seed=0, offset=0)
    markov = types.SimpleNamespace(get_prev_embeddings=lambda t: draft.markov_head.markov_w1.weight[t])
    _, raw = conf.predict(hidden[0], anchor_tokens=anchor, draft_tokens=block_out.tokens, markov_head=markov)
    torch.testing.assert_close(block_out.confidence_logits, raw, rtol=1e-5, atol=1e-5)


def test_config_refuses_what_is_not_modelled():
    from dspark_sgl.models.config import DraftConfig

    with pytest.raises(ValueError, match="hc_pre_from_prev_sublayer"):
        DraftConfig.from_dict(v4_draft_raw(hc_pre_from_prev_sublayer=True))
    with pytest.raises(ValueError, match="scoring_func"):
        DraftConfig.from_dict(v4_draft_raw(scoring_func="softmax"))


def test_tiny_bundled_v4_pair_loads_and_speculates_losslessly(tmp_path):
    """The bundled layout (HF DeepseekV4ForCausalLM target + mtp.* draft with mHC in one
    checkpoint): our loader reads the draft, and greedy speculative decoding with it equals
    the target's own greedy output."""
    from transformers import AutoModelForCausalLM

    from dspark_sgl.engine import SpeculativeEngine

    root, written = write_v4_pair(tmp_path / "v4")
    target = AutoModelForCausalLM.from_pretrained(root).eval()
    loaded = load_draft(root, target_config=target.config)
    assert loaded.checkpoint_format == "deepseek_v4" and loaded.config.hc_mult == 4
    for name, tensor in written.state_dict().items():
        if not name.startswith(("embed_tokens.", "lm_head.")):
            assert torch.equal(loaded.state_dict()[name], tensor), name
    engine = SpeculativeEngine(target, loaded)
    prompt = [[5, 9, 2, 14]]
    ours = engine.generate(prompt, max_new_tokens=6, temperature=0.0, seed=0).tokens
    reference = target.generate(torch.tensor(prompt), max_new_tokens=6, do_sample=False)[0, 4:].tolist()
    assert ours == [reference]


def test_eval_and_calibrate_run_on_the_tiny_v4_pair(tmp_path, capsys):
    """``python -m dspark_sgl eval`` / ``calibrate`` end to end with the bundled V4 directory
    as both --target and --draft (the paper protocol's report, trace and STS file)."""
    import json

    from dspark_sgl import evaluate
    from dspark_sgl.calibration import StsCalibration

    root, _ = write_v4_pair(tmp_path / "v4")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "gsm8k.jsonl").write_text(
        "\n".join(json.dumps({"turns": [t]}) for t in ("Add 2 and 3.", "What is 7 times 6?")) + "\n"
    )
    report, trace, sts = tmp_path / "report.json", tmp_path / "rounds.jsonl", tmp_path / "sts.json"
    common = ["--target", str(root), "--draft", str(root), "--prompts", str(prompts), "--datasets", "gsm8k",
              "--max-new-tokens", "6", "--batch-size", "2", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert evaluate.main_eval([*common, "--out", str(report), "--trace", str(trace)]) == 0
    metrics = json.loads(report.read_text())["datasets"]["gsm8k"]
    gamma = json.loads(report.read_text())["gamma"]
    assert gamma == 4 and metrics["prompts"] == 2 and 1.0 <= metrics["tau"] <= gamma + 1
    assert len(metrics["ece"]) == gamma and metrics["tokens"] > 0
    assert evaluate.main_calibrate(["--from-trace", str(trace), "--out", str(sts)]) == 0
    fitted = StsCalibration.load(sts)
    assert len(fitted.temperatures) == gamma and all(t > 0 for t in fitted.temperatures)
    assert "| gsm8k |" in capsys.readouterr().out
