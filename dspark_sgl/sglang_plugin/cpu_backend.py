"""DSPARK on SGLang 0.5.23's CPU backend (``--device cpu``, ``SGLANG_USE_CPU_ENGINE=1``).

SGLang 0.5.23 refuses DSPARK on the CPU and its DSpark worker has CUDA-only steps. Each
entry of :data:`CPU_HOOKS` is a ``HookRegistry`` hook that fills one gap; every hook checks
the device at call time and calls SGLang's original untouched for anything not on the CPU.
They are registered only when SGLang's CPU engine is selected (``SGLANG_USE_CPU_ENGINE=1``),
after :func:`check_pins` has verified that the installed SGLang is the version they were
written for and that each target still exists and still contains the code it works
around (else ``RuntimeError`` naming the hook).

- ``cpu_device`` (AROUND ``speculative_hook._handle_dspark``): SGLang's argument check
  accepts only CUDA/NPU/XPU. On the CPU the original runs with the device declared as
  ``cuda`` through SGLang's own ``declare_resolution``; the declaration is withdrawn when
  the original returns, so nothing after it sees anything but ``cpu``.
- ``cpu_draft_backend`` (AROUND ``draft_worker_common.resolve_draft_worker_attention_backend``):
  ``torch_native`` (the CPU attention backend) is not among SGLang's draft backends, so the
  draft fell back to FlashInfer; on the CPU a ``torch_native`` choice is kept.
- ``cpu_record_stream`` (AROUND ``DSparkWorkerV2._forward_decode``): the decode step calls
  ``batch.seq_lens.record_stream(torch.cpu.current_stream())``, which torch rejects for a
  CPU stream; recording a CPU tensor on a stream means nothing (no caching allocator), so
  on the CPU that one call is a no-op for the duration of the step.
- ``cpu_qk_norm_rope`` (AROUND ``dflash.DFlashAttention.forward``): the DSpark draft's
  bf16 layers call the Triton kernel ``table_qk_norm_rope_``; on the CPU the layer takes
  SGLang's own torch path (``apply_qk_norm`` + ``rotary_emb``) instead.
- ``cpu_verify_attention`` (AROUND ``TorchNativeAttnBackend.forward_extend``): the
  ``torch_native`` backend knows only ``EXTEND`` batches; a ``TARGET_VERIFY`` batch (the
  target's verify and the draft's block, neither with ``extend_prefix_lens``) runs
  :func:`.cpu_attention.block_attention` over the request's prefix from ``req_to_token``
  plus the block's own slots, causal for the target's layers and bidirectional for the
  draft's (``ENCODER_ONLY``), with per-request lengths from the ragged verify layout.
"""

from __future__ import annotations

import inspect
import logging
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dspark_sgl.sglang_plugin.cpu_attention import block_attention
from dspark_sgl.sglang_plugin.switches import log_once

__all__ = [
    "CPU_HOOKS",
    "SGLANG_VERSION",
    "CpuHook",
    "check_pins",
    "cpu_engine_selected",
    "dflash_attention_forward",
    "draft_attention_backend",
    "dspark_forward_decode",
    "handle_dspark_on_cpu",
    "torch_native_forward_extend",
]

logger = logging.getLogger("dspark_sgl")

SGLANG_VERSION = "0.5.23"
_SOURCE = "dspark_sgl.cpu_backend"


@dataclass(frozen=True)
class CpuHook:
    """One CPU-backend hook: name, SGLang dotted path, hook type, our function, and a
    piece of the target's source that must still be there (what the hook works around)."""

    name: str
    target: str
    hook_type: str
    impl: str
    anchor: str


CPU_HOOKS: tuple[CpuHook, ...] = (
    CpuHook(
        "cpu_device",
        "sglang.srt.arg_groups.speculative_hook._handle_dspark",
        "AROUND",
        "handle_dspark_on_cpu",
        'if not cfg.device.startswith(("cuda", "npu", "xpu")):',
    ),
    CpuHook(
        "cpu_draft_backend",
        "sglang.srt.speculative.draft_worker_common.resolve_draft_worker_attention_backend",
        "AROUND",
        "draft_attention_backend",
        "if draft_backend not in DRAFT_ATTENTION_BACKEND_CHOICES:",
    ),
    CpuHook(
        "cpu_record_stream",
        "sglang.srt.speculative.dspark_components.dspark_worker_v2.DSparkWorkerV2._forward_decode",
        "AROUND",
        "dspark_forward_decode",
        "batch.seq_lens.record_stream(",
    ),
    CpuHook(
        "cpu_qk_norm_rope",
        "sglang.srt.models.dflash.DFlashAttention.forward",
        "AROUND",
        "dflash_attention_forward",
        "elif self.use_table_qk_norm_rope and qkv.dtype == torch.bfloat16:",
    ),
    CpuHook(
        "cpu_verify_attention",
        "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_extend",
        "AROUND",
        "torch_native_forward_extend",
        "forward_batch.extend_prefix_lens,",
    ),
)


def cpu_engine_selected() -> bool:
    """Whether SGLang's CPU engine is selected (``SGLANG_USE_CPU_ENGINE=1``, SGLang's switch)."""
    return os.environ.get("SGLANG_USE_CPU_ENGINE", "0") == "1"


def _pin_error(hook: CpuHook, what: str) -> RuntimeError:
    return RuntimeError(
        f"dspark_sgl CPU hook {hook.name}: {what} (written for sglang {SGLANG_VERSION}, target {hook.target})"
    )


def check_pins(hooks: tuple[CpuHook, ...] = CPU_HOOKS, version: str | None = None) -> None:
    """Raise ``RuntimeError`` naming the hook when SGLang is not :data:`SGLANG_VERSION`, a
    target does not resolve, or its source no longer contains the hook's anchor."""
    if version is None:
        import sglang

        version = str(getattr(sglang, "__version__", "unknown"))
    for hook in hooks:
        if version != SGLANG_VERSION:
            raise _pin_error(hook, f"installed sglang is {version}")
        try:
            target = pkgutil.resolve_name(hook.target)
        except (ImportError, AttributeError, ValueError) as exc:
            raise _pin_error(hook, f"target does not resolve ({type(exc).__name__}: {exc})") from exc
        try:
            source = inspect.getsource(inspect.unwrap(target))
        except (OSError, TypeError) as exc:
            raise _pin_error(hook, f"target source unreadable ({exc})") from exc
        if hook.anchor not in source:
            raise _pin_error(hook, f"target no longer contains {hook.anchor!r}")


def _is_cpu(device: Any) -> bool:
    import torch

    try:
        return torch.device(device).type == "cpu"
    except (TypeError, RuntimeError, ValueError):
        return False


def handle_dspark_on_cpu(original: Callable[..., Any], server_args: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND ``_handle_dspark(server_args)``: on the CPU, run it with the device declared
    ``cuda`` (its only device use is the refusal), then withdraw that declaration."""
    from sglang.srt.arg_groups.model_override_base import resolving_view
    from sglang.srt.arg_groups.overrides import declare_resolution

    device = resolving_view(server_args).device
    if not (isinstance(device, str) and _is_cpu(device)):
        return original(server_args, *args, **kwargs)
    declare_resolution(server_args, _SOURCE, device="cuda")
    stash = server_args._resolved_overrides
    declaration = stash[-1]
    try:
        result = original(server_args, *args, **kwargs)
    finally:
        position = next((i for i, entry in enumerate(stash) if entry is declaration), None)
        if position is None:
            raise RuntimeError(
                "dspark_sgl CPU hook cpu_device: its device declaration vanished from the stash"
            )
        del stash[position]
    if resolving_view(server_args).device != device:
        raise RuntimeError(
            f"dspark_sgl CPU hook cpu_device: device reads {resolving_view(server_args).device!r}"
        )
    log_once("cpu_device", "dspark_sgl", "DSPARK argument checks run for --device cpu")
    return result


def draft_attention_backend(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """AROUND ``resolve_draft_worker_attention_backend``: keep ``torch_native`` on the CPU."""
    from sglang.srt.runtime_context import attention_backends, get_server_args, get_spec

    if _is_cpu(get_server_args().device):
        chosen = get_spec().speculative_draft_attention_backend or attention_backends()[0]
        if chosen == "torch_native":
            log_once("cpu_draft_backend", "dspark_sgl", "draft attention backend torch_native on the CPU")
            return "torch_native"
    return original(*args, **kwargs)


def _no_stream_record(stream: Any) -> None:
    """``Tensor.record_stream`` for a CPU tensor: nothing to record."""


def dspark_forward_decode(original: Callable[..., Any], self: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND ``DSparkWorkerV2._forward_decode(batch, ...)``: on the CPU, the step's
    ``batch.seq_lens.record_stream(...)`` is a no-op (shadowed on that tensor for the step)."""
    import torch

    batch = args[0] if args else kwargs.get("batch")
    seq_lens = getattr(batch, "seq_lens", None)
    if not (_is_cpu(self.device) and isinstance(seq_lens, torch.Tensor) and seq_lens.device.type == "cpu"):
        return original(self, *args, **kwargs)
    seq_lens.record_stream = _no_stream_record
    try:
        return original(self, *args, **kwargs)
    finally:
        del seq_lens.record_stream
        log_once("cpu_record_stream", "dspark_sgl", "record_stream of CPU seq_lens skipped")


def dflash_attention_forward(
    original: Callable[..., Any], self: Any, positions: Any, hidden_states: Any, *args: Any, **kwargs: Any
) -> Any:
    """AROUND ``DFlashAttention.forward``: on CPU tensors, SGLang's torch QK-norm + RoPE path
    instead of the Triton ``table_qk_norm_rope_`` (the layer's flag is cleared once)."""
    if getattr(self, "use_table_qk_norm_rope", False) and hidden_states.device.type == "cpu":
        self.use_table_qk_norm_rope = False
        log_once("cpu_qk_norm_rope", "dspark_sgl", "DFlash draft layers use torch QK-norm + RoPE on the CPU")
    return original(self, positions, hidden_states, *args, **kwargs)


def _not_covered(what: str) -> NotImplementedError:
    return NotImplementedError(f"dspark_sgl CPU hook cpu_verify_attention: {what} is not covered")


def torch_native_forward_extend(
    original: Callable[..., Any],
    self: Any,
    q: Any,
    k: Any,
    v: Any,
    layer: Any,
    forward_batch: Any,
    save_kv_cache: bool = True,
) -> Any:
    """AROUND ``TorchNativeAttnBackend.forward_extend``: a CPU ``TARGET_VERIFY`` batch
    without ``extend_prefix_lens`` runs :func:`block_attention`; anything else, SGLang's."""
    mode = forward_batch.forward_mode
    if not (mode.is_target_verify() and forward_batch.extend_prefix_lens is None and q.device.type == "cpu"):
        return original(self, q, k, v, layer, forward_batch, save_kv_cache)
    from sglang.srt.layers.radix_attention import AttentionType
    from sglang.srt.mem_cache.memory_pool import KVWriteLoc
    from sglang.srt.speculative.ragged_verify import resolve_ragged_verify_layout

    if layer.is_cross_attention:
        raise _not_covered("cross attention")
    window = getattr(layer, "sliding_window_size", None)
    if window is not None and window > -1:
        raise _not_covered(f"a sliding window ({window})")
    if getattr(layer, "logit_cap", 0) and layer.logit_cap > 0:
        raise _not_covered(f"logit_cap={layer.logit_cap}")
    cache_loc = forward_batch.out_cache_loc
    if save_kv_cache and k is not None and v is not None:
        self.token_to_kv_pool.set_kv_buffer(layer, KVWriteLoc(cache_loc, self.swa_out_cache_loc), k, v)
    heads, head_dim, v_dim = layer.tp_q_head_num, layer.qk_head_dim, layer.v_head_dim
    queries = q.reshape(-1, heads, head_dim)
    prefix_lens = [int(n) for n in forward_batch.seq_lens.tolist()]
    layout = resolve_ragged_verify_layout(forward_batch)
    if layout is not None:
        q_lens = [int(n) for n in (layout.verify_lens_cpu or layout.verify_lens.tolist())]
        if len(q_lens) != len(prefix_lens):
            raise _not_covered(f"a ragged layout of {len(q_lens)} rows for {len(prefix_lens)} requests")
        for n in set(q_lens):
            log_once("cpu_verify_attention", f"verify length {n}", "one request of a ragged verify batch")
    else:
        if queries.shape[0] % max(len(prefix_lens), 1):
            raise _not_covered(f"{queries.shape[0]} query tokens for {len(prefix_lens)} requests")
        q_lens = [queries.shape[0] // max(len(prefix_lens), 1)] * len(prefix_lens)
        log_once("cpu_verify_attention", "uniform", "TARGET_VERIFY with one block length")
    out = block_attention(
        queries,
        self.token_to_kv_pool.get_key_buffer(layer.layer_id),
        self.token_to_kv_pool.get_value_buffer(layer.layer_id),
        self.req_to_token_pool.req_to_token,
        forward_batch.req_pool_indices.tolist(),
        prefix_lens,
        q_lens,
        cache_loc,
        causal=layer.attn_type != AttentionType.ENCODER_ONLY,
        scaling=layer.scaling,
    )
    if head_dim == v_dim:
        return out.view(q.shape)
    return out.reshape(queries.shape[0], heads * v_dim)
