"""DeepSeek-V4-style DSpark drafts: the bundled ``mtp.{i}.*`` checkpoint names.

DeepSeek-V4 ships its DSpark draft inside the target checkpoint: stage ``i`` of the draft
is ``mtp.{i}.*`` and the config carries ``dspark_block_size``, ``dspark_markov_rank``,
``dspark_noise_token_id``, ``dspark_target_layer_ids``, ``dspark_n_routed_experts`` and
``dspark_num_experts_per_tok``. The draft runs on the same modules as every other draft
(:class:`~dspark_sgl.models.draft.DSparkDraft` with ``arch == "deepseek_v4"``): pre-norm
stages whose feed-forward is a top-k routed MoE with shared experts
(:class:`~dspark_sgl.models.layers.MoE`) and whose attention sees the context through a
sliding window (default 128 positions).

What V4 does not make public, and what we assume (none of it is checked against a real
V4 checkpoint, which we could not read):

* Attention is multi-query with one shared K=V projection ``attn.wkv`` [d, H] (normed
  by ``attn.kv_norm``; K gets RoPE over the full head, V does not), queries ``attn.wq``
  [n_heads * d, H] with ``attn.q_norm``, output ``attn.wo``. The low-rank query and the
  partial-RoPE split of the real V4 attention are not modelled.
* Manifold hyper-connections (mHC, ``hc_*`` tensors) are not modelled: a checkpoint
  carrying them is refused with a clear error rather than run wrongly.
* The context projection is stage 0's ``main_proj`` / ``main_norm``; the final norm is the
  last stage's ``norm``; the Markov head (``markov_head.embed`` = W1, ``markov_head.head``
  = W2, float32) and the confidence head (no bias) may sit under any one stage.
* Router: sigmoid scores, ``gate.bias`` used for expert selection only, the chosen
  scores normalised, times ``routed_scaling_factor``. Expert MLPs use SiLU.
* The stage count is ``dspark_num_layers`` when present, else the number of tapped layers.
"""

from __future__ import annotations

import re

__all__ = ["from_v4_names", "to_v4_names"]

_STAGE = re.compile(r"^mtp\.(\d+)\.(.+)$")

# (V4 stage-relative name, our layer-relative name); applied as prefix/infix rewrites.
_LAYER_RENAMES = (
    ("attn_norm.", "input_layernorm."),
    ("ffn_norm.", "post_attention_layernorm."),
    ("attn.wq.", "self_attn.q_proj."),
    ("attn.wkv.", "self_attn.k_proj."),
    ("attn.wo.", "self_attn.o_proj."),
    ("attn.q_norm.", "self_attn.q_norm."),
    ("attn.kv_norm.", "self_attn.k_norm."),
    ("ffn.gate.bias", "mlp.gate.e_score_correction_bias"),
    ("ffn.gate.weight", "mlp.gate.weight"),
    ("ffn.", "mlp."),
)
_MLP_RENAMES = ((".w1.", ".gate_proj."), (".w2.", ".down_proj."), (".w3.", ".up_proj."))


def _rename(name: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def from_v4_names(names: list[str], num_stages: int) -> dict[str, str]:
    """Map V4 checkpoint names to DSparkDraft parameter names: {v4_name: our_name}.

    Names outside ``mtp.*`` (the target's own weights) are skipped. Raises ValueError on
    mHC tensors, on a stage index past ``num_stages``, or on a duplicate mapping.
    """
    mapping: dict[str, str] = {}
    for name in names:
        match = _STAGE.match(name)
        if match is None:
            continue
        stage, rest = int(match.group(1)), match.group(2)
        if stage >= num_stages:
            raise ValueError(f"checkpoint key {name!r}: stage {stage} but the config has {num_stages} stages")
        if rest.startswith("hc_") or ".hc_" in rest:
            raise ValueError(
                f"checkpoint key {name!r}: manifold hyper-connections (mHC) are not supported by dspark_sgl"
            )
        if rest in ("embed.weight", "embed_tokens.weight", "head.weight", "lm_head.weight"):
            continue  # The target's vocabulary weights; shared at run time.
        if rest.startswith("markov_head."):
            ours = "markov_head." + rest[len("markov_head.") :]
            ours = ours.replace("markov_head.embed.", "markov_head.markov_w1.").replace(
                "markov_head.head.", "markov_head.markov_w2."
            )
        elif rest.startswith("confidence_head."):
            ours = rest
        elif rest.startswith("main_proj."):
            ours = "fc." + rest[len("main_proj.") :] if stage == 0 else None
        elif rest.startswith("main_norm."):
            ours = "hidden_norm." + rest[len("main_norm.") :] if stage == 0 else None
        elif rest.startswith("norm.") and stage == num_stages - 1:
            ours = rest
        else:
            ours = f"layers.{stage}." + _rename(rest, _LAYER_RENAMES)
            for old, new in _MLP_RENAMES:
                ours = ours.replace(old, new)
        if ours is None:
            raise ValueError(f"checkpoint key {name!r} is only expected on stage 0")
        if ours in mapping.values():
            raise ValueError(f"checkpoint key {name!r} maps to {ours!r}, which another key already fills")
        mapping[name] = ours
    return mapping


def to_v4_names(names: list[str], num_stages: int) -> dict[str, str]:
    """Inverse of :func:`from_v4_names` for saving: {our_name: v4_name}. The Markov and
    confidence heads go under the last stage."""
    last = num_stages - 1
    inverse: dict[str, str] = {}
    for name in names:
        if name.startswith(("embed_tokens.", "lm_head.")):
            continue
        if name.startswith("markov_head."):
            v4 = name.replace("markov_head.markov_w1.", "markov_head.embed.").replace(
                "markov_head.markov_w2.", "markov_head.head."
            )
            inverse[name] = f"mtp.{last}.{v4}"
        elif name.startswith("confidence_head."):
            inverse[name] = f"mtp.{last}.{name}"
        elif name.startswith("fc."):
            inverse[name] = "mtp.0.main_proj." + name[len("fc.") :]
        elif name.startswith("hidden_norm."):
            inverse[name] = "mtp.0.main_norm." + name[len("hidden_norm.") :]
        elif name.startswith("norm."):
            inverse[name] = f"mtp.{last}.{name}"
        else:
            match = re.match(r"^layers\.(\d+)\.(.+)$", name)
            if match is None:
                raise ValueError(f"no DeepSeek-V4 name for parameter {name!r}")
            rest = match.group(2)
            for old, new in _MLP_RENAMES:
                rest = rest.replace(new, old)
            rest = _rename(rest, tuple((new, old) for old, new in _LAYER_RENAMES))
            inverse[name] = f"mtp.{match.group(1)}.{rest}"
    return inverse
