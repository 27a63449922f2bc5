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
    kernels = ("chain_verify", "markov_block", "philox_uniform", "schedule_prefix")
    assert all(callable(getattr(ext, name)) for name in kernels)
    expected_archs = os.environ.get("DSPARK_SGL_CUDA_ARCHS", "90a;90").replace(";", ",")
    assert ext.cuda_archs == expected_archs
    assert ext.cuda_ptx == os.environ.get("DSPARK_SGL_CUDA_PTX", "90")


@pytest.mark.skipif(_dispatch.load_extension() is None, reason="the CUDA extension is not built")
def test_launchers_report_bad_arguments_without_touching_the_device():
    ext = _dispatch.load_extension()
    with pytest.raises(ValueError, match="missing kernel argument 'base_logits'"):
        ext.markov_block({})
    # Shape errors are caught on the host before any launch (no device needed).
    args = dict.fromkeys(_MARKOV_KEYS, 0)
    args.update(rows=1, gamma=1, vocab=8, rank=513)
    with pytest.raises(RuntimeError, match="rank must be in"):
        ext.markov_block(args)
    args.update(rank=8, vocab_total=32, vocab_start=8)  # shards start on a sampler group of 16
    with pytest.raises(RuntimeError, match="multiple of 16"):
        ext.markov_block(args)
    args.update(vocab_start=32)
    with pytest.raises(RuntimeError, match="inside"):
        ext.markov_block(args)
    args.update(vocab_start=16, first_position=255, gamma=2)
    with pytest.raises(RuntimeError, match="first_position"):
        ext.markov_block(args)
    args = dict.fromkeys(_SCHEDULE_KEYS, 0)
    args.update(rows=1024, gamma=16, sps_points=1)
    with pytest.raises(RuntimeError, match="8192"):
        ext.schedule_prefix(args)
    assert ext.markov_block_workspace_bytes(8, 1000, 2) > 0
    assert ext.chain_verify_workspace_bytes(8, 7, 1000, 2, 2) > 0


_MARKOV_KEYS = (
    "base_logits anchor w1 w2 temperature rows gamma vocab vocab_start vocab_total first_position rank "
    "softcap seed_value seed_ptr offset_value token_scores w2_scale "
    "offset_ptr hidden hidden_size conf_weight conf_uses_markov conf_bias conf_bias_value conf_dtype "
    "sts_temperatures persistent "
    "tokens token_logits stat_max stat_sum logits_out logits_dtype conf_logits confidence base_dtype "
    "weight_dtype hidden_dtype workspace cuda_stream"
).split()
_SCHEDULE_KEYS = (
    "rows gamma sps_tokens sps_speeds sps_points causal budget_source budget_ptr budget_value lengths "
    "take_out confidence budget_confidence dtype cuda_stream"
).split()


def test_cpu_inputs_run_the_reference_and_the_choice_is_logged_once(caplog):
    _dispatch._logged.clear()
    with caplog.at_level(logging.INFO, logger="dspark_sgl"):
        for _ in range(3):
            rng.uniform(0, 0, rng.Stream.DRAFT, torch.tensor([0]), torch.tensor([0]), 8)
    lines = [r.getMessage() for r in caplog.records if "philox_uniform" in r.getMessage()]
    assert lines == ["dspark_sgl: philox_uniform runs the PyTorch reference (inputs on cpu)"]


def test_cuda_inputs_choose_the_kernel_unless_forced_or_missing(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
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
    assert _dispatch.describe() == "PyTorch reference (extension dspark_sgl._C not available (test))"


def test_inputs_a_kernel_does_not_cover_run_the_reference_and_say_why(caplog):
    cuda = torch.device("cuda", 0)
    _dispatch._logged.clear()
    asked = []

    def why() -> str:
        asked.append(True)
        return "rank 1024 > 512"

    with caplog.at_level(logging.INFO, logger="dspark_sgl"):
        use = _dispatch.use_kernel("markov_block", cuda, why)
    assert not use
    if _dispatch.kernel_path("markov_block", cuda)[0]:
        assert asked  # asked only when the kernel could otherwise run
        assert "markov_block runs the PyTorch reference (rank 1024 > 512)" in caplog.text
    else:
        assert not asked
    assert not _dispatch.use_kernel("markov_block", torch.device("cpu"), why)


def test_forced_reference_block_sets_and_restores_the_switch(monkeypatch):
    monkeypatch.delenv("DSPARK_SGL_FORCE_REFERENCE", raising=False)
    with _dispatch.forced_reference():
        assert _dispatch.force_reference()
    assert "DSPARK_SGL_FORCE_REFERENCE" not in os.environ
    monkeypatch.setenv("DSPARK_SGL_FORCE_REFERENCE", "0")
    with _dispatch.forced_reference():
        assert _dispatch.force_reference()
    assert os.environ["DSPARK_SGL_FORCE_REFERENCE"] == "0"
