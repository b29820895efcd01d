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
    return ["--data-dir", str(data), "--out", str(out), *FLAGS]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sweep_interrupted_then_resumed(ray_cluster, data, tmp_path):
    out = tmp_path / "sweep"
    address = ray_cluster.get_runtime_context().gcs_address
    # [1] Start the sweep in its own driver process and interrupt it once the first trial has finished.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "tuning.sweep_budget", *_flags(data, out), "--address", address],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 400
    while time.time() < deadline and not list((out / "trials").glob("*.json")) and proc.poll() is None:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    log = proc.communicate(timeout=120)[0]
    done = {p.name: p.stat().st_mtime_ns for p in (out / "trials").glob("*.json")}
    assert done, "no trial finished before the interrupt:\n" + log[-3000:]
    # [2] Rerun the same command: the sweep resumes, the finished trial is not run again.
    cfg = SweepConfig(data_dir=str(data), out=str(out), grid="full", structures=["prepend"], memory_lengths=[4, 8],
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
    assert all("retrieval/0-16" in r.data.metrics and "loss" in r.data.metrics for r in children)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/results.md"}


def test_bad_sweeps_fail_before_any_trial(ray_cluster, data, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        run_sweep(SweepConfig(data_dir=str(data), out=str(tmp_path / "a"), structures=["cross_attn"]))
    with pytest.raises(ValueError, match="--budgets"):
        run_sweep(SweepConfig(data_dir=str(data), out=str(tmp_path / "b"), grid="full", memory_lengths=[16],
                              budgets=[32]))
    with pytest.raises(ValueError, match="--gpus-per-trial 8"):
        run_sweep(SweepConfig(data_dir=str(data), out=str(tmp_path / "c"), gpus_per_trial=8))
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        run_sweep(SweepConfig(data_dir=str(tmp_path / "nothing"), out=str(tmp_path / "d")))
    assert not (tmp_path / "a" / "trials").exists() and not (tmp_path / "c" / "tune").exists()
