"""The training job's config: `TrainConfig`, the model config and window spec it builds, and which of its fields a
resumed run must keep. No torch and no Ray at import (the sweep and the tools read it cheaply).

One path from flag to model: `python -m training.train --memory-length 8` -> `TrainConfig.memory_length` (checked
here, naming the flag) -> `cfg.model_config(channels, resolution)` (training.models.ModelConfig) and
`cfg.window_spec()` (pipeline.windows.WindowSpec). `training.train.check_config` then runs the model once on the
data's shape before anything starts, so every combination that cannot train is refused by `--dry-run` too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pipeline.cli import field
from training.choices import BACKENDS, COMPRESSIONS, MEMORIES, MODEL_SIZES, SCHEDULES

RESUME = {"resume": True}  # field metadata: a rerun must keep this value to resume the run's checkpoints
# What a checkpoint saved before a field existed was trained with, and fields saved under an older name.
LEGACY_VALUES = {"revisit_share": 0.0, "memory_dropout": 0.0}
OLD_NAMES = {"model_size": "preset"}


@dataclass
class TrainConfig:
    COMMAND: ClassVar[str] = "training.train"  # the tool these flags belong to (usage lines, errors)

    data_dir: str = field("runs/demo/latents", "folder of latent shards (pipeline.encode output)", meta=RESUME)
    out_dir: str = field("runs/train", "output folder: run folders with checkpoints, mlflow.db, mlartifacts")
    name: str = field("", "run name (folder and MLflow run); empty = derived from the model settings and seed")
    # model (training.models.ModelConfig); shape (channels, resolution) is read from the data
    model_size: str = field("tiny", "denoiser size preset", choices=MODEL_SIZES, aliases=("--preset",), meta=RESUME)
    memory: str = field("prepend", "memory structure (paper Sec. 5, Fig. 5)", choices=MEMORIES, meta=RESUME)
    memory_length: int = field(16, "memory frames m before the current window (paper: 16, 48, 112)", meta=RESUME)
    compression: str = field("none", "memory compression (paper App. G)", choices=COMPRESSIONS, meta=RESUME)
    budget: int = field(16, "frames/tokens kept after compression (<= memory_length)", meta=RESUME)
    window: int = field(16, "current window w in frames (paper: w = Delta = 16)", meta=RESUME)
    num_actions: int = field(7, "number of discrete actions (maze: 7)", meta=RESUME)
    num_timesteps: int = field(1000, "diffusion steps K", meta=RESUME)
    schedule: str = field("sigmoid", "noise schedule", choices=SCHEDULES, meta=RESUME)
    # window sampling (pipeline.windows): train on what evaluation tests
    revisit_share: float = field(0.5, "share in [0, 1] of each epoch's windows placed so a revisit frame's earlier "
                                      "sighting lies in the memory (0 = uniform windows only)", meta=RESUME)
    memory_dropout: float = field(0.5, "share in [0, 1] of windows whose memory keeps only its last k frames, "
                                       "k uniform in 1..memory-length (the rest is padding, as in evaluation)",
                                  meta=RESUME)
    # optimisation
    batch_size: int = field(4, "clips per worker per step", meta=RESUME)
    steps: int = field(1000, "optimizer steps in total (a rerun with more steps continues)")
    lr: float = field(1e-4, "Adam learning rate (betas 0.9, 0.999; no weight decay: paper App. J)", meta=RESUME)
    grad_clip: float = field(1.0, "max gradient norm (paper App. J)")
    ema_decay: float = field(0.999, "EMA decay per step (warmed up: min(decay, (1+step)/(10+step)))", meta=RESUME)
    seed: int = field(0, "seed of weights, window sampling and diffusion noise", meta=RESUME)
    log_every: int = field(10, "steps between progress lines and MLflow metrics")
    checkpoint_every: int = field(100, "steps between checkpoints (and one at the end)")
    num_to_keep: int = field(2, "checkpoints kept per run")
    # where it runs
    backend: str = field("ray", "ray: Ray Train TorchTrainer + Ray Data; local: this process, no Ray", choices=BACKENDS)
    num_workers: int = field(1, "Ray Train workers (data-parallel)")
    use_gpu: bool = field(False, "one GPU per worker (bf16 autocast)")
    cpus_per_worker: float = field(0.5, "CPUs per Ray Train worker (< 1 leaves CPUs for Ray Data reads)")
    address: str = field("", "Ray cluster address ('auto' = running cluster); empty = start a local one")
    max_failures: int = field(2, "Ray Train restarts of the worker group from the last checkpoint")
    tracking_uri: str = field("", "MLflow tracking URI; empty = sqlite:///<abs out-dir>/mlflow.db")
    experiment: str = field("memvid", "MLflow experiment")
    parent_run_id: str = field("", "MLflow parent run id (a sweep's trial becomes its child run)")
    fail_at_step: int = field(-1, "kill the rank-0 worker once after this step (failure injection)", hidden=True)
    nan_at_step: int = field(-1, "make the loss NaN at this step (failure injection)", hidden=True)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            valid = f.metadata.get("choices")
            if valid and getattr(self, f.name) not in valid:
                raise ValueError(f"--{f.name.replace('_', '-')} {getattr(self, f.name)!r} is not one of {valid}")
        if self.memory != "none" and self.memory_length < 1:
            raise ValueError(f"--memory-length {self.memory_length}: expected >= 1 with --memory {self.memory}")
        if self.compression != "none" and self.memory == "none":
            raise ValueError(f"--compression {self.compression} needs a memory to compress; --memory none has none "
                             f"(choose one of {list(MEMORIES[1:])})")
        if self.compression != "none" and self.memory_length < self.budget:
            raise ValueError(f"--memory-length {self.memory_length} is shorter than --budget {self.budget}; "
                             f"expected --memory-length >= {self.budget} (or a smaller --budget)")
        for name in ("window", "batch_size", "steps", "log_every", "checkpoint_every", "num_workers", "num_to_keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected >= 1")
        if self.lr <= 0:
            raise ValueError(f"--lr {self.lr}: expected > 0")
        if self.backend == "local" and self.num_workers != 1:
            raise ValueError(f"--num-workers {self.num_workers} needs --backend ray (the local backend is one process)")
        self.window_spec()  # WindowSpec checks the sampling shares, naming the flag
        if not self.name:
            self.name = (f"{self.model_size}-{self.memory}-m{self.memory_length}-{self.compression}"
                         + (f"-b{self.budget}" if self.compression != "none" else "") + f"-w{self.window}-s{self.seed}")
        if "/" in self.name or self.name.startswith("."):
            raise ValueError(f"--name {self.name!r}: expected a plain folder name")

    def model_config(self, channels: int, resolution: int):
        """The denoiser's training.models.ModelConfig for data of this shape (channels, square resolution)."""
        from training.models import ModelConfig

        return ModelConfig(preset=self.model_size, in_channels=channels, resolution=resolution,
                           num_actions=self.num_actions, memory=self.memory, memory_length=self.memory_length,
                           compression=self.compression, budget=self.budget, window=self.window)

    def window_spec(self):
        """How pipeline.windows samples this run's training windows."""
        from pipeline.windows import WindowSpec

        return WindowSpec(memory_length=self.memory_length, window=self.window, batch_size=self.batch_size,
                          seed=self.seed, revisit_share=self.revisit_share, memory_dropout=self.memory_dropout)

    @property
    def run_dir(self) -> Path:
        """Ray Train's `<storage_path>/<name>`; the local backend keeps its checkpoints in `<run_dir>/local`."""
        return Path(self.out_dir).expanduser().resolve() / self.name

    def resolved_tracking_uri(self) -> str:
        from training.tracking import check_tracking_uri, default_tracking_uri

        return check_tracking_uri(self.tracking_uri) if self.tracking_uri else default_tracking_uri(self.out_dir)


RESUME_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("resume"))


def check_resumable(saved: dict, cfg: TrainConfig, where: str) -> None:
    """Raise ValueError naming the first field a resumed run must keep (RESUME_FIELDS) where the checkpoint's
    saved config (`saved`, a TrainConfig as a dict, possibly from an older version) and `cfg` differ."""
    for name in RESUME_FIELDS:
        old = OLD_NAMES.get(name)
        if name in saved:
            was = saved[name]
        elif old in saved:
            was = saved[old]
        elif name in LEGACY_VALUES:
            was = LEGACY_VALUES[name]
        else:
            continue
        now = getattr(cfg, name)
        if was != now:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"checkpoint {where} was trained with {flag} {was!r}, this command has {now!r}; "
                             f"rerun with {flag} {was!r} to resume it, or pick another --name/--out-dir to start a "
                             f"new run")
