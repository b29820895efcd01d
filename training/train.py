"""Train a memory-augmented video denoiser: one plain-torch loop, run by Ray Train or alone.

    # laptop, no Ray (the plain pyarrow window stream):
    python -m training.train --data-dir runs/demo/latents --out-dir runs/train --backend local --steps 200
    # laptop, Ray Train on 2 CPU workers fed by Ray Data:
    python -m training.train --data-dir runs/demo/latents --out-dir runs/train --num-workers 2
    # cluster: GPUs, shared storage, an MLflow server on the head node
    python -m training.train --address auto --use-gpu --num-workers 8 --model-size paper --window 16 \\
        --data-dir /shared/data/dmlab-latents --out-dir /shared/runs --tracking-uri http://head:5000
    python -m training.train --dry-run      # print the resolved config and exit

Rerunning the same command resumes the same run (same --out-dir and --name; the name comes from the config,
never from a clock): weights, EMA, optimizer, step, data position and the MLflow run id are in the checkpoint.
Optimisation follows the paper, App. J: Adam (0.9, 0.999), no weight decay, grad-norm clip 1.0, v-prediction
with fused-SNR weighting (training/diffusion.py). EMA of the weights; bf16 autocast on GPU.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.cli import parse_config, run_cli, to_json
from pipeline.console import emit, progress, quiet_ray_train_worker, start_ray
from training import checkpoint as ckpt
from training.config import TrainConfig, check_resumable
from training.train_backends import Launch, LocalSession, RaySession

# --------------------------------------------------------------------------------------------------------------
# model, data shape


def latent_shape(data_dir: str) -> tuple[int, int]:
    """(channels, resolution) of the latents in a latent-shard folder; errors say which command to run first."""
    import pyarrow.parquet as pq

    from pipeline.schema import tensor_shape
    from pipeline.shards import finished_shards

    folder = Path(data_dir)
    paths = finished_shards(folder) if folder.is_dir() else []
    if not paths:
        raise FileNotFoundError(f"--data-dir {data_dir}: no finished latent shards; run "
                                f"`python -m pipeline.encode --in-dir <episodes> --out-dir {data_dir}` first")
    schema = pq.read_schema(paths[0])
    if schema.get_field_index("latents") < 0:
        raise ValueError(f"--data-dir {data_dir}: {paths[0].name} has no 'latents' column (an episode folder?); "
                         f"encode it with `python -m pipeline.encode --in-dir {data_dir} --out-dir <latents>`")
    _, c, h, w = tensor_shape(schema, "latents")  # (T,C,h,w)
    if h != w:
        raise ValueError(f"--data-dir {data_dir}: latents are {h}x{w}; the denoiser expects square frames")
    return int(c), int(h)


def step_generator(seed: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    """Noise generator of one step: derived from (seed, rank, step), so a resumed run draws the same noise."""
    g = torch.Generator()  # on CPU: training_loss draws on the generator's device, so CPU and GPU runs match
    g.manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1))
    return g


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """EMA with warm-up: min(decay, (1+step)/(10+step)); a plain 0.999 would still hold 86% of the random
    initial weights after 150 steps, and short runs (the demo, tests) evaluate the EMA."""
    decay = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


# --------------------------------------------------------------------------------------------------------------
# the loop


def train_loop(config: dict) -> dict:
    """Train on this rank per config["cfg"] (TrainConfig) and config["launch"] (Launch: what the driver resolved);
    returns the last metrics (rank 0 adds the MLflow run id and checkpoint path). Under Ray Train it is
    `train_loop_per_worker`; alone it is called directly."""
    cfg, launch = config["cfg"], config["launch"]
    if cfg.backend == "ray":
        quiet_ray_train_worker()
    session = (RaySession if cfg.backend == "ray" else LocalSession)(cfg, launch)
    rank, device = session.rank, session.device

    # [1] model, EMA, optimizer: initial weights from the seed alone (fork_rng keeps the caller's RNG untouched)
    from training.diffusion import Diffusion
    from training.models import build_denoiser

    channels, resolution = latent_shape(cfg.data_dir)
    mcfg = cfg.model_config(channels, resolution)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_denoiser(mcfg)
    ema = copy.deepcopy(net).requires_grad_(False).to(device)
    model = session.prepare(net)
    raw = model.module if hasattr(model, "module") else model  # DDP wraps it when world_size > 1
    optimizer = torch.optim.Adam(raw.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)  # App. J
    diffusion = Diffusion(num_timesteps=cfg.num_timesteps, schedule=cfg.schedule)

    # [2] resume: the newest checkpoint of this run, if it was trained with the same settings
    state, step, position, run_id, last_ckpt = session.resume_state(), 0, None, None, None
    if state is not None:
        last_ckpt = state["_path"]
        check_resumable(state["train_config"], cfg, last_ckpt)
        raw.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, position, run_id = state["step"], state["data_position"], state["mlflow_run_id"]

    # [3] MLflow on rank 0 only: the run the driver opened, else the run id from the checkpoint, else a run of
    # this name (rerun before the first checkpoint), else a new one
    tracker = None
    if rank == 0:
        from training.tracking import start_or_resume_run

        tracker = start_or_resume_run(cfg.resolved_tracking_uri(), cfg.experiment, cfg.name,
                                      run_id=launch.mlflow_run_id or run_id,
                                      resume_by_name=True, tags={"stage": "train"},
                                      parent_run_id=cfg.parent_run_id or None)
        tracker.log_config(dataclasses.asdict(cfg) | {"model": dataclasses.asdict(mcfg)})
        tracker.set_tags({"checkpoint_dir": cfg.run_dir, "backend": cfg.backend, "num_workers": cfg.num_workers})
        run_id = tracker.run_id
        emit(f"[train] {cfg.name}: step {step}/{cfg.steps} on {session.world_size} worker(s), device {device}; "
             f"{'resumed from ' + last_ckpt if last_ckpt else 'fresh start'}; MLflow run {run_id}")

    def snapshot() -> dict:
        return {"train_config": dataclasses.asdict(cfg), "model_config": dataclasses.asdict(mcfg),
                "model": raw.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "data_position": position, "mlflow_run_id": run_id}

    # [4] steps
    metrics: dict[str, Any] = {"step": step}
    frames_per_step = cfg.batch_size * cfg.window * session.world_size
    t0, step0, losses = time.perf_counter(), step, []
    # a bar on a terminal (local backend); elsewhere, e.g. in a Ray worker, the status lines below are the progress
    bar = progress(cfg.steps, f"train {cfg.name}", unit="step", initial=step, every_sec=0, enabled=rank == 0)
    batches = session.batches(position)
    model.train()
    while step < cfg.steps:
        batch, next_position = next(batches)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        # any global draw inside the model (dropout) is reproducible too; fork_rng leaves the caller's RNG alone
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed * 1_000_003 + step)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, _ = diffusion.training_loss(model, batch, step_generator(cfg.seed, rank, step, device))
        if step + 1 == cfg.nan_at_step:
            loss = loss * float("nan")
        # one all-reduce: mean loss and "some rank saw a non-finite loss" (so every rank stops together)
        flags = torch.stack([loss.detach().float(), (~torch.isfinite(loss.detach())).float()]).cpu()
        if session.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(flags)
            flags[0] /= session.world_size
        if flags[1] > 0:
            metrics = {"step": step, "nan_step": step + 1, "last_checkpoint": last_ckpt}
            if tracker:
                tracker.set_tags({"stopped": f"non-finite loss at step {step + 1}"})
                tracker.end("FAILED")
            bar.close()
            session.report(metrics, None, step)
            return metrics
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)  # App. J
        optimizer.step()
        ema_update(ema, raw, cfg.ema_decay, step)
        step, position = step + 1, next_position
        losses.append(float(flags[0]))
        bar.update(1)

        if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
            elapsed = time.perf_counter() - t0
            rate = (step - step0) * frames_per_step / elapsed
            eta = (cfg.steps - step) * frames_per_step / max(rate, 1e-9)
            metrics = {"step": step, "loss": float(np.mean(losses)), "grad_norm": float(grad_norm),
                       "frames_per_sec": rate}
            tracker.log_metrics({k: v for k, v in metrics.items() if k != "step"}, step=step)
            bar.write(f"[train] step {step}/{cfg.steps} loss {metrics['loss']:.4f} frames/s {rate:.1f} "
                      f"eta {eta / 60:.1f} min{_memory_note(device)}")
            losses = []
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            saved = session.report({**metrics, "step": step, "mlflow_run_id": run_id},
                                   snapshot() if rank == 0 else None, step)
            last_ckpt = saved or last_ckpt
        if step == cfg.fail_at_step:
            _inject_failure(cfg, step)

    bar.close()
    metrics = {**metrics, "step": step, "last_checkpoint": last_ckpt, "mlflow_run_id": run_id}
    if tracker:
        tracker.log_text(json.dumps({"checkpoint_dir": str(cfg.run_dir), "last_checkpoint": last_ckpt}, indent=2),
                         "checkpoints.json")
        tracker.end("FINISHED")
    if step == step0 and cfg.backend == "ray":  # nothing left to do: report once so the run has final metrics
        session.report({"step": step, "last_checkpoint": last_ckpt, "mlflow_run_id": run_id}, None, step)
    return metrics


def _memory_note(device: torch.device) -> str:
    if device.type == "cuda":
        return f" gpu_mem {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    try:
        import resource

        return f" rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    except ImportError:
        return ""


def _inject_failure(cfg: TrainConfig, step: int) -> None:
    """TEST ONLY (--fail-at-step): die once, as a killed worker would; a marker file makes the retry go on."""
    marker = cfg.run_dir / f".failure_injected_{step}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("injected\n")
    if cfg.backend == "ray":
        emit(f"[train] injected failure: worker exits at step {step}")
        os._exit(1)
    raise RuntimeError(f"injected failure at step {step} (--fail-at-step)")


# --------------------------------------------------------------------------------------------------------------
# launcher


def check_training_data(cfg: TrainConfig) -> None:
    """Fail before any run starts when the data cannot feed this config: no latent shards, or no episode with
    a full window (memory longer than an episode is padded, as in evaluation, so it is not an error)."""
    from pipeline.windows import index_shards

    latent_shape(cfg.data_dir)
    longest = max((s.length for s in index_shards(cfg.data_dir)), default=0)
    if longest < cfg.window:
        raise ValueError(f"--window {cfg.window}: no episode in --data-dir {cfg.data_dir} has that many frames (the "
                         f"longest has {longest}); lower --window or collect longer episodes "
                         "(pipeline.collect --length)")


def check_config(cfg: TrainConfig) -> None:
    """Everything that can be checked without training, before Ray starts (and by --dry-run): the data can feed
    the config, and the model config is valid and runs one forward pass on the data's shape (on torch's `meta`
    device: shapes only, no memory, no compute). Errors name the flag."""
    import re

    from training.models import build_denoiser

    check_training_data(cfg)
    channels, resolution = latent_shape(cfg.data_dir)
    b, w = 1, cfg.window
    try:
        mc = cfg.model_config(channels, resolution)
        with torch.device("meta"):
            net = build_denoiser(mc)
            memory = {} if mc.memory == "none" else dict(
                mem_x=torch.empty(b, mc.memory_length, channels, resolution, resolution),
                mem_actions=torch.zeros(b, mc.memory_length, dtype=torch.long),
                mem_mask=torch.ones(b, mc.memory_length, dtype=torch.bool))
            net(torch.empty(b, w, channels, resolution, resolution), torch.empty(b, w),
                torch.zeros(b, w, dtype=torch.long), **memory)
    except (ValueError, RuntimeError) as e:  # name the flags, not the dataclass fields
        message = re.sub(r"ModelConfig\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(e))
        raise ValueError(f"--model-size {cfg.model_size} --memory {cfg.memory} --compression {cfg.compression} on "
                         f"{resolution}x{resolution} data: this model cannot run: {message}") from e


def run_training(cfg: TrainConfig) -> dict:
    """Train (resuming if this run has checkpoints); returns {"checkpoint", "mlflow_run_id", "metrics"}.

    Raises FloatingPointError naming the step and the last good checkpoint when the loss turns non-finite,
    ValueError naming the field when the run's checkpoint was trained with other settings, CheckpointWriteError
    (one line: path and cause) when a checkpoint cannot be written. The MLflow run always ends with its true
    status: FINISHED, FAILED on an error, KILLED on Ctrl-C or SIGTERM.
    """
    check_config(cfg)  # fail early, before Ray starts and before any MLflow run, on data or models that cannot fit
    # [1] The run's latest checkpoint, resolved once here; the workers resume from the same record. Partial
    # files of interrupted or failed writes are removed now, before any worker starts.
    found = ckpt.resolve_latest(cfg.run_dir / "local" if cfg.backend == "local" else cfg.run_dir, clean=True)
    last, state = found if found else (None, None)
    if state is not None:
        check_resumable(state["train_config"], cfg, str(last))
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    # [2] The MLflow run, opened here so that whatever stops the workers, this process ends it truly.
    from training.tracking import start_or_resume_run

    tracker = start_or_resume_run(cfg.resolved_tracking_uri(), cfg.experiment, cfg.name,
                                  run_id=state["mlflow_run_id"] if state else None, resume_by_name=True,
                                  tags={"stage": "train"}, parent_run_id=cfg.parent_run_id or None)
    launch = Launch(resume_from=str(last or ""), mlflow_run_id=tracker.run_id)
    try:
        metrics = (train_loop({"cfg": cfg, "launch": launch}) if cfg.backend == "local"
                   else _fit_with_ray(cfg, launch, state))
    except BaseException as e:
        error = _user_error(e)
        tracker.end_with(error, "train: ")
        if error is e:
            raise
        raise error from e
    if "nan_step" in metrics:
        raise FloatingPointError(f"loss became non-finite at step {metrics['nan_step']} of run {cfg.name}; "
                                 f"last good checkpoint: {metrics.get('last_checkpoint') or 'none (no step saved)'}")
    path = metrics.get("last_checkpoint")
    return {"checkpoint": str(Path(path) / ckpt.CKPT_FILE) if path else None,
            "mlflow_run_id": metrics.get("mlflow_run_id") or tracker.run_id, "metrics": metrics}


def _user_error(error: BaseException) -> BaseException:
    """The error to show for a failed fit: a worker's CheckpointWriteError (one line) out of Ray's
    WorkerGroupError; KeyboardInterrupt for Ray Train's graceful SIGINT abort (it exits with SystemExit(0))."""
    if isinstance(error, SystemExit) and not error.code:
        return KeyboardInterrupt("training interrupted; rerun the same command to resume")
    stack, seen = [error], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ckpt.CheckpointWriteError):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None),
                  *(getattr(e, "worker_failures", None) or {}).values()]
    return error


def window_datasets_from(cfg: TrainConfig, start: int, num_samples: int, n: int) -> list:
    """One Ray dataset per worker over samples start .. start+num_samples (at least) of the global order (n samples
    per epoch): worker r gets batch r of each step's cfg.num_workers consecutive batches. One ordered dataset over
    the epochs it spans (not a union of one-epoch datasets: union interleaves blocks and breaks the order)."""
    from pipeline.windows import ray_rank_datasets

    epoch, index = divmod(start, n)
    num_epochs = -(-(index + num_samples) // n)  # ceil: epochs needed from `epoch` to cover the samples
    return ray_rank_datasets(cfg.data_dir, cfg.window_spec(), epoch=epoch, start=index, num_epochs=max(1, num_epochs),
                             ranks=cfg.num_workers)


def _fit_with_ray(cfg: TrainConfig, launch: Launch, state: dict | None) -> dict:
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    start_ray(cfg.address)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    # The dataset starts where the run's latest checkpoint (run_training resolved it) stopped; the workers resume
    # that same checkpoint (RaySession.resume_state), not the one Ray registered last, which may be older.
    from pipeline.windows import position_index, samples_per_epoch

    step, n = (state["step"] if state else 0), samples_per_epoch(cfg.data_dir, cfg.window_spec())
    start = position_index(state["data_position"] if state else None, n)
    per_step = cfg.batch_size * cfg.num_workers
    # One dataset per worker, fixed by its rank (not split): a streaming split hands blocks to workers as they
    # ask, so a resumed run would give each worker other samples than the uninterrupted run did.
    ranks = window_datasets_from(cfg, start, (max(cfg.steps - step, 0) + 1) * per_step, n)
    datasets = {f"train_{r}": ds for r, ds in enumerate(ranks)}
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # one worker sees the local stream's order, so both backends give the same losses
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if cfg.use_gpu else {})
    trainer = TorchTrainer(
        train_loop, train_loop_config={"cfg": cfg, "launch": dataclasses.replace(launch, data_start=start)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=[], execution_options=ingest),
        run_config=RunConfig(name=cfg.name, storage_path=str(Path(cfg.out_dir).expanduser().resolve()),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_to_keep),
                             # Ray Train's INFO lines (worker group started, each checkpoint and report) stay in
                             # the session's train logs; the status lines of train_loop say the same, once
                             logging_config=LoggingConfig(log_level="WARNING")))
    result = trainer.fit()
    _remove_unregistered(cfg, result)
    if isinstance(result.return_value, dict):  # rank 0's train_loop return: last checkpoint, NaN step, run id
        return result.return_value
    metrics = dict(result.metrics or {})
    if result.checkpoint is not None and "nan_step" not in metrics:
        metrics["last_checkpoint"] = str(cfg.run_dir / Path(result.checkpoint.path).name)
        if not metrics.get("mlflow_run_id"):
            metrics["mlflow_run_id"] = ckpt.load_checkpoint(result.checkpoint.path)["mlflow_run_id"]
    return metrics


def _remove_unregistered(cfg: TrainConfig, result) -> None:
    """Delete checkpoint folders Ray does not track that are older than its newest (left by a driver killed
    before Ray registered them, then resumed from): Ray's num_to_keep never reaches them."""
    import shutil

    kept = {Path(c.path).name for c, _ in (result.best_checkpoints or [])}
    for folder in cfg.run_dir.glob(ckpt.FOLDER_GLOB):
        if folder.is_dir() and kept and folder.name not in kept and folder.name < max(kept):
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    cfg, dry_run = parse_config(TrainConfig, argv, description=__doc__)
    print(to_json(cfg), flush=True)
    if dry_run:
        check_config(cfg)  # what the real run would fail on at once
        return
    from training.tracking import sigterm_as_interrupt

    sigterm_as_interrupt()  # SIGTERM ends the MLflow run KILLED, as Ctrl-C does
    try:  # run_cli prints a CheckpointWriteError or a disk error as one line, and exits 130 on Ctrl-C
        out = run_training(cfg)
    except FloatingPointError as e:
        sys.exit(f"training stopped: {e}")
    print(f"[train] done: checkpoint {out['checkpoint']}; MLflow run {out['mlflow_run_id']} in "
          f"{cfg.resolved_tracking_uri()} (mlflow ui --backend-store-uri {cfg.resolved_tracking_uri()})")


if __name__ == "__main__":
    run_cli(main)
