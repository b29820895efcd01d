"""MLflow helpers: runs read back with a fresh MlflowClient hold params, metrics and artifacts where we said."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from training import tracking
from training.media import plot_bars


def _frames(t=6, h=16, w=16):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (t, h, w, 3), dtype=np.uint8)


def test_sqlite_run_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # artifacts must not follow the CWD
    out = tmp_path / "out"
    uri = tracking.default_tracking_uri(out)
    assert uri == f"sqlite:///{out.resolve()}/mlflow.db"
    run = tracking.start_or_resume_run(uri, "exp", "train-a", tags={"stage": "train"})
    run.log_config({"lr": 0.001, "model": {"preset": "tiny", "budget": 4}})
    run.log_metrics({"loss": 1.0, "skip": None}, step=0)
    run.log_metrics({"loss": 0.5}, step=1)
    gif, mp4 = run.log_gif_and_mp4(_frames(), "samples/s0")
    run.log_figure_png(plot_bars({"0-16": 0.5}, "r", "rate"), "plots/r.png")
    run.end()

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["model.preset"] == "tiny" and got.data.params["lr"] == "0.001"
    assert got.data.tags["stage"] == "train" and got.info.run_name == "train-a"
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [1.0, 0.5]
    assert "skip" not in got.data.metrics
    art = Path(got.info.artifact_uri.removeprefix("file://"))
    assert art.is_relative_to(out.resolve() / "mlartifacts")
    for rel in (gif, mp4, "plots/r.png", "config.json"):
        assert (art / rel).stat().st_size > 0, rel
    names = {f.path for f in client.list_artifacts(run.run_id, "samples")}
    assert names == {"samples/s0.gif", "samples/s0.mp4"}
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_resume_and_child_runs(tmp_path):
    uri = tracking.default_tracking_uri(tmp_path)
    first = tracking.start_or_resume_run(uri, "exp", "trial")
    first.log_config({"a": 1})
    first.log_metrics({"x": 1.0}, step=0)
    first.end()
    again = tracking.start_or_resume_run(uri, "exp", run_id=first.run_id)
    again.log_config({"a": 2, "b": 3})  # a changed: recorded as a tag, not an error
    again.log_metrics({"x": 2.0}, step=1)
    assert again.run_id == first.run_id
    by_name = tracking.start_or_resume_run(uri, "exp", "trial", resume_by_name=True)
    assert by_name.run_id == first.run_id
    child = tracking.start_or_resume_run(uri, "exp", "child", parent_run_id=first.run_id)
    run = child.client.get_run(child.run_id)
    assert run.data.tags[tracking.PARENT_TAG] == first.run_id
    data = again.client.get_run(first.run_id).data
    assert data.params == {"a": "1", "b": "3"} and data.tags["config_changed.a"] == "2"
    assert len(again.client.get_metric_history(first.run_id, "x")) == 2
    with pytest.raises(ValueError, match="not found in tracking store"):
        tracking.start_or_resume_run(uri, "exp", run_id="0" * 32)
    fresh = tracking.start_or_resume_run(uri, "exp", run_id="0" * 32, if_missing="create")
    assert fresh.run_id != "0" * 32


def test_rejects_relative_uri():
    with pytest.raises(ValueError, match="relative"):
        tracking.make_client("sqlite:///mlflow.db")
    with pytest.raises(ValueError, match="file store"):
        tracking.make_client("file:./mlruns")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_remote_http_server(tmp_path):
    port = _free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        uri = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(uri + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        run = tracking.start_or_resume_run(uri, "remote", "r")
        run.log_metrics({"m": 3.0}, step=2)
        run.log_gif_and_mp4(_frames(), "s")
        run.end()
        got = run.client.get_run(run.run_id)
        assert got.data.metrics["m"] == 3.0
        assert {f.path for f in run.client.list_artifacts(run.run_id)} == {"s.gif", "s.mp4"}
        assert list((tmp_path / "art").rglob("s.gif"))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
