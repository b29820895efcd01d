"""Writing, finding, validating and quarantining Parquet shards; the manifest of finished shards.

A shard is written under a temporary name in its own folder, its footer re-read and checked, then renamed into
place with ``os.replace`` (atomic on POSIX). The manifest (``manifest.json``) lists finished shards with row
counts and SHA-256 checksums; a shard that is not in the manifest is not done, whatever lies on disk.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import BINARY_TENSORS, SCHEMA_VERSION, SchemaError, check_table, schema_version

MANIFEST = "manifest.json"
CONFIG = "config.json"
QUARANTINE = "quarantine"
# zstd level 3: chosen by bench/collect.py (level 1 vs 3 vs 9 on maze frames; see README "Shards").
ZSTD_LEVEL = 3


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(obj, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def writer_options(schema: pa.Schema, num_rows: int, zstd_level: int = ZSTD_LEVEL) -> dict:
    """pq.write_table keyword arguments for a shard of `schema` (deterministic: no timestamps, fixed settings)."""
    # One row group per shard: rows are whole episodes and readers read whole shards. Binary tensors (frames) are
    # one FIXED_LEN_BYTE_ARRAY value per episode: PLAIN, no dictionary, no statistics (a min/max would copy whole
    # episodes into the footer). fixed_shape_tensor columns are Parquet lists whose leaves widen to int32
    # (uint8/int16) or stay float; BYTE_STREAM_SPLIT (zero high bytes compress to nothing) beat dictionary
    # encoding there. Scalars keep dictionary encoding and statistics.
    tensors = [f.name for f in schema if isinstance(f.type, pa.FixedShapeTensorType)]
    binary = [f.name for f in schema if f.name in BINARY_TENSORS]
    scalars = [f.name for f in schema if f.name not in tensors and f.name not in binary]
    encoding = {f"{name}.list.element": "BYTE_STREAM_SPLIT" for name in tensors} | {name: "PLAIN" for name in binary}
    return dict(compression="zstd", compression_level=zstd_level, row_group_size=max(1, num_rows),
                use_dictionary=scalars, write_statistics=scalars, column_encoding=encoding)


def write_shard(table: pa.Table, path: Path, kind: str = "frames", zstd_level: int = ZSTD_LEVEL) -> dict:
    """Write `table` to `path` atomically; returns its manifest entry {rows, sha256, bytes}.

    The table is validated first, and the written footer is re-read before the rename, so a crash at any
    point leaves either no file or a complete one.
    """
    path = Path(path)
    problems = check_table(table, kind)
    if problems:
        raise SchemaError(f"{path}: refusing to write an invalid shard: " + "; ".join(map(str, problems)))
    if schema_version(table.schema) != SCHEMA_VERSION:
        raise SchemaError(f"{path}: refusing to write schema version {schema_version(table.schema)}; build the "
                          f"table with pipeline.schema.episodes_to_table (version {SCHEMA_VERSION})")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp, **writer_options(table.schema, table.num_rows, zstd_level))
    meta = pq.read_metadata(tmp)
    if meta.num_rows != table.num_rows:
        tmp.unlink(missing_ok=True)
        raise OSError(f"{path}: footer says {meta.num_rows} rows after writing {table.num_rows}")
    os.replace(tmp, path)
    return {"rows": table.num_rows, "sha256": sha256(path), "bytes": path.stat().st_size}


def read_shard(path: Path, kind: str = "frames", columns: list[str] | None = None) -> pa.Table:
    """Read and validate one shard; raises SchemaError naming the path and the column at fault."""
    path = Path(path)
    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for truncated files
        raise SchemaError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from e
    problems = check_table(schema, kind)
    if problems:
        raise SchemaError(f"{path}: " + "; ".join(map(str, problems)))
    try:
        return pq.read_table(path, columns=columns)
    except Exception as e:
        raise SchemaError(f"{path}: data pages unreadable ({type(e).__name__}: {e})") from e


def load_shard(path: Path, kind: str = "frames", expected_sha256: str | None = None) -> pa.Table:
    """The whole shard from one read of its bytes: schema contract, checksum (if given), every page decoded and
    the arrays validated. Raises SchemaError naming the path and what is wrong."""
    path = Path(path)
    try:
        data = pa.py_buffer(path.read_bytes())
        schema = pq.read_schema(pa.BufferReader(data))
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for truncated files
        raise SchemaError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from e
    problems = check_table(schema, kind)
    if problems:
        raise SchemaError(f"{path}: " + "; ".join(map(str, problems)))
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise SchemaError(f"{path}: checksum differs from the manifest")
    try:
        table = pq.read_table(pa.BufferReader(data))
        table.validate(full=True)
    except Exception as e:
        raise SchemaError(f"{path}: data pages unreadable ({type(e).__name__}: {e})") from e
    return table


def validate_shard(path: Path, kind: str = "frames", expected_sha256: str | None = None) -> str | None:
    """None when the shard is valid (schema, every page decodes, checksum if given), else the reason."""
    try:
        load_shard(path, kind, expected_sha256)
    except SchemaError as e:
        return str(e)
    return None


def quarantine(path: Path, reason: str) -> Path:
    """Move a bad shard to <its folder>/quarantine/ with a <name>.reason.txt beside it; returns the new path."""
    path = Path(path)
    qdir = path.parent / QUARANTINE
    qdir.mkdir(exist_ok=True)
    dest = qdir / path.name
    shutil.move(str(path), dest)
    (qdir / f"{path.name}.reason.txt").write_text(reason.rstrip() + "\n")
    return dest


class Manifest:
    """manifest.json of an output folder: shard name -> {rows, sha256, bytes}. Rewritten atomically on add."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST
        self.shards: dict[str, dict] = {}
        if self.path.exists():
            try:
                self.shards = json.loads(self.path.read_text())["shards"]
            except (json.JSONDecodeError, KeyError) as e:
                raise SchemaError(f"{self.path}: unreadable manifest ({e}); move it aside to rebuild") from e

    def is_done(self, name: str) -> bool:
        """A shard counts as done when it is listed and its file exists with the listed size."""
        entry = self.shards.get(name)
        p = self.folder / name
        return entry is not None and p.exists() and p.stat().st_size == entry["bytes"]

    def add(self, name: str, entry: dict) -> None:
        self.shards[name] = entry
        self.save()

    def remove(self, name: str) -> None:
        if self.shards.pop(name, None) is not None:
            self.save()

    def save(self) -> None:
        write_json_atomic({"shards": dict(sorted(self.shards.items()))}, self.path)

    def done_paths(self) -> list[Path]:
        return [self.folder / n for n in sorted(self.shards) if self.is_done(n)]

    @property
    def num_rows(self) -> int:
        return sum(e["rows"] for e in self.shards.values())


def check_config(folder: Path, config: dict, flag_hint: str = "--out") -> None:
    """Save `config` as config.json in `folder`, or, if one is there, insist it matches.

    Raises ValueError naming the differing fields so that a different run never overwrites shards.
    Fields that do not change the data (e.g. workers, address) must be left out of `config` by the caller.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), config.get(k)) for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k)}
        if diff:
            lines = ", ".join(f"{k}: folder has {a!r}, command asks {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{flag_hint} {folder} holds shards of a different config ({lines}); "
                             f"use another {flag_hint} folder or rerun with the same settings")
        return
    write_json_atomic(config, path)
