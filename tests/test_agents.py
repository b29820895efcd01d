"""Maze agents and rollout: the rollout contract, replay, exploration coverage, revisit gaps (no Ray)."""
from __future__ import annotations

import numpy as np
import pytest

from envs import make_env
from envs.agents import GAP_BINS, ExploreAgent, RevisitAgent, revisit_gaps
from envs.rollout import AGENTS, rollout


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
    assert AGENTS["maze"] == ("explore", "revisit")
    with pytest.raises(ValueError, match="explore, revisit"):
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
