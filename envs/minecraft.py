"""MineRL adapter: TECO's Minecraft exploration mission as a gymnasium.Env (MineRL 0.4.4; 1.0 where installed).

    from envs.minecraft import make
    env = make(resolution=64)           # needs minerl==0.4.4 + JDK 8 (see INSTALL_HINT); no display -> xvfb
    obs, info = env.reset(seed=3); obs, r, term, trunc, info = env.step(2)

Mission: envs/minecraft_spec.py (TECO's SimpleExplore + ObservationFromCurrentLocation for poses).
Actions (ids shared with the maze and TECO's DMLab data; the dicts TECO's collect-minecraft sends):
    0 look_left  {forward 0, jump 1, camera [0, -20]}
    1 look_right {forward 0, jump 1, camera [0, +20]}
    2 forward    {forward 1, jump 1, camera [0, 0]}
each built from `action_space.noop()` and checked `in env.action_space` once at build time (MineRL silently
drops unknown keys and never validates values, so a typo would otherwise be a silent no-op).
Observations: obs["rgb"] (H, W, 3) uint8 = MineRL pov (0.4: resolution x resolution; 1.0: width x height,
640x360 by default, `resolution` is then ignored); info["pose"] = (x, y, z, pitch, yaw) float32 in blocks
and degrees (Minecraft: +pitch looks down, +yaw turns right) from location_stats; info["scene"] = -1 (MineRL
has no scene labels). `env.seed(int(seed))` is called before every reset (MineRL clears it after each reset and
asserts a Python int). 20 recorded frames per second (MineRL's 50 ms ticks).

Engine failures (Minecraft crashes, socket timeouts, broken pipes) become EngineCrash; the engine is closed and
the next reset() builds a new one. `engine_factory="module:function"` or "file.py:function" (or
$MEMVID_MINERL_ENGINE_FACTORY) replaces
`spec.make()` (function(spec) -> MineRL-style env); the tests use it to run the real MineRL code on its fake
Malmo (tests/with_minerl/fake_minerl.py).
"""
from __future__ import annotations

import copy
import importlib
import importlib.util  # here: imported inside _load_factory it made `importlib` a local name there
import os
import shutil
import sys

import gymnasium as gym
import numpy as np

from envs.engine_errors import EngineCrash, EngineMissing

ACTION_NAMES = ("look_left", "look_right", "forward")
TURN_DEGREES = 20.0  # TECO's camera step
RECORDING_FPS = 20.0  # mc.MS_PER_STEP = 50
INSTALL_HINT = (
    "Install MineRL 0.4.4 (Minecraft 1.11.2; its setup builds Malmo with gradle, so it needs JDK 8 and network): "
    "`sudo apt-get install -y openjdk-8-jdk xvfb` (JAVA_HOME pointing at JDK 8), then "
    "`pip install \"numpy<1.24\" \"opencv-python<4.12\" minerl==0.4.4` in an environment of its own (it pins "
    "gym<0.20 and numpy<1.24; see Makefile's .venv-minerl for the Java-free test install). On a Ray cluster, "
    "minecraft episodes only go to nodes advertising the custom resource {\"minerl\": 1}: cluster.yaml's "
    "`collector` node type, whose worker_setup_commands do this install.")
HEADLESS_HINT = (
    "Minecraft needs a display: with MineRL 0.4.x set MINERL_HEADLESS=1 (its launchClient.sh then wraps java in "
    "`xvfb-run -a`; needs xvfb installed), with MineRL 1.0 run the whole command under `xvfb-run -a ...`.")


def minerl_version() -> str:
    """'1.0' when MineRL 1.0's HumanControlEnvSpec is importable, '0.4' for 0.4.x; EngineMissing if no minerl."""
    try:
        import minerl

        if getattr(minerl, "__file__", None) is None:  # a namespace package (some folder named minerl/), not MineRL
            raise ImportError(f"'minerl' resolves to the folder {list(minerl.__path__)}, not the MineRL package")
    except ImportError as e:
        raise EngineMissing(f"envs.minecraft: cannot import minerl ({e}) with {sys.executable}. {INSTALL_HINT}") from e
    try:
        importlib.import_module("minerl.herobraine.env_specs.human_controls")
        return "1.0"
    except ImportError:
        return "0.4"


def check_display(version: str) -> None:
    """Make a real Minecraft launch possible without a display, or fail now saying how (HEADLESS_HINT)."""
    if os.environ.get("DISPLAY"):
        return
    if version == "1.0":
        raise EngineMissing(f"envs.minecraft: no DISPLAY and MineRL 1.0 has no headless switch. {HEADLESS_HINT}")
    if shutil.which("xvfb-run") is None:
        raise EngineMissing("envs.minecraft: no DISPLAY and no xvfb-run on PATH (apt-get install xvfb). "
                            f"{HEADLESS_HINT}")
    os.environ.setdefault("MINERL_HEADLESS", "1")  # read by MineRL's launchClient.sh in the JVM's environment


def _load_factory(path: str):
    """'module:function' or '/path/to/file.py:function' -> the function (a file path works in any sys.path)."""
    module, _, func = path.rpartition(":")
    if not module or not func:
        raise ValueError("envs.minecraft: engine_factory must be 'module:function' or 'file.py:function', "
                         f"got {path!r}")
    if module.endswith(".py"):
        spec = importlib.util.spec_from_file_location(os.path.basename(module)[:-3], module)
        if spec is None or not os.path.isfile(module):
            raise ValueError(f"envs.minecraft: engine_factory file {module} does not exist")
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        return getattr(loaded, func)
    return getattr(importlib.import_module(module), func)


class MinecraftEnv(gym.Env):
    """gymnasium.Env over a MineRL env built from ExploreSpec; see the module docstring."""

    metadata = {"render_modes": []}

    def __init__(self, resolution: int = 64, biome: int = 6, caves: bool = True, version: str = "auto",
                 width: int = 640, height: int = 360, engine_factory: str | None = None):
        if version not in ("auto", "0.4", "1.0"):
            raise ValueError(f"envs.minecraft: version must be one of auto, 0.4, 1.0; got {version!r}")
        found = minerl_version()
        if version == "auto":
            version = found
        elif version != found:
            raise EngineMissing(f"envs.minecraft: version={version!r} asked but MineRL {found} is installed. "
                                + (INSTALL_HINT if version == "0.4" else "MineRL 1.0 is not on PyPI: pip install "
                                   "git+https://github.com/minerllabs/minerl@v1.0.2 (needs JDK 8, gradle, network)."))
        if version == "0.4":
            if not isinstance(resolution, (int, np.integer)) or resolution < 1:
                raise ValueError(f"envs.minecraft: resolution must be a positive integer, got {resolution!r}")
            width = height = int(resolution)
        engine_factory = engine_factory or os.environ.get("MEMVID_MINERL_ENGINE_FACTORY") or None
        if engine_factory is None:
            check_display(version)
        self.config = {"engine": "minecraft", "minerl_version": version, "width": int(width), "height": int(height),
                       "biome": int(biome), "caves": bool(caves), "engine_factory": engine_factory or "spec.make",
                       "actions": list(ACTION_NAMES), "turn_degrees": TURN_DEGREES,
                       "pose_units": "x,y,z blocks; pitch,yaw degrees (Minecraft: +pitch down, +yaw right)"}
        self.recording_fps = RECORDING_FPS
        self.observation_space = gym.spaces.Dict({"rgb": gym.spaces.Box(0, 255, (height, width, 3), np.uint8)})
        self.action_space = gym.spaces.Discrete(len(ACTION_NAMES))
        self._engine = None
        self._ended = True
        self._build()

    # --- engine lifecycle ----------------------------------------------------------------------------------
    def _spec(self):
        if self.config["minerl_version"] == "1.0":
            from envs.minecraft_spec import explore_spec_10

            return explore_spec_10(self.config["width"], self.config["height"], self.config["biome"],
                                   self.config["caves"])
        from envs.minecraft_spec import ExploreSpec

        return ExploreSpec(self.config["width"], self.config["biome"], self.config["caves"])

    def _build(self) -> None:
        spec = self._spec()
        factory = self.config["engine_factory"]
        self._engine = spec.make() if factory == "spec.make" else _load_factory(factory)(spec)
        self._engine_actions = self._make_actions(self._engine.action_space)

    @staticmethod
    def _make_actions(space) -> list[dict]:
        """TECO's three action dicts, from the space's no-op, each verified to lie in the space."""
        noop = space.no_op() if hasattr(space, "no_op") else space.noop()  # 1.0 renamed noop -> no_op
        actions = []
        for forward, dyaw in ((0, -TURN_DEGREES), (0, TURN_DEGREES), (1, 0.0)):
            a = copy.deepcopy(noop)
            a["forward"], a["jump"] = forward, 1
            a["camera"] = np.array([0.0, dyaw], dtype=np.float32)  # [dpitch, dyaw] degrees
            if a not in space:
                raise ValueError(f"envs.minecraft: action {a} is not in the MineRL action space {space}")
            actions.append(a)
        return actions

    def close(self) -> None:
        """Kill the engine (Minecraft JVM); safe to call twice and after a crash."""
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                engine.close()
            except Exception:  # a dead JVM or the fake's NotImplemented instances: dropped either way
                pass

    # --- gymnasium API ---------------------------------------------------------------------------------------
    def _convert(self, obs: dict, info: dict) -> tuple[dict, dict]:
        stats = obs.get("location_stats") or (info or {}).get("location_stats")
        if stats is None:
            raise EngineCrash("envs.minecraft: no location_stats in the observation or info; the mission must "
                              "include handlers.ObservationFromCurrentLocation()")
        pose = np.array([stats["xpos"], stats["ypos"], stats["zpos"], stats["pitch"], stats["yaw"]], np.float32)
        rgb = np.ascontiguousarray(obs["pov"], dtype=np.uint8)  # the POV handler returns a flipped read-only view
        return {"rgb": rgb}, {"pose": pose, "scene": np.full(4, -1, dtype=np.int16)}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if self._engine is None:
            self._build()
        world_seed = int(seed) if seed is not None else int(self.np_random.integers(2**31 - 1))
        try:
            self._engine.seed(world_seed)  # before EVERY reset: MineRL forgets it after each one
            obs = self._engine.reset()
            out = self._convert(obs, {})
        except Exception as e:
            self.close()
            hint = "" if os.environ.get("DISPLAY") else f" {HEADLESS_HINT}"
            raise EngineCrash(f"envs.minecraft: reset(seed={world_seed}) failed: {type(e).__name__}: {e}.{hint}") from e
        self._ended = False
        return out

    def step(self, action: int) -> tuple[dict, float, bool, bool, dict]:
        if not 0 <= int(action) < len(ACTION_NAMES):
            raise ValueError(f"envs.minecraft: action {action!r} out of range; valid ids: "
                             + ", ".join(f"{i} {n}" for i, n in enumerate(ACTION_NAMES)))
        if self._engine is None:
            raise EngineCrash("envs.minecraft: step() on a closed or crashed env; call reset() to rebuild it")
        if self._ended:
            raise RuntimeError("envs.minecraft: step() after the episode ended (terminated=True); call reset() first")
        template = self._engine_actions[int(action)]
        command = dict(template, camera=template["camera"].copy())  # MineRL may keep a reference
        try:
            obs, reward, done, info = self._engine.step(command)
            out_obs, out_info = self._convert(obs, info)
        except Exception as e:
            self.close()
            raise EngineCrash(f"envs.minecraft: step({int(action)}) failed: {type(e).__name__}: {e}") from e
        self._ended = bool(done)
        return out_obs, float(reward), bool(done), False, out_info


def make(**settings) -> MinecraftEnv:
    """Entry point for envs.make_env("minecraft", **settings)."""
    return MinecraftEnv(**settings)
