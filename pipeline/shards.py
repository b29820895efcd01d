"""Writing, finding, validating and quarantining Parquet shards; the manifest of finished shards.

A shard is written under a temporary name in its own folder, its footer re-read and checked, then renamed into
place with ``os.replace`` (atomic on POSIX). The manifest (``manifest.json``) lists finished shards with row
counts and SHA-256 checksums; a shard that is not in the manifest is not done, whatever lies on disk.

Each shard also vouches for itself: `write_shard` puts the SHA-256 of every row's values (`row_checksums`) in
the footer's key-value metadata (``memvid.row_sha256``), so a shard is checked against its own footer even when
no manifest lists it. `load_shard` is the one validation path (inspect, encode, windows, eval_cases): footer and
schema, the manifest's SHA-256 when given, every page decoded, the row checksums when present, and latents
finite. A shard with neither checksum (written before row checksums, and unlisted) is refused, naming the fix.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import (
    BINARY_TENSORS,
    SCALAR_COLUMNS,
    SCHEMA_VERSION,
    TENSOR_COLUMNS,
    SchemaError,
    check_table,
    schema_version,
    to_numpy,
)

MANIFEST = "manifest.json"
CONFIG = "config.json"
QUARANTINE = "quarantine"
ROW_SHA256 = b"memvid.row_sha256"        # footer key: JSON list, the row_checksums of the shard's rows in order
CHECKSUMMED_COLUMNS = frozenset(SCALAR_COLUMNS) | frozenset(TENSOR_COLUMNS) | {"encoder"}
NO_CHECKSUM_HINT = ("rerun the command that wrote it (pipeline.collect, pipeline.ingest or pipeline.encode with the "
                    "same --out-dir) to rewrite it with row checksums, or restore the folder's manifest.json")
# zstd level 3: chosen by bench/collect.py (level 1 vs 3 vs 9 on maze frames; see README "Shards").
ZSTD_LEVEL = 3


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(obj, path: Path) -> None:
    """Write `obj` as JSON through a temp file and a rename; on failure the temp file is removed and the OSError
    names `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write: {_cause(e)}", str(path)) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_partials(folder: Path) -> list[Path]:
    """Delete the temp files (``.<name>.tmp<pid>``) that a process killed mid-write left in `folder`; never a
    finished file, since those are renamed into place. Returns what was removed."""
    stale = sorted(Path(folder).glob(".*.tmp[0-9]*"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _cause(e: OSError) -> str:
    """The OS's words for an error (pyarrow wraps them: 'Error writing bytes to file. Detail: [errno 28] ...')."""
    text = e.strerror or str(e)
    return text.split("Detail: ")[-1].split("] ", 1)[-1] if "Detail: " in text else text


def describe_os_error(e: OSError) -> str:
    """One line for a disk or permission error: the path, the cause, and what to do."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    if e.filename is None and len(lines) > 1:             # wrapped by Ray: the cause is the last line
        return lines[-1].strip()
    writable = "make it writable or choose another folder"
    hint = {errno.ENOSPC: "free space there or choose another folder", errno.EACCES: writable, errno.EPERM: writable,
            errno.EFBIG: "over the file size limit (ulimit -f) or the file system's; raise it or choose another folder",
            errno.EROFS: "the file system is read-only; choose another folder"}.get(e.errno, "")
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{_cause(e)}" + (f" ({hint})" if hint else "")


def error_line(e: BaseException) -> str:
    """One line for any error: its type and message, and for a multi-line message (a Ray task error carries the
    remote traceback) the first line and the last, where the cause is."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    text = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
    return f"{type(e).__name__}: {text}"


def row_checksums(table: pa.Table) -> list[str]:
    """SHA-256 (hex) of each row's values: the contract columns present, in name order; arrays as their C-order
    bytes (the same for either frames layout), other values as JSON. Columns outside the contract are ignored."""
    hashes = [hashlib.sha256() for _ in range(table.num_rows)]
    for name in sorted(CHECKSUMMED_COLUMNS.intersection(table.column_names)):
        if name in TENSOR_COLUMNS:
            for h, value in zip(hashes, to_numpy(table, name)):          # (N, *shape) -> one row each
                h.update(f"{name}{value.shape}{value.dtype}".encode())
                h.update(np.ascontiguousarray(value))
        else:
            for h, value in zip(hashes, table.column(name).to_pylist()):
                h.update(f"{name}={json.dumps(value)}".encode())
    return [h.hexdigest() for h in hashes]


def footer_checksums(metadata: dict | None) -> list[str] | None:
    """The row checksums a shard's footer holds (schema or file key-value metadata); None for a shard written
    before they existed."""
    raw = (metadata or {}).get(ROW_SHA256)
    if raw is None:
        return None
    try:
        sums = json.loads(raw)
    except ValueError:
        return []                                        # unreadable: matches no row count, so it is reported
    return sums if isinstance(sums, list) else []


def content_problem(table: pa.Table, expected: list[str] | None) -> str | None:
    """What is wrong with a decoded shard's values, naming the episode: rows that differ from the footer's row
    checksums (when given), or latents that are not finite. None when nothing is."""
    if expected is not None:
        if len(expected) != table.num_rows:
            return f"its footer lists {len(expected)} row checksums for {table.num_rows} rows"
        bad = [r for r, (a, b) in enumerate(zip(row_checksums(table), expected)) if a != b]
        if bad:
            return (f"content checksum of episode {table.column('episode_id')[bad[0]].as_py()} (row {bad[0]}) differs "
                    f"from the one written in its footer ({len(bad)} of {table.num_rows} rows differ): the file is "
                    f"damaged")
    if "latents" in table.column_names:
        z = to_numpy(table, "latents")                                   # (N,T,C,h,w)
        counts = (~np.isfinite(z)).reshape(len(z), -1).sum(1)
        rows = np.flatnonzero(counts)
        if len(rows):
            r = int(rows[0])
            more = f"; {len(rows)} episodes have some" if len(rows) > 1 else ""
            return (f"episode {table.column('episode_id')[r].as_py()} (row {r}) has {int(counts[r])} NaN or infinite "
                    f"latent values{more}")
    return None


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
    problem = content_problem(table, None)
    if problem:
        raise SchemaError(f"{path}: refusing to write non-finite latents: {problem}")
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           ROW_SHA256: json.dumps(row_checksums(table)).encode()})
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        pq.write_table(table, tmp, **writer_options(table.schema, table.num_rows, zstd_level))
        meta = pq.read_metadata(tmp)
        if meta.num_rows != table.num_rows:
            raise OSError(errno.EIO, f"footer says {meta.num_rows} rows after writing {table.num_rows}", str(path))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)                      # never leave a partial file behind
        raise OSError(e.errno, f"cannot write shard: {_cause(e)}", str(path)) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
    """The whole shard from one read of its bytes: schema contract, the manifest's checksum (if given), every
    page decoded, the arrays validated, the footer's row checksums (if present) and latents finite. Raises
    SchemaError naming the path and what is wrong (the episode, for a bad row); also when the shard has neither
    checksum, since nothing could then tell a damaged file from a good one."""
    path = Path(path)
    try:
        data = pa.py_buffer(path.read_bytes())
        schema = pq.read_schema(pa.BufferReader(data))
    except FileNotFoundError as e:
        raise SchemaError(f"{path}: missing") from e
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for truncated files
        raise SchemaError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from e
    problems = check_table(schema, kind)
    if problems:
        raise SchemaError(f"{path}: " + "; ".join(map(str, problems)))
    expected_rows = footer_checksums(schema.metadata)
    if expected_sha256 is None and expected_rows is None:
        raise SchemaError(f"{path}: no checksum to verify it against (written before shards carried row checksums, "
                          f"and no manifest.json lists it); {NO_CHECKSUM_HINT}")
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise SchemaError(f"{path}: checksum differs from the manifest")
    try:
        table = pq.read_table(pa.BufferReader(data))
        table.validate(full=True)
    except Exception as e:
        raise SchemaError(f"{path}: data pages unreadable ({type(e).__name__}: {e})") from e
    # Bytes equal to the manifest's SHA-256 are the bytes the writer wrote, whose footer it filled from the same
    # rows: recomputing the row checksums would prove nothing more (and costs as much as the read, every epoch).
    problem = content_problem(table, None if expected_sha256 is not None else expected_rows)
    if problem:
        raise SchemaError(f"{path}: {problem}")
    return table


def validate_shard(path: Path, kind: str = "frames", expected_sha256: str | None = None) -> str | None:
    """None when the shard is valid (schema, every page decodes, checksum if given), else the reason."""
    try:
        load_shard(path, kind, expected_sha256)
    except SchemaError as e:
        return str(e)
    return None


def quarantine(path: Path, reason: str, manifest: Manifest | None = None) -> Path:
    """Drop a bad shard from its folder's manifest (`manifest`, or the one on disk), so no tool counts it as
    done, and move it to <its folder>/quarantine/ with a <name>.reason.txt beside it; returns the new path.
    Raises OSError (naming the path) when the folder cannot be written."""
    path = Path(path)
    (manifest or Manifest(path.parent)).remove(path.name)
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

    def listed_paths(self) -> list[Path]:
        """Every shard the manifest lists, in name order. Raises SchemaError naming each one that is missing or
        whose size differs from its entry (truncated or replaced), so a reader never skips one silently."""
        problems = []
        for name, entry in sorted(self.shards.items()):
            p = self.folder / name
            if not p.exists():
                problems.append(f"{p}: listed in {MANIFEST} but missing")
            elif p.stat().st_size != entry["bytes"]:
                problems.append(f"{p}: {p.stat().st_size} bytes on disk, {MANIFEST} lists {entry['bytes']} bytes "
                                f"(truncated or replaced)")
        if problems:
            raise SchemaError("; ".join(problems) + f"; run `python -m pipeline.inspect {self.folder}` to move bad "
                                                    f"shards aside, then rerun the command that wrote the folder")
        return [self.folder / n for n in sorted(self.shards)]

    @property
    def num_rows(self) -> int:
        return sum(e["rows"] for e in self.shards.values())


SHARD_GLOB = "shard-*.parquet"


def finished_shards(folder: str | Path) -> list[Path]:
    """The shards of a folder a reader uses, in name order: every one its manifest lists (raising SchemaError
    naming any that is missing or resized, so none is skipped silently), or every shard-*.parquet when the
    folder has no manifest. Empty when there are none."""
    folder = Path(folder)
    if (folder / MANIFEST).exists():
        return Manifest(folder).listed_paths()
    return sorted(p for p in folder.glob(SHARD_GLOB) if p.is_file())


def shard_kind(schema: pa.Schema) -> str:
    """'frames' or 'latents' from a shard's schema metadata `memvid.kind`; older files: read off the columns."""
    kind = (schema.metadata or {}).get(b"memvid.kind", b"").decode()
    if kind in ("frames", "latents"):
        return kind
    return "latents" if "latents" in schema.names else "frames"


def check_config(folder: Path, config: dict, flag_hint: str = "--out-dir", ignore: tuple[str, ...] = ()) -> None:
    """Save `config` as config.json in `folder`, or, if one is there, insist it matches.

    Raises ValueError naming the differing fields so that a different run never overwrites shards.
    Fields that do not change the data (e.g. workers, address) must be left out of `config` by the caller;
    `ignore` names keys an older version saved that no longer count.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG
    if path.exists():
        old = {k: v for k, v in json.loads(path.read_text()).items() if k not in ignore}
        diff = {k: (old.get(k), config.get(k)) for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k)}
        if diff:
            lines = ", ".join(f"{k}: folder has {a!r}, command asks {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{flag_hint} {folder} holds shards of a different config ({lines}); "
                             f"use another {flag_hint} folder or rerun with the same settings")
        return
    write_json_atomic(config, path)
