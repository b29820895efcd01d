"""training.train: resume equality, Ray vs local, MLflow contents, NaN stop, bad input, failure injection.

Tiny real objects: a latent-shard folder written with the shard schema, the `tiny` denoiser on 8x8 frames, a
few steps. Ray tests use the module's `ray_cluster` fixture; run them under `flock /tmp/ray.lock`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.schema import episodes_to_table
from pipeline.shards import Manifest, write_shard
from training.checkpoint import load_checkpoint
from training.train import TrainConfig, run_training

RES, CHANNELS, T_EPISODE = 8, 3, 24

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures one_thread, data, out: tests/conftest.py


def make_latents(folder: Path, num_episodes: int = 1, seed: int = 0) -> Path:
    """A latent-shard folder (one shard) of smooth random clips, as pipeline.encode would write it.

    One 24-frame episode gives 6 windows of 4 per epoch: batches of 4 cross epoch ends (both backends).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_episodes):
        base = rng.uniform(-1, 1, (1, CHANNELS, RES, RES))
        clip = np.clip(base + 0.1 * rng.standard_normal((T_EPISODE, CHANNELS, RES, RES)), -1, 1)
        rows.append(dict(episode_id=f"maze-s{seed}-e{i}", env="maze", agent="revisit", seed=seed, episode_index=i,
                         fps=10.0, env_config="{}", latents=clip.astype(np.float16),
                         actions=rng.integers(0, 7, T_EPISODE), poses=np.zeros((T_EPISODE, 5), np.float32),
                         scene=np.zeros((T_EPISODE, 4), np.int16), revisit_gap=-np.ones(T_EPISODE, np.int32),
                         encoder=json.dumps({"name": "identity"})))
    folder.mkdir(parents=True, exist_ok=True)
    Manifest(folder).add("shard-00000.parquet",
                         write_shard(episodes_to_table(rows, "latents"), folder / "shard-00000.parquet", "latents"))
    return folder


def tiny_config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data_dir=str(data), out_dir=str(out), backend="local", model_size="tiny", memory="prepend",
                memory_length=4, budget=4, window=4, batch_size=4, steps=4, log_every=1, checkpoint_every=2,
                lr=1e-3, seed=3)
    return TrainConfig(**(base | kw))


def loss_history(out: TrainConfig, run_id: str) -> dict[int, float]:
    """step -> loss as stored in MLflow (the last value logged at a step wins, as after a resume)."""
    from training.tracking import make_client

    hist = make_client(out.resolved_tracking_uri()).get_metric_history(run_id, "loss")
    return {m.step: m.value for m in sorted(hist, key=lambda m: m.timestamp)}


@pytest.fixture(scope="module")
def straight(data, out):
    """An uninterrupted local run of 4 steps (the reference for resume and backend tests)."""
    cfg = tiny_config(data, out, name="straight")
    return cfg, run_training(cfg)


# ------------------------------------------------------------------------------------------------------------
# local backend


def test_resume_continues_like_an_uninterrupted_run(data, straight):
    ref_cfg, ref = straight
    cfg = tiny_config(data, ref_cfg.out_dir, name="resumed", steps=2)
    first = run_training(cfg)
    assert load_checkpoint(first["checkpoint"])["step"] == 2
    second = run_training(dataclasses.replace(cfg, steps=4))  # the same command with more steps
    assert second["mlflow_run_id"] == first["mlflow_run_id"]  # the same MLflow run continues
    state, ref_state = load_checkpoint(second["checkpoint"]), load_checkpoint(ref["checkpoint"])
    assert state["step"] == 4 and state["data_position"] == ref_state["data_position"]
    want, got = loss_history(ref_cfg, ref["mlflow_run_id"]), loss_history(cfg, second["mlflow_run_id"])
    assert sorted(got) == [1, 2, 3, 4]
    assert [got[s] for s in (3, 4)] == [want[s] for s in (3, 4)]
    for name, tensor in ref_state["model"].items():
        torch.testing.assert_close(state["model"][name], tensor, rtol=0, atol=0, msg=name)
    for name, tensor in ref_state["ema"].items():
        torch.testing.assert_close(state["ema"][name], tensor, rtol=0, atol=0, msg=name)


def test_mlflow_run_holds_params_metrics_artifacts(straight):
    from training.tracking import make_client

    cfg, out = straight
    client = make_client(cfg.resolved_tracking_uri())
    assert cfg.resolved_tracking_uri() == f"sqlite:///{Path(cfg.out_dir).resolve() / 'mlflow.db'}"
    run = client.get_run(out["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "straight"
    assert run.data.params["lr"] == "0.001" and run.data.params["memory_length"] == "4"
    assert run.data.params["model.preset"] == "tiny" and run.data.params["model.in_channels"] == str(CHANNELS)
    assert {m.step for m in client.get_metric_history(run.info.run_id, "loss")} == {1, 2, 3, 4}
    assert all(np.isfinite(m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert "frames_per_sec" in run.data.metrics
    assert run.info.artifact_uri.startswith((Path(cfg.out_dir).resolve() / "mlartifacts").as_uri())
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "checkpoints.json"} <= names
    saved = json.loads(Path(client.download_artifacts(run.info.run_id, "checkpoints.json")).read_text())
    assert saved["last_checkpoint"] == str(Path(out["checkpoint"]).parent)
    assert load_checkpoint(out["checkpoint"])["mlflow_run_id"] == run.info.run_id


def test_nan_loss_stops_naming_step_and_last_checkpoint(data, out, straight):
    from training.tracking import PARENT_TAG, find_run, make_client

    parent = straight[1]["mlflow_run_id"]  # also: a sweep trial's run is a child of the sweep's run
    cfg = tiny_config(data, out, name="nan", nan_at_step=3, steps=6, parent_run_id=parent)
    with pytest.raises(FloatingPointError, match=r"step 3 .*checkpoint_00000002"):
        run_training(cfg)
    assert load_checkpoint(cfg.run_dir / "local" / "checkpoint_00000002")["step"] == 2
    client = make_client(cfg.resolved_tracking_uri())
    run = client.get_run(find_run(client, client.get_experiment_by_name("memvid").experiment_id, "nan"))
    assert run.info.status == "FAILED" and run.data.tags[PARENT_TAG] == parent


def test_bad_config_names_field_and_expected_value(data, tmp_path):
    with pytest.raises(ValueError, match=r"--memory 'ring' is not one of \['none', 'prepend'"):
        tiny_config(data, tmp_path, memory="ring")
    with pytest.raises(ValueError, match=r"--compression 'zip' is not one of"):
        tiny_config(data, tmp_path, compression="zip")
    with pytest.raises(ValueError, match=r"--memory-length 4 is shorter than --budget 8"):
        tiny_config(data, tmp_path, compression="joint", budget=8)
    with pytest.raises(FileNotFoundError, match=r"--data-dir .*pipeline.encode"):
        run_training(tiny_config(tmp_path / "nothing", tmp_path))


def test_checkpoint_of_another_config_is_refused(data, straight):
    cfg, _ = straight
    other = dataclasses.replace(cfg, lr=5e-4, steps=6)  # same run name and folder, different optimisation
    with pytest.raises(ValueError, match=r"trained with --lr 0.001, this command has 0.0005"):
        run_training(other)


def test_checkpoint_of_other_window_sampling_is_refused(straight):
    from training.config import check_resumable

    cfg, _ = straight  # trained with the defaults: --revisit-share 0.5 --memory-dropout 0.5
    with pytest.raises(ValueError, match=r"trained with --revisit-share 0.5, this command has 0.0"):
        run_training(dataclasses.replace(cfg, revisit_share=0.0, steps=6))
    with pytest.raises(ValueError, match=r"trained with --memory-dropout 0.5, this command has 0.25"):
        run_training(dataclasses.replace(cfg, memory_dropout=0.25, steps=6))
    # a checkpoint written before the two fields existed was trained on uniform windows with full memory
    old = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("revisit_share", "memory_dropout")}
    with pytest.raises(ValueError, match=r"trained with --revisit-share 0.0, this command has 0.5"):
        check_resumable(old, cfg, "old")
    check_resumable(old, dataclasses.replace(cfg, revisit_share=0.0, memory_dropout=0.0), "old")
    # a checkpoint saved before --preset was named --model-size still resumes, and keeps its size
    renamed = {("preset" if k == "model_size" else k): v for k, v in dataclasses.asdict(cfg).items()}
    check_resumable(renamed, cfg, "old")
    with pytest.raises(ValueError, match=r"trained with --model-size 'tiny', this command has 'small'"):
        check_resumable(renamed, dataclasses.replace(cfg, model_size="small"), "old")


def test_every_field_that_shapes_the_model_or_data_must_match_to_resume(straight):
    """Which fields a resumed run must keep is read off the config (a field flag), not a hand-kept list: a rerun
    with another --num-actions is refused by name instead of dying in load_state_dict."""
    from training.config import RESUME_FIELDS

    assert {"num_actions", "model_size", "memory", "memory_length", "window", "seed"} <= set(RESUME_FIELDS)
    assert not {"steps", "num_workers", "log_every", "out_dir"} & set(RESUME_FIELDS)
    cfg, _ = straight
    with pytest.raises(ValueError, match=r"trained with --num-actions 7, this command has 9"):
        run_training(dataclasses.replace(cfg, num_actions=9, steps=6))


def test_cli_dry_run_prints_resolved_config(capsys, data, tmp_path):
    from training.train import main

    main(["--data-dir", str(data), "--out-dir", str(tmp_path), "--memory-length", "48", "--dry-run"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["memory_length"] == 48 and printed["name"] == "tiny-prepend-m48-none-w16-s0"
    assert not (tmp_path / "mlflow.db").exists()  # a dry run does no work


# ------------------------------------------------------------------------------------------------------------
# Ray Train backend (one local cluster for the module)


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_ray_backend_matches_local_and_survives_a_killed_worker(ray_cluster, data, out, straight):
    """One Ray Train worker on the Ray Data stream; it dies after step 3 (checkpoint at 2) and FailureConfig
    restarts it from checkpoint_00000002. Losses equal the local loop's for the same seed (Ray == local, and
    resumed == uninterrupted), the MLflow run is the same one, the final weights equal the local run's."""
    ref_cfg, ref = straight
    want = loss_history(ref_cfg, ref["mlflow_run_id"])
    cfg = tiny_config(data, out, backend="ray", name="ray-killed", fail_at_step=3, max_failures=1)
    res = run_training(cfg)
    assert (cfg.run_dir / ".failure_injected_3").exists()  # the worker did die
    state, ref_state = load_checkpoint(res["checkpoint"]), load_checkpoint(ref["checkpoint"])
    assert Path(res["checkpoint"]).parent.name == "checkpoint_00000004" and state["step"] == 4
    assert state["mlflow_run_id"] == res["mlflow_run_id"] and state["data_position"] == ref_state["data_position"]
    got = loss_history(cfg, res["mlflow_run_id"])
    assert sorted(got) == [1, 2, 3, 4]
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [want[s] for s in range(1, 5)], rtol=1e-5)
    for name, tensor in ref_state["model"].items():
        torch.testing.assert_close(state["model"][name], tensor, rtol=1e-4, atol=1e-6, msg=name)
