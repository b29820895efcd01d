"""The built-in maze: raycaster geometry by hand, turns, determinism, scene labels, validation (no Ray)."""
from __future__ import annotations

import math

import gymnasium
import numpy as np
import pytest

from envs import ENV_NAMES, make_env, raycast
from envs.maze import GYM_ID, NUM_ACTIONS, floor_texture_names, room_styles, wall_texture_names

RED, GREEN, BLUE = (200, 0, 0), (0, 200, 0), (0, 0, 200)


def flat_scene(corridor_len: int = 6):
    """A 3-row corridor: walls all round, open cells (row 1, cols 1..corridor_len). Flat colours: wall red,
    floor green, sky blue; cells 1..2 style 0, the rest style 1 (for the wall-style label)."""
    walls = np.ones((3, corridor_len + 2), bool)
    walls[1, 1:corridor_len + 1] = False
    cell_style = np.full(walls.shape, -1, np.int16)
    cell_style[1, 1:3] = 0
    cell_style[1, 3:corridor_len + 1] = 1
    wall_tex = np.zeros((2, 2, 4, 4, 3), np.uint8)
    wall_tex[0, :] = RED
    wall_tex[1, :] = (150, 0, 0)
    floor_tex = np.zeros((2, 4, 4, 3), np.uint8)
    floor_tex[:] = GREEN
    sky = np.zeros((4, 8, 3), np.uint8)
    sky[:] = BLUE
    paint_at = np.full(walls.shape + (4,), -1, np.int16)
    paint_tex = np.zeros((1, 2, 4, 4, 3), np.uint8)
    return walls, cell_style, paint_at, wall_tex, floor_tex, paint_tex, sky


def draw(scene, u, v, yaw_deg, h=64, w=64, fov=90.0, eye=0.5, wall_h=1.0, pitch=0.0):
    walls, cell_style, paint_at, wall_tex, floor_tex, paint_tex, sky = scene
    out = np.zeros((h, w, 3), np.uint8)
    labels = raycast.empty_labels()
    raycast.render(out, labels, np.zeros(paint_tex.shape[0], np.int32), walls, cell_style, paint_at, wall_tex,
                   floor_tex, paint_tex, sky, u, v, math.radians(yaw_deg), math.radians(pitch), math.radians(fov),
                   eye, wall_h, 4)
    return out, labels


@pytest.mark.parametrize("u, h, w, eye", [(1.5, 64, 64, 0.5), (3.25, 64, 64, 0.5), (1.5, 48, 80, 0.3)])
def test_wall_ahead_fills_rows_computed_by_hand(u, h, w, eye):
    scene = flat_scene(6)
    out, labels = draw(scene, u, 1.5, 0.0, h=h, w=w, eye=eye)  # facing +u (east), wall face at u = 7
    d = 7.0 - u
    f = (w / 2) / math.tan(math.radians(45))  # focal length in pixels (fov 90)
    top, bottom = h / 2 - f * (1.0 - eye) / d, h / 2 + f * eye / d  # wall 1 cell high, eye at `eye`
    centres = np.arange(h) + 0.5
    expect = np.where((centres >= top) & (centres < bottom), 1, np.where(centres >= bottom, 2, 3))
    colours = {1: (150, 0, 0), 2: GREEN, 3: BLUE}  # the far face is seen from a style-1 cell
    np.testing.assert_array_equal(out[:, w // 2], np.array([colours[k] for k in expect], np.uint8))
    assert 0 < (expect == 1).sum() < h
    assert labels[raycast.L_WALL_STYLE] == 1
    assert labels[raycast.L_ROOM_STYLE] == (0 if u < 3 else 1)  # the floor under the centre column


def test_wall_height_halves_when_distance_doubles():
    scene = flat_scene(8)
    heights = []
    for u in (9.0 - 1.5, 9.0 - 3.0, 9.0 - 6.0):  # distances 1.5, 3, 6 to the face at u = 9
        out, _ = draw(scene, u, 1.5, 0.0, h=96, w=96)
        col = out[:, 48]
        heights.append(int(((col[:, 1] == 0) & (col[:, 2] == 0)).sum()))
    assert heights[0] == 2 * heights[1] == 4 * heights[2]  # f = 48 px: 32, 16, 8 rows


def test_four_quarter_turns_give_back_the_first_frame():
    for turn in (90.0, 18.0):
        env = make_env("maze", turn_degrees=turn)
        obs0, info0 = env.reset(seed=3)
        per_quarter = int(90 / turn)
        frames = []
        for _ in range(4):
            for _ in range(per_quarter):
                obs, _, _, _, info = env.step(0)
            frames.append(obs["rgb"])
        assert not np.array_equal(frames[0], obs0["rgb"])
        np.testing.assert_array_equal(frames[-1], obs0["rgb"])
        np.testing.assert_array_equal(info["pose"], info0["pose"])
        obs, _, _, _, _ = env.step(1)  # look right undoes look left exactly
        obs, _, _, _, _ = env.step(0)
        np.testing.assert_array_equal(obs["rgb"], obs0["rgb"])


def run_actions(seed: int, actions, **settings):
    env = make_env("maze", **settings)
    obs, info = env.reset(seed=seed)
    frames, scenes, poses = [obs["rgb"]], [info["scene"]], [info["pose"]]
    for a in actions:
        obs, _, _, _, info = env.step(a)
        frames.append(obs["rgb"]), scenes.append(info["scene"]), poses.append(info["pose"])
    return np.stack(frames), np.stack(scenes), np.stack(poses), env


def test_reset_is_deterministic_and_seeds_differ():
    actions = np.random.default_rng(0).integers(0, NUM_ACTIONS, 40)
    a = run_actions(5, actions)
    b = run_actions(5, actions)
    c = run_actions(6, actions)
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    env = a[3]  # a reset with the same seed on a used env gives the same first frame and layout again
    obs, info = env.reset(seed=5)
    np.testing.assert_array_equal(obs["rgb"], a[0][0])
    assert a[0].dtype == np.uint8 and a[0].shape == (41, 64, 64, 3)
    assert a[1].dtype == np.int16 and a[1].shape == (41, 4)
    assert a[2].dtype == np.float32 and a[2].shape == (41, 5)


def test_room_label_is_the_room_underfoot_when_looking_down():
    checked = 0
    wall_ids, floor_ids, _ = room_styles()
    for seed in range(4):
        env = make_env("maze", pitch_degrees=60.0, turn_degrees=45.0)
        obs, info = env.reset(seed=seed)  # spawn is a cell centre
        rows = info["cell_room"].shape[0]
        x, y = info["pose"][:2]
        room = info["cell_room"][int(rows - y), int(x)]
        for _ in range(8):  # all around: the floor just ahead of the feet is the spawn cell's
            assert info["scene"][0] == room
            assert info["scene"][1] == floor_ids[room]
            assert 0 <= info["scene"][2] < len(wall_texture_names())
            obs, _, _, _, info = env.step(0)
            checked += 1
    assert checked == 32
    assert len(floor_texture_names()) > 16 and len(wall_texture_names()) > 16


def test_painting_label_comes_from_the_pixels():
    env = make_env("maze", num_paintings=16, turn_degrees=30.0)
    found = 0
    for seed in range(6):
        obs, info = env.reset(seed=seed)
        for _ in range(12):
            obs, _, _, _, info = env.step(0)
            if info["scene"][3] >= 0:
                found += 1
                saved = env.paint_at.copy()
                env.paint_at[env.paint_at == info["scene"][3]] = -1  # remove that painting: pixels and label change
                obs2, info2 = env._observe()
                assert not np.array_equal(obs2["rgb"], obs["rgb"])
                assert info2["scene"][3] != info["scene"][3]
                env.paint_at[:] = saved
    assert found > 0


def test_gymnasium_registration_and_spaces():
    env = gymnasium.make(GYM_ID, height=32, width=48)
    obs, info = env.reset(seed=0)
    assert obs["rgb"].shape == (32, 48, 3) and env.observation_space.contains(obs)
    assert env.action_space.n == NUM_ACTIONS


@pytest.mark.parametrize("settings, field", [({"size": 8}, "size"), ({"size": 3}, "size"),
                                              ({"turn_degrees": 16.9}, "turn_degrees"), ({"height": 4}, "height"),
                                              ({"pitch_degrees": 95}, "pitch_degrees"), ({"bogus": 1}, "bogus")])
def test_bad_settings_name_the_field(settings, field):
    with pytest.raises(ValueError, match=field):
        make_env("maze", **settings)


def test_bad_action_and_env_name():
    env = make_env("maze", height=16, width=16)
    env.reset(seed=0)
    for bad in (7, -1, 2.5):
        with pytest.raises(ValueError, match="look_left"):
            env.step(bad)
    with pytest.raises(ValueError, match="maze"):
        make_env("doom")
    assert ENV_NAMES == ("maze", "dmlab", "minecraft")


def test_random_walk_keeps_the_radius_from_walls():
    frames, scenes, poses, env = run_actions(2, np.random.default_rng(1).integers(0, NUM_ACTIONS, 400),
                                             height=8, width=8, turn_degrees=30.0)
    walls, rows, radius = env.walls, env.walls.shape[0], env.settings.agent_radius
    u, v = poses[:, 0], rows - poses[:, 1]
    assert np.abs(np.diff(poses[:, :2], axis=0)).max() <= env.settings.step_length + 1e-6
    assert len(np.unique(np.floor(poses[:, :2]), axis=0)) > 3  # it did move around
    for r, c in np.argwhere(walls):  # distance from each pose to each wall cell's square
        du = np.maximum(np.maximum(c - u, u - (c + 1)), 0)
        dv = np.maximum(np.maximum(r - v, v - (r + 1)), 0)
        assert (np.hypot(du, dv) >= radius - 1e-5).all()
