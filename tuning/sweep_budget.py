"""Sweep memory structure x memory length x compression x budget on Ray Tune; each trial trains, then evaluates.

    # laptop (CPU, tiny model; data from `make demo` or pipeline.collect + pipeline.encode):
    python -m tuning.sweep_budget --data-dir runs/demo/latents --out-dir runs/sweep-demo
    # the memory bottleneck on 2 cores in about an hour (8x8 demo data, held-out exact-revisit cases):
    python -m tuning.sweep_budget --preset laptop --data-dir runs/demo/latents \
        --cases runs/demo/heldout-latents/eval_cases.parquet --out-dir runs/sweep-laptop
    python -m tuning.sweep_budget --data-dir runs/demo/latents --structures prepend --memory-lengths 16 48
    # cluster (after `ray up cluster.yaml`; MLflow server on the head):
    python -m tuning.sweep_budget --preset paper --address auto --data-dir /shared/maze/latents \\
        --out-dir /shared/sweeps/paper --gpus-per-trial 1 --tracking-uri http://<head>:5000

Rerunning the same command resumes the sweep (`Tuner.restore`): finished trials are not rerun, unfinished and
failed ones continue from their last training checkpoint. The data is checked against every trial's needs before
the first trial starts. Each trial is a Tune function that builds its own `TorchTrainer` (the Train V2 way).
MLflow: one parent run for the sweep, one child run per trial, each ended with its true status (FAILED, KILLED).
The command exits 0 only when every trial finished: 1 when one failed (each named with its reason), 130 when
interrupted. Results (Table 1/2/3-4 layouts, plots) are written by tuning.report into <out>/report and logged to
the parent run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.cli import field, parse_config, run_cli, to_json
from training.choices import COMPRESSIONS, STRUCTURES
from tuning.grid import BUDGETS, GRIDS, Combo, build_grid

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.evaluate import EvalConfig

@dataclass(frozen=True)
class Preset:
    """The sizes of one run scale: what every trial trains and evaluates with, and what a trial holds."""

    grid: str               # the grid the preset runs unless --grid says otherwise
    model_size: str         # denoiser size preset (training --model-size)
    steps: int              # training steps per trial
    batch_size: int         # clips per training worker per step
    window: int             # current window w
    lr: float               # Adam learning rate
    revisit_share: float    # share of training windows placed before a revisit in reach
    eval_steps: int         # denoising steps per AR step when sampling
    num_rollout_cases: int  # 64-frame rollouts for PSNR by segment (0 = skip)
    probe_max_steps: int    # scene probe training steps at most
    cpus_per_trial: float   # CPUs per training worker
    gpus_per_trial: float   # GPUs per trial
    max_concurrent: int = 0  # trials at once (0 = as many as the cluster's CPUs/GPUs allow)


# laptop: the recipe of `make demo` (docs/results.md) for each trial of the laptop grid.
PRESETS = {
    "demo": Preset(grid="paper", model_size="tiny", steps=30, batch_size=4, window=8, lr=1e-4, revisit_share=0.5,
                   eval_steps=4, num_rollout_cases=2, probe_max_steps=600, cpus_per_trial=0.5, gpus_per_trial=0.0),
    "laptop": Preset(grid="laptop", model_size="tiny", steps=2500, batch_size=8, window=8, lr=1e-3, revisit_share=0.9,
                     eval_steps=8, num_rollout_cases=2, probe_max_steps=600, cpus_per_trial=0.5, gpus_per_trial=0.0,
                     max_concurrent=1),  # 4 trials at once on 2 cores: 167 training frames/s in all, 1 alone: 250
    "paper": Preset(grid="paper", model_size="paper", steps=100_000, batch_size=32, window=16, lr=1e-4,
                    revisit_share=0.5, eval_steps=10, num_rollout_cases=32, probe_max_steps=3000, cpus_per_trial=4.0,
                    gpus_per_trial=1.0),
}
# SweepConfig fields that replace the preset's value when given, with the least value each accepts
OVERRIDES = {"steps": 1, "batch_size": 1, "window": 1, "probe_max_steps": 1, "num_rollout_cases": 0,
             "gpus_per_trial": 0, "cpus_per_trial": 0}


@dataclass
class SweepConfig:
    data_dir: str = field("runs/demo/latents", "latent shards with eval_cases.parquet (pipeline.encode output)")
    out_dir: str = field("runs/sweep-demo", "sweep output folder (Tune state, trials/, report/, mlflow.db)",
                         aliases=("--out",))
    cases: str = field("", "evaluation cases (pipeline.eval_cases); empty = <data-dir>/eval_cases.parquet")
    preset: str = field("demo", "run scale: demo (CPU, tiny model, minutes), laptop (CPU, the memory bottleneck in "
                        "about an hour on 8x8 frames) or paper (GPU cluster)", choices=list(PRESETS))
    grid: str = field("", "paper: the combinations of the paper's Table 1; laptop: prepend m 4/8/16 and m16 joint "
                      "budget 4; full: every combination (empty = the preset's: laptop for --preset laptop, else "
                      "paper)", choices=["", *GRIDS])
    structures: list[str] = field([], f"restrict to these memory structures {list(STRUCTURES)}")
    memory_lengths: list[int] = field([], "restrict to these memory lengths (frames)")
    compressions: list[str] = field([], f"restrict to these compressions {list(COMPRESSIONS)}")
    budgets: list[int] = field([], f"restrict to these compression budgets (frames), e.g. {list(BUDGETS)}")
    steps: int | None = field(None, "training steps per trial (default: the preset's)")
    batch_size: int | None = field(None, "batch size per training worker (default: the preset's)")
    window: int | None = field(None, "current window w in frames (default: the preset's)")
    probe_max_steps: int | None = field(None, "scene probe training steps at most, trained once per data folder "
                                              "(default: the preset's)")
    num_rollout_cases: int | None = field(None, "64-frame rollout cases per trial for PSNR by segment; they need "
                                                "episodes longer than 64 frames (0 = skip; default: the preset's)")
    gpus_per_trial: float | None = field(None, "GPUs per trial (default: the preset's; paper: 1)")
    cpus_per_trial: float | None = field(None, "CPUs per training worker (default: the preset's)")
    max_concurrent_trials: int = field(0, "trials at once (0 = the preset's: laptop 1, else as many as the cluster's "
                                          "GPUs/CPUs allow)")
    seed: int = field(0, "seed for every trial's training and evaluation")
    address: str = field("", "Ray cluster to join ('auto' on a cluster); empty starts a local one")
    tracking_uri: str = field("", "MLflow URI; empty = sqlite:///<out-dir>/mlflow.db (one machine only)")

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"--preset: {self.preset!r} is not one of {list(PRESETS)}")
        self.grid = self.grid or PRESETS[self.preset].grid
        for name, least in OVERRIDES.items():
            if getattr(self, name) is not None and getattr(self, name) < least:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected >= {least}")
        if self.max_concurrent_trials < 0:
            raise ValueError(f"--max-concurrent-trials {self.max_concurrent_trials}: expected >= 0")

    def resolved(self) -> Preset:
        """The preset with the values this command gives instead."""
        return dataclasses.replace(PRESETS[self.preset], **{name: getattr(self, name) for name in OVERRIDES
                                                           if getattr(self, name) is not None})


@dataclass(frozen=True)
class Template:
    """What every trial runs, built once by the driver: the trial's configs are these with its grid point's fields
    replaced (`trial_train`, `trial_eval`). Tune hands it to every trial as it is."""

    out_dir: str                        # the sweep's folder; trial c writes into <out_dir>/trials/<c.name>
    train: TrainConfig
    eval: EvalConfig


def make_template(cfg: SweepConfig, out_dir: Path, data_dir: Path, cases: Path, tracking_uri: str,
                  parent_run_id: str = "") -> Template:
    from training.config import TrainConfig
    from training.evaluate import EvalConfig

    p = cfg.resolved()
    train = TrainConfig(data_dir=str(data_dir), model_size=p.model_size, window=p.window, batch_size=p.batch_size,
                        steps=p.steps, lr=p.lr, revisit_share=p.revisit_share, seed=cfg.seed, num_workers=1,
                        use_gpu=p.gpus_per_trial > 0, cpus_per_worker=p.cpus_per_trial, backend="ray",
                        tracking_uri=tracking_uri, experiment="memvid-sweeps", parent_run_id=parent_run_id,
                        checkpoint_every=max(10, p.steps // 4))
    evaluation = EvalConfig(cases=str(cases), steps=p.eval_steps, num_rollout_cases=p.num_rollout_cases,
                            num_videos=2, seed=cfg.seed, probe_max_steps=p.probe_max_steps, tracking_uri=tracking_uri,
                            device="cpu" if p.gpus_per_trial <= 0 else "auto")
    return Template(out_dir=str(out_dir), train=train, eval=evaluation)


def trial_train(t: Template, combo: Combo) -> TrainConfig:
    """The training of one trial (the driver builds it too, to check the data before the first trial)."""
    return dataclasses.replace(t.train, memory=combo.memory, memory_length=combo.memory_length,
                               compression=combo.compression, budget=combo.budget, name=combo.name,
                               out_dir=str(Path(t.out_dir) / "trials" / combo.name))


def trial_eval(t: Template, combo: Combo, checkpoint: str) -> EvalConfig:
    return dataclasses.replace(t.eval, checkpoint=checkpoint,
                               out_dir=str(Path(t.out_dir) / "trials" / combo.name / "eval"))


# ---------------------------------------------------------------------------------------------------- checks
def check_resources(gpus_per_trial: float) -> None:
    """Fail before any trial starts when no node has `gpus_per_trial` GPUs."""
    import ray

    if gpus_per_trial <= 0:
        return
    most = max((n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]), default=0)
    if most < gpus_per_trial:
        raise ValueError(f"--gpus-per-trial {gpus_per_trial}: no node of this cluster has that many GPUs (the most "
                         f"on one node is {most:g}); lower it, or start GPU workers (cluster.yaml: gpu_worker)")


def check_data(data_dir: Path, cases: str = "") -> Path:
    cases = Path(cases).expanduser().resolve() if cases else data_dir / "eval_cases.parquet"
    if not (data_dir / "manifest.json").exists():
        raise FileNotFoundError(f"--data-dir {data_dir}: no latent shards (manifest.json) there; make them with "
                                f"`make demo` or pipeline.collect --agent revisit + pipeline.encode")
    if not cases.exists():
        raise FileNotFoundError(f"--cases {cases}: no such file; build it with "
                                f"`python -m pipeline.eval_cases --data-dir {data_dir}`")
    return cases


def check_trial_data(combos: list[Combo], t: Template) -> None:
    """Fail before the first trial when the data cannot serve every trial: training (a full window in some
    episode, via training.train.check_training_data) and evaluation (retrieval cases that fit the data, and
    episodes longer than the rollout horizon when rollout cases are asked for). Errors name the flag."""
    from pipeline.eval_cases import ROLLOUT_CASES, load_eval_cases
    from pipeline.windows import index_shards
    from training.metrics import NUM_SEGMENTS, SEGMENT_LENGTH
    from training.train import check_training_data, latent_shape

    for combo in combos:
        check_training_data(trial_train(t, combo))
    data_dir, cases = t.train.data_dir, Path(t.eval.cases)
    retrieval = [c for c in load_eval_cases(cases) if c.kind != "rollout"]
    if not retrieval:
        raise ValueError(f"--data-dir {data_dir}: {cases.name} holds no retrieval cases; rebuild it from revisit "
                         f"episodes with `python -m pipeline.eval_cases --data-dir {data_dir}`")
    channels, resolution = latent_shape(data_dir)
    if retrieval[0].target_x.shape[1:] != (channels, resolution, resolution):
        raise ValueError(f"--data-dir {data_dir}: {cases.name} holds frames of shape "
                         f"{retrieval[0].target_x.shape[1:]}, the latents are {(channels, resolution, resolution)}; "
                         f"rebuild the cases with `python -m pipeline.eval_cases --data-dir {data_dir}`")
    horizon = SEGMENT_LENGTH * NUM_SEGMENTS
    if t.eval.num_rollout_cases > 0:
        rollout_file = cases.parent / ROLLOUT_CASES
        if rollout_file.exists():
            usable = sum(len(c.actions) >= horizon for c in load_eval_cases(rollout_file))
        else:
            usable = sum(s.num_rows for s in index_shards(data_dir) if s.length > horizon)
        if not usable:
            longest = max((s.length for s in index_shards(data_dir)), default=0)
            raise ValueError(f"--num-rollout-cases {t.eval.num_rollout_cases}: rollout cases need episodes longer "
                             f"than {horizon} frames, the longest in --data-dir {data_dir} has {longest}; pass "
                             f"--num-rollout-cases 0 to skip PSNR by segment, or collect longer episodes "
                             f"(pipeline.collect --length {horizon + 1} or more)")


def max_concurrent(cfg: SweepConfig) -> int:
    import ray

    p = cfg.resolved()
    if cfg.max_concurrent_trials or p.max_concurrent:
        return cfg.max_concurrent_trials or p.max_concurrent
    res = ray.cluster_resources()
    if p.gpus_per_trial > 0:
        return max(1, int(res.get("GPU", 0) // p.gpus_per_trial))
    # each trial holds 0.25 CPU for its driver + one training worker; keep one CPU for Ray Data reads
    return max(1, int((res.get("CPU", 1) - 1) // (p.cpus_per_trial + 0.25)))


# ---------------------------------------------------------------------------------------------------- trial
def run_trial(config: dict) -> None:
    """Tune function trainable: train one combination with a TorchTrainer, evaluate it, report the metrics."""
    from ray import tune

    from training.evaluate import run_evaluation
    from training.train import run_training

    if "template" not in config:
        raise ValueError("this sweep's saved state comes from an older memvid (untyped trial settings); start it "
                         "again in a new --out-dir")
    combo, t = Combo(**config["combo"]), config["template"]
    out = Path(t.out_dir)
    started, trained = time.time(), None
    (out / "trials" / f"{combo.name}.json").unlink(missing_ok=True)  # an earlier try's error record
    try:
        trained = run_training(trial_train(t, combo))  # ends its child run FAILED/KILLED on its own errors
        evaluation = trial_eval(t, combo, trained["checkpoint"])
        metrics = run_evaluation(evaluation)
    except Exception as e:
        # The record says why (a rerun retries the trial); a child run that training had FINISHED fails with it.
        first = (str(e).strip().splitlines() or [""])[0]
        with contextlib.suppress(OSError):
            _write_record(out, {"name": combo.name, "config": dataclasses.asdict(combo), "metrics": {},
                                "status": "error", "error": f"{type(e).__name__}: {first}"[:2000]})
        if trained and trained["mlflow_run_id"]:
            from training.tracking import RunLogger, make_client

            RunLogger(make_client(t.train.tracking_uri), trained["mlflow_run_id"], "").end_with(
                e, "evaluate: ", only_if_running=False)
        raise
    metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    results = json.loads((Path(evaluation.out_dir) / "results.json").read_text())
    record = {"name": combo.name, "config": dataclasses.asdict(combo), "metrics": metrics, "status": "ok", "error": "",
              "calibration": results.get("calibration", {}), "curves": retrieval_curves(results),
              "mlflow_run_id": trained["mlflow_run_id"], "trial_sec": time.time() - started}
    _write_record(out, record)
    tune.report({**metrics, "trial_sec": record["trial_sec"]})


def retrieval_curves(results: dict) -> dict:
    """{"kind": k, "rows": {row: {bin of d: rate summary}}}: retrieval vs d of the model and of the copy oracle, on
    the evaluation's exact revisits (else its room revisits), for the sweep's retrieval-vs-d plot."""
    rows = {name: r["curve"] for name, r in results.get("rows", {}).items()
            if name.startswith(("model", "copy")) and r.get("curve")}
    kind = "exact" if any("exact" in c for c in rows.values()) else "revisit"
    return {"kind": kind, "rows": {name: c[kind] for name, c in rows.items() if kind in c}}


def _write_record(out: Path, record: dict) -> None:
    from pipeline.shards import write_json_atomic

    (out / "trials").mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, out / "trials" / f"{record['name']}.json")


# ---------------------------------------------------------------------------------------------------- driver
def run_sweep(cfg: SweepConfig) -> dict:
    """Run (or resume) the sweep; returns {"trials": [...records], "report": {name: path}, "parent_run_id": id,
    "failed": [records of trials that errored], "unfinished": [names of trials not run to the end (interrupted)]}.

    The data is checked against every trial's needs before the first trial (ValueError naming the flag). The
    parent MLflow run ends FINISHED only when every trial finished: FAILED when one failed (its child run too),
    KILLED when interrupted (Ctrl-C, SIGTERM: Tune stops and the unfinished trials' runs end KILLED).
    """
    from pipeline.console import start_ray
    from training.tracking import default_tracking_uri, end_running_children, end_status, start_or_resume_run

    combos = build_grid(cfg.grid, cfg.structures, cfg.memory_lengths, cfg.compressions, cfg.budgets)
    out = Path(cfg.out_dir).expanduser().resolve()
    data_dir = Path(cfg.data_dir).expanduser().resolve()
    cases = check_data(data_dir, cfg.cases)
    # every trial's data needs, before Ray, MLflow, the first trial or the output folder
    check_trial_data(combos, make_template(cfg, out, data_dir, cases, cfg.tracking_uri))
    tracking_uri = cfg.tracking_uri or default_tracking_uri(out)  # creates the output folder
    start_ray(cfg.address, num_cpus=None if cfg.address else 4, log_to_driver=False)
    check_resources(cfg.resolved().gpus_per_trial)

    # [1] The parent MLflow run, found again on resume through sweep_state.json.
    state_path = out / "sweep_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    parent = start_or_resume_run(tracking_uri, "memvid-sweeps", out.name, run_id=state.get("parent_run_id"),
                                 tags={"stage": "sweep"})
    try:
        result = _run_trials(cfg, combos, make_template(cfg, out, data_dir, cases, tracking_uri, parent.run_id),
                             parent, state, state_path)
    except BaseException as e:  # the parent and any child still RUNNING end with the true status
        parent.end_with(e, "sweep: ")
        with contextlib.suppress(Exception):
            end_running_children(tracking_uri, parent.run_id, end_status(e), f"sweep stopped: {type(e).__name__}")
        raise
    failed, unfinished = result["failed"], result["unfinished"]
    status = "FAILED" if failed else "KILLED" if unfinished else "FINISHED"
    why = "; ".join([f"{t['name']}: {t['error']}" for t in failed] + [f"{n}: not finished" for n in unfinished])
    if why:
        parent.set_tags({"stopped": why[:5000]})
        end_running_children(tracking_uri, parent.run_id, "KILLED", "sweep stopped before this trial finished",
                             also=unfinished)
        end_running_children(tracking_uri, parent.run_id, "FAILED", "sweep ended with this trial failed",
                             also=[t["name"] for t in failed])
    parent.end(status)
    return result


def _run_trials(cfg: SweepConfig, combos: list[Combo], t: Template, parent, state: dict, state_path: Path) -> dict:
    """Steps 1-3 of run_sweep once the parent run is open: config, probe, Tune, records and report."""
    from ray import tune

    from pipeline.shards import error_line
    from tuning.report import load_trials, write_report
    from tuning.trial_progress import TrialProgress

    out = Path(t.out_dir)
    if not state:
        parent.log_config({**json.loads(to_json(cfg)), "resolved": dataclasses.asdict(cfg.resolved()),
                           "trials": [c.name for c in combos]})
        from pipeline.shards import write_json_atomic

        write_json_atomic({"parent_run_id": parent.run_id, "trials": [c.name for c in combos]}, state_path)

    # [2] Tune: one function trial per combination; resume with Tuner.restore when a previous run left state.
    # The scene probe is trained once here and saved beside the data; every trial then loads it.
    from pipeline.eval_cases import load_eval_cases
    from training.evaluate import probe_settings
    from training.probe import load_or_train_probe

    if any(c.kind == "revisit" for c in load_eval_cases(t.eval.cases)):  # exact revisits are judged on pixels
        load_or_train_probe(Path(t.eval.cases).parent, probe_settings(t.eval))
    # Progress is TrialProgress's bar. Tune's newer output engine would still print its configuration table and
    # result paths at verbose=0; its older one prints nothing at verbose=0 (read by Tune in this process).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    trainable = tune.with_resources(run_trial, {"CPU": 0.25})
    tune_path = out / "tune" / "sweep"
    if tune.Tuner.can_restore(str(tune_path)):
        print(f"resuming the sweep from {tune_path}", flush=True)
        # errored trials run again (from their last checkpoint): rerunning the same command finishes the sweep
        tuner = tune.Tuner.restore(str(tune_path), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"combo": tune.grid_search([dataclasses.asdict(c) for c in combos]), "template": t},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent(cfg)),
            run_config=tune.RunConfig(name="sweep", storage_path=str(out / "tune"), verbose=0,
                                      callbacks=[TrialProgress(len(combos))]),
        )
    grid = tuner.fit()

    # [3] Records: each trial writes its own (ok, or error with the reason) and removes an earlier try's when it
    # starts; a trial that died without one (its process killed) gets one from Tune's error here. Records, not
    # results, say how a trial ended: a restored errored trial has no config in the ResultGrid, and a trial that
    # failed, then finished on a retry, may still carry its old error there. Then the report, to the parent.
    names = {c.name for c in combos}
    recorded = {t["name"] for t in load_trials(str(out))}
    for result in grid:
        if result.error is not None and result.config:
            combo = Combo(**result.config["combo"])
            if combo.name not in recorded:
                _write_record(out, {"name": combo.name, "config": dataclasses.asdict(combo), "metrics": {},
                                    "status": "error", "error": error_line(result.error)[:2000]})
    trials = [t for t in load_trials(str(out)) if t["name"] in names]
    report = write_report(trials, out / "report")
    for path in report.values():
        parent.log_file(path, "report")
    done = {t["name"] for t in trials}
    return {"trials": trials, "report": report, "parent_run_id": parent.run_id,
            "experiment_id": parent.experiment_id, "tracking_uri": t.train.tracking_uri,
            "failed": [t for t in trials if t["status"] != "ok"],
            "unfinished": sorted(names - done)}


def main(argv: list[str] | None = None) -> int | None:
    grid = lambda c: build_grid(c.grid, c.structures, c.memory_lengths, c.compressions, c.budgets)
    cfg, dry_run = parse_config(SweepConfig, argv, description=__doc__, check=grid)
    combos = grid(cfg)
    print(to_json(cfg))
    print(f"{len(combos)} trials: {', '.join(c.name for c in combos)}", flush=True)
    if dry_run:
        check_data(Path(cfg.data_dir).expanduser().resolve(), cfg.cases)  # the real run would stop here at once
        return
    from training.tracking import sigterm_as_interrupt

    sigterm_as_interrupt()  # SIGTERM stops Tune as Ctrl-C does, so the MLflow runs end KILLED
    result = run_sweep(cfg)
    ok = sum(t["status"] == "ok" for t in result["trials"])
    print(f"{ok}/{len(combos)} trials finished; report: {result['report']['results_md']}")
    from training.tracking import ui_instructions

    print(f"MLflow: experiment 'memvid-sweeps', parent run {result['parent_run_id']} (one child run per trial)")
    print(ui_instructions(result["tracking_uri"], result["experiment_id"]))
    for t in result["failed"]:
        print(f"trial {t['name']} failed: {t['error']}", file=sys.stderr)
    if result["unfinished"]:
        print(f"trials not finished (interrupted): {', '.join(result['unfinished'])}", file=sys.stderr)
    if result["failed"] or result["unfinished"]:
        print("rerun the same command to run them again (finished trials are kept)", file=sys.stderr)
        return 1 if result["failed"] else 130
    return 0


if __name__ == "__main__":
    run_cli(main)
