"""DeepMind Lab adapter: `deepmind_lab.Lab` as a gymnasium.Env with TECO's DMLab setup.

    from envs.dmlab import make
    env = make(resolution=64)                  # needs the deepmind_lab module (Bazel build, see below)
    obs, info = env.reset(seed=3); obs, r, term, trunc, info = env.step(2)

TECO's setup (wilson1yan/lab python/random_agent_traverse.py): level demos/random_maze of TECO's fork (9x9 maze,
no HUD, DEBUG.MAZE.LAYOUT set), 64x64 RGB, fps 30, every action held for `num_steps=4` engine frames, actions
0 look_left [-20,0,0,0,0,0,0], 1 look_right [+20,...], 2 forward [0,0,0,1,0,0,0] as np.intc (7,). A turn is
20 px * 0.0066 * round(960/30) deg/px * 4 frames ~ 16.9 deg (dmlab_connect.c).

The C contract (python/dmlab_module.c) this follows: config values are strings; `observations()` raises
RuntimeError once the episode has ended, so the adapter reads observations after reset and after each step only
while `is_running()`; at the end it returns the last frame again with terminated=True. Every reset is
`Lab.reset(episode=0, seed=...)`, so an engine reused for many episodes plays each as a fresh engine's first.
Poses: info["pose"] = (x, y, z, pitch, yaw) from DEBUG.POS.TRANS (world units, 100 per maze cell) and
DEBUG.POS.ROT (degrees; yaw grows counter-clockwise). info["scene"] = -1 (DMLab exposes no labels);
info["maze_layout"] = DEBUG.MAZE.LAYOUT text for the BFS agent.

Engine choice: `lab_module` names the module to import as deepmind_lab (default "deepmind_lab", or the
environment variable MEMVID_DMLAB_MODULE when set, e.g. tests.fake_deepmind_lab for the test double).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import gymnasium as gym
import numpy as np

from envs.engine_errors import EngineCrash, EngineMissing

ACTION_NAMES = ("look_left", "look_right", "forward")
OBSERVATIONS = ["RGB_INTERLEAVED", "DEBUG.POS.TRANS", "DEBUG.POS.ROT", "DEBUG.MAZE.LAYOUT"]
INSTALL_HINT = (
    "DeepMind Lab is not on PyPI; build its wheel with Bazel (needs network): "
    "`git clone https://github.com/wilson1yan/lab && cd lab` (TECO's fork: demos/random_maze exposes "
    "DEBUG.MAZE.LAYOUT), `bazel build -c opt --python_version=PY3 //python/pip_package:build_pip_package`, "
    "`./bazel-bin/python/pip_package/build_pip_package /tmp/dmlab_pkg`, "
    "`pip install /tmp/dmlab_pkg/deepmind_lab-1.0-py3-none-any.whl` (docs/users/build.md of google-deepmind/lab). "
    "On a Ray cluster, dmlab episodes only go to nodes advertising the custom resource {\"dmlab\": 1}: "
    "cluster.yaml's `dmlab_collector` node type, whose setup commands do this build.")


def import_lab(name: str | None = None):
    """Import the deepmind_lab module, or the module `name` (a dotted name, or a path to a .py file, which works
    in Ray workers whatever their sys.path); EngineMissing with the install steps if absent."""
    name = name or os.environ.get("MEMVID_DMLAB_MODULE") or "deepmind_lab"
    try:
        if name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(os.path.basename(name)[:-3], name)
            if spec is None or not os.path.isfile(name):
                raise ImportError(f"no such file {name}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(name)
    except ImportError as e:
        raise EngineMissing(f"envs.dmlab: cannot import {name!r} ({e}) with {sys.executable}. {INSTALL_HINT}") from e


class DMLabEnv(gym.Env):
    """gymnasium.Env over deepmind_lab.Lab; see the module docstring for actions, poses and the C contract."""

    metadata = {"render_modes": []}

    def __init__(self, resolution: int = 64, level: str = "demos/random_maze", fps: int = 30, num_steps: int = 4,
                 look_pixels: int = 20, renderer: str = "software", level_options: dict | None = None,
                 lab_module: str | None = None):
        for key, value in (("resolution", resolution), ("fps", fps), ("num_steps", num_steps),
                           ("look_pixels", look_pixels)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"envs.dmlab: {key} must be a positive integer, got {value!r}")
        if renderer not in ("software", "hardware"):
            raise ValueError(f"envs.dmlab: renderer must be 'software' or 'hardware', got {renderer!r}")
        self._lab_module = import_lab(lab_module)
        self.config = {"engine": "dmlab", "lab_module": self._lab_module.__name__, "level": level,
                       "resolution": int(resolution), "fps": int(fps), "num_steps": int(num_steps),
                       "look_pixels": int(look_pixels), "renderer": renderer,
                       "level_options": {str(k): str(v) for k, v in (level_options or {}).items()},
                       "actions": list(ACTION_NAMES), "pose_units": "x,y,z world units (100 per cell); pitch,yaw deg"}
        self.recording_fps = fps / num_steps  # one recorded frame per agent action
        self.observation_space = gym.spaces.Dict(
            {"rgb": gym.spaces.Box(0, 255, (resolution, resolution, 3), np.uint8)})
        self.action_space = gym.spaces.Discrete(len(ACTION_NAMES))
        self._actions = np.zeros((len(ACTION_NAMES), 7), dtype=np.intc)  # (A, 7) rows for Lab.step
        self._actions[0, 0], self._actions[1, 0], self._actions[2, 3] = -look_pixels, look_pixels, 1
        self._lab = None
        self._last = None  # (obs, info) of the last frame, returned again once the episode has ended
        self._running = False
        self._build()

    # --- engine lifecycle ----------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.config
        lab_config = {"width": str(cfg["resolution"]), "height": str(cfg["resolution"]), "fps": str(cfg["fps"]),
                      **cfg["level_options"]}  # every value a str: the C module rejects anything else
        try:
            self._lab = self._lab_module.Lab(cfg["level"], list(OBSERVATIONS), lab_config, cfg["renderer"])
        except (RuntimeError, ValueError) as e:
            raise EngineCrash(f"envs.dmlab: deepmind_lab.Lab could not start level {cfg['level']!r} with config "
                              f"{lab_config} and observations {OBSERVATIONS}: {e} (DEBUG.MAZE.LAYOUT and "
                              "demos/random_maze as TECO used them need TECO's fork, "
                              "github.com/wilson1yan/lab)") from e

    def close(self) -> None:
        """Release the engine; safe to call twice and after a crash."""
        lab, self._lab = self._lab, None
        if lab is not None:
            try:
                lab.close()
            except Exception:  # a crashed engine may fail to close; it is dropped either way
                pass

    # --- gymnasium API ---------------------------------------------------------------------------------------
    def _observe(self) -> tuple[dict, dict]:
        o = self._lab.observations()  # only legal while is_running() (dmlab_module.c Lab_observations)
        trans, rot = o["DEBUG.POS.TRANS"], o["DEBUG.POS.ROT"]
        pose = np.array([trans[0], trans[1], trans[2], rot[0], rot[1]], dtype=np.float32)
        info = {"pose": pose, "scene": np.full(4, -1, dtype=np.int16), "maze_layout": o["DEBUG.MAZE.LAYOUT"]}
        return {"rgb": o["RGB_INTERLEAVED"]}, info

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if self._lab is None:  # closed or crashed: rebuild
            self._build()
        lab_seed = int(seed) % (2**31 - 1) if seed is not None else int(self.np_random.integers(2**31 - 1))
        try:
            # episode=0: the C module otherwise counts episodes and hands the count to the level's start(), so an
            # engine kept between episodes (pipeline.collect's workers) starts each one as a fresh engine would.
            self._lab.reset(episode=0, seed=lab_seed)  # the C module wants a Python int, not a numpy integer
            self._last = self._observe()
            self._running = True
        except Exception as e:
            self.close()
            raise EngineCrash(f"envs.dmlab: reset(seed={lab_seed}) failed: {type(e).__name__}: {e}") from e
        return self._last

    def step(self, action: int) -> tuple[dict, float, bool, bool, dict]:
        if not 0 <= int(action) < len(ACTION_NAMES):
            raise ValueError(f"envs.dmlab: action {action!r} out of range; valid ids: "
                             + ", ".join(f"{i} {n}" for i, n in enumerate(ACTION_NAMES)))
        if self._lab is None:
            raise EngineCrash("envs.dmlab: step() on a closed or crashed env; call reset() to rebuild it")
        if not self._running:
            raise RuntimeError("envs.dmlab: step() after the episode ended (terminated=True); call reset() first")
        try:
            reward = self._lab.step(self._actions[int(action)], num_steps=self.config["num_steps"])
            running = self._running = self._lab.is_running()
            if running:
                self._last = self._observe()
        except Exception as e:
            self.close()
            raise EngineCrash(f"envs.dmlab: step({int(action)}) failed: {type(e).__name__}: {e}") from e
        obs, info = self._last
        if not running:  # the episode is over: the last frame again, as new objects (gymnasium API)
            obs, info = {"rgb": obs["rgb"].copy()}, {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                                     for k, v in info.items()}
        return obs, float(reward), not running, False, info


def make(**settings) -> DMLabEnv:
    """Entry point for envs.make_env("dmlab", **settings)."""
    return DMLabEnv(**settings)
