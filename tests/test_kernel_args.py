"""The Python wrappers hand each CUDA launcher every argument it reads (checked on CPU).

The wrappers are driven as if on a GPU (dispatch patched), their argument dicts are
captured, and the real launchers are then called with one value changed so that they stop
at a host-side check before touching a device: a missing or misspelt key would surface as
"missing kernel argument" instead of that check's message.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dspark_sgl import _dispatch, markov, scheduler, verify

EXT = _dispatch.load_extension()
pytestmark = pytest.mark.skipif(EXT is None, reason="the CUDA extension is not built")


@pytest.fixture
def captured(monkeypatch):
    calls: dict[str, dict] = {}

    def kernel(op: str):
        real = getattr(EXT, op)
        if op.endswith("_bytes"):
            return real
        return lambda args: calls.__setitem__(op, dict(args))

    monkeypatch.setattr(_dispatch, "kernel_path", lambda op, device: (True, "test"))
    monkeypatch.setattr(_dispatch, "kernel", kernel)
    monkeypatch.setattr(_dispatch, "current_stream_handle", lambda device: 0)
    monkeypatch.setattr(_dispatch, "multiprocessor_count", lambda device: 132)
    monkeypatch.setattr(_dispatch, "shared_memory_unsupported", lambda op, needed, device: None)
    return calls


def _block(**kw):
    gen = torch.Generator().manual_seed(0)
    rows, gamma, vocab, rank, hidden = 3, 4, 64, 8, 5
    return markov.sample_block(
        torch.randn(rows, gamma, vocab, generator=gen),
        torch.randint(0, vocab, (rows,), generator=gen),
        torch.randn(vocab, rank, generator=gen),
        torch.randn(vocab, rank, generator=gen),
        torch.ones(rows),
        seed=1,
        offset=2,
        hidden=torch.randn(rows, gamma, hidden, generator=gen),
        conf_weight=torch.randn(hidden + rank, generator=gen),
        conf_bias=0.5,
        sts_temperatures=torch.ones(gamma),
        **kw,
    )


def test_markov_block_arguments(captured):
    block = _block(keep_logits=False)
    args = captured["markov_block"]
    assert block.logits is None and block.stats is not None
    assert args["rows"] == 3 and args["gamma"] == 4 and args["vocab"] == 64 and args["rank"] == 8
    assert args["logits_out"] == 0 and args["hidden"] != 0 and args["conf_bias_value"] == 0.5
    assert args["conf_uses_markov"] == 1 and args["seed_value"] == 1 and args["offset_value"] == 2
    assert args["w2_scale"] == 0  # W2 in W1's dtype
    with pytest.raises(RuntimeError, match="rank must be in"):
        EXT.markov_block({**args, "rank": 513})


def test_markov_block_arguments_with_an_int8_w2(captured):
    from dspark_sgl.markov_quant import Int8VanillaMarkovHead

    gen = torch.Generator().manual_seed(1)
    rows, gamma, vocab, rank = 3, 2, 64, 16
    w1, w2 = (torch.randn(vocab, rank, generator=gen).to(torch.bfloat16) for _ in range(2))
    head = Int8VanillaMarkovHead.quantize(markov.VanillaMarkovHead(w1, w2))
    base = torch.randn(rows, gamma, vocab, generator=gen)
    markov.sample_block_with_head(base, torch.tensor([0, 1, 2]), head, torch.ones(rows), seed=1, offset=2)
    args = captured["markov_block"]
    assert args["w2_scale"] != 0 and args["weight_dtype"] == _dispatch.dtype_code(torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"an int8 W2 \(w2_scale given\) needs a 16-bit W1"):
        EXT.markov_block({**args, "weight_dtype": _dispatch.dtype_code(torch.float32)})


def test_chain_verify_arguments_in_both_forms(captured):
    block = _block(keep_logits=True)  # the launch was captured: fill what it would have written
    rows, gamma, vocab = block.logits.shape
    block.logits.normal_()
    tokens = torch.randint(0, vocab, (rows, gamma))
    stats = dataclasses.replace(
        block.stats,
        max=torch.randn(rows, gamma),
        sum=torch.rand(rows, gamma) + 1,
        token_logits=torch.randn(rows, gamma),
    )
    target = torch.randn(rows, gamma + 1, vocab)
    lens = torch.full((rows,), gamma)
    for side in (block.logits, stats):
        verify.chain_verify(target, side, tokens, lens, torch.ones(rows), seed=3, offset=4)
        args = captured.pop("chain_verify")
        assert (args["draft_logits"] != 0) == isinstance(side, torch.Tensor)
        assert (args["w2"] != 0) == isinstance(side, markov.DraftStats)
        assert args["stat_chunks"] >= 1
        with pytest.raises(RuntimeError, match="bad stat_chunks"):
            EXT.chain_verify({**args, "stat_chunks": 0})


def test_schedule_prefix_arguments_for_every_scheduler(captured):
    conf, stale = torch.rand(6, 5), torch.rand(6, 5)
    sps = scheduler.SpsTable([(1, 10.0), (30, 5.0)])
    runs = [
        lambda: scheduler.schedule_causal(conf, sps),
        lambda: scheduler.schedule_async(conf, stale, sps, causal_prune=True),
        lambda: scheduler.schedule_topk(conf, 7),
        lambda: scheduler.schedule_topk_causal(conf, torch.tensor(7), sps),
    ]
    for run in runs:
        run()
        args = captured.pop("schedule_prefix")
        assert args["rows"] == 6 and args["gamma"] == 5 and args["sps_points"] >= 1
        with pytest.raises(RuntimeError, match="8192"):
            EXT.schedule_prefix({**args, "rows": 2000, "gamma": 16})
