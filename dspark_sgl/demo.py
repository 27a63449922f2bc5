"""``python -m dspark_sgl demo``: speculative decoding on the embedded model pair.

Loads the repository's ``models/`` pair (a small Qwen3 target trained from scratch and its
DSpark draft, see ``models/README.md``), then for a few coding prompts:

1. generates greedily with :class:`~dspark_sgl.engine.SpeculativeEngine` and with the
   target alone (``generate``), prints the text, tau and tokens/s of both, and checks that
   the speculative output equals the target's own token for token;
2. samples at temperature 1 with the DSpark and the DFlash draft (lossless rejection
   sampling) and prints tau, tokens/s and the per-position conditional acceptance of both;
3. samples again with the causal scheduler (Algorithm 1) over an SPS table measured on
   this machine at start-up and prints the average verify length it chose;
4. with ``--batch N``, the greedy total tokens/s at batch sizes 1, 2, 4, ..., N;
5. says plainly whether speculation beat the target alone and, when it lost (or with
   ``--profile``), prints the measured round breakdown (:mod:`dspark_sgl.round_profile`).

On a CPU the demo runs torch on one thread unless ``--threads`` says otherwise: these
models are so small that intra-op threads cost more in hand-offs than they save, most of
all on a loaded machine (both paths, target alone and speculative, use the same setting).

Runs on CPU, or on the GPU when one is present. ``--synthetic`` runs the older synthetic
demo instead (:mod:`dspark_sgl.synthetic_demo`, no ``transformers`` needed).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from dspark_sgl import scheduler as sched
from dspark_sgl.round_profile import format_profile

PROMPTS = (
    "Return the number of vowels in the given string.",
    "Write a function that checks whether a number is prime.",
    "Return a sorted list of the unique elements of a list.",
    "Parse a comma-separated line and return the fields as a list.",
)


def default_models_dir() -> Path | None:
    """``$DSPARK_SGL_MODELS``, else ``models/`` beside the package (a source checkout)."""
    env = os.environ.get("DSPARK_SGL_MODELS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / "models"
    return here if (here / "target").is_dir() else None


def _target_alone(
    target, prompt: list[int], max_new_tokens: int, stops: list[int]
) -> tuple[list[int], float]:
    device = next(target.parameters()).device
    ids = torch.tensor([prompt], device=device)
    t0 = time.perf_counter()
    out = target.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stops,
        pad_token_id=stops[0],
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    new = out[0, len(prompt) :].tolist()
    for i, tok in enumerate(new):
        if tok in stops:
            new = new[: i + 1]
            break
    return new, seconds


def _conditional_acceptance(rounds, gamma: int) -> list[float]:
    """Acceptance at draft position k among rounds whose drafts before k were accepted."""
    out = []
    for k in range(gamma):
        reached = [r for r in rounds if r.accepted >= k and r.verified > k]
        out.append(sum(r.accepted > k for r in reached) / len(reached) if reached else math.nan)
    return out


def _measured_sps(target, vocab: int, ladder=(1, 2, 4, 8, 16, 32)) -> sched.SpsTable:
    """Target forward steps per second at each token count (median of 5, one fresh
    sequence of that many tokens), made non-increasing as the scheduler requires."""
    device = next(target.parameters()).device
    points, slowest = [], math.inf
    for tokens in ladder:
        ids = torch.randint(0, vocab, (1, tokens), device=device)
        times = []
        with torch.inference_mode():
            for _ in range(5):
                t0 = time.perf_counter()
                target(input_ids=ids)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
        slowest = min(slowest, 1.0 / statistics.median(times))
        points.append((tokens, slowest))
    return sched.SpsTable(points)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--synthetic" in argv:
        from dspark_sgl import synthetic_demo

        argv.remove("--synthetic")
        return synthetic_demo.main(argv)
    p = argparse.ArgumentParser(prog="python -m dspark_sgl demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=default_models_dir(), help="the pair's directory")
    p.add_argument("--draft", default="dspark", help="draft subdirectory (dspark or dflash)")
    p.add_argument("--max-new-tokens", type=_positive, default=96)
    p.add_argument(
        "--batch", type=_positive, default=1, help="greedy tokens/s at batch sizes 1, 2, 4, ..., N"
    )
    p.add_argument(
        "--threads", type=_non_negative, default=1, help="torch threads on CPU (0: torch's default)"
    )
    p.add_argument("--profile", action="store_true", help="print the round breakdown even when it wins")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthetic", action="store_true", help="the synthetic-pair demo instead")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.models is None or not (args.models / "target").is_dir():
        p.error(
            "no embedded model pair found: pass --models DIR (with target/ and dspark/) "
            "or set DSPARK_SGL_MODELS"
        )
    try:
        from dspark_sgl.checkpoint import load_draft
        from dspark_sgl.engine import SpeculativeEngine
        from dspark_sgl.evaluate import encode_prompt, load_pair, stop_tokens
    except ImportError as exc:
        p.error(f"the demo needs the hf extra (pip install 'dspark-sgl[hf]'): {exc}")
    draft_dir = args.models / args.draft
    sts = draft_dir / "sts.json"
    tokenizer, target, draft = load_pair(
        str(args.models / "target"),
        str(draft_dir),
        args.device,
        "float32",
        str(sts) if sts.is_file() else None,
    )
    engine = SpeculativeEngine(target, draft)
    if engine.device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    other_name = "dflash" if draft.config.is_dspark else "dspark"
    other_engine = None
    if (args.models / other_name / "config.json").is_file():
        other = load_draft(
            str(args.models / other_name),
            target_config=target.config,
            device=target.device,
            dtype=target.dtype,
        )
        other_engine = SpeculativeEngine(target, other)
    stops = stop_tokens(tokenizer, target)
    kind = _kind(draft)
    print(
        f"pair: {args.models}  target {sum(p.numel() for p in target.parameters()) / 1e6:.1f}M params "
        f"({target.config.num_hidden_layers} layers), {kind} draft gamma={draft.gamma} "
        f"({draft.config.num_hidden_layers} layers), device {engine.device}, "
        f"{torch.get_num_threads()} torch thread(s)\n"
    )
    prompts = [encode_prompt(tokenizer, text, True) for text in PROMPTS]
    engine.generate(prompts[:1], max_new_tokens=4)  # warm-up
    _target_alone(target, prompts[0], 4, stops)
    bar = not args.no_progress

    same, rounds = 0, []
    spec_tokens = spec_seconds = base_tokens = base_seconds = 0.0
    for text, prompt in zip(PROMPTS, prompts, strict=True):
        result = engine.generate(
            [prompt], max_new_tokens=args.max_new_tokens, stop_token_ids=stops, progress=bar
        )
        alone, seconds = _target_alone(target, prompt, args.max_new_tokens, stops)
        ours = result.tokens[0]
        ok = ours == alone
        same += ok
        spec_tokens += len(ours)
        spec_seconds += result.seconds
        rounds.extend(result.rounds)
        base_tokens += len(alone)
        base_seconds += seconds
        print(f">>> {text}\n{tokenizer.decode(ours, skip_special_tokens=True).rstrip()}")
        print(
            f"[tau {result.tau:.2f}, {'identical to' if ok else 'DIFFERS from'} the target's greedy output]\n"
        )
    sampled = {}
    for eng in (engine, other_engine):
        if eng is not None:
            sampled[_kind(eng.draft)] = eng.generate(
                prompts,
                max_new_tokens=args.max_new_tokens,
                temperature=1.0,
                stop_token_ids=stops,
                seed=args.seed,
                progress=bar,
            )
    spec_rate, base_rate = spec_tokens / spec_seconds, base_tokens / base_seconds
    speedup = spec_rate / base_rate
    print("| mode | tau | tokens/s | vs target alone |")
    print("| --- | --- | --- | --- |")
    print(f"| target alone, greedy (HF generate) | 1.00 | {base_rate:.1f} | 1.00x |")
    print(
        f"| {kind} speculative, greedy | {sum(r.accepted + 1 for r in rounds) / len(rounds):.2f} | "
        f"{spec_rate:.1f} | {speedup:.2f}x |"
    )
    for name, res in sampled.items():
        print(
            f"| {name} speculative, T=1 (batch {len(PROMPTS)}) | {res.tau:.2f} | "
            f"{res.tokens_per_second:.1f} | - |"
        )

    gamma = draft.gamma
    print("\nper-position conditional acceptance at T=1 (position k among rounds that reached it):\n")
    print("| draft | tau | " + " | ".join(f"acc@{k + 1}" for k in range(gamma)) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in range(gamma)) + " |")
    for name, res in sampled.items():
        cells = [f"{a:.2f}" if not math.isnan(a) else "-" for a in _conditional_acceptance(res.rounds, gamma)]
        print(f"| {name} | {res.tau:.2f} | " + " | ".join(cells) + " |")

    if draft.confidence_head is not None:
        sps = _measured_sps(target, engine.vocab_size)
        causal = engine.generate(
            prompts,
            max_new_tokens=args.max_new_tokens,
            temperature=1.0,
            stop_token_ids=stops,
            seed=args.seed,
            scheduler="causal",
            sps=sps,
            progress=bar,
        )
        verified = sum(r.verified for r in causal.rounds) / len(causal.rounds)
        print(
            f"\ncausal scheduler (Algorithm 1, SPS table measured here), T=1: average verify length "
            f"{verified:.2f} of {gamma} drafts, tau {causal.tau:.2f}, {causal.tokens_per_second:.1f} tokens/s"
        )

    if args.batch > 1:
        sizes = sorted(
            {1 << i for i in range(args.batch.bit_length()) if 1 << i <= args.batch} | {args.batch}
        )
        print("\n| batch | total tokens/s (greedy, speculative) |\n| --- | --- |")
        for size in sizes:
            batch = [prompts[i % len(prompts)] for i in range(size)]
            res = engine.generate(
                batch, max_new_tokens=args.max_new_tokens, stop_token_ids=stops, progress=bar
            )
            print(f"| {size} | {res.tokens_per_second:.1f} |")

    if speedup >= 1.0:
        print(f"\nspeculative decoding is {speedup:.2f}x the target alone's tokens/s on this machine")
    else:
        print(
            f"\nspeculative decoding is SLOWER than the target alone on this machine: {speedup:.2f}x "
            "its tokens/s. Measured round breakdown (greedy, all four prompts):"
        )
    if speedup < 1.0 or args.profile:
        phases: dict[str, float] = {}
        count = 0
        for prompt in prompts:
            res = engine.generate(
                [prompt], max_new_tokens=args.max_new_tokens, stop_token_ids=stops, profile=True
            )
            for name, value in res.phase_seconds.items():
                phases[name] = phases.get(name, 0.0) + value
            count += res.num_rounds
        print("\n" + format_profile(phases, count))
        step_ms = 1e3 * base_seconds / max(1.0, base_tokens)
        print(f"\n(target alone: {step_ms:.2f} ms per token; a round emits tau tokens)")
    verdict = "OK" if same == len(PROMPTS) else "MISMATCH"
    print(
        f"\ngreedy check: speculative output equals the target's own on {same}/{len(PROMPTS)} "
        f"prompts: {verdict}"
    )
    return 0 if same == len(PROMPTS) else 1


def _kind(draft) -> str:
    return "DSpark" if draft.config.is_dspark else "DFlash"
