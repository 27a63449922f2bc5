"""An int8 W2 with per-row scales for the vanilla Markov head (the PyTorch path).

W2 [V, r] dominates the bytes of a Markov block (read once per position); stored as int8 with
one float32 scale per vocabulary row it takes half the bytes of bf16. Quantization is
symmetric per row: ``scale[v] = max_k |W2[v, k]| / 127`` (float32) and
``q[v, k] = round_half_even(W2[v, k] / scale[v])`` clamped to [-127, 127]; an all-zero row has
scale 0 and q 0. The drafted bias is, in this order:

    dot[n, v]  = W1[prev[n]] @ q[v]            float64 sum of the products, rounded to float32
    bias[n, v] = round_to(W1 dtype)(dot * scale[v])   one float32 multiply, then W1's dtype

so the scale is applied after the dot product (what a kernel's epilogue would do; the int8
values are exact in bf16 and fp16, so the products are those of a 16-bit MMA), and the bias is
rounded to W1's dtype, the dtype W2 had before quantization (SGLang's ``markov_w2`` Linear in
the weights' dtype); float32 weights round nothing.

Lossless: the draft distribution is ``softmax(logits / T)`` of the logits actually sampled
from, and both verification forms use exactly those: ``DraftBlock.logits``, or the block's
:class:`~dspark_sgl.markov.DraftStats`, which carries ``w2`` (int8) and ``w2_scale`` and
recomputes a rejected row with :func:`int8_bias`, the drafting formula.

CUDA: ``markov_block`` drafts with an int8 head whose W1 is bf16 or fp16 (csrc/include/dspark_sgl/
markov_int8.cuh: the int8 tile is widened to W1's type for the tensor cores, the scale applied to
the float32 dot product in this order). Not done: a float32 W1 (no int8 path: the reference
drafts), chain_verify's statistics form (its recompute of a rejected row reads 16-bit or float32
W2 only: the reference verifies; the logits form runs the kernel), and vocab sharding of an int8
head. The dispatcher logs which path runs and why.
"""

from __future__ import annotations

import torch

from dspark_sgl import _checks
from dspark_sgl.markov import VanillaMarkovHead

__all__ = ["Int8VanillaMarkovHead", "int8_bias", "quantize_w2"]

INT8_MAX = 127


def quantize_w2(w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantization of ``w2`` [V, r] (float32/bf16/fp16, finite).

    Returns (q [V, r] int8 in [-127, 127], scale [V] float32) with ``q * scale`` within half a
    step (``scale / 2``) of ``w2`` per element, up to float32 rounding.
    """
    _checks.tensor("w2", w2, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    _checks.finite("w2", w2)
    w = w2.float()
    scale = w.abs().amax(dim=1) / INT8_MAX if w.shape[1] else w.new_zeros(w.shape[0])
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / safe[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def _check_int8_weights(w1: torch.Tensor, w2: torch.Tensor, w2_scale: torch.Tensor) -> None:
    _checks.tensor("w1", w1, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    _checks.tensor("w2", w2, dtypes=(torch.int8,), ndim=2, device=w1.device)
    _checks.tensor("w2_scale", w2_scale, dtypes=(torch.float32,), shape=(w2.shape[0],), device=w1.device)
    if w1.shape != w2.shape:
        raise ValueError(f"w1 {list(w1.shape)} and w2 {list(w2.shape)} must both be [V, r]")
    _checks.finite("w1", w1)
    _checks.finite("w2_scale", w2_scale)
    if _checks.values_checkable(w2) and bool((w2 == -128).any()):
        raise ValueError("w2 must hold int8 values in [-127, 127] (symmetric quantization); found -128")
    if _checks.values_checkable(w2_scale) and bool((w2_scale < 0).any()):
        raise ValueError("w2_scale must be >= 0")


def int8_bias(
    w1: torch.Tensor,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    prev: torch.Tensor,
    w2_f64: torch.Tensor | None = None,
) -> torch.Tensor:
    """The int8 head's bias [N, V] float32 (a value of W1's dtype), in the module's order.

    w1: [V, r] float, w2: [V, r] int8, w2_scale: [V] float32, prev: [N] int64 token ids.
    ``w2_f64``: a cached float64 copy of ``w2`` (saves the conversion per call).
    """
    q = w2.double() if w2_f64 is None else w2_f64
    bias = (w1[prev].double() @ q.T).float() * w2_scale
    return bias if w1.dtype == torch.float32 else bias.to(w1.dtype).float()


class Int8VanillaMarkovHead(VanillaMarkovHead):
    """The vanilla head ``B = W1[prev] @ W2`` with W2 stored int8 with per-row scales.

    w1: [V, r] float32/bf16/fp16; w2: [V, r] int8 in [-127, 127]; w2_scale: [V] float32 >= 0;
    :func:`int8_bias` is its bias, rounded to W1's dtype (:attr:`bias_dtype`). It drafts as a
    vanilla head (statistics, the statistics form of verification); markov_block runs it with a 16-bit W1.
    """

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor, w2_scale: torch.Tensor) -> None:
        _check_int8_weights(w1, w2, w2_scale)
        # VanillaMarkovHead's own checks want a float W2: set its attributes for a whole vocab.
        self.vocab_size, self.rank = w2.shape
        self.w1, self.w2, self.w2_scale = w1, w2, w2_scale
        self.vocab_start = 0
        self.total_vocab = w1.shape[0]
        self.is_shard = False
        self._w2_f64: torch.Tensor | None = None

    @classmethod
    def quantize(cls, head: VanillaMarkovHead) -> Int8VanillaMarkovHead:
        """The int8 head of a vanilla head over the whole vocabulary (W2 quantized by
        :func:`quantize_w2`; W1 kept, so the bias is rounded to the head's W1 dtype)."""
        if not isinstance(head, VanillaMarkovHead) or isinstance(head, Int8VanillaMarkovHead):
            raise TypeError(f"head must be a float VanillaMarkovHead, got {type(head).__name__}")
        if head.vocab_start != 0 or head.total_vocab != head.vocab_size:
            raise ValueError("quantize() needs a head over the whole vocabulary, not a vocab shard")
        q, scale = quantize_w2(head.w2)
        return cls(head.w1, q, scale)

    @property
    def bias_dtype(self) -> torch.dtype:
        """The dtype the bias is rounded to: W1's (W2's dtype before quantization)."""
        return self.w1.dtype

    def shard(self, start: int, end: int) -> VanillaMarkovHead:
        raise ValueError("an int8-W2 Markov head cannot be vocab-sharded (not implemented)")

    def step(
        self, prev: torch.Tensor, hidden: torch.Tensor | None, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._w2_f64 is None:
            self._w2_f64 = self.w2.double()
        return int8_bias(self.w1, self.w2, self.w2_scale, prev, self._w2_f64), None
