"""pipeline.ingest on tiny files written here in each published format (envs-and-datasets.md section 4), including
a truncated mp4 and an npz with a missing key: converted episodes land in valid shards with actions[t] = the
action after frame t, unreadable files are listed by path in the report, and a rerun resumes."""
import json
from pathlib import Path

import imageio.v2 as iio
import numpy as np
import pytest

from pipeline.ingest import IngestConfig, main, run_ingest, vpt_actions
from pipeline.inspect import inspect_dir
from pipeline.schema import to_numpy
from pipeline.shards import read_shard

T = 12  # recorded frames per test episode


def colour_video(n: int, h: int, w: int, offset: int) -> np.ndarray:
    """(n, h, w, 3) frames of flat, distinct colours (survive mp4 compression)."""
    v = np.zeros((n, h, w, 3), np.uint8)
    for t in range(n):
        v[t] = ((offset + 40 * t) % 256, (200 - 15 * t) % 256, (60 + 90 * (t % 3)) % 256)
    return v


def write_mp4(path: Path, video: np.ndarray, fps: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with iio.get_writer(path, format="ffmpeg", fps=fps, codec="mpeg4", quality=10, macro_block_size=1) as w:
        for f in video:
            w.append_data(f)


def shard_rows(out: Path) -> dict:
    tables = [read_shard(p) for p in sorted(out.glob("shard-*.parquet"))]
    rows = {}
    for t in tables:
        frames, actions, poses = to_numpy(t, "frames"), to_numpy(t, "actions"), to_numpy(t, "poses")
        for i, eid in enumerate(t.column("episode_id").to_pylist()):
            rows[eid] = {"frames": frames[i], "actions": actions[i], "poses": poses[i],
                         "env_config": json.loads(t.column("env_config")[i].as_py())}
    return rows


def test_teco_dmlab_npz(tmp_path):
    src = tmp_path / "dmlab" / "train" / "000"
    src.mkdir(parents=True)
    acts = np.random.default_rng(0).integers(0, 3, size=(2, T))
    np.savez(src / "0.npz", video=colour_video(T, 16, 16, 0), actions=acts[0])
    np.savez(src / "1.npz", video=colour_video(T, 16, 16, 7), actions=acts[1], pos=np.arange(3 * T).reshape(T, 3))
    np.savez(src / "2.npz", video=colour_video(T, 16, 16, 9))  # no 'actions'
    out = tmp_path / "out"
    summary = run_ingest(IngestConfig(format="teco-dmlab", src=str(tmp_path / "dmlab"), out_dir=str(out), length=T,
                                      episodes_per_shard=2))
    # shard 0 = episodes 0, 1; shard 1 = episode 2 only, unreadable: no shard, the file is reported
    assert summary["shards"] == 2 and summary["written"] == 1 and summary["unreadable"] == 1
    report = json.loads((out / "ingest_report.json").read_text())["unreadable"]
    assert list(report) == ["train/000/2.npz"] and "missing key(s) ['actions']" in report["train/000/2.npz"]
    rows = shard_rows(out)
    a = rows["teco-dmlab-train/000/0.npz"]
    assert np.array_equal(a["frames"], colour_video(T, 16, 16, 0))  # npz is lossless
    assert np.array_equal(a["actions"], acts[0])  # TECO DMLab is already "action after frame t"
    b = rows["teco-dmlab-train/000/1.npz"]
    assert np.array_equal(b["poses"][:, :3], np.arange(3 * T).reshape(T, 3)) and (b["poses"][:, 3:] == 0).all()
    assert "pitch,yaw unknown" in b["env_config"]["poses"] and "all 0" in a["env_config"]["poses"]
    assert inspect_dir(out, preview=False)["quarantined"] == []


def test_teco_minecraft_mp4_alignment_and_truncated_file(tmp_path):
    src = tmp_path / "minecraft" / "train" / "w0"
    raw = np.concatenate([[0], np.random.default_rng(1).integers(1, 4, size=T)]).astype(np.int32)  # (T+1,)
    video = colour_video(T + 1, 16, 16, 30)
    write_mp4(src / "000000.mp4", video, fps=20)
    np.savez_compressed(src / "000000.npz", actions=raw)
    write_mp4(src / "000001.mp4", colour_video(T + 1, 16, 16, 50), fps=20)
    data = (src / "000001.mp4").read_bytes()
    (src / "000001.mp4").write_bytes(data[: len(data) // 2])  # truncated download
    np.savez_compressed(src / "000001.npz", actions=raw)
    out = tmp_path / "out"
    summary = run_ingest(IngestConfig(format="teco-minecraft", src=str(tmp_path / "minecraft"), out_dir=str(out),
                                      length=T))
    assert summary["written"] == 1 and summary["unreadable"] == 1
    report = json.loads((out / "ingest_report.json").read_text())["unreadable"]
    assert str(src / "000001.mp4") in report["train/w0/000001"]
    ep = shard_rows(out)["teco-minecraft-train/w0/000000"]
    expected = np.array([{1: 2, 2: 0, 3: 1}[int(a)] for a in raw[1:]])  # src[t+1], mapped to our ids
    assert np.array_equal(ep["actions"], expected)
    assert np.abs(ep["frames"].astype(int) - video[:T]).mean() < 6  # frame t kept at t (lossy mp4)
    assert (ep["poses"] == 0).all() and "not recorded" in ep["env_config"]["poses"]


def test_worldmem_vpt_actions_and_poses(tmp_path):
    src = tmp_path / "worldmem" / "training"
    rng = np.random.default_rng(2)
    raw = np.stack([rng.integers(0, 3, T + 1), rng.integers(0, 3, T + 1), rng.integers(0, 4, T + 1),
                    rng.choice([11, 12, 13], T + 1), rng.choice([11, 12, 13], T + 1), rng.choice([0, 1, 6], T + 1),
                    np.zeros(T + 1, int), rng.integers(0, 2, T + 1)], axis=1).astype(np.int32)  # (T+1, 8)
    poses = rng.normal(size=(T + 1, 5)).astype(np.float32)
    video = colour_video(T + 1, 18, 32, 90)
    write_mp4(src / "000000.mp4", video, fps=10)
    np.savez_compressed(src / "000000.npz", actions=raw, poses=poses)
    np.savez_compressed(src / "000001.npz", actions=raw)  # missing 'poses'
    write_mp4(src / "000001.mp4", video, fps=10)
    out = tmp_path / "out"
    summary = run_ingest(IngestConfig(format="worldmem", src=str(tmp_path / "worldmem"), out_dir=str(out), length=T))
    assert summary["written"] == 1 and summary["unreadable"] == 1
    unreadable = json.loads((out / "ingest_report.json").read_text())["unreadable"]
    assert "missing key(s) ['poses']" in unreadable["training/000001"]
    ep = shard_rows(out)["worldmem-training/000000"]
    assert ep["actions"].shape == (T, 25) and ep["actions"].dtype == np.int64
    assert np.array_equal(ep["actions"], vpt_actions(raw[1:]))
    assert np.array_equal(ep["poses"], poses[:T])
    fwd = raw[1:, 0] == 1
    assert (ep["actions"][fwd, 11] == 1).all() and (ep["actions"][~fwd, 11] == 0).all()
    assert set(ep["actions"][:, 16].tolist()) <= {-1, 0, 1}
    assert inspect_dir(out, preview=False)["action_shapes"] == ["(25,)"]


def test_rerun_resumes_and_changes_nothing(tmp_path):
    src = tmp_path / "dmlab"
    src.mkdir()
    for i in range(5):
        np.savez(src / f"{i}.npz", video=colour_video(T, 8, 8, i), actions=np.zeros(T, np.int64))
    out = tmp_path / "out"
    cfg = dict(format="teco-dmlab", src=str(src), out_dir=str(out), length=T, episodes_per_shard=2)
    first = run_ingest(IngestConfig(**cfg))
    before = {p.name: p.read_bytes() for p in out.glob("shard-*.parquet")}
    (out / "shard-00001.parquet").unlink()  # lost one shard
    np.savez(src / "9.npz", video=colour_video(T, 8, 8, 9), actions=np.zeros(T, np.int64))  # new file: not listed
    second = run_ingest(IngestConfig(**cfg))
    assert first["written"] == 3 and second["written"] == 1 and second["skipped_shards"] == 2
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.parquet")} == before
    with pytest.raises(ValueError, match="length"):
        run_ingest(IngestConfig(**{**cfg, "length": T - 1}))  # a different config never mixes into the folder


def test_cli_dry_run_and_bad_format(tmp_path, capsys):
    assert main(["--format", "worldmem", str(tmp_path), "--out-dir", str(tmp_path / "o"), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["length"] == 1500
    with pytest.raises(SystemExit):
        main(["--format", "nope", str(tmp_path)])
    assert "teco-dmlab" in capsys.readouterr().err


def test_workers_do_not_change_the_bytes(tmp_path):
    src = tmp_path / "dmlab"
    src.mkdir()
    for i in range(4):
        np.savez(src / f"{i}.npz", video=colour_video(T, 8, 8, i), actions=np.full(T, i % 3, np.int64))
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        run_ingest(IngestConfig(format="teco-dmlab", src=str(src), out_dir=str(out), length=T, episodes_per_shard=1,
                                workers=workers))
        outs[workers] = {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.parquet"))}
    assert len(outs[1]) == 4 and outs[1] == outs[2]
