"""Training samples from frame or latent shards: memory (m frames before the window) + current window (w frames).

    spec = WindowSpec(memory_length=16, window=8, batch_size=4, seed=0)
    stream = LocalWindowStream("data/maze", spec)             # no Ray: plain pyarrow, rank/world_size sharding
    for batch in stream: ...                                   # dict of torch tensors (see collate)
    state = stream.state_dict(); stream.load_state_dict(state) # resume: the next batches are the ones that would come
    ds = ray_window_dataset("data/maze", spec, epoch=0, start=0, num_epochs=2)  # same rows with Ray Data
    for batch in ds.iter_torch_batches(batch_size=spec.batch_size, collate_fn=ray_collate_fn()): ...

Sampling (one function, `epoch_samples`, serves both paths). For epoch e a generator default_rng([seed, e])
permutes the shards, and within each shard draws `samples_per_episode` window offsets t0 per episode uniformly
in [min(m, T - w), T - w] and permutes them. So a sample has full memory whenever its episode is long enough
(T >= m + w); in shorter episodes memory is left-padded: zeros with mem_mask False. Episodes with T < w give
no samples and are counted in `num_skipped_episodes`. Shards are visited one at a time (a 2-shard cache), so a
big dataset never sits in memory at once. Rank r of world_size takes every world_size-th sample of the epoch
list (truncated to a multiple of world_size, so every rank gets the same number of batches).

Batch (collate): mem_x float32 (B,M,C,H,W), mem_actions int64 (B,M), mem_mask bool (B,M), x float32 (B,w,C,H,W),
actions int64 (B,w). Pixel shards become frames/127.5 - 1; latent shards are used as stored (already scaled).
Rows travel in their stored dtype (uint8 frames or float16 latents) and are converted in collate.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.schema import SchemaError, check_table, to_numpy
from pipeline.shards import Manifest

BATCH_KEYS = ("mem_x", "mem_actions", "mem_mask", "x", "actions")
_PIXEL_TO_UNIT = np.arange(256, dtype=np.float32) / 127.5 - 1.0  # uint8 level -> [-1, 1]


@dataclass(frozen=True)
class WindowSpec:
    memory_length: int          # m: frames of memory before the window (paper: 16, 48, 112)
    window: int                 # w: frames in the current window (paper: Delta = w = 16)
    batch_size: int             # samples per batch
    seed: int                   # sample offsets come from default_rng([seed, epoch])
    samples_per_episode: int = 0  # windows drawn per episode per epoch; 0 = T // w

    def __post_init__(self):
        if self.memory_length < 0 or self.window < 1 or self.batch_size < 1:
            raise ValueError(f"WindowSpec needs memory_length >= 0, window >= 1, batch_size >= 1; got {self}")


@dataclass(frozen=True)
class ShardInfo:
    path: str
    column: str                 # "frames" | "latents"
    num_rows: int
    length: int                 # T of every episode in this shard (fixed-shape tensor columns)


def index_shards(data_dir: str | Path) -> list[ShardInfo]:
    """Every finished shard of a folder (manifest order, or shard-*.parquet when there is no manifest)."""
    folder = Path(data_dir)
    paths = Manifest(folder).done_paths() if (folder / "manifest.json").exists() else sorted(folder.glob("shard-*.parquet"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no shards; run pipeline.collect (frames) or pipeline.encode (latents) first")
    infos = []
    for p in paths:
        schema = pq.read_schema(p)
        column = "latents" if "latents" in schema.names else "frames"
        problems = check_table(schema, column)
        if problems:
            raise SchemaError(f"{p}: " + "; ".join(map(str, problems)) + " (validate it with pipeline.encode or move it aside)")
        infos.append(ShardInfo(str(p), column, pq.read_metadata(p).num_rows, int(schema.field("actions").type.shape[0])))
    return infos


def epoch_samples(shards: list[ShardInfo], spec: WindowSpec, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """(N, 3) int64 rows [shard index, row, t0] of this rank's samples in epoch order."""
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
        part = np.stack([np.full(len(rows), si), rows, t0], 1)
        parts.append(part[rng.permutation(len(rows))])
    samples = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)
    samples = samples[: len(samples) - len(samples) % world_size]
    return samples[rank::world_size].astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Window extraction (the one piece of window code both paths run)

class ShardCache:
    """The last `max_shards` shards read, as (data (N,T,...) stored dtype, actions (N,T))."""

    def __init__(self, max_shards: int = 2):
        self.max_shards = max_shards
        self.items: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def get(self, info: ShardInfo) -> tuple[np.ndarray, np.ndarray]:
        if info.path in self.items:
            self.items.move_to_end(info.path)
            return self.items[info.path]
        table = pq.read_table(info.path, columns=[info.column, "actions"])
        arrays = (to_numpy(table, info.column), to_numpy(table, "actions"))
        self.items[info.path] = arrays
        while len(self.items) > self.max_shards:
            self.items.popitem(last=False)
        return arrays


def make_windows(shards: list[ShardInfo], samples: np.ndarray, spec: WindowSpec, cache: ShardCache) -> dict:
    """Rows for `samples` (N,3) in order: dict of numpy, data in stored dtype (see the module docstring)."""
    m, w = spec.memory_length, spec.window
    out: dict[str, list] = {k: [] for k in BATCH_KEYS}
    bounds = np.flatnonzero(np.diff(samples[:, 0])) + 1
    for run in np.split(samples, bounds):              # consecutive samples of one shard
        if not len(run):
            continue
        data, actions = cache.get(shards[run[0, 0]])
        idx = run[:, 2:3] + np.arange(-m, w)[None]     # (n, m+w) frame indices, negative = padding
        valid = idx >= 0
        safe = np.maximum(idx, 0)
        frames = data[run[:, 1:2], safe]               # (n, m+w, *frame)
        acts = np.where(valid, actions[run[:, 1:2], safe], 0)
        frames[~valid] = 0
        out["mem_x"].append(frames[:, :m]); out["x"].append(frames[:, m:])
        out["mem_actions"].append(acts[:, :m]); out["actions"].append(acts[:, m:])
        out["mem_mask"].append(valid[:, :m])
    return {k: np.concatenate(v) for k, v in out.items()}


def collate(batch: dict) -> dict:
    """Numpy rows (stored dtype) -> dict of torch tensors as the module docstring lists; pads are exact zeros."""
    import torch

    def to_model(a: np.ndarray) -> np.ndarray:
        if a.dtype == np.uint8:                        # pixels (B,T,H,W,3) -> (B,T,3,H,W) in [-1,1]
            # one gather pass through a 256-entry table: about 8x faster than torch's strided float/div/sub here
            return np.take(_PIXEL_TO_UNIT, a.transpose(0, 1, 4, 2, 3))
        return a.astype(np.float32)                    # latents (B,T,C,h,w), already scaled

    mask_np = np.asarray(batch["mem_mask"], dtype=bool)
    mem_x = to_model(batch["mem_x"])
    mem_x[~mask_np] = 0.0                              # padding is exact zeros in model space
    return {"mem_x": torch.from_numpy(mem_x),
            "mem_actions": torch.from_numpy(_writable(np.asarray(batch["mem_actions"], np.int64))),
            "mem_mask": torch.from_numpy(_writable(mask_np)), "x": torch.from_numpy(to_model(batch["x"])),
            "actions": torch.from_numpy(_writable(np.asarray(batch["actions"], np.int64)))}


def _writable(a: np.ndarray) -> np.ndarray:
    """Ray hands out read-only arrays; torch wants writable memory (copy only then)."""
    a = np.ascontiguousarray(a)
    return a if a.flags.writeable else a.copy()


def ray_collate_fn():
    """`collate` wrapped as Ray's NumpyBatchCollateFn (a plain function is deprecated for iter_torch_batches in 2.47+)."""
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
        self.data_dir, self.spec, self.rank, self.world_size, self.epochs = str(data_dir), spec, rank, world_size, epochs
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
        return {"epoch": self.epoch, "index": self.index, "seed": self.spec.seed, "rank": self.rank,
                "world_size": self.world_size, "batch_size": self.spec.batch_size}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "rank", "world_size"):
            if state[key] != getattr(self.spec if key == "seed" else self, key):
                raise ValueError(f"window stream state has {key}={state[key]}, this stream has "
                                 f"{getattr(self.spec if key == 'seed' else self, key)}; resume with the same settings")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


# ---------------------------------------------------------------------------------------------------------------
# Ray Data path

def _chunks(samples: np.ndarray, max_chunk: int) -> np.ndarray:
    """(K+1,) boundaries splitting samples into runs of one shard, at most max_chunk long."""
    cuts = set(range(0, len(samples), max_chunk)) | set((np.flatnonzero(np.diff(samples[:, 0])) + 1).tolist())
    return np.array(sorted(cuts | {len(samples)}), np.int64)


_worker_cache: ShardCache | None = None               # one per Ray worker process, built on first use


def _window_chunks(batch: dict, shards, samples, bounds, spec) -> dict:
    """map_batches function over chunk ids: chunk k -> the window rows of samples[bounds[k]:bounds[k+1]]."""
    global _worker_cache
    if _worker_cache is None:
        _worker_cache = ShardCache()
    parts = [make_windows(shards, samples[bounds[k]:bounds[k + 1]], spec, _worker_cache) for k in batch["id"]]
    return {key: np.concatenate([p[key] for p in parts]) for key in BATCH_KEYS}


def ray_window_dataset(data_dir: str | Path, spec: WindowSpec, epoch: int = 0, start: int = 0, rank: int = 0,
                       world_size: int = 1, num_epochs: int = 1, max_chunk: int = 256, num_cpus: float = 0.5):
    """Window rows of epochs epoch .. epoch+num_epochs-1 (in that order) from sample `start` of the first, as a
    Ray Data dataset: the same rows, in the same order, as LocalWindowStream from state (epoch, start).

    A deterministic function of (data, spec, epoch, start, num_epochs): a resumed run rebuilds it from its saved
    position. Order is preserved (preserve_order) so `iter_batches(batch_size=spec.batch_size)` gives the same
    batches as the local stream, across epoch ends too. Use num_epochs rather than `Dataset.union` of one-epoch
    datasets: union interleaves its inputs' blocks (measured here), which breaks the order.
    """
    import ray
    from ray.data import DataContext

    shards = index_shards(data_dir)
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    samples = np.concatenate([epoch_samples(shards, spec, e, rank, world_size)
                              for e in range(epoch, epoch + num_epochs)])[start:]
    if not len(samples):
        raise ValueError(f"{data_dir}: no samples left in epoch {epoch} from start={start} (window={spec.window})")
    bounds = _chunks(samples, max_chunk)
    # A Dataset keeps a copy of the DataContext it was built under: order it without changing the caller's context.
    options = DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True
    try:
        return ray.data.range(len(bounds) - 1, override_num_blocks=min(len(bounds) - 1, 64)).map_batches(
            _window_chunks, batch_size=1, batch_format="numpy", num_cpus=num_cpus,
            fn_kwargs=dict(shards=shards, samples=samples, bounds=bounds, spec=spec))
    finally:
        options.preserve_order = before
