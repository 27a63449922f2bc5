"""``python -m dspark_sgl demo``: speculative decoding on the embedded model pair.

Loads the repository's ``models/`` pair (a small Qwen3 target trained from scratch and its
DSpark draft, see ``models/README.md``), then for a few coding prompts:

1. generates greedily with :class:`~dspark_sgl.engine.SpeculativeEngine` and with the
   target alone (``generate``), prints the text, tau and tokens/s of both, and checks that
   the speculative output equals the target's own token for token;
2. samples at temperature 1 with the DSpark draft (lossless rejection sampling) and prints
   tau and tokens/s.

Runs on CPU, or on the GPU when one is present. ``--synthetic`` runs the older synthetic
demo instead (:mod:`dspark_sgl.synthetic_demo`, no ``transformers`` needed).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--synthetic" in argv:
        from dspark_sgl import synthetic_demo

        argv.remove("--synthetic")
        return synthetic_demo.main(argv)
    p = argparse.ArgumentParser(prog="python -m dspark_sgl demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=default_models_dir(), help="the pair's directory")
    p.add_argument("--draft", default="dspark", help="draft subdirectory (dspark or dflash)")
    p.add_argument("--max-new-tokens", type=int, default=96)
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
    stops = stop_tokens(tokenizer, target)
    kind = "DSpark" if draft.config.is_dspark else "DFlash"
    print(
        f"pair: {args.models}  target {sum(p.numel() for p in target.parameters()) / 1e6:.1f}M params, "
        f"{kind} draft gamma={draft.gamma}, device {engine.device}\n"
    )
    prompts = [encode_prompt(tokenizer, text, True) for text in PROMPTS]
    engine.generate(prompts[:1], max_new_tokens=4)  # warm-up

    same, rounds = 0, []
    spec_tokens = spec_seconds = base_tokens = base_seconds = 0.0
    for text, prompt in zip(PROMPTS, prompts, strict=True):
        result = engine.generate([prompt], max_new_tokens=args.max_new_tokens, stop_token_ids=stops)
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
    sampled = engine.generate(
        prompts, max_new_tokens=args.max_new_tokens, temperature=1.0, stop_token_ids=stops, seed=args.seed
    )
    spec_rate, base_rate = spec_tokens / spec_seconds, base_tokens / base_seconds
    print("| mode | tau | tokens/s | vs target alone |")
    print("| --- | --- | --- | --- |")
    print(f"| target alone, greedy (HF generate) | 1.00 | {base_rate:.1f} | 1.00x |")
    print(
        f"| {kind} speculative, greedy | {sum(r.accepted + 1 for r in rounds) / len(rounds):.2f} | "
        f"{spec_rate:.1f} | {spec_rate / base_rate:.2f}x |"
    )
    print(
        f"| {kind} speculative, T=1 (batch {len(PROMPTS)}) | {sampled.tau:.2f} | "
        f"{sampled.tokens_per_second:.1f} | - |"
    )
    verdict = "OK" if same == len(PROMPTS) else "MISMATCH"
    print(
        f"\ngreedy check: speculative output equals the target's own on {same}/{len(PROMPTS)} "
        f"prompts: {verdict}"
    )
    return 0 if same == len(PROMPTS) else 1
