"""Training checkpoints: one `checkpoint.pt` per folder, written atomically, checked against the config.

A checkpoint holds everything a resumed run needs to continue as if it had never stopped (STYLE.md section 7):

    {"format": 1, "train_config": dict, "model_config": dict, "model": state_dict, "ema": state_dict,
     "optimizer": state_dict, "step": int, "data_position": dict, "mlflow_run_id": str | None}

Folders are named `checkpoint_{step:08d}` under the run folder, the same names for the local backend and for
Ray Train (`ray.train.report(..., checkpoint_dir_name=...)`), so the last good one can be named in messages.
No Ray here: the Ray side lives in training/train.py.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

CKPT_FILE = "checkpoint.pt"
FORMAT = 1

# Fields of TrainConfig a resumed run must share with its checkpoint: they change the model, the data it
# sees or the optimisation. Others (steps, workers, logging, where to log) may change between reruns.
RESUME_FIELDS = ("data_dir", "preset", "memory", "memory_length", "compression", "budget", "window",
                 "batch_size", "lr", "ema_decay", "seed", "num_timesteps", "schedule", "revisit_share",
                 "memory_dropout")
# What a checkpoint written before a field existed was trained with (windows sampled uniformly, memory full).
LEGACY_VALUES = {"revisit_share": 0.0, "memory_dropout": 0.0}


def checkpoint_dir_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def save_checkpoint(state: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Write `state` to `<folder>/checkpoint.pt` (temp file + os.replace); returns the file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CKPT_FILE
    tmp = folder / f".{CKPT_FILE}.tmp{os.getpid()}"
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(folder_or_file: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint (tensors on CPU); raises FileNotFoundError/ValueError naming the path."""
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / CKPT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint here")
    # weights_only=False: our own files; the data position may hold plain Python/numpy scalars.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a memvid training checkpoint (format {FORMAT} expected)")
    return state


def check_compatible(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """Raise ValueError naming the first differing RESUME_FIELDS entry (flag, checkpoint value, command value)."""
    for name in RESUME_FIELDS:
        if name not in saved and name not in LEGACY_VALUES:
            continue
        was = saved.get(name, LEGACY_VALUES.get(name))
        if was != current.get(name):
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"checkpoint {where} was trained with {flag} {was!r}, this command has {current.get(name)!r}; "
                f"rerun with {flag} {was!r} to resume it, or pick another --name/--out-dir to start a new run")


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete `checkpoint_*` folder of a run folder, or None."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    done = sorted(p for p in run_dir.glob("checkpoint_*") if (p / CKPT_FILE).exists())
    return done[-1] if done else None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` checkpoint folders."""
    done = sorted(p for p in Path(run_dir).glob("checkpoint_*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
