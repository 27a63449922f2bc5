"""Opt-in wall-time breakdown of the speculative engine's decoding rounds.

:class:`RoundProfile` is a lap timer: each :meth:`RoundProfile.lap` charges the time since
the previous lap to one phase. Disabled (the default), a lap is one attribute check: no
clock read and no device synchronisation, so the hot loop pays nothing. Enabled on a GPU,
every lap synchronises the device so that a phase's time is its own work's (that costs
speed; use it to see where a round goes, not to time a run).
"""

from __future__ import annotations

import time

import torch

__all__ = ["PHASES", "RoundProfile", "format_profile"]

#: The phases of a round in execution order (see :mod:`dspark_sgl.engine`).
PHASES = (
    "draft forward",
    "Markov block",
    "schedule",
    "target forward",
    "chain_verify",
    "commit",
    "bookkeeping",
)
DRAFT_PHASES = ("draft forward", "Markov block", "schedule")
TARGET_PHASES = ("target forward", "chain_verify", "commit")


class RoundProfile:
    """Seconds per phase, summed over the rounds of one ``generate`` call.

    ``seconds`` maps every name of :data:`PHASES` to float seconds (all 0 when disabled);
    ``rounds`` counts :meth:`end_round` calls.
    """

    def __init__(self, enabled: bool, device: torch.device) -> None:
        self.enabled = enabled
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.rounds = 0
        self._cuda = enabled and device.type == "cuda"
        self._device = device
        self._last = time.perf_counter() if enabled else 0.0

    def restart(self) -> None:
        """Start timing from now (what happened since the last lap is charged to nothing)."""
        if self.enabled:
            self._sync()
            self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the previous lap (or restart) to ``phase``."""
        if not self.enabled:
            return
        self._sync()
        now = time.perf_counter()
        self.seconds[phase] += now - self._last
        self._last = now

    def end_round(self) -> None:
        self.rounds += 1

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self._device)


def format_profile(seconds: dict[str, float], rounds: int) -> str:
    """A Markdown table: per phase, ms per round and share of the round."""
    total = sum(seconds.values())
    lines = ["| phase | ms per round | share |", "| --- | --- | --- |"]
    per = max(1, rounds)
    for phase in PHASES:
        value = seconds.get(phase, 0.0)
        share = value / total if total > 0 else 0.0
        lines.append(f"| {phase} | {1e3 * value / per:.2f} | {100 * share:.0f}% |")
    lines.append(f"| **round** | **{1e3 * total / per:.2f}** | 100% |")
    return "\n".join(lines)
