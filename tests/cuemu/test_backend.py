"""The ``backend`` fixture itself: ``ran`` counts real launches, the emulator stands in only
inside the test, and the emulated extension is the one built from this checkout's csrc/."""

from __future__ import annotations

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
