"""Offline speculative generation: a Hugging Face target verifying a DSpark/DFlash draft.

One :meth:`SpeculativeEngine.generate` call decodes a batch of prompts of different
lengths. Per round, for the R unfinished requests:

1. the draft drafts a block (backbone, Markov sampling, confidence: ``DSparkDraft.draft``);
2. the scheduler picks verify lengths ``l_r`` (``full``, ``causal``, ``async``);
3. the target runs ``[x0, x_1..x_l]`` per request in one batched forward;
4. :func:`dspark_sgl.verify.chain_verify` accepts a prefix and draws the correction/bonus;
5. commit: the target keeps the KV of ``[x0, accepted]``, the draft context gets their
   tapped features, the new anchor is the correction/bonus.

The target's KV cache is one batched ``DynamicCache`` in which every request owns the
slots it committed; padding and rejected slots stay in the cache but are masked out of
every later query with an explicit 4-D mask (compacted when holes dominate). Positions
are passed explicitly, so each request sees exactly its own sequence.

Randomness: a run uses one ``seed``; the prefill draw uses offset 0 and round t offset t
(streams DRAFT, ACCEPT, RESAMPLE keep draft and verify draws apart).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dspark_sgl import _checks
from dspark_sgl import scheduler as sched
from dspark_sgl.models.draft import ContextCache, DSparkDraft, ragged_rows, tapped_features
from dspark_sgl.round_profile import DRAFT_PHASES, TARGET_PHASES, RoundProfile
from dspark_sgl.verify import chain_verify

__all__ = ["SCHEDULERS", "GenerationResult", "RoundRecord", "SpeculativeEngine", "TargetRunner"]

logger = logging.getLogger(__name__)

SCHEDULERS = ("full", "causal", "async", "async+prune")


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


class TargetRunner:
    """Batched forward of an HF causal LM over a KV cache with per-request holes.

    ``valid`` [B, S] bool marks the cache slots each request committed, ``slot_pos``
    [B, S] int64 their positions; ``next_pos`` [B] int64 is the position of each request's
    next token. Targets with sliding-window layers (Gemma, Qwen3 ``layer_types``) get a
    second mask limited to the window, passed as HF's per-layer-type mask mapping.
    """

    def __init__(self, model, tap_layer_ids: Sequence[int]) -> None:
        from transformers import DynamicCache

        text = _text_config(model.config)
        layer_types = set(getattr(text, "layer_types", None) or ["full_attention"])
        unknown = layer_types - {"full_attention", "sliding_attention"}
        if unknown:
            raise ValueError(
                f"the engine supports full and sliding-window attention layers, not {sorted(unknown)}"
            )
        self.sliding_window = int(text.sliding_window) if "sliding_attention" in layer_types else None
        if self.sliding_window is None and getattr(text, "use_sliding_window", False):
            raise ValueError("use_sliding_window targets without layer_types are not supported")
        self.model = model
        self.taps = list(tap_layer_ids)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.cache = DynamicCache()
        self.start(0)

    @property
    def rows(self) -> int:
        return self.next_pos.shape[0]

    def start(self, rows: int) -> None:
        from transformers import DynamicCache

        # A cache without a config keeps every layer's full KV; sliding windows are
        # applied by the mask, so the holes of every request stay addressable.
        self.cache = DynamicCache()
        self.valid = torch.zeros(rows, 0, dtype=torch.bool, device=self.device)
        self.slot_pos = torch.zeros(rows, 0, dtype=torch.int64, device=self.device)
        self.next_pos = torch.zeros(rows, dtype=torch.int64, device=self.device)

    @torch.no_grad()
    def extend(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run tokens [B, L] (row b's real tokens first; the rest padding) at positions
        ``next_pos[b] + i``. Returns logits [B, L, V] float32 and tapped features
        [B, L, n_taps * H]. Nothing is committed until :meth:`commit`."""
        rows, length = tokens.shape
        positions = self.next_pos[:, None] + torch.arange(length, device=self.device)
        causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        allowed = torch.cat(
            [self.valid[:, None, :].expand(rows, length, -1), causal.expand(rows, -1, -1)], dim=-1
        )
        mask: torch.Tensor | dict[str, torch.Tensor] = self._additive(allowed)
        if self.sliding_window is not None:
            key_pos = torch.cat([self.slot_pos, positions], dim=1)
            near = key_pos[:, None, :] > positions[:, :, None] - self.sliding_window
            mask = {"full_attention": mask, "sliding_attention": self._additive(allowed & near)}
        out = self.model(
            input_ids=tokens,
            position_ids=positions,
            attention_mask=mask,
            past_key_values=self.cache,
            use_cache=True,
            output_hidden_states=True,
        )
        self.cache = out.past_key_values
        self.valid = torch.cat(
            [self.valid, torch.zeros(rows, length, dtype=torch.bool, device=self.device)], dim=1
        )
        self.slot_pos = torch.cat([self.slot_pos, positions], dim=1)
        self._pending = length
        taps = tapped_features(out.hidden_states, self.taps)
        return out.logits.float(), taps

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        """[B, L, S] bool -> [B, 1, L, S] additive mask in the model dtype."""
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        return mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)[:, None]

    def commit(self, keep: torch.Tensor) -> None:
        """Keep the first ``keep[b]`` tokens of the last :meth:`extend` for row b."""
        start = self.valid.shape[1] - self._pending
        idx = torch.arange(self._pending, device=self.device)
        self.valid[:, start:] = idx[None, :] < keep[:, None]
        self.next_pos = self.next_pos + keep
        if self.valid.shape[1] > 2 * int(self.valid.sum(1).max()) + 64:
            self._compact()

    def _compact(self) -> None:
        order = torch.argsort((~self.valid).to(torch.int8), dim=1, stable=True)
        width = int(self.valid.sum(1).max())
        order = order[:, :width]
        for layer in self.cache.layers:
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys = layer.keys.gather(2, index)
            layer.values = layer.values.gather(2, index)
        self.valid = self.valid.gather(1, order)
        self.slot_pos = self.slot_pos.gather(1, order)

    def select(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.valid = self.valid[rows]
        self.slot_pos = self.slot_pos[rows]
        self.next_pos = self.next_pos[rows]


@dataclass
class RoundRecord:
    """One request's part of one decoding round.

    request: index into the prompts; gamma: drafted block size; verified: drafts
    verified (l); accepted: drafts accepted; emitted: tokens appended (accepted + 1,
    fewer when a stop token or max_new_tokens ended the request);
    confidence / confidence_logits: the head's calibrated and raw outputs [g] (empty
    without a head).
    """

    request: int
    gamma: int
    verified: int
    accepted: int
    emitted: int
    confidence: list[float] = field(default_factory=list)
    confidence_logits: list[float] = field(default_factory=list)


@dataclass
class GenerationResult:
    """tokens: generated ids per request (stop token included); rounds: every round of
    every request; seconds: wall time; num_rounds: decoding rounds (batched, so one
    round serves every live request); phase_seconds: seconds per phase of
    :data:`dspark_sgl.round_profile.PHASES` over all rounds, filled only by
    ``generate(..., profile=True)`` (else all 0)."""

    tokens: list[list[int]]
    rounds: list[RoundRecord]
    seconds: float
    num_rounds: int = 0
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def draft_seconds(self) -> float:
        return sum(self.phase_seconds.get(p, 0.0) for p in DRAFT_PHASES)

    @property
    def target_seconds(self) -> float:
        return sum(self.phase_seconds.get(p, 0.0) for p in TARGET_PHASES)

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def tau(self) -> float:
        """Mean tokens per round including the bonus (accepted + 1, untruncated)."""
        return sum(r.accepted + 1 for r in self.rounds) / max(1, len(self.rounds))

    @property
    def tokens_per_second(self) -> float:
        return self.num_tokens / self.seconds if self.seconds > 0 else 0.0


def _pad_positions(logits: torch.Tensor, width: int) -> torch.Tensor:
    """[R, L, V] -> [R, width, V], zeros after position L."""
    return torch.nn.functional.pad(logits, (0, 0, 0, width - logits.shape[1]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SpeculativeEngine:
    """Speculative decoding of an HF target with a draft (see the module docstring)."""

    def __init__(self, target, draft: DSparkDraft) -> None:
        text = _text_config(target.config)
        draft.config.check_target(
            vocab_size=int(text.vocab_size),
            hidden_size=int(text.hidden_size),
            num_layers=int(text.num_hidden_layers),
        )
        if not draft.vocab_attached:
            draft.attach_target_vocab(
                target.get_input_embeddings().weight, target.get_output_embeddings().weight
            )
        self.target = target
        self.draft = draft
        self.runner = TargetRunner(target, draft.config.target_layer_ids)
        self.device = self.runner.device
        self.vocab_size = int(text.vocab_size)

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int = 128,
        temperature: float | Sequence[float] = 0.0,
        stop_token_ids: Sequence[int] = (),
        scheduler: str = "full",
        sps: sched.SpsTable | None = None,
        seed: int = 0,
        progress: bool = False,
        profile: bool = False,
    ) -> GenerationResult:
        """Generate up to ``max_new_tokens`` per prompt.

        temperature: one value or one per prompt (0 = greedy). scheduler: ``full``
        (verify the whole block), ``causal`` (Algorithm 1), ``async`` (budget from the
        confidences of two rounds earlier, top-K now) or ``async+prune``; the last three
        need a confidence head and an ``sps`` table. progress: a tqdm bar on stderr;
        profile: fill ``phase_seconds`` (on a GPU this synchronises at every phase).
        """
        rows = len(prompts)
        if rows == 0:
            raise ValueError("prompts is empty")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        if scheduler != "full":
            if self.draft.confidence_head is None:
                raise ValueError(f"scheduler {scheduler!r} needs a draft with a confidence head")
            if not isinstance(sps, sched.SpsTable):
                raise ValueError(f"scheduler {scheduler!r} needs an SpsTable (sps=...)")
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompt {i} is empty")
            if min(prompt) < 0 or max(prompt) >= self.vocab_size:
                raise ValueError(f"prompt {i} has token ids outside [0, {self.vocab_size})")
        temps = [float(temperature)] * rows if isinstance(temperature, (int, float)) else list(temperature)
        if len(temps) != rows or any(not t >= 0 for t in temps):
            raise ValueError("temperature must be >= 0, one value or one per prompt")
        stops = set(int(t) for t in stop_token_ids)
        device, gamma = self.device, self.draft.gamma

        start_time = time.perf_counter()
        timer = RoundProfile(profile, device)
        runner = self.runner
        runner.start(rows)
        context = ContextCache(self.draft, rows, device, self.draft.fc.weight.dtype)
        active = list(range(rows))  # request id of each live row
        temp = torch.tensor(temps, dtype=torch.float32, device=device)
        outputs: list[list[int]] = [[] for _ in range(rows)]
        records: list[RoundRecord] = []
        history: dict[int, list[torch.Tensor]] = {i: [] for i in range(rows)}

        # Prefill: the prompts, right-padded; the first token is a plain target draw.
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        tokens = torch.zeros(rows, int(lengths.max()), dtype=torch.int64, device=device)
        for i, prompt in enumerate(prompts):
            tokens[i, : len(prompt)] = torch.tensor(list(prompt), device=device)
        logits, taps = runner.extend(tokens)
        runner.commit(lengths)
        row_of, slot = ragged_rows(lengths)
        context.append(taps[row_of, slot], slot, row_of)
        last = logits[torch.arange(rows, device=device), lengths - 1][:, None]
        empty = torch.zeros(rows, 0, self.vocab_size, device=device)
        _, first = chain_verify(
            last,
            empty,
            empty[..., 0].long(),
            torch.zeros(rows, dtype=torch.int64, device=device),
            temp,
            seed=seed,
            offset=0,
        )
        anchor = first[:, 0]
        done = []
        for i, tok in enumerate(anchor.tolist()):
            outputs[i].append(tok)
            done.append(tok in stops or max_new_tokens <= 1)

        bar = _progress(progress, rows * max_new_tokens)
        bar.update(rows)
        round_index = 0
        timer.restart()
        while True:
            live = [r for r, req in enumerate(active) if not done[req]]
            if not live:
                break
            if len(live) < len(active):
                keep_rows = torch.tensor(live, device=device)
                active = [active[r] for r in live]
                anchor, temp = anchor[keep_rows], temp[keep_rows]
                runner.select(keep_rows)
                context.select(keep_rows)
            round_index += 1
            n = len(active)
            timer.lap("bookkeeping")
            hidden = self.draft.backbone(anchor, runner.next_pos.clone(), context)
            base = self.draft.base_logits(hidden)
            timer.lap("draft forward")
            with _checks.trusted_values():  # the engine's own tensors, validated at the entry
                block = self.draft.sample(hidden, base, anchor, temp, seed=seed, offset=round_index)
            timer.lap("Markov block")
            verify_lens = self._schedule(block.confidence, active, history, scheduler, sps, n, gamma)
            timer.lap("schedule")

            width = int(verify_lens.max()) + 1
            inputs = torch.cat([anchor[:, None], block.tokens[:, : width - 1]], dim=1)
            logits, taps = runner.extend(inputs)
            timer.lap("target forward")
            # chain_verify never reads past verify_lens, so a short width is padded, not copied.
            target_logits = logits if width == gamma + 1 else _pad_positions(logits, gamma + 1)
            with _checks.trusted_values():
                accept_lens, out_tokens = chain_verify(
                    target_logits,
                    block.logits,
                    block.tokens,
                    verify_lens,
                    temp,
                    seed=seed,
                    offset=round_index,
                )
            timer.lap("chain_verify")
            keep = accept_lens.to(torch.int64) + 1
            anchor_pos = runner.next_pos.clone()
            runner.commit(keep)
            row_of, slot = ragged_rows(keep)
            context.append(taps[row_of, slot], anchor_pos[row_of] + slot, row_of)
            timer.lap("commit")

            anchor = out_tokens.gather(1, accept_lens.long()[:, None]).squeeze(1)
            out_cpu, acc_cpu, ver_cpu = out_tokens.tolist(), accept_lens.tolist(), verify_lens.tolist()
            conf = block.confidence.tolist() if block.confidence is not None else None
            conf_logits = block.confidence_logits.tolist() if block.confidence_logits is not None else None
            for r, req in enumerate(active):
                new = out_cpu[r][: acc_cpu[r] + 1]
                room = max_new_tokens - len(outputs[req])
                emitted = []
                for tok in new[:room]:
                    emitted.append(tok)
                    if tok in stops:
                        break
                outputs[req].extend(emitted)
                bar.update(len(emitted))
                if len(outputs[req]) >= max_new_tokens or (emitted and emitted[-1] in stops):
                    done[req] = True
                records.append(
                    RoundRecord(
                        request=req,
                        gamma=gamma,
                        verified=int(ver_cpu[r]),
                        accepted=int(acc_cpu[r]),
                        emitted=len(emitted),
                        confidence=conf[r] if conf else [],
                        confidence_logits=conf_logits[r] if conf_logits else [],
                    )
                )
            timer.lap("bookkeeping")
            timer.end_round()
        bar.close()
        _sync(device)
        return GenerationResult(
            tokens=outputs,
            rounds=records,
            seconds=time.perf_counter() - start_time,
            num_rounds=round_index,
            phase_seconds=dict(timer.seconds) if profile else {},
        )

    def _schedule(
        self,
        confidence: torch.Tensor | None,
        active: list[int],
        history: dict[int, list[torch.Tensor]],
        scheduler: str,
        sps: sched.SpsTable | None,
        rows: int,
        gamma: int,
    ) -> torch.Tensor:
        if scheduler == "full":
            return torch.full((rows,), gamma, dtype=torch.int64, device=self.device)
        if scheduler == "causal":
            return sched.schedule_causal(confidence, sps).to(torch.int64)
        stale = []
        for r, req in enumerate(active):
            past = history[req]
            stale.append(past[-2] if len(past) >= 2 else torch.ones(gamma, device=self.device))
            past.append(confidence[r])
            del past[:-2]
        lens = sched.schedule_async(
            confidence, torch.stack(stale), sps, causal_prune=scheduler == "async+prune"
        )
        return lens.to(torch.int64)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, total: int):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", leave=False)
