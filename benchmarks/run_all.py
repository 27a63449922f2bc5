"""One table of timings and ratios for every dspark_sgl op, measured in one run.

On a GPU: our kernel (where one exists), the PyTorch reference, and the byte floor
(bytes the op must move / device-to-device copy bandwidth measured in this run), each the
median of CUDA-event timings over rotating buffers larger than L2. On a CPU: the reference
only (the floor and kernels need a GPU).

    python benchmarks/run_all.py [--quick] [--device cuda|cpu]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from collections.abc import Callable

import torch

from dspark_sgl import _dispatch, markov, rng, scheduler, verify

L2_BYTES = 64 << 20  # generous for H100 (50 MB) / H200


def median_time(fn: Callable[[int], object], device: torch.device, buffers: int, reps: int = 20) -> float:
    """Median seconds of fn(i) (i selects a rotating buffer set)."""
    for i in range(3):
        fn(i % buffers)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for i in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i % buffers)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for i in range(reps):
            t0 = time.perf_counter()
            fn(i % buffers)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: torch.device) -> float:
    """Bytes moved per second (read + write) by a device-to-device copy of 1 GiB."""
    src = torch.empty(1 << 28, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = median_time(lambda _: dst.copy_(src), device, 1, reps=10)
    return 2 * src.numel() * 4 / seconds


def n_buffers(bytes_per_set: int) -> int:
    return max(2, -(-2 * L2_BYTES // max(bytes_per_set, 1)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes (CPU smoke run)")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    print(f"# dspark_sgl benchmarks, {datetime.date.today()}, {name}, torch {torch.__version__}")
    bandwidth = copy_bandwidth(device) if on_gpu else None
    if bandwidth:
        print(f"# device-to-device copy bandwidth: {bandwidth / 1e12:.2f} TB/s")
    vocabs = [4096] if args.quick else [129280, 151936]
    rows_list = [1, 8] if args.quick else [1, 8, 64, 256]
    gammas = [5] if args.quick else [5, 7]
    header = (
        f"{'op':<16}{'V':>8}{'R':>5}{'g':>4}{'ours us':>10}{'ref us':>10}{'floor us':>10}"
        f"{'ref/ours':>10}{'ours/floor':>11}"
    )
    print(header)
    for vocab in vocabs:
        for rows in rows_list:
            for gamma in gammas:
                bench_shape(device, vocab, rows, gamma, bandwidth)
    sps = scheduler.SpsTable([(1, 100.0), (512, 80.0), (4096, 20.0), (8704, 9.0)])
    for rows in (1, 64, 256, 512):
        bench_schedule(device, rows, 16, sps)
    print("# '-' = no CUDA kernel for this op yet (issue 4) or no GPU in this run")


def bench_shape(device: torch.device, vocab: int, rows: int, gamma: int, bandwidth: float | None) -> None:
    """philox_uniform (kernel vs reference vs floor), then the reference sample_block and chain_verify."""
    on_gpu = device.type == "cuda"
    row_ids = torch.arange(rows * gamma, device=device)
    pos = torch.zeros_like(row_ids)
    out_bytes = rows * gamma * vocab * 4
    nb = n_buffers(out_bytes) if on_gpu else 1

    def ours(i: int) -> object:
        return rng.uniform(1, i, rng.Stream.DRAFT, row_ids, pos, vocab)

    def ref(i: int) -> object:
        return rng._uniform_reference(1, i, rng.Stream.DRAFT, row_ids, pos, vocab)

    use_kernel, _ = _dispatch.kernel_path("philox_uniform", device)
    t_ours = median_time(ours, device, nb) if use_kernel else None
    t_ref = median_time(ref, device, nb, reps=5)
    floor = out_bytes / bandwidth if bandwidth else None
    print_row("philox_uniform", vocab, rows, gamma, t_ours, t_ref, floor)

    gen = torch.Generator().manual_seed(0)
    rank = 256
    base = torch.randn(rows, gamma, vocab, generator=gen).to(device, torch.bfloat16)
    w1 = (0.02 * torch.randn(vocab, rank, generator=gen)).to(device, torch.bfloat16)
    w2 = (0.02 * torch.randn(vocab, rank, generator=gen)).to(device, torch.bfloat16)
    anchor = torch.randint(0, vocab, (rows,), generator=gen).to(device)
    temp = torch.ones(rows, device=device)

    def draft(i: int) -> object:
        return markov.sample_block(base, anchor, w1, w2, temp, seed=1, offset=i)

    print_row("sample_block", vocab, rows, gamma, None, median_time(draft, device, 1, reps=3), None)
    block = markov.sample_block(base, anchor, w1, w2, temp, seed=1, offset=0)
    target = torch.randn(rows, gamma + 1, vocab, generator=gen).to(device, torch.bfloat16)
    lens = torch.full((rows,), gamma, device=device)

    def check(i: int) -> object:
        return verify.chain_verify(target, block.logits, block.tokens, lens, temp, seed=1, offset=i)

    print_row("chain_verify", vocab, rows, gamma, None, median_time(check, device, 1, reps=3), None)


def bench_schedule(device: torch.device, rows: int, gamma: int, sps: scheduler.SpsTable) -> None:
    conf = torch.rand(rows, gamma, device=device)

    def schedule(_: int) -> object:
        return scheduler.schedule_causal(conf, sps)

    print_row("schedule_causal", 0, rows, gamma, None, median_time(schedule, device, 1), None)


def print_row(op: str, vocab: int, rows: int, gamma: int, ours, ref, floor) -> None:
    def us(x):
        return f"{x * 1e6:10.1f}" if x is not None else f"{'-':>10}"

    def ratio(a, b, width):
        return f"{a / b:{width}.2f}" if a is not None and b is not None else f"{'-':>{width}}"

    print(
        f"{op:<16}{vocab:>8}{rows:>5}{gamma:>4}{us(ours)}{us(ref)}{us(floor)}"
        f"{ratio(ref, ours, 10)}{ratio(ours, floor, 11)}"
    )


if __name__ == "__main__":
    main()
