"""Quality measures of generated frames against ground truth (paper Sec. 5, Tables 1-4, App. H, I).

All frames are float (T,C,H,W) pixels in [-1,1] (decode latents first).

- Retrieval (Table 1): per revisit frame, the scene probe's labels of the GENERATED frame are compared with
  the ground-truth labels (`target_scene`) on every head the probe reads (-1 = "none in view" is a label
  like any other; heads the probe dropped are ignored). A frame matches when all those heads agree. A case
  succeeds when more than half of its revisit frames match (strict majority). The rate of a gap bin is the
  share of its cases that succeed.
- SSIM (Table 2): torchmetrics' Gaussian SSIM (11x11, sigma 1.5) on pixels mapped to [0,1] (data range 1;
  SSIM's luminance term is not shift invariant, and on signed [-1,1] pixels two negative terms can multiply
  into a high score for an inverted image), of generated vs
  ground-truth revisit frames, averaged over the case's revisit frames, then over the bin's cases.
- PSNR by segment (Tables 3-4): per-frame PSNR (data range 2), averaged over the frames of each 16-frame
  segment of a 64-frame generation, then over cases; identical frames give PSNR_CAP_DB instead of inf.
  Max PSNR decay (App. H) = PSNR(0-16) - PSNR(48-64).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

SEGMENT_LENGTH = 16
NUM_SEGMENTS = 4
SEGMENTS = tuple(f"{i * SEGMENT_LENGTH}-{(i + 1) * SEGMENT_LENGTH}" for i in range(NUM_SEGMENTS))
PSNR_CAP_DB = 100.0  # PSNR of identical frames (MSE 0) is reported as this, not inf
DATA_RANGE = 2.0     # pixels in [-1,1]
Z95 = 1.959963984540054  # two-sided 95% normal quantile


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)


def _check_pair(gen: torch.Tensor, gt: torch.Tensor) -> None:
    if gen.shape != gt.shape or gen.ndim != 4:
        raise ValueError(f"generated {tuple(gen.shape)} and ground truth {tuple(gt.shape)} must both be (T,C,H,W)")


def psnr_per_frame(generated, ground_truth, data_range: float = DATA_RANGE, cap_db: float = PSNR_CAP_DB) -> np.ndarray:
    """(T,C,H,W) x2 -> (T,) PSNR in dB, capped at `cap_db` (MSE 0)."""
    gen, gt = _as_tensor(generated), _as_tensor(ground_truth)
    _check_pair(gen, gt)
    mse = ((gen.double() - gt.double()) ** 2).flatten(1).mean(1).numpy()
    with np.errstate(divide="ignore"):
        psnr = 10.0 * np.log10(data_range ** 2 / mse)
    return np.minimum(psnr, cap_db)


def ssim_per_frame(generated, ground_truth) -> np.ndarray:
    """(T,C,H,W) x2 in [-1,1] -> (T,) SSIM (torchmetrics on [0,1] pixels; window shrunk for frames < 11 px)."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    gen, gt = _as_tensor(generated), _as_tensor(ground_truth)
    _check_pair(gen, gt)
    gen, gt = ((gen + 1) / 2).clamp(0, 1), ((gt + 1) / 2).clamp(0, 1)
    k = min(11, min(gen.shape[-2:]) - (1 - min(gen.shape[-2:]) % 2))  # odd, <= frame size
    return ssim(gen, gt, data_range=1.0, kernel_size=k, reduction="none").numpy().astype(np.float64)


def frames_match(pred_labels: np.ndarray, true_labels: np.ndarray, heads: Sequence[int] | None = None) -> np.ndarray:
    """(n,S) predicted vs (n,S) ground-truth labels -> (n,) bool: every compared head agrees."""
    pred, true = np.asarray(pred_labels), np.asarray(true_labels)
    if pred.shape != true.shape:
        raise ValueError(f"label shapes differ: predicted {pred.shape}, ground truth {true.shape}")
    cols = list(range(true.shape[1])) if heads is None else list(heads)
    return (pred[:, cols] == true[:, cols]).all(axis=1)


def case_retrieved(pred_labels: np.ndarray, true_labels: np.ndarray, heads: Sequence[int] | None = None) -> bool:
    """A case retrieves its scene when a strict majority of its revisit frames match (see module docstring)."""
    match = frames_match(pred_labels, true_labels, heads)
    if match.size == 0:
        raise ValueError("case has no revisit frames to judge")
    return bool(match.sum() * 2 > match.size)


def nearest_view_retrieved(generated: np.ndarray, truth: np.ndarray, distractors: np.ndarray) -> bool:
    """Exact-revisit judge: (C,H,W) generated frame, (C,H,W) ground truth, (K,C,H,W) other views of the episode
    (memory frames of other poses) -> True when the ground truth is strictly the nearest of them all in mean
    squared error: the model produced *that* view rather than another one it had seen."""
    gen = np.asarray(generated, np.float64)
    d_true = float(((gen - truth) ** 2).mean())
    if len(distractors) == 0:
        return True
    d_other = ((np.asarray(distractors, np.float64) - gen[None]) ** 2).reshape(len(distractors), -1).mean(1)
    return bool(d_true < d_other.min())


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a rate k/n (Wilson 1927); (nan, nan) for n = 0."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_summary(outcomes: Sequence[bool]) -> dict:
    """{rate, n, successes, lo, hi}: a success rate with its 95% Wilson interval (rate NaN for no cases)."""
    n, k = len(outcomes), int(sum(bool(o) for o in outcomes))
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n if n else math.nan, "n": n, "successes": k, "lo": lo, "hi": hi}


def mean_summary(values: Sequence[float]) -> dict:
    """{mean, n, lo, hi}: a mean with a 95% normal-approximation interval (mean +- 1.96 sd / sqrt(n))."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"mean": math.nan, "n": 0, "lo": math.nan, "hi": math.nan}
    half = Z95 * v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else math.nan
    return {"mean": float(v.mean()), "n": int(v.size), "lo": float(v.mean() - half), "hi": float(v.mean() + half)}


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts of a paired comparison (cases only A got right,
    cases only B got right): 2 * P(Binomial(a_only + b_only, 1/2) <= min), capped at 1; 1.0 with no discordant pair."""
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def psnr_by_segment(generated, ground_truth, segment_length: int = SEGMENT_LENGTH,
                    num_segments: int = NUM_SEGMENTS) -> dict[str, float]:
    """(T,C,H,W) with T >= segment_length*num_segments -> {"0-16": dB, ..., "48-64": dB} (mean per-frame PSNR)."""
    psnr = psnr_per_frame(generated, ground_truth)
    need = segment_length * num_segments
    if len(psnr) < need:
        raise ValueError(f"PSNR by segment needs {need} generated frames, got {len(psnr)}")
    bounds = [(i * segment_length, (i + 1) * segment_length) for i in range(num_segments)]
    return {f"{start}-{end}": float(psnr[start:end].mean()) for start, end in bounds}


def max_psnr_decay(segments: dict[str, float]) -> float:
    """App. H: PSNR of the first segment minus PSNR of the last (dB; larger = faster error accumulation)."""
    keys = list(segments)
    return float(segments[keys[0]] - segments[keys[-1]])
