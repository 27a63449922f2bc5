"""The draft's configuration, read from any of the config layouts drafts ship with.

A draft ``config.json`` is a copy of the target's text config plus DSpark fields. They
appear in four places, and the later ones win: top level, ``text_config`` (multimodal
targets), ``dflash_config``, ``dspark_config`` (SGLang's nesting), then DeepSeek-V4's
prefixed ``dspark_*`` keys. :class:`DraftConfig` keeps the raw dict so that a loaded draft
saves back to the same ``config.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["ARCHITECTURES", "MARKOV_HEAD_TYPES", "DraftConfig"]

ARCHITECTURES = ("qwen3", "gemma4", "deepseek_v4")
MARKOV_HEAD_TYPES = ("vanilla", "gated", "rnn")

# DeepSeek-V4 bundled drafts: prefixed key -> our field.
_V4_PREFIXED = {
    "dspark_block_size": "block_size",
    "dspark_markov_rank": "markov_rank",
    "dspark_markov_head_type": "markov_head_type",
    "dspark_noise_token_id": "mask_token_id",
    "dspark_target_layer_ids": "target_layer_ids",
    "dspark_n_routed_experts": "n_routed_experts",
    "dspark_num_experts_per_tok": "num_experts_per_tok",
    "dspark_num_layers": "num_draft_layers",
}


def _merged(raw: dict[str, Any]) -> dict[str, Any]:
    merged = dict(raw)
    for key in ("text_config", "dflash_config", "dspark_config"):
        nested = raw.get(key)
        if nested is not None and not isinstance(nested, dict):
            raise ValueError(f"draft config: {key!r} must be an object, got {type(nested).__name__}")
        merged.update(nested or {})
    for key, name in _V4_PREFIXED.items():
        if raw.get(key) is not None:
            merged[name] = raw[key]
    return merged


def _detect_arch(raw: dict[str, Any], merged: dict[str, Any]) -> str:
    if any(raw.get(key) is not None for key in _V4_PREFIXED):
        return "deepseek_v4"
    names = " ".join([str(merged.get("model_type", "")), *map(str, raw.get("architectures") or [])]).lower()
    if "deepseek" in names:
        return "deepseek_v4"
    if "gemma4" in names:
        return "gemma4"
    if "gemma" in names:
        raise ValueError(f"draft config: only Gemma4 drafts are supported among Gemma models, got {names!r}")
    return "qwen3"


def _int(merged: dict[str, Any], key: str, default: int | None = None, *, minimum: int = 0) -> int:
    value = merged.get(key, default)
    if value is None:
        raise ValueError(f"draft config: missing {key!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"draft config: {key!r} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"draft config: {key!r} must be >= {minimum}, got {value}")
    return value


def _rope(merged: dict[str, Any], arch: str) -> tuple[float, float]:
    """(rope_theta, partial_rotary_factor) from ``rope_parameters``/``rope_scaling``/top level."""
    params = merged.get("rope_parameters") or merged.get("rope_scaling") or {}
    if arch == "gemma4" and isinstance(params.get("full_attention"), dict):
        params = params["full_attention"]
    rope_type = params.get("rope_type", params.get("type", "default"))
    allowed = ("default", "proportional") if arch == "gemma4" else ("default",)
    if rope_type not in allowed:
        raise ValueError(f"draft config: rope_type {rope_type!r} is not supported (supported: {allowed})")
    theta = float(params.get("rope_theta", merged.get("rope_theta", 1_000_000.0)))
    partial = float(params.get("partial_rotary_factor", merged.get("partial_rotary_factor", 1.0)))
    if not (theta > 0 and 0 < partial <= 1):
        raise ValueError(f"draft config: bad RoPE parameters theta={theta}, partial_rotary_factor={partial}")
    return theta, partial


@dataclass
class DraftConfig:
    """Shapes and DSpark fields of one draft (see SPEC section 2).

    ``target_layer_ids`` are the tapped target layers (HF ``hidden_states[l + 1]``),
    ``block_size`` is gamma, ``markov_rank == 0`` is a plain DFlash draft. Gemma4 adds
    ``final_logit_softcapping``, ``attention_k_eq_v`` and the partial-RoPE fraction;
    DeepSeek-V4 adds the MoE fields (``scoring_func``: SGLang's ``sqrtsoftplus`` or
    ``sigmoid``), ``sliding_window``, its attention (``q_lora_rank > 0``: the low-rank
    query / grouped low-rank output MQA of :mod:`dspark_sgl.models.v4_attention`; 0: the
    older simplified ``wq``/``wkv``/``wo`` layout) and mHC (``hc_mult > 1``,
    :mod:`dspark_sgl.models.mhc`).
    """

    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    target_layer_ids: list[int]
    block_size: int
    mask_token_id: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    partial_rotary_factor: float = 1.0
    attention_bias: bool = False
    hidden_act: str = "silu"
    markov_rank: int = 0
    markov_head_type: str = "vanilla"
    enable_confidence_head: bool = False
    confidence_head_with_markov: bool = False
    confidence_head_bias: bool = True
    final_logit_softcapping: float | None = None
    attention_k_eq_v: bool = False
    n_routed_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    n_shared_experts: int = 0
    routed_scaling_factor: float = 1.0
    sliding_window: int | None = None
    scoring_func: str = "sigmoid"
    q_lora_rank: int = 0
    o_lora_rank: int = 0
    o_groups: int = 1
    qk_rope_head_dim: int = 0
    q_head_norm: bool = False
    hc_mult: int = 1
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    swiglu_limit: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_dspark(self) -> bool:
        return self.markov_rank > 0

    @property
    def num_taps(self) -> int:
        return len(self.target_layer_ids)

    @property
    def embed_scale(self) -> float:
        """Gemma4 scales embeddings by sqrt(H) rounded to bf16; other targets by 1."""
        if self.arch != "gemma4":
            return 1.0
        return float(torch.tensor(math.sqrt(self.hidden_size), dtype=torch.bfloat16))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DraftConfig:
        if not isinstance(raw, dict):
            raise ValueError(f"draft config must be a JSON object, got {type(raw).__name__}")
        merged = _merged(raw)
        arch = _detect_arch(raw, merged)
        hidden = _int(merged, "hidden_size", minimum=1)
        heads = _int(merged, "num_attention_heads", minimum=1)
        taps = merged.get("target_layer_ids")
        if (
            not isinstance(taps, list)
            or not taps
            or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in taps)
        ):
            raise ValueError(
                f"draft config: target_layer_ids must be a non-empty list of ints >= 0, got {taps!r}"
            )
        markov_rank = _int(merged, "markov_rank", 0)
        head_type = str(merged.get("markov_head_type") or "vanilla").lower()
        if head_type not in MARKOV_HEAD_TYPES:
            raise ValueError(
                f"draft config: markov_head_type {head_type!r} is not one of {MARKOV_HEAD_TYPES}"
            )
        enable_conf = bool(merged.get("enable_confidence_head", markov_rank > 0))
        conf_markov = bool(merged.get("confidence_head_with_markov", markov_rank > 0))
        if conf_markov and enable_conf and markov_rank == 0:
            raise ValueError("draft config: confidence_head_with_markov needs markov_rank > 0")
        theta, partial = _rope(merged, arch)
        softcap = merged.get("final_logit_softcapping")
        if arch == "deepseek_v4":
            layers = _int(merged, "num_draft_layers", len(taps), minimum=1)
            kv_heads = 1
            head_dim = _int(merged, "head_dim", hidden // heads, minimum=1)
            intermediate = _int(merged, "moe_intermediate_size", minimum=1)
        else:
            layers = _int(merged, "num_hidden_layers", minimum=1)
            kv_heads = _int(merged, "num_key_value_heads", heads, minimum=1)
            head_dim = _int(merged, "head_dim", hidden // heads, minimum=1)
            intermediate = _int(merged, "intermediate_size", minimum=1)
        if heads % kv_heads:
            raise ValueError(
                f"draft config: {heads} attention heads are not a multiple of {kv_heads} KV heads"
            )
        default_act = "gelu_pytorch_tanh" if arch == "gemma4" else "silu"
        config = cls(
            arch=arch,
            vocab_size=_int(merged, "vocab_size", minimum=1),
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            target_layer_ids=list(taps),
            block_size=_int(merged, "block_size", 7, minimum=1),
            mask_token_id=_int(merged, "mask_token_id"),
            rms_norm_eps=float(merged.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            partial_rotary_factor=partial,
            attention_bias=bool(merged.get("attention_bias", False)),
            hidden_act=str(merged.get("hidden_activation") or merged.get("hidden_act") or default_act),
            markov_rank=markov_rank,
            markov_head_type=head_type,
            enable_confidence_head=enable_conf,
            confidence_head_with_markov=conf_markov and enable_conf,
            confidence_head_bias=arch != "deepseek_v4",
            final_logit_softcapping=float(softcap) if softcap else None,
            attention_k_eq_v=bool(merged.get("attention_k_eq_v", False)),
            n_routed_experts=_int(merged, "n_routed_experts", 0),
            num_experts_per_tok=_int(merged, "num_experts_per_tok", 0),
            moe_intermediate_size=_int(merged, "moe_intermediate_size", 0),
            n_shared_experts=_int(merged, "n_shared_experts", 1 if arch == "deepseek_v4" else 0),
            routed_scaling_factor=float(merged.get("routed_scaling_factor", 1.0)),
            sliding_window=(
                _int(merged, "sliding_window", merged.get("window_size", 128), minimum=1)
                if arch == "deepseek_v4"
                else None
            ),
            raw=raw,
        )
        if arch == "deepseek_v4":
            _v4_fields(config, merged)
        if config.mask_token_id >= config.vocab_size:
            raise ValueError(
                f"draft config: mask_token_id {config.mask_token_id} is outside the embedding "
                f"(vocab_size {config.vocab_size})"
            )
        if arch == "deepseek_v4" and not 0 < config.num_experts_per_tok <= config.n_routed_experts:
            raise ValueError(
                f"draft config: num_experts_per_tok {config.num_experts_per_tok} must be in "
                f"[1, n_routed_experts={config.n_routed_experts}]"
            )
        return config

    def check_target(self, *, vocab_size: int, hidden_size: int, num_layers: int) -> None:
        """Raise if this draft cannot run against a target of these shapes."""
        if vocab_size != self.vocab_size:
            raise ValueError(f"draft vocab_size {self.vocab_size} differs from the target's {vocab_size}")
        if hidden_size != self.hidden_size:
            raise ValueError(f"draft hidden_size {self.hidden_size} differs from the target's {hidden_size}")
        bad = [t for t in self.target_layer_ids if t >= num_layers]
        if bad:
            raise ValueError(f"draft target_layer_ids {bad} are past the target's {num_layers} layers")


_SCORING_FUNCS = ("sqrtsoftplus", "sigmoid")


def _v4_fields(config: DraftConfig, merged: dict[str, Any]) -> None:
    """DeepSeek-V4's router, attention and mHC fields (SGLang's ``DeepSeekV4Config`` names
    and defaults where a checkpoint's config carries them)."""
    scoring = str(merged.get("scoring_func", "sqrtsoftplus"))
    if scoring not in _SCORING_FUNCS:
        raise ValueError(f"draft config: scoring_func {scoring!r} is not one of {_SCORING_FUNCS}")
    config.scoring_func = scoring
    config.q_lora_rank = _int(merged, "q_lora_rank", 0)
    if config.q_lora_rank:
        config.o_lora_rank = _int(merged, "o_lora_rank", minimum=1)
        config.o_groups = _int(merged, "o_groups", minimum=1)
        config.qk_rope_head_dim = _int(merged, "qk_rope_head_dim", minimum=2)
        config.q_head_norm = bool(merged.get("q_head_norm", True))
    config.hc_mult = _int(merged, "hc_mult", 1, minimum=1)
    config.hc_sinkhorn_iters = _int(merged, "hc_sinkhorn_iters", 20, minimum=1)
    config.hc_eps = float(merged.get("hc_eps", 1e-6))
    limit = merged.get("swiglu_limit")
    config.swiglu_limit = float(limit) if limit else None
    if merged.get("hc_pre_from_prev_sublayer"):
        raise ValueError(
            "draft config: hc_pre_from_prev_sublayer (DeepSeek-V4.1 mHC boundary) is not supported"
        )
