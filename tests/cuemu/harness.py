"""Run dspark_sgl's kernel path on CPU tensors through the emulated build of the extension.

``load()`` builds (cached) and imports the emulated ``_C``. Inside ``emulated(module)``,
``dspark_sgl._dispatch`` treats the CPU as the device: the public functions take their CUDA branch
(the same argument marshalling, raw pointers, launchers and kernels as on a GPU) with CPU tensors;
``_dispatch.forced_reference()`` still selects the PyTorch references. The device it stands for is
an H100/H200 (sm_90): 132 SMs (for the Python side's launch shapes), 227 KiB of opt-in shared
memory per block. The kernels' own ``cudaDeviceGetAttribute`` reports ``CUEMU_SMS`` (default 4),
so that persistent loops over work really loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.machinery
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from cuemu import c_api
from cuemu.build import DEFAULT_OUT, build
from dspark_sgl import _dispatch, verify

SM90_SHARED_MEMORY_OPTIN = 232448  # bytes per block
SM90_MULTIPROCESSORS = 132
_PATCHED = (
    "_extension",
    "launch",
    "_extension_error",
    "_extension_tried",
    "kernel_path",
    "current_stream_handle",
    "multiprocessor_count",
    "shared_memory_unsupported",
)


def load(path: str | Path | None = None) -> ModuleType:
    """Import an emulated ``_C`` (built from csrc/ into build/cuemu when ``path`` is None). The
    module's ``_cuemu`` attribute is the runtime's C interface (``cuemu_reset``,
    ``cuemu_last_message``)."""
    path = str(build(DEFAULT_OUT) if path is None else path)
    # A name of its own per build (the init function is still PyInit__C): Python caches extension
    # modules by name, and a mutant's build must not come back as the original's.
    name = f"cuemu_{Path(path).parent.name}._C"
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    module._cuemu = c_api.declare(ctypes.CDLL(path))
    return module


def last_fault(module: ModuleType) -> str:
    """The runtime's last error message ("" if none) since the last ``reset``."""
    return module._cuemu.cuemu_last_message().decode()


def reset(module: ModuleType) -> None:
    """Clear the runtime's sticky error (a faulted launch stops every later one until then)."""
    module._cuemu.cuemu_reset()


@dataclass(frozen=True)
class TracedCopies:
    """The cp.async copies one block of one launch made from a traced tensor: ``launch`` counts
    launches in stream order, ``block`` is the linear block index, ``first_offset`` the lowest byte
    offset into the tensor it read, ``offsets`` each copy's offset in the order the block issued them,
    ``evict_first`` whether each asked L2 to evict its lines first."""

    launch: int
    block: int
    first_offset: int
    copies: int
    offsets: tuple[int, ...]
    evict_first: tuple[bool, ...]


@contextlib.contextmanager
def copy_trace(module: ModuleType, tensor: torch.Tensor) -> Iterator[list[TracedCopies]]:
    """Record every cp.async copy from ``tensor``'s storage inside the block; the list yielded is
    filled, ordered by (launch, block), when the block ends."""
    runtime, traced = module._cuemu, []
    runtime.cuemu_trace_copies(tensor.data_ptr(), tensor.numel() * tensor.element_size())
    try:
        yield traced
        traced.extend(TracedCopies(*entry) for entry in c_api.copy_trace_entries(runtime))
    finally:
        runtime.cuemu_trace_copies(None, 0)


MARKOV_TILE = 256  # markov_block's 16-bit tile width (W2 rows a tile)


def staged_w2_tiles(traced: TracedCopies, w2: torch.Tensor) -> list[tuple[int, bool]]:
    """The 16-bit markov_block W2 tiles one block staged, in order, each with whether its copies asked
    L2 to evict the lines first: the block's copies in issue order, cut into runs on one tile and one
    priority, each run as many stagings as it holds copies of the whole tile (every 16-byte piece of
    the tile's rows, once per staging)."""
    vocab, rank = w2.shape
    tile_bytes, row_pieces = MARKOV_TILE * rank * w2.element_size(), rank * w2.element_size() // 16
    staged: list[tuple[int, bool]] = []
    run_key, run = (-1, False), 0
    for offset, first in (*zip(traced.offsets, traced.evict_first, strict=True), (-1, False)):
        key = (offset // tile_bytes if offset >= 0 else -1, first)
        if key == run_key:
            run += 1
            continue
        if run:
            pieces = min(MARKOV_TILE, vocab - run_key[0] * MARKOV_TILE) * row_pieces
            if run % pieces:
                raise AssertionError(f"tile {run_key}: {run} copies, not whole stagings of {pieces}")
            staged += [run_key] * (run // pieces)
        run_key, run = key, 1
    return staged


def markov_staged_tiles(
    module: ModuleType, case: dict, first_positions: tuple[int, ...] = ()
) -> dict[int, list[dict[int, list[tuple[int, bool]]]]]:
    """The W2 tiles each block of each markov_block launch stages (staged_w2_tiles), per launch in
    launch order, by block index: under key 0 for the whole block of ``case`` (``markov.sample_block``
    inputs, seed 7, offset 3), under key k for its position k drafted alone with ``first_position=k``.
    Runs inside ``emulated(module)``."""
    from dspark_sgl import markov

    head = markov.VanillaMarkovHead(case["w1"], case["w2"])
    calls = {0: lambda: markov.sample_block(**case, seed=7, offset=3, keep_logits=True)}
    for k in first_positions:
        calls[k] = lambda k=k: markov.sample_block_with_head(
            case["base_logits"][:, k : k + 1],
            case["anchor"],
            head,
            case["temperature"],
            seed=7,
            offset=3,
            first_position=k,
        )
    staged = {}
    for k, call in calls.items():
        with copy_trace(module, case["w2"]) as traced:
            call()
        launches: dict[int, dict[int, list[tuple[int, bool]]]] = {}
        for t in traced:
            launches.setdefault(t.launch, {})[t.block] = staged_w2_tiles(t, case["w2"])
        staged[k] = [blocks for _, blocks in sorted(launches.items())]
    return staged


def markov_tile_orders(
    module: ModuleType, case: dict, first_positions: tuple[int, ...] = ()
) -> dict[int, list[list[int]]]:
    """One launch per position (``DSPARK_SGL_MARKOV_PERSISTENT=0``): the W2 tile each block of each
    position launch stages, per launch in launch order, by block index (markov_staged_tiles, one tile
    a block)."""
    from dspark_sgl import markov

    with _dispatch.environ_setting(markov.PERSISTENT_ENV, "0"):
        staged = markov_staged_tiles(module, case, first_positions)
    orders = {}
    for k, launches in staged.items():
        for blocks in launches:
            if any(len(tiles) != 1 or tiles[0][1] for tiles in blocks.values()):
                raise AssertionError(f"a position launch's block staged other than one normal tile: {blocks}")
        orders[k] = [[blocks[b][0][0] for b in sorted(blocks)] for blocks in launches]
    return orders


@contextlib.contextmanager
def emulated(module: ModuleType) -> Iterator[None]:
    """Make ``_dispatch`` launch ``module``'s kernels for CPU tensors inside the block."""
    saved = {name: getattr(_dispatch, name) for name in _PATCHED}

    def kernel_path(op: str, device: torch.device) -> tuple[bool, str]:
        if device.type != "cpu":
            return False, f"inputs on {device.type}"
        if _dispatch.force_reference():
            return False, "DSPARK_SGL_FORCE_REFERENCE is set"
        if not hasattr(module, op):
            return False, f"the extension has no kernel {op!r}"
        return True, f"emulated dspark_sgl._C.{op}"

    def shared_memory_unsupported(op: str, needed: int, device: torch.device) -> str | None:
        if needed > SM90_SHARED_MEMORY_OPTIN:
            return (
                f"{op} needs {needed} bytes of shared memory per block, the device allows "
                f"{SM90_SHARED_MEMORY_OPTIN}"
            )
        return None

    def launch(op: str, device: torch.device, *args: object) -> None:
        """``_dispatch.launch``, then a check that the launcher left no launch queued (the emulator
        runs a queued launch at the next runtime call: a launcher ends with cudaGetLastError)."""
        saved["launch"](op, device, *args)
        if module._cuemu.cuemu_queued_launches():
            module._cuemu.cuemu_synchronize()
            raise RuntimeError(
                f"{op}: the launcher returned with a launch queued (it must end with cudaGetLastError)"
            )

    _dispatch._extension, _dispatch._extension_error, _dispatch._extension_tried = module, None, True
    _dispatch.launch = launch
    _dispatch.kernel_path = kernel_path
    _dispatch.current_stream_handle = lambda device: 0
    _dispatch.multiprocessor_count = lambda device: SM90_MULTIPROCESSORS
    _dispatch.shared_memory_unsupported = shared_memory_unsupported
    _dispatch._logged.clear()
    verify.forget_counters()  # counters belong to the extension (and a mutant's may be left dirty)
    reset(module)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(_dispatch, name, value)
        _dispatch._logged.clear()
        verify.forget_counters()


def verify_merge_item(target_logits: torch.Tensor) -> int:
    """chain_verify's work item whose hold delays the last request's merge the most: the last chunk
    of position 0 (always verified) of row R - 1, item (R - 1) (g + 1) chunks + chunks - 1."""
    rows, positions, vocab = target_logits.shape
    chunks = verify._stat_chunks(rows, positions - 1, vocab, target_logits.device)
    return (rows - 1) * positions * chunks + chunks - 1


@contextlib.contextmanager
def parked_item(item: int) -> Iterator[None]:
    """CUEMU_PARK_ITEM inside the block: the CTA holding work item ``item`` waits after taking it
    until every later CTA has finished or waits (tests/cuemu/src/runtime.cpp), so a CTA that reads
    what ``item`` writes without waiting for it reads what was there before."""
    with _dispatch.environ_setting("CUEMU_PARK_ITEM", str(item)):
        yield
