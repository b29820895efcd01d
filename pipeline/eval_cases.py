"""The fixed, seeded list of evaluation cases of a dataset, saved beside it so every figure uses the same cases.

    python -m pipeline.eval_cases --data-dir data/maze-revisit                      # -> <data>/eval_cases.parquet
    python -m pipeline.eval_cases --data-dir data/maze-revisit --cases-per-bin 200 --rollout-cases 32

A retrieval case = memory (the `max_memory` frames before the start s, left-padded), the actions of frames
s..s+n-1 (n = horizon, fewer at the episode end), their ground truth, and a *judged* subset of those frames. It
is binned by d, the number of frames from the first generated frame s back to the last sighting of what the
judged frames show: the source is memory frame s - d, so a memory of the last L frames holds it iff d <= L. Bins
on d are the paper's Table 1 columns, lo < d <= hi: "0-16", "16-48", "48-112" (a 16-frame memory covers exactly
the first), and finer bins D_EDGES for curves. Two kinds, drawn from every episode that has them:

  revisit  a return to a room (`revisit_gap` of the shard: frames since the room was last in view). The case
           is drawn at the first frame t of a return with gap g; generation starts at s = t - r, r >= 1 (the
           revisit frame is generated), so d = g - r. Judged: the frames of THAT visit inside the window
           (t, t+1, ... while revisit_gap keeps counting from g), read by the scene probe.
  exact    an exact revisit (`envs.agents.exact_revisit_sources`): frame t repeats the pose, hence the pixels,
           of an earlier frame t - g; s = t - r, r >= 0, d = g - r. Judged: frame t alone. SSIM and PSNR
           against the ground truth are valid judges here (the paper's Minecraft protocol, App. I).

For each kind, cases are drawn round-robin over the three bins (`cases_per_bin` each where the data has them):
a bin draws d uniformly among the values an unused candidate can still reach, then a random such candidate (so
d is spread over the bin instead of piling up where candidates are many, e.g. doorway flickers at d = 1). Rollout cases
(PSNR per 16-frame segment, Tables 3-4) are memory + `rollout_horizon` (64) frames of distinct episodes, saved as
`<data>/rollout_cases.parquet`.

Same data + same settings = the same file, byte for byte. Arrays are stored as .npy bytes in their stored dtype
(uint8 frames or float16 latents); `EvalCase.memory_x` / `target_x` convert to float32 model space on access.
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

from pipeline.cli import field, parse_config, run_cli, to_json
from pipeline.encoders import frames_to_unit
from pipeline.schema import to_numpy
from pipeline.shards import load_shard
from pipeline.windows import ShardInfo, index_shards

FORMAT_VERSION = 2
# Table 1 columns on d (frames from the first generated frame back to the source), lo < d <= hi
GAP_BINS: dict[str, tuple[int, int]] = {"0-16": (0, 16), "16-48": (16, 48), "48-112": (48, 112)}
D_EDGES = (0, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 80, 96, 112)   # finer bins (lo, hi] for retrieval-vs-d curves
KINDS = ("revisit", "exact")
EVAL_CASES = "eval_cases.parquet"
ROLLOUT_CASES = "rollout_cases.parquet"
_ARRAYS = ("memory", "memory_actions", "memory_mask", "memory_scene", "memory_poses", "actions", "target",
           "target_scene", "target_poses", "revisit_gap", "judged")


def gap_bin(d: int) -> str | None:
    """The Table 1 bin of a source distance d in frames (lo < d <= hi), None outside every bin."""
    for name, (lo, hi) in GAP_BINS.items():
        if lo < d <= hi:
            return name
    return None


def d_bin(d: int) -> str | None:
    """The fine bin "lo-hi" (lo < d <= hi) of D_EDGES holding d, None outside."""
    for lo, hi in zip(D_EDGES[:-1], D_EDGES[1:]):
        if lo < d <= hi:
            return f"{lo}-{hi}"
    return None


def to_model(a: np.ndarray) -> np.ndarray:
    """Stored frames (T,H,W,3) uint8 or latents (T,C,h,w) -> float32 (T,C,H,W); pixels to [-1, 1]."""
    if a.dtype == np.uint8:
        return frames_to_unit(a)
    return a.astype(np.float32)


@dataclass
class EvalCase:
    episode_id: str
    memory: np.ndarray          # (M, ...) stored dtype; memory index M-1 is frame s-1; pads are 0
    memory_actions: np.ndarray  # (M,) int64
    memory_mask: np.ndarray     # (M,) bool, False = padding
    memory_scene: np.ndarray    # (M, 4) int16 scene labels (-1 on pads)
    memory_poses: np.ndarray    # (M, 5) float32 poses (NaN on pads)
    actions: np.ndarray         # (n,) int64, actions of frames s..s+n-1
    target: np.ndarray          # (n, ...) stored dtype, ground truth of the generated frames
    target_scene: np.ndarray    # (n, 4) int16
    target_poses: np.ndarray    # (n, 5) float32
    revisit_gap: np.ndarray     # (n,) int32 room revisit gaps of the generated frames (>= 0 on revisits)
    judged: np.ndarray          # (n,) bool, the frames this case is judged on (empty for rollout cases)
    kind: str                   # "revisit" | "exact" | "rollout"
    d: int                      # frames from s back to the source (the source is memory index M - d); -1 rollout
    gap: int                    # g of the target frame t (t - source); -1 rollout
    revisit_t: int              # t, the frame the case was drawn for (-1 rollout)
    start: int                  # s, first generated frame
    encoder: str                # encoder JSON of latent data ("" for pixel data): decode with encoder_from_json

    @property
    def gap_bin(self) -> str:
        return gap_bin(self.d) or "" if self.kind != "rollout" else ""

    @property
    def memory_x(self) -> np.ndarray:
        """(M,C,H,W) float32 model space; pads exact 0."""
        return to_model(self.memory) * self.memory_mask[:, None, None, None]

    @property
    def target_x(self) -> np.ndarray:
        """(n,C,H,W) float32 model space."""
        return to_model(self.target)


@dataclass
class EvalCasesConfig:
    data_dir: str = field("data/maze-revisit", "folder of frame or latent shards with revisit episodes")
    out_path: str = field("", "where to save (default <data-dir>/eval_cases.parquet)")
    cases_per_bin: int = field(100, "retrieval cases per Table 1 bin and kind, where the data has them")
    kinds: list[str] = field(list(KINDS), "case kinds: revisit (room returns, probe-judged), exact (pose returns)")
    max_memory: int = field(112, "memory frames before the start (paper: up to 112)")
    horizon: int = field(16, "frames to generate per retrieval case")
    window: int = field(16, "w: the judged frame lies fewer than w frames after the start")
    seed: int = field(0, "seed of the case draws")
    rollout_cases: int = field(0, "also save this many rollout cases (error accumulation) to rollout_cases.parquet")
    rollout_horizon: int = field(64, "frames to generate per rollout case")

    def __post_init__(self):
        for name in ("cases_per_bin", "max_memory", "horizon", "window", "rollout_horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected >= 1")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"--kinds {self.kinds}: valid kinds are {list(KINDS)}")


# ---------------------------------------------------------------------------------------------------------------
# Candidates: (kind, shard, row, t, g, r_min) with the source at frame t - g

def _candidates(shards: list[ShardInfo], kinds) -> dict[str, list[tuple[int, int, int, int, int]]]:
    from envs.agents import exact_revisit_sources

    out: dict[str, list] = {k: [] for k in kinds}
    for si, info in enumerate(shards):
        table = pq.read_table(info.path, columns=["revisit_gap", "poses"])
        gaps, poses = to_numpy(table, "revisit_gap"), to_numpy(table, "poses")       # (N,T), (N,T,5)
        for row in range(info.num_rows):
            if "revisit" in out:
                g = gaps[row]
                prev = np.concatenate([[-1], g[:-1]])
                starts = np.flatnonzero((g >= 2) & ((prev < 0) | (g != prev + 1)))
                out["revisit"] += [(si, row, int(t), int(g[t]), 1) for t in starts if t >= 2]
            if "exact" in out and np.isfinite(poses[row]).all():
                src = exact_revisit_sources(poses[row])
                ts = np.flatnonzero(src >= 0)
                out["exact"] += [(si, row, int(t), int(t - src[t]), 0) for t in ts if t - src[t] >= 1 and t >= 1]
    return out


def _draw(candidates: list, kind: str, cases_per_bin: int, r_max: int, rng: np.random.Generator) -> list[dict]:
    """Round-robin over bins; within a bin, d uniform over the values some unused candidate can still reach, then
    a random such candidate (so no single d, e.g. the doorway flicker d = 1, dominates a bin)."""
    by_d: dict[int, list[int]] = {}
    for i, (_, _, t, g, r_min) in enumerate(candidates):
        for r in range(r_min, min(r_max, t - 1, g - 1) + 1):
            by_d.setdefault(g - r, []).append(i)
    queues = {d: [ids[j] for j in rng.permutation(len(ids))] for d, ids in sorted(by_d.items())}
    used: set[int] = set()
    picks, counts = [], {name: 0 for name in GAP_BINS}
    open_bins = [name for name in GAP_BINS]
    while open_bins:
        for name in list(open_bins):
            lo, hi = GAP_BINS[name]
            for d in range(lo + 1, hi + 1):                    # drop exhausted candidates at the queue heads
                while queues.get(d) and queues[d][-1] in used:
                    queues[d].pop()
            ds = [d for d in range(lo + 1, hi + 1) if queues.get(d)]
            if not ds or counts[name] >= cases_per_bin:
                open_bins.remove(name)
                continue
            d = ds[int(rng.integers(len(ds)))]
            i = queues[d].pop()
            si, row, t, g, _ = candidates[i]
            used.add(i)
            counts[name] += 1
            picks.append({"shard": si, "row": row, "t": t, "gap": g, "s": t - (g - d), "d": d, "kind": kind})
    return picks


# ---------------------------------------------------------------------------------------------------------------
# Extraction and storage

def _judged(kind: str, gaps: np.ndarray, s: int, n: int, t: int) -> np.ndarray:
    """(n,) bool: frames of the visit the case was drawn for (revisit) or the target frame alone (exact)."""
    judged = np.zeros(n, bool)
    j = t - s
    if kind == "exact":
        judged[j] = True
        return judged
    g0 = gaps[t]
    while j < n and gaps[s + j] == g0 + (s + j - t):
        judged[j] = True
        j += 1
    return judged


def _extract(arrays: dict, pick: dict, max_memory: int) -> dict:
    """Memory (left-padded), targets and judged frames of one case, data in stored dtype."""
    row, s, n = pick["row"], pick["s"], pick["n"]
    data = arrays["data"][row]                                        # (T, ...)
    idx = np.arange(s - max_memory, s)
    valid = idx >= 0
    safe = np.maximum(idx, 0)
    memory = data[safe].copy()
    memory[~valid] = 0
    scene, poses = arrays["scene"][row], arrays["poses"][row]
    judged = _judged(pick["kind"], arrays["revisit_gap"][row], s, n, pick["t"]) if pick["kind"] != "rollout" \
        else np.zeros(n, bool)
    return {"memory": memory, "memory_actions": np.where(valid, arrays["actions"][row][safe], 0),
            "memory_mask": valid, "memory_scene": np.where(valid[:, None], scene[safe], -1).astype(np.int16),
            "memory_poses": np.where(valid[:, None], poses[safe], np.nan).astype(np.float32),
            "actions": arrays["actions"][row][s:s + n], "target": data[s:s + n],
            "target_scene": scene[s:s + n], "target_poses": poses[s:s + n],
            "revisit_gap": arrays["revisit_gap"][row][s:s + n], "judged": judged}


def _load(info: ShardInfo) -> dict:
    table = load_shard(Path(info.path), info.column, info.sha256)   # checksums, latents finite: or SchemaError
    arrays = {"data": to_numpy(table, info.column), "episode_id": table.column("episode_id").to_pylist()}
    for c in ("actions", "scene", "poses", "revisit_gap"):
        arrays[c] = to_numpy(table, c)
    arrays["encoder"] = table.column("encoder")[0].as_py() if info.column == "latents" else ""
    return arrays


def _materialise(shards: list[ShardInfo], picks: list[dict], max_memory: int) -> list[dict]:
    """Fill picks {shard,row,s,n,...} with arrays, reading each shard once; keeps the order of picks."""
    for si in sorted({p["shard"] for p in picks}):
        arrays = _load(shards[si])
        for p in (p for p in picks if p["shard"] == si):
            p.update(_extract(arrays, p, max_memory), episode_id=arrays["episode_id"][p["row"]],
                     encoder=arrays["encoder"])
    return picks


def _pack(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _save(cases: list[dict], path: Path, meta: dict) -> None:
    cols = {"episode_id": pa.array([c["episode_id"] for c in cases], pa.string())}
    for k in ("kind", "encoder"):
        cols[k] = pa.array([c[k] for c in cases], pa.string())
    for k in ("d", "gap", "t", "s"):
        cols[k] = pa.array([c[k] for c in cases], pa.int64())
    for k in _ARRAYS:
        cols[k] = pa.array([_pack(c[k]) for c in cases], pa.large_binary())
    meta = {**meta, "format_version": FORMAT_VERSION}
    table = pa.table(cols).replace_schema_metadata({b"memvid.eval_cases": json.dumps(meta, sort_keys=True).encode()})
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# Public entry points

def build_eval_cases(data_dir: str | Path, out_path: str | Path | None = None, cases_per_bin: int = 100,
                     max_memory: int = 112, horizon: int = 16, seed: int = 0, window: int = 16,
                     kinds: tuple[str, ...] | list[str] = KINDS) -> Path:
    """Draw and save the retrieval cases (see module docstring); returns the file written."""
    shards = index_shards(data_dir)
    candidates = _candidates(shards, kinds)
    if not any(candidates.values()):
        raise ValueError(f"{data_dir}: no revisit frames (room returns or exact pose returns) in any shard; collect "
                         f"revisit episodes with `python -m pipeline.collect --agent revisit` (or --agent lookback) "
                         f"into this folder")
    r_max = min(window, horizon) - 1
    picks: list[dict] = []
    for i, kind in enumerate(kinds):
        picks += _draw(candidates[kind], kind, cases_per_bin, r_max, np.random.default_rng([seed, i]))
    for p in picks:
        p["n"] = min(horizon, shards[p["shard"]].length - p["s"])
    cases = _materialise(shards, picks, max_memory)
    path = Path(out_path) if out_path else Path(data_dir) / EVAL_CASES
    counts = {kind: {b: sum(p["kind"] == kind and gap_bin(p["d"]) == b for p in picks) for b in GAP_BINS}
              for kind in kinds}
    _save(cases, path, {"seed": seed, "num_cases": len(cases), "max_memory": max_memory, "horizon": horizon,
                        "window": window, "cases_per_bin": cases_per_bin, "bins": counts,
                        "candidates": {k: len(v) for k, v in candidates.items()}})
    print(f"[eval_cases] {len(cases)} retrieval cases -> {path}; per kind and bin of d {counts}", flush=True)
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
        picks.append({"shard": si, "row": row, "t": -1, "gap": -1, "d": -1, "s": s, "n": horizon, "kind": "rollout"})
    cases = _materialise(shards, picks, max_memory)
    path = Path(out_path) if out_path else Path(data_dir) / ROLLOUT_CASES
    _save(cases, path, {"seed": seed, "num_cases": len(cases), "max_memory": max_memory, "horizon": horizon})
    print(f"[eval_cases] {len(cases)} rollout cases -> {path}", flush=True)
    return path


def _unpack(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def load_eval_cases(path: str | Path) -> list[EvalCase]:
    """The cases of a file written by build_eval_cases / build_rollout_cases, in their saved order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no evaluation cases; build them with "
                                f"`python -m pipeline.eval_cases --data-dir {path.parent}`")
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"memvid.eval_cases", b"{}"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: evaluation cases of format {meta.get('format_version', 1)}, this version reads "
                         f"format {FORMAT_VERSION} (cases binned by d, judged frames, exact revisits); rebuild them "
                         f"with `python -m pipeline.eval_cases --data-dir {path.parent}`")
    out = []
    for r in table.to_pylist():
        arrays = {k: _unpack(r[k]) for k in _ARRAYS}
        out.append(EvalCase(episode_id=r["episode_id"], **arrays, kind=r["kind"], d=r["d"], gap=r["gap"],
                            revisit_t=r["t"], start=r["s"], encoder=r["encoder"]))
    return out


def case_file_fingerprint(path: str | Path) -> str:
    """sha256 (16 hex) of a case file's bytes: caches of per-case results are keyed by it."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    cfg, dry_run = parse_config(EvalCasesConfig, argv, description=__doc__)
    print(to_json(cfg), flush=True)
    if dry_run:
        return
    build_eval_cases(cfg.data_dir, cfg.out_path or None, cfg.cases_per_bin, cfg.max_memory, cfg.horizon, cfg.seed,
                     cfg.window, tuple(cfg.kinds))
    if cfg.rollout_cases:
        build_rollout_cases(cfg.data_dir, None, cfg.rollout_cases, cfg.max_memory, cfg.rollout_horizon, cfg.seed)


if __name__ == "__main__":
    run_cli(main)
