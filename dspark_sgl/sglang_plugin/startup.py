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
- :func:`worker_graphs_ready` (AFTER ``DSparkWorkerV2.init_cuda_graphs``): SGLang builds
  the planner before the target has a KV pool or attention backend, so a cache miss is
  profiled here, once the target's graphs are captured and before any request:
  :func:`settle_planner_sps` times the verify forward
  (:func:`.sps_forward.build_verify_timer`), caches the table and installs it in the
  planner, identically on every TP rank; any failure leaves SGLang's placeholder.
- :func:`proposer_init` (AFTER ``DraftBlockProposer.__init__``) records the server seed
  the verify draws are keyed by.
- :func:`worker_summary` (AFTER ``DSparkWorkerV2.init_cuda_graphs``, after the profile)
  logs one summary line.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dspark_sgl import _dispatch
from dspark_sgl.scheduler import SpsTable
from dspark_sgl.sglang_plugin import hot_paths
from dspark_sgl.sglang_plugin import sps as sps_mod
from dspark_sgl.sglang_plugin.hot_paths import STATE, markov_path
from dspark_sgl.sglang_plugin.sps_forward import build_verify_timer
from dspark_sgl.sglang_plugin.switches import enabled_hooks, log_once, scheduler_mode, sps_profile_enabled

__all__ = [
    "build_sps_cost_table",
    "cached_sglang_table",
    "draft_enables_confidence_head",
    "handle_dspark_args",
    "install_planner_table",
    "planner_init",
    "profile_ladder",
    "proposer_init",
    "settle_planner_sps",
    "startup_summary",
    "worker_graphs_ready",
    "worker_summary",
]

logger = logging.getLogger("dspark_sgl")

# Largest verify token count timed at start-up (the ladder also stops at the captured grid).
PROFILE_MAX_TOKENS = 2048

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
        later = "profiled after CUDA graph capture" if sps_profile_enabled() else "DSPARK_SGL_SPS_PROFILE=0"
        STATE.sps_source = f"SGLang placeholder (no cached profile; {later})"
        log_once(
            "sps",
            "profile pending",
            f"no cached profile for this (model, GPU, tp) in {sps_mod.cache_dir()}; {later}",
        )
        return original(*args, **kwargs)
    log_once("sps", "dspark_sgl", STATE.sps_source)
    return table


def profile_ladder(planner: Any, model_runner: Any) -> list[int]:
    """The verify token counts to time for ``planner``: whole verify windows up to the
    smallest of its table's ``max_batch_tokens``, the target's captured token grid and
    :data:`PROFILE_MAX_TOKENS` (:func:`.sps.verify_ladder`)."""
    width = int(planner.verify_num_draft_tokens)
    limit = min(int(planner._budget_planner.sps_table.max_batch_tokens), PROFILE_MAX_TOKENS)
    graph_tokens = getattr(getattr(model_runner, "decode_cuda_graph_runner", None), "max_num_token", None)
    if isinstance(graph_tokens, int) and not isinstance(graph_tokens, bool) and graph_tokens >= width:
        limit = min(limit, graph_tokens)
    return sps_mod.verify_ladder(width, max(limit, width))


def install_planner_table(planner: Any, table: SpsTable) -> Any:
    """Put ``table`` into a live ``DSparkVerifyPlanner`` as SGLang's ``SpsCostTable``.

    Replaces its budget planner's table (one probe per token count, see
    :func:`.sps.to_sglang_points`; ``max_batch_tokens`` kept at least the planner's) and
    recomputes the verify-all flag SGLang derived from the placeholder. Returns the new
    SGLang table.
    """
    from sglang.srt.speculative.dspark_components.dspark_sps import SpsCostTable, is_uninitialized_sps_table

    budget = planner._budget_planner
    tokens, speeds, max_tokens = sps_mod.to_sglang_points(table)
    previous_max = int(getattr(budget.sps_table, "max_batch_tokens", 0))
    sglang_table = SpsCostTable(
        sample_batch_tokens=tokens,
        sample_steps_per_sec=speeds,
        max_batch_tokens=max(max_tokens, previous_max),
    )
    budget.sps_table = sglang_table
    planner._is_verify_all = bool(planner.is_compact_mode) and is_uninitialized_sps_table(sglang_table)
    STATE.sps_table = table
    return sglang_table


def _table_payload(table: Any) -> tuple[list[int], list[float], int]:
    return list(table.sample_batch_tokens), list(table.sample_steps_per_sec), int(table.max_batch_tokens)


def _fall_back(reason: str) -> str:
    STATE.sps_source = f"SGLang placeholder ({reason})"
    log_once("sps", "sglang placeholder", reason, level=logging.WARNING)
    return STATE.sps_source


def settle_planner_sps(
    planner: Any,
    model_runner: Any,
    *,
    build_forward: Callable[[Any, list[int]], Callable[[int], float]] = build_verify_timer,
    group: Any = None,
) -> str:
    """After the target is complete: make the planner's SPS table final; returns its source.

    planner: SGLang's ``DSparkVerifyPlanner``; model_runner: the target's ``ModelRunner``;
    build_forward(model_runner, ladder) -> time_forward(n) -> seconds (default
    :func:`.sps_forward.build_verify_timer`); group: SGLang's TP ``GroupCoordinator`` when
    tp_size > 1 (``broadcast_object``, ``all_gather_object``, ``rank_in_group``), else None.

    A static-verify planner has no table. A user table stays. Otherwise rank 0's table wins
    on every rank: its cached table when it has one, else, with ``DSPARK_SGL_SPS_PROFILE``
    on, a profile of the :func:`profile_ladder` that every rank runs (the forward is
    collective) and rank 0 measures, caches and broadcasts. When any rank cannot build the
    forward, or profiling raises, SGLang's placeholder stays and the reason is logged once.
    """
    from sglang.srt.runtime_context import get_spec
    from sglang.srt.speculative.dspark_components.dspark_sps import SpsCostTable, is_uninitialized_sps_table

    budget = getattr(planner, "_budget_planner", None)
    if budget is None:
        STATE.sps_source = "not used (static verify)"
        return STATE.sps_source
    user_path = get_spec().speculative_dspark_sps_table_path
    if user_path or not isinstance(budget.sps_table, SpsCostTable):
        STATE.sps_source = f"user table {user_path}"
        return STATE.sps_source
    rank = int(getattr(group, "rank_in_group", 0)) if group is not None else 0
    cached = None if is_uninitialized_sps_table(budget.sps_table) else _table_payload(budget.sps_table)
    if group is not None:
        cached, source = group.broadcast_object((cached, STATE.sps_source), src=0)
        STATE.sps_source = source
    if cached is not None:
        install_planner_table(planner, sps_mod.from_sglang_points(*cached))
        return STATE.sps_source
    if not sps_profile_enabled():
        return _fall_back("no cached profile; DSPARK_SGL_SPS_PROFILE=0")
    error = None
    key = ladder = time_forward = None
    try:
        key = _profile_key(model_runner, getattr(planner, "device", None))
        if key is None:
            raise ValueError("the target's model path is unknown")
        ladder = profile_ladder(planner, model_runner)
        time_forward = build_forward(model_runner, ladder)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    if group is not None:
        errors = group.all_gather_object(error)
        error = next((e for e in errors if e), None)
    if error is not None:
        return _fall_back(f"cannot time the verify forward: {error}")
    try:
        table = sps_mod.profile_sps_seconds(time_forward, ladder)
    except Exception as exc:
        return _fall_back(f"profiling the verify forward failed: {type(exc).__name__}: {exc}")
    payload = (table.tokens, table.steps_per_sec, table.max_batch_tokens)
    if group is not None:
        payload = group.broadcast_object(payload, src=0)
        table = SpsTable(list(zip(*payload[:2], strict=True)), max_batch_tokens=payload[2])
    path = sps_mod.store_cache(*key, table) if rank == 0 else sps_mod.cache_path(*key)
    install_planner_table(planner, table)
    STATE.sps_source = f"profiled now {path}"
    log_once("sps", "dspark_sgl", f"{STATE.sps_source}; verify tokens {ladder[0]}..{ladder[-1]}")
    return STATE.sps_source


def worker_graphs_ready(result: Any, self: Any, *args: Any, **kwargs: Any) -> None:
    """AFTER ``DSparkWorkerV2.init_cuda_graphs``: :func:`settle_planner_sps` on the TP group;
    never raises (a failure keeps SGLang's table and is logged once)."""
    planner = getattr(self, "_verify_planner", None)
    if planner is None:
        return
    simulated = getattr(self, "_simulate_acc_len", 0)
    if isinstance(simulated, (int, float)) and simulated > 0 and simulated != 1.0 and planner.is_verify_all:
        _fall_back(f"SGLANG_SIMULATE_ACC_LEN={simulated} needs SGLang's verify-all schedule")
        return
    try:
        from sglang.srt.runtime_context import get_parallel

        parallel = get_parallel()
        group = parallel.tp_group if int(parallel.tp_size) > 1 else None
        settle_planner_sps(planner, self.model_runner, group=group)
    except Exception as exc:
        _fall_back(f"start-up SPS profiling failed: {type(exc).__name__}: {exc}")


def proposer_init(result: Any, self: Any, *args: Any, **kwargs: Any) -> None:
    """AFTER ``DraftBlockProposer.__init__``: remember the server seed (``random_seed``) and
    create the hooks' device tensors on the draft runner's device, before any graph capture."""
    seed = kwargs.get("random_seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        STATE.random_seed = seed & 0xFFFFFFFFFFFFFFFF
    device = getattr(getattr(self, "draft_model_runner", None), "device", None)
    if device is not None:
        key = getattr(getattr(self, "_noise", None), "key", None)
        hot_paths.prepare_device(torch.device(device), key if isinstance(key, int) else None)


def startup_summary(
    *,
    gamma: int,
    head_type: str,
    confidence_head: bool,
    ragged_mode: str,
    sps_source: str,
    hooks: list[str],
    kernels: str,
    markov: str = "not inspected",
) -> str:
    """The one-line start-up summary (plain text, no trailing newline); ``markov``: what the
    Markov block hook runs for the draft's head (``hot_paths.markov_path``)."""
    if not confidence_head:
        mode = "off (no confidence head)"
    elif ragged_mode == "static":
        mode = "off (SGLANG_RAGGED_VERIFY_MODE=static)"
    else:
        mode = f"{ragged_mode}, async budget + {scheduler_mode()}"
    return (
        f"dspark_sgl: gamma={gamma} head={head_type} markov=[{markov}] "
        f"confidence_head={'yes' if confidence_head else 'no'} "
        f"scheduler={mode} sps={sps_source} hooks=[{', '.join(hooks) or 'none'}] kernels={kernels}"
    )


def worker_summary(result: Any, self: Any, *args: Any, **kwargs: Any) -> None:
    """AFTER ``DSparkWorkerV2.init_cuda_graphs``: log :func:`startup_summary` once per process."""
    draft_model = getattr(self, "draft_model", None)
    if draft_model is None:
        return
    planner = getattr(self, "_verify_planner", None)
    head = getattr(draft_model, "markov_head", None)
    hooks = enabled_hooks()
    if head is None:
        markov = "no Markov head"
    elif "markov_block" not in hooks:
        markov = "sglang original (hook off)"
    else:
        markov = markov_path(head)
    line = startup_summary(
        gamma=int(getattr(self, "gamma", 0)),
        head_type=type(head).__name__ if head is not None else "none",
        confidence_head=getattr(draft_model, "confidence_head", None) is not None,
        ragged_mode=getattr(planner, "mode_value", "unknown"),
        sps_source=STATE.sps_source,
        hooks=hooks,
        kernels=_dispatch.describe(),
        markov=markov,
    )
    logger.info("%s", line)
