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
    # constant frames: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1), C1 = 0.01^2, on [0, 1] pixels
    a, b = torch.full((1, 3, 16, 16), 0.0), torch.full((1, 3, 16, 16), -0.5)       # 0.5 and 0.25 on [0, 1]
    assert M.ssim_per_frame(b, a)[0] == pytest.approx((2 * 0.5 * 0.25 + 1e-4) / (0.25 + 0.0625 + 1e-4), abs=1e-5)
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


def test_rates_intervals_and_paired_tests_known_values():
    # Wilson 95% interval of 5/10 (Wilson 1927; also Newcombe 1998, Table I): 0.2366 .. 0.7634
    lo, hi = M.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert M.wilson_interval(0, 10)[0] == 0.0 and M.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in M.wilson_interval(0, 0))
    s = M.rate_summary([True, False, True, True])
    assert (s["rate"], s["n"], s["successes"]) == (0.75, 4, 3) and s["lo"] < 0.75 < s["hi"]
    # exact McNemar: 7 vs 1 discordant pairs -> 2 * (1 + 8) / 2^8 = 0.0703; 6 vs 0 -> 2 / 64 = 0.03125
    assert M.mcnemar_exact(7, 1) == pytest.approx(0.0703125) and M.mcnemar_exact(0, 6) == pytest.approx(0.03125)
    assert M.mcnemar_exact(0, 0) == 1.0 and M.mcnemar_exact(3, 3) == 1.0
    m = M.mean_summary([1.0, 2.0, 3.0])
    assert m["mean"] == 2.0 and m["hi"] - m["mean"] == pytest.approx(1.959964 * 1.0 / math.sqrt(3), rel=1e-5)


def test_nearest_view_judge():
    rng = np.random.default_rng(0)
    truth, other = rng.uniform(-1, 1, (2, 3, 8, 8))
    assert M.nearest_view_retrieved(truth, truth, other[None])             # the view itself
    assert not M.nearest_view_retrieved(other, truth, other[None])         # a copy of another view
    assert M.nearest_view_retrieved(truth + 0.1, truth, other[None])       # near the truth
    assert not M.nearest_view_retrieved(0.5 * (truth + other), truth, np.stack([other, 0.5 * (truth + other)]))
