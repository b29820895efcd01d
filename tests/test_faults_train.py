"""training.train under faults: each test builds the exact state a fault leaves, then reruns the same command.

- a driver killed just after a Ray Train checkpoint: the folder is on disk, Ray's registry does not have it yet;
- a disk that is full when a checkpoint is written: a real ENOSPC (the write lands on /dev/full), and a write
  cut short half way by a real file size limit (ulimit -f, EFBIG);
- a checkpoint file cut short (a copy into the run folder that stopped half way);
- data whose episodes are shorter than the window; a SIGTERM while training.
After each, the rerun must finish with the same weights, optimizer state and data position as an uninterrupted
run, and the MLflow run must say what happened (FAILED, KILLED, FINISHED), never stay RUNNING.
Ray tests use the module's `ray_cluster` fixture; run them under `flock /tmp/ray.lock`.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import make_latents, tiny_config

from training import checkpoint as ckpt
from training.train import run_training

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures one_thread, data, out: tests/conftest.py


@pytest.fixture(scope="module")
def reference(data, out) -> dict[int, dict]:
    """An uninterrupted local run of 6 steps: step -> its checkpoint (steps 4 and 6 are kept)."""
    cfg = tiny_config(data, out, name="reference", steps=6)
    run_training(cfg)
    return {s: ckpt.load_checkpoint(cfg.run_dir / "local" / ckpt.checkpoint_dir_name(s)) for s in (4, 6)}


def assert_same_state(got: dict, want: dict) -> None:
    """Bit for bit: weights, EMA, optimizer moments, step and data position."""
    assert got["step"] == want["step"] and got["data_position"] == want["data_position"]
    for part in ("model", "ema"):
        for name, tensor in want[part].items():
            torch.testing.assert_close(got[part][name], tensor, rtol=0, atol=0, msg=f"{part}.{name}")
    for i, moments in want["optimizer"]["state"].items():
        for key, tensor in moments.items():
            torch.testing.assert_close(got["optimizer"]["state"][i][key], tensor, rtol=0, atol=0, msg=f"adam {i}.{key}")


def mlflow_runs(cfg, name: str) -> list:
    from training.tracking import make_client

    client = make_client(cfg.resolved_tracking_uri())
    exp = client.get_experiment_by_name(cfg.experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], f"tags.`mlflow.runName` = '{name}'")


# ------------------------------------------------------------------------------------------------------------
# disk faults (local backend)


def test_save_onto_a_full_disk_says_so_in_one_line_and_leaves_nothing(tmp_path):
    """The checkpoint's temp file is a link to /dev/full: a real ENOSPC from the kernel. Before, torch.save's own
    writer said only `[enforce fail at inline_container.cc:672] . unexpected pos ...`."""
    folder = tmp_path / ckpt.checkpoint_dir_name(4)
    folder.mkdir()
    (folder / f"{ckpt.TMP_PREFIX}{os.getpid()}").symlink_to("/dev/full")
    with pytest.raises(ckpt.CheckpointWriteError) as failed:
        ckpt.save_checkpoint({"model": {"w": torch.ones(100_000)}}, folder)
    assert str(failed.value) == (f"cannot write checkpoint {folder / ckpt.CKPT_FILE}: No space left on device "
                                 f"(free space and rerun the same command)")
    assert list(folder.iterdir()) == []  # the temp file is gone, no checkpoint.pt appeared


def test_checkpoint_write_cut_short_fails_in_one_line_and_the_rerun_finishes(data, out, reference):
    """`python -m training.train` resumes step 2 and writes step 4's checkpoint (3.8 MB) under a 2 MB file size
    limit (ulimit -f): the write stops half way, as on a disk that fills up. It must exit with one line naming
    the file and the cause, leave no partial file, mark the MLflow run FAILED; the same command, rerun with
    the limit lifted, must finish as an uninterrupted run. Before: a traceback ending in `unexpected pos`, and a
    2 MB temp file left beside the checkpoint."""
    import resource

    cfg = tiny_config(data, out, name="cut-write", steps=2)
    run_training(cfg)
    flags = ["--data-dir", cfg.data_dir, "--out-dir", cfg.out_dir, "--name", cfg.name, "--backend", "local",
             "--memory-length", "4", "--budget", "4", "--window", "4", "--batch-size", "4", "--steps", "4",
             "--log-every", "1", "--checkpoint-every", "2", "--lr", "0.001", "--seed", "3"]

    def limit_file_size():  # SIGXFSZ ignored: the write then fails with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, resource.RLIM_INFINITY))

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "training.train", *flags], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=300, preexec_fn=limit_file_size)
    folder = cfg.run_dir / "local" / ckpt.checkpoint_dir_name(4)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(
        f"training.train: error: cannot write checkpoint {folder / ckpt.CKPT_FILE}: File too large "
        f"(raise the file size limit (ulimit -f) and rerun the same command)")
    assert not folder.exists()  # no partial file, no empty folder
    [run] = mlflow_runs(cfg, "cut-write")
    assert run.info.status == "FAILED" and "File too large" in run.data.tags["stopped"]

    again = run_training(dataclasses.replace(cfg, steps=4))  # the same command, the limit lifted
    assert_same_state(ckpt.load_checkpoint(again["checkpoint"]), reference[4])
    [run] = mlflow_runs(cfg, "cut-write")
    assert run.info.status == "FINISHED" and again["mlflow_run_id"] == run.info.run_id


def test_checkpoint_cut_short_is_removed_and_the_run_resumes_from_the_one_before(data, out, reference):
    """The newest folder holds the first half of a real checkpoint file (a copy into the run folder that
    stopped), beside a temp file of a failed write. Before, every rerun failed loading it
    (`PytorchStreamReader failed reading zip archive`)."""
    cfg = tiny_config(data, out, name="cut-short", steps=2)
    run_training(cfg)
    assert reference[4]["step"] == 4
    whole = (out / "reference" / "local" / ckpt.checkpoint_dir_name(4) / ckpt.CKPT_FILE).read_bytes()
    cut = cfg.run_dir / "local" / ckpt.checkpoint_dir_name(4)
    cut.mkdir()
    (cut / ckpt.CKPT_FILE).write_bytes(whole[: len(whole) // 2])
    stale = cfg.run_dir / "local" / ckpt.checkpoint_dir_name(2) / f"{ckpt.TMP_PREFIX}12345"
    stale.write_bytes(whole[:1000])

    again = run_training(dataclasses.replace(cfg, steps=6))  # the same command with more steps
    assert_same_state(ckpt.load_checkpoint(again["checkpoint"]), reference[6])
    assert not stale.exists()
    assert sorted(p.name for p in (cfg.run_dir / "local").iterdir()) == ["checkpoint_00000004", "checkpoint_00000006"]


# ------------------------------------------------------------------------------------------------------------
# MLflow run states


def test_too_short_episodes_fail_before_any_mlflow_run(tmp_path):
    """Episodes of 3 frames, window 4: before, the clear error came after the MLflow run had started, which then
    stayed RUNNING."""
    from test_train import T_EPISODE

    data = make_latents(tmp_path / "latents")
    cfg = tiny_config(data, tmp_path / "out", window=T_EPISODE + 1, memory_length=4)
    with pytest.raises(ValueError, match=rf"--window {T_EPISODE + 1}: no episode in --data-dir .* has that many "
                                         rf"frames \(the longest has {T_EPISODE}\)"):
        run_training(cfg)
    assert mlflow_runs(cfg, cfg.name) == []


def test_sigterm_ends_the_mlflow_run_killed(data, tmp_path):
    """`python -m training.train` gets SIGTERM after its first step: it exits 130 and its run says KILLED."""
    cfg = tiny_config(data, tmp_path, name="terminated", steps=100_000, checkpoint_every=1000)
    flags = ["--data-dir", cfg.data_dir, "--out-dir", cfg.out_dir, "--name", cfg.name, "--backend", "local",
             "--memory-length", "4", "--budget", "4", "--window", "4", "--batch-size", "4", "--steps", "100000",
             "--log-every", "1", "--seed", "3"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "training.train", *flags], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("[train] step 1/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, "".join(lines) + rest
    [run] = mlflow_runs(cfg, "terminated")
    assert run.info.status == "KILLED" and run.data.tags["stopped"].startswith("train: KeyboardInterrupt")


# ------------------------------------------------------------------------------------------------------------
# Ray Train


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_driver_killed_before_ray_registered_its_checkpoint_resumes_bit_for_bit(ray_cluster, data, out, reference):
    """A driver SIGKILLed just after a checkpoint leaves checkpoint_00000004 on disk while Ray's registry
    (checkpoint_manager_snapshot.json, written 0.2-3.4 s later) still names checkpoint_00000002. The state is
    made exactly: Ray's own registry file from before step 4 is put back. Before, the driver started the data at
    step 4's position while the workers restored step 2: `checkpoint position ... is not reachable from the
    dataset start`, on every rerun."""
    cfg = tiny_config(data, out, backend="ray", name="driver-killed", steps=2)
    run_training(cfg)
    registry = cfg.run_dir / "checkpoint_manager_snapshot.json"
    before = registry.read_bytes()
    first = run_training(dataclasses.replace(cfg, steps=4))
    registry.write_bytes(before)

    again = run_training(dataclasses.replace(cfg, steps=6))  # the same command, rerun with more steps
    assert Path(again["checkpoint"]).parent.name == "checkpoint_00000006"
    assert_same_state(ckpt.load_checkpoint(again["checkpoint"]), reference[6])
    assert again["mlflow_run_id"] == first["mlflow_run_id"]
    [run] = mlflow_runs(cfg, "driver-killed")
    assert run.info.status == "FINISHED"
    # step 4's folder, never registered by Ray, is not left behind for ever
    assert sorted(p.name for p in cfg.run_dir.glob(ckpt.FOLDER_GLOB)) == ["checkpoint_00000002", "checkpoint_00000006"]


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ray_checkpoint_that_cannot_be_copied_fails_in_one_line(ray_cluster, data, out):
    """Ray copies rank 0's checkpoint into the run folder; here a file stands where its folder goes. The
    driver raises the worker's one-line error (not Ray's WorkerGroupError traceback) and the run is FAILED."""
    cfg = tiny_config(data, out, backend="ray", name="ray-blocked", steps=2, max_failures=0)
    blocker = cfg.run_dir / ckpt.checkpoint_dir_name(2)
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way\n")
    with pytest.raises(ckpt.CheckpointWriteError) as failed:
        run_training(cfg)
    assert str(failed.value).startswith(f"cannot write checkpoint {blocker / ckpt.CKPT_FILE}: ")
    assert "\n" not in str(failed.value)
    [run] = mlflow_runs(cfg, "ray-blocked")
    assert run.info.status == "FAILED" and "CheckpointWriteError" in run.data.tags["stopped"]
