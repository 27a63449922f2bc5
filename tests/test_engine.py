"""The offline engine: greedy output equals the target's own ``generate``; sampled output
has the target's distribution (chi-square against exact enumeration); bad input errors."""

from __future__ import annotations

import pytest
import torch
from conftest import record_p_value
from scipy import stats
from tiny_models import GEMMA4_DRAFT, bigram_draft, tiny_draft, tiny_gemma4_target, tiny_target

from dspark_sgl.engine import SpeculativeEngine
from dspark_sgl.scheduler import SpsTable

P_MIN = 1e-3
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [20]]


def _reference_greedy(target, prompt: list[int], n: int) -> list[int]:
    out = target.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize(
    "kind,scheduler",
    [("bigram", "full"), ("bigram", "causal"), ("bigram", "async"), ("random", "full"), ("rnn", "full")],
)
def test_greedy_equals_target_generate(kind, scheduler):
    if kind == "random":  # context-heavy target, the draft is almost always rejected
        target = tiny_target(96, std=0.3)
        draft = tiny_draft(target)
    else:  # drafts are accepted often: the accept/commit path is exercised
        target = tiny_target(96, embed_scale=10.0)
        draft = bigram_draft(target, markov_head_type="rnn" if kind == "rnn" else "vanilla")
    sps = SpsTable([(4, 100.0), (8, 90.0), (20, 40.0)])
    engine = SpeculativeEngine(target, draft)
    result = engine.generate(PROMPTS, max_new_tokens=40, scheduler=scheduler, sps=sps)
    for prompt, tokens in zip(PROMPTS, result.tokens, strict=True):
        assert tokens == _reference_greedy(target, prompt, 40)
    accepted = [r.accepted for r in result.rounds]
    if kind == "bigram":
        assert min(accepted) == 0 and max(accepted) >= (3 if scheduler == "full" else 1)
    if scheduler != "full":
        verified = {r.verified for r in result.rounds}
        assert len(verified) > 1, f"the {scheduler} scheduler never varied the verify length"


def test_gemma4_target_with_sliding_window_layers_and_gemma4_draft():
    target = tiny_gemma4_target(96, embed_scale=10.0)
    draft = bigram_draft(target, markov_head_type="gated", **GEMMA4_DRAFT)
    assert draft.config.arch == "gemma4"
    result = SpeculativeEngine(target, draft).generate(PROMPTS, max_new_tokens=30)
    for prompt, tokens in zip(PROMPTS, result.tokens, strict=True):
        assert tokens == _reference_greedy(target, prompt, 30)  # prompts and outputs exceed the window
    assert max(r.accepted for r in result.rounds) >= 1


def test_stop_tokens_and_max_new_tokens_end_requests():
    target = tiny_target(96, embed_scale=10.0)
    engine = SpeculativeEngine(target, bigram_draft(target))
    free = engine.generate(PROMPTS, max_new_tokens=30)
    stop = free.tokens[0][5]
    stopped = engine.generate(PROMPTS, max_new_tokens=30, stop_token_ids=[stop])
    for full, cut in zip(free.tokens, stopped.tokens, strict=True):
        expected = full[: full.index(stop) + 1] if stop in full else full
        assert cut == expected
    short = engine.generate(PROMPTS, max_new_tokens=3)
    assert all(len(t) == 3 for t in short.tokens)
    assert [t[:3] for t in free.tokens] == short.tokens


def _exact_distributions(target, prompt: list[int], vocab: int):
    """p(t1), p(t1, t2) and p(t1, t2, t3) of the target by enumeration."""
    with torch.no_grad():
        p1 = torch.softmax(target(input_ids=torch.tensor([prompt])).logits[0, -1].double(), -1)
        seqs = torch.tensor([[*prompt, a, b] for a in range(vocab) for b in range(vocab)])
        logits = target(input_ids=seqs).logits.double()
    p2 = torch.softmax(logits[::vocab, -2], -1)  # [a, t2]
    p3 = torch.softmax(logits[:, -1], -1).reshape(vocab, vocab, vocab)  # [a, b, t3]
    joint12 = p1[:, None] * p2
    joint123 = joint12[:, :, None] * p3
    return p1, joint12, joint123


def _chi_square(observed: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(observed, minlength=probs.numel()).double()
    expected = probs.reshape(-1) / probs.sum() * observed.numel()
    keep = expected > 0
    return float(stats.chisquare(counts[keep].numpy(), expected[keep].numpy()).pvalue)


@pytest.mark.parametrize("scheduler", ["full", "causal"])
def test_sampled_generation_is_lossless(scheduler):
    vocab, rows, prompt = 8, 6000, [1, 2, 3]
    target = tiny_target(vocab, std=0.3, embed_scale=3.0)
    draft = bigram_draft(target, scale=1.0, block_size=2, mask_token_id=vocab - 1)
    engine = SpeculativeEngine(target, draft)
    sps = SpsTable([(rows, 1.0), (2 * rows, 0.62), (3 * rows, 0.45)])
    result = engine.generate(
        [prompt] * rows, max_new_tokens=3, temperature=1.0, seed=11, scheduler=scheduler, sps=sps
    )
    tokens = torch.tensor(result.tokens)
    accepted = torch.tensor([r.accepted for r in result.rounds])
    assert 0 < float(accepted.float().mean()) < 2, "need both accepted and rejected drafts"
    p1, joint12, joint123 = _exact_distributions(target, prompt, vocab)
    checks = {
        "t1": (tokens[:, 0], p1),
        "(t1, t2)": (tokens[:, 0] * vocab + tokens[:, 1], joint12),
        "t3": (tokens[:, 2], joint123.sum((0, 1))),
        "(t2, t3)": (tokens[:, 1] * vocab + tokens[:, 2], joint123.sum(0)),
    }
    for what, (observed, probs) in checks.items():
        pv = _chi_square(observed, probs)
        record_p_value(f"engine lossless ({scheduler})", what, pv)
        assert pv > P_MIN, f"{what} is not distributed as the target's (p={pv:.2e})"


def test_engine_rejects_bad_input():
    target = tiny_target(96)
    draft = tiny_draft(target)
    engine = SpeculativeEngine(target, draft)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[1, 2], []])
    with pytest.raises(ValueError, match="outside"):
        engine.generate([[1, 96]])
    with pytest.raises(ValueError, match="outside"):
        engine.generate([[-1, 3]])
    with pytest.raises(ValueError, match="scheduler"):
        engine.generate([[1]], scheduler="greedy")
    with pytest.raises(ValueError, match="SpsTable"):
        engine.generate([[1]], scheduler="causal")
    with pytest.raises(ValueError, match="temperature"):
        engine.generate([[1]], temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate([[1]], max_new_tokens=0)
    dflash = tiny_draft(
        target, markov_rank=0, enable_confidence_head=False, confidence_head_with_markov=False
    )
    with pytest.raises(ValueError, match="confidence head"):
        SpeculativeEngine(target, dflash).generate([[1]], scheduler="causal", sps=SpsTable([(1, 1.0)]))
    other = tiny_target(64)
    with pytest.raises(ValueError, match="vocab_size"):
        SpeculativeEngine(other, draft)


def test_dflash_draft_runs_and_matches_greedy():
    target = tiny_target(96, embed_scale=10.0)
    draft = tiny_draft(target, markov_rank=0, enable_confidence_head=False, confidence_head_with_markov=False)
    result = SpeculativeEngine(target, draft).generate(PROMPTS, max_new_tokens=20)
    for prompt, tokens in zip(PROMPTS, result.tokens, strict=True):
        assert tokens == _reference_greedy(target, prompt, 20)
    assert all(r.confidence == [] for r in result.rounds)
