"""Output files of an evaluation: results.md in the paper's table layouts with the calibration rows beside the
model's, PNG plots with intervals, side-by-side videos of a retrieved and a missed case.

Used by training/evaluate.py; see docs/evaluate.md for what each figure means.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from training import metrics as M

BINS = ("0-16", "16-48", "48-112")
KIND_TITLES = {"revisit": "room revisits, judged by the scene probe",
               "exact": "exact revisits (same pose, identical frame), judged by nearest view"}


def to_pixels(x: np.ndarray, encoder_json: str) -> np.ndarray:
    """Case values (T,C,h,w) -> pixels (T,3,H,W) float32 in [-1,1]; identity/pixel data pass through."""
    if not encoder_json or json.loads(encoder_json).get("name") == "identity":
        return np.asarray(x, dtype=np.float32)
    from training.probe import decode_to_unit

    return decode_to_unit(x, encoder_json)


def _fmt(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}" if isinstance(x, float) else str(x)


def _rate(s: dict, valid: bool = True) -> str:
    if not s or not s["n"]:
        return "-"
    cell = f"{s['rate']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}] ({s['n']})"
    return cell if valid else f"~~{cell}~~"


def _mean(s: dict) -> str:
    return "-" if not s or not s["n"] else f"{s['mean']:.3g} [{_fmt(s['lo'])}, {_fmt(s['hi'])}] ({s['n']})"


def _retrieval_tables(results: dict) -> list[str]:
    lines, valid = [], results.get("judge_valid", {})
    for kind, title in KIND_TITLES.items():
        rows = {n: r["retrieval"][kind] for n, r in results["rows"].items() if kind in r["retrieval"]}
        if not rows:
            continue
        lines += [f"### Retrieval rate by d, {title}", "",
                  "Rate [95% Wilson interval] (cases). d = frames from the first generated frame back to the last "
                  "sighting; a memory of L frames holds it iff d <= L.", "",
                  "| generator | " + " | ".join(BINS) + " |", "|---|" + "---|" * len(BINS)]
        for name, bins in rows.items():
            bold = name in results["model_rows"]
            label = f"**{name}**" if bold else name
            lines.append(f"| {label} | " + " | ".join(_rate(bins[b], valid.get(kind, {}).get(b, True)) for b in BINS) + " |")
        bad = [b for b in BINS if not valid.get(kind, {}).get(b, True)]
        if bad:
            lines.append(f"\nStruck out: bins {', '.join(bad)}, where the judge reads the ground truth itself below "
                         f"0.9: not reported.")
        if kind == "revisit" and not results["probe_valid"]:
            lines.append(f"\n**Scene probe accuracy {_fmt(results['metrics']['probe_accuracy'])} < 0.95: the room-"
                         f"revisit rates above are not valid.**")
        lines.append("")
    return lines


def _paired_table(results: dict) -> list[str]:
    if not results["paired"]:
        return []
    lines = ["### Paired comparisons (same cases, same noise)", "",
             "By which memory holds the source (d), then by Table 1 bin. A-only / B-only = cases only A / only B "
             "retrieved; p = exact two-sided McNemar.", "",
             "| A vs B | kind | d | pairs | A rate | B rate | A-only | B-only | p |", "|---|---|---|---|---|---|---|---|---|"]
    for pair in results["paired"]:
        for key in ("by_coverage", "by_bin"):
            for kind, bins in pair.get(key, {}).items():
                for b, s in bins.items():
                    lines.append(f"| {pair['a']} vs {pair['b']} | {kind} | {b} | {s['n']} | {s['a_rate']:.2f} | "
                                 f"{s['b_rate']:.2f} | {s['a_only']} | {s['b_only']} | {s['p']:.3g} |")
    return lines + [""]


def _loss_table(results: dict) -> list[str]:
    table = results.get("denoising_error") or {}
    if not table:
        return []
    lines = ["### Loss-level memory effect: x0 error on the judged frames (same noise, levels K/4, K/2, 3K/4)", "",
             "| kind | comparison | cases | error, longer memory | error, shorter | difference [95% interval] |",
             "|---|---|---|---|---|---|"]
    for kind, groups in table.items():
        for name, g in groups.items():
            d = g["difference"]
            lines.append(f"| {kind} | {name} | {g['n']} | {g['long']:.4f} | {g['short']:.4f} | "
                         f"{d['mean']:+.4f} [{_fmt(d['lo'])}, {_fmt(d['hi'])}] |")
    return lines + ["", "A negative difference: the longer memory predicts the judged frames better.", ""]


def results_markdown(results: dict) -> str:
    """Paper Table 1 / 2 / 3 layouts, calibration rows beside the model rows, paired comparisons, cost."""
    m, mc, probe = results["metrics"], results["model_config"], results["probe"]
    what = (f"`{results['checkpoint']}` (step {results['step']})" if mc else f"oracle `{results['config']['oracle']}`")
    setting = (f"{mc['memory']} memory, trained length {mc['memory_length']}, compression {mc['compression']}"
               + (f" (budget {mc['budget']})" if mc.get("compression") != "none" else "") + ", sampler "
               f"{results['config']['sampler']} ({results['config']['steps']} steps)") if mc else "no model"
    lines = [f"# Evaluation of {what}", "", f"{setting}; {results['num_retrieval_cases']} retrieval cases "
             f"(`{results['cases_file']}`), {results['num_rollout_cases']} rollout cases.", "",
             "## Memory retrieval (paper Table 1 layout)", ""]
    lines += _retrieval_tables(results)
    lines += [f"Scene probe held-out accuracy on real frames: {_fmt(m['probe_accuracy'])} on the judged labels "
              f"({', '.join(probe.get('judge_heads', [])) or '-'}; per label: "
              + ", ".join(f"{h} {_fmt(a)}" for h, a in probe.get("head_accuracy", {}).items()) + ").", ""]
    lines += _paired_table(results)
    lines += _loss_table(results)
    lines += ["## SSIM and PSNR of exact revisits (paper Table 2 layout)", "",
              "Mean [95% interval] (cases), on the judged frame of exact-revisit cases only (pose-mismatched frames "
              "are not compared pixel by pixel).", "", "| generator | measure | " + " | ".join(BINS) + " |",
              "|---|---|" + "---|" * len(BINS)]
    for name, r in results["rows"].items():
        for key in ("ssim", "psnr"):
            if any(r[key][b]["n"] for b in BINS):
                lines.append(f"| {name} | {key.upper()} | " + " | ".join(_mean(r[key][b]) for b in BINS) + " |")
    lines += ["", "## Error accumulation: PSNR (dB) by 16-frame segment (paper Tables 3-4 layout)", "",
              "| " + " | ".join(M.SEGMENTS) + " | Max. PSNR decay |", "|" + "---|" * (len(M.SEGMENTS) + 1),
              "| " + " | ".join(_fmt(m.get(f"psnr/{s}")) for s in M.SEGMENTS) + f" | {_fmt(m.get('psnr_max_decay'))} |",
              "", "## Sampling cost", "", "| sec / frame | FLOPs / frame | device |", "|---|---|---|",
              f"| {_fmt(m.get('sec_per_frame'))} | {_fmt(m.get('flops_per_frame'))} | {results['device']} |", ""]
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


# ---------------------------------------------------------------------------------------------- plots

def _axes(title: str, xlabel: str, ylabel: str):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.5, 5.0))      # >= 1000 px wide at the default 100 dpi
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def plot_results(results: dict, psnr: dict) -> dict:
    """{file name: Figure}: retrieval by bin (bars with 95% intervals, every row), retrieval vs d (curves),
    PSNR by segment."""
    figs = {}
    for kind in KIND_TITLES:
        rows = {n: r for n, r in results["rows"].items() if kind in r["retrieval"]}
        if not rows:
            continue
        fig, ax = _axes(f"Retrieval by d, {KIND_TITLES[kind]}", "d: frames from the first generated frame back to "
                        "the last sighting", "retrieval rate (95% Wilson interval)")
        width = 0.8 / len(rows)
        for i, (name, r) in enumerate(rows.items()):
            s = [r["retrieval"][kind][b] for b in BINS]
            x = np.arange(len(BINS)) + (i - (len(rows) - 1) / 2) * width
            y = np.array([v["rate"] if v["n"] else np.nan for v in s])
            err = np.clip(np.array([[y[j] - v["lo"], v["hi"] - y[j]] if v["n"] else [0, 0]
                                    for j, v in enumerate(s)]).T, 0, None)      # rounding can make 1 - hi < 0
            ax.bar(x, np.nan_to_num(y), width, yerr=err, capsize=3, label=name,
                   hatch="" if name in results["model_rows"] else "//", alpha=0.9)
        ax.set_xticks(range(len(BINS)), [f"{b}\n(n = {rows[next(iter(rows))]['retrieval'][kind][b]['n']})" for b in BINS])
        ax.set_ylim(0, 1.05)
        if kind == "revisit" and not results["probe_valid"]:
            ax.text(0.5, 0.5, f"NOT VALID: probe accuracy {results['metrics']['probe_accuracy']:.3f} < 0.95",
                    transform=ax.transAxes, ha="center", color="red", fontsize=14, alpha=0.8)
        ax.legend(fontsize=8, ncol=2)
        figs[f"retrieval_by_bin_{kind}.png"] = fig
        fig, ax = _axes(f"Retrieval vs d, {KIND_TITLES[kind]}", "d (frames, bin upper edge)", "retrieval rate")
        for name, r in rows.items():
            curve = r["curve"][kind]
            xs = [int(b.split("-")[1]) for b in curve]
            ax.plot(xs, [curve[b]["rate"] for b in curve], marker="o" if name in results["model_rows"] else ".",
                    linestyle="-" if name in results["model_rows"] else "--", label=name)
        for L in results["memory_lengths"]:
            if L > 0:
                ax.axvline(L, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlim(0.8, 130)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
        figs[f"retrieval_vs_d_{kind}.png"] = fig
    if any(np.isfinite(v) for v in psnr.values()):
        fig, ax = _axes("PSNR by 16-frame segment of 64-frame rollouts", "generated frames", "PSNR (dB)")
        ax.plot(list(psnr), list(psnr.values()), marker="o")
        figs["psnr_by_segment.png"] = fig
    return figs


# ---------------------------------------------------------------------------------------------- videos

def save_videos(cases, generated, rows, out_dir: Path, prefix: str, count: int,
                context: int = 16) -> list[tuple[np.ndarray, str]]:
    """Side-by-side ground truth | generated with `context` memory frames first, for up to `count` cases:
    retrieved and missed cases alternately where `rows` (judge rows) say which; returns [(frames, name)]."""
    from training.media import side_by_side, to_uint8, write_gif, write_mp4

    order = list(range(len(cases)))
    if rows:
        hit = [r["case"] for r in rows if r["retrieved"]]
        miss = [r["case"] for r in rows if r["retrieved"] is False]
        order = [i for pair in zip(hit, miss) for i in pair] + hit[len(miss):] + miss[len(hit):]
    videos = []
    for i in order[:count]:
        case, gen = cases[i], generated[i]
        ctx = case.memory_x[case.memory_mask][-context:]
        gt = to_uint8(to_pixels(np.concatenate([ctx, case.target_x]), case.encoder))
        gn = to_uint8(to_pixels(np.concatenate([ctx, gen]), case.encoder))
        frames = side_by_side(gt, gn, num_context=len(ctx))
        tag = ("retrieved" if rows[i]["retrieved"] else "missed") if rows else "rollout"
        name = f"{prefix}{i:03d}-{case.kind}-d{case.d}-{tag}" if rows else f"{prefix}{i:02d}"
        write_gif(frames, out_dir / f"{name}.gif")
        write_mp4(frames, out_dir / f"{name}.mp4")
        videos.append((frames, name))
    return videos
