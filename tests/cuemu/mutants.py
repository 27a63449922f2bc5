"""Mutation check of the emulator: plant known GPU bugs in copies of csrc/, build each copy for the
emulator and run kernel checks on it, under the default schedule and a race-exposing one. A bug
the emulator cannot see would pass; tests/cuemu/test_mutants.py requires every mutant to be caught.

    python tests/cuemu/mutants.py [NAME ...]      # a table: which schedule catches which mutant

Copies live in build/cuemu/mutants/<name>/csrc and share the object cache: a mutant recompiles
only the translation units that include the changed file.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

if __package__ in (None, ""):  # run as a script: make the package and the test helpers importable
    sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from cuemu import harness
from cuemu.build import CSRC, DEFAULT_OUT, build

SCHEDULES = ("forward", "greedy-reverse")


@dataclass(frozen=True)
class Mutant:
    """One planted bug: ``old`` (found exactly once in ``path``) becomes ``new``."""

    name: str
    path: str  # relative to csrc/
    old: str
    new: str
    bug: str  # what a GPU would do with it
    checks: tuple[str, ...]  # the kernel checks (CHECKS) that run on it; one must catch it
    caught_by: tuple[str, ...]  # the schedules under which it must be caught


MUTANTS = [
    Mutant(
        "schedule_scatter_before_scan",
        "schedule.cu",
        "count[mine + k] = first[k] + start;\n    }\n    __syncthreads();\n",
        "count[mine + k] = first[k] + start;\n    }\n",
        "keys are scattered to slots read from counters that other warps have not finished scanning",
        ("schedule",),
        SCHEDULES,
    ),
    Mutant(
        "schedule_no_syncwarp_before_advance",
        "schedule.cu",
        "        const uint32_t base = *slot;\n        __syncwarp();\n",
        "        const uint32_t base = *slot;\n",
        "a digit group's lowest lane advances the counter before the group's other lanes have read it",
        ("schedule",),
        SCHEDULES,
    ),
    Mutant(
        "schedule_match_on_the_whole_key",
        "schedule.cu",
        "__match_any_sync(0xffffffffu, digit)",
        "__match_any_sync(0xffffffffu, static_cast<uint32_t>(key[i] >> 32))",
        "__match_any_sync groups lanes by the whole key, not the pass's digit: ranks collide",
        ("schedule",),
        SCHEDULES,
    ),
    Mutant(
        "markov_tiles_in_one_order",
        "markov_block.cu",
        "const unsigned tile = (args.first_position + k) % 2 ? gridDim.x - 1 - blockIdx.x : blockIdx.x;",
        "const unsigned tile = blockIdx.x;",
        "every position reads W2 in the same tile order: once W2 is larger than L2, every read misses",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_tile_order_by_position_in_the_call",
        "markov_block.cu",
        "const unsigned tile = (args.first_position + k) % 2 ?",
        "const unsigned tile = k % 2 ?",
        "a block drafted one position per call (first_position = k) reads W2 in one order every call",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_persistent_launch_not_cooperative",
        "include/dspark_sgl/cooperative_launch.cuh",
        "attribute.val.cooperative = 1;",
        "attribute.val.cooperative = 0;",
        "the one-launch block without the cooperative attribute: its CTAs wait for merges that CTAs not"
        " yet resident must feed (a deadlock once the grid has more CTAs than fit at once)",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_persistent_skips_the_merge_wait",
        "markov_block.cu",
        "        if (threadIdx.x == 0) wait_for_count(ws.merged, k * chunks);\n",
        "",
        "position k of the one-launch block reads the previous tokens (and reuses the partial slots)"
        " before position k - 1 is merged",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_persistent_walks_one_order",
        "markov_block.cu",
        "const bool forward = (args.first_position + k) % 2 == 0;",
        "const bool forward = true;",
        "every position of the one-launch block walks a CTA's tiles forward: the tile kept in shared"
        " memory is not the one each position starts on",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_persistent_last_tile_read_normally",
        "markov_block.cu",
        "j == owned - 1 ? L2Priority::kEvictFirst : L2Priority::kNormal",
        "L2Priority::kNormal",
        "the tile kept in shared memory for the next position is read with L2's normal priority: its lines"
        " take the L2 room of the tiles the next position reads from L2",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_persistent_first_tile_never_staged",
        "markov_block.cu",
        "      if (k == 0 || j > 0)\n",
        "      if (j > 0)\n",
        "position 0 of the one-launch block computes its first tile from shared memory never staged",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_missing_syncthreads",
        "markov_block.cu",
        "(w2s, es, bias_s, layout, chunk_rows);\n      __syncthreads();",
        "(w2s, es, bias_s, layout, chunk_rows);",
        "the float32 path's bias tile is read before every warp has written its part",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_divergent_shuffle",
        "markov_block.cu",
        "  const float m = row_max<kLaneStep, kRowThreads>(thread_logits<BT, WT, kPlain>(\n"
        "      l, bias, base, count, args.softcap, args.logits_dtype, args.logits_out, at));",
        "  float m = thread_logits<BT, WT, kPlain>(l, bias, base, count, args.softcap,"
        " args.logits_dtype, args.logits_out, at);\n  if (active) m = row_max<kLaneStep, kRowThreads>(m);",
        "rows past the end skip a full-mask shuffle: a hang or garbage on a GPU",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_mma_a_registers_swapped",
        "include/dspark_sgl/markov_tile.cuh",
        "shared_address(e + (p + 8 * (m & 1)) * layout.ld + 8 * (m >> 1))",
        "shared_address(e + (p + 8 * (m >> 1)) * layout.ld + 8 * (m & 1))",
        "ldmatrix's second and third A matrices exchanged: mma reads a2, a3 (row g + 8) where a4, a5"
        " (k + 8) are",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_mma_b_row_of_another_lane",
        "include/dspark_sgl/markov_tile.cuh",
        "layout.w2_row(col0 + 32 * (p >> 1) + 2 * (m >> 1) + (p & 1))",
        "layout.w2_row(col0 + 32 * (p & 3) + 2 * (m >> 1) + (p >> 2))",
        "a lane addresses the W2 row of another n-position: the accumulators hold other columns than the"
        " epilogue's",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_mma_c_rows_swapped",
        "markov_block.cu",
        "bias[2 * j] = acc[j][2 * h], bias[2 * j + 1] = acc[j][2 * h + 1];",
        "bias[2 * j] = acc[j][2 - 2 * h], bias[2 * j + 1] = acc[j][3 - 2 * h];",
        "the accumulators of rows g and g + 8 exchanged (c0, c1 are row g, c2, c3 row g + 8)",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_w2_staged_without_the_skew",
        "markov_block.cu",
        "[rows = layout](int i) { return size_t(rows.w2_row(i)); }",
        "[rows = layout](int i) { return size_t(i) * rows.ld; }",
        "W2 staged in linear rows while the MMA reads the skewed ones: rows past 32 read other columns",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_mma_ld_not_16_bytes",
        "include/dspark_sgl/markov_tile.cuh",
        "ld(k_padded + 8)",
        "ld(k_padded + 4)",
        "a row stride that is not a multiple of 16 bytes (misaligned cp.async destinations and ldmatrix"
        " rows)",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_choice_from_the_gumbel_word",
        "markov_block.cu",
        "bits_to_unit_float(second ? noise.choice1 : noise.choice0)",
        "bits_to_unit_float(second ? noise.gumbel1 : noise.gumbel0)",
        "the within-group uniform u_C is the group's Gumbel word: the choice correlates with the key",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_draw_one_column_late",
        "markov_block.cu",
        "const int i = min((second ? kGroupColumns : 0) + first_above(group, target, logits, logit),"
        " count - 1);",
        "const int i = min((second ? kGroupColumns : 0)"
        " + min(first_above(group, target, logits, logit) + 1, kGroupColumns - 1), count - 1);",
        "the running sum is read one column off: the token after the crossing is drawn",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_group_key_without_gumbel",
        "markov_block.cu",
        "group_gumbel(noise.gumbel0));\n"
        "    const float key1 = __fadd_rn(__fmaf_rn(fast_log2(s1), kLn2, lse_base),"
        " group_gumbel(noise.gumbel1));",
        "0.0f);\n    const float key1 = __fadd_rn(__fmaf_rn(fast_log2(s1), kLn2, lse_base), 0.0f);",
        "the group keys lose their Gumbel draw: the group of largest mass always wins",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_groups_of_32",
        "markov_block.cu",
        "constexpr int kGroupColumns = 16; ",
        "constexpr int kGroupColumns = 32; ",
        "groups of 32 columns: other keys, other noise, another draw than the reference's",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_straddling_groups_take_one_blocks_words",
        "markov_block.cu",
        "  const Philox4x32 b = next_noise_block(key, row, j / 2 + 1);\n"
        "  return GroupNoise{a.z, a.w, b.x, b.y};\n}\n\n"
        "__device__ __forceinline__ GroupNoise group_noise(DrawKey key",
        "  return GroupNoise{a.z, a.w, a.x, a.y};\n}\n\n"
        "__device__ __forceinline__ GroupNoise group_noise(DrawKey key",
        "a shard starting at an odd group (vocab_start % 32 == 16) draws its second group from the"
        " first block",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_fast_path_at_any_finite_offset",
        "markov_block.cu",
        "!(fabsf(mc) < kFastExpOffsetLimit)",
        "!(fabsf(mc) < INFINITY)",
        "a tiny temperature keeps ordinary logits on the fast path, whose terms 2^(l c2 - mc) overflow"
        " (|m c2 - mc| up to ulp(mc) / 2): a +inf key at a finite logit wins the row",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_ticket_not_reset",
        "markov_block.cu",
        "  if (threadIdx.x == 0) *ticket = 0;\n",
        "",
        "the last CTA leaves its ticket counted: the next position (or graph replay) never merges",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_merge_before_the_last_cta",
        "markov_block.cu",
        "1u) == tiles - 1;",
        "1u) == tiles - 2;",
        "the second-to-last CTA merges the chunk: one tile's partial is not written yet",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "markov_position_without_the_wait",
        "markov_block.cu",
        "  wait_for_primary_grid();\n  allow_dependent_launch();\n",
        "  allow_dependent_launch();\n",
        "position k + 1 gathers W1[x_k] (and writes its partials and tickets) without waiting for position"
        " k: it reads the token before position k has drawn it",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "verify_recompute_bad_wmma_ldm",
        "include/dspark_sgl/markov_tile.cuh",
        "ld = k_padded + 8;",
        "ld = k_padded + 4;",
        "a WMMA leading dimension that is not a multiple of 16 bytes (misaligned fragment loads)",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "verify_resample_missing_syncthreads",
        "chain_verify.cu",
        "      bias_tile<WT, kTileV>(tile.w2, tile.e, tile.bias, layout);\n      __syncthreads();",
        "      bias_tile<WT, kTileV>(tile.w2, tile.e, tile.bias, layout);",
        "the recomputed draft rows of the resample are read before they are complete",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "stage_rows_waits_for_older_groups_only",
        "include/dspark_sgl/markov_tile.cuh",
        "cp_async_wait<0>();",
        "cp_async_wait<1>();",
        "the staged tile is read while its cp.async group is in flight (wait_group 1 leaves it pending)",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "stage_rows_copies_never_committed",
        "include/dspark_sgl/markov_tile.cuh",
        "    cp_async_commit();\n    cp_async_wait<0>();",
        "    cp_async_wait<0>();",
        "the copies are in no group, so the wait does not wait for them: the recompute reads a stale tile",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "verify_gumbel_max_too_small",
        "chain_verify.cu",
        "constexpr float kGumbelMax = 16.64f;",
        "constexpr float kGumbelMax = 2.0f;",
        "the bonus draw skips columns whose Gumbel noise could still win: tokens the reference never draws",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "verify_uniform_floor_in_wrong_units",
        "chain_verify.cu",
        "kLog2e)), 16777152.0f);",
        "kLog2e)), 33554304.0f);",
        "the uniform bound is scaled by 2^25, not 2^24: uniforms whose Gumbel value could still win are"
        " taken as below it and their columns skipped",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "philox_interleaved_keys_bumped_per_block",
        "include/dspark_sgl/philox.cuh",
        "    for (int n = 0; n < N; ++n) ctr[n] = philox_round(ctr[n], k0, k1);\n    k0 += kPhiloxW0;",
        "    for (int n = 0; n < N; ++n) ctr[n] = philox_round(ctr[n], k0, k1), k0 += kPhiloxW0;\n",
        "blocks computed together advance k0 once per block instead of once per round: with two or"
        " more, every block draws other numbers than philox_block",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "verify_rescan_other_columns",
        "chain_verify.cu",
        "    scan_exact<T, kG>(row, slab, t, bonus, noise, stats, argmax, best);",
        "    scan_exact<T, 1>(row, slab, t, bonus, noise, stats, argmax, best);",
        "the exact NaN/inf rescan walks other columns than the thread's fast scan: a NaN is lost",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "verify_ticket_not_reset",
        "chain_verify.cu",
        "  pass1_tickets(args)[row] = 0;  // every CTA of this request has taken its ticket\n",
        "",
        "the next launch on the same counters never finds its last CTA: no acceptance test, no tokens",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "verify_rejected_count_not_raised",
        "chain_verify.cu",
        "atomicAdd(merged, 1u + (sampled && rejected ? kRejectedUnit : 0u));",
        "atomicAdd(merged, 1u);",
        "pass 2 sees nothing rejected and exits: rejected rows keep no correction token",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "verify_merged_word_reset_by_the_last_merger",
        "chain_verify.cu",
        " && !pass_2_resets) *merged = 0;",
        ") *merged = 0;",
        "the last merger resets the merged-request word although a pass 2 still reads it: a split pass 2"
        " sees nothing rejected, a fused one waits for a count that is gone",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "verify_accept_missing_syncthreads",
        "chain_verify.cu",
        "    s_accept[j] = accept;\n  }\n  __syncthreads();\n",
        "    s_accept[j] = accept;\n  }\n",
        "warp 0 ballots over acceptance bits other warps have not written yet",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "markov_int8_scale_of_the_wrong_column",
        "markov_block.cu",
        "acc[j][0] = __fmul_rn(acc[j][0], s.x), acc[j][1] = __fmul_rn(acc[j][1], s.y);",
        "acc[j][0] = __fmul_rn(acc[j][0], s.y), acc[j][1] = __fmul_rn(acc[j][1], s.x);",
        "an int8 W2's dot products scaled by a neighbouring vocabulary row's scale",
        ("markov_int8",),
        SCHEDULES,
    ),
    Mutant(
        "markov_int8_widening_without_a_barrier",
        "include/dspark_sgl/markov_int8.cuh",
        "    __syncthreads();  // every int8 byte of the batch's rows is read before any is overwritten\n",
        "",
        "a thread writes widened W2 rows over int8 bytes that other threads have not read yet",
        ("markov_int8",),
        SCHEDULES,
    ),
    Mutant(
        "markov_int8_widening_from_the_first_rows",
        "include/dspark_sgl/markov_int8.cuh",
        "  for (int hi = kTileV; hi > 0; hi -= batch_rows) {  // int8 W2 widening, from the last rows\n"
        "    const int lo = hi - batch_rows;",
        "  for (int top = batch_rows; top - batch_rows < kTileV; top += batch_rows) {\n"
        "    const int hi = min(top, kTileV), lo = top - batch_rows;",
        "the 16-bit rows widened first land on int8 rows not yet read (the in-place order reversed)",
        ("markov_int8",),
        SCHEDULES,
    ),
    Mutant(
        "markov_int8_widening_drops_the_sign_bit",
        "include/dspark_sgl/markov_int8.cuh",
        "sub_pair_rn<WT>(lo & 0xff7fff7fu, lo & 0xff80ff80u)",
        "sub_pair_rn<WT>(lo & 0xff7fff7fu, lo & 0xff00ff00u)",
        "the bf16 widening subtracts 128 for every byte: negative int8 W2 values come out 128 too high",
        ("markov_int8",),
        SCHEDULES,
    ),
    Mutant(
        "markov_int8_widening_swaps_a_pair",
        "include/dspark_sgl/markov_int8.cuh",
        "__byte_perm(word, high, 0x4140)",
        "__byte_perm(word, high, 0x4041)",
        "the byte permute puts W2 values k and k + 1 (k = 0 mod 4) in each other's place",
        ("markov_int8",),
        SCHEDULES,
    ),
    Mutant(
        "verify_pass_2_without_the_wait",
        "chain_verify.cu",
        "        wait_for_count(global_counter(args, kMergedRequests), "
        "static_cast<int32_t>(args.rows), kMergedMask));",
        "        *global_counter(args, kMergedRequests));",
        "pass 2 reads the rejected count and the stop rows while a request may not be merged yet: "
        "its rejected rows keep no correction token",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "verify_split_pass_2_without_the_wait",
        "chain_verify.cu",
        "    wait_for_primary_grid();  // pass 1 complete: the merged-request word and the stop rows are"
        " final\n",
        "",
        "the split pass 2 (statistics form at R > 32, a programmatic dependent) reads the rejected count "
        "and the stop rows before pass 1 has written them",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "verify_pass_2_waits_for_one_request_too_many",
        "chain_verify.cu",
        "static_cast<int32_t>(args.rows), kMergedMask));",
        "static_cast<int32_t>(args.rows) + 1, kMergedMask));",
        "pass 2 waits for a merge that never comes (a hang on a GPU): the emulator must fault, not hang",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "verify_pass_2_waits_on_the_whole_word",
        "chain_verify.cu",
        "static_cast<int32_t>(args.rows), kMergedMask));",
        "static_cast<int32_t>(args.rows)));",
        "pass 2 compares the whole merged-request word with R: the first rejected request's merge (2^16)"
        " ends the wait while other requests are not merged",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "verify_merged_word_not_reset",
        "chain_verify.cu",
        "    *global_counter(args, kMergedRequests) = 0;\n",
        "",
        "the merged-request word survives the launch: the next launch's pass 2 stops waiting at once"
        " (and sees the old rejections)",
        ("verify",),
        SCHEDULES,
    ),
    Mutant(
        "dependent_launch_wait_does_nothing",
        "include/dspark_sgl/dependent_launch.cuh",
        "  ::cuemu::grid_dependency_wait();\n",
        "",
        "griddepcontrol.wait compiled to nothing: every dependent reads its primary's output while the "
        "primary may still run",
        ("markov",),
        SCHEDULES,
    ),
    Mutant(
        "block_merge_missing_syncthreads",
        "include/dspark_sgl/common.cuh",
        "  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = value;\n  __syncthreads();",
        "  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = value;",
        "thread 0 merges the per-warp partials before the other warps have stored them",
        ("markov", "verify"),
        ("forward",),  # greedy-reverse runs warp 0, the reader, last: the writes are all done
    ),
]
BY_NAME = {m.name: m for m in MUTANTS}


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or ["outputs differ"])[0]


def _check_schedule() -> list[str]:
    from test_gpu_kernels import SCHEDULER_MODES

    from dspark_sgl import _dispatch

    failures = []
    for seed in range(2):
        gen = torch.Generator().manual_seed(seed)
        conf, stale = torch.rand(256, 16, generator=gen), torch.rand(256, 16, generator=gen)
        for mode in ("async_prune", "topk_int"):
            ours = SCHEDULER_MODES[mode](conf, stale)
            with _dispatch.forced_reference():
                ref = SCHEDULER_MODES[mode](conf, stale)
            if not torch.equal(ours, ref):
                failures.append(f"{mode} seed {seed}: lengths differ")
    return failures


def _check_markov() -> list[str]:
    """The Markov block's cases on one worker thread: a launch whose blocks wait for each other
    deadlocks there unless it is cooperative (every block at once)."""
    from dspark_sgl import _dispatch

    with _dispatch.environ_setting("CUEMU_WORKERS", "1"):
        return _markov_cases() + _markov_tile_order() + _markov_persistent_staging()


def _markov_cases() -> list[str]:
    from test_gpu_kernels import assert_blocks_match, draft, markov_case

    from dspark_sgl import _dispatch, markov

    failures = []

    def compare(case: dict, label: str) -> None:
        ours = draft(case, keep_logits=True)
        with _dispatch.forced_reference():
            ref = draft(case, keep_logits=True)
        try:
            assert_blocks_match(ours, ref, case["temperature"])
        except (AssertionError, IndexError) as exc:  # IndexError: a garbage token id
            failures.append(f"{label}: {_first_line(exc)}")

    # Position 0's logits far above position 1's (each position's statistics start afresh).
    case = markov_case(torch.device("cpu"), 4, 2, 1100, 64, hidden=32)
    case["base_logits"][:, 0] += 64
    compare(case, "position 0 far above position 1")
    # A shard starting at group 17: each thread's two groups lie in two Philox blocks.
    case = markov_case(torch.device("cpu"), 12, 1, 700, 64)
    head = markov.VanillaMarkovHead(case["w1"], case["w2"]).shard(272, 700)
    shard_args = (case["base_logits"][..., 272:], case["anchor"], head, case["temperature"])
    ours = markov.sample_block_with_head(*shard_args, seed=7, offset=3)
    with _dispatch.forced_reference():
        ref = markov.sample_block_with_head(*shard_args, seed=7, offset=3)
    try:
        assert_blocks_match(ours, ref, case["temperature"], vocab_start=272)
    except (AssertionError, IndexError) as exc:
        failures.append(f"shard at 272: {_first_line(exc)}")
    # 16-bit: one warp of one chunk; three warps (the last part-filled); two chunks of 64 and 6 rows.
    # float32: 64-wide tiles, 2 chunks, 65 tiles (two warps reduce)
    for rows, vocab, wdtype in (
        (3, 1100, torch.bfloat16),
        (40, 1100, torch.bfloat16),
        (70, 700, torch.float16),
        (40, 4099, torch.float32),
    ):
        case = markov_case(torch.device("cpu"), rows, 3, vocab, 64, wdtype=wdtype, hidden=32)
        compare(case, f"R={rows} {wdtype}")
    # A tiny temperature: x = l / T stays finite, m log2(e) / T is far beyond 2^30.
    case = markov_case(torch.device("cpu"), 4, 1, 1100, 64)
    case["temperature"] = torch.full((4,), 1e-36)
    compare(case, "T = 1e-36")
    # One launch per position: the same kernel body behind programmatic dependent launches.
    with _dispatch.environ_setting(markov.PERSISTENT_ENV, "0"):
        case = markov_case(torch.device("cpu"), 40, 3, 1100, 64, hidden=32)
        compare(case, "one launch per position, R=40")
    return failures


def _markov_tile_order() -> list[str]:
    """The W2 tile each block stages: its own index at even Philox positions, reversed at odd ones,
    in a whole block and one position per call."""
    from test_gpu_kernels import markov_case

    from dspark_sgl import _dispatch

    case = markov_case(torch.device("cpu"), 3, 3, 1100, 64)
    tiles = list(range(5))
    expected = {0: [tiles, tiles[::-1], tiles], 1: [tiles[::-1]], 2: [tiles]}
    seen = harness.markov_tile_orders(_dispatch._extension, case, first_positions=(1, 2))
    return [
        f"tile order at first_position {k}: {seen[k]}, not {expected[k]}"
        for k in expected
        if seen[k] != expected[k]
    ]


def _markov_persistent_staging() -> list[str]:
    """One cooperative launch on 2 multiprocessors (r = 256, one CTA each, 5 tiles): the tiles each CTA
    stages (each position's first tile only at position 0), and the outputs."""
    from test_gpu_kernels import assert_blocks_match, draft, markov_case

    from dspark_sgl import _dispatch

    with _dispatch.environ_setting("CUEMU_SMS", "2"):
        case = markov_case(torch.device("cpu"), 3, 3, 1100, 256)
        staged = harness.markov_staged_tiles(_dispatch._extension, case)[0]
        ours = draft(case, keep_logits=True)
    n, f = False, True  # normal, evict first
    expected = [
        {0: [(0, n), (2, n), (4, f), (2, n), (0, f), (2, n), (4, f)], 1: [(1, n), (3, f), (1, f), (3, f)]}
    ]
    failures = [f"one-launch staging {staged}, not {expected}"] if staged != expected else []
    with _dispatch.forced_reference():
        ref = draft(case, keep_logits=True)
    try:
        assert_blocks_match(ours, ref, case["temperature"])
    except (AssertionError, IndexError) as exc:
        failures.append(f"one launch on 2 SMs: {_first_line(exc)}")
    return failures


def _check_markov_int8() -> list[str]:
    from test_kernel_markov_int8 import assert_int8_blocks_match, draft_int8, int8_case

    from dspark_sgl import _dispatch

    failures = []
    # one warp; three warps (fp16); rank 200: byte-by-byte staging
    for rows, vocab, rank, wdtype in (
        (3, 1100, 64, torch.bfloat16),
        (40, 1100, 64, torch.float16),
        (5, 700, 200, torch.bfloat16),
    ):
        case = int8_case(torch.device("cpu"), rows, 3, vocab, rank, wdtype=wdtype, seed=rows)
        ours = draft_int8(case)
        with _dispatch.forced_reference():
            ref = draft_int8(case)
        try:
            assert_int8_blocks_match(ours, ref, case)
        except AssertionError as exc:
            failures.append(f"int8 W2 R={rows} r={rank} {wdtype}: {_first_line(exc)}")
    return failures


def _check_verify() -> list[str]:
    from kernel_backend import Backend, counting_launches
    from test_gpu_kernels import accepting_case, assert_verify_matches, counters_at_rest, verify_case

    from dspark_sgl import _checks, _dispatch, verify

    backend = Backend("cuemu", torch.device("cpu"), full=False)
    failures = []

    def check(what: str, target, side, block, lens, temperature) -> None:
        try:
            for parked in (None, harness.verify_merge_item(target)):
                # the second launch runs on the counters the first one left
                with harness.parked_item(-1 if parked is None else parked):
                    for _ in range(2):
                        assert_verify_matches(backend, target, side, block, lens, temperature)
                        assert counters_at_rest(), "counters not zero after the launch"
        except (AssertionError, IndexError) as exc:  # IndexError: a garbage token id
            failures.append(f"{what} {type(side).__name__}: {_first_line(exc) or 'outputs differ'}")

    with counting_launches(backend.launches):
        # scalar columns (V % 8 != 0), 16-byte groups (V = 1024); rows partly rejected
        for rows, gamma, vocab in ((8, 5, 1100), (40, 3, 1001), (12, 4, 1024)):
            case, block, target, lens = verify_case(backend.device, rows, gamma, vocab)
            for side in (block.stats, block.logits):
                check(f"R={rows} V={vocab}", target, side, block, lens, case["temperature"])
        # r = 256 at R > 32: pass 2 in a second launch (a programmatic dependent)
        case, block, target, lens = verify_case(backend.device, 40, 3, 700, rank=256)
        check("R=40 r=256 (two launches)", target, block.stats, block, lens, case["temperature"])
        # only the last row rejected: its merge comes last when its item is parked
        case, block, target, lens = accepting_case(
            backend, 5, 3, 700, reject_at=[None] * 4 + [1], greedy_every=17
        )
        for side in (block.stats, block.logits):
            check("last row rejected", target, side, block, lens, case["temperature"])
        # every draft accepted at a high temperature: every sampled row's bonus, every column a candidate
        case, block, target, lens = accepting_case(backend, 16, 3, 1024, greedy_every=17)
        check("bonus T=8", target, block.logits, block, lens, torch.full((16,), 8.0))
        # every draft accepted at T = 1, one CTA a row and position (pass 1 sized for one multiprocessor):
        # 8 groups of 4 columns a thread (fp32), 4 of 8 (bf16: two Philox blocks a group), the later
        # ones tested against a running best
        case, block, target, lens = accepting_case(backend, 16, 3, 8192, greedy_every=17)
        sms, _dispatch.multiprocessor_count = _dispatch.multiprocessor_count, lambda device: 1
        try:
            check("bonus, several groups a thread", target, block.logits, block, lens, torch.ones(16))
            check(
                "bonus, several groups a thread, bf16",
                target.bfloat16(),
                block.logits.bfloat16(),
                block,
                lens,
                torch.ones(16),
            )
        finally:
            _dispatch.multiprocessor_count = sms
        # a NaN in a bonus row (value checks off): the first NaN is drawn (the exact rescan)
        target[:, 3, 100:116] = float("nan")
        with _checks.trusted_values():
            acc, out = verify.chain_verify(
                target, block.logits, block.tokens, lens, torch.ones(16), seed=1, offset=1
            )
        if not bool((acc == 3).all() and (out[:, 3] == 100).all()):
            failures.append("bonus row with a NaN: the first NaN is not drawn")
    return failures


CHECKS: dict[str, Callable[[], list[str]]] = {
    "schedule": _check_schedule,
    "markov": _check_markov,
    "markov_int8": _check_markov_int8,
    "verify": _check_verify,
}


def mutant_csrc(mutant: Mutant, root: Path = DEFAULT_OUT / "mutants") -> Path:
    """A copy of csrc/ with ``mutant`` planted (rewritten only if it changed)."""
    work = root / mutant.name / "csrc"
    text = (CSRC / mutant.path).read_text()
    if text.count(mutant.old) != 1:
        raise ValueError(f"{mutant.name}: the pattern is not found exactly once in csrc/{mutant.path}")
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(CSRC, work)
    (work / mutant.path).write_text(text.replace(mutant.old, mutant.new))
    return work


def build_mutants(mutants: list[Mutant], jobs: int | None = None) -> dict[str, Path]:
    """Build every mutant (the changed units compile in parallel); name -> module path."""
    build(DEFAULT_OUT, jobs=jobs)  # the unchanged units, once
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        futures = {m.name: pool.submit(build, DEFAULT_OUT, mutant_csrc(m), "g++", 1) for m in mutants}
        return {name: f.result() for name, f in futures.items()}


def run_check(module: ModuleType, check: str, schedule: str) -> list[str]:
    """Failures of ``check`` on ``module`` under ``schedule`` (a launch fault is one failure)."""
    from dspark_sgl import _dispatch

    with _dispatch.environ_setting("CUEMU_SCHEDULE", schedule):
        try:
            with harness.emulated(module):
                try:
                    failures = CHECKS[check]()
                except RuntimeError as exc:  # a launch the emulator faulted
                    failures = [f"launch failed: {_first_line(exc)}"]
                except ValueError as exc:  # a kernel's output rejected as the next kernel's input
                    failures = [f"bad output: {_first_line(exc)}"]
                fault = harness.last_fault(module)
                if fault:
                    failures.append(f"emulator fault: {fault}")
        finally:
            harness.reset(module)
    return failures


def main(names: list[str]) -> int:
    torch.set_num_threads(1)
    mutants = [BY_NAME[n] for n in names] if names else MUTANTS
    paths = build_mutants(mutants)
    baseline = harness.load()
    missed = 0
    for check in sorted({c for m in mutants for c in m.checks}):
        for schedule in SCHEDULES:
            clean = run_check(baseline, check, schedule)
            print(f"unmutated {check:9s} {schedule:15s} {'FAILS: ' + clean[0] if clean else 'passes'}")
    for m in mutants:
        module = harness.load(paths[m.name])
        print(f"{m.name}: {m.bug}")
        for schedule in SCHEDULES:
            failures = [f for check in m.checks for f in run_check(module, check, schedule)]
            missed += schedule in m.caught_by and not failures
            print(f"  {schedule:15s} {'CAUGHT: ' + failures[0][:200] if failures else 'missed'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
