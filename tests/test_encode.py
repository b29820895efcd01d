"""pipeline.encode: identity round trip, tiny real AutoencoderKL, resume after an injected failure, quarantine; each
input shard read once; a folder mixing schema versions 1 and 2."""
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.encode import EncodeConfig, run_encode
from pipeline.encoders import encoder_from_json, make_encoder
from pipeline.schema import to_numpy
from pipeline.shards import Manifest
from pipeline.synthetic import write_synthetic_shards


def _read_all(folder, column):
    """episode_id -> array, over every shard in the folder's manifest."""
    out = {}
    for path in Manifest(folder).done_paths():
        t = pq.read_table(path)
        for eid, arr in zip(t.column("episode_id").to_pylist(), to_numpy(t, column)):
            assert eid not in out, f"{eid} duplicated"
            out[eid] = arr
    return out


@pytest.fixture()
def tiny_vae(tmp_path):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=1.5305,
                        shift_factor=0.0609)
    path = tmp_path / "vae"
    vae.save_pretrained(path)
    return path


def test_identity_round_trip_exact_local(tmp_path):
    write_synthetic_shards(tmp_path / "in", num_shards=2, episodes_per_shard=3, length=10, size=8)
    report = run_encode(EncodeConfig(in_dir=str(tmp_path / "in"), out_dir=str(tmp_path / "out"), backend="local"))
    assert report["status"] == "ok" and report["rows_encoded"] == 6
    frames, latents = _read_all(tmp_path / "in", "frames"), _read_all(tmp_path / "out", "latents")
    assert frames.keys() == latents.keys()
    enc = make_encoder("identity")
    for eid in frames:
        assert latents[eid].dtype == np.float16 and latents[eid].shape == (10, 3, 8, 8)
        assert np.array_equal(enc.decode(latents[eid]), frames[eid])
    # rerun = resume: nothing left to do, same bytes
    before = (tmp_path / "out" / "shard-00000.parquet").read_bytes()
    again = run_encode(EncodeConfig(in_dir=str(tmp_path / "in"), out_dir=str(tmp_path / "out"), backend="local"))
    assert again["shards_done_before"] == 2 and again["rows_encoded"] == 0
    assert (tmp_path / "out" / "shard-00000.parquet").read_bytes() == before


def test_local_resume_after_injected_failure(tmp_path):
    write_synthetic_shards(tmp_path / "in", num_shards=3, episodes_per_shard=2, length=5, size=8)
    cfg = dict(in_dir=str(tmp_path / "in"), out_dir=str(tmp_path / "out"), backend="local", batch_size=1)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_encode(EncodeConfig(**cfg, fail_after_episodes=3))        # fails in shard 1, after shard 0 is written
    assert sorted(Manifest(tmp_path / "out").shards) == ["shard-00000.parquet"]
    report = run_encode(EncodeConfig(**cfg))
    assert report["shards_done_before"] == 1 and report["rows_encoded"] == 4
    assert sorted(_read_all(tmp_path / "out", "latents")) == sorted(_read_all(tmp_path / "in", "frames"))
    with pytest.raises(ValueError, match="encoder: folder has 'identity'"):
        run_encode(EncodeConfig(**{**cfg, "encoder": "vae", "vae_path": str(tmp_path)}))


def test_local_encode_reads_each_input_shard_once(tmp_path, monkeypatch):
    src = tmp_path / "in"
    write_synthetic_shards(src, num_shards=3, episodes_per_shard=2, length=4, size=8)
    swapped = src / "shard-00001.parquet"                 # readable and valid, but not the bytes the manifest lists
    swapped.write_bytes((src / "shard-00000.parquet").read_bytes())
    Manifest(src).add(swapped.name, dict(Manifest(src).shards[swapped.name], bytes=swapped.stat().st_size))
    reads, opened = [], []
    read_bytes, read_table = Path.read_bytes, pq.read_table
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or read_bytes(self))
    monkeypatch.setattr(pq, "read_table", lambda source, *a, **k: opened.append(source) or read_table(source, *a, **k))
    report = run_encode(EncodeConfig(in_dir=str(src), out_dir=str(tmp_path / "out"), backend="local"))
    assert sorted(reads) == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]  # once each
    assert not [s for s in opened if isinstance(s, (str, Path))]   # every decode is of those bytes, none by path
    assert [q["shard"] for q in report["quarantined"]] == [swapped.name]
    assert "checksum differs from the manifest" in report["quarantined"][0]["reason"]
    assert report["rows_quarantined"] == 2 and report["rows_encoded"] == 4
    assert (src / "quarantine" / swapped.name).exists()
    assert sorted(Manifest(tmp_path / "out").shards) == ["shard-00000.parquet", "shard-00002.parquet"]


def test_vae_tiny_model_encode_decode(tmp_path, tiny_vae):
    write_synthetic_shards(tmp_path / "in", num_shards=1, episodes_per_shard=2, length=4, size=16)
    run_encode(EncodeConfig(in_dir=str(tmp_path / "in"), out_dir=str(tmp_path / "out"), encoder="vae",
                            vae_path=str(tiny_vae), backend="local"))
    t = pq.read_table(tmp_path / "out" / "shard-00000.parquet")
    info = json.loads(t.column("encoder")[0].as_py())
    assert info["name"] == "vae" and info["scale"] == pytest.approx(1.5305) and info["shift"] == pytest.approx(0.0609)
    assert info["latent_shape"] == [4, 8, 8]
    z = to_numpy(t, "latents")
    assert z.shape == (2, 4, 4, 8, 8) and z.dtype == np.float16 and np.isfinite(z).all()
    frames = encoder_from_json(info).decode(z[0])
    assert frames.shape == (4, 16, 16, 3) and frames.dtype == np.uint8


def test_vae_missing_weights_says_where(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        make_encoder("vae", str(tmp_path / "vae"))
    with pytest.raises(FileNotFoundError, match="--vae-path"):
        make_encoder("vae", None)


@pytest.mark.timeout(180)
def test_ray_resume_after_failure_and_quarantine(tmp_path, ray_cluster):
    src, out = tmp_path / "in", tmp_path / "out"
    write_synthetic_shards(src, num_shards=4, episodes_per_shard=2, length=6, size=8)
    bad = src / "shard-00002.parquet"
    bad.write_bytes(bad.read_bytes()[:-100])                       # truncated footer: unreadable
    cfg = dict(in_dir=str(src), out_dir=str(out), workers=1, batch_size=1)
    with pytest.raises(Exception, match="injected failure"):
        run_encode(EncodeConfig(**cfg, fail_after_episodes=3))
    failed = json.loads((out / "encode_report.json").read_text())
    assert failed["status"].startswith("failed") and failed["quarantined"][0]["shard"] == "shard-00002.parquet"
    assert (src / "quarantine" / "shard-00002.parquet").exists() and not bad.exists()
    first = len(Manifest(out).shards)
    assert first < 3
    report = run_encode(EncodeConfig(**cfg))
    assert report["status"] == "ok" and report["shards_done_before"] == first
    assert sorted(Manifest(out).shards) == ["shard-00000.parquet", "shard-00001.parquet", "shard-00003.parquet"]
    frames, latents = _read_all(src, "frames"), _read_all(out, "latents")
    assert sorted(latents) == sorted(frames) and len(latents) == 6      # no row lost or duplicated
    for eid in frames:
        assert np.array_equal(make_encoder("identity").decode(latents[eid]), frames[eid])
    # same rows in the same order as the input shard
    for name in Manifest(out).shards:
        assert (pq.read_table(out / name, columns=["episode_id"]).column(0).to_pylist()
                == pq.read_table(src / name, columns=["episode_id"]).column(0).to_pylist())
    assert not any(p.name.startswith(".") for p in os.scandir(out))  # no temp files left


@pytest.mark.timeout(180)
def test_ray_killed_actor_loses_and_duplicates_nothing(tmp_path, ray_cluster):
    src, out = tmp_path / "in", tmp_path / "out"
    write_synthetic_shards(src, num_shards=3, episodes_per_shard=2, length=4, size=8)
    cfg = dict(in_dir=str(src), out_dir=str(out), workers=1, batch_size=1)
    try:  # the actor process dies once mid-run; Ray restarts it and retries, or the run fails and a rerun resumes
        report = run_encode(EncodeConfig(**cfg, fail_after_episodes=3, fail_mode="exit"))
    except Exception:
        report = run_encode(EncodeConfig(**cfg))
    assert (out / ".fault_injected").exists()                          # the kill did happen
    assert report["status"] == "ok" and len(Manifest(out).shards) == 3
    latents, frames = _read_all(out, "latents"), _read_all(src, "frames")
    assert sorted(latents) == sorted(frames)
    for eid in frames:
        assert np.array_equal(make_encoder("identity").decode(latents[eid]), frames[eid])


@pytest.mark.timeout(180)
def test_ray_encodes_a_folder_mixing_schema_versions(tmp_path, ray_cluster):
    src = tmp_path / "in"
    write_synthetic_shards(src, num_shards=2, episodes_per_shard=2, length=4, size=8)
    run_encode(EncodeConfig(in_dir=str(src), out_dir=str(tmp_path / "local"), backend="local"))
    old = src / "shard-00000.parquet"                  # rewritten as schema version 1: frames a fixed_shape_tensor
    t = pq.read_table(old)
    frames = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(to_numpy(t, "frames")))
    t = t.set_column(t.schema.get_field_index("frames"), pa.field("frames", frames.type, nullable=False), frames)
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, b"memvid.schema_version": b"1"}), old)
    Manifest(src).remove(old.name)                     # new bytes: unlisted, so its footer alone is checked
    report = run_encode(EncodeConfig(in_dir=str(src), out_dir=str(tmp_path / "ray"), workers=1, batch_size=1))
    assert report["status"] == "ok" and report["rows_encoded"] == 4   # one Ray dataset per layout (ray #47960)
    for name in ("shard-00000.parquet", "shard-00001.parquet"):       # output bytes do not depend on the input layout
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes()
