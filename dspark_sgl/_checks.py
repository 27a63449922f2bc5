"""Input validation shared by the public functions.

Metadata checks (type, dtype, device, shape) always run. Value checks (NaN, token
ranges, lengths) read tensor values: on a GPU they synchronise, so they are skipped
while a CUDA graph is being captured and can be turned off with
``DSPARK_SGL_CHECK_VALUES=0``. Errors name the offending argument.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Sequence

import torch

_trusted: contextvars.ContextVar[bool] = contextvars.ContextVar("dspark_sgl_trusted_values", default=False)

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ANY_FLOAT_DTYPES = (torch.float64, *FLOAT_DTYPES)
INT_DTYPES = (torch.int64, torch.int32)


def tensor(
    name: str,
    value: object,
    *,
    dtypes: Sequence[torch.dtype],
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Check one tensor argument; ``None`` in ``shape`` matches any size."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(
            f"{name} must have dtype in ({allowed}), got {str(value.dtype).replace('torch.', '')}"
        )
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    if shape is not None:
        expected = tuple(shape)
        if len(expected) != value.dim() or any(
            e is not None and e != s for e, s in zip(expected, value.shape, strict=True)
        ):
            want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
            raise ValueError(f"{name} must have shape {want}, got {list(value.shape)}")
    if device is not None and value.device != device:
        raise ValueError(f"{name} is on {value.device} but the other inputs are on {device}")
    return value


@contextlib.contextmanager
def trusted_values() -> Iterator[None]:
    """Skip value checks inside the block (callers whose inputs a host already validated,
    e.g. the SGLang plugin's hot paths, which must not synchronise with the device)."""
    token = _trusted.set(True)
    try:
        yield
    finally:
        _trusted.reset(token)


def values_checkable(*tensors: torch.Tensor) -> bool:
    """Whether value checks may read these tensors now (no capture, not disabled, not trusted)."""
    if _trusted.get() or os.environ.get("DSPARK_SGL_CHECK_VALUES", "1") in ("0", ""):
        return False
    on_cuda = any(t.is_cuda for t in tensors)
    return not (on_cuda and torch.cuda.is_current_stream_capturing())


def finite(name: str, value: torch.Tensor) -> None:
    if values_checkable(value) and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def not_nan(name: str, value: torch.Tensor) -> None:
    """Logits may hold -inf (masked tokens) but never NaN or +inf."""
    if values_checkable(value) and bool((torch.isnan(value) | (value == float("inf"))).any()):
        raise ValueError(f"{name} contains NaN or +Inf")


def in_range(name: str, value: torch.Tensor, low: int, high: int) -> None:
    """All values in [low, high)."""
    if values_checkable(value) and value.numel() > 0:
        lo, hi = int(value.min()), int(value.max())
        if lo < low or hi >= high:
            raise ValueError(f"{name} values must be in [{low}, {high}), got min {lo}, max {hi}")


def temperature(name: str, value: torch.Tensor, rows: int, device: torch.device) -> None:
    tensor(name, value, dtypes=(torch.float32,), shape=(rows,), device=device)
    if values_checkable(value) and value.numel() > 0:
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} contains NaN or Inf")
        if bool((value < 0).any()):
            raise ValueError(f"{name} must be >= 0 (0 means greedy), got min {float(value.min())}")


def probabilities(name: str, value: torch.Tensor) -> None:
    """All values finite and in [0, 1]."""
    if values_checkable(value) and value.numel() > 0:
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} contains NaN or Inf")
        if bool(((value < 0) | (value > 1)).any()):
            raise ValueError(f"{name} must lie in [0, 1]")
