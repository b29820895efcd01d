"""Tables and plots of a memory sweep, in the layouts of the paper's Tables 1-4 and Figure 9.

    python -m tuning.report runs/sweep-demo              # a sweep's output folder (reads trials/*.json)
    python -m tuning.report mlflow:<parent_run_id> --tracking-uri sqlite:////abs/path/mlflow.db --out DIR

Writes results.md, results.csv and three PNG plots (retrieval vs memory budget, retrieval vs max PSNR decay with
the correlation, retrieval vs sampling cost with the Pareto front) into the output folder, and returns their paths.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

BINS = ("0-16", "16-48", "48-112")
SEGMENTS = ("0-16", "16-32", "32-48", "48-64")
STRUCTURES = ("prepend", "concat", "cross_attn")
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

    client = MlflowClient(tracking_uri=tracking_uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    trials = []
    for run in runs:
        p = run.data.params
        config = {k: (int(p[k]) if k in ("memory_length", "budget") else p[k]) for k in CONFIG_KEYS if k in p}
        trials.append({"name": run.info.run_name, "config": config, "metrics": dict(run.data.metrics),
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
            out.append(f"| {c['memory']} | {c['memory_length']} | {c['compression'] if c['compression'] != 'none' else 'N/A'}"
                       f" | {_budget_cell(c)} | " + " | ".join(cells) + f" | {_fmt(m.get('probe_accuracy'))} |")
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
        out.append(f"| {c['memory']} | {c['memory_length']} | {c['compression'] if c['compression'] != 'none' else 'N/A'}"
                   f" | {_budget_cell(c)} | " + " | ".join(cells)
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


def make_plots(trials: list[dict], out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = _sorted_ok(trials)
    paths = {}
    # [1] retrieval vs memory budget, one line per structure (budget = frames kept: compressed budget or length)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for s in STRUCTURES:
        pts = sorted((t["config"]["budget"] if t["config"]["compression"] != "none" else t["config"]["memory_length"],
                      mean_retrieval(t["metrics"], BINS)) for t in ok if t["config"]["memory"] == s)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=s)
    ax.set(xlabel="memory frames kept (budget or length)", ylabel="retrieval (mean over gap bins)")
    ax.legend(); fig.tight_layout()
    paths["retrieval_vs_budget"] = out / "retrieval_vs_budget.png"
    fig.savefig(paths["retrieval_vs_budget"], dpi=120); plt.close(fig)
    # [2] Figure 9: retrieval (0-16, 16-48) vs max PSNR decay, with the correlation
    xs = [t["metrics"].get("psnr_max_decay", float("nan")) for t in ok]
    ys = [mean_retrieval(t["metrics"]) for t in ok]
    r = pearson(xs, ys)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter(xs, ys)
    for t, x, y in zip(ok, xs, ys):
        ax.annotate(t["name"], (x, y), fontsize=6)
    ax.set(xlabel="max PSNR decay (dB, 0-16 minus 48-64)", ylabel="retrieval (mean of 0-16, 16-48)",
           title=f"Pearson r = {r:.2f}" if not math.isnan(r) else "Pearson r: n/a")
    fig.tight_layout()
    paths["retrieval_vs_decay"] = out / "retrieval_vs_decay.png"
    fig.savefig(paths["retrieval_vs_decay"], dpi=120); plt.close(fig)
    # [3] retrieval vs sampling cost per frame, Pareto front marked
    cost_key = "flops_per_frame" if all("flops_per_frame" in t["metrics"] for t in ok) else "sec_per_frame"
    pts = [(t["metrics"].get(cost_key, float("nan")), mean_retrieval(t["metrics"], BINS)) for t in ok]
    front = pareto_front([p for p in pts if not any(map(math.isnan, p))]) if pts else []
    clean = [p for p in pts if not any(map(math.isnan, p))]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if clean:
        ax.scatter(*zip(*clean), label="trials")
        fx = [clean[i] for i in front]
        ax.plot(*zip(*fx), color="red", marker="s", label="Pareto front")
    ax.set(xlabel=cost_key.replace("_", " "), ylabel="retrieval (mean over gap bins)")
    ax.legend(); fig.tight_layout()
    paths["retrieval_vs_cost"] = out / "retrieval_vs_cost.png"
    fig.savefig(paths["retrieval_vs_cost"], dpi=120); plt.close(fig)
    return paths


def write_report(trials: list[dict], out: Path) -> dict[str, Path]:
    """results.md, results.csv and the plots in `out`; returns their paths by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = make_plots(trials, out)
    xs = [t["metrics"].get("psnr_max_decay", float("nan")) for t in _sorted_ok(trials)]
    ys = [mean_retrieval(t["metrics"]) for t in _sorted_ok(trials)]
    md = markdown_tables(trials) + f"\nCorrelation of retrieval (0-16, 16-48) with max PSNR decay (Figure 9): r = {_fmt(pearson(xs, ys))}\n"
    (out / "results.md").write_text(md)
    write_csv(trials, out / "results.csv")
    return {"results_md": out / "results.md", "results_csv": out / "results.csv", **paths}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="sweep output folder, or mlflow:<parent_run_id>")
    ap.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (for mlflow: sources)")
    ap.add_argument("--out", default=None, help="output folder (default: the sweep folder's report/)")
    args = ap.parse_args(argv)
    trials = load_trials(args.source, args.tracking_uri)
    if not trials:
        raise SystemExit(f"{args.source}: no trials found")
    out = Path(args.out) if args.out else (Path(args.source) / "report" if not args.source.startswith("mlflow:") else Path("report"))
    for name, path in write_report(trials, out).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
