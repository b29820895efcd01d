"""Sweep memory structure x memory length x compression x budget on Ray Tune; each trial trains, then evaluates.

    # laptop (CPU, tiny model; data from `make demo` or pipeline.collect + pipeline.encode):
    python -m tuning.sweep_budget --data-dir runs/demo/latents --out runs/sweep-demo
    # the memory bottleneck on 2 cores in about an hour (8x8 demo data, held-out exact-revisit cases):
    python -m tuning.sweep_budget --preset laptop --data-dir runs/demo/latents \
        --cases runs/demo/heldout-latents/eval_cases.parquet --out runs/sweep-laptop
    python -m tuning.sweep_budget --data-dir runs/demo/latents --structures prepend --memory-lengths 16 48
    # cluster (after `ray up cluster.yaml`; MLflow server on the head):
    python -m tuning.sweep_budget --preset paper --address auto --data-dir /shared/maze/latents \\
        --out /shared/sweeps/paper --gpus-per-trial 1 --tracking-uri http://<head>:5000

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

from pipeline.cli import field, parse_config, run_cli, to_json
from tuning.grid import BUDGETS, COMPRESSIONS, GRIDS, STRUCTURES, Combo, build_grid

PRESETS = ("demo", "laptop", "paper")
# Per-preset training/evaluation sizes; flags left at 0 take these. laptop: the recipe of `make demo`
# (docs/results.md) for each trial of the laptop grid.
PRESET_VALUES = {
    "demo": dict(model_preset="tiny", steps=30, batch_size=4, window=8, eval_steps=4, num_cases=0,
                 num_rollout_cases=2, probe_max_steps=600, cpus_per_trial=0.5, gpus_per_trial=0.0,
                 lr=1e-4, revisit_share=0.5, grid="paper"),
    "laptop": dict(model_preset="tiny", steps=2500, batch_size=8, window=8, eval_steps=8, num_cases=0,
                   num_rollout_cases=2, probe_max_steps=600, cpus_per_trial=0.5, gpus_per_trial=0.0,
                   lr=1e-3, revisit_share=0.9, grid="laptop"),
    "paper": dict(model_preset="paper", steps=100_000, batch_size=32, window=16, eval_steps=10, num_cases=0,
                  num_rollout_cases=32, probe_max_steps=3000, cpus_per_trial=4.0, gpus_per_trial=1.0,
                  lr=1e-4, revisit_share=0.5, grid="paper"),
}


@dataclass
class SweepConfig:
    data_dir: str = field("runs/demo/latents", "latent shards with eval_cases.parquet (pipeline.encode output)")
    out: str = field("runs/sweep-demo", "sweep output folder (Tune state, trials/, report/, mlflow.db)")
    cases: str = field("", "evaluation cases (pipeline.eval_cases); empty = <data-dir>/eval_cases.parquet")
    preset: str = field("demo", "sizes: demo (CPU, tiny model, minutes), laptop (CPU, the memory bottleneck in about "
                        "an hour on 8x8 frames) or paper (GPU cluster)", choices=list(PRESETS))
    grid: str = field("", "paper: the combinations of the paper's Table 1; laptop: prepend m 4/8/16 and m16 joint "
                      "budget 4; full: every combination (empty = the preset's: laptop for --preset laptop, else "
                      "paper)", choices=["", *GRIDS])
    structures: list[str] = field([], f"restrict to these memory structures {list(STRUCTURES)}")
    memory_lengths: list[int] = field([], "restrict to these memory lengths (frames)")
    compressions: list[str] = field([], f"restrict to these compressions {list(COMPRESSIONS)}")
    budgets: list[int] = field([], f"restrict to these compression budgets (frames), e.g. {list(BUDGETS)}")
    steps: int = field(0, "training steps per trial (0 = preset)")
    batch_size: int = field(0, "batch size per training worker (0 = preset)")
    window: int = field(0, "current window w in frames (0 = preset)")
    probe_max_steps: int = field(0, "scene probe training steps at most, trained once per data folder (0 = preset)")
    num_rollout_cases: int = field(-1, "64-frame rollout cases per trial for PSNR by segment; they need episodes "
                                       "longer than 64 frames (-1 = preset; 0 = skip)")
    gpus_per_trial: float = field(-1.0, "GPUs per trial (-1 = preset; paper preset: 1)")
    cpus_per_trial: float = field(-1.0, "CPUs per training worker (-1 = preset)")
    max_concurrent_trials: int = field(0, "trials at once (0 = as many as the cluster's GPUs/CPUs allow)")
    seed: int = field(0, "seed for every trial's training and evaluation")
    address: str = field("", "Ray cluster to join ('auto' on a cluster); empty starts a local one")
    tracking_uri: str = field("", "MLflow URI; empty = sqlite:///<out>/mlflow.db (one machine only)")

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"--preset: {self.preset!r} is not one of {list(PRESETS)}")
        self.grid = self.grid or PRESET_VALUES[self.preset]["grid"]
        for name in ("steps", "batch_size", "window", "probe_max_steps", "max_concurrent_trials"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= 0, got {getattr(self, name)}")

    def resolved(self) -> dict:
        """Preset values filled in for fields left at their 'use the preset' value."""
        values = dict(PRESET_VALUES[self.preset])
        for name in ("steps", "batch_size", "window", "probe_max_steps"):
            if getattr(self, name) > 0:
                values[name] = getattr(self, name)
        for name in ("gpus_per_trial", "cpus_per_trial", "num_rollout_cases"):
            if getattr(self, name) >= 0:
                values[name] = getattr(self, name)
        return values


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


def check_trial_data(combos: list[Combo], base: dict) -> None:
    """Fail before the first trial when the data cannot serve every trial: training (a full window in some
    episode, via training.train.check_training_data) and evaluation (retrieval cases that fit the data, and
    episodes longer than the rollout horizon when rollout cases are asked for). Errors name the flag."""
    from pipeline.eval_cases import ROLLOUT_CASES, load_eval_cases
    from pipeline.windows import index_shards
    from training.metrics import NUM_SEGMENTS, SEGMENT_LENGTH
    from training.train import check_training_data, latent_shape

    for combo in combos:
        check_training_data(train_config(base, combo))
    data_dir, cases = base["data_dir"], Path(base["cases"])
    retrieval = [c for c in load_eval_cases(cases) if c.kind != "rollout"]
    if not retrieval:
        raise ValueError(f"--data-dir {data_dir}: {cases.name} holds no retrieval cases; rebuild it from revisit "
                         f"episodes with `python -m pipeline.eval_cases --data-dir {data_dir}`")
    channels, resolution = latent_shape(data_dir)
    if retrieval[0].target_x.shape[1:] != (channels, resolution, resolution):
        raise ValueError(f"--data-dir {data_dir}: {cases.name} holds frames of shape {retrieval[0].target_x.shape[1:]}, "
                         f"the latents are {(channels, resolution, resolution)}; rebuild the cases with "
                         f"`python -m pipeline.eval_cases --data-dir {data_dir}`")
    horizon = SEGMENT_LENGTH * NUM_SEGMENTS
    if base["num_rollout_cases"] > 0:
        rollout_file = cases.parent / ROLLOUT_CASES
        if rollout_file.exists():
            usable = sum(len(c.actions) >= horizon for c in load_eval_cases(rollout_file))
        else:
            usable = sum(s.num_rows for s in index_shards(data_dir) if s.length > horizon)
        if not usable:
            longest = max((s.length for s in index_shards(data_dir)), default=0)
            raise ValueError(f"--num-rollout-cases {base['num_rollout_cases']}: rollout cases need episodes longer "
                             f"than {horizon} frames, the longest in --data-dir {data_dir} has {longest}; pass "
                             f"--num-rollout-cases 0 to skip PSNR by segment, or collect longer episodes "
                             f"(pipeline.collect --length {horizon + 1} or more)")


def max_concurrent(cfg: SweepConfig, values: dict) -> int:
    import ray

    if cfg.max_concurrent_trials:
        return cfg.max_concurrent_trials
    res = ray.cluster_resources()
    if values["gpus_per_trial"] > 0:
        return max(1, int(res.get("GPU", 0) // values["gpus_per_trial"]))
    # each trial holds 0.25 CPU for its driver + one training worker; keep one CPU for Ray Data reads
    return max(1, int((res.get("CPU", 1) - 1) // (values["cpus_per_trial"] + 0.25)))


# ---------------------------------------------------------------------------------------------------- trial
def run_trial(config: dict) -> None:
    """Tune function trainable: train one combination with a TorchTrainer, evaluate it, report the metrics."""
    from ray import tune

    from training.evaluate import run_evaluation
    from training.train import run_training

    combo, base = Combo(**config["combo"]), config["base"]
    trial_dir = Path(base["out"]) / "trials" / combo.name
    started, trained = time.time(), None
    (Path(base["out"]) / "trials" / f"{combo.name}.json").unlink(missing_ok=True)  # an earlier try's error record
    try:
        trained = run_training(train_config(base, combo))  # ends its child run FAILED/KILLED on its own errors
        metrics = run_evaluation(eval_config(base, trained["checkpoint"], trial_dir / "eval"))
    except Exception as e:
        # The record says why (a rerun retries the trial); a child run that training had FINISHED fails with it.
        first = (str(e).strip().splitlines() or [""])[0]
        with contextlib.suppress(OSError):
            _write_record(Path(base["out"]), {"name": combo.name, "config": dataclasses.asdict(combo), "metrics": {},
                                              "status": "error", "error": f"{type(e).__name__}: {first}"[:2000]})
        if trained and trained["mlflow_run_id"]:
            from training.tracking import RunLogger, make_client

            RunLogger(make_client(base["tracking_uri"]), trained["mlflow_run_id"], "").end_with(
                e, "evaluate: ", only_if_running=False)
        raise
    metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    calibration = json.loads((trial_dir / "eval" / "results.json").read_text()).get("calibration", {})
    record = {"name": combo.name, "config": dataclasses.asdict(combo), "metrics": metrics, "status": "ok", "error": "",
              "calibration": calibration, "mlflow_run_id": trained["mlflow_run_id"], "trial_sec": time.time() - started}
    _write_record(Path(base["out"]), record)
    tune.report({**metrics, "trial_sec": record["trial_sec"]})


def train_config(base: dict, combo: Combo):
    """The training every trial runs (the driver builds it too, to check the data before the first trial)."""
    from training.train import TrainConfig

    return TrainConfig(
        data_dir=base["data_dir"], out_dir=str(Path(base["out"]) / "trials" / combo.name), name=combo.name,
        preset=base["model_preset"], memory=combo.memory, memory_length=combo.memory_length,
        compression=combo.compression, budget=combo.budget, window=base["window"], batch_size=base["batch_size"],
        steps=base["steps"], lr=base["lr"], revisit_share=base["revisit_share"], seed=base["seed"], num_workers=1, use_gpu=base["gpus_per_trial"] > 0,
        cpus_per_worker=base["cpus_per_trial"], backend="ray", tracking_uri=base["tracking_uri"],
        experiment=base["experiment"], parent_run_id=base["parent_run_id"], checkpoint_every=max(10, base["steps"] // 4))


def eval_config(base: dict, checkpoint: str, out_dir: Path):
    """The evaluation every trial runs (the driver uses it too, to train the scene probe once up front)."""
    from training.evaluate import EvalConfig

    return EvalConfig(checkpoint=checkpoint, cases=base["cases"], out_dir=str(out_dir), steps=base["eval_steps"],
                      num_cases=base["num_cases"], num_rollout_cases=base["num_rollout_cases"], num_videos=2,
                      seed=base["seed"], probe_max_steps=base["probe_max_steps"], tracking_uri=base["tracking_uri"],
                      device="cpu" if base["gpus_per_trial"] <= 0 else "auto")


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
    values = cfg.resolved()
    out = Path(cfg.out).expanduser().resolve()
    data_dir = Path(cfg.data_dir).expanduser().resolve()
    cases = check_data(data_dir, cfg.cases)
    base = {**values, "out": str(out), "experiment": "memvid-sweeps", "data_dir": str(data_dir), "cases": str(cases),
            "seed": cfg.seed, "tracking_uri": cfg.tracking_uri or f"sqlite:///{out / 'mlflow.db'}", "parent_run_id": ""}
    check_trial_data(combos, base)  # every trial's data needs, before Ray, MLflow or the first trial
    out.mkdir(parents=True, exist_ok=True)
    start_ray(cfg.address, num_cpus=None if cfg.address else 4, log_to_driver=False)
    check_resources(values["gpus_per_trial"])
    tracking_uri = cfg.tracking_uri or default_tracking_uri(out)

    # [1] The parent MLflow run, found again on resume through sweep_state.json.
    state_path = out / "sweep_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    parent = start_or_resume_run(tracking_uri, "memvid-sweeps", out.name, run_id=state.get("parent_run_id"),
                                 tags={"stage": "sweep"})
    try:
        result = _run_trials(cfg, combos, {**base, "tracking_uri": tracking_uri, "parent_run_id": parent.run_id},
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


def _run_trials(cfg: SweepConfig, combos: list[Combo], base: dict, parent, state: dict, state_path: Path) -> dict:
    """Steps 1-3 of run_sweep once the parent run is open: config, probe, Tune, records and report."""
    from ray import tune

    from pipeline.shards import error_line
    from tuning.report import load_trials, write_report
    from tuning.trial_progress import TrialProgress

    out = Path(base["out"])
    if not state:
        parent.log_config({**json.loads(to_json(cfg)), "resolved": cfg.resolved(), "trials": [c.name for c in combos]})
        from pipeline.shards import write_json_atomic

        write_json_atomic({"parent_run_id": parent.run_id, "trials": [c.name for c in combos]}, state_path)

    # [2] Tune: one function trial per combination; resume with Tuner.restore when a previous run left state.
    # The scene probe is trained once here and saved beside the data; every trial then loads it.
    from training.evaluate import probe_settings
    from training.probe import load_or_train_probe

    from pipeline.eval_cases import load_eval_cases

    if any(c.kind == "revisit" for c in load_eval_cases(base["cases"])):  # exact revisits are judged on pixels
        load_or_train_probe(Path(base["cases"]).parent, probe_settings(eval_config(base, "", out / "probe")))
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
            param_space={"combo": tune.grid_search([dataclasses.asdict(c) for c in combos]), "base": base},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent(cfg, base)),
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
            "experiment_id": parent.experiment_id, "tracking_uri": base["tracking_uri"],
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
