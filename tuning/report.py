"""Tables and plots of a memory sweep, in the layouts of the paper's Tables 1-4 and Figure 9.

    python -m tuning.report runs/sweep-demo              # a sweep's output folder (reads trials/*.json)
    python -m tuning.report mlflow:<parent_run_id> --tracking-uri sqlite:////abs/path/mlflow.db --out-dir DIR

Writes results.md, results.csv and three PNG plots (retrieval vs memory budget, retrieval vs max PSNR decay with
the correlation, retrieval vs sampling cost with the Pareto front) into the output folder, and returns their paths.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli import UserError, field, parse_config, run_cli, to_json
from training.choices import STRUCTURES

BINS = ("0-16", "16-48", "48-112")
SEGMENTS = ("0-16", "16-32", "32-48", "48-64")
CONFIG_KEYS = ("memory", "memory_length", "compression", "budget")


# ---------------------------------------------------------------------------------------------------- loading
def load_trials(source: str, tracking_uri: str | None = None) -> list[dict]:
    """Trial records {name, config, metrics, status, error} from a sweep folder or an MLflow parent run."""
    if source.startswith("mlflow:"):
        return _trials_from_mlflow(source.removeprefix("mlflow:"), tracking_uri)
    folder = Path(source) / "trials"
    if not folder.is_dir():
        raise FileNotFoundError(f"{source}: no trials/ folder; pass a sweep output folder or mlflow:<parent_run_id>")
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _trials_from_mlflow(parent_run_id: str, tracking_uri: str | None) -> list[dict]:
    from mlflow.tracking import MlflowClient

    from training.tracking import read_summary

    client = MlflowClient(tracking_uri=tracking_uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    trials = []
    for run in runs:
        p = run.data.params
        config = {k: (int(p[k]) if k in ("memory_length", "budget") else p[k]) for k in CONFIG_KEYS if k in p}
        metrics = {**run.data.metrics, **read_summary(client, run.info.run_id)}  # evaluation figures: the summary
        trials.append({"name": run.info.run_name, "config": config, "metrics": metrics,
                       "status": "ok" if run.info.status == "FINISHED" else run.info.status.lower(), "error": ""})
    return trials


# ---------------------------------------------------------------------------------------------------- tables
def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.2f}" if isinstance(x, float) else str(x)


def _sorted_ok(trials: list[dict]) -> list[dict]:
    ok = [t for t in trials if t.get("status") == "ok"]
    order = {s: i for i, s in enumerate(STRUCTURES)}
    return sorted(ok, key=lambda t: (order.get(t["config"]["memory"], 9), t["config"]["compression"] != "none",
                                     t["config"]["memory_length"], t["config"].get("budget", 0)))


def _interval(m: dict, b: str) -> str:
    if f"retrieval_lo/{b}" not in m or m.get(f"retrieval_n/{b}") in (None, 0):
        return ""
    return f" [{_fmt(m[f'retrieval_lo/{b}'])}, {_fmt(m[f'retrieval_hi/{b}'])}] ({int(m[f'retrieval_n/{b}'])})"


def calibration_rows(trials: list[dict]) -> dict[str, dict]:
    """{row name: {bin: rate}} of the calibration rows the trials' evaluations scored (same cases in every trial)."""
    rows: dict[str, dict] = {}
    for t in trials:
        rows.update(t.get("calibration") or {})
    order = [n for n in rows if n == "ground truth"] + sorted((n for n in rows if n.startswith("copy")),
                                                             key=lambda n: int(n.split("=")[1]))
    return {n: rows[n] for n in order + [n for n in rows if n not in order]}


def _budget_cell(c: dict) -> str:
    return "N/A" if c["compression"] == "none" else str(c["budget"])


def _compression_cell(c: dict) -> str:
    return "N/A" if c["compression"] == "none" else c["compression"]


def markdown_tables(trials: list[dict]) -> str:
    ok = _sorted_ok(trials)
    out = []
    for title, prefix in (("Table 1 layout: retrieval rate by gap (frames since the scene was last seen)", "retrieval"),
                          ("Table 2 layout: SSIM of generated vs ground-truth revisit frames", "ssim")):
        out += [f"### {title}", "", "| Structure | Context Length | Compression | Network Memory Budget | "
                + " | ".join(BINS) + " | probe acc. |", "|---|---|---|---|" + "---|" * (len(BINS) + 1)]
        for t in ok:
            c, m = t["config"], t["metrics"]
            cells = [_fmt(m.get(f"{prefix}/{b}")) + _interval(m, b) * (prefix == "retrieval") for b in BINS]
            out.append(f"| {c['memory']} | {c['memory_length']} | {_compression_cell(c)} | {_budget_cell(c)} | "
                       + " | ".join(cells) + f" | {_fmt(m.get('probe_accuracy'))} |")
        if prefix == "retrieval":
            for name, rates in calibration_rows(ok).items():
                out.append(f"| *calibration: {name}* | | | | " + " | ".join(_fmt(rates.get(b)) for b in BINS) + " | |")
            out += ["", "Retrieval: rate [95% Wilson interval] (cases), bins of d = frames from the first generated "
                    "frame back to the last sighting. Calibration rows need no model (docs/evaluate.md): ground truth "
                    "(the judge's ceiling), copy m=L (a perfect memory of L frames), repeat last frame, other episode "
                    "(chance)."]
        out.append("")
    out += ["### Tables 3-4 layout: PSNR per 16-frame segment and max decay (error accumulation)", "",
            "| Structure | Context Length | Compression | Network Memory Budget | " + " | ".join(SEGMENTS)
            + " | Max. PSNR decay | sec/frame |", "|---|---|---|---|" + "---|" * (len(SEGMENTS) + 2)]
    for t in ok:
        c, m = t["config"], t["metrics"]
        cells = [_fmt(m.get(f"psnr/{s}")) for s in SEGMENTS]
        out.append(f"| {c['memory']} | {c['memory_length']} | {_compression_cell(c)} | {_budget_cell(c)} | "
                   + " | ".join(cells)
                   + f" | {_fmt(m.get('psnr_max_decay'))} | {_fmt(m.get('sec_per_frame'))} |")
    failed = [t for t in trials if t.get("status") != "ok"]
    if failed:
        out += ["", "### Failed trials", ""] + [f"- `{t['name']}` {t['config']}: {t.get('error', '')}" for t in failed]
    return "\n".join(out) + "\n"


def write_csv(trials: list[dict], path: Path) -> None:
    keys = sorted({k for t in trials for k in t.get("metrics", {})})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "status", *CONFIG_KEYS, *keys, "error"])
        for t in trials:
            c, m = t["config"], t.get("metrics", {})
            w.writerow([t["name"], t.get("status"), *[c.get(k) for k in CONFIG_KEYS], *[m.get(k) for k in keys],
                        t.get("error", "")])


# ---------------------------------------------------------------------------------------------------- plots
def mean_retrieval(m: dict, bins=BINS[:2]) -> float:
    """Average retrieval over the given gap bins (Figure 9 uses 0-16 and 16-48)."""
    vals = [m[f"retrieval/{b}"] for b in bins if f"retrieval/{b}" in m and not math.isnan(m[f"retrieval/{b}"])]
    return sum(vals) / len(vals) if vals else float("nan")


def pearson(xs: list[float], ys: list[float]) -> float:
    pairs = [(x, y) for x, y in zip(xs, ys) if not (math.isnan(x) or math.isnan(y))]
    if len(pairs) < 2:
        return float("nan")
    mx, my = (sum(p[i] for p in pairs) / len(pairs) for i in (0, 1))
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx, syy = sum((x - mx) ** 2 for x, _ in pairs), sum((y - my) ** 2 for _, y in pairs)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower cost x and higher quality y), sorted by cost."""
    idx = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in idx:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _frames_kept(c: dict) -> int:
    """Memory frames the model attends to: the compressed budget, or the memory length without compression."""
    return c["budget"] if c["compression"] != "none" else c["memory_length"]


def _probe_note(ok: list[dict]) -> tuple[str, bool]:
    """(note, nothing_valid): room revisits are left out of the rates where the scene probe was below 0.95; if
    that leaves no case at all, the figure is stamped not valid."""
    from training.probe import PROBE_MIN_ACCURACY

    accs = [t["metrics"].get("probe_accuracy") for t in ok]
    accs = [a for a in accs if a is not None and not math.isnan(a) and a < PROBE_MIN_ACCURACY]
    if not accs:
        return "", False
    empty = all(not (t["metrics"].get(f"retrieval_n/{b}") or 0) for t in ok for b in BINS)
    if empty:
        return f"not valid: probe accuracy {min(accs):.3f} < {PROBE_MIN_ACCURACY}", True
    return f"room revisits left out: probe accuracy {min(accs):.3f} < {PROBE_MIN_ACCURACY}", False


def _figure(ncols: int = 1, height: float = 5.6):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # not pyplot: no global figure registry

    fig = Figure(figsize=(12.0, height), layout="constrained")   # >= 1000 px wide (save_figure enforces it)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _stamp(ax, text: str) -> None:
    ax.text(0.5, 0.55, text, transform=ax.transAxes, ha="center", va="center", color="#c00000", fontsize=15,
            weight="bold", zorder=10, bbox=dict(facecolor="white", edgecolor="#c00000", alpha=0.9))


def make_plots(trials: list[dict], out: Path) -> dict[str, Path]:
    """The three PNGs (>= 1000 px wide) of the sweep; returns their paths by name."""
    from training.media import save_figure

    ok = _sorted_ok(trials)
    paths = {}
    note, nothing_valid = _probe_note(ok)
    calib = calibration_rows(ok)
    # [1] retrieval vs memory frames kept, one panel per bin of d, one line per structure, 95% intervals; the
    # calibration rows beside them: copy m=L (a perfect memory of L frames) at x = L, the others as levels
    fig, axes = _figure(len(BINS))
    for ax, b in zip(axes, BINS):
        n = max((int(t["metrics"].get(f"retrieval_n/{b}") or 0) for t in ok), default=0)
        for s in STRUCTURES:
            mine = sorted((t for t in ok if t["config"]["memory"] == s), key=lambda t: _frames_kept(t["config"]))
            if not mine:
                continue
            xs = [_frames_kept(t["config"]) for t in mine]
            ys = [t["metrics"].get(f"retrieval/{b}", math.nan) for t in mine]
            lo = [t["metrics"].get(f"retrieval_lo/{b}", y) for t, y in zip(mine, ys)]
            hi = [t["metrics"].get(f"retrieval_hi/{b}", y) for t, y in zip(mine, ys)]
            err = [[max(0.0, y - low) for y, low in zip(ys, lo)], [max(0.0, high - y) for y, high in zip(ys, hi)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, linewidth=2, label=f"{s} (trained model)")
        copies = sorted((int(name.split("=")[1]), r.get(b)) for name, r in calib.items() if name.startswith("copy m="))
        if copies:
            ax.plot(*zip(*copies), "k^", markersize=8, label="copy m=L: a perfect memory of L frames (no model)")
        for (name, r), style in zip(((n_, r_) for n_, r_ in calib.items() if not n_.startswith("copy")),
                                    ("--", ":", "-.", (0, (1, 3)))):
            if r.get(b) is not None and not math.isnan(r[b]):
                ax.axhline(r[b], color="grey", linestyle=style, linewidth=1, label=f"{name} (no model)")
        ax.set_title(f"d in {b} frames ({n} cases)", fontsize=11)
        kept = sorted({_frames_kept(t["config"]) for t in ok} | {L for L, _ in copies})
        if kept:
            ax.set_xscale("log", base=2)
            ax.set_xticks(kept, [str(k) for k in kept])
            ax.minorticks_off()
        ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3)
        if nothing_valid:
            _stamp(ax, note)
    axes[0].set_ylabel("retrieval rate (share of cases; whiskers: 95% Wilson interval)")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    axes[len(axes) // 2].set_xlabel("memory frames kept (compression budget, else memory length; log scale)")
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    fig.suptitle("Retrieval rate vs memory budget, by d (frames from the first generated frame back to the last "
                 "sighting)" + (f"\n{note}" if note and not nothing_valid else ""), fontsize=12)
    paths["retrieval_vs_budget"] = save_figure(fig, out / "retrieval_vs_budget.png")
    # [2] Figure 9: retrieval (0-16, 16-48) vs max PSNR decay, with the correlation
    xs = [t["metrics"].get("psnr_max_decay", float("nan")) for t in ok]
    ys = [mean_retrieval(t["metrics"]) for t in ok]
    r = pearson(xs, ys)
    fig, (ax,) = _figure()
    ax.scatter(xs, ys, s=40)
    for t, x, y in zip(ok, xs, ys):
        ax.annotate(t["name"], (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.set_xlabel("max PSNR decay over a 64-frame rollout (dB: PSNR of the first 16-frame segment minus the last)")
    ax.set_ylabel("retrieval rate, mean of d in 0-16 and 16-48")
    ax.set_title(f"Retrieval vs error accumulation (paper Figure 9), {len(ok)} trials: "
                 + (f"Pearson r = {r:.2f}" if not math.isnan(r) else "Pearson r: n/a (fewer than 2 trials with both)")
                 + (f"\n{note}" if note else ""), fontsize=12)
    ax.set_ylim(-0.02, 1.05)
    ax.grid(alpha=0.3)
    if nothing_valid:
        _stamp(ax, note)
    paths["retrieval_vs_decay"] = save_figure(fig, out / "retrieval_vs_decay.png")
    # [3] retrieval vs sampling cost per frame, Pareto front marked
    cost_key = "flops_per_frame" if all("flops_per_frame" in t["metrics"] for t in ok) else "sec_per_frame"
    pts = [(t["metrics"].get(cost_key, float("nan")), mean_retrieval(t["metrics"], BINS)) for t in ok]
    keep = [i for i, p in enumerate(pts) if not any(map(math.isnan, p))]
    clean = [pts[i] for i in keep]
    front = pareto_front(clean) if clean else []
    fig, (ax,) = _figure()
    if clean:
        ax.scatter(*zip(*clean), s=40, label="trials")
        for i, p in zip(keep, clean):
            ax.annotate(ok[i]["name"], p, xytext=(4, 4), textcoords="offset points", fontsize=7)
        ax.plot(*zip(*[clean[i] for i in front]), color="red", marker="s", label="Pareto front (cheaper and better)")
        ax.legend(fontsize=9)
    ax.set_xlabel("FLOPs per generated frame" if cost_key == "flops_per_frame" else "seconds per generated frame")
    ax.set_ylabel("retrieval rate, mean over the bins of d")
    ax.set_title(f"Retrieval vs sampling cost, {len(clean)} trials" + (f"\n{note}" if note else ""), fontsize=12)
    ax.set_ylim(-0.02, 1.05)
    ax.grid(alpha=0.3)
    if nothing_valid:
        _stamp(ax, note)
    paths["retrieval_vs_cost"] = save_figure(fig, out / "retrieval_vs_cost.png")
    if any(t.get("curves", {}).get("rows") for t in ok):
        fig = retrieval_vs_d_figure(ok, note, nothing_valid)
        paths["retrieval_vs_d"] = save_figure(fig, out / "retrieval_vs_d.png")
    return paths


def curves_table(ok: list[dict]) -> str:
    """Markdown: retrieval by bin of d per trial (its model and its copy oracle), the numbers of retrieval_vs_d.png."""
    rows = [(t["name"], name, c) for t in ok for name, c in t.get("curves", {}).get("rows", {}).items()
            if name.startswith("model") or name == f"copy m={t['config']['memory_length']}"]
    if not rows:
        return ""
    bins = sorted({b for _, _, c in rows for b in c}, key=lambda b: int(b.split("-")[1]))
    out = ["", "## Retrieval vs d per trial (retrieval_vs_d.png)", "",
           "Rate (cases) by bin lo < d <= hi; the copy row is a perfect memory of the trial's m frames (no model).", "",
           "| trial | generator | " + " | ".join(bins) + " |", "|---|---|" + "---|" * len(bins)]
    for trial, name, c in rows:
        cells = [f"{_fmt(c[b]['rate'])} ({c[b]['n']})" if b in c and c[b]["n"] else "-" for b in bins]
        out.append(f"| {trial} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _curve_xy(curve: dict) -> tuple[list[int], list[float], list[float], list[float]]:
    """A curve {"lo-hi": rate summary} -> (upper edges of d, rates, interval lows, interval highs), empty bins out."""
    bins = sorted((b for b in curve if curve[b]["n"]), key=lambda b: int(b.split("-")[1]))
    return ([int(b.split("-")[1]) for b in bins], [curve[b]["rate"] for b in bins], [curve[b]["lo"] for b in bins],
            [curve[b]["hi"] for b in bins])


def retrieval_vs_d_figure(ok: list[dict], note: str, nothing_valid: bool):
    """Retrieval vs d, one colour per trial: the trained model (solid, 95% band) and the copy oracle with the same
    memory length (dashed: a perfect memory of L frames), the memory's end marked at d = L. The paper's bottleneck
    is the step of each model curve at its own L."""
    fig, (ax,) = _figure(height=6.0)
    colours = [f"C{i}" for i in range(10)]
    kinds = set()
    for i, t in enumerate(ok):
        curves = t.get("curves", {})
        rows, colour = curves.get("rows", {}), colours[i % len(colours)]
        kinds.add(curves.get("kind", ""))
        L = t["config"]["memory_length"]
        model = next((c for name, c in rows.items() if name.startswith("model")), None)
        copy = rows.get(f"copy m={L}")
        if model:
            xs, ys, lo, hi = _curve_xy(model)
            ax.plot(xs, ys, marker="o", color=colour, linewidth=2, label=f"{t['name']}: trained model")
            ax.fill_between(xs, lo, hi, color=colour, alpha=0.10)
        if copy:
            xs, ys, _, _ = _curve_xy(copy)
            ax.plot(xs, ys, linestyle="--", color=colour, linewidth=1, label=f"copy m={L} (no model)")
        ax.axvline(L, color=colour, linestyle=":", linewidth=1.2)
        ax.text(L * 1.03, 0.97 - 0.05 * i, f"m={L}", color=colour, fontsize=8, va="top")
    ax.set_xscale("log")
    ax.set_xlim(0.8, 130)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("d: frames from the first generated frame back to the last sighting (log scale; a point per "
                  "bin of d, at its upper edge)")
    ax.set_ylabel("retrieval rate (share of cases; band: 95% Wilson interval)")
    what = "exact revisits (same pose)" if kinds == {"exact"} else "revisits"
    ax.set_title(f"Retrieval vs d per trial, {what}; dotted: where each memory ends (d = m)"
                 + (f"\n{note}" if note and not nothing_valid else ""), fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if nothing_valid:
        _stamp(ax, note)
    return fig


def write_report(trials: list[dict], out: Path) -> dict[str, Path]:
    """results.md, results.csv and the plots in `out`; returns their paths by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = make_plots(trials, out)
    xs = [t["metrics"].get("psnr_max_decay", float("nan")) for t in _sorted_ok(trials)]
    ys = [mean_retrieval(t["metrics"]) for t in _sorted_ok(trials)]
    md = markdown_tables(trials) + ("\nCorrelation of retrieval (0-16, 16-48) with max PSNR decay (Figure 9): "
                                    f"r = {_fmt(pearson(xs, ys))}\n") + curves_table(_sorted_ok(trials))
    (out / "results.md").write_text(md)
    write_csv(trials, out / "results.csv")
    return {"results_md": out / "results.md", "results_csv": out / "results.csv", **paths}


@dataclass
class ReportConfig:
    source: str = field("", "sweep output folder, or mlflow:<parent_run_id>")
    tracking_uri: str = field("", "MLflow tracking URI (for mlflow: sources)")
    out_dir: str = field("", "output folder (default: the sweep folder's report/, or ./report for mlflow: sources)",
                         aliases=("--out",))

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("SOURCE: give a sweep output folder or mlflow:<parent_run_id>")
        if not self.out_dir:
            self.out_dir = "report" if self.source.startswith("mlflow:") else str(Path(self.source) / "report")


def main(argv: list[str] | None = None) -> None:
    cfg, dry_run = parse_config(ReportConfig, argv, description=__doc__, positional=("source",))
    if dry_run:
        print(to_json(cfg))
        return
    trials = load_trials(cfg.source, cfg.tracking_uri or None)
    if not trials:
        raise UserError(f"{cfg.source}: no trials found")
    for name, path in write_report(trials, Path(cfg.out_dir)).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    run_cli(main)
