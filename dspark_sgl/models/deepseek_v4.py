"""DeepSeek-V4 DSpark drafts: the bundled ``mtp.{i}.*`` checkpoint names.

DeepSeek-V4 ships its DSpark draft inside the target checkpoint: stage ``i`` of the draft
is ``mtp.{i}.*`` and the config carries ``dspark_block_size``, ``dspark_markov_rank``,
``dspark_noise_token_id``, ``dspark_target_layer_ids``, ``dspark_n_routed_experts`` and
``dspark_num_experts_per_tok``. The draft runs on the same modules as every other draft
(:class:`~dspark_sgl.models.draft.DSparkDraft` with ``arch == "deepseek_v4"``).

Checked against SGLang 0.5.23 (``sglang.srt.models.deepseek_v4_dspark``, ``deepseek_v4``,
``sglang.kernels.ops.layernorm.mhc``, ``sglang.srt.layers.moe.topk``); the tests named are in
``tests/test_deepseek_v4.py`` and run SGLang's own functions on the CPU:

* **Names.** ``DeepseekV4ForCausalLMDSpark._remap_dspark_weight_name``: ``attn.`` ->
  ``self_attn.``, ``ffn.`` -> ``mlp.``, ``attn_norm`` / ``ffn_norm`` -> the two layer norms,
  ``w1/w2/w3`` -> gate/down/up, ``gate.bias`` -> ``e_score_correction_bias``, ``gate.bias_vl``
  dropped, ``markov_head.embed/head`` -> ``markov_w1/markov_w2``, ``confidence_head.*``,
  ``main_proj`` / ``main_norm`` on stage 0, ``norm`` and ``hc_head_*`` on the last stage,
  ``hc_attn_*`` / ``hc_ffn_*`` on every stage; the target's ``embed`` / ``head`` are shared.
  Test: our mapping of a complete tiny checkpoint equals SGLang's remap, name for name.
* **Shapes.** Stage 0's ``main_proj`` is [H, n_taps * H] (``ReplicatedLinear``); attention
  ``wq_a`` [q_lora, H], ``q_norm`` [q_lora], ``wq_b`` [heads * d, q_lora], ``wkv`` [d, H],
  ``kv_norm`` [d], ``wo_a`` [groups * o_rank, heads * d / groups], ``wo_b`` [H, groups *
  o_rank], ``attn_sink`` [heads]; mHC ``hc_*_fn`` [(2 + n) n, n H], ``hc_*_base`` [(2 + n) n],
  ``hc_*_scale`` [3], ``hc_head_fn`` [n, n H], ``hc_head_base`` [n], ``hc_head_scale`` [1]
  (``make_hc_mixing_params`` / ``make_hc_head_params``). Test: the tiny fixture's tensors
  have SGLang's parameter shapes.
* **Attention** (``DSparkAttention``, compress ratio 0): MQA with one K = V row, the
  low-rank query, per-head q norm without weight (``q_head_norm``), interleaved RoPE on the
  last ``qk_rope_head_dim`` dims of q and kv (``apply_rotary_emb`` / ``precompute_freqs_cis``,
  no YaRN), kv norm, softmax scale ``d^-0.5``, a per-head sink logit in the softmax
  denominator, inverse RoPE on the output, grouped ``wo_a`` in float32, then ``wo_b``;
  sliding window ``window_size`` (128). Tests: our RoPE equals SGLang's ``apply_rotary_emb``
  bit for bit; our attention equals a reference assembled from SGLang's RoPE and the sink
  softmax of SGLang's DSV4 attention test kit.
* **Router** (``biased_topk_impl``, V4's ungrouped ``sqrtsoftplus``): scores
  ``sqrt(softplus(logits))``, experts chosen by score + bias, weights renormalised
  (+ 1e-20) and scaled by ``routed_scaling_factor``. Test: equal to SGLang's function.
* **mHC** (:mod:`dspark_sgl.models.mhc`). Test: equal to ``_mhc_pre_torch``,
  ``_mhc_post_torch`` and ``hc_head_torch``.
* **Stages.** Each stage is a decoder layer (``DeepseekV4DecoderLayerBase``): mHC pre ->
  ``input_layernorm`` -> attention -> mHC post, mHC pre -> ``post_attention_layernorm`` ->
  MoE -> mHC post; the embedding is repeated ``hc_mult`` times (``forward_embed``); the
  last stage collapses the streams (``hc_head``), then ``norm`` and the target's lm_head
  give the base logits (``compute_base_logits``); the confidence head has no bias
  (``build_dspark_v4_confidence_head``); the Markov head is ``DSparkV4MarkovHead``.

Named differences (not checked, or not modelled):

* SGLang runs the draft stages only through its DSV4 attention backend and KV pool (CUDA
  or NPU kernels), so the whole backbone could not be run against SGLang on the CPU: the
  mask between the block's own rows is ours (every block row sees every block row, as in
  DFlash); SGLang's runs the block in ``TARGET_VERIFY`` mode.
* FP8 block-scaled weights (``*.scale``), hash routing (``gate.tid2eid``; SGLang turns it
  off for draft stages), V4.1's ``hc_pre_from_prev_sublayer`` boundary and the NPU
  checkpoint layout are refused with a clear error.
* The older simplified layout (``attn.wq`` / ``attn.wkv`` / ``attn.wo``, no mHC), which an
  earlier version of this package assumed, still loads when the config has no
  ``q_lora_rank``; it is not DeepSeek-V4's.
"""

from __future__ import annotations

import re

__all__ = ["from_v4_names", "to_v4_names"]

_STAGE = re.compile(r"^mtp\.(\d+)\.(.+)$")

# The simplified layout (config without q_lora_rank): (V4 name, ours), prefix rewrites.
_SIMPLE_ATTENTION = (
    ("attn.wq.", "self_attn.q_proj."),
    ("attn.wkv.", "self_attn.k_proj."),
    ("attn.wo.", "self_attn.o_proj."),
    ("attn.q_norm.", "self_attn.q_norm."),
    ("attn.kv_norm.", "self_attn.k_norm."),
)
_LAYER_RENAMES = (
    ("attn_norm.", "input_layernorm."),
    ("ffn_norm.", "post_attention_layernorm."),
    ("ffn.gate.bias", "mlp.gate.e_score_correction_bias"),
    ("ffn.gate.weight", "mlp.gate.weight"),
    ("ffn.", "mlp."),
    ("attn.", "self_attn."),
)
_MLP_RENAMES = ((".w1.", ".gate_proj."), (".w2.", ".down_proj."), (".w3.", ".up_proj."))
# mHC: hc_{attn,ffn}_{fn,base,scale} per stage, hc_head_* on the last stage.
_HC = re.compile(r"^hc_(attn|ffn|head)_(fn|base|scale)$")


def _rename(name: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def _layer_name(stage: int, rest: str, simple: bool) -> str:
    pairs = (_SIMPLE_ATTENTION if simple else ()) + _LAYER_RENAMES
    ours = f"layers.{stage}." + _rename(rest, pairs)
    for old, new in _MLP_RENAMES:
        ours = ours.replace(old, new)
    return ours


def from_v4_names(names: list[str], num_stages: int, *, simple_attention: bool = False) -> dict[str, str]:
    """Map V4 checkpoint names to DSparkDraft parameter names: {v4_name: our_name}.

    Names outside ``mtp.*`` (the target's own weights) are skipped, as are the target's
    vocabulary weights, ``gate.bias_vl`` and ``rotary_emb.inv_freq`` (as SGLang does).
    ``simple_attention``: the older ``attn.wq/wkv/wo`` layout. Raises ValueError on FP8
    scales, hash-routing tables, a stage index past ``num_stages``, or a duplicate mapping.
    """
    mapping: dict[str, str] = {}
    for name in names:
        match = _STAGE.match(name)
        if match is None or "rotary_emb.inv_freq" in name:
            continue
        stage, rest = int(match.group(1)), match.group(2)
        if stage >= num_stages:
            raise ValueError(f"checkpoint key {name!r}: stage {stage} but the config has {num_stages} stages")
        if rest in ("embed.weight", "embed_tokens.weight", "head.weight", "lm_head.weight"):
            continue  # The target's vocabulary weights; shared at run time.
        if rest.endswith(".gate.bias_vl"):
            continue
        if rest.endswith(".scale") or rest.endswith(".weight_scale_inv"):
            raise ValueError(
                f"checkpoint key {name!r}: FP8 block-scaled weights are not supported by dspark_sgl"
            )
        if rest.endswith(".tid2eid"):
            raise ValueError(f"checkpoint key {name!r}: hash-routed experts are not supported by dspark_sgl")
        hc = _HC.match(rest)
        if hc is not None:
            part, field = hc.groups()
            if part == "head":
                ours = f"hc_head.{field}" if stage == num_stages - 1 else None
            else:
                ours = f"layers.{stage}.hc_{part}.{field}"
        elif rest.startswith("markov_head."):
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
            ours = _layer_name(stage, rest, simple_attention)
        if ours is None:
            where = "the last stage" if rest.startswith("hc_head") else "stage 0"
            raise ValueError(f"checkpoint key {name!r} is only expected on {where}")
        if ours in mapping.values():
            raise ValueError(f"checkpoint key {name!r} maps to {ours!r}, which another key already fills")
        mapping[name] = ours
    return mapping


def to_v4_names(names: list[str], num_stages: int, *, simple_attention: bool = False) -> dict[str, str]:
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
        elif name.startswith("hc_head."):
            inverse[name] = f"mtp.{last}.hc_head_{name[len('hc_head.') :]}"
        else:
            match = re.match(r"^layers\.(\d+)\.(.+)$", name)
            if match is None:
                raise ValueError(f"no DeepSeek-V4 name for parameter {name!r}")
            stage, rest = match.groups()
            hc = re.match(r"^hc_(attn|ffn)\.(fn|base|scale)$", rest)
            if hc is not None:
                inverse[name] = f"mtp.{stage}.hc_{hc.group(1)}_{hc.group(2)}"
                continue
            for old, new in _MLP_RENAMES:
                rest = rest.replace(new, old)
            pairs = (_SIMPLE_ATTENTION if simple_attention else ()) + _LAYER_RENAMES
            rest = _rename(rest, tuple((new, old) for old, new in pairs))
            inverse[name] = f"mtp.{stage}.{rest}"
    return inverse
