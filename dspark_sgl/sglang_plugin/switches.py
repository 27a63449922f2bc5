"""Run-time switches of the SGLang plugin and its once-per-hook log.

- ``DSPARK_SGL_HOOKS``: ``all`` (default), ``none``, or a comma-separated list of hook
  names to install (see :data:`HOOK_NAMES`).
- ``DSPARK_SGL_HOOK_<NAME>=ours|sglang`` (NAME upper-case): per-hook override, wins over
  ``DSPARK_SGL_HOOKS``. ``sglang`` leaves SGLang's original in place (nothing is patched).
- ``DSPARK_SGL_SCHEDULER=topk|prune``: the per-request layout. ``topk`` admits the budget's
  K best candidates (SGLang's rule); ``prune`` adds Algorithm 1's early stop inside the
  budget (never verifies more, still lossless).
- ``DSPARK_SGL_CONFIDENCE_SCHEDULING=auto|off``: with ``auto`` and no
  ``SGLANG_RAGGED_VERIFY_MODE`` set, a draft whose config enables the confidence head gets
  ``SGLANG_RAGGED_VERIFY_MODE=compact``.
- ``DSPARK_SGL_STS_PATH``: STS JSON (``python -m dspark_sgl calibrate``) used when
  ``--speculative-dspark-confidence-sts-path`` is not given.
- ``DSPARK_SGL_CACHE_DIR``: SPS profile cache (default ``~/.cache/dspark_sgl``).
- ``DSPARK_SGL_SPS_PROFILE=1|0``: ``0`` turns start-up SPS profiling off (a cached table
  is still used; without one SGLang keeps its flat placeholder).

SGLang's own ``SGLANG_PLUGINS`` whitelist decides whether the plugin loads at all.
"""

from __future__ import annotations

import logging
import os

__all__ = [
    "HOOK_NAMES",
    "enabled_hooks",
    "hook_choice",
    "log_once",
    "logged",
    "scheduler_mode",
    "sps_profile_enabled",
]

logger = logging.getLogger("dspark_sgl")

# Hot paths, then the start-up wiring, then request validation.
HOOK_NAMES = (
    "markov_block",
    "markov_step",
    "confidence",
    "accept",
    "budget",
    "topk",
    "confidence_mode",
    "sps",
    "summary",
    "input_ids",
)

_CHOICES = ("ours", "sglang")
_logged: set[tuple[str, str, str]] = set()


def hook_choice(name: str) -> str:
    """``"ours"`` or ``"sglang"`` for hook ``name`` under the current environment."""
    if name not in HOOK_NAMES:
        raise ValueError(f"unknown dspark_sgl hook {name!r}; known hooks: {', '.join(HOOK_NAMES)}")
    override = os.environ.get(f"DSPARK_SGL_HOOK_{name.upper()}", "").strip().lower()
    if override:
        if override not in _CHOICES:
            raise ValueError(f"DSPARK_SGL_HOOK_{name.upper()} must be 'ours' or 'sglang', got {override!r}")
        return override
    listed = os.environ.get("DSPARK_SGL_HOOKS", "all").strip().lower()
    if listed in ("", "all"):
        return "ours"
    if listed == "none":
        return "sglang"
    names = {item.strip() for item in listed.split(",") if item.strip()}
    unknown = names - set(HOOK_NAMES)
    if unknown:
        raise ValueError(
            f"DSPARK_SGL_HOOKS names unknown hooks {sorted(unknown)}; known hooks: {', '.join(HOOK_NAMES)}"
        )
    return "ours" if name in names else "sglang"


def enabled_hooks() -> list[str]:
    """The hook names whose choice is ``ours``, in :data:`HOOK_NAMES` order."""
    return [name for name in HOOK_NAMES if hook_choice(name) == "ours"]


def scheduler_mode() -> str:
    """``DSPARK_SGL_SCHEDULER``: ``topk`` (default) or ``prune``."""
    value = os.environ.get("DSPARK_SGL_SCHEDULER", "topk").strip().lower() or "topk"
    if value not in ("topk", "prune"):
        raise ValueError(f"DSPARK_SGL_SCHEDULER must be 'topk' or 'prune', got {value!r}")
    return value


def sps_profile_enabled() -> bool:
    """``DSPARK_SGL_SPS_PROFILE``: ``1`` (default) profiles on a cache miss, ``0`` does not."""
    value = os.environ.get("DSPARK_SGL_SPS_PROFILE", "1").strip() or "1"
    if value not in ("0", "1"):
        raise ValueError(f"DSPARK_SGL_SPS_PROFILE must be '0' or '1', got {value!r}")
    return value == "1"


def log_once(hook: str, path: str, reason: str, *, level: int = logging.INFO, variant: str = "") -> None:
    """Log once per (hook, path, variant) which implementation runs and why (logger
    ``dspark_sgl``); ``variant`` separates cases of one path worth a line each (e.g. the
    Markov head and its vocab shard)."""
    if (hook, path, variant) in _logged:
        return
    _logged.add((hook, path, variant))
    logger.log(level, "dspark_sgl hook %s: %s (%s)", hook, path, reason)


def logged() -> set[tuple[str, str]]:
    """The (hook, path) pairs logged so far in this process."""
    return {(hook, path) for hook, path, _ in _logged}
