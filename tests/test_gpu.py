"""philox_uniform against its reference, and whole rounds and the engine on the kernels.

Every test takes the ``backend`` fixture (tests/kernel_backend.py): the CPU emulator in CI at small
shapes, a lent GPU at full shapes (skipped where there is none). CUDA-graph replay needs a device.
"""

from __future__ import annotations

import pytest
import torch

from dspark_sgl import _dispatch, markov, rng, scheduler, verify

# vocabulary sizes on a device, and on the emulator
PHILOX_VOCABS = {"V1": (1, 1), "V7": (7, 7), "V129280": (129280, 4099), "V151936": (151936, 1023)}


@pytest.mark.race_schedule
@pytest.mark.parametrize("vocab", list(PHILOX_VOCABS))
@pytest.mark.parametrize("stream", list(rng.Stream))
def test_philox_kernel_is_bit_identical_to_the_reference(backend, vocab, stream):
    vocab = backend.size(*PHILOX_VOCABS[vocab])
    rows = torch.arange(9, device=backend.device)[:, None] * 37
    positions = torch.arange(3, device=backend.device)[None, :]
    seed, offset = 0xDEADBEEF_12345678, (5 << 32) + 11
    kernel = rng.uniform(seed, offset, stream, rows, positions, vocab)
    assert backend.ran("philox_uniform")
    reference = rng._uniform_reference(seed, offset, stream, rows.cpu(), positions.cpu(), vocab)
    assert torch.equal(kernel.cpu(), reference)


def test_philox_kernel_reads_seed_and_offset_from_device_tensors(backend):
    rows = torch.arange(4, device=backend.device)
    positions = torch.zeros(4, dtype=torch.int64, device=backend.device)
    seed = backend.tensor(77)
    offset = backend.tensor([2**40 + 1])
    a = rng.uniform(seed, offset, rng.Stream.DRAFT, rows, positions, 1000)
    b = rng.uniform(77, 2**40 + 1, rng.Stream.DRAFT, rows, positions, 1000)
    assert backend.ran("philox_uniform")
    assert torch.equal(a, b)


def test_philox_kernel_replays_in_a_cuda_graph_with_fresh_offsets(backend):
    if backend.name != "cuda":
        pytest.skip("CUDA graph capture and replay need a real device (the emulator launches synchronously)")
    rows = torch.arange(8, device=backend.device)
    positions = torch.zeros(8, dtype=torch.int64, device=backend.device)
    seed = backend.tensor(3)
    offset = backend.tensor(0)
    rng.uniform(seed, offset, rng.Stream.DRAFT, rows, positions, 4096)  # warm up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = rng.uniform(seed, offset, rng.Stream.DRAFT, rows, positions, 4096)
    for step in (5, 6, 2**33):
        offset.fill_(step)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, rng.uniform(3, step, rng.Stream.DRAFT, rows, positions, 4096))


def test_a_round_on_the_kernels_matches_the_reference_round(backend):
    gen = torch.Generator().manual_seed(0)
    rows, gamma, vocab, rank = 16, 5, 512, 8
    base = torch.randn(rows, gamma, vocab, generator=gen)
    anchor = torch.randint(0, vocab, (rows,), generator=gen)
    w1, w2 = torch.randn(vocab, rank, generator=gen), torch.randn(vocab, rank, generator=gen)
    temperature = torch.rand(rows, generator=gen) + 0.5
    temperature[::3] = 0.0
    target = torch.randn(rows, gamma + 1, vocab, generator=gen)
    lens = torch.randint(0, gamma + 1, (rows,), generator=gen)
    conf = torch.rand(rows, gamma, generator=gen)
    sps = scheduler.SpsTable([(1, 100.0), (32, 60.0), (96, 20.0)])
    dev = backend.device
    with _dispatch.forced_reference():
        ref = markov.sample_block(base, anchor, w1, w2, temperature, seed=1, offset=2)
        acc_ref, _ = verify.chain_verify(target, ref.logits, ref.tokens, lens, temperature, seed=1, offset=2)
        lengths_ref = scheduler.schedule_causal(conf, sps)
    ours = markov.sample_block(
        base.to(dev), anchor.to(dev), w1.to(dev), w2.to(dev), temperature.to(dev), seed=1, offset=2
    )
    assert backend.ran("markov_block")
    assert torch.allclose(ours.logits.cpu(), ref.logits, atol=1e-4)
    # Tokens agree unless the top two perturbed scores are within float rounding.
    assert (ours.tokens.cpu() == ref.tokens).float().mean() > 0.98
    acc, _ = verify.chain_verify(
        target.to(dev),
        ref.logits.to(dev),
        ref.tokens.to(dev),
        lens.to(dev),
        temperature.to(dev),
        seed=1,
        offset=2,
    )
    assert backend.ran("chain_verify")
    assert (acc.cpu() == acc_ref).float().mean() > 0.9
    assert torch.equal(scheduler.schedule_causal(conf.to(dev), sps).cpu(), lengths_ref)
    assert backend.ran("schedule_prefix")


def test_engine_on_the_kernels_matches_the_reference_and_target_generate(backend):
    from tiny_models import bigram_draft, tiny_target

    from dspark_sgl.engine import SpeculativeEngine

    prompts = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15]]
    new_tokens = backend.size(24, 12)
    target = tiny_target(96, embed_scale=10.0)
    draft = bigram_draft(target)
    with _dispatch.forced_reference():
        reference = SpeculativeEngine(target, draft).generate(
            prompts, max_new_tokens=new_tokens, temperature=1.0, seed=5
        )
    target, draft = target.to(backend.device), draft.to(backend.device)
    draft.invalidate_samplers()
    engine = SpeculativeEngine(target, draft)
    greedy = engine.generate(prompts, max_new_tokens=new_tokens)
    assert backend.ran("markov_block") and backend.ran("chain_verify")
    for prompt, tokens in zip(prompts, greedy.tokens, strict=True):
        expected = target.generate(
            torch.tensor([prompt], device=backend.device), max_new_tokens=new_tokens, do_sample=False
        )
        assert tokens == expected[0, len(prompt) :].tolist()
    sampled = engine.generate(prompts, max_new_tokens=new_tokens, temperature=1.0, seed=5)
    # Same seed, same counter-based draws: the first draw of every request agrees with the
    # reference run (later ones may diverge after a float near-tie, so only the first is compared).
    assert [t[0] for t in sampled.tokens] == [t[0] for t in reference.tokens]
    assert all(len(t) == new_tokens for t in sampled.tokens)
