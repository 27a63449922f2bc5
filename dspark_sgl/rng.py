"""Counter-based random numbers shared by every sampling function and kernel.

One generator, Philox4x32-10 (Salmon et al., SC'11), is used everywhere so that a
CUDA kernel reproduces the reference's draws bit for bit, a CUDA graph can replay a
round with new draws (seed and offset may live in device tensors), and every
tensor-parallel rank draws the same numbers.

Layout of one draw (documented here because the CUDA header
``csrc/include/dspark_sgl/philox.cuh`` implements the same mapping):

- key ``(k0, k1)`` = low and high 32 bits of ``seed`` (any 64-bit value);
- counter ``c0`` = ``col // 4``, the output lane is ``col % 4`` (one Philox call
  gives four consecutive vocabulary entries);
- counter ``c1`` = ``row``;
- counter ``c2`` = ``position | stream << 8 | (offset >> 32) << 16``;
- counter ``c3`` = ``offset & 0xffffffff`` (so ``offset`` is a 48-bit value).

A 32-bit output ``x`` becomes the float32 ``((x >> 9) * 2 + 1) * 2**-24``: an odd
multiple of ``2**-24`` strictly inside (0, 1), exact in float32 on every device.
Gumbel noise is ``-log(-log(u))`` in float32. ``col`` is a vocabulary entry on every
stream but ``DRAFT``, where the draft sampler (:func:`dspark_sgl.markov.draft_sample`)
draws two uniforms per group of 16 columns: indices ``2 j`` and ``2 j + 1`` for group
``j`` (and from ``2**32`` for a group split by a vocab shard's start).

All arithmetic is done in int64 tensors on the caller's device, without host
synchronisation, with products split into 16-bit halves so nothing overflows.
"""

from __future__ import annotations

import enum

import numpy as np
import torch

from dspark_sgl import _dispatch

__all__ = [
    "MAX_OFFSET",
    "SeedLike",
    "Stream",
    "check_seed_offset",
    "gumbel",
    "noise_unused",
    "philox4x32",
    "uniform",
    "uniform_scalar",
]

SeedLike = int | torch.Tensor

_MASK32 = 0xFFFFFFFF
_PHILOX_M0 = 0xD2511F53
_PHILOX_M1 = 0xCD9E8D57
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_PHILOX_ROUNDS = 10
MAX_OFFSET = 1 << 48
_MAX_POSITION = 1 << 8


class Stream(enum.IntEnum):
    """Independent streams of one (seed, offset): one per purpose of a draw."""

    DRAFT = 1  # The draft sampler's uniforms, two per (row, position, group of 16 columns).
    ACCEPT = 2  # Acceptance uniform, one per (row, draft position).
    RESAMPLE = 3  # Gumbel noise of the correction / bonus token, one per (row, position, vocab).


def _mulhilo(multiplier: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``multiplier * x`` for 32-bit values held in int64."""
    m_lo = multiplier & 0xFFFF
    m_hi = multiplier >> 16
    t = x * m_lo  # < 2**48
    u = x * m_hi + (t >> 16)  # < 2**48 + 2**32
    hi = u >> 16
    lo = ((u & 0xFFFF) << 16) | (t & 0xFFFF)
    return hi & _MASK32, lo


def philox4x32(
    counter: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    key: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 on broadcastable int64 tensors holding uint32 values.

    Returns the four uint32 output words as int64 tensors of the broadcast shape. On the CPU
    the rounds run in numpy uint64 (a 32 x 32-bit product is exact there: a third of the ops,
    each cheaper than a torch op); elsewhere in int64 torch ops with 16-bit partial products.
    """
    if all(t.device.type == "cpu" for t in (*counter, *key)):
        return _philox4x32_numpy(counter, key)
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_index in range(_PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        if round_index + 1 < _PHILOX_ROUNDS:
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
    return c0, c1, c2, c3


def _philox4x32_numpy(
    counter: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    key: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`philox4x32` of CPU tensors, in numpy uint64 (values below 2**32 throughout)."""
    c0, c1, c2, c3 = (t.to(torch.int64).numpy().astype(np.uint64) for t in counter)
    k0, k1 = (t.to(torch.int64).numpy().astype(np.uint64) for t in key)
    m0, m1, w0, w1 = (np.uint64(v) for v in (_PHILOX_M0, _PHILOX_M1, _PHILOX_W0, _PHILOX_W1))
    mask, shift = np.uint64(_MASK32), np.uint64(32)
    for round_index in range(_PHILOX_ROUNDS):
        p0, p1 = c0 * m0, c2 * m1
        c0, c1, c2, c3 = (p1 >> shift) ^ c1 ^ k0, p1 & mask, (p0 >> shift) ^ c3 ^ k1, p0 & mask
        if round_index + 1 < _PHILOX_ROUNDS:
            k0, k1 = (k0 + w0) & mask, (k1 + w1) & mask
    shape = np.broadcast_shapes(c0.shape, c1.shape, c2.shape, c3.shape)
    return tuple(torch.from_numpy(np.broadcast_to(c, shape).astype(np.int64)) for c in (c0, c1, c2, c3))


def check_seed_offset(seed: SeedLike, offset: SeedLike, device: torch.device) -> None:
    """Validate ``seed``/``offset``: Python ints or one-element int64 tensors on ``device``."""
    for name, value, upper in (("seed", seed, 1 << 64), ("offset", offset, MAX_OFFSET)):
        if isinstance(value, bool):
            raise TypeError(f"{name} must be an int or an int64 tensor, got bool")
        if isinstance(value, int):
            if not 0 <= value < upper:
                raise ValueError(f"{name} must be in [0, {upper}), got {value}")
        elif isinstance(value, torch.Tensor):
            if value.dtype != torch.int64:
                raise TypeError(f"{name} tensor must be int64, got {value.dtype}")
            if value.numel() != 1:
                raise ValueError(f"{name} tensor must hold one element, got shape {tuple(value.shape)}")
            if value.device != device:
                raise ValueError(f"{name} tensor is on {value.device} but the inputs are on {device}")
        else:
            raise TypeError(f"{name} must be an int or an int64 tensor, got {type(value).__name__}")


def _as_word_pair(value: SeedLike, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(value, torch.Tensor):
        v = value.reshape(()).to(device=device, dtype=torch.int64)
        return v & _MASK32, (v >> 32) & _MASK32
    lo = torch.tensor(value & _MASK32, dtype=torch.int64, device=device)
    hi = torch.tensor((value >> 32) & _MASK32, dtype=torch.int64, device=device)
    return lo, hi


def _bits_to_unit_float(bits: torch.Tensor) -> torch.Tensor:
    """uint32 (in int64) -> float32 odd multiple of 2**-24 in (0, 1), exact."""
    numerator = ((bits >> 9) << 1) | 1
    return numerator.to(torch.float32) * (2.0**-24)


def _counters(
    seed: SeedLike,
    offset: SeedLike,
    stream: Stream,
    row: torch.Tensor,
    position: torch.Tensor,
    device: torch.device,
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    key = _as_word_pair(seed, device)
    off_lo, off_hi = _as_word_pair(offset, device)
    row = row.to(device=device, dtype=torch.int64)
    position = position.to(device=device, dtype=torch.int64)
    c1 = row & _MASK32
    c2 = (position & 0xFF) | (int(stream) << 8) | ((off_hi & 0xFFFF) << 16)
    return key, c1, c2, off_lo


def _uniform_reference(
    seed: SeedLike,
    offset: SeedLike,
    stream: Stream,
    row: torch.Tensor,
    position: torch.Tensor,
    vocab_size: int,
    vocab_start: int = 0,
) -> torch.Tensor:
    device = row.device
    key, c1, c2, c3 = _counters(seed, offset, stream, row, position, device)
    batch_shape = torch.broadcast_shapes(c1.shape, c2.shape)
    first_block, lead = divmod(vocab_start, 4)
    num_blocks = (lead + vocab_size + 3) // 4
    c0 = first_block + torch.arange(num_blocks, dtype=torch.int64, device=device)
    words = philox4x32((c0, c1.unsqueeze(-1), c2.unsqueeze(-1), c3), (key[0], key[1]))
    words = [w.expand(*batch_shape, num_blocks) for w in words]
    bits = torch.stack(words, dim=-1).reshape(*batch_shape, num_blocks * 4)
    return _bits_to_unit_float(bits[..., lead : lead + vocab_size])


def uniform(
    seed: SeedLike,
    offset: SeedLike,
    stream: Stream,
    row: torch.Tensor,
    position: torch.Tensor,
    vocab_size: int,
    vocab_start: int = 0,
) -> torch.Tensor:
    """Uniform (0, 1) float32 draws for the vocabulary indices ``[vocab_start, vocab_start +
    vocab_size)`` (a tensor-parallel rank's slice draws what the whole vocabulary would).

    ``row`` and ``position`` are integer tensors broadcastable to a batch shape ``S``;
    returns ``[*S, vocab_size]`` float32. Draw ``[..., v]`` depends only on
    (seed, offset, stream, row, position, vocab_start + v). Runs the CUDA kernel when the
    extension is loaded, the inputs are on a GPU and ``vocab_start`` is 0, else the
    PyTorch reference.
    """
    if not isinstance(stream, Stream):
        raise TypeError(f"stream must be a dspark_sgl.rng.Stream, got {stream!r}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if isinstance(vocab_start, bool) or not isinstance(vocab_start, int) or not 0 <= vocab_start < 1 << 33:
        raise ValueError(f"vocab_start must be an int in [0, 2^33), got {vocab_start!r}")
    check_seed_offset(seed, offset, row.device)
    if _dispatch.use_kernel(
        "philox_uniform",
        row.device,
        lambda: "a vocabulary slice (vocab_start != 0)" if vocab_start else None,
    ):
        return _uniform_cuda(seed, offset, stream, row, position, vocab_size)
    return _uniform_reference(seed, offset, stream, row, position, vocab_size, vocab_start)


def _uniform_cuda(
    seed: SeedLike,
    offset: SeedLike,
    stream: Stream,
    row: torch.Tensor,
    position: torch.Tensor,
    vocab_size: int,
) -> torch.Tensor:
    device = row.device
    shape = torch.broadcast_shapes(row.shape, position.shape)
    rows = row.to(torch.int64).expand(shape).contiguous()
    positions = position.to(device=device, dtype=torch.int64).expand(shape).contiguous()
    out = torch.empty(*shape, vocab_size, dtype=torch.float32, device=device)
    seed_value, seed_ptr = _dispatch.scalar_and_pointer(seed)
    offset_value, offset_ptr = _dispatch.scalar_and_pointer(offset)
    _dispatch.launch(
        "philox_uniform",
        device,
        out.data_ptr(),
        rows.data_ptr(),
        positions.data_ptr(),
        rows.numel(),
        vocab_size,
        seed_value,
        seed_ptr,
        offset_value,
        offset_ptr,
        int(stream),
        _dispatch.current_stream_handle(device),
    )
    return out


def uniform_scalar(
    seed: SeedLike,
    offset: SeedLike,
    stream: Stream,
    row: torch.Tensor,
    position: torch.Tensor,
) -> torch.Tensor:
    """One uniform draw per (row, position): the draw at vocabulary index 0.

    ``row``/``position`` broadcast to ``S``; returns ``[*S]`` float32.
    """
    if not isinstance(stream, Stream):
        raise TypeError(f"stream must be a dspark_sgl.rng.Stream, got {stream!r}")
    check_seed_offset(seed, offset, row.device)
    device = row.device
    key, c1, c2, c3 = _counters(seed, offset, stream, row, position, device)
    zero = torch.zeros((), dtype=torch.int64, device=device)
    word0, _, _, _ = philox4x32((zero, c1, c2, c3), key)
    shape = torch.broadcast_shapes(c1.shape, c2.shape)
    return _bits_to_unit_float(word0.expand(shape))


def noise_unused(temperature: torch.Tensor) -> bool:
    """True when every row of ``temperature`` [R] is greedy (0) and knowing so costs no
    device sync (CPU tensors only): callers may then skip drawing noise no row would use.
    On GPU it is always False, so graph capture and launches never wait on the host."""
    return temperature.device.type == "cpu" and not bool((temperature > 0).any())


def gumbel(
    seed: SeedLike,
    offset: SeedLike,
    stream: Stream,
    row: torch.Tensor,
    position: torch.Tensor,
    vocab_size: int,
    vocab_start: int = 0,
) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log(u))`` in float32, shape ``[*S, vocab_size]``, for
    the vocabulary indices from ``vocab_start`` (see :func:`uniform`)."""
    u = uniform(seed, offset, stream, row, position, vocab_size, vocab_start)
    return -torch.log(-torch.log(u))


def check_position(position: int) -> None:
    """Positions are packed into 8 bits of the counter."""
    if not 0 <= position < _MAX_POSITION:
        raise ValueError(f"draft position must be in [0, {_MAX_POSITION}), got {position}")
