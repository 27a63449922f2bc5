"""Hardware-aware prefix scheduling: how many draft tokens each request verifies.

Batch of R requests with confidences ``c[r, j]``; prefix survival ``a[r, j] = prod_{i<=j}
c[r, i]``. Verifying ``l_r`` drafts costs a batch of ``B = sum_r (1 + l_r)`` tokens and
yields ``tau = sum_r (1 + sum_{j<=l_r} a[r, j])`` expected tokens; the objective is
``Theta = tau * SPS(B)``.

Candidates ``(r, j)`` with ``a > 0`` are ordered by ``a`` descending, ties by smaller
position j, then smaller request r. Because ``a`` is non-increasing along j, every prefix
of this order is prefix-contiguous per request, and whether ``(r, j)`` is admitted
depends only on candidates ranked before it, i.e. on ``x_{r,<j}`` and on other
requests, never on ``x_{r,j}`` itself: that is what keeps both schedulers lossless.

- :func:`schedule_causal` is Algorithm 1 of the paper (admit in order, stop at the first
  non-improvement of Theta).
- :func:`schedule_async` is the production variant (paper 5.2): a budget K from stale
  confidences by global argmax (:func:`verify_budget`), then the top-K current
  candidates (:func:`schedule_topk`).

Everything runs as tensor ops on the confidences' device, with no host synchronisation.
On a GPU, :func:`schedule_causal`, :func:`schedule_async`, :func:`schedule_topk` and
:func:`schedule_topk_causal` run as one launch of the ``schedule_prefix`` CUDA kernel
(csrc/schedule.cu) for up to 8192 candidates (R * g). The first call with a table on a
device copies the table there: make one call before capturing a CUDA graph.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Sequence

import torch

from dspark_sgl import _checks, _dispatch

__all__ = [
    "SpsTable",
    "expected_throughput",
    "prefix_survival",
    "schedule_async",
    "schedule_causal",
    "schedule_topk",
    "schedule_topk_causal",
    "throughput_path",
    "verify_budget",
]


class SpsTable:
    """Profiled target speed: steps per second at B tokens in the verify batch.

    Built from ``(tokens, steps_per_sec)`` points with strictly increasing tokens and
    positive speeds; values between points are linearly interpolated, values outside
    are clamped to the end points. With ``require_non_increasing`` (default) the speeds
    must not increase with B (a bigger batch is never faster); use
    :meth:`from_measurements` to clean a noisy profile.

    JSON I/O uses SGLang's ``--speculative-dspark-sps-table-path`` format
    (``sample_batch_tokens``, ``sample_steps_per_sec``, ``max_batch_tokens``); note that
    SGLang reads the same points as a step function, this class interpolates.
    """

    def __init__(
        self,
        points: Sequence[tuple[int, float]],
        *,
        max_batch_tokens: int | None = None,
        require_non_increasing: bool = True,
    ) -> None:
        points = [tuple(p) for p in points]
        if not points:
            raise ValueError("SpsTable needs at least one (tokens, steps_per_sec) point")
        tokens: list[int] = []
        speeds: list[float] = []
        for i, point in enumerate(points):
            if len(point) != 2:
                raise ValueError(f"SpsTable point {i} must be (tokens, steps_per_sec), got {point!r}")
            b, s = point
            if isinstance(b, bool) or (
                not isinstance(b, int) and not (isinstance(b, float) and b.is_integer())
            ):
                raise TypeError(f"SpsTable point {i}: tokens must be an integer, got {b!r}")
            b, s = int(b), float(s)
            if b < 1:
                raise ValueError(f"SpsTable point {i}: tokens must be >= 1, got {b}")
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"SpsTable point {i}: steps_per_sec must be finite and > 0, got {s}")
            if tokens and b <= tokens[-1]:
                raise ValueError(
                    f"SpsTable tokens must be strictly increasing: {tokens[-1]} then {b} at point {i}"
                )
            if require_non_increasing and speeds and s > speeds[-1]:
                raise ValueError(
                    f"SpsTable steps_per_sec must not increase with tokens: {speeds[-1]} at {tokens[-1]} "
                    f"then {s} at {b} (pass require_non_increasing=False or use SpsTable.from_measurements)"
                )
            tokens.append(b)
            speeds.append(s)
        self.tokens = tokens
        self.steps_per_sec = speeds
        self.max_batch_tokens = int(max_batch_tokens) if max_batch_tokens is not None else tokens[-1]
        if self.max_batch_tokens < tokens[-1]:
            raise ValueError(
                f"max_batch_tokens {self.max_batch_tokens} is below the largest probe {tokens[-1]}"
            )
        self._device_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_measurements(cls, points: Sequence[tuple[int, float]], **kwargs) -> SpsTable:
        """Sort by tokens and enforce non-increasing speed with a running minimum."""
        cleaned: list[tuple[int, float]] = []
        for b, s in sorted(points, key=lambda p: p[0]):
            s = float(s) if not cleaned else min(float(s), cleaned[-1][1])
            cleaned.append((int(b), s))
        return cls(cleaned, **kwargs)

    def __repr__(self) -> str:
        return f"SpsTable({list(zip(self.tokens, self.steps_per_sec, strict=True))})"

    def __call__(self, batch_tokens: int | float) -> float:
        """SPS at one batch size (Python float)."""
        xs, ys = self.tokens, self.steps_per_sec
        x = float(batch_tokens)
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1]:
            return ys[-1]
        hi = bisect.bisect_right(xs, x)
        frac = (x - xs[hi - 1]) / (xs[hi] - xs[hi - 1])
        return ys[hi - 1] + frac * (ys[hi] - ys[hi - 1])

    def lookup(self, batch_tokens: torch.Tensor) -> torch.Tensor:
        """SPS for a tensor of batch sizes, float64 on the same device (no host sync)."""
        xs, ys = self.device_points(batch_tokens.device)
        x = batch_tokens.to(torch.float64).clamp(min=xs[0], max=xs[-1])
        hi = torch.bucketize(x, xs, right=True).clamp(1, max(len(self.tokens) - 1, 1))
        lo = hi - 1
        if len(self.tokens) == 1:
            return ys[0].expand_as(x).clone()
        frac = (x - xs[lo]) / (xs[hi] - xs[lo])
        return ys[lo] + frac * (ys[hi] - ys[lo])

    def device_points(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, steps_per_sec) as float64 tensors on ``device``, cached per device.

        A first use inside a CUDA graph capture cannot copy from host memory: the points are
        then written by fill kernels that become part of the graph (replayed before every
        use) and are not cached, since that memory belongs to the graph.
        """
        cached = self._device_cache.get(device)
        if cached is not None:
            return cached
        if _capture_active(device):
            return _filled(self.tokens, device), _filled(self.steps_per_sec, device)
        cached = (
            torch.tensor(self.tokens, dtype=torch.float64, device=device),
            torch.tensor(self.steps_per_sec, dtype=torch.float64, device=device),
        )
        self._device_cache[device] = cached
        return cached

    def to_dict(self) -> dict:
        return {
            "sample_batch_tokens": list(self.tokens),
            "sample_steps_per_sec": list(self.steps_per_sec),
            "max_batch_tokens": self.max_batch_tokens,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str, **kwargs) -> SpsTable:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"SPS table is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("SPS table JSON must be an object")
        if "bias_seconds" in data:
            raise ValueError(
                "additive SPS tables (bias_seconds/alpha_seconds/theta_seconds) are not supported; "
                "give sample_batch_tokens and sample_steps_per_sec"
            )
        missing = {"sample_batch_tokens", "sample_steps_per_sec"} - set(data)
        if missing:
            raise ValueError(f"SPS table JSON lacks {sorted(missing)}")
        xs, ys = data["sample_batch_tokens"], data["sample_steps_per_sec"]
        if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
            raise ValueError("sample_batch_tokens and sample_steps_per_sec must be lists of equal length")
        return cls(list(zip(xs, ys, strict=True)), max_batch_tokens=data.get("max_batch_tokens"), **kwargs)

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs) -> SpsTable:
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read(), **kwargs)


def _capture_active(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on ``device``'s current stream."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _filled(values: Sequence[float], device: torch.device) -> torch.Tensor:
    """float64 [len(values)] on ``device`` written by one fill kernel per value (no host copy)."""
    out = torch.empty(len(values), dtype=torch.float64, device=device)
    for i, value in enumerate(values):
        out[i].fill_(float(value))
    return out


def _check_confidence(name: str, confidence: torch.Tensor, device: torch.device | None = None) -> None:
    _checks.tensor(name, confidence, dtypes=_checks.FLOAT_DTYPES, ndim=2, device=device)
    _checks.probabilities(name, confidence)


def _check_sps(sps: object) -> None:
    if not isinstance(sps, SpsTable):
        raise TypeError(f"sps must be a dspark_sgl.scheduler.SpsTable, got {type(sps).__name__}")


def prefix_survival(confidence: torch.Tensor) -> torch.Tensor:
    """``a[r, j] = prod_{i<=j} c[r, i]``: products in float64 rounded to float32, [R, g].

    A NaN confidence (possible only with value checks off) makes its survival and every
    later one of its request 0: those candidates are never admitted (the kernel's rule).

    (The CPU reference and the CUDA kernel multiply left to right, so they agree bit for
    bit; torch's GPU scan may group the float64 products differently, which can move a
    result by one float32 ulp only in rare double-rounding cases.)
    """
    survival = torch.cumprod(confidence.double(), dim=1).float()
    return torch.where(torch.isnan(survival), torch.zeros_like(survival), survival)


_BUDGET_NONE, _BUDGET_GIVEN = 0, 1


def _schedule_kernel_unsupported(confidence: torch.Tensor, two_segments: bool) -> str | None:
    rows, gamma = confidence.shape
    if rows * gamma > 8192:
        return f"{rows} x {gamma} candidates > 8192"
    if rows * gamma == 0:
        return "no candidates"
    smem = _dispatch.kernel("schedule_prefix_smem_bytes")(rows, gamma, two_segments)
    return _dispatch.shared_memory_unsupported("schedule_prefix", smem, confidence.device)


def _schedule_cuda(
    confidence: torch.Tensor,
    sps: SpsTable,
    *,
    causal: bool,
    budget: int | torch.Tensor | None = None,
    budget_confidence: torch.Tensor | None = None,
) -> torch.Tensor:
    """One ``schedule_prefix`` launch: lengths [R] int32 (see the module docstring)."""
    rows, gamma = confidence.shape
    device = confidence.device
    conf, stale = confidence, budget_confidence
    if stale is not None and stale.dtype != conf.dtype:  # one dtype per launch: float32 holds both exactly
        conf, stale = conf.float(), stale.float()
    conf = conf.contiguous()
    stale = stale.contiguous() if stale is not None else None
    xs, ys = sps.device_points(device)
    lengths = torch.empty(rows, dtype=torch.int32, device=device)
    budget_tensor = budget.reshape(1).to(torch.int64) if isinstance(budget, torch.Tensor) else None
    _dispatch.launch(
        "schedule_prefix",
        device,
        {
            "confidence": _dispatch.pointer(conf),
            "budget_confidence": _dispatch.pointer(stale),
            "dtype": _dispatch.dtype_code(conf),
            "rows": rows,
            "gamma": gamma,
            "sps_tokens": _dispatch.pointer(xs),
            "sps_speeds": _dispatch.pointer(ys),
            "sps_points": xs.numel(),
            "causal": int(causal),
            "budget_source": _BUDGET_NONE if budget is None else _BUDGET_GIVEN,
            "budget_ptr": _dispatch.pointer(budget_tensor),
            "budget_value": budget if isinstance(budget, int) else 0,
            "lengths": _dispatch.pointer(lengths),
            "take_out": 0,
            "cuda_stream": _dispatch.current_stream_handle(device),
        },
    )
    return lengths


def _ranked_candidates(survival: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates in admission order: (survival float64, request index, valid mask), each [R*g]."""
    rows, gamma = survival.shape
    device = survival.device
    # Position-major flattening makes a stable descending sort break ties by (j, r).
    flat = survival.T.reshape(-1)
    request = torch.arange(rows, device=device).repeat(gamma)
    order = torch.sort(flat, descending=True, stable=True).indices
    ranked = flat[order].to(torch.float64)
    return ranked, request[order], ranked > 0


def _lengths_from_prefix(request: torch.Tensor, take: torch.Tensor, rows: int) -> torch.Tensor:
    """Count, per request, the candidates among the first ``take`` of the ranking."""
    n = request.numel()
    chosen = (torch.arange(n, device=request.device) < take).to(torch.int32)
    lengths = torch.zeros(rows, dtype=torch.int32, device=request.device)
    return lengths.scatter_add_(0, request, chosen)


def _theta_path(ranked: torch.Tensor, valid: torch.Tensor, rows: int, sps: SpsTable) -> torch.Tensor:
    """Theta after admitting the first n ranked candidates, n = 0..N; -inf past the valid ones."""
    device = ranked.device
    gains = torch.where(valid, ranked, torch.zeros_like(ranked))
    tau = rows + torch.cat([torch.zeros(1, dtype=torch.float64, device=device), torch.cumsum(gains, 0)])
    batch = rows + torch.arange(tau.numel(), device=device)
    theta = tau * sps.lookup(batch)
    admissible = torch.cat([torch.ones(1, dtype=torch.bool, device=device), valid])
    return torch.where(admissible, theta, torch.full_like(theta, -math.inf))


def _causal_take(ranked: torch.Tensor, valid: torch.Tensor, rows: int, sps: SpsTable) -> torch.Tensor:
    """How many ranked candidates Algorithm 1 admits: the leading run of strict Theta gains."""
    theta = _theta_path(ranked, valid, rows, sps)
    return (theta[1:] > theta[:-1]).to(torch.int64).cumprod(0).sum()


def schedule_causal(confidence: torch.Tensor, sps: SpsTable) -> torch.Tensor:
    """Algorithm 1 with the early-stop break: verify lengths [R] int32 in [0, g].

    confidence: [R, g] (float32/bf16/fp16) in [0, 1]. Candidates are admitted in ranked
    order while each admission strictly increases Theta; the first non-improvement stops
    the search, so admitting x_{r,j} never depends on x_{r,j} (lossless).
    """
    _check_confidence("confidence", confidence)
    _check_sps(sps)
    if _dispatch.use_kernel(
        "schedule_prefix", confidence.device, lambda: _schedule_kernel_unsupported(confidence, False)
    ):
        return _schedule_cuda(confidence, sps, causal=True)
    rows = confidence.shape[0]
    ranked, request, valid = _ranked_candidates(prefix_survival(confidence))
    return _lengths_from_prefix(request, _causal_take(ranked, valid, rows, sps), rows)


def throughput_path(survival: torch.Tensor, sps: SpsTable) -> torch.Tensor:
    """Theta after admitting the first n ranked candidates, n = 0..R*g: [R*g + 1] float64.

    survival: [R, g] prefix survivals ``a[r, j]`` (non-increasing along j, in [0, 1]),
    float32/bf16/fp16/float64. Entry 0 is ``R * SPS(R)``; entries past the last candidate
    with ``a > 0`` are -inf. ``argmax`` of the path is :func:`verify_budget`'s K.
    """
    _checks.tensor("survival", survival, dtypes=_checks.ANY_FLOAT_DTYPES, ndim=2)
    _checks.probabilities("survival", survival)
    _check_sps(sps)
    ranked, _, valid = _ranked_candidates(survival.float())
    return _theta_path(ranked, valid, survival.shape[0], sps)


def verify_budget(confidence: torch.Tensor, sps: SpsTable) -> torch.Tensor:
    """Global-argmax budget K (0-D int64 tensor): how many drafts to verify in total.

    Evaluates Theta along the whole ranked path (no break) and returns the smallest n
    that maximises it. Lossless only when ``confidence`` cannot depend on the drafts
    being scheduled (e.g. confidences from two steps earlier).
    """
    _check_confidence("confidence", confidence)
    _check_sps(sps)
    ranked, _, valid = _ranked_candidates(prefix_survival(confidence))
    return torch.argmax(_theta_path(ranked, valid, confidence.shape[0], sps))


def schedule_topk(confidence: torch.Tensor, budget: int | torch.Tensor) -> torch.Tensor:
    """Admit the ``budget`` highest-ranked candidates with ``a > 0``: lengths [R] int32.

    budget: int or 0-D/1-element integer tensor (stays on device: no host sync).
    """
    _check_confidence("confidence", confidence)
    return _topk(confidence, _checked_budget(budget, confidence.device), None)


def _checked_budget(budget: int | torch.Tensor, device: torch.device) -> int | torch.Tensor:
    """Validate a top-K budget: a non-negative int, or a one-element integer tensor (as 0-D)."""
    if isinstance(budget, torch.Tensor):
        _checks.tensor("budget", budget, dtypes=_checks.INT_DTYPES, device=device)
        if budget.numel() != 1:
            raise ValueError(f"budget tensor must hold one element, got shape {list(budget.shape)}")
        if _checks.values_checkable(budget) and int(budget) < 0:
            raise ValueError(f"budget must be >= 0, got {int(budget)}")
        budget = budget.reshape(())
    elif isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"budget must be an int or an integer tensor, got {type(budget).__name__}")
    elif budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    return budget


# The kernel's SPS argument when no table matters (plain top-K): cached per device.
_NO_SPS = SpsTable([(1, 1.0)])


def _topk(confidence: torch.Tensor, budget: int | torch.Tensor, sps: SpsTable | None) -> torch.Tensor:
    """Top-K lengths, with Algorithm 1's break under ``sps`` when given (inputs checked)."""
    device = confidence.device
    if _dispatch.use_kernel(
        "schedule_prefix", device, lambda: _schedule_kernel_unsupported(confidence, False)
    ):
        return _schedule_cuda(confidence, sps or _NO_SPS, causal=sps is not None, budget=budget)
    rows = confidence.shape[0]
    ranked, request, valid = _ranked_candidates(prefix_survival(confidence))
    take = torch.minimum(torch.as_tensor(budget, device=device), valid.sum())
    if sps is not None:
        take = torch.minimum(_causal_take(ranked, valid, rows, sps), take)
    return _lengths_from_prefix(request, take, rows)


def schedule_topk_causal(confidence: torch.Tensor, budget: int | torch.Tensor, sps: SpsTable) -> torch.Tensor:
    """Top-K with Algorithm 1's break inside the budget: lengths [R] int32.

    Candidates are admitted in ranked order while fewer than ``budget`` are taken and
    each admission strictly raises Theta under ``confidence`` [R, g]; never more than
    :func:`schedule_topk` admits. budget: int or one-element integer tensor (no host sync).
    """
    _check_confidence("confidence", confidence)
    budget = _checked_budget(budget, confidence.device)
    _check_sps(sps)
    return _topk(confidence, budget, sps)


def schedule_async(
    confidence: torch.Tensor,
    budget_confidence: torch.Tensor,
    sps: SpsTable,
    *,
    causal_prune: bool = False,
) -> torch.Tensor:
    """Asynchronous scheduler (paper 5.2): lengths [R] int32.

    budget_confidence: [R, g] stale confidences (e.g. two steps earlier; pass ones for
    requests without history) that fix the budget K by :func:`verify_budget`; the
    current ``confidence`` [R, g] then picks the top-K candidates (:func:`schedule_topk`).
    With ``causal_prune`` the current candidates are admitted in ranked order only while
    both fewer than K are taken and each admission still raises Theta under the current
    confidences (Algorithm 1's break inside the budget; still lossless).
    """
    _check_confidence("confidence", confidence)
    _check_confidence("budget_confidence", budget_confidence, device=confidence.device)
    if budget_confidence.shape != confidence.shape:
        raise ValueError(
            f"budget_confidence must have the shape of confidence {list(confidence.shape)}, "
            f"got {list(budget_confidence.shape)}"
        )
    _check_sps(sps)
    if _dispatch.use_kernel(
        "schedule_prefix", confidence.device, lambda: _schedule_kernel_unsupported(confidence, True)
    ):
        return _schedule_cuda(confidence, sps, causal=causal_prune, budget_confidence=budget_confidence)
    budget = verify_budget(budget_confidence, sps)
    return _topk(confidence, budget, sps if causal_prune else None)


def expected_throughput(confidence: torch.Tensor, verify_lens: torch.Tensor, sps: SpsTable) -> torch.Tensor:
    """Theta = tau * SPS(B) (0-D float64) of given verify lengths [R] under ``confidence`` [R, g]."""
    _check_confidence("confidence", confidence)
    rows, gamma = confidence.shape
    _checks.tensor(
        "verify_lens", verify_lens, dtypes=_checks.INT_DTYPES, shape=(rows,), device=confidence.device
    )
    _checks.in_range("verify_lens", verify_lens, 0, gamma + 1)
    survival = prefix_survival(confidence).to(torch.float64)
    mask = torch.arange(gamma, device=confidence.device)[None, :] < verify_lens[:, None]
    tau = rows + (survival * mask).sum()
    batch = rows + verify_lens.to(torch.int64).sum()
    return tau * sps.lookup(batch)
