"""Training checkpoints: one `checkpoint.pt` per folder, written atomically, checked against the config.

A checkpoint holds everything a resumed run needs to continue as if it had never stopped (STYLE.md section 7):

    {"format": 1, "train_config": dict, "model_config": dict, "model": state_dict, "ema": state_dict,
     "optimizer": state_dict, "step": int, "data_position": dict, "mlflow_run_id": str | None}

Folders are named `checkpoint_{step:08d}` under the run folder, the same names for the local backend and for
Ray Train (`ray.train.report(..., checkpoint_dir_name=...)`), so the last good one can be named in messages.
"The latest checkpoint" is always `resolve_latest(run folder)`: the newest folder whose file loads, for the
driver and for every worker alike. No Ray here: the Ray side lives in training/train_backends.py.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pickle
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from pipeline.cli import UserError

CKPT_FILE = "checkpoint.pt"
FOLDER_GLOB = "checkpoint_[0-9]*"  # not Ray's checkpoint_manager_snapshot.json beside them
TMP_PREFIX = f".{CKPT_FILE}.tmp"  # + writer pid; never read, removed by the next resolve_latest(clean=True)
FORMAT = 1

def checkpoint_dir_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, read-only folder); the message is one line naming the
    path and the cause (pipeline.cli.run_cli prints it so, without a traceback)."""


class UnreadableCheckpoint(ValueError):
    """A checkpoint.pt that does not load: a copy cut short (a killed worker, a full disk)."""


_ADVICE = {errno.ENOSPC: "free space and rerun the same command",
           errno.EDQUOT: "free space under your disk quota and rerun the same command",
           errno.EFBIG: "raise the file size limit (ulimit -f) and rerun the same command",
           errno.EROFS: "the file system is read-only: pick another --out-dir and rerun"}
_WRITABLE = "make the folder writable (or pick another --out-dir) and rerun the same command"


def write_error(path: str | os.PathLike, error: BaseException) -> CheckpointWriteError | None:
    """The one-line error for a failed checkpoint write, or None when no OSError caused `error` (torch.save
    reports a failed write as a RuntimeError whose context holds the OSError)."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    if error is None:
        return None
    advice = _ADVICE.get(error.errno, _WRITABLE if error.errno in (errno.EACCES, errno.EPERM) else
                         "fix the cause and rerun the same command")
    return CheckpointWriteError(f"cannot write checkpoint {path}: {error.strerror or error} ({advice})")


def save_checkpoint(state: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Write `state` to `<folder>/checkpoint.pt` (temp file + os.replace); returns the file's path.

    A failed write leaves nothing behind (its temp file, and the folder if it made it, are removed) and raises
    CheckpointWriteError naming the path and the cause, e.g. "No space left on device".
    """
    folder = Path(folder)
    path, tmp = folder / CKPT_FILE, folder / f"{TMP_PREFIX}{os.getpid()}"
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Through a Python file object: torch's own path writer reports a full disk only as "unexpected pos".
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
            if made:
                folder.rmdir()
        error = write_error(path, e)
        if error is None:
            raise
        raise error from e
    except BaseException:  # interrupted: still no partial file
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(folder_or_file: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint (tensors on CPU); raises FileNotFoundError/ValueError naming the path
    (UnreadableCheckpoint for a truncated or garbled file)."""
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / CKPT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint here")
    try:
        # weights_only=False: our own files; the data position may hold plain Python/numpy scalars.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnreadableCheckpoint(f"{path}: unreadable checkpoint ({first})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a memvid training checkpoint (format {FORMAT} expected)")
    return state


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete `checkpoint_*` folder of a run folder, or None."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    done = sorted(p for p in run_dir.glob(FOLDER_GLOB) if (p / CKPT_FILE).exists())
    return done[-1] if done else None


def resolve_latest(run_dir: str | os.PathLike, clean: bool = False) -> tuple[Path, dict[str, Any]] | None:
    """(folder, state) of the run's latest checkpoint: the newest `checkpoint_*` folder whose file loads.

    This is the one record of "the latest checkpoint" that the driver and every Ray Train worker read. Ray's
    own registry is not: it trails the folders on disk by seconds, so a driver killed just after a checkpoint
    left the two apart. A file that does not load (a copy cut short) is skipped for the one before; with
    clean=True (the driver, before any worker starts) it is removed with its folder, and so are temp files
    left by writes that failed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    if clean:
        for tmp in run_dir.glob(f"{FOLDER_GLOB}/{TMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)
    for folder in sorted((p for p in run_dir.glob(FOLDER_GLOB) if (p / CKPT_FILE).exists()), reverse=True):
        try:
            return folder, load_checkpoint(folder)
        except UnreadableCheckpoint as e:
            print(f"[checkpoint] {e}: {'removed; ' if clean else ''}resuming the checkpoint before it",
                  file=sys.stderr, flush=True)
            if clean:
                shutil.rmtree(folder, ignore_errors=True)
    return None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoint folders."""
    done = sorted(p for p in Path(run_dir).glob(FOLDER_GLOB) if (p / CKPT_FILE).exists())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
