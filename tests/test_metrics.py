"""training.metrics on hand-made frames and labels with known answers."""
import math

import numpy as np
import pytest
import torch

from training import metrics as M


def _frames(t=4, seed=0, size=16):
    return torch.rand(t, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_psnr_known_values():
    gt = _frames()
    assert np.all(M.psnr_per_frame(gt, gt) == M.PSNR_CAP_DB)  # identical: the cap, not inf
    shifted = gt + 0.1  # MSE 0.01 on a data range of 2: 10 log10(4 / 0.01)
    assert M.psnr_per_frame(shifted, gt) == pytest.approx([10 * math.log10(400)] * 4)
    # 64 frames whose error grows by segment: PSNR falls segment by segment, decay = first - last
    gt64 = _frames(64, size=8)
    err = torch.tensor([0.05, 0.1, 0.2, 0.4]).repeat_interleave(16)[:, None, None, None]
    seg = M.psnr_by_segment(gt64 + err, gt64)
    assert list(seg) == list(M.SEGMENTS)
    assert seg["0-16"] == pytest.approx(10 * math.log10(4 / 0.05 ** 2))
    assert seg["0-16"] > seg["16-32"] > seg["32-48"] > seg["48-64"]
    assert M.max_psnr_decay(seg) == pytest.approx(20 * math.log10(0.4 / 0.05))
    with pytest.raises(ValueError, match="needs 64"):
        M.psnr_by_segment(gt, gt)


def test_ssim_identical_inverted_and_unrelated():
    gt = _frames()
    assert M.ssim_per_frame(gt, gt) == pytest.approx([1.0] * 4)
    assert (M.ssim_per_frame(-gt, gt) < 0).all()  # inverted: anti-correlated (not a high score on [-1,1] pixels)
    unrelated = M.ssim_per_frame(_frames(seed=1), gt)
    assert (np.abs(unrelated) < 0.2).all()
    assert M.ssim_per_frame(_frames(2, size=6), _frames(2, size=6)).shape == (2,)  # window shrinks to fit
    with pytest.raises(ValueError, match="must both be"):
        M.ssim_per_frame(gt, gt[:2])


def test_retrieval_rules():
    truth = np.array([[3, 1, 2, -1]] * 4, np.int16)
    assert M.case_retrieved(truth.copy(), truth)  # identical labels: retrieved
    other_room = truth.copy()
    other_room[:, 0] = 5
    assert not M.case_retrieved(other_room, truth)  # a different room: not retrieved
    painting = truth.copy()
    painting[:, 3] = 7  # a painting where the ground truth shows none: -1 is a label like any other
    assert not M.case_retrieved(painting, truth)
    assert M.case_retrieved(painting, truth, heads=[0, 1, 2])  # heads the probe does not read are ignored
    half = truth.copy()
    half[:2, 0] = 5
    assert not M.case_retrieved(half, truth)  # 2 of 4 is not a strict majority
    half[1, 0] = 3
    assert M.case_retrieved(half, truth)  # 3 of 4 is


def test_bins():
    assert [M.gap_bin(g) for g in (0, 15, 16, 47, 48, 111, 112)] == ["0-16", "0-16", "16-48", "16-48", "48-112",
                                                                     "48-112", None]
    rates = M.mean_by_bin([1, 0, 1, 1], ["0-16", "0-16", "16-48", "16-48"])
    assert rates["0-16"] == 0.5 and rates["16-48"] == 1.0 and math.isnan(rates["48-112"])
    with pytest.raises(ValueError, match="unknown"):
        M.mean_by_bin([1], ["0-99"])
