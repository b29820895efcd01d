"""Training samples from frame or latent shards: memory (m frames before the window) + current window (w frames).

    spec = WindowSpec(memory_length=16, window=8, batch_size=4, seed=0)
    stream = LocalWindowStream("data/maze", spec)             # no Ray: plain pyarrow, rank/world_size sharding
    for batch in stream: ...                                   # dict of torch tensors (see collate)
    state = stream.state_dict(); stream.load_state_dict(state) # resume: the next batches are the ones that would come
    ds = ray_window_dataset("data/maze", spec, epoch=0, start=0, num_epochs=2)  # same rows with Ray Data
    for batch in ds.iter_torch_batches(batch_size=spec.batch_size, collate_fn=ray_collate_fn()): ...
    spec = WindowSpec(16, 8, 4, seed=0, revisit_share=0.5, memory_dropout=0.5)  # train on revisits, short memories
    reach_stats("data/maze", spec)            # {"in_reach": share of windows with a revisit's source in memory, ...}

Sampling (one function, `epoch_samples`, serves both paths). For epoch e a generator default_rng([seed, e])
permutes the shards, and within each shard draws `samples_per_episode` window offsets t0 per episode uniformly
in [min(m, T - w), T - w] and permutes them. So a sample has full memory whenever its episode is long enough
(T >= m + w); in shorter episodes memory is left-padded: zeros with mem_mask False. Episodes with T < w give
no samples and are counted in `num_skipped_episodes`. Shards are visited one at a time (a 2-shard cache), so a
big dataset never sits in memory at once. Every shard the manifest lists is used whole or the run stops naming
it: `index_shards` refuses a listed shard that is missing, truncated or unreadable, and each shard is loaded
through `shards.load_shard` (manifest SHA-256, footer row checksums, latents finite). Rank r of world_size
takes every world_size-th sample of the epoch list (truncated to a multiple of world_size, so every rank gets
the same number of batches).

Two options make training see what evaluation asks (both 0 by default: the sampling above, unchanged):
- `revisit_share` s: ceil(s * n) of a shard's n samples are replaced by windows that put a revisit in reach: a
  revisit frame t (room: src = t - revisit_gap[t]; exact: src = the latest earlier frame of the same pose) lies
  in the window [t0, t0 + w) and its source src in the memory [t0 - m, t0). A candidate (row, t, src) is drawn
  uniformly from the shard's candidates, then t0 uniformly among the offsets (in the range above) that reach
  it. Shards without candidates keep ordinary windows. Only the small revisit_gap and poses columns are read.
- `memory_dropout` p: ceil(p * N) of the epoch's N samples keep only their last k memory frames, k uniform in
  1..m; the cut frames are padding exactly like left padding (zeros, mem_mask False). So one model trains, and
  can be evaluated in distribution, at every memory length up to m.
The sample count does not depend on either share, so positions (epoch, index) and samples_per_epoch do not.
`reach_stats` measures the share of an epoch's windows with a revisit in reach.

Batch (collate): mem_x float32 (B,M,C,H,W), mem_actions int64 (B,M), mem_mask bool (B,M), x float32 (B,w,C,H,W),
actions int64 (B,w). Pixel shards become frames/127.5 - 1; latent shards are used as stored (already scaled).
Rows travel in their stored dtype (uint8 frames or float16 latents), already channels-first (ShardCache
transposes a pixel shard once when it loads it), and are converted in collate by two contiguous ufunc passes.
"""
from __future__ import annotations

import functools
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.schema import SchemaError, check_table, pixels_to_unit, tensor_shape, to_numpy
from pipeline.shards import (
    MANIFEST,
    NO_CHECKSUM_HINT,
    Manifest,
    finished_shards,
    footer_checksums,
    load_shard,
    shard_kind,
)

BATCH_KEYS = ("mem_x", "mem_actions", "mem_mask", "x", "actions")


@dataclass(frozen=True)
class WindowSpec:
    memory_length: int          # m: frames of memory before the window (paper: 16, 48, 112)
    window: int                 # w: frames in the current window (paper: Delta = w = 16)
    batch_size: int             # samples per batch
    seed: int                   # sample offsets come from default_rng([seed, epoch])
    samples_per_episode: int = 0  # windows drawn per episode per epoch; 0 = T // w
    revisit_share: float = 0.0  # share of samples placed so a revisit's source lies in the memory (module docstring)
    memory_dropout: float = 0.0  # share of samples whose memory keeps only its last k frames, k uniform in 1..m

    def __post_init__(self):
        if self.memory_length < 0 or self.window < 1 or self.batch_size < 1:
            raise ValueError(f"WindowSpec needs memory_length >= 0, window >= 1, batch_size >= 1; got {self}")
        for name in ("revisit_share", "memory_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # also refuses NaN
                raise ValueError(f"{name} (--{name.replace('_', '-')}) {value}: expected a share in [0, 1]")


@dataclass(frozen=True)
class ShardInfo:
    path: str
    column: str                 # "frames" | "latents"
    num_rows: int
    length: int                 # T of every episode in this shard (fixed-shape tensor columns)
    sha256: str | None = None   # the manifest's checksum of the file (None in a folder without manifest)


def index_shards(data_dir: str | Path) -> list[ShardInfo]:
    """Every shard the folder's manifest lists (name order), or every shard-*.parquet when there is no manifest.
    Raises SchemaError naming a shard that cannot be used whole: listed but missing or of another size, an
    unreadable footer, a schema or row count that disagrees, or (no manifest) no row checksums."""
    folder = Path(data_dir)
    paths = finished_shards(folder)
    entries = Manifest(folder).shards if (folder / MANIFEST).exists() else {}
    if not paths:
        raise FileNotFoundError(f"{folder}: no shards; run pipeline.collect (frames) or pipeline.encode (latents) "
                                "first")
    fix = f"run `python -m pipeline.inspect {folder}` to move it aside, then rerun the command that wrote the folder"
    infos = []
    for p in paths:
        entry = entries.get(p.name)
        try:
            meta = pq.read_metadata(p)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError for truncated files
            raise SchemaError(f"{p}: not a readable Parquet file ({type(e).__name__}: {e}); {fix}") from e
        schema = meta.schema.to_arrow_schema()
        column = shard_kind(schema)
        problems = check_table(schema, column)
        if problems:
            raise SchemaError(f"{p}: " + "; ".join(map(str, problems)) + f"; {fix}")
        if entry is not None and entry["rows"] != meta.num_rows:
            raise SchemaError(f"{p}: {meta.num_rows} rows, {MANIFEST} lists {entry['rows']}; {fix}")
        if entry is None and footer_checksums(schema.metadata) is None:
            raise SchemaError(f"{p}: no row checksums in its footer and no {MANIFEST} lists it, so nothing can tell "
                              f"whether its bytes are intact; {NO_CHECKSUM_HINT}")
        infos.append(ShardInfo(str(p), column, meta.num_rows, tensor_shape(schema, "actions")[0],
                               entry["sha256"] if entry else None))
    return infos


def epoch_samples(shards: list[ShardInfo], spec: WindowSpec, epoch: int, rank: int = 0,
                  world_size: int = 1) -> np.ndarray:
    """(N, 4) int64 rows [shard index, row, t0, keep] of this rank's samples in epoch order; keep = memory frames
    kept (m unless memory dropout cut them). N does not depend on revisit_share or memory_dropout."""
    rng = np.random.default_rng([spec.seed, epoch])
    m, w = spec.memory_length, spec.window
    parts = []
    for si in rng.permutation(len(shards)):
        info = shards[si]
        if info.length < w:
            continue
        k = spec.samples_per_episode or max(1, info.length // w)
        rows = np.repeat(np.arange(info.num_rows), k)
        t0 = rng.integers(min(m, info.length - w), info.length - w + 1, size=len(rows))
        if spec.revisit_share > 0:  # no extra draws when off: today's order, so old runs resume on the same data
            rows, t0 = _place_revisits(rng, info, spec, rows, t0)
        part = np.stack([np.full(len(rows), si), rows, t0], 1)
        parts.append(part[rng.permutation(len(rows))])
    samples = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)
    keep = np.full(len(samples), m)
    if spec.memory_dropout > 0 and m > 0:
        cut = rng.permutation(len(samples))[:_share_count(spec.memory_dropout, len(samples))]
        keep[cut] = rng.integers(1, m + 1, size=len(cut))
    samples = np.concatenate([samples, keep[:, None]], 1)
    samples = samples[: len(samples) - len(samples) % world_size]
    return samples[rank::world_size].astype(np.int64)


def _share_count(share: float, n: int) -> int:
    """Samples of n that make up `share` (rounded up, so the share is at least met; 1e-9 absorbs float noise)."""
    return min(n, math.ceil(share * n - 1e-9))


def _place_revisits(rng: np.random.Generator, info: ShardInfo, spec: WindowSpec, rows: np.ndarray,
                    t0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace ceil(revisit_share * n) of a shard's n ordinary samples (rows, t0) by windows with a revisit in
    reach: candidate (row, t, src) uniform over the shard's reachable ones, then t0 uniform over its reach."""
    cands = revisit_candidates(info)
    lo, hi = _reach_bounds(cands, info.length, spec.memory_length, spec.window)
    reachable = lo <= hi
    cands, lo, hi = cands[reachable], lo[reachable], hi[reachable]
    n = _share_count(spec.revisit_share, len(rows))
    if not len(cands) or not n:
        return rows, t0
    pick = rng.integers(len(cands), size=n)
    at = rng.choice(len(rows), size=n, replace=False)  # which ordinary samples give way
    rows, t0 = rows.copy(), t0.copy()
    rows[at], t0[at] = cands[pick, 0], rng.integers(lo[pick], hi[pick] + 1)
    return rows, t0


def _reach_bounds(cands: np.ndarray, length: int, m: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last t0 (inclusive) that put each candidate (K,4) in reach: t in the window [t0, t0 + w), src in
    the memory [t0 - m, t0), and t0 in the ordinary range [min(m, T - w), T - w]. Empty where lo > hi."""
    t, src = cands[:, 1], cands[:, 2]
    lo = np.maximum(np.maximum(t - w + 1, src + 1), min(m, length - w))
    hi = np.minimum(np.minimum(t, src + m), length - w)
    return lo, hi


def revisit_candidates(info: ShardInfo) -> np.ndarray:
    """(K, 4) int64 rows [row, t, src, kind], one per distinct (row, t, src): frame t of episode `row` revisits
    what frame src < t showed. kind 1 = room revisit (src = t - revisit_gap[t]), 2 = exact revisit (same pose:
    envs.agents.exact_revisit_sources), 3 = both. Read-only, cached per file version; reads only the
    revisit_gap and poses columns."""
    stat = os.stat(info.path)
    return _read_candidates(info.path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _read_candidates(path: str, mtime_ns: int, size: int) -> np.ndarray:
    from envs.agents import exact_revisit_sources

    table = pq.read_table(path, columns=["revisit_gap", "poses"])
    gaps, poses = to_numpy(table, "revisit_gap"), to_numpy(table, "poses")    # (N,T), (N,T,5)
    parts = [np.zeros((0, 4), np.int64)]
    for row in range(len(gaps)):
        frames = np.arange(gaps.shape[1])
        room = np.where(gaps[row] >= 0, frames - gaps[row], -1)
        for kind, src in ((1, room), (2, exact_revisit_sources(poses[row]))):
            t = np.flatnonzero((src >= 0) & (src < frames))
            parts.append(np.stack([np.full(len(t), row), t, src[t], np.full(len(t), kind)], 1).astype(np.int64))
    cands = np.concatenate(parts)
    cands = cands[np.lexsort((cands[:, 2], cands[:, 1], cands[:, 0]))]
    first = np.flatnonzero(np.r_[True, (np.diff(cands[:, :3], axis=0) != 0).any(1)])[: len(cands)]
    out = cands[first]
    if len(cands):  # a frame both a room and an exact revisit of the same source: one candidate, kind 3
        out[:, 3] = np.bitwise_or.reduceat(cands[:, 3], first)
    out.flags.writeable = False
    return out


def reach_stats(data_dir: str | Path, spec: WindowSpec, epoch: int = 0) -> dict:
    """Shares of one epoch's samples (rank 0 of 1) with a revisit in reach: frame t in the window [t0, t0 + w)
    whose source src lies in the memory [t0 - m, t0). Keys: num_samples; in_reach (any revisit), in_reach_room,
    in_reach_exact; in_reach_kept (src also among the frames memory dropout kept: t0 - keep <= src);
    memory_cut (share with keep < m); mean_keep (frames)."""
    shards = index_shards(data_dir)
    samples = epoch_samples(shards, spec, epoch)
    m, w = spec.memory_length, spec.window
    hits = np.zeros((len(samples), 4), bool)  # room, exact, any, kept
    for si in np.unique(samples[:, 0]):
        cands = revisit_candidates(shards[si])
        starts = np.searchsorted(cands[:, 0], np.arange(shards[si].num_rows + 1))
        for i in np.flatnonzero(samples[:, 0] == si):
            _, row, t0, keep = samples[i]
            c = cands[starts[row]:starts[row + 1]]
            near = (t0 <= c[:, 1]) & (c[:, 1] < t0 + w) & (t0 - m <= c[:, 2]) & (c[:, 2] < t0)
            hits[i] = [(c[near, 3] & 1).any(), (c[near, 3] & 2).any(), near.any(), (c[near, 2] >= t0 - keep).any()]
    share = hits.mean(0) if len(samples) else np.zeros(4)
    return {"num_samples": len(samples), "in_reach": float(share[2]), "in_reach_room": float(share[0]),
            "in_reach_exact": float(share[1]), "in_reach_kept": float(share[3]),
            "memory_cut": float((samples[:, 3] < m).mean()) if len(samples) else 0.0,
            "mean_keep": float(samples[:, 3].mean()) if len(samples) else 0.0}


# ---------------------------------------------------------------------------------------------------------------
# Window extraction (the one piece of window code both paths run)

class ShardCache:
    """The last `max_shards` shards read, as (data (N,T,C,H,W) stored dtype, actions (N,T)). Pixel frames are
    transposed to channels-first once per load, so every window is a contiguous copy and converts in one pass."""

    def __init__(self, max_shards: int = 2):
        self.max_shards = max_shards
        self.items: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def get(self, info: ShardInfo) -> tuple[np.ndarray, np.ndarray]:
        if info.path in self.items:
            self.items.move_to_end(info.path)
            return self.items[info.path]
        try:                                           # verified whole, or the run stops naming the shard
            table = load_shard(Path(info.path), info.column, info.sha256)
        except SchemaError as e:
            raise SchemaError(f"{e}; the data cannot be used: run `python -m pipeline.inspect "
                              f"{Path(info.path).parent}` to move it aside, then rerun the command that wrote "
                              f"the folder") from e
        data = to_numpy(table, info.column)
        if info.column == "frames":                    # (N,T,H,W,3) -> (N,T,3,H,W)
            data = np.ascontiguousarray(data.transpose(0, 1, 4, 2, 3))
        arrays = (data, to_numpy(table, "actions"))
        self.items[info.path] = arrays
        while len(self.items) > self.max_shards:
            self.items.popitem(last=False)
        return arrays


def make_windows(shards: list[ShardInfo], samples: np.ndarray, spec: WindowSpec, cache: ShardCache) -> dict:
    """Rows for `samples` (N,4) in order: dict of numpy, data in stored dtype and model layout (N,T,C,H,W);
    padding is zeros (see the module docstring)."""
    m, w = spec.memory_length, spec.window
    assert samples.shape[1] == 4, "samples are epoch_samples rows [shard, row, t0, keep]"
    n = len(samples)
    out: dict[str, np.ndarray] = {"mem_mask": np.zeros((n, m), bool)}
    bounds = np.r_[0, np.flatnonzero(np.diff(samples[:, 0])) + 1, n]
    for lo, hi in zip(bounds[:-1], bounds[1:]):         # consecutive samples of one shard
        run = samples[lo:hi]
        data, actions = cache.get(shards[run[0, 0]])   # (N,T,*frame), (N,T,*action)
        length = data.shape[1]
        if "x" not in out:
            for key, arr, t in (("mem_x", data, m), ("x", data, w), ("mem_actions", actions, m),
                                ("actions", actions, w)):
                out[key] = np.empty((n, t) + arr.shape[2:], arr.dtype)
        elif data.shape[2:] != out["x"].shape[2:] or data.dtype != out["x"].dtype:
            raise ValueError(f"{shards[run[0, 0]].path}: frames {data.shape[2:]} {data.dtype} differ from the "
                             f"batch's {out['x'].shape[2:]} {out['x'].dtype}; one stream needs one frame shape "
                             "and dtype")
        idx = run[:, 2:3] + np.arange(-m, w)[None]     # (n, m+w) frame indices, negative = padding
        valid = idx >= 0
        valid[:, :m] &= np.arange(m)[None] >= m - run[:, 3:4]  # memory dropout: the first m - keep are padding
        flat = run[:, 1:2] * length + np.maximum(idx, 0)       # row-major index into (N*T, ...)
        for key, src, cols in (("mem_x", data, slice(0, m)), ("x", data, slice(m, m + w)),
                               ("mem_actions", actions, slice(0, m)), ("actions", actions, slice(m, m + w))):
            dst = out[key][lo:hi]
            np.take(src.reshape(-1, *src.shape[2:]), flat[:, cols].ravel(), axis=0, mode="clip",
                    out=dst.reshape(-1, *dst.shape[2:]))
            dst[~valid[:, cols]] = 0
        out["mem_mask"][lo:hi] = valid[:, :m]
    return out


def _to_model(a: np.ndarray) -> np.ndarray:
    """Rows in stored dtype (B,T,C,H,W) -> float32 model space: pixels frames/127.5 - 1, latents as stored."""
    if a.dtype == np.uint8:
        return pixels_to_unit(a)
    return a.astype(np.float32)                        # latents, already scaled


def collate(batch: dict) -> dict:
    """Numpy rows (stored dtype, model layout) -> dict of torch tensors as the module docstring lists; pads are
    exact zeros."""
    import torch

    mask_np = np.asarray(batch["mem_mask"], dtype=bool)
    mem_x = _to_model(batch["mem_x"])
    mem_x[~mask_np] = 0.0                              # padding is exact zeros in model space
    return {"mem_x": torch.from_numpy(mem_x),
            "mem_actions": torch.from_numpy(_writable(np.asarray(batch["mem_actions"], np.int64))),
            "mem_mask": torch.from_numpy(_writable(mask_np)), "x": torch.from_numpy(_to_model(batch["x"])),
            "actions": torch.from_numpy(_writable(np.asarray(batch["actions"], np.int64)))}


def _writable(a: np.ndarray) -> np.ndarray:
    """Ray hands out read-only arrays; torch wants writable memory (copy only then)."""
    a = np.ascontiguousarray(a)
    return a if a.flags.writeable else a.copy()


def ray_collate_fn():
    """`collate` wrapped as Ray's NumpyBatchCollateFn (a plain function is deprecated for iter_torch_batches in
    2.47+)."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class WindowCollate(NumpyBatchCollateFn):
        def __call__(self, batch: dict) -> dict:
            return collate(batch)

    return WindowCollate()


# ---------------------------------------------------------------------------------------------------------------
# Plain pyarrow path

class LocalWindowStream:
    """Batches of windows without Ray; endless over epochs unless `epochs` is given. Position = (epoch, index):
    the epoch and the index within it of the next sample this rank will deliver."""

    def __init__(self, data_dir: str | Path, spec: WindowSpec, rank: int = 0, world_size: int = 1,
                 epochs: int | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.data_dir, self.spec, self.epochs = str(data_dir), spec, epochs
        self.rank, self.world_size = rank, world_size
        self.shards = index_shards(data_dir)
        self.num_skipped_episodes = sum(s.num_rows for s in self.shards if s.length < spec.window)
        self.epoch, self.index = 0, 0                  # samples of this rank consumed in the current epoch
        self.cache = ShardCache()
        if not len(self._samples(0)):
            longest = max(s.length for s in self.shards)
            raise ValueError(f"{data_dir}: no episode has window={spec.window} frames (longest has {longest}); "
                             f"lower the window or collect longer episodes")

    def _samples(self, epoch: int) -> np.ndarray:
        return epoch_samples(self.shards, self.spec, epoch, self.rank, self.world_size)

    def samples_per_epoch(self) -> int:
        """Samples this rank delivers per epoch (the same for every epoch and rank)."""
        return len(self._samples(0))

    def __iter__(self):
        """Batches of B consecutive samples of the epochs' concatenated order: a batch may cross an epoch end
        (every batch is full; only the last one of a bounded stream may be short)."""
        batch_size, loaded, samples = self.spec.batch_size, None, None
        while self.epochs is None or self.epoch < self.epochs:
            parts, n = [], 0
            while n < batch_size and (self.epochs is None or self.epoch < self.epochs):
                if loaded != self.epoch:
                    samples, loaded = self._samples(self.epoch), self.epoch
                part = samples[self.index:self.index + batch_size - n]
                parts.append(part)
                n += len(part)
                self.index += len(part)
                if self.index >= len(samples):           # position always names the next sample
                    self.epoch, self.index = self.epoch + 1, 0
            if n:
                yield collate(make_windows(self.shards, np.concatenate(parts), self.spec, self.cache))

    def state_dict(self) -> dict:
        return position_state(self.spec, self.epoch, self.index) | {"rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; the sampling settings must match (the shares only where the state has them)."""
        for key in ("seed", "rank", "world_size", "revisit_share", "memory_dropout"):
            if key in ("revisit_share", "memory_dropout") and key not in state:
                continue                               # a state written before these options existed
            mine = getattr(self if key in ("rank", "world_size") else self.spec, key)
            if state[key] != mine:
                raise ValueError(f"window stream state has {key}={state[key]}, this stream has {mine}; "
                                 f"resume with the same settings")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


# ---------------------------------------------------------------------------------------------------------------
# Data position of a training run: a global sample index g over the concatenated epochs of the sample order
# (rank 0 of 1), stored as LocalWindowStream's state at (epoch g // n, index g % n). Both training backends save
# it, so a checkpoint of either resumes on the other; the Ray path starts its datasets at g.

def samples_per_epoch(data_dir: str | Path, spec: WindowSpec) -> int:
    """Samples per epoch of the whole order (rank 0 of 1): the same for every epoch."""
    return len(epoch_samples(index_shards(data_dir), spec, 0))


def position_state(spec: WindowSpec, epoch: int, index: int) -> dict:
    """LocalWindowStream(rank 0 of 1).state_dict() when its next sample is `index` of `epoch`."""
    return {"epoch": int(epoch), "index": int(index), "seed": spec.seed, "rank": 0, "world_size": 1,
            "batch_size": spec.batch_size, "revisit_share": spec.revisit_share, "memory_dropout": spec.memory_dropout}


def position_index(state: dict | None, n: int) -> int:
    """The global sample index g of a position state (None = the start), with n samples per epoch."""
    return 0 if not state else int(state["epoch"]) * n + int(state["index"])


# ---------------------------------------------------------------------------------------------------------------
# Ray Data path

def _chunks(samples: np.ndarray, max_chunk: int) -> np.ndarray:
    """(K+1,) boundaries splitting samples into runs of one shard, at most max_chunk long."""
    cuts = set(range(0, len(samples), max_chunk)) | set((np.flatnonzero(np.diff(samples[:, 0])) + 1).tolist())
    return np.array(sorted(cuts | {len(samples)}), np.int64)


def rank_batches(samples: np.ndarray, batch_size: int, rank: int, ranks: int) -> np.ndarray:
    """Worker `rank`'s samples when each step takes `ranks` consecutive batches of `batch_size`: batch k of the
    result is batch k * ranks + rank of `samples` (whole groups of `ranks` batches only, so every worker gets the
    same number of batches). ranks == 1 returns samples unchanged."""
    if not 0 <= rank < ranks:
        raise ValueError(f"rank must be in [0, {ranks}), got {rank}")
    if ranks == 1:
        return samples
    per_step = batch_size * ranks
    steps = len(samples) // per_step
    return samples[: steps * per_step].reshape(steps, ranks, batch_size, -1)[:, rank].reshape(steps * batch_size, -1)


_worker_cache: ShardCache | None = None               # one per Ray worker process, built on first use


def _window_chunks(batch: dict, shards, samples, bounds, spec) -> dict:
    """map_batches function over chunk ids: chunk k -> the window rows of samples[bounds[k]:bounds[k+1]]."""
    global _worker_cache
    if _worker_cache is None:
        _worker_cache = ShardCache()
    parts = [make_windows(shards, samples[bounds[k]:bounds[k + 1]], spec, _worker_cache) for k in batch["id"]]
    return parts[0] if len(parts) == 1 else {key: np.concatenate([p[key] for p in parts]) for key in BATCH_KEYS}


def ray_window_dataset(data_dir: str | Path, spec: WindowSpec, epoch: int = 0, start: int = 0, num_epochs: int = 1,
                       max_chunk: int = 256, num_cpus: float = 0.5):
    """Window rows of epochs epoch .. epoch+num_epochs-1 (in that order) from sample `start` of the first, as a
    Ray Data dataset: the same rows, in the same order, as LocalWindowStream from state (epoch, start).

    A deterministic function of (data, spec, epoch, start, num_epochs): a resumed run rebuilds it from its saved
    position. Order is preserved (preserve_order) so `iter_batches(batch_size=spec.batch_size)` gives the same
    batches as the local stream, across epoch ends too. Use num_epochs rather than `Dataset.union` of one-epoch
    datasets: union interleaves its inputs' blocks (measured here), which breaks the order.
    """
    return ray_rank_datasets(data_dir, spec, epoch, start, num_epochs, 1, max_chunk, num_cpus)[0]


def ray_rank_datasets(data_dir: str | Path, spec: WindowSpec, epoch: int = 0, start: int = 0, num_epochs: int = 1,
                      ranks: int = 1, max_chunk: int = 256, num_cpus: float = 0.5) -> list:
    """`ray_window_dataset`'s rows dealt to `ranks` data-parallel workers, one dataset each: when a training step
    takes `ranks` consecutive batches of spec.batch_size samples, worker r's dataset holds the r-th
    (`rank_batches`). Each worker reads a dataset fixed by its rank, instead of a streaming split whose
    block-to-worker assignment Ray makes at run time. The shards are indexed and the samples drawn once for all."""
    import ray
    from ray.data import DataContext

    shards = index_shards(data_dir)
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    samples = np.concatenate([epoch_samples(shards, spec, e) for e in range(epoch, epoch + num_epochs)])[start:]
    if not len(samples):
        raise ValueError(f"{data_dir}: no samples left in epoch {epoch} from start={start} (window={spec.window})")
    # A Dataset keeps a copy of the DataContext it was built under: order it without changing the caller's context.
    options = DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True
    try:
        datasets = []
        for rank in range(ranks):
            mine = rank_batches(samples, spec.batch_size, rank, ranks)
            bounds = _chunks(mine, max_chunk)
            datasets.append(ray.data.range(len(bounds) - 1, override_num_blocks=min(len(bounds) - 1, 64)).map_batches(
                _window_chunks, batch_size=1, batch_format="numpy", num_cpus=num_cpus,
                fn_kwargs=dict(shards=shards, samples=mine, bounds=bounds, spec=spec)))
        return datasets
    finally:
        options.preserve_order = before
