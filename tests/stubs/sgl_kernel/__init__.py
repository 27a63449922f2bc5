"""Pure-torch stand-in for the CPU build of ``sgl_kernel``, for the server tests only (never installed).

SGLang 0.5.23's CPU engine (``SGLANG_USE_CPU_ENGINE=1``) imports ``sgl_kernel``'s CPU
extension, which needs AVX-512/AMX and is not on PyPI; a real CPU deployment has it. Only
the functions the DSPARK and plain CPU paths call are stood in for (:data:`STOOD_IN`),
each reproducing the Triton kernel it replaces on the arguments SGLang passes and raising
``ValueError``/``TypeError`` naming the argument for anything else. The names SGLang
imports at module level but never calls on these paths (:data:`IMPORTED_ONLY`) raise
``NotImplementedError`` when called; any other name is missing (``ImportError`` on
``from sgl_kernel import``). ``torch.ops.sgl_kernel`` stays empty, so SGLang sees no AMX
kernels and takes its torch-native layer paths.
"""

from __future__ import annotations

import ctypes

import torch

__version__ = "0.0.0+stand-in"

STOOD_IN = (
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "assign_req_to_token_pool_cpu",
    "copy_all_layer_kv_cache_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
)

IMPORTED_ONLY = ("build_tree_kernel_efficient_cpu", "verify_tree_greedy_cpu")

_INT_DTYPES = (torch.int32, torch.int64)


def _fail(error: type[Exception], message: str) -> Exception:
    return error(f"sgl_kernel stand-in: {message}")


def _index(
    name: str, t: object, *, dim: int = 1, dtypes: tuple[torch.dtype, ...] = _INT_DTYPES
) -> torch.Tensor:
    """``t`` as an integer CPU tensor of ``dim`` dimensions, else a named error."""
    if not isinstance(t, torch.Tensor):
        raise _fail(TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise _fail(ValueError, f"{name} must be on the CPU, got {t.device}")
    if t.dtype not in dtypes:
        raise _fail(TypeError, f"{name} must be one of {[str(d) for d in dtypes]}, got {t.dtype}")
    if t.dim() != dim:
        raise _fail(ValueError, f"{name} must have {dim} dimension(s), got shape {tuple(t.shape)}")
    return t


def _same_length(names: str, *tensors: torch.Tensor) -> int:
    lengths = [int(t.shape[0]) for t in tensors]
    if len(set(lengths)) != 1:
        raise _fail(ValueError, f"{names} must have one length, got {lengths}")
    return lengths[0]


def _segments(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> list[tuple[int, int, int, int]]:
    """(row, start, end, packed offset) per request, checked against every bound."""
    _index("req_pool_indices", req_pool_indices)
    _index("req_to_token", req_to_token, dim=2)
    _index("start_offset", start_offset)
    _index("end_offset", end_offset)
    _index("out_cache_loc", out_cache_loc)
    _same_length("req_pool_indices, start_offset, end_offset", req_pool_indices, start_offset, end_offset)
    if int(pool_len) != req_to_token.shape[1]:
        raise _fail(ValueError, f"pool_len {pool_len} != req_to_token.shape[1] {req_to_token.shape[1]}")
    rows = req_pool_indices.tolist()
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    if any(not 0 <= r < req_to_token.shape[0] for r in rows):
        raise _fail(ValueError, f"req_pool_indices {rows} outside [0, {req_to_token.shape[0]})")
    if any(not 0 <= a <= b <= pool_len for a, b in zip(starts, ends, strict=True)):
        raise _fail(
            ValueError, f"start_offset/end_offset {starts}/{ends}: need 0 <= start <= end <= pool_len"
        )
    total = sum(b - a for a, b in zip(starts, ends, strict=True))
    if total > out_cache_loc.shape[0]:
        raise _fail(ValueError, f"out_cache_loc has {out_cache_loc.shape[0]} slots, segments need {total}")
    out, packed = [], 0
    for row, a, b in zip(rows, starts, ends, strict=True):
        out.append((row, a, b, packed))
        packed += b - a
    return out


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """``req_to_token[row_i, start_i:end_i] = out_cache_loc[packed segment i]`` (segments in order)."""
    segments = _segments(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len)
    for row, a, b, o in segments:
        req_to_token[row, a:b] = out_cache_loc[o : o + b - a].to(req_to_token.dtype)


def assign_extend_cache_locs_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """``out_cache_loc[packed segment i] = req_to_token[row_i, start_i:end_i]`` (the inverse gather)."""
    segments = _segments(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len)
    for row, a, b, o in segments:
        out_cache_loc[o : o + b - a] = req_to_token[row, a:b].to(out_cache_loc.dtype)


def assign_draft_cache_locs_contiguous_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    seq_lens: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
    topk: int,
    num_cols: int,
) -> None:
    """``out_cache_loc[i*n : (i+1)*n] = req_to_token[row_i, seq_len_i : seq_len_i + n]``,
    n = topk * num_cols."""
    n = int(topk) * int(num_cols)
    if n < 1:
        raise _fail(ValueError, f"topk * num_cols must be >= 1, got {topk} * {num_cols}")
    lens = _index("seq_lens", seq_lens)
    ends = lens.to(torch.int64) + n
    _segments(req_pool_indices, req_to_token, lens, ends, out_cache_loc, pool_len)
    rows = req_pool_indices.tolist()
    for i, start in enumerate(lens.tolist()):
        out_cache_loc[i * n : (i + 1) * n] = req_to_token[rows[i], start : start + n].to(out_cache_loc.dtype)


def _buffer(address: int, nbytes: int) -> torch.Tensor:
    return torch.frombuffer((ctypes.c_uint8 * nbytes).from_address(address), dtype=torch.uint8)


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor, strides: torch.Tensor, tgt_loc: torch.Tensor, src_loc: torch.Tensor
) -> None:
    """For every KV buffer i (address ``data_ptrs[i]``, rows of ``strides[i]`` bytes): row[tgt] = row[src].

    The sources are read before any target is written, as the Triton kernel's per-tile
    load-then-store does for disjoint source and target sets.
    """
    _index("data_ptrs", data_ptrs, dtypes=(torch.int64, torch.uint64))
    _index("strides", strides)
    _index("tgt_loc", tgt_loc)
    _index("src_loc", src_loc)
    _same_length("data_ptrs, strides", data_ptrs, strides)
    _same_length("tgt_loc, src_loc", tgt_loc, src_loc)
    if tgt_loc.numel() == 0:
        return
    if int(strides.min()) < 1:
        raise _fail(ValueError, f"strides must be positive, got {strides.tolist()}")
    tgt = tgt_loc.to(torch.int64)
    src = src_loc.to(torch.int64)
    if int(tgt.min()) < 0 or int(src.min()) < 0:
        raise _fail(ValueError, "tgt_loc/src_loc must be non-negative")
    rows = int(max(tgt.max(), src.max())) + 1
    for address, stride in zip(data_ptrs.tolist(), strides.tolist(), strict=True):
        view = _buffer(int(address), rows * int(stride)).view(rows, int(stride))
        view[tgt] = view[src].clone()


def fill_bonus_tokens_cpu(
    accept_tokens: torch.Tensor, accept_lens: torch.Tensor, bonus_tokens: torch.Tensor, accept_stride: int
) -> None:
    """``bonus_tokens[i] = accept_tokens.flat[i * accept_stride + accept_lens[i] - 1]``."""
    lens = _index("accept_lens", accept_lens)
    _index("bonus_tokens", bonus_tokens)
    if not isinstance(accept_tokens, torch.Tensor) or accept_tokens.device.type != "cpu":
        raise _fail(ValueError, "accept_tokens must be a CPU tensor")
    stride = int(accept_stride)
    bs = bonus_tokens.shape[0]
    if lens.shape[0] < bs:
        raise _fail(ValueError, f"accept_lens has {lens.shape[0]} rows, bonus_tokens {bs}")
    lens = lens[:bs].to(torch.int64)
    if bool(((lens < 1) | (lens > stride)).any()):
        raise _fail(ValueError, f"accept_lens {lens.tolist()} outside [1, accept_stride={stride}]")
    flat = accept_tokens.reshape(-1)
    if bs * stride > flat.numel():
        raise _fail(ValueError, f"accept_tokens has {flat.numel()} entries, needs {bs * stride}")
    index = torch.arange(bs, dtype=torch.int64) * stride + lens - 1
    bonus_tokens.copy_(flat[index].to(bonus_tokens.dtype))


def fill_accept_out_cache_loc_cpu(
    accept_index: torch.Tensor, out_cache_loc: torch.Tensor, accept_out_cache_loc: torch.Tensor
) -> None:
    """Pack ``out_cache_loc[accept_index[j]]`` for every ``accept_index[j] != -1``, in order."""
    if isinstance(accept_index, torch.Tensor):
        accept_index = accept_index.reshape(-1)
    index = _index("accept_index", accept_index)
    _index("out_cache_loc", out_cache_loc)
    _index("accept_out_cache_loc", accept_out_cache_loc)
    kept = index[index != -1].to(torch.int64)
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= out_cache_loc.shape[0]):
        raise _fail(ValueError, f"accept_index entries outside -1 and [0, {out_cache_loc.shape[0]})")
    if kept.numel() > accept_out_cache_loc.shape[0]:
        slots = accept_out_cache_loc.shape[0]
        raise _fail(ValueError, f"accept_out_cache_loc has {slots} slots, needs {kept.numel()}")
    accept_out_cache_loc[: kept.numel()] = out_cache_loc[kept].to(accept_out_cache_loc.dtype)


def _imported_only(name: str):
    def not_stood_in(*args: object, **kwargs: object) -> None:
        raise NotImplementedError(
            f"sgl_kernel stand-in: {name} is imported by SGLang's CPU engine but not stood in "
            "(the DSPARK and plain CPU paths never call it); install the real sgl_kernel CPU build"
        )

    not_stood_in.__name__ = name
    return not_stood_in


globals().update({name: _imported_only(name) for name in IMPORTED_ONLY})


def __getattr__(name: str) -> object:
    raise AttributeError(f"module 'sgl_kernel' (test stand-in) has no attribute {name!r}")
