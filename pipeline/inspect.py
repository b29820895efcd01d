"""Summarise, validate and preview a shard folder; move bad shards to <dir>/quarantine/.

    python -m pipeline.inspect data/maze                  # summary + validation + preview images
    python -m pipeline.inspect data/maze --no-preview     # summary + validation only
    python -m pipeline.inspect data/maze-latents          # latent shards (kind read from the schema)

Every shard file (shard-*.parquet, listed in manifest.json or not) goes through `shards.load_shard`: schema
(pipeline.schema), every data page decoded, the manifest's SHA-256 when it lists the file, the row checksums in
the shard's own footer, latents finite. A bad shard is dropped from the manifest and moved to <dir>/quarantine/
with a <name>.reason.txt, so no later step counts it as done (rerunning pipeline.collect renders it again). Other
files (eval_cases.parquet, ...) are listed as ignored and left alone. Outputs: <dir>/inspect/report.json,
contact_sheet.png (rows = episodes, columns = frames spread over the episode) and episodes.gif (a few episodes
side by side). Every shard is validated before anything is moved or written, and a move or write that
fails (a read-only or full disk) is reported after the summary instead of stopping it.
Exit status: 0 when every shard is valid and listed; 1 when something was quarantined, a listed shard is
missing or the folder has no manifest.json (the report is still written); 2 on bad input or when the folder
cannot be written (one line naming the path and the cause, after the summary).
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.cli import field, parse_config, run_cli
from pipeline.schema import SchemaError, check_table, to_numpy, unit_to_pixels
from pipeline.shards import (
    MANIFEST,
    NO_CHECKSUM_HINT,
    Manifest,
    describe_os_error,
    footer_checksums,
    quarantine,
    shard_kind,
    validate_shard,
    write_json_atomic,
)

# Revisit gap bins (frames between leaving a place and seeing it again), as in the paper's retrieval tables:
# lo <= gap < hi, the last bin closed (48 <= gap <= 112).
GAP_BINS = (("0-16", 0, 16), ("16-48", 16, 48), ("48-112", 48, 113))
SHARD_GLOB = "shard-*.parquet"      # what collect, ingest and encode write; other Parquet files are not shards


@dataclass
class InspectConfig:
    path: str = field("", "shard folder to inspect (holds manifest.json and *.parquet)")
    preview: bool = field(True, "write contact_sheet.png and episodes.gif into <path>/inspect/")
    preview_episodes: int = field(4, "episodes shown in the preview images")
    preview_frames: int = field(64, "frames per episode in the GIF (the contact sheet shows 8)")

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path: give the shard folder to inspect, e.g. `python -m pipeline.inspect data/maze`")
        if not Path(self.path).is_dir():
            raise ValueError(f"path: {self.path} is not a folder")
        for name in ("preview_episodes", "preview_frames"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(self, name)}")


def _check_one(path: Path, entry: dict | None) -> tuple[str, str, str | None]:
    """(kind, status, reason) for one shard file; status "valid", "bad" (reason says why) or "unverified" (a
    sound footer but nothing to check the content against: no row checksums, not in the manifest)."""
    try:
        schema = pq.read_schema(path)
        kind = shard_kind(schema)
    except Exception as e:
        return "unknown", "bad", f"{path}: not a readable Parquet file ({type(e).__name__}: {e})"
    if entry is None and not check_table(schema, kind) and footer_checksums(schema.metadata) is None:
        return kind, "unverified", None
    reason = validate_shard(path, kind, expected_sha256=entry["sha256"] if entry else None)
    if reason is None and entry is not None and path.stat().st_size != entry["bytes"]:
        reason = f"{path}: {path.stat().st_size} bytes on disk, manifest lists {entry['bytes']}"
    return kind, "bad" if reason else "valid", reason


def _summarise(path: Path, kind: str, totals: dict) -> None:
    """Add one valid shard's episodes, frames, envs, agents, actions and revisit gaps to `totals`."""
    table = pq.read_table(path, columns=["env", "agent", "actions", "revisit_gap"])
    actions, gaps = to_numpy(table, "actions"), to_numpy(table, "revisit_gap")  # (N,T) or (N,T,A); (N,T)
    totals["episodes"] += table.num_rows
    totals["frames"] += int(gaps.size)
    totals["bytes"] += path.stat().st_size
    totals["kinds"][kind] += 1
    totals["envs"].update(table.column("env").to_pylist())
    totals["agents"].update(table.column("agent").to_pylist())
    if actions.ndim == 2 and np.issubdtype(actions.dtype, np.integer):
        totals["actions"].update(Counter(actions.ravel().tolist()))
    else:
        totals["action_shapes"].add(str(tuple(actions.shape[2:])))
    for name, lo, hi in GAP_BINS:
        totals["revisit_frames"][name] += int(((gaps >= lo) & (gaps < hi)).sum())
    totals["revisit_frames"]["other"] += int((gaps >= GAP_BINS[-1][2]).sum())


def _to_pixels(table, kind: str) -> np.ndarray:
    """(N,T,H,W,3) uint8 for previews. Latents: identity encoder maps back exactly; other latents show their
    first 3 channels min-max scaled per episode (a rough look, not a decode)."""
    if kind == "frames":
        return to_numpy(table, "frames")
    lat = to_numpy(table, "latents").astype(np.float32)  # (N,T,C,h,w)
    encoder = json.loads(table.column("encoder")[0].as_py() or "{}")
    x = lat[:, :, :3].transpose(0, 1, 3, 4, 2)  # (N,T,h,w,3)
    if x.shape[-1] < 3:
        x = np.repeat(x[..., :1], 3, axis=-1)
    if encoder.get("name") != "identity":
        lo = x.min(axis=(1, 2, 3, 4), keepdims=True)
        hi = x.max(axis=(1, 2, 3, 4), keepdims=True)
        x = (x - lo) / np.maximum(hi - lo, 1e-6) * 2 - 1
    return unit_to_pixels(x)


def _upscale(x: np.ndarray, min_size: int = 96) -> np.ndarray:
    """Nearest-neighbour upscale of (..., H, W, 3) so that tiny frames stay visible."""
    f = max(1, -(-min_size // x.shape[-2]))
    return x.repeat(f, axis=-3).repeat(f, axis=-2)


def write_previews(paths: list[Path], kinds: dict[Path, str], out: Path, num_episodes: int, gif_frames: int) -> dict:
    """contact_sheet.png (episodes x 8 frames) and episodes.gif (episodes side by side) into `out`."""
    import imageio.v3 as iio

    clips, fps = [], 10.0
    for p in paths:
        if len(clips) >= num_episodes:
            break
        cols = ["latents", "encoder"] if kinds[p] == "latents" else ["frames"]
        table = pq.read_table(p, columns=cols + ["fps"]).slice(0, num_episodes - len(clips))
        clips += list(_to_pixels(table, kinds[p]))
        fps = float(table.column("fps")[0].as_py() or fps)
    if not clips:
        return {}
    clips = [_upscale(c) for c in clips]  # each (T,H,W,3)
    t = min(len(c) for c in clips)
    pick = np.linspace(0, t - 1, num=min(8, t)).round().astype(int)
    pad = lambda a: np.pad(a, [(0, 0)] * (a.ndim - 3) + [(2, 2), (2, 2), (0, 0)], constant_values=255)
    sheet = np.concatenate([np.concatenate(list(pad(c[pick])), axis=1) for c in clips], axis=0)  # (E*H', 8*W', 3)
    gif = np.concatenate([pad(c[: min(t, gif_frames)]) for c in clips], axis=2)  # (T', H', E*W', 3)
    out.mkdir(parents=True, exist_ok=True)
    files = {"contact_sheet": out / "contact_sheet.png", "gif": out / "episodes.gif"}
    tmp = {k: v.with_name(f".tmp-{v.name}") for k, v in files.items()}
    iio.imwrite(tmp["contact_sheet"], sheet)
    iio.imwrite(tmp["gif"], gif, duration=1000.0 / max(fps, 1.0), loop=0)
    for k in files:
        os.replace(tmp[k], files[k])
    return {k: str(v) for k, v in files.items()}


def inspect_dir(path: str | Path, preview: bool = True, preview_episodes: int = 4, preview_frames: int = 64) -> dict:
    """Validate every shard in `path`, summarise the valid ones, then quarantine bad ones and write the report
    and previews; returns the report dict.

    Keys: manifest (whether manifest.json exists), shards_valid, quarantined [{path, moved_to, reason}], missing
    (listed but absent), unlisted (valid files not in the manifest, i.e. not done), unverified (unlisted files
    without row checksums), ignored (Parquet files that are not shards), episodes, frames, bytes, kinds, envs,
    agents, actions {id: count}, revisit_frames {bin: count}, previews {name: path}, errors (one line per
    file that could not be moved or written: a read-only or full disk)."""
    folder = Path(path)
    manifest = Manifest(folder)
    files = sorted(p for p in folder.glob(SHARD_GLOB) if p.is_file())
    totals = {"episodes": 0, "frames": 0, "bytes": 0, "kinds": Counter(), "envs": Counter(), "agents": Counter(),
              "actions": Counter(), "action_shapes": set(), "revisit_frames": Counter({b[0]: 0 for b in GAP_BINS})}
    report = {"path": str(folder), "manifest": (folder / MANIFEST).exists(), "shards_valid": 0, "quarantined": [],
              "unlisted": [], "unverified": [],
              "missing": sorted(n for n in manifest.shards if not (folder / n).exists()),
              "ignored": sorted(p.name for p in folder.glob("*.parquet") if p.is_file() and not p.match(SHARD_GLOB)),
              "errors": []}
    valid, kinds, bad = [], {}, []
    for p in files:                                      # 1. validate (reads only)
        entry = manifest.shards.get(p.name)
        kind, status, reason = _check_one(p, entry)
        if status == "bad":
            bad.append((p, reason))
        elif status == "unverified":
            report["unverified"].append(p.name)
        elif entry is None:
            report["unlisted"].append(p.name)  # a valid file the manifest does not list: not done, not counted
        else:
            kinds[p] = kind
            valid.append(p)
            _summarise(p, kind, totals)
    report["shards_valid"] = len(valid)
    for key in ("kinds", "envs", "agents", "revisit_frames"):
        report[key] = dict(sorted(totals[key].items()))
    report["actions"] = {str(k): v for k, v in sorted(totals["actions"].items())}
    report["action_shapes"] = sorted(totals["action_shapes"])
    report.update(episodes=totals["episodes"], frames=totals["frames"], bytes=totals["bytes"], previews={})
    for p, reason in bad:                                # 2. move bad shards aside
        try:
            dest = str(quarantine(p, reason, manifest))
        except OSError as e:
            dest = None
            report["errors"].append(f"cannot quarantine {p}: {describe_os_error(e)}")
        report["quarantined"].append({"path": str(p), "moved_to": dest, "reason": reason})
    try:                                                 # 3. previews and report
        if preview:
            report["previews"] = write_previews(valid, kinds, folder / "inspect", preview_episodes, preview_frames)
        (folder / "inspect").mkdir(exist_ok=True)
        write_json_atomic(report, folder / "inspect" / "report.json")
    except OSError as e:
        report["errors"].append(f"cannot write the report: {describe_os_error(e)}")
    return report


def format_report(r: dict) -> str:
    lines = [f"{r['path']}: {r['shards_valid']} valid shards, {r['episodes']} episodes, {r['frames']:,} frames, "
             f"{r['bytes'] / 2**20:.1f} MiB ({r['bytes'] / max(r['frames'], 1):.0f} B/frame)",
             f"  kinds {r['kinds']}  envs {r['envs']}  agents {r['agents']}",
             f"  actions {r['actions'] or r['action_shapes']}",
             f"  revisit frames by gap bin {r['revisit_frames']}"]
    for q in r["quarantined"]:
        dest = q["moved_to"] or "(not moved: see the error below)"
        lines.append(f"  QUARANTINED {q['path']} -> {dest}: {q['reason']}")
    for name in r["missing"]:
        lines.append(f"  MISSING {name}: listed in manifest.json but not on disk (rerun the collect command)")
    if not r["manifest"]:
        lines.append(f"  NOT DONE: no {MANIFEST} in {r['path']}, so no shard here counts as done "
                     f"({len(r['unlisted'])} verified by their own row checksums); rerun the command that wrote "
                     f"the folder to finish it and write its manifest")
    if r["unlisted"] and r["manifest"]:
        lines.append(f"  not done (valid but not in manifest.json): {', '.join(r['unlisted'])}")
    for name in r["unverified"]:
        lines.append(f"  UNVERIFIED {name}: no row checksums in its footer and not in {MANIFEST}; {NO_CHECKSUM_HINT}")
    if r["ignored"]:
        lines.append(f"  ignored (not shard-*.parquet): {', '.join(r['ignored'])}")
    for name, p in r["previews"].items():
        lines.append(f"  {name}: {p}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg, dry_run = parse_config(InspectConfig, argv, description=__doc__, positional=("path",))
    if dry_run:
        print(json.dumps(vars(cfg), indent=2))
        return 0
    try:
        report = inspect_dir(cfg.path, cfg.preview, cfg.preview_episodes, cfg.preview_frames)
    except SchemaError as e:  # an unreadable manifest.json
        print(f"pipeline.inspect: error: {e}", file=sys.stderr)
        return 2
    print(format_report(report), flush=True)
    for line in report["errors"]:
        print(f"pipeline.inspect: error: {line}", file=sys.stderr)
    if report["errors"]:
        return 2
    return 1 if report["quarantined"] or report["missing"] or not report["manifest"] else 0


if __name__ == "__main__":
    run_cli(main)
