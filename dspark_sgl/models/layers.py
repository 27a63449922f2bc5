"""Building blocks of the draft backbone: norms, RoPE, feed-forward, context attention.

The attention is DFlash's: queries come from the block only; keys and values are the
context rows (projected target features, cached per request) followed by the block
rows; there is no causal mask inside the block. Padded context rows are masked out, so
a request's output does not depend on what else is in the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from dspark_sgl.models.config import DraftConfig

__all__ = ["ContextAttention", "GatedMLP", "MoE", "RMSNorm", "apply_rope", "rope_inv_freq"]


class RMSNorm(nn.Module):
    """RMSNorm normalised in float32.

    ``style="qwen3"``: cast back to the input dtype, then multiply by the weight (HF Qwen3).
    ``style="gemma4"``: multiply by the float32 weight, then cast (HF Gemma4);
    ``with_scale=False`` has no weight (Gemma4's value norm).
    """

    def __init__(self, dim: int, eps: float, *, style: str = "qwen3", with_scale: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.style = style
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is None:
            return normed.to(x.dtype)
        if self.style == "gemma4":
            return (normed * self.weight.float()).to(x.dtype)
        return self.weight * normed.to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, partial: float = 1.0) -> torch.Tensor:
    """[head_dim // 2] float32 inverse frequencies; Gemma4's proportional partial RoPE
    rotates the first ``int(partial * head_dim // 2)`` pairs and leaves the rest (zero
    frequency), with exponents relative to the full ``head_dim``."""
    rotated = int(partial * head_dim // 2)
    exponents = torch.arange(0, 2 * rotated, 2, dtype=torch.float32) / head_dim
    inv = 1.0 / (theta**exponents)
    return torch.cat([inv, torch.zeros(head_dim // 2 - rotated)])


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE. x: [..., heads, d]; positions: x.shape[:-2] int64.

    cos/sin are computed in float32 and cast to x's dtype before multiplying.
    """
    freqs = positions[..., None].float() * inv_freq.to(x.device)
    emb = torch.cat([freqs, freqs], dim=-1)[..., None, :]
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


_ACTIVATIONS = {
    "silu": F.silu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
}


def activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r} (supported: {sorted(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))``; with ``limit`` (DeepSeek-V4's ``swiglu_limit``) the
    gate is clamped to ``<= limit`` and up to ``[-limit, limit]`` first."""

    def __init__(self, hidden: int, intermediate: int, act: str, limit: float | None = None) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.act = activation(act)
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        if self.limit is not None:
            gate, up = gate.clamp(max=self.limit), up.clamp(min=-self.limit, max=self.limit)
        return self.down_proj(self.act(gate) * up)


_RENORMALIZE_EPS = 1e-20


class MoE(nn.Module):
    """Top-k routed experts plus always-on shared experts (DeepSeek style).

    Router (SGLang's ``biased_topk_impl``): ``s = sqrt(softplus(gate(x)))`` (DeepSeek-V4's
    ``sqrtsoftplus``) or ``sigmoid(gate(x))`` in float32; experts are chosen by ``s + bias``
    (``e_score_correction_bias``, selection only); the chosen ``s`` are divided by their
    sum (+ 1e-20) and scaled by ``routed_scaling_factor``. Output = routed sum + shared.
    """

    def __init__(self, config: DraftConfig) -> None:
        super().__init__()
        h, inter = config.hidden_size, config.moe_intermediate_size
        self.top_k = config.num_experts_per_tok
        self.scale = config.routed_scaling_factor
        self.scoring_func = config.scoring_func
        self.gate = nn.Linear(h, config.n_routed_experts, bias=False)
        self.gate.register_parameter(
            "e_score_correction_bias", nn.Parameter(torch.zeros(config.n_routed_experts))
        )
        limit = config.swiglu_limit
        self.experts = nn.ModuleList(
            GatedMLP(h, inter, config.hidden_act, limit) for _ in range(config.n_routed_experts)
        )
        self.shared_experts = (
            GatedMLP(h, inter * config.n_shared_experts, config.hidden_act, limit)
            if config.n_shared_experts
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits = F.linear(flat.float(), self.gate.weight.float())
        if self.scoring_func == "sqrtsoftplus":
            scores = F.softplus(logits).sqrt()
        else:
            scores = torch.sigmoid(logits)
        chosen = (scores + self.gate.e_score_correction_bias.float()).topk(self.top_k, dim=-1).indices
        weights = scores.gather(-1, chosen)
        weights = weights / (weights.sum(-1, keepdim=True) + _RENORMALIZE_EPS) * self.scale
        out = torch.zeros_like(flat, dtype=torch.float32)
        for e, expert in enumerate(self.experts):
            token, slot = (chosen == e).nonzero(as_tuple=True)
            if token.numel():
                out.index_add_(0, token, expert(flat[token]).float() * weights[token, slot, None])
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat).float()
        return out.to(x.dtype).reshape(shape)


class ContextAttention(nn.Module):
    """Block attention over [context; block] (SPEC section 2).

    value_mode: ``"separate"`` (``v_proj``), ``"gemma4"`` (k_eq_v: V = unscaled RMSNorm of
    the raw K projection) or ``"shared_kv"`` (DeepSeek-V4 style MQA: V = the normed K
    before RoPE). ``sliding_window`` limits the context a query at position p sees to
    positions > p - window.
    """

    def __init__(self, config: DraftConfig, *, value_mode: str, norm_style: str, scaling: float) -> None:
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            d,
        )
        bias = config.attention_bias
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=bias)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=bias)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=bias) if value_mode == "separate" else None
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=bias)
        self.q_norm = RMSNorm(d, config.rms_norm_eps, style=norm_style)
        self.k_norm = RMSNorm(d, config.rms_norm_eps, style=norm_style)
        self.value_mode = value_mode
        self.value_norm = (
            RMSNorm(d, config.rms_norm_eps, with_scale=False) if value_mode == "gemma4" else None
        )
        self.scaling = scaling
        self.sliding_window = config.sliding_window
        self.register_buffer(
            "inv_freq",
            rope_inv_freq(d, config.rope_theta, config.partial_rotary_factor),
            persistent=False,
        )

    def project_kv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of rows x [..., H] at positions [...]: each [..., kv_heads, d]."""
        raw = self.k_proj(x).unflatten(-1, (self.num_kv_heads, self.head_dim))
        k = self.k_norm(raw)
        if self.value_mode == "separate":
            v = self.v_proj(x).unflatten(-1, (self.num_kv_heads, self.head_dim))
        elif self.value_mode == "gemma4":
            v = self.value_norm(raw)
        else:
            v = k
        return apply_rope(k, positions, self.inv_freq), v

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        ctx_k: torch.Tensor,
        ctx_v: torch.Tensor,
        ctx_positions: torch.Tensor,
        ctx_valid: torch.Tensor,
        block_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [R, g, H], positions: [R, g]; ctx_k/ctx_v: [R, C, kv_heads, d];
        ctx_positions: [R, C] int64; ctx_valid: [R, C] bool, or [R, g, C] per query;
        block_mask: [R, g, g] bool (None: every slot sees every slot; training packs
        several blocks in one row and passes a block-diagonal mask). Returns [R, g, H]."""
        rows, gamma, _ = x.shape
        q = self.q_norm(self.q_proj(x).unflatten(-1, (self.num_heads, self.head_dim)))
        q = apply_rope(q, positions, self.inv_freq)
        k_blk, v_blk = self.project_kv(x, positions)
        k = torch.cat([ctx_k.to(k_blk.dtype), k_blk], dim=1)
        v = torch.cat([ctx_v.to(v_blk.dtype), v_blk], dim=1)
        ctx_mask = ctx_valid if ctx_valid.dim() == 3 else ctx_valid[:, None, :].expand(rows, gamma, -1)
        if self.sliding_window is not None:
            ctx_mask = ctx_mask & (ctx_positions[:, None, :] > positions[:, :, None] - self.sliding_window)
        if block_mask is None:
            block_mask = torch.ones(rows, gamma, gamma, dtype=torch.bool, device=x.device)
        mask = torch.cat([ctx_mask, block_mask], dim=-1)[:, None]  # [R, 1, g, C + g]
        groups = self.num_heads // self.num_kv_heads
        k = k.transpose(1, 2).repeat_interleave(groups, dim=1)
        v = v.transpose(1, 2).repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, scale=self.scaling)
        return self.o_proj(out.transpose(1, 2).flatten(-2))
