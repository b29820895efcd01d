"""The fixed, seeded list of evaluation cases of a dataset, saved beside it so every figure uses the same cases.

    python -m pipeline.eval_cases --data-dir data/maze-revisit                      # -> <data>/eval_cases.parquet
    python -m pipeline.eval_cases --data-dir data/maze-revisit --num-cases 256 --rollout-cases 32

Memory retrieval cases (paper Sec. 5, Table 1): in revisit episodes (revisit_gap >= 0) take the first frame t of
each return to a room, with gap g = revisit_gap[t] (frames since the room was last in view). Generation starts
at s = t - r, r drawn from the seeded generator in [1, min(window, horizon - 1, g - 1, t - 1)], so the revisit
frame is generated and the last sighting (frame t - g < s) lies in the memory, not in the generated frames.
Memory = the max_memory (112) frames before s, left-padded (zeros, memory_mask False); then the return-path
actions s..s+n-1 (n = horizon, or fewer at the episode end), ground-truth frames, scene labels and revisit_gap
of those n frames, and the gap bin of g: "0-16" (g < 16), "16-48" (g < 48), "48-112" (g <= 112; larger gaps
cannot be in a 112-frame memory and are not used). Cases are drawn round-robin over the bins, so bins are
balanced as far as the data allows. Rollout cases (PSNR per 16-frame segment, error accumulation, Tables 3-4)
are memory + `rollout_horizon` (64) frames from any episode, saved as `<data>/rollout_cases.parquet`.

Same data + same settings = the same file, byte for byte. Arrays are stored as .npy bytes in their stored dtype
(uint8 frames or float16 latents) and converted to float32 in load_eval_cases.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cli import field, parse_config, to_json
from pipeline.schema import to_numpy
from pipeline.windows import ShardInfo, index_shards

GAP_BINS = (("0-16", 0, 16), ("16-48", 16, 48), ("48-112", 48, 113))
EVAL_CASES = "eval_cases.parquet"
ROLLOUT_CASES = "rollout_cases.parquet"


@dataclass
class EvalCase:
    episode_id: str
    memory_x: np.ndarray        # (M_max, C, H, W) float32, pixels in [-1, 1] (or latents as stored); pads are 0
    memory_actions: np.ndarray  # (M_max,) int64
    memory_mask: np.ndarray     # (M_max,) bool, False = padding
    actions: np.ndarray         # (n,) int64, return-path actions of frames s..s+n-1
    target_x: np.ndarray        # (n, C, H, W) float32 ground truth of the generated frames
    target_scene: np.ndarray    # (n, 4) int16 scene labels of the generated frames
    revisit_gap: np.ndarray     # (n,) int32, >= 0 on revisit frames
    gap_bin: str                # "0-16" | "16-48" | "48-112" ("" for rollout cases)
    gap: int                    # g of the picked revisit frame (-1 for rollout cases)
    revisit_t: int              # t, index of the revisit frame in the episode (-1 for rollout cases)
    start: int                  # s, first generated frame
    kind: str                   # "revisit" | "rollout"
    encoder: str                # encoder JSON of latent data ("" for pixel data): decode with encoder_from_json


@dataclass
class EvalCasesConfig:
    data_dir: str = field("data/maze-revisit", "folder of frame or latent shards with revisit episodes")
    out_path: str = field("", "where to save (default <data-dir>/eval_cases.parquet)")
    num_cases: int = field(64, "number of memory retrieval cases")
    max_memory: int = field(112, "memory frames before the start (paper: up to 112)")
    horizon: int = field(16, "frames to generate per retrieval case")
    window: int = field(16, "w: the revisit frame lies at most w frames after the start")
    seed: int = field(0, "seed of the case draws")
    rollout_cases: int = field(0, "also save this many rollout cases (error accumulation) to rollout_cases.parquet")
    rollout_horizon: int = field(64, "frames to generate per rollout case")

    def __post_init__(self):
        for name in ("num_cases", "max_memory", "horizon", "window", "rollout_horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def gap_bin(g: int) -> str | None:
    for name, lo, hi in GAP_BINS:
        if lo <= g < hi:
            return name
    return None


# ---------------------------------------------------------------------------------------------------------------
# Candidates and extraction

def _revisit_candidates(shards: list[ShardInfo]) -> list[tuple[int, int, int, int]]:
    """(shard, row, t, g) for the first frame of every return to a room, in data order."""
    out = []
    for si, info in enumerate(shards):
        gaps = to_numpy(pq.read_table(info.path, columns=["revisit_gap"]), "revisit_gap")    # (N, T)
        for row, g in enumerate(gaps):
            prev = np.concatenate([[-1], g[:-1]])
            starts = np.flatnonzero((g >= 0) & ((prev < 0) | (g != prev + 1)))
            out += [(si, row, int(t), int(g[t])) for t in starts if t >= 2 and g[t] >= 2 and gap_bin(int(g[t]))]
    return out


def _extract(arrays: dict, row: int, s: int, n: int, max_memory: int) -> dict:
    """Memory (left-padded) and targets of one case, data in stored dtype."""
    data = arrays["data"][row]                                        # (T, ...)
    idx = np.arange(s - max_memory, s)
    valid = idx >= 0
    memory = data[np.maximum(idx, 0)].copy()
    memory[~valid] = 0
    return {"memory": memory, "memory_actions": np.where(valid, arrays["actions"][row][np.maximum(idx, 0)], 0),
            "memory_mask": valid, "actions": arrays["actions"][row][s:s + n], "target": data[s:s + n],
            "target_scene": arrays["scene"][row][s:s + n], "revisit_gap": arrays["revisit_gap"][row][s:s + n]}


def _load(info: ShardInfo) -> dict:
    table = pq.read_table(info.path)
    arrays = {"data": to_numpy(table, info.column), "episode_id": table.column("episode_id").to_pylist()}
    for c in ("actions", "scene", "revisit_gap"):
        arrays[c] = to_numpy(table, c)
    arrays["encoder"] = table.column("encoder")[0].as_py() if info.column == "latents" else ""
    return arrays


def _materialise(shards: list[ShardInfo], picks: list[dict], max_memory: int) -> list[dict]:
    """Fill picks {shard,row,s,n,...} with arrays, reading each shard once; keeps the order of picks."""
    for si in sorted({p["shard"] for p in picks}):
        arrays = _load(shards[si])
        for p in (p for p in picks if p["shard"] == si):
            p.update(_extract(arrays, p["row"], p["s"], p["n"], max_memory),
                     episode_id=arrays["episode_id"][p["row"]], encoder=arrays["encoder"])
    return picks


def _pack(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _save(cases: list[dict], path: Path, meta: dict) -> None:
    arrays = ("memory", "memory_actions", "memory_mask", "actions", "target", "target_scene", "revisit_gap")
    cols = {"episode_id": pa.array([c["episode_id"] for c in cases], pa.string())}
    for k in ("gap_bin", "kind", "encoder"):
        cols[k] = pa.array([c[k] for c in cases], pa.string())
    for k in ("gap", "t", "s"):
        cols[k] = pa.array([c[k] for c in cases], pa.int64())
    for k in arrays:
        cols[k] = pa.array([_pack(c[k]) for c in cases], pa.large_binary())
    table = pa.table(cols).replace_schema_metadata({b"memvid.eval_cases": json.dumps(meta, sort_keys=True).encode()})
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# Public entry points

def build_eval_cases(data_dir: str | Path, out_path: str | Path | None = None, num_cases: int = 64,
                     max_memory: int = 112, horizon: int = 16, seed: int = 0, window: int = 16) -> Path:
    """Draw and save the memory retrieval cases (see module docstring); returns the file written."""
    shards = index_shards(data_dir)
    candidates = _revisit_candidates(shards)
    if not candidates:
        raise ValueError(f"{data_dir}: no revisit frames (revisit_gap >= 2 and <= 112) in any shard; collect revisit "
                         f"episodes with `python -m pipeline.collect --agent revisit` into this folder")
    rng = np.random.default_rng(seed)
    by_bin = {name: [c for c in candidates if gap_bin(c[3]) == name] for name, _, _ in GAP_BINS}
    queues = {name: [cands[i] for i in rng.permutation(len(cands))] for name, cands in by_bin.items()}
    picks: list[dict] = []
    while len(picks) < num_cases and any(queues.values()):
        for name, _, _ in GAP_BINS:                    # round-robin: balanced bins where the data allows
            if queues[name] and len(picks) < num_cases:
                si, row, t, g = queues[name].pop(0)
                r = int(rng.integers(1, max(1, min(window, horizon - 1, g - 1, t - 1)) + 1))
                s = t - r
                n = min(horizon, shards[si].length - s)
                picks.append({"shard": si, "row": row, "t": t, "gap": g, "s": s, "n": n, "gap_bin": name, "kind": "revisit"})
    cases = _materialise(shards, picks, max_memory)
    path = Path(out_path) if out_path else Path(data_dir) / EVAL_CASES
    counts = {name: sum(p["gap_bin"] == name for p in picks) for name, _, _ in GAP_BINS}
    _save(cases, path, {"seed": seed, "num_cases": len(cases), "max_memory": max_memory, "horizon": horizon,
                        "window": window, "bins": counts, "candidates": {k: len(v) for k, v in by_bin.items()}})
    print(f"[eval_cases] {len(cases)} retrieval cases -> {path}; per bin {counts} "
          f"(available {({k: len(v) for k, v in by_bin.items()})})", flush=True)
    return path


def build_rollout_cases(data_dir: str | Path, out_path: str | Path | None = None, num_cases: int = 16,
                        max_memory: int = 112, horizon: int = 64, seed: int = 0) -> Path:
    """Memory + `horizon` ground-truth frames from distinct episodes (PSNR per segment); returns the file written."""
    shards = index_shards(data_dir)
    episodes = [(si, row) for si, info in enumerate(shards) if info.length > horizon for row in range(info.num_rows)]
    if not episodes:
        longest = max(s.length for s in shards)
        raise ValueError(f"{data_dir}: no episode longer than horizon={horizon} frames (longest {longest}); "
                         f"lower --rollout-horizon or collect longer episodes")
    rng = np.random.default_rng([seed, 1])
    picks = []
    for i in rng.permutation(len(episodes))[:num_cases]:
        si, row = episodes[i]
        length = shards[si].length
        s = int(rng.integers(max(1, min(max_memory, length - horizon)), length - horizon + 1))
        picks.append({"shard": si, "row": row, "t": -1, "gap": -1, "s": s, "n": horizon, "gap_bin": "", "kind": "rollout"})
    cases = _materialise(shards, picks, max_memory)
    path = Path(out_path) if out_path else Path(data_dir) / ROLLOUT_CASES
    _save(cases, path, {"seed": seed, "num_cases": len(cases), "max_memory": max_memory, "horizon": horizon})
    print(f"[eval_cases] {len(cases)} rollout cases -> {path}", flush=True)
    return path


def _unpack(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def _to_model(a: np.ndarray) -> np.ndarray:
    """Stored frames/latents (T, ...) -> float32 (T, C, H, W); pixels to [-1, 1]."""
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2), dtype=np.float32) / 127.5 - 1.0
    return a.astype(np.float32)


def load_eval_cases(path: str | Path) -> list[EvalCase]:
    """The cases of a file written by build_eval_cases / build_rollout_cases, in their saved order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no evaluation cases; build them with "
                                f"`python -m pipeline.eval_cases --data-dir {path.parent}`")
    rows = pq.read_table(path).to_pylist()
    out = []
    for r in rows:
        mask = _unpack(r["memory_mask"])
        memory = _to_model(_unpack(r["memory"])) * mask[:, None, None, None]
        out.append(EvalCase(episode_id=r["episode_id"], memory_x=memory, memory_actions=_unpack(r["memory_actions"]),
                            memory_mask=mask, actions=_unpack(r["actions"]), target_x=_to_model(_unpack(r["target"])),
                            target_scene=_unpack(r["target_scene"]), revisit_gap=_unpack(r["revisit_gap"]),
                            gap_bin=r["gap_bin"], gap=r["gap"], revisit_t=r["t"], start=r["s"], kind=r["kind"],
                            encoder=r["encoder"]))
    return out


def main(argv: list[str] | None = None) -> None:
    cfg, dry_run = parse_config(EvalCasesConfig, argv, description=__doc__)
    print(to_json(cfg), flush=True)
    if dry_run:
        return
    build_eval_cases(cfg.data_dir, cfg.out_path or None, cfg.num_cases, cfg.max_memory, cfg.horizon, cfg.seed, cfg.window)
    if cfg.rollout_cases:
        build_rollout_cases(cfg.data_dir, None, cfg.rollout_cases, cfg.max_memory, cfg.rollout_horizon, cfg.seed)


if __name__ == "__main__":
    main()
