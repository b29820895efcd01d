"""Summarise, validate and preview a shard folder; move bad shards to <dir>/quarantine/.

    python -m pipeline.inspect data/maze                  # summary + validation + preview images
    python -m pipeline.inspect data/maze --no-preview     # summary + validation only
    python -m pipeline.inspect data/maze-latents          # latent shards (kind read from the schema)

Every shard file (listed in manifest.json or not) is validated against the schema (pipeline.schema), every data
page decoded and, when the manifest lists it, its SHA-256 compared. A bad shard is moved to <dir>/quarantine/
with a <name>.reason.txt and dropped from the manifest, so no later step counts it as done (rerunning
pipeline.collect renders it again). Outputs: <dir>/inspect/report.json, contact_sheet.png (rows = episodes,
columns = frames spread over the episode) and episodes.gif (a few episodes side by side).
Exit status: 0 when every shard is valid, 1 when something was quarantined or a listed shard is missing
(the report is still written), 2 on bad input.
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

from pipeline.cli import field, parse_config
from pipeline.schema import KINDS, SchemaError, to_numpy
from pipeline.shards import Manifest, quarantine, validate_shard, write_json_atomic

# Revisit gap bins (frames between leaving a place and seeing it again), as in the paper's retrieval tables:
# lo <= gap < hi, the last bin closed (48 <= gap <= 112).
GAP_BINS = (("0-16", 0, 16), ("16-48", 16, 48), ("48-112", 48, 113))
SHARD_GLOB = "*.parquet"


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


def shard_kind(path: Path) -> str:
    """'frames' or 'latents' from the schema metadata `memvid.kind`; older files: guessed from the columns."""
    schema = pq.read_schema(path)
    kind = (schema.metadata or {}).get(b"memvid.kind", b"").decode()
    if kind in KINDS:
        return kind
    return "latents" if "latents" in schema.names else "frames"


def _check_one(path: Path, entry: dict | None) -> tuple[str, str | None]:
    """(kind, reason or None) for one shard file."""
    try:
        kind = shard_kind(path)
    except Exception as e:
        return "unknown", f"{path}: not a readable Parquet file ({type(e).__name__}: {e})"
    return kind, validate_shard(path, kind, expected_sha256=entry["sha256"] if entry else None)


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
    return np.clip((x + 1) * 127.5, 0, 255).round().astype(np.uint8)


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
    """Validate every shard in `path`, quarantine bad ones, summarise the rest; returns the report dict.

    Keys: shards_valid, quarantined [{path, reason}], missing (listed but absent), unlisted (valid files not in
    the manifest, i.e. not done), episodes, frames, bytes, kinds, envs, agents, actions {id: count},
    revisit_frames {bin: count}, previews {name: path}."""
    folder = Path(path)
    manifest = Manifest(folder)
    files = sorted(p for p in folder.glob(SHARD_GLOB) if p.is_file())
    totals = {"episodes": 0, "frames": 0, "bytes": 0, "kinds": Counter(), "envs": Counter(), "agents": Counter(),
              "actions": Counter(), "action_shapes": set(), "revisit_frames": Counter({b[0]: 0 for b in GAP_BINS})}
    report = {"path": str(folder), "shards_valid": 0, "quarantined": [], "unlisted": [],
              "missing": sorted(n for n in manifest.shards if not (folder / n).exists())}
    valid, kinds = [], {}
    for p in files:
        entry = manifest.shards.get(p.name)
        kind, reason = _check_one(p, entry)
        if reason is None and entry is not None and p.stat().st_size != entry["bytes"]:
            reason = f"{p}: {p.stat().st_size} bytes on disk, manifest lists {entry['bytes']}"
        if reason is not None:
            dest = quarantine(p, reason)
            manifest.remove(p.name)
            report["quarantined"].append({"path": str(p), "moved_to": str(dest), "reason": reason})
            continue
        if entry is None:
            report["unlisted"].append(p.name)  # a valid file the manifest does not list: not done, not counted
            continue
        kinds[p] = kind
        valid.append(p)
        _summarise(p, kind, totals)
    report["shards_valid"] = len(valid)
    for key in ("kinds", "envs", "agents", "revisit_frames"):
        report[key] = dict(sorted(totals[key].items()))
    report["actions"] = {str(k): v for k, v in sorted(totals["actions"].items())}
    report["action_shapes"] = sorted(totals["action_shapes"])
    report.update(episodes=totals["episodes"], frames=totals["frames"], bytes=totals["bytes"])
    report["previews"] = write_previews(valid, kinds, folder / "inspect", preview_episodes, preview_frames) if preview else {}
    (folder / "inspect").mkdir(exist_ok=True)
    write_json_atomic(report, folder / "inspect" / "report.json")
    return report


def format_report(r: dict) -> str:
    lines = [f"{r['path']}: {r['shards_valid']} valid shards, {r['episodes']} episodes, {r['frames']:,} frames, "
             f"{r['bytes'] / 2**20:.1f} MiB ({r['bytes'] / max(r['frames'], 1):.0f} B/frame)",
             f"  kinds {r['kinds']}  envs {r['envs']}  agents {r['agents']}",
             f"  actions {r['actions'] or r['action_shapes']}",
             f"  revisit frames by gap bin {r['revisit_frames']}"]
    for q in r["quarantined"]:
        lines.append(f"  QUARANTINED {q['path']} -> {q['moved_to']}: {q['reason']}")
    for name in r["missing"]:
        lines.append(f"  MISSING {name}: listed in manifest.json but not on disk (rerun the collect command)")
    if r["unlisted"]:
        lines.append(f"  not done (valid but not in manifest.json): {', '.join(r['unlisted'])}")
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
    print(format_report(report))
    return 1 if report["quarantined"] or report["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
