"""Discrete-event model of a continuous-batching decode engine with speculative decoding.

Every engine step drafts for the running requests, lets a policy choose verify lengths,
and runs one target forward over ``B = sum_r (1 + l_r)`` tokens. The step takes
``t_draft + t_target(B)`` seconds. The scheduling policies call the real functions of
:mod:`dspark_sgl.scheduler`; the target's speed comes from an :class:`~dspark_sgl.scheduler.SpsTable`
(a measured one, or :class:`GpuStepModel`, a parametric GPU with jagged tile steps).

Acceptance model (:class:`DraftProfile`): each domain has a per-position *conditional*
acceptance curve (the paper's figure 2, read by eye for Qwen3-4B; DFlash decays along the
block, DSpark holds). In each round request r has the true conditional acceptance
``c*_k = sigmoid(m_k + delta_r + eps_k)`` (request difficulty ``delta_r``, round noise
``eps_k``, ``m_k`` chosen so that the mean of ``c*_k`` is the curve), a draft at k is
accepted with probability ``c*_k`` once drafts 1..k-1 were, and the confidence head
reports ``sigmoid(logit c*_k + eta_k)``. All draws come from :mod:`dspark_sgl.rng` keyed
by (request id, round of that request), so every policy sees the same requests and the
same luck: common random numbers.

Loads: closed-loop concurrency (each user sends its next request when the last one
finishes) or Poisson arrivals with a cap on running requests. The step time depends on B
and on the number of running requests R (their KV reads); the scheduler gets the table
profiled at the current R. Not modelled: prefill, KV-cache capacity, preemption.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dspark_sgl import _io, rng, scheduler
from dspark_sgl.scheduler import SpsTable

__all__ = [
    "POLICIES",
    "AcceptanceTrace",
    "DraftProfile",
    "GpuStepModel",
    "SimConfig",
    "SimResult",
    "frontier",
    "simulate",
    "throughput_at_interactivity",
    "user_speed_at_throughput",
]

DOMAINS = ("math", "code", "chat")


@dataclass(frozen=True)
class GpuStepModel:
    """Parametric target step time for B tokens from R requests:
    ``t = overhead + max(memory + R * kv_per_request, per_token * tile * ceil(B / tile))``.

    ``memory`` streams the weights once; ``kv_per_request`` reads one request's KV cache;
    ``per_token`` is the compute per token once compute-bound; rounding B up to whole
    tiles gives the jagged steps real GPUs show. Defaults: a large MoE target on one
    decode node (12 ms weight floor, 0.05 ms of KV per request, 20 us/token compute,
    64-token tiles, 0.6 ms launch overhead).
    """

    overhead_s: float = 0.6e-3
    memory_s: float = 12e-3
    kv_per_request_s: float = 0.05e-3
    per_token_s: float = 20e-6
    tile: int = 64

    def step_seconds(self, batch_tokens: int, requests: int = 0) -> float:
        padded = self.tile * math.ceil(max(batch_tokens, 1) / self.tile)
        return self.overhead_s + max(
            self.memory_s + requests * self.kv_per_request_s, self.per_token_s * padded
        )

    def sps_table(self, max_tokens: int, requests: int) -> SpsTable:
        """Profile at every batch size 1..max_tokens for ``requests`` running requests."""
        return SpsTable([(b, 1.0 / self.step_seconds(b, requests)) for b in range(1, max_tokens + 1)])


# Conditional acceptance per draft position 1..7, per domain (figure 2, Qwen3-4B, by eye).
_DFLASH_CURVES = (
    (0.88, 0.86, 0.84, 0.83, 0.82, 0.81, 0.80),
    (0.87, 0.85, 0.83, 0.81, 0.80, 0.79, 0.78),
    (0.72, 0.70, 0.68, 0.67, 0.65, 0.64, 0.63),
)
_DSPARK_CURVES = (
    (0.90, 0.91, 0.92, 0.92, 0.92, 0.93, 0.93),
    (0.89, 0.89, 0.89, 0.89, 0.89, 0.89, 0.89),
    (0.74, 0.74, 0.74, 0.75, 0.75, 0.75, 0.75),
)
# MTP-1 predicts the next token from the target's state, like a parallel drafter's slot 1.
_MTP_CURVES = ((0.88,), (0.87,), (0.72,))


@dataclass(frozen=True)
class DraftProfile:
    """A drafter: acceptance curves [domain][position], whether it has a confidence head,
    and its cost as a fraction of the target's layers, applied to the target's step time
    for ``R * gamma`` tokens without KV reads (drafters attend to a short window)."""

    name: str
    curves: tuple[tuple[float, ...], ...]
    has_confidence: bool
    cost_fraction: float

    @property
    def gamma(self) -> int:
        return len(self.curves[0])


DFLASH = DraftProfile("dflash", _DFLASH_CURVES, has_confidence=False, cost_fraction=3 / 43)
DSPARK = DraftProfile("dspark", _DSPARK_CURVES, has_confidence=True, cost_fraction=3 / 43 * 1.01)
MTP1 = DraftProfile("mtp1", _MTP_CURVES, has_confidence=False, cost_fraction=1 / 43)


@dataclass(frozen=True)
class AcceptanceTrace:
    """Recorded fixed-block rounds of one drafter, replayed instead of the parametric model.

    File format (JSON lines, one round each, as ``dspark_sgl eval`` is to write them):
    ``{"dataset": str, "accepted": int, "confidence": [c_1, ..., c_g]}`` where ``accepted``
    counts the drafts accepted with the whole block verified and ``confidence`` (optional,
    required for scheduled policies) is the calibrated head output of that round. Verifying
    only ``l`` drafts of that round would have accepted ``min(accepted, l)``: acceptance is
    a prefix, so replaying a recorded round under any verify length is exact.

    confidence: [N, g] float32 or None; accepted: [N] int64; dataset: [N] int64 indexes
    into ``datasets``. Requests draw a dataset uniformly (a macro average, as the paper
    reports), then each round draws one of that dataset's recorded rounds.
    """

    confidence: torch.Tensor | None
    accepted: torch.Tensor
    dataset: torch.Tensor
    datasets: tuple[str, ...]
    gamma: int

    @classmethod
    def load(cls, path: str | Path) -> AcceptanceTrace:
        names: dict[str, int] = {}
        confidence: list[list[float]] = []
        accepted: list[int] = []
        dataset: list[int] = []
        gamma = None
        has_confidence = None
        for number, record in _io.iter_jsonl(path):
            if not isinstance(record, dict) or "accepted" not in record or "dataset" not in record:
                raise ValueError(f"{path}:{number}: a round needs 'dataset' and 'accepted'")
            conf = record.get("confidence")
            width = len(conf) if isinstance(conf, list) else record.get("gamma")
            if conf is not None and not (
                isinstance(conf, list)
                and conf
                and all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in conf)
            ):
                raise ValueError(f"{path}:{number}: confidence must be a non-empty list of values in [0, 1]")
            if conf is None and not isinstance(width, int):
                raise ValueError(f"{path}:{number}: give 'confidence' or 'gamma' (the block size)")
            gamma = width if gamma is None else gamma
            if width != gamma:
                raise ValueError(f"{path}:{number}: block size {width} differs from earlier rounds' {gamma}")
            if has_confidence is None:
                has_confidence = conf is not None
            elif has_confidence != (conf is not None):
                raise ValueError(f"{path}:{number}: either every round has 'confidence' or none does")
            acc = record["accepted"]
            if isinstance(acc, bool) or not isinstance(acc, int) or not 0 <= acc <= gamma:
                raise ValueError(f"{path}:{number}: accepted must be an integer in [0, {gamma}], got {acc!r}")
            accepted.append(acc)
            dataset.append(names.setdefault(str(record["dataset"]), len(names)))
            if conf is not None:
                confidence.append([float(c) for c in conf])
        if not accepted:
            raise ValueError(f"{path}: no rounds")
        order = torch.argsort(torch.tensor(dataset), stable=True)
        return cls(
            confidence=torch.tensor(confidence, dtype=torch.float32)[order] if confidence else None,
            accepted=torch.tensor(accepted, dtype=torch.int64)[order],
            dataset=torch.tensor(dataset, dtype=torch.int64)[order],
            datasets=tuple(names),
            gamma=int(gamma),
        )


# policy name -> (draft profile or None, how verify lengths are chosen)
POLICIES: dict[str, tuple[DraftProfile | None, str]] = {
    "no-spec": (None, "none"),
    "mtp-1": (MTP1, "full"),
    "dflash full": (DFLASH, "full"),
    "dspark full": (DSPARK, "full"),
    "sglang async (pow2 table)": (DSPARK, "sglang"),
    "causal": (DSPARK, "causal"),
    "async": (DSPARK, "async"),
    "async+prune": (DSPARK, "async_prune"),
    "async-round": (DSPARK, "async_round"),
}


@dataclass
class SimConfig:
    """Workload and engine. ``sync_bubble_s``: host stall per step for policies whose batch
    size is only known after the current drafts (``causal``)."""

    output_len: int = 512
    gamma: int = 7  # block size of the DFlash/DSpark drafters (curves truncated; at most 7)
    warmup_steps: int = 60
    measure_steps: int = 300
    min_requests: int = 32  # keep measuring past measure_steps until this many requests finished
    max_steps: int = 100_000
    request_sigma: float = 0.8
    round_sigma: float = 1.2
    confidence_sigma: float = 0.5
    domain_weights: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    sync_bubble_s: float = 0.3e-3
    draft_cost_scale: float = 1.0  # multiplies every drafter's cost (0 = free drafting)
    gpu: GpuStepModel = field(default_factory=GpuStepModel)
    sps_table: SpsTable | None = None  # measured table; default: profiled from `gpu`
    zero_acceptance: bool = False  # every draft is rejected and every confidence is 0 (tests)
    traces: dict[str, AcceptanceTrace] = field(default_factory=dict)  # drafter name -> recorded rounds


@dataclass
class SimResult:
    policy: str
    concurrency: int
    total_tokens_per_s: float
    tokens_per_s_per_user: float
    mean_verify_len: float
    mean_tokens_per_round: float
    steps: int
    arrival_rate: float | None = None  # requests/s for Poisson runs, None for closed loop
    mean_running: float = 0.0  # time-averaged number of running requests
    trace: list[dict] = field(default_factory=list)


def _mean_matched_logits(curve: torch.Tensor, sigma: float) -> torch.Tensor:
    """m with E[sigmoid(m + N(0, sigma^2))] = curve (Gauss-Hermite, bisection)."""
    nodes, weights = [torch.tensor(x, dtype=torch.float64) for x in _gauss_hermite(40)]
    lo = torch.full_like(curve, -30.0)
    hi = torch.full_like(curve, 30.0)
    for _ in range(80):
        mid = (lo + hi) / 2
        mean = (torch.sigmoid(mid[..., None] + math.sqrt(2) * sigma * nodes) * weights).sum(-1) / math.sqrt(
            math.pi
        )
        lo = torch.where(mean < curve, mid, lo)
        hi = torch.where(mean < curve, hi, mid)
    return (lo + hi) / 2


def _gauss_hermite(n: int) -> tuple[list[float], list[float]]:
    """Nodes and weights of n-point Gauss-Hermite quadrature (Golub-Welsch)."""
    k = torch.arange(1, n, dtype=torch.float64)
    off = torch.sqrt(k / 2)
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vecs = torch.linalg.eigh(jacobi)
    weights = math.sqrt(math.pi) * vecs[0] ** 2
    return nodes.tolist(), weights.tolist()


class _Draws:
    """Counter-based draws per (request id, round of that request)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def request(self, ids: torch.Tensor) -> torch.Tensor:
        """[n, 2] uniforms: domain choice, difficulty."""
        return rng.uniform(self.seed, 0, rng.Stream.DRAFT, ids << 12, torch.zeros_like(ids), 2)

    def round(self, ids: torch.Tensor, rounds: torch.Tensor, gamma: int) -> torch.Tensor:
        """[n, 3 * gamma] uniforms: round noise, confidence noise, acceptance."""
        return rng.uniform(
            self.seed,
            0,
            rng.Stream.ACCEPT,
            (ids << 12) | rounds.clamp(max=4095),
            torch.zeros_like(ids),
            3 * gamma,
        )


class _Tables:
    """Per number of running requests R: the timing table, the table the scheduler uses,
    and (for SGLang's policy) the power-of-two step-function table. Cached."""

    def __init__(self, cfg: SimConfig, profile: DraftProfile | None, mode: str, gamma: int) -> None:
        self.cfg, self.profile, self.mode, self.gamma = cfg, profile, mode, gamma
        self._cache: dict[int, tuple[SpsTable, SpsTable, SpsTable | None]] = {}

    def draft_seconds(self, requests: int) -> float:
        if self.profile is None:
            return 0.0
        cost = self.cfg.draft_cost_scale * self.profile.cost_fraction
        return cost * self.cfg.gpu.step_seconds(requests * self.gamma)

    def get(self, requests: int) -> tuple[SpsTable, SpsTable, SpsTable | None]:
        if requests not in self._cache:
            max_tokens = requests * (self.gamma + 1)
            timing = self.cfg.sps_table or self.cfg.gpu.sps_table(max(max_tokens, 64), requests)
            schedule = timing
            if self.mode == "async_round":
                # A profile of the whole round (draft + verify) at this number of requests.
                draft_s = self.draft_seconds(requests)
                schedule = SpsTable(
                    [(b, 1.0 / (draft_s + 1.0 / timing(b))) for b in range(1, max_tokens + 1)]
                )
            coarse = step_function_table(timing, max(max_tokens, 2)) if self.mode == "sglang" else None
            self._cache[requests] = (timing, schedule, coarse)
        return self._cache[requests]


def step_function_table(table: SpsTable, max_tokens: int) -> SpsTable:
    """``table`` probed at powers of two and read as a step function (SGLang's floor lookup),
    encoded for linear interpolation with an extra point just before each probe."""
    probes = [1]
    while probes[-1] < max_tokens:
        probes.append(probes[-1] * 2)
    points: list[tuple[int, float]] = []
    for i, b in enumerate(probes):
        sps = table(b)
        points.append((b, sps))
        if i + 1 < len(probes) and probes[i + 1] - 1 > b:
            points.append((probes[i + 1] - 1, sps))
    return SpsTable(points)


def simulate(
    policy: str,
    concurrency: int,
    config: SimConfig | None = None,
    *,
    seed: int = 0,
    arrival_rate: float | None = None,
    record_trace: bool = False,
) -> SimResult:
    """Simulate one policy under one load.

    Closed loop (``arrival_rate`` None): ``concurrency`` users, each sending a new request
    of ``config.output_len`` tokens as soon as the previous one finishes; per-user speed is
    total tokens/s divided by the number of users. Poisson (``arrival_rate`` requests/s):
    at most ``concurrency`` requests run, the rest queue; per-user speed is the mean over
    finished requests of output_len / decode time (queueing excluded).

    Throughput is measured over at least ``measure_steps`` steps after ``warmup_steps``
    (longer until ``min_requests`` requests finished, at most ``max_steps`` in all), idle
    time included. With ``record_trace`` every step's scheduler inputs, the number of
    running requests and the chosen lengths are kept (for tests).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {sorted(POLICIES)}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if arrival_rate is not None and not arrival_rate > 0:
        raise ValueError(f"arrival_rate must be > 0 requests/s, got {arrival_rate}")
    cfg = config or SimConfig()
    if cfg.output_len < 1 or cfg.output_len > 4096:
        raise ValueError(f"output_len must be in [1, 4096], got {cfg.output_len}")
    profile, mode = POLICIES[policy]
    trace = cfg.traces.get(profile.name) if profile is not None else None
    if cfg.gamma < 1 or (trace is None and cfg.gamma > DSPARK.gamma):
        raise ValueError(f"gamma must be in [1, {DSPARK.gamma}] (any >= 1 with a trace), got {cfg.gamma}")
    if profile is None:
        gamma = 0
    elif trace is not None:
        gamma = min(trace.gamma, cfg.gamma) if profile.gamma > 1 else 1
        if mode != "full" and trace.confidence is None:
            raise ValueError(
                f"policy {policy!r} schedules by confidence but the {profile.name} trace has none"
            )
    else:
        gamma = min(profile.gamma, cfg.gamma)
    tables = _Tables(cfg, profile, mode, gamma)
    draws = _Draws(seed)
    weights = torch.tensor(cfg.domain_weights, dtype=torch.float64).cumsum(0)
    weights = weights / weights[-1]
    parametric = profile is not None and trace is None
    curves = torch.tensor(profile.curves, dtype=torch.float64)[:, :gamma] if parametric else None
    base_logits = (
        _mean_matched_logits(curves, math.hypot(cfg.request_sigma, cfg.round_sigma)) if parametric else None
    )
    if trace is not None:
        trace_counts = torch.bincount(trace.dataset, minlength=len(trace.datasets))
        trace_starts = torch.cumsum(trace_counts, 0) - trace_counts

    cap = concurrency
    closed_loop = arrival_rate is None
    width = max(gamma, 1)
    slot_id = torch.zeros(cap, dtype=torch.int64)
    remaining = torch.zeros(cap, dtype=torch.int64)
    rounds = torch.zeros(cap, dtype=torch.int64)
    start_time = torch.zeros(cap, dtype=torch.float64)
    domain = torch.zeros(cap, dtype=torch.int64)
    difficulty = torch.zeros(cap, dtype=torch.float64)
    stale_old, stale_new = torch.ones(cap, width), torch.ones(cap, width)
    active = torch.zeros(cap, dtype=torch.bool)
    next_id = 0

    def admit(slots: torch.Tensor, now: float, progress: torch.Tensor | None = None) -> None:
        nonlocal next_id
        count = slots.numel()
        new_ids = torch.arange(next_id, next_id + count, dtype=torch.int64)
        next_id += count
        slot_id[slots] = new_ids
        remaining[slots] = cfg.output_len - (progress if progress is not None else 0)
        rounds[slots] = 0
        start_time[slots] = now
        stale_old[slots] = 1.0
        stale_new[slots] = 1.0
        groups = len(trace.datasets) if trace is not None else None
        domain[slots], difficulty[slots] = _request_features(
            draws, new_ids, weights, cfg.request_sigma, groups
        )
        active[slots] = True

    queue: list[float] = []
    arrivals = 0
    next_arrival = math.inf
    if closed_loop:
        # Stagger the first requests so finishes are spread out from the first step.
        admit(torch.arange(cap), 0.0, (torch.arange(cap, dtype=torch.int64) * cfg.output_len) // cap)
    else:
        next_arrival = _exponential(seed, 0) / arrival_rate

    clock = 0.0
    measured_tokens = measured_time = busy_requests = 0.0
    verify_total = rounds_total = tokens_total = finished = 0
    user_speeds: list[float] = []
    trace_log: list[dict] = []
    step = -1
    while True:
        step += 1
        measuring = step >= cfg.warmup_steps
        if measuring and step >= cfg.warmup_steps + cfg.measure_steps and finished >= cfg.min_requests:
            break
        if step >= cfg.max_steps:
            break
        if not closed_loop:
            while next_arrival <= clock:
                queue.append(next_arrival)
                arrivals += 1
                next_arrival += _exponential(seed, arrivals) / arrival_rate
            free = (~active).nonzero().squeeze(1)
            take = min(len(queue), free.numel())
            if take:
                del queue[:take]
                admit(free[:take], clock)
            if not bool(active.any()):
                idle = next_arrival - clock
                clock = next_arrival
                if measuring:
                    measured_time += idle
                continue
        idx = active.nonzero().squeeze(1)
        n = idx.numel()
        timing, schedule_table, coarse = tables.get(n)
        if profile is None:
            lens = torch.zeros(n, dtype=torch.int32)
            emitted = torch.ones(n, dtype=torch.int64)
        else:
            # conf: the head's confidences; accepted_full: drafts accepted if all gamma were verified.
            if trace is not None:
                group = domain[idx]
                pick = (draws.round(slot_id[idx], rounds[idx], 1)[:, 0].double() * trace_counts[group]).long()
                record = trace_starts[group] + torch.minimum(pick, trace_counts[group] - 1)
                accepted_full = trace.accepted[record].clamp(max=gamma)
                conf = (
                    trace.confidence[record, :gamma] if trace.confidence is not None else torch.ones(n, gamma)
                )
            else:
                u = draws.round(slot_id[idx], rounds[idx], gamma).double()
                normal = torch.special.ndtri(u)
                true_logit = (
                    base_logits[domain[idx]] + difficulty[idx, None] + cfg.round_sigma * normal[:, :gamma]
                )
                conf = torch.sigmoid(true_logit + cfg.confidence_sigma * normal[:, gamma : 2 * gamma]).float()
                survived = u[:, 2 * gamma :] < torch.sigmoid(true_logit)
                accepted_full = survived.to(torch.int64).cumprod(1).sum(1)
            if cfg.zero_acceptance:
                accepted_full = torch.zeros_like(accepted_full)
                conf = torch.zeros_like(conf)
            budget_conf = stale_old[idx]
            lens = _choose_lengths(mode, conf, budget_conf, schedule_table, coarse, gamma)
            if record_trace:
                trace_log.append(
                    {
                        "requests": n,
                        "confidence": conf.clone(),
                        "budget_confidence": budget_conf.clone(),
                        "verify_lens": lens.clone(),
                    }
                )
            stale_old[idx] = stale_new[idx]
            stale_new[idx] = conf
            # Acceptance is a prefix: verifying l drafts accepts min(accepted_full, l).
            emitted = torch.minimum(accepted_full, lens.to(torch.int64)) + 1
        step_s = tables.draft_seconds(n) + 1.0 / timing(int(lens.sum()) + n)
        if mode == "causal":
            step_s += cfg.sync_bubble_s
        emitted = torch.minimum(emitted, remaining[idx])
        clock += step_s
        if measuring:
            measured_tokens += float(emitted.sum())
            measured_time += step_s
            busy_requests += n * step_s
            verify_total += int(lens.sum())
            rounds_total += n
            tokens_total += int(emitted.sum())
        remaining[idx] -= emitted
        rounds[idx] += 1
        done = idx[remaining[idx] <= 0]
        if done.numel():
            if measuring:
                finished += done.numel()
                user_speeds += (cfg.output_len / (clock - start_time[done])).tolist()
            if closed_loop:
                admit(done, clock)
            else:
                active[done] = False
    total = measured_tokens / measured_time if measured_time > 0 else 0.0
    if closed_loop:
        per_user = total / cap
    else:
        per_user = sum(user_speeds) / len(user_speeds) if user_speeds else math.nan
    return SimResult(
        policy=policy,
        concurrency=cap,
        total_tokens_per_s=total,
        tokens_per_s_per_user=per_user,
        mean_verify_len=verify_total / max(rounds_total, 1),
        mean_tokens_per_round=tokens_total / max(rounds_total, 1),
        steps=step,
        arrival_rate=arrival_rate,
        mean_running=busy_requests / measured_time if measured_time > 0 else 0.0,
        trace=trace_log,
    )


def _exponential(seed: int, index: int) -> float:
    """The index-th standard exponential inter-arrival draw of this seed."""
    u = rng.uniform_scalar(seed, 1, rng.Stream.RESAMPLE, torch.tensor(index), torch.tensor(0))
    return -math.log(float(u))


def _request_features(
    draws: _Draws, ids: torch.Tensor, cumulative: torch.Tensor, sigma: float, trace_groups: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(domain, difficulty) of new requests: the domain by the mix's cumulative weights, or
    one of ``trace_groups`` recorded datasets uniformly when replaying a trace."""
    u = draws.request(ids).double()
    if trace_groups is None:
        domain = torch.bucketize(u[:, 0].contiguous(), cumulative, right=True).clamp(max=len(DOMAINS) - 1)
    else:
        domain = (u[:, 0] * trace_groups).long().clamp(max=trace_groups - 1)
    return domain, sigma * torch.special.ndtri(u[:, 1])


def _choose_lengths(
    mode: str, conf: torch.Tensor, stale: torch.Tensor, table: SpsTable, coarse: SpsTable | None, gamma: int
) -> torch.Tensor:
    n = conf.shape[0]
    if mode == "full":
        return torch.full((n,), gamma, dtype=torch.int32)
    if mode == "causal":
        return scheduler.schedule_causal(conf, table)
    if mode in ("async", "async_round"):
        return scheduler.schedule_async(conf, stale, table)
    if mode == "async_prune":
        return scheduler.schedule_async(conf, stale, table, causal_prune=True)
    if mode == "sglang":
        return scheduler.schedule_async(conf, stale, coarse)
    raise AssertionError(mode)


def frontier(
    policies: Sequence[str],
    loads: Sequence[float],
    config: SimConfig | None = None,
    *,
    seed: int = 0,
    poisson_max_running: int | None = None,
    progress: bool = False,
) -> dict[str, list[SimResult]]:
    """Simulate every policy at every load (same seed: common random numbers).

    ``loads`` are closed-loop concurrencies, or, with ``poisson_max_running``, Poisson
    arrival rates in requests/s with at most that many running requests.
    """
    out: dict[str, list[SimResult]] = {}
    total = len(policies) * len(loads)
    done = 0
    for policy in policies:
        out[policy] = []
        for load in loads:
            if poisson_max_running is None:
                out[policy].append(simulate(policy, int(load), config, seed=seed))
            else:
                out[policy].append(
                    simulate(policy, poisson_max_running, config, seed=seed, arrival_rate=load)
                )
            done += 1
            if progress:
                print(
                    f"\r  simulating {done}/{total} ({policy}, load {load:g})" + " " * 10, end="", flush=True
                )
    if progress:
        print()
    return out


def throughput_at_interactivity(results: Sequence[SimResult], target: float) -> float:
    """Highest total tokens/s on the policy's frontier with tokens/s/user >= ``target``.

    Linear interpolation between neighbouring concurrency points; 0.0 if never reached.
    """
    return _best_above(((r.tokens_per_s_per_user, r.total_tokens_per_s) for r in results), target)


def user_speed_at_throughput(results: Sequence[SimResult], throughput: float) -> float:
    """Highest tokens/s/user on the frontier at total throughput >= ``throughput`` (0.0 if none)."""
    return _best_above(((r.total_tokens_per_s, r.tokens_per_s_per_user) for r in results), throughput)


def _best_above(pairs, threshold: float) -> float:
    """Highest y on the piecewise-linear curve through (x, y) points where x >= threshold.

    Points are taken in order of decreasing x; the segment crossing ``threshold`` is
    interpolated. 0.0 if no point reaches it.
    """
    points = sorted(pairs, reverse=True)
    best = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 >= threshold:
            best = max(best, y0)
            if x1 < threshold:
                best = max(best, y0 + (y1 - y0) * (x0 - threshold) / (x0 - x1))
    if points and points[-1][0] >= threshold:
        best = max(best, points[-1][1])
    return best


def format_table(results: dict[str, list[SimResult]]) -> str:
    """Markdown table: per load, total tok/s and tok/s/user for every policy."""
    policies = list(results)
    first = results[policies[0]]
    poisson = first[0].arrival_rate is not None
    concurrencies = [f"{r.arrival_rate:g}" if poisson else str(r.concurrency) for r in first]
    head = f"| {'arrivals/s' if poisson else 'concurrency'} | " + " | ".join(policies) + " |"
    rule = "|---:|" + "---:|" * len(policies)
    lines = [head, rule]
    for i, c in enumerate(concurrencies):
        cells = [
            f"{results[p][i].total_tokens_per_s:,.0f} / {results[p][i].tokens_per_s_per_user:.0f}"
            for p in policies
        ]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize(results: dict[str, list[SimResult]], targets: Sequence[float], reference: str = "mtp-1") -> str:
    """Throughput at interactivity targets, and tok/s/user at MTP-1's throughput levels."""
    lines = [
        "| policy | " + " | ".join(f"tok/s at {t:g} tok/s/user" for t in targets) + " |",
        "|---|" + "---:|" * len(targets),
    ]
    for policy, res in results.items():
        cells = []
        for t in targets:
            value = throughput_at_interactivity(res, t)
            base = throughput_at_interactivity(results[reference], t) if reference in results else 0.0
            gain = f" ({value / base - 1:+.0%})" if base > 0 and policy != reference else ""
            # ">=": even the highest concurrency simulated was still faster than the target.
            bound = ">= " if min(r.tokens_per_s_per_user for r in res) >= t else ""
            cells.append(f"{bound}{value:,.0f}{gain}" if value > 0 else "unreachable")
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    if reference in results:
        ref_max = max(r.total_tokens_per_s for r in results[reference])
        levels = [0.5 * ref_max, 0.8 * ref_max]
        lines += [
            "",
            "| policy | " + " | ".join(f"tok/s/user at {lv:,.0f} tok/s" for lv in levels) + " |",
            "|---|" + "---:|" * len(levels),
        ]
        for policy, res in results.items():
            cells = []
            for lv in levels:
                speed = user_speed_at_throughput(res, lv)
                base = user_speed_at_throughput(results[reference], lv)
                gain = f" ({speed / base - 1:+.0%})" if base > 0 and speed > 0 and policy != reference else ""
                cells.append(f"{speed:.0f}{gain}" if speed > 0 else "unreachable")
            lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_frontier(results: dict[str, list[SimResult]], path: Path, targets: Sequence[float]) -> None:
    """PNG of total tok/s against tok/s/user, one line per policy (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for policy, res in results.items():
        xs = [r.tokens_per_s_per_user for r in res]
        ys = [r.total_tokens_per_s for r in res]
        ax.plot(
            xs, ys, marker="o", markersize=3, label=policy, linewidth=2 if policy.startswith("async") else 1.2
        )
    for t in targets:
        ax.axvline(t, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("tokens/s per user")
    ax.set_ylabel("total tokens/s")
    ax.set_title("Simulated serving frontier (closed loop, concurrency 1..256)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dspark_sgl simulate", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--policies", default=",".join(POLICIES), help="comma-separated, from: " + ", ".join(POLICIES)
    )
    parser.add_argument(
        "--concurrency",
        default="1,2,4,8,16,32,64,128,192,256",
        help="closed-loop users per run (ignored with --arrival-rates)",
    )
    parser.add_argument("--arrival-rates", help="Poisson arrival rates in requests/s, comma-separated")
    parser.add_argument(
        "--max-running", type=int, default=256, help="running-request cap with Poisson arrivals"
    )
    parser.add_argument("--output-len", type=int, default=512)
    parser.add_argument("--gamma", type=int, default=7, help="DFlash/DSpark block size (1..7)")
    parser.add_argument("--domain-weights", default="1,1,1", help="mix of math,code,chat requests")
    parser.add_argument("--warmup-steps", type=int, default=60)
    parser.add_argument("--measure-steps", type=int, default=300)
    parser.add_argument(
        "--min-requests", type=int, default=32, help="measure until this many requests finished"
    )
    parser.add_argument("--targets", default="80,120", help="interactivity targets, tok/s/user")
    parser.add_argument(
        "--sps-table", help="measured SPS table JSON (SGLang format); default: the parametric GPU"
    )
    parser.add_argument(
        "--trace",
        action="append",
        default=[],
        metavar="DRAFTER=FILE",
        help="replay recorded rounds (JSON lines) for a drafter: dspark, dflash or mtp1",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=".", help="where frontier.png and frontier.json go")
    args = parser.parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        parser.error(f"unknown policies {unknown}; choose from {list(POLICIES)}")
    if args.arrival_rates:
        loads = [float(r) for r in args.arrival_rates.split(",")]
        cap = args.max_running
    else:
        loads = [int(c) for c in args.concurrency.split(",")]
        cap = None
    if min(loads) <= 0 or (cap is not None and cap < 1):
        parser.error("loads and --max-running must be positive")
    targets = [float(t) for t in args.targets.split(",")]
    weights = tuple(float(w) for w in args.domain_weights.split(","))
    if len(weights) != len(DOMAINS) or min(weights) < 0 or sum(weights) <= 0:
        parser.error("--domain-weights needs three non-negative numbers (math,code,chat)")
    config = SimConfig(
        min_requests=args.min_requests,
        output_len=args.output_len,
        gamma=args.gamma,
        warmup_steps=args.warmup_steps,
        measure_steps=args.measure_steps,
        domain_weights=weights,
    )
    if args.sps_table:
        config.sps_table = SpsTable.load(args.sps_table)
    drafters = {DSPARK.name, DFLASH.name, MTP1.name}
    for item in args.trace:
        name, _, path = item.partition("=")
        if name not in drafters or not path:
            parser.error(f"--trace takes DRAFTER=FILE with DRAFTER in {sorted(drafters)}, got {item!r}")
        config.traces[name] = AcceptanceTrace.load(path)
    print(
        f"simulate: {len(policies)} policies x {len(loads)} "
        f"{'Poisson arrival rates' if cap else 'closed-loop concurrency levels'}, "
        f"output {args.output_len} tokens, gamma {args.gamma}, "
        f"domain mix (math, code, chat) {weights}, seed {args.seed}"
    )
    print(f"GPU model: {config.gpu}" if not args.sps_table else f"SPS table: {args.sps_table}")
    results = frontier(policies, loads, config, seed=args.seed, poisson_max_running=cap, progress=True)
    print("\ntotal tok/s / tok/s/user\n")
    print(format_table(results))
    print()
    print(summarize(results, targets))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {
        p: [{k: v for k, v in asdict(r).items() if k != "trace"} for r in res] for p, res in results.items()
    }
    (out_dir / "frontier.json").write_text(
        json.dumps(
            {
                "config": {**asdict(config), "gpu": asdict(config.gpu), "sps_table": args.sps_table},
                "results": data,
            },
            indent=1,
            default=str,
        )
    )
    try:
        plot_frontier(results, out_dir / "frontier.png", targets)
        print(f"\nwrote {out_dir / 'frontier.png'} and {out_dir / 'frontier.json'}")
    except ImportError:
        print(f"\nwrote {out_dir / 'frontier.json'} (install matplotlib for frontier.png)")
    return 0
