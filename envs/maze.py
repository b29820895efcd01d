"""The built-in maze: a DeepMind-Lab-like first-person maze that needs nothing but PyPI.

    from envs import make_env
    env = make_env("maze", size=9, height=64, width=64)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(2)   # forward

Layout from `labmaze.RandomMaze` (DMLab's own generator: rooms, corridors, one variation letter per room),
walls and floors textured with the DMLab textures labmaze ships, one room style (wall texture, floor texture,
tint) per variation letter, paintings on some wall faces, a sky panorama; drawn by the raycaster in
envs/raycast.py. Registered with gymnasium as "memvid/Maze-v0".

Units: x, y in cells (x east = text column + 0.5 at a cell centre, y north = rows - text row - 0.5, as DMLab's
world frame divided by its 100-unit cells), z = eye height in cells, pitch in degrees (> 0 looks down, as
DMLab/Quake), yaw in degrees counter-clockwise from +x (east) in [0, 360); look_left increases yaw.

Scene labels (info["scene"], int16 (4,), pipeline.schema.SCENE_LABELS), all read off the rays of the frame:
    room           room style id (0..NUM_ROOM_STYLES-1) of the lowest floor pixel of the centre column (looking
                   at the floor: the room the agent stands in); with no floor there, the room whose side of the
                   centre wall face is drawn. Style ids are global (same id = same look in every episode) and
                   distinct between the rooms of one maze; corridors ('.' cells) get a style of their own.
    floor_texture  global floor texture id (index into floor_texture_names()) of that floor pixel, -1 if none
    wall_texture   global wall texture id (index into wall_texture_names()) of the centre column's wall face
    painting       painting pattern id (0..NUM_PAINTINGS-1, global, distinct within a maze) covering the most
                   pixels of the frame, if at least min_paint_pixels; else -1
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields

import gymnasium
import numpy as np

from envs import raycast

NUM_ACTIONS = 7
ACTION_NAMES = ("look_left", "look_right", "forward", "strafe_left", "strafe_right", "back", "noop")
NUM_ROOM_STYLES = 16
NUM_PAINTINGS = 16
PAINT_TEXELS = 8
SKY_STYLES = ("sky_01", "sky_02", "sky_03")
GYM_ID = "memvid/Maze-v0"  # registered in envs/__init__.py


@dataclass
class MazeSettings:
    size: int = 9  # maze side in cells incl. the outer wall; labmaze needs an odd number >= 5 (TECO: 9)
    max_rooms: int = 4  # labmaze max_rooms (each room gets its own style; corridors one more)
    room_min_size: int = 3  # labmaze room_min_size (cells)
    room_max_size: int = 3  # labmaze room_max_size (cells)
    extra_connection_probability: float = 0.15  # labmaze; TECO's random_maze opens 15% of interior walls
    height: int = 64  # frame rows (pixels)
    width: int = 64  # frame columns (pixels)
    fov_degrees: float = 90.0  # horizontal field of view (DMLab default 90)
    turn_degrees: float = 18.0  # yaw change of look_left/right; 360 must be a multiple (TECO DMLab ~16.9)
    step_length: float = 0.25  # cells moved by forward/back/strafe (before collision)
    agent_radius: float = 0.2  # cells kept free between the agent's centre and any wall
    eye_height: float = 0.5  # cells (walls are wall_height high)
    wall_height: float = 1.0  # cells
    pitch_degrees: float = 0.0  # fixed camera pitch, > 0 looks down
    texture_size: int = 32  # texels per cell side for walls and floors (PNGs are 1024, block-averaged)
    num_paintings: int = 6  # paintings placed on random wall faces per maze (<= NUM_PAINTINGS)
    min_paint_pixels: int = 0  # pixels a painting needs to be labelled; 0 = max(4, H*W/256)
    max_steps: int = 0  # truncate after this many steps; 0 = never

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"maze setting {name}={getattr(self, name)!r}: {want}")

        if self.size < 5 or self.size % 2 == 0:
            raise bad("size", "labmaze accepts odd sizes >= 5 (e.g. 7, 9, 11)")
        if not 1 <= self.max_rooms <= NUM_ROOM_STYLES - 1:
            raise bad("max_rooms", f"must be in 1..{NUM_ROOM_STYLES - 1}")
        if not 1 <= self.room_min_size <= self.room_max_size:
            raise bad("room_min_size", f"must be in 1..room_max_size ({self.room_max_size})")
        if self.height < 8 or self.width < 8:
            raise bad("height" if self.height < 8 else "width", "frames must be at least 8x8 pixels")
        n = 360.0 / self.turn_degrees if self.turn_degrees > 0 else 0.5
        if abs(n - round(n)) > 1e-9 or n < 1:
            raise bad("turn_degrees", "360 must be a whole multiple of it (e.g. 10, 12, 15, 18, 20, 22.5, 30)")
        if not 0 < self.fov_degrees < 180:
            raise bad("fov_degrees", "must be in (0, 180)")
        if not 0 < self.agent_radius < 0.5:
            raise bad("agent_radius", "must be in (0, 0.5) cells")
        if not 0 < self.eye_height < self.wall_height:
            raise bad("eye_height", f"must be in (0, wall_height={self.wall_height})")
        if not -89 < self.pitch_degrees < 89:
            raise bad("pitch_degrees", "must be in (-89, 89)")
        if not 0 <= self.num_paintings <= NUM_PAINTINGS:
            raise bad("num_paintings", f"must be in 0..{NUM_PAINTINGS}")
        if self.texture_size not in (8, 16, 32, 64, 128):
            raise bad("texture_size", "must be one of 8, 16, 32, 64, 128")

    @property
    def turns_per_circle(self) -> int:
        return int(round(360.0 / self.turn_degrees))


def parse_settings(settings: dict) -> MazeSettings:
    names = [f.name for f in fields(MazeSettings)]
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise ValueError(f"unknown maze setting(s) {unknown}; valid settings: {', '.join(names)}")
    return MazeSettings(**settings)


# ---------------------------------------------------------------- textures (loaded once per process)

def _assets():
    from labmaze import assets

    return assets


@functools.cache
def wall_texture_names() -> tuple[str, ...]:
    """Global wall texture ids: index into this tuple ("style_01/blue", ...)."""
    a = _assets()
    return tuple(f"{s}/{k}" for s in a.MAZE_STYLES for k in sorted(a.get_wall_texture_paths(s)))


@functools.cache
def floor_texture_names() -> tuple[str, ...]:
    a = _assets()
    return tuple(f"{s}/{k}" for s in a.MAZE_STYLES for k in sorted(a.get_floor_texture_paths(s)))


def _downsample(img: np.ndarray, size: int) -> np.ndarray:
    img = img[..., :3].astype(np.float32)
    h, w = img.shape[:2]
    if h % size == 0 and w % size == 0:
        return img.reshape(size, h // size, size, w // size, 3).mean(axis=(1, 3))
    ys = (np.arange(size) * h) // size
    xs = (np.arange(size) * w) // size
    return img[ys][:, xs]


@functools.cache
def _load_texture(kind: str, name: str, size: int) -> np.ndarray:
    style, key = name.split("/")
    a = _assets()
    paths = a.get_wall_texture_paths(style) if kind == "wall" else a.get_floor_texture_paths(style)
    return _downsample(_read_rgb(paths[key]), size)


def _read_rgb(path: str) -> np.ndarray:
    import warnings

    import imageio.v3 as iio

    with warnings.catch_warnings():  # some labmaze PNGs are palette images with byte transparency; RGB is all we use
        warnings.simplefilter("ignore", UserWarning)
        return iio.imread(path, mode="RGB")


@functools.cache
def _sky(style: str, rows: int = 32, cols: int = 256) -> np.ndarray:
    """Cylindrical panorama (rows, cols, 3) float32 from the skybox sides, azimuth 0 at column 0."""
    box = _assets().get_sky_texture_paths(style)
    sides = [box.front, box.left, box.back, box.right]  # counter-clockwise = increasing azimuth
    strips = [_downsample(_read_rgb(p), cols // 4) for p in sides]  # (cols/4, cols/4, 3) each
    pano = np.concatenate(strips, axis=1)  # upper half of each side holds the sky above the horizon
    upper = pano[: pano.shape[0] // 2]
    ys = (np.arange(rows) * upper.shape[0]) // rows
    return np.ascontiguousarray(upper[ys]).astype(np.float32)


@functools.cache
def room_styles() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed table of NUM_ROOM_STYLES room looks: (wall texture id, floor texture id, tint RGB).

    A constant of the env (drawn once from a fixed seed), so a style id means the same look in every episode."""
    g = np.random.default_rng(20231124)
    wall = g.choice(len(wall_texture_names()), NUM_ROOM_STYLES, replace=False).astype(np.int16)
    floor = g.choice(len(floor_texture_names()), NUM_ROOM_STYLES, replace=False).astype(np.int16)
    tint = (0.75 + 0.5 * g.random((NUM_ROOM_STYLES, 3))).astype(np.float32)
    return wall, floor, tint


@functools.cache
def paintings() -> np.ndarray:
    """(NUM_PAINTINGS, PAINT_TEXELS, PAINT_TEXELS, 3) float32: fixed procedural patterns with a dark frame."""
    g = np.random.default_rng(7)
    n = PAINT_TEXELS
    yy, xx = np.mgrid[0:n, 0:n] / (n - 1)
    out = np.zeros((NUM_PAINTINGS, n, n, 3), np.float32)
    for p in range(NUM_PAINTINGS):
        a, b = g.uniform(40, 255, 3), g.uniform(40, 255, 3)
        kind = p % 4
        mask = [(xx + yy) % 0.5 < 0.25, (xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.12, yy < 0.5,
                (xx * 3).astype(int) % 2 == 0][kind]
        out[p] = np.where(mask[..., None], a, b)
    out[:, 0], out[:, -1], out[:, :, 0], out[:, :, -1] = 20, 20, 20, 20
    return out


@functools.cache
def _style_textures(size: int) -> tuple[np.ndarray, np.ndarray]:
    wall_ids, floor_ids, tint = room_styles()
    walls = np.stack([_load_texture("wall", wall_texture_names()[i], size) for i in wall_ids])
    floors = np.stack([_load_texture("floor", floor_texture_names()[i], size) for i in floor_ids])
    walls = walls * tint[:, None, None]
    walls = np.stack([walls, walls * raycast.SIDE_SHADE], axis=1)  # (S,2,TS,TS,3): [:,1] shaded faces
    floors = floors * tint[:, None, None] * 0.9
    return _to_uint8(walls), _to_uint8(floors)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


@functools.cache
def _painting_textures() -> np.ndarray:
    p = paintings()
    return _to_uint8(np.stack([p, p * raycast.SIDE_SHADE], axis=1))  # (P,2,PS,PS,3)


# ---------------------------------------------------------------- the env

class MazeEnv(gymnasium.Env):
    """First-person maze; see the module docstring for units and labels. Actions: ACTION_NAMES."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode: str | None = None, **settings) -> None:
        self.settings = parse_settings(settings)
        s = self.settings
        self.render_mode = render_mode
        self.observation_space = gymnasium.spaces.Dict(
            {"rgb": gymnasium.spaces.Box(0, 255, (s.height, s.width, 3), np.uint8)})
        self.action_space = gymnasium.spaces.Discrete(NUM_ACTIONS)
        self._wall_tex, self._floor_tex = _style_textures(s.texture_size)
        self._paint_tex = _painting_textures()
        self._wall_ids, self._floor_ids, _ = room_styles()
        self._min_paint = s.min_paint_pixels or max(4, s.height * s.width // 256)
        self._frame = np.zeros((s.height, s.width, 3), np.uint8)
        self._labels = raycast.empty_labels()
        self._paint_count = np.zeros(NUM_PAINTINGS, np.int32)
        self.walls = None

    @property
    def config(self) -> dict:
        """Resolved settings (JSON-able), as recorded in a shard's env_config."""
        return asdict(self.settings)

    # ---- layout
    def _build(self, rng: np.random.Generator) -> None:
        import labmaze

        s = self.settings
        maze = labmaze.RandomMaze(
            height=s.size, width=s.size, max_rooms=s.max_rooms, room_min_size=s.room_min_size,
            room_max_size=s.room_max_size, extra_connection_probability=s.extra_connection_probability,
            simplify=False, random_seed=int(rng.integers(2**31 - 1)))
        entity = np.asarray(maze.entity_layer)
        variation = np.asarray(maze.variations_layer)
        self.walls = np.ascontiguousarray(entity == "*")
        letters = sorted(set(variation[~self.walls].ravel()))  # '.' corridors first, then 'A', 'B', ...
        styles = rng.choice(NUM_ROOM_STYLES, len(letters), replace=False).astype(np.int16)
        self.cell_style = np.full(self.walls.shape, -1, np.int16)
        for letter, style in zip(letters, styles):
            self.cell_style[(variation == letter) & ~self.walls] = style
        self.room_letters = {int(st): str(le) for le, st in zip(letters, styles)}
        self.corridor_style = int(styles[0]) if letters and letters[0] == "." else -1
        self.paint_at = np.full(self.walls.shape + (4,), -1, np.int16)
        faces = []  # (row, col, face) of wall faces that border an open cell
        rows, cols = self.walls.shape
        for r in range(rows):
            for c in range(cols):
                if not self.walls[r, c]:
                    continue
                for face, (dr, dc) in enumerate(((0, -1), (0, 1), (-1, 0), (1, 0))):  # west, east, north, south
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < rows and 0 <= cc < cols and not self.walls[rr, cc]:
                        faces.append((r, c, face))
        n = min(s.num_paintings, len(faces))
        ids = rng.choice(NUM_PAINTINGS, n, replace=False)
        for k, i in enumerate(rng.choice(len(faces), n, replace=False)):
            r, c, face = faces[i]
            self.paint_at[r, c, face] = ids[k]
        self.sky = _to_uint8(_sky(SKY_STYLES[int(rng.integers(len(SKY_STYLES)))]))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        self._build(rng)
        open_cells = np.argwhere(~self.walls)
        r, c = open_cells[int(rng.integers(len(open_cells)))]
        self._u, self._v = c + 0.5, r + 0.5
        self._yaw_steps = int(rng.integers(self.settings.turns_per_circle))
        self._t = 0
        obs, info = self._observe()
        info["layout"] = np.where(self.walls, "*", " ")
        info["cell_room"] = self.cell_style.copy()
        info["corridor_room"] = self.corridor_style
        return obs, info

    # ---- dynamics
    @property
    def yaw_degrees(self) -> float:
        s = self.settings
        return (self._yaw_steps % s.turns_per_circle) * s.turn_degrees

    def _try_move(self, forward: float, right: float) -> None:
        s = self.settings
        yaw = math.radians(self.yaw_degrees)
        fu, fv = math.cos(yaw), -math.sin(yaw)
        ru, rv = math.sin(yaw), math.cos(yaw)
        du = (forward * fu + right * ru) * s.step_length
        dv = (forward * fv + right * rv) * s.step_length
        if not raycast.collides(self.walls, self._u + du, self._v, s.agent_radius):
            self._u += du
        if not raycast.collides(self.walls, self._u, self._v + dv, s.agent_radius):
            self._v += dv

    def step(self, action):
        if self.walls is None:
            raise RuntimeError("maze: call reset(seed=...) before step()")
        a = int(action)
        if a != action or not 0 <= a < NUM_ACTIONS:
            valid = ", ".join(f"{i} {n}" for i, n in enumerate(ACTION_NAMES))
            raise ValueError(f"maze action {action!r} is not valid; actions are {valid}")
        if a == 0:
            self._yaw_steps += 1
        elif a == 1:
            self._yaw_steps -= 1
        elif a == 2:
            self._try_move(1.0, 0.0)
        elif a == 3:
            self._try_move(0.0, -1.0)
        elif a == 4:
            self._try_move(0.0, 1.0)
        elif a == 5:
            self._try_move(-1.0, 0.0)
        self._t += 1
        obs, info = self._observe()
        truncated = bool(self.settings.max_steps and self._t >= self.settings.max_steps)
        return obs, 0.0, False, truncated, info

    # ---- rendering
    def _observe(self):
        s = self.settings
        frame = np.empty((s.height, s.width, 3), np.uint8)
        raycast.render(frame, self._labels, self._paint_count, self.walls, self.cell_style, self.paint_at,
                       self._wall_tex, self._floor_tex, self._paint_tex, self.sky, self._u, self._v,
                       math.radians(self.yaw_degrees), math.radians(s.pitch_degrees), math.radians(s.fov_degrees),
                       s.eye_height, s.wall_height, self._min_paint)
        lab = self._labels
        scene = np.array([lab[0], self._floor_ids[lab[1]] if lab[1] >= 0 else -1,
                          self._wall_ids[lab[2]] if lab[2] >= 0 else -1, lab[3]], np.int16)
        pose = np.array([self._u, self.walls.shape[0] - self._v, s.eye_height, s.pitch_degrees, self.yaw_degrees],
                        np.float32)
        self._frame = frame
        return {"rgb": frame}, {"pose": pose, "scene": scene}

    def render(self):
        return self._frame
