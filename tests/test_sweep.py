"""tuning.sweep_budget end to end on the local Ray cluster: a 2-trial sweep, interrupted and resumed.

Tiny real objects: synthetic revisit episodes encoded with the identity encoder, the `tiny` denoiser on 8x8
frames, a few training steps per trial, the scene probe trained for a few steps.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.encode import EncodeConfig, run_encode
from pipeline.eval_cases import build_eval_cases, build_rollout_cases
from pipeline.synthetic import write_synthetic_shards
from tuning.sweep_budget import SweepConfig, run_sweep

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--grid", "full", "--structures", "prepend", "--memory-lengths", "4", "8", "--compressions", "none",
         "--steps", "4", "--batch-size", "2", "--window", "4", "--probe-max-steps", "5", "--max-concurrent-trials", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweepdata")
    write_synthetic_shards(root / "episodes", num_shards=1, episodes_per_shard=3, length=72, size=8, seed=2)
    run_encode(EncodeConfig(in_dir=str(root / "episodes"), out_dir=str(root / "latents"), backend="local"))
    build_eval_cases(root / "latents", cases_per_bin=1, max_memory=8, horizon=4, seed=0, window=4)
    build_rollout_cases(root / "latents", num_cases=1, max_memory=8, horizon=64, seed=0)
    return root / "latents"


def _flags(data, out):
    return ["--data-dir", str(data), "--out-dir", str(out), *FLAGS]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sweep_interrupted_then_resumed(ray_cluster, data, tmp_path):
    out = tmp_path / "sweep"
    address = ray_cluster.get_runtime_context().gcs_address
    # [1] Start the sweep in its own driver process and interrupt it once the first trial has finished.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "tuning.sweep_budget", *_flags(data, out), "--address", address],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Once the second trial's folder exists, Tune has registered the first as finished (one trial at a time);
    # its record alone appears a moment earlier, and an interrupt then makes the rerun run it again.
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and not (
            list((out / "trials").glob("*.json")) and list((out / "tune" / "sweep").glob("run_trial_*_00001_*"))):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    log = proc.communicate(timeout=120)[0]
    done = {p.name: p.stat().st_mtime_ns for p in (out / "trials").glob("*.json")}
    assert done, "no trial finished before the interrupt:\n" + log[-3000:]
    # [2] Rerun the same command: the sweep resumes, the finished trial is not run again.
    cfg = SweepConfig(data_dir=str(data), out_dir=str(out), grid="full", structures=["prepend"], memory_lengths=[4, 8],
                      compressions=["none"], steps=4, batch_size=2, window=4, probe_max_steps=5,
                      max_concurrent_trials=1, address=address)
    result = run_sweep(cfg)
    records = {t["name"]: t for t in result["trials"]}
    assert set(records) == {"prepend-m4", "prepend-m8"}
    assert all(t["status"] == "ok" for t in records.values()), records
    for name, mtime in done.items():
        assert (out / "trials" / name).stat().st_mtime_ns == mtime, f"{name} was rerun"
    # [3] Report files hold the trials' numbers.
    md = (out / "report" / "results.md").read_text()
    for t in records.values():
        assert f"| prepend | {t['config']['memory_length']} | N/A | N/A |" in md
    assert (out / "report" / "retrieval_vs_decay.png").exists() and (out / "report" / "results.csv").exists()
    # [4] MLflow: one parent run, one child run per trial holding the evaluation metrics.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out.resolve()}/mlflow.db")
    parent = client.get_run(result["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result['parent_run_id']}'")
    assert sorted(r.info.run_name for r in children) == ["prepend-m4", "prepend-m8"]
    from training.tracking import read_summary

    assert all("retrieval/0-16" in read_summary(client, r.info.run_id) and "loss" in r.data.metrics for r in children)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/results.md"}


def test_bad_sweeps_fail_before_any_trial(ray_cluster, data, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        run_sweep(SweepConfig(data_dir=str(data), out_dir=str(tmp_path / "a"), structures=["cross_attn"]))
    with pytest.raises(ValueError, match="--budgets"):
        run_sweep(SweepConfig(data_dir=str(data), out_dir=str(tmp_path / "b"), grid="full", memory_lengths=[16],
                              budgets=[32]))
    with pytest.raises(ValueError, match="--gpus-per-trial 8"):
        run_sweep(SweepConfig(data_dir=str(data), out_dir=str(tmp_path / "c"), gpus_per_trial=8))
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        run_sweep(SweepConfig(data_dir=str(tmp_path / "nothing"), out_dir=str(tmp_path / "d")))
    assert not (tmp_path / "a" / "trials").exists() and not (tmp_path / "c" / "tune").exists()


def test_data_is_checked_against_every_trial_before_the_first(tmp_path):
    """Episodes of 40 frames: too short for the evaluation's 64-frame rollouts and for a 48-frame window. Before,
    every trial trained fully, then failed in evaluation, and the command exited 0 with "0/2 trials finished"."""
    write_synthetic_shards(tmp_path / "episodes", num_shards=1, episodes_per_shard=3, length=40, size=8, seed=2)
    run_encode(EncodeConfig(in_dir=str(tmp_path / "episodes"), out_dir=str(tmp_path / "latents"), backend="local"))
    build_eval_cases(tmp_path / "latents", cases_per_bin=1, max_memory=8, horizon=4, seed=0, window=4)
    short = dict(data_dir=str(tmp_path / "latents"), out_dir=str(tmp_path / "sweep"), grid="full",
                 structures=["prepend"], memory_lengths=[4, 8], compressions=["none"], steps=4, batch_size=2, window=4)
    with pytest.raises(ValueError, match=r"--num-rollout-cases 2: rollout cases need episodes longer than 64 frames, "
                                         r"the longest in --data-dir .* has 40; pass --num-rollout-cases 0"):
        run_sweep(SweepConfig(**short))
    with pytest.raises(ValueError, match=r"--window 48: no episode in --data-dir .* has that many frames"):
        run_sweep(SweepConfig(**short | {"window": 48, "num_rollout_cases": 0}))
    assert not (tmp_path / "sweep").exists()  # no trial, no Tune state, no MLflow run


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_rerun_of_a_sweep_whose_trial_failed_says_which_and_why(ray_cluster, data, tmp_path, capsys):
    """A trial fails (a file stands where its folder goes). Before, the sweep exited 0 with its parent run
    FINISHED, and the rerun crashed in sweep_budget.py (`'NoneType' object is not subscriptable`: Tune's
    restored result of an errored trial has no config), leaving the parent run RUNNING."""
    from mlflow import MlflowClient

    from tuning.sweep_budget import main

    out = tmp_path / "sweep"
    (out / "trials").mkdir(parents=True)
    (out / "trials" / "prepend-m4").write_text("in the way\n")
    flags = _flags(data, out) + ["--memory-lengths", "4"]  # the last --memory-lengths wins: one trial
    client = MlflowClient(f"sqlite:///{out.resolve()}/mlflow.db")
    sigterm = signal.getsignal(signal.SIGTERM)  # main routes SIGTERM to Ctrl-C; give pytest its own back
    try:
        for _attempt in range(2):  # the first run, then the same command again
            code, err = main(flags), capsys.readouterr().err
            assert code == 1 and "trial prepend-m4 failed: NotADirectoryError: " in err, err
            [parent] = client.search_runs([client.get_experiment_by_name("memvid-sweeps").experiment_id],
                                          "tags.stage = 'sweep'")
            assert parent.info.status == "FAILED" and "prepend-m4: NotADirectoryError" in parent.data.tags["stopped"]
        # [2] the cause removed, the same command runs the failed trial again and the sweep finishes
        (out / "trials" / "prepend-m4").unlink()
        assert main(flags) == 0
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    runs = client.search_runs([parent.info.experiment_id], "")
    statuses = sorted((r.info.run_name, r.info.status) for r in runs)
    assert statuses == [("prepend-m4", "FINISHED"), (out.name, "FINISHED")]
