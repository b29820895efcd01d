"""Where training.train's loop runs: alone (LocalSession) or in a Ray Train worker (RaySession).

Both give the loop the same calls: prepare(model), resume_state(), batches(position) -> (batch, position after
it), report(metrics, state, step) -> checkpoint folder. A position is the window stream's own state
(pipeline.windows.LocalWindowStream.state_dict, rank 0 of 1), so a checkpoint of either backend resumes on the
other. This module reads the job's config (training.config), never the job (training.train); Ray is imported only
inside RaySession's methods.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from training import checkpoint as ckpt
from training.config import TrainConfig


@dataclass(frozen=True)
class Launch:
    """What the driver resolved once and hands every worker, so all ranks start from the same record."""

    resume_from: str = ""     # the run's latest checkpoint folder (checkpoint.resolve_latest); '' = fresh start
    mlflow_run_id: str = ""   # the MLflow run the driver opened (and ends with the true status on errors)
    data_start: int = 0       # Ray backend: global sample index where the workers' datasets begin


class LocalSession:
    """Rank 0 of 1, no Ray: the plain pyarrow window stream and checkpoints in `<run_dir>/local`."""

    rank, world_size = 0, 1

    def __init__(self, cfg: TrainConfig, launch: Launch):
        self.cfg = cfg
        self.ckpt_root = cfg.run_dir / "local"
        self.device = torch.device("cuda" if cfg.use_gpu else "cpu")

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def resume_state(self) -> dict | None:
        found = ckpt.resolve_latest(self.ckpt_root)
        return None if found is None else {**found[1], "_path": str(found[0])}

    def batches(self, position: dict | None) -> Iterator[tuple[dict, dict]]:
        from pipeline.windows import LocalWindowStream

        stream = LocalWindowStream(self.cfg.data_dir, self.cfg.window_spec())
        if position:
            stream.load_state_dict(position)
        for batch in stream:  # endless over epochs, batches of B crossing epoch ends
            yield batch, stream.state_dict()

    def report(self, metrics: dict, state: dict | None, step: int) -> str | None:
        if state is None:
            return None
        folder = self.ckpt_root / ckpt.checkpoint_dir_name(step)
        ckpt.save_checkpoint(state, folder)
        ckpt.prune_checkpoints(self.ckpt_root, self.cfg.num_to_keep)
        return str(folder)


class RaySession:
    """Inside a Ray Train worker: its own dataset (rank r: batch r of every step), prepare_model (DDP, gloo on CPU),
    report/get_checkpoint.

    The driver resolved the run's latest checkpoint (`launch.resume_from`, checkpoint.resolve_latest) and built
    each rank's dataset from its position on (sample `launch.data_start`). Every worker resumes from the same
    record, the newest loadable folder on disk, never from Ray's registered checkpoint (which can trail the folders
    on disk by seconds, so a driver killed just after a checkpoint left the two apart). On the first start that is the
    driver's checkpoint; after a FailureConfig restart it may be a later one of this fit: the dataset is read
    from its start again, so the worker skips the batches that checkpoint has already trained on.
    """

    def __init__(self, cfg: TrainConfig, launch: Launch):
        import ray.train
        from ray.train.torch import get_device

        self.cfg, self.data_start, self.resume_from = cfg, launch.data_start, launch.resume_from
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = get_device() if cfg.use_gpu else torch.device("cpu")

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        from ray.train.torch import prepare_model

        return prepare_model(model)

    def resume_state(self) -> dict | None:
        found = ckpt.resolve_latest(self.cfg.run_dir)
        if found is None and self.resume_from:
            raise RuntimeError(f"rank {self.rank}: no checkpoint under {self.cfg.run_dir}, where the driver resumed "
                               f"{self.resume_from}; --out-dir must be storage every worker reads (a shared file "
                               f"system on a cluster)")
        return None if found is None else {**found[1], "_path": str(found[0])}

    def batches(self, position: dict | None) -> Iterator[tuple[dict, dict]]:
        import ray.train

        from pipeline.windows import position_index, position_state, ray_collate_fn, samples_per_epoch

        spec = self.cfg.window_spec()
        n, per_step = samples_per_epoch(self.cfg.data_dir, spec), self.cfg.batch_size * self.world_size
        done = position_index(position, n) - self.data_start
        if done < 0 or done % per_step:  # cannot happen while driver and workers read the same run folder
            raise RuntimeError(f"rank {self.rank}: checkpoint position {position} is not reachable from the dataset "
                               f"start {self.data_start} (the position of {self.resume_from or 'no checkpoint'}) in "
                               f"steps of {per_step} samples; do workers see another --out-dir than the driver?")
        skip = done // per_step
        shard = ray.train.get_dataset_shard(f"train_{self.rank}")  # this rank's batches of every step
        for i, batch in enumerate(shard.iter_torch_batches(batch_size=self.cfg.batch_size, collate_fn=ray_collate_fn(),
                                                           drop_last=True)):
            if i >= skip:
                yield batch, position_state(spec, *divmod(self.data_start + (i + 1) * per_step, n))
        raise RuntimeError(f"rank {self.rank}: the window dataset ran out after {i + 1} batches")

    def report(self, metrics: dict, state: dict | None, step: int) -> str | None:
        import ray.train

        if state is None or self.rank != 0:
            ray.train.report(metrics)
            return None
        name = ckpt.checkpoint_dir_name(step)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt.save_checkpoint(state, tmp)  # a failed write names this local temp path, the disk that is full
            try:  # Ray copies the folder into the run folder; a copy cut short is skipped by resolve_latest
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=name)
            except Exception as e:
                error = ckpt.write_error(self.cfg.run_dir / name / ckpt.CKPT_FILE, e)
                if error is None:
                    raise
                raise error from e
        return str(self.cfg.run_dir / name)
