"""``eval`` and ``calibrate`` end to end on a tiny target + draft pair written by the tests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from tiny_models import write_pair

from dspark_sgl import evaluate
from dspark_sgl.calibration import StsCalibration
from dspark_sgl.simulate import AcceptanceTrace

PROMPTS = {
    "gsm8k": ["Janet has 16 eggs. How many are left?", "Add 2 and 3.", "What is 7 times 6?"],
    "mt-bench": ["Write a poem about the sea.", "Describe the wind.", "Say hello."],
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    target, draft = write_pair(root)
    prompts = root / "prompts"
    prompts.mkdir()
    for name, turns in PROMPTS.items():
        lines = [json.dumps({"turns": [t, "a second turn is ignored"]}) for t in turns]
        (prompts / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return root, target, draft, prompts


def _common(target, draft, prompts) -> list[str]:
    paths = ["--target", str(target), "--draft", str(draft), "--prompts", str(prompts)]
    return [*paths, "--max-new-tokens", "24", "--num-prompts", "3", "--batch-size", "2", "--device", "cpu",
            "--no-progress"]  # fmt: skip


def test_eval_writes_report_and_trace_then_calibrate_writes_sts(pair, capsys):
    root, target, draft, prompts = pair
    report_path, trace_path, sts_path = root / "report.json", root / "rounds.jsonl", root / "sts.json"
    args = [*_common(target, draft, prompts), "--out", str(report_path), "--trace", str(trace_path)]
    assert evaluate.main_eval(args) == 0
    table = capsys.readouterr().out
    assert "| gsm8k |" in table and "| macro avg |" in table and "acc@4" in table
    report = json.loads(report_path.read_text())
    assert list(report["datasets"]) == ["gsm8k", "mt-bench"]  # the paper's order
    gamma = report["gamma"]
    for metrics in [*report["datasets"].values(), report["macro"]]:
        assert 1.0 <= metrics["tau"] <= gamma + 1
        assert len(metrics["conditional_acceptance"]) == gamma
        assert metrics["verify_rate"] == 1.0  # fixed block
        assert len(metrics["ece"]) == gamma and len(metrics["auroc"]) == gamma
    assert report["macro"]["tau"] > 1.2, "the bigram-style fixture draft should be accepted often"
    gsm = report["datasets"]["gsm8k"]
    assert gsm["prompts"] == 3 and gsm["tokens"] > 0 and gsm["tokens_per_second"] > 0
    # tau is the mean over rounds of (accepted + 1) in the trace.
    lines = [json.loads(line) for line in trace_path.read_text().splitlines()]
    gsm_rounds = [r for r in lines if r["dataset"] == "gsm8k"]
    assert gsm["rounds"] == len(gsm_rounds)
    assert gsm["tau"] == pytest.approx(sum(r["accepted"] + 1 for r in gsm_rounds) / len(gsm_rounds))
    trace = AcceptanceTrace.load(trace_path)
    assert trace.gamma == gamma and trace.datasets == ("gsm8k", "mt-bench")

    assert evaluate.main_calibrate(["--from-trace", str(trace_path), "--out", str(sts_path)]) == 0
    sts = StsCalibration.load(sts_path)
    assert len(sts.temperatures) == gamma and sts.num_samples == len(lines)
    assert all(after <= before + 1e-9 for before, after in zip(sts.ece_before, sts.ece_after, strict=True))
    assert "ECE before" in capsys.readouterr().out

    # The fitted temperatures are applied by eval --sts.
    calibrated = root / "report_sts.json"
    outputs = ["--out", str(calibrated), "--trace", str(root / "r2.jsonl")]
    args = [*_common(target, draft, prompts), "--sts", str(sts_path), *outputs]
    assert evaluate.main_eval(args) == 0
    again = json.loads(calibrated.read_text())
    assert again["macro"]["tau"] == pytest.approx(report["macro"]["tau"])  # same seeds, same drafts


def test_calibrate_runs_the_pair_itself(pair):
    root, target, draft, prompts = pair
    out = root / "sts_direct.json"
    args = [*_common(target, draft, prompts), "--datasets", "gsm8k", "--out", str(out)]
    assert evaluate.main_calibrate(args) == 0
    sts = StsCalibration.load(out)
    assert sts.dataset == "gsm8k" and all(t > 0 for t in sts.temperatures)
    assert torch.tensor(sts.temperatures).isfinite().all()


def test_eval_command_line_and_prompt_errors(pair, tmp_path):
    _root, target, draft, prompts = pair
    cmd = [sys.executable, "-m", "dspark_sgl", "eval", *_common(target, draft, prompts),
           "--datasets", "mt-bench", "--num-prompts", "1", "--out", str(tmp_path / "r.json"),
           "--trace", str(tmp_path / "t.jsonl")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| mt-bench |" in done.stdout
    with pytest.raises(ValueError, match=r"datasets \['aime25'\] not found"):
        evaluate.load_prompts([prompts], ["aime25"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no turns"}\n')
    with pytest.raises(ValueError, match="expected"):
        evaluate.load_prompts([bad])
    with pytest.raises(FileNotFoundError):
        evaluate.load_prompts([tmp_path / "absent"])
    past_end = [*_common(target, draft, prompts), "--skip-prompts", "1000", "--out", str(tmp_path / "s.json")]
    with pytest.raises(ValueError, match="no prompts left after --skip-prompts 1000"):
        evaluate.main_eval(past_end)


def test_eval_drafts_with_an_int8_markov_w2(pair, tmp_path, monkeypatch):
    from dspark_sgl import markov_quant

    _root, target, draft, prompts = pair
    steps = []
    original = markov_quant.Int8VanillaMarkovHead.step
    monkeypatch.setattr(
        markov_quant.Int8VanillaMarkovHead, "step", lambda self, *a: steps.append(1) or original(self, *a)
    )
    out = tmp_path / "int8.json"
    args = [*_common(target, draft, prompts), "--markov-w2", "int8", "--out", str(out)]
    assert evaluate.main_eval([*args, "--trace", str(tmp_path / "int8.jsonl")]) == 0
    report = json.loads(out.read_text())
    assert report["markov_w2"] == "int8" and steps, "the int8 head must draft"
    assert 1.0 <= report["macro"]["tau"] <= report["gamma"] + 1


def test_set_markov_w2_int8_needs_the_vanilla_head():
    from tiny_models import tiny_draft, tiny_target

    from dspark_sgl.markov_quant import Int8VanillaMarkovHead

    target = tiny_target(40)
    draft = tiny_draft(target)
    draft.set_markov_w2_int8(True)
    head, _ = draft.samplers()
    assert isinstance(head, Int8VanillaMarkovHead) and head.w2.dtype == torch.int8
    draft.set_markov_w2_int8(False)
    assert not isinstance(draft.samplers()[0], Int8VanillaMarkovHead)
    with pytest.raises(TypeError, match="enabled must be a bool"):
        draft.set_markov_w2_int8(1)
    gated = tiny_draft(target, markov_head_type="gated")
    with pytest.raises(ValueError, match="vanilla Markov head"):
        gated.set_markov_w2_int8(True)
    gated.set_markov_w2_int8(False)  # turning it off is always allowed
