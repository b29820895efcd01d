"""Output files of an evaluation: results.md in the paper's table layouts, JSON-safe results, side-by-side videos.

Used by training/evaluate.py; see docs/evaluate.md for what each figure means.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from training import metrics as M


def to_pixels(x: np.ndarray, encoder_json: str) -> np.ndarray:
    """Case values (T,C,h,w) -> pixels (T,3,H,W) float32 in [-1,1]; identity/pixel data pass through."""
    if not encoder_json or json.loads(encoder_json).get("name") == "identity":
        return np.asarray(x, dtype=np.float32)
    from training.probe import decode_to_unit

    return decode_to_unit(x, encoder_json)


def _fmt(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}" if isinstance(x, float) else str(x)


def results_markdown(results: dict) -> str:
    """Paper Table 1 / 2 / 3 layouts for one model."""
    m, mc = results["metrics"], results["model_config"]
    head = ("| Structure | Context length | Compression | Budget | " + " | ".join(M.GAP_BINS) + " | cases |\n"
            "|---|---|---|---|" + "---|" * (len(M.GAP_BINS) + 1) + "\n")
    budget = mc["budget"] if mc["compression"] != "none" else "N/A"
    row = f"| {mc['memory']} | {mc['memory_length']} | {mc['compression']} | {budget} | "
    counts = " / ".join(str(results["cases_per_bin"].get(b, 0)) for b in M.GAP_BINS)
    probe = results["probe"]
    lines = [f"# Evaluation of `{results['checkpoint']}` (step {results['step']})", "",
             f"Sampler {results['config']['sampler']} ({results['config']['steps']} steps), "
             f"{results['num_retrieval_cases']} retrieval cases, {results['num_rollout_cases']} rollout cases.", "",
             "## Retrieval rate by gap (paper Table 1 layout)", "", head
             + row + " | ".join(_fmt(m[f"retrieval/{b}"]) for b in M.GAP_BINS) + f" | {counts} |", "",
             f"Scene probe held-out accuracy on real frames: {_fmt(m['probe_accuracy'])} "
             f"on the judged heads ({', '.join(probe.get('judge_heads', [])) or '-'}; per head: "
             + ", ".join(f"{h} {_fmt(a)}" for h, a in probe.get("head_accuracy", {}).items()) + "); probe_valid: "
             f"{str(results['probe_valid']).lower()} (needs >= 0.95 for the retrieval figures to count"
             + (")." if results["probe_valid"] else "; **these retrieval figures do NOT count**).") , "",
             "## SSIM of generated vs ground-truth revisit frames (paper Table 2 layout)", "", head
             + row + " | ".join(_fmt(m[f"ssim/{b}"]) for b in M.GAP_BINS) + f" | {counts} |", "",
             "## Error accumulation: PSNR (dB) by 16-frame segment (paper Tables 3-4 layout)", "",
             "| Budget | " + " | ".join(M.SEGMENTS) + " | Max. PSNR decay |", "|---|" + "---|" * (len(M.SEGMENTS) + 1),
             f"| {budget} | " + " | ".join(_fmt(m[f"psnr/{s}"]) for s in M.SEGMENTS) + f" | {_fmt(m['psnr_max_decay'])} |",
             "", "## Sampling cost", "", "| sec / frame | FLOPs / frame | device |", "|---|---|---|",
             f"| {_fmt(m['sec_per_frame'])} | {m['flops_per_frame']:.3e} | {results['device']} |", ""]
    return "\n".join(lines)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return _json_safe(obj.item())
    return obj


def save_videos(cases, generated, out_dir: Path, prefix: str, count: int, context: int = 16) -> list[tuple[np.ndarray, str]]:
    """Side-by-side ground truth | generated with `context` memory frames first; returns [(frames, name)]."""
    from training.media import side_by_side, to_uint8, write_gif, write_mp4

    videos = []
    for i, (case, gen) in enumerate(list(zip(cases, generated))[:count]):
        ctx = case.memory_x[case.memory_mask][-context:]
        gt = to_uint8(to_pixels(np.concatenate([ctx, case.target_x]), case.encoder))
        gn = to_uint8(to_pixels(np.concatenate([ctx, gen]), case.encoder))
        frames = side_by_side(gt, gn, num_context=len(ctx))
        name = f"{prefix}{i:02d}-{case.gap_bin or 'rollout'}"
        write_gif(frames, out_dir / f"{name}.gif")
        write_mp4(frames, out_dir / f"{name}.mp4")
        videos.append((frames, name))
    return videos
