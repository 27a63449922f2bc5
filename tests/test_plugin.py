"""The SGLang plugin against the real sglang==0.5.23 package (CPU).

SGLang is imported as installed; the only stand-in is the import-time ``torchvision`` under
``tests/stubs`` (PyPI's torchvision cannot load against CPU torch), put on ``sys.path`` by
the ``sg`` fixture only when no torchvision is importable. Tests that need SGLang skip
when it is not installed; CI installs it (see the README).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from scipy import stats

from dspark_sgl import scheduler
from dspark_sgl.calibration import StsCalibration
from dspark_sgl.plugin import HOOKS
from dspark_sgl.sglang_plugin import sps as sps_mod
from dspark_sgl.sglang_plugin import switches
from dspark_sgl.sglang_plugin.startup import (
    draft_enables_confidence_head,
    handle_dspark_args,
    startup_summary,
)

STUBS = Path(__file__).parent / "stubs"
SGLANG_MODULES = (
    "sglang.srt.plugins",
    "sglang.srt.plugins.hook_registry",
    "sglang.srt.speculative.dspark_components.dspark_draft",
    "sglang.srt.speculative.dspark_components.dspark_planner",
    "sglang.srt.speculative.dspark_components.dspark_verify",
    "sglang.srt.speculative.dspark_components.dspark_sps",
    "sglang.srt.speculative.dspark_components.dspark_sts",
    "sglang.srt.speculative.dspark_components.dspark_worker_v2",
    "sglang.srt.speculative.spec_tp_sync",
    "sglang.srt.speculative.ragged_verify",
    "sglang.srt.sampling.sampling_batch_info",
    "sglang.srt.models.dspark",
    "sglang.srt.arg_groups.speculative_hook",
    "sglang.kernels.ops.speculative.dspark.markov_sample",
    "sglang.kernels.ops.speculative.dspark.dspark_schedule",
)


# Decided before the fixture can put the stand-in on sys.path.
_NO_TORCHVISION = importlib.util.find_spec("torchvision") is None


def _stub_needed() -> bool:
    return _NO_TORCHVISION


@pytest.fixture(scope="module")
def sg():
    """SGLang's modules with the plugin loaded by ``load_plugins()`` (all hooks on)."""
    if importlib.util.find_spec("sglang") is None:
        pytest.skip("sglang is not installed (CI installs sglang==0.5.23 --no-deps, see README)")
    added = _stub_needed()
    if added:
        sys.path.insert(0, str(STUBS))
    for name in [k for k in os.environ if k.startswith("DSPARK_SGL_HOOK")]:
        os.environ.pop(name)
    os.environ.pop("SGLANG_PLUGINS", None)
    try:
        modules = {name.rsplit(".", 1)[-1]: importlib.import_module(name) for name in SGLANG_MODULES}
    except Exception as exc:
        pytest.skip(f"sglang is installed but not importable on this machine: {exc!r}")
    finally:
        if added:
            sys.path.remove(str(STUBS))
    modules["plugins"].load_plugins()
    return types.SimpleNamespace(**modules)


def _resolve(path: str):
    """The object at a dotted path (the longest importable module, then attributes)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def _raw(target: str):
    obj_path, attr = target.rsplit(".", 1)
    obj = _resolve(obj_path)
    raw = obj.__dict__[attr] if isinstance(obj, type) else getattr(obj, attr)
    return obj, attr, raw


@contextlib.contextmanager
def sglang_originals():
    """Temporarily put SGLang's originals back on every patched dotted path."""
    saved = []
    for target in sorted({spec.target for spec in HOOKS}):
        obj, attr, raw = _raw(target)
        fn = raw.__func__ if isinstance(raw, classmethod) else raw
        for _ in range(sum(spec.target == target for spec in HOOKS)):
            fn = fn.__wrapped__
        restored = classmethod(fn) if isinstance(raw, classmethod) else fn
        saved.append((obj, attr, raw))
        setattr(obj, attr, restored)
    try:
        yield
    finally:
        for obj, attr, raw in saved:
            setattr(obj, attr, raw)


def _tp_sync(sg):
    return sg.spec_tp_sync.SpecTpSync(types.SimpleNamespace(world_size=1, rank_in_group=0))


def _heads(sg, vocab: int, rank: int, hidden: int):
    torch.manual_seed(0)
    return {
        "vanilla": sg.dspark.VanillaMarkov(vocab_size=vocab, markov_rank=rank),
        "gated": sg.dspark.GatedMarkovHead(vocab_size=vocab, markov_rank=rank, hidden_size=hidden),
        "rnn": sg.dspark.RNNHead(vocab_size=vocab, markov_rank=rank, hidden_size=hidden),
    }


def _sampling_info(sg, temperatures: torch.Tensor, top_ks: torch.Tensor, vocab: int):
    greedy = top_ks <= 1
    return sg.sampling_batch_info.SamplingBatchInfo(
        temperatures=temperatures.view(-1, 1),
        top_ps=torch.ones(len(top_ks)),
        top_ks=top_ks,
        min_ps=torch.zeros(len(top_ks)),
        is_all_greedy=bool(greedy.all()),
        is_any_greedy=bool(greedy.any()),
        need_top_p_sampling=False,
        need_top_k_sampling=False,
        need_min_p_sampling=False,
        vocab_size=vocab,
    )


# --------------------------------------------------------------------------- discovery


def test_entry_point_declared():
    eps = importlib.metadata.entry_points(group="sglang.srt.plugins")
    ours = [ep for ep in eps if ep.name == "dspark_sgl"]
    assert len(ours) == 1 and ours[0].value == "dspark_sgl.plugin:register"


def test_package_import_does_not_import_sglang():
    code = (
        "import dspark_sgl, dspark_sgl.plugin, sys; print(any(m.startswith('sglang') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_load_plugins_discovers_and_applies_every_hook(sg):
    registry = sg.hook_registry.HookRegistry
    for spec in HOOKS:
        assert spec.target in registry._patched, spec.target
        hooks = registry._hooks[spec.target]
        sources = {src.plugin_name for _, _, src in hooks if src is not None}
        assert "dspark_sgl" in sources
        assert any(ht.name == spec.hook_type for ht, _, _ in hooks)
        _, _, raw = _raw(spec.target)
        wrapper = raw.__func__ if isinstance(raw, classmethod) else raw
        assert hasattr(wrapper, "__wrapped__"), f"{spec.target} is not patched"


# --------------------------------------------------------------------------- Markov block


@pytest.mark.parametrize(
    "kind,dtype",
    [
        ("vanilla", torch.float32),
        ("gated", torch.float32),
        ("rnn", torch.float32),
        ("vanilla", torch.bfloat16),
        ("vanilla", torch.float16),
    ],
)
@pytest.mark.parametrize("greedy_draft", [False, True])
def test_draft_markov_block_greedy_equals_sglang(sg, kind, dtype, greedy_draft):
    """Greedy drafts and step logits equal SGLang's; with 16-bit heads (bias computed in the
    weights' dtype, step logits in it) bit for bit, so even SGLang's exact ties resolve alike."""
    vocab, rank, hidden, bs, gamma = 96, 8, 16, 16, 6
    head = _heads(sg, vocab, rank, hidden)[kind].to(dtype)
    gen = torch.Generator().manual_seed(1)
    base = (torch.randn(bs, gamma, vocab, generator=gen) * 3).to(dtype)
    draft_hidden = torch.randn(bs, gamma, hidden, generator=gen).to(dtype)
    anchor = torch.randint(0, vocab, (bs,), generator=gen)
    draft = sg.dspark_draft

    def run():
        noise = draft.DraftNoise(key=draft.draft_noise_key(7), offset=torch.zeros(1, dtype=torch.int64))
        result = draft.sample_draft_block(
            base_logits=base,
            anchor_tokens=anchor,
            draft_hidden=draft_hidden,
            sampling_info=None,
            markov_head=head,
            noise=noise,
            device=torch.device("cpu"),
            tp_sync=_tp_sync(sg),
            greedy_draft=greedy_draft,
        )
        return result, noise

    with torch.no_grad():
        ours, ours_noise = run()
        with sglang_originals():
            theirs, their_noise = run()
    assert ("markov_block", "dspark_sgl") in switches.logged()
    assert ours.draft_tokens.shape == (bs, gamma) and ours.draft_tokens.dtype == torch.int64
    assert torch.equal(ours.draft_tokens, theirs.draft_tokens)
    assert int(ours_noise.offset) == int(their_noise.offset)
    if greedy_draft:
        assert ours.corrected_logits is None and theirs.corrected_logits is None
    else:
        assert ours.corrected_logits.shape == (bs, gamma, vocab)
        assert ours.corrected_logits.dtype == theirs.corrected_logits.dtype == dtype
        if dtype == torch.float32:
            torch.testing.assert_close(ours.corrected_logits, theirs.corrected_logits, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(ours.corrected_logits, theirs.corrected_logits)


@pytest.mark.parametrize("kind", ["gated", "rnn"])
def test_16bit_gated_and_rnn_heads_stay_with_sglang(sg, kind):
    vocab, rank, hidden, bs, gamma = 64, 8, 16, 4, 3
    head = _heads(sg, vocab, rank, hidden)[kind].to(torch.bfloat16)
    from dspark_sgl.sglang_plugin.hot_paths import our_markov_head

    reason = our_markov_head(head)
    assert isinstance(reason, str) and "16-bit weights" in reason
    draft = sg.dspark_draft
    gen = torch.Generator().manual_seed(4)
    kwargs = dict(
        markov_head=head,
        base_logits=torch.randn(bs, gamma, vocab, generator=gen).to(torch.bfloat16),
        anchor_tokens=torch.arange(bs),
        draft_hidden=torch.randn(bs, gamma, hidden, generator=gen).to(torch.bfloat16),
        step_temperatures=torch.zeros(bs),
        tp_sync=_tp_sync(sg),
    )
    results = []
    for originals in (contextlib.nullcontext(), sglang_originals()):
        with torch.no_grad(), originals:
            noise = draft.DraftNoise(key=3, offset=torch.zeros(1, dtype=torch.int64))
            results.append(draft.draft_markov_block(noise=noise, **kwargs))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert ("markov_block", "sglang original") in switches.logged()


def test_draft_markov_block_bf16_contract(sg):
    vocab, rank, bs, gamma = 64, 8, 3, 4
    head = sg.dspark.VanillaMarkov(vocab_size=vocab, markov_rank=rank).to(torch.bfloat16)
    base = torch.randn(bs, gamma, vocab).to(torch.bfloat16)
    draft = sg.dspark_draft
    noise = draft.DraftNoise(key=5, offset=torch.zeros(1, dtype=torch.int64))
    out = torch.empty(bs, gamma, vocab, dtype=torch.bfloat16)
    with torch.no_grad():
        tokens, logits = draft.draft_markov_block(
            markov_head=head,
            base_logits=base,
            anchor_tokens=torch.zeros(bs, dtype=torch.int64),
            draft_hidden=None,
            step_temperatures=torch.full((bs,), 0.7),
            noise=noise,
            tp_sync=_tp_sync(sg),
            logits_out=out,
        )
    assert logits is out and tokens.dtype == torch.int64 and tokens.shape == (bs, gamma)
    assert int(noise.offset) == 1


class _SyncingTp:
    """A tensor-parallel sync that is enabled (as with TP > 1) but returns the values."""

    def enabled(self, site) -> bool:
        return True

    def sync(self, site, values: torch.Tensor) -> torch.Tensor:
        return values


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_draft_markov_block_whole_block_equals_step_by_step(sg, dtype):
    """Without a TP sync the vanilla head drafts the whole block in one call (the fused
    kernel on a GPU); with one it goes step by step. Same tokens, same step logits."""
    vocab, rank, bs, gamma = 80, 8, 6, 5
    torch.manual_seed(3)
    head = sg.dspark.VanillaMarkov(vocab_size=vocab, markov_rank=rank).to(dtype)
    base = (torch.randn(bs, gamma, vocab) * 2).to(dtype)
    temperatures = torch.tensor([0.0, 0.7, 1.0, 1.3, 0.0, 0.9])
    draft = sg.dspark_draft
    results = []
    for tp_sync in (_tp_sync(sg), _SyncingTp()):
        noise = draft.DraftNoise(key=11, offset=torch.zeros(1, dtype=torch.int64))
        with torch.no_grad():
            results.append(
                draft.draft_markov_block(
                    markov_head=head,
                    base_logits=base,
                    anchor_tokens=torch.arange(bs),
                    draft_hidden=None,
                    step_temperatures=temperatures,
                    noise=noise,
                    tp_sync=tp_sync,
                    logits_out=torch.empty(bs, gamma, vocab, dtype=dtype),
                )
            )
        assert int(noise.offset) == 1
    (whole_tokens, whole_logits), (step_tokens, step_logits) = results
    assert torch.equal(whole_tokens, step_tokens)
    assert whole_logits.dtype == dtype and torch.equal(whole_logits, step_logits)


def test_draft_markov_block_uncovered_head_falls_back(sg, caplog):
    class CustomMarkov(sg.dspark.VanillaMarkov):
        pass

    head = CustomMarkov(vocab_size=32, markov_rank=4)
    draft = sg.dspark_draft
    noise = draft.DraftNoise(key=1, offset=torch.zeros(1, dtype=torch.int64))
    with caplog.at_level(logging.INFO, logger="dspark_sgl"), torch.no_grad():
        tokens, _ = draft.draft_markov_block(
            markov_head=head,
            base_logits=torch.randn(2, 3, 32),
            anchor_tokens=torch.zeros(2, dtype=torch.int64),
            draft_hidden=None,
            step_temperatures=torch.zeros(2),
            noise=noise,
            tp_sync=_tp_sync(sg),
            greedy_draft=True,
        )
    assert tokens.shape == (2, 3)
    assert ("markov_block", "sglang original") in switches.logged()


def _chi_square(samples: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(samples, minlength=probs.numel()).double()
    probs = probs.double() / probs.double().sum()
    expected = probs * samples.numel()
    return float(stats.chisquare(counts.numpy(), expected.numpy()).pvalue)


def test_markov_block_sampling_is_softmax(sg):
    """x_1 ~ softmax((U_1 + B(x_0)) / T) across rows and blocks (Philox rows/offsets)."""
    vocab, rank, rows, temperature = 6, 4, 4000, 0.8
    head = sg.dspark.VanillaMarkov(vocab_size=vocab, markov_rank=rank)
    torch.manual_seed(3)
    base_row = torch.randn(2, vocab)
    base = base_row.expand(rows, 2, vocab).contiguous()
    anchor = torch.full((rows,), 2, dtype=torch.int64)
    draft = sg.dspark_draft
    noise = draft.DraftNoise(key=draft.draft_noise_key(11), offset=torch.zeros(1, dtype=torch.int64))
    firsts = []
    with torch.no_grad():
        for _ in range(3):
            tokens, logits = draft.draft_markov_block(
                markov_head=head,
                base_logits=base,
                anchor_tokens=anchor,
                draft_hidden=None,
                step_temperatures=torch.full((rows,), temperature),
                noise=noise,
                tp_sync=_tp_sync(sg),
            )
            firsts.append(tokens[:, 0])
        bias = head.step_bias(anchor[:1], hidden_states=None, state=None)[0]
    probs = torch.softmax((base_row[0] + bias[0]) / temperature, dim=-1)
    torch.testing.assert_close(logits[0, 0], base_row[0] + bias[0])
    assert int(noise.offset) == 3
    assert _chi_square(torch.cat(firsts), probs) > 1e-3


def test_markov_sample_step_matches_sglang_and_samples_softmax(sg):
    step_cls = sg.markov_sample.MarkovSampleStep
    rows, vocab = 3000, 5
    torch.manual_seed(4)
    logits_row = torch.randn(vocab)
    base = logits_row.expand(rows, vocab).contiguous()
    bias = torch.zeros(rows, vocab)
    temperatures = torch.cat([torch.zeros(10), torch.full((rows - 10,), 1.3)])
    kwargs = dict(key=9, offset=torch.zeros(1, dtype=torch.int64), step=0, step_dtype=torch.float32)
    ours = step_cls.execute(base_logits=base, bias=bias, temperatures=temperatures, **kwargs)
    theirs = step_cls.torch(base_logits=base, bias=bias, temperatures=temperatures, **kwargs)
    assert ours.shape == (rows,) and ours.dtype == torch.int64
    assert torch.equal(ours[:10], theirs[:10])
    assert torch.equal(ours[:10], base[:10].argmax(-1))
    assert _chi_square(ours[10:], torch.softmax(logits_row / 1.3, -1)) > 1e-3
    greedy = step_cls.execute(
        base_logits=base, bias=bias, temperatures=temperatures, has_sampled_rows=False, **kwargs
    )
    assert torch.equal(greedy, base.argmax(-1))


# --------------------------------------------------------------------------- confidence / STS


@pytest.mark.parametrize("with_markov", [True, False])
@pytest.mark.parametrize("per_position_sts", [True, False])
@pytest.mark.parametrize(
    "proj_dtype,feature_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)]
)
def test_confidence_predict_matches_sglang(sg, with_markov, per_position_sts, proj_dtype, feature_dtype):
    """Raw logit and confidence equal SGLang's; with a bf16 projection the raw logit is SGLang's
    bf16 value and the confidence is computed from it (equal bit for bit on these inputs)."""
    hidden, rank, vocab, bs, gamma = 16, 8, 50, 4, 5
    torch.manual_seed(5)
    conf = sg.dspark.DSparkConfidenceHead(
        hidden_size=hidden, markov_rank=rank, with_markov=with_markov, dtype=proj_dtype
    )
    markov = sg.dspark.VanillaMarkov(vocab_size=vocab, markov_rank=rank).to(proj_dtype)
    if per_position_sts:
        conf.sts_temperatures = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0])
    features = torch.randn(bs * gamma, hidden).to(feature_dtype)
    anchor = torch.randint(0, vocab, (bs,))
    drafts = torch.randint(0, vocab, (bs, gamma))
    with torch.no_grad():
        ours = conf.predict(features, anchor_tokens=anchor, draft_tokens=drafts, markov_head=markov)
        with sglang_originals():
            theirs = conf.predict(features, anchor_tokens=anchor, draft_tokens=drafts, markov_head=markov)
    assert ("confidence", "dspark_sgl") in switches.logged()
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape == (bs, gamma) and a.dtype == b.dtype
        if proj_dtype == torch.float32:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(a, b)


def test_sts_json_is_sglang_format(sg, tmp_path):
    ours = StsCalibration(temperatures=[0.8, 1.2, 2.0], dataset="gsm8k", num_samples=10)
    theirs = sg.dspark_sts.DSparkStsCalibration.from_json(ours.to_json())
    assert theirs.temperatures == ours.temperatures and theirs.num_samples == 10
    path = tmp_path / "sts.json"
    ours.save(path)
    assert sg.dspark_sts.load_sts_calibration_from_path(str(path)).temperatures == ours.temperatures
    back = StsCalibration.from_json(theirs.to_json())
    assert back.temperatures == ours.temperatures


# --------------------------------------------------------------------------- planner


def _random_survival(gen: torch.Generator, rows: int, gamma: int) -> torch.Tensor:
    conf = torch.rand(rows, gamma, generator=gen) ** 0.3
    conf[torch.rand(rows, gamma, generator=gen) < 0.05] = 0.0
    return torch.cumprod(conf, dim=1)


def _random_sglang_table(sg, gen: torch.Generator):
    probes = sorted(set((torch.randint(1, 120, (6,), generator=gen)).tolist()) | {1})
    speeds = (torch.rand(len(probes), generator=gen) * 50 + 10).tolist()
    return sg.dspark_sps.SpsCostTable(
        sample_batch_tokens=probes, sample_steps_per_sec=speeds, max_batch_tokens=probes[-1] + 8
    )


def test_budget_planner_equals_sglang(sg):
    planner = sg.dspark_planner
    gen = torch.Generator().manual_seed(6)
    for trial in range(40):
        rows, gamma = (
            int(torch.randint(1, 12, (1,), generator=gen)),
            int(torch.randint(1, 8, (1,), generator=gen)),
        )
        survival = _random_survival(gen, rows, gamma)
        table = _random_sglang_table(sg, gen)
        cfg = planner.DSparkScheduleConfig(gamma=gamma, max_verify_len=0 if trial % 2 else max(gamma - 1, 1))
        ours = planner.compute_verify_token_budget(history_survival_probs=survival, sps_table=table, cfg=cfg)
        with sglang_originals():
            theirs = planner.compute_verify_token_budget(
                history_survival_probs=survival, sps_table=table, cfg=cfg
            )
        assert isinstance(ours, planner.VerifyBudgetDecision) and isinstance(ours.budget, int)
        assert ours.budget == theirs.budget, trial
        assert ours.predicted_theta == pytest.approx(theirs.predicted_theta, rel=1e-9)
        assert ours.predicted_step_seconds == pytest.approx(theirs.predicted_step_seconds, rel=1e-9)
    assert ("budget", "dspark_sgl") in switches.logged()


def test_host_budget_planner_runs_our_budget(sg):
    planner = sg.dspark_planner
    table = sg.dspark_sps.SpsCostTable(
        sample_batch_tokens=[1, 8, 16, 32],
        sample_steps_per_sec=[100.0, 90.0, 60.0, 30.0],
        max_batch_tokens=64,
    )
    host = planner.HostConfidenceBudgetPlanner(
        sps_table=table, cfg=planner.DSparkScheduleConfig(gamma=4), model_runner=None, relay_lag_steps=2
    )
    conf = torch.tensor([[0.9, 0.8, 0.5, 0.2], [0.6, 0.3, 0.3, 0.3]])
    budget = host.compute_budget(
        confidence=conf,
        generation=torch.ones(2, dtype=torch.int64),
        current_generation=torch.ones(2, dtype=torch.int64),
        req_pool_indices_cpu=torch.arange(2),
    )
    ours = scheduler.throughput_path(
        torch.cumprod(conf, 1), sps_mod.from_sglang_points([1, 8, 16, 32], [100, 90, 60, 30], 64)
    )
    assert budget == int(torch.argmax(ours)) and host.last_decision.budget == budget


def test_zero_speed_sps_table_falls_back_to_sglangs_budget(sg, caplog):
    """SGLang accepts a measured speed of 0.0; our SpsTable cannot hold it, so SGLang's own
    budget decides (logged), instead of an exception inside the scheduler step."""
    planner = sg.dspark_planner
    table = sg.dspark_sps.SpsCostTable(
        sample_batch_tokens=[1, 8, 16, 32], sample_steps_per_sec=[100.0, 80.0, 0.0, 30.0], max_batch_tokens=64
    )
    survival = torch.cumprod(torch.tensor([[0.9, 0.8, 0.6], [0.7, 0.5, 0.2]]), dim=1)
    cfg = planner.DSparkScheduleConfig(gamma=3)
    kwargs = dict(history_survival_probs=survival, sps_table=table, cfg=cfg)
    with caplog.at_level(logging.WARNING, logger="dspark_sgl"):
        ours = planner.compute_verify_token_budget(**kwargs)
    with sglang_originals():
        theirs = planner.compute_verify_token_budget(**kwargs)
    assert ours == theirs
    assert ("budget_sps_table", "sglang original") in switches.logged()
    assert any("steps_per_sec" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_hook_device_tensors_are_capture_safe(monkeypatch):
    """The plugin's cached device tensors are made by fill kernels, created when SGLang builds its
    proposer; inside a capture a missing constant is graph-owned (not cached) and a missing verify
    counter is refused (its zero fill would replay)."""
    from dspark_sgl.sglang_plugin import hot_paths, startup

    device = torch.device("cpu")
    monkeypatch.setattr(hot_paths, "_CONSTANTS", {})
    monkeypatch.setattr(hot_paths, "_POSITIONS", {})
    monkeypatch.setattr(hot_paths.STATE, "accept_offsets", {})
    real_tensor = torch.tensor

    def no_host_copy(*args, **kwargs):
        if kwargs.get("device") is not None:
            raise RuntimeError("a host-to-device copy")
        return real_tensor(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", no_host_copy)
    with monkeypatch.context() as capture:
        capture.setattr(hot_paths, "_capturing", lambda d: True)
        assert int(hot_paths._device_constant(2**62 + 3, device)) == 2**62 + 3
        assert hot_paths._positions(device)[7] == 7
        assert not hot_paths._CONSTANTS and not hot_paths._POSITIONS
        with pytest.raises(RuntimeError, match="verify counter on cpu would first be created inside"):
            hot_paths.STATE.accept_offset(device)
    proposer = types.SimpleNamespace(
        draft_model_runner=types.SimpleNamespace(device="cpu"), _noise=types.SimpleNamespace(key=99)
    )
    startup.proposer_init(None, proposer, random_seed=5)
    assert hot_paths.STATE.random_seed == 5
    assert device in hot_paths.STATE.accept_offsets and (99, device) in hot_paths._CONSTANTS
    with monkeypatch.context() as capture:
        capture.setattr(hot_paths, "_capturing", lambda d: True)
        assert hot_paths.STATE.accept_offset(device) is hot_paths.STATE.accept_offsets[device]
        assert hot_paths._device_constant(99, device) is hot_paths._CONSTANTS[(99, device)]


def test_additive_sps_table_falls_back(sg):
    planner = sg.dspark_planner
    table = sg.dspark_sps.SpsAdditiveCostTable(
        bias_seconds=0.01,
        bs_probes=[1, 8],
        alpha_seconds=[0.0, 0.001],
        m_probes=[1, 64],
        theta_seconds=[0.0, 0.02],
    )
    decision = planner.compute_verify_token_budget(
        history_survival_probs=torch.full((2, 3), 0.5),
        sps_table=table,
        cfg=planner.DSparkScheduleConfig(gamma=3),
    )
    assert isinstance(decision.budget, int)
    assert ("budget", "sglang original") in switches.logged()


@pytest.mark.parametrize("min_len,max_len", [(1, 0), (0, 0), (2, 0), (1, 3)])
def test_topk_layout_equals_sglang(sg, min_len, max_len):
    topk = sg.dspark_schedule.ScheduleVerifyLensTopk
    cfg_cls = sg.dspark_planner.DSparkScheduleConfig
    gen = torch.Generator().manual_seed(7)
    for _ in range(25):
        rows, gamma = int(torch.randint(1, 10, (1,), generator=gen)), 5
        conf = torch.rand(rows, gamma, generator=gen) ** 0.5
        conf[torch.rand(rows, gamma, generator=gen) < 0.1] = 1e-8
        cfg = cfg_cls(gamma=gamma, min_verify_len=min_len, max_verify_len=max_len)
        for budget in (0, 1, 3, rows * gamma, rows * gamma + 5):
            ours = topk.execute(confidence=conf, budget=budget, cfg=cfg)
            theirs = topk.torch(confidence=conf, budget=budget, cfg=cfg)
            assert ours.dtype == torch.int32 and ours.shape == (rows,)
            assert torch.equal(ours, theirs), (conf, budget)
    assert ("topk", "dspark_sgl") in switches.logged()


def test_topk_prune_mode_is_causal_inside_budget(sg, monkeypatch):
    from dspark_sgl.sglang_plugin.hot_paths import STATE

    topk = sg.dspark_schedule.ScheduleVerifyLensTopk
    cfg = sg.dspark_planner.DSparkScheduleConfig(gamma=4)
    table = scheduler.SpsTable([(1, 100.0), (4, 95.0), (8, 50.0), (16, 20.0)])
    monkeypatch.setattr(STATE, "sps_table", table)
    monkeypatch.setenv("DSPARK_SGL_SCHEDULER", "prune")
    gen = torch.Generator().manual_seed(8)
    for _ in range(20):
        conf = torch.rand(4, 4, generator=gen)
        budget = int(torch.randint(0, 17, (1,), generator=gen))
        pruned = topk.execute(confidence=conf, budget=budget, cfg=cfg)
        plain = topk.torch(confidence=conf, budget=budget, cfg=cfg)
        expected = scheduler.schedule_topk_causal(conf, budget, table) + 1
        assert torch.equal(pruned, expected.to(torch.int32))
        assert bool((pruned <= plain).all())


# --------------------------------------------------------------------------- verification


def _draft_block(sg, tokens, logits, greedy_mask, temperatures, greedy_draft=False):
    return sg.dspark_draft.DraftBlockResult(
        draft_tokens=tokens,
        corrected_logits=logits,
        greedy_mask=greedy_mask,
        temperatures=temperatures,
        greedy_draft=greedy_draft,
    )


@pytest.mark.parametrize("cutoff", [False, True])
def test_greedy_accept_equals_sglang(sg, cutoff):
    verify = sg.dspark_verify
    gen = torch.Generator().manual_seed(9)
    bs, gamma, vocab = 16, 5, 12
    target = torch.randn(bs, gamma + 1, vocab, generator=gen)
    argmax = target.argmax(-1)
    drafts = argmax[:, :gamma].clone()
    flip = torch.rand(bs, gamma, generator=gen) < 0.3
    drafts[flip] = (drafts[flip] + 1) % vocab
    candidates = torch.cat([torch.randint(0, vocab, (bs, 1), generator=gen), drafts], dim=1)
    layout = None
    if cutoff:
        lens = torch.randint(1, gamma + 2, (bs,), generator=gen).tolist()
        layout = sg.ragged_verify.RaggedVerifyLayout.from_verify_lens(
            verify_lens_cpu=lens, device=torch.device("cpu"), grid=[bs * (gamma + 1)]
        )
    kwargs = dict(
        candidates=candidates,
        target_logits=target.reshape(bs * (gamma + 1), vocab),
        draft_block=_draft_block(sg, drafts, None, torch.ones(bs, dtype=torch.bool), torch.ones(bs), True),
        sampling_info=None,
        draft_input=None,
        gamma=gamma,
        verify_num_draft_tokens=gamma + 1,
        cutoff_layout=layout,
    )
    ours = verify.accept_draft_tokens(**kwargs)
    with sglang_originals():
        theirs = verify.accept_draft_tokens(**kwargs)
    assert ("accept", "dspark_sgl") in switches.logged()
    names = ("correct_len", "bonus", "cap_trim_lens")
    for name, a, b in zip(names, ours, theirs, strict=True):
        assert a.shape == (bs,) and a.dtype == b.dtype, name
        assert torch.equal(a, b), name


def test_sampled_round_is_lossless(sg):
    """Draft with the hooked Markov block, verify with the hooked accept: the first emitted
    token is distributed as softmax(target_0 / T) (chi-square over many rows and rounds)."""
    draft, verify = sg.dspark_draft, sg.dspark_verify
    vocab, rank, gamma, rows, temperature = 5, 4, 3, 3000, 0.9
    torch.manual_seed(12)
    head = sg.dspark.VanillaMarkov(vocab_size=vocab, markov_rank=rank)
    base = torch.randn(gamma, vocab).expand(rows, gamma, vocab).contiguous()
    target_row = torch.randn(gamma + 1, vocab) * 1.5
    target = target_row.expand(rows, gamma + 1, vocab).reshape(rows * (gamma + 1), vocab).contiguous()
    anchor = torch.full((rows,), 1, dtype=torch.int64)
    info = _sampling_info(sg, torch.full((rows,), temperature), torch.full((rows,), vocab), vocab)
    noise = draft.DraftNoise(key=draft.draft_noise_key(3), offset=torch.zeros(1, dtype=torch.int64))
    firsts = []
    with torch.no_grad():
        for _ in range(2):
            block = draft.sample_draft_block(
                base_logits=base,
                anchor_tokens=anchor,
                draft_hidden=None,
                sampling_info=info,
                markov_head=head,
                noise=noise,
                device=torch.device("cpu"),
                tp_sync=_tp_sync(sg),
                greedy_draft=False,
            )
            candidates = torch.cat([anchor[:, None], block.draft_tokens], dim=1)
            correct, bonus, trim = verify.accept_draft_tokens(
                candidates=candidates,
                target_logits=target,
                draft_block=block,
                sampling_info=info,
                draft_input=None,
                gamma=gamma,
                verify_num_draft_tokens=gamma + 1,
            )
            assert correct.dtype == torch.int32 and bonus.dtype == torch.int64 and trim.dtype == torch.int32
            firsts.append(torch.where(correct > 0, block.draft_tokens[:, 0], bonus))
    first = torch.cat(firsts)
    assert _chi_square(first, torch.softmax(target_row[0] / temperature, -1)) > 1e-3


def test_top_k_sampling_accept_falls_back(sg):
    verify = sg.dspark_verify
    bs, gamma, vocab = 2, 2, 6
    info = _sampling_info(sg, torch.ones(bs), torch.full((bs,), 3), vocab)
    info.need_top_k_sampling = True
    kwargs = dict(
        candidates=torch.zeros(bs, gamma + 1, dtype=torch.int64),
        target_logits=torch.randn(bs * (gamma + 1), vocab),
        draft_block=_draft_block(
            sg,
            torch.zeros(bs, gamma, dtype=torch.int64),
            torch.randn(bs, gamma, vocab),
            torch.zeros(bs, dtype=torch.bool),
            torch.ones(bs),
        ),
        sampling_info=info,
        draft_input=types.SimpleNamespace(max_top_k=3, uniform_top_k_value=3),
        gamma=gamma,
        verify_num_draft_tokens=gamma + 1,
    )
    with contextlib.suppress(Exception):
        verify.accept_draft_tokens(**kwargs)
    assert ("accept", "sglang original") in switches.logged()


# --------------------------------------------------------------------------- switches


def _run_isolated(env: dict[str, str], code: str) -> str:
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DSPARK_SGL_HOOK", "SGLANG_PLUGINS"))
    }
    full_env.update(env)
    paths = [str(Path(__file__).parent), full_env.get("PYTHONPATH", "")]
    if _stub_needed():
        paths.insert(0, str(STUBS))
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


_PATCHED_CODE = """
import json
from sglang.srt.plugins import load_plugins
from dspark_sgl.plugin import HOOKS
from test_plugin import _resolve
load_plugins()
patched = {}
for spec in HOOKS:
    path, attr = spec.target.rsplit(".", 1)
    obj = _resolve(path)
    raw = obj.__dict__[attr] if isinstance(obj, type) else getattr(obj, attr)
    fn = raw.__func__ if isinstance(raw, classmethod) else raw
    patched[spec.target] = hasattr(fn, "__wrapped__")
print(json.dumps(patched))
"""


def test_sglang_plugins_whitelist_turns_plugin_off(sg):
    patched = json.loads(_run_isolated({"SGLANG_PLUGINS": "some_other_plugin"}, _PATCHED_CODE))
    assert patched and not any(patched.values())


def test_per_hook_switch_restores_original(sg):
    env = {
        "DSPARK_SGL_HOOK_MARKOV_BLOCK": "sglang",
        "DSPARK_SGL_HOOKS": "all",
        "SGLANG_PLUGINS": "dspark_sgl",
    }
    patched = json.loads(_run_isolated(env, _PATCHED_CODE))
    block = [s.target for s in HOOKS if s.name == "markov_block"]
    assert block and not any(patched[t] for t in block)
    assert all(patched[s.target] for s in HOOKS if s.name != "markov_block")


def test_hook_choice_parsing(monkeypatch):
    monkeypatch.delenv("DSPARK_SGL_HOOKS", raising=False)
    for name in switches.HOOK_NAMES:
        monkeypatch.delenv(f"DSPARK_SGL_HOOK_{name.upper()}", raising=False)
    assert switches.enabled_hooks() == list(switches.HOOK_NAMES)
    monkeypatch.setenv("DSPARK_SGL_HOOKS", "none")
    assert switches.enabled_hooks() == []
    monkeypatch.setenv("DSPARK_SGL_HOOK_TOPK", "ours")
    assert switches.enabled_hooks() == ["topk"]
    monkeypatch.setenv("DSPARK_SGL_HOOKS", "budget, accept")
    assert switches.enabled_hooks() == ["accept", "budget", "topk"]
    monkeypatch.setenv("DSPARK_SGL_HOOK_TOPK", "maybe")
    with pytest.raises(ValueError, match="DSPARK_SGL_HOOK_TOPK"):
        switches.hook_choice("topk")
    monkeypatch.setenv("DSPARK_SGL_HOOKS", "markov,budget")
    with pytest.raises(ValueError, match="unknown hooks"):
        switches.hook_choice("budget")
    with pytest.raises(ValueError, match="unknown dspark_sgl hook"):
        switches.hook_choice("nope")
    monkeypatch.setenv("DSPARK_SGL_SCHEDULER", "greedy")
    with pytest.raises(ValueError, match="DSPARK_SGL_SCHEDULER"):
        switches.scheduler_mode()


# --------------------------------------------------------------------------- start-up pieces


def test_confidence_scheduling_turned_on_by_draft_config(tmp_path, monkeypatch):
    draft = tmp_path / "draft"
    draft.mkdir()
    (draft / "config.json").write_text(json.dumps({"dspark_config": {"enable_confidence_head": True}}))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"enable_confidence_head": False}))
    assert draft_enables_confidence_head(draft) and not draft_enables_confidence_head(plain)
    assert not draft_enables_confidence_head(tmp_path / "missing")
    # setenv first so that monkeypatch restores the variables the hook writes.
    for name in ("SGLANG_RAGGED_VERIFY_MODE", "DSPARK_SGL_CONFIDENCE_SCHEDULING"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    sts = tmp_path / "sts.json"
    StsCalibration(temperatures=[1.0, 2.0]).save(sts)
    monkeypatch.setenv("DSPARK_SGL_STS_PATH", str(sts))
    args = types.SimpleNamespace(
        speculative_draft_model_path=str(plain), speculative_dspark_confidence_sts_path=None
    )
    handle_dspark_args(args)
    assert "SGLANG_RAGGED_VERIFY_MODE" not in os.environ
    assert args.speculative_dspark_confidence_sts_path == str(sts)
    args.speculative_draft_model_path = str(draft)
    handle_dspark_args(args)
    assert os.environ["SGLANG_RAGGED_VERIFY_MODE"] == "compact"
    monkeypatch.setenv("SGLANG_RAGGED_VERIFY_MODE", "static")
    handle_dspark_args(args)
    assert os.environ["SGLANG_RAGGED_VERIFY_MODE"] == "static"
    monkeypatch.setenv("DSPARK_SGL_CONFIDENCE_SCHEDULING", "always")
    with pytest.raises(ValueError, match="DSPARK_SGL_CONFIDENCE_SCHEDULING"):
        handle_dspark_args(args)


def test_startup_summary_line(monkeypatch):
    monkeypatch.delenv("DSPARK_SGL_SCHEDULER", raising=False)
    line = startup_summary(
        gamma=7,
        head_type="GatedMarkovHead",
        confidence_head=True,
        ragged_mode="compact",
        sps_source="cache /x.json",
        hooks=["markov_block", "topk"],
        kernels="PyTorch reference only: no extension",
    )
    for part in (
        "gamma=7",
        "head=GatedMarkovHead",
        "compact, async budget + topk",
        "sps=cache /x.json",
        "topk]",
    ):
        assert part in line
    assert "off (no confidence head)" in startup_summary(
        gamma=5,
        head_type="VanillaMarkov",
        confidence_head=False,
        ragged_mode="static",
        sps_source="-",
        hooks=[],
        kernels="-",
    )


class _FakeClock:
    """A timer where forward(n) takes 1 ms + 10 us per token (deterministic profile)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[int] = []

    def timer(self) -> float:
        return self.now

    def forward(self, n: int) -> None:
        self.calls.append(n)
        self.now += 1e-3 + 1e-5 * n


def test_sps_profile_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARK_SGL_CACHE_DIR", str(tmp_path))
    clock = _FakeClock()
    ladder = sps_mod.default_ladder(64)
    assert ladder[0] == 1 and ladder[-1] == 64 and ladder == sorted(set(ladder))
    found = sps_mod.load_or_profile(
        "Qwen/Qwen3-4B", "NVIDIA H100", 2, clock.forward, ladder, warmup=1, iters=3, timer=clock.timer
    )
    table, source = found
    assert source.startswith("profiled ") and Path(source.split(" ", 1)[1]).is_file()
    assert table(8) == pytest.approx(1.0 / (1e-3 + 8e-5))
    assert len(clock.calls) == len(ladder) * 4
    again, source2 = sps_mod.load_or_profile("Qwen/Qwen3-4B", "NVIDIA H100", 2, None, ladder)
    assert source2.startswith("cache ") and len(clock.calls) == len(ladder) * 4
    assert again.tokens == table.tokens and again.steps_per_sec == pytest.approx(table.steps_per_sec)
    assert sps_mod.load_or_profile("Qwen/Qwen3-4B", "NVIDIA H100", 4, None, ladder) is None
    assert sps_mod.cache_path("m", "g", 1) != sps_mod.cache_path("m", "g", 2)
    assert sps_mod.cache_path("a/b", "g", 1) != sps_mod.cache_path("a_b", "g", 1)
    tokens, speeds, max_tokens = sps_mod.to_sglang_points(table)
    assert tokens == list(range(1, 65)) and max_tokens == 64
    back = sps_mod.from_sglang_points(tokens, speeds, max_tokens)
    for b in (1, 7, 33, 64, 100):
        assert back(b) == pytest.approx(table(b))


def test_sglang_reads_our_cached_table(sg, tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARK_SGL_CACHE_DIR", str(tmp_path))
    clock = _FakeClock()
    sps_mod.load_or_profile("m", "gpu", 1, clock.forward, [1, 4, 16], warmup=0, iters=1, timer=clock.timer)
    path = sps_mod.cache_path("m", "gpu", 1)
    table = sg.dspark_sps.load_sps_table_from_path(str(path))
    assert table.sample_batch_tokens == [1, 4, 16]
    ours = scheduler.SpsTable.load(path)
    assert table.lookup(4) == pytest.approx(ours(4))


def test_cached_profile_drives_sglang_budget(sg, tmp_path, monkeypatch):
    from dspark_sgl.sglang_plugin.hot_paths import STATE
    from dspark_sgl.sglang_plugin.startup import cached_sglang_table

    monkeypatch.setenv("DSPARK_SGL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(STATE, "sps_table", None)
    assert cached_sglang_table("target", "NVIDIA H100", 1) is None
    clock = _FakeClock()
    ours, _ = sps_mod.load_or_profile(
        "target", "NVIDIA H100", 1, clock.forward, [1, 8, 32], warmup=0, iters=1, timer=clock.timer
    )
    table = cached_sglang_table("target", "NVIDIA H100", 1)
    assert isinstance(table, sg.dspark_sps.SpsCostTable)
    assert not sg.dspark_sps.is_uninitialized_sps_table(table)
    assert STATE.sps_source.startswith("cache ") and STATE.sps_table is not None
    for b in (1, 5, 20, 32, 40):
        assert table.lookup(b) == pytest.approx(ours(b))
    planner = sg.dspark_planner
    survival = torch.cumprod(torch.rand(6, 5, generator=torch.Generator().manual_seed(2)), 1)
    cfg = planner.DSparkScheduleConfig(gamma=5)
    decision = planner.compute_verify_token_budget(history_survival_probs=survival, sps_table=table, cfg=cfg)
    expected = int(torch.argmax(scheduler.throughput_path(survival, ours)))
    assert decision.budget == expected


def test_sps_bad_inputs():
    with pytest.raises(TypeError, match="callable"):
        sps_mod.profile_sps(42, [1])
    with pytest.raises(ValueError, match="token counts"):
        sps_mod.profile_sps(lambda n: None, [0, 4])
    with pytest.raises(ValueError, match="distinct"):
        sps_mod.profile_sps(lambda n: None, [4, 4])
    with pytest.raises(ValueError, match="not be empty"):
        sps_mod.profile_sps(lambda n: None, [])
    with pytest.raises(ValueError, match="iters"):
        sps_mod.profile_sps(lambda n: None, [1], iters=0)
    with pytest.raises(ValueError, match="non-positive"):
        sps_mod.profile_sps(lambda n: None, [1], timer=lambda: 0.0)
    with pytest.raises(ValueError, match="tp_size"):
        sps_mod.cache_path("m", "g", 0)
    with pytest.raises(ValueError, match="model"):
        sps_mod.cache_path("", "g", 1)
    with pytest.raises(ValueError, match="max_tokens"):
        sps_mod.default_ladder(0)
    with pytest.raises(TypeError, match="SpsTable"):
        sps_mod.to_sglang_points({"tokens": [1]})
    with pytest.raises(ValueError, match="non-empty"):
        sps_mod.from_sglang_points([], [], 1)


def test_corrupt_sps_cache_is_reprofiled(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARK_SGL_CACHE_DIR", str(tmp_path))
    path = sps_mod.cache_path("m", "g", 1)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    clock = _FakeClock()
    _, source = sps_mod.load_or_profile(
        "m", "g", 1, clock.forward, [1, 2], warmup=0, iters=1, timer=clock.timer
    )
    assert source.startswith("profiled") and json.loads(path.read_text())["sample_batch_tokens"] == [1, 2]


# --------------------------------------------------------------------------- start-up SPS profiling

_TINY_TARGET_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_hidden_layers": 2,
    "vocab_size": 256,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000,
    "torch_dtype": "float32",
    "tie_word_embeddings": False,
}


@pytest.fixture
def sps_planner(sg, tmp_path, monkeypatch):
    """A real ``DSparkVerifyPlanner`` (compact mode, gamma 4, verify width 5) built under a
    real SGLang runtime context for a tiny local Qwen3 config, with the plugin's hooks on,
    plus the target runner object SGLang hands it (here a CPU object with only
    ``model_config.model_path``: no GPU pieces)."""
    from sglang.srt import runtime_context
    from sglang.srt.server_args import ServerArgs

    from dspark_sgl.sglang_plugin.hot_paths import STATE

    target = tmp_path / "tiny-qwen3-target"
    target.mkdir()
    (target / "config.json").write_text(json.dumps(_TINY_TARGET_CONFIG))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SGLANG_RAGGED_VERIFY_MODE", "compact")
    monkeypatch.setenv("DSPARK_SGL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DSPARK_SGL_SPS_PROFILE", raising=False)
    monkeypatch.setattr(STATE, "sps_table", None)
    monkeypatch.setattr(STATE, "sps_source", "-")
    monkeypatch.setattr(switches, "_logged", set())
    context = runtime_context.create_context(
        ServerArgs(model_path=str(target), device="cpu", max_running_requests=8), role="scheduler"
    )
    runner = types.SimpleNamespace(model_config=types.SimpleNamespace(model_path=str(target)), device="cpu")

    def build():
        return sg.dspark_planner.DSparkVerifyPlanner(
            draft_model=types.SimpleNamespace(confidence_head=object()),
            gamma=4,
            model_runner=runner,
            device="cpu",
            tp_rank=0,
            verify_num_draft_tokens=5,
            tp_sync=_tp_sync(sg),
        )

    with runtime_context.use_context(context):
        yield types.SimpleNamespace(build=build, runner=runner, model=str(target))


class _TimedForward:
    """Our seam's stand-in for the timed verify forward: n tokens take 1 ms + 10 us per token."""

    def __init__(self) -> None:
        self.built_with: list[list[int]] = []
        self.calls: list[int] = []

    def build(self, model_runner, ladder: list[int]):
        self.built_with.append(list(ladder))
        return self.forward

    def forward(self, n: int) -> float:
        self.calls.append(n)
        return 1e-3 + 1e-5 * n


def test_verify_ladder():
    assert sps_mod.verify_ladder(5, 40) == [5, 10, 15, 20, 30, 40]
    ladder = sps_mod.verify_ladder(16, 2048)
    assert ladder[0] == 16 and ladder[-1] == 2048 and ladder == sorted(set(ladder))
    assert all(n % 16 == 0 for n in ladder)
    assert sps_mod.verify_ladder(7, 7) == [7] and sps_mod.verify_ladder(4, 9) == [4, 8]
    with pytest.raises(ValueError, match="width"):
        sps_mod.verify_ladder(0, 8)
    with pytest.raises(ValueError, match="max_tokens"):
        sps_mod.verify_ladder(8, 4)
    with pytest.raises(TypeError, match="callable"):
        sps_mod.profile_sps_seconds(3, [1])
    with pytest.raises(ValueError, match="non-positive"):
        sps_mod.profile_sps_seconds(lambda n: 0.0, [1])


def test_sps_cache_key_has_model_gpu_and_tp():
    name = sps_mod.cache_path("Qwen/Qwen3-4B", "NVIDIA H100 80GB HBM3", 2).name
    assert "Qwen3-4B" in name and "H100" in name and name.endswith("__tp2.json")
    gpus = ("NVIDIA H100", "NVIDIA H200")
    paths = {sps_mod.cache_path(m, g, t) for m in ("a", "b") for g in gpus for t in (1, 2)}
    assert len(paths) == 8


def test_startup_profile_reaches_sglang_planner(sg, sps_planner, caplog):
    from dspark_sgl.sglang_plugin.hot_paths import STATE
    from dspark_sgl.sglang_plugin.startup import profile_ladder, settle_planner_sps

    planner = sps_planner.build()
    assert planner.is_verify_all
    assert sg.dspark_sps.is_uninitialized_sps_table(planner._budget_planner.sps_table)
    assert STATE.sps_source.startswith("SGLang placeholder (no cached profile")
    ladder = profile_ladder(planner, sps_planner.runner)
    assert ladder == sps_mod.verify_ladder(5, 40)  # max_running_requests 8 x verify width 5
    timed = _TimedForward()
    with caplog.at_level(logging.INFO, logger="dspark_sgl"):
        source = settle_planner_sps(planner, sps_planner.runner, build_forward=timed.build)
    path = sps_mod.cache_path(sps_planner.model, "cpu", 1)
    assert source == f"profiled now {path}" and STATE.sps_source == source and path.is_file()
    assert any("profiled now" in r.getMessage() for r in caplog.records)
    assert timed.built_with == [ladder] and sorted(set(timed.calls)) == ladder
    assert len(timed.calls) == len(ladder) * 7  # 2 warm-up + 5 timed calls per count
    table = planner._budget_planner.sps_table
    assert isinstance(table, sg.dspark_sps.SpsCostTable) and not planner.is_verify_all
    assert table.max_batch_tokens == 40
    ours = scheduler.SpsTable.load(path, require_non_increasing=False)
    for b in ladder:
        assert table.lookup(b) == pytest.approx(1.0 / (1e-3 + 1e-5 * b))
    for b in (1, 12, 33, 41):
        assert table.lookup(b) == pytest.approx(ours(b))
    survival = torch.cumprod(torch.rand(6, 4, generator=torch.Generator().manual_seed(3)), 1)
    decision = sg.dspark_planner.compute_verify_token_budget(
        history_survival_probs=survival, sps_table=table, cfg=planner._schedule_cfg
    )
    assert decision.budget == int(torch.argmax(scheduler.throughput_path(survival, ours)))

    again = sps_planner.build()  # a restart: SGLang's planner now gets the cached table
    assert STATE.sps_source == f"cache {path}" and not again.is_verify_all
    other = _TimedForward()
    assert settle_planner_sps(again, sps_planner.runner, build_forward=other.build) == f"cache {path}"
    assert other.built_with == []
    assert again._budget_planner.sps_table.lookup(20) == pytest.approx(table.lookup(20))


def test_startup_profile_falls_back_when_forward_cannot_be_built(sg, sps_planner, caplog):
    from dspark_sgl.sglang_plugin.hot_paths import STATE
    from dspark_sgl.sglang_plugin.startup import settle_planner_sps, worker_graphs_ready

    planner = sps_planner.build()
    placeholder = planner._budget_planner.sps_table
    with caplog.at_level(logging.INFO, logger="dspark_sgl"):
        source = settle_planner_sps(planner, sps_planner.runner)  # SGLang's dummy forward on a CPU runner
        worker = types.SimpleNamespace(_verify_planner=planner, model_runner=sps_planner.runner)
        assert worker_graphs_ready(None, worker) is None
        assert worker_graphs_ready(None, types.SimpleNamespace(_verify_planner=planner)) is None
    assert source.startswith("SGLang placeholder (cannot time the verify forward: SpsForwardUnavailableError")
    assert "SPS profiling is skipped on the CPU" in source
    assert STATE.sps_source.startswith("SGLang placeholder")
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "sglang placeholder" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert planner._budget_planner.sps_table is placeholder and planner.is_verify_all
    assert not sps_mod.cache_path(sps_planner.model, "cpu", 1).exists()

    def broken(model_runner, ladder):
        raise AttributeError("'ModelRunner' object has no attribute 'eager_runner'")

    assert "AttributeError" in settle_planner_sps(planner, sps_planner.runner, build_forward=broken)
    assert planner._budget_planner.sps_table is placeholder


def test_sps_profile_switch(sg, sps_planner, monkeypatch):
    from dspark_sgl.sglang_plugin.hot_paths import STATE
    from dspark_sgl.sglang_plugin.startup import settle_planner_sps

    monkeypatch.setenv("DSPARK_SGL_SPS_PROFILE", "0")
    assert not switches.sps_profile_enabled()
    planner = sps_planner.build()
    assert "DSPARK_SGL_SPS_PROFILE=0" in STATE.sps_source
    timed = _TimedForward()
    source = settle_planner_sps(planner, sps_planner.runner, build_forward=timed.build)
    assert source == "SGLang placeholder (no cached profile; DSPARK_SGL_SPS_PROFILE=0)"
    assert timed.built_with == [] and planner.is_verify_all
    monkeypatch.setenv("DSPARK_SGL_SPS_PROFILE", "yes")
    with pytest.raises(ValueError, match="DSPARK_SGL_SPS_PROFILE"):
        switches.sps_profile_enabled()
    monkeypatch.setenv("DSPARK_SGL_SPS_PROFILE", "1")
    assert switches.sps_profile_enabled()


def test_static_verify_and_user_table_are_left_to_sglang(sg, sps_planner, monkeypatch, tmp_path):
    from sglang.srt import runtime_context
    from sglang.srt.server_args import ServerArgs

    from dspark_sgl.sglang_plugin.startup import settle_planner_sps

    timed = _TimedForward()
    flat_curve = scheduler.SpsTable([(1, 50.0), (64, 10.0)])
    user = sps_mod.store_cache("user", "gpu", 1, flat_curve, directory=tmp_path)
    context = runtime_context.create_context(
        ServerArgs(model_path=sps_planner.model, device="cpu", speculative_dspark_sps_table_path=str(user)),
        role="scheduler",
    )
    with runtime_context.use_context(context):
        planner = sps_planner.build()
        given = planner._budget_planner.sps_table
        source = settle_planner_sps(planner, sps_planner.runner, build_forward=timed.build)
    assert source == f"user table {user}" and planner._budget_planner.sps_table is given
    assert given.sample_batch_tokens == [1, 64]
    monkeypatch.setenv("SGLANG_RAGGED_VERIFY_MODE", "static")
    assert settle_planner_sps(sps_planner.build(), sps_planner.runner, build_forward=timed.build) == (
        "not used (static verify)"
    )
    assert timed.built_with == []
