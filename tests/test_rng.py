"""The shared counter-based generator: Philox known answers, layout, uniformity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from dspark_sgl import rng
from dspark_sgl.rng import Stream

# Random123 known-answer vectors for Philox4x32-10: (counter, key, output).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def _t(values):
    return tuple(torch.tensor(v, dtype=torch.int64) for v in values)


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_philox_known_answers(counter, key, expected):
    out = rng.philox4x32(_t(counter), _t(key))
    assert tuple(int(x) for x in out) == expected


def _philox_numpy(counter, key):
    """Independent uint64 implementation used to check the layout of `uniform`."""
    c = [np.uint64(x) for x in counter]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    mask = np.uint64(0xFFFFFFFF)
    for i in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [
            ((p1 >> np.uint64(32)) ^ c[1] ^ k0) & mask,
            p1 & mask,
            ((p0 >> np.uint64(32)) ^ c[3] ^ k1) & mask,
            p0 & mask,
        ]
        if i < 9:
            k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
    return [int(x) for x in c]


def test_uniform_follows_the_documented_counter_layout():
    seed, offset = 0x1234_5678_9ABC_DEF0, (7 << 32) + 99
    u = rng.uniform(seed, offset, Stream.RESAMPLE, torch.tensor([3]), torch.tensor([5]), 11)
    for col in range(11):
        counter = (col // 4, 3, 5 | (int(Stream.RESAMPLE) << 8) | (7 << 16), 99)
        bits = _philox_numpy(counter, (seed & 0xFFFFFFFF, seed >> 32))[col % 4]
        expected = np.float32(((bits >> 9) << 1) | 1) * np.float32(2.0**-24)
        assert u[0, col].item() == float(expected)


def test_uniform_values_are_exact_odd_multiples_inside_the_unit_interval():
    u = rng.uniform(1, 2, Stream.DRAFT, torch.arange(64)[:, None], torch.arange(4)[None, :], 257)
    assert u.dtype == torch.float32 and u.shape == (64, 4, 257)
    scaled = u.double() * 2**24
    assert bool((scaled == scaled.round()).all()) and bool((scaled.remainder(2) == 1).all())
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0


def test_uniform_is_uniform_and_streams_are_independent():
    rows = torch.arange(4096)[:, None]
    a = rng.uniform(9, 0, Stream.DRAFT, rows, torch.tensor([[0]]), 64).reshape(-1)
    b = rng.uniform(9, 0, Stream.RESAMPLE, rows, torch.tensor([[0]]), 64).reshape(-1)
    counts = torch.histc(a, bins=32, min=0, max=1)
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3
    assert abs(float(np.corrcoef(a.numpy(), b.numpy())[0, 1])) < 0.01


@pytest.mark.parametrize(
    "change",
    ["seed_low", "seed_high", "offset_low", "offset_high", "stream", "row", "position"],
)
def test_every_key_and_counter_field_changes_the_draws(change):
    base = dict(seed=5, offset=17, stream=Stream.DRAFT, row=2, position=3)
    other = dict(base)
    other.update(
        {
            "seed_low": {"seed": 6},
            "seed_high": {"seed": 5 + (1 << 40)},
            "offset_low": {"offset": 18},
            "offset_high": {"offset": 17 + (1 << 33)},
            "stream": {"stream": Stream.ACCEPT},
            "row": {"row": 9},
            "position": {"position": 4},
        }[change]
    )

    def draw(cfg):
        return rng.uniform(
            cfg["seed"],
            cfg["offset"],
            cfg["stream"],
            torch.tensor([cfg["row"]]),
            torch.tensor([cfg["position"]]),
            16,
        )

    assert torch.equal(draw(base), draw(dict(base)))
    assert not torch.equal(draw(base), draw(other))


def test_tensor_seed_and_offset_give_the_same_draws_as_ints():
    rows, pos = torch.arange(3)[:, None], torch.arange(2)[None, :]
    as_int = rng.uniform(2**63 + 5, 2**40 + 3, Stream.DRAFT, rows, pos, 9)
    seed_t = torch.tensor(2**63 + 5 - 2**64, dtype=torch.int64)  # same 64 bits, signed
    as_tensor = rng.uniform(seed_t, torch.tensor([2**40 + 3]), Stream.DRAFT, rows, pos, 9)
    assert torch.equal(as_int, as_tensor)


def test_uniform_scalar_is_the_first_column_and_gumbel_is_its_transform():
    rows, pos = torch.arange(5)[:, None], torch.arange(3)[None, :]
    full = rng.uniform(4, 1, Stream.ACCEPT, rows, pos, 6)
    assert torch.equal(rng.uniform_scalar(4, 1, Stream.ACCEPT, rows, pos), full[..., 0])
    g = rng.gumbel(4, 1, Stream.ACCEPT, rows, pos, 6)
    assert torch.equal(g, -torch.log(-torch.log(full)))


@pytest.mark.parametrize(
    "seed, offset, exc, match",
    [
        (-1, 0, ValueError, "seed"),
        (1 << 64, 0, ValueError, "seed"),
        (0, 1 << 48, ValueError, "offset"),
        (0, -3, ValueError, "offset"),
        (1.5, 0, TypeError, "seed"),
        (True, 0, TypeError, "seed"),
        (torch.tensor(1, dtype=torch.int32), 0, TypeError, "seed"),
        (0, torch.tensor([1, 2]), ValueError, "offset"),
    ],
)
def test_bad_seed_or_offset_is_rejected(seed, offset, exc, match):
    with pytest.raises(exc, match=match):
        rng.uniform(seed, offset, Stream.DRAFT, torch.tensor([0]), torch.tensor([0]), 4)


def test_bad_stream_and_vocab_are_rejected():
    with pytest.raises(TypeError, match="stream"):
        rng.uniform(0, 0, 1, torch.tensor([0]), torch.tensor([0]), 4)
    with pytest.raises(ValueError, match="vocab_size"):
        rng.uniform(0, 0, Stream.DRAFT, torch.tensor([0]), torch.tensor([0]), 0)


def test_noise_unused_only_for_all_greedy_cpu_rows():
    assert rng.noise_unused(torch.zeros(3))
    assert not rng.noise_unused(torch.tensor([0.0, 0.7, 0.0]))
    assert not rng.noise_unused(torch.full((2,), 1.0))
