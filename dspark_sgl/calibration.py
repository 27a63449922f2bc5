"""Confidence calibration: ECE, AUROC and Sequential Temperature Scaling (STS).

The confidence head predicts ``c_k``, the probability that draft k is accepted given
that drafts 1..k-1 were; the scheduler uses the prefix products ``prod_{i<=k} c_i``, so
STS calibrates those products left to right: for k = 1..g it grid-searches one
temperature ``T_k`` with ``c'_k = sigmoid(z_k / T_k)`` minimising the ECE of
``prod_{i<=k} c'_i`` against the label "drafts 1..k were all accepted", keeping the
earlier temperatures fixed. Temperature scaling preserves each position's ordering.

The STS file is the JSON SGLang reads with ``--speculative-dspark-confidence-sts-path``:
``{"temperatures": [...], "dataset": str, "num_samples": int, "ece_before": [...],
"ece_after": [...]}`` (only ``temperatures`` is required).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch

from dspark_sgl import _checks

__all__ = [
    "StsCalibration",
    "apply_sts",
    "auroc",
    "expected_calibration_error",
    "fit_sts",
    "prefix_accept_labels",
    "sts_report",
]


def _check_pred_label(pred: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _checks.tensor("pred", pred, dtypes=_checks.ANY_FLOAT_DTYPES)
    if not isinstance(label, torch.Tensor):
        raise TypeError(f"label must be a torch.Tensor, got {type(label).__name__}")
    if label.shape != pred.shape:
        raise ValueError(f"label shape {list(label.shape)} must equal pred shape {list(pred.shape)}")
    pred = pred.detach().reshape(-1).double().cpu()
    label = label.detach().reshape(-1).double().cpu()
    if pred.numel() == 0:
        raise ValueError("pred is empty")
    if not bool(torch.isfinite(pred).all()) or bool(((pred < 0) | (pred > 1)).any()):
        raise ValueError("pred must be finite and lie in [0, 1]")
    if not bool(((label >= 0) & (label <= 1)).all()):
        raise ValueError("label must lie in [0, 1]")
    return pred, label


def expected_calibration_error(pred: torch.Tensor, label: torch.Tensor, bins: int = 20) -> float:
    """ECE with ``bins`` equal-width bins on [0, 1]: sum_b |mean pred - mean label| n_b / N.

    pred: any shape, probabilities; label: same shape, 0/1 outcomes (or frequencies).
    A prediction of exactly 1 falls in the last bin.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    pred, label = _check_pred_label(pred, label)
    index = (pred * bins).floor().long().clamp(0, bins - 1)
    pred_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, pred)
    label_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, label)
    return float((pred_sum - label_sum).abs().sum() / pred.numel())


def auroc(score: torch.Tensor, label: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    score: any shape, real; label: same shape, 0/1. Raises ValueError if a class is absent.
    """
    if not isinstance(score, torch.Tensor) or not isinstance(label, torch.Tensor):
        raise TypeError("score and label must be torch.Tensors")
    if score.shape != label.shape:
        raise ValueError(f"label shape {list(label.shape)} must equal score shape {list(score.shape)}")
    s = score.detach().reshape(-1).double().cpu()
    y = label.detach().reshape(-1).cpu() > 0.5
    if not bool(torch.isfinite(s).all()):
        raise ValueError("score contains NaN or Inf")
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auroc needs both positive and negative labels")
    order = torch.argsort(s, stable=True)
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    # Average ranks within groups of equal scores.
    _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    group_rank_sum = torch.zeros(counts.numel(), dtype=torch.float64).index_add_(0, inverse, ranks[order])
    ranks[order] = (group_rank_sum / counts.double())[inverse]
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def prefix_accept_labels(accepted_len: torch.Tensor, gamma: int) -> torch.Tensor:
    """[N, g] float labels: label[n, k] = 1 if drafts 0..k were all accepted."""
    positions = torch.arange(gamma, device=accepted_len.device)
    return (positions[None, :] < accepted_len.reshape(-1, 1)).to(torch.float64)


def apply_sts(conf_logits: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    """Calibrated confidences ``sigmoid(z / T_k)``: conf_logits [..., g], temperatures [g] > 0."""
    _checks.tensor("conf_logits", conf_logits, dtypes=_checks.ANY_FLOAT_DTYPES)
    _checks.tensor("temperatures", temperatures, dtypes=_checks.ANY_FLOAT_DTYPES, ndim=1)
    if conf_logits.dim() == 0 or conf_logits.shape[-1] != temperatures.numel():
        raise ValueError(
            f"conf_logits last dim {list(conf_logits.shape)} must equal the number of temperatures "
            f"{temperatures.numel()}"
        )
    if not bool((torch.isfinite(temperatures) & (temperatures > 0)).all()):
        raise ValueError("temperatures must be finite and > 0")
    dtype = torch.float64 if conf_logits.dtype == torch.float64 else torch.float32
    return torch.sigmoid(conf_logits.to(dtype) / temperatures.to(device=conf_logits.device, dtype=dtype))


def _default_grid() -> torch.Tensor:
    return torch.logspace(math.log10(0.05), math.log10(20.0), 241, dtype=torch.float64)


def _check_sts_inputs(
    conf_logits: torch.Tensor, accepted_len: torch.Tensor, verified_len: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _checks.tensor("conf_logits", conf_logits, dtypes=_checks.ANY_FLOAT_DTYPES, ndim=2)
    n, gamma = conf_logits.shape
    _checks.tensor("accepted_len", accepted_len, dtypes=_checks.INT_DTYPES, shape=(n,))
    z = conf_logits.detach().double().cpu()
    if not bool(torch.isfinite(z).all()):
        raise ValueError("conf_logits contains NaN or Inf")
    acc = accepted_len.detach().long().cpu()
    if n == 0:
        raise ValueError("conf_logits is empty")
    if verified_len is None:
        ver = torch.full((n,), gamma, dtype=torch.int64)
    else:
        _checks.tensor("verified_len", verified_len, dtypes=_checks.INT_DTYPES, shape=(n,))
        ver = verified_len.detach().long().cpu()
        _checks.in_range("verified_len", ver, 0, gamma + 1)
    if bool(((acc < 0) | (acc > ver)).any()):
        raise ValueError("accepted_len must lie in [0, verified_len] (verified_len defaults to g)")
    return z, acc, ver


def fit_sts(
    conf_logits: torch.Tensor,
    accepted_len: torch.Tensor,
    *,
    verified_len: torch.Tensor | None = None,
    grid: torch.Tensor | None = None,
    bins: int = 20,
) -> torch.Tensor:
    """Sequential Temperature Scaling: temperatures [g] float32.

    conf_logits: [N, g] raw confidence-head logits of N rounds; accepted_len: [N] int,
    drafts accepted in each round; verified_len: [N] int, drafts verified in each round
    (default g: fixed-block rounds). Position k uses only rounds with verified_len > k.
    grid: candidate temperatures (default 241 log-spaced values in [0.05, 20]); the
    first minimiser of the ECE is kept.
    """
    z, acc, ver = _check_sts_inputs(conf_logits, accepted_len, verified_len)
    grid = _default_grid() if grid is None else grid.detach().double().cpu().reshape(-1)
    if grid.numel() == 0 or not bool((torch.isfinite(grid) & (grid > 0)).all()):
        raise ValueError("grid must hold finite temperatures > 0")
    n, gamma = z.shape
    labels = prefix_accept_labels(acc, gamma)
    temperatures = torch.ones(gamma, dtype=torch.float64)
    prefix = torch.ones(n, dtype=torch.float64)
    for k in range(gamma):
        rows = ver > k
        if int(rows.sum()) == 0:
            break  # No evidence at k or later: keep T = 1 there.
        best_t, best_ece = 1.0, math.inf
        for t in grid.tolist():
            cum = prefix[rows] * torch.sigmoid(z[rows, k] / t)
            ece = expected_calibration_error(cum, labels[rows, k], bins)
            if ece < best_ece:
                best_t, best_ece = t, ece
        temperatures[k] = best_t
        prefix = prefix * torch.sigmoid(z[:, k] / best_t)
    return temperatures.float()


def sts_report(
    conf_logits: torch.Tensor,
    accepted_len: torch.Tensor,
    temperatures: torch.Tensor,
    *,
    verified_len: torch.Tensor | None = None,
    bins: int = 20,
) -> dict[str, list[float]]:
    """Per-position ECE of the prefix products before (T = 1) and after STS, and AUROC.

    Returns ``{"ece_before": [g], "ece_after": [g], "auroc_before": [g], "auroc_after": [g]}``
    (AUROC of the per-position confidence against the conditional acceptance label;
    NaN where one class is absent).
    """
    z, acc, ver = _check_sts_inputs(conf_logits, accepted_len, verified_len)
    gamma = z.shape[1]
    labels = prefix_accept_labels(acc, gamma)
    before = torch.cumprod(torch.sigmoid(z), dim=1)
    after = torch.cumprod(apply_sts(z, temperatures.double()), dim=1)
    report: dict[str, list[float]] = {
        "ece_before": [],
        "ece_after": [],
        "auroc_before": [],
        "auroc_after": [],
    }
    for k in range(gamma):
        rows = ver > k
        if int(rows.sum()) == 0:
            for key in report:
                report[key].append(math.nan)
            continue
        report["ece_before"].append(expected_calibration_error(before[rows, k], labels[rows, k], bins))
        report["ece_after"].append(expected_calibration_error(after[rows, k], labels[rows, k], bins))
        # Conditional label: accepted at k among rounds that reached k.
        reached = rows & (acc >= k)
        cond = (acc[reached] > k).double()
        for key, conf in (
            ("auroc_before", torch.sigmoid(z[reached, k])),
            ("auroc_after", torch.sigmoid(z[reached, k] / float(temperatures[k]))),
        ):
            try:
                report[key].append(auroc(conf, cond))
            except ValueError:
                report[key].append(math.nan)
    return report


@dataclass
class StsCalibration:
    """The STS file SGLang loads with ``--speculative-dspark-confidence-sts-path``."""

    temperatures: list[float]
    dataset: str = ""
    num_samples: int = 0
    ece_before: list[float] = field(default_factory=list)
    ece_after: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.temperatures:
            raise ValueError("StsCalibration needs at least one temperature")
        self.temperatures = [float(t) for t in self.temperatures]
        if not all(math.isfinite(t) and t > 0 for t in self.temperatures):
            raise ValueError(f"StsCalibration temperatures must be finite and > 0, got {self.temperatures}")

    def tensor(self, device: str | torch.device = "cpu") -> torch.Tensor:
        return torch.tensor(self.temperatures, dtype=torch.float32, device=device)

    def to_json(self) -> str:
        data: dict = {"temperatures": self.temperatures}
        if self.dataset:
            data["dataset"] = self.dataset
        if self.num_samples:
            data["num_samples"] = int(self.num_samples)
        if self.ece_before:
            data["ece_before"] = [float(x) for x in self.ece_before]
        if self.ece_after:
            data["ece_after"] = [float(x) for x in self.ece_after]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> StsCalibration:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"STS file is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or "temperatures" not in data:
            raise ValueError("STS JSON must be an object with a 'temperatures' list")
        unknown = set(data) - {"temperatures", "dataset", "num_samples", "ece_before", "ece_after"}
        if unknown:
            raise ValueError(f"STS JSON has unknown keys {sorted(unknown)}")
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> StsCalibration:
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())
