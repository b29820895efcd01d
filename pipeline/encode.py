"""Encode episode shards into latent shards: Ray Data read_parquet -> map_batches(encoder actor pool) -> shards.

    python -m pipeline.encode --in-dir data/maze --out-dir data/maze-px --encoder identity  # laptop, local Ray
    python -m pipeline.encode --in-dir data/mc --out-dir data/mc-sd3 --encoder vae --vae-path weights/sd3-vae \\
        --workers 4 --gpus-per-worker 1 --address auto                                      # cluster, GPU actors
    python -m pipeline.encode --in-dir data/maze --out-dir data/maze-px --backend local     # no Ray at all

Output shard i is the encoding of input shard i (same file name, same rows in the same order) with `latents`
(float16 (T, C, h, w)) instead of `frames` and an `encoder` JSON column. Shards are written from the driver with
`pipeline.shards.write_shard(kind="latents")` (atomic) and listed in `<out>/manifest.json`; rerunning the same
command skips shards already listed, so a killed run resumes. Ray's `write_parquet` is not used (it has dropped
rows with mode="overwrite": ray #55043).

Each input shard is read once. The driver first checks every footer (schema contract, and rows and bytes against
the input manifest); Ray infers the schema from the first file only (ray #47960), so shards of different layouts
(schema versions 1 and 2) go through one Ray dataset each. The local backend then reads each shard's bytes once,
checks them against the manifest's SHA-256 and the footer's row checksums and decodes them (`shards.load_shard`);
on the Ray backend each actor hashes the rows it encodes and the driver compares them with the footer's row
checksums (a shard written before row checksums is hashed whole by the driver against the manifest instead). A
shard with neither checksum stops the run before any work, naming the fix. A bad shard is dropped from the input
manifest, moved to <in>/quarantine/, named, and counted in the report (printed and saved as
`<out>/encode_report.json`). Latents that are not finite stop the run naming the shard and the episode; nothing
is written for that shard. Temp files of a killed run are removed at the start of the next.

Exit status: 0 when every input shard is encoded (now or before); 1 when some were quarantined instead (rerun
pipeline.collect to render them again, then this command); 2 when the run stopped on an error (bad flags or
config, unverifiable input, encoder failure, a read-only or full disk), with one line naming the path and cause.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cli import field, parse_config, run_cli, to_json
from pipeline.console import progress, start_ray
from pipeline.encoders import ENCODER_NAMES, make_encoder
from pipeline.schema import TENSOR_COLUMNS, SchemaError, check_table, episodes_to_table, to_numpy
from pipeline.shards import (
    NO_CHECKSUM_HINT,
    Manifest,
    check_config,
    describe_os_error,
    error_line,
    footer_checksums,
    load_shard,
    quarantine,
    remove_partials,
    row_checksums,
    sha256,
    write_json_atomic,
    write_shard,
)

REPORT = "encode_report.json"
FAULT_MARKER = ".fault_injected"


@dataclass
class EncodeConfig:
    in_dir: str = field("data/maze", "folder of episode shards (shard-*.parquet, from pipeline.collect)",
                        aliases=("--in",))
    out_dir: str = field("data/maze-latents", "folder for the latent shards (same layout)", aliases=("--out",))
    encoder: str = field("identity", "identity: pixels in [-1,1]; vae: diffusers AutoencoderKL",
                         choices=list(ENCODER_NAMES))
    vae_path: str = field("", "local AutoencoderKL folder (config.json + weights) for --encoder vae")
    backend: str = field("ray", "ray: Ray Data actor pool; local: this process only", choices=["ray", "local"])
    workers: int = field(1, "encoder actors in the pool (each loads the model once)")
    gpus_per_worker: float = field(0.0, "GPUs per encoder actor (0 = CPU)")
    cpus_per_worker: float = field(0.5, "CPUs per encoder actor; keep it fractional so read tasks keep a CPU")
    batch_size: int = field(4, "episodes per map_batches call")
    address: str = field("", "Ray address: '' starts a local Ray, 'auto' joins a running cluster")
    fail_after_episodes: int = field(0, "fault injection for tests: an encoder fails after this many episodes "
                                        "(0 = off)", hidden=True)
    fail_mode: str = field("raise", "fault injection: raise an exception, or kill the actor process once (exit)",
                           choices=["raise", "exit"], hidden=True)

    def __post_init__(self):
        if self.encoder not in ENCODER_NAMES:
            raise ValueError(f"encoder must be one of {ENCODER_NAMES}, got {self.encoder!r}")
        if self.backend not in ("ray", "local"):
            raise ValueError(f"backend must be 'ray' or 'local', got {self.backend!r}")
        for name in ("workers", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if Path(self.in_dir).resolve() == Path(self.out_dir).resolve():
            raise ValueError(f"--out-dir must differ from --in-dir ({self.in_dir})")

    def data_config(self) -> dict:
        """The fields that change the output bytes (saved as <out>/config.json)."""
        return {"in_dir": str(Path(self.in_dir).resolve()), "encoder": self.encoder,
                "vae_path": str(Path(self.vae_path).resolve()) if self.vae_path else ""}


# ---------------------------------------------------------------------------------------------------------------
# The per-batch work (shared by the Ray actor and the local backend)

def numpy_batch(table: pa.Table) -> dict:
    """Arrow rows (either frame layout) -> dict of numpy: array columns (N, *shape), other columns object arrays."""
    return {c: to_numpy(table, c) if c in TENSOR_COLUMNS else np.array(table.column(c).to_pylist(), dtype=object)
            for c in table.column_names}


def encode_batch(batch: dict, encoder) -> dict:
    """A batch of episode rows (dict of numpy, frames (N,T,H,W,3)) -> the same rows with latents (N,T,C,h,w)."""
    frames = batch["frames"]
    n, t, h, w, _ = frames.shape
    latents = encoder.encode(frames.reshape(n * t, h, w, 3))                       # (N*T, C, h', w')
    out = {k: batch[k] for k in batch if k != "frames"}
    out["latents"] = latents.reshape(n, t, *latents.shape[1:])
    out["encoder"] = np.array([json.dumps(encoder.info((h, w)), sort_keys=True)] * n, dtype=object)
    return out


class EncodeActor:
    """map_batches callable class: builds the encoder once per actor, then encodes batches."""

    def __init__(self, encoder: str, vae_path: str, use_gpu: bool, fail_after_episodes: int = 0,
                 fail_mode: str = "raise", fail_marker: str = "", hash_rows: bool = False):
        self.encoder = make_encoder(encoder, vae_path or None, "cuda" if use_gpu else "cpu")
        self.fail_after, self.fail_mode, self.fail_marker = fail_after_episodes, fail_mode, fail_marker
        self.hash_rows = hash_rows
        self.seen = 0

    def __call__(self, table: pa.Table) -> dict:
        """Episode rows as Arrow (map_batches batch_format="pyarrow": both frame layouts arrive as stored). With
        hash_rows, the output also carries `row_sha256`: each input row's `shards.row_checksums`."""
        batch = numpy_batch(table)
        self.seen += len(batch["episode_id"])
        if self.fail_after and self.seen > self.fail_after:
            if self.fail_mode == "raise":
                raise RuntimeError(f"injected failure after {self.fail_after} episodes (--fail-after-episodes)")
            marker = Path(self.fail_marker)
            if not marker.exists():                      # kill once: the restarted actor goes on
                marker.write_text(f"killed after {self.seen} episodes\n")
                os._exit(1)
        out = encode_batch(batch, self.encoder)
        if self.hash_rows:
            out["row_sha256"] = np.array(row_checksums(table), dtype=object)
        return out


# ---------------------------------------------------------------------------------------------------------------
# Driver: validate, pick what is left, run, write shard by shard

@dataclass(frozen=True)
class InputShard:
    path: Path
    rows: int                   # from the footer
    layout: str                 # the frames column's Arrow type: shards of one layout share a Ray dataset
    sha256: str | None          # from the input manifest (None for a shard it does not list)
    checksums: list[str] | None  # the footer's row checksums (None for a shard written before them)


def _footer_problem(path: Path, entry: dict | None) -> tuple[str | None, pq.FileMetaData | None]:
    """(reason or None, footer) from the footer alone: readable, schema contract, rows and bytes vs the manifest,
    one row checksum per row."""
    try:
        meta = pq.read_metadata(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for truncated files
        return f"{path}: not a readable Parquet file ({type(e).__name__}: {e})", None
    problems = check_table(meta.schema.to_arrow_schema(), "frames")
    if problems:
        return f"{path}: " + "; ".join(map(str, problems)), meta
    if entry is not None and (meta.num_rows, path.stat().st_size) != (entry["rows"], entry["bytes"]):
        return (f"{path}: {meta.num_rows} rows and {path.stat().st_size} bytes, the manifest lists {entry['rows']} "
                f"rows and {entry['bytes']} bytes"), meta
    sums = footer_checksums(meta.metadata)
    if sums is not None and len(sums) != meta.num_rows:
        return f"{path}: its footer lists {len(sums)} row checksums for {meta.num_rows} rows", meta
    return None, meta


def input_files(in_dir: Path) -> list[Path]:
    """The episode shards of --in-dir; FileNotFoundError naming the folder when there are none."""
    files = sorted(in_dir.glob("shard-*.parquet"))
    if not files:
        raise FileNotFoundError(f"--in-dir {in_dir}: no shard-*.parquet files; collect first "
                                f"(python -m pipeline.collect --out-dir {in_dir})")
    return files


def plan(cfg: EncodeConfig, out: Manifest) -> tuple[list[InputShard], list[Path], list[dict]]:
    """(todo, already done, quarantined) input shards, from their footers; bad inputs are moved to
    <in>/quarantine/ here (and those whose pages or checksums fail when read, later). Raises SchemaError, before
    any work, naming the shards that have no checksum at all (neither row checksums nor a manifest entry)."""
    in_dir = Path(cfg.in_dir)
    files = input_files(in_dir)
    in_manifest = Manifest(in_dir).shards
    todo, done, bad, unverifiable = [], [], [], []
    for path in files:
        if out.is_done(path.name):
            done.append(path)
            continue
        entry = in_manifest.get(path.name)
        reason, meta = _footer_problem(path, entry)
        sums = footer_checksums(meta.metadata) if meta is not None else None
        if reason is None and sums is None and entry is None:
            unverifiable.append(path)
            continue
        if reason is None and sums is None and cfg.backend == "ray" and sha256(path) != entry["sha256"]:
            reason = f"{path}: checksum differs from the manifest"   # no row checksums: the file is hashed whole
        if reason is None:
            layout = str(meta.schema.to_arrow_schema().field("frames").type)
            todo.append(InputShard(path, meta.num_rows, layout, (entry or {}).get("sha256"), sums))
        else:
            bad.append(_quarantine(path, reason, (entry or {}).get("rows", meta.num_rows if meta else None)))
    if unverifiable:
        raise SchemaError(f"--in-dir {in_dir}: {', '.join(p.name for p in unverifiable)}: no checksum to verify "
                          f"against (written before shards carried row checksums, and no manifest.json lists it); "
                          f"{NO_CHECKSUM_HINT}")
    return todo, done, bad


def _quarantine(path: Path, reason: str, rows: int | None) -> dict:
    """Move a bad input aside (or, on a read-only --in-dir, leave it and say so); its report entry."""
    try:
        dest = str(quarantine(path, reason))
        print(f"[encode] QUARANTINED {path} -> {dest}: {reason}", flush=True)
    except OSError as e:
        dest = None
        print(f"[encode] BAD INPUT {path} (not moved: {describe_os_error(e)}): {reason}", flush=True)
    return {"shard": path.name, "moved_to": dest, "reason": reason, "rows": rows}


class ShardWriter:
    """Collects encoded rows per input shard, in arrival order (= input order: both backends keep it), and
    writes the latent shard once all its rows are in."""

    def __init__(self, todo: list[InputShard], out: Manifest):
        self.out = out
        self.expected = {s.path.name: s.rows for s in todo}
        self.checksums = {s.path.name: s.checksums for s in todo}
        self.pending: dict[str, dict[str, dict]] = {name: {} for name in self.expected}
        self.bad: dict[str, str] = {}                  # input shards whose rows differ from their footer: reason
        self.rows_written = self.frames_written = self.shards_written = 0
        self.start = time.perf_counter()
        self.first_batch: float | None = None          # rates count from here: Ray start and model load excluded
        self.bar = progress(sum(self.expected.values()), "encode", unit="ep")

    def rate(self) -> float:
        return self.frames_written / max(time.perf_counter() - (self.first_batch or self.start), 1e-9)

    def add(self, name: str, batch: dict) -> None:
        """Take encoded rows of input shard `name`; rows hashed by the actor (`row_sha256`) are compared with the
        footer's row checksums first, and a mismatch marks the shard bad (its rows are dropped)."""
        self.first_batch = self.first_batch or time.perf_counter()
        if name in self.bad:
            return
        rows = self.pending[name]
        expected = self.checksums.get(name)
        if "row_sha256" in batch and expected is not None:
            for i, (eid, got) in enumerate(zip(batch["episode_id"], batch["row_sha256"])):
                if got != expected[len(rows) + i]:
                    self.bad[name] = (f"{Path(batch['path'][i])}: content checksum of episode {eid} (row "
                                      f"{len(rows) + i}) differs from the one written in its footer: the file is "
                                      f"damaged")
                    self.drop(name)
                    return
        for i, eid in enumerate(batch["episode_id"]):
            if eid in rows:
                raise RuntimeError(f"{name}: episode {eid} came back twice from the encoder")
            rows[str(eid)] = {k: (v[i].item() if isinstance(v[i], np.generic) else v[i]) for k, v in batch.items()
                              if k not in ("path", "row_sha256")}
        if len(rows) == self.expected[name]:
            self._write(name)

    def drop(self, name: str) -> None:
        """Forget a shard that was quarantined while reading it."""
        self.pending.pop(name, None)

    def _write(self, name: str) -> None:
        rows = list(self.pending.pop(name).values())
        table = episodes_to_table(rows, "latents")
        try:
            entry = write_shard(table, self.out.folder / name, kind="latents")
        except SchemaError as e:                       # non-finite latents: the encoder's fault, not the input's
            raise SchemaError(f"{e}; the encoder made them from input shard {name}, and nothing was written for "
                              f"it: check the encoder (--encoder, --vae-path weights, precision), then rerun") from e
        self.out.add(name, entry)
        t = len(rows[0]["actions"])
        self.rows_written += len(rows)
        self.shards_written += 1
        self.frames_written += len(rows) * t
        self.bar.update(len(rows), postfix=f"{self.frames_written} frames, {self.rate():.0f} frames/s")

    def missing(self) -> dict[str, int]:
        return {name: self.expected[name] - len(rows) for name, rows in self.pending.items()}


def _run_local(cfg: EncodeConfig, todo: list[InputShard], writer: ShardWriter, bad: list[dict]) -> None:
    if cfg.fail_mode == "exit":
        raise ValueError("--fail-mode exit kills a Ray actor; it needs --backend ray")
    actor = EncodeActor(cfg.encoder, cfg.vae_path, cfg.gpus_per_worker > 0, cfg.fail_after_episodes)
    for shard in todo:
        name = shard.path.name
        try:                                             # the one read of this shard
            table = load_shard(shard.path, "frames", shard.sha256)
        except SchemaError as e:
            writer.drop(name)
            bad.append(_quarantine(shard.path, str(e), shard.rows))
            continue
        for lo in range(0, table.num_rows, cfg.batch_size):
            writer.add(name, actor(table.slice(lo, cfg.batch_size)))


def _run_ray(cfg: EncodeConfig, todo: list[InputShard], writer: ShardWriter, bad: list[dict]) -> None:
    from ray.data import DataContext

    start_ray(cfg.address)
    # Ordered output: shards finish one after another (bounded driver memory). The Dataset keeps a copy of the
    # DataContext it was built under, so the caller's context is restored right after.
    for layout in dict.fromkeys(s.layout for s in todo):  # one dataset per frame layout (module docstring)
        options = DataContext.get_current().execution_options
        before, options.preserve_order = options.preserve_order, True
        try:
            ds = _encode_dataset(cfg, [s.path for s in todo if s.layout == layout])
        finally:
            options.preserve_order = before
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            paths = np.array([Path(p).name for p in batch["path"]])
            for name in dict.fromkeys(paths):            # one batch may span two input files
                sel = paths == name
                writer.add(name, {k: v[sel] for k, v in batch.items()})
    by_name = {s.path.name: s for s in todo}
    for name, reason in writer.bad.items():            # moved only now: read tasks may still have had it open
        bad.append(_quarantine(by_name[name].path, reason, by_name[name].rows))


def _encode_dataset(cfg: EncodeConfig, todo: list[Path]):
    import ray
    from ray.data import ActorPoolStrategy

    ds = ray.data.read_parquet([str(p) for p in todo], include_paths=True)
    return ds.map_batches(
        EncodeActor, fn_constructor_kwargs=dict(encoder=cfg.encoder, vae_path=cfg.vae_path,
                                                use_gpu=cfg.gpus_per_worker > 0,
                                                fail_after_episodes=cfg.fail_after_episodes,
                                                fail_mode=cfg.fail_mode,
                                                fail_marker=str(Path(cfg.out_dir).resolve() / FAULT_MARKER),
                                                hash_rows=True),
        batch_size=cfg.batch_size, batch_format="pyarrow", compute=ActorPoolStrategy(size=cfg.workers),
        num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker or None)


def run_encode(cfg: EncodeConfig) -> dict:
    """Encode every input shard not yet in the out manifest; returns (and saves) the report."""
    out_dir = Path(cfg.out_dir)
    check_config(out_dir, cfg.data_config(), flag_hint="--out-dir")
    for stale in remove_partials(out_dir):              # temp files of a run killed mid-write
        print(f"[encode] removed the partial file {stale} of an interrupted run", flush=True)
    if cfg.encoder == "vae":
        from pipeline.encoders import check_vae_folder
        check_vae_folder(cfg.vae_path)                   # fail on the driver, before any actor starts
    out = Manifest(out_dir)
    todo, done, bad = plan(cfg, out)
    report = {"in_dir": cfg.in_dir, "out_dir": cfg.out_dir, "encoder": cfg.encoder,
              "shards_done_before": len(done), "rows_done_before": sum(out.shards[p.name]["rows"] for p in done),
              "shards_todo": len(todo), "quarantined": bad,
              "rows_quarantined": sum(b["rows"] or 0 for b in bad), "status": "running"}
    writer = ShardWriter(todo, out)
    try:
        if todo:
            (_run_local if cfg.backend == "local" else _run_ray)(cfg, todo, writer, bad)
        missing = {k: v for k, v in writer.missing().items() if v}
        if missing:
            raise RuntimeError(f"rows missing after encoding (per input shard): {missing}; rerun to retry them")
        report["status"] = "ok"
    except BaseException as e:
        report["status"] = f"failed: {error_line(e)}"
        report["error"] = str(e)
        raise
    finally:
        writer.bar.close()
        seconds = time.perf_counter() - writer.start
        report.update(rows_quarantined=sum(b["rows"] or 0 for b in bad),
                      rows_encoded=writer.rows_written, frames_encoded=writer.frames_written,
                      shards_encoded=writer.shards_written, seconds=round(seconds, 3),
                      frames_per_sec=round(writer.rate(), 1),      # from the first encoded batch on
                      frames_per_sec_wall=round(writer.frames_written / max(seconds, 1e-9), 1),
                      rows_in_out_manifest=out.num_rows)
        try:
            write_json_atomic(report, out_dir / REPORT)
        except OSError as e:
            if report["status"] == "ok":
                raise
            print(f"[encode] could not save the report: {describe_os_error(e)}", flush=True)  # the run's error wins
        print("[encode] report: " + json.dumps({k: v for k, v in report.items() if k != "quarantined"}), flush=True)
        for b in bad:
            print(f"[encode] quarantined {b['shard']} ({b['rows']} rows): {b['reason']}", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 or 1 as the module docstring says; an error raises, and `run_cli` prints it as one line
    naming the path or shard (a disk or permission error, a SchemaError) with status 2."""
    cfg, dry_run = parse_config(EncodeConfig, argv, description=__doc__)
    print(to_json(cfg), flush=True)
    if dry_run:
        input_files(Path(cfg.in_dir))  # what the real run would fail on at once
        return 0
    report = run_encode(cfg)
    if report["quarantined"]:
        names = ", ".join(b["shard"] for b in report["quarantined"])
        print(f"pipeline.encode: {len(report['quarantined'])} input shard(s) quarantined, not encoded "
              f"({names}; reasons in {Path(cfg.out_dir) / REPORT}); rerun the command that wrote --in-dir to write "
              f"them again, then rerun this command", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
