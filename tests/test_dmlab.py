"""DeepMind Lab adapter (envs/dmlab.py) and TECO's BFS explorer, against a double of the C module.

The double (tests/fake_deepmind_lab.py) follows python/dmlab_module.c; the first tests pin that contract so the
adapter is tested against the real module's behaviour. One test runs the real deepmind_lab when it imports.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs.dmlab import DMLabEnv, import_lab
from envs.engine_agents import EpisodeEnded, MazeGoalAgent, parse_layout, rollout_engine
from envs.engine_errors import EngineCrash, EngineMissing
from envs.rollout import EpisodePlayer
from pipeline.shards import read_shard

FAKE = str(Path(__file__).resolve().with_name("fake_deepmind_lab.py"))  # lab_module by path: any sys.path, Ray too
fake_lab = import_lab(FAKE)
OBS = ["RGB_INTERLEAVED", "DEBUG.POS.TRANS", "DEBUG.POS.ROT", "DEBUG.MAZE.LAYOUT"]


# --- the double keeps the C module's contract ------------------------------------------------------------------

def test_double_init_errors_match_the_c_module():
    with pytest.raises(TypeError, match="must be dict, not list"):
        fake_lab.Lab("tests/empty_room_test", [], ["wrongconfig"])
    with pytest.raises(TypeError, match="str|bad argument type"):
        fake_lab.Lab("tests/empty_room_test", [], {"wrongtype": 3})
    with pytest.raises(TypeError, match="must be list, not None"):
        fake_lab.Lab("tests/empty_room_test", None, {})
    with pytest.raises(ValueError, match="Unknown observation 'nonexisting_obs'"):
        fake_lab.Lab("tests/empty_room_test", ["nonexisting_obs"], {})
    with pytest.raises(RuntimeError, match="renderer"):
        fake_lab.Lab("tests/empty_room_test", [], {}, "opengl")


def test_double_step_and_observation_contract():
    lab = fake_lab.Lab("demos/random_maze", OBS, {"width": "32", "height": "24", "fps": "30",
                                                  "episodeLengthSeconds": "1"})
    with pytest.raises(RuntimeError, match="wrong status for call to observations"):
        lab.observations()  # before reset
    with pytest.raises(ValueError, match="'seed' must be int or None, was 'str'"):
        lab.reset(seed="invalid")
    with pytest.raises(ValueError, match="was 'int64'"):
        lab.reset(seed=np.int64(3))  # PyLong_Check: numpy ints are refused
    assert lab.reset(seed=3) is True
    assert lab.observations()["RGB_INTERLEAVED"].shape == (24, 32, 3)
    with pytest.raises(TypeError, match="must be ndarray, not list"):
        lab.step([0] * 7)
    with pytest.raises(ValueError, match=r"action must have shape \(7\)"):
        lab.step(np.zeros(6, np.intc))
    with pytest.raises(ValueError, match="action must have dtype np.intc"):
        lab.step(np.zeros(7, np.int64))
    noop = np.zeros(7, np.intc)
    for _ in range(7):  # 30 frames of episode in steps of 4: the 8th step ends it
        lab.step(noop, num_steps=4)
    assert lab.is_running()
    assert lab.step(noop, num_steps=4) == 0.0
    assert not lab.is_running() and lab.num_steps() == 32  # num_steps counts even past the end
    with pytest.raises(RuntimeError, match="wrong status for call to observations"):
        lab.observations()  # after termination: the trap the adapter must avoid
    assert lab.events() == [("LOG", ["Episode ended"])]
    with pytest.raises(RuntimeError, match="wrong status to advance"):
        lab.step(noop)
    assert lab.close() is True and lab.close() is False


# --- the adapter ------------------------------------------------------------------------------------------------

def test_adapter_passes_gymnasium_checker_and_reports_poses():
    env = DMLabEnv(resolution=32, lab_module=FAKE)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=5)
    assert obs["rgb"].shape == (32, 32, 3) and obs["rgb"].dtype == np.uint8
    assert info["pose"].dtype == np.float32 and info["pose"].shape == (5,)
    assert info["scene"].tolist() == [-1, -1, -1, -1] and info["scene"].dtype == np.int16
    yaw0 = info["pose"][4]
    _, _, _, _, info = env.step(1)  # look_right: 20 px * 0.2112 deg/px * 4 frames, yaw decreases
    assert np.isclose((yaw0 - info["pose"][4]) % 360, 20 * 0.0066 * 32 * 4, atol=1e-3)
    env.close()


def test_same_seed_same_frames_different_seed_differs():
    def frames(seed):
        env = DMLabEnv(resolution=16, lab_module=FAKE)
        obs, _ = env.reset(seed=seed)
        out = [obs["rgb"]] + [env.step(a)[0]["rgb"] for a in (2, 2, 0, 2, 1, 2)]
        env.close()
        return np.stack(out)

    assert np.array_equal(frames(11), frames(11))
    assert not np.array_equal(frames(11), frames(12))


def test_episode_end_returns_terminated_without_reading_observations():
    env = DMLabEnv(resolution=16, lab_module=FAKE, level_options={"episodeLengthSeconds": 1})  # 30 frames
    obs, _ = env.reset(seed=1)
    results = [env.step(2) for _ in range(8)]
    assert [r[2] for r in results] == [False] * 7 + [True]
    assert np.array_equal(results[-1][0]["rgb"], results[-2][0]["rgb"])  # last frame repeated, no raise
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(2)
    env.reset(seed=2)  # a new episode on the same engine
    assert env.step(2)[2] is False


def test_missing_engine_says_how_to_install():
    with pytest.raises(EngineMissing) as e:
        DMLabEnv(lab_module="no_such_deepmind_lab_module")
    msg = str(e.value)
    assert "bazel build" in msg and "build_pip_package" in msg and "cluster.yaml" in msg and '{"dmlab": 1}' in msg
    assert isinstance(e.value, ImportError)  # pipeline.collect treats it as fatal, not retryable


def test_crash_raises_enginecrash_then_reset_rebuilds(tmp_path):
    marker = tmp_path / "crashed"
    env = DMLabEnv(resolution=16, lab_module=FAKE,
                   level_options={"fakeCrashAtStep": 3, "fakeCrashFile": str(marker)})
    env.reset(seed=4)
    env.step(2), env.step(2)
    with pytest.raises(EngineCrash, match="Failed to advance environment"):
        env.step(2)
    assert env._lab is None and marker.exists()  # engine dropped
    with pytest.raises(EngineCrash, match="call reset"):
        env.step(2)
    env.reset(seed=4)  # rebuilds; the marker makes the double crash only once
    assert all(env.step(2)[2] is False for _ in range(5))
    env.close()
    env.close()  # idempotent


def test_import_lab_accepts_a_file_path():
    module = import_lab(FAKE)
    assert module.version() == "1.0" and hasattr(module, "Lab") and module.__name__ == "fake_deepmind_lab"
    with pytest.raises(EngineMissing, match="no such file"):
        import_lab("/nonexistent/deepmind_lab.py")


# --- TECO's explorer and one episode ----------------------------------------------------------------------------

def test_rollout_engine_records_teco_style_episode():
    ep = rollout_engine("dmlab", {"resolution": 16, "lab_module": FAKE}, "explore", {}, 60,
                        np.random.default_rng([0, 7]))
    assert ep["frames"].shape == (60, 16, 16, 3) and ep["frames"].dtype == np.uint8
    assert ep["actions"].dtype == np.int64 and set(ep["actions"].tolist()) <= {0, 1, 2}
    assert ep["actions"][:20].tolist() == [0] * 20  # look left for 30 steps, 10 of them skipped (TECO)
    assert 2 in ep["actions"][20:].tolist()
    assert ep["poses"].shape == (60, 5) and np.ptp(ep["poses"][:, :2], axis=0).max() > 50  # it walked
    assert ep["fps"] == 7.5 and ep["env_config"]["num_steps"] == 4
    assert (ep["scene"] == -1).all() and (ep["revisit_gap"] == -1).all()
    again = rollout_engine("dmlab", {"resolution": 16, "lab_module": FAKE}, "explore", {}, 60,
                           np.random.default_rng([0, 7]))
    assert np.array_equal(ep["frames"], again["frames"]) and np.array_equal(ep["actions"], again["actions"])


@pytest.fixture
def counted_lab(monkeypatch):
    """The double as module `counted_deepmind_lab`, whose Lab counts engine launches (Lab constructions) and
    records the episode number of every reset."""
    module = import_lab(FAKE)
    launches = []

    class CountedLab(module.Lab):
        def __init__(self, *args, **kwargs):
            launches.append([])
            super().__init__(*args, **kwargs)

        def reset(self, episode=-1, seed=None):
            launches[-1].append(episode)
            return super().reset(episode=episode, seed=seed)

    monkeypatch.setattr(module, "Lab", CountedLab)
    monkeypatch.setitem(sys.modules, "counted_deepmind_lab", module)
    return launches


def assert_same_episode(a: dict, b: dict) -> None:
    for key in ("frames", "actions", "poses", "scene", "revisit_gap"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert (a["fps"], a["env_config"]) == (b["fps"], b["env_config"])


def test_player_keeps_one_engine_and_matches_a_fresh_engine_per_episode(counted_lab):
    settings = {"resolution": 16, "lab_module": "counted_deepmind_lab"}
    player = EpisodePlayer("dmlab", settings, "explore")
    kept = {i: player.play(40, np.random.default_rng([5, i])) for i in (2, 0, 1)}  # any order
    assert len(counted_lab) == player.num_launches == 1
    assert counted_lab[0] == [0, 0, 0]  # each reset starts the level as a fresh engine's first episode
    for i, ep in kept.items():
        assert_same_episode(ep, rollout_engine("dmlab", settings, "explore", {}, 40, np.random.default_rng([5, i])))
    assert len(counted_lab) == 4  # one launch per episode on the fresh-engine path
    assert not np.array_equal(kept[0]["frames"], kept[1]["frames"])
    player.close()


def test_player_replaces_a_crashed_engine_and_replays_the_episode(counted_lab, tmp_path):
    settings = {"resolution": 16, "lab_module": "counted_deepmind_lab",
                "level_options": {"fakeCrashAtStep": 13, "fakeCrashFile": str(tmp_path / "crashed")}}
    player = EpisodePlayer("dmlab", settings, "explore")
    first = player.play(3, np.random.default_rng([5, 0]))  # 10 skipped + 2 steps: stops short of step 13
    with pytest.raises(EngineCrash, match="Failed to advance environment"):
        player.play(20, np.random.default_rng([5, 1]))
    assert player.env is None and player.num_launches == 1  # the crashed engine is closed, not reused
    again = player.play(20, np.random.default_rng([5, 1]))  # the same episode on a new engine
    assert player.num_launches == len(counted_lab) == 2
    player.close()
    assert_same_episode(again, rollout_engine("dmlab", settings, "explore", {}, 20, np.random.default_rng([5, 1])))
    assert first["frames"].shape == (3, 16, 16, 3)


def test_goal_agent_explores_most_of_the_maze():
    env = DMLabEnv(resolution=8, lab_module=FAKE)
    obs, info = env.reset(seed=21)
    agent = MazeGoalAgent(np.random.default_rng(0))
    agent.reset(obs, info)
    grid = parse_layout(info["maze_layout"])
    seen = set()
    for _ in range(400):
        obs, _, _, _, info = env.step(agent.act(obs, info))
        seen.add(agent.cell(info["pose"][0], info["pose"][1]))
    env.close()
    assert all(grid[c] for c in seen)  # never inside a wall
    assert len(seen) >= 0.6 * grid.sum()


def test_rollout_engine_reports_early_end():
    with pytest.raises(EpisodeEnded, match="ended after"):
        rollout_engine("dmlab", {"resolution": 8, "lab_module": FAKE, "level_options": {"episodeLengthSeconds": 2}},
                       "explore", {}, 40, np.random.default_rng(0))


def test_empty_layout_names_the_fork():
    with pytest.raises(ValueError, match="wilson1yan/lab"):
        parse_layout("")


def test_real_deepmind_lab_when_installed():
    deepmind_lab = pytest.importorskip("deepmind_lab",
                                       reason="deepmind_lab not installed: not buildable here (Bazel + network)")
    env = DMLabEnv(resolution=32, lab_module=deepmind_lab.__name__)
    obs, info = env.reset(seed=1)
    assert obs["rgb"].shape == (32, 32, 3)
    for a in (0, 1, 2):
        obs, _, term, _, info = env.step(a)
        assert not term and info["pose"].shape == (5,)
    env.close()


# --- end to end: pipeline.collect on Ray with the double as the engine -----------------------------------------

@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(180)
def test_collect_dmlab_with_a_crash_end_to_end(tmp_path, monkeypatch):
    """The double (by file path, so Ray workers import it whatever their sys.path) crashes once mid-episode:
    collect drops the partial episode, retries on a new engine, logs the failure, and writes valid shards whose
    bytes equal those of a fresh engine per episode."""
    from pipeline.collect import FAILURES, CollectConfig, render_episode, run_collect, shard_episodes, shard_name
    from pipeline.inspect import inspect_dir
    from pipeline.schema import episodes_to_table
    from pipeline.shards import write_shard

    monkeypatch.setenv("MEMVID_DMLAB_MODULE", FAKE)
    monkeypatch.setenv("FAKE_DMLAB_CRASHATSTEP", "13")  # inside the recorded part (10 skipped steps first)
    monkeypatch.setenv("FAKE_DMLAB_CRASHFILE", str(tmp_path / "crashed-once"))
    out = tmp_path / "data"
    cfg = CollectConfig(env="dmlab", episodes=3, length=10, resolution=16, episodes_per_shard=2, workers=2,
                        out_dir=str(out), max_retries=1)
    summary = run_collect(cfg)
    assert summary["written"] == 2 and summary["failed"] == [] and summary["failures_logged"] == 1
    # Two workers, one engine each, plus the one that replaced the crashed engine.
    assert summary["workers"] == 2 and summary["env_launches"] == 3 and summary["episodes_rendered"] == 3
    failure = json.loads((out / FAILURES).read_text().splitlines()[0])
    assert "EngineCrash" in failure["error"] and "Failed to advance environment" in failure["error"]
    report = inspect_dir(out, preview=False)
    assert report["quarantined"] == [] and report["episodes"] == 3 and report["envs"] == {"dmlab": 3}
    table = read_shard(out / "shard-00000.parquet")
    config = json.loads(table.column("env_config")[0].as_py())
    assert config["lab_module"] == "fake_deepmind_lab" and config["num_steps"] == 4
    assert run_collect(cfg)["skipped"] == 2  # rerun: nothing left to do
    # The shards equal a fresh engine per episode (the double no longer crashes: its crash file exists).
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for index in range(cfg.num_shards):
        rows = [render_episode(cfg, episode) for episode in shard_episodes(cfg, index)]
        write_shard(episodes_to_table(rows, "frames"), fresh / shard_name(index))
        assert (fresh / shard_name(index)).read_bytes() == (out / shard_name(index)).read_bytes()
