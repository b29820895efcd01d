"""Game environments (gymnasium.Env) and the agents that drive them. No Ray, no Parquet, no torch here.

`make_env(name, **settings)` builds an env by name; `rollout(...)` (envs/rollout.py) plays one episode with an
agent and returns the per-episode arrays that become one shard row (see pipeline/schema.py for the columns).

    from envs import make_env
    env = make_env("maze", size=9)          # built in, numpy + numba + labmaze only
    env = make_env("dmlab", ...)            # envs/dmlab.py: needs deepmind_lab (imported only here)
    env = make_env("minecraft", ...)        # envs/minecraft.py: needs minerl (imported only here)
"""
from __future__ import annotations

import importlib

import gymnasium

ENV_NAMES = ("maze", "dmlab", "minecraft")

# gymnasium.make("memvid/Maze-v0", **settings) works once `envs` is imported (registration is a dict entry;
# envs/maze.py itself, with numba and labmaze, loads only when the env is built)
if "memvid/Maze-v0" not in gymnasium.registry:
    gymnasium.register(id="memvid/Maze-v0", entry_point="envs.maze:MazeEnv")


def make_env(name: str, **settings):
    """Build the env `name` with its settings -> gymnasium.Env. Unknown names/settings raise ValueError.

    "maze" lives in envs/maze.py; every other env is a module envs/<name>.py exposing `make(**settings)`,
    imported only when asked for, so a missing engine fails here with that module's install message."""
    if name not in ENV_NAMES:
        raise ValueError(f"unknown env {name!r}; valid envs: {', '.join(ENV_NAMES)}")
    if name == "maze":
        from envs.maze import MazeEnv

        return MazeEnv(**settings)
    module = importlib.import_module(f"envs.{name}")
    return module.make(**settings)
