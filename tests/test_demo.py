"""The README's main job runs end to end."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dspark_sgl", *args], capture_output=True, text=True, timeout=300
    )


def test_demo_runs_and_reports_every_policy():
    proc = run("demo", "--synthetic", "--rounds", "3", "--requests", "4", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("full block      verify") == 3
    assert "causal, heavy" in out and "causal, light" in out
    assert "greedy check (T=0): speculative output equals the target's greedy chain: OK" in out
    assert "runs the PyTorch reference" in proc.stderr


def test_cli_usage_and_unknown_command():
    assert run().returncode == 0 and "demo" in run().stdout
    proc = run("nope")
    assert proc.returncode == 2 and "unknown command" in proc.stderr


def test_embedded_demo_prints_t1_acceptance_scheduler_batch_and_breakdown():
    """The new demo report (no timing is checked: speed lives in the demo itself)."""
    proc = run("demo", "--max-new-tokens", "12", "--batch", "3", "--profile", "--device", "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "| DSpark speculative, T=1 (batch 4) |" in out and "| DFlash speculative, T=1 (batch 4) |" in out
    header = "| draft | tau | " + " | ".join(f"acc@{k}" for k in range(1, 8)) + " |"
    assert header in out
    assert sum(line.startswith(("| DSpark | ", "| DFlash | ")) for line in out.splitlines()) == 2
    assert "causal scheduler (Algorithm 1, SPS table measured here), T=1: average verify length" in out
    batch_rows = [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| ") and " |" in line]
    assert {"| 1", "| 2", "| 3"} <= set(batch_rows)
    assert "| **round** |" in out and "| target forward |" in out and "| chain_verify |" in out
    assert ("SLOWER than the target alone" in out) != ("x the target alone's tokens/s" in out)
    assert "1 torch thread(s)" in out
    assert "greedy check: speculative output equals the target's own on 4/4 prompts: OK" in out


def test_embedded_demo_rejects_bad_options():
    for flag, value in (("--batch", "0"), ("--max-new-tokens", "0"), ("--threads", "-1")):
        proc = run("demo", flag, value, "--device", "cpu")
        assert proc.returncode == 2 and flag in proc.stderr and "must be >=" in proc.stderr, flag
