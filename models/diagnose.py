"""Where a pair's tau comes from, on held-out prompts: the target's entropy along its own
samples, and the draft's first-position acceptance, expected against measured.

    python models/diagnose.py                       # the shipped pair, T = 1, 0.7, 0.5 and greedy
    python models/diagnose.py --temperatures 1 --prompts-per-dataset 6

For every temperature T it prints two rows:

* ``target``: the target generates ``--max-new-tokens`` tokens from each prompt by itself
  (Hugging Face ``generate``, sampled at T, greedy at 0) and reports the mean entropy, in
  nats, of the distribution each token was drawn from (``softmax(logits / T)``; at 0 the
  untempered softmax along the greedy path) and the mean probability of its top token;
* ``draft``: the speculative engine generates from the same prompts at T with the full
  block verified, and every round's first draft token is scored twice: its expected
  acceptance ``sum_v min(p_v, q_v)`` (p, q: the target's and the draft's distributions at
  T, greedy: whether their argmaxes agree) and whether ``chain_verify`` accepted it. The two
  means agree up to sampling noise when the engine drafts and verifies at the same T.

Prompts: the first ``--prompts-per-dataset`` of every ``shared/data/eval_prompts``
dataset (at most ``build.HELD_OUT``, so never trained on).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from dspark_sgl import engine as engine_module
from dspark_sgl.evaluate import encode_prompt, load_pair, load_prompts, stop_tokens

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("dspark_sgl_models_build", HERE / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

MAX_PROMPT_TOKENS = 380


def held_out_prompts(tokenizer, per_dataset: int) -> list[list[int]]:
    """The first ``per_dataset`` first turns of every eval-prompt dataset (sorted by name),
    chat-templated token ids, the last :data:`MAX_PROMPT_TOKENS` of each."""
    if not 1 <= per_dataset <= build.HELD_OUT:
        raise ValueError(f"--prompts-per-dataset must be in [1, {build.HELD_OUT}] (the held-out prompts)")
    texts = [t for texts in load_prompts([build.PROMPTS]).values() for t in texts[:per_dataset]]
    return [encode_prompt(tokenizer, t, True)[-MAX_PROMPT_TOKENS:] for t in texts]


def _distribution(logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """[..., V] float32 probabilities at ``temperature`` (a float, or [...] per row; 0: the
    untempered softmax)."""
    t = torch.as_tensor(temperature, dtype=torch.float32, device=logits.device)
    t = torch.where(t > 0, t, torch.ones_like(t))
    return torch.softmax(logits.float() / t[..., None], dim=-1)


@torch.no_grad()
def target_entropy(
    target, tokenizer, prompts: list[list[int]], temperature: float, max_new_tokens: int, seed: int
) -> dict[str, float]:
    """Mean entropy (nats) and top probability of the distributions the target's own
    tokens were drawn from, over every generated token of every prompt."""
    torch.manual_seed(seed)
    sample = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    mode = sample if temperature > 0 else {"do_sample": False}
    entropies, top = [], []
    for ids in prompts:
        out = target.generate(
            torch.tensor([ids]),
            max_new_tokens=max_new_tokens,
            output_logits=True,
            return_dict_in_generate=True,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **mode,
        )
        for logits in out.logits:
            p = _distribution(logits[0], temperature)
            entropies.append(float(-(p * p.clamp_min(1e-30).log()).sum()))
            top.append(float(p.max()))
    return {"entropy": sum(entropies) / len(entropies), "p_top": sum(top) / len(top), "tokens": len(top)}


@contextlib.contextmanager
def first_draft_scores() -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """While active, every verifying ``chain_verify`` call of the engine appends
    (expected acceptance [R], accepted [R] bool) of each row's first draft token, each row
    at its own temperature."""
    scores: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = engine_module.chain_verify

    def recording(target_logits, draft_logits, draft_tokens, verify_lens, temperature, **kwargs):
        accept_lens, tokens = original(
            target_logits, draft_logits, draft_tokens, verify_lens, temperature, **kwargs
        )
        if draft_tokens.shape[1] > 0:
            p = _distribution(target_logits[:, 0], temperature)
            q = _distribution(draft_logits[:, 0], temperature)
            agree = (target_logits[:, 0].argmax(-1) == draft_logits[:, 0].argmax(-1)).float()
            expected = torch.where(temperature > 0, torch.minimum(p, q).sum(-1), agree)
            scores.append((expected, accept_lens >= 1))
        return accept_lens, tokens

    engine_module.chain_verify = recording
    try:
        yield scores
    finally:
        engine_module.chain_verify = original


def draft_acceptance(
    target, draft, tokenizer, prompts: list[list[int]], temperature: float, max_new_tokens: int, seed: int
) -> dict[str, float]:
    """Mean expected and measured acceptance of the first draft token over all rounds."""
    engine = engine_module.SpeculativeEngine(target, draft)
    with first_draft_scores() as scores:
        engine.generate(
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            stop_token_ids=stop_tokens(tokenizer, target),
            seed=seed,
        )
    expected = torch.cat([e for e, _ in scores])
    accepted = torch.cat([a for _, a in scores]).float()
    return {"expected": float(expected.mean()), "measured": float(accepted.mean()), "rounds": len(expected)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=str(HERE / "target"))
    p.add_argument("--draft", default=str(HERE / "dspark"))
    p.add_argument("--temperatures", default="1,0.7,0.5,0", help="comma-separated; 0 = greedy")
    p.add_argument("--prompts-per-dataset", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    if any(not t >= 0 for t in temperatures):
        raise SystemExit("--temperatures: every value must be >= 0")
    tokenizer, target, draft = load_pair(args.target, args.draft, "cpu", "float32")
    prompts = held_out_prompts(tokenizer, args.prompts_per_dataset)
    print(f"{len(prompts)} held-out prompts, {args.max_new_tokens} new tokens each")
    print("| T | target entropy (nats) | target p_top | draft acc@1 expected | measured | rounds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for t in temperatures:
        ent = target_entropy(target, tokenizer, prompts, t, args.max_new_tokens, args.seed)
        acc = draft_acceptance(target, draft, tokenizer, prompts, t, args.max_new_tokens, args.seed)
        name = "greedy" if t == 0 else f"{t:g}"
        print(
            f"| {name} | {ent['entropy']:.3f} | {ent['p_top']:.3f} | {acc['expected']:.3f} "
            f"| {acc['measured']:.3f} | {acc['rounds']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
