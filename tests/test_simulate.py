"""The serving simulator: determinism, degenerate cases, and that it schedules with the real functions."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from dspark_sgl import scheduler, simulate
from dspark_sgl.scheduler import SpsTable
from dspark_sgl.simulate import POLICIES, SimConfig, SimResult

SPECULATIVE = [p for p in POLICIES if p != "no-spec"]
SCHEDULED = ["sglang async (pow2 table)", "causal", "async", "async+prune", "async-round"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m dspark_sgl simulate ARGS`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "dspark_sgl", "simulate", *args], capture_output=True, text=True, timeout=300
    )


def small(**changes) -> SimConfig:
    return replace(SimConfig(output_len=64, warmup_steps=5, measure_steps=40, min_requests=0), **changes)


def numbers(result: SimResult) -> tuple:
    return (
        result.total_tokens_per_s,
        result.tokens_per_s_per_user,
        result.mean_verify_len,
        result.mean_tokens_per_round,
    )


@pytest.mark.parametrize("policy", ["async", "causal", "dflash full"])
def test_simulation_is_deterministic_for_a_seed(policy):
    a = simulate.simulate(policy, 12, small(), seed=3)
    b = simulate.simulate(policy, 12, small(), seed=3)
    c = simulate.simulate(policy, 12, small(), seed=4)
    assert numbers(a) == numbers(b)
    assert numbers(a) != numbers(c)


@pytest.mark.parametrize("policy", SPECULATIVE)
def test_zero_acceptance_reduces_every_speculative_policy_to_no_speculation(policy):
    cfg = small(zero_acceptance=True, draft_cost_scale=0.0, sync_bubble_s=0.0)
    baseline = simulate.simulate("no-spec", 16, cfg, seed=1)
    result = simulate.simulate(policy, 16, cfg, seed=1)
    assert result.mean_tokens_per_round == baseline.mean_tokens_per_round == 1.0
    if policy in SCHEDULED:
        # Zero confidence: nothing is scheduled, so the engine runs exactly as without drafts.
        assert result.mean_verify_len == 0.0
        assert result.total_tokens_per_s == pytest.approx(baseline.total_tokens_per_s, rel=1e-12)
    else:
        assert result.total_tokens_per_s <= baseline.total_tokens_per_s


def test_flat_sps_verifying_more_never_loses():
    cfg = small(sps_table=SpsTable([(1, 50.0)]), draft_cost_scale=0.0, sync_bubble_s=0.0)
    full = simulate.simulate("dspark full", 24, cfg, seed=2)
    for policy in SCHEDULED:
        result = simulate.simulate(policy, 24, cfg, seed=2)
        assert result.mean_verify_len == pytest.approx(full.mean_verify_len)  # everything is verified
        assert numbers(result) == pytest.approx(numbers(full))
    by_gamma = [
        simulate.simulate("dspark full", 24, replace(cfg, gamma=g), seed=2).total_tokens_per_s
        for g in (1, 3, 5, 7)
    ]
    none = simulate.simulate("no-spec", 24, cfg, seed=2).total_tokens_per_s
    assert none <= by_gamma[0] <= by_gamma[1] <= by_gamma[2] <= by_gamma[3]


@pytest.mark.parametrize("policy", SCHEDULED)
def test_simulated_verify_lengths_equal_the_scheduler_functions(policy):
    concurrency = 48
    cfg = small(gpu=simulate.GpuStepModel(per_token_s=80e-6))  # compute-bound above ~160 tokens
    result = simulate.simulate(policy, concurrency, cfg, seed=5, record_trace=True)
    gamma = cfg.gamma
    table = cfg.gpu.sps_table(concurrency * (gamma + 1), concurrency)
    if policy == "async-round":
        draft_s = simulate.DSPARK.cost_fraction * cfg.gpu.step_seconds(concurrency * gamma)
        table = SpsTable(
            [(b, 1.0 / (draft_s + 1.0 / table(b))) for b in range(1, concurrency * (gamma + 1) + 1)]
        )
    coarse = simulate.step_function_table(table, concurrency * (gamma + 1))
    assert len(result.trace) == cfg.warmup_steps + cfg.measure_steps == result.steps
    pruned = 0
    for step in result.trace:
        assert step["requests"] == concurrency
        conf, stale = step["confidence"], step["budget_confidence"]
        if policy == "causal":
            expected = scheduler.schedule_causal(conf, table)
        elif policy == "sglang async (pow2 table)":
            expected = scheduler.schedule_async(conf, stale, coarse)
        else:
            expected = scheduler.schedule_async(conf, stale, table, causal_prune=policy == "async+prune")
        assert torch.equal(step["verify_lens"], expected)
        pruned += int((step["verify_lens"] < gamma).sum())
    assert result.mean_verify_len <= gamma
    if policy != "sglang async (pow2 table)":
        assert pruned > 0  # at this load the schedulers do prune


def test_interactivity_and_throughput_interpolation():
    res = [SimResult("p", c, total, total / c, 0, 0, 0) for c, total in ((1, 200.0), (2, 360.0), (4, 480.0))]
    # speeds 200, 180, 120 tok/s/user
    assert simulate.throughput_at_interactivity(res, 150) == pytest.approx(360 + (480 - 360) * 30 / 60)
    assert simulate.throughput_at_interactivity(res, 100) == 480.0
    assert simulate.throughput_at_interactivity(res, 250) == 0.0
    assert simulate.user_speed_at_throughput(res, 420) == pytest.approx(180 + (120 - 180) * 0.5)
    assert simulate.user_speed_at_throughput(res, 100) == 200.0
    assert simulate.user_speed_at_throughput(res, 500) == 0.0


def test_gpu_step_model_has_jagged_steps_and_a_monotone_table():
    gpu = simulate.GpuStepModel()
    assert gpu.step_seconds(640) < gpu.step_seconds(641)  # crossing a tile boundary when compute-bound
    assert gpu.step_seconds(10, requests=100) > gpu.step_seconds(10, requests=0)
    table = gpu.sps_table(1024, 64)
    assert table(700) == pytest.approx(1 / gpu.step_seconds(700, 64))
    coarse = simulate.step_function_table(table, 1024)
    assert coarse(700) == pytest.approx(1 / gpu.step_seconds(512, 64))  # floor lookup
    assert coarse(1024) == pytest.approx(1 / gpu.step_seconds(1024, 64))


def test_bad_arguments():
    with pytest.raises(ValueError, match="policy"):
        simulate.simulate("nope", 4)
    with pytest.raises(ValueError, match="concurrency"):
        simulate.simulate("async", 0)
    with pytest.raises(ValueError, match="gamma"):
        simulate.simulate("async", 4, small(gamma=9))
    with pytest.raises(ValueError, match="output_len"):
        simulate.simulate("async", 4, small(output_len=0))
    with pytest.raises(ValueError, match="output_len"):
        simulate.simulate("async", 4, small(output_len=5000))
    with pytest.raises(ValueError, match="arrival_rate"):
        simulate.simulate("async", 4, small(), arrival_rate=0.0)


def test_cli_writes_table_json_and_png(tmp_path):
    proc = run_cli(
        "--concurrency",
        "1,4",
        "--warmup-steps",
        "3",
        "--measure-steps",
        "10",
        "--min-requests",
        "2",
        "--output-len",
        "64",
        "--policies",
        "no-spec,mtp-1,async",
        "--out-dir",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert "| concurrency | no-spec | mtp-1 | async |" in proc.stdout
    assert "tok/s at 80 tok/s/user" in proc.stdout
    assert (tmp_path / "frontier.json").exists()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_poisson_arrivals_are_deterministic_and_load_dependent():
    cfg = small(output_len=32, min_requests=8)
    light = simulate.simulate("async", 64, cfg, seed=1, arrival_rate=20.0)
    again = simulate.simulate("async", 64, cfg, seed=1, arrival_rate=20.0)
    heavy = simulate.simulate("async", 64, cfg, seed=1, arrival_rate=2000.0)
    assert numbers(light) == numbers(again)
    assert light.arrival_rate == 20.0 and light.mean_running < heavy.mean_running <= 64
    assert light.total_tokens_per_s < heavy.total_tokens_per_s
    assert light.tokens_per_s_per_user > heavy.tokens_per_s_per_user


def test_poisson_zero_acceptance_matches_no_speculation():
    cfg = small(output_len=32, min_requests=8, zero_acceptance=True, draft_cost_scale=0.0)
    base = simulate.simulate("no-spec", 32, cfg, seed=2, arrival_rate=300.0)
    for policy in ("async", "causal", "async+prune"):
        result = simulate.simulate(policy, 32, replace(cfg, sync_bubble_s=0.0), seed=2, arrival_rate=300.0)
        assert numbers(result) == pytest.approx(numbers(base), rel=1e-12)


def test_poisson_trace_uses_the_table_of_the_running_count():
    cfg = small(output_len=32, gpu=simulate.GpuStepModel(per_token_s=80e-6))
    result = simulate.simulate("causal", 48, cfg, seed=3, arrival_rate=900.0, record_trace=True)
    counts = {step["requests"] for step in result.trace}
    assert len(counts) > 3  # the running set really varies
    for step in result.trace:
        table = cfg.gpu.sps_table(max(step["requests"] * (cfg.gamma + 1), 64), step["requests"])
        assert torch.equal(step["verify_lens"], scheduler.schedule_causal(step["confidence"], table))


def test_a_measured_sps_table_file_drives_the_simulation(tmp_path):
    path = tmp_path / "sps.json"
    SpsTable([(1, 80.0), (64, 75.0), (128, 40.0), (512, 10.0)]).save(path)
    proc = run_cli(
        "--concurrency",
        "16",
        "--warmup-steps",
        "2",
        "--measure-steps",
        "8",
        "--min-requests",
        "0",
        "--output-len",
        "32",
        "--policies",
        "no-spec,causal",
        "--sps-table",
        str(path),
        "--out-dir",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert f"SPS table: {path}" in proc.stdout
    cfg = small(sps_table=SpsTable.load(path), draft_cost_scale=0.0)
    result = simulate.simulate("no-spec", 16, cfg)
    assert result.total_tokens_per_s == pytest.approx(16 * SpsTable.load(path)(16))


def write_trace(path, rounds):
    path.write_text("\n".join(json.dumps(r) for r in rounds) + "\n")
    return path


@pytest.mark.parametrize(
    "lines, match",
    [
        (["{not json"], "not JSON"),
        ([{"dataset": "a"}], "needs"),
        ([{"dataset": "a", "accepted": 6, "confidence": [0.5] * 5}], "accepted"),
        ([{"dataset": "a", "accepted": 1, "confidence": [1.5, 0.5]}], "confidence"),
        (
            [
                {"dataset": "a", "accepted": 1, "confidence": [0.5, 0.5]},
                {"dataset": "a", "accepted": 1, "gamma": 2},
            ],
            "every round",
        ),
        (
            [
                {"dataset": "a", "accepted": 1, "confidence": [0.5, 0.5]},
                {"dataset": "a", "accepted": 1, "confidence": [0.5, 0.5, 0.5]},
            ],
            "block size",
        ),
        ([{"dataset": "a", "accepted": 1}], "gamma"),
        ([], "no rounds"),
    ],
)
def test_bad_trace_files_name_the_line(tmp_path, lines, match):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    with pytest.raises(ValueError, match=match):
        simulate.AcceptanceTrace.load(path)


def test_replayed_rounds_accept_min_of_recorded_and_verified(tmp_path):
    rounds = [
        {"dataset": "d", "accepted": a, "confidence": [0.9, 0.8, 0.7, 0.6, 0.5]} for a in (0, 2, 5, 5, 3)
    ]
    trace = simulate.AcceptanceTrace.load(write_trace(tmp_path / "t.jsonl", rounds))
    assert trace.gamma == 5 and trace.datasets == ("d",) and trace.accepted.tolist() == [0, 2, 5, 5, 3]
    cfg = small(traces={"dspark": trace}, output_len=4096, warmup_steps=0, measure_steps=50)
    full = simulate.simulate("dspark full", 8, cfg, seed=1)
    assert full.mean_verify_len == 5
    assert full.mean_tokens_per_round == pytest.approx(1 + 3.0, abs=0.6)  # mean of accepted is 3
    zero = simulate.simulate("async", 8, replace(cfg, zero_acceptance=True), seed=1)
    assert zero.mean_tokens_per_round == 1.0 and zero.mean_verify_len == 0.0
    flat = replace(cfg, sps_table=SpsTable([(1, 10.0)]))
    everything = simulate.simulate("causal", 8, flat, seed=1)
    assert numbers(everything)[2:] == numbers(simulate.simulate("dspark full", 8, flat, seed=1))[2:]


def test_trace_without_confidence_serves_static_policies_only(tmp_path):
    trace = simulate.AcceptanceTrace.load(
        write_trace(tmp_path / "t.jsonl", [{"dataset": "d", "accepted": 2, "gamma": 3}])
    )
    cfg = small(traces={"dflash": trace, "dspark": trace})
    assert simulate.simulate("dflash full", 4, cfg).mean_verify_len == 3
    with pytest.raises(ValueError, match="confidence"):
        simulate.simulate("async", 4, cfg)


def test_trace_driven_lengths_equal_the_scheduler_functions(tmp_path):
    gen = torch.Generator().manual_seed(0)
    rounds = []
    for i in range(200):
        conf = torch.rand(6, generator=gen).clamp(0.05, 0.99).tolist()
        rounds.append(
            {
                "dataset": "ab"[i % 2],
                "accepted": int(torch.randint(0, 7, (1,), generator=gen)),
                "confidence": conf,
            }
        )
    trace = simulate.AcceptanceTrace.load(write_trace(tmp_path / "t.jsonl", rounds))
    cfg = small(traces={"dspark": trace}, gpu=simulate.GpuStepModel(per_token_s=80e-6))
    result = simulate.simulate("async+prune", 40, cfg, seed=2, record_trace=True)
    table = cfg.gpu.sps_table(40 * 7, 40)
    for step in result.trace:
        expected = scheduler.schedule_async(
            step["confidence"], step["budget_confidence"], table, causal_prune=True
        )
        assert torch.equal(step["verify_lens"], expected)
    proc = run_cli(
        "--concurrency",
        "4",
        "--warmup-steps",
        "2",
        "--measure-steps",
        "5",
        "--min-requests",
        "0",
        "--output-len",
        "32",
        "--policies",
        "dspark full,async",
        "--trace",
        f"dspark={tmp_path / 't.jsonl'}",
        "--out-dir",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    bad = run_cli("--trace", "eagle=x.jsonl")
    assert bad.returncode == 2 and "DRAFTER=FILE" in bad.stderr
