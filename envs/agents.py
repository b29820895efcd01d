"""Agents for grid mazes: TECO's BFS explorer, a revisit (loop-closure) agent and a lookback (exact revisit) agent.

    agent = ExploreAgent(np.random.default_rng(0))
    agent.reset(info, env_config)          # info from env.reset(): needs "layout" (rows of '*' / ' ') and "pose"
    action = agent.act(obs, info)          # int action id (envs.maze.ACTION_NAMES)

All read only the reset layout and the pose (x east, y north in cells; yaw in degrees counter-clockwise from
east), so any env that reports those (envs/maze.py; a DMLab adapter in cells) can use them. The revisit agent
also needs info["scene"][0] (room label) and info["cell_room"] (room label of each open cell, -1 walls); the
lookback agent needs info["cell_room"] and plans its walks with the maze's collision rule (env_config
"agent_radius"), so it is exact in envs/maze.py only.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

LOOK_LEFT, LOOK_RIGHT, FORWARD, STRAFE_LEFT, STRAFE_RIGHT, BACK, NOOP = range(7)
GAP_BINS = ((0, 16), (16, 48), (48, 112))  # paper Table 1 columns: frames since the scene was last seen


class Navigator:
    """BFS distance fields over the open cells of a layout, cached per target set, and a waypoint follower."""

    def __init__(self, layout: np.ndarray, turn_degrees: float, step_length: float) -> None:
        self.open = np.asarray(layout) != "*"
        self.rows, self.cols = self.open.shape
        self.turn = float(turn_degrees)
        self.tolerance = 0.5 * self.turn + 1.0  # TECO: turn until within 10 deg (its turns are 16.9 deg)
        self.step = float(step_length)
        self._fields: dict[tuple, np.ndarray] = {}

    def cell(self, pose: np.ndarray) -> tuple[int, int]:
        """(row, col) of the text grid holding pose (x, y, ...)."""
        return int(self.rows - pose[1]), int(pose[0])

    def distances(self, targets: tuple) -> np.ndarray:
        """(R,C) int32 BFS steps to the nearest cell of `targets` (tuple of (row, col)); -1 unreachable."""
        field = self._fields.get(targets)
        if field is None:
            field = np.full(self.open.shape, -1, np.int32)
            queue = deque(targets)
            for t in targets:
                field[t] = 0
            while queue:
                r, c = queue.popleft()
                for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                    if self.open[rr, cc] and field[rr, cc] < 0:
                        field[rr, cc] = field[r, c] + 1
                        queue.append((rr, cc))
            self._fields[targets] = field
        return field

    def next_cell(self, here: tuple[int, int], targets: tuple) -> tuple[int, int] | None:
        field = self.distances(targets)
        d = field[here]
        if d <= 0:
            return None
        r, c = here
        for n in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if field[n] == d - 1:
                return n
        return None

    def face(self, pose: np.ndarray, x: float, y: float) -> int:
        """Turn toward world point (x, y) until within tolerance, then move forward."""
        want = math.degrees(math.atan2(y - pose[1], x - pose[0]))
        diff = (want - float(pose[4]) + 180.0) % 360.0 - 180.0
        if diff > self.tolerance:
            return LOOK_LEFT
        if diff < -self.tolerance:
            return LOOK_RIGHT
        return FORWARD

    def toward(self, pose: np.ndarray, targets: tuple) -> int | None:
        """Action that follows the BFS path to `targets`; None when standing in one of them."""
        here = self.cell(pose)
        nxt = self.next_cell(here, targets)
        if nxt is None:
            return None
        r, c = here
        # cross into the next cell along the line through both centres; steer back to it first if off it
        off = abs(pose[0] - (c + 0.5)) if nxt[1] == c else abs(pose[1] - (self.rows - r - 0.5))
        goal = nxt if off < 0.2 else here
        return self.face(pose, goal[1] + 0.5, self.rows - goal[0] - 0.5)

    def return_cost(self, pose: np.ndarray, targets: tuple) -> float:
        """Rough frames needed to walk back into `targets`: forward steps plus turns to face each leg."""
        here = self.cell(pose)
        d = self.distances(targets)[here]
        if d <= 0:
            return 0.0
        nxt = self.next_cell(here, targets)
        want = math.degrees(math.atan2((self.rows - nxt[0] - 0.5) - pose[1], (nxt[1] + 0.5) - pose[0]))
        diff = abs((want - float(pose[4]) + 180.0) % 360.0 - 180.0)
        return diff / self.turn + (d - 0.5) / self.step


class ExploreAgent:
    """TECO's DMLab GoalAgent: look around first, then BFS to the farthest unvisited cell, turn to face the
    next waypoint, move forward (wilson1yan/lab python/random_agent_traverse.py; TECO looks left for its first
    30 actions of ~16.9 deg, i.e. ~1.4 turns: look_turns scales that to any turn angle)."""

    marks_revisits = False

    def __init__(self, rng: np.random.Generator, look_turns: float = 1.4) -> None:
        if look_turns < 0:
            raise ValueError(f"explore agent setting look_turns={look_turns}: must be >= 0 (full circles)")
        self.rng = rng
        self.look_turns = look_turns

    def reset(self, info: dict, env_config: dict) -> None:
        self.nav = Navigator(info["layout"], env_config["turn_degrees"], env_config["step_length"])
        self.look_steps = int(round(self.look_turns * 360.0 / self.nav.turn))
        self.t = 0
        self.visited: set[tuple[int, int]] = set()
        self.target: tuple | None = None
        self.last_pose = None
        self.last_forward = False
        self.stuck = 0

    def _pick_target(self, here: tuple[int, int]) -> tuple:
        field = self.nav.distances((here,))
        free = field >= 0
        for cell in self.visited:
            free[cell] = False
        if not free.any():
            self.visited = {here}
            free = field > 0
        best = np.argwhere(free & (field == field[free].max()))
        r, c = best[int(self.rng.integers(len(best)))]
        return ((int(r), int(c)),)

    def act(self, obs: dict, info: dict) -> int:
        pose = info["pose"]
        self.t += 1
        if self.t <= self.look_steps:
            return LOOK_LEFT
        here = self.nav.cell(pose)
        self.visited.add(here)
        if self.stuck >= 3:  # pushing into a corner: side-step once
            self.stuck = 0
            return int(self.rng.choice((STRAFE_LEFT, STRAFE_RIGHT, BACK)))
        for _ in range(2):
            if self.target is None or here in self.target[0:1]:
                self.target = self._pick_target(here)
            a = self.nav.toward(pose, self.target)
            if a is not None:
                break
            self.target = None
        else:
            a = LOOK_LEFT
        moved = self.last_pose is None or abs(pose[0] - self.last_pose[0]) + abs(pose[1] - self.last_pose[1]) > 1e-6
        self.stuck = self.stuck + 1 if (a == FORWARD and self.last_forward and not moved) else 0
        self.last_forward = a == FORWARD
        self.last_pose = pose.copy()
        return a


def revisit_gaps(rooms: np.ndarray, ignore: tuple = ()) -> np.ndarray:
    """(T,) room labels -> (T,) int32 revisit gaps (interfaces.md): for each frame of a visit to a room seen in an
    earlier visit, t minus the last frame of that earlier visit; -1 elsewhere and for labels in `ignore` / < 0."""
    rooms = np.asarray(rooms)
    gaps = np.full(len(rooms), -1, np.int32)
    last_seen: dict[int, int] = {}
    anchor = -1  # last frame of the previous visit of the room in view now; -1 on a first visit
    for t, r in enumerate(rooms.tolist()):
        if r < 0 or r in ignore:
            anchor = -1
            continue
        if t == 0 or rooms[t - 1] != r:  # a new visit starts
            anchor = last_seen.get(r, -1)
        if anchor >= 0:
            gaps[t] = t - anchor
        last_seen[r] = t
    return gaps


def room_targets(info: dict) -> tuple[int, dict, dict]:
    """Rooms of a reset info (needs "cell_room", optionally "corridor_room") -> (corridor label, {room: cells},
    {room: (centre cell,)}); cells are (row, col). A maze that is all corridor is one room, the corridor."""
    cell_room = np.asarray(info["cell_room"])
    corridor = int(info.get("corridor_room", -1))
    labels = sorted(set(cell_room[cell_room >= 0].tolist()) - {corridor}) or [corridor]
    cells = {r: tuple(map(tuple, np.argwhere(cell_room == r).tolist())) for r in labels}
    centre = {}
    for r, rc in cells.items():
        mean = np.mean(rc, axis=0)
        centre[r] = (min(rc, key=lambda c: (c[0] - mean[0]) ** 2 + (c[1] - mean[1]) ** 2),)
    return corridor, cells, centre


def pick_room(nav: Navigator, cells: dict, current: int | None, pose: np.ndarray, rng: np.random.Generator) -> int:
    """One of the two rooms nearest to `pose` by BFS (other than `current`, when there is another), at random."""
    field = nav.distances((nav.cell(pose),))
    choices = [r for r in cells if r != current] or list(cells)
    choices.sort(key=lambda r: min(field[c] if field[c] >= 0 else 10**6 for c in cells[r]))
    choices = choices[:2]
    return choices[int(rng.integers(len(choices)))]


def room_revisit_gaps(scene: np.ndarray, corridor: int, cells: dict) -> np.ndarray:
    """(T,4) scene labels -> (T,) int32 room revisit gaps; corridors (one label, many places) ignored unless the
    maze is all corridor."""
    return revisit_gaps(scene[:, 0], ignore=(corridor,) if len(cells) > 1 or corridor not in cells else ())


def exact_revisit_sources(poses: np.ndarray, atol: float = 1e-5) -> np.ndarray:
    """(T,5) poses -> (T,) int64: for each frame t, the latest earlier frame t' whose pose equals pose t (every
    component within `atol`) with at least one frame of another pose between them (so standing still is not a
    revisit); -1 where there is none. In the maze a frame's pixels are a function of its pose, so frame t is
    pixel-identical to frame t' (an *exact revisit*, gap t - t'): SSIM/PSNR against it are valid judges."""
    poses = np.asarray(poses, dtype=np.float64)
    keys = np.round(poses / atol).astype(np.int64)
    sources = np.full(len(poses), -1, np.int64)
    last: dict[tuple, int] = {}   # pose key -> last frame showing it
    run_start = 0                 # first frame of the current run of identical poses
    for t in range(len(poses)):
        key = tuple(keys[t])
        if t > 0 and key != tuple(keys[t - 1]):
            run_start = t
        prev = last.get(key, -1)
        if 0 <= prev < run_start:
            sources[t] = prev
        last[key] = t
    return sources


class RevisitAgent:
    """Loop closure for memory tests (paper Sec. 5, Fig. 6): walk into a room, look around, leave it, come back
    after a gap drawn from GAP_BINS (bins taken in shuffled rounds, so episodes cover all three), stay a few
    frames, then leave the same room again or go to another. Gaps are closed-loop: the agent turns back when
    (frames since the room was last in view) + (estimated frames to walk back) reaches the drawn gap.

    `cycles` lists each planned return: room, bin, target gap, frame it came back and the realised gap."""

    marks_revisits = True

    def __init__(self, rng: np.random.Generator, look_frames: tuple[int, int] = (3, 10),
                 stay_frames: tuple[int, int] = (2, 6), same_room_prob: float = 0.5) -> None:
        for name, (lo, hi) in (("look_frames", look_frames), ("stay_frames", stay_frames)):
            if not 0 <= lo <= hi:
                raise ValueError(f"revisit agent setting {name}={(lo, hi)}: need 0 <= low <= high frames")
        if not 0.0 <= same_room_prob <= 1.0:
            raise ValueError(f"revisit agent setting same_room_prob={same_room_prob}: must be in [0, 1]")
        self.rng = rng
        self.look_frames, self.stay_frames = tuple(look_frames), tuple(stay_frames)
        self.same_room_prob = same_room_prob

    def reset(self, info: dict, env_config: dict) -> None:
        self.nav = Navigator(info["layout"], env_config["turn_degrees"], env_config["step_length"])
        self.corridor, self.cells, self.centre = room_targets(info)
        self.outside = tuple(map(tuple, np.argwhere(self.nav.open).tolist()))
        self.t = -1
        self.room: int | None = None
        self.phase, self.count, self.turn_dir = "goto", 0, LOOK_LEFT
        self.last_seen = -1
        self.bin_queue: list[int] = []
        self.cycles: list[dict] = []
        self.absent = False

    # ---- planning
    def _new_room(self, pose) -> None:
        """Head for one of the two nearest rooms (other than the current one, when there is another)."""
        self.room = pick_room(self.nav, self.cells, self.room, pose, self.rng)
        self.phase, self.last_seen, self.absent = "goto", -1, False

    def _start_leave(self) -> None:
        if not self.bin_queue:
            self.bin_queue = [int(b) for b in self.rng.permutation(len(GAP_BINS))]
        b = self.bin_queue.pop()
        lo, hi = GAP_BINS[b]
        hi_target = max(lo + 1, hi - self.stay_frames[1] - 2)
        self.cycle = {"room": self.room, "bin": b, "target_gap": int(self.rng.integers(lo + 1, hi_target + 1))}
        self.phase = "leave"
        self._new_destination()

    def _new_destination(self) -> None:
        field = self.nav.distances(self.cells[self.room])
        far = [c for c in self.outside if field[c] >= 2] or [c for c in self.outside if field[c] >= 1] or [
            self.centre[self.room][0]]  # a maze that is one room: nowhere to go, turn on the spot
        self.dest = (far[int(self.rng.integers(len(far)))],)

    # ---- acting
    def act(self, obs: dict, info: dict) -> int:
        self.t += 1
        pose, label = info["pose"], int(info["scene"][0])
        if self.room is None:
            self._new_room(pose)
        if label == self.room:
            if self.absent and self.phase == "return":
                self.cycle.update(back_at=self.t, gap=self.t - self.last_seen)
                self.cycles.append(self.cycle)
                self.phase, self.count = "stay", int(self.rng.integers(self.stay_frames[0], self.stay_frames[1] + 1))
            self.last_seen, self.absent = self.t, False
        elif self.last_seen >= 0:
            self.absent = True
        return getattr(self, "_" + self.phase)(pose)

    def _goto(self, pose) -> int:
        a = self.nav.toward(pose, self.centre[self.room])
        if a is not None:
            return a
        self.phase = "look"
        self.count = int(self.rng.integers(self.look_frames[0], self.look_frames[1] + 1))
        self.turn_dir = LOOK_LEFT if self.rng.random() < 0.5 else LOOK_RIGHT
        return self._look(pose)

    def _look(self, pose) -> int:
        if self.count > 0:
            self.count -= 1
            return self.turn_dir
        self._start_leave()
        return self._leave(pose)

    def _leave(self, pose) -> int:
        if self.absent:
            elapsed = self.t - self.last_seen
            if elapsed + self.nav.return_cost(pose, self.cells[self.room]) >= self.cycle["target_gap"]:
                self.phase = "return"
                return self._return(pose)
        a = self.nav.toward(pose, self.dest)
        if a is None:
            self._new_destination()
            a = self.nav.toward(pose, self.dest)
        return LOOK_LEFT if a is None else a

    def _return(self, pose) -> int:
        a = self.nav.toward(pose, self.cells[self.room])
        return self.turn_dir if a is None else a

    def _stay(self, pose) -> int:
        if self.count > 0:
            self.count -= 1
            a = self.nav.toward(pose, self.centre[self.room])
            return self.turn_dir if a is None else a
        if self.rng.random() < self.same_room_prob:
            self._start_leave()
            return self._leave(pose)
        self._new_room(pose)
        return self._goto(pose)

    def revisit_gaps(self, scene: np.ndarray) -> np.ndarray:
        """(T,4) scene labels of the episode -> (T,) int32 gaps; corridors (one label, many places) ignored."""
        return room_revisit_gaps(scene, self.corridor, self.cells)


# ---------------------------------------------------------------------------------------------------------------
# Exact revisits: excursions that come back to the very pose they left.

AXES = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))  # (dx, dy) of yaw 0, 90, 180, 270 degrees
UNDO = {LOOK_LEFT: LOOK_RIGHT, LOOK_RIGHT: LOOK_LEFT, FORWARD: BACK, BACK: FORWARD}


class LookbackAgent:
    """Exact revisits (issue 12 item 3; the paper's Minecraft protocol, App. I): walk to a room centre as the
    revisit agent does, then make excursions that return to the start pose exactly. One excursion:

    1. Draw its time away G (frames from the last frame at the start pose to the first one back there) from
       GAP_BINS, bins taken in shuffled rounds, G in [max(low, 2), high).
    2. Out (at most G // 2 actions): either turn only (pan_prob, or when no walk fits), or turn one way onto an
       axis heading, walk FORWARD along a line the layout shows free, and if time allows turn 90 degrees and walk a
       second free leg (at most max_walk_steps moves a leg). A FORWARD that does not move ends the walk early.
    3. Hold at the far pose: look left/right and back (hold_turns turns each way; one NOOP when G is odd), never
       through the start pose, so that the return takes exactly G frames in all.
    4. Back: undo every out action in reverse order (BACK for FORWARD, the opposite turn).

    Yaw is an integer count of turns and axis moves change one coordinate by whole steps, so each frame of the
    way back repeats an outgoing frame pixel for pixel (exact_revisit_sources finds them, with gaps spread below
    G), and the first frame back at the start pose repeats the start frame with gap G. (The float64 sums are
    exact on the quarter-cell grid the Navigator's axis moves keep to; off it, a step up across 2, 4 or 8 could
    round by 1e-16 cells. Over 100 episodes all 13,187 exact-revisit frames had bitwise-equal env poses.) After
    excursions_per_room excursions the agent walks to one of the two nearest other rooms, so rooms are
    revisited too (revisit_gaps, as RevisitAgent). Walks need axis headings (360 / turn_degrees a multiple of 4);
    otherwise every excursion only turns.

    `excursions` lists each one: room, bin, target_gap, start (frame at the start pose), walked (FORWARD moves
    out), back_at (first frame back at the start pose) and gap (back_at - start); missed_at instead of those two
    if the env did not bring it back (not seen in the maze)."""

    marks_revisits = True

    def __init__(self, rng: np.random.Generator, excursions_per_room: tuple[int, int] = (1, 3),
                 pan_prob: float = 0.3, max_walk_steps: int = 12, hold_turns: tuple[int, int] = (1, 6)) -> None:
        for name, (lo, hi), low in (("excursions_per_room", excursions_per_room, 1), ("hold_turns", hold_turns, 1)):
            if not low <= lo <= hi:
                raise ValueError(f"lookback agent setting {name}={(lo, hi)}: need {low} <= low <= high")
        if not 0.0 <= pan_prob <= 1.0:
            raise ValueError(f"lookback agent setting pan_prob={pan_prob}: must be in [0, 1]")
        if max_walk_steps < 0:
            raise ValueError(f"lookback agent setting max_walk_steps={max_walk_steps}: must be >= 0 (moves a leg)")
        self.rng = rng
        self.excursions_per_room, self.hold_turns = tuple(excursions_per_room), tuple(hold_turns)
        self.pan_prob, self.max_walk_steps = pan_prob, int(max_walk_steps)

    def reset(self, info: dict, env_config: dict) -> None:
        self.nav = Navigator(info["layout"], env_config["turn_degrees"], env_config["step_length"])
        self.corridor, self.cells, self.centre = room_targets(info)
        self.turns = int(round(360.0 / self.nav.turn))
        # planned walks keep this far from walls: plans start from float32 poses, the env moves in float64
        self.clearance = float(env_config.get("agent_radius", 0.2)) + 0.02
        self.t = -1
        self.room: int | None = None
        self.phase, self.left_in_room = "goto", 0
        self.bin_queue: list[int] = []
        self.excursions: list[dict] = []

    # ---- acting
    def act(self, obs: dict, info: dict) -> int:
        self.t += 1
        pose = info["pose"]
        if self.room is None:
            self.room = pick_room(self.nav, self.cells, None, pose, self.rng)
        return getattr(self, "_" + self.phase)(pose)

    def _goto(self, pose) -> int:
        a = self.nav.toward(pose, self.centre[self.room])
        if a is not None:
            return a
        lo, hi = self.excursions_per_room
        self.left_in_room = int(self.rng.integers(lo, hi + 1))
        return self._next_excursion(pose)

    def _next_excursion(self, pose) -> int:
        if self.left_in_room == 0:
            self.room = pick_room(self.nav, self.cells, self.room, pose, self.rng)
            self.phase = "goto"
            return self._goto(pose)  # a one-room maze is already there: excursions start again
        self.left_in_room -= 1
        if not self.bin_queue:
            self.bin_queue = [int(b) for b in self.rng.permutation(len(GAP_BINS))]
        b = self.bin_queue.pop()
        lo, hi = GAP_BINS[b]
        gap = int(self.rng.integers(max(lo, 2), hi))
        self.exc = {"room": self.room, "bin": b, "target_gap": gap, "start": self.t}
        walk = self.rng.random() >= self.pan_prob
        self.plan = deque((walk and self._walk_plan(pose, gap // 2)) or self._pan_plan(gap // 2))
        self.done: list[int] = []  # out actions that took effect
        self.start_pose, self.last_pose, self.last = pose.copy(), pose.copy(), None
        self.phase = "out"
        return self._out(pose)

    def _out(self, pose) -> int:
        if self.last is not None:  # the previous out action: did it take effect?
            if self.last == FORWARD and abs(pose[0] - self.last_pose[0]) + abs(pose[1] - self.last_pose[1]) < 1e-4:
                self.plan.clear()  # blocked: walk no further; the hold makes up the time
            else:
                self.done.append(self.last)
            if not self.done:  # still at the start pose: this frame is the one to come back to
                self.exc["start"] = self.t
            self.last_pose = pose.copy()
        if self.plan:
            self.last = self.plan.popleft()
            return self.last
        if not self.done:  # nothing took effect: turn instead
            self.plan = deque(self._pan_plan(self.exc["target_gap"] // 2))
            self.last = self.plan.popleft()
            return self.last
        # 3. at the far pose: hold, then undo
        hold = self.exc["target_gap"] - (self.t - self.exc["start"]) - len(self.done)
        at_start = abs(pose[0] - self.start_pose[0]) + abs(pose[1] - self.start_pose[1]) < 1e-4
        offset = (self.done.count(LOOK_LEFT) - self.done.count(LOOK_RIGHT)) % self.turns if at_start else None
        self.plan = deque(self._hold_plan(hold, offset) + [UNDO[a] for a in reversed(self.done)])
        self.phase = "back"
        return self._back(pose)

    def _back(self, pose) -> int:
        if self.plan:
            return self.plan.popleft()
        if np.allclose(pose, self.start_pose, atol=1e-4):  # undoing is exact unless the env moved unexpectedly
            self.exc.update(walked=self.done.count(FORWARD), back_at=self.t, gap=self.t - self.exc["start"])
        else:
            self.exc.update(walked=self.done.count(FORWARD), missed_at=self.t)
        self.excursions.append(self.exc)
        return self._next_excursion(pose)

    # ---- planning
    def _pan_plan(self, budget: int) -> list[int]:
        k = max(1, min(budget, self.turns - 1))  # a full circle would come back early
        return [LOOK_LEFT if self.rng.random() < 0.5 else LOOK_RIGHT] * k

    def _walk_plan(self, pose, budget: int) -> list[int]:
        """Turns onto a free axis heading, FORWARD moves, maybe a perpendicular leg: at most `budget` actions;
        [] when no walk fits."""
        if self.turns % 4:
            return []
        quarter, yaw = self.turns // 4, int(round(float(pose[4]) / self.nav.turn)) % self.turns
        legs = []
        for axis in range(4):
            k = (axis * quarter - yaw) % self.turns  # left turns onto the axis; right turns when shorter
            k = k - self.turns if 2 * k > self.turns or (2 * k == self.turns and self.rng.random() < 0.5) else k
            n = min(self._free_steps(pose[0], pose[1], axis), budget - abs(k))
            if n >= 1:
                legs.append((k, axis, n))
        if not legs:
            return []
        k, axis, n = legs[int(self.rng.integers(len(legs)))]
        plan = [LOOK_LEFT if k > 0 else LOOK_RIGHT] * abs(k) + [FORWARD] * n
        rest = budget - len(plan) - quarter
        x, y = pose[0] + n * self.nav.step * AXES[axis][0], pose[1] + n * self.nav.step * AXES[axis][1]
        second = [(turn, m) for turn, side in ((LOOK_LEFT, 1), (LOOK_RIGHT, 3))
                  if (m := min(self._free_steps(x, y, (axis + side) % 4), rest)) >= 1]
        if second:
            turn, m = second[int(self.rng.integers(len(second)))]
            plan += [turn] * quarter + [FORWARD] * m
        return plan

    def _free_steps(self, x: float, y: float, axis: int) -> int:
        """FORWARD moves (up to max_walk_steps) along `axis` from world (x, y) that keep clear of every wall."""
        dx, dy = (self.nav.step * d for d in AXES[axis])
        n = 0
        while n < self.max_walk_steps and self._clear(x + (n + 1) * dx, y + (n + 1) * dy):
            n += 1
        return n

    def _clear(self, x: float, y: float) -> bool:
        """No wall cell within `clearance` of world (x, y) (the maze's collision rule, envs/raycast.collides)."""
        u, v, r = x, self.nav.rows - y, self.clearance
        for row in range(math.floor(v - r), math.floor(v + r) + 1):
            for col in range(math.floor(u - r), math.floor(u + r) + 1):
                if not (0 <= row < self.nav.rows and 0 <= col < self.nav.cols) or (
                        not self.nav.open[row, col] and (min(max(u, col), col + 1) - u) ** 2 +
                        (min(max(v, row), row + 1) - v) ** 2 < r * r):
                    return False
        return True

    def _hold_plan(self, frames: int, offset: int | None) -> list[int]:
        """`frames` actions of looking aside and back at the far pose (a NOOP when odd). `offset`: left turns
        from the start yaw when the far pose stands at the start position (the hold must not face the start yaw
        there), None elsewhere."""
        plan = []
        while frames >= 2:
            space = ((LOOK_LEFT, self.turns // 2), (LOOK_RIGHT, self.turns // 2)) if offset is None else (
                (LOOK_LEFT, self.turns - 1 - offset), (LOOK_RIGHT, offset - 1))
            space = [(a, min(c, self.hold_turns[1], frames // 2)) for a, c in space if min(c, frames // 2) >= 1]
            if not space:
                break
            a, cap = space[int(self.rng.integers(len(space)))]
            j = int(self.rng.integers(min(self.hold_turns[0], cap), cap + 1))
            plan += [a] * j + [UNDO[a]] * j
            frames -= 2 * j
        return plan + [NOOP] * frames

    def revisit_gaps(self, scene: np.ndarray) -> np.ndarray:
        """(T,4) scene labels of the episode -> (T,) int32 room revisit gaps (as RevisitAgent)."""
        return room_revisit_gaps(scene, self.corridor, self.cells)
