"""Issue 13: the first-run fixes and SGLang's rounding contract, on the kernels and the references.

Kernel tests take the ``backend`` fixture (the CPU emulator on every run, a CUDA device when one
is lent); the dispatch tests run on the CPU with a stand-in extension and a monkeypatched device.
Inputs are dyadic wherever bits are compared, so every sum is exact and only the rounding steps
under test (to the weights', the projection's or the logits' dtype) can differ.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import types

import pytest
import torch
from draft_ties import assert_draft_tokens_match
from test_gpu_kernels import assert_blocks_match
from torch.overrides import TorchFunctionMode

from dspark_sgl import _dispatch, markov, scheduler, verify

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
CUDA0 = torch.device("cuda", 0)


def _dyadic(gen: torch.Generator, shape: tuple[int, ...], bound: float, step: float) -> torch.Tensor:
    """float32 multiples of ``step`` (a power of two) in [-bound, bound], exact in bf16/fp16
    when bound / step <= 128."""
    n = round(bound / step)
    return torch.randint(-n, n + 1, shape, generator=gen).float() * step


def _greedy_and_sampled(rows: int, device: torch.device) -> torch.Tensor:
    return torch.tensor([0.0 if r % 2 == 0 else 0.5 + r / 8 for r in range(rows)], device=device)


@contextlib.contextmanager
def _no_value_checks(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DSPARK_SGL_CHECK_VALUES", "0")
    yield


def _fake_extension(monkeypatch: pytest.MonkeyPatch, **attrs) -> types.SimpleNamespace:
    ext = types.SimpleNamespace(cuda_archs="90a,90", cuda_ptx="90", **attrs)
    monkeypatch.setattr(_dispatch, "_extension", ext)
    monkeypatch.setattr(_dispatch, "_extension_error", None)
    monkeypatch.setattr(_dispatch, "_extension_tried", True)
    monkeypatch.delenv("DSPARK_SGL_FORCE_REFERENCE", raising=False)
    return ext


# ---------------------------------------------------------------------------------------
# 2.1 softcap: one formula, cap * tanh(x / cap) with an IEEE division


_DIVISIONS = {torch.Tensor.__truediv__, torch.Tensor.div, torch.div, torch.true_divide}


class _CudaScalarDivision(TorchFunctionMode):
    """PyTorch's CUDA rule for ``float32 tensor / Python number``: a multiply by the float32
    reciprocal (BinaryDivTrueKernel.cu). Lets a CPU test see what the reference does on a GPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (
            func in _DIVISIONS
            and not kwargs
            and len(args) == 2
            and isinstance(args[1], (int, float))
            and isinstance(args[0], torch.Tensor)
            and args[0].dtype == F32
        ):
            inverse = float(torch.tensor(1.0) / torch.tensor(float(args[1])))
            return args[0] * inverse
        return func(*args, **kwargs)


def test_softcap_reference_gives_the_same_bits_under_cudas_division_rule():
    """The reference must not divide by a Python float: on CUDA that is x * fl(1/cap), not the
    kernel's x / cap. Under the CUDA rule the block's logits and recomputed rows are unchanged."""
    gen = torch.Generator().manual_seed(0)
    rows, gamma, vocab, rank, cap = 5, 3, 300, 8, 30.0
    base = torch.randn(rows, gamma, vocab, generator=gen) * 40
    w1, w2 = torch.randn(vocab, rank, generator=gen), torch.randn(vocab, rank, generator=gen)
    anchor = torch.randint(0, vocab, (rows,), generator=gen)
    temperature = torch.zeros(rows)
    x = base.reshape(-1)
    assert not torch.equal(x / torch.full((), cap), x * float(torch.tensor(1.0) / torch.tensor(cap)))

    def run():
        block = markov.sample_block(
            base, anchor, w1, w2, temperature, seed=1, offset=0, logit_softcap=cap, keep_logits=True
        )
        position = torch.arange(rows) % gamma
        return block, block.stats.row_logits(block.tokens, position)

    block, rows_ieee = run()
    with _CudaScalarDivision():
        block_cuda_rule, rows_cuda_rule = run()
    assert torch.equal(block_cuda_rule.logits, block.logits)
    assert torch.equal(block_cuda_rule.tokens, block.tokens)
    assert torch.equal(rows_cuda_rule, rows_ieee)
    expected = cap * torch.tanh(torch.div(base, torch.full((), cap)))
    assert torch.equal(markov.softcap(base, cap), expected)


def _libm_tanhf_agrees(y: torch.Tensor) -> torch.Tensor:
    """Where glibc's tanhf (the emulator's) gives torch.tanh's float32 bits."""
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.tanhf.restype, libm.tanhf.argtypes = ctypes.c_float, [ctypes.c_float]
    values, inverse = torch.unique(y, return_inverse=True)
    ours = torch.tensor([libm.tanhf(float(v)) for v in values.tolist()], dtype=F32)
    return (ours == torch.tanh(values))[inverse]


def test_softcapped_block_is_bit_exact_kernel_vs_reference(backend):
    """Softcapped base logits: kernel and reference logits agree bit for bit. On the emulator
    tanhf is glibc's, so inputs where glibc and torch.tanh differ are set to 0 (on a device both
    sides call CUDA's tanhf and every input is kept)."""
    rows, gamma, vocab, rank = backend.size((48, 4, 4099, 64), (6, 3, 200, 8))
    cap = 30.0
    gen = torch.Generator().manual_seed(1)
    base = _dyadic(gen, (rows, gamma, vocab), 64.0, 0.125)
    if backend.name == "cuemu":
        base = torch.where(_libm_tanhf_agrees(base / torch.full((), cap)), base, torch.zeros_like(base))
    dev = backend.device
    w1, w2 = (_dyadic(gen, (vocab, rank), 2.0, 0.25).to(dev) for _ in range(2))
    anchor = torch.randint(0, vocab, (rows,), generator=gen).to(dev)
    args = (base.to(dev), anchor, w1, w2, _greedy_and_sampled(rows, dev))
    kwargs = dict(seed=3, offset=5, logit_softcap=cap, keep_logits=True)
    kernel = markov.sample_block(*args, **kwargs)
    assert backend.ran("markov_block")
    with _dispatch.forced_reference():
        reference = markov.sample_block(*args, **kwargs)
    assert_blocks_match(kernel, reference, args[-1], seed=3, offset=5)


# ---------------------------------------------------------------------------------------
# 2.2 sample_block never converts W2 on the kernel path (the reference sums in float64, from
# a copy of W2 per head: see markov._vanilla_bias)


@pytest.mark.parametrize("path", ["kernel"])
def test_sample_block_never_converts_w2(backend, monkeypatch, path):
    rows, gamma, vocab, rank = backend.size((32, 4, 129280, 64), (4, 2, 300, 16))
    gen = torch.Generator().manual_seed(2)
    dev = backend.device
    w1 = torch.randn(vocab, rank, generator=gen).to(BF16).to(dev)
    w2 = torch.randn(vocab, rank, generator=gen).to(BF16).to(dev)
    base = torch.randn(rows, gamma, vocab, generator=gen).to(dev)
    anchor = torch.randint(0, vocab, (rows,), generator=gen).to(dev)
    storage = w2.untyped_storage().data_ptr()
    conversions: list[str] = []

    def spy(name: str):
        original = getattr(torch.Tensor, name)

        def converting(self, *args, **kwargs):
            if self.untyped_storage().data_ptr() == storage:
                conversions.append(name)
            return original(self, *args, **kwargs)

        return converting

    for name in ("float", "to", "double", "half", "bfloat16", "type", "clone"):
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    choice = _dispatch.forced_reference() if path == "reference" else contextlib.nullcontext()
    with choice:
        block = markov.sample_block(base, anchor, w1, w2, _greedy_and_sampled(rows, dev), seed=0, offset=0)
    assert backend.ran("markov_block") == (path == "kernel")
    assert block.tokens.shape == (rows, gamma)
    assert conversions == []


# ---------------------------------------------------------------------------------------
# 2.3 devices the build has no code for run the reference, with the reason logged


@pytest.mark.parametrize(
    "capability,archs,ptx,covered",
    [
        ((9, 0), "90a,90", "90", True),
        ((8, 0), "90a,90", "90", False),
        ((8, 9), "90a,90", "90", False),
        ((10, 0), "90a,90", "90", True),  # JIT from the compute_90 PTX
        ((12, 0), "90a,90", "", False),  # no PTX: nothing runs on Blackwell
        ((9, 0), "90a", "", True),
        ((8, 6), "80", "", True),  # sm_80 SASS runs on 8.6
        ((9, 0), "80", "", False),  # but not on another major
        ((8, 0), "86", "", False),
    ],
)
def test_kernels_run_only_on_architectures_the_build_covers(monkeypatch, capability, archs, ptx, covered):
    ext = _fake_extension(monkeypatch, philox_uniform=lambda *args: None)
    ext.cuda_archs, ext.cuda_ptx = archs, ptx
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    use, reason = _dispatch.kernel_path("philox_uniform", CUDA0)
    assert use == covered, reason
    if not covered:
        assert f"sm_{capability[0]}{capability[1]}" in reason and archs in reason


def test_uncovered_device_logs_why_the_reference_runs(monkeypatch, caplog):
    _fake_extension(monkeypatch, markov_block=lambda args: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    _dispatch._logged.clear()
    with caplog.at_level(logging.INFO, logger="dspark_sgl"):
        assert not _dispatch.use_kernel("markov_block", CUDA0)
    _dispatch._logged.clear()
    assert any(
        "markov_block runs the PyTorch reference (the device is sm_80" in r.getMessage()
        for r in caplog.records
    )


# ---------------------------------------------------------------------------------------
# 2.4 launches happen on the inputs' device


def test_launch_makes_the_inputs_device_current(monkeypatch):
    current: list[torch.device] = []

    @contextlib.contextmanager
    def device_guard(device):
        current.append(torch.device(device))
        try:
            yield
        finally:
            current.pop()

    seen = []
    _fake_extension(monkeypatch, markov_block=lambda args: seen.append((list(current), args)))
    monkeypatch.setattr(torch.cuda, "device", device_guard)
    streams = []
    monkeypatch.setattr(
        torch.cuda,
        "current_stream",
        lambda device=None: streams.append(device) or types.SimpleNamespace(cuda_stream=7),
    )
    cuda1 = torch.device("cuda", 1)
    _dispatch.launch("markov_block", cuda1, {"cuda_stream": _dispatch.current_stream_handle(cuda1)})
    assert seen == [([cuda1], {"cuda_stream": 7})] and streams == [cuda1] and current == []


def test_cpu_launch_needs_no_device_guard(monkeypatch):
    def no_guard(device):
        raise AssertionError("torch.cuda.device entered for a CPU launch")

    seen = []
    _fake_extension(monkeypatch, philox_uniform=lambda *args: seen.append(args))
    monkeypatch.setattr(torch.cuda, "device", no_guard)
    _dispatch.launch("philox_uniform", torch.device("cpu"), 1, 2)
    assert seen == [(1, 2)]


def test_inputs_on_a_non_current_gpu_run_there(backend):
    """Two GPUs: inputs on cuda:1 while cuda:0 is current give the reference's tokens (the
    attribute, the launch and the stream are cuda:1's). Device-only; never run yet."""
    if backend.name != "cuda" or torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    dev = torch.device("cuda", 1)
    gen = torch.Generator().manual_seed(13)
    rows, gamma, vocab, rank = 40, 3, 4099, 64  # the 256-wide mma.sync tile and its attribute
    w1, w2 = (_dyadic(gen, (vocab, rank), 2.0, 1 / 8).to(BF16).to(dev) for _ in range(2))
    base = _dyadic(gen, (rows, gamma, vocab), 8.0, 1 / 16).to(dev)
    anchor = torch.randint(0, vocab, (rows,), generator=gen).to(dev)
    args = (base, anchor, w1, w2, _greedy_and_sampled(rows, dev))
    with torch.cuda.device(0):
        kernel = markov.sample_block(*args, seed=1, offset=0, keep_logits=True)
        assert backend.ran("markov_block")
        with _dispatch.forced_reference():
            reference = markov.sample_block(*args, seed=1, offset=0, keep_logits=True)
    assert kernel.tokens.device == dev
    assert_blocks_match(kernel, reference, args[-1], seed=1, offset=0)


# ---------------------------------------------------------------------------------------
# 2.5 first use of an SPS table inside a CUDA graph capture


def _forbid_host_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.tensor

    def tensor(*args, **kwargs):
        if kwargs.get("device") is not None:
            raise RuntimeError("a host-to-device copy inside a CUDA graph capture")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", tensor)


def test_sps_points_first_used_inside_a_capture_are_filled_on_the_device(monkeypatch):
    table = scheduler.SpsTable([(1, 100.0), (8, 90.5), (64, 30.25)])
    device = torch.device("cpu")
    with monkeypatch.context() as capture:
        capture.setattr(scheduler, "_capture_active", lambda d: True)
        _forbid_host_copies(capture)
        xs, ys = table.device_points(device)
        assert xs.dtype == ys.dtype == torch.float64
        assert xs.tolist() == [1.0, 8.0, 64.0] and ys.tolist() == [100.0, 90.5, 30.25]
        # Graph-owned memory is not cached: the next use outside the capture builds its own.
        assert table.device_points(device)[0] is not xs
    cached = table.device_points(device)
    assert cached[0] is table.device_points(device)[0]
    assert cached[1].tolist() == [100.0, 90.5, 30.25]


def test_plain_topk_inside_a_capture_launches_with_filled_points(backend, monkeypatch):
    gen = torch.Generator().manual_seed(4)
    confidence = torch.rand(6, 4, generator=gen).to(backend.device)
    with _dispatch.forced_reference():
        expected = scheduler.schedule_topk(confidence, 7)
    monkeypatch.setattr(scheduler, "_NO_SPS", scheduler.SpsTable([(1, 1.0)]))
    monkeypatch.setattr(scheduler, "_capture_active", lambda d: True)
    _forbid_host_copies(monkeypatch)
    lengths = scheduler.schedule_topk(confidence, 7)
    assert backend.ran("schedule_prefix")
    assert torch.equal(lengths.cpu(), expected.cpu())
    assert not scheduler._NO_SPS._device_cache


def test_chain_verify_counters_first_made_inside_a_capture_are_filled_and_not_cached(backend, monkeypatch):
    """chain_verify's zero-at-rest counters: a capture that finds none makes them with a device fill
    (a node of that graph, no host copy) and does not cache graph-owned memory; outside a capture
    they are made once and reused."""
    from test_gpu_kernels import assert_verify_matches, verify_case

    case, block, target, lens = verify_case(backend.device, 6, 3, 1024)
    args = (target, block.stats, block.tokens, lens, case["temperature"])
    verify.forget_counters()
    with monkeypatch.context() as capture:
        capture.setattr(_dispatch, "capture_active", lambda device: True)
        _forbid_host_copies(capture)
        inside = verify.chain_verify(*args, seed=2, offset=5)
        assert backend.ran("chain_verify")
        assert not verify._COUNTERS
    outside = verify.chain_verify(*args, seed=2, offset=5)
    cached = list(verify._COUNTERS.values())
    assert len(cached) == 1 and not bool(cached[0].any())
    verify.chain_verify(*args, seed=2, offset=5)
    assert next(iter(verify._COUNTERS.values())) is cached[0]
    assert torch.equal(inside[0], outside[0]) and torch.equal(inside[1], outside[1])
    assert_verify_matches(backend, *args[:2], block, lens, case["temperature"], seed=2, offset=5)


# ---------------------------------------------------------------------------------------
# 2.6 NaN with value checks off: the first NaN wins an argmax; a NaN confidence admits nothing


def test_nan_logits_are_drawn_alike_by_kernel_and_reference(backend, monkeypatch):
    monkeypatch.setenv("DSPARK_SGL_CHECK_VALUES", "0")
    rows, gamma, vocab, rank = backend.size((16, 4, 4096, 32), (4, 3, 150, 8))
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(rows, gamma, vocab, generator=gen)
    base[0, 0, [17, 5, 90]] = float("nan")
    base[1, 1, [3]] = float("nan")
    base[2, :, 7] = float("nan")
    base[3, 2, :] = float("nan")
    dev = backend.device
    w1, w2 = (torch.randn(vocab, rank, generator=gen).to(dev) for _ in range(2))
    anchor = torch.randint(0, vocab, (rows,), generator=gen).to(dev)
    temperature = torch.tensor([0.0, 0.7, 1.0, 0.0] + [0.9] * (rows - 4), device=dev)
    args = (base.to(dev), anchor, w1, w2, temperature)
    kernel = markov.sample_block(*args, seed=1, offset=2)
    assert backend.ran("markov_block")
    with _dispatch.forced_reference():
        reference = markov.sample_block(*args, seed=1, offset=2)
    assert_draft_tokens_match(kernel, reference, temperature.cpu(), seed=1, offset=2)
    assert torch.equal(kernel.tokens[:4], reference.tokens[:4])  # the NaN rows: the first NaN on both sides
    tokens = reference.tokens.cpu()
    assert tokens[0, 0] == 5 and tokens[1, 1] == 3 and tokens[3, 2] == 0
    assert (tokens[2] == 7).all()


def test_nan_and_infinite_target_logits_draw_alike_in_the_bonus_row(backend, monkeypatch):
    """Sampled rows whose drafts are all accepted (target == draft) draw the bonus in pass 1 on the
    16-byte-group path (V % 8 == 0): the first NaN wins, then the first +inf; -inf columns (a whole
    leading slab of them too) never win; a -inf drafted token rejects (p = q = 0) and every residual is
    0, so the bonus at the stop is drawn instead."""
    monkeypatch.setenv("DSPARK_SGL_CHECK_VALUES", "0")
    rows, gamma, vocab = 5, 2, backend.size(4096, 1024)
    gen = torch.Generator().manual_seed(7)
    draft = torch.randn(rows, gamma, vocab, generator=gen)
    target = torch.cat([draft, torch.randn(rows, 1, vocab, generator=gen)], dim=1)
    tokens = draft.argmax(dim=-1)
    target[0, gamma, [300, 40]] = float("nan")  # row 0: the bonus is column 40
    target[1, gamma, :64] = -float("inf")
    target[1, gamma, [500, 700]] = float("inf")  # row 1: the bonus is column 500
    target[2, :, :64] = draft[2, :, :64] = -float("inf")  # -inf slabs, an ordinary bonus
    tokens[3, 1] = 5
    target[3, 1, 5] = draft[3, 1, 5] = -float("inf")  # row 3: rejected at 1 with p = q = 0
    dev = backend.device
    temperature = torch.tensor([0.8, 1.3, 0.7, 0.9, 0.0], device=dev)
    args = (
        target.to(dev),
        draft.to(dev),
        tokens.to(dev),
        torch.full((rows,), gamma, device=dev),
        temperature,
    )
    kernel = verify.chain_verify(*args, seed=4, offset=1)
    assert backend.ran("chain_verify")
    with _dispatch.forced_reference():
        reference = verify.chain_verify(*args, seed=4, offset=1)
    for a, b in zip(kernel, reference, strict=True):
        assert torch.equal(a, b)
    accept, out = (t.cpu() for t in reference)
    assert accept.tolist()[:4] == [gamma, gamma, gamma, 1]
    assert out[0, gamma] == 40 and out[1, gamma] == 500 and out[2, gamma] >= 64


def test_nan_target_logits_verify_alike_on_kernel_and_reference(backend, monkeypatch):
    monkeypatch.setenv("DSPARK_SGL_CHECK_VALUES", "0")
    rows, gamma, vocab = backend.size((16, 4, 4096), (4, 3, 150))
    gen = torch.Generator().manual_seed(6)
    target = torch.randn(rows, gamma + 1, vocab, generator=gen)
    target[:, :, 11] = float("nan")  # every greedy target argmax is token 11
    target[1, :, 4] = float("nan")  # ... token 4 on row 1
    drafts = torch.full((rows, gamma), 11)
    drafts[0, 1] = 2  # row 0 is rejected at position 1
    dev = backend.device
    args = (
        target.to(dev),
        torch.randn(rows, gamma, vocab, generator=gen).to(dev),
        drafts.to(dev),
        torch.full((rows,), gamma, device=dev),
        torch.zeros(rows, device=dev),
    )
    kernel = verify.chain_verify(*args, seed=0, offset=0)
    assert backend.ran("chain_verify")
    with _dispatch.forced_reference():
        reference = verify.chain_verify(*args, seed=0, offset=0)
    for a, b in zip(kernel, reference, strict=True):
        assert torch.equal(a, b)
    accept, out = (t.cpu() for t in reference)
    assert accept[0] == 1 and out[0, 1] == 11 and accept[1] == 0 and out[1, 0] == 4
    assert (accept[2:] == gamma).all()


@pytest.mark.parametrize("mode", ["topk", "topk_causal", "causal", "async"])
def test_nan_confidences_schedule_alike_on_kernel_and_reference(backend, monkeypatch, mode):
    monkeypatch.setenv("DSPARK_SGL_CHECK_VALUES", "0")
    rows, gamma = backend.size((64, 8), (6, 5))
    gen = torch.Generator().manual_seed(7)
    confidence = torch.rand(rows, gamma, generator=gen) ** 0.2
    confidence[0, 1] = float("nan")
    confidence[2, 0] = float("nan")
    confidence = confidence.to(backend.device)
    sps = scheduler.SpsTable([(1, 100.0), (8, 95.0), (32, 70.0), (512, 10.0)])
    stale = (torch.rand(rows, gamma, generator=gen) ** 0.2).to(backend.device)

    def run():
        if mode == "topk":
            return scheduler.schedule_topk(confidence, 3 * rows)
        if mode == "topk_causal":
            return scheduler.schedule_topk_causal(confidence, 3 * rows, sps)
        if mode == "causal":
            return scheduler.schedule_causal(confidence, sps)
        return scheduler.schedule_async(confidence, stale, sps)

    kernel = run()
    assert backend.ran("schedule_prefix")
    with _dispatch.forced_reference():
        reference = run()
    assert torch.equal(kernel.cpu(), reference.cpu())
    lengths = reference.cpu()
    assert lengths[0] <= 1 and lengths[2] == 0


def test_nan_survival_is_zero_in_the_reference():
    survival = scheduler.prefix_survival(torch.tensor([[0.5, float("nan"), 0.9], [0.9, 0.8, 0.7]]))
    assert survival[0].tolist() == [0.5, 0.0, 0.0]
    assert survival[1, 2] == pytest.approx(0.504)


# ---------------------------------------------------------------------------------------
# 3.2 16-bit Markov heads: the bias is rounded to the weights' dtype, as SGLang's Linear


@pytest.mark.parametrize("dtype", [BF16, F16])
def test_markov_bias_is_sglangs_linear_in_the_weight_dtype(dtype):
    gen = torch.Generator().manual_seed(8)
    vocab, rank = 200, 24
    w1, w2 = (_dyadic(gen, (vocab, rank), 4.0, 1 / 16).to(dtype) for _ in range(2))
    prev = torch.randint(0, vocab, (13,), generator=gen)
    sglang_bias = torch.nn.functional.linear(w1[prev], w2).float()
    exact = w1[prev].double() @ w2.double().T
    assert not torch.equal(sglang_bias.double(), exact)  # the rounding shows on these inputs
    assert torch.equal(markov.markov_bias(w1, w2, prev), sglang_bias)
    bias, _ = markov.VanillaMarkovHead(w1, w2).step(prev, None, None)
    assert torch.equal(bias, sglang_bias)


def test_float32_heads_keep_the_float32_bias():
    gen = torch.Generator().manual_seed(9)
    w1, w2 = torch.randn(50, 8, generator=gen), torch.randn(50, 8, generator=gen)
    prev = torch.arange(10)
    bias = markov.markov_bias(w1, w2, prev)
    assert bias.dtype == F32 and not torch.equal(bias, bias.bfloat16().float())
    torch.testing.assert_close(bias.double(), w1[prev].double() @ w2.double().T, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rank", [8, 20])  # vectorised and scalar staging
@pytest.mark.parametrize("dtype,logits_dtype", [(BF16, F32), (BF16, BF16), (F16, F32), (F16, F16)])
def test_16bit_heads_round_like_sglang_kernel_vs_reference(backend, dtype, logits_dtype, rank):
    rows, gamma, vocab = backend.size((48, 4, 4099), (5, 3, 130))
    gen = torch.Generator().manual_seed(10)
    dev = backend.device
    w1, w2 = (_dyadic(gen, (vocab, rank), 4.0, 1 / 16).to(dtype).to(dev) for _ in range(2))
    base = _dyadic(gen, (rows, gamma, vocab), 8.0, 2.0**-10).to(dev)
    anchor = torch.randint(0, vocab, (rows,), generator=gen).to(dev)
    args = (base, anchor, w1, w2, _greedy_and_sampled(rows, dev))
    kwargs = dict(seed=4, offset=1, keep_logits=True, logits_dtype=logits_dtype)
    kernel = markov.sample_block(*args, **kwargs)
    assert backend.ran("markov_block")
    with _dispatch.forced_reference():
        reference = markov.sample_block(*args, **kwargs)
    assert_blocks_match(kernel, reference, args[-1], seed=4, offset=1)
    # SGLang's step: (base + markov_w2(W1[prev]) in the weight dtype).to(step dtype).
    prev = torch.cat([anchor[:, None], reference.tokens[:, :-1]], dim=1)
    sglang = (base + torch.nn.functional.linear(w1[prev], w2).float()).to(logits_dtype)
    assert torch.equal(reference.logits, sglang)

    # The statistics form recomputes rejected rows with the same rounding.
    target = (base[:, :, :] + 0.5 * torch.randn(rows, gamma, vocab, generator=gen).to(dev)).to(F32)
    target = torch.cat([target, base[:, :1]], dim=1)
    lens = torch.full((rows,), gamma, device=dev)
    verify_args = (target, kernel.stats, kernel.tokens, lens, _greedy_and_sampled(rows, dev))
    verified = verify.chain_verify(*verify_args, seed=9, offset=3)
    assert backend.ran("chain_verify")
    with _dispatch.forced_reference():
        expected = verify.chain_verify(*verify_args, seed=9, offset=3)
    for a, b in zip(verified, expected, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------
# 3.3 a 16-bit confidence projection rounds its features and raw logit, as SGLang's


@pytest.mark.parametrize("proj_dtype", [BF16, F16])
def test_confidence_head_rounds_like_sglangs_projection(proj_dtype):
    gen = torch.Generator().manual_seed(11)
    hidden_size, rank, n = 24, 8, 40
    weight = _dyadic(gen, (hidden_size + rank,), 2.0, 1 / 32).to(proj_dtype)
    bias = torch.tensor([0.375]).to(proj_dtype)
    hidden = _dyadic(gen, (n, hidden_size), 4.0, 2.0**-12)  # float32, not exact in 16 bits
    emb = _dyadic(gen, (n, rank), 2.0, 1 / 64).to(BF16)
    head = markov.ConfidenceHead(weight, bias)
    features = torch.cat([hidden, emb.to(hidden.dtype)], dim=-1).to(proj_dtype)
    sglang = features.float() @ weight.float() + bias.float()  # exact on these inputs
    sglang = sglang.to(proj_dtype).float()
    assert torch.equal(head.logit(hidden, emb), sglang)
    assert not torch.equal(hidden.to(proj_dtype).float(), hidden)  # the feature rounding matters


@pytest.mark.parametrize("proj_dtype,hidden_dtype", [(BF16, F32), (BF16, BF16), (F16, F32), (F32, BF16)])
@pytest.mark.parametrize("with_markov", [True, False])
def test_confidence_projection_rounds_alike_kernel_vs_reference(
    backend, proj_dtype, hidden_dtype, with_markov
):
    rows, gamma, vocab, rank, hidden_size = backend.size((32, 4, 2048, 32, 256), (4, 3, 100, 8, 40))
    gen = torch.Generator().manual_seed(12)
    dev = backend.device
    w1, w2 = (_dyadic(gen, (vocab, rank), 2.0, 1 / 32).to(BF16).to(dev) for _ in range(2))
    hidden = _dyadic(gen, (rows, gamma, hidden_size), 2.0, 1 / 512).to(hidden_dtype).to(dev)
    width = hidden_size + rank if with_markov else hidden_size
    conf_weight = _dyadic(gen, (width,), 1.0, 1 / 32).to(proj_dtype).to(dev)
    base = torch.randn(rows, gamma, vocab, generator=gen).to(dev)
    anchor = torch.randint(0, vocab, (rows,), generator=gen).to(dev)
    args = (base, anchor, w1, w2, _greedy_and_sampled(rows, dev))
    kwargs = dict(
        seed=0,
        offset=0,
        hidden=hidden,
        conf_weight=conf_weight,
        conf_bias=torch.tensor([0.25], device=dev).to(proj_dtype),
        sts_temperatures=torch.linspace(0.5, 2.0, gamma, device=dev),
    )
    kernel = markov.sample_block(*args, **kwargs)
    assert backend.ran("markov_block")
    with _dispatch.forced_reference():
        reference = markov.sample_block(*args, **kwargs)
    assert_draft_tokens_match(kernel, reference, args[-1].cpu(), seed=0, offset=0)
    same = (kernel.tokens == reference.tokens).all(dim=1)  # the features of x_{k-1}: the same tokens
    assert torch.equal(kernel.confidence_logits[same], reference.confidence_logits[same])
    z = reference.confidence_logits
    assert torch.equal(z, z.to(proj_dtype).float())
    torch.testing.assert_close(kernel.confidence[same], reference.confidence[same], rtol=2e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------
# 3.4 the start-up line names the path that actually runs


def test_describe_names_the_path_that_runs(monkeypatch):
    _fake_extension(monkeypatch, markov_block=lambda args: None, chain_verify=lambda args: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _dispatch.describe() == "PyTorch reference (no CUDA device; dspark_sgl._C built for sm 90a,90)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert _dispatch.describe() == "CUDA kernels sm_90 (dspark_sgl._C sm 90a,90; chain_verify, markov_block)"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    assert _dispatch.describe().startswith("PyTorch reference (the device is sm_89")
    monkeypatch.setenv("DSPARK_SGL_FORCE_REFERENCE", "1")
    assert _dispatch.describe() == "PyTorch reference (DSPARK_SGL_FORCE_REFERENCE is set)"


def test_startup_summary_on_a_machine_without_gpu_says_reference(monkeypatch, caplog):
    """The worker's summary line (after SGLang's init_cuda_graphs) on this CPU machine, with the
    real extension loaded when it was built."""
    from dspark_sgl.sglang_plugin import startup

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("DSPARK_SGL_FORCE_REFERENCE", raising=False)
    worker = types.SimpleNamespace(
        draft_model=types.SimpleNamespace(markov_head=None, confidence_head=None), gamma=4
    )
    with caplog.at_level(logging.INFO, logger="dspark_sgl"):
        startup.worker_summary(None, worker)
    (line,) = [r.getMessage() for r in caplog.records if "kernels=" in r.getMessage()]
    kernels = line.split("kernels=", 1)[1]
    assert kernels.startswith("PyTorch reference (")
    assert "no CUDA device" in kernels or "not available" in kernels
