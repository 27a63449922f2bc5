"""Shared fixtures: the kernel ``backend`` (emulator or CUDA device), GPU skipping and the chi-square
p-value log printed at the end of a run."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
import torch
from kernel_backend import (
    RACE_SCHEDULE,
    Backend,
    cuda_skip_reason,
    emulator_skip_reason,
    on_cuda,
    on_emulator,
)

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


def pytest_configure(config):
    config.addinivalue_line("markers", "cuemu: runs the CUDA kernels on the CPU emulator (tests/cuemu)")
    config.addinivalue_line(
        "markers", f"race_schedule: also run on the emulator under CUEMU_SCHEDULE={RACE_SCHEDULE}"
    )


def pytest_generate_tests(metafunc):
    """Parametrize ``backend``: cuemu, cuemu-<race schedule> for ``race_schedule`` tests, cuda."""
    if "backend" not in metafunc.fixturenames:
        return
    names = ["cuemu"]
    if metafunc.definition.get_closest_marker("race_schedule"):
        names.append(f"cuemu-{RACE_SCHEDULE}")
    params = [pytest.param(n, marks=pytest.mark.cuemu) for n in names]
    params.append(pytest.param("cuda", marks=pytest.mark.gpu))
    metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture(scope="session")
def emulated_extension() -> ModuleType:
    """The extension built from csrc/ for the CPU emulator (built once, cached in build/cuemu)."""
    reason = emulator_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from cuemu import harness

    return harness.load()


@pytest.fixture
def backend(request, monkeypatch) -> Iterator[Backend]:
    """Where a kernel test runs (see tests/kernel_backend.py): ``backend.device``, ``.name``,
    ``.full`` (full shapes) and ``.ran(op)`` (the kernel was launched)."""
    name: str = request.param
    if name == "cuda":
        reason = cuda_skip_reason()
        if reason is not None:
            pytest.skip(reason)
        with on_cuda() as b:
            yield b
        return
    schedule = name.partition("-")[2] or None
    with on_emulator(request.getfixturevalue("emulated_extension"), schedule, monkeypatch) as b:
        yield b


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
