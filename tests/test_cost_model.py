"""The cost model's machinery (benchmarks/cost_model.py, sass_loops.py, sglang_path_model.py).

Not the budgets themselves (the current kernels break them; ``--check`` is not run in CI
yet): the byte and launch formulas against hand-computed cases, the SASS loop reader on a
synthetic listing and on the real sm_90a build of csrc/, the table's rows, and ``--check``.
"""

from __future__ import annotations

import json
import math
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import cost_model
import sass_loops
import sglang_path_model

from dspark_sgl import verify

ZERO = {loop.name: 0.0 for loop in cost_model.LOOPS}


# ---- bytes and launches, by hand --------------------------------------------------------


def test_markov_block_bytes_and_launches_by_hand():
    # V = 129280, R = 8 (256-wide tiles at every R: ceil(129280 / 256) = 505, two partials a row and
    # tile, one 64-row chunk), g = 5, bf16.
    path = cost_model.markov_block(129280, 8, 5, ZERO)
    w2 = 129280 * 256 * 2  # 66,191,360
    counters = 2 * 4  # a ticket per chunk, the merged-chunk count
    tile = w2 + 8 * 129280 * 2 + 8 * 256 * 2 + 8 * 12 + 2 * 8 * 1010 * 20 + 8 * 24 + counters
    assert tile == 68_587_432
    # positions 1..4: the 132 tiles still staged (one CTA a multiprocessor) move no W2 bytes
    staged = 132 * 256 * 256 * 2
    assert [launch.bytes for launch in path.ours] == [counters, tile] + [tile - staged] * 4
    assert len(path.ours) == 6  # the memset, then one launch: position 0 and 4 in-kernel handoffs
    assert [launch.handoff for launch in path.ours] == [False, False, True, True, True, True]
    assert not any(launch.dependent for launch in path.ours)
    h100 = cost_model.H100
    assert path.time(h100) == pytest.approx(
        sum(max(lc.terms(h100)) for lc in path.ours) + 2 * h100.launch_cost + 4 * h100.handoff_cost
    )
    assert path.floor_bytes == 5 * (w2 + 8 * 129280 * 2)
    # R = 256: four 64-row chunks, a ticket each, and the merged count.
    wide = cost_model.markov_block(129280, 256, 5, ZERO)
    assert wide.ours[0].bytes == 5 * 4
    assert "256" in wide.ours[1].kernel


def test_markov_block_instructions_follow_the_launch_geometry():
    # One instruction per unit of one loop at a time: the thread-iterations of that loop.
    def only(name: str, rows: int) -> float:
        return cost_model.markov_block(129280, rows, 1, {**ZERO, name: 1.0}).ours[1].instructions

    assert only("markov.w2_stage.256", 8) == 505 * 256 * 256  # every W2 element of every tile
    assert only("markov.e_stage.256", 8) == 505 * 16 * 256  # R = 8: one 16-row block of W1 rows
    assert only("markov.e_stage.256", 20) == 505 * 32 * 256
    assert only("markov.e_stage.256", 256) == 505 * 4 * 64 * 256  # 4 chunks of 64 rows
    # two warps a 16-row block, 15 k16 steps in the loop (the first is in the chunk loop), 32 threads
    assert only("markov.mma.256", 8) == 505 * 1 * 2 * 15 * 32
    assert only("markov.mma.256", 256) == 505 * 16 * 2 * 15 * 32  # 4 chunks of 4 blocks
    # nvcc peeling 8 steps into the chunk loop (the int8 instantiation): 8 left in the k-loop
    peeled = {**ZERO, "markov_int8.mma.256": 1.0, f"markov_int8.{cost_model.PEELED_MMA_STEPS}.256": 8.0}
    assert (
        cost_model.markov_block(129280, 8, 1, peeled, int8_w2=True).ours[1].instructions == 505 * 2 * 8 * 32
    )
    assert only("markov.epilogue.256", 1) == 505 * 256 * 16  # R = 1: the two warps of 16 rows run
    assert only("markov.epilogue.256", 256) == 505 * 256 * 256
    assert only("markov.merge.256", 8) == 8 * 1024  # a lane per partial, 2 x 505 rounded to 32
    assert only("markov.merge_call.256", 256) == 4 * 256  # every thread of 4 merging CTAs
    # Rows are modeled sampled with finite logits: the rare path (greedy, NaN / +inf rows) is not
    # in the modeled time (its cost per element is reported beside it).
    assert only("markov.rare_call.256", 8) == 0 and only("markov.greedy.256", 256) == 0


def test_the_peeled_mma_steps_come_from_the_chunk_loops_hmma_count():
    def count(name: str, mma: int) -> sass_loops.LoopCount:
        return sass_loops.LoopCount(name, "k", 640, 64, "element", "f:1-2", 1.0, {"MMA": mma} if mma else {})

    counts = {
        n.name: n
        for n in (
            count("markov.epilogue.256", 16),
            count("markov.mma.256", 128),
            count("markov_int8.epilogue.256", 128),
            count("markov_int8.mma.256", 128),
            count("verify.residual.epilogue.64", 0),
        )
    }
    loops = cost_model.loop_instructions(counts)
    assert loops["markov.epilogue.256"] == 10.0
    assert loops[f"markov.{cost_model.PEELED_MMA_STEPS}.256"] == 1.0
    assert loops[f"markov_int8.{cost_model.PEELED_MMA_STEPS}.256"] == 8.0
    assert not any(name.startswith("verify.residual.peeled") for name in loops)  # no k-loop of its own
    # the epilogue budget's count leaves the peeled steps out, each at the k-loop's cost a step
    per_step = loops["markov_int8.mma.256"] / cost_model.MARKOV_CHUNK_ELEMENTS
    assert cost_model.markov_per_element(256, loops, "markov_int8") == pytest.approx(10.0 - 8 * per_step)
    assert cost_model.markov_per_element(256, loops) == pytest.approx(10.0 - per_step)


def test_verify_bytes_by_hand():
    # V = 129280, R = 8, g = 5: 48 verified positions, ceil(3 * 132 / 48) = 9 chunks each.
    path = cost_model.verify(129280, 8, 5, ZERO)
    assert cost_model.stat_chunks(129280, 8, 5) == 9
    target = 8 * 6 * 129280 * 2
    assert path.floor_bytes == target == 12_410_880
    rows_pass, residual = (launch.bytes for launch in path.ours)
    partials = 48 * 9 * 32  # written, then read by each request's last CTA
    per_request = 12 + 5 * (8 + 2 + 12) + 6 * 8 + 4 + 24  # lens, T, tokens + logits + stats, chain
    assert rows_pass == target + 2 * partials + 8 * per_request
    # nothing rejected: the 4 x 132 pass-2 CTAs read the merged-request word and take the exit ticket
    assert residual == 4 * 132 * 8
    logits = cost_model.verify(129280, 8, 5, ZERO, "chain_verify_rejected_logits")
    assert logits.ours[0].bytes == rows_pass + 8 * 5 * 129280 * 2  # the draft rows j < g too
    # pass 2 with full draft logits: 54 CTAs a request (min(9 x 6, 129280 / 2048)); the target's stop
    # row, a 32-byte sector of the draft row per exactly scored column, the StopInfo, the partials
    exact = cost_model.residual_exact_columns(129280, 54)
    assert exact == pytest.approx((2.4 + 1.2 * math.log(129280 / (54 * 256))) * 54 * 256)
    assert logits.ours[1].bytes == pytest.approx(8 * 129280 * 2 + 8 * exact * 32 + 8 * 24 + 2 * 8 * 54 * 8)
    w2 = cost_model.verify(129280, 8, 5, ZERO, "chain_verify_rejected_w2")
    assert w2.ours[1].bytes == 129280 * 256 * 2 + 2 * 8 * 129280 * 2 + 8 * 256 * 2 + 8 * 24 + 2 * 8 * 2020 * 8
    assert [len(p.ours) for p in (path, logits, w2)] == [2, 2, 2]  # two phases
    assert [p.launches() for p in (path, logits, w2)] == [1, 1, 1]  # of one launch


def test_verify_bonus_row_instructions_follow_the_measured_fractions():
    def only(name: str, rows: int) -> float:
        return cost_model.verify(129280, rows, 5, {**ZERO, name: 1.0}).ours[0].instructions

    assert only("verify.rows.target", 8) == 8 * 5 * 129280  # the g plain rows of every request
    assert only("verify.rows.bonus", 8) == 8 * 129280  # the bonus row
    # R = 256: one chunk of 256 threads, each with a first group, the other groups all candidates
    assert only("verify.rows.bonus_first", 256) == 256 * 256
    assert only("verify.rows.bonus_candidates", 256) == 256 * (129280 / 8 - 256)  # (measured)
    # 505 columns per thread, 0.1 + 1.25 ln(505 / 8) of them scored exactly besides the seed, each
    # an out-of-line call counted once per exact column
    exact = (0.1 + 1.25 * math.log(129280 / 256 / 8)) * 256
    assert only("verify.rows.bonus_exact", 256) == pytest.approx(256 * (exact + 256))
    # R = 1: 64 chunks, 7.9 columns per thread: nearly every thread has one (first) group only
    first = min(129280 / 8, 64 * 256)
    assert only("verify.rows.bonus_first", 1) == first
    assert only("verify.rows.bonus_candidates", 1) == pytest.approx(129280 / 8 - first)
    assert only("verify.rows.merge", 8) == 48 * 9  # ceil(3 * 132 / 48) chunks a position


def test_schedule_instructions_by_hand():
    def only(name: str, rows: int, gamma: int, asynchronous: bool) -> float:
        return cost_model.schedule(rows, gamma, {**ZERO, name: 1.0}, asynchronous).ours[0].instructions

    # R = 256, g = 16: 4096 keys, 16 a thread on 8 warps, 4 passes; async sorts 8192 keys at once.
    assert cost_model.schedule_sort_shape(4096) == (16, 8)
    assert only("schedule.radix_pass.16", 256, 16, False) == 4 * 256
    assert only("schedule.radix_pass.32", 256, 16, True) == 4 * 256
    assert only("schedule.unit.32", 256, 16, True) == 512
    # R = 512, g = 16: 8192 candidates a segment, so async sorts the two one after the other.
    assert only("schedule.radix_pass.32", 512, 16, True) == 2 * 4 * 256
    assert only("schedule.unit.32", 512, 16, True) == 2 * 512
    # Per candidate of each segment, per rank of one walk, per batch size R + n.
    assert only("schedule.survival", 256, 16, True) == only("schedule.walk_sum", 256, 16, True) == 8192
    assert only("schedule.walk_stop", 256, 16, True) == only("schedule.walk_argmax", 256, 16, True) == 4096
    assert only("schedule.walk_argmax", 256, 16, False) == 0
    assert only("schedule.sps_table", 256, 16, False) == 4097
    assert only("schedule.lengths", 256, 16, False) == 4096
    causal = cost_model.schedule(256, 16, ZERO, asynchronous=False)
    assert causal.ours[0].one_cta and len(causal.ours) == 1
    assert causal.ours[0].kernel == "schedule_kernel<float, 16>"
    assert cost_model.schedule_sort_shape(5) == (1, 8) and cost_model.schedule_sort_shape(8192) == (32, 8)


def test_sglang_path_bytes_by_hand():
    # Per position: embedding gather, W2 GEMM writing the bias, partial kernel, finish kernel.
    launches = sglang_path_model.markov_block(129280, 8, 5, 256, 2)
    assert len(launches) == 4 * 5 + 2
    parts = 127  # ceil(129280 / 1024)
    assert [b for _, b in launches[:4]] == [
        8 * 8 + 2 * 8 * 256 * 2,
        129280 * 256 * 2 + 8 * 256 * 2 + 8 * 129280 * 2,
        3 * 8 * 129280 * 2 + 8 * 4 + 8 * parts * 8,
        8 * parts * 8 + 8 * 8,
    ]
    verify = dict(sglang_path_model.verify(129280, 8, 5, 2))
    assert verify["_softmax_temp_kernel (target probs)"] == 8 * 6 * 129280 * (2 + 4)
    assert len(sglang_path_model.schedule(8, 5)) == 3


def test_time_is_max_of_bytes_and_issue_plus_launch():
    device = cost_model.Device("test", 1e12, 1e12, 1e10, 1e-6, "")
    assert cost_model.Launch("k", 2e6).time(device) == pytest.approx(2e-6 + 1e-6)
    assert cost_model.Launch("k", 2e6, 5e6).time(device) == pytest.approx(5e-6 + 1e-6)
    assert cost_model.Launch("k", 0, 5e6, one_cta=True).time(device) == pytest.approx(5e-4 + 1e-6)


def test_a_programmatic_dependent_launch_costs_the_dependent_boundary():
    device = cost_model.Device("test", 1e12, 1e12, 1e10, 2e-6, "", 0.5e-6)
    full, dependent = cost_model.Launch("a", 2e6), cost_model.Launch("b", 2e6, dependent=True)
    assert full.time(device) == pytest.approx(2e-6 + 2e-6)
    assert dependent.time(device) == pytest.approx(2e-6 + 0.5e-6)
    assert (full.kind, dependent.kind) == ("full boundary", "programmatic dependent")
    op = cost_model.ModeledOp("chain_verify", 129280, 1, 5, [full, dependent], [], 1e6)
    assert op.time(device) == pytest.approx((2e-6 + 2e-6) + (2e-6 + 0.5e-6))
    assert op.dependents() == 1
    assert op.launch_kinds() == "a (full boundary), b (programmatic dependent)"
    repeated = cost_model.ModeledOp("x", 0, 1, 3, [cost_model.Launch("k<int>", 0)] * 3 + [dependent], [], 0)
    assert repeated.launch_kinds() == "k x 3 (full boundary), b (programmatic dependent)"
    # The boundary, not the bytes, decides where a launch-bound op's time goes.
    assert (
        cost_model.ModeledOp("y", 0, 1, 1, [cost_model.Launch("z", 1e3)] * 2, [], 0).bound(device)
        == "launches"
    )


def test_the_devices_price_a_dependent_boundary_as_the_stated_fraction():
    for device in cost_model.DEVICES:
        assert device.dependent_launch_cost == pytest.approx(
            cost_model.DEPENDENT_FRACTION * device.launch_cost
        )
        assert 0 < device.dependent_launch_cost < device.launch_cost
        assert "programmatic dependent launch boundary" in device.source and "assumption" in device.source


def test_an_in_kernel_handoff_costs_the_handoff_boundary():
    device = cost_model.Device("test", 1e12, 1e12, 1e10, 2e-6, "", 0.5e-6, 0.25e-6)
    first, second = cost_model.Launch("k", 2e6), cost_model.Launch("k phase 2", 1e6, handoff=True)
    assert second.time(device) == pytest.approx(1e-6 + 0.25e-6)
    assert second.kind == "in-kernel handoff"
    op = cost_model.ModeledOp("chain_verify", 129280, 1, 5, [first, second], [], 1e6)
    assert (op.launches(), op.handoffs(), op.dependents()) == (1, 1, 0)
    assert op.time(device) == pytest.approx((2e-6 + 2e-6) + (1e-6 + 0.25e-6))


def test_the_devices_price_the_handoff_as_assumed():
    for device in cost_model.DEVICES:
        assert device.handoff_cost == cost_model.HANDOFF_COST
        assert 0 < device.handoff_cost < device.dependent_launch_cost
        assert "in-kernel handoff" in device.source and "assumption" in device.source


def test_verification_is_one_launch_and_the_later_markov_positions_are_handoffs():
    paths = cost_model.model(dict(ZERO))
    for path in paths:
        kinds = [(launch.dependent, launch.handoff) for launch in path.ours]
        if path.op.startswith("chain_verify"):  # fused, or (statistics form at R > 32) two launches
            fused = path.op == "chain_verify_rejected_logits" or path.rows <= 32
            assert kinds == [(False, False), (False, True) if fused else (True, False)]
        elif path.op.startswith("markov_block"):  # the memset, position 0, then g - 1 handoffs
            assert kinds == [(False, False)] * 2 + [(False, True)] * (path.gamma - 1)
        else:
            assert kinds == [(False, False)] * len(kinds)
    h100 = cost_model.H100
    verify = cost_model.verify(129280, 1, 5, ZERO)
    assert verify.time(h100) == pytest.approx(
        sum(max(lc.terms(h100)) for lc in verify.ours) + h100.launch_cost + h100.handoff_cost
    )
    text = cost_model.report(paths, _counts(10), cost_model.budgets(paths, _counts(10)), "test")
    assert (
        "- chain_verify: launches: chain_verify_kernel (full boundary),"
        " chain_verify_kernel (in-kernel handoff)" in text
    )
    assert "1 (1 handoff)" in text
    assert (
        "- markov_block: launches: cudaMemsetAsync (full boundary), markov_persistent_kernel (full"
        " boundary), markov_persistent_kernel x 4 (in-kernel handoff)" in text
    )
    assert "2 (4 handoff)" in text


def test_the_handoff_break_even_by_hand():
    device = cost_model.Device("test", 1e12, 1e12, 1e10, 2e-6, "", 1e-6, 1e-6)
    # The floor: 1e6 bytes (1 us) + one launch (2 us); the budget 1.3 x 3 us = 3.9 us.
    exits = cost_model.Launch("exits", 0.5e6, handoff=True)  # 0.5 us of its own, then its boundary
    slow = cost_model.ModeledOp("chain_verify", 129280, 1, 5, [cost_model.Launch("r", 2e6), exits], [], 1e6)
    fast = cost_model.ModeledOp("chain_verify", 129280, 1, 5, [cost_model.Launch("r", 1e6), exits], [], 1e6)
    assert cost_model.boundary_break_even([fast], "handoff", (device,)) == pytest.approx(
        3.9e-6 - 3e-6 - 0.5e-6
    )
    assert cost_model.boundary_break_even([slow], "handoff", (device,)) == pytest.approx(
        3.9e-6 - 4e-6 - 0.5e-6
    )
    assert cost_model.boundary_break_even([fast, slow], "handoff", (device,)) < 0  # the worst row decides
    assert "at most 0.40 us" in cost_model.boundary_sensitivity_line([fast], "handoff", (device,))
    assert "not met at any" in cost_model.boundary_sensitivity_line([slow], "handoff", (device,))
    assert "no verification row" in cost_model.boundary_sensitivity_line([], "handoff", (device,))


def test_the_floor_speedup_over_sglang_by_hand():
    device = cost_model.Device("test", 1e12, 1e12, 1e10, 2e-6, "", 1e-6)
    # floor: 4e6 bytes (4 us) + one launch (2 us) = 6 us; SGLang: 10 us + 2 launches = 14 us, or 8 us.
    sglang = [cost_model.Launch("a", 5e6), cost_model.Launch("b", 5e6)]
    fast = cost_model.ModeledOp("markov_block", 129280, 8, 5, [cost_model.Launch("k", 4e6)], sglang, 4e6)
    slow = cost_model.ModeledOp("markov_block", 129280, 64, 5, [], [cost_model.Launch("a", 6e6)], 4e6)
    small = cost_model.ModeledOp("markov_block", 129280, 1, 5, [], [cost_model.Launch("a", 0)], 4e6)
    assert cost_model.floor_speedup_over_sglang([fast, small], "markov_block", (device,)) == pytest.approx(
        14 / 6
    )
    assert cost_model.floor_speedup_over_sglang([fast, slow], "markov_block", (device,)) == pytest.approx(
        8 / 6
    )
    assert math.isnan(cost_model.floor_speedup_over_sglang([fast], "markov_block_int8", (device,)))
    (line,) = cost_model.floor_reach_lines([fast, slow], (device,))
    assert "at least 1.33x" in line and "NOT reachable" in line
    assert "2x is reachable" in cost_model.floor_reach_lines([fast], (device,))[0]


def _lru_w2_hits(
    tiles: int, w2_lines: int, other_lines: int, capacity: int, order: str, ctas: int = 1
) -> int:
    """W2 lines that hit in an LRU cache of ``capacity`` lines at the second of two positions, each
    reading per tile its W2 lines and then lines of its own position (base logits), in waves of
    ``ctas`` tiles (tile c + ctas i at wave i for CTA c, CTA by CTA). ``order``: the second position in
    the reverse wave order ("reverse"), in the same one ("same"), or in the reverse one with each CTA's
    first tile not read from memory (it is still staged: "persistent", markov_persistent_kernel), the
    last wave of each position read evict-first (modeled as never kept: it takes no cache room)."""
    cache: OrderedDict[tuple, None] = OrderedDict()
    hits = 0
    waves = tiles // ctas

    def touch(line: tuple) -> bool:
        hit = line in cache
        cache[line] = None
        cache.move_to_end(line)
        if len(cache) > capacity:
            cache.popitem(last=False)
        return hit

    for position in range(2):
        later = position == 1 and order != "same"
        for j in range(waves):
            wave = waves - 1 - j if later else j
            for c in range(ctas):
                t = c + ctas * wave
                if order == "persistent" and position == 1 and j == 0:
                    pass  # still staged: not read
                elif order == "persistent" and j == waves - 1:
                    if position == 1:  # evict-first: read (a hit where cached), never kept
                        hits += sum(("w2", t, i) in cache for i in range(w2_lines))
                else:
                    for i in range(w2_lines):
                        hits += touch(("w2", t, i)) and position == 1
                for i in range(other_lines):
                    touch(("other", position, t, i))
    return hits


@pytest.mark.parametrize("ctas", [1, 10])
@pytest.mark.parametrize(("other_lines", "capacity"), [(0, 300), (1, 300), (4, 300), (1, 5000), (8, 100)])
def test_the_l2_hits_of_a_reversed_position_are_an_lru_caches(other_lines, capacity, ctas):
    """Launch.l2_hits (C reuse / (reuse + 2 other), at most all of it) against an LRU cache that
    replays the kernel's order: within one wave of the simulation, for the per-position order (reuse:
    all of W2) and the one-launch order (reuse: W2 less the tiles still staged, read evict-first);
    reading in the same order again (SGLang's path) hits nothing once W2 is larger than the cache."""
    tiles, w2_lines = 200, 4
    line = 128
    device = cost_model.Device("test", 1e12, 1e12, 1e10, 0.0, "", l2_bytes=capacity * line, l2_retained=1.0)
    other = tiles * other_lines * line
    for order, staged in (("reverse", 0), ("persistent", ctas)):
        reuse = (tiles - staged) * w2_lines * line
        modeled = cost_model.Launch("k", reuse + other, l2_reuse=reuse).l2_hits(device) / line
        simulated = _lru_w2_hits(tiles, w2_lines, other_lines, capacity, order, ctas)
        assert abs(modeled - simulated) <= ctas * (w2_lines + other_lines), order
    if capacity < tiles * w2_lines:
        assert _lru_w2_hits(tiles, w2_lines, other_lines, capacity, "same", ctas) == 0


def test_l2_hits_shorten_the_memory_term_but_not_below_l2_bandwidth():
    device = cost_model.Device(
        "test", 1e12, 1e12, 1e10, 0.0, "", l2_bytes=10e6, l2_retained=0.5, l2_bandwidth=4e12
    )
    # 5 MB retained; 8 MB reused, 1 MB other: 5 x 8 / (8 + 2) = 4 MB served by L2, 5 MB from memory.
    launch = cost_model.Launch("k", 9e6, l2_reuse=8e6)
    assert launch.l2_hits(device) == pytest.approx(4e6)
    assert launch.terms(device)[0] == pytest.approx(5e-6)
    assert cost_model.Launch("k", 9e6).terms(device)[0] == pytest.approx(9e-6)  # no reuse: all from memory
    everything = cost_model.Device(
        "test", 1e12, 1e12, 1e10, 0.0, "", l2_bytes=1e9, l2_retained=1.0, l2_bandwidth=4e12
    )
    assert launch.l2_hits(everything) == pytest.approx(8e6)  # at most the reused bytes
    assert launch.terms(everything)[0] == pytest.approx(9e6 / 4e12)  # then L2's bandwidth bounds it


def test_only_the_later_markov_positions_reuse_w2_through_l2():
    """Positions 1..g-1 (in-kernel handoffs of one launch) leave out the 132 tiles still staged (one
    CTA a multiprocessor) from their bytes and reuse the rest of W2 through L2."""
    path = cost_model.markov_block(129280, 8, 5, ZERO)
    w2, staged = 129280 * 256 * 2, 132 * 256 / 129280
    assert [launch.l2_reuse for launch in path.ours] == pytest.approx([0, 0] + [w2 * (1 - staged)] * 4)
    assert [launch.handoff for launch in path.ours] == [False, False] + [True] * 4
    assert path.ours[1].bytes - path.ours[2].bytes == pytest.approx(w2 * staged)
    int8 = cost_model.markov_block(129280, 8, 5, ZERO, int8_w2=True)
    w2_int8 = 129280 * 256 + 129280 * 4
    assert [launch.l2_reuse for launch in int8.ours][2:] == pytest.approx([w2_int8 * (1 - staged)] * 4)
    small = cost_model.markov_block(4096, 8, 5, ZERO)  # 16 tiles, every one still staged
    assert all(launch.l2_reuse == 0 for launch in small.ours)
    assert all(launch.l2_reuse == 0 for launch in path.sglang)
    for device in cost_model.DEVICES:
        assert device.l2_retained == cost_model.L2_RETAINED and device.l2_bandwidth == cost_model.L2_BANDWIDTH
    assert (cost_model.H100.l2_bytes, cost_model.H200.l2_bytes) == (50 * 2**20, 60 * 2**20)


def test_the_l2_break_even_by_hand():
    """One row: ours 2 launches of 8 MB (the second reusing 6 MB of W2), SGLang 24 MB at 1 TB/s."""
    base = cost_model.Device(
        "test", 1e12, 1e12, 1e10, 0.0, "", l2_bytes=16e6, l2_retained=0.5, l2_bandwidth=1e15
    )
    ours = [cost_model.Launch("k", 8e6), cost_model.Launch("k", 8e6, l2_reuse=6e6)]
    # SGLang 24 us; ours 8 us + (8 MB - hits) / 1 TB/s: 2x needs hits >= 4 MB, i.e. retained x 16 MB
    # x 6 / (6 + 4) >= 4 MB: retained >= 5 / 12.
    row = cost_model.ModeledOp("markov_block", 129280, 8, 5, ours, [cost_model.Launch("s", 24e6)], 16e6)
    at = cost_model.l2_break_even([row], "markov_block", "l2_retained", 0.0, 1.0, (base,))
    assert at == pytest.approx(5 / 12, rel=1e-6)
    assert cost_model.sglang_speedup_holds([row], "markov_block", (base,), l2_retained=0.42)
    assert not cost_model.sglang_speedup_holds([row], "markov_block", (base,), l2_retained=0.41)
    never = cost_model.ModeledOp("markov_block", 129280, 8, 5, ours, [cost_model.Launch("s", 10e6)], 16e6)
    assert cost_model.l2_break_even([never], "markov_block", "l2_retained", 0.0, 1.0, (base,)) is None
    (line,) = cost_model.l2_sensitivity_lines([row], (base,))
    assert "at least 0.42 of the L2 must keep W2" in line


# ---- the SASS reader on a synthetic listing -------------------------------------------


def test_build_flags_come_from_cmake():
    build = sass_loops.cmake_build_flags()
    kernels = {"csrc/markov_block.cu", "csrc/chain_verify.cu", "csrc/schedule.cu"}
    assert kernels <= set(build.sources) and all(s.endswith(".cu") for s in build.sources)
    assert {"-lineinfo", "--expt-relaxed-constexpr", "-std=c++17", "-O3"} <= set(build.flags)
    assert build.includes == ("csrc/include",)
    assert not any("gencode" in f for f in build.flags)  # the arch is the model's: sm_90a only


_LISTING = """\
.text._Z6kernelPf:
	//## File "/x/csrc/k.cu", line 3
        /*0000*/                   MOV R1, R2 ;
.L_x_1:
	//## File "/x/csrc/inc/h.cuh", line 2 inlined at "/x/csrc/k.cu", line 5
	//## File "/x/csrc/k.cu", line 5
        /*0010*/                   LDG.E R3, desc[UR4][R4.64] ;
        /*0020*/                   MUFU.EX2 R3, R3 ;
.L_x_2:
	//## File "/x/csrc/k.cu", line 7
        /*0030*/                   FADD R5, R5, R3 ;
        /*0040*/               @P0 BRA `(.L_x_2) ;
	//## File "/x/csrc/k.cu", line 5
        /*0050*/               @!P1 BRA `(.L_x_1) ;
        /*0060*/                   EXIT ;
"""

_SOURCE = """\
void kernel(float* x) {
  int a = 0;
  for (int i = 0; i < n; ++i) {  // outer
    helper(x);
    x[i] = 1;
    for (int j = 0; j < m; ++j)
      x[j] += 1;
  }
}
"""


def test_parse_disassembly_chains_labels_and_loops():
    (fn,) = sass_loops.parse_disassembly(_LISTING)
    assert fn.mangled == "_Z6kernelPf"
    assert [i.opcode for i in fn.instructions] == ["MOV", "LDG.E", "MUFU.EX2", "FADD", "BRA", "BRA", "EXIT"]
    assert fn.instructions[1].frames == (
        sass_loops.Frame("/x/csrc/inc/h.cuh", 2),
        sass_loops.Frame("/x/csrc/k.cu", 5),
    )
    assert fn.instructions[2].frames == fn.instructions[1].frames  # a chain holds until the next one
    assert fn.loops() == [(1, 5), (3, 4)]


def test_statement_lines_brace_matches(tmp_path):
    src = tmp_path / "k.cu"
    src.write_text(_SOURCE, encoding="utf-8")
    assert sass_loops.statement_lines(src, r"for \(int i") == (3, 8)
    assert sass_loops.statement_lines(src, r"for \(int j") == (6, 7)  # no braces: ends at ';'
    assert sass_loops.statement_lines(src, r"helper\(x\);") == (4, 4)
    assert sass_loops.statement_lines(src, r"x\[i\] = 1;\n\s*for") == (5, 5)  # a multi-line name
    with pytest.raises(LookupError, match="2 matches"):
        sass_loops.statement_lines(src, r"for \(int")


def test_count_loop_on_a_synthetic_listing(tmp_path):
    (fn,) = sass_loops.parse_disassembly(_LISTING)
    fn.name = "kernel"
    (tmp_path / "k.cu").write_text(_SOURCE, encoding="utf-8")
    inner = sass_loops.LoopName("inner", "kernel", (("k.cu", r"for \(int j"),), 1, "x")
    outer = sass_loops.LoopName("outer", "kernel", (("k.cu", r"for \(int i"),), 1, "x", (r"^LDG", 1))
    counts = {}
    claimed: set[tuple[int, int]] = set()
    for loop in (inner, outer):  # the inner source loop first, as count_loops orders them
        counts[loop.name] = sass_loops.count_loop([fn], loop, tmp_path, claimed)
    assert counts["inner"].instructions == 2  # FADD, BRA
    assert counts["outer"].instructions == 3  # LDG, MUFU, BRA; the nested loop excluded
    assert counts["outer"].opcodes == {"global/generic": 1, "MUFU": 1}
    unrolled = sass_loops.LoopName("outer2", "kernel", (("k.cu", r"for \(int i"),), 4, "x", (r"^LDG", 1))
    assert sass_loops.count_loop([fn], unrolled, tmp_path, {(3, 4)}).per_item == 3 / 4
    with pytest.raises(LookupError, match="0 functions"):
        sass_loops.count_loop(
            [fn], sass_loops.LoopName("x", "other", (("k.cu", "helper"),), 1, "x"), tmp_path
        )


# ---- the table and --check -----------------------------------------------------------


def _counts(per_item: float, staging: dict[str, int] | None = None) -> dict[str, sass_loops.LoopCount]:
    """Every named loop at ``per_item``; the staging loops with the opcodes ``staging``
    (default: one cp.async and nothing synchronous)."""
    staging = {"cp.async": 1} if staging is None else staging
    return {
        loop.name: sass_loops.LoopCount(
            loop.name,
            loop.kernel,
            int(per_item),
            1,
            loop.unit,
            "",
            1.0,
            staging if "_stage." in loop.name else {},
        )
        for loop in cost_model.LOOPS
    }


def test_markov_block_with_an_int8_w2_by_hand():
    # V = 129280, R = 8, g = 5: W2 is V r bytes and V float32 scales; 256-wide tiles at every R
    # (2 x ceil(129280 / 256) = 1010 partials per row, one 64-row chunk); SGLang's path is the bf16 one.
    path = cost_model.markov_block(129280, 8, 5, ZERO, int8_w2=True)
    assert path.op == "markov_block_int8" and "Int8W2" in path.ours[1].kernel
    w2 = 129280 * 256 + 129280 * 4
    counters = 8  # one ticket, the merged count
    tile = w2 + 8 * 129280 * 2 + 8 * 256 * 2 + 8 * 12 + 2 * 8 * 1010 * 20 + 8 * 24 + counters
    staged = 132 * 256 * (256 + 4)  # positions 1..4: the tiles still staged, int8 rows and their scales
    assert [launch.bytes for launch in path.ours] == pytest.approx([counters, tile] + [tile - staged] * 4)
    assert path.floor_bytes == 5 * (w2 + 8 * 129280 * 2)
    bf16 = cost_model.markov_block(129280, 8, 5, ZERO)
    assert [lc.bytes for lc in path.sglang] == [lc.bytes for lc in bf16.sglang]

    def only(name: str, rows: int) -> float:
        return (
            cost_model.markov_block(129280, rows, 1, {**ZERO, name: 1.0}, int8_w2=True).ours[1].instructions
        )

    assert only("markov_int8.w2_stage.256", 8) == 505 * 256 * 256  # every W2 element of every tile
    later = cost_model.markov_block(129280, 8, 2, {**ZERO, "markov_int8.widen.256": 1.0}, int8_w2=True)
    assert later.ours[2].instructions == (505 - 132) * 256 * 256  # the staged tiles are not widened again
    assert only("markov_int8.widen.256", 8) == 505 * 256 * 256  # widened once per CTA
    assert only("markov_int8.widen.256", 256) == 505 * 256 * 256  # whatever the chunks
    assert only("markov_int8.mma.256", 8) == 505 * 1 * 2 * 15 * 32  # two warps: 15 k16 steps each
    assert only("markov_int8.epilogue.256", 1) == 505 * 256 * 16  # R = 1: the two warps of 16 rows
    assert only("markov.w2_stage.256", 8) == 0  # the bf16 kernel's loops do not count


def test_staging_in_flight_by_hand():
    # r = 256, bf16: markov_block's 256-wide W2 tile is 256 x 256 x 2 = 128 KB, its 64-row W1 chunk
    # 32 KB; verification's recompute chunks of 16 rows (128-wide tiles) 8 KB.
    flights = {f.loop: f for f in cost_model.staging_in_flight(_counts(3))}
    assert flights["markov.w2_stage.256"].in_flight == 131072
    assert flights["markov.e_stage.256"].in_flight == 32768  # markov_block: 64-row chunks
    assert flights["verify.residual.e_stage.128"].in_flight == 8192
    assert flights["markov_int8.w2_stage.256"].in_flight == 65536  # int8: 256 x 256 bytes
    assert cost_model._in_flight_verdict(_counts(3)).met
    # A load per thread and iteration (the synchronous copy): 256 threads x 16 bytes (markov_block's
    # CTA and verification's alike).
    synchronous = _counts(3, {"global/generic": 1, "shared": 1})
    assert {f.in_flight for f in cost_model.staging_in_flight(synchronous)} == {4096}
    verdict = cost_model._in_flight_verdict(synchronous)
    assert not verdict.met and "markov.w2_stage.256: 4 KB" in verdict.line()
    # cp.async with a wait inside the loop: one copy per thread in flight again.
    waiting = _counts(3, {"cp.async": 1, "cp.async wait": 1})
    assert not cost_model._in_flight_verdict(waiting).met


def test_the_table_has_every_required_row():
    paths = cost_model.model({name: 10.0 for name in ZERO})
    have = {(p.op, p.vocab, p.rows, p.gamma) for p in paths}
    for vocab in (129280, 151936):
        for rows in (1, 8, 64, 256):
            for gamma in (5, 7):
                assert ("markov_block", vocab, rows, gamma) in have
                assert ("chain_verify", vocab, rows, gamma) in have
    for rows in (1, 8, 64, 256):
        for gamma in (5, 7, 16):
            assert ("schedule_causal", 0, rows, gamma) in have
            assert ("schedule_async", 0, rows, gamma) in have
    counts = _counts(10)
    text = cost_model.report(paths, counts, cost_model.budgets(paths, counts), "test")
    for p in paths:
        assert "| " + " | ".join(cost_model.path_cells(p)) + " |" in text
    for name in counts:
        assert f"| {name} |" in text
    assert "MODELED" in text and "Modeled (no GPU)" in text
    assert len(cost_model.budgets(paths, counts)) == 8
    assert "KB in flight" in text


def _all_met() -> list[cost_model.ModeledOp]:
    """Synthetic rows inside every budget: at the floor, SGLang 3x slower, a 5 us scheduler."""
    fast = cost_model.Launch("fast", 1e6)
    slow = [cost_model.Launch("slow", 1e6)] * 8
    return [
        cost_model.ModeledOp("markov_block", 129280, 8, 5, [fast], slow, 1e6),
        cost_model.ModeledOp("markov_block", 129280, 1, 5, [fast], slow, 1e6),
        cost_model.ModeledOp("markov_block_int8", 129280, 8, 5, [fast], slow, 1e6),
        cost_model.ModeledOp("chain_verify", 129280, 8, 5, [fast], slow, 1e6),
        cost_model.ModeledOp("schedule_causal", 0, 256, 16, [cost_model.Launch("s", 0, 1e5, True)], slow, 0),
    ]


def test_budgets_met_and_broken():
    verdicts = cost_model.budgets(_all_met(), _counts(20))
    assert all(v.met for v in verdicts), [v.line() for v in verdicts]
    broken_kernel = cost_model.ModeledOp(
        "markov_block", 151936, 64, 7, [cost_model.Launch("slow", 1e8)], [], 1e6
    )
    verdicts = cost_model.budgets([*_all_met(), broken_kernel], _counts(20))
    failed = [v for v in verdicts if not v.met]
    assert [v.budget for v in failed] == [
        "Markov block <= 1.3x its floor at R >= 8",
        "Markov block >= 2x faster than SGLang's path at R >= 8",
    ]
    assert "V=151936 R=64 g=7 H100" in failed[0].line()
    too_many = cost_model.budgets(_all_met(), _counts(26))
    assert [v.budget for v in too_many if not v.met] == [
        "Markov epilogue <= 25 SASS instructions per sampled element (outside the MMA;"
        " the chunk loop: statistics and the grouped sampler)"
    ]


@pytest.mark.parametrize("broken", [False, True])
def test_check_flag_exit_status(monkeypatch, tmp_path, broken):
    rows = _all_met()
    if broken:
        rows.append(
            cost_model.ModeledOp("chain_verify", 151936, 256, 7, [cost_model.Launch("x", 1e9)], [], 1e6)
        )
    monkeypatch.setattr(cost_model.sass_loops, "missing_tools", lambda from_extension=False: [])
    monkeypatch.setattr(cost_model.sass_loops, "count_loops", lambda loops, extension=None: _counts(20))
    monkeypatch.setattr(cost_model, "model", lambda loops: rows)
    out = tmp_path / "report.md"
    assert cost_model.main(["--check", "--out", str(out)]) == (1 if broken else 0)
    assert cost_model.main(["--out", str(out)]) == 0  # without --check the report never fails
    assert ("NOT met" in out.read_text()) == broken


def test_guard_holds_owed_budgets_at_their_pinned_ratio():
    verdicts = cost_model.budgets(_all_met(), _counts(20))
    pinned = cost_model.pin(verdicts)
    assert all(0 < ratio <= 1 for ratio in pinned.values()), pinned
    assert cost_model.guard(verdicts, pinned) == []
    # A budget still owed (pinned above 1) may not get worse than its pin.
    slow = cost_model.ModeledOp("chain_verify", 151936, 256, 7, [cost_model.Launch("x", 1e9)], [], 1e6)
    owed = cost_model.budgets([*_all_met(), slow], _counts(20))
    owed_pin = cost_model.pin(owed)
    budget = "Verification <= 1.3x reading the target logits once"
    assert owed_pin[budget] > 1 and cost_model.guard(owed, owed_pin) == []
    slower = cost_model.ModeledOp("chain_verify", 151936, 256, 7, [cost_model.Launch("x", 2e9)], [], 1e6)
    worse = cost_model.budgets([*_all_met(), slower], _counts(20))
    assert [line.split(":")[0] for line in cost_model.guard(worse, owed_pin)] == [budget]
    # A met budget may not break, however little; an unknown budget is reported.
    assert cost_model.guard(owed, pinned) and cost_model.guard(verdicts, {}) != []


# ---- the real sm_90a build ------------------------------------------------------------

_MISSING = sass_loops.missing_tools()


@pytest.fixture(scope="module")
def real_build():
    if _MISSING:
        pytest.skip("the SASS reader needs " + ", ".join(_MISSING))
    functions = sass_loops.build_functions()
    return functions, sass_loops.count_named(functions, cost_model.LOOPS)


def test_every_named_loop_is_found_in_the_build(real_build):
    _, counts = real_build
    assert set(counts) == {loop.name for loop in cost_model.LOOPS}
    for count in counts.values():
        assert count.instructions > 0, count
        assert 0 < count.coverage <= 1, count
    # The tile kernels' MMA loop issues tensor-core instructions; the epilogue does not.
    assert counts["markov.mma.256"].opcodes.get("MMA", 0) > 0
    # markov_block's chunk loop holds whole k16 steps that nvcc peeled out of the k-loop (the first,
    # onto zero accumulators, at least): the model charges the k-loop only the rest.
    for prefix in ("markov", "markov_int8"):
        mma = counts[f"{prefix}.epilogue.256"].opcodes.get("MMA", 0)
        assert mma >= 16 and mma % 16 == 0
        peeled = cost_model.loop_instructions(counts)[f"{prefix}.{cost_model.PEELED_MMA_STEPS}.256"]
        assert peeled == mma / 16 <= cost_model.RANK // 16
    # The 16-bit staging loops issue cp.async only: the whole stage is in flight before the wait.
    assert all(f.asynchronous for f in cost_model.staging_in_flight(counts))


def test_loop_counts_are_stable(real_build):
    _, counts = real_build
    again = sass_loops.count_loops(cost_model.LOOPS)  # the whole path again, from the cache
    assert {n: (c.instructions, c.per_iteration) for n, c in again.items()} == {
        n: (c.instructions, c.per_iteration) for n, c in counts.items()
    }


def test_a_loop_that_is_not_there_is_named(real_build):
    functions, _ = real_build
    missing = sass_loops.LoopName(
        "gone", "markov_confidence_kernel<float, float>", (("markov_block.cu", r"no such line"),), 1, ""
    )
    with pytest.raises(LookupError, match="no such line"):
        sass_loops.count_named(functions, [missing])


def _fresh_extension() -> Path | None:
    """The built extension, when it is newer than every file under csrc/ (built from it)."""
    root = Path(__file__).resolve().parent.parent
    built = sorted((root / "dspark_sgl").glob("_C*.so"))
    if not built:
        return None
    newest_source = max(p.stat().st_mtime for p in (root / "csrc").rglob("*") if p.is_file())
    return built[0] if built[0].stat().st_mtime >= newest_source else None


def test_the_built_extension_reads_the_same(real_build):
    missing = sass_loops.missing_tools(from_extension=True)
    extension = _fresh_extension()
    if missing or extension is None:
        pytest.skip("needs " + (", ".join(missing) if missing else "dspark_sgl/_C*.so built from csrc/"))
    _, counts = real_build
    from_extension = sass_loops.count_loops(cost_model.LOOPS, extension=extension)
    assert {n: c.instructions for n, c in from_extension.items()} == {
        n: c.instructions for n, c in counts.items()
    }


def test_the_gumbel_replay_uses_the_kernels_constants():
    """benchmarks/gumbel_candidates.py measures the candidate fractions with the kernel's rule."""
    import gumbel_candidates

    source = (Path(__file__).resolve().parent.parent / "csrc" / "chain_verify.cu").read_text()
    assert f"kGumbelMax = {gumbel_candidates.GUMBEL_MAX}f;" in source
    assert (
        "kSkipSlack = 9.5367431640625e-07f;  // 2^-20" in source and gumbel_candidates.SKIP_SLACK == 2.0**-20
    )
    assert "constexpr int kRowThreads = 256;" in source and gumbel_candidates.THREADS == 256
    assert gumbel_candidates.stat_chunks(8, 5, 129280) == cost_model.stat_chunks(129280, 8, 5)


def test_the_dispatch_model_uses_the_kernels_constants():
    """cost_model's fused / split choice and pass-2 CTA count are chain_verify.cu's."""
    source = (Path(__file__).resolve().parent.parent / "csrc" / "chain_verify.cu").read_text()
    assert f"constexpr int kFusedCtasPerSm = {cost_model.FUSED_CTAS_PER_SM};" in source
    assert f"constexpr int kResidualCtasPerSm = {cost_model.RESIDUAL_CTAS_PER_SM};" in source
    # pass 1's chunks: one wave at the CTAs a multiprocessor that its launch bounds promise
    assert f"constexpr int kRowCtasPerSm = {verify.ROW_CTAS_PER_SM};" in source
    assert cost_model.ROW_CTAS_PER_SM == verify.ROW_CTAS_PER_SM
    for vocab in (*cost_model.VOCABS, 2048, 4096):
        for rows in cost_model.ROWS:
            for gamma in cost_model.GAMMAS:
                assert cost_model.stat_chunks(vocab, rows, gamma) == verify.stat_chunks(
                    rows, gamma, vocab, cost_model.SMS
                )
    assert "kSharedMemoryPerSm = 228 * 1024, kReservedPerCta = 1024, kFusedStaticBytes = 6144;" in source
    assert (cost_model.SHARED_MEMORY_PER_SM, cost_model.RESERVED_PER_CTA, cost_model.FUSED_STATIC_BYTES) == (
        228 * 1024,
        1024,
        6144,
    )
    # r = 256, bf16: the 64-wide tile (R <= 32) fuses, the 128-wide one does not
    assert cost_model.verification_fused(129280, 32) and not cost_model.verification_fused(129280, 33)


def test_no_budget_is_worse_than_the_pinned_design(real_build):
    """CI's budget gate: what csrc/ builds to now against benchmarks/cost_budgets_pinned.json
    (met budgets stay met; budgets still owed cannot get worse; ``--pin`` after a real gain)."""
    _, counts = real_build
    verdicts = cost_model.budgets(cost_model.model(cost_model.loop_instructions(counts)), counts)
    pinned = json.loads(cost_model.PINNED.read_text(encoding="utf-8"))
    assert cost_model.guard(verdicts, pinned) == []
