"""The ``backend`` fixture itself: ``ran`` counts real launches, the emulator stands in only
inside the test, and the emulated extension is the one built from this checkout's csrc/."""

from __future__ import annotations

import pytest
import torch

from cuemu import harness
from cuemu.build import CSRC, DEFAULT_OUT, build
from dspark_sgl import _dispatch, rng


def _uniform(backend):
    rows = torch.arange(3, device=backend.device)
    return rng.uniform(1, 2, rng.Stream.DRAFT, rows, torch.zeros_like(rows), 16)


def test_ran_counts_launches_not_availability(backend):
    with _dispatch.forced_reference():
        _uniform(backend)
    assert not backend.ran("philox_uniform")
    _uniform(backend)
    assert backend.ran("philox_uniform") and not backend.ran("markov_block")


def test_the_emulator_stands_in_only_inside_the_test(emulated_extension):
    assert _dispatch.kernel_path("philox_uniform", torch.device("cpu"))[0] is False
    with harness.emulated(emulated_extension):
        assert _dispatch.kernel_path("philox_uniform", torch.device("cpu")) == (
            True,
            "emulated dspark_sgl._C.philox_uniform",
        )
        assert _dispatch.kernel_path("philox_uniform", torch.device("meta"))[0] is False
    assert _dispatch.kernel_path("philox_uniform", torch.device("cpu"))[0] is False


def test_the_emulated_extension_is_this_checkouts_build(emulated_extension):
    assert emulated_extension.__file__ == str(build(DEFAULT_OUT, CSRC))
    assert emulated_extension.cuda_archs == "cuemu"


def test_chain_verify_is_one_launch_whose_pass_2_waits_for_the_last_merge(emulated_extension):
    """Both forms are one launch (no programmatic dependent, nothing left queued). With the last
    request's merge held back (its work item parked), pass 2's CTAs run up to their wait first and
    the tokens are still the reference's; the counters are left zero."""
    from kernel_backend import Backend, counting_launches
    from test_gpu_kernels import accepting_case, assert_verify_matches, counters_at_rest

    backend = Backend("cuemu", torch.device("cpu"), full=False)
    runtime = emulated_extension._cuemu
    with harness.emulated(emulated_extension), counting_launches(backend.launches):
        case, block, target, lens = accepting_case(backend, 6, 3, 256, reject_at=[0, 1, 2, None, 1, 0])
        for side in (block.logits, block.stats):
            for item in (-1, harness.verify_merge_item(target)):
                with harness.parked_item(item):
                    before = runtime.cuemu_early_dependent_launches()
                    acc, _ = assert_verify_matches(backend, target, side, block, lens, case["temperature"])
                    assert runtime.cuemu_early_dependent_launches() == before
                    assert runtime.cuemu_queued_launches() == 0
                    assert acc.tolist() == [0, 1, 2, 3, 1, 0]
                    assert counters_at_rest()
    assert harness.last_fault(emulated_extension) == ""


def test_chain_verify_splits_where_the_recompute_tile_would_cost_pass_1_occupancy(emulated_extension):
    """The statistics form at r = 256 and R > 32 (the 128-wide recompute tile) runs pass 2 as a programmatic
    dependent of pass 1, whose blocks run up to their wait before pass 1 (the emulator's adversarial
    order); the form with full draft logits stays one launch. Both give the reference's tokens."""
    from kernel_backend import Backend, counting_launches
    from test_gpu_kernels import accepting_case, assert_verify_matches, counters_at_rest

    backend = Backend("cuemu", torch.device("cpu"), full=False)
    runtime = emulated_extension._cuemu
    rows = 40
    reject_at = [r % 4 if r % 5 else None for r in range(rows)]
    with harness.emulated(emulated_extension), counting_launches(backend.launches):
        case, block, target, lens = accepting_case(backend, rows, 3, 256, reject_at=reject_at, rank=256)
        for side, dependents in ((block.stats, 1), (block.logits, 0)):
            before = runtime.cuemu_early_dependent_launches()
            acc, _ = assert_verify_matches(backend, target, side, block, lens, case["temperature"])
            assert runtime.cuemu_early_dependent_launches() - before == dependents
            assert runtime.cuemu_queued_launches() == 0
            assert acc.tolist() == [3 if j is None else j for j in reject_at]
            assert counters_at_rest()
    assert harness.last_fault(emulated_extension) == ""


def _markov_early_dependents(module, gamma: int, vocab: int) -> int:
    """Drafts a block of 5 rows (r = 64, a confidence head) on the emulator, checks it against the
    reference (nothing left queued), and returns how many of its launches ran as programmatic
    dependents whose blocks started before their primary."""
    from test_gpu_kernels import assert_blocks_match, draft, markov_case

    runtime = module._cuemu
    case = markov_case(torch.device("cpu"), 5, gamma, vocab, 64, hidden=16)
    with _dispatch.forced_reference():
        ref = draft(case, keep_logits=True)
    with harness.emulated(module):
        before = runtime.cuemu_early_dependent_launches()
        ours = draft(case, keep_logits=True)
        dependents = runtime.cuemu_early_dependent_launches() - before
        assert runtime.cuemu_queued_launches() == 0
    assert_blocks_match(ours, ref, case["temperature"])
    return dependents


@pytest.mark.parametrize(
    ("persistent", "dependents"), [("0", 4), ("1", 1)], ids=["per-position", "persistent"]
)
def test_markov_block_positions_run_as_dependents_of_the_position_before(
    emulated_extension, monkeypatch, persistent, dependents
):
    """One launch per position: positions 1..g-1 and the confidence launch are programmatic
    dependents whose blocks run up to their wait before the launch they depend on (the emulator's
    adversarial order), g early dependents per block. One cooperative launch: the confidence launch
    is its one dependent. The outputs are the reference's, nothing is left queued."""
    from dspark_sgl import markov

    monkeypatch.setenv(markov.PERSISTENT_ENV, persistent)
    assert _markov_early_dependents(emulated_extension, gamma=4, vocab=700) == dependents
    assert harness.last_fault(emulated_extension) == ""


def test_markov_block_takes_one_launch_per_position_where_its_grid_cannot_be_resident(
    emulated_extension, monkeypatch
):
    """Fewer blocks resident at once than the occupancy promises (CUEMU_RESIDENT_BLOCKS, as on a
    device shared under MPS): the cooperative launch is refused and the block runs one launch per
    position (g - 1 dependents and the confidence launch), with the reference's outputs."""
    monkeypatch.setenv("CUEMU_RESIDENT_BLOCKS", "1")
    assert _markov_early_dependents(emulated_extension, gamma=3, vocab=1100) == 3
    # the refusal the launcher handled (cudaGetLastError cleared it; the message stays until a reset)
    assert "cooperative launch of 5 blocks above the 1" in harness.last_fault(emulated_extension)
    harness.reset(emulated_extension)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_markov_block_in_one_launch_keeps_each_ctas_last_tile_for_the_next_position(
    emulated_extension, monkeypatch, workers
):
    """One cooperative launch on 2 multiprocessors (r = 256: one CTA each): CTA b owns tiles b, b + 2,
    ... of the 5, walks them forward at even Philox positions and backward at odd ones, and stages
    each position's first tile only at position 0 (it is the tile the position before ended on); the
    tile it ends a position on is read evict-first (F), the others normally; drafted one position per
    call (first_position = k), position k alone stages all its tiles. Any number of workers runs the
    grid (every block at once); the outputs stay the reference's."""
    from test_gpu_kernels import assert_blocks_match, draft, markov_case

    monkeypatch.setenv("CUEMU_SMS", "2")
    monkeypatch.setenv("CUEMU_WORKERS", workers)
    case = markov_case(torch.device("cpu"), 5, 3, 1100, 256, hidden=16)
    with _dispatch.forced_reference():
        ref = draft(case, keep_logits=True)
    with harness.emulated(emulated_extension):
        staged = harness.markov_staged_tiles(emulated_extension, case, first_positions=(1, 2))
        ours = draft(case, keep_logits=True)
    normal, first = False, True
    assert staged == {
        0: [
            {
                0: [(0, normal), (2, normal), (4, first), (2, normal), (0, first), (2, normal), (4, first)],
                1: [(1, normal), (3, first), (1, first), (3, first)],
            }
        ],
        1: [{0: [(4, normal), (2, normal), (0, first)], 1: [(3, normal), (1, first)]}],
        2: [{0: [(0, normal), (2, normal), (4, first)], 1: [(1, normal), (3, first)]}],
    }
    assert_blocks_match(ours, ref, case["temperature"])
    assert harness.last_fault(emulated_extension) == ""


def test_markov_block_positions_walk_w2_in_alternating_tile_order(emulated_extension):
    """Block b stages W2 tile b at even Philox positions and tile T - 1 - b at odd ones, so each
    position starts on the tiles the one before read last (the L2 reuse benchmarks/cost_model.py
    counts): in a whole block, and drafted one position per call (first_position = k, as the
    tensor-parallel path does); the outputs stay the reference's."""
    from test_gpu_kernels import assert_blocks_match, draft, markov_case

    case = markov_case(torch.device("cpu"), 5, 3, 1100, 64)
    forward = list(range(5))  # 1100 columns: 5 tiles of 256
    backward = forward[::-1]
    with _dispatch.forced_reference():
        ref = draft(case, keep_logits=True)
    with harness.emulated(emulated_extension):
        orders = harness.markov_tile_orders(emulated_extension, case, first_positions=(1, 2))
        ours = draft(case, keep_logits=True)
    assert orders == {0: [forward, backward, forward], 1: [backward], 2: [forward]}
    assert_blocks_match(ours, ref, case["temperature"])
    assert harness.last_fault(emulated_extension) == ""
