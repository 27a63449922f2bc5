"""``python -m dspark_sgl train``: train a DSpark or DFlash draft against a frozen target.

The DeepSpec recipe (SPEC section 3) with the target run online: every step runs the
frozen Hugging Face target on a batch of conversations (tapped hidden states and logits,
no precomputed cache), picks random anchors whose first label is a trained (assistant)
token, and trains the draft's backbone, Markov head and confidence head on

* ``CE``: cross-entropy of the Markov-corrected logits (teacher-forced previous tokens);
* ``L1``: ``sum_v |softmax(draft) - softmax(target)|`` in float32 (twice the TV distance);
* ``BCE``: the confidence logit against ``c* = 1 - L1 / 2`` (detached);

weighted 0.1 / 0.9 / 1.0 (a DFlash draft: CE only), each position k weighted by
``exp(-(k - 1) / 4)``. AdamW (lr 6e-4), 4 % linear warm-up, cosine decay to 0, gradient
clipping at 1. The embedding and lm_head are the target's, frozen and shared.

Anchor p of a sequence: the block input is ``[x_p, MASK, ...]`` at positions ``p..p+g-1``,
the context is the target's tapped features of positions ``< p`` (exactly what the draft
sees at inference after committing ``x_{<p}``), and slot k is trained to predict
``x_{p+k}`` against the target's distribution at position ``p + k - 1``.

Checkpoints (``<out>/checkpoint-NNNNNN/``) hold the draft in DeepSpec/SGLang layout
(``config.json`` + ``model.safetensors``, embedding and lm_head left to the target) plus
``trainer_state.pt``; ``--resume`` continues from the last one and reproduces the
uninterrupted run exactly (batches and anchors are drawn from per-step seeds). The final
draft is written to ``<out>`` itself.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from dspark_sgl import _io, markov
from dspark_sgl.evaluate import DTYPES, load_target
from dspark_sgl.models import DraftConfig, DSparkDraft
from dspark_sgl.models.draft import ragged_rows, tapped_features

__all__ = [
    "Batch",
    "Example",
    "LossWeights",
    "anchor_hidden",
    "draft_config_from_target",
    "encode_conversation",
    "init_draft",
    "lr_factor",
    "main",
    "position_weights",
    "read_conversations",
    "train",
    "training_loss",
]

logger = logging.getLogger("dspark_sgl")

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.pt"


# --------------------------------------------------------------------------- data


@dataclass
class Example:
    """One tokenised conversation: ids [n] int64 and trained [n] bool (assistant tokens)."""

    ids: torch.Tensor
    trained: torch.Tensor


def read_conversations(path: str | os.PathLike) -> list[list[dict[str, str]]]:
    """Conversations from jsonl records ``{"conversations": [{"role", "content"}, ...]}``."""
    out = []
    for line_no, record in _io.iter_jsonl(path):
        conv = record.get("conversations") if isinstance(record, dict) else None
        if not isinstance(conv, list) or not conv:
            raise ValueError(f"{path}:{line_no}: expected {{'conversations': [{{'role', 'content'}}, ...]}}")
        for turn in conv:
            if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
                raise ValueError(f"{path}:{line_no}: every turn needs a string 'content'")
            if turn.get("role") not in ("system", "user", "assistant"):
                raise ValueError(f"{path}:{line_no}: unknown role {turn.get('role')!r}")
        out.append(conv)
    if not out:
        raise ValueError(f"{path}: no conversations")
    return out


def _render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, enable_thinking=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_conversation(tokenizer, messages: list[dict[str, str]], max_len: int) -> Example:
    """Token ids of the chat-templated conversation (truncated to ``max_len``); the tokens of
    every assistant turn (its content and end-of-turn marker) are the trained ones."""
    ids = _render(tokenizer, messages, False)
    trained = torch.zeros(len(ids), dtype=torch.bool)
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True) if i else []
        upto = _render(tokenizer, messages[: i + 1], False)
        if upto[: len(before)] != before or ids[: len(upto)] != upto:
            raise ValueError(
                "the chat template does not render conversations prefix by prefix; cannot tell which "
                "tokens belong to the assistant"
            )
        trained[len(before) : len(upto)] = True
    ids_t = torch.tensor(ids[:max_len], dtype=torch.int64)
    return Example(ids_t, trained[:max_len])


@torch.no_grad()
def regenerate_answers(
    target,
    tokenizer,
    conversations: list[list[dict[str, str]]],
    *,
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    seed: int,
    progress: bool,
    max_prompt_tokens: int | None = None,
) -> list[list[dict[str, str]]]:
    """Replace every conversation's answer by the target's: the turns up to the first
    user turn are kept and one assistant turn is generated (sampled at ``temperature``,
    greedy at 0). Conversations whose prompt is longer than ``max_prompt_tokens`` are
    dropped (they could not be trained on anyway). Returns the new conversations."""
    from tqdm.auto import tqdm

    device = next(target.parameters()).device
    prompts = []
    for conv in conversations:
        first_user = next((i for i, t in enumerate(conv) if t["role"] == "user"), None)
        if first_user is None:
            raise ValueError("a conversation to regenerate needs a user turn")
        prompts.append(conv[: first_user + 1])
    encoded = [_render(tokenizer, prompt, True) for prompt in prompts]
    if max_prompt_tokens is not None:
        kept = [i for i, ids in enumerate(encoded) if len(ids) <= max_prompt_tokens]
        if len(kept) < len(prompts):
            logger.info(
                "dspark_sgl train: %d of %d prompts are longer than %d tokens and are not regenerated",
                len(prompts) - len(kept),
                len(prompts),
                max_prompt_tokens,
            )
        prompts, encoded = [prompts[i] for i in kept], [encoded[i] for i in kept]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    out: list[list[dict[str, str]]] = []
    torch.manual_seed(seed)
    bar = tqdm(total=len(prompts), desc="regenerate", disable=not progress)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    answers: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = [encoded[i] for i in idx]
        width = max(map(len, batch))
        ids = torch.full((len(idx), width), pad, dtype=torch.int64)
        mask = torch.zeros(len(idx), width, dtype=torch.int64)
        for row, seq in enumerate(batch):
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        gen = target.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_k=0 if temperature > 0 else None,
            top_p=1.0 if temperature > 0 else None,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        for row, i in enumerate(idx):
            new = gen[row, width:].tolist()
            if eos in new:
                new = new[: new.index(eos)]
            answers[i] = tokenizer.decode(new, skip_special_tokens=True)
        bar.update(len(idx))
    bar.close()
    for i, prompt in enumerate(prompts):
        out.append([*prompt, {"role": "assistant", "content": answers[i]}])
    return out


@dataclass
class Batch:
    """A padded batch: ids [S, n] int64, trained [S, n] bool, lengths [S] int64."""

    ids: torch.Tensor
    trained: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def collate(cls, examples: list[Example], pad_id: int) -> Batch:
        n = max(e.ids.numel() for e in examples)
        ids = torch.full((len(examples), n), pad_id, dtype=torch.int64)
        trained = torch.zeros(len(examples), n, dtype=torch.bool)
        for i, e in enumerate(examples):
            ids[i, : e.ids.numel()] = e.ids
            trained[i, : e.ids.numel()] = e.trained
        return cls(ids, trained, torch.tensor([e.ids.numel() for e in examples]))

    def to(self, device: torch.device) -> Batch:
        return Batch(self.ids.to(device), self.trained.to(device), self.lengths.to(device))


def sample_anchors(
    batch: Batch, gamma: int, per_sequence: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random anchors whose first label ``x_{p+1}`` is trained (CPU tensors).

    Returns (sequence [N] int64, position p [N] int64, valid [N, g] bool), where
    ``valid[:, k-1]`` says label ``x_{p+k}`` exists and is trained, cut at the first gap.
    """
    ids, trained = batch.ids.cpu(), batch.trained.cpu()
    seqs, poss = [], []
    for s in range(ids.shape[0]):
        candidates = torch.nonzero(trained[s, 1:]).flatten()
        if candidates.numel() == 0:
            continue
        pick = torch.randperm(candidates.numel(), generator=generator)[:per_sequence]
        poss.append(candidates[pick].sort().values)
        seqs.append(torch.full((pick.numel(),), s, dtype=torch.int64))
    if not seqs:
        return (torch.zeros(0, dtype=torch.int64),) * 2 + (torch.zeros(0, gamma, dtype=torch.bool),)
    seq, pos = torch.cat(seqs), torch.cat(poss)
    label_pos = pos[:, None] + torch.arange(1, gamma + 1)
    inside = label_pos < ids.shape[1]
    ok = inside & trained[seq[:, None], label_pos.clamp(max=ids.shape[1] - 1)]
    return seq, pos, ok.to(torch.int64).cumprod(dim=1).bool()


# --------------------------------------------------------------------------- model


def draft_config_from_target(
    target_config: Any,
    *,
    num_layers: int,
    block_size: int,
    target_layer_ids: list[int] | None,
    mask_token_id: int,
    markov_rank: int,
    markov_head_type: str = "vanilla",
    confidence_head: bool = True,
) -> dict:
    """A draft ``config.json`` dict: the target's text config with DSpark overrides.

    ``target_layer_ids`` None spreads ``min(5, L - 1)`` taps evenly over layers ``0..L-2``
    (never the last layer). A DFlash draft is ``markov_rank == 0`` (no confidence head).
    Per-layer lists of the target (``layer_types``) get one full-attention entry per draft
    layer (the draft's layers attend over the whole context), as transformers' strict
    config check requires.
    """
    raw = target_config.to_dict() if hasattr(target_config, "to_dict") else dict(target_config)
    raw = copy.deepcopy(raw.get("text_config") or raw)
    depth = int(raw["num_hidden_layers"])
    if target_layer_ids is None:
        taps = min(5, depth - 1) if depth > 1 else 1
        target_layer_ids = sorted({round(i * (depth - 2) / max(1, taps - 1)) for i in range(taps)})
    for key in ("auto_map", "_name_or_path", "transformers_version", "dtype", "torch_dtype"):
        raw.pop(key, None)
    arch = str(raw.get("model_type", "qwen3"))
    prefix = "Gemma4" if "gemma4" in arch else "Qwen3"
    if "layer_types" in raw:
        raw["layer_types"] = ["full_attention"] * num_layers
    raw.update(
        {
            "architectures": [f"{prefix}{'DSpark' if markov_rank else 'DFlash'}Model"],
            "num_hidden_layers": num_layers,
            "num_target_layers": depth,
            "block_size": block_size,
            "target_layer_ids": list(target_layer_ids),
            "mask_token_id": mask_token_id,
            "markov_rank": markov_rank,
            "markov_head_type": markov_head_type,
            "enable_confidence_head": bool(confidence_head and markov_rank),
            "confidence_head_with_markov": bool(confidence_head and markov_rank),
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
        }
    )
    return raw


def init_draft(draft: DSparkDraft, std: float, seed: int) -> None:
    """Seeded initialisation of the trainable weights: linear and W1 ~ N(0, std), norms 1,
    biases 0, ``markov_w2`` 0 (the draft starts as its DFlash backbone)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in draft.named_parameters():
            if not param.requires_grad:
                continue
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif name.endswith("bias") or name == "markov_head.markov_w2.weight":
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


@dataclass
class LossWeights:
    """Weights of the three loss terms (DeepSpec: 0.1 / 0.9 / 1.0; DFlash: 1 / 0 / 0)."""

    ce: float = 0.1
    l1: float = 0.9
    bce: float = 1.0


def position_weights(gamma: int, decay: float = 4.0) -> torch.Tensor:
    """``w_k = exp(-(k - 1) / decay)`` for k = 1..g, float32 [g]."""
    return torch.exp(-torch.arange(gamma, dtype=torch.float32) / decay)


def lr_factor(step: int, total: int, warmup_ratio: float = 0.04) -> float:
    """Linear warm-up over ``warmup_ratio * total`` steps, then cosine decay to 0."""
    warmup = max(1, round(warmup_ratio * total))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _target_features(target, batch: Batch, tap_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(taps [S, n, n_taps * H], logits [S, n, V] float32) of the frozen target."""
    mask = (torch.arange(batch.ids.shape[1], device=batch.ids.device)[None] < batch.lengths[:, None]).long()
    out = target(input_ids=batch.ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    taps = tapped_features(out.hidden_states, tap_ids)
    return taps, out.logits.float()


def anchor_hidden(
    draft: DSparkDraft, taps: torch.Tensor, ids: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor
) -> torch.Tensor:
    """Backbone hidden states [N, g, H] of N anchor blocks, batched per sequence.

    taps: [S, n, n_taps * H] target features, ids: [S, n] tokens, seq/pos: [N] int64
    (grouped by sequence, as :func:`sample_anchors` returns them). The context rows of a
    sequence are projected once; its A blocks are packed into one row of A * g queries, a
    query of anchor p sees the context positions ``< p`` and its own block only. Equals
    :meth:`DSparkDraft.backbone` run per anchor on a ContextCache of positions ``< p``.
    """
    gamma, device = draft.gamma, taps.device
    s_count, n = ids.shape
    ctx = draft.project_context(taps.reshape(s_count * n, -1)).reshape(s_count, n, -1)
    ctx_pos = torch.arange(n, device=device).expand(s_count, n)
    counts = torch.bincount(seq, minlength=s_count)
    slot = ragged_rows(counts)[1]
    width = max(1, int(counts.max()))
    anchor_pos = torch.zeros(s_count, width, dtype=torch.int64, device=device)
    anchor_pos[seq, slot] = pos
    anchor_tok = ids.gather(1, anchor_pos)
    block = draft.block_inputs(anchor_tok.flatten(), gamma).view(s_count, width * gamma)
    offsets = torch.arange(gamma, device=device)
    block_pos = (anchor_pos[:, :, None] + offsets).flatten(1)  # [S, A * g]
    owner = torch.arange(width, device=device).repeat_interleave(gamma)  # anchor of each query
    query_anchor_pos = anchor_pos.repeat_interleave(gamma, dim=1)
    ctx_valid = ctx_pos[:, None, :] < query_anchor_pos[:, :, None]  # [S, A * g, n]
    block_mask = (owner[:, None] == owner[None, :]).expand(s_count, -1, -1)
    x = draft.layer_input(block)
    for layer in draft.layers:
        k, v = layer.self_attn.project_kv(ctx, ctx_pos)
        x = layer(x, block_pos, (k, v, ctx_pos, ctx_valid, block_mask))
    hidden = draft.final_hidden(x).view(s_count, width, gamma, -1)
    return hidden[seq, slot]


def training_loss(
    draft: DSparkDraft,
    taps: torch.Tensor,
    target_logits: torch.Tensor,
    batch: Batch,
    seq: torch.Tensor,
    pos: torch.Tensor,
    valid: torch.Tensor,
    weights: LossWeights,
    decay: float = 4.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted DeepSpec loss over N anchors and its terms (for logging).

    taps: [S, n, n_taps * H], target_logits: [S, n, V]; seq/pos: [N] int64 anchors,
    valid: [N, g] bool. Returns (scalar loss, {"ce", "l1", "bce", "acc1", "loss"}).
    """
    gamma = draft.gamma
    device = taps.device
    seq, pos, valid = seq.to(device), pos.to(device), valid.to(device)
    n = batch.ids.shape[1]
    hidden = anchor_hidden(draft, taps, batch.ids, seq, pos)
    block_pos = pos[:, None] + torch.arange(gamma, device=device)
    logits = draft.base_logits(hidden)
    softcap = draft.config.final_logit_softcapping
    if softcap is not None:
        logits = markov.softcap(logits, softcap)
    label_pos = (block_pos + 1).clamp(max=n - 1)
    labels = batch.ids[seq[:, None], label_pos]
    prev = torch.cat([batch.ids[seq, pos][:, None], labels[:, :-1]], dim=1)
    prev_emb = None
    if draft.markov_head is not None:
        logits = logits + draft.markov_head(prev, hidden)
        prev_emb = draft.markov_head.markov_w1(prev)
    w = position_weights(gamma, decay).to(device)[None] * valid
    denom = w.sum().clamp_min(1e-6)
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(w)
    q = torch.softmax(logits.float(), dim=-1)
    p = torch.softmax(target_logits[seq[:, None], block_pos.clamp(max=n - 1)], dim=-1)
    l1 = (q - p).abs().sum(-1)
    terms = {"ce": (w * ce).sum() / denom, "l1": (w * l1).sum() / denom}
    loss = weights.ce * terms["ce"] + weights.l1 * terms["l1"]
    if draft.confidence_head is not None:
        conf_logit = draft.confidence_head(
            hidden, prev_emb if draft.config.confidence_head_with_markov else None
        )
        bce = F.binary_cross_entropy_with_logits(conf_logit, (1.0 - 0.5 * l1).detach(), reduction="none")
        terms["bce"] = (w * bce).sum() / denom
        loss = loss + weights.bce * terms["bce"]
    first = valid[:, 0]
    hits = (logits[:, 0].argmax(-1) == labels[:, 0]) & first
    stats = {k: float(v.detach()) for k, v in terms.items()}
    stats["acc1"] = float(hits.sum()) / max(1, int(first.sum()))
    stats["loss"] = float(loss.detach())
    return loss, stats


# --------------------------------------------------------------------------- loop


def _checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in out.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file())


def _save(draft: DSparkDraft, path: Path, state: dict | None) -> None:
    from dspark_sgl.checkpoint import save_draft

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_draft(draft, tmp, fmt="deepspec", include_vocab=False)
    if state is not None:
        torch.save(state, tmp / STATE_FILE)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def _save_final(draft: DSparkDraft, out: Path, dtype: torch.dtype) -> None:
    """The trained draft in ``dtype``, cast in place (training is over; the target's
    tensors shared as embedding/lm_head are not touched: only the draft's parameters are
    rebound to cast copies)."""
    from dspark_sgl.checkpoint import save_draft

    draft.to(dtype)
    save_draft(draft, out, fmt="deepspec", include_vocab=False)


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _mask_token_id(tokenizer, target, requested: int | None) -> int:
    vocab = target.get_input_embeddings().weight.shape[0]
    if requested is None:
        for name in ("<|mask|>", "<mask>", "[MASK]"):
            tid = tokenizer.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id and 0 <= tid < vocab:
                return tid
        if len(tokenizer) < vocab:
            return len(tokenizer)
        raise ValueError(
            "no mask token: the tokenizer has no <|mask|> token and no spare embedding row; "
            "pass --mask-token-id"
        )
    if not 0 <= requested < vocab:
        raise ValueError(f"--mask-token-id {requested} is outside the target's embedding [0, {vocab})")
    return requested


def train(args: argparse.Namespace) -> Path:
    """Run training as configured by the parsed command line; returns the output directory."""
    from tqdm.auto import tqdm

    from dspark_sgl.checkpoint import load_draft

    out = Path(args.out)
    existing = _checkpoints(out) if out.exists() else []
    if existing and not args.resume:
        raise ValueError(
            f"{out} already holds checkpoints ({existing[-1].name}); pass --resume or another --out"
        )
    if args.resume and not existing:
        raise ValueError(f"--resume: no checkpoint in {out}")
    torch.manual_seed(args.seed)
    tokenizer, target = load_target(args.target, args.device, args.dtype)
    device = target.device
    conversations = read_conversations(args.data)
    if args.max_conversations:
        conversations = conversations[: args.max_conversations]
    if args.regenerate:
        regen_path = Path(args.regenerated_data or out / "regenerated.jsonl")
        if regen_path.is_file():
            logger.info("dspark_sgl train: reusing regenerated answers from %s", regen_path)
            conversations = read_conversations(regen_path)
        else:
            conversations = regenerate_answers(
                target,
                tokenizer,
                conversations,
                max_new_tokens=args.regenerate_max_new_tokens,
                temperature=args.regenerate_temperature,
                batch_size=args.regenerate_batch_size,
                seed=args.seed,
                progress=args.progress,
                max_prompt_tokens=args.max_length - 1,
            )
            regen_path.parent.mkdir(parents=True, exist_ok=True)
            regen_path.write_text("".join(json.dumps({"conversations": c}) + "\n" for c in conversations))
    examples = [encode_conversation(tokenizer, c, args.max_length) for c in conversations]
    examples = [e for e in examples if bool(e.trained[1:].any())]
    if not examples:
        raise ValueError(f"{args.data}: no conversation has an assistant token to train on")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    if existing:
        last = existing[-1]
        draft = load_draft(last, target_config=target.config, device=device, dtype=torch.float32)
        state = torch.load(last / STATE_FILE, map_location="cpu", weights_only=False)
        logger.info("dspark_sgl train: resuming from %s (step %d)", last, state["step"])
    else:
        raw = draft_config_from_target(
            target.config,
            num_layers=args.num_layers,
            block_size=args.block_size,
            target_layer_ids=args.target_layer_ids,
            mask_token_id=_mask_token_id(tokenizer, target, args.mask_token_id),
            markov_rank=args.markov_rank,
            markov_head_type=args.markov_head_type,
            confidence_head=not args.no_confidence_head,
        )
        draft = DSparkDraft(DraftConfig.from_dict(raw)).to(device)
        init_draft(draft, float(getattr(target.config, "initializer_range", 0.02)), args.seed)
        state = None
    draft.config.check_target(
        vocab_size=target.config.vocab_size,
        hidden_size=target.config.hidden_size,
        num_layers=target.config.num_hidden_layers,
    )
    draft.attach_target_vocab(
        target.get_input_embeddings().weight.detach().float(),
        target.get_output_embeddings().weight.detach().float(),
    )
    draft.train()
    weights = (
        LossWeights(args.ce_weight, args.l1_weight, args.bce_weight)
        if draft.config.is_dspark
        else LossWeights(1.0, 0.0, 0.0)
    )
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args.steps, args.warmup_ratio))
    start = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["step"])
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.jsonl"
    tap_ids = list(draft.config.target_layer_ids)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    bar = tqdm(total=args.steps, initial=start, desc="train", disable=not args.progress)
    t0 = time.time()
    for step in range(start, args.steps):
        gen = _step_generator(args.seed, step)
        pick = torch.randint(0, len(examples), (args.batch_size,), generator=gen).tolist()
        batch = Batch.collate([examples[i] for i in pick], pad_id).to(device)
        seq, pos, valid = sample_anchors(batch, draft.gamma, args.anchors_per_sequence, gen)
        with torch.no_grad():
            taps, target_logits = _target_features(target, batch, tap_ids)
        with autocast:
            loss, stats = training_loss(
                draft, taps.float(), target_logits, batch, seq, pos, valid, weights, args.position_decay
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm))
        opt.step()
        sched.step()
        stats.update(step=step + 1, lr=sched.get_last_lr()[0], anchors=int(seq.numel()))
        bar.update(1)
        bar.set_postfix({k: f"{stats[k]:.3f}" for k in ("ce", "l1", "bce") if k in stats})
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            stats["seconds"] = round(time.time() - t0, 2)
            with log_path.open("a") as f:
                f.write(json.dumps(stats) + "\n")
            if not args.progress:
                shown = ("loss", "ce", "l1", "bce", "acc1")
                terms = " ".join(f"{k} {stats[k]:.4f}" for k in shown if k in stats)
                print(f"step {step + 1}/{args.steps} {terms} lr {stats['lr']:.2e}", flush=True)
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            state = {
                "step": step + 1,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "args": vars(args),
            }
            _save(draft, out / f"{CHECKPOINT_PREFIX}{step + 1:06d}", state)
            for old in _checkpoints(out)[: -args.keep_checkpoints]:
                shutil.rmtree(old)
    bar.close()
    _save_final(draft, out, DTYPES[args.save_dtype])
    logger.info("dspark_sgl train: wrote %s", out)
    return out


def _layer_ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer ids, got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dspark_sgl train", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="frozen target (HF directory with tokenizer)")
    p.add_argument("--data", required=True, help='jsonl of {"conversations": [{"role", "content"}, ...]}')
    p.add_argument("--out", required=True, help="output directory (checkpoints + final draft)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    g = p.add_argument_group("draft")
    g.add_argument("--markov-rank", type=int, default=256, help="0 trains a DFlash draft (default 256)")
    g.add_argument("--markov-head-type", choices=("vanilla", "gated", "rnn"), default="vanilla")
    g.add_argument("--no-confidence-head", action="store_true")
    g.add_argument("--num-layers", type=int, default=5)
    g.add_argument("--block-size", type=int, default=7)
    g.add_argument("--target-layer-ids", type=_layer_ids, help="comma-separated (default: spread)")
    g.add_argument("--mask-token-id", type=int, help="default: the tokenizer's <|mask|> or a spare row")
    g = p.add_argument_group("data")
    g.add_argument("--max-length", type=int, default=2048, help="truncate conversations to N tokens")
    g.add_argument("--max-conversations", type=int, help="use the first N conversations")
    g.add_argument("--regenerate", action="store_true", help="replace answers by the target's own")
    g.add_argument("--regenerated-data", help="where regenerated answers are cached (default <out>/...)")
    g.add_argument("--regenerate-max-new-tokens", type=int, default=512)
    g.add_argument("--regenerate-temperature", type=float, default=1.0)
    g.add_argument("--regenerate-batch-size", type=int, default=32)
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=1000)
    g.add_argument("--batch-size", type=int, default=8, help="conversations per step")
    g.add_argument("--anchors-per-sequence", type=int, default=512)
    g.add_argument("--lr", type=float, default=6e-4)
    g.add_argument("--warmup-ratio", type=float, default=0.04)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--ce-weight", type=float, default=0.1)
    g.add_argument("--l1-weight", type=float, default=0.9)
    g.add_argument("--bce-weight", type=float, default=1.0)
    g.add_argument("--position-decay", type=float, default=4.0, help="w_k = exp(-(k-1)/decay)")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto", help="target dtype (auto: bf16 on GPU, fp32 on CPU)")
    g.add_argument("--save-dtype", choices=sorted(DTYPES), default="bfloat16", help="final draft dtype")
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--save-every", type=int, default=200)
    g.add_argument("--keep-checkpoints", type=int, default=2)
    g.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    positive = ("steps", "batch_size", "anchors_per_sequence", "save_every", "log_every", "keep_checkpoints")
    for name in positive:
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    try:
        train(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dspark_sgl train: error: {exc}", file=sys.stderr)
        return 2
    return 0
