"""The evaluation's instrument: per-case judges, the generators that need no model (oracles), and how per-case
outcomes become rates with intervals and paired comparisons. Plain numpy/torch; used by training.evaluate.

    frames = oracle_frames(cases, "copy", memory_length=16)         # [(n,C,H,W) model space] per case
    rows = judge_cases(cases, frames, probe, heads)                 # one dict per case
    table = summarise(rows)                                         # rates by kind and bin of d, with 95% intervals
    pairs = paired(rows_long, rows_short)                           # discordant counts + exact McNemar p by bin

Judges (docs/evaluate.md, "Metric spec"):
  revisit cases (a return to a room): the scene probe reads each judged frame of the generated video; a frame
      matches when every judged label equals the ground truth's; the case is retrieved when a strict majority of
      its judged frames match.
  exact cases (a return to an earlier pose, pixel-identical frame): the generated judged frame is retrieved when
      the ground truth is strictly its nearest view in mean squared error among the ground truth and every stored
      memory frame of another pose (other views the episode showed; frames with the ground truth's pixels are not
      counted as others). SSIM and PSNR of that frame are reported too: against an exact revisit they are valid.
Oracles (calibration rows): ground_truth (the ceiling the judge allows), copy at memory L (a perfect memory of the
last L frames: the judged frame's pose, else its labels, found in those frames and copied; else the last frame),
last_frame (the last real memory frame repeated: what continuity alone gets), other_episode (the ground truth of
another episode's case: chance).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pipeline.eval_cases import GAP_BINS, KINDS, EvalCase, d_bin, gap_bin
from training import metrics as M
from training.eval_report import to_pixels

ORACLES = ("ground_truth", "copy", "last_frame", "other_episode")
ORACLE_ROWS = {"ground_truth": "ground truth", "copy": "copy m={L}", "last_frame": "repeat last frame",
               "other_episode": "other episode"}   # row names in every table
GROUND_TRUTH_FLOOR = 0.9   # a bin whose ground-truth oracle scores below this cannot be judged: not reported
POSE_ATOL = 1e-5


# ---------------------------------------------------------------------------------------------- oracles

def _find(case: EvalCase, j: int, first: int) -> int:
    """Memory index to copy for judged frame j from memory indices >= first: same pose, else same four labels,
    else same room; -1 when none (latest match wins)."""
    mask = case.memory_mask.copy()
    mask[:first] = False
    idx = np.flatnonzero(mask)[::-1]
    if not len(idx):
        return -1
    poses, scene = case.memory_poses[idx], case.memory_scene[idx]
    for hit in (np.all(np.abs(poses - case.target_poses[j]) <= POSE_ATOL, axis=1),
                np.all(scene == case.target_scene[j], axis=1), scene[:, 0] == case.target_scene[j, 0]):
        if hit.any():
            return int(idx[np.argmax(hit)])
    return -1


def _copy(case: EvalCase, memory_length: int) -> np.ndarray:
    memory = case.memory_x
    first = len(memory) - memory_length
    real = np.flatnonzero(case.memory_mask)
    last = memory[real[-1]] if len(real) and real[-1] >= first else np.zeros_like(memory[0])
    out = np.repeat(last[None], len(case.actions), 0)
    for j in np.flatnonzero(case.judged):
        i = _find(case, int(j), first)
        if i >= 0:
            out[j] = memory[i]
    return out


def oracle_frames(cases: Sequence[EvalCase], name: str, memory_length: int = 0) -> list[np.ndarray]:
    """Generated frames (n,C,H,W) model space per case for oracle `name` (see module docstring)."""
    if name not in ORACLES:
        raise ValueError(f"--oracle {name!r}: valid oracles are {list(ORACLES)}")
    if name == "ground_truth":
        return [c.target_x for c in cases]
    if name == "copy":
        if memory_length < 1:
            raise ValueError("--oracle copy needs a memory length >= 1 (--memory-lengths)")
        return [_copy(c, memory_length) for c in cases]
    if name == "last_frame":
        return [np.repeat(c.memory_x[np.flatnonzero(c.memory_mask)[-1]][None], len(c.actions), 0) for c in cases]
    out = []
    for i, c in enumerate(cases):          # the case half the file away that comes from another episode
        order = [(i + len(cases) // 2 + k) % len(cases) for k in range(len(cases))]
        j = next((j for j in order if cases[j].episode_id != c.episode_id), i)
        other = cases[j].target_x
        out.append(other[np.arange(len(c.actions)) % len(other)])
    return out


# ---------------------------------------------------------------------------------------------- judging

def _distractors(case: EvalCase, j: int, truth_px: np.ndarray) -> np.ndarray:
    """Memory frames (pixels) of poses other than judged frame j's, without frames equal to the ground truth."""
    other = case.memory_mask & ~np.all(np.abs(case.memory_poses - case.target_poses[j]) <= POSE_ATOL, axis=1)
    px = to_pixels(case.memory_x[other], case.encoder)
    same = ((px - truth_px[None]) ** 2).reshape(len(px), -1).mean(1) == 0
    return px[~same]


def judge_cases(cases: Sequence[EvalCase], generated: Sequence[np.ndarray], probe=None,
                probe_heads: Sequence[str] = ()) -> list[dict]:
    """One row per case: kind, d, bin, dbin, retrieved (bool; None when its judge is missing), ssim and psnr
    (exact cases), probe_reads_truth (revisit cases with a probe)."""
    from pipeline.schema import SCENE_LABELS
    from training.probe import predict_labels

    heads = [SCENE_LABELS.index(h) for h in probe_heads]
    rows, probe_jobs = [], []
    for i, (case, gen) in enumerate(zip(cases, generated)):
        judged = np.flatnonzero(case.judged)
        row = {"case": i, "episode_id": case.episode_id, "kind": case.kind, "d": int(case.d),
               "bin": gap_bin(case.d) or "", "dbin": d_bin(case.d) or "", "retrieved": None}
        gen_px, gt_px = to_pixels(gen[judged], case.encoder), to_pixels(case.target_x[judged], case.encoder)
        if case.kind == "exact":
            j = int(judged[0])
            row["retrieved"] = M.nearest_view_retrieved(gen_px[0], gt_px[0], _distractors(case, j, gt_px[0]))
            row["ssim"] = float(M.ssim_per_frame(gen_px, gt_px).mean())
            row["psnr"] = float(M.psnr_per_frame(gen_px, gt_px).mean())
        elif probe is not None and heads:
            probe_jobs.append((row, gen_px, gt_px, case.target_scene[judged]))
        rows.append(row)
    if probe_jobs:                                  # one probe pass over every judged frame
        labels = predict_labels(probe, np.concatenate([np.concatenate([g, t]) for _, g, t, _ in probe_jobs]))
        at = 0
        for row, gen_px, _gt_px, truth in probe_jobs:
            n = len(gen_px)
            row["retrieved"] = M.case_retrieved(labels[at:at + n], truth, heads)
            row["probe_reads_truth"] = M.case_retrieved(labels[at + n:at + 2 * n], truth, heads)
            at += 2 * n
    return rows


# ---------------------------------------------------------------------------------------------- aggregation

def summarise(rows: Sequence[dict]) -> dict:
    """{"retrieval": {kind: {bin: rate_summary}}, "curve": {kind: {dbin: rate_summary}},
    "ssim": {bin: mean_summary}, "psnr": {bin: mean_summary}} over the judged rows (exact cases for SSIM/PSNR)."""
    out: dict = {"retrieval": {}, "curve": {}, "ssim": {}, "psnr": {}}
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind and r["retrieved"] is not None]
        if not mine:
            continue
        out["retrieval"][kind] = {b: M.rate_summary([r["retrieved"] for r in mine if r["bin"] == b]) for b in GAP_BINS}
        dbins = sorted({r["dbin"] for r in mine if r["dbin"]}, key=lambda s: int(s.split("-")[0]))
        out["curve"][kind] = {b: M.rate_summary([r["retrieved"] for r in mine if r["dbin"] == b]) for b in dbins}
    exact = [r for r in rows if r["kind"] == "exact"]
    for key in ("ssim", "psnr"):
        out[key] = {b: M.mean_summary([r[key] for r in exact if r["bin"] == b]) for b in GAP_BINS}
    return out


def rates_by_group(rows: Sequence[dict], groups: dict[str, tuple[int, int]]) -> dict:
    """{kind: {group: rate_summary}} over the judged rows, grouped by d (lo < d <= hi), e.g. coverage_groups."""
    out: dict = {}
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind and r["retrieved"] is not None]
        if mine:
            out[kind] = {g: M.rate_summary([r["retrieved"] for r in mine if lo < r["d"] <= hi])
                         for g, (lo, hi) in groups.items()}
    return out


def pooled_rate(rows: Sequence[dict], bin_name: str, kinds: Sequence[str]) -> dict:
    """rate_summary over the judged rows of `kinds` in one bin of d."""
    return M.rate_summary([r["retrieved"] for r in rows if r["kind"] in kinds and r["bin"] == bin_name
                           and r["retrieved"] is not None])


def coverage_groups(long: int, short: int) -> dict[str, tuple[int, int]]:
    """Bins of d (lo < d <= hi) by which of two memory lengths holds the source: both, only the longer, neither."""
    return {f"both hold (d <= {short})": (0, short), f"only m={long} holds ({short} < d <= {long})": (short, long),
            f"neither holds (d > {long})": (long, 10**9)}


def paired(rows_a: Sequence[dict], rows_b: Sequence[dict], groups: dict[str, tuple[int, int]] | None = None) -> dict:
    """Paired comparison of two generators on the same cases (same noise): per kind and group of d (default the
    Table 1 bins; lo < d <= hi), the number of pairs, the discordant counts (only A retrieved / only B retrieved)
    and the exact McNemar p-value."""
    if [r["case"] for r in rows_a] != [r["case"] for r in rows_b]:
        raise ValueError("paired comparison needs the two generators' rows on the same cases, in the same order")
    groups = groups or GAP_BINS
    out: dict = {}
    for kind in KINDS:
        for name, (lo, hi) in groups.items():
            pairs = [(x["retrieved"], y["retrieved"]) for x, y in zip(rows_a, rows_b) if x["kind"] == kind
                     and lo < x["d"] <= hi and x["retrieved"] is not None and y["retrieved"] is not None]
            if not pairs:
                continue
            a_only = sum(1 for x, y in pairs if x and not y)
            b_only = sum(1 for x, y in pairs if y and not x)
            out.setdefault(kind, {})[name] = {"n": len(pairs), "a_only": a_only, "b_only": b_only,
                                              "a_rate": sum(x for x, _ in pairs) / len(pairs),
                                              "b_rate": sum(y for _, y in pairs) / len(pairs),
                                              "p": M.mcnemar_exact(a_only, b_only)}
    return out


def judge_valid(ground_truth_summary: dict) -> dict:
    """{kind: {bin: bool}}: the judge can read the truth in that bin (ground-truth oracle rate >= the floor)."""
    return {kind: {b: (not math.isnan(s["rate"])) and s["rate"] >= GROUND_TRUTH_FLOOR for b, s in bins.items()}
            for kind, bins in ground_truth_summary["retrieval"].items()}
