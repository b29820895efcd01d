"""Maze agents and rollout: the rollout contract, replay, exploration coverage, revisit gaps, exact revisits
(no Ray)."""
from __future__ import annotations

import numpy as np
import pytest

from envs import make_env
from envs.agents import GAP_BINS, ExploreAgent, LookbackAgent, RevisitAgent, exact_revisit_sources, revisit_gaps
from envs.rollout import AGENTS, rollout
from pipeline.collect import CollectConfig, render_shard
from pipeline.schema import to_numpy
from pipeline.shards import read_shard


def test_rollout_contract_and_replay():
    ep = rollout("maze", {"height": 32, "width": 32}, "explore", {}, 60, np.random.default_rng([1, 2]))
    T = 60
    assert ep["frames"].shape == (T, 32, 32, 3) and ep["frames"].dtype == np.uint8
    assert ep["actions"].shape == (T,) and ep["actions"].dtype == np.int64
    assert ep["poses"].shape == (T, 5) and ep["poses"].dtype == np.float32
    assert ep["scene"].shape == (T, 4) and ep["scene"].dtype == np.int16
    assert ep["revisit_gap"].shape == (T,) and ep["revisit_gap"].dtype == np.int32
    assert (ep["revisit_gap"] == -1).all()  # the explorer marks no revisits
    assert ep["fps"] == 30.0 and ep["env_config"]["height"] == 32 and ep["env_config"]["size"] == 9
    # actions[t] is taken after frame t: replaying them from the same reset seed gives the same frames
    env_seed = int(np.random.default_rng([1, 2]).integers(2**31 - 1))
    env = make_env("maze", **ep["env_config"])
    obs, info = env.reset(seed=env_seed)
    np.testing.assert_array_equal(obs["rgb"], ep["frames"][0])
    for t in range(T - 1):
        obs, _, _, _, info = env.step(int(ep["actions"][t]))
        np.testing.assert_array_equal(obs["rgb"], ep["frames"][t + 1])
        np.testing.assert_array_equal(info["pose"], ep["poses"][t + 1])


def test_rollout_is_deterministic_in_its_rng():
    a = rollout("maze", {"height": 16, "width": 16}, "revisit", {}, 80, np.random.default_rng([3, 0]))
    b = rollout("maze", {"height": 16, "width": 16}, "revisit", {}, 80, np.random.default_rng([3, 0]))
    c = rollout("maze", {"height": 16, "width": 16}, "revisit", {}, 80, np.random.default_rng([3, 1]))
    for k in ("frames", "actions", "poses", "scene", "revisit_gap"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["frames"], c["frames"])


def test_rollout_rejects_bad_names():
    assert AGENTS["maze"] == ("explore", "revisit", "lookback")
    with pytest.raises(ValueError, match="explore, revisit, lookback"):
        rollout("maze", {}, "wander", {}, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="maze, dmlab, minecraft"):
        rollout("quake", {}, "explore", {}, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="length"):
        rollout("maze", {}, "explore", {}, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="look_turns"):
        rollout("maze", {}, "explore", {"look_turns": -1}, 10, np.random.default_rng(0))


def test_explorer_looks_around_then_covers_the_maze():
    env = make_env("maze", height=16, width=16)
    obs, info = env.reset(seed=11)
    agent = ExploreAgent(np.random.default_rng(0))
    agent.reset(info, env.config)
    open_cells = int((info["layout"] != "*").sum())
    rows = info["layout"].shape[0]
    actions, cells = [], set()
    for _ in range(300):
        a = agent.act(obs, info)
        actions.append(a)
        obs, _, _, _, info = env.step(a)
        cells.add((int(rows - info["pose"][1]), int(info["pose"][0])))
    look = int(round(1.4 * 360 / env.config["turn_degrees"]))
    assert actions[:look] == [0] * look  # TECO: look left first
    assert actions.count(2) > 100  # then mostly forward
    assert len(cells) >= 0.6 * open_cells


def test_revisit_gaps_definition():
    rooms = np.array([5, 5, 7, 7, 5, 5, 9, 7, 0, 5])
    # frame 4: room 5 again, last seen at 1 -> 3; frame 5 continues that visit -> 4; frame 7: room 7 last seen at 3
    # -> 4; frame 9: room 5 last seen at 5 -> 4; room 0 is ignored (corridor)
    expect = np.array([-1, -1, -1, -1, 3, 4, -1, 4, -1, 4])
    np.testing.assert_array_equal(revisit_gaps(rooms, ignore=(0,)), expect)


def test_revisit_agent_returns_within_the_drawn_bin():
    bins_hit, cycles, revisit_frames = set(), 0, 0
    for seed in range(3):
        env = make_env("maze", height=16, width=16)
        obs, info = env.reset(seed=seed)
        agent = RevisitAgent(np.random.default_rng(seed))
        agent.reset(info, env.config)
        scene = []
        for _ in range(300):
            scene.append(info["scene"])
            obs, _, _, _, info = env.step(agent.act(obs, info))
        scene = np.stack(scene)
        gaps = agent.revisit_gaps(scene)
        revisit_frames += int((gaps >= 0).sum())
        for c in agent.cycles:
            lo, hi = GAP_BINS[c["bin"]]
            t = c["back_at"]
            assert lo <= gaps[t] < hi and gaps[t] == c["gap"]
            assert scene[t, 0] == c["room"]  # the room seen again ...
            assert scene[t - c["gap"], 0] == c["room"]  # ... was in view gap frames earlier
            assert (scene[t - c["gap"] + 1:t, 0] != c["room"]).all()  # ... and out of view in between
            bins_hit.add(c["bin"])
            cycles += 1
    assert bins_hit == {0, 1, 2}
    assert cycles >= 6 and revisit_frames >= 150


EXACT_BINS = ((2, 16), (16, 48), (48, 112))  # exact-revisit gaps: 2 is the shortest (look aside and back)


def play_lookback(seed: int, length: int = 300, res: int = 32):
    env = make_env("maze", height=res, width=res)
    obs, info = env.reset(seed=seed)
    agent = LookbackAgent(np.random.default_rng(seed))
    agent.reset(info, env.config)
    frames, poses, scene = [], [], []
    for _ in range(length):
        frames.append(obs["rgb"])
        poses.append(info["pose"])
        scene.append(info["scene"])
        obs, _, _, _, info = env.step(agent.act(obs, info))
    return agent, np.stack(frames), np.stack(poses), np.stack(scene)


def test_lookback_revisits_are_pixel_exact_and_fill_every_bin():
    frames_per_bin, returns_per_bin = np.zeros(3, int), np.zeros(3, int)
    for seed in range(3):
        agent, frames, poses, scene = play_lookback(seed)
        sources = exact_revisit_sources(poses)
        revisits = np.nonzero(sources >= 0)[0]
        for t in revisits:  # same pose, same pixels: SSIM/PSNR against the source frame are valid judges
            assert np.array_equal(frames[t], frames[sources[t]]), (seed, t, sources[t])
        gaps = revisits - sources[revisits]
        frames_per_bin += [int(((gaps >= lo) & (gaps < hi)).sum()) for lo, hi in EXACT_BINS]
        for e in agent.excursions:  # each return comes back to the pose it left, after the drawn time away
            assert "missed_at" not in e and e["gap"] == e["target_gap"]
            assert sources[e["back_at"]] == e["start"]
            lo, hi = GAP_BINS[e["bin"]]
            assert lo <= e["gap"] < hi
            returns_per_bin[e["bin"]] += 1
        assert sum(e["walked"] > 0 for e in agent.excursions) >= 2  # not only turning on the spot
        assert (agent.revisit_gaps(scene) >= 0).sum() >= 20  # and rooms are revisited, as by the revisit agent
    assert (returns_per_bin >= 2).all() and (frames_per_bin >= 20).all(), (returns_per_bin, frames_per_bin)


def test_lookback_is_deterministic_in_its_rng():
    a, b, c = (rollout("maze", {"height": 16, "width": 16}, "lookback", {}, 120, np.random.default_rng(seed))
               for seed in ([3, 0], [3, 0], [3, 1]))
    for k in ("frames", "actions", "poses", "scene", "revisit_gap"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["frames"], c["frames"]) and not np.array_equal(a["actions"], c["actions"])


@pytest.mark.parametrize("setting", [{"excursions_per_room": (0, 2)}, {"hold_turns": (3, 1)}, {"pan_prob": 1.5},
                                     {"max_walk_steps": -1}])
def test_lookback_bad_setting_is_named(setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        rollout("maze", {"height": 16, "width": 16}, "lookback", setting, 10, np.random.default_rng(0))


def test_collect_worker_writes_lookback_shards(tmp_path):
    cfg = CollectConfig(agent="lookback", episodes=1, length=300, resolution=16, episodes_per_shard=1,
                        out_dir=str(tmp_path), max_retries=0)
    result = render_shard(cfg, 0)  # the body of collect's Ray task, run here without Ray
    assert result["entry"] is not None and result["failures"] == []
    table = read_shard(tmp_path / "shard-00000.parquet")
    assert table.column("agent").to_pylist() == ["lookback"]
    assert (to_numpy(table, "revisit_gap")[0] >= 0).sum() >= 20  # room revisits
    sources = exact_revisit_sources(to_numpy(table, "poses")[0])
    frames = to_numpy(table, "frames")[0]
    revisits = np.nonzero(sources >= 0)[0]
    assert len(revisits) >= 50
    assert all(np.array_equal(frames[t], frames[sources[t]]) for t in revisits)
