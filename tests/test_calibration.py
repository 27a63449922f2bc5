"""ECE, AUROC and Sequential Temperature Scaling."""

from __future__ import annotations

import json

import pytest
import torch

from dspark_sgl import calibration
from dspark_sgl.calibration import StsCalibration


def test_ece_hand_computed():
    pred = torch.tensor([0.11, 0.13, 0.92, 0.97, 1.0])
    label = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0])
    # bins of width 0.05: {0.11, 0.13}, {0.92}, {0.97, 1.0} (1.0 falls in the last bin)
    expected = (abs(0.24 - 1) + abs(0.92 - 1) + abs(1.97 - 1)) / 5
    assert calibration.expected_calibration_error(pred, label) == pytest.approx(expected, abs=1e-6)
    assert calibration.expected_calibration_error(pred, label, bins=1) == pytest.approx(
        abs(3.13 - 3) / 5, abs=1e-6
    )


def test_auroc_matches_pairwise_counting_with_ties():
    gen = torch.Generator().manual_seed(0)
    score = torch.randint(0, 6, (300,), generator=gen).float()
    label = (torch.rand(300, generator=gen) < torch.sigmoid(score - 2.5)).float()
    pos, neg = score[label == 1], score[label == 0]
    brute = ((pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()).mean()
    assert calibration.auroc(score, label) == pytest.approx(float(brute))
    with pytest.raises(ValueError, match="both"):
        calibration.auroc(score, torch.ones(300))


def synthetic_rounds(n: int, gamma: int, overconfidence: float, seed: int):
    """True conditional acceptance logits, accepted lengths drawn from them, inflated logits."""
    gen = torch.Generator().manual_seed(seed)
    z_true = 1.2 - 0.25 * torch.arange(gamma) + torch.randn(n, gamma, generator=gen)
    accepted_each = torch.rand(n, gamma, generator=gen) < torch.sigmoid(z_true)
    accepted_len = accepted_each.int().cumprod(dim=1).sum(dim=1)
    return overconfidence * z_true, accepted_len


def test_sts_cuts_ece_at_least_threefold_and_keeps_auroc():
    gamma = 5
    fit_logits, fit_len = synthetic_rounds(20000, gamma, 3.0, seed=1)
    test_logits, test_len = synthetic_rounds(20000, gamma, 3.0, seed=2)
    temperatures = calibration.fit_sts(fit_logits, fit_len)
    assert temperatures.shape == (gamma,) and temperatures.dtype == torch.float32
    assert bool((temperatures > 1.5).all())  # over-confident logits need T > 1
    report = calibration.sts_report(test_logits, test_len, temperatures)
    before = sum(report["ece_before"]) / gamma
    after = sum(report["ece_after"]) / gamma
    assert after * 3 <= before, (before, after)
    assert report["auroc_before"] == report["auroc_after"]
    assert all(0.5 < a < 1 for a in report["auroc_before"])


def test_sts_uses_only_verified_rounds_per_position():
    logits, accepted = synthetic_rounds(4000, 3, 2.0, seed=3)
    verified = torch.full((4000,), 3)
    verified[:2000] = 1
    accepted = torch.minimum(accepted, verified)
    temps = calibration.fit_sts(logits, accepted, verified_len=verified)
    temps_sub = calibration.fit_sts(logits[2000:], accepted[2000:])
    assert temps[1:].tolist() != [1.0, 1.0]
    with pytest.raises(ValueError, match="verified_len"):
        calibration.fit_sts(logits, torch.full((4000,), 3), verified_len=verified)
    assert temps_sub.shape == (3,)


def test_apply_sts():
    z = torch.tensor([[2.0, -1.0, 4.0]])
    t = torch.tensor([2.0, 0.5, 4.0])
    assert torch.allclose(calibration.apply_sts(z, t), torch.sigmoid(z / t))
    with pytest.raises(ValueError, match="temperatures"):
        calibration.apply_sts(z, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="last dim"):
        calibration.apply_sts(z, torch.tensor([1.0, 1.0]))


def test_sts_file_round_trip_in_sglang_format(tmp_path):
    sts = StsCalibration(
        [1.5, 2.0, 2.5], dataset="gsm8k", num_samples=128, ece_before=[0.05], ece_after=[0.01]
    )
    path = tmp_path / "sts.json"
    sts.save(path)
    data = json.loads(path.read_text())
    assert data == {
        "temperatures": [1.5, 2.0, 2.5],
        "dataset": "gsm8k",
        "num_samples": 128,
        "ece_before": [0.05],
        "ece_after": [0.01],
    }
    assert StsCalibration.load(path) == sts
    assert json.loads(StsCalibration([1.0]).to_json()) == {"temperatures": [1.0]}
    assert torch.equal(sts.tensor(), torch.tensor([1.5, 2.0, 2.5]))


@pytest.mark.parametrize(
    "text, match",
    [
        ("{}", "temperatures"),
        ('{"temperatures": []}', "at least one"),
        ('{"temperatures": [0.0]}', "> 0"),
        ('{"temperatures": [1.0], "extra": 1}', "unknown"),
        ("[1]", "temperatures"),
        ("nope", "JSON"),
    ],
)
def test_bad_sts_files(text, match):
    with pytest.raises(ValueError, match=match):
        StsCalibration.from_json(text)


@pytest.mark.parametrize(
    "pred, label, match",
    [
        (torch.tensor([0.5, 1.5]), torch.tensor([1.0, 0.0]), "pred"),
        (torch.tensor([0.5, float("nan")]), torch.tensor([1.0, 0.0]), "pred"),
        (torch.tensor([0.5, 0.2]), torch.tensor([1.0]), "shape"),
        (torch.tensor([0.5]), torch.tensor([2.0]), "label"),
    ],
)
def test_ece_bad_input(pred, label, match):
    with pytest.raises(ValueError, match=match):
        calibration.expected_calibration_error(pred, label)


def test_fit_sts_bad_input():
    with pytest.raises(ValueError, match="conf_logits"):
        calibration.fit_sts(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="accepted_len"):
        calibration.fit_sts(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="accepted_len"):
        calibration.fit_sts(torch.zeros(2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="accepted_len"):
        calibration.fit_sts(torch.zeros(2, 2), torch.tensor([0, 3]))
