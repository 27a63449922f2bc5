"""Entry points of the SGLang plugin (group ``sglang.srt.plugins``).

``sglang.srt.plugins.load_plugins()`` runs each in every SGLang process:

- ``dspark_sgl`` -> :func:`register`: one hook per entry of :data:`HOOKS` whose switch says
  ``ours`` (see :mod:`dspark_sgl.sglang_plugin.switches`), plus the CPU backend below.
- ``dspark_sgl_cpu`` -> :func:`register_cpu_backend`: only the hooks that let SGLang's own
  DSPARK run on its CPU engine (:mod:`dspark_sgl.sglang_plugin.cpu_backend`), so
  ``SGLANG_PLUGINS=dspark_sgl_cpu`` runs SGLang's DSPARK on the CPU without our hot paths.

Importing this module imports nothing from SGLang; the functions do, through ``HookRegistry``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dspark_sgl.sglang_plugin.switches import HOOK_NAMES, hook_choice, scheduler_mode, sps_profile_enabled

__all__ = ["HOOKS", "HookSpec", "register", "register_cpu_backend"]

logger = logging.getLogger("dspark_sgl")

_DRAFT = "sglang.srt.speculative.dspark_components.dspark_draft"
_PLANNER = "sglang.srt.speculative.dspark_components.dspark_planner"
_KERNELS = "sglang.kernels.ops.speculative.dspark"
_WORKER = "sglang.srt.speculative.dspark_components.dspark_worker_v2.DSparkWorkerV2"


@dataclass(frozen=True)
class HookSpec:
    """One hook: switch name, SGLang dotted path, hook type, ``module:function`` of ours."""

    name: str
    target: str
    hook_type: str
    impl: str


HOOKS: tuple[HookSpec, ...] = (
    HookSpec("markov_block", f"{_DRAFT}.draft_markov_block", "AROUND", "hot_paths:draft_markov_block"),
    HookSpec(
        "markov_step",
        f"{_KERNELS}.markov_sample.MarkovSampleStep.execute",
        "AROUND",
        "hot_paths:markov_sample_step",
    ),
    HookSpec(
        "confidence",
        "sglang.srt.models.dspark.DSparkConfidenceHead.predict",
        "AROUND",
        "hot_paths:confidence_predict",
    ),
    HookSpec(
        "accept",
        "sglang.srt.speculative.dspark_components.dspark_verify.accept_draft_tokens",
        "AROUND",
        "hot_paths:accept_draft_tokens",
    ),
    HookSpec("accept", f"{_DRAFT}.DraftBlockProposer.__init__", "AFTER", "startup:proposer_init"),
    HookSpec(
        "budget", f"{_PLANNER}.compute_verify_token_budget", "AROUND", "hot_paths:compute_verify_token_budget"
    ),
    HookSpec(
        "topk",
        f"{_KERNELS}.dspark_schedule.ScheduleVerifyLensTopk.execute",
        "AROUND",
        "hot_paths:schedule_verify_lens_topk",
    ),
    HookSpec(
        "confidence_mode",
        "sglang.srt.arg_groups.speculative_hook._handle_dspark",
        "BEFORE",
        "startup:handle_dspark_args",
    ),
    HookSpec("sps", f"{_PLANNER}.DSparkVerifyPlanner.__init__", "AROUND", "startup:planner_init"),
    HookSpec("sps", f"{_PLANNER}.build_sps_cost_table", "AROUND", "startup:build_sps_cost_table"),
    # Registered before "summary" on the same method, so it runs first and the line names the final source.
    HookSpec("sps", f"{_WORKER}.init_cuda_graphs", "AFTER", "startup:worker_graphs_ready"),
    HookSpec("summary", f"{_WORKER}.init_cuda_graphs", "AFTER", "startup:worker_summary"),
    HookSpec(
        "input_ids",
        "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request",
        "BEFORE",
        "request_checks:validate_input_ids",
    ),
)


def _resolve(impl: str) -> Callable[..., Any]:
    import importlib

    module, name = impl.split(":")
    return getattr(importlib.import_module(f"dspark_sgl.sglang_plugin.{module}"), name)


def register() -> list[str]:
    """Register every enabled hook with SGLang's ``HookRegistry``; returns their targets.

    Zero-argument entry point run by ``sglang.srt.plugins.load_plugins()``, which applies
    the hooks afterwards. A hook switched to ``sglang`` is not registered at all, so
    SGLang's original stays in place. Under SGLang's CPU engine the CPU-backend hooks
    (:func:`register_cpu_backend`) come first.
    """
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    choices = {name: hook_choice(name) for name in HOOK_NAMES}
    scheduler_mode()  # a bad DSPARK_SGL_SCHEDULER or DSPARK_SGL_SPS_PROFILE fails here, at start-up
    sps_profile_enabled()
    cpu_targets = register_cpu_backend()
    registered = []
    for spec in HOOKS:
        if choices[spec.name] != "ours":
            continue
        HookRegistry.register(spec.target, _resolve(spec.impl), HookType[spec.hook_type])
        registered.append(spec.target)
    off = [name for name in HOOK_NAMES if choices[name] != "ours"]
    logger.info(
        "dspark_sgl plugin: %d hooks registered; left to SGLang: %s",
        len(registered),
        ", ".join(off) or "none",
    )
    return cpu_targets + registered


def register_cpu_backend() -> list[str]:
    """Register the CPU-backend hooks when SGLang's CPU engine is selected; returns their targets.

    Does nothing (returns ``[]``) unless ``SGLANG_USE_CPU_ENGINE=1``. Raises ``RuntimeError``
    naming the hook when SGLang is not the version the hooks were written for or a target
    moved (:func:`.cpu_backend.check_pins`). Registering twice in one process (both entry
    points loaded) registers each hook once.
    """
    from dspark_sgl.sglang_plugin import cpu_backend

    if not cpu_backend.cpu_engine_selected():
        return []
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    cpu_backend.check_pins()
    registered = []
    for hook in cpu_backend.CPU_HOOKS:
        impl = getattr(cpu_backend, hook.impl)
        if any(existing is impl for _, existing, _ in HookRegistry._hooks.get(hook.target, ())):
            continue
        HookRegistry.register(hook.target, impl, HookType[hook.hook_type])
        registered.append(hook.target)
    if registered:
        logger.info(
            "dspark_sgl CPU backend: %d hooks registered (%s)",
            len(registered),
            ", ".join(h.name for h in cpu_backend.CPU_HOOKS),
        )
    return registered
