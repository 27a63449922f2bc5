"""The timed target verify forward behind start-up SPS profiling (CUDA only).

:func:`build_verify_timer` turns SGLang's target ``ModelRunner`` into
``time_forward(num_tokens) -> seconds`` for :func:`dspark_sgl.sglang_plugin.sps.profile_sps_seconds`.

Why this forward. In SGLang 0.5.23 the DSPARK worker and its planner are built before the
target's KV pool, attention backend and CUDA graphs exist, so the profile runs later, after
``DSparkWorkerV2.init_cuda_graphs`` (see :mod:`.startup`), when the target is complete but
no request has been admitted. It reuses the dummy forward SGLang itself runs at start-up
for kernel warm-up and autotuning (``BaseRunner._dummy_run`` of the runner's
``eager_runner``): a ``TARGET_VERIFY`` ``ForwardBatch`` of ``b`` requests times
``verify_num_draft_tokens`` tokens, built on a scratch decode-buffer set that we allocate
(``_alloc_dummy_decode_buffers``, sized to the largest ladder entry, no logits buffer).
Those buffers hold request-pool row 0, sequence lengths of SGLang's fill value and
``out_cache_loc`` 0, so the forward reads row 0 and writes K/V only into KV slot 0, the
padding slot SGLang never hands to a request and that its own padded graph replays
overwrite; no allocator, request pool or radix state changes. The forward is SGLang's
eager ``model.forward`` (not a captured graph: replaying one needs the replay-time
attention metadata of a live batch), timed with CUDA events recorded around the model call
only (``run_ctx``), so host-side batch preparation and the TP barrier SGLang places before
each dummy forward are not counted. Every TP rank must run it (the forward's all-reduces
are collective); the caller makes the tables identical across ranks.

Nothing here runs on CPU: :func:`build_verify_timer` raises :class:`SpsForwardUnavailableError`
with the reason whenever a required piece is missing; on SGLang's CPU backend the reason says
plainly that start-up SPS profiling is skipped there (SGLang's flat placeholder stays, so the
whole block is verified unless a table is given).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

__all__ = ["SpsForwardUnavailableError", "build_verify_timer"]


class SpsForwardUnavailableError(RuntimeError):
    """The timed verify forward cannot be built on this runner (the message says why)."""


class _EventSpan:
    """Context manager recording CUDA events on the current stream at enter and exit."""

    def __init__(self) -> None:
        import torch

        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self.recorded = False

    def __enter__(self) -> _EventSpan:
        self._start.record()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._end.record()
        self.recorded = exc_type is None

    def seconds(self) -> float:
        """Device time between the two events, in seconds (waits for the end event)."""
        if not self.recorded:
            raise RuntimeError("the timed forward did not run")
        self._end.synchronize()
        return self._start.elapsed_time(self._end) / 1e3


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise SpsForwardUnavailableError(reason)


def build_verify_timer(model_runner: Any, token_counts: Sequence[int]) -> Callable[[int], float]:
    """``time_forward(n) -> seconds`` for the target's verify forward at n tokens.

    model_runner: SGLang's target ``ModelRunner`` after ``init_cuda_graphs``;
    token_counts: the ladder, each a positive multiple of the runner's verify width
    (``decode_num_tokens_per_req()``). Raises :class:`SpsForwardUnavailableError` when the
    device is not CUDA, the runner is a draft or not a DSPARK target, pipeline parallelism
    or attention data parallelism is on, PD disaggregation runs this rank as prefill, or a
    piece of SGLang's dummy-forward machinery is missing.
    """
    import torch

    _require(model_runner is not None, "no target model runner")
    device = str(getattr(model_runner, "device", ""))
    _require(
        device != "cpu",
        "SPS profiling is skipped on the CPU: the timed forward is SGLang's CUDA dummy forward on CUDA "
        "events; give a CPU table with --speculative-dspark-sps-table-path",
    )
    _require(device == "cuda", f"the target runs on {device or 'an unknown device'!r}, not CUDA")
    _require(torch.cuda.is_available(), "CUDA is not available in this process")
    _require(not getattr(model_runner, "is_draft_worker", True), "the runner is not the target's")
    spec = getattr(model_runner, "spec_algorithm", None)
    _require(
        spec is not None and callable(getattr(spec, "is_dspark", None)) and spec.is_dspark(),
        "the target runner is not set up for DSPARK verification",
    )
    from sglang.srt.runtime_context import get_disagg, get_parallel

    parallel = get_parallel()
    _require(int(parallel.pp_size) == 1, f"pipeline parallelism (pp_size={parallel.pp_size})")
    _require(not parallel.attn_dp_enabled, "attention data parallelism")
    _require(get_disagg().disaggregation_mode != "prefill", "PD-disaggregated prefill rank")
    runner = getattr(model_runner, "eager_runner", None)
    for name in ("_dummy_run", "_alloc_dummy_decode_buffers"):
        _require(callable(getattr(runner, name, None)), f"the eager runner has no {name}")
    per_req = getattr(model_runner, "decode_num_tokens_per_req", None)
    _require(callable(per_req), "the runner has no decode_num_tokens_per_req")
    width = int(per_req())
    counts = list(token_counts)
    _require(width >= 1 and bool(counts), f"verify width {width} or an empty ladder")
    bad = [n for n in counts if isinstance(n, bool) or not isinstance(n, int) or n < width or n % width]
    _require(not bad, f"ladder entries {bad} are not positive multiples of the verify width {width}")
    max_requests = max(counts) // width
    buffers = runner._alloc_dummy_decode_buffers(
        max_requests, num_tokens_per_req=width, allocate_logits_buffer=False
    )

    def time_forward(num_tokens: int) -> float:
        if num_tokens % width or not 1 <= num_tokens // width <= max_requests:
            raise ValueError(f"num_tokens={num_tokens} is not in the profiled ladder {counts}")
        span = _EventSpan()
        with torch.no_grad():
            runner._dummy_run(batch_size=num_tokens // width, run_ctx=span, buffers=buffers)
        return span.seconds()

    return time_forward
