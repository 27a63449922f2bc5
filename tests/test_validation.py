"""Bad input gets a ValueError/TypeError that names the argument."""

from __future__ import annotations

import pytest
import torch

from dspark_sgl import markov, scheduler, verify

R, G, V, RANK, H = 3, 4, 10, 2, 5


def good_verify_args():
    gen = torch.Generator().manual_seed(0)
    return dict(
        target_logits=torch.randn(R, G + 1, V, generator=gen),
        draft_logits=torch.randn(R, G, V, generator=gen),
        draft_tokens=torch.randint(0, V, (R, G), generator=gen),
        verify_lens=torch.tensor([G, 1, 0], dtype=torch.int32),
        temperature=torch.tensor([1.0, 0.0, 0.5]),
    )


def call_verify(**changes):
    args = good_verify_args()
    args.update(changes)
    return verify.chain_verify(*args.values(), seed=1, offset=2)


def test_good_verify_args_pass():
    call_verify()


def _nan(shape):
    t = torch.randn(*shape)
    t.view(-1)[3] = float("nan")
    return t


@pytest.mark.parametrize(
    "changes, exc, name",
    [
        ({"target_logits": torch.randn(R, G + 1)}, ValueError, "target_logits"),
        ({"target_logits": torch.randint(0, 3, (R, G + 1, V))}, TypeError, "target_logits"),
        ({"target_logits": [[0.0]]}, TypeError, "target_logits"),
        ({"target_logits": _nan((R, G + 1, V))}, ValueError, "target_logits"),
        ({"target_logits": torch.full((R, G + 1, V), float("inf"))}, ValueError, "target_logits"),
        ({"draft_logits": torch.randn(R, G + 1, V)}, ValueError, "draft_logits"),
        ({"draft_logits": torch.randn(R, G, V + 1)}, ValueError, "draft_logits"),
        ({"draft_logits": _nan((R, G, V))}, ValueError, "draft_logits"),
        ({"draft_logits": torch.randn(R, G, V, dtype=torch.float64)}, TypeError, "draft_logits"),
        ({"draft_tokens": torch.full((R, G), V)}, ValueError, "draft_tokens"),
        ({"draft_tokens": torch.full((R, G), -1)}, ValueError, "draft_tokens"),
        ({"draft_tokens": torch.zeros(R, G, dtype=torch.int32)}, TypeError, "draft_tokens"),
        ({"draft_tokens": torch.zeros(R, G - 1, dtype=torch.int64)}, ValueError, "draft_tokens"),
        ({"verify_lens": torch.tensor([G + 1, 0, 0])}, ValueError, "verify_lens"),
        ({"verify_lens": torch.tensor([-1, 0, 0])}, ValueError, "verify_lens"),
        ({"verify_lens": torch.tensor([1.0, 0.0, 0.0])}, TypeError, "verify_lens"),
        ({"verify_lens": torch.tensor([1, 0])}, ValueError, "verify_lens"),
        ({"temperature": torch.tensor([1.0, -0.1, 1.0])}, ValueError, "temperature"),
        ({"temperature": torch.tensor([1.0, float("nan"), 1.0])}, ValueError, "temperature"),
        ({"temperature": torch.tensor([1, 0, 1])}, TypeError, "temperature"),
        ({"temperature": torch.ones(R + 1)}, ValueError, "temperature"),
    ],
)
def test_chain_verify_rejects_bad_input(changes, exc, name):
    with pytest.raises(exc, match=name):
        call_verify(**changes)


def test_chain_verify_rejects_bad_seed():
    args = good_verify_args()
    with pytest.raises(ValueError, match="seed"):
        verify.chain_verify(*args.values(), seed=-1, offset=0)


def good_block_args():
    gen = torch.Generator().manual_seed(1)
    return dict(
        base_logits=torch.randn(R, G, V, generator=gen),
        anchor=torch.randint(0, V, (R,), generator=gen),
        w1=torch.randn(V, RANK, generator=gen),
        w2=torch.randn(V, RANK, generator=gen),
        temperature=torch.tensor([1.0, 0.0, 0.7]),
    )


def call_block(kwargs=None, **changes):
    args = good_block_args()
    args.update(changes)
    return markov.sample_block(*args.values(), seed=0, offset=0, **(kwargs or {}))


def test_good_block_args_pass():
    call_block()
    call_block({"hidden": torch.randn(R, G, H), "conf_weight": torch.randn(H + RANK), "conf_bias": 0.5})


@pytest.mark.parametrize(
    "changes, exc, name",
    [
        ({"base_logits": torch.randn(R, V)}, ValueError, "base_logits"),
        ({"base_logits": torch.randn(R, G, V + 1)}, ValueError, "base_logits"),
        ({"base_logits": _nan((R, G, V))}, ValueError, "base_logits"),
        ({"base_logits": torch.randn(R, 300, V)}, ValueError, "position"),
        ({"anchor": torch.tensor([0, 1, V])}, ValueError, "anchor"),
        ({"anchor": torch.tensor([0, 1])}, ValueError, "anchor"),
        ({"anchor": torch.tensor([0.0, 1.0, 2.0])}, TypeError, "anchor"),
        ({"w1": torch.randn(V, RANK + 1)}, ValueError, "rank"),
        ({"w1": _nan((V, RANK))}, ValueError, "w1"),
        ({"w2": _nan((V, RANK))}, ValueError, "w2"),
        ({"w2": torch.randn(V + 2, RANK)}, ValueError, "vocabulary"),
        ({"w1": torch.randint(0, 2, (V, RANK))}, TypeError, "w1"),
        ({"temperature": torch.tensor([1.0, -1.0, 1.0])}, ValueError, "temperature"),
        ({"temperature": torch.ones(R, dtype=torch.float64)}, TypeError, "temperature"),
    ],
)
def test_sample_block_rejects_bad_input(changes, exc, name):
    with pytest.raises(exc, match=name):
        call_block(**changes)


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        ({"conf_weight": torch.randn(H + RANK)}, ValueError, "hidden"),
        ({"hidden": torch.randn(R, G, H), "conf_weight": torch.randn(H + 1)}, ValueError, "conf_weight"),
        ({"hidden": torch.randn(R, G + 1, H), "conf_weight": torch.randn(H)}, ValueError, "hidden"),
        ({"hidden": _nan((R, G, H)), "conf_weight": torch.randn(H)}, ValueError, "hidden"),
        ({"hidden": torch.randn(R, G, H), "conf_weight": _nan((H,))}, ValueError, "conf_weight"),
        (
            {"hidden": torch.randn(R, G, H), "conf_weight": torch.randn(H), "conf_bias": torch.ones(2)},
            ValueError,
            "conf_bias",
        ),
        (
            {
                "hidden": torch.randn(R, G, H),
                "conf_weight": torch.randn(H),
                "sts_temperatures": torch.ones(G + 1),
            },
            ValueError,
            "sts_temperatures",
        ),
        (
            {
                "hidden": torch.randn(R, G, H),
                "conf_weight": torch.randn(H),
                "sts_temperatures": -torch.ones(G),
            },
            ValueError,
            "sts_temperatures",
        ),
        ({"conf_bias": 1.0}, ValueError, "conf_weight"),
        ({"logit_softcap": 0.0}, ValueError, "logit_softcap"),
    ],
)
def test_sample_block_rejects_bad_confidence_inputs(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        call_block(kwargs)


def test_markov_bias_rejects_bad_input():
    w1, w2 = torch.randn(V, RANK), torch.randn(V, RANK)
    with pytest.raises(ValueError, match="prev"):
        markov.markov_bias(w1, w2, torch.tensor([V]))
    with pytest.raises(TypeError, match="prev"):
        markov.markov_bias(w1, w2, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="w1"):
        markov.markov_bias(torch.randn(V), w2, torch.tensor([1]))


@pytest.mark.parametrize(
    "conf, exc, name",
    [
        (torch.tensor([[0.5, 1.5]]), ValueError, "confidence"),
        (torch.tensor([[0.5, -0.1]]), ValueError, "confidence"),
        (torch.tensor([[0.5, float("nan")]]), ValueError, "confidence"),
        (torch.tensor([0.5, 0.5]), ValueError, "confidence"),
        (torch.tensor([[1, 0]]), TypeError, "confidence"),
    ],
)
def test_schedulers_reject_bad_confidence(conf, exc, name):
    sps = scheduler.SpsTable([(1, 1.0)])
    with pytest.raises(exc, match=name):
        scheduler.schedule_causal(conf, sps)
    with pytest.raises(exc, match=name):
        scheduler.verify_budget(conf, sps)
    with pytest.raises(exc, match=name):
        scheduler.schedule_topk(conf, 1)


def test_schedulers_reject_bad_tables_budgets_and_shapes():
    conf = torch.rand(2, 3)
    with pytest.raises(TypeError, match="sps"):
        scheduler.schedule_causal(conf, {1: 1.0})
    with pytest.raises(ValueError, match="budget"):
        scheduler.schedule_topk(conf, -1)
    with pytest.raises(TypeError, match="budget"):
        scheduler.schedule_topk(conf, 1.5)
    with pytest.raises(ValueError, match="budget"):
        scheduler.schedule_topk(conf, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="budget_confidence"):
        scheduler.schedule_async(conf, torch.rand(3, 3), scheduler.SpsTable([(1, 1.0)]))
