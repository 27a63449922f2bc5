"""The serving frontier of every verification policy, from the documented configuration.

Runs :mod:`dspark_sgl.simulate` twice with common random numbers (seed 0):

- ``paper-fig2``: the figure-2 acceptance curves at gamma = 7, math/code/chat mixed equally;
- ``production-like``: gamma = 5 (DeepSeek-V4's block) with a chat-heavy mix (1:1:3);
- ``paper-fig2, Poisson arrivals``: the first workload arriving as a Poisson process
  (5..160 requests/s, at most 256 running, the rest queue).

All use the default :class:`~dspark_sgl.simulate.GpuStepModel` and 512-token outputs; the
first two use closed-loop concurrency 1..256. Writes ``serving_frontier.png`` (first
configuration), ``serving_frontier.json`` and ``SERVING_FRONTIER.md`` next to this file.

    python benchmarks/serving_frontier.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from dataclasses import asdict
from pathlib import Path

from dspark_sgl import simulate

HERE = Path(__file__).resolve().parent
CONCURRENCY = [1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192, 224, 256]
TARGETS = [80.0, 120.0]
RATES = [5, 10, 20, 40, 60, 80, 100, 120, 140, 160]  # Poisson arrivals, requests/s
MAX_RUNNING = 256
CONFIGS = {
    "paper-fig2": {"gamma": 7, "domain_weights": (1 / 3, 1 / 3, 1 / 3)},
    "production-like": {"gamma": 5, "domain_weights": (0.2, 0.2, 0.6)},
    "paper-fig2, Poisson arrivals": {"gamma": 7, "domain_weights": (1 / 3, 1 / 3, 1 / 3)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and levels (smoke run)")
    args = parser.parse_args()
    levels = [1, 8, 64, 256] if args.quick else CONCURRENCY
    rates = [10, 80, 160] if args.quick else RATES
    steps = (10, 60) if args.quick else (60, 300)
    report = [f"# Serving frontier (simulated), {datetime.date.today()}", ""]
    dump = {}
    for name, overrides in CONFIGS.items():
        config = simulate.SimConfig(warmup_steps=steps[0], measure_steps=steps[1], **overrides)
        start = time.perf_counter()
        poisson = "Poisson" in name
        results = simulate.frontier(
            list(simulate.POLICIES),
            rates if poisson else levels,
            config,
            seed=0,
            poisson_max_running=MAX_RUNNING if poisson else None,
            progress=True,
        )
        seconds = time.perf_counter() - start
        report += [
            f"## {name}: gamma {config.gamma}, domain mix (math, code, chat) "
            f"{tuple(round(w, 2) for w in config.domain_weights)}",
            "",
            f"GPU model: `{config.gpu}`; output {config.output_len} tokens; {steps[0]} warm-up + {steps[1]} "
            f"measured steps per point; {seconds:.0f} s on this machine.",
            "",
            "Total tok/s / tok/s/user per " + ("arrival rate:" if poisson else "concurrency:"),
            "",
            simulate.format_table(results),
            "",
            simulate.summarize(results, TARGETS),
            "",
        ]
        dump[name] = {
            "config": {**asdict(config), "gpu": asdict(config.gpu)},
            "results": {
                p: [{k: v for k, v in asdict(r).items() if k != "trace"} for r in res]
                for p, res in results.items()
            },
        }
        if name == "paper-fig2":
            simulate.plot_frontier(results, HERE / "serving_frontier.png", TARGETS)
    (HERE / "SERVING_FRONTIER.md").write_text("\n".join(report))
    (HERE / "serving_frontier.json").write_text(json.dumps(dump, indent=1, default=str))
    print("\n".join(report))
    print(f"wrote {HERE / 'SERVING_FRONTIER.md'}, serving_frontier.png, serving_frontier.json")


if __name__ == "__main__":
    main()
