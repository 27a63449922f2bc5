"""Start-up wiring: confidence scheduling, STS, the SPS table and the summary line.

- :func:`handle_dspark_args` (BEFORE ``speculative_hook._handle_dspark``, main process,
  before any worker is spawned): turns confidence scheduling on when the draft's config
  enables the confidence head and ``SGLANG_RAGGED_VERIFY_MODE`` is unset (children inherit
  the environment), and fills ``--speculative-dspark-confidence-sts-path`` from
  ``DSPARK_SGL_STS_PATH``.
- :func:`planner_init` (AROUND ``DSparkVerifyPlanner.__init__``) remembers the target's
  model runner while SGLang builds its planner, so :func:`build_sps_cost_table` (AROUND
  ``dspark_planner.build_sps_cost_table``) can hand SGLang the cached profile of this
  (model, GPU, tp) instead of the flat placeholder table.
- :func:`proposer_init` (AFTER ``DraftBlockProposer.__init__``) records the server seed
  the verify draws are keyed by.
- :func:`worker_summary` (AFTER ``DSparkWorkerV2.__init__``) logs one summary line.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dspark_sgl import _dispatch
from dspark_sgl.sglang_plugin import sps as sps_mod
from dspark_sgl.sglang_plugin.hot_paths import STATE
from dspark_sgl.sglang_plugin.switches import enabled_hooks, log_once, scheduler_mode

__all__ = [
    "build_sps_cost_table",
    "cached_sglang_table",
    "draft_enables_confidence_head",
    "handle_dspark_args",
    "planner_init",
    "proposer_init",
    "startup_summary",
    "worker_summary",
]

logger = logging.getLogger("dspark_sgl")

_planner_runner: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "dspark_sgl_planner_runner", default=None
)


def draft_enables_confidence_head(draft_path: str | os.PathLike | None) -> bool:
    """Whether the draft's ``config.json`` (a local directory) sets ``enable_confidence_head``.

    Reads ``dspark_config`` / ``dflash_config`` sub-objects too (SGLang's layouts). False
    when the path is not a local directory with a readable config.
    """
    if not draft_path:
        return False
    config_file = Path(draft_path) / "config.json"
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    for section in (data, data.get("dspark_config"), data.get("dflash_config")):
        if isinstance(section, dict) and section.get("enable_confidence_head") is True:
            return True
    return False


def handle_dspark_args(server_args: Any, *args: Any, **kwargs: Any) -> None:
    """BEFORE ``_handle_dspark(server_args)``: confidence scheduling and the STS path."""
    mode_env = os.environ.get("SGLANG_RAGGED_VERIFY_MODE")
    switch = os.environ.get("DSPARK_SGL_CONFIDENCE_SCHEDULING", "auto").strip().lower() or "auto"
    if switch not in ("auto", "off"):
        raise ValueError(f"DSPARK_SGL_CONFIDENCE_SCHEDULING must be 'auto' or 'off', got {switch!r}")
    draft = getattr(server_args, "speculative_draft_model_path", None)
    if switch == "off":
        log_once("confidence_mode", "sglang default", "DSPARK_SGL_CONFIDENCE_SCHEDULING=off")
    elif mode_env:
        log_once("confidence_mode", "sglang default", f"SGLANG_RAGGED_VERIFY_MODE={mode_env} set by the user")
    elif draft_enables_confidence_head(draft):
        os.environ["SGLANG_RAGGED_VERIFY_MODE"] = "compact"
        log_once(
            "confidence_mode", "dspark_sgl", "draft has a confidence head: SGLANG_RAGGED_VERIFY_MODE=compact"
        )
    else:
        log_once("confidence_mode", "sglang default", "draft config enables no confidence head")
    sts_path = os.environ.get("DSPARK_SGL_STS_PATH", "")
    if sts_path and not getattr(server_args, "speculative_dspark_confidence_sts_path", None):
        if not Path(sts_path).is_file():
            raise ValueError(f"DSPARK_SGL_STS_PATH={sts_path!r} is not a file")
        server_args.speculative_dspark_confidence_sts_path = sts_path
        log_once("confidence_mode", "sts", f"STS temperatures from {sts_path}")


def planner_init(original: Callable[..., Any], self: Any, *args: Any, **kwargs: Any) -> None:
    """AROUND ``DSparkVerifyPlanner.__init__``: expose the model runner to the SPS hook."""
    token = _planner_runner.set((kwargs.get("model_runner"), kwargs.get("device")))
    try:
        return original(self, *args, **kwargs)
    finally:
        _planner_runner.reset(token)


def _profile_key(runner: Any, device: Any) -> tuple[str, str, int] | None:
    import torch
    from sglang.srt.runtime_context import get_parallel

    model_config = getattr(runner, "model_config", None)
    model = getattr(model_config, "model_path", None)
    if not isinstance(model, str) or not model:
        return None
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    tp = get_parallel().tp_size
    return model, gpu, int(tp) if isinstance(tp, int) and tp >= 1 else 1


def cached_sglang_table(model: str, gpu_name: str, tp_size: int) -> Any:
    """SGLang's ``SpsCostTable`` built from our cached profile of (model, GPU, tp), or None.

    The table has one probe per token count (SGLang's step lookup then equals our
    interpolation); the plugin state remembers our table and its source for the budget,
    the ``prune`` layout and the summary line.
    """
    from sglang.srt.speculative.dspark_components.dspark_sps import SpsCostTable

    found = sps_mod.load_or_profile(model, gpu_name, tp_size, None, [])
    if found is None:
        return None
    table, source = found
    tokens, speeds, max_tokens = sps_mod.to_sglang_points(table)
    STATE.sps_table = table
    STATE.sps_source = source
    return SpsCostTable(sample_batch_tokens=tokens, sample_steps_per_sec=speeds, max_batch_tokens=max_tokens)


def build_sps_cost_table(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """AROUND ``dspark_planner.build_sps_cost_table``: :func:`cached_sglang_table` when the
    user gave no ``--speculative-dspark-sps-table-path``; SGLang's table otherwise."""
    from sglang.srt.runtime_context import get_spec

    user_path = get_spec().speculative_dspark_sps_table_path
    if user_path:
        STATE.sps_source = f"user table {user_path}"
        log_once("sps", "sglang original", f"--speculative-dspark-sps-table-path {user_path}")
        return original(*args, **kwargs)
    context = _planner_runner.get()
    key = _profile_key(*context) if context is not None else None
    table = cached_sglang_table(*key) if key is not None else None
    if table is None:
        STATE.sps_source = "none: SGLang's flat placeholder"
        log_once(
            "sps",
            "sglang original",
            "no cached profile for this (model, GPU, tp) in "
            f"{sps_mod.cache_dir()}; see the README's SGLang plugin section",
        )
        return original(*args, **kwargs)
    log_once("sps", "dspark_sgl", STATE.sps_source)
    return table


def proposer_init(result: Any, self: Any, *args: Any, **kwargs: Any) -> None:
    """AFTER ``DraftBlockProposer.__init__``: remember the server seed (``random_seed``)."""
    seed = kwargs.get("random_seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        STATE.random_seed = seed & 0xFFFFFFFFFFFFFFFF


def startup_summary(
    *,
    gamma: int,
    head_type: str,
    confidence_head: bool,
    ragged_mode: str,
    sps_source: str,
    hooks: list[str],
    kernels: str,
) -> str:
    """The one-line start-up summary (plain text, no trailing newline)."""
    if not confidence_head:
        mode = "off (no confidence head)"
    elif ragged_mode == "static":
        mode = "off (SGLANG_RAGGED_VERIFY_MODE=static)"
    else:
        mode = f"{ragged_mode}, async budget + {scheduler_mode()}"
    return (
        f"dspark_sgl: gamma={gamma} head={head_type} confidence_head={'yes' if confidence_head else 'no'} "
        f"scheduler={mode} sps={sps_source} hooks=[{', '.join(hooks) or 'none'}] kernels={kernels}"
    )


def worker_summary(result: Any, self: Any, *args: Any, **kwargs: Any) -> None:
    """AFTER ``DSparkWorkerV2.__init__``: log :func:`startup_summary` once per process."""
    draft_model = getattr(self, "draft_model", None)
    if draft_model is None:
        return
    planner = getattr(self, "_verify_planner", None)
    head = getattr(draft_model, "markov_head", None)
    line = startup_summary(
        gamma=int(getattr(self, "gamma", 0)),
        head_type=type(head).__name__ if head is not None else "none",
        confidence_head=getattr(draft_model, "confidence_head", None) is not None,
        ragged_mode=getattr(planner, "mode_value", "unknown"),
        sps_source=STATE.sps_source,
        hooks=enabled_hooks(),
        kernels=_dispatch.describe(),
    )
    logger.info("%s", line)
