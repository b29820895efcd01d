"""Exploration agents for the engine adapters (TECO's data-collection policies) and one episode of them.

- `MinecraftExplorer`: TECO's Minecraft explorer (wilson1yan/collect-minecraft collect.py): every `repeat` (5)
  steps draw forward (p 0.9) or a 20-degree turn left/right (p 0.05 each); forward is forced off after
  `max_forward` (50) forward steps in a row.
- `MazeGoalAgent`: TECO's DMLab GoalAgent (wilson1yan/lab python/random_agent_traverse.py): look left for the
  first `look_steps` (30) steps, then breadth-first search over DEBUG.MAZE.LAYOUT to the farthest unvisited cell,
  following waypoints (cell centres, reached within `waypoint_radius` 40 units): turn until the heading is
  within `turn_tolerance_deg` (10) of the waypoint, then go forward.

Both emit the project's action ids (same as TECO's DMLab data): 0 look_left, 1 look_right, 2 forward.

`play_episode(env, env_name, agent, agent_settings, length, rng)` plays one episode on an env that is already
built (envs.rollout.EpisodePlayer keeps one per worker) with the result keys of `envs.rollout.rollout`
(actions[t] = action taken AFTER frame t; the last one is the action the agent would take next). The first
`skip_steps` steps are played but not recorded (TECO skips 10 in DMLab). `rollout_engine(env_name, env_settings,
...)` does the same on a fresh env and closes it in every case, so a crash never leaks an engine process.
"""
from __future__ import annotations

from collections import deque

import numpy as np

LOOK_LEFT, LOOK_RIGHT, FORWARD = 0, 1, 2
AGENTS: dict[str, tuple[str, ...]] = {"dmlab": ("explore",), "minecraft": ("explore",)}
DEFAULT_SKIP_STEPS = {"dmlab": 10, "minecraft": 0}


class EpisodeEnded(RuntimeError):
    """The engine ended the episode before `length` frames were recorded (TECO discards such episodes)."""


# ---------------------------------------------------------------------------------------------------------------
# Minecraft

class MinecraftExplorer:
    """TECO's forward/turn explorer. `act(obs, info) -> action id`; all randomness from `rng`."""

    def __init__(self, rng: np.random.Generator, repeat: int = 5, p_forward: float = 0.9, max_forward: int = 50):
        if repeat < 1 or max_forward < 1 or not 0.0 <= p_forward <= 1.0:
            raise ValueError(f"MinecraftExplorer: need repeat >= 1, max_forward >= 1, 0 <= p_forward <= 1; got "
                             f"repeat={repeat}, max_forward={max_forward}, p_forward={p_forward}")
        self.rng, self.repeat, self.p_forward, self.max_forward = rng, repeat, p_forward, max_forward
        self.t, self.current, self.forward_run = 0, FORWARD, 0

    def reset(self, obs: dict, info: dict) -> None:
        self.t, self.current, self.forward_run = 0, FORWARD, 0

    def _draw(self) -> int:
        p_turn = (1.0 - self.p_forward) / 2
        return int(self.rng.choice([FORWARD, LOOK_LEFT, LOOK_RIGHT], p=[self.p_forward, p_turn, p_turn]))

    def act(self, obs: dict, info: dict) -> int:
        if self.t % self.repeat == 0:
            self.current = self._draw()
        if self.current == FORWARD and self.forward_run >= self.max_forward:
            self.current = int(self.rng.choice([LOOK_LEFT, LOOK_RIGHT]))
        self.forward_run = self.forward_run + 1 if self.current == FORWARD else 0
        self.t += 1
        return self.current


# ---------------------------------------------------------------------------------------------------------------
# DeepMind Lab mazes

def parse_layout(layout: str) -> np.ndarray:
    """DEBUG.MAZE.LAYOUT text ('*' wall, anything else open) -> bool (rows, cols) grid, True = open."""
    lines = [line for line in layout.split("\n") if line]
    if not lines:
        raise ValueError("empty DEBUG.MAZE.LAYOUT: the level does not call debug_observations.setMaze(maze); "
                         "use TECO's fork of DeepMind Lab (wilson1yan/lab, level demos/random_maze)")
    width = max(map(len, lines))
    return np.array([[c != "*" for c in line.ljust(width, "*")] for line in lines], dtype=bool)


def bfs(grid: np.ndarray, start: tuple[int, int]) -> dict[tuple[int, int], tuple[int, int] | None]:
    """Breadth-first search over open cells (4-neighbour); returns cell -> parent (start -> None), in BFS order."""
    parent = {start: None}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < grid.shape[0] and 0 <= nc < grid.shape[1] and grid[nr, nc] and (nr, nc) not in parent:
                parent[(nr, nc)] = (r, c)
                queue.append((nr, nc))
    return parent


class MazeGoalAgent:
    """TECO's GoalAgent over DeepMind Lab's debug observations (info["pose"], info["maze_layout"])."""

    def __init__(self, rng: np.random.Generator, look_steps: int = 30, waypoint_radius: float = 40.0,
                 turn_tolerance_deg: float = 10.0, cell_size: float = 100.0, stuck_steps: int = 20):
        self.rng, self.look_steps, self.waypoint_radius = rng, look_steps, waypoint_radius
        self.turn_tolerance_deg, self.cell_size, self.stuck_steps = turn_tolerance_deg, cell_size, stuck_steps
        self.grid = None

    def reset(self, obs: dict, info: dict) -> None:
        self.grid = parse_layout(info["maze_layout"])
        self.t, self.visited, self.path = 0, set(), []
        self.last_pos, self.still = None, 0

    def cell(self, x: float, y: float) -> tuple[int, int]:
        """World (x, y) -> (row, col): DMLab puts cell (r, c) at ((c + .5) * 100, (rows - r - .5) * 100)."""
        rows, cols = self.grid.shape
        col = int(np.clip(x // self.cell_size, 0, cols - 1))
        row = int(np.clip(rows - 1 - y // self.cell_size, 0, rows - 1))
        return row, col

    def centre(self, cell: tuple[int, int]) -> np.ndarray:
        return np.array([(cell[1] + 0.5) * self.cell_size, (self.grid.shape[0] - cell[0] - 0.5) * self.cell_size])

    def _plan(self, here: tuple[int, int]) -> None:
        """Path to the farthest unvisited reachable cell (ties broken by rng); all visited -> start over."""
        parent = bfs(self.grid, here)
        unvisited = [c for c in parent if c not in self.visited]
        if not unvisited:
            self.visited = {here}
            unvisited = [c for c in parent if c != here] or [here]
        depth = {here: 0}
        for c in parent:  # BFS order: parents come before children
            if parent[c] is not None:
                depth[c] = depth[parent[c]] + 1
        far = max(depth[c] for c in unvisited)
        choices = [c for c in unvisited if depth[c] == far]
        goal = choices[int(self.rng.integers(len(choices)))]
        path = []
        while goal is not None and goal != here:
            path.append(goal)
            goal = parent[goal]
        self.path = path[::-1]

    def act(self, obs: dict, info: dict) -> int:
        self.t += 1
        if self.t <= self.look_steps:
            return LOOK_LEFT
        x, y, yaw = float(info["pose"][0]), float(info["pose"][1]), float(info["pose"][4])
        here = self.cell(x, y)
        self.visited.add(here)
        pos = np.array([x, y])
        self.still = self.still + 1 if self.last_pos is not None and np.hypot(*(pos - self.last_pos)) < 1.0 else 0
        self.last_pos = pos
        while self.path and np.hypot(*(self.centre(self.path[0]) - pos)) < self.waypoint_radius:
            self.path.pop(0)
        if not self.path or self.still >= self.stuck_steps:
            self.still = 0
            self._plan(here)
            if not self.path:
                return LOOK_LEFT
        dx, dy = self.centre(self.path[0]) - pos
        diff = (np.degrees(np.arctan2(dy, dx)) - yaw + 180.0) % 360.0 - 180.0
        if abs(diff) < self.turn_tolerance_deg:
            return FORWARD
        return LOOK_LEFT if diff > 0 else LOOK_RIGHT  # DMLab yaw grows counter-clockwise (turning left)


# ---------------------------------------------------------------------------------------------------------------
# One episode

def make_agent(env_name: str, agent: str, rng: np.random.Generator, **settings):
    """The agent `agent` of engine env `env_name`; ValueError listing the valid names."""
    if agent not in AGENTS.get(env_name, ()):
        choices = ", ".join(AGENTS.get(env_name, ())) or "(none: env must be one of " + ", ".join(AGENTS) + ")"
        raise ValueError(f"agent {agent!r} is not an agent of env {env_name!r}; choose one of {choices}")
    return MazeGoalAgent(rng, **settings) if env_name == "dmlab" else MinecraftExplorer(rng, **settings)


def play_episode(env, env_name: str, agent: str, agent_settings: dict, length: int,
                 rng: np.random.Generator) -> dict:
    """One recorded episode of `length` frames on `env` (reset here with a seed drawn from `rng`, then the agent's
    generator); same keys as envs.rollout.rollout. Raises EpisodeEnded when the engine ends the episode early,
    EngineCrash from the adapter. The env is left open: the caller owns it (and should close it after a raise)."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    agent_settings = dict(agent_settings)
    skip = int(agent_settings.pop("skip_steps", DEFAULT_SKIP_STEPS.get(env_name, 0)))
    env_seed = int(rng.integers(2**31 - 1))
    policy = make_agent(env_name, agent, np.random.default_rng(int(rng.integers(2**63 - 1))), **agent_settings)
    obs, info = env.reset(seed=env_seed)
    policy.reset(obs, info)
    for step in range(skip):
        obs, _, term, trunc, info = env.step(policy.act(obs, info))
        if term or trunc:
            raise EpisodeEnded(f"{env_name}: episode ended during the {skip} skipped steps (step {step})")
    frames, poses, actions = [], [], []
    for t in range(length):
        frames.append(obs["rgb"])
        poses.append(info["pose"])
        actions.append(policy.act(obs, info))
        if t < length - 1:
            obs, _, term, trunc, info = env.step(actions[-1])
            if term or trunc:
                raise EpisodeEnded(f"{env_name}: episode ended after {t + 1} of {length} frames")
    return {
        "frames": np.stack(frames).astype(np.uint8, copy=False),  # (T,H,W,3)
        "actions": np.asarray(actions, dtype=np.int64),  # (T,)
        "poses": np.stack(poses).astype(np.float32, copy=False),  # (T,5)
        "scene": np.full((length, 4), -1, dtype=np.int16),  # engines expose no scene labels
        "revisit_gap": np.full(length, -1, dtype=np.int32),
        "fps": float(env.recording_fps),
        "env_config": {**env.config, "env_seed": env_seed, "skip_steps": skip},
    }


def rollout_engine(env_name: str, env_settings: dict, agent: str, agent_settings: dict, length: int,
                   rng: np.random.Generator) -> dict:
    """play_episode on a fresh env of `env_name`, closed in every case (EngineMissing when the engine is absent)."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    from envs import make_env  # imports envs/<env_name>.py only now

    env = make_env(env_name, **env_settings)
    try:
        return play_episode(env, env_name, agent, agent_settings, length, rng)
    finally:
        env.close()
