"""Manifold hyper-connections (mHC) of DeepSeek-V4: ``n`` residual streams per token.

The residual is ``x [N, n, H]`` (``n = hc_mult``; the embedding is repeated ``n`` times).
Around each sub-layer ``f`` (attention, feed-forward), with mixing weights ``fn
[(2 + n) n, n H]``, ``base [(2 + n) n]`` and ``scale [3]``:

* ``mixes = (x_flat @ fn.T) * rsqrt(mean(x_flat^2) + rms_eps)``, x_flat = x as [N, n H] float32;
* ``pre = sigmoid(mixes[:n] * scale[0] + base[:n]) + hc_eps``: the sub-layer reads
  ``y = sum_i pre_i x_i`` (cast to x's dtype);
* ``post = 2 sigmoid(mixes[n:2n] * scale[1] + base[n:2n])``: where ``f(y)`` is written back;
* ``comb``: ``mixes[2n:]`` as [n, n] times ``scale[2]`` plus base, a row softmax + eps, then
  Sinkhorn normalisation (columns, then ``iters - 1`` rounds of rows and columns, each
  dividing by ``sum + eps``): how the streams mix;
* the new residual ``x'_j = post_j f(y) + sum_i comb[i, j] x_i``.

The head collapses the streams before the final norm: ``y = sum_i (sigmoid(mixes_i * scale
+ base_i) + hc_eps) x_i`` with ``fn [n, n H]``, ``base [n]``, ``scale [1]``.

These are the formulas of SGLang 0.5.23's torch references (``_mhc_pre_torch``,
``_mhc_post_torch`` in ``sglang.kernels.ops.layernorm.mhc`` and ``hc_head_torch`` in
``sglang.srt.models.deepseek_v4``); ``tests/test_deepseek_v4.py`` checks them against those
functions. Checkpoint names: ``hc_attn_{fn,base,scale}``, ``hc_ffn_{fn,base,scale}`` per
stage and ``hc_head_{fn,base,scale}`` on the last stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

__all__ = ["HyperConnection", "HyperHead"]


def _mixes(x: torch.Tensor, fn: torch.Tensor, rms_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.flatten(-2).float()
    rsqrt = torch.rsqrt(flat.square().mean(-1, keepdim=True) + rms_eps)
    return flat, F.linear(flat, fn.float()) * rsqrt


class HyperConnection(nn.Module):
    """One sub-layer's hyper-connection: parameters ``fn``, ``base``, ``scale`` (float32)."""

    def __init__(self, hc_mult: int, hidden_size: int, *, sinkhorn_iters: int, hc_eps: float, rms_eps: float):
        super().__init__()
        n = hc_mult
        self.hc_mult, self.sinkhorn_iters, self.hc_eps, self.rms_eps = n, sinkhorn_iters, hc_eps, rms_eps
        self.fn = nn.Parameter(torch.zeros((2 + n) * n, n * hidden_size))
        self.base = nn.Parameter(torch.zeros((2 + n) * n))
        self.scale = nn.Parameter(torch.ones(3))

    def pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [..., n, H] -> (sub-layer input [..., H] in x's dtype, post [..., n], comb [..., n, n])."""
        n, eps = self.hc_mult, self.hc_eps
        _, mixes = _mixes(x, self.fn, self.rms_eps)
        base, scale = self.base.float(), self.scale.float()
        pre = torch.sigmoid(mixes[..., :n] * scale[0] + base[:n]) + eps
        post = 2.0 * torch.sigmoid(mixes[..., n : 2 * n] * scale[1] + base[n : 2 * n])
        comb = mixes[..., 2 * n :].unflatten(-1, (n, n)) * scale[2] + base[2 * n :].view(n, n)
        comb = comb.softmax(-1) + eps
        comb = comb / (comb.sum(-2, keepdim=True) + eps)
        for _ in range(self.sinkhorn_iters - 1):
            comb = comb / (comb.sum(-1, keepdim=True) + eps)
            comb = comb / (comb.sum(-2, keepdim=True) + eps)
        y = (pre.unsqueeze(-1) * x.float()).sum(dim=-2).to(x.dtype)
        return y, post, comb

    @staticmethod
    def post(out: torch.Tensor, x: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
        """New residual [..., n, H] from the sub-layer output out [..., H] (in out's dtype)."""
        mixed = post.unsqueeze(-1) * out.unsqueeze(-2) + (comb.unsqueeze(-1) * x.unsqueeze(-2)).sum(dim=-3)
        return mixed.type_as(out)


class HyperHead(nn.Module):
    """The streams' collapse before the final norm: parameters ``fn [n, n H]``, ``base [n]``,
    ``scale [1]`` (float32)."""

    def __init__(self, hc_mult: int, hidden_size: int, *, hc_eps: float, rms_eps: float) -> None:
        super().__init__()
        self.hc_eps, self.rms_eps = hc_eps, rms_eps
        self.fn = nn.Parameter(torch.zeros(hc_mult, hc_mult * hidden_size))
        self.base = nn.Parameter(torch.zeros(hc_mult))
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., n, H] -> [..., H] in x's dtype."""
        _, mixes = _mixes(x, self.fn, self.rms_eps)
        pre = torch.sigmoid(mixes * self.scale.float() + self.base.float()) + self.hc_eps
        return (pre.unsqueeze(-1) * x.float()).sum(dim=-2).to(x.dtype)
