"""DeepSeek-V4's draft attention (SGLang 0.5.23 ``DSparkAttention``, compress ratio 0).

Multi-query attention with one shared key/value row per token:

* query: ``wq_b(q_norm(wq_a(x)))`` as [heads, d], then (``q_head_norm``) an RMS norm per head
  without weight; RoPE on the last ``rope_dim`` dims;
* key = value: ``kv_norm(wkv(x))`` [d] with RoPE on its last ``rope_dim`` dims (the value
  carries the rotation too); context rows get theirs from the projected target features;
* scores ``q . k * d^-0.5`` over the context rows inside the sliding window and the block
  rows, softmax with a per-head sink logit ``attn_sink`` in the denominator;
* output: the inverse RoPE at the query's position on the last ``rope_dim`` dims, then the
  grouped low-rank projection ``wo_a`` ([groups, o_rank, heads d / groups], in float32 and
  cast back) and ``wo_b``.

RoPE is DeepSeek's interleaved complex form: dims (2i, 2i + 1) rotate by ``pos * theta^(-2i /
rope_dim)`` (``precompute_freqs_cis`` without YaRN, as SGLang builds it for these layers).
Checkpoint names (per stage): ``attn.{wq_a, q_norm, wq_b, wkv, kv_norm, wo_a, wo_b, attn_sink}``.
"""

from __future__ import annotations

import torch
from torch import nn

from dspark_sgl.models.config import DraftConfig
from dspark_sgl.models.layers import RMSNorm

__all__ = ["V4Attention", "rope_interleaved"]


def rope_interleaved(
    x: torch.Tensor, positions: torch.Tensor, theta: float, *, inverse: bool = False
) -> torch.Tensor:
    """Rotate pairs (2i, 2i + 1) of the last dim of x [..., heads, r] by ``pos * theta^(-2i/r)``
    (complex multiply in float32, cast back); positions: x.shape[:-2] int64."""
    rope_dim = x.shape[-1]
    freqs = 1.0 / (theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float32, device=x.device) / rope_dim))
    angles = positions[..., None].float() * freqs
    rot = torch.polar(torch.ones_like(angles), angles)[..., None, :]
    if inverse:
        rot = rot.conj()
    z = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(z * rot).flatten(-2).to(x.dtype)


class V4Attention(nn.Module):
    """See the module docstring. ``project_kv`` gives the (key, value) rows the context
    cache stores: both the normed, rotated ``kv`` [..., 1, d]."""

    def __init__(self, config: DraftConfig) -> None:
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads, self.head_dim = config.num_attention_heads, d
        self.rope_dim, self.groups, self.o_rank = config.qk_rope_head_dim, config.o_groups, config.o_lora_rank
        if not 0 < self.rope_dim <= d or self.rope_dim % 2:
            raise ValueError(f"draft config: qk_rope_head_dim {self.rope_dim} must be even and in (0, {d}]")
        if self.num_heads % self.groups:
            raise ValueError(
                f"draft config: {self.num_heads} heads are not a multiple of o_groups {self.groups}"
            )
        eps = config.rms_norm_eps
        self.eps = eps
        self.wq_a = nn.Linear(h, config.q_lora_rank, bias=False)
        self.q_norm = RMSNorm(config.q_lora_rank, eps, style="gemma4")
        self.wq_b = nn.Linear(config.q_lora_rank, self.num_heads * d, bias=False)
        self.wkv = nn.Linear(h, d, bias=False)
        self.kv_norm = RMSNorm(d, eps, style="gemma4")
        self.wo_a = nn.Linear(self.num_heads * d // self.groups, self.groups * self.o_rank, bias=False)
        self.wo_b = nn.Linear(self.groups * self.o_rank, h, bias=False)
        self.attn_sink = nn.Parameter(torch.zeros(self.num_heads))
        self.q_head_norm = config.q_head_norm
        self.theta = config.rope_theta
        self.scaling = d**-0.5
        self.sliding_window = config.sliding_window

    def _rope(self, x: torch.Tensor, positions: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        r = self.rope_dim
        rotated = rope_interleaved(x[..., -r:], positions, self.theta, inverse=inverse)
        return torch.cat([x[..., :-r], rotated], dim=-1)

    def project_kv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(key, value) of rows x [..., H] at positions [...]: the same [..., 1, d] tensor."""
        kv = self._rope(self.kv_norm(self.wkv(x)).unsqueeze(-2), positions)
        return kv, kv

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
        """As :meth:`dspark_sgl.models.layers.ContextAttention.forward`: [R, g, H]."""
        rows, gamma, _ = x.shape
        q = self.wq_b(self.q_norm(self.wq_a(x))).unflatten(-1, (self.num_heads, self.head_dim))
        if self.q_head_norm:
            q = q * torch.rsqrt(q.float().square().mean(-1, keepdim=True) + self.eps).to(q.dtype)
        q = self._rope(q, positions)
        kv_blk, _ = self.project_kv(x, positions)
        kv = torch.cat([ctx_k.to(kv_blk.dtype), kv_blk], dim=1)[:, :, 0]  # [R, C + g, d]
        ctx_mask = ctx_valid if ctx_valid.dim() == 3 else ctx_valid[:, None, :].expand(rows, gamma, -1)
        if self.sliding_window is not None:
            ctx_mask = ctx_mask & (ctx_positions[:, None, :] > positions[:, :, None] - self.sliding_window)
        if block_mask is None:
            block_mask = torch.ones(rows, gamma, gamma, dtype=torch.bool, device=x.device)
        mask = torch.cat([ctx_mask, block_mask], dim=-1)[:, :, None, :]  # [R, g, 1, C + g]
        scores = torch.einsum("rghd,rcd->rghc", q.float(), kv.float()) * self.scaling
        scores = scores.masked_fill(~mask, -torch.inf)
        sink = self.attn_sink.float()[None, None, :, None].expand(rows, gamma, -1, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        o = torch.einsum("rghc,rcd->rghd", probs, kv.float()).to(x.dtype)
        o = self._rope(o, positions, inverse=True)
        o = o.reshape(rows, gamma, self.groups, -1)
        wo_a = self.wo_a.weight.view(self.groups, self.o_rank, -1)
        o = torch.einsum("rgnd,nkd->rgnk", o.float(), wo_a.float()).to(x.dtype)
        return self.wo_b(o.flatten(-2))
