"""The emulator runtime's C interface (tests/cuemu/src/runtime.cpp) through ctypes, for any library
linked with it: the emulated extension (harness.py) and the self-test library (test_emulator.py)."""

from __future__ import annotations

import ctypes


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Set the argument and result types of the runtime's entry points that are not plain ints."""
    lib.cuemu_last_message.restype = ctypes.c_char_p
    lib.cuemu_trace_copies.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.cuemu_trace_size.restype = ctypes.c_size_t
    lib.cuemu_trace_entry.argtypes = [ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint64)]
    lib.cuemu_trace_offsets.argtypes = [
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_uint64),
        ctypes.POINTER(ctypes.c_uint8),
        ctypes.c_size_t,
    ]
    lib.cuemu_trace_offsets.restype = ctypes.c_size_t
    return lib


def copy_trace_entries(
    lib: ctypes.CDLL,
) -> list[tuple[int, int, int, int, tuple[int, ...], tuple[bool, ...]]]:
    """The copy trace as (launch, block, lowest offset read, copies, each copy's offset in issue
    order, whether each asked L2 to evict its lines first), ordered by (launch, block)."""
    entry, entries = (ctypes.c_uint64 * 4)(), []
    for i in range(lib.cuemu_trace_size()):
        if not lib.cuemu_trace_entry(i, entry):
            raise RuntimeError(f"cuemu_trace_entry({i}) found no entry below cuemu_trace_size()")
        n = int(entry[3])
        offsets, evict_first = (ctypes.c_uint64 * n)(), (ctypes.c_uint8 * n)()
        lib.cuemu_trace_offsets(i, offsets, evict_first, n)
        entries.append(
            (*(int(v) for v in entry), tuple(int(v) for v in offsets), tuple(bool(v) for v in evict_first))
        )
    return entries
