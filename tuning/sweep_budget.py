"""Sweep memory structure x memory length x compression x budget on Ray Tune; each trial trains, then evaluates.

    # laptop (CPU, tiny model; data from `make demo` or pipeline.collect + pipeline.encode):
    python -m tuning.sweep_budget --data-dir runs/demo/latents --out runs/sweep-demo
    python -m tuning.sweep_budget --data-dir runs/demo/latents --structures prepend --memory-lengths 16 48
    # cluster (after `ray up cluster.yaml`; MLflow server on the head):
    python -m tuning.sweep_budget --preset paper --address auto --data-dir /shared/maze/latents \\
        --out /shared/sweeps/paper --gpus-per-trial 1 --tracking-uri http://<head>:5000

Rerunning the same command resumes the sweep (`Tuner.restore`): finished trials are not rerun, unfinished ones
continue from their last training checkpoint. Each trial is a Tune function that builds its own `TorchTrainer`
(the Train V2 way). MLflow: one parent run for the sweep, one child run per trial. Results (Table 1/2/3-4
layouts, plots) are written by tuning.report into <out>/report and logged to the parent run.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli import field, parse_config, to_json
from tuning.grid import BUDGETS, COMPRESSIONS, GRIDS, STRUCTURES, Combo, build_grid

PRESETS = ("demo", "paper")
# Per-preset training/evaluation sizes; flags left at 0 take these.
PRESET_VALUES = {
    "demo": dict(model_preset="tiny", steps=30, batch_size=4, window=8, eval_steps=4, num_cases=0,
                 num_rollout_cases=2, probe_max_steps=600, cpus_per_trial=0.5, gpus_per_trial=0.0),
    "paper": dict(model_preset="paper", steps=100_000, batch_size=32, window=16, eval_steps=10, num_cases=0,
                  num_rollout_cases=32, probe_max_steps=3000, cpus_per_trial=4.0, gpus_per_trial=1.0),
}


@dataclass
class SweepConfig:
    data_dir: str = field("runs/demo/latents", "latent shards with eval_cases.parquet (pipeline.encode output)")
    out: str = field("runs/sweep-demo", "sweep output folder (Tune state, trials/, report/, mlflow.db)")
    preset: str = field("demo", "sizes: demo (CPU, tiny model, minutes) or paper (GPU cluster)", choices=list(PRESETS))
    grid: str = field("paper", "paper: the combinations of the paper's Table 1; full: every combination",
                      choices=list(GRIDS))
    structures: list[str] = field([], f"restrict to these memory structures {list(STRUCTURES)}")
    memory_lengths: list[int] = field([], "restrict to these memory lengths (frames)")
    compressions: list[str] = field([], f"restrict to these compressions {list(COMPRESSIONS)}")
    budgets: list[int] = field([], f"restrict to these compression budgets (frames), e.g. {list(BUDGETS)}")
    steps: int = field(0, "training steps per trial (0 = preset)")
    batch_size: int = field(0, "batch size per training worker (0 = preset)")
    window: int = field(0, "current window w in frames (0 = preset)")
    probe_max_steps: int = field(0, "scene probe training steps at most, trained once per data folder (0 = preset)")
    gpus_per_trial: float = field(-1.0, "GPUs per trial (-1 = preset; paper preset: 1)")
    cpus_per_trial: float = field(-1.0, "CPUs per training worker (-1 = preset)")
    max_concurrent_trials: int = field(0, "trials at once (0 = as many as the cluster's GPUs/CPUs allow)")
    seed: int = field(0, "seed for every trial's training and evaluation")
    address: str = field("", "Ray cluster to join ('auto' on a cluster); empty starts a local one")
    tracking_uri: str = field("", "MLflow URI; empty = sqlite:///<out>/mlflow.db (one machine only)")

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"--preset: {self.preset!r} is not one of {list(PRESETS)}")
        for name in ("steps", "batch_size", "window", "probe_max_steps", "max_concurrent_trials"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= 0, got {getattr(self, name)}")

    def resolved(self) -> dict:
        """Preset values filled in for fields left at their 'use the preset' value."""
        values = dict(PRESET_VALUES[self.preset])
        for name in ("steps", "batch_size", "window", "probe_max_steps"):
            if getattr(self, name) > 0:
                values[name] = getattr(self, name)
        for name in ("gpus_per_trial", "cpus_per_trial"):
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


def check_data(data_dir: Path) -> Path:
    cases = data_dir / "eval_cases.parquet"
    if not (data_dir / "manifest.json").exists():
        raise FileNotFoundError(f"--data-dir {data_dir}: no latent shards (manifest.json) there; make them with "
                                f"`make demo` or pipeline.collect --agent revisit + pipeline.encode")
    if not cases.exists():
        raise FileNotFoundError(f"--data-dir {data_dir}: no eval_cases.parquet; build it with "
                                f"`python -m pipeline.eval_cases --data-dir {data_dir}`")
    return cases


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
    from training.train import TrainConfig, run_training

    combo, base = Combo(**config["combo"]), config["base"]
    trial_dir = Path(base["out"]) / "trials" / combo.name
    train_cfg = TrainConfig(
        data_dir=base["data_dir"], out_dir=str(trial_dir), name=combo.name, preset=base["model_preset"],
        memory=combo.memory, memory_length=combo.memory_length, compression=combo.compression, budget=combo.budget,
        window=base["window"], batch_size=base["batch_size"], steps=base["steps"], seed=base["seed"],
        num_workers=1, use_gpu=base["gpus_per_trial"] > 0, cpus_per_worker=base["cpus_per_trial"],
        backend="ray", tracking_uri=base["tracking_uri"], experiment=base["experiment"],
        parent_run_id=base["parent_run_id"], checkpoint_every=max(10, base["steps"] // 4))
    started = time.time()
    trained = run_training(train_cfg)
    metrics = run_evaluation(eval_config(base, trained["checkpoint"], trial_dir / "eval"))
    metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    calibration = json.loads((trial_dir / "eval" / "results.json").read_text()).get("calibration", {})
    record = {"name": combo.name, "config": dataclasses.asdict(combo), "metrics": metrics, "status": "ok", "error": "",
              "calibration": calibration, "mlflow_run_id": trained["mlflow_run_id"], "trial_sec": time.time() - started}
    _write_record(Path(base["out"]), record)
    tune.report({**metrics, "trial_sec": record["trial_sec"]})


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
    """Run (or resume) the sweep; returns {"trials": [...records], "report": {name: path}, "parent_run_id": id}."""
    import ray
    from ray import tune

    from training.tracking import default_tracking_uri, start_or_resume_run
    from tuning.report import write_report

    combos = build_grid(cfg.grid, cfg.structures, cfg.memory_lengths, cfg.compressions, cfg.budgets)
    values = cfg.resolved()
    out = Path(cfg.out).expanduser().resolve()
    data_dir = Path(cfg.data_dir).expanduser().resolve()
    cases = check_data(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init(address=cfg.address or None, **({} if cfg.address else {"num_cpus": 4}),
                 include_dashboard=False, log_to_driver=False)
    check_resources(values["gpus_per_trial"])
    tracking_uri = cfg.tracking_uri or default_tracking_uri(out)

    # [1] The parent MLflow run, found again on resume through sweep_state.json.
    state_path = out / "sweep_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    parent = start_or_resume_run(tracking_uri, "memvid-sweeps", out.name, run_id=state.get("parent_run_id"),
                                 tags={"stage": "sweep"})
    if not state:
        parent.log_config({**json.loads(to_json(cfg)), "resolved": values, "trials": [c.name for c in combos]})
        from pipeline.shards import write_json_atomic

        write_json_atomic({"parent_run_id": parent.run_id, "trials": [c.name for c in combos]}, state_path)

    # [2] Tune: one function trial per combination; resume with Tuner.restore when a previous run left state.
    base = {**values, "out": str(out), "experiment": "memvid-sweeps", "data_dir": str(data_dir), "cases": str(cases), "seed": cfg.seed,
            "tracking_uri": tracking_uri, "parent_run_id": parent.run_id}
    # The scene probe is trained once here and saved beside the data; every trial then loads it.
    from training.evaluate import probe_settings
    from training.probe import load_or_train_probe

    load_or_train_probe(data_dir, probe_settings(eval_config(base, "", out / "probe")))
    trainable = tune.with_resources(run_trial, {"CPU": 0.25})
    tune_path = out / "tune" / "sweep"
    if tune.Tuner.can_restore(str(tune_path)):
        print(f"resuming the sweep from {tune_path}", flush=True)
        tuner = tune.Tuner.restore(str(tune_path), trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"combo": tune.grid_search([dataclasses.asdict(c) for c in combos]), "base": base},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent(cfg, values)),
            run_config=tune.RunConfig(name="sweep", storage_path=str(out / "tune"), verbose=1),
        )
    grid = tuner.fit()

    # [3] Records of failed trials (config + error), then the report, logged to the parent run.
    for result in grid:
        if result.error is not None:
            combo = Combo(**result.config["combo"])
            _write_record(out, {"name": combo.name, "config": dataclasses.asdict(combo), "metrics": {},
                                "status": "error", "error": f"{type(result.error).__name__}: {result.error}"[:2000]})
    from tuning.report import load_trials

    trials = load_trials(str(out))
    report = write_report(trials, out / "report")
    for path in report.values():
        parent.log_file(path, "report")
    parent.end()
    return {"trials": trials, "report": report, "parent_run_id": parent.run_id}


def main(argv: list[str] | None = None) -> None:
    cfg, dry_run = parse_config(SweepConfig, argv, description=__doc__)
    try:
        combos = build_grid(cfg.grid, cfg.structures, cfg.memory_lengths, cfg.compressions, cfg.budgets)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(to_json(cfg))
    print(f"{len(combos)} trials: {', '.join(c.name for c in combos)}", flush=True)
    if dry_run:
        return
    result = run_sweep(cfg)
    ok = sum(t["status"] == "ok" for t in result["trials"])
    print(f"{ok}/{len(result['trials'])} trials finished; report: {result['report']['results_md']}")
    print(f"MLflow parent run {result['parent_run_id']}: mlflow ui --backend-store-uri {cfg.tracking_uri or 'sqlite:///' + str(Path(cfg.out).resolve() / 'mlflow.db')}")


if __name__ == "__main__":
    main()
