"""Play episodes of an env with an agent and return the arrays of one shard row each (pipeline/schema.py).

    import numpy as np
    from envs.rollout import EpisodePlayer, rollout
    ep = rollout("maze", {"size": 9}, "revisit", {}, length=300, rng=np.random.default_rng([0, 7]))
    ep["frames"].shape   # (300, 64, 64, 3) uint8
    player = EpisodePlayer("maze", {"size": 9}, "revisit")   # one env, kept between episodes
    eps = [player.play(300, np.random.default_rng([0, i])) for i in range(4)]; player.close()

Everything random comes from `rng`: the env reset seed and the agent's generator are drawn from it, in that order.
`rollout` builds a fresh env for its one episode; `EpisodePlayer` builds its env once and resets it with each
episode's seed, which gives the same arrays (every env here is a function of its reset seed) at one engine
launch instead of one per episode.
"""
from __future__ import annotations

import importlib

import numpy as np

from envs import ENV_NAMES, make_env

# env name -> agent names rollout accepts. The maze's agents are in envs/agents.py; the engines' (dmlab, minecraft)
# in envs/engine_agents.py, whose play_episode() plays those episodes (imported only when asked for).
AGENTS: dict[str, tuple[str, ...]] = {"maze": ("explore", "revisit", "lookback"), "dmlab": ("explore",),
                                      "minecraft": ("explore",)}
DEFAULT_FPS = 30.0  # TECO's DMLab data is recorded at 30 fps


def _check_names(env_name: str, agent: str) -> None:
    if env_name not in AGENTS:
        raise ValueError(f"unknown env {env_name!r}; valid envs: {', '.join(ENV_NAMES)}")
    if agent not in AGENTS[env_name]:
        raise ValueError(f"unknown agent {agent!r} for env {env_name!r}; valid agents: {', '.join(AGENTS[env_name])}")


def make_agent(env_name: str, agent: str, rng: np.random.Generator, settings: dict):
    """Build the agent `agent` for `env_name` (ValueError listing valid names)."""
    _check_names(env_name, agent)
    if env_name != "maze":
        return importlib.import_module("envs.engine_agents").make_agent(env_name, agent, rng, **settings)
    from envs.agents import ExploreAgent, LookbackAgent, RevisitAgent

    cls = {"explore": ExploreAgent, "revisit": RevisitAgent, "lookback": LookbackAgent}[agent]
    try:
        return cls(rng, **settings)
    except TypeError as e:
        raise ValueError(f"agent {agent!r} settings {sorted(settings)}: {e}") from None


class EpisodePlayer:
    """Owns one env and plays episodes on it: the env is built by the first `play` and reset with each episode's
    seed afterwards, so a game engine launches once per player, not once per episode.

    Reuse does not change the output: the maze rebuilds layout, styles and pose from the reset seed; DeepMind Lab
    is reset as episode 0 with the seed (envs/dmlab.py); MineRL gets the seed before every reset
    (envs/minecraft.py). An episode that raises (engine crash, timeout, early end) closes the env, since it may
    be broken or mid-episode; the next `play` builds a new one. `num_launches` counts env builds."""

    def __init__(self, env_name: str, env_settings: dict, agent: str, agent_settings: dict | None = None):
        _check_names(env_name, agent)
        self.env_name, self.env_settings, self.agent = env_name, dict(env_settings), agent
        self.agent_settings = dict(agent_settings or {})
        self.env = None
        self.num_launches = 0

    def play(self, length: int, rng: np.random.Generator) -> dict:
        """One episode of `length` frames -> dict of frames (T,H,W,3) uint8, actions (T,) int64 (actions[t] is
        taken after frame t), poses (T,5) float32, scene (T,4) int16, revisit_gap (T,) int32 (-1: not a revisit),
        fps, env_config (resolved env settings)."""
        if int(length) < 1:
            raise ValueError(f"rollout length={length}: must be >= 1 frames")
        if self.env is None:
            self.num_launches += 1  # counted before the build: a launch that fails costs one too
            self.env = make_env(self.env_name, **self.env_settings)
        try:
            if self.env_name != "maze":  # real engines: their own episode loop (episode ends, engine errors)
                engine = importlib.import_module("envs.engine_agents")
                return engine.play_episode(self.env, self.env_name, self.agent, self.agent_settings, int(length), rng)
            return _play_maze(self.env, self.agent, self.agent_settings, int(length), rng)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the env (the engine process, if any); the next `play` builds a new one. Safe to call twice."""
        env, self.env = self.env, None
        if env is not None:
            env.close()


def rollout(env_name: str, env_settings: dict, agent: str, agent_settings: dict, length: int,
            rng: np.random.Generator) -> dict:
    """One episode on a fresh env, closed afterwards; returns EpisodePlayer.play's dict."""
    player = EpisodePlayer(env_name, env_settings, agent, agent_settings)
    try:
        return player.play(length, rng)
    finally:
        player.close()


def _play_maze(env, agent: str, agent_settings: dict, T: int, rng: np.random.Generator) -> dict:
    env_seed = int(rng.integers(2**31 - 1))
    agent_rng = np.random.default_rng(int(rng.integers(2**63 - 1)))
    policy = make_agent("maze", agent, agent_rng, dict(agent_settings))
    obs, info = env.reset(seed=env_seed)
    env_config = dict(env.config)
    policy.reset(info, env_config)
    frames = np.empty((T,) + obs["rgb"].shape, np.uint8)
    actions = np.empty(T, np.int64)
    poses = np.empty((T, 5), np.float32)
    scene = np.empty((T, 4), np.int16)
    for t in range(T):
        frames[t] = obs["rgb"]
        poses[t] = info["pose"]
        scene[t] = info["scene"]
        actions[t] = policy.act(obs, info)
        if t + 1 < T:
            obs, _, terminated, truncated, info = env.step(int(actions[t]))
            if terminated or truncated:
                raise RuntimeError(f"maze episode ended after {t + 1} of {T} frames; "
                                   f"raise the env's max_steps or shorten length")
    if getattr(policy, "marks_revisits", False):
        revisit_gap = policy.revisit_gaps(scene)
    else:
        revisit_gap = np.full(T, -1, np.int32)
    fps = float(getattr(env, "metadata", {}).get("render_fps") or DEFAULT_FPS)
    return {"frames": frames, "actions": actions, "poses": poses, "scene": scene,
            "revisit_gap": revisit_gap.astype(np.int32), "fps": fps, "env_config": env_config}
