"""How often chain_verify's bounded Gumbel draw takes its exact path (measured on the CPU, no GPU).

Pass 1 of chain_verify draws the bonus argmax(t / T + G) while it streams the last verified row:
each thread keeps its own running best and skips an 8-column group whose largest t * (1/T) is
below best - G_max - slack (csrc/chain_verify.cu gumbel_threshold); a group that is not skipped
computes Philox and the IEEE score of its candidate columns. A thread's first candidate group
(bonus_first_candidates) first scores its likeliest column exactly (the seed) and tests the other
seven against it. This script replays those rules, thread by thread in the kernel's order, on

- real logits: the embedded target (models/target) on held-out prompts of shared/data, every
  position of the answer it generates (V = 4096, the kernel's layout for that V);
- synthetic rows at V = 129280: Gaussian logits (std 2 and 4, the bulk of an LLM's logits) with a
  few high "plausible next tokens" on top,

and prints the fraction of groups and of columns that take the exact path (seeds not counted), and
those columns per thread. cost_model.py uses the largest real-logit group fraction at T = 1 (its
constant BONUS_CANDIDATE_GROUPS) and a fit of the exact columns per thread (bonus_exact_columns).

    python benchmarks/gumbel_candidates.py [--prompts N]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from any directory: this checkout's dspark_sgl

from dspark_sgl import rng, verify  # noqa: E402

GUMBEL_MAX = 16.64  # kGumbelMax
SKIP_SLACK = 2.0**-20  # kSkipSlack
GROUP = 8  # bf16 columns per 16-byte load
THREADS = 256  # kRowThreads
SMS = 132


def stat_chunks(rows: int, gamma: int, vocab: int) -> int:
    """dspark_sgl/verify.py stat_chunks on an H100/H200 (132 SMs)."""
    return verify.stat_chunks(rows, gamma, vocab, SMS)


def _f32(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def threshold(best: torch.Tensor) -> torch.Tensor:
    """gumbel_threshold, in float32: a group whose largest x * (1/T) is below it is skipped."""
    return (best - GUMBEL_MAX) - (best.abs() + GUMBEL_MAX) * SKIP_SLACK


def _fma(a: torch.Tensor, b: torch.Tensor | float, c: torch.Tensor | float) -> torch.Tensor:
    """float32 a * b + c through float64: the product is exact there, the sum is rounded twice
    (float64, then float32), which can differ from one fused rounding in rare halfway cases (a
    replay of fractions, not of the kernel's bits)."""
    return (a.double() * b + (c.double() if isinstance(c, torch.Tensor) else c)).float()


def headroom(best: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
    """SkipBound::of(best).headroom(fast) (csrc/chain_verify.cu), in float32."""
    base = best - _fma(best.abs(), SKIP_SLACK, 1.52587890625e-05)
    return _fma(-fast.abs(), SKIP_SLACK, base - fast)


def uniform_floor(y: torch.Tensor) -> torch.Tensor:
    """gumbel_uniform_floor (the emulator's exp2: the GPU's ex2.approx differs by 2 ulp)."""
    log2e = _f32(1.4426950408889634)
    return torch.exp2(-(torch.exp2(-(y * log2e)) * log2e)) * _f32(0.99999618530273438)


def exact_path_fractions(
    logits: torch.Tensor, temperature: float, chunks: int, seed: int = 0
) -> tuple[float, float, float, float]:
    """(groups, Philox blocks, columns, columns per thread) of one row [V] (V a multiple of 8) that
    take the bonus draw's candidate path, its Philox and its exact score (a first group's seed not
    counted), at ``temperature``, with the row split into ``chunks`` CTAs of 256 threads and each
    thread's running best, as the kernel runs it."""
    vocab = logits.numel()
    x = logits.float()
    t = _f32(temperature)
    u = rng.uniform(seed, 0, rng.Stream.RESAMPLE, torch.tensor(0), torch.tensor(0), vocab)
    score = x / t + (-torch.log(-torch.log(u)))
    fast = x * (1.0 / t)
    chunk = math.ceil(math.ceil(vocab / chunks) / 8) * 8
    groups = blocks = exact = total_groups = threads = 0
    for c in range(chunks):
        start, end = c * chunk, min(vocab, (c + 1) * chunk)
        if start >= end:
            continue
        n_groups = (end - start) // GROUP
        total_groups += n_groups
        g_fast, g_score, g_u = (a[start:end].view(n_groups, GROUP) for a in (fast, score, u))
        threads += min(THREADS, n_groups)
        best = torch.full((THREADS,), -math.inf)
        for r0 in range(0, n_groups, THREADS):  # round r: group r0 + tid of every thread
            ids = torch.arange(r0, min(r0 + THREADS, n_groups))
            lanes = ids - r0
            candidate = ~(g_fast[ids].max(dim=1).values < threshold(best[lanes]))
            groups += int(candidate.sum())
            first = candidate & (best[lanes] == -math.inf)  # bonus_first_candidates
            seeded = torch.where(first, g_score[ids].argmax(dim=1), -1)
            blocks += int(candidate.sum()) * (GROUP // 4)  # a candidate group's Philox blocks, all
            best[lanes] = torch.where(first, g_score[ids].max(dim=1).values, best[lanes])
            # every column is tested against the best at the group's start (a first group's: its seed)
            room = headroom(best[lanes, None], g_fast[ids])
            near = candidate[:, None]
            skip = (room >= GUMBEL_MAX) | ((room > 0) & (g_u[ids] < uniform_floor(room)))
            cols = torch.arange(GROUP)
            take = near & ~skip & (seeded[:, None] != cols[None, :])
            exact += int(take.sum())
            scored = torch.where(take, g_score[ids], torch.tensor(-math.inf))
            best[lanes] = torch.maximum(best[lanes], scored.max(dim=1).values)
    return groups / total_groups, blocks / (vocab / 4), exact / vocab, exact / threads


def target_logits(prompts: int) -> torch.Tensor:
    """Logits [N, 4096] of the embedded target over its own answers to held-out prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ROOT / "models" / "target")
    model = AutoModelForCausalLM.from_pretrained(ROOT / "models" / "target", dtype=torch.float32).eval()
    rows = []
    data = ROOT.parent / "shared" / "data" / "eval_prompts"
    files = sorted(data.glob("*.jsonl"))
    for i in range(prompts):
        line = (files[i % len(files)]).read_text().splitlines()[i // len(files)]
        text = json.loads(line)["turns"][0]  # the first 24 of every dataset are held out
        ids = tok.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
        )
        if not isinstance(ids, torch.Tensor):
            ids = ids["input_ids"]
        torch.manual_seed(i)
        with torch.no_grad():
            out = model.generate(ids[:, -256:], max_new_tokens=48, do_sample=True, temperature=1.0, top_k=0)
            rows.append(model(out).logits[0, ids.shape[1] - 1 :])
    return torch.cat(rows).to(torch.bfloat16)


def synthetic_row(vocab: int, std: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    row = std * torch.randn(vocab, generator=gen)
    top = torch.randint(0, vocab, (8,), generator=gen)
    row[top] += 4 * std + 3 * torch.rand(8, generator=gen)  # a few plausible next tokens
    return row.to(torch.bfloat16)


def _rows(name: str, rows: list[torch.Tensor], chunks: int, temperature: float) -> str:
    fr = [exact_path_fractions(r, temperature, chunks, seed=i) for i, r in enumerate(rows)]
    g, b, c, n = (sum(f[k] for f in fr) / len(fr) for k in range(4))
    per_thread = rows[0].numel() / (chunks * THREADS)
    shape = f"{name}, {len(rows)} rows | {rows[0].numel()} | {chunks} | {per_thread:.1f} | {temperature}"
    return f"| {shape} | {g:.4f} | {b:.4f} | {c:.5f} | {n:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--positions", type=int, default=64, help="real-logit rows measured")
    args = parser.parse_args()
    print(
        "| logits | V | chunks | columns a thread | T | groups on the candidate path | Philox blocks"
        " computed | columns scored exactly | exactly scored a thread |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    real = list(target_logits(args.prompts)[: args.positions])
    for rows, gamma in ((1, 5), (256, 5)):
        for t in (0.6, 1.0, 1.5):
            print(_rows("embedded target", real, stat_chunks(rows, gamma, real[0].numel()), t))
    vocab = 129280
    for std in (2.0, 4.0):
        synthetic = [synthetic_row(vocab, std, s) for s in range(2)]
        for rows, gamma in ((1, 5), (8, 5), (64, 5), (256, 5)):
            for t in (0.6, 1.0, 1.5):
                print(_rows(f"synthetic std {std}", synthetic, stat_chunks(rows, gamma, vocab), t))


if __name__ == "__main__":
    main()
