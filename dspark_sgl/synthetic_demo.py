"""``python -m dspark_sgl demo --synthetic``: DSpark decoding rounds on a seeded synthetic pair.

The synthetic target is a first-order chain over V tokens (``P[prev] = softmax(L[prev])``).
The synthetic parallel backbone predicts, for slot k, half the log of the k-step
marginal from the anchor (what a parallel drafter that cannot see x_{<k} would
learn), and the Markov head is the rank-r SVD of half the centred log transition
matrix, so ``logits_k = U_k + W1[x_{k-1}] W2`` mixes both. The confidence of draft k is
its exact acceptance probability ``sum_v min(p_k, q_k)`` (an oracle standing in for a
trained head; it depends only on x_{<k}, as a real head does).

Each round drafts with :func:`~dspark_sgl.markov.sample_block`, schedules with
:func:`~dspark_sgl.scheduler.schedule_causal` under a light (memory-bound) and a heavy
(compute-bound) SPS table, verifies with :func:`~dspark_sgl.verify.chain_verify` and
commits; full-block verification runs beside them for comparison.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

import torch

from dspark_sgl import _dispatch, markov, scheduler, verify

LIGHT_SPS = scheduler.SpsTable([(1, 100.0), (64, 98.0), (256, 92.0), (1024, 70.0), (4096, 30.0)])
HEAVY_SPS = scheduler.SpsTable([(1, 100.0), (8, 90.0), (16, 72.0), (32, 46.0), (64, 25.0), (128, 13.0)])


@dataclass
class SyntheticPair:
    """A bigram target and a Markov draft over a small vocabulary (all float32)."""

    target_logits: torch.Tensor  # [V, V]: logits of the next token given the previous one
    marginal_logits: torch.Tensor  # [g, V, V]: backbone base logits U_k for each anchor
    w1: torch.Tensor  # [V, r]
    w2: torch.Tensor  # [V, r]

    @property
    def vocab_size(self) -> int:
        return self.target_logits.shape[0]

    @property
    def gamma(self) -> int:
        return self.marginal_logits.shape[0]


def make_synthetic_pair(vocab: int, gamma: int, rank: int, seed: int, device: torch.device) -> SyntheticPair:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(vocab, 4, generator=gen)
    b = torch.randn(vocab, 4, generator=gen)
    logits = 1.6 * (a @ b.T) + 0.8 * torch.randn(vocab, vocab, generator=gen)
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    marginals = []
    step = torch.eye(vocab)
    for _ in range(gamma):
        step = step @ p
        marginals.append(0.5 * step.clamp_min(1e-30).log())
    centred = 0.5 * (log_p - log_p.mean(dim=-1, keepdim=True))
    u, s, vh = torch.linalg.svd(centred)
    w1 = u[:, :rank] * s[:rank].sqrt()
    w2 = vh[:rank].T * s[:rank].sqrt()
    return SyntheticPair(logits.to(device), torch.stack(marginals).to(device), w1.to(device), w2.to(device))


def exact_acceptance(
    target_logits: torch.Tensor, draft_logits: torch.Tensor, temperature: torch.Tensor
) -> torch.Tensor:
    """sum_v min(p, q) per position: [R, g] from [R, g, V] logits (greedy rows: 1 if argmaxes match)."""
    safe_t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))[:, None, None]
    p = torch.softmax(target_logits / safe_t, dim=-1)
    q = torch.softmax(draft_logits / safe_t, dim=-1)
    sampled = torch.minimum(p, q).sum(dim=-1)
    greedy = (target_logits.argmax(-1) == draft_logits.argmax(-1)).float()
    return torch.where(temperature[:, None] > 0, sampled, greedy).clamp(0.0, 1.0)


@dataclass
class PolicyStats:
    name: str
    sps: scheduler.SpsTable
    emitted: int = 0
    verified: int = 0
    rounds: int = 0
    seconds: float = 0.0


def run_round(
    pair: SyntheticPair, anchor: torch.Tensor, temperature: torch.Tensor, policy: str, seed: int, offset: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One round for R requests: (verify_lens [R], accept_lens [R], out_tokens [R, g+1])."""
    base = pair.marginal_logits[:, anchor].transpose(0, 1)  # [R, g, V]
    block = markov.sample_block(base, anchor, pair.w1, pair.w2, temperature, seed=seed, offset=offset)
    chain = torch.cat([anchor[:, None], block.tokens], dim=1)  # [R, g+1]
    target = pair.target_logits[chain]  # [R, g+1, V]
    confidence = exact_acceptance(target[:, :-1], block.logits, temperature)
    if policy == "full":
        lens = torch.full_like(anchor, pair.gamma, dtype=torch.int32)
    else:
        lens = scheduler.schedule_causal(confidence, LIGHT_SPS if policy == "light" else HEAVY_SPS)
    accept, out = verify.chain_verify(
        target, block.logits, block.tokens, lens, temperature, seed=seed, offset=offset
    )
    return lens, accept, out


def greedy_check(pair: SyntheticPair, requests: int, rounds: int, device: torch.device) -> bool:
    """Greedy speculative output equals the target's own greedy chain."""
    anchor = torch.arange(requests, device=device) % pair.vocab_size
    temperature = torch.zeros(requests, device=device)
    produced: list[list[int]] = [[int(a)] for a in anchor]
    for r in range(rounds):
        _, accept, out = run_round(pair, anchor, temperature, "light", 0, r)
        for i in range(requests):
            produced[i].extend(out[i, : int(accept[i]) + 1].tolist())
        anchor = torch.tensor([seq[-1] for seq in produced], device=device)
    greedy_next = pair.target_logits.argmax(dim=-1).tolist()
    return all(seq[t + 1] == greedy_next[seq[t]] for seq in produced for t in range(len(seq) - 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dspark_sgl demo --synthetic", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--gamma", type=int, default=7)
    parser.add_argument("--vocab", type=int, default=48)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.rounds < 1 or args.gamma < 1 or not 1 <= args.rank <= args.vocab:
        parser.error("requests, rounds, gamma must be >= 1 and 1 <= rank <= vocab")
    if args.temperature < 0:
        parser.error("temperature must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    pair = make_synthetic_pair(args.vocab, args.gamma, args.rank, args.seed, device)
    temperature = torch.full((args.requests,), args.temperature, device=device)

    print(
        f"DSpark demo: synthetic bigram target, V={args.vocab}, gamma={args.gamma}, Markov rank={args.rank}, "
        f"R={args.requests} requests, T={args.temperature}, device={device}"
    )
    print(f"kernels: {_dispatch.describe()}")
    print(f"light SPS table: {LIGHT_SPS}\nheavy SPS table: {HEAVY_SPS}\n")
    policies = {
        name: PolicyStats(name, LIGHT_SPS if name != "heavy" else HEAVY_SPS)
        for name in ("full", "light", "heavy")
    }
    anchors = {name: torch.arange(args.requests, device=device) % args.vocab for name in policies}
    start = time.perf_counter()
    for rnd in range(args.rounds):
        print(f"round {rnd:2d}")
        for name, stats in policies.items():
            lens, accept, out = run_round(pair, anchors[name], temperature, name, args.seed, rnd)
            emitted = accept.to(torch.int64) + 1
            batch_tokens = int(lens.sum()) + args.requests
            stats.emitted += int(emitted.sum())
            stats.verified += int(lens.sum())
            stats.rounds += 1
            stats.seconds += 1.0 / stats.sps(batch_tokens)
            anchors[name] = out.gather(1, accept.to(torch.int64)[:, None]).squeeze(1)
            label = {"full": "full block     ", "light": "causal, light  ", "heavy": "causal, heavy  "}[name]
            print(
                f"  {label} verify {lens.tolist()}  accepted {accept.tolist()}  "
                f"tokens this round {int(emitted.sum())} ({int(emitted.sum()) / args.requests:.2f}/request)"
            )
    elapsed = time.perf_counter() - start

    print("\nsummary (tokens/s simulated from each policy's SPS table)")
    print(f"{'policy':<16}{'SPS table':<11}{'tau/request':>12}{'drafts verified':>17}{'tokens/s':>10}")
    for name, stats in policies.items():
        tau = stats.emitted / (stats.rounds * args.requests)
        label = {"full": "full block", "light": "causal", "heavy": "causal"}[name]
        print(
            f"{label:<16}{'heavy' if name == 'heavy' else 'light':<11}{tau:>12.2f}"
            f"{stats.verified / (stats.rounds * args.requests):>17.2f}{stats.emitted / stats.seconds:>10.0f}"
        )
    full_heavy = sum(1.0 / HEAVY_SPS(args.requests * (args.gamma + 1)) for _ in range(args.rounds))
    print(
        f"{'full block':<16}{'heavy':<11}{policies['full'].emitted / (args.rounds * args.requests):>12.2f}"
        f"{float(args.gamma):>17.2f}{policies['full'].emitted / full_heavy:>10.0f}"
    )
    ok = greedy_check(pair, args.requests, 4, device)
    print(
        "\ngreedy check (T=0): speculative output equals the target's greedy chain: "
        + ("OK" if ok else "MISMATCH")
    )
    print(f"wall time {elapsed:.2f} s for {args.rounds} rounds x 3 policies on {device}")
    return 0 if ok else 1
