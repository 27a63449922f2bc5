"""The CUDA extension is built when nvcc is present, and dispatch picks and logs a path."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch

from dspark_sgl import _dispatch, rng

BUILD_DISABLED = os.environ.get("DSPARK_SGL_BUILD_CUDA", "auto") == "0"


@pytest.mark.skipif(
    shutil.which("nvcc") is None or BUILD_DISABLED,
    reason="nvcc absent or DSPARK_SGL_BUILD_CUDA=0: the pure-Python package is installed",
)
def test_extension_is_built_and_loads_when_nvcc_is_present():
    ext = _dispatch.load_extension()
    assert ext is not None, _dispatch.extension_error()
    assert callable(ext.philox_uniform)
    expected_archs = os.environ.get("DSPARK_SGL_CUDA_ARCHS", "90a;90").replace(";", ",")
    assert ext.cuda_archs == expected_archs
    assert _dispatch.describe() == f"dspark_sgl._C loaded (sm {expected_archs}; kernels: philox_uniform)"


def test_cpu_inputs_run_the_reference_and_the_choice_is_logged_once(caplog):
    _dispatch._logged.clear()
    with caplog.at_level(logging.INFO, logger="dspark_sgl"):
        for _ in range(3):
            rng.uniform(0, 0, rng.Stream.DRAFT, torch.tensor([0]), torch.tensor([0]), 8)
    lines = [r.getMessage() for r in caplog.records if "philox_uniform" in r.getMessage()]
    assert lines == ["dspark_sgl: philox_uniform runs the PyTorch reference (inputs on cpu)"]


def test_cuda_inputs_choose_the_kernel_unless_forced_or_missing(monkeypatch):
    cuda = torch.device("cuda", 0)
    use, reason = _dispatch.kernel_path("philox_uniform", cuda)
    if _dispatch.load_extension() is None:
        assert not use and "not available" in reason
    else:
        assert use and reason == "dspark_sgl._C.philox_uniform"
        assert _dispatch.kernel_path("no_such_kernel", cuda) == (
            False,
            "the extension has no kernel 'no_such_kernel'",
        )
    monkeypatch.setenv("DSPARK_SGL_FORCE_REFERENCE", "1")
    assert _dispatch.kernel_path("philox_uniform", cuda) == (False, "DSPARK_SGL_FORCE_REFERENCE is set")


def test_describe_says_why_the_extension_is_missing(monkeypatch):
    monkeypatch.setattr(_dispatch, "_extension", None)
    monkeypatch.setattr(_dispatch, "_extension_error", "extension dspark_sgl._C not available (test)")
    assert _dispatch.describe() == "PyTorch reference only: extension dspark_sgl._C not available (test)"
