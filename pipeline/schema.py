"""The shard contract: column names, Arrow types and validation for episode and latent shards.

Every reader and writer of shards goes through this module (DESIGN.md, "Shards"). One Parquet row is one
episode. `to_numpy(table, column)` gives any array column as one (N, *shape) ndarray with pyarrow alone.

Array layouts (schema version 2):
- `frames` is a *binary tensor*: one fixed_size_binary value per episode holding the C-order bytes of its
  (T, H, W, 3) uint8 array, with the field metadata ``memvid.tensor = {"dtype": "uint8", "shape": [T, H, W, 3]}``.
  Without this module: ``np.frombuffer(col.combine_chunks().buffers()[1], "uint8").reshape(-1, T, H, W, 3)``.
  Parquet stores it as a FIXED_LEN_BYTE_ARRAY leaf: no per-byte list levels, no widening to int32, which made
  writing frames 3x and reading them 10x+ faster than a fixed_shape_tensor column at the same size (docs/collect.md).
- every other array column is Arrow's canonical ``arrow.fixed_shape_tensor`` extension type (per-row shape in
  the type; small next to frames, so the Parquet list encoding costs little there).
Version 1 shards (frames as a fixed_shape_tensor too) still read everywhere: `check_table` takes each shard's
layout from its ``memvid.schema_version`` metadata and `to_numpy` reads both. Only version 2 is written.

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

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)   # 1: frames as fixed_shape_tensor (before issue 15)
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
BINARY_TENSORS = ("frames",)  # columns stored as a binary tensor (module docstring); the rest are fixed_shape_tensor
TENSOR_METADATA = b"memvid.tensor"
KINDS = {"frames": ("frames",), "latents": ("latents",)}


class SchemaError(ValueError):
    """A shard (or table) does not follow the contract; the message names the file and column."""


@dataclass(frozen=True)
class Issue:
    column: str
    problem: str

    def __str__(self) -> str:
        return f"column '{self.column}': {self.problem}"


# Pixels in model space: uint8 level k <-> k / 127.5 - 1 in [-1, 1]. Every conversion goes through these two
# (encoders' frames_to_unit / unit_to_frames add the (N,H,W,3) <-> (N,3,H,W) layout).

def pixels_to_unit(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1], elementwise, any layout (into `out` when given)."""
    out = np.empty(a.shape, np.float32) if out is None else out
    # two contiguous ufunc passes: about 4x faster than a 256-entry lookup table (np.take), and the same float32
    # values as a / 127.5 - 1 (each step rounded to float32)
    np.divide(a, np.float32(127.5), out=out, dtype=np.float32)
    return np.subtract(out, np.float32(1.0), out=out)


def unit_to_pixels(x: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> uint8 pixels, elementwise, any layout: rounded to the nearest level, clipped."""
    return np.rint(np.clip((np.asarray(x, dtype=np.float32) + 1.0) * 127.5, 0.0, 255.0)).astype(np.uint8)


def tensor_type(dtype: np.dtype, shape: Sequence[int]) -> pa.DataType:
    """The Arrow fixed-shape tensor type for per-row arrays of `shape`."""
    return pa.fixed_shape_tensor(pa.from_numpy_dtype(np.dtype(dtype)), list(shape))


def tensor_column(stack: np.ndarray) -> pa.ExtensionArray:
    """(N, *shape) ndarray -> Arrow fixed-shape tensor array of N rows."""
    stack = np.ascontiguousarray(stack)
    return pa.FixedShapeTensorArray.from_numpy_ndarray(stack)


def binary_tensor_field(name: str, dtype: np.dtype, shape: Sequence[int]) -> pa.Field:
    """The field of a binary tensor column: fixed_size_binary of one row's bytes, dtype and shape in its metadata."""
    dtype = np.dtype(dtype)
    meta = json.dumps({"dtype": dtype.name, "shape": [int(d) for d in shape]}, separators=(",", ":"))
    return pa.field(name, pa.binary(dtype.itemsize * math.prod(shape)), nullable=False,
                    metadata={TENSOR_METADATA: meta.encode()})


def binary_tensor_column(stack: np.ndarray) -> pa.FixedSizeBinaryArray:
    """(N, *shape) ndarray -> N fixed_size_binary values, row n = stack[n]'s C-order bytes (no copy if contiguous)."""
    stack = np.ascontiguousarray(stack)
    width = stack.dtype.itemsize * math.prod(stack.shape[1:])
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(stack), [None, pa.py_buffer(stack)])


def _binary_meta(field: pa.Field) -> dict | None:
    """The field's memvid.tensor metadata {dtype, shape}; None when absent or not a JSON object."""
    try:
        meta = json.loads((field.metadata or {})[TENSOR_METADATA])
    except (KeyError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def tensor_shape(schema: pa.Schema, column: str) -> tuple[int, ...]:
    """Per-row shape of an array column, e.g. (T, H, W, 3) for frames, whichever layout the shard uses."""
    field = schema.field(column)
    if isinstance(field.type, pa.FixedShapeTensorType):
        return tuple(field.type.shape)
    meta = _binary_meta(field)
    if meta is None:
        raise SchemaError(f"column '{column}' has type {field.type} and no {TENSOR_METADATA.decode()} metadata: "
                          f"not an array column")
    return tuple(meta["shape"])


def to_numpy(table: pa.Table, column: str) -> np.ndarray:
    """An array column as one (N, *shape) ndarray; copy-free for a single chunk (read-only then)."""
    col = table.column(column)
    col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    if isinstance(col.type, pa.FixedShapeTensorType):
        return col.to_numpy_ndarray()
    meta = _binary_meta(table.schema.field(column))
    if meta is None or not pa.types.is_fixed_size_binary(col.type):
        raise SchemaError(f"column '{column}' has type {col.type}, expected a fixed_shape_tensor or a binary tensor")
    if col.null_count:
        raise SchemaError(f"column '{column}': {col.null_count} null rows")
    width = col.type.byte_width
    data = np.frombuffer(col.buffers()[1], np.uint8)[col.offset * width:(col.offset + len(col)) * width]
    return data.view(np.dtype(meta["dtype"])).reshape(len(col), *meta["shape"])


def episodes_to_table(rows: list[dict], kind: str = "frames") -> pa.Table:
    """Build a validated shard table from per-episode dicts holding every column of `kind`."""
    if not rows:
        raise ValueError("episodes_to_table: no rows")
    names = list(SCALAR_COLUMNS) + list(KINDS[kind]) + list(COMMON_TENSORS) + (["encoder"] if kind == "latents" else [])
    arrays, fields = [], []
    for name in names:
        if name in TENSOR_COLUMNS:
            stack = np.stack([np.asarray(r[name], dtype=TENSOR_COLUMNS[name]) for r in rows])
            if name in BINARY_TENSORS:
                arr, field = binary_tensor_column(stack), binary_tensor_field(name, stack.dtype, stack.shape[1:])
            else:
                arr = tensor_column(stack)
                field = pa.field(name, arr.type, nullable=False)
        else:
            arr = pa.array([r[name] for r in rows], type=SCALAR_COLUMNS.get(name, pa.string()))
            field = pa.field(name, arr.type, nullable=False)
        arrays.append(arr)
        fields.append(field)
    schema = pa.schema(fields, metadata={b"memvid.schema_version": str(SCHEMA_VERSION).encode(),
                                         b"memvid.kind": kind.encode()})
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
    version = schema_version(schema)
    if version not in READABLE_VERSIONS:
        return [Issue("memvid.schema_version", f"{version} is not one this code reads {READABLE_VERSIONS}; "
                                               f"update the code to read it")]
    issues: list[Issue] = []
    required = (list(SCALAR_COLUMNS) + list(KINDS[kind]) + list(COMMON_TENSORS)
                + (["encoder"] if kind == "latents" else []))
    lengths = {}
    for name in required:
        idx = schema.get_field_index(name)
        if idx < 0:
            issues.append(Issue(name, "missing"))
            continue
        typ = schema.field(idx).type
        if name in BINARY_TENSORS and version >= 2:
            problem, shape = _check_binary(schema.field(idx), TENSOR_COLUMNS[name])
            if problem:
                issues.append(Issue(name, problem))
            else:
                lengths[name] = shape
        elif name in TENSOR_COLUMNS:
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


def schema_version(schema: pa.Schema) -> int:
    """The `memvid.schema_version` a shard was written with (1 when absent; -1 when not an integer)."""
    raw = (schema.metadata or {}).get(b"memvid.schema_version", b"1")
    try:
        return int(raw)
    except ValueError:
        return -1


def _check_binary(field: pa.Field, dtype: np.dtype) -> tuple[str | None, list[int]]:
    """(problem or None, shape) of a binary tensor field."""
    meta = _binary_meta(field)
    if not pa.types.is_fixed_size_binary(field.type) or meta is None:
        return (f"type {field.type}, expected fixed_size_binary with {TENSOR_METADATA.decode()} metadata "
                f"(schema version {SCHEMA_VERSION})"), []
    shape = [int(d) for d in meta.get("shape", [])]
    if meta.get("dtype") != dtype.name:
        return f"dtype {meta.get('dtype')}, expected {dtype.name}", shape
    if field.type.byte_width != dtype.itemsize * math.prod(shape):
        return f"{field.type.byte_width} bytes per row, but shape {shape} of {dtype.name} needs " \
               f"{dtype.itemsize * math.prod(shape)}", shape
    return None, shape


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
