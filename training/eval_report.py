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
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


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
            cells = " | ".join(_rate(bins[b], valid.get(kind, {}).get(b, True)) for b in BINS)
            lines.append(f"| {label} | {cells} |")
        bad = [b for b in BINS if not valid.get(kind, {}).get(b, True)]
        if bad:
            lines.append(f"\nStruck out: bins {', '.join(bad)}, where the judge reads the ground truth itself below "
                         f"0.9: not reported.")
        if kind == "revisit" and not results["probe_valid"]:
            lines.append(f"\n**Scene probe accuracy {_fmt(results['metrics']['probe_accuracy'])} < 0.95: the room-"
                         f"revisit rates above are not valid.**")
        lines.append("")
    return lines


def coverage_rank(group: str) -> list[bool]:
    """Sort key of coverage groups: both memories hold the source, only the longer, neither."""
    return [w in group for w in ("neither", "only", "both")]


def _row_rank(name: str, model_rows: list[str]) -> tuple:
    """Model rows first (in their order), then ground truth, copy by memory length, last frame, another episode."""
    if name in model_rows:
        return (0, model_rows.index(name))
    if name.startswith("copy m="):
        return (2, int(name.split("=")[1]))
    return ({"ground truth": 1, "repeat last frame": 3}.get(name, 4), 0)


def coverage_table(results: dict) -> list[str]:
    """Every generator's retrieval rate grouped by which memory holds the last sighting (the demo's headline)."""
    lines = []
    for kind, title in KIND_TITLES.items():
        rows = {n: c[kind] for n, c in (results.get("coverage") or {}).items() if kind in c}
        if not rows:
            continue
        groups = sorted(next(iter(rows.values())), key=coverage_rank)
        rows = dict(sorted(rows.items(), key=lambda item: _row_rank(item[0], results["model_rows"])))
        lines += [f"### Retrieval by which memory holds the last sighting, {title}", "",
                  "Rate [95% Wilson interval] (cases); model rows in bold, the others need no model.", "",
                  "| generator | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
        for name, by_group in rows.items():
            label = f"**{name}**" if name in results["model_rows"] else name
            lines.append(f"| {label} | " + " | ".join(_rate(by_group[g]) for g in groups) + " |")
        lines.append("")
    return lines


def _paired_table(results: dict) -> list[str]:
    if not results["paired"]:
        return []
    lines = ["### Paired comparisons (same cases, same noise)", "",
             "By which memory holds the source (d), then by Table 1 bin. A-only / B-only = cases only A / only B "
             "retrieved; p = exact two-sided McNemar.", "",
             "| A vs B | kind | d | pairs | A rate | B rate | A-only | B-only | p |",
             "|---|---|---|---|---|---|---|---|---|"]
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
    lines += coverage_table(results) + _retrieval_tables(results)
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


def summary_texts(metrics: dict) -> dict[str, str]:
    """The headline figures of an evaluation as one readable line each (MLflow run tags `summary.<key>`)."""
    out = {}
    for b in BINS:
        n = _num(metrics.get(f"retrieval_n/{b}"))
        n = int(n) if math.isfinite(n) else 0
        out[f"retrieval/{b}"] = (f"{metrics[f'retrieval/{b}']:.2f} [{metrics[f'retrieval_lo/{b}']:.2f}, "
                                 f"{metrics[f'retrieval_hi/{b}']:.2f}] ({n} cases)" if n else "- (no valid cases)")
    for b in BINS:
        out[f"ssim/{b}"] = _fmt(_num(metrics.get(f"ssim/{b}")))
    for s in M.SEGMENTS:
        v = _num(metrics.get(f"psnr/{s}"))
        out[f"psnr/{s}"] = f"{v:.2f} dB" if math.isfinite(v) else "-"
    decay = _num(metrics.get("psnr_max_decay"))
    out["psnr_max_decay"] = f"{decay:.2f} dB" if math.isfinite(decay) else "-"
    acc = _num(metrics.get("probe_accuracy"))
    if math.isfinite(acc):
        from training.probe import PROBE_MIN_ACCURACY

        out["probe_accuracy"] = f"{acc:.3f}" + ("" if metrics.get("probe_valid") else
                                                f" < {PROBE_MIN_ACCURACY}: room-revisit rates not valid")
    for key, unit in (("sec_per_frame", " s"), ("flops_per_frame", "")):
        if key in metrics:
            out[key] = _fmt(_num(metrics[key])) + unit
    return out


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

MODEL_COLOURS = ("#1f5fa8", "#e6550d", "#2ca02c", "#9467bd", "#8c564b")      # generated rows: solid
CALIBRATION_STYLES = (("#bdbdbd", "//"), ("#9ecae1", "\\\\"), ("#fdae6b", "xx"), ("#c7e9c0", ".."),
                      ("#dadaeb", "--"), ("#fcbba1", "++"), ("#d9d9d9", "oo"))  # rows that need no model: hatched
CALIBRATION_LINE_COLOURS = ("#555555", "#4292c6", "#e6852b", "#41ab5d", "#807dba", "#ef3b2c", "#969696")
INVALID_RGB = "#c00000"


def _num(x) -> float:
    return math.nan if x is None else float(x)


def _axes(title: str, xlabel: str, ylabel: str, subtitle: str = ""):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.0, 5.6), layout="constrained")  # 1200 px at 100 dpi; save_figure keeps >= 1000
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=12)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _ordered(rows: dict, model_rows) -> dict:
    """Model rows first, then ground truth, copy m=L by L, and the other calibration rows."""
    calib = [n for n in rows if n not in model_rows]
    key = lambda n: (0, 0) if n == "ground truth" else (1, int(n.split("=")[1])) if n.startswith("copy m=") else (2, 0)
    return {n: rows[n] for n in [m for m in model_rows if m in rows] + sorted(calib, key=key)}


def _styles(names, model_rows) -> dict[str, dict]:
    """Bar/line style per row: model rows solid and strong, the calibration rows (no model) light and hatched."""
    out, m, c = {}, 0, 0
    for name in names:
        if name in model_rows:
            out[name] = dict(color=MODEL_COLOURS[m % len(MODEL_COLOURS)], hatch="", label=f"{name} (generated)")
            m += 1
        else:
            colour, hatch = CALIBRATION_STYLES[c % len(CALIBRATION_STYLES)]
            out[name] = dict(color=colour, hatch=hatch, label=f"{name} (no model)",
                             line=CALIBRATION_LINE_COLOURS[c % len(CALIBRATION_LINE_COLOURS)])
            c += 1
    return out


def invalid_note(results: dict, kind: str) -> str:
    """'not valid: probe accuracy X < 0.95' where the room-revisit figures do not count, else ''."""
    if kind != "revisit" or results["probe_valid"]:
        return ""
    from training.probe import PROBE_MIN_ACCURACY

    acc = _num(results["metrics"].get("probe_accuracy"))
    return (f"not valid: probe accuracy {acc:.3f} < {PROBE_MIN_ACCURACY}" if math.isfinite(acc)
            else "not valid: no scene probe")


def _stamp(ax, text: str) -> None:
    if text:
        ax.text(0.5, 0.6, text, transform=ax.transAxes, ha="center", va="center", color=INVALID_RGB, fontsize=18,
                weight="bold", zorder=10, bbox=dict(facecolor="white", edgecolor=INVALID_RGB, alpha=0.9))


def _grouped_bars(ax, stats: dict[str, dict], results: dict, key: str, ylim: tuple[float, float],
                  judge_valid: dict | None = None, count_labels: bool = True) -> None:
    """One group of bars per Table 1 bin, one bar per row: value `key` of each {bin: summary}, whiskers = the 95%
    interval, `successes/n` (or n) above each bar; bins the judge cannot read shaded and labelled."""
    styles = _styles(stats, results["model_rows"])
    width = 0.84 / max(1, len(stats))
    for i, (name, bins) in enumerate(stats.items()):
        x = np.arange(len(BINS)) + (i - (len(stats) - 1) / 2) * width
        s = [bins[b] for b in BINS]
        y = np.array([_num(v[key]) if v["n"] else np.nan for v in s])
        lo, hi = np.array([_num(v["lo"]) for v in s]), np.array([_num(v["hi"]) for v in s])
        err = np.clip(np.nan_to_num(np.stack([y - lo, hi - y])), 0, None)       # rounding can make 1 - hi < 0
        st = styles[name]
        ax.bar(x, np.nan_to_num(y), width, yerr=err, capsize=2, color=st["color"], hatch=st["hatch"],
               edgecolor="#444444", linewidth=0.6, label=st["label"], error_kw=dict(elinewidth=0.8))
        for xj, v, yj, hj in zip(x, s, y, hi):
            text = "no cases" if not v["n"] else (f"{v['successes']}/{v['n']}" if "successes" in v and count_labels
                                                  else f"{yj:.2f}")
            if v["n"] and yj == 0:  # a zero-height bar still shows its row's colour
                ax.hlines(0, xj - width / 2, xj + width / 2, color=st["color"], linewidth=4, zorder=3)
            top = np.nanmax([0.0, yj, hj]) if v["n"] else 0.0      # above the whisker
            ax.text(xj, top + 0.01 * (ylim[1] - ylim[0]), text, ha="center", va="bottom", fontsize=8,
                    rotation=90 if len(stats) > 8 or not v["n"] else 0)
    n = {b: max((bins[b]["n"] for bins in stats.values()), default=0) for b in BINS}
    ax.set_xticks(range(len(BINS)), [f"d in {b} frames\n({n[b]} cases)" for b in BINS])
    ax.set_ylim(*ylim)
    ax.set_yticks([round(t, 1) for t in np.arange(-1, 1.01, 0.2) if ylim[0] <= t <= 1.0 + 1e-9])  # room above 1
    for j, b in enumerate(BINS):
        if judge_valid and b in judge_valid and not judge_valid[b]:
            ax.axvspan(j - 0.46, j + 0.46, color="#f4cccc", alpha=0.6, zorder=0)
            ax.text(j, ylim[1] - 0.015 * (ylim[1] - ylim[0]), "not valid here: ground truth judged < 0.9",
                    ha="center", va="top", color=INVALID_RGB, fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="generator", title_fontsize=9)


def plot_results(results: dict, psnr: dict) -> dict:
    """{file name: Figure}: retrieval by bin (bars with 95% intervals and counts, model rows beside the
    calibration rows), retrieval vs d (curves, memory lengths marked), SSIM by bin (exact revisits), PSNR by
    segment. Figures of room revisits carry a "not valid: probe accuracy X < 0.95" stamp when that holds."""
    figs = {}
    d_label = "d: frames from the first generated frame back to the last sighting"
    for kind in KIND_TITLES:
        rows = _ordered({n: r for n, r in results["rows"].items() if kind in r["retrieval"]}, results["model_rows"])
        if not rows:
            continue
        note = invalid_note(results, kind)
        total = sum(next(iter(rows.values()))["retrieval"][kind][b]["n"] for b in BINS)
        fig, ax = _axes(f"Retrieval rate by d, {KIND_TITLES[kind]}", d_label,
                        "retrieval rate (share of cases; whiskers: 95% Wilson interval)",
                        f"{total} cases, the same for every row; above each bar: cases retrieved / cases")
        _grouped_bars(ax, {n: r["retrieval"][kind] for n, r in rows.items()}, results, "rate", (0, 1.22),
                      results.get("judge_valid", {}).get(kind))
        _stamp(ax, note)
        figs[f"retrieval_by_bin_{kind}.png"] = fig

        fig, ax = _axes(f"Retrieval rate vs d, {KIND_TITLES[kind]}", d_label + " (log scale; a point per "
                        "bin of d, at its upper edge)", "retrieval rate (share of cases)",
                        f"{total} cases; band: 95% Wilson interval of the model rows; dotted lines: memory lengths")
        styles = _styles(rows, results["model_rows"])
        counts = {}
        for name, r in rows.items():
            curve = r["curve"][kind]
            xs = [int(b.split("-")[1]) for b in curve]
            model = name in results["model_rows"]
            ax.plot(xs, [_num(curve[b]["rate"]) for b in curve], marker="o" if model else ".",
                    linestyle="-" if model else "--", color=styles[name]["color" if model else "line"],
                    linewidth=2 if model else 1, label=styles[name]["label"])
            if model:
                ax.fill_between(xs, [_num(curve[b]["lo"]) for b in curve], [_num(curve[b]["hi"]) for b in curve],
                                color=styles[name]["color"], alpha=0.12)
            counts.update({int(b.split("-")[1]): curve[b]["n"] for b in curve})
        for x, n in counts.items():
            ax.annotate(f"n={n}", (x, 0), xytext=(0, -2), textcoords="offset points", ha="center", va="top",
                        fontsize=7, color="#555555")
        for L in results["memory_lengths"]:
            if L > 0:
                ax.axvline(L, color="grey", linestyle=":", linewidth=1.2)
                ax.text(L * 1.02, 0.45, f"m={L}: memory ends", rotation=90, ha="left", va="center", fontsize=8,
                        color="#555555")
        ax.set_xscale("log")
        ax.set_xlim(0.8, 130)
        ax.set_ylim(-0.08, 1.1)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="generator", title_fontsize=9)
        _stamp(ax, note)
        figs[f"retrieval_vs_d_{kind}.png"] = fig
    ssim = _ordered({n: r["ssim"] for n, r in results["rows"].items() if any(r["ssim"][b]["n"] for b in BINS)},
                    results["model_rows"])
    if ssim:
        fig, ax = _axes("SSIM of the judged frame vs the ground truth, exact revisits (same pose)", d_label,
                        "SSIM (1 = identical; whiskers: 95% interval of the mean)",
                        "above each bar: the mean; the axis spans the whole SSIM scale")
        _grouped_bars(ax, ssim, results, "mean", (-0.1, 1.12), count_labels=False)
        figs["ssim_by_bin.png"] = fig
    if any(np.isfinite(_num(v)) for v in psnr.values()):
        n, model = results.get("num_rollout_cases", 0), results["model_rows"][-1]
        fig, ax = _axes(f"PSNR by 16-frame segment of 64-frame rollouts, {model}", "generated frames since the "
                        "rollout started", "PSNR vs ground truth (dB, higher = closer)",
                        f"mean over {n} rollout case{'s' if n != 1 else ''}; max decay = PSNR of the first "
                        f"segment minus that of the last: {_fmt(results['metrics'].get('psnr_max_decay'))} dB")
        ys = [_num(v) for v in psnr.values()]
        ax.plot(list(psnr), ys, marker="o", color=MODEL_COLOURS[0], linewidth=2)
        for x, y in zip(psnr, ys):
            if np.isfinite(y):
                ax.annotate(f"{y:.1f} dB", (x, y), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=9)
        ax.set_ylim(0, max(40.0, np.nanmax(ys) * 1.15))
        figs["psnr_by_segment.png"] = fig
    return figs


# ---------------------------------------------------------------------------------------------- videos

def _notes(case, num_context: int, num_generated: int) -> list[str]:
    """One caption line per video frame: memory frames by offset from the start s, generated frames with their
    gap d (frames back to the last sighting) and whether they are judged; rollouts by 16-frame segment."""
    notes = [f"memory s-{num_context - i}" + (" = last sighting" if num_context - i == case.d else " (given)")
             for i in range(num_context)]
    for j in range(num_generated):
        if case.kind == "rollout":
            seg = j // M.SEGMENT_LENGTH * M.SEGMENT_LENGTH
            notes.append(f"generated {j + 1}/{num_generated}, segment {seg}-{seg + M.SEGMENT_LENGTH}")
        else:
            judged = " (judged)" if j < len(case.judged) and case.judged[j] else ""
            notes.append(f"generated {j + 1}/{num_generated}, d = {case.d + j}{judged}")
    return notes


def save_videos(cases, generated, rows, out_dir: Path, prefix: str, count: int,
                context: int = 16, generator: str = "model") -> list[tuple[np.ndarray, str]]:
    """Side-by-side ground truth | generated (by `generator`) with `context` memory frames first, captioned
    (which panel is which, where memory ends, each frame's d), for up to `count` cases: retrieved and missed
    cases alternately where `rows` (judge rows) say which; returns [(frames, name)]."""
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
        frames = side_by_side(gt, gn, num_context=len(ctx),
                              titles=("ground truth", f"generated ({generator.removeprefix('model ')})"),
                              notes=_notes(case, len(ctx), len(gen)))
        tag = ("retrieved" if rows[i]["retrieved"] else "missed") if rows else "rollout"
        name = f"{prefix}{i:03d}-{case.kind}-d{case.d}-{tag}" if rows else f"{prefix}{i:02d}"
        write_gif(frames, out_dir / f"{name}.gif")
        write_mp4(frames, out_dir / f"{name}.mp4")
        videos.append((frames, name))
    return videos
