"""pipeline.inspect on real shards of the real maze (written by collect's own worker function, without Ray)."""
import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.collect import CollectConfig, render_shard, shard_name
from pipeline.inspect import inspect_dir, main
from pipeline.schema import episodes_to_table, to_numpy
from pipeline.shards import Manifest, check_config, sha256, write_shard

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    """3 shards x 2 episodes x 8 frames at 16x16 of the revisit agent, with manifest and config."""
    out = tmp_path_factory.mktemp("collected")
    cfg = CollectConfig(episodes=6, length=8, resolution=16, maze_size=7, episodes_per_shard=2, seed=1,
                        agent="revisit", out_dir=str(out))
    check_config(out, cfg.data_config())
    manifest = Manifest(out)
    for i in range(cfg.num_shards):
        res = render_shard(cfg, i)
        assert res["entry"] is not None, res["failures"]
        manifest.add(res["name"], res["entry"])
    return out


@pytest.fixture
def folder(collected, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(collected, dst)
    return dst


def test_summary_counts_and_previews(folder):
    report = inspect_dir(folder)
    assert report["quarantined"] == [] and report["shards_valid"] == 3
    assert (report["episodes"], report["frames"]) == (6, 48)
    assert report["envs"] == {"maze": 6} and report["agents"] == {"revisit": 6}
    assert sum(report["actions"].values()) == 48 and set(report["actions"]) <= {str(a) for a in range(7)}
    gaps = np.concatenate([to_numpy(pq.read_table(p), "revisit_gap").ravel() for p in sorted(folder.glob("*.parquet"))])
    assert report["revisit_frames"]["0-16"] == int(((gaps >= 0) & (gaps < 16)).sum())
    assert report["bytes"] == sum(p.stat().st_size for p in folder.glob("*.parquet"))
    sheet = iio.imread(report["previews"]["contact_sheet"])
    assert sheet.ndim == 3 and sheet.shape[0] > sheet.shape[1] / 8  # 4 episode rows of 8 frames
    gif = iio.imread(report["previews"]["gif"], index=None)
    assert gif.shape[0] == 8  # all 8 frames of the episodes
    assert json.loads((folder / "inspect" / "report.json").read_text())["episodes"] == 6
    assert main([str(folder), "--no-preview"]) == 0


def test_truncated_and_wrong_schema_shards_are_quarantined_and_not_done(folder, capsys):
    truncated, wrong = folder / shard_name(1), folder / shard_name(2)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    table = pq.read_table(wrong)
    pq.write_table(table.drop_columns(["scene"]), wrong)  # a schema without the scene column
    manifest = Manifest(folder)
    manifest.add(wrong.name, {"rows": 2, "sha256": sha256(wrong), "bytes": wrong.stat().st_size})
    assert main([str(folder), "--no-preview"]) == 1
    printed = capsys.readouterr().out
    assert f"QUARANTINED {truncated}" in printed and f"QUARANTINED {wrong}" in printed
    report = json.loads((folder / "inspect" / "report.json").read_text())
    reasons = {Path(q["path"]).name: q["reason"] for q in report["quarantined"]}
    assert set(reasons) == {truncated.name, wrong.name}
    assert "not a readable Parquet file" in reasons[truncated.name] and "'scene': missing" in reasons[wrong.name]
    assert report["episodes"] == 2 and report["shards_valid"] == 1
    for p in (truncated, wrong):
        assert not p.exists() and (folder / "quarantine" / p.name).exists()
        assert (folder / "quarantine" / f"{p.name}.reason.txt").read_text().startswith(str(p))
        assert not Manifest(folder).is_done(p.name) and p.name not in Manifest(folder).shards
    assert main([str(folder), "--no-preview"]) == 0  # what is left is clean


def test_checksum_mismatch_is_quarantined(folder):
    p = folder / shard_name(0)
    other = folder / shard_name(1)
    p.write_bytes(other.read_bytes())  # a valid shard, but not the one the manifest lists
    entry = Manifest(folder).shards[p.name]
    Manifest(folder).add(p.name, dict(entry, bytes=p.stat().st_size))
    report = inspect_dir(folder, preview=False)
    assert [Path(q["path"]).name for q in report["quarantined"]] == [p.name]
    assert "checksum" in report["quarantined"][0]["reason"]


def test_latent_shards_are_summarised_and_previewed_like_frames(folder, tmp_path):
    latent = tmp_path / "latents"
    latent.mkdir()
    manifest = Manifest(latent)
    for p in sorted(folder.glob("shard-*.parquet")):
        table = pq.read_table(p)
        rows = table.drop_columns(["frames"]).to_pylist()
        frames = to_numpy(table, "frames")  # (N,T,H,W,3)
        for n, row in enumerate(rows):
            for col in ("actions", "poses", "scene", "revisit_gap"):
                row[col] = to_numpy(table, col)[n]
            row["latents"] = (frames[n].transpose(0, 3, 1, 2) / 127.5 - 1).astype(np.float16)  # (T,3,H,W)
            row["encoder"] = json.dumps({"name": "identity", "version": 1})
        manifest.add(p.name, write_shard(episodes_to_table(rows, "latents"), latent / p.name, kind="latents"))
    pixel_report, latent_report = inspect_dir(folder), inspect_dir(latent)
    assert latent_report["kinds"] == {"latents": 3} and latent_report["quarantined"] == []
    for key in ("episodes", "frames", "actions", "revisit_frames", "envs"):
        assert latent_report[key] == pixel_report[key]
    np.testing.assert_array_equal(iio.imread(latent_report["previews"]["contact_sheet"]),
                                  iio.imread(pixel_report["previews"]["contact_sheet"]))
