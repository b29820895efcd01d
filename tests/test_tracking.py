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


def test_runs_end_with_their_true_status(tmp_path):
    """An error ends a run FAILED, Ctrl-C (and SIGTERM, routed to it) KILLED; a run already ended keeps its
    status; a sweep's children still RUNNING are ended, the others left alone."""
    import signal

    uri = tracking.default_tracking_uri(tmp_path)
    client = tracking.make_client(uri)
    failed = tracking.start_or_resume_run(uri, "exp", "failed")
    failed.end_with(OSError(28, "No space left on device"), "train: ")
    run = client.get_run(failed.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["stopped"] == "train: OSError: [Errno 28] No space left on device"
    finished = tracking.start_or_resume_run(uri, "exp", "finished")
    finished.end()
    finished.end_with(RuntimeError("later"))  # only_if_running: a FINISHED run stays FINISHED
    assert client.get_run(finished.run_id).info.status == "FINISHED"

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own (a Ray Train fit leaves its handler)
    tracking.sigterm_as_interrupt()
    killed = tracking.start_or_resume_run(uri, "exp", "killed")
    try:
        signal.raise_signal(signal.SIGTERM)
        pytest.fail("SIGTERM did not interrupt")
    except KeyboardInterrupt as e:
        killed.end_with(e)
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])
    assert client.get_run(killed.run_id).info.status == "KILLED"

    parent = tracking.start_or_resume_run(uri, "exp", "sweep")
    running = tracking.start_or_resume_run(uri, "exp", "a", parent_run_id=parent.run_id)
    done = tracking.start_or_resume_run(uri, "exp", "b", parent_run_id=parent.run_id)
    done.end()
    assert tracking.end_running_children(uri, parent.run_id, "KILLED", "sweep interrupted") == ["a"]
    assert client.get_run(running.run_id).info.status == "KILLED"
    assert client.get_run(done.run_id).info.status == "FINISHED"
    # a trial stopped in evaluation: training had FINISHED its run, the trial did not finish
    assert tracking.end_running_children(uri, parent.run_id, "KILLED", "interrupted", also=["b"]) == ["b"]
    assert client.get_run(done.run_id).info.status == "KILLED"


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


def test_experiments_open_on_the_runs_table(tmp_path):
    """MLflow 3.x opens an experiment on its GenAI view unless the address selects the runs view (workflowType);
    the experiment also carries the machine-learning kind. bench/mlflow_ui.py checks this in a real browser."""
    from mlflow import MlflowClient

    uri = tracking.default_tracking_uri(tmp_path)
    run = tracking.start_or_resume_run(uri, "memvid-demo", "demo")
    client = MlflowClient(uri)
    assert client.get_experiment(run.experiment_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    older = client.create_experiment("made-elsewhere")                     # tagged when the project next uses it
    assert tracking.get_or_create_experiment(client, "made-elsewhere") == older
    assert client.get_experiment(older).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    url = f"http://127.0.0.1:5000/#/experiments/{run.experiment_id}?workflowType=machine_learning"
    assert tracking.ui_url(run.experiment_id) == url
    assert tracking.ui_url(run.experiment_id, "http://h:5000/", run.run_id) == (
        f"http://h:5000/#/experiments/{run.experiment_id}/runs/{run.run_id}?workflowType=machine_learning")
    text = tracking.ui_instructions(uri, tracking.experiment_id_of(uri, "memvid-demo"))
    assert f"mlflow ui --backend-store-uri {uri} --port 5000" in text and url in text
    assert tracking.ui_instructions("http://h:5000", "7") == (
        "MLflow UI: http://h:5000/#/experiments/7?workflowType=machine_learning")
    # the installed UI still switches views on that parameter (fails on an MLflow upgrade that drops it)
    import mlflow

    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    main_js = next(bundle.glob("main.*.js")).read_text(errors="replace")
    assert 'get("workflowType")' in main_js and 'MACHINE_LEARNING="machine_learning"' in main_js


def test_demo_summary_prints_the_runs_address(tmp_path):
    from training.demo import DemoConfig, summary

    cfg = DemoConfig(out_dir=str(tmp_path / "demo"))
    run = tracking.start_or_resume_run(tracking.default_tracking_uri(cfg.root), "memvid-demo", "demo")
    done = {"collect": {"dir": "e", "seconds": 1}, "encode": {"dir": "l"}, "eval_cases": {"cases": "c"},
            "train": {"checkpoint": "k", "final_loss": 0.25, "mlflow_run_id": run.run_id}, "evaluate": {"dir": "v"}}
    text = summary(cfg, done)
    assert f"http://127.0.0.1:5000/#/experiments/{run.experiment_id}?workflowType=machine_learning" in text


def test_summary_values_are_tags_and_a_file_not_metrics(tmp_path):
    run = tracking.start_or_resume_run(tracking.default_tracking_uri(tmp_path), "exp", "eval")
    run.log_metrics({"loss": 1.0}, step=1)
    run.log_summary({"retrieval/0-16": 0.5, "psnr/0-16": float("nan"), "probe_valid": True, "note": "skipped"},
                    {"retrieval/0-16": "0.50 [0.15, 0.85] (4 cases)"})
    got = run.client.get_run(run.run_id)
    assert set(got.data.metrics) == {"loss"}                               # no one-point chart
    assert got.data.tags["summary.retrieval/0-16"] == "0.50 [0.15, 0.85] (4 cases)"
    summary = tracking.read_summary(run.client, run.run_id)
    assert summary["retrieval/0-16"] == 0.5 and np.isnan(summary["psnr/0-16"]) and summary["probe_valid"] == 1.0
    run.log_summary({"retrieval/0-16": 0.75})                              # a new evaluation replaces the summary
    assert tracking.read_summary(run.client, run.run_id) == {"retrieval/0-16": 0.75}
    assert run.client.get_run(run.run_id).data.tags["summary.retrieval/0-16"] == "0.75"
    assert tracking.read_summary(run.client, tracking.start_or_resume_run(run.tracking_uri, "exp", "x").run_id) == {}


def test_logged_paths_are_relative_to_the_store(tmp_path):
    out = tmp_path / "runs" / "demo"
    uri = tracking.default_tracking_uri(out)
    run = tracking.start_or_resume_run(uri, "exp", "a", tags={"checkpoint": str(out / "train" / "ck")})
    run.log_config({"data_dir": str(tmp_path / "data"), "out_dir": str(out), "tracking_uri": uri, "name": "a/b",
                    "lengths": [4, 16]})
    run.set_tags({"checkpoint_dir": out / "train"})
    got = run.client.get_run(run.run_id).data
    assert got.params["data_dir"] == "../../data" and got.params["out_dir"] == "."
    assert got.params["tracking_uri"] == "sqlite:///mlflow.db" and got.params["name"] == "a/b"
    assert got.tags["checkpoint"] == "train/ck" and got.tags["checkpoint_dir"] == "train"
    assert tracking.portable(f"file://{out}/mlartifacts", out) == "mlartifacts"
