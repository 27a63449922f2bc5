"""Serving the embedded pair with a real SGLang 0.5.23 server on the CPU: one table, one run.

Three servers (``tests/sglang_server.py``: fp32, ``--device cpu``, one OMP thread), one at
a time: no speculation, DSPARK with SGLang's own code (plugin off, only the CPU backend),
DSPARK with the plugin. For each, closed-loop load at concurrency 1, 4 and 16: that many
users each send ``--requests-per-user`` greedy requests of ``--new-tokens`` tokens
(``ignore_eos``) one after the other, over the six test prompts. Reported per cell: total
tok/s (all output tokens over the wall time), tok/s per user (each request's output
tokens over its latency, averaged), mean accept length (SGLang's ``spec_accept_length``),
and for each server the plugin hooks its log shows running.

These are CPU numbers of a 2.6 M-parameter model: they measure the serving path, not a
GPU deployment. The GPU row of the same table is owed until a device is lent.

    python benchmarks/server_cpu.py [--out benchmarks/server_cpu.md]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sglang_server import PLUGINS_OFF, PLUGINS_ON, CpuServer, encoded_prompts, hooks_that_ran

# (log name, table label, SGLANG_PLUGINS, speculative)
CONFIGS = (
    ("plain", "no speculation", "__none__", False),
    ("off", "DSPARK, plugin off (SGLang's code)", PLUGINS_OFF, True),
    ("on", "DSPARK, plugin on", PLUGINS_ON, True),
)


def run_load(server: CpuServer, prompts: list[list[int]], users: int, per_user: int, new_tokens: int) -> dict:
    """Closed loop: ``users`` threads, each ``per_user`` requests in sequence."""
    params = {"temperature": 0, "max_new_tokens": new_tokens, "ignore_eos": True}

    def user(index: int) -> list[tuple[int, float, float | None]]:
        done = []
        for k in range(per_user):
            ids = prompts[(index * per_user + k) % len(prompts)]
            begin = time.perf_counter()
            reply = server.generate({"input_ids": ids, "sampling_params": params}, timeout=600)
            seconds = time.perf_counter() - begin
            done.append((len(reply["output_ids"]), seconds, reply["meta_info"].get("spec_accept_length")))
        return done

    begin = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(users) as pool:
        results = [r for batch in pool.map(user, range(users)) for r in batch]
    wall = time.perf_counter() - begin
    accepts = [a for _, _, a in results if a is not None]
    return {
        "total": sum(n for n, _, _ in results) / wall,
        "per_user": statistics.mean(n / s for n, s, _ in results),
        "accept": statistics.mean(accepts) if accepts else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests-per-user", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", help="also write the markdown here")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    prompts = encoded_prompts()
    rows, hooks = [], {}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="server_cpu_") as logs:
        for tag, name, plugins, speculative in CONFIGS:
            with CpuServer(tag, Path(logs), plugins=plugins, speculative=speculative) as server:
                run_load(server, prompts, 1, 1, 8)  # warm-up
                for users in levels:
                    cell = run_load(server, prompts, users, args.requests_per_user, args.new_tokens)
                    rows.append((name, users, cell))
                    shown = {k: None if v is None else round(v, 2) for k, v in cell.items()}
                    print(name, users, shown, flush=True)
                hooks[name] = hooks_that_ran(server.log_text())
    elapsed = time.time() - started
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    lines = [
        f"CPU serving, embedded pair (fp32), SGLang 0.5.23 `--device cpu`, {datetime.date.today()}, "
        f"{machine}, "
        f"one OMP thread per server; {args.requests_per_user} requests x {args.new_tokens} greedy tokens per "
        f"user; run took {elapsed:.0f} s.",
        "",
        "| device | server | concurrency | total tok/s | tok/s per user | accept length |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, users, cell in rows:
        accept = "-" if cell["accept"] is None else f"{cell['accept']:.2f}"
        lines.append(f"| CPU | {name} | {users} | {cell['total']:.1f} | {cell['per_user']:.1f} | {accept} |")
    lines.append("| GPU (H100/H200) | all three | 1, 8, 32 | owed | owed | owed |")
    lines.append("")
    for name, ran in hooks.items():
        lines.append(f"- hooks that ran, {name}: {', '.join(ran) or 'none'}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
