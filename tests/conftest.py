"""Shared fixtures: GPU skipping and the chi-square p-value log printed at the end of a run."""

from __future__ import annotations

import pytest
import torch

from dspark_sgl import _dispatch

_P_VALUES: list[tuple[str, str, float, bool]] = []


def record_p_value(test: str, what: str, p_value: float, expect_lossless: bool = True) -> None:
    """Remember a chi-square p-value for the end-of-run summary."""
    _P_VALUES.append((test, what, float(p_value), expect_lossless))


def gpu_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device (GPU tests run on the lent H100/H200)"
    if _dispatch.load_extension() is None:
        return f"CUDA device present but {_dispatch.extension_error()}"
    return None


requires_gpu = pytest.mark.skipif(gpu_skip_reason() is not None, reason=str(gpu_skip_reason()))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _P_VALUES:
        return
    terminalreporter.section("chi-square p-values (lossless tests)")
    for test, what, p, lossless in _P_VALUES:
        note = "" if lossless else "  (biased control: must be ~0)"
        terminalreporter.write_line(f"{test:<40} {what:<34} p = {p:.4g}{note}")
    lossless = [p for _, _, p, ok in _P_VALUES if ok]
    if lossless:
        terminalreporter.write_line(
            f"smallest p-value of the lossless checks: {min(lossless):.4f} (of {len(lossless)})"
        )
