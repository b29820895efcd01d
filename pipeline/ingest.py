"""Turn published world-model datasets into this project's episode shards (same columns as pipeline.collect).

    python -m pipeline.ingest --format teco-dmlab SRC --out-dir data/teco-dmlab --dry-run
    python -m pipeline.ingest --format teco-dmlab /data/dmlab/train --out-dir data/teco-dmlab
    python -m pipeline.ingest --format teco-minecraft /data/minecraft/train --out-dir data/teco-mc --workers 8
    python -m pipeline.ingest --format worldmem /data/worldmem/training --out-dir data/worldmem --height 64 --width 112

Formats (exact layouts: shared/reference/envs-and-datasets.md section 4) and how each is converted. Every shard
follows one rule: actions[t] is the action taken AFTER frame t.
- teco-dmlab: `<n>.npz` with video uint8 (T,64,64,3) and actions int64 (T,) (TECO's DMLab release; optional
  pos (T,3)). TECO already stores actions[t] = action after frame t, ids 0 look_left, 1 look_right, 2 forward
  (= ours): kept as they are. poses = pos (x,y,z) when present, pitch/yaw 0 (TECO's `rot` is a quaternion of the
  inverse modelview, not converted); fps 7.5 (30 fps engine, 4 frames per action).
- teco-minecraft: `<i>.mp4` (301 frames: reset + 300 steps) + `<i>.npz` actions int32 (301,), where actions[0]
  is a placeholder 0 and actions[k] (k >= 1) is the action that LED to frame k (1 forward, 2 left, 3 right).
  We keep frames 0..T-1 and set actions[t] = src[t+1] mapped to our ids (1->2 forward, 2->0 look_left,
  3->1 look_right); the last frame, which no action follows, is dropped. poses 0 (not recorded); fps 20.
- worldmem: `<ep>.mp4` (1501 frames, 640x360) + `<ep>.npz` actions int32 (1501, 8) MineDojo MultiDiscrete (row 0
  no-op, row k led to frame k) and poses (1501, 5) x,y,z,pitch,yaw. actions[t] = the 25-key VPT vector of src
  row t+1, converted exactly as WorldMem's loader does (convert_action_space: forward, back, left, right,
  cameraY/cameraX -1/+1 from pitch/yaw bins 11/13, drop, hotbar.1; jump is not carried over) -> int64 (T, 25);
  poses = src poses of frame t, raw (WorldMem's loader later recentres them); fps 10.
Columns for all: scene = -1 (no labels), revisit_gap = -1, seed 0, episode_index = position in the sorted file
list, env = the format name; env_config says where poses are real.

Resumable like collect: the file list is fixed in <out>/sources.json on the first run, shard i holds episodes
i*K..i*K+K-1 of it, finished shards are in <out>/manifest.json and skipped on reruns. A file that cannot be read
(truncated mp4, npz without a key, lengths that disagree) is skipped and listed with the reason in
<out>/ingest_report.json; it is never a crash and never a silent drop.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cli import field, parse_config, run_cli, to_json
from pipeline.console import emit, progress
from pipeline.schema import episodes_to_table
from pipeline.shards import Manifest, check_config, remove_partials, write_json_atomic, write_shard

FORMATS = ("teco-dmlab", "teco-minecraft", "worldmem")
DEFAULT_LENGTH = {"teco-dmlab": 300, "teco-minecraft": 300, "worldmem": 1500}
FPS = {"teco-dmlab": 7.5, "teco-minecraft": 20.0, "worldmem": 10.0}
AGENT = {"teco-dmlab": "teco-goal", "teco-minecraft": "teco-explore", "worldmem": "worldmem-random"}
TECO_MC_IDS = {1: 2, 2: 0, 3: 1}  # TECO Minecraft forward/left/right -> our forward/look_left/look_right
VPT_KEYS = ("inventory", "ESC", "hotbar.1", "hotbar.2", "hotbar.3", "hotbar.4", "hotbar.5", "hotbar.6", "hotbar.7",
            "hotbar.8", "hotbar.9", "forward", "back", "left", "right", "cameraY", "cameraX", "jump", "sneak",
            "sprint", "swapHands", "attack", "use", "pickItem", "drop")
SOURCES, REPORT = "sources.json", "ingest_report.json"


@dataclass
class IngestConfig:
    format: str = field("teco-dmlab", "dataset format", choices=list(FORMATS))
    src: str = field("", "dataset folder (searched recursively)")
    out_dir: str = field("", "output folder (default: data/<format>)", aliases=("--out",))
    length: int = field(0, "frames kept per episode, T (0 = the format's: 300, 300, 1500); longer ones are cut")
    height: int = field(0, "resize frames to this height (0 = keep)")
    width: int = field(0, "resize frames to this width (0 = keep)")
    episodes_per_shard: int = field(20, "episodes per Parquet shard (K)")
    limit: int = field(0, "ingest only the first N episodes of the sorted list (0 = all)")
    workers: int = field(1, "shards converted at once (processes)")

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"--format: unknown format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if not self.src or not Path(self.src).is_dir():
            raise ValueError(f"SRC: {self.src!r} is not a folder; give the dataset folder as the positional argument")
        for name in ("length", "height", "width", "limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name}: expected an integer >= 0, got {getattr(self, name)}")
        if (self.height == 0) != (self.width == 0):
            raise ValueError(f"--height {self.height} --width {self.width}: give both or neither")
        if self.episodes_per_shard < 1 or self.workers < 1:
            raise ValueError("--episodes-per-shard and --workers must be >= 1")
        self.length = self.length or DEFAULT_LENGTH[self.format]
        self.out_dir = self.out_dir or str(Path("data") / self.format)

    def data_config(self) -> dict:
        """The fields that define the data (saved as <out>/config.json, compared on reruns)."""
        config = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("out_dir", "workers")}
        return config | {"src": str(Path(self.src).resolve())}


class UnreadableEpisode(ValueError):
    """One source episode cannot be converted; the message says why (it goes to the report)."""


# ---------------------------------------------------------------------------------------------------------------
# Reading the formats

def list_episodes(cfg: IngestConfig) -> list[str]:
    """Episode keys, relative to src, sorted: '<path>.npz' (teco-dmlab) or '<path>' stems of mp4/npz pairs."""
    src = Path(cfg.src)
    if cfg.format == "teco-dmlab":
        return sorted(str(p.relative_to(src)) for p in src.rglob("*.npz"))
    stems = {str(p.relative_to(src).with_suffix("")) for ext in ("*.mp4", "*.npz") for p in src.rglob(ext)}
    return sorted(stems)


def _load_npz(path: Path, keys: tuple[str, ...]) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise UnreadableEpisode(f"{path}: missing key(s) {missing} (has {sorted(z.files)})")
            return {k: z[k] for k in keys} | {k: z[k] for k in z.files if k not in keys}
    except UnreadableEpisode:
        raise
    except Exception as e:  # truncated zip, bad header, pickled object arrays
        raise UnreadableEpisode(f"{path}: unreadable npz ({type(e).__name__}: {e})") from e


def _read_mp4(path: Path) -> np.ndarray:
    """All frames of an mp4 as (T, H, W, 3) uint8 RGB (imageio-ffmpeg)."""
    import imageio.v2 as iio

    if not path.exists():
        raise UnreadableEpisode(f"{path}: missing (its .npz has no video beside it)")
    try:
        with iio.get_reader(path, format="ffmpeg") as reader:
            frames = [np.asarray(f)[..., :3] for f in reader]
    except Exception as e:
        raise UnreadableEpisode(f"{path}: unreadable mp4 ({type(e).__name__}: {str(e).strip().splitlines()[0]})") from e
    if not frames:
        raise UnreadableEpisode(f"{path}: mp4 has no frames")
    return np.stack(frames)


def _fit(cfg: IngestConfig, path: Path, frames: np.ndarray) -> np.ndarray:
    """Cut to cfg.length frames and resize; UnreadableEpisode when the episode is too short."""
    if len(frames) < cfg.length:
        raise UnreadableEpisode(f"{path}: {len(frames)} usable frames, --length wants {cfg.length}")
    frames = frames[: cfg.length]
    if cfg.height and frames.shape[1:3] != (cfg.height, cfg.width):
        from PIL import Image

        frames = np.stack([np.asarray(Image.fromarray(f).resize((cfg.width, cfg.height), Image.BILINEAR))
                           for f in frames])
    return np.ascontiguousarray(frames, dtype=np.uint8)


def vpt_actions(minedojo: np.ndarray) -> np.ndarray:
    """(N, 8) MineDojo MultiDiscrete -> (N, 25) VPT key vector, as WorldMem's convert_action_space
    (xizaoqu/WorldMem datasets/video/minecraft_video_dataset.py)."""
    a = np.asarray(minedojo)
    out = np.zeros((len(a), len(VPT_KEYS)), dtype=np.int64)
    out[a[:, 0] == 1, 11] = 1  # forward
    out[a[:, 0] == 2, 12] = 1  # back
    out[a[:, 4] == 11, 16] = -1  # cameraX from the yaw bin (12 = no change)
    out[a[:, 4] == 13, 16] = 1
    out[a[:, 3] == 11, 15] = -1  # cameraY from the pitch bin
    out[a[:, 3] == 13, 15] = 1
    out[np.isin(a[:, 5], (1, 6)), 24] = 1  # drop
    out[a[:, 1] == 1, 13] = 1  # left
    out[a[:, 1] == 2, 14] = 1  # right
    out[a[:, 7] == 1, 2] = 1  # hotbar.1
    return out


def convert(cfg: IngestConfig, key: str) -> dict:
    """One source episode -> frames (T,H,W,3), actions (T,) or (T,25), poses (T,5), env_config notes."""
    src, T = Path(cfg.src), cfg.length
    if cfg.format == "teco-dmlab":
        path = src / key
        z = _load_npz(path, ("video", "actions"))
        video, actions = z["video"], np.asarray(z["actions"]).astype(np.int64)
        if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
            raise UnreadableEpisode(f"{path}: video is {video.dtype}{video.shape}, expected uint8 (T,H,W,3)")
        if len(actions) != len(video):
            raise UnreadableEpisode(f"{path}: {len(video)} frames but {len(actions)} actions")
        poses = np.zeros((len(video), 5), np.float32)
        has_pos = "pos" in z and len(z["pos"]) == len(video)
        if has_pos:
            poses[:, :3] = z["pos"]
        notes = {"poses": "x,y,z from pos; pitch,yaw unknown (0)" if has_pos else "unknown (all 0: --rgb_only file)",
                 "alignment": "as stored (TECO: actions[t] after frame t)"}
        frames = _fit(cfg, path, video)
        return {"frames": frames, "actions": actions[:T], "poses": poses[:T], "notes": notes}
    mp4, npz = src / f"{key}.mp4", src / f"{key}.npz"
    if not npz.exists():
        raise UnreadableEpisode(f"{npz}: missing (the video {mp4.name} has no actions beside it)")
    if cfg.format == "teco-minecraft":
        z = _load_npz(npz, ("actions",))
        raw = np.asarray(z["actions"]).reshape(-1)
        bad = sorted(set(raw[1:].tolist()) - set(TECO_MC_IDS))
        if bad:
            raise UnreadableEpisode(f"{npz}: action ids {bad} not in TECO's 1 forward, 2 left, 3 right")
        video = _read_mp4(mp4)
        if len(video) != len(raw):
            raise UnreadableEpisode(f"{mp4}: {len(video)} frames but {npz.name} has {len(raw)} actions (truncated?)")
        actions = np.vectorize(TECO_MC_IDS.get, otypes=[np.int64])(raw[1:])  # src[t+1] is taken after frame t
        frames = _fit(cfg, mp4, video[:-1])
        notes = {"poses": "unknown (all 0: not recorded)",
                 "alignment": "actions[t] = src actions[t+1] (src[0] placeholder; src[k] led to frame k); "
                              "last frame dropped",
                 "action_ids": "src 1 forward->2, 2 left->0, 3 right->1"}
        return {"frames": frames, "actions": actions[:T], "poses": np.zeros((T, 5), np.float32), "notes": notes}
    z = _load_npz(npz, ("actions", "poses"))
    raw, poses = np.asarray(z["actions"]), np.asarray(z["poses"], dtype=np.float32)
    if raw.ndim != 2 or raw.shape[1] != 8 or poses.ndim != 2 or poses.shape[1] != 5:
        raise UnreadableEpisode(f"{npz}: actions {raw.shape} / poses {poses.shape}, expected (N,8) / (N,5)")
    if len(poses) == len(raw) - 1:  # WorldMem's loader front-pads short pose arrays too
        poses = np.concatenate([poses[:1], poses])
    video = _read_mp4(mp4)
    if len(video) != len(raw) or len(poses) != len(raw):
        raise UnreadableEpisode(f"{mp4}: {len(video)} frames, {len(raw)} actions, {len(poses)} poses (truncated?)")
    frames = _fit(cfg, mp4, video[:-1])
    notes = {"poses": "real: x,y,z,pitch,yaw from MineDojo location_stats (raw, not recentred)",
             "alignment": "actions[t] = VPT(src actions[t+1]) (src[0] no-op; src[k] led to frame k); "
                          "last frame dropped",
             "action_keys": list(VPT_KEYS)}
    return {"frames": frames, "actions": vpt_actions(raw[1:])[:T], "poses": poses[:T], "notes": notes}


# ---------------------------------------------------------------------------------------------------------------
# Shards

def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def ingest_shard(cfg: IngestConfig, index: int, keys: list[str]) -> dict:
    """Convert one shard's episodes and write it; returns {name, entry (None if no episode was readable), skipped}."""
    rows, skipped = [], {}
    for i, key in enumerate(keys):
        try:
            ep = convert(cfg, key)
        except UnreadableEpisode as e:
            skipped[key] = str(e)
            continue
        T = cfg.length
        rows.append({
            "episode_id": f"{cfg.format}-{key}", "env": cfg.format, "agent": AGENT[cfg.format], "seed": 0,
            "episode_index": index * cfg.episodes_per_shard + i, "fps": FPS[cfg.format],
            "env_config": json.dumps({"source_format": cfg.format, "source": key, "frames": list(ep["frames"].shape),
                                      **ep["notes"]}, sort_keys=True),
            "frames": ep["frames"], "actions": ep["actions"], "poses": ep["poses"],
            "scene": np.full((T, 4), -1, np.int16), "revisit_gap": np.full(T, -1, np.int32)})
    entry = write_shard(episodes_to_table(rows, "frames"), Path(cfg.out_dir) / shard_name(index)) if rows else None
    return {"name": shard_name(index), "entry": entry, "skipped": skipped}


def run_ingest(cfg: IngestConfig) -> dict:
    """Convert every shard not done yet; returns {written, skipped_shards, unreadable, episodes, seconds}."""
    out = Path(cfg.out_dir).resolve()
    check_config(out, cfg.data_config(), flag_hint="--out-dir")
    remove_partials(out)  # temp files of shards whose writer was killed mid-write; never a finished shard
    sources_path = out / SOURCES
    if sources_path.exists():  # the first run fixed the episode list: shard contents never shift
        keys = json.loads(sources_path.read_text())["episodes"]
    else:
        keys = list_episodes(cfg)[: cfg.limit or None]
        write_json_atomic({"src": str(Path(cfg.src).resolve()), "episodes": keys}, sources_path)
    report_path = out / REPORT
    report = json.loads(report_path.read_text()) if report_path.exists() else {"unreadable": {}}
    manifest = Manifest(out)
    K = cfg.episodes_per_shard
    todo = [i for i in range(-(-len(keys) // K)) if not manifest.is_done(shard_name(i))]
    summary = {"out_dir": str(out), "episodes": len(keys), "shards": -(-len(keys) // K), "written": 0,
               "skipped_shards": -(-len(keys) // K) - len(todo), "unreadable": 0, "seconds": 0.0}
    t0 = time.perf_counter()
    wcfg = dataclasses.replace(cfg, out_dir=str(out))
    jobs = [(wcfg, i, keys[i * K:(i + 1) * K]) for i in todo]
    pool = ProcessPoolExecutor(cfg.workers) if cfg.workers > 1 else None
    bar = progress(len(keys), f"ingest {cfg.format}", unit="ep", initial=len(keys) - sum(len(j[2]) for j in jobs))
    try:
        results = pool.map(ingest_shard, *zip(*jobs)) if pool and jobs else (ingest_shard(*j) for j in jobs)
        for job, res in zip(jobs, results):
            if res["skipped"]:
                report["unreadable"].update(res["skipped"])
                write_json_atomic(report, report_path)
                summary["unreadable"] += len(res["skipped"])
                for key, why in res["skipped"].items():
                    emit(f"pipeline.ingest: skipped {key}: {why}", sys.stderr)
            if res["entry"] is not None:
                manifest.add(res["name"], res["entry"])
                summary["written"] += 1
            bar.update(len(job[2]), postfix=f"{summary['unreadable']} unreadable" if summary["unreadable"] else None)
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, dry_run = parse_config(IngestConfig, argv, description=__doc__, positional=("src",))
    except ValueError as e:
        print(f"pipeline.ingest: error: {e}", file=sys.stderr)
        return 2
    print(to_json(cfg))
    if dry_run:
        return 0
    try:
        summary = run_ingest(cfg)
    except ValueError as e:
        print(f"pipeline.ingest: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    if summary["unreadable"]:
        print(f"pipeline.ingest: {summary['unreadable']} unreadable episode(s) listed in "
              f"{Path(summary['out_dir']) / REPORT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
