"""The performance budget of the three kernels, modeled on the CPU (no GPU; every number "modeled").

For each kernel and shape (V in {129280, 151936}, R in {1, 8, 64, 256}, g in {5, 7}; the
scheduler also at g = 16): the launches, the bytes each launch must move (from the launch
parameters, following the kernels' loads), the SASS instructions of each named loop (read
from the sm_90a build of csrc/ as it is now, ``benchmarks/sass_loops.py``), and

    modeled time = sum over launches of max(bytes from memory / bandwidth, bytes / L2 bandwidth,
                                            thread-instructions / issue rate)
                   + the launch's boundary: the launch cost, or for a programmatic dependent of the
                     launch before it (csrc/include/dspark_sgl/dependent_launch.cuh) the dependent
                     launch cost (an assumed fraction of it), or for the second phase of one launch
                     (csrc/include/dspark_sgl/work_items.cuh) the assumed in-kernel handoff cost

on an H100 and an H200, against the floor (the bytes that must move, at full bandwidth, in
one launch: W2 once per position plus the base logits for the Markov block, the target
logits once for verification) and against SGLang 0.5.23's path modeled the same way
(``benchmarks/sglang_path_model.py``). A launch's thread-instructions are, per named loop,
its static instructions per unit (element, k-step, pair, ...) times the units the launch
geometry gives. Bytes from memory are the bytes less what L2 serves: only the Markov block's
positions 1..g-1, which read W2 in the reverse of the order before (L2_RETAINED says how much). The
budgets of the issue are printed as met / NOT met.

    python benchmarks/cost_model.py [--out FILE] [--check] [--guard] [--pin] [--extension dspark_sgl/_C*.so]

``--check`` exits 1 when a budget is broken; ``--guard`` exits 1 when a budget is worse than
``cost_budgets_pinned.json`` pins it (CI runs it: budgets still owed cannot get worse, met ones
cannot break); ``--pin`` rewrites that file from the design as it is. ``--extension`` reads
the SASS of a built extension (``cuobjdump``) instead of compiling csrc/ (``nvcc``, cached
under build/).
What is not modeled: latency (loads in flight, barriers, the tail of a grid), L2 hits other than
the Markov block's W2 (W1 rows gathered by every CTA, any hit of SGLang's path), the confidence
head, verification's acceptance tests (one warp a request; its chunk merges are modeled) and
its out-of-line new-maximum path (a few per thread), the MUFU unit's quarter rate, and the
scheduler's SPS bisection (once per thread).
Static counts include branches an iteration does not take, so issue-bound rows err high.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sass_loops
import sglang_path_model
from sass_loops import LoopCount, LoopName

VOCABS = (129280, 151936)
ROWS = (1, 8, 64, 256)
GAMMAS = (5, 7)
SCHEDULE_GAMMAS = (5, 7, 16)
RANK = 256  # Markov rank r (DeepSpec default)
ELEM = 2  # bf16 logits and weights, as SGLang runs them
SMS = 132  # H100 SXM and H200: same processor


@dataclass(frozen=True)
class Device:
    """The constants of one GPU that the model uses, with where each comes from."""

    name: str
    bandwidth: float  # bytes/s
    issue_rate: float  # thread-instructions/s, whole chip
    sm_issue_rate: float  # thread-instructions/s, one SM (a one-CTA kernel)
    launch_cost: float  # s per kernel boundary
    source: str
    dependent_launch_cost: float = 0.0  # s per boundary to a programmatic dependent (set below)
    handoff_cost: float = 0.0  # s per in-kernel handoff between two phases of one launch (set below)
    l2_bytes: float = 0.0  # L2 capacity
    l2_retained: float = 0.0  # the share of it that keeps a launch's last reads for the next (L2_RETAINED)
    l2_bandwidth: float = math.inf  # bytes/s from L2 to the SMs, whole chip (L2_BANDWIDTH)


_ISSUE = SMS * 4 * 1.75e9 * 32  # SPEC.md section 8: 132 SMs x 4 schedulers x 1.75 GHz x 32 lanes
_SM_ISSUE = 4 * 1.75e9 * 32
_LAUNCH = 2.0e-6  # assumed: one kernel boundary of a graph replay; not measured in this project
_LAUNCH_NOTE = "launch cost 2.0 us: an assumption (no device measured it yet)"
# A programmatic dependent launch (PDL, sm_90): NVIDIA's CUDA Programming Guide ("Programmatic
# Dependent Launch", docs.nvidia.com/cuda/cuda-programming-guide/04-special-topics/
# programmatic-dependent-launch.html) describes the dependent grid being launched, and running
# the code before its griddepcontrol.wait, while the primary still executes: the launch latency
# overlaps the primary's tail. What stays exposed (the wait's release after the primary completes
# and flushes its memory, then the dependent's own work) is documented nowhere as a number.
DEPENDENT_FRACTION = 0.5  # assumed: half of a kernel boundary stays exposed; not measured
_DEPENDENT_LAUNCH = DEPENDENT_FRACTION * _LAUNCH
_DEPENDENT_NOTE = (
    f"programmatic dependent launch boundary {_DEPENDENT_LAUNCH * 1e6:.1f} us = {DEPENDENT_FRACTION} x the"
    " launch cost: an assumption (the CUDA Programming Guide's PDL section says the dependent's launch"
    " overlaps the primary's execution, not how much of the boundary it hides; no device measured it)"
)
# An in-kernel handoff (csrc/include/dspark_sgl/work_items.cuh): the CTAs of a launch's second phase
# are resident, spinning on the merged-request word that the first phase's last CTA raises; it also
# carries the rejected count, so what stays exposed after that atomic is two dependent L2 round trips
# (the poll that sees the word, the exit ticket) before the grid can complete. At an L2 hit latency
# of roughly 260-300 cycles (about 0.15-0.2 us at 1.75 GHz; published microbenchmarks of Hopper, not
# measured here) that is 0.3-0.4 us, plus at most one 32 ns sleep between polls: the upper end is
# assumed. A PDL boundary has the same word read and ticket after its release, plus the primary
# grid's completion and memory flush before it.
HANDOFF_COST = 0.4e-6  # assumed: not measured
_HANDOFF_NOTE = (
    f"in-kernel handoff {HANDOFF_COST * 1e6:.1f} us: an assumption (two dependent L2 round trips"
    " after the first phase's last atomic, the poll and the exit ticket; no device measured it)"
)
# L2 reuse between Markov positions (markov_block.cu walks the vocabulary tiles in the reverse of CTA
# order at every other position). Under LRU a line hits when fewer distinct bytes than the cache
# holds were touched since its last read. Position k + 1's j-th tile read (from the end) comes after j
# tiles of position k (their W2 and that position's other bytes: base logits, partials) and j tiles of
# position k + 1 (the same W2 lines, fresh other bytes): j (w + 2 o) distinct bytes for tiles of w W2
# and o other bytes. So the first C W2 / (W2 + 2 other) bytes of W2 hit, where C is the L2 that keeps
# them, up to all of W2. Position 0 gets none (the target's forward pass runs between rounds).
# SGLang's path reads W2 in one order every position (its GEMM's): under LRU nothing of it hits once
# W2 is larger than C, and the model gives it none.
L2_RETAINED = 0.5  # assumed: C = half the L2 (one of its two partitions); true LRU over all of it: 1
L2_BANDWIDTH = 5.5e12  # assumed: bytes/s from L2, both devices (NVIDIA publishes none); not measured
_L2_NOTE = (
    f"L2 reuse between Markov positions: C = {L2_RETAINED} x the L2 keeps the previous position's last"
    f" W2 reads (an assumption; LRU over the whole L2 would be 1), L2 bandwidth"
    f" {L2_BANDWIDTH / 1e12:.1f} TB/s (an assumption; every byte of a launch passes through L2);"
    " no device measured either"
)
H100 = Device(
    "H100",
    3.0e12,
    _ISSUE,
    _SM_ISSUE,
    _LAUNCH,
    "H100 SXM: 3.0 TB/s measured copy (SPEC.md section 8); issue 132 SMs x 4 schedulers x 1.75 GHz"
    f" x 32 = {_ISSUE / 1e12:.1f} T thread-instr/s (SPEC.md section 8); L2 50 MiB (NVIDIA's H100 whitepaper);"
    f" {_LAUNCH_NOTE}; {_DEPENDENT_NOTE}; {_HANDOFF_NOTE}; {_L2_NOTE}",
    _DEPENDENT_LAUNCH,
    HANDOFF_COST,
    50 * 2**20,
    L2_RETAINED,
    L2_BANDWIDTH,
)
H200 = Device(
    "H200",
    4.3e12,
    _ISSUE,
    _SM_ISSUE,
    _LAUNCH,
    "H200: 4.3 TB/s device-to-device copy measured on this workplace's H200 (device KINDS.md,"
    " 2026-10-28 and 2026-11-04; datasheet 4.8); same SMs and clocks as the H100 (device H200.md,"
    f" SPEC.md section 8); L2 60 MB (PyTorch on this workplace's H200, device KINDS.md, 2026-10-28);"
    f" {_LAUNCH_NOTE}; {_DEPENDENT_NOTE}; {_HANDOFF_NOTE}; {_L2_NOTE}",
    _DEPENDENT_LAUNCH,
    HANDOFF_COST,
    60 * 2**20,
    L2_RETAINED,
    L2_BANDWIDTH,
)
DEVICES = (H100, H200)


# ---- the named loops (sass_loops.py says how a loop is named) -------------------------

_MARKOV = "markov_block.cu"
_VERIFY = "chain_verify.cu"
_SCHEDULE = "schedule.cu"
_SORT_ITEMS = (1, 2, 4, 8, 16, 32)  # schedule_kernel's keys per sorting thread (one instance each)
_SCHEDULE_KERNEL = "schedule_kernel<float, 8>"  # loops whose code is the same in every instance
_TILE = "include/dspark_sgl/markov_tile.cuh"
# stage_rows' 16-byte copies when whole rows fit a pass (r = 256: k_padded / 8 = 32 divides the CTA)
_STAGE_VECTOR = r"for \(int i = plan\.first_row; i < count; i \+= step_rows\) \{"
_MMA_K = r"for \(int k0 = 0; k0 < layout\.k_padded; k0 \+= 16\) \{\n"  # bias_tile's WMMA k-loop
_MMA_SYNC_K = r"for \(int k0 = 16; k0 < layout\.k_padded; k0 \+= 16\) step\(\);  // warp_bias_mma's k-loop"
_ONE_COPY = (r"^LDGSTS\b", 1)  # one cp.async (LDGSTS) per staged 16-byte piece
_WMMA_STEP = (r"^(HMMA|HGMMA)\b", 2)  # wmma m16n16k16 bf16 = two HMMA.16816
_MMA_SYNC_STEP = (r"^HMMA\b", 16)  # a warp's k16 step over 128 columns: 16 mma.m16n8k16 = 16 HMMA.16816
_PASS = r"for \(int pass = 0; pass < kChunkRows / kRowsPerPass; \+\+pass\)"
# chain_verify_kernel<target, draft, weight, tile>: the statistics form (bf16 W2, 64-wide recompute
# tile) holds pass 1's loops and the W2 recompute; tile 0 is the form with full draft logits.
_VERIFY_KERNEL = "chain_verify_kernel"
_ROWS_KERNEL = f"{_VERIFY_KERNEL}<__nv_bfloat16, __nv_bfloat16, __nv_bfloat16, 64>"
_LOGITS_KERNEL = f"{_VERIFY_KERNEL}<__nv_bfloat16, __nv_bfloat16, float, 0>"
_PLAIN_SCAN = r"slab\.for_each<kG>\(row, \[&\]\(const T\* p, int32_t v0\) \{\n\s*Group<kG> plain;"
_BONUS_SCAN = r"slab\.for_each<kG>\(row, \[&\]\(const T\* p, int32_t v0\) \{\n\s*Group<kG> group;"
_BONUS_FIRST = r"template <int kG>\n__device__ __noinline__ ArgMax bonus_first_candidates\("


def _stage_loop(name: str, kernel: str, file: str, call: str, what: str) -> LoopName:
    """A 16-bit tile's staging loop: the stage_rows call ``call`` (a regex) in ``file``, one
    16-byte cp.async (8 elements of ``what``) per iteration."""
    return LoopName(
        name,
        kernel,
        ((file, call), (_TILE, _STAGE_VECTOR)),
        8,
        f"{what} element (16-byte copy)",
        _ONE_COPY,
    )


def _tile_loops(prefix: str, kernel: str, file: str, tile_v: int) -> list[LoopName]:
    """The four loops of verification's Markov recompute (the default MarkovTileLayout: 256 threads,
    2048 bias values a chunk)."""
    k = f"{kernel}<__nv_bfloat16, __nv_bfloat16, __nv_bfloat16, {tile_v}>"
    return [
        _stage_loop(f"{prefix}.w2_stage.{tile_v}", k, file, r"stage_rows\(tile\.w2,", "W2"),
        _stage_loop(f"{prefix}.e_stage.{tile_v}", k, file, r"stage_rows\(tile\.e,", "W1"),
        LoopName(f"{prefix}.mma.{tile_v}", k, ((_TILE, _MMA_K),), 1, "16-deep k-step of a warp", _WMMA_STEP),
        LoopName(f"{prefix}.epilogue.{tile_v}", k, ((file, _PASS),), 4, "sampled element"),
    ]


# markov_block's 16-bit tile kernel (markov_block.cu): 256 threads (8 warps), 256-wide tiles at every R,
# 64-row chunks; each warp computes 16 rows x 128 columns (half a tile) of the bias with mma.sync into
# registers (warp_bias_mma) and runs the epilogue on them: each thread 32 columns (two sampler groups)
# of two rows, a partial per row and half tile. The rare path (greedy and non-finite rows) and the
# merge are out-of-line functions.
_MARKOV_CHUNK = r"for \(int row0 = 0; row0 < rows; row0 \+= kChunkRows\) \{"
_MARKOV_W2_STAGE = r"stage_rows_at\(\n\s*w2s,"
_MARKOV_E_STAGE = r"stage_rows\(es,"
_RARE_PARTIAL = r"__device__ __noinline__ RarePartial rare_partial\("
_MERGE_CHUNK = r"__device__ __noinline__ void merge_chunk\("
MARKOV_THREADS = 256
# The kernel the model reads: every position in one cooperative launch (markov_persistent_kernel, the
# default where the device can hold its grid), one CTA per SM at r = 256 (169 KB of shared memory).
MARKOV_KERNEL = "markov_persistent_kernel"
MARKOV_CTAS_PER_SM = 1  # 233472 B of shared memory an SM / (135424 B W2 + 33792 B E + 4 KB static + 1 KB)
MARKOV_TILE = 256  # markov_block's tile width with 16-bit W1 (BlockShape; float32 weights: 64, not modeled)
MARKOV_WARP_COLUMNS = 128  # kMmaWarpColumns
MARKOV_SEGMENTS = MARKOV_TILE // MARKOV_WARP_COLUMNS  # partials per row and tile (a warp's columns each)
MARKOV_CHUNK_ROWS = 64  # kMmaChunkRows: 16 rows a pair of warps
MARKOV_COLUMNS = 32  # columns of one row per thread (a thread holds two rows: 64 elements a chunk)
MARKOV_CHUNK_ELEMENTS = 2 * MARKOV_COLUMNS  # a thread's elements per chunk-loop iteration


def _merge_loop(name: str, kernel: str) -> LoopName:
    """merge_chunk's loop over a row's tile partials (a lane per partial). The compiler unrolls it
    (4 partials a SASS iteration, five volatile loads each) inside the per-row loop whose body holds
    the remainder iterations and the row's reductions: the unrolled main loop is the one counted
    (innermost), the rest of merge_chunk is in merge_call's static size."""
    return LoopName(
        name,
        kernel,
        ((_MARKOV, r"for \(int tile = lane; tile < tiles; tile \+= 32\)"),),
        1,
        "tile partial",
        (r"^LDG\b", 5),
        innermost=True,
    )


def _markov_loops() -> list[LoopName]:
    """markov_block's named loops and out-of-line functions (bf16, statistics form, 256-wide tiles)."""
    w = MARKOV_TILE
    k = f"{MARKOV_KERNEL}<__nv_bfloat16, __nv_bfloat16, {w}, true>"
    return [
        _stage_loop(f"markov.w2_stage.{w}", k, _MARKOV, _MARKOV_W2_STAGE, "W2"),
        _stage_loop(f"markov.e_stage.{w}", k, _MARKOV, _MARKOV_E_STAGE, "W1"),
        LoopName(
            f"markov.mma.{w}",
            k,
            ((_TILE, _MMA_SYNC_K),),
            1,
            "k16 step of a warp (16 rows x 128 columns: 9 ldmatrix.x4, 16 mma.m16n8k16)",
            _MMA_SYNC_STEP,
        ),
        # The chunk loop minus its nested loops: the epilogue on the accumulators (two rows a thread)
        # and every other per-chunk instruction.
        LoopName(
            f"markov.epilogue.{w}", k, ((_MARKOV, _MARKOV_CHUNK),), MARKOV_CHUNK_ELEMENTS, "sampled element"
        ),
        # What a greedy row adds: the rare path's argmax pass over the thread's 32 logits (out of line),
        # and the rare path's whole function (a static size, not what one call runs).
        LoopName(
            f"markov.greedy.{w}",
            k,
            (
                (
                    _MARKOV,
                    r"if \(!\(t > 0\.0f\) && fabsf\(__fmul_rn\(m, log2e_t\)\) < kFastExpOffsetLimit"
                    r" && !\(sum != sum\)\) \{",
                ),
            ),
            MARKOV_COLUMNS,
            "column of a greedy row (out of line: the argmax of its 32 logits)",
            kind="code",
        ),
        LoopName(
            f"markov.rare_call.{w}",
            k,
            ((_MARKOV, _RARE_PARTIAL),),
            MARKOV_COLUMNS,
            "column of a non-finite row (static size of the function / 32 columns)",
            kind="code",
        ),
        _merge_loop(f"markov.merge.{w}", k),
        LoopName(f"markov.merge_call.{w}", k, ((_MARKOV, _MERGE_CHUNK),), 1, "call", kind="code"),
    ]


# markov_block with an int8 W2 (per-row scales; markov_int8.cuh): the same 256-wide mma.sync tile.
_INT8 = "include/dspark_sgl/markov_int8.cuh"
INT8_TILE = MARKOV_TILE
_INT8_KERNEL = f"{MARKOV_KERNEL}<__nv_bfloat16, dspark_sgl::Int8W2<__nv_bfloat16>, {INT8_TILE}, true>"
# The optional int8 W2's cost in acceptance: dspark_sgl eval --markov-w2 int8 on the embedded pair
# (last session's measurement; not rerun by this model).
INT8_TAU_NOTE = (
    "optional (eval --markov-w2 int8): tau 1.766 int8 vs 1.760 bf16 on the embedded pair, SE 0.012"
)


INT8_WIDEN_PIECES = 8  # widen_int8_tile's kPieces: 16-value pieces a thread widens per batch


def _markov_int8_loops() -> list[LoopName]:
    """markov_block's named loops with an int8 W2 (bf16 W1, statistics form): the int8 staging, its
    widening in place to bf16 (once per CTA), the MMA (warp_bias_mma, as with a bf16 W2), and the
    chunk loop with the scale multiply."""
    k, w = _INT8_KERNEL, INT8_TILE
    return [
        LoopName(
            f"markov_int8.w2_stage.{w}",
            k,
            (
                (_MARKOV, r"stage_int8_tile<kTileV, Shape::kThreads>\("),
                (_INT8, r"for \(int p = threadIdx\.x; p < copied;"),
            ),
            16,
            "int8 W2 element (16-byte copy)",
            _ONE_COPY,
        ),
        _stage_loop(f"markov_int8.e_stage.{w}", k, _MARKOV, _MARKOV_E_STAGE, "W1"),
        LoopName(
            f"markov_int8.widen.{w}",
            k,
            (
                (_MARKOV, r"widen_int8_tile<WT, kTileV, Shape::kThreads>\(w2s,"),
                (_INT8, r"for \(int hi = kTileV; hi > 0; hi -= batch_rows\)"),
            ),
            INT8_WIDEN_PIECES * 16,
            "int8 W2 element widened to bf16 (a batch of 8 pieces of 16 a thread)",
        ),
        LoopName(
            f"markov_int8.mma.{w}",
            k,
            ((_TILE, _MMA_SYNC_K),),
            1,
            "k16 step of a warp (16 rows x 128 columns)",
            _MMA_SYNC_STEP,
        ),
        LoopName(
            f"markov_int8.epilogue.{w}",
            k,
            ((_MARKOV, _MARKOV_CHUNK),),
            MARKOV_CHUNK_ELEMENTS,
            "sampled element",
        ),
        _merge_loop(f"markov_int8.merge.{w}", k),
        LoopName(f"markov_int8.merge_call.{w}", k, ((_MARKOV, _MERGE_CHUNK),), 1, "call", kind="code"),
    ]


LOOPS: list[LoopName] = [
    *_markov_loops(),
    *_markov_int8_loops(),
    LoopName(
        "verify.rows.target",
        _ROWS_KERNEL,
        ((_VERIFY, r"scan_row<TT, decltype\(group\)::value>\(target,"), (_VERIFY, _PLAIN_SCAN)),
        8,
        "target logit (16-byte group of 8)",
    ),
    LoopName(
        "verify.rows.bonus",
        _ROWS_KERNEL,
        ((_VERIFY, r"scan_row<TT, decltype\(group\)::value>\(target,"), (_VERIFY, _BONUS_SCAN)),
        8,
        "target logit of the bonus row (group of 8)",
    ),
    LoopName(
        "verify.rows.bonus_candidates",
        _ROWS_KERNEL,
        ((_VERIFY, r"template <int kG>\n__device__ __noinline__ ArgMax bonus_candidates\("),),
        1,
        "candidate group of 8, whole out-of-line path (its exact scores called)",
        kind="function",
        callee="16bonus_candidatesILi8E",
    ),
    LoopName(
        "verify.rows.bonus_exact",
        _ROWS_KERNEL,
        ((_VERIFY, r"__device__ __noinline__ float exact_gumbel_score\("),),
        1,
        "exact column (IEEE x / T, two logf, score: an out-of-line call)",
        kind="function",
        callee="18exact_gumbel_score",
    ),
    LoopName(
        "verify.rows.bonus_first",
        _ROWS_KERNEL,
        ((_VERIFY, _BONUS_FIRST),),
        1,
        "a thread's first candidate group, whole out-of-line path (its exact scores called)",
        kind="function",
        callee="22bonus_first_candidatesILi8E",
    ),
    LoopName(
        "verify.rows.draft",
        _ROWS_KERNEL,
        ((_VERIFY, r"scan_row<DT, decltype\(group\)::value>\(draft,"), (_VERIFY, _PLAIN_SCAN)),
        8,
        "draft logit (group of 8; full draft logits only)",
    ),
    LoopName(
        "verify.rows.merge",
        _ROWS_KERNEL,
        ((_VERIFY, r"for \(int c = threadIdx\.x % 32; c < chunks; c \+= 32\) s\.merge"),),
        1,
        "chunk partial (the request's last CTA)",
    ),
    LoopName(
        "verify.residual.logits",
        _LOGITS_KERNEL,
        ((_VERIFY, r"slab\.for_each<4>\(target, \[&\]\(const TT\* p, int32_t v0\) \{"),),
        4,
        "stop-row column of a rejected row (Philox block of 4, its headroom and uniform tests)",
    ),
    LoopName(
        "verify.residual.logits_candidates",
        _LOGITS_KERNEL,
        ((_VERIFY, r"template <typename DT>\n__device__ __noinline__ ArgMax residual_candidates\("),),
        1,
        "candidate block of 4, whole out-of-line path (its exact scores included)",
        kind="code",
    ),
    LoopName(
        "verify.residual.logits_exact",
        _LOGITS_KERNEL,
        ((_VERIFY, r"residual_column\(best, rr\.info,"),),
        4,
        "exact residual column (IEEE p, q, logf, Gumbel)",
        kind="code",
    ),
    *_tile_loops("verify.residual", _VERIFY_KERNEL, _VERIFY, 64),
    *_tile_loops("verify.residual", _VERIFY_KERNEL, _VERIFY, 128),
    LoopName(
        "verify.residual.merge",
        _ROWS_KERNEL,
        ((_VERIFY, r"for \(int part = threadIdx\.x % 32; part < parts; part \+= 32\) best\.merge"),),
        1,
        "tile partial of a rejected row",
    ),
    *(
        LoopName(
            f"schedule.radix_pass.{items}",
            f"schedule_kernel<float, {items}>",
            ((_SCHEDULE, r"radix_sort<kItems>\(keys,"), (_SCHEDULE, r"for \(int pass = 0; pass < kPasses;")),
            1,
            "pass of one sorting thread",
        )
        for items in _SORT_ITEMS
    ),
    *(
        LoopName(
            f"schedule.unit.{items}",
            f"schedule_kernel<float, {items}>",
            ((_SCHEDULE, r"for \(int unit = 0; unit < plan\.units\(\);"),),
            1,
            "sort unit of one thread (scans, reductions)",
        )
        for items in _SORT_ITEMS
    ),
    LoopName(
        "schedule.survival",
        _SCHEDULE_KERNEL,
        (
            (_SCHEDULE, r"write_survival_keys\(stale_alone"),
            (_SCHEDULE, r"for \(int j = 0; j < gamma; \+\+j, out \+= rows\)"),
        ),
        1,
        "candidate",
        (r"^DMUL\b", 1),
    ),
    LoopName(
        "schedule.sps_table",
        _SCHEDULE_KERNEL,
        ((_SCHEDULE, r"sps_table\(staged"), (_SCHEDULE, r"for \(; n < end; \+\+n\)")),
        1,
        "batch size R + n",
        (r"^MUFU\b", 1),  # the reciprocal seed of the one float64 division
    ),
    LoopName(
        "schedule.walk_sum",
        _SCHEDULE_KERNEL,
        (
            (_SCHEDULE, r"theta_walks\(keys, segments,"),
            (
                _SCHEDULE,
                r"for \(int n = n0; n < n1; \+\+n\) \{\n\s*const uint64_t key = seg\[n\];"
                r"\n\s*run",
            ),
        ),
        1,
        "rank",
        (r"^DADD\b", 1),
    ),
    *(
        LoopName(
            f"schedule.walk_{what}",
            _SCHEDULE_KERNEL,
            (
                (_SCHEDULE, r"theta_walks\(keys, segments,"),
                (_SCHEDULE, rf"{branch}\s*#pragma unroll 4\n\s*for \(int i = 0; i < kWalkRanks; \+\+i\)"),
            ),
            1,
            "valid rank",
            (r"^DMUL\b", 1),
        )
        for what, branch in (("argmax", r"if \(half == argmax_half\) \{\n"), ("stop", r"\} else \{\n"))
    ),
    LoopName(
        "schedule.lengths",
        _SCHEDULE_KERNEL,
        ((_SCHEDULE, r"for \(int n = threadIdx\.x; n < take;"),),
        1,
        "admitted candidate",
    ),
]


# ---- the modeled paths ---------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """One kernel launch: the bytes it must move and the thread-instructions it issues."""

    kernel: str
    bytes: float
    instructions: float = 0.0  # thread-instructions; 0 where not modeled
    one_cta: bool = False  # issue limited to one SM
    dependent: bool = False  # a programmatic dependent of the launch before it (PDL)
    handoff: bool = False  # not a launch: the second phase of the launch before it (work_items.cuh)
    l2_reuse: float = 0.0  # bytes (W2) read in the reverse of the launch before's order: L2 can serve some

    def l2_hits(self, device: Device) -> float:
        """Bytes L2 serves: the first C reuse / (reuse + 2 other) bytes of the reused ones (see
        L2_RETAINED), C = the L2 bytes retained."""
        if not self.l2_reuse:
            return 0.0
        other = self.bytes - self.l2_reuse
        retained = device.l2_bytes * device.l2_retained
        return min(self.l2_reuse, retained * self.l2_reuse / (self.l2_reuse + 2 * other))

    def terms(self, device: Device) -> tuple[float, float]:
        """(memory, thread-instructions / issue rate) in seconds; memory is the larger of the bytes
        L2 does not serve over the memory bandwidth and all bytes over L2's."""
        issue = device.sm_issue_rate if self.one_cta else device.issue_rate
        memory = max((self.bytes - self.l2_hits(device)) / device.bandwidth, self.bytes / device.l2_bandwidth)
        return memory, self.instructions / issue

    def boundary(self, device: Device) -> float:
        """The boundary before this launch: a full launch, one to a programmatic dependent, or an
        in-kernel handoff from the phase before."""
        if self.handoff:
            return device.handoff_cost
        return device.dependent_launch_cost if self.dependent else device.launch_cost

    def time(self, device: Device) -> float:
        return max(self.terms(device)) + self.boundary(device)

    @property
    def kind(self) -> str:
        if self.handoff:
            return "in-kernel handoff"
        return "programmatic dependent" if self.dependent else "full boundary"


@dataclass
class ModeledOp:
    """One op at one shape: our launches, SGLang's, and the bytes of its floor (0: none)."""

    op: str
    vocab: int
    rows: int
    gamma: int
    ours: list[Launch]
    sglang: list[Launch]
    floor_bytes: float
    notes: list[str] = field(default_factory=list)

    def bytes(self) -> float:
        return sum(launch.bytes for launch in self.ours)

    def instructions(self) -> float:
        return sum(launch.instructions for launch in self.ours)

    def time(self, device: Device) -> float:
        return sum(launch.time(device) for launch in self.ours)

    def sglang_time(self, device: Device) -> float:
        return sum(launch.time(device) for launch in self.sglang)

    def floor(self, device: Device) -> float | None:
        """The floor bytes at full bandwidth, in one launch (None: the op has an absolute budget)."""
        return self.floor_bytes / device.bandwidth + device.launch_cost if self.floor_bytes else None

    def bound(self, device: Device) -> str:
        """What the largest share of the modeled time goes to: memory, issue or launches."""
        shares = {"memory": 0.0, "issue": 0.0, "launches": sum(lc.boundary(device) for lc in self.ours)}
        for launch in self.ours:
            memory, issue = launch.terms(device)
            shares["memory" if memory >= issue else "issue"] += max(memory, issue)
        return max(shares, key=shares.__getitem__)

    def dependents(self) -> int:
        return sum(launch.dependent for launch in self.ours)

    def handoffs(self) -> int:
        return sum(launch.handoff for launch in self.ours)

    def launches(self) -> int:
        """Kernel launches (an in-kernel handoff's phase is part of the launch before it)."""
        return sum(not launch.handoff for launch in self.ours)

    def launch_kinds(self) -> str:
        """Each run of equal launches (kernel name without template arguments) with its count and
        boundary kind, in launch order."""
        runs: list[list] = []
        for launch in self.ours:
            key = (launch.kernel.split("<")[0].split(" ")[0], launch.kind)
            if runs and runs[-1][0] == key:
                runs[-1][1] += 1
            else:
                runs.append([key, 1])
        return ", ".join(f"{name}{f' x {n}' if n > 1 else ''} ({kind})" for (name, kind), n in runs)


def _sglang(launches: sglang_path_model.Launches) -> list[Launch]:
    return [Launch(name, float(b)) for name, b in launches]


FUSED_CTAS_PER_SM = 3  # chain_verify.cu kFusedCtasPerSm, with its shared-memory constants below
SHARED_MEMORY_PER_SM, RESERVED_PER_CTA, FUSED_STATIC_BYTES = 228 * 1024, 1024, 6144


def _align128(b: int) -> int:
    return (b + 127) // 128 * 128


def verification_fused(vocab: int, rows: int) -> bool:
    """chain_verify.cu fused_fits for the statistics form (bf16 weights, r = RANK): the recompute
    tile's dynamic shared memory (MarkovTileLayout: W2 tile, E chunk, bias tile) leaves pass 1 at
    least FUSED_CTAS_PER_SM CTAs a multiprocessor."""
    geo = _tile_geometry(vocab, rows)
    tile_v, chunk_rows, ld = geo["tile_v"], geo["chunk"], geo["k_pad"] + 8
    smem = (
        _align128(tile_v * ld * ELEM) + _align128(chunk_rows * ld * ELEM) + _align128(chunk_rows * tile_v * 4)
    )
    return FUSED_CTAS_PER_SM * (smem + FUSED_STATIC_BYTES + RESERVED_PER_CTA) <= SHARED_MEMORY_PER_SM


def _tile_geometry(vocab: int, rows: int) -> dict[str, int]:
    """markov_block_tile_vocab and verification's recompute geometry (chain_verify.cu)."""
    tile_v = 128 if rows > 32 else 64  # 16-bit weights
    chunk = 2048 // tile_v  # kTileOutputs / kTileV
    lanes = tile_v // 4
    rows_per_warp = 32 // lanes
    return {
        "tile_v": tile_v,
        "tiles": math.ceil(vocab / tile_v),
        "chunk": chunk,
        "chunks": math.ceil(rows / chunk),
        "warp_rows": math.ceil(rows / rows_per_warp) * rows_per_warp,  # rows padded to whole warps
        "k_pad": math.ceil(RANK / 16) * 16,
    }


def _tile_instructions(prefix: str, geo: dict[str, int], loops: Mapping[str, float]) -> float:
    """Thread-instructions of one tile-kernel launch: staging, MMA and epilogue loops.

    Staging copies k_pad elements per row (tile_v W2 rows; chunk W1 rows per chunk, padding
    rows included); every thread of the CTA runs k_pad / 16 MMA k-steps per chunk; the
    epilogue handles tile_v columns of every row, rows padded to whole warps.
    """
    w, t, k = geo["tile_v"], geo["tiles"], geo["k_pad"]
    return (
        loops[f"{prefix}.w2_stage.{w}"] * t * w * k
        + loops[f"{prefix}.e_stage.{w}"] * t * geo["chunks"] * geo["chunk"] * k
        + loops[f"{prefix}.mma.{w}"] * t * geo["chunks"] * 256 * (k / 16)
        + loops[f"{prefix}.epilogue.{w}"] * t * w * geo["warp_rows"]
    )


def _markov_geometry(vocab: int, rows: int) -> dict[str, int]:
    """markov_block's launch geometry with 16-bit W1 (markov_block.cu BlockShape: 256-wide tiles, two
    partials a row and tile, and 64-row chunks at every R, bf16 or int8 W2)."""
    chunk = MARKOV_CHUNK_ROWS
    return {
        "tile_v": MARKOV_TILE,
        "tiles": math.ceil(vocab / MARKOV_TILE),
        "partials": math.ceil(vocab / MARKOV_TILE) * MARKOV_SEGMENTS,  # per row
        "chunk": chunk,
        "chunks": math.ceil(rows / chunk),
        "k_pad": math.ceil(RANK / 16) * 16,
    }


def markov_block(
    vocab: int, rows: int, gamma: int, loops: Mapping[str, float], int8_w2: bool = False
) -> ModeledOp:
    """markov_block, statistics form (no [R, g, V] logits kept): a memset of the tickets, then one
    cooperative launch for every position (markov_persistent_kernel; the last CTA of each row chunk
    merges it), position 0 behind the memset a full boundary, positions 1..g-1 in-kernel handoffs
    (they wait for the position before's merged count). CTA c of the P = SMS x MARKOV_CTAS_PER_SM owns
    tiles c, c + P, ...; each position starts on the tile the position before ended on, still staged:
    positions 1..g-1 read min(P, tiles) tiles of W2 from no memory, and stage the others. The tile a CTA
    ends a position on is read evict-first, modeled as taking none of the L2 that keeps W2 (an
    assumption: L2 evicts those lines before any other), so the reused W2 is the other tiles'.
    ``int8_w2``: the optional int8 W2 with per-row scales (op ``markov_block_int8``): W2 moves
    V r bytes plus V float32 scales a position, and the int8 kernel's loops count; its floor is
    its own bytes, SGLang's path is the same bf16 one.

    ``loops``: SASS instructions per unit of each named loop (``LoopCount.per_item``). Every row is
    modeled as sampled with finite logits (the grouped sampler in the chunk loop, no rare path).

    Per launch: staging (tile_v W2 rows per CTA; per chunk the W1 rows of its 16-row blocks that
    hold a row), the MMA (two warps per such block, each k_pad / 16 k16 steps over 128 columns, 32
    threads; the steps nvcc peeled into the chunk loop, the first at least, are in the chunk loop's
    count, not the k-loop's), the chunk loop on every thread of a warp
    that holds a row (64 elements a thread: 32 columns of two rows), and the merge (a lane per
    partial, two a row and tile; every thread of the merging CTA runs merge_chunk once).
    """
    geo = _markov_geometry(vocab, rows)
    w, t, k = geo["tile_v"], geo["tiles"], geo["k_pad"]
    w2 = vocab * RANK + vocab * 4 if int8_w2 else vocab * RANK * ELEM
    base, w1 = rows * vocab * ELEM, rows * RANK * ELEM
    name = "markov_int8" if int8_w2 else "markov"
    partials = (
        rows * geo["partials"] * 20
    )  # MarkovPartial: 5 x 4 bytes, written by every CTA, read by the merge
    outputs = rows * (8 + 4 * 4)  # token, logit, score, max, sum
    counters = (geo["chunks"] + 1) * 4  # a ticket per row chunk, the merged-chunk count
    # Per chunk: E rows and warp pairs (each 16 rows x 256 columns: the MMA and the epilogue of two
    # warps) in whole 16-row blocks holding a row; the MMA's first k16 step is in the chunk loop.
    chunk_rows = [min(geo["chunk"], rows - r0) for r0 in range(0, rows, geo["chunk"])]
    blocks = sum(math.ceil(n / 16) for n in chunk_rows)
    peeled = peeled_mma_steps(loops, name, w)  # counted in the chunk loop, not the k-loop
    instructions = (
        loops[f"{name}.w2_stage.{w}"] * t * w * k
        + (loops[f"{name}.widen.{w}"] * t * w * k if int8_w2 else 0.0)
        + loops[f"{name}.e_stage.{w}"] * t * blocks * 16 * k
        + loops[f"{name}.mma.{w}"] * t * blocks * MARKOV_SEGMENTS * 32 * (k // 16 - peeled)
        + loops[f"{name}.epilogue.{w}"] * t * w * blocks * 16
        + loops[f"{name}.merge.{w}"] * rows * math.ceil(geo["partials"] / 32) * 32
        + loops[f"{name}.merge_call.{w}"] * geo["chunks"] * MARKOV_THREADS
    )
    tile = Launch(
        f"{MARKOV_KERNEL}<bf16, {'Int8W2<bf16>' if int8_w2 else 'bf16'}, {w}, true>",
        w2 + base + w1 + rows * 12 + 2 * partials + outputs + counters,
        instructions,
    )
    # Positions 1..g-1: each CTA's first tile is still in shared memory (the last one the position before
    # computed): neither its W2 bytes nor its staging instructions.
    resident_tiles = min(t, SMS * MARKOV_CTAS_PER_SM)
    resident = min(w2, w2 * resident_tiles * w / vocab)
    staging = loops[f"{name}.w2_stage.{w}"] * resident_tiles * w * k
    if int8_w2:
        staging += loops[f"{name}.widen.{w}"] * resident_tiles * w * k
    later = replace(
        tile,
        bytes=tile.bytes - resident,
        instructions=instructions - staging,
        handoff=True,
        l2_reuse=w2 - resident,
    )
    memset = Launch("cudaMemsetAsync (tickets)", counters)
    notes = [
        "W1 rows counted once (every CTA re-reads them from L2); the confidence launch not modeled",
        "every row sampled with finite logits (greedy rows add the rare path: markov.rare_call)",
        f"positions 1..g-1: {resident_tiles} tiles of W2 still staged (a CTA's last tile of the position"
        " before, read evict-first: assumed to take no L2), the rest W2' read in the reverse of the"
        " position before's order: L2 serves the first C W2' / (W2' + 2 other bytes) of it (L2_RETAINED);"
        " SGLang's path gets no L2 hits",
    ]
    if int8_w2:
        notes.append(f"int8 W2 (W2 bytes V r + 4 V scales; SGLang's path bf16): {INT8_TAU_NOTE}")
    return ModeledOp(
        "markov_block_int8" if int8_w2 else "markov_block",
        vocab,
        rows,
        gamma,
        [memset, tile] + [later] * (gamma - 1),
        _sglang(sglang_path_model.markov_block(vocab, rows, gamma, RANK, ELEM)),
        gamma * (w2 + base),
        notes,
    )


ROW_CTAS_PER_SM = 3  # chain_verify.cu kRowCtasPerSm


def stat_chunks(vocab: int, rows: int, gamma: int) -> int:
    """CTAs per (row, position) of pass 1 (dspark_sgl/verify.py stat_chunks, SMS multiprocessors)."""
    return max(1, min(math.ceil(ROW_CTAS_PER_SM * SMS / (rows * (gamma + 1))), math.ceil(vocab / 2048)))


ROW_THREADS = 256  # chain_verify.cu kRowThreads
ROW_PARTIAL = 32  # RowPartial: 2 SoftmaxStats + 2 ArgMax
STOP_INFO = 24
RESIDUAL_PARTIAL = 8  # ArgMax
RESIDUAL_CTAS_PER_SM = 4  # chain_verify.cu kResidualCtasPerSm
# The bounded Gumbel draws' candidate path (benchmarks/gumbel_candidates.py, on the embedded
# target's logits and synthetic V = 129280 rows at T = 0.6 / 1 / 1.5): every group and every
# Philox block takes it (measured 0.90-1.00: the logits' spread is below G_max + ln V).
# The bonus draw (2026-12-02, each thread's first candidate group seeded by its likeliest column,
# a group's columns tested against the best at its start): besides the seed, the columns scored
# exactly per thread fit 0.1 + 1.25 ln(n / 8) for n columns a thread (measured at most 0.07 at 8,
# 0.85 at 16, 2.23 at 46, 4.14 at 252, 4.94 at 505).
# The residual draw of pass 2 (no seed; 2026-12-01): 2.4 + 1.2 ln(n) (4.9 at 8, 9.4 at 505).
BONUS_CANDIDATE_GROUPS = 1.0


def _columns_per_thread(vocab: int, chunks: int) -> float:
    return max(1.0, vocab / (chunks * ROW_THREADS))


def bonus_exact_columns(vocab: int, chunks: int) -> float:
    """Columns of one bonus row scored exactly besides the seeds (the fit above), all threads."""
    n = _columns_per_thread(vocab, chunks)
    return min(n - 1.0, 0.1 + 1.25 * math.log(max(n, 8.0) / 8.0)) * chunks * ROW_THREADS


def residual_exact_columns(vocab: int, chunks: int) -> float:
    """Columns of one rejected row's residual draw scored exactly (the fit above), all threads."""
    n = _columns_per_thread(vocab, chunks)
    return min(n, 2.4 + 1.2 * math.log(n)) * chunks * ROW_THREADS


def _bonus_row_instructions(vocab: int, chunks: int, loops: Mapping[str, float]) -> float:
    """One bonus row: the lean loop; each thread's first candidate group (Philox, the seed, the
    tests of the other seven); the later candidate groups' headrooms, Philox and uniform tests
    (each out-of-line path at its whole static size); the exact scores, the seeds' included."""
    groups = vocab / 8
    first = min(groups, chunks * ROW_THREADS)  # threads with a group
    return (
        loops["verify.rows.bonus"] * vocab
        + first * loops["verify.rows.bonus_first"]
        + BONUS_CANDIDATE_GROUPS * (groups - first) * loops["verify.rows.bonus_candidates"]
        + (first + bonus_exact_columns(vocab, chunks)) * loops["verify.rows.bonus_exact"]
    )


VERIFY_CASES = {
    "chain_verify": "nothing rejected (statistics form)",
    "chain_verify_rejected_logits": "every sampled row rejected, full draft logits given",
    "chain_verify_rejected_w2": "every sampled row rejected, statistics form (W2 recompute)",
}


def verify(
    vocab: int, rows: int, gamma: int, loops: Mapping[str, float], case: str = "chain_verify"
) -> ModeledOp:
    """chain_verify: every row sampled and verified to g. ``case`` (VERIFY_CASES): nothing
    rejected (pass 1 reads the g + 1 target rows and draws the bonus at the last; pass 2 exits at
    once), or every row rejected at its last draft s = g - 1 (pass 1 reads every row, with full
    draft logits the g draft rows too; pass 2 reads the stop row, and the draft row or W2 + the base
    row)."""
    positions = rows * (gamma + 1)
    chunks = stat_chunks(vocab, rows, gamma)
    target = positions * vocab * ELEM
    logits_form = case == "chain_verify_rejected_logits"
    rejected = case != "chain_verify"
    partials = positions * chunks * ROW_PARTIAL
    draft = rows * gamma * vocab * ELEM if logits_form else 0
    row_instructions = rows * gamma * vocab * loops["verify.rows.target"]
    if logits_form:
        row_instructions += rows * gamma * vocab * loops["verify.rows.draft"]
    if not rejected:  # the bonus at j = g; a rejected row's g + 1-th row is plain statistics
        row_instructions += rows * _bonus_row_instructions(vocab, chunks, loops)
    else:
        row_instructions += rows * vocab * loops["verify.rows.target"]
    row_instructions += positions * chunks * loops["verify.rows.merge"]
    # Per request: lens, temperature; the last CTA reads the partials, the drafted tokens, their
    # target logits and draft statistics (12 bytes a position) and writes the chain and StopInfo.
    pass1 = Launch(
        "chain_verify_kernel<bf16, bf16, ...> pass 1",
        target
        + draft
        + 2 * partials
        + rows * (12 + gamma * (8 + ELEM + 12) + (gamma + 1) * 8 + 4 + STOP_INFO),
        row_instructions,
    )
    notes = [
        "floor: the target logits read once; pass 2 charged its boundary even when it exits at once: an"
        " in-kernel handoff where it is fused into pass 1's launch (work_items.cuh), else a programmatic"
        " dependent launch (statistics form at R > 32: its recompute tile's shared memory would cost"
        " pass 1 occupancy, chain_verify.cu fused_fits)",
        "bonus draw: candidate fractions measured by benchmarks/gumbel_candidates.py (see cost_model.py)",
    ]
    fused = logits_form or verification_fused(vocab, rows)
    boundary = {"handoff": True} if fused else {"dependent": True}
    if not rejected:
        tiles = math.ceil(vocab / _tile_geometry(vocab, rows)["tile_v"])
        ctas = min(tiles, RESIDUAL_CTAS_PER_SM * SMS)  # each reads the word and takes the exit ticket
        pass2 = Launch("chain_verify_kernel pass 2 (exits: nothing rejected)", ctas * 8, **boundary)
    elif logits_form:
        parts = min(chunks * (gamma + 1), math.ceil(vocab / 2048))
        resample = rows * parts * RESIDUAL_PARTIAL
        pass2 = Launch(
            "chain_verify_kernel<bf16, bf16, float, 0> pass 2",
            # the stop row of the target; of the draft only the exactly scored columns (sectors)
            rows * vocab * ELEM
            + rows * residual_exact_columns(vocab, parts) * 32
            + rows * STOP_INFO
            + 2 * resample,
            loops["verify.residual.logits"] * rows * vocab
            + BONUS_CANDIDATE_GROUPS
            * rows
            * (vocab / 4)
            * (loops["verify.residual.logits_candidates"] - 4 * loops["verify.residual.logits_exact"])
            + rows * residual_exact_columns(vocab, parts) * loops["verify.residual.logits_exact"]
            + loops["verify.residual.merge"] * rows * parts,
            **boundary,
        )
    else:
        geo = _tile_geometry(vocab, rows)
        resample = rows * geo["tiles"] * RESIDUAL_PARTIAL
        pass2 = Launch(
            f"chain_verify_kernel<bf16, bf16, bf16, {geo['tile_v']}> pass 2",
            vocab * RANK * ELEM
            + 2 * rows * vocab * ELEM
            + rows * RANK * ELEM
            + rows * STOP_INFO
            + 2 * resample,
            _tile_instructions("verify.residual", geo, loops)
            + loops["verify.residual.merge"] * rows * geo["tiles"],
            **boundary,
        )
        notes.append(
            "W2 recompute: W2 read once per launch (at R * g < r keeping the draft logits moves less)"
        )
    return ModeledOp(
        case,
        vocab,
        rows,
        gamma,
        [pass1, pass2],
        _sglang(sglang_path_model.verify(vocab, rows, gamma, ELEM)),
        target,
        notes,
    )


SCHEDULE_THREADS = 512
SCHEDULE_MAX_SORT_KEYS = 8192
RADIX_PASSES = 4


def schedule_sort_shape(keys: int) -> tuple[int, int]:
    """(keys per sorting thread, sorting warps) of one sort (schedule.cu sort_shape)."""
    items, warps = 1, 8
    while items * 256 < keys:
        items *= 2
    while warps * 32 * items < keys:
        warps *= 2
    return items, warps


def schedule(rows: int, gamma: int, loops: Mapping[str, float], asynchronous: bool) -> ModeledOp:
    """schedule_prefix: one CTA of 512 threads. Async (with or without the causal prune: the same
    work) sorts both segments in one radix sort when 2 R g <= 8192, else one after the other.

    Per sort: 4 passes of every sorting thread, and each unit's straight-line code on every
    thread; per candidate of each segment: its survival product and the walk's sums; per rank:
    the current segment's stop walk and the stale one's argmax walk (every candidate counted as
    valid and Algorithm 1 as never stopping); per batch size R + n (n = 0..R g, once): the SPS
    table; every candidate counted as admitted.
    """
    count = rows * gamma
    segments = 2 if asynchronous else 1
    combined = asynchronous and 2 * count <= SCHEDULE_MAX_SORT_KEYS
    units = 2 if asynchronous and not combined else 1
    items, warps = schedule_sort_shape(2 * count if combined else count)
    instructions = (
        units * RADIX_PASSES * warps * 32 * loops[f"schedule.radix_pass.{items}"]
        + units * SCHEDULE_THREADS * loops[f"schedule.unit.{items}"]
        + segments * count * (loops["schedule.survival"] + loops["schedule.walk_sum"])
        + count * loops["schedule.walk_stop"]
        + (count * loops["schedule.walk_argmax"] if asynchronous else 0.0)
        + (count + 1) * loops["schedule.sps_table"]
        + count * loops["schedule.lengths"]
    )
    kernel = Launch(
        f"schedule_kernel<float, {items}>", segments * count * 4 + rows * 4, instructions, one_cta=True
    )
    return ModeledOp(
        "schedule_async" if asynchronous else "schedule_causal",
        0,
        rows,
        gamma,
        [kernel],
        _sglang(sglang_path_model.schedule(rows, gamma)),
        0.0,
        ["barrier latency not modeled; SGLang's budget runs on the host (not modeled)"],
    )


def model(loops: Mapping[str, float]) -> list[ModeledOp]:
    """Every modeled row: Markov block and verification per (V, R, g), the scheduler per (R, g)."""
    paths: list[ModeledOp] = []
    for vocab in VOCABS:
        for rows in ROWS:
            for gamma in GAMMAS:
                paths.append(markov_block(vocab, rows, gamma, loops))
                paths.append(markov_block(vocab, rows, gamma, loops, int8_w2=True))
                paths.extend(verify(vocab, rows, gamma, loops, case) for case in VERIFY_CASES)
    for rows in ROWS:
        for gamma in SCHEDULE_GAMMAS:
            for asynchronous in (False, True):
                paths.append(schedule(rows, gamma, loops, asynchronous))
    return paths


# ---- staging: bytes in flight ----------------------------------------------------------

STAGE_THREADS = 256  # kTileThreads
IN_FLIGHT_BUDGET = 32 * 1024  # bytes per SM (the issue's pipeline requirement)


@dataclass(frozen=True)
class StageFlight:
    """The bytes one CTA's staging loop (a named ``*_stage.*`` loop) has in flight at once."""

    loop: str
    staged: int  # bytes the loop stages (rows x k_pad x ELEM at r = RANK)
    in_flight: int
    asynchronous: bool

    def line(self) -> str:
        how = "cp.async, one group: the whole stage" if self.asynchronous else "a synchronous load per thread"
        kb = f"{self.in_flight / 1024:.0f} KB in flight of {self.staged / 1024:.0f} KB"
        return f"- {self.loop}: {kb} ({how})"


def staging_in_flight(counts: Mapping[str, LoopCount]) -> list[StageFlight]:
    """Per named staging loop, at r = RANK with one CTA per SM: a loop body with cp.async and no
    synchronous global load or wait in it issues every copy of the stage before the one wait after
    it, so the whole stage is in flight; otherwise each thread has one 16-byte load (per unrolled
    copy) in flight before it stores it. Read from the SASS opcodes of the loop; what the memory
    system can hold outstanding is not modeled."""
    flights = []
    for name, c in counts.items():
        if "_stage." not in name:
            continue
        tile_v = int(name.rsplit(".", 1)[1])
        prefix = name.split(".", 1)[0]
        markov = prefix in ("markov", "markov_int8")  # markov_block: 64-row chunks, 256 threads
        chunk = MARKOV_CHUNK_ROWS if markov else 2048 // tile_v
        threads = MARKOV_THREADS if markov else STAGE_THREADS
        rows = tile_v if ".w2_stage." in name else chunk
        elem = 1 if name.startswith("markov_int8.w2_stage.") else ELEM  # an int8 W2: a byte a value
        staged = rows * math.ceil(RANK / 16) * 16 * elem
        ops = c.opcodes
        synchronous = ops.get("global/generic", 0) + ops.get("cp.async wait", 0)
        asynchronous = ops.get("cp.async", 0) > 0 and synchronous == 0
        in_flight = staged if asynchronous else min(staged, threads * 16 * c.unroll)
        flights.append(StageFlight(name, staged, in_flight, asynchronous))
    return flights


# ---- budgets -------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """A budget over the modeled rows. ``worst``: the largest modeled value over its limit
    (time / (1.3 x floor), instructions / 25, ...): <= 1 where the budget is met."""

    budget: str
    met: bool
    failures: tuple[str, ...]
    worst: float = float("nan")

    def line(self) -> str:
        worst = f"worst {self.worst:.2f}x of the limit" if self.worst == self.worst else "no rows"
        if self.met:
            return f"- {self.budget}: met ({worst})"
        shown = "; ".join(self.failures[:6]) + (
            f"; ... ({len(self.failures)} in all)" if len(self.failures) > 6 else ""
        )
        return f"- {self.budget}: NOT met ({worst}: {shown})"


def _where(path: ModeledOp, device: Device | None = None) -> str:
    shape = f"V={path.vocab} R={path.rows} g={path.gamma}" if path.vocab else f"R={path.rows} g={path.gamma}"
    return f"{path.op} {shape}" + (f" {device.name}" if device else "")


def _over(value: float, limit: float | None) -> float:
    """value / limit; infinite without a positive limit (a row the budget cannot pass)."""
    return value / limit if limit else math.inf


def _check(
    budget: str,
    paths: list[ModeledOp],
    over: Callable[[ModeledOp, Device], float],
    devices: tuple[Device, ...],
) -> Verdict:
    """``over(path, device)``: the modeled value over its limit; the row fails above 1."""
    ratios = [(over(p, d), p, d) for p in paths for d in devices]
    failures = tuple(f"{_where(p, d)}" for r, p, d in ratios if not r <= 1.0)
    worst = max((r for r, _, _ in ratios), default=float("nan"))
    return Verdict(budget, not failures and bool(paths), failures or (() if paths else ("no rows",)), worst)


def twice_sglang_speed(path: ModeledOp, device: Device) -> float:
    """The 2x-SGLang budgets' value over its limit: twice our time over SGLang's."""
    return _over(2.0 * path.time(device), path.sglang_time(device))


def budgets(
    paths: list[ModeledOp], counts: Mapping[str, LoopCount], devices: tuple[Device, ...] = DEVICES
) -> list[Verdict]:
    """The issue's budgets, each met or NOT met over the modeled rows."""
    markov = [p for p in paths if p.op == "markov_block"]
    verify_rows = [p for p in paths if p.op == "chain_verify"]
    sched = [p for p in paths if p.op.startswith("schedule_")]
    epilogues = [c for name, c in counts.items() if name.startswith("markov.epilogue.")]
    loops = loop_instructions(counts)
    effective = {c.name: markov_per_element(int(c.name.rsplit(".", 1)[1]), loops) for c in epilogues}
    epilogue_failures = tuple(f"{name}: {n:.0f}" for name, n in effective.items() if n > 25)
    return [
        _check(
            "Markov block <= 1.3x its floor at R >= 8",
            [p for p in markov if p.rows >= 8],
            lambda p, d: _over(p.time(d), 1.3 * p.floor(d)),
            devices,
        ),
        _check(
            "Markov block <= 1.6x its floor at R = 1",
            [p for p in markov if p.rows == 1],
            lambda p, d: _over(p.time(d), 1.6 * p.floor(d)),
            devices,
        ),
        Verdict(
            "Markov epilogue <= 25 SASS instructions per sampled element (outside the MMA;"
            " the chunk loop: statistics and the grouped sampler)",
            bool(epilogues) and not epilogue_failures,
            epilogue_failures or (() if epilogues else ("no epilogue loop counted",)),
            max(effective.values(), default=float("nan")) / 25,
        ),
        _check(
            "Markov block >= 2x faster than SGLang's path at R >= 8",
            [p for p in markov if p.rows >= 8],
            twice_sglang_speed,
            devices,
        ),
        _check(
            f"Markov block with the int8 W2 >= 2x faster than SGLang's path at R >= 8 ({INT8_TAU_NOTE})",
            [p for p in paths if p.op == "markov_block_int8" and p.rows >= 8],
            twice_sglang_speed,
            devices,
        ),
        _check(
            "Verification <= 1.3x reading the target logits once",
            verify_rows,
            lambda p, d: _over(p.time(d), 1.3 * p.floor(d)),
            devices,
        ),
        _check("Scheduler (one launch) under 10 us", sched, lambda p, d: p.time(d) / 10e-6, devices),
        _in_flight_verdict(counts),
    ]


def _in_flight_verdict(counts: Mapping[str, LoopCount]) -> Verdict:
    w2 = [f for f in staging_in_flight(counts) if ".w2_stage." in f.loop]
    failures = tuple(f"{f.loop}: {f.in_flight / 1024:.0f} KB" for f in w2 if f.in_flight < IN_FLIGHT_BUDGET)
    return Verdict(
        f"W2 staging >= {IN_FLIGHT_BUDGET // 1024} KB in flight per SM (one CTA per SM, r = {RANK})",
        bool(w2) and not failures,
        failures or (() if w2 else ("no W2 staging loop counted",)),
        max((IN_FLIGHT_BUDGET / max(f.in_flight, 1) for f in w2), default=float("nan")),
    )


PINNED = Path(__file__).resolve().parent / "cost_budgets_pinned.json"
PIN_SLACK = 0.02  # a change may move a budget's worst ratio by this much before the guard fails


def pin(verdicts: list[Verdict]) -> dict[str, float]:
    """Each budget's worst ratio, as ``--pin`` writes it: the design as it stands."""
    return {v.budget: round(v.worst, 4) for v in verdicts}


def guard(verdicts: list[Verdict], pinned: Mapping[str, float]) -> list[str]:
    """What got worse than the pinned design: a budget whose worst ratio grew past the pin by
    more than PIN_SLACK (a met budget: past 1), or a budget the pin does not know. Empty when
    nothing regressed. Budgets that are NOT met are held at their pinned ratio, so a later
    change cannot quietly undo the design while the budgets are still owed."""
    problems = []
    for v in verdicts:
        if v.budget not in pinned:
            problems.append(f"{v.budget}: not pinned (rerun with --pin)")
            continue
        limit = pinned[v.budget] * (1 + PIN_SLACK) if pinned[v.budget] > 1 else 1.0
        if not v.worst <= limit:
            problems.append(f"{v.budget}: worst {v.worst:.3f} > pinned {pinned[v.budget]:.3f}")
    return problems


# ---- tables --------------------------------------------------------------------------

PATH_HEADER = ["op", "V", "R", "g", "launches", "MB", "G thread-instr", "bound (H100)"] + [
    f"{d.name} {c}"
    for d in DEVICES
    for c in ("floor us", "ours us", "ours/floor", "SGLang us", "SGLang/ours")
]
LOOP_HEADER = [
    *("loop", "kernel", "source lines", "instr/iter", "per iter", "instr/unit", "in loop"),
    *sass_loops.OPCODE_CLASSES,
]


def _launch_cell(path: ModeledOp) -> str:
    """Launches, with how many are programmatic dependents and how many phases are handoffs."""
    extra = [f"{n} {what}" for n, what in ((path.dependents(), "PDL"), (path.handoffs(), "handoff")) if n]
    return f"{path.launches()} ({', '.join(extra)})" if extra else str(path.launches())


def path_cells(path: ModeledOp) -> list[str]:
    cells = [
        path.op,
        str(path.vocab) if path.vocab else "-",
        str(path.rows),
        str(path.gamma),
        _launch_cell(path),
        f"{path.bytes() / 1e6:.1f}",
        f"{path.instructions() / 1e9:.3f}",
        path.bound(H100),
    ]
    for device in DEVICES:
        floor, ours, theirs = path.floor(device), path.time(device), path.sglang_time(device)
        cells += [
            f"{floor * 1e6:.1f}" if floor else "-",
            f"{ours * 1e6:.1f}",
            f"{ours / floor:.2f}" if floor else "-",
            f"{theirs * 1e6:.1f}",
            f"{theirs / ours:.2f}",
        ]
    return cells


def loop_cells(count: LoopCount) -> list[str]:
    return [
        count.name,
        f"`{count.kernel}`",
        count.source,
        str(count.instructions),
        f"{count.per_iteration} {count.unit}",
        f"{count.per_item:.1f}",
        f"{count.coverage:.0%}",
        *(str(count.opcodes.get(c, 0)) for c in sass_loops.OPCODE_CLASSES),
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


BREAKDOWN_SHAPE = (129280, 256, 5)
BREAKDOWN_HEADER = ["op", "launch", "times", "MB each", "G thread-instr each", "memory us", "issue us"]


def breakdown(paths: list[ModeledOp], device: Device = H100) -> list[list[str]]:
    """Per distinct launch at BREAKDOWN_SHAPE: where the modeled time of each op goes."""
    vocab, rows, gamma = BREAKDOWN_SHAPE
    cells = []
    for path in paths:
        if (path.vocab or vocab, path.rows, path.gamma) != (vocab, rows, gamma):
            continue
        times: dict[str, int] = {}
        for launch in path.ours:
            times[launch.kernel] = times.get(launch.kernel, 0) + 1
        for kernel, n in times.items():
            launch = next(lc for lc in path.ours if lc.kernel == kernel)
            memory, issue = launch.terms(device)
            cells.append(
                [
                    path.op,
                    f"`{kernel}`",
                    str(n),
                    f"{launch.bytes / 1e6:.2f}",
                    f"{launch.instructions / 1e9:.3f}",
                    f"{memory * 1e6:.1f}",
                    f"{issue * 1e6:.1f}",
                ]
            )
    return cells


def markov_rare_lines(counts: Mapping[str, LoopCount]) -> list[str]:
    """What markov_block's rows cost per element: a sampled row (the chunk loop, the budgeted
    path), a greedy row (plus the out-of-line argmax scan) and a non-finite row (plus the rare
    path's function, its static size)."""
    loops = loop_instructions(counts)
    lines = ["Markov block per element (modeled, SASS static counts):", ""]
    for tile_v in (MARKOV_TILE,):
        if f"markov.epilogue.{tile_v}" not in loops:
            continue
        sampled = markov_per_element(tile_v, loops)
        greedy = loops.get(f"markov.greedy.{tile_v}", math.nan)
        rare = loops.get(f"markov.rare_call.{tile_v}", math.nan)
        mma = (
            loops.get(f"markov.mma.{tile_v}", math.nan) * 32 / (16 * MARKOV_WARP_COLUMNS)
        )  # a warp: 16 x 128
        peeled = peeled_mma_steps(loops, "markov", tile_v)
        lines.append(
            f"- {tile_v}-wide tiles: {sampled:.1f} instructions per sampled element (the chunk loop, on the"
            f" MMA's accumulators, less the {peeled:.0f} k16 steps nvcc peeled into it:"
            f" {loops[f'markov.epilogue.{tile_v}']:.1f} with them); the mma.sync k-loop {mma:.2f} per element"
            " and k16 step"
            f" ({mma * RANK / 16:.1f} at r = {RANK}); a greedy row adds {greedy:.1f} (out of line: the argmax"
            f" of its logits), a NaN / +inf row up to {rare:.1f} (the rare path's static size)"
        )
    if f"markov_int8.epilogue.{INT8_TILE}" in loops:
        w = INT8_TILE
        lines.append(
            f"- int8 W2 ({w}-wide tiles): {markov_per_element(w, loops, 'markov_int8'):.1f} instructions per"
            f" sampled element (the chunk loop, the scale multiply included, less its peeled k16 steps:"
            f" {loops[f'markov_int8.epilogue.{w}']:.1f} with them); widening the staged tile to bf16"
            f" {loops[f'markov_int8.widen.{w}']:.2f} per W2 element (once per CTA)"
        )
    return lines


def report(
    paths: list[ModeledOp], counts: Mapping[str, LoopCount], verdicts: list[Verdict], source: str
) -> str:
    """The markdown report: constants, per-loop counts, modeled table, budgets."""
    lines = [
        f"Modeled (no GPU), {datetime.date.today()}: `python benchmarks/cost_model.py`, SASS of {source}.",
        "Every time below is MODELED, not measured: the sum over launches of"
        " max(bytes from memory / bandwidth, bytes / L2 bandwidth, thread-instructions / issue rate) + the"
        " launch's boundary (the launch cost;"
        " for a programmatic dependent launch, PDL, the assumed dependent launch cost; for the second phase"
        " of one launch, an in-kernel handoff, the assumed handoff cost).",
        "",
        "Device constants:",
        *(f"- {d.source}" for d in DEVICES),
        "",
        "SASS loops (static count of one iteration, label to back-edge, nested loops excluded):",
        "",
        *_table(LOOP_HEADER, [loop_cells(c) for c in counts.values()]),
        "",
        "Modeled table (bf16 logits and weights, r = 256; Markov block: g positions, statistics form;"
        " verification: every row sampled and verified to g, "
        + "; ".join(f"{op}: {what}" for op, what in VERIFY_CASES.items())
        + "; SGLang: bytes and launches only, a lower bound):",
        "",
        *_table(PATH_HEADER, [path_cells(p) for p in paths]),
        "",
        "Notes: floor = the floor bytes at full bandwidth plus one launch (the Markov block: W2 and the"
        " base logits from memory every position; the L2 hits of its reversed positions can put it"
        " under that); ours/floor and SGLang/ours are ratios of modeled times.",
        *sorted({f"- {p.op}: {note}" for p in paths for note in p.notes}),
        *sorted({f"- {p.op}: launches: {p.launch_kinds()}" for p in paths}),
        "",
        f"Where the time goes (modeled, H100, V={BREAKDOWN_SHAPE[0]} R={BREAKDOWN_SHAPE[1]}"
        f" g={BREAKDOWN_SHAPE[2]}; the scheduler at R={BREAKDOWN_SHAPE[1]} g={BREAKDOWN_SHAPE[2]}):",
        "",
        *_table(BREAKDOWN_HEADER, breakdown(paths)),
        "",
        *markov_rare_lines(counts),
        "",
        f"Staging bytes in flight per SM (modeled from the loops' SASS opcodes; r = {RANK}, one CTA per SM):",
        "",
        *(f.line() for f in staging_in_flight(counts)),
        "",
        "Budgets (modeled):",
        *(v.line() for v in verdicts),
        "",
        boundary_sensitivity_line(paths, "handoff"),
        boundary_sensitivity_line(paths, "dependent"),
        "",
        "The 2x-SGLang budget at the floor and against the L2 assumptions (modeled):",
        *floor_reach_lines(paths),
        *l2_sensitivity_lines(paths),
    ]
    return "\n".join(lines)


_BOUNDARY_KINDS = {
    "handoff": ("an in-kernel handoff", lambda lc: lc.handoff, lambda: f"{HANDOFF_COST * 1e6:.2f} us"),
    "dependent": (
        "a programmatic dependent boundary",
        lambda lc: lc.dependent,
        lambda: f"{_DEPENDENT_LAUNCH * 1e6:.2f} us = {DEPENDENT_FRACTION} x {_LAUNCH * 1e6:.1f} us",
    ),
}


def boundary_break_even(paths: list[ModeledOp], kind: str, devices: tuple[Device, ...] = DEVICES) -> float:
    """The largest cost (s) of one boundary of ``kind`` ("handoff" or "dependent") at which every
    verification row with such a boundary meets its budget (<= 1.3x the floor), everything else as
    modeled; negative: none does; inf: no row has one."""
    _, has, _ = _BOUNDARY_KINDS[kind]
    worst = math.inf
    for path in paths:
        n = sum(has(lc) for lc in path.ours)
        if path.op != "chain_verify" or not n:
            continue
        for device in devices:
            rest = sum(max(lc.terms(device)) + (0.0 if has(lc) else lc.boundary(device)) for lc in path.ours)
            worst = min(worst, (1.3 * path.floor(device) - rest) / n)
    return worst


def boundary_sensitivity_line(
    paths: list[ModeledOp], kind: str, devices: tuple[Device, ...] = DEVICES
) -> str:
    """The verification budget's sensitivity to the assumed cost of one kind of boundary."""
    what, _, assumed_cost = _BOUNDARY_KINDS[kind]
    at = boundary_break_even(paths, kind, devices)
    assumed = f"assumed now {assumed_cost()}"
    if not math.isfinite(at):
        return f"Sensitivity (modeled): no verification row has {what} ({assumed})."
    if at < 0:
        return (
            f"Sensitivity (modeled): the verification budget is not met at any cost of {what}, even 0 us"
            f" ({assumed})."
        )
    return (
        f"Sensitivity (modeled): the verification budget holds at every row with {what} while it costs at"
        f" most {at * 1e6:.2f} us ({at / _LAUNCH:.2f} x the launch cost; {assumed})."
    )


def floor_speedup_over_sglang(
    paths: list[ModeledOp], op: str, devices: tuple[Device, ...] = DEVICES
) -> float:
    """The least SGLang time / floor over ``op``'s rows at R >= 8: the most any kernel that moves
    the floor bytes in one launch could be faster than SGLang's modeled path (nan: no rows)."""
    ratios = [p.sglang_time(d) / p.floor(d) for p in paths if p.op == op and p.rows >= 8 for d in devices]
    return min(ratios, default=float("nan"))


def floor_reach_lines(paths: list[ModeledOp], devices: tuple[Device, ...] = DEVICES) -> list[str]:
    """Whether the 2x-SGLang budget is reachable without L2 reuse: a kernel at its floor (every byte
    from memory every position) against SGLang."""
    lines = []
    for op, what in (("markov_block", "bf16 W2"), ("markov_block_int8", "int8 W2")):
        best = floor_speedup_over_sglang(paths, op, devices)
        if math.isnan(best):
            continue
        verdict = "reachable" if best >= 2.0 else "NOT reachable by a kernel that reads them all from memory"
        lines.append(
            f"- {op} ({what}): a kernel at its floor (W2 and the base logits from memory every position)"
            f" would be at least {best:.2f}x faster than SGLang's modeled path at every row with R >= 8:"
            f" 2x is {verdict}."
        )
    return lines


def sglang_speedup_holds(
    paths: list[ModeledOp], op: str, devices: tuple[Device, ...], **device_fields: float
) -> bool:
    """Whether every row of ``op`` with R >= 8 is at least 2x faster than SGLang's path on every
    device with ``device_fields`` replaced (e.g. ``l2_retained=0.8``)."""
    rows = [p for p in paths if p.op == op and p.rows >= 8]
    varied = tuple(replace(d, **device_fields) for d in devices)
    return _check(f"{op} >= 2x faster than SGLang's path", rows, twice_sglang_speed, varied).met


def l2_break_even(
    paths: list[ModeledOp],
    op: str,
    field_name: str,
    lo: float,
    hi: float,
    devices: tuple[Device, ...] = DEVICES,
) -> float | None:
    """The least value of the device field ``field_name`` in [lo, hi] (``l2_retained`` or
    ``l2_bandwidth``, the rest as modeled) at which ``op`` is 2x faster than SGLang at every row with
    R >= 8; None if not even at ``hi``."""
    if not sglang_speedup_holds(paths, op, devices, **{field_name: hi}):
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if sglang_speedup_holds(paths, op, devices, **{field_name: mid}) else (mid, hi)
    return hi


def l2_sensitivity_lines(paths: list[ModeledOp], devices: tuple[Device, ...] = DEVICES) -> list[str]:
    """What the 2x-SGLang budget needs of the two L2 assumptions: the least share of the L2 keeping W2
    with an unbounded L2 bandwidth, and the least L2 bandwidth with all of the L2 keeping it (each
    the other's most generous value, so both are necessary)."""
    lines = []
    for op, what in (("markov_block", "bf16 W2"), ("markov_block_int8", "int8 W2")):
        if not any(p.op == op for p in paths):
            continue
        if sglang_speedup_holds(paths, op, devices, l2_retained=0.0):
            lines.append(f"- {op} ({what}): 2x SGLang at every row with R >= 8 holds with no L2 reuse.")
            continue
        free = tuple(replace(d, l2_bandwidth=math.inf) for d in devices)
        whole = tuple(replace(d, l2_retained=1.0) for d in devices)
        retained = l2_break_even(paths, op, "l2_retained", 0.0, 1.0, free)
        bandwidth = l2_break_even(paths, op, "l2_bandwidth", 1e12, 100e12, whole)
        needs_share = (
            "no share of the L2 is enough"
            if retained is None
            else f"at least {retained:.2f} of the L2 must keep W2"
        )
        needs_bandwidth = (
            "no L2 bandwidth up to 100 TB/s is enough"
            if bandwidth is None
            else f"L2 must deliver at least {bandwidth / 1e12:.1f} TB/s"
        )
        lines.append(
            f"- {op} ({what}): for 2x SGLang at every row with R >= 8, {needs_share} between positions"
            f" (with an unbounded L2 bandwidth; assumed {L2_RETAINED}), and {needs_bandwidth} (with all of"
            f" the L2 keeping it; assumed {L2_BANDWIDTH / 1e12:.1f} TB/s)."
        )
    return lines


def markov_per_element(tile_v: int, loops: Mapping[str, float], prefix: str = "markov") -> float:
    """Instructions per sampled element of markov_block outside the MMA and the staging: the
    chunk loop's static count (statistics and the grouped sampler; no out-of-line path runs for a
    sampled row with finite logits) less the k16 steps nvcc peeled into it, each charged at the
    k-loop's cost per step (a thread's step over 16 x 128 outputs covers MARKOV_CHUNK_ELEMENTS of
    its elements per chunk)."""
    mma_step = loops.get(f"{prefix}.mma.{tile_v}", 0.0)
    return (
        loops[f"{prefix}.epilogue.{tile_v}"]
        - peeled_mma_steps(loops, prefix, tile_v) * mma_step / MARKOV_CHUNK_ELEMENTS
    )


PEELED_MMA_STEPS = "peeled_mma_steps"  # loop_instructions' entry: k16 steps in a Markov chunk loop


def peeled_mma_steps(loops: Mapping[str, float], prefix: str, tile_v: int) -> float:
    """The warp k16 steps of ``prefix``'s chunk loop (out of the k-loop): as its SASS counts them
    (loop_instructions), else 1, the step warp_bias_mma peels itself."""
    return loops.get(f"{prefix}.{PEELED_MMA_STEPS}.{tile_v}", 1.0)


def loop_instructions(counts: Mapping[str, LoopCount]) -> dict[str, float]:
    """Instructions per unit (element, pair, partial, ...) of each named loop: what the model uses;
    and for each Markov chunk loop on mma.sync tiles, ``<prefix>.peeled_mma_steps.<tile>``: the
    warp k16 steps (16 HMMA each) nvcc moved out of the k-loop into it."""
    out = {name: c.per_item for name, c in counts.items()}
    for name, c in counts.items():
        prefix, _, rest = name.partition(".")
        loop, _, width = rest.partition(".")
        if loop == "epilogue" and f"{prefix}.mma.{width}" in counts and c.opcodes.get("MMA", 0):
            out[f"{prefix}.{PEELED_MMA_STEPS}.{width}"] = c.opcodes["MMA"] / _MMA_SYNC_STEP[1]
    return out


def _csrc_revision() -> str:
    """The last commit that touched csrc/, '+ local changes' when the tree differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "log", "-1", "--format=%h", "--", "csrc"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "csrc"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "(no git)"
    return f"at {commit or '?'}" + (" + local changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="also write the report (markdown) to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 when a budget is NOT met")
    parser.add_argument("--extension", type=Path, help="read the SASS of this built extension instead")
    parser.add_argument(
        "--guard", action="store_true", help=f"exit 1 when a budget is worse than {PINNED.name} pins it"
    )
    parser.add_argument(
        "--pin", action="store_true", help=f"write each budget's worst ratio to {PINNED.name}"
    )
    args = parser.parse_args(argv)
    missing = sass_loops.missing_tools(from_extension=args.extension is not None)
    if missing:
        print("cost_model: missing " + ", ".join(missing), file=sys.stderr)
        return 2
    counts = sass_loops.count_loops(LOOPS, extension=args.extension)
    source = f"`{args.extension}`" if args.extension else f"csrc/ {_csrc_revision()} compiled now for sm_90a"
    paths = model(loop_instructions(counts))
    verdicts = budgets(paths, counts)
    text = report(paths, counts, verdicts, source)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    if args.pin:
        PINNED.write_text(json.dumps(pin(verdicts), indent=1) + "\n", encoding="utf-8")
    if args.guard:
        problems = guard(verdicts, json.loads(PINNED.read_text(encoding="utf-8")))
        for line in problems:
            print(f"cost_model: regressed: {line}", file=sys.stderr)
        if problems:
            return 1
    return 1 if args.check and not all(v.met for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
