"""The MLflow UI in a real headless browser: does the address the demo prints open on the runs table?

    apt-get install -y chromium                                  # Debian's Chromium (nothing downloaded by Python)
    python bench/mlflow_ui.py                                    # a short real training + evaluation, temp folder
    python bench/mlflow_ui.py --store runs/demo                  # an existing output folder (its mlflow.db)
    python bench/mlflow_ui.py --screenshot docs/img/mlflow_runs.png

MLflow 3.x opens every experiment on its GenAI tracing view ("Traces 0", a "Detect Issues" popup); the runs
table needs the `workflowType=machine_learning` address that training.tracking.ui_url builds and that the demo and
the sweep print. Steps:
  [1] a store: --store, or one made here (synthetic maze-like episodes, identity encoding, 4 training steps of the
      tiny denoiser with the local backend, an evaluation of the checkpoint), no Ray;
  [2] `mlflow server` on it (a free local port);
  [3] Chromium --headless --dump-dom on ui_url(experiment): the runs table must list the run by name (the bare
      experiment address is loaded too and what it shows is printed, for contrast);
  [4] the run's "Model metrics" tab: one section whose charts are the run's step series (loss, ...), every metric
      logged at more than one step, and no chart of a value measured once (evaluation results are a summary:
      run tags `summary.*` and summary.json, training.tracking.RunLogger.log_summary);
  [5] a screenshot of the runs table (--screenshot).
Prints what it verified; exits 1 when the runs table is not shown (or [4] fails), 2 when Chromium is missing.
Needs a browser, so it is a bench script, not part of `make test` (tests/test_tracking.py checks the address).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # `python bench/mlflow_ui.py` from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.cli import field, parse_config, to_json

RUN_NAME = "demo"
GENAI_MARKERS = ("Detect Issues", "No data available for the selected time range")
# Chart sections of a run page: name and number of charts ("Model metrics (3)"; a metric "psnr/0-16" would add a
# section "psnr").
SECTION = re.compile(r'data-testid="experiment-view-compare-runs-section-header".*?white-space: pre;">([^<]+)</div>'
                     r'<div[^>]*>\((\d+)\)<')


@dataclasses.dataclass
class UiCheckConfig:
    store: str = field("", "output folder holding mlflow.db (e.g. runs/demo); empty = make a short run in a "
                           "temp folder")
    experiment: str = field("memvid-demo", "experiment to open")
    chromium: str = field("chromium", "Chromium executable (Debian: apt-get install -y chromium)")
    screenshot: str = field("", "PNG of the runs table to write (e.g. docs/img/mlflow_runs.png)")
    width: int = field(1280, "browser window width in pixels")
    height: int = field(560, "browser window height in pixels")
    wait_ms: int = field(20000, "virtual time Chromium gives the page to load (ms)")
    keep: bool = field(False, "keep the temp folder of the run made here")


# ---------------------------------------------------------------------------------------------- [1] a store

def make_store(folder: Path, experiment: str) -> Path:
    """A real short run: synthetic episodes -> identity latents -> eval cases -> 4 local training steps ->
    evaluation logged into the training run. Returns the folder of mlflow.db."""
    from pipeline.encode import EncodeConfig, run_encode
    from pipeline.eval_cases import build_eval_cases, build_rollout_cases
    from pipeline.synthetic import write_synthetic_shards
    from training.evaluate import EvalConfig, run_evaluation
    from training.train import TrainConfig, run_training

    write_synthetic_shards(folder / "episodes", num_shards=1, episodes_per_shard=4, length=120, size=16, seed=1)
    run_encode(EncodeConfig(in_dir=str(folder / "episodes"), out_dir=str(folder / "latents"), encoder="identity",
                            backend="local"))
    build_eval_cases(folder / "latents", cases_per_bin=2, max_memory=112, horizon=4, seed=0, window=4)
    build_rollout_cases(folder / "latents", num_cases=1, max_memory=16, horizon=64, seed=0)
    out = folder / "out"
    trained = run_training(TrainConfig(data_dir=str(folder / "latents"), out_dir=str(out), name=RUN_NAME,
                                       backend="local", steps=4, log_every=1, window=4, memory_length=8, budget=8,
                                       batch_size=2, experiment=experiment))
    run_evaluation(EvalConfig(checkpoint=trained["checkpoint"], cases=str(folder / "latents" / "eval_cases.parquet"),
                              out_dir=str(out / "eval"), steps=2, memory_lengths=[4, 8], num_rollout_cases=1,
                              num_videos=1, probe_max_steps=20, probe_max_frames=400, device="cpu", cpu_threads=1,
                              experiment=experiment))
    return out


# ---------------------------------------------------------------------------------------------- [2] server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(uri: str, port: int, log: Path) -> subprocess.Popen:
    """`mlflow server` on the store; returns once it answers (raises after 120 s)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}; its log: {log}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    stop_server(proc)
    raise RuntimeError(f"mlflow server did not answer on port {port} within 120 s; its log: {log}")


def stop_server(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker processes (their own session)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- [3-5] browser

def chromium(cfg: UiCheckConfig, url: str, profile: Path, screenshot: str = "") -> str:
    """The page's DOM after `wait_ms` of virtual time (and a screenshot if asked), from a fresh profile."""
    args = [cfg.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--window-size={cfg.width},{cfg.height}",
            f"--virtual-time-budget={cfg.wait_ms}"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    out = subprocess.run(args + [url], capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(f"{cfg.chromium} exited with {out.returncode}: {out.stderr.strip()[-500:]}")
    return out.stdout


def main(argv: list[str] | None = None) -> int:
    cfg, dry_run = parse_config(UiCheckConfig, argv, description=__doc__)
    print(to_json(cfg), flush=True)
    if dry_run:
        return 0
    if shutil.which(cfg.chromium) is None:
        print(f"--chromium {cfg.chromium}: not found; install Debian's Chromium with `apt-get install -y chromium`",
              file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mlflow import MlflowClient

    from training.tracking import default_tracking_uri, get_or_create_experiment, ui_url

    tmp = Path(tempfile.mkdtemp(prefix="mlflow-ui-check-"))
    proc = None
    try:
        # [1]
        if cfg.store:
            store = Path(cfg.store).resolve()
        else:
            print(f"[1] a short real run in {tmp} (its output: {tmp / 'run.log'}) ...", flush=True)
            with open(tmp / "run.log", "w") as log, contextlib.redirect_stdout(log):
                store = make_store(tmp, cfg.experiment)
        if not (store / "mlflow.db").exists():
            print(f"--store {cfg.store}: no mlflow.db in {store}; pass an output folder of the demo or of training",
                  file=sys.stderr)
            return 2
        uri = default_tracking_uri(store)
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            print(f"--experiment {cfg.experiment}: not in {uri}", file=sys.stderr)
            return 2
        get_or_create_experiment(client, cfg.experiment)  # what every project run does: tags an older experiment
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            print(f"experiment {cfg.experiment} has no runs in {uri}", file=sys.stderr)
            return 2
        run = runs[0]
        print(f"[1] store {uri}: experiment {cfg.experiment} (id {exp.experiment_id}), run {run.info.run_name} "
              f"({run.info.run_id}), metrics {sorted(run.data.metrics)}", flush=True)
        # [2]
        port = free_port()
        proc = start_server(uri, port, tmp / "server.log")
        server = f"http://127.0.0.1:{port}"
        print(f"[2] mlflow server on {server}", flush=True)
        # [3]
        url = ui_url(exp.experiment_id, server)
        dom = chromium(cfg, url, tmp / "profile-runs")
        listed = "Run Name" in dom and f">{run.info.run_name}<" in dom
        genai = [m for m in GENAI_MARKERS if m in dom]
        print(f"[3] {url}\n    runs table with run '{run.info.run_name}': {'yes' if listed else 'NO'}; "
              f"GenAI markers: {genai or 'none'}", flush=True)
        bare = chromium(cfg, f"{server}/#/experiments/{exp.experiment_id}", tmp / "profile-bare")
        print(f"    for contrast, the bare address {server}/#/experiments/{exp.experiment_id} shows "
              f"{'the GenAI view' if any(m in bare for m in GENAI_MARKERS) else 'no GenAI view'}; runs table: "
              f"{'yes' if 'Run Name' in bare else 'no'}", flush=True)
        # [4]
        run_url = ui_url(exp.experiment_id, server, run.info.run_id).replace("?", "/model-metrics?")
        page = chromium(cfg, run_url, tmp / "profile-run")
        sections = {name.strip(): int(n) for name, n in SECTION.findall(page)}
        steps = {k: len(client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}
        one_point = sorted(k for k, n in steps.items() if n < 2)
        summary_tags = sorted(k for k in run.data.tags if k.startswith("summary."))
        series_ok = sections == {"Model metrics": len(steps)} and "loss" in steps and not one_point
        print(f"[4] {run_url}\n    chart sections {sections}; steps per metric {steps}; one-point metrics: "
              f"{one_point or 'none'}; summary tags on the run: {len(summary_tags)}", flush=True)
        # [5]
        if cfg.screenshot:
            Path(cfg.screenshot).parent.mkdir(parents=True, exist_ok=True)
            chromium(cfg, url, tmp / "profile-shot", screenshot=str(Path(cfg.screenshot).resolve()))
            print(f"[5] screenshot {cfg.screenshot} ({Path(cfg.screenshot).stat().st_size} bytes)", flush=True)
        ok = listed and not genai and series_ok
        print("PASS: the printed address opens on the runs table" if ok else "FAIL: see the lines above", flush=True)
        return 0 if ok else 1
    finally:
        if proc is not None:
            stop_server(proc)
        if cfg.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
