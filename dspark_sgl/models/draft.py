"""The DSpark (and DFlash) draft model: one code path for every backbone.

Data flow of one round, for R requests:

1. :meth:`DSparkDraft.project_context` turns tapped target features ``[N, n_taps * H]``
   (raw outputs of the target layers ``target_layer_ids``, HF ``hidden_states[l + 1]``)
   into context rows ``hidden_norm(fc(taps))``; :class:`ContextCache` keeps their K/V per
   layer and request (context rows keep their own positions).
2. :meth:`DSparkDraft.backbone` runs the block ``[x0, MASK, ..., MASK]`` (g slots at
   ``anchor_pos + k``) through the layers and the final norm: hidden ``[R, g, H]``.
3. :meth:`DSparkDraft.draft` adds the Markov head and the confidence head through
   :func:`dspark_sgl.markov.sample_block_with_head` (the kernel dispatch lives there) and
   returns a :class:`~dspark_sgl.markov.DraftBlock`. A DFlash draft (``markov_rank == 0``)
   samples every slot from its base logits independently.

Backbones (``config.arch``):

* ``qwen3``: pre-norm layers, q/k norms, RoPE, GQA, SiLU MLP (DeepSpec's Qwen3 draft).
* ``gemma4``: sandwich norms (``input``/``post_attention``/``pre_feedforward``/
  ``post_feedforward_layernorm``), Gemma4 RMSNorm (weight applied in float32), attention
  scale 1.0, proportional partial RoPE, ``attention_k_eq_v`` (V from the K projection
  through an unscaled norm), GELU-tanh MLP, embeddings times sqrt(H) rounded to bf16, and
  ``final_logit_softcapping`` applied to the base logits before the Markov bias.
  Assumption: every draft layer is a full-attention layer with ``head_dim``.
* ``deepseek_v4``: SGLang's V4 draft stages (:mod:`dspark_sgl.models.v4_attention`,
  :mod:`dspark_sgl.models.mhc`, the sqrtsoftplus MoE); :mod:`dspark_sgl.models.deepseek_v4`
  lists the checkpoint mapping, the facts checked against SGLang and the named differences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from dspark_sgl import markov, markov_quant, rng
from dspark_sgl.models.config import DraftConfig
from dspark_sgl.models.layers import ContextAttention, GatedMLP, MoE, RMSNorm
from dspark_sgl.models.mhc import HyperConnection, HyperHead
from dspark_sgl.models.v4_attention import V4Attention

__all__ = [
    "ConfidenceModule",
    "ContextCache",
    "DSparkDraft",
    "DraftLayer",
    "MarkovModule",
    "ragged_rows",
    "tapped_features",
]


def tapped_features(hidden_states: tuple[torch.Tensor, ...], taps: list[int]) -> torch.Tensor:
    """The draft's context features from an HF target's ``hidden_states``: layer ``l``'s
    output ``hidden_states[l + 1]`` per tapped layer, concatenated: [..., n_taps * H]. A
    target with mHC streams ([..., n, H], DeepSeek-V4) gives each layer's stream mean, as
    SGLang captures it (``mhc_stream_mean``)."""
    return torch.cat(
        [h.mean(dim=-2) if h.dim() == 4 else h for h in (hidden_states[t + 1] for t in taps)], dim=-1
    )


class DraftLayer(nn.Module):
    """One backbone layer (pre-norm for qwen3/deepseek_v4, sandwich norms for gemma4)."""

    def __init__(self, config: DraftConfig) -> None:
        super().__init__()
        arch = config.arch
        v4 = arch == "deepseek_v4" and config.q_lora_rank > 0
        # SGLang's RMSNorm multiplies in float32 and casts after (Gemma4's order).
        style = "gemma4" if arch == "gemma4" or v4 else "qwen3"
        eps = config.rms_norm_eps
        if arch == "gemma4":
            value_mode = "gemma4" if config.attention_k_eq_v else "separate"
            scaling = 1.0
        elif arch == "deepseek_v4":
            value_mode, scaling = "shared_kv", config.head_dim**-0.5
        else:
            value_mode, scaling = "separate", config.head_dim**-0.5
        self.sandwich = arch == "gemma4"
        self.input_layernorm = RMSNorm(config.hidden_size, eps, style=style)
        if v4:
            self.self_attn: nn.Module = V4Attention(config)
        else:
            self.self_attn = ContextAttention(
                config, value_mode=value_mode, norm_style=style, scaling=scaling
            )
        self.hc_attn = self.hc_ffn = None
        if config.hc_mult > 1:
            hc = dict(sinkhorn_iters=config.hc_sinkhorn_iters, hc_eps=config.hc_eps, rms_eps=eps)
            self.hc_attn = HyperConnection(config.hc_mult, config.hidden_size, **hc)
            self.hc_ffn = HyperConnection(config.hc_mult, config.hidden_size, **hc)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, style=style)
        if self.sandwich:
            self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, eps, style=style)
            self.post_feedforward_layernorm = RMSNorm(config.hidden_size, eps, style=style)
        if arch == "deepseek_v4":
            self.mlp: nn.Module = MoE(config)
        else:
            self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, ctx: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        if self.hc_attn is not None:
            # mHC: x is [R, g, n, H], n residual streams mixed around each sub-layer.
            y, post, comb = self.hc_attn.pre(x)
            x = self.hc_attn.post(self.self_attn(self.input_layernorm(y), positions, *ctx), x, post, comb)
            y, post, comb = self.hc_ffn.pre(x)
            return self.hc_ffn.post(self.mlp(self.post_attention_layernorm(y)), x, post, comb)
        attn = self.self_attn(self.input_layernorm(x), positions, *ctx)
        if self.sandwich:
            x = x + self.post_attention_layernorm(attn)
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x))


class MarkovModule(nn.Module):
    """Trainable Markov head weights (DeepSpec names): ``markov_w1`` Embedding [V, r],
    ``markov_w2`` Linear r -> V (weight [V, r]), gated adds ``gate_proj`` (H + r -> r),
    rnn adds ``joint_proj`` (2r + H -> 3r)."""

    def __init__(self, config: DraftConfig) -> None:
        super().__init__()
        v, r, h = config.vocab_size, config.markov_rank, config.hidden_size
        self.head_type = config.markov_head_type
        self.markov_w1 = nn.Embedding(v, r)
        self.markov_w2 = nn.Linear(r, v, bias=False)
        if self.head_type == "gated":
            self.gate_proj = nn.Linear(h + r, r)
        elif self.head_type == "rnn":
            self.joint_proj = nn.Linear(2 * r + h, 3 * r)

    def forward(self, prev: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Teacher-forced bias for every block position (differentiable; training).

        prev: [N, g] int64 (x_{k-1}, the true previous tokens), hidden: [N, g, H].
        Returns [N, g, V] float32, equal to stepping :meth:`sampler` through ``prev``.
        """
        emb = self.markov_w1(prev).float()
        w2 = self.markov_w2.weight.float()
        if self.head_type == "vanilla":
            return emb @ w2.T
        if self.head_type == "gated":
            features = torch.cat([hidden.float(), emb], dim=-1)
            gate = torch.sigmoid(F.linear(features, *self._f32(self.gate_proj)))
            return (gate * emb) @ w2.T
        weight, bias = self._f32(self.joint_proj)
        state = emb.new_zeros(emb.shape[0], emb.shape[-1])
        outs = []
        for k in range(prev.shape[1]):
            z = torch.cat([state, emb[:, k], hidden[:, k].float()], dim=-1)
            gate, cand, out = F.linear(z, weight, bias).split(emb.shape[-1], dim=-1)
            g = torch.sigmoid(gate)
            state = g * state + (1.0 - g) * torch.tanh(cand)
            outs.append(torch.tanh(out))
        return torch.stack(outs, dim=1) @ w2.T

    @staticmethod
    def _f32(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        return linear.weight.float(), linear.bias.float()

    def sampler(self) -> markov.MarkovHead:
        """The inference head over these weights (no copies of W1/W2)."""
        w1, w2 = self.markov_w1.weight.detach(), self.markov_w2.weight.detach()
        if self.head_type == "gated":
            return markov.GatedMarkovHead(
                w1, w2, self.gate_proj.weight.detach(), self.gate_proj.bias.detach()
            )
        if self.head_type == "rnn":
            return markov.RnnMarkovHead(
                w1, w2, self.joint_proj.weight.detach(), self.joint_proj.bias.detach()
            )
        return markov.VanillaMarkovHead(w1, w2)


class ConfidenceModule(nn.Module):
    """``confidence_head.proj``: Linear (H + r, or H) -> 1 (no bias for DeepSeek-V4)."""

    def __init__(self, config: DraftConfig) -> None:
        super().__init__()
        extra = config.markov_rank if config.confidence_head_with_markov else 0
        self.proj = nn.Linear(config.hidden_size + extra, 1, bias=config.confidence_head_bias)

    def forward(self, hidden: torch.Tensor, prev_emb: torch.Tensor | None) -> torch.Tensor:
        """Raw confidence logits [N, g] from hidden [N, g, H] and W1[prev] [N, g, r]
        (None when the head has no Markov feature); differentiable (training)."""
        features = hidden.float() if prev_emb is None else torch.cat([hidden.float(), prev_emb.float()], -1)
        bias = self.proj.bias.float() if self.proj.bias is not None else None
        return F.linear(features, self.proj.weight.float(), bias).squeeze(-1)

    def sampler(self, sts_temperatures: torch.Tensor | None) -> markov.ConfidenceHead:
        bias = self.proj.bias.detach() if self.proj.bias is not None else 0.0
        return markov.ConfidenceHead(self.proj.weight.detach(), bias, sts_temperatures)


class DSparkDraft(nn.Module):
    """A DSpark/DFlash draft. Parameter names are DeepSpec's checkpoint keys.

    ``embed_tokens`` and ``lm_head`` are the frozen target weights (kept in DeepSpec
    checkpoints; :meth:`attach_target_vocab` shares the target's when a checkpoint
    omits them). ``sts_temperatures`` ([g] float32 or None) are applied at inference.
    """

    def __init__(self, config: DraftConfig) -> None:
        super().__init__()
        self.config = config
        h, v = config.hidden_size, config.vocab_size
        style = "gemma4" if config.arch == "gemma4" else "qwen3"
        self.embed_tokens = nn.Embedding(v, h)
        self.lm_head = nn.Linear(h, v, bias=False)
        self.embed_tokens.weight.requires_grad_(False)
        self.lm_head.weight.requires_grad_(False)
        self.fc = nn.Linear(config.num_taps * h, h, bias=False)
        self.hidden_norm = RMSNorm(h, config.rms_norm_eps, style=style)
        self.layers = nn.ModuleList(DraftLayer(config) for _ in range(config.num_hidden_layers))
        if config.arch == "deepseek_v4" and config.q_lora_rank > 0:
            style = "gemma4"  # SGLang's RMSNorm rounding (see DraftLayer)
            self.hidden_norm = RMSNorm(h, config.rms_norm_eps, style=style)
        self.norm = RMSNorm(h, config.rms_norm_eps, style=style)
        self.hc_head = (
            HyperHead(config.hc_mult, h, hc_eps=config.hc_eps, rms_eps=config.rms_norm_eps)
            if config.hc_mult > 1
            else None
        )
        self.markov_head = MarkovModule(config) if config.is_dspark else None
        self.confidence_head = ConfidenceModule(config) if config.enable_confidence_head else None
        self.sts_temperatures: torch.Tensor | None = None
        self.vocab_attached = True
        self.markov_w2_int8 = False  # draft with W2 quantized to int8 (set_markov_w2_int8)
        self._samplers: tuple | None = None

    @property
    def gamma(self) -> int:
        return self.config.block_size

    def attach_target_vocab(self, embed_weight: torch.Tensor, lm_head_weight: torch.Tensor) -> None:
        """Share the target's embedding [V, H] and output head [V, H] (no copy)."""
        v, h = self.config.vocab_size, self.config.hidden_size
        for name, w in (("embed_tokens", embed_weight), ("lm_head", lm_head_weight)):
            if tuple(w.shape) != (v, h):
                raise ValueError(f"target {name} weight is {list(w.shape)}, the draft needs [{v}, {h}]")
        self.embed_tokens.weight = nn.Parameter(embed_weight, requires_grad=False)
        self.lm_head.weight = nn.Parameter(lm_head_weight, requires_grad=False)
        self.vocab_attached = True

    def _require_vocab(self) -> None:
        if not self.vocab_attached:
            raise ValueError(
                "this draft checkpoint has no embed_tokens/lm_head: call attach_target_vocab() "
                "with the target's embedding and output head first"
            )

    def set_sts_temperatures(self, temperatures: torch.Tensor | None) -> None:
        """STS temperatures [g] (positive), applied to the confidence logits; None removes them."""
        if temperatures is not None:
            if self.confidence_head is None:
                raise ValueError("this draft has no confidence head to calibrate")
            temperatures = torch.as_tensor(temperatures, dtype=torch.float32).reshape(-1)
            if temperatures.numel() != self.gamma:
                raise ValueError(
                    f"STS needs {self.gamma} temperatures (one per position), got {temperatures.numel()}"
                )
            if not bool((torch.isfinite(temperatures) & (temperatures > 0)).all()):
                raise ValueError("STS temperatures must be finite and > 0")
            temperatures = temperatures.to(self.fc.weight.device)
        self.sts_temperatures = temperatures
        self._samplers = None

    def set_markov_w2_int8(self, enabled: bool) -> None:
        """Draft with W2 quantized to int8 with per-row scales (:mod:`dspark_sgl.markov_quant`,
        PyTorch path only) when ``enabled``, else with W2 as loaded. Vanilla Markov head only."""
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
        if enabled and (self.markov_head is None or self.markov_head.head_type != "vanilla"):
            raise ValueError("an int8 W2 needs a DSpark draft with the vanilla Markov head")
        self.markov_w2_int8 = enabled
        self._samplers = None

    def invalidate_samplers(self) -> None:
        """Forget cached inference heads (call after changing weights in place)."""
        self._samplers = None

    def samplers(self) -> tuple[markov.MarkovHead | None, markov.ConfidenceHead | None]:
        """(Markov head, confidence head) over the current weights, built once."""
        if self._samplers is None:
            head = self.markov_head.sampler() if self.markov_head is not None else None
            if head is not None and self.markov_w2_int8:
                head = markov_quant.Int8VanillaMarkovHead.quantize(head)
            conf = (
                self.confidence_head.sampler(self.sts_temperatures)
                if self.confidence_head is not None
                else None
            )
            self._samplers = (head, conf)
        return self._samplers

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        self._require_vocab()
        x = self.embed_tokens(tokens)
        scale = self.config.embed_scale
        return x * torch.tensor(scale, dtype=x.dtype) if scale != 1.0 else x

    def project_context(self, taps: torch.Tensor) -> torch.Tensor:
        """Context rows ``hidden_norm(fc(taps))``: taps [N, n_taps * H] -> [N, H]."""
        expected = self.config.num_taps * self.config.hidden_size
        if taps.dim() != 2 or taps.shape[1] != expected:
            raise ValueError(
                f"context features must be [N, {expected}] ({self.config.num_taps} tapped layers x "
                f"H={self.config.hidden_size}), got {list(taps.shape)}"
            )
        return self.hidden_norm(self.fc(taps.to(self.fc.weight.dtype)))

    def block_inputs(self, anchor: torch.Tensor, gamma: int | None = None) -> torch.Tensor:
        """[R, g] token ids ``[x0, MASK, ..., MASK]``."""
        gamma = self.gamma if gamma is None else gamma
        block = torch.full(
            (anchor.shape[0], gamma), self.config.mask_token_id, dtype=torch.int64, device=anchor.device
        )
        block[:, 0] = anchor
        return block

    def backbone(
        self, anchor: torch.Tensor, anchor_pos: torch.Tensor, context: ContextCache, gamma: int | None = None
    ) -> torch.Tensor:
        """Hidden states [R, g, H] after the final norm.

        anchor: [R] int64 (x0), anchor_pos: [R] int64 (its position); slot k sits at
        ``anchor_pos + k``. ``context`` holds the same R requests in the same order.
        """
        block = self.block_inputs(anchor, gamma)
        positions = anchor_pos[:, None] + torch.arange(block.shape[1], device=block.device)
        if context.rows != block.shape[0]:
            raise ValueError(f"context holds {context.rows} requests, the block has {block.shape[0]}")
        x = self.layer_input(block)
        valid = context.valid_mask()
        for i, layer in enumerate(self.layers):
            k, v = context.layer_kv(i)
            x = layer(x, positions, (k, v, context.positions, valid))
        return self.final_hidden(x)

    def layer_input(self, block: torch.Tensor) -> torch.Tensor:
        """The first layer's input for block tokens [..., g]: the embedding [..., g, H], or
        with mHC its ``hc_mult`` copies [..., g, n, H] (SGLang's ``forward_embed``)."""
        x = self.embed(block)
        if self.hc_head is None:
            return x
        return x.unsqueeze(-2).repeat_interleave(self.config.hc_mult, dim=-2)

    def final_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's output through the mHC head (if any) and the final norm: [..., H]."""
        if self.hc_head is not None:
            x = self.hc_head(x)
        return self.norm(x)

    def base_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``lm_head(hidden)`` as float32 (before any softcap): [..., V]."""
        self._require_vocab()
        return self.lm_head(hidden.to(self.lm_head.weight.dtype)).float()

    @torch.no_grad()
    def draft(
        self,
        anchor: torch.Tensor,
        anchor_pos: torch.Tensor,
        context: ContextCache,
        temperature: torch.Tensor,
        *,
        seed: rng.SeedLike,
        offset: rng.SeedLike,
    ) -> markov.DraftBlock:
        """Draft one block for R requests (backbone + Markov sampling + confidence).

        temperature: [R] float32 (0 = greedy). Random draws use stream DRAFT at
        (row, position k) of (seed, offset), as in :mod:`dspark_sgl.markov`.
        """
        hidden = self.backbone(anchor, anchor_pos, context)
        return self.sample(hidden, self.base_logits(hidden), anchor, temperature, seed=seed, offset=offset)

    @torch.no_grad()
    def sample(
        self,
        hidden: torch.Tensor,
        base: torch.Tensor,
        anchor: torch.Tensor,
        temperature: torch.Tensor,
        *,
        seed: rng.SeedLike,
        offset: rng.SeedLike,
    ) -> markov.DraftBlock:
        """The sequential stage of :meth:`draft`: Markov sampling (or independent slots
        for DFlash) and confidence from the backbone's hidden [R, g, H] and base logits
        [R, g, V] float32 (:meth:`backbone`, :meth:`base_logits`)."""
        head, conf = self.samplers()
        softcap = self.config.final_logit_softcapping
        if head is not None:
            return markov.sample_block_with_head(
                base,
                anchor,
                head,
                temperature,
                seed=seed,
                offset=offset,
                hidden=hidden.float() if (head.needs_hidden or conf is not None) else None,
                confidence_head=conf,
                logit_softcap=softcap,
            )
        if softcap is not None:
            base = markov.softcap(base, softcap)
        tokens = torch.stack(
            [
                markov.sample_from_logits(
                    base[:, k], temperature, seed=seed, offset=offset, stream=rng.Stream.DRAFT, position=k
                )
                for k in range(base.shape[1])
            ],
            dim=1,
        )
        return markov.DraftBlock(tokens=tokens, logits=base)


def ragged_rows(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten per-request counts [R] int64 into (request [N], index within request [N]),
    requests in order: counts [2, 3] -> ([0, 0, 1, 1, 1], [0, 1, 0, 1, 2])."""
    requests = torch.arange(counts.numel(), device=counts.device).repeat_interleave(counts)
    starts = torch.cumsum(counts, 0) - counts
    return requests, torch.arange(requests.numel(), device=counts.device) - starts[requests]


class ContextCache:
    """Per-request draft context: for every layer K/V ``[R, cap, kv_heads, d]``, the
    positions ``[R, cap]`` int64 and the lengths ``[R]`` int64. Rows past a request's
    length are padding and are masked out of attention."""

    def __init__(self, model: DSparkDraft, rows: int, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        cfg = model.config
        self.shape = (cfg.num_key_value_heads, cfg.head_dim)
        self.dtype = dtype
        self.device = device
        self.lengths = torch.zeros(rows, dtype=torch.int64, device=device)
        self.positions = torch.zeros(rows, 0, dtype=torch.int64, device=device)
        self.keys = [torch.zeros(rows, 0, *self.shape, dtype=dtype, device=device) for _ in model.layers]
        self.values = [torch.zeros(rows, 0, *self.shape, dtype=dtype, device=device) for _ in model.layers]

    @property
    def rows(self) -> int:
        return self.lengths.shape[0]

    @property
    def capacity(self) -> int:
        return self.positions.shape[1]

    def valid_mask(self) -> torch.Tensor:
        return torch.arange(self.capacity, device=self.device)[None, :] < self.lengths[:, None]

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer], self.values[layer]

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        extra = max(needed, 2 * self.capacity) - self.capacity
        pad = torch.zeros(self.rows, extra, dtype=torch.int64, device=self.device)
        self.positions = torch.cat([self.positions, pad], dim=1)
        for store in (self.keys, self.values):
            for i, t in enumerate(store):
                store[i] = torch.cat([t, t.new_zeros(self.rows, extra, *self.shape)], dim=1)

    @torch.no_grad()
    def append(self, taps: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor) -> None:
        """Add context rows: taps [N, n_taps * H], positions [N] int64, rows [N] int64
        (non-decreasing request indices; each request's rows in position order)."""
        if taps.shape[0] == 0:
            return
        if rows.numel() > 1 and bool((rows[1:] < rows[:-1]).any()):
            raise ValueError("context rows must be grouped by request in non-decreasing order")
        counts = torch.bincount(rows, minlength=self.rows)
        slots = self.lengths[rows] + ragged_rows(counts)[1]
        self._grow(int((self.lengths + counts).max()))
        ctx = self.model.project_context(taps)
        self.positions[rows, slots] = positions
        for i, layer in enumerate(self.model.layers):
            k, v = layer.self_attn.project_kv(ctx, positions)
            self.keys[i][rows, slots] = k.to(self.dtype)
            self.values[i][rows, slots] = v.to(self.dtype)
        self.lengths += counts

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these requests, in this order (rows [R'] int64)."""
        self.lengths = self.lengths[rows]
        self.positions = self.positions[rows]
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
