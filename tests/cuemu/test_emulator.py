"""Self-tests of the emulator (tests/cuemu/selftest.cu): the answers of CUDA's documented semantics,
and the faults and races the emulator must report or expose."""

from __future__ import annotations

import ctypes
import shutil
import time

import pytest
import torch

from cuemu import c_api
from cuemu.build import HERE, build_standalone

pytestmark = [
    pytest.mark.cuemu,
    pytest.mark.skipif(shutil.which("g++") is None, reason="the CUDA emulator needs g++"),
]
BF16 = torch.bfloat16
ENTRY_POINTS = (
    "st_shuffle_sources",
    "st_divergent_barrier",
    "st_exited_lanes",
    "st_wmma_bf16",
    "st_mma_tile",
    "st_atomic_sum",
    "st_reverse_block",
    "st_dynamic_smem_sum",
    "st_convert_16bit",
    "st_byte_perm",
    "st_widen_int8",
    "st_votes",
    "st_matches",
    "st_cross_warp_syncwarp",
    "st_async_copy_groups",
    "st_async_copy_neighbour",
    "st_async_copy_misuse",
    "st_dependent_launch",
    "st_dependent_chain",
    "st_dependent_launch_error",
    "st_work_items",
    "st_grid_rendezvous",
    "st_async_copy_traced",
    "st_device_attribute",
)
POISON = -1  # a 32-bit word of the dynamic shared memory poison pattern (0xff bytes)


@pytest.fixture(scope="module")
def selftest():
    lib = c_api.declare(ctypes.CDLL(str(build_standalone(HERE / "selftest.cu"))))
    for name in ENTRY_POINTS:
        getattr(lib, name).restype = ctypes.c_char_p
    lib.st_occupancy.argtypes = [ctypes.c_int, ctypes.c_size_t]
    return lib


@pytest.fixture
def runtime(selftest):
    """The self-test library with a clean error state before and after the test."""
    selftest.cuemu_reset()
    yield selftest
    selftest.cuemu_reset()


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _expected_source(kind: int, lane: int, width: int) -> int:
    """The lane a shuffle reads (CUDA Programming Guide, warp shuffle functions); out of range
    sources read the caller's own value."""
    seg = lane // width * width
    if kind == 0:  # xor 5
        j = lane ^ 5
        return j if j < seg + width else lane
    if kind == 1:  # up 3
        return lane - 3 if lane - 3 >= seg else lane
    if kind == 2:  # down 3
        return lane + 3 if lane + 3 < seg + width else lane
    return seg + 37 % width  # idx 37


@pytest.mark.parametrize("width", [32, 16, 8])
def test_shuffles_read_the_documented_source_lanes(runtime, width):
    out = torch.zeros(96 * 4, dtype=torch.int32)
    assert runtime.st_shuffle_sources(_ptr(out), 96, width) == b""
    got = out.view(96, 4)
    expected = torch.tensor([[_expected_source(k, t % 32, width) for k in range(4)] for t in range(96)])
    assert torch.equal(got, expected.int())


def test_votes_and_syncthreads_count(runtime):
    out = torch.zeros(3 * 4, dtype=torch.int32)
    assert runtime.st_votes(_ptr(out)) == b""
    got = out.view(3, 4).tolist()
    for w in range(3):
        ballot = sum(1 << lane for lane in range(32) if (32 * w + lane) % 3 == 0)
        assert got[w][0] & 0xFFFFFFFF == ballot
        assert got[w][1:] == [1, int(w == 1), 48]


def test_match_any_groups_the_lanes_with_equal_values(runtime):
    out = torch.zeros(64 * 3, dtype=torch.int32)
    assert runtime.st_matches(_ptr(out)) == b""
    got = (out.view(64, 3).long() & 0xFFFFFFFF).tolist()

    def lanes(keep) -> int:
        return sum(1 << lane for lane in range(32) if keep(lane))

    for t in range(64):
        lane = t % 32
        assert got[t][0] == lanes(lambda m, lane=lane: m % 5 == lane % 5)
        assert got[t][1] == lanes(lambda m, lane=lane: m // 8 == lane // 8)
        want = lanes(lambda m, lane=lane: m >= 16 and m % 3 == lane % 3) if lane >= 16 else 0
        assert got[t][2] == want


def test_16bit_conversions_round_like_torch(runtime):
    gen = torch.Generator().manual_seed(0)
    values = torch.cat(
        [
            torch.randn(4000, generator=gen) * 10.0 ** torch.randint(-9, 6, (4000,), generator=gen),
            torch.tensor([0.0, -0.0, 65504.0, 65520.0, 65519.0, 6.0e-8, 2.0**-25, 3e-8, 1e38, 3.4e38]),
            torch.tensor([float("inf"), float("-inf")]),
            # halfway cases of bf16 (ties to even) and of fp16
            torch.tensor([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11]),
        ]
    )
    n = values.numel()
    bf16, f16 = torch.zeros(n, dtype=torch.int16), torch.zeros(n, dtype=torch.int16)
    back = torch.zeros(2 * n)
    assert runtime.st_convert_16bit(_ptr(values), _ptr(bf16), _ptr(f16), _ptr(back), n) == b""
    assert torch.equal(bf16, values.to(BF16).view(torch.int16))
    assert torch.equal(f16, values.to(torch.float16).view(torch.int16))
    assert torch.equal(back.view(n, 2)[:, 0], values.to(BF16).float())
    assert torch.equal(back.view(n, 2)[:, 1], values.to(torch.float16).float())


def _byte_perm(x: int, y: int, s: int) -> int:
    """__byte_perm as the CUDA Math API documents it: byte n is byte s<4n+2:4n> of {y, x}."""
    word = (y << 32) | x
    return sum(((word >> (8 * ((s >> (4 * n)) & 7))) & 0xFF) << (8 * n) for n in range(4))


def test_byte_perm_selects_the_documented_bytes(runtime):
    gen = torch.Generator().manual_seed(5)
    n = 512
    x, y = (torch.randint(0, 2**32, (n,), generator=gen, dtype=torch.int64) for _ in range(2))
    s = torch.randint(0, 8, (n, 4), generator=gen, dtype=torch.int64)  # selector nibbles 0..7
    s = (s << torch.tensor([0, 4, 8, 12])).sum(dim=1) | (torch.randint(0, 2**16, (n,), generator=gen) << 16)
    s[:4] = torch.tensor([0x3210, 0x7654, 0x4140, 0x4342])  # identity, y, markov_int8's two selectors
    words = [t.to(torch.int32) for t in (x, y, s)]  # uint32 bit patterns (the upper 16 bits of s unused)
    out = torch.zeros(n, dtype=torch.int32)
    assert runtime.st_byte_perm(*(_ptr(w) for w in words), _ptr(out), n) == b""
    want = [_byte_perm(int(a), int(b), int(c)) for a, b, c in zip(x, y, s, strict=True)]
    assert [int(v) & 0xFFFFFFFF for v in out] == want


def test_byte_perm_with_a_sign_replicating_selector_faults(runtime):
    words = [torch.tensor([v], dtype=torch.int32) for v in (0x11223344, 0x55667788, 0x4148)]
    out = torch.zeros(1, dtype=torch.int32)
    msg = runtime.st_byte_perm(*(_ptr(w) for w in words), _ptr(out), 1)
    assert b"selector 0x4148 sets a nibble's bit 3" in msg, msg


def test_int8_widening_is_exact_for_every_byte(runtime):
    """markov_int8.cuh's int8x4_to (bit patterns and one 16-bit subtraction a pair, no conversion
    instruction) gives float(b) in bfloat16 and half for all 256 int8 values, -128 included."""
    out_bf16 = torch.zeros(256, dtype=torch.int16)
    out_f16 = torch.zeros(256, dtype=torch.int16)
    assert runtime.st_widen_int8(_ptr(out_bf16), _ptr(out_f16)) == b""
    values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.int8).float()
    assert torch.equal(out_bf16, values.to(BF16).view(torch.int16))
    assert torch.equal(out_f16, values.to(torch.float16).view(torch.int16))


def test_wmma_bf16_matches_a_matmul_in_both_b_layouts(runtime):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(16, 24, generator=gen).to(BF16)  # lda 24 (a multiple of 8 elements)
    b = torch.randn(16, 16, generator=gen).to(BF16)
    for col_b in (0, 1):
        c = torch.zeros(16, 16)
        assert runtime.st_wmma_bf16(_ptr(a), _ptr(b), _ptr(c), 24, 16, col_b) == b""
        bm = b.float().T if col_b else b.float()  # col_major: element (k, n) at n * ldb + k
        torch.testing.assert_close(c, a.float()[:, :16] @ bm + 0.5, rtol=1e-6, atol=1e-5)


def test_wmma_rejects_an_ldm_that_is_not_16_bytes(runtime):
    a = torch.zeros(16, 20, dtype=BF16)
    b = torch.zeros(16, 16, dtype=BF16)
    c = torch.zeros(16, 16)
    assert b"ldm 20 is not a multiple of 16 bytes" in runtime.st_wmma_bf16(
        _ptr(a), _ptr(b), _ptr(c), 20, 16, 0
    )


def _mma_operands(dtype: torch.dtype, seed: int):
    """A [16, 16], B^T [8, 16] (n rows, k contiguous), C [16, 8] and the shared-memory slots of their
    rows: a random permutation of 24 slots, so a lane reading another lane's row address is seen."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(16, 16, generator=gen).to(dtype)
    bt = torch.randn(8, 16, generator=gen).to(dtype)
    c = torch.randn(16, 8, generator=gen)
    slots = torch.randperm(24, generator=gen).to(torch.int32)
    return a, bt, c, slots[:16].contiguous(), slots[16:].contiguous()


def _ldmatrix_expected(a: torch.Tensor) -> torch.Tensor:
    """[32, 4] registers of ldmatrix_x4 with lane i addressing row i % 8 of matrix i / 8, the matrices
    A[0:8, 0:8], A[8:16, 0:8], A[0:8, 8:16], A[8:16, 8:16]: lane l gets row l / 4, elements 2 (l % 4)
    and 2 (l % 4) + 1 (PTX ISA, ldmatrix), i.e. A's mma.m16n8k16 fragment a[0..3]."""
    bits = a.view(torch.int16).to(torch.int64) & 0xFFFF
    out = torch.zeros(32, 4, dtype=torch.int64)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for m in range(4):
            row, col = g + 8 * (m % 2), 2 * t + 8 * (m // 2)
            out[lane, m] = bits[row, col] | (bits[row, col + 1] << 16)
    return out


@pytest.mark.parametrize("dtype", [BF16, torch.float16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mma_fragments_follow_the_documented_layouts(runtime, dtype, seed):
    a, bt, c, slot_a, slot_b = _mma_operands(dtype, seed)
    d = torch.zeros(16, 8)
    regs = torch.zeros(32, 4, dtype=torch.int32)
    fp16 = int(dtype == torch.float16)
    msg = runtime.st_mma_tile(
        _ptr(a), _ptr(bt), _ptr(c), _ptr(slot_a), _ptr(slot_b), _ptr(d), _ptr(regs), fp16, 0
    )
    assert msg == b""
    assert torch.equal(regs.to(torch.int64) & 0xFFFFFFFF, _ldmatrix_expected(a))
    # float32 sums of exact products, ascending k: float64 agrees to float32 rounding
    expected = (a.double() @ bt.double().T + c.double()).float()
    torch.testing.assert_close(d, expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "misuse, message",
    [
        (1, b"row address"),
        (2, b"not in shared memory"),
        (3, b"exited"),
    ],
)
def test_mma_fragment_misuse_is_reported(runtime, misuse, message):
    a, bt, c, slot_a, slot_b = _mma_operands(BF16, 0)
    d = torch.zeros(16, 8)
    regs = torch.zeros(32, 4, dtype=torch.int32)
    msg = runtime.st_mma_tile(
        _ptr(a), _ptr(bt), _ptr(c), _ptr(slot_a), _ptr(slot_b), _ptr(d), _ptr(regs), 0, misuse
    )
    assert message in msg


def test_atomics_across_parallel_blocks(runtime):
    total = torch.zeros(1, dtype=torch.int64)
    ftotal = torch.zeros(1)
    assert runtime.st_atomic_sum(_ptr(total), _ptr(ftotal), 64) == b""
    n = 64 * 256
    assert int(total) == n * (n - 1) // 2 and float(ftotal) == n


def test_a_missing_syncthreads_is_exposed(runtime):
    x = torch.arange(4 * 256, dtype=torch.int32)
    want = x.view(4, 256).flip(1).reshape(-1)
    out = torch.zeros_like(x)
    assert runtime.st_reverse_block(_ptr(x), _ptr(out), 4, 1) == b""
    assert torch.equal(out, want)
    assert runtime.st_reverse_block(_ptr(x), _ptr(out), 4, 0) == b""
    assert not torch.equal(out, want)  # threads run until they block: later threads' slots are unwritten


@pytest.mark.parametrize(("schedule", "exposed"), [("forward", False), ("greedy-reverse", True)])
def test_warps_ordered_only_by_syncwarp_are_exposed_by_a_greedy_schedule(
    runtime, monkeypatch, schedule, exposed
):
    monkeypatch.setenv("CUEMU_SCHEDULE", schedule)
    out = torch.zeros(64, dtype=torch.int32)
    assert runtime.st_cross_warp_syncwarp(_ptr(out)) == b""
    correct = torch.equal(out, (torch.arange(64, dtype=torch.int32) + 32) % 64 + 1)
    assert correct != exposed


def test_divergent_collectives_are_reported(runtime):
    out = torch.zeros(128, dtype=torch.int32)
    msg = runtime.st_divergent_barrier(_ptr(out))
    assert b"deadlock" in msg and b"__shfl_xor_sync" in msg and b"__syncthreads" in msg, msg
    runtime.cuemu_reset()
    msg = runtime.st_exited_lanes(_ptr(out))
    assert b"exited" in msg, msg


def test_a_faulted_launch_stops_later_launches_until_reset(runtime):
    out = torch.zeros(128, dtype=torch.int32)
    assert b"deadlock" in runtime.st_divergent_barrier(_ptr(out))
    x = torch.ones(256, dtype=torch.int32)
    out = torch.zeros(256, dtype=torch.int32)
    assert runtime.st_reverse_block(_ptr(x), _ptr(out), 1, 1) != b""  # the sticky error
    assert int(out.sum()) == 0  # nothing ran
    runtime.cuemu_reset()
    assert runtime.st_reverse_block(_ptr(x), _ptr(out), 1, 1) == b""
    assert int(out.sum()) == 256


def test_dynamic_shared_memory_needs_the_opt_in(runtime):
    x = torch.ones(256)
    out = torch.zeros(1)
    msg = runtime.st_dynamic_smem_sum(_ptr(x), _ptr(out), 256, 0)
    assert b"above the kernel's limit 49152" in msg, msg
    runtime.cuemu_reset()
    assert runtime.st_dynamic_smem_sum(_ptr(x), _ptr(out), 256, 1) == b""
    assert float(out) == 256.0


def _random_words(rows: int, seed: int) -> torch.Tensor:
    """[rows, 4] int32 (one int4 per row), no word equal to the poison or zero."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, 2**30, (rows, 4), generator=gen, dtype=torch.int32)


def test_async_copies_land_at_the_wait_that_retires_their_group(runtime):
    src = _random_words(96, 0)
    out = torch.zeros(32, 8, dtype=torch.int32)
    assert runtime.st_async_copy_groups(_ptr(src), _ptr(out)) == b""
    first = src[:32, 0]
    assert torch.equal(out[:, 0], torch.full((32,), POISON, dtype=torch.int32))  # before any wait
    assert torch.equal(out[:, 1], first)  # wait<2> with 3 groups: the oldest landed ...
    assert torch.equal(out[:, 2], torch.full((32,), POISON, dtype=torch.int32))  # ... not the second
    assert torch.equal(out[:, 3], src[32:64, 0])  # wait<1>: the second
    assert torch.equal(out[:, 4], torch.zeros(32, dtype=torch.int32))  # zero fill, source not read
    assert torch.equal(out[:, 5], torch.zeros(32, dtype=torch.int32))
    assert torch.equal(out[:, 6], first)
    assert torch.equal(out[:, 7], torch.full((32,), POISON, dtype=torch.int32))  # uncommitted: pending


def test_a_copy_read_by_another_thread_needs_a_syncthreads(runtime):
    src = _random_words(64, 1)
    want = src[:, 0].roll(-1)
    out = torch.zeros(64, dtype=torch.int32)
    assert runtime.st_async_copy_neighbour(_ptr(src), _ptr(out), 64, 1) == b""
    assert torch.equal(out, want)
    assert runtime.st_async_copy_neighbour(_ptr(src), _ptr(out), 64, 0) == b""
    assert torch.equal(out[:-1], torch.full((63,), POISON, dtype=torch.int32))  # neighbour not yet waited
    assert int(out[-1]) == int(want[-1])  # thread 0's copy had landed when the last thread read it


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (1, b"destination 0x"),
        (2, b"source 0x"),
        (3, b"is not in shared memory"),
        (4, b"src_bytes 8 is neither 0 nor 16"),
        (5, b"is in shared memory (cp.async reads global memory)"),
        (6, b"thread exits with 1 cp.async copies that no cp_async_wait retired (0 of them never committed)"),
        (7, b"(1 of them never committed)"),
    ],
)
def test_async_copy_misuse_is_reported(runtime, kind, message):
    src = _random_words(32, 2)
    out = torch.zeros(32, 4, dtype=torch.int32)
    msg = runtime.st_async_copy_misuse(_ptr(src), _ptr(out), kind)
    assert message in msg, msg
    if kind in (1, 2):
        assert b"is not 16-byte aligned" in msg, msg


def test_async_copy_into_static_shared_memory(runtime):
    src = _random_words(32, 3)
    out = torch.zeros(32, 4, dtype=torch.int32)
    assert runtime.st_async_copy_misuse(_ptr(src), _ptr(out), 0) == b""
    assert torch.equal(out, src)


@pytest.mark.parametrize("evict_first", [0, 1])
def test_the_copy_trace_records_each_blocks_first_source_in_the_traced_range(runtime, evict_first):
    """Per launch (numbered in stream order) and block: the lowest offset into the traced range that
    its cp.async copies read, how many did, each one's offset and L2 priority (an evict-first policy
    copies the same bytes); copies from elsewhere and zero-fills are not counted, and nothing is
    recorded once the trace stops."""
    blocks, threads, stride = 3, 4, 8
    src, other = _random_words(blocks * stride, 4), _random_words(threads, 5)
    out = torch.zeros(blocks * threads, 4, dtype=torch.int32)
    runtime.cuemu_trace_copies(_ptr(src), src.numel() * 4)
    for _ in range(2):
        msg = runtime.st_async_copy_traced(
            _ptr(src), _ptr(other), blocks, threads, stride, evict_first, _ptr(out)
        )
        assert msg == b""
    entries = c_api.copy_trace_entries(runtime)
    assert runtime.cuemu_trace_entry(len(entries), (ctypes.c_uint64 * 4)()) == 0
    first = entries[0][0]
    assert [(*e[:4], tuple(sorted(e[4])), e[5]) for e in entries] == [
        (
            first + launch,
            b,
            (blocks - 1 - b) * stride * 16,
            threads,
            tuple((blocks - 1 - b) * stride * 16 + 16 * t for t in range(threads)),
            (bool(evict_first),) * threads,
        )
        for launch in range(2)
        for b in range(blocks)
    ]
    for b in range(blocks):
        row = (blocks - 1 - b) * stride
        assert torch.equal(out[b * threads : (b + 1) * threads], src[row : row + threads])
    runtime.cuemu_trace_copies(None, 0)
    assert runtime.st_async_copy_traced(_ptr(src), _ptr(other), blocks, threads, stride, 0, _ptr(out)) == b""
    assert runtime.cuemu_trace_size() == 0


STALE, FRESH = -7, 5  # the values before and after the primary of st_dependent_launch


@pytest.mark.parametrize("schedule", ["forward", "greedy-reverse"])
def test_a_dependent_runs_up_to_its_wait_before_the_primary(runtime, monkeypatch, schedule):
    """Blocks of a programmatic dependent read the primary's output before griddepcontrol.wait as
    it was before the primary ran (up to the parked-block limit; later blocks start after the
    primary, as a GPU may start them), after the wait as the primary left it; shared memory and
    a barrier that some threads reach while others wait survive the parking."""
    monkeypatch.setenv("CUEMU_SCHEDULE", schedule)
    early = runtime.cuemu_early_block_limit()
    blocks, threads = early + 8, 64
    n = blocks * threads
    data = torch.full((n,), STALE, dtype=torch.int32)
    before, after, kept = (torch.zeros(n, dtype=torch.int32) for _ in range(3))
    launches = runtime.cuemu_early_dependent_launches()
    assert (
        runtime.st_dependent_launch(_ptr(data), _ptr(before), _ptr(after), _ptr(kept), blocks, threads, 1, 1)
        == b""
    )
    assert runtime.cuemu_early_dependent_launches() == launches + 1
    assert runtime.cuemu_queued_launches() == 0
    per_block = before.view(blocks, threads)
    assert bool((per_block[:early] == STALE).all()) and bool((per_block[early:] == FRESH).all())
    assert bool((after == FRESH).all()) and bool((kept == 1).all())


def test_a_dependent_that_never_waits_runs_entirely_before_its_primary(runtime):
    """Blocks that exit without waiting hold no parking slot: every block of a dependent without a
    wait (past the parked-block limit too) reads the primary's output as it was before."""
    blocks, threads = runtime.cuemu_early_block_limit() + 8, 32
    data = torch.full((blocks * threads,), STALE, dtype=torch.int32)
    before, after, kept = (torch.zeros(blocks * threads, dtype=torch.int32) for _ in range(3))
    assert (
        runtime.st_dependent_launch(_ptr(data), _ptr(before), _ptr(after), _ptr(kept), blocks, threads, 1, 0)
        == b""
    )
    assert bool((before == STALE).all()) and bool((after == STALE).all()) and bool((kept == 1).all())
    assert bool((data == FRESH).all())  # the primary ran after


def test_a_dependent_without_a_queued_primary_waits_for_nothing(runtime):
    """A runtime call between the launches runs the primary first: the dependent sees its output
    everywhere, and the launch is not counted as one that ran before its primary."""
    blocks, threads = 4, 32
    data = torch.full((blocks * threads,), STALE, dtype=torch.int32)
    before, after, kept = (torch.zeros(blocks * threads, dtype=torch.int32) for _ in range(3))
    launches = runtime.cuemu_early_dependent_launches()
    assert (
        runtime.st_dependent_launch(_ptr(data), _ptr(before), _ptr(after), _ptr(kept), blocks, threads, 0, 1)
        == b""
    )
    assert runtime.cuemu_early_dependent_launches() == launches
    assert bool((before == FRESH).all()) and bool((after == FRESH).all()) and bool((kept == 1).all())


def test_a_chain_of_dependents_sees_each_primary_only_after_its_wait(runtime):
    """A -> B -> C: B's part before its wait runs before A, C's before the rest of B."""
    cell = torch.zeros(4, dtype=torch.int32)
    seen = torch.full((6,), -1, dtype=torch.int32)
    assert runtime.st_dependent_chain(_ptr(cell), _ptr(seen)) == b""
    assert seen[:4].tolist() == [0, 1, 0, 2]  # B: before, after; C: before, after
    assert cell[:3].tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (0, b"cudaErrorInvalidConfiguration: invalid launch configuration"),
        (1, b"attribute 4 is not emulated"),
    ],
)
def test_dependent_launch_errors_are_returned_by_the_launch(runtime, kind, message):
    cell = torch.zeros(4, dtype=torch.int32)
    msg = runtime.st_dependent_launch_error(_ptr(cell), kind)
    assert message in msg, msg


N1, N2, THREADS = 6, 5, 64  # st_work_items: writer and reader items, threads per block


def _slice_sum(item: int) -> int:
    """The sum of the slice phase-1 item `item` writes (item * 1000 + t + 1, t < THREADS)."""
    return THREADS * item * 1000 + THREADS * (THREADS + 1) // 2


def _work_items(runtime, target: int = N1, wait: int = 1, misuse: int = 0, tagged: int = 0, tags=None):
    """Runs st_work_items; returns (message, the readers' sums, the ticket counter after it). With
    ``tags`` (a list), the high halves the readers saw are appended to it."""
    counter, done = torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    data = torch.zeros(N1 * THREADS, dtype=torch.int32)
    out = torch.zeros(N2, dtype=torch.int64)
    seen = torch.full((N2,), -1, dtype=torch.int32)
    msg = runtime.st_work_items(
        _ptr(counter), _ptr(done), _ptr(data), _ptr(out), N1, N2, target, wait, misuse, tagged, _ptr(seen)
    )
    if tags is not None:
        tags.extend(seen.tolist())
    return msg, out.tolist(), int(counter)


@pytest.mark.parametrize(
    ("workers", "park", "schedule"),
    [
        ("1", None, "forward"),
        ("2", None, "forward"),
        ("1", N1 - 1, "forward"),
        ("2", N1 - 1, "forward"),
        ("1", N1 - 1, "greedy-reverse"),
        ("2", N1 - 1, "greedy-reverse"),
        ("2", 0, "forward"),
        ("2", N1, "forward"),
    ],
)
def test_work_items_that_wait_for_the_items_before_see_their_writes(
    runtime, monkeypatch, workers, park, schedule
):
    """Readers that wait for the writers' count read every slice, whichever item is held back
    (CUEMU_PARK_ITEM) and however blocks and threads interleave; every launch leaves the ticket
    counter zero."""
    monkeypatch.setenv("CUEMU_WORKERS", workers)
    monkeypatch.setenv("CUEMU_SCHEDULE", schedule)
    if park is not None:
        monkeypatch.setenv("CUEMU_PARK_ITEM", str(park))
    msg, sums, counter = _work_items(runtime)
    assert msg == b""
    assert sums == [sum(_slice_sum(i) for i in range(N1))] * N2
    assert counter == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_parked_item_exposes_readers_that_do_not_wait(runtime, monkeypatch, workers):
    """With the last writer held (CUEMU_PARK_ITEM = n1 - 1) until the later items are done,
    readers without the wait miss its slice, every one of them (not a race the run may lose)."""
    monkeypatch.setenv("CUEMU_WORKERS", workers)
    monkeypatch.setenv("CUEMU_PARK_ITEM", str(N1 - 1))
    msg, sums, counter = _work_items(runtime, wait=0)
    assert msg == b""
    assert sums == [sum(_slice_sum(i) for i in range(N1 - 1))] * N2
    assert counter == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_masked_wait_counts_its_bits_and_returns_the_word(runtime, monkeypatch, workers):
    """Writers raise a second count in the word's high half: readers waiting on the low half (mask
    0xFFFF) still see every slice with the last writer parked, and the word that ended each wait
    holds all n1 high-half raises; waiting on the whole word (no mask) ends at the first writer:
    every reader misses at least the parked writer's slice."""
    monkeypatch.setenv("CUEMU_WORKERS", workers)
    monkeypatch.setenv("CUEMU_PARK_ITEM", str(N1 - 1))
    tags: list[int] = []
    msg, sums, counter = _work_items(runtime, tagged=1, tags=tags)
    assert msg == b"" and counter == 0
    assert sums == [sum(_slice_sum(i) for i in range(N1))] * N2
    assert tags == [N1] * N2
    msg, sums, counter = _work_items(runtime, tagged=2)
    assert msg == b"" and counter == 0
    assert all(total <= sum(_slice_sum(i) for i in range(N1 - 1)) for total in sums), sums


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_wait_no_block_can_end_is_a_deadlock_fault(runtime, monkeypatch, workers):
    """A target above what the writers raise faults at once (no timeout), naming the wait, the
    count and the target; after cuemu_reset later launches run."""
    monkeypatch.setenv("CUEMU_WORKERS", workers)
    start = time.monotonic()
    msg, _, _ = _work_items(runtime, target=N1 + 1)
    assert time.monotonic() - start < 10.0
    assert b"wait_for_count: deadlock: the count is 6, the target 7" in msg, msg
    assert b"no block can raise it" in msg, msg
    runtime.cuemu_reset()
    msg, sums, counter = _work_items(runtime)
    assert msg == b"" and counter == 0
    assert sums == [sum(_slice_sum(i) for i in range(N1))] * N2


@pytest.mark.parametrize(
    ("misuse", "message"),
    [
        (1, b"take_work_item: a second item from counter"),
        (2, b"take_work_item: total 10 is not the grid's block count 11"),
    ],
)
def test_work_item_misuse_is_reported(runtime, misuse, message):
    msg, _, _ = _work_items(runtime, misuse=misuse)
    assert message in msg, msg


def test_the_sm_count_is_cuemu_sms(runtime, monkeypatch):
    value = ctypes.c_int(0)
    monkeypatch.delenv("CUEMU_SMS", raising=False)
    assert runtime.st_device_attribute(ctypes.byref(value), 16) == b""  # cudaDevAttrMultiProcessorCount
    assert value.value == 4
    monkeypatch.setenv("CUEMU_SMS", "7")
    assert runtime.st_device_attribute(ctypes.byref(value), 16) == b""
    assert value.value == 7
    assert runtime.st_device_attribute(ctypes.byref(value), 1) == b"cudaErrorInvalidValue"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_cooperative_grid_runs_every_block_at_once(runtime, monkeypatch, workers):
    """Blocks that wait until every block of the grid has counted itself in finish when the launch
    is cooperative, on any number of workers; the same launch without the attribute deadlocks
    (faults) once the grid has more blocks than workers."""
    monkeypatch.setenv("CUEMU_WORKERS", workers)
    monkeypatch.setenv("CUEMU_SMS", "4")
    blocks = 4
    arrived, seen = torch.zeros(1, dtype=torch.int32), torch.full((blocks,), -1, dtype=torch.int32)
    assert runtime.st_grid_rendezvous(_ptr(arrived), _ptr(seen), blocks, 1) == b""
    assert int(arrived) == blocks and seen.tolist() == [blocks] * blocks
    arrived.zero_()
    msg = runtime.st_grid_rendezvous(_ptr(arrived), _ptr(seen), blocks, 0)
    assert b"wait_for_count: deadlock" in msg, msg


def test_a_cooperative_grid_larger_than_the_resident_blocks_is_refused(runtime, monkeypatch):
    """At 64 threads and no shared memory 32 blocks fit a multiprocessor: 2 x 32 blocks launch
    cooperatively on CUEMU_SMS = 2, 65 are refused with cudaErrorCooperativeLaunchTooLarge; with
    CUEMU_RESIDENT_BLOCKS = 3, 3 launch and 4 are refused."""
    monkeypatch.setenv("CUEMU_SMS", "2")
    blocks = 2 * runtime.st_occupancy(64, 0)
    arrived, seen = torch.zeros(1, dtype=torch.int32), torch.full((blocks + 1,), -1, dtype=torch.int32)
    assert runtime.st_grid_rendezvous(_ptr(arrived), _ptr(seen), blocks, 1) == b""
    msg = runtime.st_grid_rendezvous(_ptr(arrived), _ptr(seen), blocks + 1, 1)
    assert msg.startswith(b"cudaErrorCooperativeLaunchTooLarge: cooperative launch of 65 blocks"), msg
    monkeypatch.setenv("CUEMU_RESIDENT_BLOCKS", "3")  # a shared device: fewer resident than the occupancy
    arrived.zero_()
    assert runtime.st_grid_rendezvous(_ptr(arrived), _ptr(seen), 3, 1) == b""
    msg = runtime.st_grid_rendezvous(_ptr(arrived), _ptr(seen), 4, 1)
    assert msg.startswith(b"cudaErrorCooperativeLaunchTooLarge: cooperative launch of 4 blocks above the 3")


@pytest.mark.parametrize(
    ("threads", "smem", "blocks"),
    [(64, 0, 32), (256, 0, 8), (1024, 0, 2), (256, 170_000, 1), (128, 100_000, 2), (32, 232_448, 1)],
)
def test_the_occupancy_is_sm_90s_thread_block_and_shared_memory_limits(runtime, threads, smem, blocks):
    assert runtime.st_occupancy(threads, smem) == blocks


def test_cooperative_launch_support_is_reported(runtime):
    value = ctypes.c_int(0)
    assert runtime.st_device_attribute(ctypes.byref(value), 95) == b""  # cudaDevAttrCooperativeLaunch
    assert value.value == 1
