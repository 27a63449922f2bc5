"""Tensor-parallel ranks simulated in one process: one thread per rank, collectives that
concatenate what the ranks hand in (the layout of SGLang's ``VocabGather``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def shard_bounds(vocab: int, world: int, pad_to: int = 64) -> list[tuple[int, int, int]]:
    """SGLang's lm_head partition: (start, end, padded width) per rank, the vocab padded to
    ``pad_to`` and split evenly (ranks past the vocab hold empty slices)."""
    padded = (vocab + pad_to - 1) // pad_to * pad_to
    per_rank = padded // world
    return [(min(r * per_rank, vocab), min((r + 1) * per_rank, vocab), per_rank) for r in range(world)]


class SimulatedRanks:
    """``world`` ranks whose collectives meet at a barrier.

    ``run(fn)`` calls ``fn(rank)`` on every rank in its own thread and returns the results
    by rank; inside, ``gather(rank)`` is a ``VocabGather`` for that rank.
    """

    def __init__(self, world: int) -> None:
        self.world = world
        self._barrier = threading.Barrier(world, timeout=120)
        self._slots: list[torch.Tensor | None] = [None] * world
        self.calls = 0

    def _exchange(self, rank: int, value: torch.Tensor, dim: int) -> torch.Tensor:
        self._slots[rank] = value
        self._barrier.wait()
        out = torch.cat([s for s in self._slots if s is not None], dim=dim)
        if rank == 0:
            self.calls += 1
        self._barrier.wait()
        return out

    def gather(self, rank: int) -> RankGather:
        return RankGather(self, rank)

    def run(self, fn: Callable[[int], T]) -> list[T]:
        results: list[T | None] = [None] * self.world
        errors: list[BaseException] = []

        def work(rank: int) -> None:
            try:
                results[rank] = fn(rank)
            except BaseException as exc:  # the other ranks must not wait forever
                errors.append(exc)
                self._barrier.abort()

        threads = [threading.Thread(target=work, args=(rank,)) for rank in range(self.world)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]


class RankGather:
    """One rank's ``VocabGather``: ``[rows, local] -> [rows, world * local]`` side by side,
    ``gather_stacked``: ``[rows, k] -> [world * rows, k]`` rank by rank."""

    def __init__(self, ranks: SimulatedRanks, rank: int) -> None:
        self.ranks, self.rank = ranks, rank

    def __call__(self, local: torch.Tensor) -> torch.Tensor:
        return self.ranks._exchange(self.rank, local, dim=1)

    def gather_stacked(self, local: torch.Tensor) -> torch.Tensor:
        return self.ranks._exchange(self.rank, local, dim=0)
