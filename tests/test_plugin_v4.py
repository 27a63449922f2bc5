"""The plugin's Markov hooks on SGLang 0.5.23's DeepSeek-V4 head (``DSparkV4MarkovHead``),
whole and vocab-sharded, against SGLang's own code on the CPU."""

from __future__ import annotations

import contextlib
import importlib
import logging
import types

import pytest
import torch
from conftest import record_p_value
from simulated_ranks import SimulatedRanks, shard_bounds
from test_plugin import _chi_square, _sampling_info, _SyncingTp, _tp_sync, sg, sglang_originals  # noqa: F401

from dspark_sgl.sglang_plugin import hot_paths, switches
from dspark_sgl.sglang_plugin.startup import worker_summary


@pytest.fixture(scope="module")
def v4(sg):  # noqa: F811 (the fixture imported above)
    try:
        return importlib.import_module("sglang.srt.models.deepseek_v4_dspark")
    except Exception as exc:
        pytest.skip(f"SGLang's DeepSeek-V4 draft module does not import here: {exc!r}")


@contextlib.contextmanager
def tp_group_of_one():
    """SGLang's VocabParallelEmbedding reads the TP group even with TP off: a group of one."""
    from sglang.srt.runtime_context import get_parallel

    with get_parallel().override(tp_group=types.SimpleNamespace(world_size=1, rank_in_group=0)):
        yield


def v4_head(v4, monkeypatch, w2_dtype: torch.dtype, vocab: int, rank: int, seed: int = 0):
    """SGLang's V4 head as served: W2 in ``w2_dtype`` (SGLANG_DSPARK_OPT_MARKOV_W2_BF16),
    markov_w1 a bf16 VocabParallelEmbedding (the model dtype), random weights."""
    monkeypatch.setenv("SGLANG_DSPARK_OPT_MARKOV_W2_BF16", "1" if w2_dtype == torch.bfloat16 else "0")
    head = v4.DSparkV4MarkovHead(vocab_size=vocab, markov_rank=rank)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.markov_w1.weight.copy_(torch.randn(head.markov_w1.weight.shape, generator=gen))
        head.markov_w2.weight.copy_(torch.randn(vocab, rank, generator=gen) * 0.5)
    head.markov_w1.to(torch.bfloat16)
    assert head.markov_w2.weight.dtype == w2_dtype
    return head


def _noise(sg, device: torch.device | None = None):  # noqa: F811
    draft = sg.dspark_draft
    offset = torch.zeros(1, dtype=torch.int64, device=device)
    return draft.DraftNoise(key=draft.draft_noise_key(7), offset=offset)


def _block(sg, head, base, anchor, temperatures, tp_sync, greedy_draft=False):  # noqa: F811
    noise = _noise(sg, base.device)
    with torch.no_grad(), tp_group_of_one():
        tokens, logits = sg.dspark_draft.draft_markov_block(
            markov_head=head,
            base_logits=base,
            anchor_tokens=anchor,
            draft_hidden=None,
            step_temperatures=temperatures,
            noise=noise,
            tp_sync=tp_sync,
            greedy_draft=greedy_draft,
        )
    return tokens, logits, noise


def bias_rounding_tolerance(head, logits: torch.Tensor) -> float:
    """How far two implementations' step logits may be apart: one bf16 ulp of the largest
    bias per token compared (bf16 W2), or float32 rounding of the logits (fp32 W2)."""
    if head.markov_w2.weight.dtype == torch.bfloat16:
        return 2 * 2.0 ** (torch.log2(logits.abs().max()).floor().item() - 7)
    return 1e-5 * max(1.0, logits.abs().max().item())


def assert_greedy_equal_but_near_ties(ours, theirs, their_logits, tol):
    """Tokens equal, except where SGLang's own step logits of both tokens are within
    ``tol`` (a near-tie) at the first position a row differs; at most 2% of the rows."""
    differ = ours != theirs
    rows = torch.nonzero(differ.any(dim=1)).flatten().tolist()
    for row in rows:
        k = int(torch.nonzero(differ[row]).flatten()[0])
        gap = their_logits[row, k, theirs[row, k]] - their_logits[row, k, ours[row, k]]
        assert 0 <= float(gap) <= tol, (row, k, float(gap))
    assert len(rows) <= max(1, ours.shape[0] // 50)


W2_CASES = [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32)]


@pytest.mark.parametrize(("w2_dtype", "base_dtype"), W2_CASES)
@pytest.mark.parametrize("greedy_draft", [False, True])
def test_v4_greedy_draft_equals_sglang(sg, v4, monkeypatch, w2_dtype, base_dtype, greedy_draft):  # noqa: F811
    vocab, rank, bs, gamma = 512, 16, 48, 6
    head = v4_head(v4, monkeypatch, w2_dtype, vocab, rank)
    gen = torch.Generator().manual_seed(1)
    base = (torch.randn(bs, gamma, vocab, generator=gen) * 3).to(base_dtype)
    anchor = torch.randint(0, vocab, (bs,), generator=gen)
    greedy = torch.zeros(bs)
    ours, our_logits, our_noise = _block(sg, head, base, anchor, greedy, _tp_sync(sg), greedy_draft)
    with sglang_originals():
        theirs, their_logits, their_noise = _block(sg, head, base, anchor, greedy, _tp_sync(sg))
    assert ("markov_block", "dspark_sgl") in switches.logged()
    assert ours.dtype == torch.int64 and ours.shape == (bs, gamma)
    assert their_logits.dtype == torch.float32  # V4's step logits are fp32 (step_logits_dtype)
    tol = bias_rounding_tolerance(head, their_logits)
    assert_greedy_equal_but_near_ties(ours, theirs, their_logits, tol)
    if greedy_draft:
        assert our_logits is None and int(our_noise.offset) == 0
    else:
        assert our_logits.dtype == torch.float32 and our_logits.shape == (bs, gamma, vocab)
        assert int(our_noise.offset) == int(their_noise.offset) == 1
        same_rows = (ours == theirs).all(dim=1)
        torch.testing.assert_close(our_logits[same_rows], their_logits[same_rows], rtol=0, atol=tol)


@pytest.mark.parametrize("w2_dtype", [torch.float32, torch.bfloat16])
def test_v4_bias_rounding_is_sglangs(sg, v4, monkeypatch, w2_dtype):  # noqa: F811
    """Our bias is SGLang's ``step_bias`` value for value: bf16 W2 rounds the bias to bf16
    (kept in bf16, upcast into the fp32 add), fp32 W2 rounds nothing."""
    head = v4_head(v4, monkeypatch, w2_dtype, 256, 16, seed=2)
    ours = hot_paths.our_markov_head(head)
    prev = torch.arange(0, 256, 7)
    with torch.no_grad(), tp_group_of_one():
        theirs, _ = head.step_bias(prev, hidden_states=None, state=None)
    mine, _ = ours.step(prev, None, None)
    if w2_dtype == torch.bfloat16:
        assert ours.bias_dtype == torch.bfloat16
        assert torch.equal(mine, mine.to(torch.bfloat16).float())  # representable in bf16
        ulp = 2.0 ** (torch.log2(theirs.float().abs().clamp_min(1e-30)).floor() - 7)
        assert bool(((mine - theirs.float()).abs() <= ulp).all())
        assert (mine == theirs.float()).float().mean() > 0.99
    else:
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6)


def test_v4_exact_ties_take_the_lowest_id_as_sglang(sg, v4, monkeypatch):  # noqa: F811
    """Two columns with equal base logits and equal W2 rows tie exactly: both pick the lower."""
    vocab, bs, gamma = 128, 4, 3
    head = v4_head(v4, monkeypatch, torch.bfloat16, vocab, 8)
    with torch.no_grad():
        head.markov_w2.weight[90] = head.markov_w2.weight[17]
    base = torch.randn(bs, gamma, vocab)
    base[..., 17] = base[..., 90] = 40.0
    anchor = torch.arange(bs)
    ours, _, _ = _block(sg, head, base, anchor, torch.zeros(bs), _tp_sync(sg), True)
    with sglang_originals():
        theirs, _, _ = _block(sg, head, base, anchor, torch.zeros(bs), _tp_sync(sg), True)
    assert torch.equal(ours, theirs) and bool((ours == 17).all())


@pytest.mark.parametrize("w2_dtype", [torch.float32, torch.bfloat16])
def test_v4_sampled_block_is_softmax(sg, v4, monkeypatch, w2_dtype):  # noqa: F811
    """x_1 ~ softmax((U_1 + B(x_0)) / T) with SGLang's own V4 bias, across rows and blocks."""
    vocab, rows, temperature = 6, 4000, 0.8
    head = v4_head(v4, monkeypatch, w2_dtype, vocab, 4, seed=3)
    base_row = torch.randn(2, vocab, generator=torch.Generator().manual_seed(4))
    base = base_row.expand(rows, 2, vocab).contiguous()
    anchor = torch.full((rows,), 2, dtype=torch.int64)
    noise = _noise(sg)
    firsts = []
    with torch.no_grad(), tp_group_of_one():
        for _ in range(3):
            tokens, logits = sg.dspark_draft.draft_markov_block(
                markov_head=head,
                base_logits=base,
                anchor_tokens=anchor,
                draft_hidden=None,
                step_temperatures=torch.full((rows,), temperature),
                noise=noise,
                tp_sync=_tp_sync(sg),
            )
            firsts.append(tokens[:, 0])
        bias = head.step_bias(anchor[:1], hidden_states=None, state=None)[0].float()
    assert int(noise.offset) == 3
    torch.testing.assert_close(logits[0, 0], base_row[0] + bias[0])
    p_value = _chi_square(torch.cat(firsts), torch.softmax((base_row[0] + bias[0]) / temperature, -1))
    record_p_value("V4 Markov block (plugin)", f"x_1 ~ q, W2 {w2_dtype}", p_value)
    assert p_value > 1e-3


def test_v4_confidence_head_has_no_bias_and_matches_sglang(sg, v4, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SGLANG_RAGGED_VERIFY_MODE", "compact")
    hidden, rank, vocab, bs, gamma = 16, 8, 64, 4, 5
    config = types.SimpleNamespace(hidden_size=hidden, enable_confidence_head=True)
    conf = v4.build_dspark_v4_confidence_head(config=config, markov_rank=rank)
    assert conf.proj.bias is None and conf.with_markov
    torch.manual_seed(5)
    torch.nn.init.normal_(conf.proj.weight)
    conf.sts_temperatures = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0])
    head = v4_head(v4, monkeypatch, torch.bfloat16, vocab, rank)
    features = torch.randn(bs * gamma, hidden).to(torch.bfloat16)
    anchor, drafts = torch.randint(0, vocab, (bs,)), torch.randint(0, vocab, (bs, gamma))
    with torch.no_grad(), tp_group_of_one():
        ours = conf.predict(features, anchor_tokens=anchor, draft_tokens=drafts, markov_head=head)
        with sglang_originals():
            theirs = conf.predict(features, anchor_tokens=anchor, draft_tokens=drafts, markov_head=head)
    assert ("confidence", "dspark_sgl") in switches.logged()
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape == (bs, gamma) and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_v4_per_position_path_under_tp_sync_equals_whole_block(sg, v4, monkeypatch):  # noqa: F811
    """With SGLang's draft-token sync on, one kernel call per position with the sync between;
    without, the whole block in one call: the same tokens and step logits."""
    head = v4_head(v4, monkeypatch, torch.bfloat16, 128, 8)
    base = torch.randn(6, 5, 128, generator=torch.Generator().manual_seed(6)) * 2
    temps = torch.tensor([0.0, 0.7, 1.0, 1.3, 0.0, 0.9])
    whole = _block(sg, head, base, torch.arange(6), temps, _tp_sync(sg))
    stepped = _block(sg, head, base, torch.arange(6), temps, _SyncingTp())
    assert torch.equal(whole[0], stepped[0]) and torch.equal(whole[1], stepped[1])


# --------------------------------------------------------------------------- vocab-sharded TP


def sharded_heads(v4, sg, head, ranks: SimulatedRanks):  # noqa: F811
    """One copy of SGLang's V4 head per simulated rank, configured as ``configure_tp_shard``
    leaves it: the W2 shard geometry of the lm_head partition and a ``VocabShard``."""
    bounds = shard_bounds(head.vocab_size, ranks.world)
    copies = []
    for rank, (start, end, per_rank) in enumerate(bounds):
        rank_head = v4.DSparkV4MarkovHead.__new__(v4.DSparkV4MarkovHead)
        rank_head.__dict__.update({k: v for k, v in head.__dict__.items() if k != "_dspark_sgl_markov"})
        rank_head._tp_shard = v4.MarkovW2ShardGeometry(
            tp_size=ranks.world,
            org_vocab_start=start,
            org_vocab_end=end,
            num_embeddings_per_partition=per_rank,
            num_embeddings_padded=per_rank * ranks.world,
        )
        rank_head.vocab_shard = sg.dspark.VocabShard(start=start, gather=ranks.gather(rank))
        copies.append((rank_head, start, end, per_rank))
    return copies


def padded_local(base: torch.Tensor, start: int, end: int, per_rank: int) -> torch.Tensor:
    """The rank's lm_head logits: its columns, zero-padded to the partition width."""
    local = torch.zeros(*base.shape[:-1], per_rank, dtype=base.dtype)
    local[..., : end - start] = base[..., start:end]
    return local


class _RankSync:
    """SGLang's tp_sync with the DSPARK_DRAFT site on: rank 0's tokens to every rank."""

    def __init__(self, ranks: SimulatedRanks, rank: int) -> None:
        self.gather = ranks.gather(rank)
        self.calls = 0

    def enabled(self, site) -> bool:
        return True

    def sync(self, site, values: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.gather.gather_stacked(values[:, None])[: values.shape[0], 0].clone()


@pytest.mark.parametrize("world", [2, 4, 8])
@pytest.mark.parametrize("w2_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("greedy_draft", [False, True])
def test_v4_sharded_block_equals_tp1(sg, v4, monkeypatch, world, w2_dtype, greedy_draft):  # noqa: F811
    """Each rank holds its W2 slice and padded base logits; after the per-step candidate
    exchange the tokens and the kept (gathered) step logits equal the TP = 1 block, on
    every rank, and the greedy tokens equal SGLang's own sharded draft."""
    vocab, bs, gamma = 200, 8, 4  # padded to 256: uneven last shard, at 8 ranks an empty one
    head = v4_head(v4, monkeypatch, w2_dtype, vocab, 8, seed=world)
    gen = torch.Generator().manual_seed(world)
    base = torch.randn(bs, gamma, vocab, generator=gen) * 3
    anchor = torch.randint(0, vocab, (bs,), generator=gen)
    temps = torch.zeros(bs) if greedy_draft else torch.rand(bs, generator=gen) + 0.4
    ref_tokens, ref_logits, _ = _block(sg, head, base, anchor, temps, _tp_sync(sg), greedy_draft)
    ranks = SimulatedRanks(world)
    copies = sharded_heads(v4, sg, head, ranks)
    syncs = [_RankSync(ranks, r) for r in range(world)]

    def rank_block(r: int):
        rank_head, start, end, per_rank = copies[r]
        local = padded_local(base, start, end, per_rank)
        return _block(sg, rank_head, local, anchor, temps, syncs[r], greedy_draft)

    results = ranks.run(rank_block)
    assert any(hook == "markov_block" and "vocab shard" in variant for hook, _, variant in switches._logged)
    for tokens, logits, noise in results:
        assert torch.equal(tokens, ref_tokens)
        if greedy_draft:
            assert logits is None and int(noise.offset) == 0
        else:
            assert logits.shape == (bs, gamma, vocab) and torch.equal(logits, ref_logits)
            assert int(noise.offset) == 1
    assert all(s.calls == gamma for s in syncs)
    if greedy_draft:
        with sglang_originals():
            theirs = ranks.run(rank_block)
        their_ref = _block(sg, head, base, anchor, temps, _tp_sync(sg), False)
        tol = bias_rounding_tolerance(head, their_ref[1])
        for tokens, _, _ in theirs:
            assert_greedy_equal_but_near_ties(ref_tokens, tokens, their_ref[1], tol)


def test_v4_sharded_sampling_is_softmax(sg, v4, monkeypatch):  # noqa: F811
    """Through the plugin on 2 simulated ranks: x_1 ~ softmax((U_1 + B(x_0)) / T)."""
    vocab, rows, temperature = 12, 3000, 0.9
    head = v4_head(v4, monkeypatch, torch.bfloat16, vocab, 4, seed=8)
    base_row = torch.randn(1, vocab, generator=torch.Generator().manual_seed(9))
    base = base_row.expand(rows, 1, vocab).contiguous()
    anchor = torch.full((rows,), 3, dtype=torch.int64)
    ranks = SimulatedRanks(2)
    copies = sharded_heads(v4, sg, head, ranks)  # padded to 64: [0, 12) and an empty rank
    temps = torch.full((rows,), temperature)

    def rank_block(r):
        rank_head, start, end, per_rank = copies[r]
        return _block(
            sg, rank_head, padded_local(base, start, end, per_rank), anchor, temps, _RankSync(ranks, r)
        )

    tokens = ranks.run(rank_block)[1][0]
    with torch.no_grad(), tp_group_of_one():
        bias = head.step_bias(anchor[:1], hidden_states=None, state=None)[0].float()
    p_value = _chi_square(tokens[:, 0], torch.softmax((base_row[0] + bias[0]) / temperature, -1))
    record_p_value("V4 sharded Markov block (plugin)", "x_1 ~ q", p_value)
    assert p_value > 1e-3


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("keep", [False, True])
def test_markov_sample_step_sharded_equals_tp1(sg, world, keep):  # noqa: F811
    """SGLang's ``MarkovSampleStep.execute`` with ``vocab_start`` / ``gather`` /
    ``gather_logits`` (a sharded step): the token and kept logits equal the unsharded step."""
    step_cls = sg.markov_sample.MarkovSampleStep
    vocab, rows = 100, 16
    gen = torch.Generator().manual_seed(world)
    base = torch.randn(rows, vocab, generator=gen) * 2
    bias = torch.randn(rows, vocab, generator=gen)
    temps = torch.cat([torch.zeros(4), torch.rand(rows - 4, generator=gen) + 0.5])
    kwargs = dict(key=5, offset=torch.zeros(1, dtype=torch.int64), step=2, step_dtype=torch.float32)
    ref_out = torch.empty(rows, vocab)
    ref = step_cls.execute(base_logits=base, bias=bias, temperatures=temps, logits_out=ref_out, **kwargs)
    ranks = SimulatedRanks(world)
    bounds = shard_bounds(vocab, world, pad_to=32)

    def rank_step(r):
        start, end, per_rank = bounds[r]
        gather = ranks.gather(r)
        out = torch.empty(rows, vocab) if keep else None
        tokens = step_cls.execute(
            base_logits=padded_local(base, start, end, per_rank),
            bias=bias[:, start:end],
            temperatures=temps if keep else torch.zeros(rows),
            vocab_start=start,
            gather=gather.gather_stacked,
            gather_logits=gather,
            logits_out=out,
            **kwargs,
        )
        return tokens, out

    greedy_ref = (base + bias).argmax(-1)
    for tokens, out in ranks.run(rank_step):
        if keep:
            assert torch.equal(tokens, ref) and torch.equal(out, ref_out)
        else:
            assert torch.equal(tokens, greedy_ref)
    assert ("markov_step", "dspark_sgl") in switches.logged()


def test_startup_summary_names_the_v4_markov_path(sg, v4, monkeypatch, caplog):  # noqa: F811
    head = v4_head(v4, monkeypatch, torch.bfloat16, 128, 8)
    ranks = SimulatedRanks(2)
    rank_head = sharded_heads(v4, sg, head, ranks)[1][0]
    lines = []
    for markov_head in (head, rank_head):
        worker = types.SimpleNamespace(
            draft_model=types.SimpleNamespace(markov_head=markov_head, confidence_head=None), gamma=4
        )
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dspark_sgl"):
            worker_summary(None, worker)
        lines.append(" ".join(r.getMessage() for r in caplog.records))
    assert "markov=[dspark_sgl DSparkV4MarkovHead W2 bfloat16]" in lines[0]
    assert "markov=[dspark_sgl DSparkV4MarkovHead W2 bfloat16 vocab shard [64, 128) of 128]" in lines[1]


def test_v4_sharded_rounds_accept_and_schedule_alike_on_every_rank(sg, v4, monkeypatch):  # noqa: F811
    """Two sampled rounds on 4 simulated ranks, each with its own plugin state (seed, verify
    counter): the drafts, accept lengths, bonus tokens and verify layouts are identical on
    every rank and equal the TP = 1 rounds (the inputs are identical after the exchange and
    every draw is keyed by the shared seed and device counters)."""
    vocab, bs, gamma, world = 200, 16, 4, 4
    head = v4_head(v4, monkeypatch, torch.bfloat16, vocab, 8, seed=13)
    gen = torch.Generator().manual_seed(13)
    bases = [torch.randn(bs, gamma, vocab, generator=gen) * 2 for _ in range(2)]
    targets = [torch.randn(bs * (gamma + 1), vocab, generator=gen) * 2 for _ in range(2)]
    confidence = torch.rand(bs, gamma, generator=gen)
    info = _sampling_info(sg, torch.rand(bs, generator=gen) + 0.5, torch.full((bs,), vocab), vocab)
    anchor = torch.randint(0, vocab, (bs,), generator=gen)
    cfg = sg.dspark_planner.DSparkScheduleConfig(gamma=gamma)

    def rounds(rank_head, local_bases, tp_sync):
        noise = _noise(sg)
        blocks = []
        with torch.no_grad(), tp_group_of_one():
            for base in local_bases:
                blocks.append(
                    sg.dspark_draft.sample_draft_block(
                        base_logits=base,
                        anchor_tokens=anchor,
                        draft_hidden=None,
                        sampling_info=info,
                        markov_head=rank_head,
                        noise=noise,
                        device=torch.device("cpu"),
                        tp_sync=tp_sync,
                        greedy_draft=False,
                    )
                )
        return blocks

    def verify(blocks):
        state = hot_paths.PluginState()
        state.random_seed = 1234
        monkeypatch.setattr(hot_paths, "STATE", state)
        out = []
        for block, target in zip(blocks, targets, strict=True):
            accepted = sg.dspark_verify.accept_draft_tokens(
                candidates=torch.cat([anchor[:, None], block.draft_tokens], dim=1),
                target_logits=target,
                draft_block=block,
                sampling_info=info,
                draft_input=None,
                gamma=gamma,
                verify_num_draft_tokens=gamma + 1,
            )
            lens = sg.dspark_schedule.ScheduleVerifyLensTopk.execute(
                confidence=confidence, budget=bs, cfg=cfg
            )
            out.append((block.draft_tokens, *accepted, lens))
        return out

    expected = verify(rounds(head, bases, _tp_sync(sg)))
    ranks = SimulatedRanks(world)
    copies = sharded_heads(v4, sg, head, ranks)

    def rank_rounds(r):
        rank_head, start, end, per_rank = copies[r]
        return rounds(rank_head, [padded_local(b, start, end, per_rank) for b in bases], _RankSync(ranks, r))

    for blocks in ranks.run(rank_rounds):
        for ours, ref in zip(verify(blocks), expected, strict=True):
            for a, b in zip(ours, ref, strict=True):
                assert torch.equal(a, b)
    assert ("accept", "dspark_sgl") in switches.logged() and ("topk", "dspark_sgl") in switches.logged()


@pytest.mark.parametrize("w2_dtype", [torch.float32, torch.bfloat16])
def test_v4_draft_on_the_kernel_equals_sglang(sg, v4, monkeypatch, backend, w2_dtype):  # noqa: F811
    """The V4 head's block through the fused ``markov_block`` kernel (emulated in CI, the device
    when lent), bf16 W2 included: greedy tokens equal SGLang's own but near-ties."""
    vocab, rank, bs, gamma = backend.size((129280, 256, 64, 5), (640, 16, 12, 4))
    head = v4_head(v4, monkeypatch, w2_dtype, vocab, rank).to(backend.device)
    gen = torch.Generator().manual_seed(3)
    base = (torch.randn(bs, gamma, vocab, generator=gen) * 3).to(backend.device)
    anchor = torch.randint(0, vocab, (bs,), generator=gen).to(backend.device)
    greedy = torch.zeros(bs, device=backend.device)
    ours, _, _ = _block(sg, head, base, anchor, greedy, _tp_sync(sg))
    assert backend.ran("markov_block")
    with sglang_originals():
        theirs, their_logits, _ = _block(sg, head, base, anchor, greedy, _tp_sync(sg))
    assert_greedy_equal_but_near_ties(ours, theirs, their_logits, bias_rounding_tolerance(head, their_logits))
