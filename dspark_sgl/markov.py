"""The sequential stage of DSpark: Markov heads, the confidence head and block sampling.

For k = 1..g, left to right: ``logits_k = U_k + B(x_{k-1})`` with ``x_0`` = anchor,
``x_k ~ softmax(logits_k / T)`` (argmax when ``T == 0``). The draft distribution that
verification must use is exactly ``q_k = softmax(logits_k / T)``; ``DraftBlock.logits``
holds ``logits_k`` (before the temperature).

Weights are stored as in DeepSpec checkpoints: ``w1`` = ``markov_head.markov_w1.weight``
``[V, r]`` (an embedding) and ``w2`` = ``markov_head.markov_w2.weight`` ``[V, r]`` (a
``Linear(r, V)``), so the paper's ``B(x) = W1[x] @ W2`` is ``w1[x] @ w2.T``.

Sampling uses :func:`draft_sample` with :mod:`dspark_sgl.rng` (stream ``DRAFT``, row =
batch row, position = k - 1): Gumbel-max over groups of 16 columns (a group's key is its
log-sum-exp plus one Gumbel draw), then the token inside the winning group by its running
sum against a second uniform; exactly ``softmax(logits_k / T)``. Greedy rows take the
argmax, which breaks ties towards the smallest token id and ranks NaN above every number
(``torch.argmax``'s order, also SGLang's Markov sampler's): with value checks off, a NaN
logit is drawn, in sampled rows too. Arithmetic
is float32, except where SGLang rounds: the bias ``W1[x] @ W2`` is rounded to the weights'
dtype (SGLang's ``markov_w2`` Linear in that dtype), the logits to ``logits_dtype`` (its
step dtype), the confidence features and raw logit to the projection's dtype.

With the vanilla head on a GPU, :func:`sample_block_with_head` runs the fused CUDA kernel
``markov_block`` (csrc/markov_block.cu): it never materialises the [R, V] bias, reads W2
once per position for all rows, and writes the [R, g, V] logits only when asked
(``keep_logits``); verification can instead use the block's :class:`DraftStats`.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dspark_sgl import _checks, _dispatch, rng

__all__ = [
    "DRAFT_GROUP",
    "ConfidenceHead",
    "DraftBlock",
    "DraftStats",
    "GatedMarkovHead",
    "MarkovHead",
    "RnnMarkovHead",
    "VanillaMarkovHead",
    "draft_groups",
    "draft_sample",
    "empty_shard_candidates",
    "markov_bias",
    "merge_shard_candidates",
    "pack_shard_candidates",
    "sample_block",
    "sample_block_sharded",
    "sample_block_with_head",
    "sample_from_logits",
    "softcap",
    "stats_cheaper_than_logits",
]


@dataclass
class DraftStats:
    """What verification needs of a vanilla-head block in place of its [R, g, V] logits.

    max, sum: [R, g] float32 softmax statistics of ``logits / T`` (T = 1 on greedy rows),
    so ``q_k(v) = exp(logits[r, k, v] / T - max[r, k]) / sum[r, k]``;
    token_logits: [R, g] float32, ``logits[r, k, tokens[r, k]]``.
    base_logits [R, g, V], anchor [R], w1 / w2 [V, r] and logit_softcap recompute one row:
    ``logits[r, k] = softcap(base_logits[r, k]) + w1[x_{k-1}] @ w2.T`` (``x_{-1}`` = anchor),
    the bias rounded to w2's dtype first (see :func:`markov_bias`).
    token_scores: [R, g] float32 keys of the drafted tokens (:func:`draft_sample`: the
    winning group's log-sum-exp plus its Gumbel draw, the logit itself on greedy rows), what
    a vocab shard's winner is compared by.
    vocab_start: the first global column of a vocab shard (0 when the vocab is whole); the
    statistics of a shard cover its columns only, and ``tokens`` are global ids.
    w2_scale: [V] float32 per-row scales when ``w2`` is int8 (an
    :class:`~dspark_sgl.markov_quant.Int8VanillaMarkovHead`): the row's bias is then
    :func:`~dspark_sgl.markov_quant.int8_bias`, the formula it was drafted with.
    Valid only for the temperatures the block was drafted with.
    """

    max: torch.Tensor
    sum: torch.Tensor
    token_logits: torch.Tensor
    base_logits: torch.Tensor
    anchor: torch.Tensor
    w1: torch.Tensor
    w2: torch.Tensor
    logit_softcap: float | None = None
    logits_dtype: torch.dtype = torch.float32
    token_scores: torch.Tensor | None = None
    vocab_start: int = 0
    w2_scale: torch.Tensor | None = None

    def row_logits(self, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Recompute ``logits[r, position[r]]`` for every row: [R, V] float32.

        tokens: [R, g] int64 (the block's tokens), position: [R] int64 in [0, g).
        """
        rows = position.shape[0]
        row_ids = torch.arange(rows, device=position.device)
        prev_tokens = torch.cat([self.anchor[:, None], tokens[:, :-1]], dim=1)
        prev = prev_tokens[row_ids, position]
        base = self.base_logits[row_ids, position].float()
        if self.logit_softcap is not None:
            base = softcap(base, self.logit_softcap)
        if self.w2_scale is None:
            bias = _vanilla_bias(self.w1, self.w2, prev)
        else:
            from dspark_sgl.markov_quant import int8_bias  # markov_quant builds on this module

            bias = int8_bias(self.w1, self.w2, self.w2_scale, prev)
        return _round_logits(base + bias, self.logits_dtype)


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """Gemma's logit soft-cap ``cap * tanh(x / cap)`` of float32 ``logits`` (any shape).

    The division is an IEEE division on every device, as in the kernels (``softcap`` in
    csrc/include/dspark_sgl/common.cuh): ``cap`` is a device tensor, because PyTorch's CUDA
    backend turns a division by a Python float into a multiply by its rounded reciprocal.
    """
    cap_t = torch.full((), cap, dtype=logits.dtype, device=logits.device)
    return cap_t * torch.tanh(logits / cap_t)


def _round_logits(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 logits rounded to ``dtype`` (and back to float32): what a sampler that keeps
    its logits in bf16/fp16 (SGLang's step dtype) draws from."""
    return logits if dtype == torch.float32 else logits.to(dtype).float()


def softmax_stats(scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, sum of exp(x - max)) over the last dim of float32 ``scaled``: [...] each."""
    peak = scaled.amax(dim=-1)
    return peak, torch.exp(scaled - peak.unsqueeze(-1)).sum(dim=-1)


def stats_cheaper_than_logits(rows: int, gamma: int, vocab: int, rank: int, weight_bytes: int) -> bool:
    """Whether verifying from :class:`DraftStats` moves fewer bytes than keeping the logits.

    Keeping them writes and later reads ``R * g * V`` float32; the statistics form instead
    recomputes at most one row per request (W2 once, ``V * r`` weights, plus the rows' base
    logits).
    """
    keep = 2 * rows * gamma * vocab * 4
    recompute = vocab * rank * weight_bytes + rows * vocab * 4
    return recompute < keep


@dataclass
class DraftBlock:
    """One drafted block for R rows and g positions.

    tokens: [R, g] int64, the sampled draft tokens.
    logits: [R, g, V] float32, the Markov-corrected logits the tokens were drawn from, or
        None when the block was drafted with ``keep_logits=False``.
    confidence: [R, g] float32 in (0, 1), STS-calibrated ``c_k``, or None without a head.
    confidence_logits: [R, g] float32, the raw head output ``z_k`` (before STS), or None.
    stats: :class:`DraftStats` (vanilla head only), or None.
    """

    tokens: torch.Tensor
    logits: torch.Tensor | None
    confidence: torch.Tensor | None = None
    confidence_logits: torch.Tensor | None = None
    stats: DraftStats | None = None

    def verify_input(self) -> torch.Tensor | DraftStats:
        """What :func:`dspark_sgl.verify.chain_verify` takes as ``draft_logits``."""
        if self.logits is not None:
            return self.logits
        if self.stats is None:
            raise ValueError("this block kept neither its logits nor its statistics")
        return self.stats


def _check_markov_weights(w1: torch.Tensor, w2: torch.Tensor) -> tuple[int, int]:
    _checks.tensor("w1", w1, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    _checks.tensor("w2", w2, dtypes=_checks.FLOAT_DTYPES, ndim=2, device=w1.device)
    if w1.shape[1] != w2.shape[1]:
        raise ValueError(
            f"w1 and w2 must share the Markov rank r: w1 is {list(w1.shape)}, w2 is {list(w2.shape)}"
        )
    _checks.finite("w1", w1)
    _checks.finite("w2", w2)
    return w2.shape[0], w1.shape[1]


def markov_bias(w1: torch.Tensor, w2: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Vanilla transition bias ``w1[prev] @ w2.T``.

    w1: [V1, r], w2: [V, r] (float32/bf16/fp16), prev: [N] int64 token ids in [0, V1).
    Returns [N, V] float32: the float32 sum of products rounded once to w2's dtype (SGLang's
    ``markov_w2(W1[prev])`` Linear in the weights' dtype; float32 weights stay float32).
    """
    _check_markov_weights(w1, w2)
    _checks.tensor("prev", prev, dtypes=(torch.int64,), ndim=1, device=w1.device)
    _checks.in_range("prev", prev, 0, w1.shape[0])
    return _vanilla_bias(w1, w2, prev)


def _project(latent: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``latent @ w2.T`` as [N, V] float32, computed in w2's dtype (latent cast to it, a float32
    accumulator rounded once to it), as SGLang's ``markov_w2`` Linear; w2 is never converted."""
    return torch.nn.functional.linear(latent.to(w2.dtype), w2).float()


def _vanilla_bias(
    w1: torch.Tensor, w2: torch.Tensor, prev: torch.Tensor, w2_f64: torch.Tensor | None = None
) -> torch.Tensor:
    """[N, V] float32: ``W1[prev]`` cast to W2's dtype, the products summed in float64 (each
    product of two float32 values is exact there), rounded to float32 and then to W2's dtype.

    That is what the kernel's float32 accumulator rounded to W2's dtype gives wherever its sum
    is exact, and a column's value does not depend on how many columns are computed with it
    (a BLAS float32 product's summation order does), so a vocab shard's bias equals the
    unsharded one bit for bit. ``w2_f64``: a cached float64 copy of ``w2`` (reference only;
    the kernel path never makes one).
    """
    w2_f64 = w2.double() if w2_f64 is None else w2_f64
    bias = (w1[prev].to(w2.dtype).double() @ w2_f64.T).float()
    return _round_logits(bias, w2.dtype)


class MarkovHead(abc.ABC):
    """A sequential head: given the previous token (and hidden state), a [N, V] bias.

    ``w1`` [V, r] and ``w2`` [V, r] are shared by every variant; ``state`` is the
    recurrent state (None for stateless heads).
    """

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor) -> None:
        self.vocab_size, self.rank = _check_markov_weights(w1, w2)
        if w1.shape[0] != w2.shape[0]:
            raise ValueError(f"w1 {list(w1.shape)} and w2 {list(w2.shape)} must have the same vocabulary")
        self.w1 = w1
        self.w2 = w2

    @property
    def needs_hidden(self) -> bool:
        return False

    def prev_embedding(self, prev: torch.Tensor) -> torch.Tensor:
        """``W1[prev]`` as float32, [N, r]."""
        return self.w1[prev].float()

    def initial_state(self, rows: int) -> torch.Tensor | None:
        return None

    @abc.abstractmethod
    def step(
        self, prev: torch.Tensor, hidden: torch.Tensor | None, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(bias [N, V] float32, next state) for previous tokens ``prev`` [N]; the bias is
        ``W2`` applied in its own dtype (rounded to it, see :func:`markov_bias`)."""


class VanillaMarkovHead(MarkovHead):
    """``B = W1[prev] @ W2``: a rank-r first-order transition bias.

    The bias is computed in W2's dtype (:attr:`bias_dtype`), as SGLang computes it for both
    its DSpark and its V4 heads: ``W1[prev]`` cast to that dtype, accumulated in float32,
    rounded once to it, then upcast into the float32 step add; float32 rounds nothing.

    A vocab shard (tensor parallelism): ``w1`` is the whole [V, r] embedding (any previous
    token), ``w2`` the rank's rows ``[vocab_start, vocab_start + V_local)``; the head then
    biases, samples and reports only those columns, with noise keyed by the global column's group
    (see :func:`sample_block_sharded`). ``vocab_size`` is the local width.
    """

    def __init__(
        self,
        w1: torch.Tensor,
        w2: torch.Tensor,
        *,
        vocab_start: int = 0,
    ) -> None:
        if isinstance(vocab_start, bool) or not isinstance(vocab_start, int) or vocab_start < 0:
            raise ValueError(f"vocab_start must be an int >= 0, got {vocab_start!r}")
        sharded = vocab_start != 0 or w1.shape[0] != w2.shape[0]
        if sharded:
            vocab, _ = _check_markov_weights(w1, w2)
            if vocab_start + vocab > w1.shape[0]:
                raise ValueError(
                    f"w2 rows [{vocab_start}, {vocab_start + vocab}) exceed the vocabulary of w1 "
                    f"({w1.shape[0]})"
                )
            self.vocab_size, self.rank = vocab, w1.shape[1]
            self.w1, self.w2 = w1, w2
        else:
            super().__init__(w1, w2)
        self._w2_f64: torch.Tensor | None = None
        self.vocab_start = vocab_start
        self.total_vocab = w1.shape[0]
        # Made by shard(): one rank's slice, even when it holds the whole vocabulary.
        self.is_shard = False

    @property
    def bias_dtype(self) -> torch.dtype:
        """The dtype the bias is rounded to: W2's."""
        return self.w2.dtype

    def shard(self, start: int, end: int) -> VanillaMarkovHead:
        """The head of the rank holding global columns ``[start, end)`` (a view of ``w2``; empty
        on a rank past the vocabulary, whose lm_head partition is all padding)."""
        if self.vocab_start != 0 or self.total_vocab != self.vocab_size:
            raise ValueError("shard() needs a head over the whole vocabulary")
        if not 0 <= start <= end <= self.vocab_size:
            raise ValueError(f"shard [{start}, {end}) is not inside [0, {self.vocab_size}]")
        shard = VanillaMarkovHead(self.w1, self.w2[start:end], vocab_start=start)
        shard.is_shard = True
        return shard

    def step(
        self, prev: torch.Tensor, hidden: torch.Tensor | None, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._w2_f64 is None:  # made on the first reference step only (the kernel never needs it)
            self._w2_f64 = self.w2.double()
        return _vanilla_bias(self.w1, self.w2, prev, self._w2_f64), None


def _check_linear(
    name: str, weight: torch.Tensor, bias: torch.Tensor, out_dim: int, in_dim: int, device: torch.device
) -> None:
    _checks.tensor(
        f"{name}.weight", weight, dtypes=_checks.FLOAT_DTYPES, shape=(out_dim, in_dim), device=device
    )
    _checks.tensor(f"{name}.bias", bias, dtypes=_checks.FLOAT_DTYPES, shape=(out_dim,), device=device)
    _checks.finite(f"{name}.weight", weight)
    _checks.finite(f"{name}.bias", bias)


class GatedMarkovHead(MarkovHead):
    """``B = W2(g * W1[prev])``, ``g = sigmoid(gate_proj([h_k; W1[prev]]))``.

    gate_weight: [r, H + r], gate_bias: [r] (DeepSpec ``markov_head.gate_proj``).
    """

    def __init__(
        self, w1: torch.Tensor, w2: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor
    ) -> None:
        super().__init__(w1, w2)
        hidden_size = gate_weight.shape[-1] - self.rank if gate_weight.dim() == 2 else -1
        if hidden_size < 1:
            raise ValueError(
                f"gate_proj.weight must be [r, H + r] with r={self.rank}, got {list(gate_weight.shape)}"
            )
        _check_linear("gate_proj", gate_weight, gate_bias, self.rank, hidden_size + self.rank, w1.device)
        self.hidden_size = hidden_size
        self.gate_weight = gate_weight.float()
        self.gate_bias = gate_bias.float()

    @property
    def needs_hidden(self) -> bool:
        return True

    def step(
        self, prev: torch.Tensor, hidden: torch.Tensor | None, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        emb = self.prev_embedding(prev)
        gate = torch.sigmoid(torch.cat([hidden.float(), emb], dim=-1) @ self.gate_weight.T + self.gate_bias)
        return _project(gate * emb, self.w2), None


class RnnMarkovHead(MarkovHead):
    """Gated recurrent head (paper eq. 6).

    ``z = [s_{k-1}; W1[prev]; h_k]``, ``joint_proj(z)`` split into gate, candidate and
    output (each r wide), ``s_k = sig(g) s_{k-1} + (1 - sig(g)) tanh(c)``,
    ``B = W2(tanh(o))``, ``s_0 = 0``. joint_weight: [3r, 2r + H], joint_bias: [3r].
    """

    def __init__(
        self, w1: torch.Tensor, w2: torch.Tensor, joint_weight: torch.Tensor, joint_bias: torch.Tensor
    ) -> None:
        super().__init__(w1, w2)
        hidden_size = joint_weight.shape[-1] - 2 * self.rank if joint_weight.dim() == 2 else -1
        if hidden_size < 1:
            raise ValueError(
                f"joint_proj.weight must be [3r, 2r + H] with r={self.rank}, got {list(joint_weight.shape)}"
            )
        _check_linear(
            "joint_proj", joint_weight, joint_bias, 3 * self.rank, hidden_size + 2 * self.rank, w1.device
        )
        self.hidden_size = hidden_size
        self.joint_weight = joint_weight.float()
        self.joint_bias = joint_bias.float()

    @property
    def needs_hidden(self) -> bool:
        return True

    def initial_state(self, rows: int) -> torch.Tensor | None:
        return torch.zeros(rows, self.rank, dtype=torch.float32, device=self.w1.device)

    def step(
        self, prev: torch.Tensor, hidden: torch.Tensor | None, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = torch.cat([state, self.prev_embedding(prev), hidden.float()], dim=-1)
        gate, cand, out = (z @ self.joint_weight.T + self.joint_bias).split(self.rank, dim=-1)
        g = torch.sigmoid(gate)
        new_state = g * state + (1.0 - g) * torch.tanh(cand)
        return _project(torch.tanh(out), self.w2), new_state


class ConfidenceHead:
    """``c_k = sigmoid((w . [h_k; W1[x_{k-1}]] + b) / T_k)``.

    weight: [H + r] (with the Markov feature) or [H]; bias: a float or one-element
    tensor; sts_temperatures: [g] positive float32 (STS), or None for T_k = 1. The raw
    logit is computed as SGLang's ``DSparkConfidenceHead``: ``W1[x]`` cast to the hidden
    states' dtype, the features to the projection's dtype (``weight.dtype``), a float32
    dot product, the result rounded to the projection's dtype.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: float | torch.Tensor = 0.0,
        sts_temperatures: torch.Tensor | None = None,
    ) -> None:
        _checks.tensor("conf_weight", weight, dtypes=_checks.FLOAT_DTYPES)
        self.dtype = weight.dtype
        self.weight = weight.reshape(-1).float()
        _checks.finite("conf_weight", self.weight)
        if isinstance(bias, torch.Tensor):
            _checks.tensor("conf_bias", bias, dtypes=_checks.FLOAT_DTYPES, device=weight.device)
            if bias.numel() != 1:
                raise ValueError(f"conf_bias must hold one value, got shape {list(bias.shape)}")
            bias = bias.reshape(()).float()
            _checks.finite("conf_bias", bias)
        elif not isinstance(bias, (int, float)):
            raise TypeError(f"conf_bias must be a float or a tensor, got {type(bias).__name__}")
        self.bias = bias
        if sts_temperatures is not None:
            _checks.tensor(
                "sts_temperatures", sts_temperatures, dtypes=(torch.float32,), ndim=1, device=weight.device
            )
            if _checks.values_checkable(sts_temperatures) and not bool(
                (torch.isfinite(sts_temperatures) & (sts_temperatures > 0)).all()
            ):
                raise ValueError("sts_temperatures must be finite and > 0")
        self.sts_temperatures = sts_temperatures

    def uses_markov_feature(self, hidden_size: int, rank: int) -> bool:
        n = self.weight.numel()
        if n == hidden_size + rank:
            return True
        if n == hidden_size:
            return False
        raise ValueError(
            f"conf_weight must have H + r = {hidden_size + rank} or H = {hidden_size} elements, got {n}"
        )

    def logit(self, hidden_k: torch.Tensor, prev_emb: torch.Tensor | None) -> torch.Tensor:
        """Raw logit ``z`` [N] float32 (a value of the projection's dtype) from hidden [N, H]
        and (optionally) W1[prev] [N, r], each in its own dtype."""
        features = hidden_k
        if prev_emb is not None:
            features = torch.cat([hidden_k, prev_emb.to(hidden_k.dtype)], dim=-1)
        return _round_logits(features.to(self.dtype).float() @ self.weight + self.bias, self.dtype)

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply STS to [R, g] raw logits: sigmoid(z / T_k)."""
        if self.sts_temperatures is None:
            return torch.sigmoid(logits)
        if self.sts_temperatures.numel() != logits.shape[-1]:
            raise ValueError(
                f"sts_temperatures has {self.sts_temperatures.numel()} entries "
                f"for a block of {logits.shape[-1]}"
            )
        return torch.sigmoid(logits / self.sts_temperatures)


DRAFT_GROUP = 16
"""Columns per noise group of the draft sampler (:func:`draft_sample`)."""

# The uniform index of the first draw of a group's tail part on a shard starting inside the
# group: past every vocabulary's own indices, so the two parts draw independent noise.
_TAIL_NOISE = 1 << 32


def sample_from_logits(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    *,
    seed: rng.SeedLike,
    offset: rng.SeedLike,
    stream: rng.Stream,
    position: int | torch.Tensor,
    vocab_start: int = 0,
) -> torch.Tensor:
    """A sample of ``softmax(logits / T)`` per row, argmax where ``T == 0``: the token of
    :func:`draft_sample`. logits: [R, V] float32, temperature: [R] float32, position: int or
    [R] int64. Returns [R] int64 column indices of ``logits``."""
    return draft_sample(
        logits,
        temperature,
        seed=seed,
        offset=offset,
        stream=stream,
        position=position,
        vocab_start=vocab_start,
    )[0]


def draft_groups(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    *,
    seed: rng.SeedLike,
    offset: rng.SeedLike,
    stream: rng.Stream,
    position: int | torch.Tensor,
    vocab_start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The groups of :func:`draft_sample`: (keys [R, G] float32, mass [R, G, 16] float64, u_C
    [R, G] float32, x = logits / T [R, V] float32; T = 1 on greedy rows). Group g holds the
    local columns ``16 g - f .. 16 g - f + 15`` with ``f = vocab_start % 16`` (the columns
    outside ``[0, V)`` are padding); ``mass`` is ``exp(x - M_j)`` (M_j the group's max; -inf
    columns and padding 0), keys ``log(sum of mass) + M_j + G(u_G)`` (-inf for a group
    without mass, NaN with a NaN)."""
    rows, vocab = logits.shape
    device = logits.device
    sampled = temperature > 0
    safe_t = torch.where(sampled, temperature, torch.ones_like(temperature)).float()
    x = logits.float() / safe_t[:, None]
    front = vocab_start % DRAFT_GROUP
    groups = -(-(front + vocab) // DRAFT_GROUP)
    pad = (front, groups * DRAFT_GROUP - front - vocab)
    grouped = torch.nn.functional.pad(x.double(), pad, value=-torch.inf).view(rows, groups, DRAFT_GROUP)
    peak = grouped.amax(dim=-1)
    shift = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    mass = torch.exp(grouped - shift[..., None])
    lse = torch.where(torch.isfinite(peak), peak + torch.log(mass.sum(dim=-1)), peak)
    row_ids = torch.arange(rows, device=device)
    pos = torch.as_tensor(position, dtype=torch.int64, device=device).expand(rows)
    first = vocab_start // DRAFT_GROUP
    u = rng.uniform(seed, offset, stream, row_ids, pos, 2 * groups, 2 * first)
    if front:
        u[:, :2] = rng.uniform(seed, offset, stream, row_ids, pos, 2, _TAIL_NOISE + 2 * first)
    keys = lse.float() + -torch.log(-torch.log(u[:, 0::2]))
    return keys, mass, u[:, 1::2], x


def draft_sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    *,
    seed: rng.SeedLike,
    offset: rng.SeedLike,
    stream: rng.Stream,
    position: int | torch.Tensor,
    vocab_start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The grouped sampler of the draft: (index [R] int64, key [R] float32) per row.

    logits: [R, V] float32 (a vocab shard's columns ``vocab_start + v``); temperature: [R]
    float32; position: int or [R] int64. Greedy rows (``T`` not > 0): the first-index
    argmax (NaN above every number), key = its logit. Sampled rows, with ``x = logits / T``:
    the columns form groups of :data:`DRAFT_GROUP` global columns; group ``j`` draws the
    ``stream`` uniforms of indices ``2j`` (``u_G``) and ``2j + 1`` (``u_C``) of
    :func:`rng.uniform`. The group key is ``K_j = logsumexp(x over j) + G(u_G)``
    (``G(u) = -log(-log(u))``), the winning group the largest key (ties to the lowest j),
    and the token the first column of that group whose running sum of ``exp(x - M)``
    exceeds ``u_C`` times the group's sum (the last column with mass if rounding leaves
    none). ``P(group j) * P(v | j) = softmax(x)_v``: the distribution is exactly the
    Gumbel-max one, with noise per group instead of per column. A row holding NaN draws
    its first NaN (key NaN), else one holding +inf its first +inf (key +inf); a row of
    -inf draws its first column (key -inf). Shards starting at multiples of 16 give the
    tokens and keys of the whole row (the largest key wins, ties to the lowest id); a shard
    starting inside a group makes the group's tail a group of its own, with its own noise
    (uniform indices from 2^32): still exactly softmax, not the whole row's draw. Group
    sums in float64; the CUDA kernel's, in float32, differ only at near-ties of keys or sums.
    """
    x32 = logits.float()
    if rng.noise_unused(temperature):  # every row greedy (known without a device sync)
        index = x32.argmax(dim=-1)
        return index, x32.gather(1, index[:, None])[:, 0]
    rows = logits.shape[0]
    sampled = temperature > 0
    draw = dict(seed=seed, offset=offset, stream=stream, position=position, vocab_start=vocab_start)
    keys, mass, u_cut, x = draft_groups(logits, temperature, **draw)
    group = keys.argmax(dim=-1)
    pick = group[:, None, None].expand(rows, 1, DRAFT_GROUP)
    group_mass = mass.gather(1, pick)[:, 0]
    threshold = u_cut.gather(1, group[:, None]).double() * group_mass.sum(dim=-1, keepdim=True)
    crossed = group_mass.cumsum(dim=-1) > threshold
    has_mass = group_mass > 0
    last_with_mass = DRAFT_GROUP - 1 - has_mass.flip(-1).int().argmax(dim=-1)
    within = torch.where(
        crossed.any(dim=-1),
        crossed.int().argmax(dim=-1),
        torch.where(has_mass.any(dim=-1), last_with_mass, torch.zeros_like(last_with_mass)),
    )
    index = (group * DRAFT_GROUP + within - vocab_start % DRAFT_GROUP).clamp_min(0)
    key = keys.gather(1, group[:, None])[:, 0]
    nan, pos_inf = torch.isnan(x), torch.isposinf(x)
    for special, value in ((pos_inf, torch.inf), (nan, torch.nan)):  # NaN last: it outranks +inf
        hit = special.any(dim=-1)
        index = torch.where(hit, special.int().argmax(dim=-1), index)
        key = torch.where(hit, torch.full_like(key, value), key)
    greedy_index = x32.argmax(dim=-1)
    index = torch.where(sampled, index, greedy_index)
    key = torch.where(sampled, key, x32.gather(1, greedy_index[:, None])[:, 0])
    return index, key


def _check_block_inputs(
    base_logits: torch.Tensor,
    anchor: torch.Tensor,
    temperature: torch.Tensor,
    vocab_size: int,
    first_position: int = 0,
    total_vocab: int | None = None,
) -> tuple[int, int, int]:
    _checks.tensor("base_logits", base_logits, dtypes=_checks.FLOAT_DTYPES, ndim=3)
    rows, gamma, vocab = base_logits.shape
    device = base_logits.device
    if vocab != vocab_size:
        raise ValueError(f"base_logits has vocabulary {vocab} but the Markov head has {vocab_size}")
    if gamma < 1:
        raise ValueError(
            f"base_logits must hold at least one draft position, got shape {list(base_logits.shape)}"
        )
    if isinstance(first_position, bool) or not isinstance(first_position, int) or first_position < 0:
        raise ValueError(f"first_position must be an int >= 0, got {first_position!r}")
    rng.check_position(first_position + gamma - 1)
    _checks.tensor("anchor", anchor, dtypes=(torch.int64,), shape=(rows,), device=device)
    _checks.in_range("anchor", anchor, 0, vocab if total_vocab is None else total_vocab)
    _checks.temperature("temperature", temperature, rows, device)
    _checks.not_nan("base_logits", base_logits)
    return rows, gamma, vocab


def sample_block_with_head(
    base_logits: torch.Tensor,
    anchor: torch.Tensor,
    head: MarkovHead,
    temperature: torch.Tensor,
    *,
    seed: rng.SeedLike,
    offset: rng.SeedLike,
    hidden: torch.Tensor | None = None,
    confidence_head: ConfidenceHead | None = None,
    logit_softcap: float | None = None,
    keep_logits: bool = True,
    logits_dtype: torch.dtype = torch.float32,
    first_position: int = 0,
) -> DraftBlock:
    """Draft a block with any Markov head.

    base_logits: [R, g, V] backbone logits U_k; anchor: [R] int64 (x_0);
    temperature: [R] float32 (0 = greedy); hidden: [R, g, H] backbone states (needed by
    gated/RNN heads and by the confidence head); logit_softcap: Gemma's cap applied to
    U_k before the bias; keep_logits: False returns ``logits=None`` (vanilla head only:
    verify from ``stats``); logits_dtype: float32, or bf16/fp16 to round every
    ``logits_k`` to before sampling from it (SGLang keeps step logits so), which is
    also the dtype of ``DraftBlock.logits``; first_position: the Philox position of
    ``base_logits[:, 0]`` (a block drafted one position per call, e.g. with a
    tensor-parallel token sync between positions). A vocab-shard head (``vocab_start``,
    see :class:`VanillaMarkovHead`) drafts from its columns only: ``tokens`` are global
    ids of the shard's winners and ``stats`` the shard's statistics and winning keys; use
    :func:`sample_block_sharded` for the exchange between shards. Returns a
    :class:`DraftBlock`; vanilla heads also fill ``stats``. Runs the ``markov_block`` CUDA
    kernel for the vanilla head on a GPU, else the PyTorch reference.
    """
    if not isinstance(head, MarkovHead):
        raise TypeError(f"head must be a MarkovHead, got {type(head).__name__}")
    vocab_start = getattr(head, "vocab_start", 0)
    rows, gamma, vocab = _check_block_inputs(
        base_logits, anchor, temperature, head.vocab_size, first_position, head.w1.shape[0]
    )
    device = base_logits.device
    if head.w1.device != device:
        raise ValueError(f"the Markov head is on {head.w1.device} but base_logits is on {device}")
    w2_scale = getattr(head, "w2_scale", None)
    if w2_scale is not None:  # an int8 W2 (markov_quant): the scales the kernel and reference read
        _checks.tensor("head.w2", head.w2, dtypes=(torch.int8,), shape=(vocab, head.rank), device=device)
        _checks.tensor("head.w2_scale", w2_scale, dtypes=(torch.float32,), shape=(vocab,), device=device)
    rng.check_seed_offset(seed, offset, device)
    needs_hidden = head.needs_hidden or confidence_head is not None
    if hidden is not None or needs_hidden:
        if hidden is None:
            raise ValueError("hidden [R, g, H] is required by this Markov head or the confidence head")
        _checks.tensor("hidden", hidden, dtypes=_checks.FLOAT_DTYPES, ndim=3, device=device)
        if hidden.shape[:2] != (rows, gamma):
            raise ValueError(f"hidden must have shape [{rows}, {gamma}, H], got {list(hidden.shape)}")
        _checks.finite("hidden", hidden)
        if head.needs_hidden and hidden.shape[2] != head.hidden_size:
            raise ValueError(f"hidden has H={hidden.shape[2]} but the Markov head expects {head.hidden_size}")
    use_markov_feature = False
    if confidence_head is not None:
        if confidence_head.weight.device != device:
            raise ValueError(
                f"the confidence head is on {confidence_head.weight.device} but base_logits is on {device}"
            )
        use_markov_feature = confidence_head.uses_markov_feature(hidden.shape[2], head.rank)
        sts = confidence_head.sts_temperatures
        if sts is not None and sts.numel() != gamma:
            raise ValueError(f"sts_temperatures must have {gamma} entries, got {sts.numel()}")
    if logit_softcap is not None and not logit_softcap > 0:
        raise ValueError(f"logit_softcap must be > 0, got {logit_softcap}")
    if logits_dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"logits_dtype must be float32, bfloat16 or float16, got {logits_dtype}")
    vanilla = isinstance(head, VanillaMarkovHead)
    if not keep_logits and not vanilla:
        raise ValueError(
            "keep_logits=False needs the vanilla Markov head (other heads cannot recompute a row)"
        )
    if _dispatch.use_kernel(
        "markov_block", device, lambda: _markov_kernel_unsupported(head, rows, vocab, device)
    ):
        return _sample_block_cuda(
            base_logits,
            anchor,
            head,
            temperature,
            seed,
            offset,
            hidden,
            confidence_head,
            use_markov_feature,
            logit_softcap,
            keep_logits,
            logits_dtype,
            first_position,
        )

    tokens = torch.empty(rows, gamma, dtype=torch.int64, device=device)
    logits = torch.empty(rows, gamma, vocab, dtype=logits_dtype, device=device)
    conf_logits = torch.empty(rows, gamma, dtype=torch.float32, device=device) if confidence_head else None
    stat_max = torch.empty(rows, gamma, dtype=torch.float32, device=device)
    stat_sum = torch.empty_like(stat_max)
    token_scores = torch.empty_like(stat_max)
    safe_t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))[:, None]
    prev = anchor
    state = head.initial_state(rows)
    for k in range(gamma):
        hidden_k = hidden[:, k] if hidden is not None else None
        bias, state = head.step(prev, hidden_k, state)
        base = base_logits[:, k].float()
        if logit_softcap is not None:
            base = softcap(base, logit_softcap)
        logits_k = _round_logits(base + bias, logits_dtype)
        logits[:, k] = logits_k
        if vanilla:
            stat_max[:, k], stat_sum[:, k] = softmax_stats(logits_k / safe_t)
        if conf_logits is not None:
            emb = head.w1[prev] if use_markov_feature else None
            conf_logits[:, k] = confidence_head.logit(hidden_k, emb)
        local, token_scores[:, k] = draft_sample(
            logits_k.float(),
            temperature,
            seed=seed,
            offset=offset,
            stream=rng.Stream.DRAFT,
            position=first_position + k,
            vocab_start=vocab_start,
        )
        prev = local + vocab_start
        tokens[:, k] = prev
    confidence = confidence_head.calibrate(conf_logits) if confidence_head is not None else None
    stats = None
    if vanilla:
        stats = DraftStats(
            max=stat_max,
            sum=stat_sum,
            token_logits=logits.gather(2, tokens[:, :, None] - vocab_start).squeeze(2).float(),
            base_logits=base_logits,
            anchor=anchor,
            w1=head.w1,
            w2=head.w2,
            logit_softcap=logit_softcap,
            logits_dtype=logits_dtype,
            token_scores=token_scores,
            vocab_start=vocab_start,
            w2_scale=getattr(head, "w2_scale", None),
        )
    return DraftBlock(
        tokens=tokens,
        logits=logits if keep_logits else None,
        confidence=confidence,
        confidence_logits=conf_logits,
        stats=stats,
    )


PERSISTENT_ENV = "DSPARK_SGL_MARKOV_PERSISTENT"


def persistent_block() -> bool:
    """Whether ``markov_block`` runs a block's positions in one cooperative launch (the default; the
    kernel takes one launch per position where the device cannot hold the grid). ``0`` in
    ``DSPARK_SGL_MARKOV_PERSISTENT`` asks for one launch per position."""
    return os.environ.get(PERSISTENT_ENV, "1") not in ("", "0")


def _markov_kernel_unsupported(head: MarkovHead, rows: int, vocab: int, device: torch.device) -> str | None:
    """Why ``markov_block`` cannot run these inputs (None when it can)."""
    if not isinstance(head, VanillaMarkovHead):
        return f"{type(head).__name__} has no CUDA kernel (vanilla head only)"
    if getattr(head, "w2_scale", None) is not None:
        if head.w1.dtype not in (torch.bfloat16, torch.float16):
            # the kernel converts int8 W2 to W1's type for the tensor cores; float32 has no such MMA path
            return f"an int8 W2 needs a 16-bit W1 (bfloat16 or float16), got {head.w1.dtype}"
    elif head.w1.dtype != head.w2.dtype:
        return f"w1 ({head.w1.dtype}) and w2 ({head.w2.dtype}) differ in dtype"
    if head.vocab_start % DRAFT_GROUP and vocab:
        return f"a vocab shard starting at {head.vocab_start}, not a multiple of {DRAFT_GROUP} (draft groups)"
    if head.rank > 512:
        return f"Markov rank {head.rank} > 512"
    if rows >= 2**31 or vocab >= 2**31:
        return "more than 2^31 rows or vocabulary entries"
    smem = _dispatch.kernel("markov_block_smem_bytes")(rows, head.rank, head.w2.element_size())
    return _dispatch.shared_memory_unsupported("markov_block", smem, device)


def _sample_block_cuda(
    base_logits: torch.Tensor,
    anchor: torch.Tensor,
    head: VanillaMarkovHead,
    temperature: torch.Tensor,
    seed: rng.SeedLike,
    offset: rng.SeedLike,
    hidden: torch.Tensor | None,
    confidence_head: ConfidenceHead | None,
    use_markov_feature: bool,
    logit_softcap: float | None,
    keep_logits: bool,
    logits_dtype: torch.dtype,
    first_position: int,
) -> DraftBlock:
    """The ``markov_block`` kernel: same outputs as the reference loop above."""
    rows, gamma, vocab = base_logits.shape
    device = base_logits.device
    base = _dispatch.aligned(base_logits)
    w1, w2 = _dispatch.aligned(head.w1), _dispatch.aligned(head.w2)
    w2_scale = getattr(head, "w2_scale", None)  # an int8 W2's per-row scales (markov_quant)
    if w2_scale is not None:
        w2_scale = _dispatch.aligned(w2_scale)
    anchor = anchor.contiguous()

    def f32(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=torch.float32, device=device)

    tokens = torch.empty(rows, gamma, dtype=torch.int64, device=device)
    token_logits, stat_max, stat_sum = f32(rows, gamma), f32(rows, gamma), f32(rows, gamma)
    token_scores = f32(rows, gamma)
    logits = torch.empty(rows, gamma, vocab, dtype=logits_dtype, device=device) if keep_logits else None
    conf_logits = confidence = conf_weight = conf_bias = sts = None
    conf_bias_value = 0.0
    hidden_c = None
    if confidence_head is not None:
        hidden_c = hidden.contiguous()
        conf_logits, confidence = f32(rows, gamma), f32(rows, gamma)
        conf_weight = confidence_head.weight.contiguous()
        if isinstance(confidence_head.bias, torch.Tensor):
            conf_bias = confidence_head.bias.reshape(1).contiguous()
        else:
            conf_bias_value = float(confidence_head.bias)
        if confidence_head.sts_temperatures is not None:
            sts = confidence_head.sts_temperatures.contiguous()
    workspace_bytes = _dispatch.kernel("markov_block_workspace_bytes")(rows, vocab, w2.element_size())
    workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=device)
    _dispatch.launch(
        "markov_block",
        device,
        {
            "base_logits": _dispatch.pointer(base),
            "base_dtype": _dispatch.dtype_code(base),
            "anchor": _dispatch.pointer(anchor),
            "w1": _dispatch.pointer(w1),
            "w2": _dispatch.pointer(w2),
            "w2_scale": _dispatch.pointer(w2_scale),
            "weight_dtype": _dispatch.dtype_code(w1),
            "temperature": _dispatch.pointer(temperature.contiguous()),
            "rows": rows,
            "gamma": gamma,
            "vocab": vocab,
            "vocab_start": head.vocab_start,
            "vocab_total": head.total_vocab,
            "first_position": first_position,
            "rank": head.rank,
            "softcap": float(logit_softcap) if logit_softcap is not None else 0.0,
            **_dispatch.philox_args(seed, offset),
            "hidden": _dispatch.pointer(hidden_c),
            "hidden_dtype": _dispatch.dtype_code(hidden_c) if hidden_c is not None else 0,
            "hidden_size": hidden_c.shape[2] if hidden_c is not None else 0,
            "conf_weight": _dispatch.pointer(conf_weight),
            "conf_uses_markov": int(use_markov_feature),
            "conf_bias": _dispatch.pointer(conf_bias),
            "conf_bias_value": conf_bias_value,
            "conf_dtype": _dispatch.dtype_code(confidence_head.dtype) if confidence_head is not None else 0,
            "sts_temperatures": _dispatch.pointer(sts),
            "tokens": _dispatch.pointer(tokens),
            "token_logits": _dispatch.pointer(token_logits),
            "token_scores": _dispatch.pointer(token_scores),
            "stat_max": _dispatch.pointer(stat_max),
            "stat_sum": _dispatch.pointer(stat_sum),
            "logits_out": _dispatch.pointer(logits),
            "logits_dtype": _dispatch.dtype_code(logits_dtype),
            "conf_logits": _dispatch.pointer(conf_logits),
            "confidence": _dispatch.pointer(confidence),
            "persistent": int(persistent_block()),
            "workspace": _dispatch.pointer(workspace),
            "cuda_stream": _dispatch.current_stream_handle(device),
        },
    )
    stats = DraftStats(
        max=stat_max,
        sum=stat_sum,
        token_logits=token_logits,
        base_logits=base,
        anchor=anchor,
        w1=w1,
        w2=w2,
        logit_softcap=logit_softcap,
        logits_dtype=logits_dtype,
        token_scores=token_scores,
        vocab_start=head.vocab_start,
        w2_scale=w2_scale,
    )
    return DraftBlock(
        tokens=tokens, logits=logits, confidence=confidence, confidence_logits=conf_logits, stats=stats
    )


# Candidate row a vocab shard hands the exchange: score, index bits, logit, max, sum, padding
# to 32 bytes (SGLang's NVLink gather moves 16-byte vectors).
_CANDIDATE_WIDTH = 8
_INDEX_MASK = 0x7FFFFFFF


def pack_shard_candidates(
    scores: torch.Tensor,
    tokens: torch.Tensor,
    token_logits: torch.Tensor | None = None,
    stat_max: torch.Tensor | None = None,
    stat_sum: torch.Tensor | None = None,
) -> torch.Tensor:
    """What a vocab shard contributes to one position's exchange: [R, 8] float32.

    Columns: the winner's key (scores [R], :func:`draft_sample`), its global id (tokens [R], as int32
    bits), its logit, the shard's softmax max and sum of ``logits / T`` (each [R] float32,
    zeros when not given), three zeros.
    """
    out = torch.zeros(tokens.shape[0], _CANDIDATE_WIDTH, dtype=torch.float32, device=tokens.device)
    out[:, 0] = scores
    out[:, 1] = tokens.to(torch.int32).view(torch.float32)
    for column, value in ((2, token_logits), (3, stat_max), (4, stat_sum)):
        if value is not None:
            out[:, column] = value
    return out


def empty_shard_candidates(rows: int, device: torch.device) -> torch.Tensor:
    """The [R, 8] candidates of a rank with no columns: a key and max of -inf, no index."""
    out = torch.zeros(rows, _CANDIDATE_WIDTH, dtype=torch.float32, device=device)
    out[:, 0] = out[:, 3] = -torch.inf
    out[:, 1] = torch.tensor(_INDEX_MASK, dtype=torch.int32).view(torch.float32)
    return out


def merge_shard_candidates(
    gathered: torch.Tensor, rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge the shards' candidates of one position, as TP = 1 would decide.

    gathered: [world * R, 8] float32, the shards' :func:`pack_shard_candidates` stacked rank by
    rank (SGLang's ``VocabGather.gather_stacked``). Returns (tokens [R] int64, token
    logits, max, sum, token scores [R] float32): the highest key, ties to the lowest
    global id (the first-index argmax of the whole row); max is the shards' max, sum their
    sums rescaled to it. Every rank merging the same gathered rows gets the same result.
    """
    if gathered.dim() != 2 or gathered.shape[1] != _CANDIDATE_WIDTH or gathered.shape[0] % max(rows, 1):
        raise ValueError(
            f"gathered must be [world * {rows}, {_CANDIDATE_WIDTH}] float32, got {list(gathered.shape)}"
        )
    g = gathered.view(-1, rows, _CANDIDATE_WIDTH)
    scores = g[..., 0]
    # The sign bit is cleared as SGLang does (its NVLink transport may turn +0 into -0).
    index = (g[..., 1].contiguous().view(torch.int32) & _INDEX_MASK).long()
    best = scores.amax(dim=0)
    ties = scores == best
    token = torch.where(ties, index, torch.full_like(index, _INDEX_MASK)).amin(dim=0)
    winner = (ties & (index == token)).to(torch.int64).argmax(dim=0)
    pick = winner[None, :, None].expand(1, rows, _CANDIDATE_WIDTH)
    chosen = g.gather(0, pick)[0]
    peak = g[..., 3].amax(dim=0)
    total = (g[..., 4] * torch.exp(g[..., 3] - peak)).sum(dim=0)
    return token, chosen[:, 2], peak, total, chosen[:, 0]


def sample_block_sharded(
    base_logits: torch.Tensor,
    anchor: torch.Tensor,
    head: VanillaMarkovHead,
    temperature: torch.Tensor,
    *,
    seed: rng.SeedLike,
    offset: rng.SeedLike,
    gather_stacked: Callable[[torch.Tensor], torch.Tensor],
    gather_logits: Callable[[torch.Tensor], torch.Tensor] | None = None,
    sync: Callable[[torch.Tensor], torch.Tensor] | None = None,
    keep_logits: bool = True,
    logits_dtype: torch.dtype = torch.float32,
    logit_softcap: float | None = None,
) -> DraftBlock:
    """Draft a block on one rank of a vocab-sharded (tensor-parallel) Markov head.

    base_logits: [R, g, V_local], the rank's columns ``[head.vocab_start, + V_local)`` of
    the backbone logits; head: the rank's shard (:meth:`VanillaMarkovHead.shard`). Per
    position: the shard's winner and statistics (the ``markov_block`` kernel on a GPU,
    noise keyed by the global columns' groups), one ``gather_stacked`` exchange of [R, 8]
    candidates, the merge (:func:`merge_shard_candidates`), then ``sync`` (e.g. a
    broadcast from rank 0) before the token feeds the next position. With
    ``keep_logits``, one ``gather_logits`` ([R * g, V_local] -> [R * g, V]) after the loop
    returns the whole logits. Tokens, logits and the statistics' max equal the unsharded
    block for the same seed; the sums agree to float32 rounding.

    Returns a :class:`DraftBlock`: tokens [R, g] global ids, logits [R, g, V] or None,
    stats with the merged max / sum / token_logits / token_scores (its recompute fields
    are this rank's shard: verifying from statistics needs the whole W2).
    """
    if not isinstance(head, VanillaMarkovHead):
        raise TypeError(f"head must be a VanillaMarkovHead shard, got {type(head).__name__}")
    if getattr(head, "w2_scale", None) is not None:
        raise ValueError("an int8-W2 Markov head cannot be vocab-sharded (not implemented)")
    if keep_logits and gather_logits is None:
        raise ValueError("keep_logits=True needs gather_logits")
    _checks.tensor("base_logits", base_logits, dtypes=_checks.FLOAT_DTYPES, ndim=3)
    rows, gamma, _ = base_logits.shape
    device = base_logits.device
    merged = {name: torch.empty(rows, gamma, dtype=torch.float32, device=device) for name in _MERGED}
    tokens = torch.empty(rows, gamma, dtype=torch.int64, device=device)
    local_logits = []
    prev = anchor
    for k in range(gamma):
        if head.vocab_size == 0:
            # A rank past the vocab (its lm_head partition is all padding) still exchanges.
            candidates = empty_shard_candidates(rows, device)
            local = DraftBlock(tokens=anchor[:, None], logits=base_logits[:, k : k + 1].to(logits_dtype))
        else:
            local = sample_block_with_head(
                base_logits[:, k : k + 1],
                prev,
                head,
                temperature,
                seed=seed,
                offset=offset,
                logit_softcap=logit_softcap,
                keep_logits=keep_logits,
                logits_dtype=logits_dtype,
                first_position=k,
            )
            stats = local.stats
            candidates = pack_shard_candidates(
                stats.token_scores[:, 0],
                local.tokens[:, 0],
                stats.token_logits[:, 0],
                stats.max[:, 0],
                stats.sum[:, 0],
            )
        token, *values = merge_shard_candidates(gather_stacked(candidates), rows)
        for name, value in zip(_MERGED, values, strict=True):
            merged[name][:, k] = value
        if sync is not None:
            token = sync(token)
        tokens[:, k] = token
        if keep_logits:
            local_logits.append(local.logits)
        prev = token
    logits = None
    if keep_logits:
        flat = torch.cat(local_logits, dim=1).reshape(rows * gamma, -1)
        logits = gather_logits(flat).reshape(rows, gamma, -1)
    stats = DraftStats(
        max=merged["max"],
        sum=merged["sum"],
        token_logits=merged["token_logits"],
        base_logits=base_logits,
        anchor=anchor,
        w1=head.w1,
        w2=head.w2,
        logit_softcap=logit_softcap,
        logits_dtype=logits_dtype,
        token_scores=merged["token_scores"],
        vocab_start=head.vocab_start,
    )
    return DraftBlock(tokens=tokens, logits=logits, stats=stats)


_MERGED = ("token_logits", "max", "sum", "token_scores")


def sample_block(
    base_logits: torch.Tensor,
    anchor: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    temperature: torch.Tensor,
    *,
    seed: rng.SeedLike,
    offset: rng.SeedLike,
    hidden: torch.Tensor | None = None,
    conf_weight: torch.Tensor | None = None,
    conf_bias: float | torch.Tensor | None = None,
    sts_temperatures: torch.Tensor | None = None,
    logit_softcap: float | None = None,
    keep_logits: bool = True,
    logits_dtype: torch.dtype = torch.float32,
) -> DraftBlock:
    """Draft a block with the vanilla Markov head ``w1[prev] @ w2.T``.

    base_logits: [R, g, V] float32/bf16/fp16; anchor: [R] int64; w1, w2: [V, r];
    temperature: [R] float32 (0 = greedy, rows may mix). With ``conf_weight``
    ([H + r] or [H]), ``conf_bias`` and ``hidden`` [R, g, H] the block carries
    ``confidence`` [R, g]; ``sts_temperatures`` [g] applies STS. keep_logits,
    logits_dtype: see :func:`sample_block_with_head`.
    """
    head = VanillaMarkovHead(w1, w2)
    confidence_head = None
    if conf_weight is not None:
        confidence_head = ConfidenceHead(
            conf_weight, 0.0 if conf_bias is None else conf_bias, sts_temperatures
        )
    elif conf_bias is not None or sts_temperatures is not None:
        raise ValueError("conf_bias / sts_temperatures given without conf_weight")
    return sample_block_with_head(
        base_logits,
        anchor,
        head,
        temperature,
        seed=seed,
        offset=offset,
        hidden=hidden,
        confidence_head=confidence_head,
        logit_softcap=logit_softcap,
        keep_logits=keep_logits,
        logits_dtype=logits_dtype,
    )
