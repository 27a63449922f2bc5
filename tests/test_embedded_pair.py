"""The embedded model pair under ``models/``: loadable from the repository, lossless in
greedy decoding, the paper's ordering (DSpark tau > DFlash tau > 1), and the demo."""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from dspark_sgl import calibration
from dspark_sgl.engine import SpeculativeEngine
from dspark_sgl.evaluate import encode_prompt, load_pair, run_eval, stop_tokens

MODELS = Path(__file__).resolve().parent.parent / "models"
PROMPTS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "eval_prompts"
GREEDY_TAU_FLOOR = 3.0
T1_TAU_FLOOR = 2.5
T1_FLOOR_REASON = (
    "issue 15, not met: T = 1 tau is about 1.8 on this pair (held-out macro 1.78); the 1-layer draft's "
    "first token is accepted about 45 % of the time on sampled text at T = 1, 0.7 and 0.5 alike "
    "(models/diagnose.py, models/README.md)"
)


@pytest.fixture(scope="module")
def pairs():
    out = {}
    for name in ("dspark", "dflash"):
        out[name] = load_pair(str(MODELS / "target"), str(MODELS / name), "cpu", "float32")
    return out


def test_models_fit_the_budget_and_use_standard_formats():
    files = [p for p in MODELS.rglob("*") if p.is_file() and "work" not in p.relative_to(MODELS).parts]
    total = sum(p.stat().st_size for p in files if p.suffix != ".py")
    assert total <= 30 * 2**20, f"models/ holds {total / 2**20:.1f} MiB"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (MODELS / "target" / name).is_file(), name
    for draft in ("dspark", "dflash"):
        assert {p.name for p in (MODELS / draft).iterdir()} >= {"config.json", "model.safetensors"}


def test_pair_loads_from_the_repository(pairs):
    tokenizer, target, dspark = pairs["dspark"]
    _, _, dflash = pairs["dflash"]
    assert type(target).__name__ == "Qwen3ForCausalLM"
    assert tokenizer.chat_template
    assert tokenizer.convert_tokens_to_ids("<|mask|>") == dspark.config.mask_token_id
    assert dspark.config.is_dspark and dspark.confidence_head is not None and dspark.config.markov_rank == 64
    assert not dflash.config.is_dspark and dflash.confidence_head is None
    assert dspark.config.target_layer_ids == dflash.config.target_layer_ids
    sts = calibration.StsCalibration.load(MODELS / "dspark" / "sts.json")
    assert len(sts.temperatures) == dspark.gamma and all(t > 0 for t in sts.temperatures)


@pytest.mark.parametrize("name", ["dspark", "dflash"])
def test_greedy_speculative_output_is_the_targets(pairs, name):
    tokenizer, target, draft = pairs[name]
    engine = SpeculativeEngine(target, draft)
    stops = stop_tokens(tokenizer, target)
    texts = ["Return the largest element of a list.", "Check whether a string is a palindrome."]
    prompts = [encode_prompt(tokenizer, t, True) for t in texts]
    result = engine.generate(prompts, max_new_tokens=48, stop_token_ids=stops)
    for prompt, ours in zip(prompts, result.tokens, strict=True):
        ids = torch.tensor([prompt])
        ref = target.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=48, do_sample=False,
            eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
        )[0, len(prompt) :].tolist()  # fmt: skip
        cut = next((i + 1 for i, t in enumerate(ref) if t in stops), len(ref))
        assert ours == ref[:cut]
    assert result.tau > 1.0


@functools.cache
def _held_out_tau(name: str, temperature: float) -> float:
    """Macro tau of one draft on a slice of the held-out eval (prompts 0..3 of three datasets,
    64 new tokens, fixed block, the paper's protocol)."""
    args = argparse.Namespace(
        target=str(MODELS / "target"), draft=str(MODELS / name), prompts=[str(PROMPTS)],
        datasets="gsm8k,humaneval,mt-bench", num_prompts=4, skip_prompts=0, max_new_tokens=64,
        max_prompt_tokens=4096, temperature=temperature, batch_size=4, seed=0, device="cpu",
        dtype="float32", sts=None, no_chat_template=False, progress=False,
    )  # fmt: skip
    report, _ = run_eval(args)
    return report["macro"]["tau"]


needs_prompts = pytest.mark.skipif(not PROMPTS.is_dir(), reason=f"no eval prompts at {PROMPTS}")


@needs_prompts
def test_dspark_beats_dflash_beats_one_on_held_out_prompts():
    """Temperature 1, the paper's ordering."""
    taus = {name: _held_out_tau(name, 1.0) for name in ("dspark", "dflash")}
    assert taus["dspark"] > taus["dflash"] > 1.0, taus


@needs_prompts
def test_greedy_held_out_tau_meets_the_floor():
    """Issue 15's greedy floor (tau >= 3.0) on the held-out slice."""
    tau = _held_out_tau("dspark", 0.0)
    assert tau >= GREEDY_TAU_FLOOR, tau


@needs_prompts
@pytest.mark.xfail(strict=True, reason=T1_FLOOR_REASON)
def test_temperature_one_held_out_tau_meets_the_floor():
    """Issue 15's T = 1 floor (tau >= 2.5) on the held-out slice."""
    tau = _held_out_tau("dspark", 1.0)
    assert tau >= T1_TAU_FLOOR, tau


def test_demo_runs_on_the_embedded_pair():
    proc = subprocess.run(
        [sys.executable, "-m", "dspark_sgl", "demo", "--max-new-tokens", "48", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "greedy check: speculative output equals the target's own on 4/4 prompts: OK" in proc.stdout
    assert "| target alone, greedy (HF generate) |" in proc.stdout and "speculative, T=1" in proc.stdout
