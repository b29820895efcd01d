"""MLflow helpers shared by training, evaluation and sweeps (DESIGN.md, "Tracking and outputs").

Everything goes through an explicit `MlflowClient` bound to one tracking URI, never the fluent global
`mlflow.start_run` state, so many runs (a sweep's parent and its trials) can live in one process.

Rules these helpers enforce (stack-facts.md section 4):
- the local store is an ABSOLUTE `sqlite:///<out_dir>/mlflow.db` (the default `sqlite:///mlflow.db` is
  relative to the CWD, and inside Ray workers the CWD is an ephemeral session dir);
- experiments get an explicit artifact location `<out_dir>/mlartifacts` (with a sqlite URI and no server,
  MLflow would otherwise put artifacts under `<CWD>/mlruns`);
- a remote `http(s)://` server (clusters: SQLite must not be written by many nodes) keeps its own
  artifact store unless a location is given;
- child runs (sweep trials) carry the `mlflow.parentRunId` tag.

    from training.tracking import default_tracking_uri, start_or_resume_run
    run = start_or_resume_run(default_tracking_uri("runs/demo"), "memvid", "train-tiny", tags={"stage": "train"})
    run.log_config({"lr": 1e-4, "model": {"preset": "tiny"}})
    run.log_metrics({"loss": 0.3}, step=10)
    run.log_gif_and_mp4(frames_uint8_THW3, "samples/step10")
    run.end()
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

DEFAULT_EXPERIMENT = "memvid"
DB_NAME = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def _env_defaults() -> None:
    # Synchronous logging: a metric logged is a metric stored (async logging loses the tail on crashes).
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def default_tracking_uri(out_dir: str | os.PathLike) -> str:
    """`sqlite:///<absolute out_dir>/mlflow.db` (the folder is created)."""
    path = Path(out_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / DB_NAME}"


def check_tracking_uri(uri: str) -> str:
    """Reject relative or unknown tracking URIs with an error that says what to pass instead."""
    if uri.startswith(("http://", "https://", "databricks")):
        return uri
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if not path.startswith("/"):
            raise ValueError(f"tracking URI {uri!r} is relative (it would land in the current directory, which "
                             f"inside Ray workers is a temporary session dir); use 'sqlite:////abs/path/{DB_NAME}' "
                             f"or training.tracking.default_tracking_uri(out_dir)")
        return uri
    if uri.startswith("file:"):
        raise ValueError(f"tracking URI {uri!r}: MLflow's file store is in maintenance mode; use "
                         f"'sqlite:////abs/path/{DB_NAME}' or an 'http://host:port' server")
    raise ValueError(f"tracking URI {uri!r}: expected 'sqlite:////absolute/path/{DB_NAME}' or 'http(s)://host:port'")


def default_artifact_location(tracking_uri: str) -> str | None:
    """`file://<dir of the sqlite db>/mlartifacts` for a sqlite store; None (server decides) for http."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / ARTIFACT_DIR).as_uri()
    return None


def make_client(tracking_uri: str):
    from mlflow import MlflowClient

    _env_defaults()
    return MlflowClient(tracking_uri=check_tracking_uri(tracking_uri))


def get_or_create_experiment(client, name: str = DEFAULT_EXPERIMENT, artifact_location: str | os.PathLike | None = None) -> str:
    """Experiment id of `name`, created with an explicit artifact location if it does not exist.

    `artifact_location` defaults to `<dir of the sqlite db>/mlartifacts` (absolute) for sqlite stores.
    A deleted experiment of that name is restored. `client` may also be a tracking URI string.
    """
    if isinstance(client, str):
        client = make_client(client)
    if artifact_location is None:
        artifact_location = default_artifact_location(client.tracking_uri)
    elif "://" not in str(artifact_location):
        artifact_location = Path(artifact_location).expanduser().resolve().as_uri()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # another process created it between our lookup and create
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"preset": "tiny"}} -> {"model.preset": "tiny"} (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


@dataclass
class RunLogger:
    """One MLflow run bound to its client; every method logs to this run only."""

    client: Any
    run_id: str
    experiment_id: str

    @property
    def tracking_uri(self) -> str:
        return self.client.tracking_uri

    @property
    def artifact_uri(self) -> str:
        return self.client.get_run(self.run_id).info.artifact_uri

    def log_config(self, config: Mapping[str, Any] | Any, artifact_file: str = "config.json") -> None:
        """Params = the flattened config (values cut to MLflow's limit) + the full config as a JSON artifact.

        On a resumed run, params already logged with the same value are skipped; a changed value cannot be
        overwritten in MLflow, so it is recorded as tag `config_changed.<key>` and in the JSON artifact.
        """
        import dataclasses

        from mlflow.entities import Param

        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            config = dataclasses.asdict(config)
        flat = {k: json.dumps(v, default=str) if isinstance(v, (list, tuple)) else str(v) for k, v in flatten(config).items()}
        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, v[:MAX_PARAM_CHARS]) for k, v in flat.items() if k not in existing]
        for i in range(0, len(new), 100):  # log_batch takes at most 100 params per call
            self.client.log_batch(self.run_id, params=new[i:i + 100])
        for k, v in flat.items():
            if k in existing and existing[k] != v[:MAX_PARAM_CHARS]:
                self.client.set_tag(self.run_id, f"config_changed.{k}", v[:MAX_PARAM_CHARS])
        self.client.log_text(self.run_id, json.dumps(config, indent=2, sort_keys=True, default=str), artifact_file)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Numeric metrics at `step` (None and non-numbers skipped; inf/NaN kept as MLflow stores them)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                 if v is not None and isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_file(self, path: str | os.PathLike, artifact_dir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_dir)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_gif_and_mp4(self, frames: np.ndarray, name: str, fps: float = 8.0) -> list[str]:
        """Log uint8 (T,H,W,3) frames as `<name>.gif` (shown inline by the UI) and `<name>.mp4`.

        `name` may contain folders ("samples/case3"). Returns the two artifact paths.
        """
        from training.media import write_gif, write_mp4

        folder, base = os.path.split(name)
        with tempfile.TemporaryDirectory() as tmp:
            paths = [write_gif(frames, Path(tmp) / f"{base}.gif", fps), write_mp4(frames, Path(tmp) / f"{base}.mp4", fps)]
            for p in paths:
                self.client.log_artifact(self.run_id, str(p), folder or None)
        return [f"{folder}/{p.name}" if folder else p.name for p in paths]

    def log_figure_png(self, figure, artifact_file: str) -> str:
        """Log a matplotlib Figure as PNG at `artifact_file` (e.g. "plots/psnr.png")."""
        from training.media import save_figure

        folder, base = os.path.split(artifact_file)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_figure(figure, Path(tmp) / base)
            self.client.log_artifact(self.run_id, str(path), folder or None)
        return artifact_file

    def end(self, status: str = "FINISHED") -> None:
        """status: FINISHED | FAILED | KILLED."""
        self.client.set_terminated(self.run_id, status=status)


def find_run(client, experiment_id: str, run_name: str, parent_run_id: str | None = None) -> str | None:
    """Id of the newest live run named `run_name` (under `parent_run_id` if given), or None."""
    filt = f"tags.`mlflow.runName` = '{run_name}'"
    if parent_run_id:
        filt += f" and tags.`{PARENT_TAG}` = '{parent_run_id}'"
    runs = client.search_runs([experiment_id], filter_string=filt, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def start_or_resume_run(tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
                        run_id: str | None = None, parent_run_id: str | None = None,
                        tags: Mapping[str, Any] | None = None, artifact_location: str | os.PathLike | None = None,
                        resume_by_name: bool = False, if_missing: str = "error") -> RunLogger:
    """Open a run for logging and mark it RUNNING.

    run_id: resume that run (a checkpoint's saved id). If it is not in this store: if_missing="error" raises
      naming the id and store, "create" starts a new run tagged `resumed_from_missing=<id>`.
    resume_by_name: with no run_id, continue the newest run named `run_name` (same parent) if one exists, so
      rerunning the same command continues the same run.
    parent_run_id: make a child run (sweep trial) via the `mlflow.parentRunId` tag.
    """
    from mlflow.exceptions import MlflowException

    if if_missing not in ("error", "create"):
        raise ValueError(f"if_missing must be 'error' or 'create', got {if_missing!r}")
    client = make_client(tracking_uri)
    experiment_id = get_or_create_experiment(client, experiment, artifact_location)
    extra_tags = {k: str(v) for k, v in (tags or {}).items()}
    if run_id is None and resume_by_name and run_name:
        run_id = find_run(client, experiment_id, run_name, parent_run_id)
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except MlflowException as e:
            if if_missing == "error":
                raise ValueError(f"MLflow run {run_id!r} not found in tracking store {tracking_uri!r}; pass the "
                                 f"tracking URI the run was created in, or start a new run") from e
            extra_tags["resumed_from_missing"] = run_id
        else:
            if run.info.lifecycle_stage == "deleted":
                client.restore_run(run_id)
            client.update_run(run_id, status="RUNNING")
            for k, v in extra_tags.items():
                client.set_tag(run_id, k, v)
            return RunLogger(client, run_id, run.info.experiment_id)
    if parent_run_id:
        extra_tags[PARENT_TAG] = parent_run_id
    run = client.create_run(experiment_id, tags=extra_tags, run_name=run_name)
    return RunLogger(client, run.info.run_id, experiment_id)
