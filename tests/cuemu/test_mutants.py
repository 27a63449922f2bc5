"""The mutation check in CI: every planted GPU bug of tests/cuemu/mutants.py is caught by the kernel
checks under the schedules it names, and the unmutated build passes them all."""

from __future__ import annotations

import shutil

import pytest
import torch

from cuemu import harness, mutants

pytestmark = [
    pytest.mark.cuemu,
    pytest.mark.skipif(shutil.which("g++") is None, reason="the CUDA emulator needs g++"),
]


@pytest.fixture(scope="module")
def mutant_builds():
    return mutants.build_mutants(mutants.MUTANTS)


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("schedule", mutants.SCHEDULES)
@pytest.mark.parametrize("check", sorted(mutants.CHECKS))
def test_the_unmutated_kernels_pass_the_mutant_checks(emulated_extension, check, schedule):
    assert mutants.run_check(emulated_extension, check, schedule) == []


@pytest.mark.parametrize("mutant", mutants.MUTANTS, ids=lambda m: m.name)
def test_every_mutant_is_caught(mutant_builds, mutant):
    module = harness.load(mutant_builds[mutant.name])
    for schedule in mutant.caught_by:
        failures = [f for check in mutant.checks for f in mutants.run_check(module, check, schedule)]
        assert failures, f"{mutant.name} ({mutant.bug}) is not caught under CUEMU_SCHEDULE={schedule}"
