"""Where a kernel test runs: the CPU emulator (every CI run) or a CUDA device (when one is lent).

One set of kernel test functions takes the ``backend`` fixture (tests/conftest.py) and runs on both:

- ``cuemu``: the extension built from csrc/ for the CPU (tests/cuemu), CPU tensors, CI-sized shapes;
  the test fails if the emulator recorded a fault, even one the Python layer swallowed.
- ``cuemu-greedy-reverse``: the same under ``CUEMU_SCHEDULE=greedy-reverse`` (one warp runs as far
  as it can, last warp first), which exposes missing barriers; only tests marked
  ``@pytest.mark.race_schedule`` get it.
- ``cuda``: the real extension on a CUDA device at full shapes (CI-sized ones with
  ``DSPARK_SGL_KERNEL_SHAPES=small``, as .ci/gpu runs the sanitizers); skipped without one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import TypeVar

import pytest
import torch

from dspark_sgl import _dispatch

T = TypeVar("T")

BACKENDS = ("cuemu", "cuda")
RACE_SCHEDULE = "greedy-reverse"


@dataclass
class Backend:
    """The device a kernel test runs on and how big its shapes are."""

    name: str  # "cuemu" or "cuda"
    device: torch.device
    full: bool  # full shapes (a real device) or CI-sized ones (the emulator)
    schedule: str | None = None  # the emulator's CUEMU_SCHEDULE (None: the default, "forward")
    launches: Counter = field(default_factory=Counter)

    def ran(self, op: str) -> bool:
        """Whether ``op``'s kernel was launched since the test started (not merely available)."""
        return self.launches[op] > 0

    def size(self, full: T, small: T) -> T:
        """``full`` on a real device, ``small`` on the emulator: the one place shapes are chosen."""
        return full if self.full else small

    def tensor(self, *args, **kwargs) -> torch.Tensor:
        """``torch.tensor`` on this backend's device."""
        return torch.tensor(*args, device=self.device, **kwargs)


def cuda_skip_reason() -> str | None:
    """Why the ``cuda`` backend cannot run here, or None."""
    if not torch.cuda.is_available():
        return "no CUDA device (the cuda backend runs on a lent H100/H200)"
    if _dispatch.load_extension() is None:
        return f"CUDA device present but {_dispatch.extension_error()}"
    return None


def emulator_skip_reason() -> str | None:
    """Why the ``cuemu`` backend cannot run here, or None."""
    if shutil.which("g++") is None:
        return "the CUDA emulator needs g++"
    try:
        import pybind11  # noqa: F401
    except ImportError:
        return "the CUDA emulator needs pybind11"
    return None


@contextlib.contextmanager
def counting_launches(launches: Counter) -> Iterator[None]:
    """Count every ``_dispatch.kernel(op)`` lookup (each is followed by one launch of ``op``)."""
    original = _dispatch.kernel

    def kernel(op: str):
        launches[op] += 1
        return original(op)

    _dispatch.kernel = kernel
    try:
        yield
    finally:
        _dispatch.kernel = original


@contextlib.contextmanager
def on_emulator(
    module: ModuleType, schedule: str | None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    """A ``cuemu`` backend: the emulated extension in place of the real one for CPU tensors."""
    from cuemu import harness

    if schedule is not None:
        monkeypatch.setenv("CUEMU_SCHEDULE", schedule)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # PyTorch's OpenMP spin-waits would steal the emulator's cores
    backend = Backend("cuemu", torch.device("cpu"), full=False, schedule=schedule)
    try:
        with harness.emulated(module), counting_launches(backend.launches):
            yield backend
        fault = harness.last_fault(module)
        if fault:
            pytest.fail(f"the emulator recorded a fault: {fault}", pytrace=False)
    finally:
        harness.reset(module)
        torch.set_num_threads(threads)


@contextlib.contextmanager
def on_cuda() -> Iterator[Backend]:
    """A ``cuda`` backend (the caller has checked ``cuda_skip_reason``)."""
    full = os.environ.get("DSPARK_SGL_KERNEL_SHAPES", "full") != "small"
    backend = Backend("cuda", torch.device("cuda"), full=full)
    with counting_launches(backend.launches):
        yield backend
    torch.cuda.synchronize()
