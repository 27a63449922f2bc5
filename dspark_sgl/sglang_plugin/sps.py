"""SPS profiling at start-up: time a forward at a ladder of token counts, cache the table.

``profile_sps`` times any ``forward(num_tokens)`` callable with a host timer;
``profile_sps_seconds`` takes a callable that times itself (CUDA events) and returns
seconds. Both return our :class:`~dspark_sgl.scheduler.SpsTable`. ``load_or_profile`` and
``store_cache`` add the on-disk cache, one JSON file per (model, GPU name,
tensor-parallel size) under ``DSPARK_SGL_CACHE_DIR`` (default ``~/.cache/dspark_sgl``). The files use SGLang's
``--speculative-dspark-sps-table-path`` format, so a cached profile can also be passed
to an SGLang without the plugin.

SGLang reads its table as a step function of the batch size (the speed of the largest
probe <= B); ours interpolates. :func:`to_sglang_points` therefore hands SGLang one probe
per integer token count (the interpolated speeds), and :func:`from_sglang_points` turns a
step table into interpolation points that reproduce SGLang's lookup at every integer B.
Nothing here imports SGLang.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from dspark_sgl.scheduler import SpsTable

__all__ = [
    "cache_dir",
    "cache_path",
    "default_ladder",
    "from_sglang_points",
    "load_or_profile",
    "profile_sps",
    "profile_sps_seconds",
    "store_cache",
    "to_sglang_points",
    "verify_ladder",
]

logger = logging.getLogger("dspark_sgl")

# Largest table handed to SGLang as one probe per token count.
_MAX_DENSE_TOKENS = 1 << 16


def cache_dir() -> Path:
    """``DSPARK_SGL_CACHE_DIR`` or ``~/.cache/dspark_sgl`` (not created here)."""
    value = os.environ.get("DSPARK_SGL_CACHE_DIR", "")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "dspark_sgl"


def _slug(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60]
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return f"{cleaned or 'x'}-{digest}"


def cache_path(
    model: str, gpu_name: str, tp_size: int, *, directory: str | os.PathLike | None = None
) -> Path:
    """The cache file of one (model, GPU name, tp) triple: ``<dir>/sps/<model>__<gpu>__tp<N>.json``.

    model: the target model path or name; gpu_name: e.g. ``torch.cuda.get_device_name()``;
    tp_size >= 1. Names are sanitised and suffixed with a hash, so distinct inputs never
    share a file.
    """
    for name, value in (("model", model), ("gpu_name", gpu_name)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if isinstance(tp_size, bool) or not isinstance(tp_size, int) or tp_size < 1:
        raise ValueError(f"tp_size must be an integer >= 1, got {tp_size!r}")
    base = Path(directory).expanduser() if directory is not None else cache_dir()
    return base / "sps" / f"{_slug(model)}__{_slug(gpu_name)}__tp{tp_size}.json"


def default_ladder(max_tokens: int, *, min_tokens: int = 1) -> list[int]:
    """Token counts to profile: powers of two and their midpoints from ``min_tokens`` up to
    ``max_tokens`` (always included), strictly increasing."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"min_tokens must be an integer in [1, max_tokens={max_tokens}], got {min_tokens!r}")
    ladder = {min_tokens, max_tokens}
    power = 1
    while power <= max_tokens:
        for value in (power, power + power // 2):
            if min_tokens <= value <= max_tokens:
                ladder.add(value)
        power *= 2
    return sorted(ladder)


def verify_ladder(width: int, max_tokens: int) -> list[int]:
    """Verify token counts to profile: ``width * b`` for b in :func:`default_ladder` of
    ``max_tokens // width`` requests, so every count is a whole number of verify windows.

    width: tokens per request in a uniform verify (SGLang's ``verify_num_draft_tokens``),
    >= 1; max_tokens >= width.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an integer >= 1, got {width!r}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < width:
        raise ValueError(f"max_tokens must be an integer >= width={width}, got {max_tokens!r}")
    return [width * b for b in default_ladder(max_tokens // width)]


def _check_counts(token_counts: Sequence[int]) -> list[int]:
    counts = list(token_counts)
    if not counts:
        raise ValueError("token_counts must not be empty")
    for n in counts:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"token counts must be integers >= 1, got {n!r}")
    if len(set(counts)) != len(counts):
        raise ValueError(f"token counts must be distinct, got {counts}")
    return sorted(counts)


def profile_sps_seconds(
    time_forward: Callable[[int], float],
    token_counts: Sequence[int],
    *,
    warmup: int = 2,
    iters: int = 5,
) -> SpsTable:
    """The SPS table from a self-timing forward: ``time_forward(n)`` runs one forward of
    n tokens and returns its duration in seconds (e.g. measured with CUDA events).

    Each count runs ``warmup`` discarded and ``iters`` kept calls; the speed of a count is
    ``1 / median(seconds)``, and the table is cleaned to be non-increasing in n
    (:meth:`SpsTable.from_measurements`).
    """
    if not callable(time_forward):
        raise TypeError(f"forward must be callable, got {type(time_forward).__name__}")
    counts = _check_counts(token_counts)
    for name, value, low in (("warmup", warmup, 0), ("iters", iters, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    points: list[tuple[int, float]] = []
    for n in counts:
        for _ in range(warmup):
            time_forward(n)
        seconds = [float(time_forward(n)) for _ in range(iters)]
        median = statistics.median(seconds)
        if not (math.isfinite(median) and median > 0):
            raise ValueError(f"forward({n}) took a non-positive or non-finite time ({median} s)")
        points.append((n, 1.0 / median))
    return SpsTable.from_measurements(points)


def profile_sps(
    forward: Callable[[int], object],
    token_counts: Sequence[int],
    *,
    warmup: int = 2,
    iters: int = 5,
    synchronize: Callable[[], None] | None = None,
    timer: Callable[[], float] = time.perf_counter,
) -> SpsTable:
    """Time ``forward(n)`` with a host timer for every n in ``token_counts`` and build the
    SPS table (:func:`profile_sps_seconds`).

    ``synchronize`` (e.g. ``torch.cuda.synchronize``) runs before each timer read so device
    work is counted.
    """
    if not callable(forward):
        raise TypeError(f"forward must be callable, got {type(forward).__name__}")
    sync = synchronize if synchronize is not None else (lambda: None)

    def time_forward(n: int) -> float:
        sync()
        start = timer()
        forward(n)
        sync()
        return timer() - start

    return profile_sps_seconds(time_forward, token_counts, warmup=warmup, iters=iters)


def store_cache(
    model: str, gpu_name: str, tp_size: int, table: SpsTable, *, directory: str | os.PathLike | None = None
) -> Path:
    """Write ``table`` as the cache file of (model, GPU, tp), atomically; returns its path."""
    if not isinstance(table, SpsTable):
        raise TypeError(f"table must be a dspark_sgl.scheduler.SpsTable, got {type(table).__name__}")
    path = cache_path(model, gpu_name, tp_size, directory=directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    table.save(tmp)
    os.replace(tmp, path)
    return path


def load_or_profile(
    model: str,
    gpu_name: str,
    tp_size: int,
    forward: Callable[[int], object] | None,
    token_counts: Sequence[int],
    *,
    directory: str | os.PathLike | None = None,
    **profile_kwargs,
) -> tuple[SpsTable, str] | None:
    """The cached table of (model, GPU, tp), else a fresh profile that is then cached.

    Returns ``(table, source)`` with source ``"cache <path>"`` or ``"profiled <path>"``,
    or None when nothing is cached and ``forward`` is None. A corrupt cache file is
    reported and replaced by a new profile.
    """
    path = cache_path(model, gpu_name, tp_size, directory=directory)
    if path.exists():
        try:
            return SpsTable.load(path, require_non_increasing=False), f"cache {path}"
        except (ValueError, TypeError, OSError) as exc:
            logger.warning("dspark_sgl: ignoring the unreadable SPS cache %s (%s)", path, exc)
    if forward is None:
        return None
    table = profile_sps(forward, token_counts, **profile_kwargs)
    return table, f"profiled {store_cache(model, gpu_name, tp_size, table, directory=directory)}"


def to_sglang_points(table: SpsTable) -> tuple[list[int], list[float], int]:
    """(sample_batch_tokens, sample_steps_per_sec, max_batch_tokens) for SGLang's step table.

    One probe per integer token count from the first to the last point, with our
    interpolated speed, so SGLang's step lookup equals our interpolation at every integer B.
    """
    if not isinstance(table, SpsTable):
        raise TypeError(f"table must be a dspark_sgl.scheduler.SpsTable, got {type(table).__name__}")
    first, last = table.tokens[0], table.tokens[-1]
    if last - first + 1 > _MAX_DENSE_TOKENS:
        return list(table.tokens), list(table.steps_per_sec), table.max_batch_tokens
    tokens = list(range(first, last + 1))
    return tokens, [table(b) for b in tokens], table.max_batch_tokens


def from_sglang_points(
    tokens: Sequence[int], steps_per_sec: Sequence[float], max_batch_tokens: int
) -> SpsTable:
    """Our table reproducing SGLang's step lookup at every integer B.

    SGLang's speed at B is the speed of the largest probe <= B (the first probe below it);
    adding a point at ``next_probe - 1`` with the same speed makes linear interpolation
    flat between probes.
    """
    xs, ys = [int(t) for t in tokens], [float(s) for s in steps_per_sec]
    if not xs or len(xs) != len(ys):
        raise ValueError("an SGLang SPS table needs equal, non-empty lists of tokens and speeds")
    points: list[tuple[int, float]] = []
    for i, (b, s) in enumerate(zip(xs, ys, strict=True)):
        points.append((b, s))
        if i + 1 < len(xs) and xs[i + 1] - 1 > b:
            points.append((xs[i + 1] - 1, s))
    return SpsTable(points, max_batch_tokens=max(int(max_batch_tokens), xs[-1]), require_non_increasing=False)
