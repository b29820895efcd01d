"""Synthetic episode shards (random frames, revisit marks) for tests and benchmarks; no env needed.

    from pipeline.synthetic import write_synthetic_shards
    write_synthetic_shards("data/synth", num_shards=2, episodes_per_shard=4, length=48, size=16, seed=0)

Frames are random uint8, so they say nothing about image content: they exercise shapes, bytes and bookkeeping.
With `revisit=True` each episode marks a few revisit events (revisit_gap >= 0 on 4 consecutive frames) whose
gaps fall in the bins 0-16, 16-48 and 48-112 where the episode is long enough, and one exact revisit per gap (a
frame that repeats the pose, pixels and labels of the frame g earlier).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.schema import episodes_to_table
from pipeline.shards import Manifest, write_shard

REVISIT_GAPS = (5, 30, 70)


def synthetic_episode(index: int, length: int, size: int, seed: int, revisit: bool) -> dict:
    """One episode row (frames (T,size,size,3)) drawn from default_rng([seed, index]) alone."""
    rng = np.random.default_rng([seed, index])
    t = length
    gap = np.full(t, -1, np.int32)
    if revisit:
        for g in REVISIT_GAPS:
            start = int(rng.integers(g + 2, max(g + 3, t - 4))) if t > g + 6 else -1
            if start >= 0:
                gap[start:start + 4] = g + np.arange(min(4, t - start))
    scene = np.stack([np.arange(t) // 8, np.full(t, 1), np.full(t, 2), np.full(t, -1)], 1).astype(np.int16)
    frames = rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8)
    poses = rng.standard_normal((t, 5)).astype(np.float32)
    if revisit:  # exact revisits: frame t repeats the pose and pixels of frame t - g
        for g in REVISIT_GAPS:
            if t > g + 2:
                at = int(rng.integers(g + 1, t))
                frames[at], poses[at], scene[at] = frames[at - g], poses[at - g], scene[at - g]
    return {
        "episode_id": f"synth-s{seed}-e{index}", "env": "synth", "agent": "revisit" if revisit else "explore",
        "seed": seed, "episode_index": index, "fps": 30.0, "env_config": json.dumps({"size": size}),
        "frames": frames, "actions": rng.integers(0, 7, t), "poses": poses, "scene": scene, "revisit_gap": gap,
    }


def write_synthetic_shards(folder: str | Path, num_shards: int = 2, episodes_per_shard: int = 4, length: int = 48,
                           size: int = 16, seed: int = 0, revisit: bool = True) -> list[Path]:
    """Write shard-00000.parquet ... with a manifest, as pipeline.collect lays them out; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest, paths = Manifest(folder), []
    for s in range(num_shards):
        rows = [synthetic_episode(s * episodes_per_shard + k, length, size, seed, revisit)
                for k in range(episodes_per_shard)]
        path = folder / f"shard-{s:05d}.parquet"
        manifest.add(path.name, write_shard(episodes_to_table(rows, "frames"), path))
        paths.append(path)
    return paths
