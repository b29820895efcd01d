"""training.demo --quick: every stage runs on the maze, results land in MLflow, and a rerun skips finished stages."""
from __future__ import annotations

import json

import pytest

from training.demo import STAGES, DemoConfig, run_demo, summary


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(300)
def test_quick_demo_runs_every_stage_and_resumes(ray_cluster, tmp_path, capsys):
    cfg = DemoConfig(quick=True, out=str(tmp_path / "demo"))
    assert cfg.episodes == 4 and cfg.train_steps == 12  # --quick sizes
    done = run_demo(cfg)
    assert list(done) == list(STAGES)
    # training: the checkpoint holds the last step and the MLflow run id
    from training.checkpoint import load_checkpoint

    state = load_checkpoint(done["train"]["checkpoint"])
    assert state["step"] == cfg.train_steps and state["mlflow_run_id"] == done["train"]["mlflow_run_id"]
    # evaluation: figures per gap bin and sampling cost, written and logged to the training run
    results = json.loads((tmp_path / "demo" / "eval" / "results.json").read_text())
    assert {"ssim/0-16", "retrieval/0-16", "sec_per_frame"} <= set(results["metrics"])
    assert results["metrics"]["sec_per_frame"] > 0
    from training.tracking import make_client

    client = make_client(f"sqlite:///{tmp_path / 'demo' / 'mlflow.db'}")
    run = client.get_run(done["train"]["mlflow_run_id"])
    assert run.data.params["memory_length"] == str(cfg.memory_length)
    assert {m.step for m in client.get_metric_history(run.info.run_id, "loss")} >= {cfg.train_steps}
    assert "sec_per_frame" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "checkpoints.json", "eval"} <= artifacts
    # rerunning the same command skips every finished stage and returns the same results
    capsys.readouterr()
    again = run_demo(cfg)
    printed = capsys.readouterr().out
    assert all(f"[demo] {s}: done before, skipped" in printed for s in STAGES)
    assert json.dumps(again, sort_keys=True) == json.dumps(done, sort_keys=True)  # NaN-safe equality
    assert "mlflow ui --backend-store-uri sqlite:///" in summary(cfg, again)
    # a different config in the same folder is refused, naming the field
    with pytest.raises(ValueError, match="train_steps"):
        run_demo(DemoConfig(quick=True, out=str(tmp_path / "demo"), train_steps=20))
