"""The paper's Sec. 4 on Gaussian videos, exactly: memory bottleneck (Thm 4.4, Eqn. 4.3) and error accumulation (4.4).

    python -m training.theory                     # runs/theory: results.md/.csv, two PNGs, MLflow (~35 s CPU)
    python -m training.theory --quick             # runs/theory-quick: small grid and samples (~15 s CPU)
    python -m training.theory --lags 4 8 --memory-lengths 0 4 8 --eta 1.0   # any grid; DDPM-like sampler
    python -m training.theory --dry-run           # print the resolved config

Frames x_t = sqrt(a) u_t + sqrt(1-a) z_t: u an AR(1) (rho), z a seasonal AR of lag g (z_t = phi z_{t-g} + noise).
The project's sampler (`training.sampler.sample`) runs with the exact v-prediction (`training.gaussian_video`)
after `num_context` ground-truth frames; every KL is KL(truth || generated) in nats per scalar channel.
  [1] memory bottleneck: one outpainting AR step with memory m; closed-form MB (Eqn. 4.3) beside the sampler's
      KL, and the correlation of a generated frame with its lag-g source;
  [2] by schedule: a rollout of `schedule_frames` frames; IE + sum_k MB_k (Eqn. 4.1 with exact scores) beside
      the sampler's KL (equal for outpainting, an upper bound when noisy frames are carried);
  [3] error accumulation: KL of each `segment`-frame segment of an `accum_frames` rollout, with few levels or a
      controlled score error, beside the right-hand side of Eqn. (4.4) evaluated with its constants set to 1.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.cli import field, parse_config, run_cli, to_json
from training.choices import SCHEDULES as NOISE_SCHEDULES
from training.diffusion import Diffusion
from training.gaussian_video import (
    ExactDenoiser,
    ar1,
    conditional_kl,
    frame_clock,
    lag_correlation,
    marginal_kl,
    memory_bottleneck,
    memory_limited_law,
    mixture,
    sample_correlation,
    seasonal,
    segment_kl,
    theorem_terms,
)
from training.sampler import sample
from training.schedules import ARSchedule, df_pyramid, fifo, outpainting

SCHEDULES = ("outpainting", "df_pyramid", "fifo")
QUICK = dict(out_dir="runs/theory-quick", num_samples=2048, rollout_samples=1024, lags=[4, 8], memory_lengths=[0, 4, 8],
             schedule_memory_lengths=[4, 8], levels_per_frame=[4, 16], score_errors=[0.05], accum_frames=32)


@dataclass
class TheoryConfig:
    out_dir: str = field("runs/theory", "output folder: results.md, results.csv, PNGs, mlflow.db", aliases=("--out",))
    quick: bool = field(False, f"small grid and sample counts for a smoke run: {QUICK}")
    seed: int = field(0, "seed of every draw (contexts and sampler noise derive from it)")
    num_samples: int = field(8192, "videos per sampler run in [1] (KL fits are on num_samples x d scalars)")
    rollout_samples: int = field(4096, "videos per rollout in [2] and [3]")
    ar1_weight: float = field(0.5, "a: weight of the AR(1) part of each frame")
    rho: float = field(0.6, "AR(1) coefficient per frame")
    phi: float = field(0.95, "seasonal coefficient per lag g")
    lags: list[int] = field([4, 8, 12], "seasonal lags g of [1], in frames")
    memory_lengths: list[int] = field([0, 2, 4, 6, 8, 12, 16], "memory lengths m of [1], in frames")
    num_context: int = field(40, "ground-truth frames before the first generated frame")
    window: int = field(4, "window w (= Delta for outpainting; the window of df_pyramid)")
    steps: int = field(64, "outpainting denoising steps in [1]")
    schedules: list[str] = field(["outpainting:64", "df_pyramid:64", "fifo:16"],
                                 "[2] schedules as name:levels_per_frame (fifo's window is its level count)")
    schedule_lag: int = field(8, "g of [2]")
    schedule_memory_lengths: list[int] = field([0, 4, 8, 16], "m of [2]")
    schedule_frames: int = field(16, "frames generated in [2]")
    accum_lag: int = field(4, "g of [3]")
    accum_memory: int = field(16, "m of [3]")
    accum_frames: int = field(64, "frames generated in [3]")
    accum_schedules: list[str] = field(list(SCHEDULES), "schedules compared in [3]", choices=list(SCHEDULES))
    segment: int = field(16, "segment length of [3], in frames")
    levels_per_frame: list[int] = field([4, 8, 16], "[3] noise levels each frame passes (= frame-evaluations of the "
                                        "denoiser per generated frame, equal across schedules)")
    score_errors: list[float] = field([0.02, 0.05], "[3] x0 gain errors delta (prediction (1+delta) E[x0|z])")
    score_error_levels: int = field(16, "[3] levels per frame of the score-error runs")
    eta: float = field(0.0, "DDIM eta of the sampler (0 deterministic as the project default, 1 DDPM-like = Eqn. 3.3)")
    num_timesteps: int = field(1000, "K, diffusion timesteps")
    noise_schedule: str = field("sigmoid", "alpha_bar schedule", choices=list(NOISE_SCHEDULES))
    tracking_uri: str = field("", "MLflow URI; default sqlite:///<abs out>/mlflow.db")
    experiment: str = field("memvid", "MLflow experiment")

    def __post_init__(self) -> None:
        if self.quick:  # --quick overrides the fields the command line left at their defaults
            for f in dataclasses.fields(self):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                if f.name in QUICK and getattr(self, f.name) == default:
                    setattr(self, f.name, QUICK[f.name])
        for name in ("num_samples", "rollout_samples", "window", "steps", "schedule_frames", "accum_frames", "segment"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected >= 1")
        longest = max(self.memory_lengths + self.lags + self.schedule_memory_lengths + [self.accum_memory])
        if self.num_context < longest:
            raise ValueError(f"--num-context {self.num_context}: must be >= every lag and memory length ({longest})")
        if self.accum_frames % self.segment:
            raise ValueError(f"--accum-frames {self.accum_frames}: must be a multiple of --segment {self.segment}")
        for spec in self.schedules:
            name, _, levels = spec.partition(":")
            if name not in SCHEDULES or not levels.isdigit() or (name == "df_pyramid" and int(levels) % self.window):
                raise ValueError(f"--schedules {spec!r}: expected name:levels with name in {SCHEDULES} (df_pyramid: "
                                 f"levels a multiple of --window {self.window})")
        for levels in self.levels_per_frame + [self.score_error_levels]:
            if levels < 1 or levels % self.window:
                raise ValueError(f"--levels-per-frame/--score-error-levels {levels}: must be a multiple of "
                                 f"--window {self.window} (df_pyramid takes levels/window sub-steps per frame)")

    def law(self, lag: int):
        return mixture(self.ar1_weight, ar1(self.rho), seasonal(lag, self.phi))


def build(name: str, window: int, levels: int) -> ARSchedule:
    """A preset where every frame passes `levels` noise levels: outpainting(w, levels), df_pyramid(w, levels/w),
    fifo(levels) (FIFO's window is its level count). Each costs `levels` frame-evaluations per generated frame."""
    presets = {"outpainting": lambda: outpainting(window, levels), "fifo": lambda: fifo(levels),
               "df_pyramid": lambda: df_pyramid(window, levels // window)}
    if name not in presets:
        raise ValueError(f"schedule {name!r}: valid values are {SCHEDULES}")
    return presets[name]()


def generator(cfg: TheoryConfig, *ids: int) -> torch.Generator:
    """Generator seeded from (seed, ids): each run's draws depend on the run, not on the order of the grid."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, *ids]).generate_state(1)[0]))


# ----------------------------------------------------------------------------------------------- [1] one AR step
def memory_bottleneck_grid(cfg: TheoryConfig, diffusion: Diffusion) -> list[dict]:
    M0, w, n = cfg.num_context, cfg.window, cfg.num_samples
    rows = []
    for g in cfg.lags:
        law = cfg.law(g)
        context = law.sample(n, M0, generator(cfg, 1, g))
        memory_actions, actions = frame_clock(n, M0, w)
        for m in cfg.memory_lengths:
            refs = range(M0 - m, M0)
            video = sample(ExactDenoiser(law, diffusion), diffusion, outpainting(w, cfg.steps), actions, context,
                           memory_actions, m, generator(cfg, 1, g, m), eta=cfg.eta)
            kl, bias = conditional_kl(video, context, law)
            corr_true, corr_model = lag_correlation(law, M0, M0 - g, refs)
            rows.append(dict(experiment="memory_bottleneck", g=g, m=m, schedule=f"outpainting:{cfg.steps}",
                             source_in_memory=g <= m,
                             theory_nats=memory_bottleneck(law, range(M0), refs, range(M0, M0 + w)),
                             measured_nats=kl - bias, raw_kl_nats=kl, estimation_bias_nats=bias,
                             corr_measured=sample_correlation(video[:, 0], context[:, M0 - g]),
                             corr_memory_limited=corr_model, corr_true=corr_true))
    return rows


# ----------------------------------------------------------------------------------------------- [2] by schedule
def schedule_bound(cfg: TheoryConfig, diffusion: Diffusion, law, schedule: ARSchedule, m: int) -> float:
    """IE + sum_k MB_k of Eqn. (4.1) with exact scores and exact steps: the initialization stage (Alg. 2, w > Delta)
    draws its w frames from p(. | last m context frames), then every AR step k pays MB_k (Eqn. 4.3) with its noisy
    input and output window levels, summed over the ceil(N / Delta) steps that emit the N frames."""
    M0, K, T = cfg.num_context, diffusion.num_timesteps, schedule.num_levels
    abar = lambda levels: diffusion.alpha_bar[[int(round(level * K / T)) for level in levels]]  # noqa: E731
    total = 0.0
    if schedule.w > schedule.delta:
        total += memory_bottleneck(law, range(M0), range(M0 - m, M0), range(M0, M0 + schedule.w))
    for i in range(M0, M0 + cfg.schedule_frames, schedule.delta):
        total += memory_bottleneck(law, range(i), range(i - m, i), range(i, i + schedule.w),
                                   abar(schedule.levels_in), abar(schedule.levels_out))
    return total


def schedule_grid(cfg: TheoryConfig, diffusion: Diffusion) -> list[dict]:
    M0, N, n, g = cfg.num_context, cfg.schedule_frames, cfg.rollout_samples, cfg.schedule_lag
    law = cfg.law(g)
    context = law.sample(n, M0, generator(cfg, 2, g))
    memory_actions, actions = frame_clock(n, M0, N)
    rows = []
    for j, spec in enumerate(cfg.schedules):
        name, levels = spec.split(":")[0], int(spec.split(":")[1])
        sched = build(name, cfg.window, levels)
        for m in cfg.schedule_memory_lengths:
            den = ExactDenoiser(law, diffusion)
            video = sample(den, diffusion, sched, actions, context, memory_actions, m, generator(cfg, 2, j, m),
                           eta=cfg.eta)
            kl, bias = conditional_kl(video, context, law)
            rows.append(dict(experiment="schedule", g=g, m=m, schedule=spec, calls_per_frame=den.calls / N,
                             theory_nats=schedule_bound(cfg, diffusion, law, sched, m), measured_nats=kl - bias,
                             raw_kl_nats=kl, estimation_bias_nats=bias,
                             relation="=" if sched.w == sched.delta else "<="))
    return rows


# ----------------------------------------------------------------------------------------------- [3] accumulation
def accumulation_grid(cfg: TheoryConfig, diffusion: Diffusion) -> list[dict]:
    M0, N, S, n, m = cfg.num_context, cfg.accum_frames, cfg.segment, cfg.rollout_samples, cfg.accum_memory
    law = cfg.law(cfg.accum_lag)
    context = law.sample(n, M0, generator(cfg, 3))
    memory_actions, actions = frame_clock(n, M0, N)
    true_cov = law.cov(range(S))
    floor = memory_limited_law(law, M0, N, cfg.window, m)  # outpainting, exact score, infinitely many steps
    frames = [f"{s * S}-{(s + 1) * S}" for s in range(N // S)]
    rows = [dict(experiment="accumulation", schedule="outpainting:exact", x0_gain_error=0.0, segment=s, frames=f,
                 theory_nats=segment_kl(floor, M0 + s * S, S, true_cov)) for s, f in enumerate(frames)]
    for i, name in enumerate(cfg.accum_schedules):
        for levels in cfg.levels_per_frame:
            for delta in [0.0] + (cfg.score_errors if levels == cfg.score_error_levels else []):
                sched = build(name, cfg.window, levels)
                den = ExactDenoiser(law, diffusion, x0_gain_error=delta)
                video = sample(den, diffusion, sched, actions, context, memory_actions, m,
                               generator(cfg, 3, i, levels, int(round(delta * 1e4))), eta=cfg.eta)
                terms = theorem_terms(law, diffusion, sched, m, delta)
                common = dict(experiment="accumulation", schedule=f"{name}:{levels}", levels_per_frame=levels,
                              calls_per_frame=den.calls / N, x0_gain_error=delta, see_ar=terms["SEE_AR"],
                              de_ar=terms["DE_AR"], nie_ar=terms["NIE_AR"], ie=terms["IE"], lipschitz=terms["L"])
                for s, f in enumerate(frames):
                    kl, bias = marginal_kl(video[:, s * S:(s + 1) * S], true_cov)
                    k = math.ceil((s + 1) * S / sched.delta)  # K: AR steps up to the segment's last clip
                    rows.append(dict(common, segment=s, frames=f, ar_steps=k, measured_nats=kl - bias, raw_kl_nats=kl,
                                     estimation_bias_nats=bias, bound_see_nats=k * terms["SEE_AR"],
                                     bound_nats=terms["IE"] + k * (terms["NIE_AR"] + terms["SEE_AR"] + terms["DE_AR"])))
    return rows


# ----------------------------------------------------------------------------------------------- tables
def _md(header: list[str], lines: list[list]) -> str:
    fmt = lambda v: f"{round(v, 3) + 0.0:.3f}" if isinstance(v, float) else str(v)  # noqa: E731 (no "-0.000")
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(fmt(v) for v in line) + " |" for line in lines])


def _accumulation_runs(rows: list[dict]) -> dict[tuple, list[dict]]:
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["experiment"] == "accumulation" and "measured_nats" in r:
            runs.setdefault((r["schedule"], r["x0_gain_error"]), []).append(r)
    return runs


def _holds(row: dict) -> str:
    """Eqn. (4.1) check of a [2] row, up to the fit's noise: |KL - theory| (or KL - theory) <= max(0.05, bias)."""
    tol, gap = max(0.05, row["estimation_bias_nats"]), row["measured_nats"] - row["theory_nats"]
    return "yes" if (gap <= tol if row["relation"] == "<=" else abs(gap) <= tol) else f"**no** ({gap:+.3f})"


def write_tables(cfg: TheoryConfig, rows: list[dict]) -> tuple[str, str]:
    """(results.md text, results.csv text): one Markdown table per experiment; the CSV holds every row."""
    mb = [r for r in rows if r["experiment"] == "memory_bottleneck"]
    sc = [r for r in rows if r["experiment"] == "schedule"]
    floor = [r["theory_nats"] for r in rows if r["schedule"] == "outpainting:exact"]
    law = f"a={cfg.ar1_weight}, rho={cfg.rho}, phi={cfg.phi}"
    parts = [f"# Memory bottleneck and error accumulation on Gaussian videos ({law}, seed {cfg.seed}, eta {cfg.eta})",
             "KL(truth || generated) in nats per scalar channel, minus the first-order bias of the Gaussian fit "
             "(column `estimation_bias_nats` of results.csv).",
             f"\n## [1] Memory bottleneck of one outpainting AR step (w = Delta = {cfg.window}, {cfg.steps} steps, "
             f"{cfg.num_context} context frames, {cfg.num_samples} samples)\n",
             _md(["g", "m", "source in memory", "MB (Eqn. 4.3)", "KL sampler", "KL - MB", "corr(gen, source)",
                  "corr memory-limited", "corr true"],
                 [[r["g"], r["m"], "yes" if r["source_in_memory"] else "no", r["theory_nats"], r["measured_nats"],
                   r["measured_nats"] - r["theory_nats"], r["corr_measured"], r["corr_memory_limited"], r["corr_true"]]
                  for r in mb]),
             f"\n## [2] Rollouts of {cfg.schedule_frames} frames by schedule (g = {cfg.schedule_lag}, "
             f"{cfg.rollout_samples} samples): Eqn. (4.1) with exact scores\n",
             "Theory = IE + sum_k MB_k; the sampler's KL should equal it for outpainting (no noisy frames carried) and "
             "stay below it otherwise (data processing), up to max(0.05, fit bias) nats.\n",
             _md(["schedule:levels", "calls/frame", "m", "IE + sum_k MB_k", "KL sampler", "expected", "holds"],
                 [[r["schedule"], r["calls_per_frame"], r["m"], r["theory_nats"], r["measured_nats"], r["relation"],
                   _holds(r)] for r in sc]),
             f"\n## [3] Error accumulation: KL per {cfg.segment}-frame segment of a {cfg.accum_frames}-frame rollout "
             f"(g = {cfg.accum_lag}, m = {cfg.accum_memory}, {cfg.rollout_samples} samples)\n",
             "Bound = IE + K (NIE_AR + SEE_AR + DE_AR) of Eqns. (4.2)/(4.4) with the hidden constant set to 1, K = AR "
             "steps up to the segment's end; slope = least-squares growth of the measured KL per AR step.\n"]
    lines = [["outpainting:exact (exact score, infinitely many steps)", "-", "-", 0.0, *floor, "-", "-", "-", "-", "-"]]
    for (name, delta), run in _accumulation_runs(rows).items():
        lines.append([name, run[0]["levels_per_frame"], run[0]["calls_per_frame"], delta,
                      *[r["measured_nats"] for r in run],  # slope: least squares of the KL against K
                      float(np.polyfit([r["ar_steps"] for r in run], [r["measured_nats"] for r in run], 1)[0])
                      if len(run) > 1 else float("nan"),
                      run[0]["nie_ar"] + run[0]["see_ar"] + run[0]["de_ar"], run[0]["see_ar"], run[0]["lipschitz"],
                      run[-1]["bound_nats"]])
    segs = [f"KL {r['frames']}" for r in rows if r["schedule"] == "outpainting:exact"]
    parts.append(_md(["schedule:levels", "levels/frame", "calls/frame", "delta", *segs, "slope /AR step",
                      "bound slope", "SEE_AR", "L", "bound, last"], lines))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return "\n".join(parts) + "\n", buf.getvalue()


# ----------------------------------------------------------------------------------------------- figures
def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # not pyplot: no global figure registry

    return Figure(figsize=(width, height))


def plot_memory_bottleneck(cfg: TheoryConfig, rows: list[dict]):
    """KL vs m (theory line, sampler points) and corr(generated frame, lag-g source) vs m, one column per g."""
    fig = _figure(max(12, 5 * len(cfg.lags)), 8)  # >= 1000 px wide at 100 dpi
    axes = fig.subplots(2, len(cfg.lags), squeeze=False)
    M0, w = cfg.num_context, cfg.window
    dense = list(range(0, max(cfg.memory_lengths) + 1))
    for col, g in enumerate(cfg.lags):
        law, pts = cfg.law(g), [r for r in rows if r["experiment"] == "memory_bottleneck" and r["g"] == g]
        mb = [memory_bottleneck(law, range(M0), range(M0 - m, M0), range(M0, M0 + w)) for m in dense]
        corr = [lag_correlation(law, M0, M0 - g, range(M0 - m, M0)) for m in dense]
        top, bottom = axes[0][col], axes[1][col]
        top.plot(dense, mb, "-", color="#4c72b0", label="MB (Eqn. 4.3), closed form")
        top.plot([r["m"] for r in pts], [r["measured_nats"] for r in pts], "o", color="#c44e52",
                 label=f"sampler KL ({cfg.steps} steps)")
        bottom.plot(dense, [c[1] for c in corr], "-", color="#4c72b0", label="memory-limited exact sampler")
        bottom.axhline(corr[0][0], ls="--", color="gray", label="true corr(x_t, x_{t-g})")
        bottom.plot([r["m"] for r in pts], [r["corr_measured"] for r in pts], "o", color="#c44e52", label="sampler")
        for ax in (top, bottom):
            ax.axvspan(-0.5, g - 0.5, color="#dddddd", zorder=0, label="source outside memory (m < g)")
            ax.set_xlabel("memory length m (frames)")
            ax.set_xlim(-0.5, max(dense) + 0.5)
        top.set_title(f"g = {g}: one AR step, w = Delta = {w}")
        top.set_ylabel("KL(truth || generated) (nats per scalar)")
        bottom.set_ylabel("corr(generated frame t, true frame t-g)")
        for ax in (top, bottom) if col == 0 else ():
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_accumulation(cfg: TheoryConfig, rows: list[dict]):
    """(a) exact score, few levels; (b) controlled score error; (c) measured KL vs the Eqn. (4.4) bound (log scales;
    the exact-steps outpainting floor is 0 when m >= segment - 1 and is left out)."""
    fig = _figure(17, 5)
    axes = fig.subplots(1, 3)
    colors = dict(zip(SCHEDULES, ("#4c72b0", "#dd8452", "#55a868")))
    runs = _accumulation_runs(rows)
    floor = [r for r in rows if r["schedule"] == "outpainting:exact"]
    seg = [r["segment"] for r in floor]
    dash = {0.0: ":", **{d: ("--", "-", "-.")[i % 3] for i, d in enumerate(sorted(cfg.score_errors))}}
    for (name, delta), run in runs.items():
        base, levels = name.split(":")[0], run[0]["levels_per_frame"]
        kl = [r["measured_nats"] for r in run]
        if delta == 0:
            style = ["-", "--", ":", "-."][cfg.levels_per_frame.index(levels) % 4]
            axes[0].plot(seg, kl, style, marker="o", color=colors[base], label=f"{base}, {levels} levels")
        if levels == cfg.score_error_levels:
            axes[1].plot(seg, kl, dash.get(delta, "-"), marker="o", color=colors[base], label=f"{base}, delta={delta}")
            if delta == max([0.0] + cfg.score_errors):
                axes[2].plot(seg, kl, "-", marker="o", color=colors[base], label=f"{base} measured, delta={delta}")
                for key, style, what in (("bound_nats", "--", "bound (4.4), C=1"),
                                         ("bound_see_nats", ":", "K x SEE_AR only")):
                    axes[2].plot(seg, [r[key] for r in run], style, color=colors[base], label=f"{base} {what}")
    titles = ("(a) exact score, few levels per frame",
              f"(b) score error delta, {cfg.score_error_levels} levels per frame",
              "(c) measured KL vs the bound of Eqn. (4.4)")
    for ax, title in zip(axes, titles):
        ax.set_yscale("log")
        ax.set_xticks(seg, [r["frames"] for r in floor])
        ax.set_xlabel(f"generated frames ({cfg.segment}-frame segment)")
        ax.set_ylabel("KL(truth || generated) (nats per scalar)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def log_to_mlflow(cfg: TheoryConfig, out: Path, rows: list[dict], paths: dict) -> str:
    """Config, one metric per table cell (segments as steps), tables and figures as artifacts; returns the run id."""
    from training.tracking import default_tracking_uri, start_or_resume_run

    run = start_or_resume_run(cfg.tracking_uri or default_tracking_uri(out), cfg.experiment, f"theory-{out.name}",
                              tags={"stage": "theory"}, resume_by_name=True)
    run.log_config(cfg)
    by_step: dict[int, dict[str, float]] = {}  # one batch per step: a SQLite transaction per row is slow
    for r in rows:
        name = r["schedule"].replace(":", "_")
        if r["experiment"] == "memory_bottleneck":
            key, step = f"mb/g{r['g']}_m{r['m']}", 0
        elif r["experiment"] == "schedule":
            key, step = f"schedule/{name}_m{r['m']}", 0
        else:
            key, step = f"accumulation/{name}_delta{r['x0_gain_error']}", r["segment"]
        by_step.setdefault(step, {}).update({f"{key}/{k}": v for k, v in r.items() if isinstance(v, float)
                                             and math.isfinite(v) and (k.endswith("_nats") or k.startswith("corr_"))})
    for step, metrics in by_step.items():
        run.log_metrics(metrics, step=step)
    for path in paths.values():
        run.log_file(path, "theory")
    run.end()
    return run.run_id


# ----------------------------------------------------------------------------------------------- main
def run_theory(cfg: TheoryConfig) -> dict:
    """Run [1]-[3], write results.md/.csv, config.json and the two PNGs into cfg.out_dir and log them to MLflow.
    Returns {"rows": list of result dicts (the CSV rows), "paths": {file name: Path}, "run_id": MLflow run id}."""
    from training.media import save_figure

    torch.set_num_threads(1)
    out = Path(cfg.out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    diffusion = Diffusion(cfg.num_timesteps, cfg.noise_schedule)
    t0 = time.time()
    rows: list[dict] = []
    for label, fn in (("[1] memory bottleneck", memory_bottleneck_grid), ("[2] schedules", schedule_grid),
                      ("[3] error accumulation", accumulation_grid)):
        rows += fn(cfg, diffusion)
        print(f"[theory] {label}: done at {time.time() - t0:.1f} s", flush=True)
    markdown, table_csv = write_tables(cfg, rows)
    paths = {}
    for name, text in (("config.json", to_json(cfg)), ("results.md", markdown), ("results.csv", table_csv)):
        paths[name] = out / name
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(paths[name])
    for name, fig in (("memory_bottleneck_exact.png", plot_memory_bottleneck(cfg, rows)),
                      ("error_accumulation_exact.png", plot_accumulation(cfg, rows))):
        paths[name] = save_figure(fig, out / name)
    run_id = log_to_mlflow(cfg, out, rows, paths)
    print(markdown)
    print(f"[theory] {len(rows)} rows in {time.time() - t0:.1f} s (MLflow run {run_id}); wrote "
          + ", ".join(str(p) for p in paths.values()), flush=True)
    return {"rows": rows, "paths": paths, "run_id": run_id}


def main(argv: list[str] | None = None) -> None:
    cfg, dry_run = parse_config(TheoryConfig, argv, description=__doc__)
    print(to_json(cfg), flush=True)
    if dry_run:
        return
    run_theory(cfg)


if __name__ == "__main__":
    run_cli(main)
