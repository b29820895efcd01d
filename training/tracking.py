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
- child runs (sweep trials) carry the `mlflow.parentRunId` tag;
- experiments open on their runs table: ui_url() / ui_instructions() give the address (MLflow 3.x otherwise
  shows its GenAI tracing view); step series are metrics, values measured once are a summary (log_summary);
- paths in params and tags are relative to the store's folder (portable), never this machine's absolute paths.

    from training.tracking import default_tracking_uri, start_or_resume_run
    run = start_or_resume_run(default_tracking_uri("runs/demo"), "memvid", "train-tiny", tags={"stage": "train"})
    run.log_config({"lr": 1e-4, "model": {"preset": "tiny"}})
    run.log_metrics({"loss": 0.3}, step=10)
    run.log_gif_and_mp4(frames_uint8_THW3, "samples/step10")
    run.log_summary({"psnr/0-16": 21.3})          # measured once: tag summary.psnr/0-16 + summary.json
    run.end()
    print(ui_instructions(run.tracking_uri, run.experiment_id))
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_EXPERIMENT = "memvid"
DB_NAME = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
# MLflow 3.x opens every experiment in its GenAI view (traces) unless the URL carries this parameter (or the user
# flips the sidebar switch to "Model training"); ui_url() adds it. The 3.17 UI ignores the experiment-kind tag
# while that switch is shown, but MLflow's own experiment-type selector reads and writes it, so it is set too.
UI_ML_VIEW = "workflowType=machine_learning"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"   # the UI's "Machine learning" kind
SUMMARY_TAG_PREFIX = "summary."                # run tags holding values measured once per run (log_summary)
SUMMARY_FILE = "summary.json"


def _env_defaults() -> None:
    # Synchronous logging: a metric logged is a metric stored (async logging loses the tail on crashes).
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    # No per-file progress bars (summary.json is read back once per trial by tuning.report).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


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


def get_or_create_experiment(client, name: str = DEFAULT_EXPERIMENT,
                             artifact_location: str | os.PathLike | None = None) -> str:
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
        if EXPERIMENT_KIND_TAG not in exp.tags:  # made before the tag existed, or by another tool
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # another process created it between our lookup and create
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def ui_url(experiment_id: str | None, server: str = "http://127.0.0.1:5000", run_id: str | None = None) -> str:
    """The MLflow UI address that opens on the runs table of an experiment (or on one run's page; with no
    experiment, the experiment list, whose links keep the runs view).

    MLflow 3.x shows an experiment as a GenAI tracing dashboard by default; UI_ML_VIEW selects the runs view.
    """
    if experiment_id is None:
        return f"{server.rstrip('/')}/#/experiments?{UI_ML_VIEW}"
    page = f"{server.rstrip('/')}/#/experiments/{experiment_id}"
    return f"{page}/runs/{run_id}?{UI_ML_VIEW}" if run_id else f"{page}?{UI_ML_VIEW}"


def ui_instructions(tracking_uri: str, experiment_id: str | None, port: int = 5000) -> str:
    """Two lines for a person: the command that serves the UI (for a local store) and the address to open."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"MLflow UI: {ui_url(experiment_id, tracking_uri)}"
    return (f"MLflow UI:  mlflow ui --backend-store-uri {tracking_uri} --port {port}\n"
            f"  then open {ui_url(experiment_id, f'http://127.0.0.1:{port}')}  (the runs table)")


def experiment_id_of(tracking_uri: str, name: str) -> str | None:
    """Id of the live experiment `name` in the store, or None."""
    exp = make_client(tracking_uri).get_experiment_by_name(name)
    return exp.experiment_id if exp is not None and exp.lifecycle_stage != "deleted" else None


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


def store_folder(tracking_uri: str) -> Path:
    """The folder logged paths are written relative to: the sqlite store's folder (the run's output folder),
    else the current directory (an http server: the folder the command ran in)."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).parent
    return Path.cwd()


def portable(value: Any, base: str | os.PathLike) -> Any:
    """An absolute path, or a sqlite:/// or file:// URI of one, made relative to `base` (so nothing logged names
    this machine's folders: "/home/me/runs/demo/latents" -> "latents"); lists and dicts element-wise; other
    values unchanged."""
    if isinstance(value, Mapping):
        return {k: portable(v, base) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, base) for v in value]
    if not isinstance(value, str) or "\n" in value:
        return value
    for scheme, keep in (("sqlite:///", True), ("file://", False)):
        if value.startswith(scheme) and value[len(scheme):].startswith("/"):
            rel = os.path.relpath(value[len(scheme):], base)
            return scheme + rel if keep else rel
    return os.path.relpath(value, base) if os.path.isabs(value) else value


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
        config = portable(config, store_folder(self.tracking_uri))  # paths relative to the store's folder
        flat = {k: json.dumps(v, default=str) if isinstance(v, (list, tuple)) else str(v)
                for k, v in flatten(config).items()}
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
        """Tags; absolute paths among the values are written relative to the store's folder (see portable)."""
        base = store_folder(self.tracking_uri)
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(portable(str(v), base)))

    def log_summary(self, values: Mapping[str, Any], shown: Mapping[str, str] | None = None,
                    artifact_file: str = SUMMARY_FILE) -> None:
        """Values measured once per run (an evaluation's results), logged as a summary, not as metrics: MLflow
        draws every metric as a chart over steps, so one-step metrics become single-dot charts that push the
        loss curve down the run page.

        Every number goes, in full precision, into the JSON artifact `artifact_file` ({key: value}, null for
        NaN; replaced when logged again; read_summary reads it back). The readable texts in `shown` ({key: "0.50
        [0.15, 0.85] (4 cases)"}) become run tags `summary.<key>`, listed on the run page and available as
        columns of the runs table; without `shown`, every number becomes a tag with 4 significant digits.
        """
        numbers = {k: float(v) for k, v in values.items()
                   if v is not None and isinstance(v, (int, float, np.floating, np.integer, np.bool_))}
        finite = {k: v if math.isfinite(v) else None for k, v in numbers.items()}
        self.client.log_text(self.run_id, json.dumps(finite, indent=2), artifact_file)
        texts = shown if shown is not None else {k: f"{v:.4g}" for k, v in numbers.items()}
        for k, text in texts.items():
            self.client.set_tag(self.run_id, f"{SUMMARY_TAG_PREFIX}{k}", str(text))

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
            paths = [write_gif(frames, Path(tmp) / f"{base}.gif", fps),
                     write_mp4(frames, Path(tmp) / f"{base}.mp4", fps)]
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

    def end_with(self, error: BaseException, where: str = "", only_if_running: bool = True) -> None:
        """End the run with the status `error` means (see end_status), tagging `stopped` with its first line.

        Best effort: the store itself may be what failed (a full disk), so a failure here is printed, never
        raised over `error`. only_if_running: leave a run that is already ended (FINISHED, or FAILED at a NaN).
        """
        try:
            if only_if_running and self.client.get_run(self.run_id).info.status != "RUNNING":
                return
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            self.client.set_tag(self.run_id, "stopped", f"{where}{type(error).__name__}: {first}"[:5000])
            self.end(end_status(error))
        except Exception as e:  # noqa: BLE001 - reported, and the original error is what the caller raises
            print(f"[mlflow] could not mark run {self.run_id} {end_status(error)}: {e}", file=sys.stderr, flush=True)


def end_status(error: BaseException | None) -> str:
    """The MLflow status a run ends with: FINISHED (no error), KILLED (Ctrl-C, SIGTERM via
    sigterm_as_interrupt, a SystemExit), FAILED (any other error)."""
    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED"


def sigterm_as_interrupt() -> None:
    """Make SIGTERM act as Ctrl-C does at that moment (KeyboardInterrupt, or the graceful stop of Ray Tune or
    Ray Train when they handle SIGINT), so runs end KILLED instead of staying RUNNING. Call it from `main`."""
    import signal

    def handler(signum, frame):
        current = signal.getsignal(signal.SIGINT)
        if callable(current):
            current(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def end_running_children(tracking_uri: str, parent_run_id: str, status: str, note: str,
                         also: Iterable[str] = ()) -> list[str]:
    """End every child run of `parent_run_id` still RUNNING with `status`, and those named in `also` whatever
    their status (a sweep trial stopped in evaluation, after training had FINISHED its run); returns their names."""
    client = make_client(tracking_uri)
    parent = client.get_run(parent_run_id)
    also = set(also)
    runs = [r for r in client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
            if r.info.status != status and (r.info.status == "RUNNING" or r.info.run_name in also)]
    for run in runs:
        client.set_tag(run.info.run_id, "stopped", note[:5000])
        client.set_terminated(run.info.run_id, status=status)
    return [run.info.run_name for run in runs]


def read_summary(client, run_id: str, artifact_file: str = SUMMARY_FILE) -> dict[str, float]:
    """{key: value} that RunLogger.log_summary wrote to the run (empty if it has none)."""
    _env_defaults()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, artifact_file, tmp)
        except Exception:  # no summary logged (yet): a run still training, or one that failed before evaluation
            return {}
        values = json.loads(Path(path).read_text())
    return {k: math.nan if v is None else float(v) for k, v in values.items()}


def find_run(client, experiment_id: str, run_name: str, parent_run_id: str | None = None) -> str | None:
    """Id of the newest live run named `run_name` (under `parent_run_id` if given), or None."""
    filt = f"tags.`mlflow.runName` = '{run_name}'"
    if parent_run_id:
        filt += f" and tags.`{PARENT_TAG}` = '{parent_run_id}'"
    runs = client.search_runs([experiment_id], filter_string=filt, order_by=["attributes.start_time DESC"],
                              max_results=1)
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
    extra_tags = {k: str(portable(str(v), store_folder(tracking_uri))) for k, v in (tags or {}).items()}
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
