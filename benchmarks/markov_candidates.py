"""How often a bounded per-column Gumbel search would have to draw noise: the candidate fraction, measured.

markov_block (csrc/markov_block.cu) used to draw Philox noise and compute the exact Gumbel score only
for the candidate columns of a (row, tile): columns whose logit is at least ``candidate_floor`` of the
largest logit it knew of, where every other column provably loses, one Philox block per 4-column
quad that held a candidate. This script applies that rule (the same float32 operations,
``candidate_floor``, kept here) to logits and reports the fraction of quads holding a candidate
two ways:

- ``tile``: the (row, tile) max only, as a CTA of the first wave sees it (no other tile's max has
  been published yet): an upper bound;
- ``row``: the row's max, as a CTA sees it once every tile of the row has published its max: a
  lower bound.

On the embedded target/draft pair under models/ (the draft's Markov logits during generation, at
T = 1 and T = 0.7) and on synthetic rows at V = 129280 (peaky: one logit 12 above N(0, 2^2), flat:
N(0, 1)). Greedy rows (T = 0) take only the max column. Prints a markdown table; writes JSON with
``--out`` (``benchmarks/markov_candidates.json``). This measurement (every quad a candidate on real
logits) is why markov_block now draws with the grouped sampler (GROUPED_SAMPLER.md: noise per group
of 16 columns, no bounded search); the kernel no longer has the candidate rule replayed here, and the
cost model no longer reads the JSON.

    python benchmarks/markov_candidates.py [--prompts N] [--tokens N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "markov_candidates.json"

# csrc/markov_block.cu
GUMBEL_MAX = np.float32(16.6356)
GUMBEL_MIN = np.float32(-2.8116)


def candidate_floor(m: np.ndarray, t: float) -> np.ndarray:
    """The former markov_block.cu candidate_floor, elementwise over float32 maxima ``m`` (T > 0)."""
    f = np.float32
    inv_t = f(1.0) / f(t)
    with np.errstate(invalid="ignore", over="ignore"):
        y = m * inv_t
        x = (y - f(GUMBEL_MAX - GUMBEL_MIN + f(1e-3))) - np.abs(y) * f(2.0**-18)
        low = x * f(t)
        floor = np.maximum(low - np.abs(low) * f(2.0**-21), f(-np.finfo(np.float32).max))
    return np.where(np.isfinite(m), floor, m).astype(np.float32)


def candidate_quads(logits: torch.Tensor, t: float, tile: int, seen: str) -> tuple[int, int, int]:
    """(candidate quads, quads, candidate columns) of float32 ``logits`` [N, V] at temperature t.

    seen: "tile" (each tile's own max) or "row" (the row's max).
    """
    x = logits.float().numpy()
    rows, vocab = x.shape
    pad = -vocab % tile
    x = np.pad(x, ((0, 0), (0, pad)), constant_values=-np.inf)
    tiles = x.reshape(rows, -1, tile)
    with np.errstate(invalid="ignore"):
        tile_max = np.nanmax(np.where(np.isnan(tiles), -np.inf, tiles), axis=2)
    known = tile_max if seen == "tile" else np.maximum(tile_max, tile_max.max(axis=1, keepdims=True))
    floor = known if t <= 0 else candidate_floor(known, t)
    with np.errstate(invalid="ignore"):
        cand = ~(tiles < floor[:, :, None])  # NaN is a candidate
    valid = np.arange(tiles.shape[1] * tile).reshape(-1, tile) < vocab
    cand &= valid[None]
    quads = cand.reshape(rows, -1, tile // 4, 4).any(axis=3)
    return int(quads.sum()), rows * (vocab // 4 + (vocab % 4 > 0)), int(cand.sum())


def may_beat(best: np.ndarray, logit: np.ndarray, t: float, bits: np.ndarray) -> np.ndarray:
    """markov_block.cu beat_floor + may_beat, elementwise in float32 (exp2 exact, as the emulator
    runs it; the FMAs as a float64 product and sum rounded once)."""
    f = np.float32
    inv_t = f(1.0) / f(t)
    log2e, margin = f(1.44269504), f(4.4e-5)

    def fma(a, b, c):
        return (a.astype(np.float64) * np.float64(b) + np.float64(c)).astype(np.float32)

    with np.errstate(invalid="ignore", over="ignore"):
        best_lo = (best - np.abs(best) * f(2.0**-21)) - f(1e-5)
        xs = logit * inv_t
        x_up = fma(np.abs(xs), 2.0**-20, xs.astype(np.float64))
        d_lo = best_lo - x_up
        e_hi = np.exp2(fma(-d_lo, log2e, margin)).astype(np.float32)
        u_lo_scaled = np.exp2(fma(-e_hi, log2e, f(24.0) - margin)).astype(np.float32)
        scaled = ((bits >> 8) | 1).astype(np.float32)
        return ~(scaled <= u_lo_scaled)


# threads per row (kRowThreads) of the 16-bit tile kernels: 128 threads, 4096 bias values a chunk
ROW_THREADS = {64: 2, 128: 4}


def exact_scores(logits: torch.Tensor, t: float, tile: int, seen: str, seed: int = 0) -> tuple[int, int]:
    """(candidate columns, columns scored exactly) when each thread of markov_block walks its
    columns in the kernel's order, keeping its best exact score (may_beat decides)."""
    x = logits.float().numpy()
    rows, vocab = x.shape
    pad = -vocab % tile
    x = np.pad(x, ((0, 0), (0, pad)), constant_values=-np.inf)
    tiles = x.reshape(rows, -1, tile)
    tile_max = np.max(np.where(np.isnan(tiles), -np.inf, tiles), axis=2)
    known = tile_max if seen == "tile" else np.maximum(tile_max, tile_max.max(axis=1, keepdims=True))
    floor = candidate_floor(known, t)
    gen = np.random.default_rng(seed)
    bits = gen.integers(0, 2**32, size=tiles.shape, dtype=np.uint64)
    u = (((bits >> 9) << 1) | 1).astype(np.float32) * np.float32(2.0**-24)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = tiles / np.float32(t) + (-np.log(-np.log(u))).astype(np.float32)
    threads = ROW_THREADS[tile]
    # column c of the tile is (q * threads + seg) * 4 + i: thread seg's slots in order (q, i)
    order = np.array(
        [
            [(q * threads + seg) * 4 + i for q in range(tile // 4 // threads) for i in range(4)]
            for seg in range(threads)
        ]
    )
    valid = np.arange(tiles.shape[1] * tile).reshape(-1, tile) < vocab
    best = np.full((rows, tiles.shape[1], threads), -np.inf, dtype=np.float32)
    candidates = scored = 0
    for slot in range(order.shape[1]):
        col = order[:, slot]
        lg, sc, bb = tiles[:, :, col], score[:, :, col], bits[:, :, col]
        with np.errstate(invalid="ignore"):
            cand = ~(lg < floor[:, :, None]) & valid[None, :, col]
        exact = cand & may_beat(best, lg, t, bb)
        candidates += int(cand.sum())
        scored += int(exact.sum())
        best = np.where(exact & (sc > best), sc, best)
    return candidates, scored


def _fractions(name: str, logits: torch.Tensor, t: float, tiles: tuple[int, ...]) -> list[dict]:
    out = []
    for tile in tiles:
        for seen in ("tile", "row"):
            q, total, cols = candidate_quads(logits, t, tile, seen)
            candidates, scored = exact_scores(logits, t, tile, seen)
            out.append(
                {
                    "source": name,
                    "T": t,
                    "tile": tile,
                    "seen": seen,
                    "rows": logits.shape[0],
                    "vocab": logits.shape[1],
                    "quad_fraction": q / total,
                    "column_fraction": cols / (logits.shape[0] * logits.shape[1]),
                    "exact_fraction": scored / max(candidates, 1),
                }
            )
    return out


def pair_logits(temperature: float, prompts: int, tokens: int) -> torch.Tensor:
    """The embedded draft's Markov logits [N, V] float32 while it drafts for the target."""
    sys.path.insert(0, str(ROOT))
    from dspark_sgl import _dispatch, evaluate, markov
    from dspark_sgl.engine import SpeculativeEngine

    models = ROOT / "models"
    tokenizer, target, draft = evaluate.load_pair(str(models / "target"), str(models / "dspark"), "cpu")
    texts = evaluate.load_prompts([evaluate.DEFAULT_PROMPTS], None)
    encoded = [
        evaluate.encode_prompt(tokenizer, text, True)[-256:]
        for texts_of in texts.values()
        for text in texts_of[:prompts]
    ][:prompts]
    captured: list[torch.Tensor] = []
    original = markov.sample_block_with_head

    def recording(*args, **kwargs):
        kwargs["keep_logits"] = True
        block = original(*args, **kwargs)
        captured.append(block.logits.float().reshape(-1, block.logits.shape[-1]))
        return block

    markov.sample_block_with_head = recording
    try:
        with _dispatch.forced_reference():
            SpeculativeEngine(target, draft).generate(
                encoded, max_new_tokens=tokens, temperature=temperature, seed=0
            )
    finally:
        markov.sample_block_with_head = original
    return torch.cat(captured)


def synthetic_logits(kind: str, rows: int = 16, vocab: int = 129280) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if kind == "flat":
        return torch.randn(rows, vocab, generator=gen)
    x = 2.0 * torch.randn(rows, vocab, generator=gen)
    x[torch.arange(rows), torch.randint(0, vocab, (rows,), generator=gen)] = x.max(dim=1).values + 12.0
    return x


def measure(prompts: int, tokens: int) -> list[dict]:
    results = []
    for t in (1.0, 0.7):
        logits = pair_logits(t, prompts, tokens)
        results += _fractions("embedded pair (V=4096)", logits, t, (64, 128))
        for kind in ("peaky", "flat"):
            results += _fractions(f"synthetic {kind} (V=129280)", synthetic_logits(kind), t, (64, 128))
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| logits | T | tile | max known | rows | candidate quads | candidate columns |"
        " candidates scored exactly |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['source']} | {r['T']} | {r['tile']} | {r['seen']} | {r['rows']} |"
            f" {r['quad_fraction']:.3f} | {r['column_fraction']:.3f} | {r['exact_fraction']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = measure(args.prompts, args.tokens)
    print(table(results))
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
