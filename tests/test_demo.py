"""training.demo --quick: every stage runs on the maze, results land in MLflow, a rerun skips finished stages, and
its console output, written to a file, reads as a log: no colour codes, no line repeated."""
from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from training.demo import STAGES, DemoConfig, run_demo, summary

ROOT = Path(__file__).resolve().parents[1]


def check_log(text: str, max_copies: int = 2) -> None:
    """A log a person can read: no ANSI codes or carriage returns (output was not a terminal), no line more than
    `max_copies` times (Markdown table rules aside), no line twice in a row (e.g. a worker line printed by two
    handlers)."""
    assert "\x1b[" not in text and "\r" not in text
    lines = [line for line in text.splitlines() if line.strip() and not re.fullmatch(r"[|\- ]+", line)]
    most, copies = collections.Counter(lines).most_common(1)[0]
    assert copies <= max_copies, f"{copies} copies of: {most}"
    twice = [a for a, b in zip(lines, lines[1:]) if a == b]
    assert not twice, f"printed twice in a row: {twice[0]}"


def test_check_log_catches_repeats():
    check_log("a\nb\n|---|---|\n|---|---|\n|---|---|\nc\n")
    for bad in ("x\n" "y\n" "x\n" "z\n" "x\n", "a\nstep 1\nstep 1\n", "\x1b[36m(pid=1)\x1b[0m hi\n", "50%\r60%\n"):
        with pytest.raises(AssertionError):
            check_log(bad)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(300)
def test_quick_demo_runs_every_stage_and_resumes(tmp_path, capsys):
    cfg = DemoConfig(quick=True, out_dir=str(tmp_path / "demo"))
    assert cfg.episodes == 4 and cfg.train_steps == 12  # --quick sizes
    # the command a user types, its output going to a file (stdout and stderr together, as `> log 2>&1`)
    proc = subprocess.run([sys.executable, "-m", "training.demo", "--quick", "--out-dir", cfg.out_dir], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:]
    check_log(proc.stdout)
    assert "Ray dashboard: http://127.0.0.1:" in proc.stdout
    assert "Failed to query Ray Train Controller" not in proc.stdout  # the State API is up: the dashboard is on
    assert "Traceback" not in proc.stdout  # e.g. Ray's workers finding "multiple active Ray instances" on this machine
    assert [line.count("[train] step 12/12") for line in proc.stdout.splitlines()].count(1) == 1
    done = json.loads((tmp_path / "demo" / "stages.json").read_text())  # what run_demo returns
    assert sorted(done) == sorted(STAGES)
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
    from training.tracking import read_summary

    assert read_summary(client, run.info.run_id)["sec_per_frame"] > 0 and "sec_per_frame" not in run.data.metrics
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
        run_demo(DemoConfig(quick=True, out_dir=str(tmp_path / "demo"), train_steps=20))
