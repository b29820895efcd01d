"""The shard contract: column names, Arrow types and validation for episode and latent shards.

Every reader and writer of shards goes through this module (DESIGN.md, "Shards"). One Parquet row is one
episode. Array columns are Arrow's canonical ``arrow.fixed_shape_tensor`` extension type, so pyarrow alone
reads them back as ndarrays (``column.combine_chunks().to_numpy_ndarray()``) and Ray Data reads them as tensors.

Columns (T frames per episode, S scene labels per frame):
    episode_id   string   unique: "<env>-s<seed>-e<index>"
    env          string   "maze" | "dmlab" | "minecraft" | imported dataset name
    agent        string   policy that chose the actions ("explore", "revisit", "teco-dmlab", ...)
    seed         int64    run seed; the episode was drawn from numpy.random.default_rng([seed, episode_index])
    episode_index int64   index of the episode within its run
    frames       uint8    (T, H, W, 3)            [episode shards]
    latents      float16  (T, C, h, w)            [latent shards, instead of frames]
    encoder      string   JSON {name, version, scale, shift, latent_shape}   [latent shards]
    actions      int64    (T,)   actions[t] is the action taken AFTER frame t
    poses        float32  (T, 5) x, y, z, pitch, yaw in the env's units (see the env's docstring)
    scene        int16    (T, S) scene labels (SCENE_LABELS); -1 where unknown
    revisit_gap  int32    (T,)   frames since this frame's scene was last seen by a revisit agent; -1 if not a revisit
    fps          float32  frames per second of the recording
    env_config   string   JSON of the env settings that produced the episode
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1
SCENE_LABELS = ("room", "floor_texture", "wall_texture", "painting")
NUM_POSE = 5

SCALAR_COLUMNS: dict[str, pa.DataType] = {
    "episode_id": pa.string(),
    "env": pa.string(),
    "agent": pa.string(),
    "seed": pa.int64(),
    "episode_index": pa.int64(),
    "fps": pa.float32(),
    "env_config": pa.string(),
}
# tensor column -> numpy dtype of its elements (shapes are checked in _check_shapes)
TENSOR_COLUMNS: dict[str, np.dtype] = {
    "frames": np.dtype(np.uint8),
    "latents": np.dtype(np.float16),
    "actions": np.dtype(np.int64),
    "poses": np.dtype(np.float32),
    "scene": np.dtype(np.int16),
    "revisit_gap": np.dtype(np.int32),
}
COMMON_TENSORS = ("actions", "poses", "scene", "revisit_gap")
KINDS = {"frames": ("frames",), "latents": ("latents",)}


class SchemaError(ValueError):
    """A shard (or table) does not follow the contract; the message names the file and column."""


@dataclass(frozen=True)
class Issue:
    column: str
    problem: str

    def __str__(self) -> str:
        return f"column '{self.column}': {self.problem}"


def tensor_type(dtype: np.dtype, shape: Sequence[int]) -> pa.DataType:
    """The Arrow fixed-shape tensor type for per-row arrays of `shape`."""
    return pa.fixed_shape_tensor(pa.from_numpy_dtype(np.dtype(dtype)), list(shape))


def tensor_column(stack: np.ndarray) -> pa.ExtensionArray:
    """(N, *shape) ndarray -> Arrow fixed-shape tensor array of N rows."""
    stack = np.ascontiguousarray(stack)
    return pa.FixedShapeTensorArray.from_numpy_ndarray(stack)


def to_numpy(table: pa.Table, column: str) -> np.ndarray:
    """A tensor column as one (N, *shape) ndarray (copy-free where Arrow allows)."""
    col = table.column(column).combine_chunks()
    if isinstance(col.type, pa.FixedShapeTensorType):
        return col.to_numpy_ndarray()
    raise SchemaError(f"column '{column}' has type {col.type}, expected a fixed_shape_tensor")


def episodes_to_table(rows: list[dict], kind: str = "frames") -> pa.Table:
    """Build a validated shard table from per-episode dicts holding every column of `kind`."""
    if not rows:
        raise ValueError("episodes_to_table: no rows")
    names = list(SCALAR_COLUMNS) + list(KINDS[kind]) + list(COMMON_TENSORS) + (["encoder"] if kind == "latents" else [])
    arrays, fields = [], []
    for name in names:
        if name in TENSOR_COLUMNS:
            stack = np.stack([np.asarray(r[name], dtype=TENSOR_COLUMNS[name]) for r in rows])
            arr = tensor_column(stack)
        else:
            dtype = SCALAR_COLUMNS.get(name, pa.string())
            arr = pa.array([r[name] for r in rows], type=dtype)
        arrays.append(arr)
        fields.append(pa.field(name, arr.type, nullable=False))
    schema = pa.schema(fields, metadata={b"memvid.schema_version": str(SCHEMA_VERSION).encode(), b"memvid.kind": kind.encode()})
    table = pa.Table.from_arrays(arrays, schema=schema)
    problems = check_table(table, kind)
    if problems:
        raise SchemaError("; ".join(map(str, problems)))
    return table


def check_table(table: pa.Table | pa.Schema, kind: str = "frames") -> list[Issue]:
    """Every way `table` (or a schema) breaks the contract for `kind`; empty when it is valid."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    schema = table if isinstance(table, pa.Schema) else table.schema
    issues: list[Issue] = []
    required = list(SCALAR_COLUMNS) + list(KINDS[kind]) + list(COMMON_TENSORS) + (["encoder"] if kind == "latents" else [])
    lengths = {}
    for name in required:
        idx = schema.get_field_index(name)
        if idx < 0:
            issues.append(Issue(name, "missing"))
            continue
        typ = schema.field(idx).type
        if name in TENSOR_COLUMNS:
            if not isinstance(typ, pa.FixedShapeTensorType):
                issues.append(Issue(name, f"type {typ}, expected fixed_shape_tensor<{TENSOR_COLUMNS[name]}>"))
                continue
            if typ.value_type != pa.from_numpy_dtype(TENSOR_COLUMNS[name]):
                issues.append(Issue(name, f"dtype {typ.value_type}, expected {TENSOR_COLUMNS[name]}"))
            lengths[name] = list(typ.shape)
        elif typ != SCALAR_COLUMNS.get(name, pa.string()):
            issues.append(Issue(name, f"type {typ}, expected {SCALAR_COLUMNS.get(name, pa.string())}"))
    issues += _check_shapes(lengths, kind)
    return issues


def _check_shapes(shapes: dict[str, list[int]], kind: str) -> list[Issue]:
    expected_ndim = {"frames": 4, "latents": 4, "actions": (1, 2), "poses": 2, "scene": 2, "revisit_gap": 1}
    issues = []
    for name, shape in shapes.items():
        ndim = expected_ndim[name]
        if len(shape) not in (ndim if isinstance(ndim, tuple) else (ndim,)):
            issues.append(Issue(name, f"shape {shape} has {len(shape)} dims, expected {ndim}"))
    if "frames" in shapes and len(shapes["frames"]) == 4 and shapes["frames"][3] != 3:
        issues.append(Issue("frames", f"shape {shapes['frames']}, expected (T, H, W, 3)"))
    if "poses" in shapes and shapes["poses"][-1:] != [NUM_POSE]:
        issues.append(Issue("poses", f"shape {shapes['poses']}, expected (T, {NUM_POSE})"))
    if "scene" in shapes and shapes["scene"][-1:] != [len(SCENE_LABELS)]:
        issues.append(Issue("scene", f"shape {shapes['scene']}, expected (T, {len(SCENE_LABELS)})"))
    lengths = {name: shape[0] for name, shape in shapes.items() if shape}
    if len(set(lengths.values())) > 1:
        issues.append(Issue("frames", f"columns disagree on the number of frames T: {lengths}"))
    return issues
