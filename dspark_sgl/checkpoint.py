"""Load and save draft checkpoints: DeepSpec, SGLang and DeepSeek-V4 bundled layouts.

A draft directory holds ``config.json`` and ``*.safetensors`` (one file, or shards with
or without ``model.safetensors.index.json``). Key layouts accepted:

* ``"deepspec"``: SPEC section 2 names with no prefix (``layers.0.self_attn.q_proj.weight``,
  ``markov_head.markov_w1.weight``, ``confidence_head.proj.weight``, ...).
* ``"sglang"``: the same names under ``model.``.
* ``"deepseek_v4"``: ``mtp.{i}.*`` stages (see :mod:`dspark_sgl.models.deepseek_v4`);
  keys outside ``mtp.*`` belong to the target and are skipped.

Loading is strict: a missing, unexpected or mis-shaped key, a non-float tensor, NaN/Inf
values, or a draft that does not fit the target raise ``ValueError`` naming the key and
both shapes. ``embed_tokens.weight`` and ``lm_head.weight`` are the frozen target weights:
optional (shared from the target when absent). HF rotary caches
(``*rotary_emb.inv_freq``) are ignored. :func:`save_draft` writes the layout a draft was
loaded from, so load -> save -> load is bit-exact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from dspark_sgl.models import deepseek_v4
from dspark_sgl.models.config import DraftConfig
from dspark_sgl.models.draft import DSparkDraft
from dspark_sgl.models.layers import rope_inv_freq

__all__ = ["FORMATS", "load_draft", "load_draft_config", "read_tensors", "save_draft"]

FORMATS = ("deepspec", "sglang", "deepseek_v4")
_OPTIONAL = ("embed_tokens.weight", "lm_head.weight")


def load_draft_config(path: str | os.PathLike) -> DraftConfig:
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in draft directory {path}")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path} is not valid JSON: {exc}") from exc
    return DraftConfig.from_dict(raw)


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's safetensors files (index-listed shards or all)."""
    from safetensors.torch import load_file

    root = Path(path)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = sorted({root / name for name in weight_map.values()})
    else:
        files = sorted(root.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in draft directory {path}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"shard {file.name} listed in {index.name} does not exist")
        for name, tensor in load_file(str(file)).items():
            if name in tensors:
                raise ValueError(f"checkpoint key {name!r} appears in more than one shard")
            tensors[name] = tensor
    return tensors


def _normalise_names(
    tensors: dict[str, torch.Tensor], config: DraftConfig
) -> tuple[dict[str, torch.Tensor], str]:
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    if config.arch == "deepseek_v4":
        mapping = deepseek_v4.from_v4_names(
            list(tensors), config.num_hidden_layers, simple_attention=config.q_lora_rank == 0
        )
        return {ours: tensors[v4] for v4, ours in mapping.items()}, "deepseek_v4"
    prefixed = [k for k in tensors if k.startswith("model.")]
    if not prefixed:
        return tensors, "deepspec"
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        short = name.removeprefix("model.")
        if short in out:
            raise ValueError(f"checkpoint has both {short!r} and 'model.{short}'")
        out[short] = tensor
    return out, "sglang"


def _describe(shape: torch.Size | tuple[int, ...]) -> str:
    return str(list(shape))


def _target_shapes(target_config: Any) -> tuple[int, int, int]:
    text = target_config.get_text_config() if hasattr(target_config, "get_text_config") else target_config
    return int(text.vocab_size), int(text.hidden_size), int(text.num_hidden_layers)


def load_draft(
    path: str | os.PathLike,
    *,
    target_config: Any | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> DSparkDraft:
    """Load a draft directory strictly.

    target_config: the target's HF config (or anything with ``vocab_size``,
    ``hidden_size``, ``num_hidden_layers``), checked against the draft. dtype: cast
    floating weights (None keeps each tensor's stored dtype, which makes saving
    bit-exact). The returned model has ``checkpoint_format`` and ``has_vocab_weights``.
    """
    config = load_draft_config(path)
    if target_config is not None:
        vocab, hidden, layers = _target_shapes(target_config)
        config.check_target(vocab_size=vocab, hidden_size=hidden, num_layers=layers)
    tensors, fmt = _normalise_names(read_tensors(path), config)
    with torch.device("meta"):
        model = DSparkDraft(config)
    expected = {name: p.shape for name, p in model.state_dict().items()}
    missing = [n for n in expected if n not in tensors and n not in _OPTIONAL]
    if missing:
        details = ", ".join(f"{n} {_describe(expected[n])}" for n in missing[:8])
        more = f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""
        raise ValueError(f"draft checkpoint {path} is missing {len(missing)} key(s): {details}{more}")
    unexpected = [n for n in tensors if n not in expected]
    if unexpected:
        details = ", ".join(f"{n} {_describe(tensors[n].shape)}" for n in unexpected[:8])
        raise ValueError(
            f"draft checkpoint {path} has {len(unexpected)} unexpected key(s) for a "
            f"{config.arch} draft (markov_rank={config.markov_rank}, markov_head_type="
            f"{config.markov_head_type!r}, confidence head={config.enable_confidence_head}): {details}"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name]):
            raise ValueError(
                f"draft checkpoint key {name!r} has shape {_describe(tensor.shape)}, "
                f"the config needs {_describe(expected[name])}"
            )
        if not tensor.is_floating_point():
            raise ValueError(f"draft checkpoint key {name!r} has dtype {tensor.dtype}, expected a float type")
        if not bool(torch.isfinite(tensor.float()).all()):
            raise ValueError(f"draft checkpoint key {name!r} {_describe(tensor.shape)} contains NaN or Inf")
    model = model.to_empty(device=device)
    params = dict(model.named_parameters())
    for name, tensor in tensors.items():
        value = tensor.to(device=device, dtype=dtype if dtype is not None else tensor.dtype)
        params[name].data = value
    for name in _OPTIONAL:
        if name not in tensors:
            params[name].data.zero_()
    for layer in model.layers:
        # Non-persistent buffer: to_empty() left it uninitialised.
        layer.self_attn.inv_freq = rope_inv_freq(
            config.head_dim, config.rope_theta, config.partial_rotary_factor
        ).to(device)
    model.checkpoint_format = fmt
    model.has_vocab_weights = model.vocab_attached = all(n in tensors for n in _OPTIONAL)
    model.eval()
    return model


def save_draft(
    model: DSparkDraft,
    path: str | os.PathLike,
    *,
    fmt: str | None = None,
    include_vocab: bool | None = None,
) -> None:
    """Write ``config.json`` + ``model.safetensors`` in ``fmt`` (default: the layout the
    model was loaded from, else ``"deepspec"``). include_vocab: write ``embed_tokens`` and
    ``lm_head`` (default: when the loaded checkpoint had them; never for deepseek_v4)."""
    from safetensors.torch import save_file

    fmt = fmt or getattr(model, "checkpoint_format", "deepspec")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if fmt == "deepseek_v4" and model.config.arch != "deepseek_v4":
        raise ValueError("only deepseek_v4 drafts can be saved in the deepseek_v4 layout")
    if include_vocab is None:
        include_vocab = getattr(model, "has_vocab_weights", True) and fmt != "deepseek_v4"
    state = {
        name: t.detach().cpu().contiguous().clone()
        for name, t in model.state_dict().items()
        if include_vocab or name not in _OPTIONAL
    }
    if fmt == "deepseek_v4":
        names = deepseek_v4.to_v4_names(
            list(state), model.config.num_hidden_layers, simple_attention=model.config.q_lora_rank == 0
        )
        state = {names[n]: t for n, t in state.items() if n in names}
    elif fmt == "sglang":
        state = {f"model.{n}": t for n, t in state.items()}
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    raw = model.config.raw or {}
    (root / "config.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    save_file(state, str(root / "model.safetensors"), metadata={"format": "pt"})
