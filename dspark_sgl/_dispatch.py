"""Choice between the CUDA extension ``dspark_sgl._C`` and the PyTorch reference.

The extension is imported once, when this module is imported. Per call, a kernel runs
when the extension loaded, the inputs are on a CUDA device whose compute capability the
build has code for (its SASS targets ``cuda_archs``, or a newer GPU that can JIT its PTX
``cuda_ptx``) and the environment does not force the reference
(``DSPARK_SGL_FORCE_REFERENCE=1``). The first call of each op logs which path it takes
(and why), once per op and path. :func:`launch` runs a launcher with the inputs' device
current, so the kernels' attributes and launches land on that device.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from types import ModuleType

import torch

logger = logging.getLogger("dspark_sgl")

_extension: ModuleType | None = None
_extension_error: str | None = None
_extension_tried = False
_logged: set[tuple[str, str]] = set()


def load_extension() -> ModuleType | None:
    """Import ``dspark_sgl._C`` once; return it, or None with the reason remembered."""
    global _extension, _extension_error, _extension_tried
    if not _extension_tried:
        _extension_tried = True
        try:
            _extension = importlib.import_module("dspark_sgl._C")
        except ImportError as exc:
            _extension_error = f"extension dspark_sgl._C not available ({exc})"
    return _extension


def extension_error() -> str | None:
    """Why the extension could not be loaded, or None if it loaded."""
    load_extension()
    return _extension_error


def force_reference() -> bool:
    return os.environ.get("DSPARK_SGL_FORCE_REFERENCE", "0") not in ("", "0")


@contextlib.contextmanager
def environ_setting(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` inside the block; the old value (or its absence) after it."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def forced_reference() -> Iterator[None]:
    """Run the PyTorch references inside the block (sets ``DSPARK_SGL_FORCE_REFERENCE``)."""
    with environ_setting("DSPARK_SGL_FORCE_REFERENCE", "1"):
        yield


def _log_once(op: str, path: str, reason: str) -> None:
    if (op, path) in _logged:
        return
    _logged.add((op, path))
    logger.info("dspark_sgl: %s runs the %s (%s)", op, path, reason)


def _arch_number(arch: str) -> int:
    return int(arch.rstrip("af"))


def capability_unsupported(ext: ModuleType, capability: tuple[int, int]) -> str | None:
    """Why a GPU of compute ``capability`` (major, minor) has no code in ``ext`` (or None).

    SASS for ``XY`` runs on X.Z with Z >= Y; an arch-specific ``XYa`` only on X.Y; PTX for
    ``P`` is JIT-compiled by the driver on any capability >= P.
    """
    major, minor = capability
    cc = 10 * major + minor
    sass = [a for a in str(getattr(ext, "cuda_archs", "")).split(",") if a]
    for arch in sass:
        number = _arch_number(arch)
        if cc == number or (not arch.endswith(("a", "f")) and major == number // 10 and cc > number):
            return None
    ptx = str(getattr(ext, "cuda_ptx", "") or "")
    if ptx and cc >= _arch_number(ptx):
        return None
    return (
        f"the device is sm_{major}{minor} but dspark_sgl._C holds code for sm {','.join(sass) or 'none'}"
        f" and PTX {ptx or 'none'} (rebuild with DSPARK_SGL_CUDA_ARCHS)"
    )


def kernel_path(op: str, device: torch.device) -> tuple[bool, str]:
    """(use the CUDA kernel?, reason) for ``op`` on ``device``; no logging."""
    if device.type != "cuda":
        return False, f"inputs on {device.type}"
    if force_reference():
        return False, "DSPARK_SGL_FORCE_REFERENCE is set"
    ext = load_extension()
    if ext is None:
        return False, _extension_error or "extension not loaded"
    if not hasattr(ext, op):
        return False, f"the extension has no kernel {op!r}"
    try:
        capability = torch.cuda.get_device_capability(device)
    except (RuntimeError, AssertionError) as exc:
        return False, f"no CUDA device ({exc})"
    why = capability_unsupported(ext, capability)
    if why is not None:
        return False, why
    return True, f"dspark_sgl._C.{op}"


def use_kernel(op: str, device: torch.device, unsupported: Callable[[], str | None] | None = None) -> bool:
    """Whether ``op`` runs its CUDA kernel on ``device``; logs the choice once per reason.

    ``unsupported``: called only when the kernel could otherwise run; returns why these
    particular inputs need the reference (an input the kernel does not cover), or None.
    """
    use, reason = kernel_path(op, device)
    why = unsupported() if use and unsupported is not None else None
    if why is not None:
        use, reason = False, why
    _log_once(op, "CUDA kernel" if use else "PyTorch reference", reason)
    return use


def kernel(op: str):
    """The bound function ``dspark_sgl._C.<op>`` (call only after ``use_kernel``); kernel
    launchers go through :func:`launch`."""
    ext = load_extension()
    assert ext is not None
    return getattr(ext, op)


def launch(op: str, device: torch.device, *args: object) -> None:
    """Run the launcher ``dspark_sgl._C.<op>(*args)`` with ``device`` (the inputs' device)
    current, so that ``cudaFuncSetAttribute`` and the launch happen on that device's context;
    ``args`` carry that device's stream (:func:`current_stream_handle`)."""
    launcher = kernel(op)
    if device.type != "cuda":
        launcher(*args)
        return
    with torch.cuda.device(device):
        launcher(*args)


def describe() -> str:
    """One line on the path the ops take on this process's current device: the CUDA kernels
    and the device they run on, or the PyTorch reference and why."""
    ext = load_extension()
    if ext is None:
        return f"PyTorch reference ({_extension_error})"
    if force_reference():
        return "PyTorch reference (DSPARK_SGL_FORCE_REFERENCE is set)"
    if not torch.cuda.is_available():
        return f"PyTorch reference (no CUDA device; dspark_sgl._C built for sm {ext.cuda_archs})"
    capability = torch.cuda.get_device_capability()
    why = capability_unsupported(ext, capability)
    if why is not None:
        return f"PyTorch reference ({why})"
    ops = sorted(
        name
        for name in dir(ext)
        if not name.startswith("_") and not name.endswith("_bytes") and callable(getattr(ext, name))
    )
    major, minor = capability
    return f"CUDA kernels sm_{major}{minor} (dspark_sgl._C sm {ext.cuda_archs}; {', '.join(ops)})"


_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def dtype_code(t: torch.Tensor | torch.dtype) -> int:
    """The kernels' element-type code of a float32/bf16/fp16 tensor or dtype (common.cuh DType)."""
    return _DTYPE_CODES[t if isinstance(t, torch.dtype) else t.dtype]


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous with a 16-byte aligned address (the kernels' vector loads need it);
    copies only a misaligned view."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def pointer(t: torch.Tensor | None) -> int:
    """Device address of a contiguous tensor, 0 for None."""
    if t is None:
        return 0
    if not t.is_contiguous():
        raise ValueError("internal error: kernel inputs must be contiguous")
    return t.data_ptr()


def scalar_and_pointer(value: int | torch.Tensor) -> tuple[int, int]:
    """(value, 0) for a Python int, (0, data pointer) for a device tensor (seed/offset)."""
    if isinstance(value, torch.Tensor):
        return 0, value.data_ptr()
    return value, 0


def philox_args(seed: int | torch.Tensor, offset: int | torch.Tensor) -> dict[str, int]:
    """The seed/offset entries of a kernel's argument dict."""
    seed_value, seed_ptr = scalar_and_pointer(seed)
    offset_value, offset_ptr = scalar_and_pointer(offset)
    return {
        "seed_value": seed_value,
        "seed_ptr": seed_ptr,
        "offset_value": offset_value,
        "offset_ptr": offset_ptr,
    }


def multiprocessor_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def shared_memory_unsupported(op: str, needed: int, device: torch.device) -> str | None:
    """Why ``op``'s ``needed`` bytes of shared memory per CTA do not fit ``device`` (or None)."""
    limit = getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", None)
    if limit is not None and needed > limit:
        return f"{op} needs {needed} bytes of shared memory per block, the device allows {limit}"
    return None


def capture_active(device: torch.device) -> bool:
    """Whether ``device``'s current stream is capturing a CUDA graph (never on the CPU)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def current_stream_handle(device: torch.device) -> int:
    """The raw ``cudaStream_t`` of PyTorch's current stream on ``device``."""
    return int(torch.cuda.current_stream(device).cuda_stream)


load_extension()
