"""pipeline.collect on a real local Ray cluster with the real maze: determinism, env reuse, resume, failures,
bad input."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.rollout import rollout
from pipeline.collect import CollectConfig, ShardWorker, main, render_episode, render_shard, run_collect, shard_episodes
from pipeline.schema import episodes_to_table, to_numpy
from pipeline.shards import Manifest, read_shard, write_shard

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[1]


def tiny(out, **kw) -> CollectConfig:
    """6 episodes x 8 frames at 16x16, 2 per shard -> 3 shards."""
    args = dict(episodes=6, length=8, resolution=16, maze_size=5, episodes_per_shard=2, workers=2, seed=3,
                agent="explore", out_dir=str(out), max_retries=1, episode_timeout_sec=120.0)
    args.update(kw)
    return CollectConfig(**args)


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("shard-*.parquet"))}


@pytest.fixture(scope="module")
def clean(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    summary = run_collect(tiny(out, workers=1))
    return out, summary, shard_bytes(out)


def test_clean_run_round_trips_and_episodes_come_from_their_own_seed(clean):
    out, summary, blobs = clean
    assert summary["written"] == 3 and summary["failed"] == [] and summary["frames"] == 48
    # One worker kept one env for all 6 episodes.
    assert summary["workers"] == 1 and summary["env_launches"] == 1 and summary["episodes_rendered"] == 6
    assert summary["launches_per_episode"] == pytest.approx(1 / 6)
    assert sorted(blobs) == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    manifest = Manifest(out)
    assert [p.name for p in manifest.done_paths()] == sorted(blobs) and manifest.num_rows == 6
    assert json.loads((out / "config.json").read_text())["length"] == 8
    assert "workers" not in json.loads((out / "config.json").read_text())
    table = read_shard(out / "shard-00002.parquet")
    assert table.column("episode_index").to_pylist() == [4, 5]
    assert table.column("episode_id").to_pylist() == ["maze-s3-e4", "maze-s3-e5"]
    frames = to_numpy(table, "frames")
    assert frames.shape == (2, 8, 16, 16, 3) and frames.dtype == np.uint8 and frames.std() > 0
    # Episode 5 is default_rng([3, 5]) alone: the same arrays straight from the env, no Ray, no shard.
    direct = rollout("maze", {"size": 5, "height": 16, "width": 16}, "explore", {}, 8, np.random.default_rng([3, 5]))
    for col in ("frames", "actions", "poses", "scene", "revisit_gap"):
        np.testing.assert_array_equal(to_numpy(table, col)[1], direct[col])
    assert json.loads(table.column("env_config")[1].as_py())["size"] == 5


def test_same_bytes_with_two_workers_and_rerun_skips_everything(clean, tmp_path):
    out, _, blobs = clean
    summary = run_collect(tiny(tmp_path, workers=2))
    assert summary["written"] == 3 and summary["workers"] == 2 and summary["env_launches"] == 2
    assert shard_bytes(tmp_path) == blobs  # shard partitioning is by episode index, not by worker
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    again = run_collect(tiny(out, workers=2))
    assert again["skipped"] == 3 and again["written"] == 0
    assert shard_bytes(out) == blobs
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")} == mtimes
    # A different seed gives different episodes (rendered by a worker outside Ray).
    other = tmp_path / "seed4"
    other.mkdir()
    assert render_shard(tiny(other, seed=4), 0)["entry"] is not None
    assert shard_bytes(other)["shard-00000.parquet"] != blobs["shard-00000.parquet"]


def test_reused_env_gives_the_bytes_of_a_fresh_env_per_episode(clean, tmp_path):
    _, _, blobs = clean  # rendered by one worker that kept its env for all 6 episodes
    cfg = tiny(tmp_path)
    for index in range(cfg.num_shards):  # a fresh env for every episode, written as a worker writes a shard
        rows = [render_episode(cfg, episode) for episode in shard_episodes(cfg, index)]
        write_shard(episodes_to_table(rows, "frames"), tmp_path / f"shard-{index:05d}.parquet")
    assert shard_bytes(tmp_path) == blobs


def test_worker_keeps_its_env_and_replaces_it_after_a_failed_episode(clean, tmp_path):
    """The actor's body without Ray: shards in another order on one env; a failing attempt gets a new env."""
    _, _, blobs = clean
    worker = ShardWorker(tiny(tmp_path, max_retries=1), worker_index=7)
    first = worker.render_shard(2)
    env = worker.player.env
    second = worker.render_shard(1)
    assert worker.player.env is env and worker.num_launches == 1  # one env for 4 episodes
    assert (first["launches"], second["launches"], first["worker"]) == (1, 0, 7)
    third = worker.render_shard(0, fault={"shard": 0, "episode_index": 1, "mode": "raise", "attempts": 1})
    assert worker.player.env is not env and worker.num_launches == 2 and third["launches"] == 1
    assert [(f["episode_index"], f["attempt"]) for f in third["failures"]] == [(1, 0)]
    worker.close()
    assert worker.player.env is None
    assert shard_bytes(tmp_path) == blobs  # episode 1 on its second env equals the clean run's


def test_worker_killed_mid_shard_is_replaced_and_the_shard_retried_or_left(clean, tmp_path):
    _, _, blobs = clean
    # 1) The worker rendering shard 1 dies (os._exit) in its second episode; --max-retries 0: shard left not-done.
    summary = run_collect(tiny(tmp_path, max_retries=0), fault={"shard": 1, "episode_index": 3, "mode": "exit"})
    assert summary["failed"] == ["shard-00001.parquet"] and summary["written"] == 2
    assert summary["workers_lost"] == 1
    assert not (tmp_path / "shard-00001.parquet").exists()
    assert not list(tmp_path.glob(".shard-*"))  # no partial shard anywhere
    assert not Manifest(tmp_path).is_done("shard-00001.parquet")
    records = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert [r["shard"] for r in records] == ["shard-00001.parquet"] and "ActorDiedError" in records[0]["error"]
    assert "shard left not-done" in records[0]["error"]
    # 2) Rerun with --max-retries 1: the worker dies on shard 1 once more; the driver replaces it and the new
    #    worker renders the whole shard again.
    once = tmp_path.parent / f"{tmp_path.name}-died-once"
    resumed = run_collect(tiny(tmp_path, max_retries=1),
                          fault={"shard": 1, "episode_index": 3, "mode": "exit", "once_file": str(once)})
    assert resumed["skipped"] == 2 and resumed["written"] == 1 and resumed["failed"] == []
    assert resumed["workers_lost"] == 1 and once.exists()
    records = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert len(records) == 2 and "worker lost, shard retried" in records[1]["error"]
    assert shard_bytes(tmp_path) == blobs  # no episode lost or duplicated
    assert Manifest(tmp_path).num_rows == 6


def test_failing_episodes_are_retried_logged_or_left_not_done(clean, tmp_path):
    _, _, blobs = clean
    # 1) The second episode of shard 1 hangs on its first attempt: the per-episode timeout fires, the worker
    #    replaces its env and retries it.
    hung = tmp_path / "hung"
    summary = run_collect(tiny(hung, workers=1), fault={"shard": 1, "episode_index": 3, "mode": "hang",
                                                        "attempts": 1, "timeout_sec": 1.0})
    records = [json.loads(line) for line in (hung / "failures.jsonl").read_text().splitlines()]
    assert summary["failed"] == [] and len(records) == 1
    assert records[0]["episode_index"] == 3 and records[0]["error"].startswith("EpisodeTimeout")
    assert summary["env_launches"] == 2  # the worker's env, and the new one it built after the timeout
    assert shard_bytes(hung) == blobs  # the retried episode is the same episode
    # 2) The episode fails on every attempt: 1 + max_retries records, shard left for the next run.
    broken = tmp_path / "broken"
    summary = run_collect(tiny(broken, workers=1), fault={"shard": 0, "episode_index": 1, "mode": "raise"})
    records = [json.loads(line) for line in (broken / "failures.jsonl").read_text().splitlines()]
    assert summary["failed"] == ["shard-00000.parquet"]
    assert [(r["episode_index"], r["attempt"]) for r in records] == [(1, 0), (1, 1)]
    assert "injected fault" in records[0]["error"]
    assert sorted(shard_bytes(broken)) == ["shard-00001.parquet", "shard-00002.parquet"]


def test_folder_of_another_config_is_refused_and_untouched(clean):
    out, _, blobs = clean
    with pytest.raises(ValueError, match=r"length: folder has 8, command asks 9"):
        run_collect(tiny(out, length=9))
    assert shard_bytes(out) == blobs


@pytest.mark.parametrize("kw, flag", [(dict(env="quake"), "--env"), (dict(agent="wander"), "--agent"),
                                      (dict(episodes=0), "--episodes"), (dict(resolution=-1), "--resolution"),
                                      (dict(episodes_per_shard=0), "--episodes-per-shard")])
def test_bad_config_names_the_flag(kw, flag, tmp_path):
    with pytest.raises(ValueError, match=flag):
        tiny(tmp_path, **kw)


def test_maze_size_labmaze_rejects_fails_before_ray(tmp_path, capsys):
    assert main(["--maze-size", "4", "--out-dir", str(tmp_path), "--dry-run"]) == 2
    assert "--maze-size" in capsys.readouterr().err
    assert main(["--maze-size", "7", "--out-dir", str(tmp_path), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["maze_size"] == 7
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_engine_env_without_its_resource_fails_before_launch(ray_cluster, tmp_path):
    with pytest.raises(RuntimeError, match=r"'minerl'.*ray start --resources"):
        run_collect(tiny(tmp_path, env="minecraft"))
    assert not list(tmp_path.glob("*.parquet"))


@pytest.mark.slow
def test_cli_joins_the_running_cluster(clean, ray_cluster, tmp_path):
    _, _, blobs = clean
    address = ray_cluster.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "pipeline.collect", "--address", address, "--episodes", "6", "--length", "8",
           "--resolution", "16", "--maze-size", "5", "--episodes-per-shard", "2", "--seed", "3",
           "--out-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout[proc.stdout.index('{\n  "out_dir"'):])["written"] == 3
    assert shard_bytes(tmp_path) == blobs


def test_missing_engine_is_fatal_not_retried(tmp_path):
    # dmlab goes through the same worker function; without deepmind_lab its adapter raises EngineMissing
    # (an ImportError): no retries, no shard, the message carries the install steps.
    res = render_shard(tiny(tmp_path, env="dmlab", max_retries=3), 0)
    assert res["entry"] is None and res["failures"] == []
    assert res["fatal"].startswith("EngineMissing") and "deepmind_lab" in res["fatal"]
    assert not list(tmp_path.iterdir())
