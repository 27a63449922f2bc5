"""A tiny DeepSeek-V4-style pair generated from random weights (nothing is committed as a blob).

``v4_draft_raw()`` is a config in DeepSeek-V4's own layout (the target's fields plus the
``dspark_*`` keys), with V4's attention (low-rank query, grouped low-rank output, sink),
its ``sqrtsoftplus`` router, ``swiglu_limit`` and mHC (``hc_mult`` 4). ``random_v4_draft``
fills a :class:`DSparkDraft` of it with random weights; ``write_v4_pair`` writes a bundled
checkpoint directory: a tiny HF ``DeepseekV4ForCausalLM`` target (all sliding-window
layers) with the draft's ``mtp.{i}.*`` tensors in the same safetensors file and the
``dspark_*`` keys in its config.json, as DeepSeek ships V4.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dspark_sgl.checkpoint import save_draft
from dspark_sgl.models import DSparkDraft
from dspark_sgl.models.config import DraftConfig

VOCAB = 96
TARGET_LAYERS = 4


def v4_draft_raw(**overrides) -> dict:
    raw = {
        "model_type": "deepseek_v4",
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "q_lora_rank": 16,
        "o_lora_rank": 8,
        "o_groups": 2,
        "qk_rope_head_dim": 8,
        "q_head_norm": True,
        "rope_theta": 10000.0,
        "sliding_window": 128,
        "moe_intermediate_size": 16,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "n_shared_experts": 1,
        "scoring_func": "sqrtsoftplus",
        "routed_scaling_factor": 1.5,
        "swiglu_limit": 10.0,
        "hc_mult": 4,
        "hc_sinkhorn_iters": 20,
        "hc_eps": 1e-6,
        "rms_norm_eps": 1e-6,
        "num_hidden_layers": TARGET_LAYERS,
        "dspark_block_size": 4,
        "dspark_markov_rank": 8,
        "dspark_noise_token_id": VOCAB - 1,
        "dspark_target_layer_ids": [1, 2],
        "dspark_n_routed_experts": 4,
        "dspark_num_experts_per_tok": 2,
        "enable_confidence_head": True,
    }
    raw.update(overrides)
    return raw


def random_v4_draft(raw: dict | None = None, seed: int = 0, dtype=torch.float32) -> DSparkDraft:
    """A draft of ``raw`` (default :func:`v4_draft_raw`) with random weights everywhere:
    matrices ~ N(0, 0.3^2 / fan_in) scaled up, norms ~ 1 + N(0, 0.1^2), mHC scales ~ 1."""
    draft = DSparkDraft(DraftConfig.from_dict(raw or v4_draft_raw()))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / p.shape[-1] ** 0.5))
            elif name.endswith(("scale", "norm.weight", "layernorm.weight")):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return draft.to(dtype)


def tiny_v4_target(seed: int = 0, raw: dict | None = None):
    """A tiny HF ``DeepseekV4ForCausalLM`` with random weights and sliding-window layers only."""
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

    raw = raw or v4_draft_raw()
    keys = (
        "vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
        "q_lora_rank", "o_lora_rank", "o_groups", "moe_intermediate_size", "n_routed_experts",
        "num_experts_per_tok", "n_shared_experts", "scoring_func", "routed_scaling_factor",
        "swiglu_limit", "hc_mult", "hc_sinkhorn_iters", "hc_eps", "rms_norm_eps", "num_hidden_layers",
        "sliding_window", "rope_theta",
    )  # fmt: skip
    config = DeepseekV4Config(
        **{k: raw[k] for k in keys},
        layer_types=["sliding_attention"] * TARGET_LAYERS,
        mlp_layer_types=["moe"] * TARGET_LAYERS,
        num_nextn_predict_layers=0,
        intermediate_size=16,
        index_n_heads=2,
        index_head_dim=8,
        index_topk=4,
        max_position_embeddings=512,
        eos_token_id=None,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return DeepseekV4ForCausalLM(config).eval()


def write_v4_pair(root: Path, seed: int = 0) -> tuple[Path, DSparkDraft]:
    """The bundled V4 checkpoint directory (tokenizer, target + ``mtp.*`` draft in one
    safetensors file, the ``dspark_*`` keys in config.json) and the draft written."""
    from tiny_models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    raw = v4_draft_raw(vocab_size=len(tokenizer) + 1, dspark_noise_token_id=len(tokenizer))
    target = tiny_v4_target(seed, raw)
    target.save_pretrained(root)
    tokenizer.save_pretrained(root)
    draft = random_v4_draft(raw, seed=seed + 1)
    scratch = root / "_draft"
    save_draft(draft, scratch, fmt="deepseek_v4")
    weights = load_file(str(root / "model.safetensors"))
    weights.update(load_file(str(scratch / "model.safetensors")))
    save_file(weights, str(root / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((root / "config.json").read_text())
    config.update({k: v for k, v in raw.items() if k.startswith("dspark_") or k == "enable_confidence_head"})
    (root / "config.json").write_text(json.dumps(config, indent=2))
    for file in scratch.iterdir():
        file.unlink()
    scratch.rmdir()
    return root, draft
