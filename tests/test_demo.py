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
