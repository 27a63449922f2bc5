"""The DSPARK hot paths of SGLang 0.5.23, replaced by dspark_sgl's implementations.

Every function here is an AROUND hook ``hook(original, *args, **kwargs)``: it runs our
code for the cases it covers and calls SGLang's ``original`` for everything else, logging
once per hook which path runs and why. Our code runs without host synchronisation
(value checks are skipped inside :func:`dspark_sgl._checks.trusted_values`; every
decision to fall back reads only shapes, dtypes, devices and Python objects), so a CUDA
graph can capture it, and it is a deterministic function of its inputs, the Philox key
and the device counter, so every tensor-parallel rank computes the same tokens.

RNG: the draft noise uses :mod:`dspark_sgl.rng` (stream ``DRAFT``) keyed by SGLang's own
``DraftNoise.key`` at SGLang's device counter ``DraftNoise.offset`` (advanced by one per
sampled block, as SGLang does), position = draft step. The verify draws use stream
``ACCEPT``/``RESAMPLE`` keyed by the server seed at a device counter owned by the plugin
(advanced by one per verify). The bit streams differ from SGLang's Triton Philox layout;
the distributions are the same.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dspark_sgl import _checks, rng, scheduler
from dspark_sgl.markov import (
    ConfidenceHead,
    DraftBlock,
    GatedMarkovHead,
    MarkovHead,
    RnnMarkovHead,
    VanillaMarkovHead,
    draft_sample,
    empty_shard_candidates,
    merge_shard_candidates,
    pack_shard_candidates,
    sample_block_sharded,
    sample_block_with_head,
    sample_from_logits,
)
from dspark_sgl.sglang_plugin import sps as sps_mod
from dspark_sgl.sglang_plugin.switches import log_once, scheduler_mode
from dspark_sgl.verify import chain_verify

__all__ = [
    "accept_draft_tokens",
    "compute_verify_token_budget",
    "confidence_predict",
    "draft_markov_block",
    "markov_sample_step",
    "schedule_verify_lens_topk",
]

_FLOAT = _checks.FLOAT_DTYPES
# Draft positions are packed into 8 bits of the Philox counter.
_MAX_GAMMA = 256
# XORed into the server seed so the verify draws differ from the draft noise.
_ACCEPT_DOMAIN = 0x5EED_D5A2_C0FF_EE01


class PluginState:
    """Per-process state the hooks share: the server seed, verify counters, the SPS table."""

    def __init__(self) -> None:
        self.random_seed: int = 0
        self.accept_offsets: dict[torch.device, torch.Tensor] = {}
        self.sps_table: scheduler.SpsTable | None = None
        self.sps_source: str = "none (SGLang's planner builds its own)"
        self._sglang_tables: dict[int, tuple[object, scheduler.SpsTable]] = {}

    def accept_offset(self, device: torch.device) -> torch.Tensor:
        """The verify counter on ``device``: [1] int64, advanced in place by one per verify.

        Created by :func:`prepare_device` when SGLang builds its proposer (before any graph
        capture); a first use inside a capture is refused, since the counter's zero fill would
        become part of the graph and reset it on every replay.
        """
        if device not in self.accept_offsets:
            if _capturing(device):
                raise RuntimeError(
                    f"dspark_sgl: the verify counter on {device} would first be created inside a CUDA "
                    "graph capture (its zero fill would replay and repeat every draw); it is created "
                    "when SGLang's DraftBlockProposer is built: call "
                    "dspark_sgl.sglang_plugin.hot_paths.prepare_device(device, key) before capturing"
                )
            self.accept_offsets[device] = torch.zeros(1, dtype=torch.int64, device=device)
        return self.accept_offsets[device]

    def table_from_sglang(self, table: Any) -> scheduler.SpsTable:
        """Our table for an SGLang ``SpsCostTable`` (cached per object), exact at integer B."""
        cached = self._sglang_tables.get(id(table))
        if cached is None or cached[0] is not table:
            ours = sps_mod.from_sglang_points(
                table.sample_batch_tokens, table.sample_steps_per_sec, table.max_batch_tokens
            )
            cached = (table, ours)
            self._sglang_tables[id(table)] = cached
        return cached[1]


STATE = PluginState()


def _capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on ``device``'s current stream."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


_CONSTANTS: dict[tuple[int, torch.device], torch.Tensor] = {}
_POSITIONS: dict[torch.device, torch.Tensor] = {}


def _device_constant(value: int, device: torch.device) -> torch.Tensor:
    """A 0-D int64 tensor on ``device``, written by a fill kernel (never a host copy), cached
    except inside a graph capture (graph-owned memory is refilled by the graph's own fill)."""
    cached = _CONSTANTS.get((value, device))
    if cached is None:
        cached = torch.full((), value, dtype=torch.int64, device=device)
        if not _capturing(device):
            _CONSTANTS[(value, device)] = cached
    return cached


def _positions(device: torch.device) -> torch.Tensor:
    """arange(_MAX_GAMMA) int64 on ``device`` (cached as :func:`_device_constant`)."""
    cached = _POSITIONS.get(device)
    if cached is None:
        cached = torch.arange(_MAX_GAMMA, dtype=torch.int64, device=device)
        if not _capturing(device):
            _POSITIONS[device] = cached
    return cached


def _accept_seed() -> int:
    return (STATE.random_seed ^ _ACCEPT_DOMAIN) & 0x7FFFFFFFFFFFFFFF


def prepare_device(device: torch.device, draft_key: int | None = None) -> None:
    """Create the per-device tensors the hooks use (verify counter, positions, the Philox keys)
    outside any graph capture; called when SGLang builds its proposer."""
    STATE.accept_offset(device)
    _positions(device)
    _device_constant(_accept_seed(), device)
    if draft_key is not None:
        _device_constant(draft_key, device)


def _version_key(*tensors: torch.Tensor | None) -> tuple:
    return tuple(None if t is None else (t.data_ptr(), t._version, t.dtype, t.shape) for t in tensors)


# ---------------------------------------------------------------------------------------
# Markov head


@dataclass(frozen=True)
class _ShardGeometry:
    """A rank's slice ``[start, end)`` of a TP-sharded Markov vocab and SGLang's exchange."""

    start: int
    end: int
    vocab_shard: Any  # SGLang's VocabShard (start, gather)


def _shard_geometry(module: Any, kind: str) -> _ShardGeometry | str | None:
    """The rank's vocab slice of a sharded head, None for a whole vocab, or why not covered."""
    vocab_shard = getattr(module, "vocab_shard", None)
    if kind == "v4":
        geometry = getattr(module, "_tp_shard", None)
        if geometry is None:
            return None if vocab_shard is None else "vocab_shard without a W2 shard geometry"
        start, end = int(geometry.org_vocab_start), int(geometry.org_vocab_end)
    else:
        rows = getattr(module, "_w2_rows", None)
        if rows is None:
            return None if vocab_shard is None else "vocab_shard without W2 rows"
        start, end = int(rows.start), int(rows.stop)
    if vocab_shard is None:
        # SGLang slices W2 but has nothing to gather: the rank holds the whole vocab.
        return None if (start, end) == (0, int(module.vocab_size)) else "W2 slice without a vocab gather"
    # Every rank must decide alike (the exchange is collective), so nothing here depends on
    # this rank's own start: a shard not starting at a multiple of 16 runs our reference ops
    # (the kernel needs starts aligned to the draft sampler's groups) with the same exchange
    # as the other ranks.
    if int(vocab_shard.start) != start or not 0 <= start <= end <= int(module.vocab_size):
        return f"vocab shard [{start}, {end}) is not a slice of the vocab"
    return _ShardGeometry(start=start, end=end, vocab_shard=vocab_shard)


def _markov_weights(module: Any) -> tuple[str, tuple[torch.Tensor, ...], _ShardGeometry | None] | str:
    """(kind, weights, shard) of an SGLang Markov head we cover, or the reason we do not."""
    from sglang.srt.models.dspark import GatedMarkovHead as SgGated
    from sglang.srt.models.dspark import RNNHead as SgRnn
    from sglang.srt.models.dspark import VanillaMarkov as SgVanilla

    kinds = {SgVanilla: "vanilla", SgGated: "gated", SgRnn: "rnn"}
    v4_cls = _v4_head_class()
    if v4_cls is not None:
        kinds[v4_cls] = "v4"
    kind = kinds.get(type(module))
    if kind is None:
        return f"Markov head type {type(module).__name__} is not covered"
    shard = _shard_geometry(module, kind) if kind in ("vanilla", "v4") else None
    if isinstance(shard, str):
        return shard
    if kind in ("gated", "rnn") and (
        getattr(module, "vocab_shard", None) is not None or getattr(module, "_w2_rows", None) is not None
    ):
        return "TP-sharded Markov vocab on a gated/RNN head"
    # V4's markov_w1 is a VocabParallelEmbedding, its rows padded (to 64): the tokens index
    # the first vocab_size.
    weights = [module.markov_w1.weight[: int(module.vocab_size)], module.markov_w2.weight]
    if kind == "gated":
        weights += [module.gate_proj.weight, module.gate_proj.bias]
    elif kind == "rnn":
        weights += [module.joint_proj.weight, module.joint_proj.bias]
    if any(w is None or w.dtype not in _FLOAT for w in weights):
        return "Markov head weights are not float32/bf16/fp16"
    if len({w.device for w in weights}) != 1:
        return "Markov head weights on several devices"
    if kind in ("gated", "rnn") and any(w.dtype != torch.float32 for w in weights):
        # SGLang rounds every intermediate of these heads (gate, state, products) to the weights'
        # dtype; ours match only its final bias rounding, so SGLang's own step runs.
        return f"{kind} head with 16-bit weights (SGLang's intermediate rounding is its own)"
    if kind == "v4" and weights[1].shape[0] != int(module.vocab_size):
        return "V4 markov_w2 does not hold the whole vocab"
    return kind, tuple(w.detach() for w in weights), shard


@functools.cache
def _v4_head_class() -> type | None:
    """SGLang's ``DSparkV4MarkovHead`` (None when its module cannot be imported here)."""
    try:
        from sglang.srt.models.deepseek_v4_dspark import DSparkV4MarkovHead
    except Exception:
        return None
    return DSparkV4MarkovHead


def our_markov_head(module: Any) -> MarkovHead | str:
    """Our :class:`~dspark_sgl.markov.MarkovHead` sharing ``module``'s weights (cached on the
    module, rebuilt when a weight changes), or the reason the module is not covered.

    ``DSparkV4MarkovHead`` becomes a vanilla head whose bias is rounded to W2's dtype
    (SGLang's ``project_bias``: fp32, or bf16 upcast into the fp32 step add). A TP-sharded
    vocab (SGLang's ``vocab_shard``) gives the rank's shard (``vocab_start`` = its start).
    """
    found = _markov_weights(module)
    if isinstance(found, str):
        return found
    kind, weights, shard = found
    key = (kind, _version_key(*weights), None if shard is None else (shard.start, shard.end))
    cached = module.__dict__.get("_dspark_sgl_markov")
    if cached is not None and cached[0] == key:
        return cached[1]
    if kind in ("vanilla", "v4"):
        w1 = weights[0]
        if kind == "v4":
            # SGLang casts W1[prev] to W2's dtype before the product, so W1 in that dtype
            # is the same arithmetic (and gives the kernel one weight dtype).
            w1 = w1.to(weights[1].dtype)
        head: MarkovHead = VanillaMarkovHead(w1, weights[1])
        if shard is not None:
            head = head.shard(shard.start, shard.end)
    elif kind == "gated":
        head = GatedMarkovHead(*weights)
    else:
        head = RnnMarkovHead(*weights)
    module.__dict__["_dspark_sgl_markov"] = (key, head)
    return head


def markov_path(module: Any) -> str:
    """What the ``markov_block`` hook runs for SGLang's Markov head ``module`` (for the
    start-up summary): ``dspark_sgl ...`` with the head, W2 dtype and vocab shard, or
    ``sglang original (reason)``."""
    head = our_markov_head(module)
    if isinstance(head, str):
        return f"sglang original ({head})"
    what = f"dspark_sgl {type(module).__name__} W2 {str(head.w2.dtype).removeprefix('torch.')}"
    if _is_shard(head):
        what += (
            f" vocab shard [{head.vocab_start}, {head.vocab_start + head.vocab_size}) of {head.total_vocab}"
        )
    return what


def _is_shard(head: MarkovHead) -> bool:
    return isinstance(head, VanillaMarkovHead) and head.is_shard


def _block_unsupported(
    head: MarkovHead,
    base_logits: torch.Tensor,
    anchor_tokens: torch.Tensor,
    draft_hidden: torch.Tensor | None,
    step_temperatures: torch.Tensor,
    noise: Any,
    logits_out: torch.Tensor | None,
    step_dtype: torch.dtype,
) -> str | None:
    if not isinstance(base_logits, torch.Tensor) or base_logits.dim() != 3 or base_logits.dtype not in _FLOAT:
        return "base_logits is not a [bs, gamma, V] float tensor"
    bs, gamma, width = base_logits.shape
    device = base_logits.device
    sharded = _is_shard(head)
    if sharded and width < head.vocab_size:
        return f"base_logits width {width} < the rank's vocab shard {head.vocab_size}"
    if not sharded and width != head.vocab_size:
        return f"base_logits width {width} != Markov vocab {head.vocab_size}"
    if not 1 <= gamma <= _MAX_GAMMA:
        return f"gamma {gamma} outside [1, {_MAX_GAMMA}]"
    if head.w1.device != device:
        return "Markov head and base_logits on different devices"
    if step_dtype not in _FLOAT:
        return f"step dtype {step_dtype}"
    if (
        not isinstance(anchor_tokens, torch.Tensor)
        or anchor_tokens.shape != (bs,)
        or anchor_tokens.device != device
    ):
        return "anchor_tokens is not [bs] on the logits' device"
    if (
        not isinstance(step_temperatures, torch.Tensor)
        or step_temperatures.dtype != torch.float32
        or step_temperatures.shape != (bs,)
        or step_temperatures.device != device
    ):
        return "step_temperatures is not [bs] float32"
    offset = getattr(noise, "offset", None)
    key = getattr(noise, "key", None)
    if not isinstance(key, int) or not 0 <= key < (1 << 63):
        return "noise key is not a 63-bit int"
    if not isinstance(offset, torch.Tensor) or offset.dtype != torch.int64 or offset.numel() != 1:
        return "noise offset is not a one-element int64 tensor"
    if offset.device != device:
        return "noise offset on another device"
    if head.needs_hidden:
        if draft_hidden is None:
            return "gated/RNN head without draft_hidden"
        if draft_hidden.shape != (bs, gamma, head.hidden_size) or draft_hidden.dtype not in _FLOAT:
            return "draft_hidden is not [bs, gamma, H] float"
    # SGLang keeps a sharded draft's step logits gathered whole (step_logits_width).
    kept_width = head.total_vocab if sharded else width
    if logits_out is not None and (
        logits_out.shape != (bs, gamma, kept_width)
        or logits_out.dtype != step_dtype
        or logits_out.device != device
    ):
        return "logits_out is not [bs, gamma, V] in the step dtype"
    return None


def _sample_step(
    head: MarkovHead,
    prev: torch.Tensor,
    base: torch.Tensor,
    hidden: torch.Tensor | None,
    state: torch.Tensor | None,
    temperatures: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    step: int,
    step_dtype: torch.dtype,
    logits_out: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    bias, state = head.step(prev, hidden, state)
    # The step logits are rounded to the dtype SGLang keeps them in; the token is drawn
    # from exactly those values, so verification sees the distribution it was drawn from.
    logits = (base.float() + bias).to(step_dtype)
    if logits_out is not None:
        logits_out.copy_(logits)
    token = sample_from_logits(
        logits.float(),
        temperatures,
        seed=seed,
        offset=offset,
        stream=rng.Stream.DRAFT,
        position=_positions(base.device)[step],
    )
    return token, state


def draft_markov_block(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """AROUND ``dspark_draft.draft_markov_block``: the gamma-step Markov loop on our heads.

    Contract kept: returns ``(tokens [bs, gamma] int64, step logits [bs, gamma, V] in
    ``markov_head.step_logits_dtype(base_logits.dtype)``)``, the logits written into
    ``logits_out`` when given, ``(tokens, None)`` for a greedy draft; every step's tokens
    go through ``tp_sync``; ``noise.offset`` advances by one per sampled block.
    """
    if args:
        log_once("markov_block", "sglang original", "positional arguments")
        return original(*args, **kwargs)
    markov_head = kwargs.get("markov_head")
    head = our_markov_head(markov_head) if markov_head is not None else "no markov_head"
    reason = head if isinstance(head, str) else None
    base_logits = kwargs.get("base_logits")
    greedy_draft = bool(kwargs.get("greedy_draft", False))
    # A greedy draft keeps no step logits (SGLang ignores logits_out then).
    logits_out = None if greedy_draft else kwargs.get("logits_out")
    step_dtype = None
    if reason is None:
        if isinstance(base_logits, torch.Tensor):
            step_dtype = markov_head.step_logits_dtype(base_logits.dtype)
        reason = _block_unsupported(
            head,
            base_logits,
            kwargs.get("anchor_tokens"),
            kwargs.get("draft_hidden"),
            kwargs.get("step_temperatures"),
            kwargs.get("noise"),
            logits_out,
            step_dtype,
        )
    if reason is not None:
        log_once("markov_block", "sglang original", reason)
        return original(*args, **kwargs)
    from sglang.srt.speculative.spec_tp_sync import SpecTpSyncSite

    bs, gamma, width = base_logits.shape
    device = base_logits.device
    noise = kwargs["noise"]
    tp_sync = kwargs["tp_sync"]
    draft_hidden = kwargs.get("draft_hidden")
    temperatures = kwargs["step_temperatures"]
    sharded = _is_shard(head)
    per_step_sync = tp_sync.enabled(SpecTpSyncSite.DSPARK_DRAFT)
    if greedy_draft:
        temperatures = torch.zeros_like(temperatures)
    elif logits_out is None:
        logits_out = torch.empty(
            (bs, gamma, head.total_vocab if sharded else width), dtype=step_dtype, device=device
        )
    seed = _device_constant(noise.key, device)
    offset = noise.offset
    anchor = kwargs["anchor_tokens"].long()
    vanilla = isinstance(head, VanillaMarkovHead)
    mode = markov_path(markov_head) + _block_mode(vanilla, sharded, per_step_sync)
    log_once("markov_block", "dspark_sgl", mode, variant=mode)

    def sync(tokens: torch.Tensor) -> torch.Tensor:
        return tp_sync.sync(SpecTpSyncSite.DSPARK_DRAFT, tokens)

    with _checks.trusted_values():
        if sharded:
            block = sample_block_sharded(
                base_logits[..., : head.vocab_size],
                anchor,
                head,
                temperatures,
                seed=seed,
                offset=offset,
                gather_stacked=markov_head.vocab_shard.gather.gather_stacked,
                gather_logits=_padded_gather(markov_head.vocab_shard.gather, width, head.total_vocab),
                sync=sync,
                keep_logits=logits_out is not None,
                logits_dtype=step_dtype,
            )
        elif vanilla and not per_step_sync:
            # The whole block in one call (the fused markov_block kernel on a GPU): no tokens
            # need syncing between steps, and the logits are rounded to SGLang's step dtype
            # before sampling exactly as SGLang's step does.
            block = sample_block_with_head(
                base_logits,
                anchor,
                head,
                temperatures,
                seed=seed,
                offset=offset,
                keep_logits=logits_out is not None,
                logits_dtype=step_dtype,
            )
        elif vanilla:
            block = _block_per_position(
                base_logits,
                anchor,
                head,
                temperatures,
                seed,
                offset,
                logits_out is not None,
                step_dtype,
                sync,
            )
        else:
            block = _block_step_by_step(
                head,
                base_logits,
                anchor,
                draft_hidden,
                temperatures,
                seed,
                offset,
                step_dtype,
                logits_out,
                sync,
            )
    if greedy_draft:
        return block.tokens, None
    if block.logits is not logits_out:
        logits_out.copy_(block.logits)
    noise.offset.add_(1)
    return block.tokens, logits_out


def _block_mode(vanilla: bool, sharded: bool, per_step_sync: bool) -> str:
    if sharded:
        return ": per position, shard winners exchanged by SGLang's gather_stacked, tokens through tp_sync"
    if vanilla and not per_step_sync:
        return ": whole block in one sample_block_with_head call"
    if vanilla:
        return ": one sample_block_with_head call per position, tokens through tp_sync between"
    return ": step by step, tokens through tp_sync"


def _padded_gather(gather: Any, padded: int, vocab: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """SGLang's ``VocabGather`` on [N, V_local] rows: padded to the rank's lm_head partition
    width, gathered side by side and cropped to the vocab, as SGLang keeps its step logits."""

    def gather_logits(local: torch.Tensor) -> torch.Tensor:
        if local.shape[1] < padded:
            local = torch.nn.functional.pad(local, (0, padded - local.shape[1]))
        return gather(local)[:, :vocab]

    return gather_logits


def _block_per_position(
    base_logits: torch.Tensor,
    anchor: torch.Tensor,
    head: VanillaMarkovHead,
    temperatures: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    keep_logits: bool,
    step_dtype: torch.dtype,
    sync: Callable[[torch.Tensor], torch.Tensor],
) -> DraftBlock:
    """One ``sample_block_with_head`` call per position (the kernel on a GPU), each
    position's tokens through SGLang's ``tp_sync`` before they feed the next position."""
    tokens, logits = [], []
    prev = anchor
    for k in range(base_logits.shape[1]):
        step = sample_block_with_head(
            base_logits[:, k : k + 1],
            prev,
            head,
            temperatures,
            seed=seed,
            offset=offset,
            keep_logits=keep_logits,
            logits_dtype=step_dtype,
            first_position=k,
        )
        prev = sync(step.tokens[:, 0])
        tokens.append(prev)
        logits.append(step.logits)
    return DraftBlock(
        tokens=torch.stack(tokens, dim=1), logits=torch.cat(logits, dim=1) if keep_logits else None
    )


def _block_step_by_step(
    head: MarkovHead,
    base_logits: torch.Tensor,
    anchor: torch.Tensor,
    draft_hidden: torch.Tensor | None,
    temperatures: torch.Tensor,
    seed: torch.Tensor,
    offset: torch.Tensor,
    step_dtype: torch.dtype,
    logits_out: torch.Tensor | None,
    sync: Callable[[torch.Tensor], torch.Tensor],
) -> DraftBlock:
    """Gated/RNN heads: SGLang's step loop on our ops, tokens through ``tp_sync``."""
    state = head.initial_state(base_logits.shape[0])
    prev = anchor
    tokens = []
    for step in range(base_logits.shape[1]):
        prev, state = _sample_step(
            head,
            prev,
            base_logits[:, step],
            None if draft_hidden is None else draft_hidden[:, step],
            state,
            temperatures,
            seed,
            offset,
            step,
            step_dtype,
            None if logits_out is None else logits_out[:, step],
        )
        prev = sync(prev)
        tokens.append(prev)
    return DraftBlock(tokens=torch.stack(tokens, dim=1), logits=logits_out)


def _step_unsupported(kwargs: dict) -> str | None:
    base_logits, bias = kwargs.get("base_logits"), kwargs.get("bias")
    if not isinstance(base_logits, torch.Tensor) or not isinstance(bias, torch.Tensor):
        return "base_logits/bias missing"
    if base_logits.dim() != 2 or bias.dim() != 2 or bias.shape[0] != base_logits.shape[0]:
        return "base_logits/bias are not [rows, V]"
    if bias.shape[1] > base_logits.shape[1]:
        return "bias wider than base_logits"
    if base_logits.dtype not in _FLOAT or bias.dtype not in _FLOAT:
        return "base_logits/bias dtype"
    gather, gather_logits = kwargs.get("gather"), kwargs.get("gather_logits")
    vocab_start = kwargs.get("vocab_start", 0)
    if isinstance(vocab_start, bool) or not isinstance(vocab_start, int) or vocab_start < 0:
        return "vocab_start is not a non-negative int"
    if gather is not None and not callable(gather):
        return "gather is not callable"
    step_dtype = kwargs.get("step_dtype")
    if step_dtype not in _FLOAT:
        return f"step dtype {step_dtype}"
    step = kwargs.get("step")
    if not isinstance(step, int) or not 0 <= step < _MAX_GAMMA:
        return f"step {step!r} outside [0, {_MAX_GAMMA})"
    key = kwargs.get("key")
    if not isinstance(key, int) or not 0 <= key < (1 << 63):
        return "key is not a 63-bit int"
    device = base_logits.device
    temperatures, offset = kwargs.get("temperatures"), kwargs.get("offset")
    if (
        not isinstance(temperatures, torch.Tensor)
        or temperatures.shape != (base_logits.shape[0],)
        or temperatures.dtype != torch.float32
        or temperatures.device != device
    ):
        return "temperatures is not [rows] float32"
    if not isinstance(offset, torch.Tensor) or offset.dtype != torch.int64 or offset.numel() != 1:
        return "offset is not a one-element int64 tensor"
    if offset.device != device or bias.device != device:
        return "inputs on several devices"
    logits_out = kwargs.get("logits_out")
    if logits_out is not None:
        if gather is not None and not callable(gather_logits):
            return "kept logits over a sharded vocab without gather_logits"
        if (
            logits_out.dim() != 2
            or logits_out.shape[0] != base_logits.shape[0]
            or (gather is None and logits_out.shape != base_logits.shape)
            or logits_out.dtype != step_dtype
            or logits_out.device != device
        ):
            return "logits_out shape/dtype"
    return None


def markov_sample_step(original: Callable[..., Any], cls: type, *args: Any, **kwargs: Any) -> torch.Tensor:
    """AROUND ``MarkovSampleStep.execute``: bias add, rounding to the step dtype and a
    draw by :func:`dspark_sgl.markov.draft_sample` (argmax on rows at temperature 0, or every row when
    ``has_sampled_rows is False``). Returns [rows] int64 global token ids.

    SGLang's contract: ``bias`` covers the first ``width`` columns of the rank's (padded)
    ``base_logits``; the other columns are stored into ``logits_out`` but never drawn.
    Sharded (``gather``): with ``logits_out``, the rank's step logits are gathered whole
    (``gather_logits``) and the token drawn from the whole row; without, the rank's winner
    (noise keyed by the groups of global columns ``vocab_start + v``) is exchanged by ``gather``
    (``gather_stacked``) and merged as the whole row would decide.
    """
    reason = "positional arguments" if args else _step_unsupported(kwargs)
    if reason is not None:
        log_once("markov_step", "sglang original", reason)
        return original(cls, *args, **kwargs)
    base_logits, bias = kwargs["base_logits"], kwargs["bias"]
    gather, gather_logits = kwargs.get("gather"), kwargs.get("gather_logits")
    logits_out = kwargs.get("logits_out")
    vocab_start = kwargs.get("vocab_start", 0)
    log_once(
        "markov_step",
        "dspark_sgl",
        "dspark_sgl.markov.draft_sample"
        + ("" if gather is None else " + shard candidates through SGLang's gather_stacked"),
    )
    device = base_logits.device
    temperatures = kwargs["temperatures"]
    if kwargs.get("has_sampled_rows") is False:
        temperatures = torch.zeros_like(temperatures)
    step_dtype = kwargs["step_dtype"]
    width = bias.shape[1]
    value = base_logits.float()
    value = torch.cat([value[:, :width] + bias.float(), value[:, width:]], dim=1).to(step_dtype)
    draw = dict(
        seed=_device_constant(kwargs["key"], device),
        offset=kwargs["offset"],
        stream=rng.Stream.DRAFT,
        position=_positions(device)[kwargs["step"]],
    )
    if gather is not None and logits_out is not None:
        full = gather_logits(value)[:, : logits_out.shape[1]]
        logits_out.copy_(full)
        return sample_from_logits(full.float(), temperatures, **draw)
    if logits_out is not None:
        logits_out.copy_(value)
    drawn = value[:, :width].float()
    rows = drawn.shape[0]
    if width == 0:
        candidates = empty_shard_candidates(rows, device)
    else:
        local, keys = draft_sample(drawn, temperatures, vocab_start=vocab_start, **draw)
        candidates = pack_shard_candidates(keys, local + vocab_start)
    return merge_shard_candidates(candidates if gather is None else gather(candidates), rows)[0]


# ---------------------------------------------------------------------------------------
# Confidence head and STS


def _our_confidence_head(module: Any, gamma: int) -> ConfidenceHead:
    weight = module.proj.weight.detach()
    bias = None if module.proj.bias is None else module.proj.bias.detach()
    sts = module.sts_temperatures
    key = (gamma, _version_key(weight, bias, sts))
    cached = module.__dict__.get("_dspark_sgl_confidence")
    if cached is not None and cached[0] == key:
        return cached[1]
    temperatures = sts.detach().to(torch.float32).reshape(-1).expand(gamma).contiguous()
    head = ConfidenceHead(weight, 0.0 if bias is None else bias, temperatures.to(weight.device))
    module.__dict__["_dspark_sgl_confidence"] = (key, head)
    return head


def confidence_predict(
    original: Callable[..., Any], self: Any, *args: Any, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """AROUND ``DSparkConfidenceHead.predict``: raw logit ``w . [h_k; W1[x_{k-1}]] + b`` and
    STS ``sigmoid(z / T_k)`` by :class:`dspark_sgl.markov.ConfidenceHead`.

    Returns ``(confidence [bs, gamma] float32, raw [bs, gamma] in the projection dtype)``.
    """
    features = args[0] if args else kwargs.get("features")
    anchor_tokens = kwargs.get("anchor_tokens")
    draft_tokens = kwargs.get("draft_tokens")
    markov_head = kwargs.get("markov_head")
    reason = None
    weight = self.proj.weight
    sts = getattr(self, "sts_temperatures", None)
    if len(args) > 1 or not isinstance(features, torch.Tensor) or not isinstance(draft_tokens, torch.Tensor):
        reason = "unexpected arguments"
    elif draft_tokens.dim() != 2 or draft_tokens.shape[1] < 1:
        reason = "draft_tokens is not [bs, gamma]"
    elif features.dtype not in _FLOAT or weight.dtype not in _FLOAT or weight.shape[0] != 1:
        reason = "features/projection dtype or shape"
    elif not isinstance(sts, torch.Tensor) or sts.numel() not in (1, draft_tokens.shape[1]):
        reason = "STS temperatures are neither one value nor one per position"
    elif features.device != weight.device or draft_tokens.device != weight.device:
        reason = "inputs on several devices"
    else:
        bs, gamma = draft_tokens.shape
        rank = weight.shape[1] - (features.numel() // max(bs * gamma, 1))
        if bs * gamma == 0 or features.numel() % (bs * gamma) != 0:
            reason = "features do not hold one row per draft position"
        elif self.with_markov and (markov_head is None or rank < 1 or anchor_tokens is None):
            reason = "Markov feature unavailable"
        elif not self.with_markov and rank != 0:
            reason = "projection width != hidden size"
    if reason is not None:
        log_once("confidence", "sglang original", reason)
        return original(self, *args, **kwargs)
    log_once("confidence", "dspark_sgl", "dspark_sgl.markov.ConfidenceHead (STS per position)")
    head = _our_confidence_head(self, gamma)
    hidden = features.reshape(bs * gamma, -1)
    emb = None
    if self.with_markov:
        prev = torch.cat([anchor_tokens.reshape(-1, 1), draft_tokens[:, : gamma - 1]], dim=1)
        emb = markov_head.get_prev_embeddings(prev).reshape(bs * gamma, -1)
    # ConfidenceHead.logit rounds as SGLang does: the embedding to the features' dtype, the
    # features and the raw logit to the projection's dtype; STS reads that rounded logit.
    raw = head.logit(hidden, emb).reshape(bs, gamma)
    confidence = head.calibrate(raw)
    return confidence, raw.to(weight.dtype)


# ---------------------------------------------------------------------------------------
# Verification


def _accept_unsupported(kwargs: dict) -> str | None:
    candidates, target_logits = kwargs.get("candidates"), kwargs.get("target_logits")
    draft_block, sampling_info = kwargs.get("draft_block"), kwargs.get("sampling_info")
    vnd = kwargs.get("verify_num_draft_tokens")
    if kwargs.get("block_verification"):
        return "block verification"
    if kwargs.get("rejection_noise") is not None:
        return "SGLang's block-wise rejection noise is configured"
    if not isinstance(candidates, torch.Tensor) or candidates.dim() != 2 or not isinstance(vnd, int):
        return "candidates is not [bs, verify_num_draft_tokens]"
    bs = candidates.shape[0]
    if candidates.shape[1] != vnd or vnd < 1 or vnd - 1 > _MAX_GAMMA - 1:
        return "candidates width != verify_num_draft_tokens"
    if (
        not isinstance(target_logits, torch.Tensor)
        or target_logits.dim() != 2
        or target_logits.shape[0] != bs * vnd
    ):
        return "target_logits is not [bs * verify_num_draft_tokens, V]"
    if target_logits.dtype not in _FLOAT or target_logits.device != candidates.device:
        return "target_logits dtype/device"
    all_greedy = sampling_info is None or bool(sampling_info.is_all_greedy)
    if not all_greedy:
        if sampling_info.need_top_k_sampling or sampling_info.need_top_p_sampling:
            return "top-k/top-p sampling"
        if getattr(sampling_info, "need_min_p_sampling", False):
            return "min-p sampling"
        if draft_block.greedy_draft or draft_block.corrected_logits is None:
            return "argmax draft (one-hot draft distribution)"
        logits = draft_block.corrected_logits
        if logits.shape != (bs, vnd - 1, target_logits.shape[1]) or logits.dtype not in _FLOAT:
            return "draft logits are not [bs, verify_num_draft_tokens - 1, V]"
        temps = draft_block.temperatures
        if temps.shape != (bs,) or temps.dtype != torch.float32 or draft_block.greedy_mask.shape != (bs,):
            return "draft temperatures/greedy mask shape"
    layout = kwargs.get("cutoff_layout")
    if layout is not None and layout.verify_lens.shape != (bs,):
        return "cutoff verify_lens shape"
    return None


def accept_draft_tokens(
    original: Callable[..., Any], *args: Any, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AROUND ``dspark_verify.accept_draft_tokens``: greedy and temperature-only sampled
    acceptance by :func:`dspark_sgl.verify.chain_verify` (rows may mix).

    Returns ``(correct_len [bs] int32, bonus [bs] int64, cap_trim_lens [bs] int32)``:
    accepted drafts (at most ``verify_len - 1`` under a cutoff layout), the correction or
    bonus token, and, for greedy rows, how many more drafts the target agreed with past the
    cutoff (0 on sampled rows, whose positions past the cutoff are not evaluated).
    """
    reason = "positional arguments" if args else _accept_unsupported(kwargs)
    if reason is not None:
        log_once("accept", "sglang original", reason)
        return original(*args, **kwargs)
    log_once("accept", "dspark_sgl", "dspark_sgl.verify.chain_verify")
    candidates = kwargs["candidates"]
    sampling_info = kwargs.get("sampling_info")
    draft_block = kwargs["draft_block"]
    vnd = kwargs["verify_num_draft_tokens"]
    bs = candidates.shape[0]
    gamma = vnd - 1
    device = candidates.device
    target = kwargs["target_logits"].view(bs, vnd, -1)
    drafts = candidates[:, 1:].long()
    all_greedy = sampling_info is None or bool(sampling_info.is_all_greedy)
    if all_greedy:
        temperature = torch.zeros(bs, dtype=torch.float32, device=device)
        draft_logits = target[:, :gamma]
    else:
        temperature = torch.where(
            draft_block.greedy_mask.to(device),
            torch.zeros_like(draft_block.temperatures),
            draft_block.temperatures,
        )
        draft_logits = draft_block.corrected_logits
    layout = kwargs.get("cutoff_layout")
    if layout is None:
        verify_lens = torch.full((bs,), gamma, dtype=torch.int64, device=device)
    else:
        verify_lens = (layout.verify_lens.to(device=device, dtype=torch.int64) - 1).clamp(0, gamma)
    offset = STATE.accept_offset(device)
    seed = _device_constant(_accept_seed(), device)
    with _checks.trusted_values():
        accept_lens, out_tokens = chain_verify(
            target, draft_logits, drafts, verify_lens, temperature, seed=seed, offset=offset
        )
    offset.add_(1)
    bonus = out_tokens.gather(1, accept_lens.long()[:, None]).squeeze(1)
    if gamma > 0:
        agree = (drafts == target[:, :gamma].argmax(dim=-1)).to(torch.int32).cumprod(dim=1).sum(dim=1)
        greedy_rows = temperature == 0
        cap_trim = torch.where(greedy_rows, agree - accept_lens, torch.zeros_like(accept_lens))
    else:
        cap_trim = torch.zeros_like(accept_lens)
    return accept_lens.to(torch.int32), bonus.to(torch.int64), cap_trim.to(torch.int32)


# ---------------------------------------------------------------------------------------
# Scheduling


def compute_verify_token_budget(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """AROUND ``dspark_planner.compute_verify_token_budget``: the asynchronous budget K by
    :func:`dspark_sgl.scheduler.throughput_path` (global argmax of Theta, no break).

    Returns SGLang's ``VerifyBudgetDecision(budget, predicted_step_seconds, predicted_theta)``;
    SGLang's step-function SPS table is read exactly (:func:`sps.from_sglang_points`).
    """
    from sglang.srt.speculative.dspark_components.dspark_planner import VerifyBudgetDecision
    from sglang.srt.speculative.dspark_components.dspark_sps import SpsCostTable

    survival = kwargs.get("history_survival_probs")
    table = kwargs.get("sps_table")
    cfg = kwargs.get("cfg")
    reason = None
    if args or not isinstance(survival, torch.Tensor) or cfg is None:
        reason = "unexpected arguments"
    elif not isinstance(table, SpsCostTable):
        reason = f"SPS table type {type(table).__name__} (additive tables stay with SGLang)"
    elif min(table.sample_batch_tokens) < 1:
        reason = "SPS probe below one token"
    elif survival.dim() != 2 or survival.dtype not in _checks.ANY_FLOAT_DTYPES:
        reason = "history_survival_probs is not [R, gamma] float"
    elif not cfg.survival_eps > 0:
        reason = "survival_eps <= 0"
    ours = None
    if reason is None:
        try:
            ours = STATE.table_from_sglang(table)
        except ValueError as exc:
            # SGLang accepts tables ours cannot hold (e.g. a speed of 0.0): its budget decides.
            reason = f"SPS table not representable as a dspark_sgl SpsTable ({exc})"
            log_once("budget_sps_table", "sglang original", reason, level=logging.WARNING)
    if reason is not None:
        log_once("budget", "sglang original", reason)
        return original(*args, **kwargs)
    log_once("budget", "dspark_sgl", "dspark_sgl.scheduler.throughput_path")
    STATE.sps_table = ours
    rows = survival.shape[0]
    window = survival[:, : cfg.resolved_max_verify_len()].float()
    window = torch.where(window >= cfg.survival_eps, window, torch.zeros_like(window))
    with _checks.trusted_values():
        theta = scheduler.throughput_path(window, ours)
    budget = int(torch.argmax(theta))
    speed = ours(rows + budget)
    return VerifyBudgetDecision(
        budget=budget,
        predicted_step_seconds=1.0 / speed if speed > 0 else None,
        predicted_theta=float(theta[budget]),
    )


def schedule_verify_lens_topk(
    original: Callable[..., Any], cls: type, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """AROUND ``ScheduleVerifyLensTopk.execute``: the per-request layout by
    :func:`dspark_sgl.scheduler.schedule_topk` (or :func:`schedule_topk_causal` with
    ``DSPARK_SGL_SCHEDULER=prune``).

    Returns verify lengths [R] int32 counting the anchor: ``min_verify_len + admitted``,
    clamped to ``[max(min_verify_len, 1), max_len]``, on the confidences' device.
    """
    confidence, budget, cfg = kwargs.get("confidence"), kwargs.get("budget"), kwargs.get("cfg")
    reason = None
    if args or not isinstance(confidence, torch.Tensor) or cfg is None:
        reason = "unexpected arguments"
    elif isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        reason = "budget is not a non-negative int"
    elif confidence.dim() != 2 or confidence.dtype not in _FLOAT or confidence.shape[1] < 1:
        reason = "confidence is not [R, gamma] float"
    elif not cfg.survival_eps > 0 or cfg.min_verify_len < 0:
        reason = "survival_eps <= 0 or negative min_verify_len"
    mode = scheduler_mode()
    if reason is None and mode == "prune" and STATE.sps_table is None:
        log_once("topk", "top-K without prune", "no SPS table seen by the budget hook yet")
    if reason is not None:
        log_once("topk", "sglang original", reason)
        return original(cls, *args, **kwargs)
    prune = mode == "prune" and STATE.sps_table is not None
    log_once(
        "topk",
        "dspark_sgl",
        "dspark_sgl.scheduler.schedule_topk_causal (prune)"
        if prune
        else "dspark_sgl.scheduler.schedule_topk",
    )
    max_len = cfg.resolved_max_verify_len()
    window = confidence[:, :max_len].float()
    survival = torch.cumprod(window, dim=1)
    # Candidates below survival_eps are not admitted: zero the first confidence under it.
    window = torch.where(survival >= cfg.survival_eps, window, torch.zeros_like(window))
    with _checks.trusted_values():
        if prune:
            admitted = scheduler.schedule_topk_causal(window, budget, STATE.sps_table)
        else:
            admitted = scheduler.schedule_topk(window, budget)
    lens = (admitted.to(torch.int64) + cfg.min_verify_len).clamp(min=max(cfg.min_verify_len, 1), max=max_len)
    return lens.to(torch.int32)
