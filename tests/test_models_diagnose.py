"""models/diagnose.py on the shipped pair: its greedy acceptance is exact, its sampled one
agrees with what chain_verify accepted, and bad options are refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

MODELS = Path(__file__).resolve().parent.parent / "models"
PROMPTS = MODELS.parent.parent / "shared" / "data" / "eval_prompts"
pytestmark = pytest.mark.skipif(not PROMPTS.is_dir(), reason=f"no eval prompts at {PROMPTS}")


@pytest.fixture(scope="module")
def diagnose():
    spec = importlib.util.spec_from_file_location("models_diagnose", MODELS / "diagnose.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pair(diagnose):
    paths = str(MODELS / "target"), str(MODELS / "dspark")
    tokenizer, target, draft = diagnose.load_pair(*paths, "cpu", "float32")
    prompts = diagnose.held_out_prompts(tokenizer, 2)
    return tokenizer, target, draft, prompts


def test_greedy_expected_acceptance_is_the_measured_one(diagnose, pair):
    """Greedy, a first draft is accepted exactly when the two argmaxes agree."""
    tokenizer, target, draft, prompts = pair
    acc = diagnose.draft_acceptance(target, draft, tokenizer, prompts, 0.0, 24, seed=0)
    assert acc["rounds"] >= len(prompts)
    assert acc["expected"] == acc["measured"], acc


def test_sampled_expected_acceptance_matches_the_measured_one(diagnose, pair):
    """At T = 0.7 the mean of sum_v min(p, q) and the accepted fraction agree within 4 standard errors."""
    tokenizer, target, draft, prompts = pair
    acc = diagnose.draft_acceptance(target, draft, tokenizer, prompts, 0.7, 32, seed=1)
    n, e = acc["rounds"], acc["expected"]
    assert n >= 100 and 0.05 < e < 0.95, acc
    assert abs(acc["measured"] - e) <= 4 * (e * (1 - e) / n) ** 0.5, acc


def test_target_entropy_is_lower_when_sampling_colder(diagnose, pair):
    tokenizer, target, _, prompts = pair
    hot = diagnose.target_entropy(target, tokenizer, prompts[:6], 1.0, 16, seed=0)
    cold = diagnose.target_entropy(target, tokenizer, prompts[:6], 0.5, 16, seed=0)
    assert hot["tokens"] >= 6 and cold["tokens"] >= 6, (hot, cold)
    assert 0.0 <= cold["entropy"] < hot["entropy"] <= 8.32 and cold["p_top"] > hot["p_top"], (hot, cold)


def test_bad_options_are_refused(diagnose):
    with pytest.raises(ValueError, match="prompts-per-dataset"):
        diagnose.held_out_prompts(None, 0)
    with pytest.raises(SystemExit, match="temperatures"):
        diagnose.main(["--temperatures", "1,-0.5"])
