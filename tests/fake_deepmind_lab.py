"""A pure-Python stand-in for the `deepmind_lab` C module, written to python/dmlab_module.c (google-deepmind/lab).

DeepMind Lab cannot be built here (Bazel + 17 network downloads), and no Python double of it exists anywhere,
so the adapter's tests run against this one. It copies the module's contract to the letter:
- `Lab(level, observations, config={}, renderer='software', level_cache=None, temp_folder=None)`: argument
  types checked like PyArg_ParseTupleAndKeywords ("must be list, not None", "must be dict, not list"); config
  values must be str (TypeError "bad argument type for built-in operation", as PyUnicode_AsUTF8 raises);
  unknown observation -> ValueError "Unknown observation 'x'."; renderer other than hardware/software ->
  RuntimeError; fps defaults to "60", width/height to 320/240; other config keys are level options.
- `reset(episode=-1, seed=None)` -> True; a non-int seed (numpy ints included: PyLong_Check) -> ValueError
  "'seed' must be int or None, was 'T'.".
- `step(action, num_steps=1)` -> float: action must be a numpy.ndarray (TypeError), shape (7,) (ValueError
  "action must have shape (7)"), dtype np.intc (ValueError "action must have dtype np.intc"); not running ->
  RuntimeError "Environment in wrong status to advance."; the frame loop stops at the episode end while
  num_steps() still adds num_steps.
- `observations()` raises RuntimeError "Environment in wrong status for call to observations()" before reset,
  after close AND once the episode has terminated; `events()` still works after termination.
- `observation_spec()`, `action_spec()`, `num_steps()`, `is_running()`, `fps()`, `close()` (True, then False);
  module functions `version()`, `runfiles_path()`, `set_runfiles_path(path)`.

World: level "demos/random_maze" is a labmaze maze (11x11 grid incl. outer walls, rooms, 100 units per cell,
cell (r, c) centred at ((c+.5)*100, (rows-r-.5)*100)), the player moves 320 units/s and turns
px * 0.0066 * round(960/fps) degrees per frame (dmlab_connect.c), yaw = -LOOK_LEFT_RIGHT (turning right lowers
yaw). Frames are a small raycaster (walls coloured per room variation, shaded by distance). Level options:
episodeLengthSeconds (default 180, as TECO's level), and two fault hooks for crash tests: fakeCrashAtStep=N
(the N-th step() call of an episode fails like a dying engine: ValueError "Failed to advance environment",
status Error) and fakeCrashFile=PATH (crash only while PATH does not exist, then create it: crash once); when
not in the config they are read from $FAKE_DMLAB_CRASHATSTEP / $FAKE_DMLAB_CRASHFILE (for Ray workers).
Use it as the adapter's engine with lab_module="tests.fake_deepmind_lab" or MEMVID_DMLAB_MODULE.
"""
from __future__ import annotations

import os
import random

import labmaze
import numpy as np

_STATUS_CLOSED, _STATUS_UNINITIALIZED, _STATUS_INITIALIZED = -3, -2, -1
_RUNNING, _INTERRUPTED, _ERROR, _TERMINATED = 0, 1, 2, 3  # EnvCApi_EnvironmentStatus
LEVELS = ("demos/random_maze", "tests/empty_room_test")
ACTION_SPEC = [("LOOK_LEFT_RIGHT_PIXELS_PER_FRAME", -512, 512), ("LOOK_DOWN_UP_PIXELS_PER_FRAME", -512, 512),
               ("STRAFE_LEFT_RIGHT", -1, 1), ("MOVE_BACK_FORWARD", -1, 1), ("FIRE", 0, 1), ("JUMP", 0, 1),
               ("CROUCH", 0, 1)]
CELL, SPEED, RADIUS, EYE_HEIGHT = 100.0, 320.0, 16.0, 56.0
_runfiles = {"path": os.path.dirname(os.path.abspath(__file__))}


def version() -> str:
    return "1.0"


def runfiles_path() -> str:
    return _runfiles["path"]


def set_runfiles_path(path) -> bool:
    if not isinstance(path, str):
        raise TypeError(f"argument 1 must be str, not {type(path).__name__}")
    _runfiles["path"] = path
    return True


def _check_type(value, typ, position: int) -> None:
    if not isinstance(value, typ):
        name = "None" if value is None else type(value).__name__
        raise TypeError(f"argument {position} must be {typ.__name__}, not {name}")


class Lab:
    def __init__(self, level, observations, config=None, renderer=None, level_cache=None, temp_folder=None):
        _check_type(level, str, 1)
        _check_type(observations, list, 2)
        if config is not None:
            _check_type(config, dict, 3)
        if renderer is not None:
            _check_type(renderer, str, 4)
        if renderer and renderer not in ("hardware", "software"):
            raise RuntimeError(f'Failed to set renderer must be "hardware" or "software" actual "{renderer}"!')
        self._status = _STATUS_UNINITIALIZED
        self._episode, self._num_steps = 0, 0
        self._settings = {"width": "320", "height": "240", "fps": "60"}
        self._settings["fps"] = "60"  # Lab_init applies fps=60 before the user's config
        for key, value in (config or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError("bad argument type for built-in operation")
            if key in ("width", "height", "fps", "mixerSeed") and not value.lstrip("-").isdigit():
                raise RuntimeError(f"Failed to apply setting '{key} = {value}' - \"Invalid value for {key}\"")
            self._settings[key] = value
        for key in ("fakeCrashAtStep", "fakeCrashFile"):  # fault hooks may also come from the environment (Ray)
            env_key = "FAKE_DMLAB_" + key[4:].upper()
            if key not in self._settings and os.environ.get(env_key):
                self._settings[key] = os.environ[env_key]
        if level not in LEVELS:
            raise RuntimeError(f'Failed to init environment - "Could not find level \'{level}\'"')
        self._level = level
        self._width, self._height = int(self._settings["width"]), int(self._settings["height"])
        self._fps = int(self._settings["fps"])
        self._episode_frames = int(float(self._settings.get("episodeLengthSeconds", "180")) * self._fps)
        spec = {o["name"] for o in self.observation_spec()}
        for name in observations:
            if not isinstance(name, str):
                raise TypeError("bad argument type for built-in operation")
            if name not in spec:
                raise ValueError(f"Unknown observation '{name}'.")
        self._observations = list(observations)
        self._events = []

    # --- spec ----------------------------------------------------------------------------------------------
    def observation_spec(self) -> list:
        h, w = self._height, self._width
        return [{"name": "RGB_INTERLEAVED", "dtype": np.uint8, "shape": (h, w, 3)},
                {"name": "RGBD_INTERLEAVED", "dtype": np.uint8, "shape": (h, w, 4)},
                {"name": "RGB", "dtype": np.uint8, "shape": (3, h, w)},
                {"name": "RGBD", "dtype": np.uint8, "shape": (4, h, w)},
                {"name": "DEBUG.POS.TRANS", "dtype": np.float64, "shape": (3,)},
                {"name": "DEBUG.POS.ROT", "dtype": np.float64, "shape": (3,)},
                {"name": "VEL.TRANS", "dtype": np.float64, "shape": (3,)},
                {"name": "VEL.ROT", "dtype": np.float64, "shape": (3,)},
                {"name": "DEBUG.MAZE.LAYOUT", "dtype": str, "shape": ()},
                {"name": "DEBUG.MAZE.VARIATION", "dtype": str, "shape": ()}]

    def action_spec(self) -> list:
        return [{"min": lo, "max": hi, "name": name} for name, lo, hi in ACTION_SPEC]

    def fps(self) -> int:
        return self._fps

    def num_steps(self) -> int:
        return self._num_steps

    def is_running(self) -> bool:
        return self._status in (_STATUS_INITIALIZED, _RUNNING)

    # --- episode -------------------------------------------------------------------------------------------
    def reset(self, episode=-1, seed=None) -> bool:
        if not isinstance(episode, int):
            raise TypeError(f"'{type(episode).__name__}' object cannot be interpreted as an integer")
        if episode >= 0:
            self._episode = episode
        if seed is None:
            seed = random.randrange(2**31)  # C rand()
        elif not isinstance(seed, int):
            raise ValueError(f"'seed' must be int or None, was '{type(seed).__name__}'.")
        if self._status == _STATUS_CLOSED:
            raise RuntimeError('Failed to start environment - "environment was closed"')
        self._start(self._episode, seed & 0x7FFFFFFF)
        self._num_steps, self._episode_step_calls, self._frame = 0, 0, 0
        self._episode += 1
        self._status = _STATUS_INITIALIZED
        self._events = [("TEXT", [f"EPISODE {self._episode - 1}"])]
        return True

    def _start(self, episode: int, seed: int) -> None:
        if self._level == "tests/empty_room_test":
            self._grid = np.array([[False] * 5] + [[False, True, True, True, False]] * 3 + [[False] * 5])
            self._variation, self._layout, self._variation_text = np.zeros((5, 5), np.int64), "", ""
            spawn = (2, 2)
        else:
            maze = labmaze.RandomMaze(height=11, width=11, max_rooms=4, room_min_size=3, room_max_size=5,
                                      spawns_per_room=1, extra_connection_probability=0.15, random_seed=seed)
            entity, variation = np.asarray(maze.entity_layer), np.asarray(maze.variations_layer)
            self._grid = entity != "*"
            self._variation = np.vectorize(lambda c: 0 if c in ".* " else ord(c) - ord("A") + 1)(variation)
            self._layout = str(maze.entity_layer)
            self._variation_text = str(maze.variations_layer)
            spawns = list(zip(*np.nonzero(entity == "P"))) or list(zip(*np.nonzero(self._grid)))
            spawn = spawns[np.random.default_rng(seed).integers(len(spawns))]
        rows = self._grid.shape[0]
        self._pos = np.array([(spawn[1] + 0.5) * CELL, (rows - spawn[0] - 0.5) * CELL, EYE_HEIGHT / 2])
        self._yaw = float(np.random.default_rng(seed + 1).integers(4) * 90)
        self._pitch, self._vel, self._rot_vel = 0.0, np.zeros(3), np.zeros(3)

    def step(self, action, num_steps=1) -> float:
        _check_type(action, np.ndarray, 1)
        if not isinstance(num_steps, int):
            raise TypeError(f"'{type(num_steps).__name__}' object cannot be interpreted as an integer")
        if not self.is_running():
            raise RuntimeError("Environment in wrong status to advance.")
        if action.ndim != 1 or action.shape[0] != len(ACTION_SPEC):
            raise ValueError(f"action must have shape ({len(ACTION_SPEC)})")
        if action.dtype != np.intc:
            raise ValueError("action must have dtype np.intc")
        self._episode_step_calls += 1
        self._maybe_crash()
        look, look_up, strafe, move = (int(v) for v in action[:4])
        deg_per_px = 0.0066 * round(960 / self._fps)  # dmlab_connect.c: kPixelsPerFrameToDegreesPerMilliseconds
        start = self._pos.copy()
        self._status = _RUNNING
        for _ in range(num_steps):
            if self._frame >= self._episode_frames:
                break
            self._yaw = (self._yaw - look * deg_per_px + 180.0) % 360.0 - 180.0
            self._pitch = float(np.clip(self._pitch + look_up * deg_per_px, -90.0, 90.0))
            rad = np.radians(self._yaw)
            direction = np.array([np.cos(rad), np.sin(rad)]) * move + np.array([np.sin(rad), -np.cos(rad)]) * strafe
            self._move(direction * SPEED / self._fps)
            self._frame += 1
        self._num_steps += num_steps
        frames = max(1, num_steps)
        self._vel = (self._pos - start) * self._fps / frames
        self._rot_vel = np.array([0.0, -look * deg_per_px * self._fps, 0.0])
        if self._frame >= self._episode_frames:
            self._status = _TERMINATED
            self._events = [("LOG", ["Episode ended"])]
        else:
            self._events = []
        return 0.0

    def _maybe_crash(self) -> None:
        at = self._settings.get("fakeCrashAtStep")
        if at is None or self._episode_step_calls != int(at):
            return
        marker = self._settings.get("fakeCrashFile")
        if marker:
            if os.path.exists(marker):
                return
            open(marker, "w").close()
        self._status = _ERROR
        raise ValueError(f'Failed to advance environment "fake engine crash (fakeCrashAtStep={at})"')

    def _open(self, x: float, y: float) -> bool:
        rows, cols = self._grid.shape
        r, c = int(rows - 1 - y // CELL), int(x // CELL)
        return 0 <= r < rows and 0 <= c < cols and bool(self._grid[r, c])

    def _move(self, delta: np.ndarray) -> None:
        for axis in (0, 1):  # slide along walls: each axis separately, keeping RADIUS from them
            trial = self._pos[:2].copy()
            trial[axis] += delta[axis]
            edge = trial.copy()
            edge[axis] += np.sign(delta[axis]) * RADIUS
            if delta[axis] != 0 and self._open(*edge):
                self._pos[axis] = trial[axis]

    # --- observations --------------------------------------------------------------------------------------
    def observations(self) -> dict:
        if not self.is_running():
            raise RuntimeError("Environment in wrong status for call to observations()")
        out = {}
        for name in self._observations:
            if name in ("RGB_INTERLEAVED", "RGB", "RGBD_INTERLEAVED", "RGBD"):
                rgb = self._render()
                if name.startswith("RGBD"):
                    rgb = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
                out[name] = rgb if name.endswith("INTERLEAVED") else np.ascontiguousarray(rgb.transpose(2, 0, 1))
            elif name == "DEBUG.POS.TRANS":
                out[name] = self._pos.astype(np.float64).copy()
            elif name == "DEBUG.POS.ROT":
                out[name] = np.array([self._pitch, self._yaw, 0.0])
            elif name == "VEL.TRANS":
                out[name] = self._vel.copy()
            elif name == "VEL.ROT":
                out[name] = self._rot_vel.copy()
            elif name == "DEBUG.MAZE.LAYOUT":
                out[name] = self._layout
            elif name == "DEBUG.MAZE.VARIATION":
                out[name] = self._variation_text
        return out

    def _render(self) -> np.ndarray:
        """(H, W, 3) uint8: per-column ray march, walls coloured by the room variation behind them."""
        h, w = self._height, self._width
        angles = np.radians(self._yaw + np.linspace(45.0, -45.0, w))  # 90 deg horizontal FOV, left to right
        dist = np.linspace(4.0, 1200.0, 96)[:, None]  # (D, 1) sample distances
        xs = self._pos[0] + dist * np.cos(angles)  # (D, W)
        ys = self._pos[1] + dist * np.sin(angles)
        rows, cols = self._grid.shape
        r = np.clip((rows - 1 - ys // CELL).astype(np.int64), 0, rows - 1)
        c = np.clip((xs // CELL).astype(np.int64), 0, cols - 1)
        wall = ~self._grid[r, c]  # (D, W)
        first = wall.argmax(axis=0)  # (W,) first wall sample
        hit = dist[first, 0] * np.cos(angles - np.radians(self._yaw))  # perpendicular distance
        palette = np.array([[150, 150, 160], [190, 80, 70], [70, 160, 90], [80, 100, 190], [200, 180, 80],
                            [160, 90, 170], [90, 180, 180]], dtype=np.float64)
        before = np.maximum(first - 1, 0)  # last open sample: its room's variation colours the wall
        col_rgb = palette[self._variation[r[before, np.arange(w)], c[before, np.arange(w)]] % len(palette)]
        shade = np.clip(1.2 - hit / 900.0, 0.25, 1.0)[:, None]
        half = np.clip(h * 40.0 / np.maximum(hit, 1.0), 0, h)  # (W,) half wall height in pixels
        y = np.arange(h)[:, None] - h / 2 + self._pitch * h / 90.0  # (H, 1)
        img = np.where(y < 0, 0, 1)[..., None] * np.array([110, 100, 90]) + np.where(y < 0, 1, 0)[..., None] * \
            np.array([140, 180, 230])  # floor / sky, (H, 1, 3)
        img = np.broadcast_to(img, (h, w, 3)).astype(np.float64)
        in_wall = np.abs(y) < half[None, :]  # (H, W)
        img = np.where(in_wall[..., None], (col_rgb * shade)[None], img)
        return img.astype(np.uint8)

    def events(self) -> list:
        if self._status not in (_STATUS_INITIALIZED, _RUNNING, _TERMINATED):
            raise RuntimeError("Environment in wrong status for call to events()")
        return list(self._events)

    def close(self) -> bool:
        if self._status != _STATUS_CLOSED:
            self._status = _STATUS_CLOSED
            return True
        return False
