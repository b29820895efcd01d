"""Data-side faults (issue 16): flipped bytes in a folder without manifest.json, a truncated shard the manifest
lists, NaN latents, stale partial files, full and read-only disks, exit codes that agree across tools.

Every shard here is written by the real writer (pipeline.shards.write_shard) and then damaged on disk the way a
bad disk, a killed process or a foreign writer would. Full disks are real write errors (RLIMIT_FSIZE makes the
kernel refuse writes past a size: EFBIG); read-only folders are real permission errors (as root the command
runs without CAP_DAC_OVERRIDE, via util-linux setpriv).
"""
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.cli import run_cli
from pipeline.encode import EncodeConfig, run_encode
from pipeline.encode import main as encode_main
from pipeline.encoders import make_encoder
from pipeline.eval_cases import build_eval_cases
from pipeline.inspect import inspect_dir
from pipeline.inspect import main as inspect_main
from pipeline.schema import SchemaError, episodes_to_table, to_numpy
from pipeline.shards import MANIFEST, ROW_SHA256, Manifest, sha256, write_shard, writer_options
from pipeline.synthetic import synthetic_episode, write_synthetic_shards
from pipeline.windows import LocalWindowStream, WindowSpec, index_shards

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]


def _flip(path: Path, column: str = "frames", num_bytes: int = 16) -> None:
    """Invert `num_bytes` bytes in the middle of `column`'s pages. Random frames are incompressible, so zstd
    stores them raw and the file still decodes: only a checksum can tell."""
    meta = pq.read_metadata(path).row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column)
    at = chunk.data_page_offset + chunk.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[at:at + num_bytes] = bytes(b ^ 0xFF for b in data[at:at + num_bytes])
    path.write_bytes(bytes(data))


def _frames(path: Path) -> np.ndarray:
    return to_numpy(pq.read_table(path), "frames")


def _strip_checksums(path: Path) -> None:
    """Rewrite a shard as the writer did before shards carried row checksums (same options, no checksum key)."""
    table = pq.read_table(path)
    meta = {k: v for k, v in table.schema.metadata.items() if k != ROW_SHA256}
    table = table.replace_schema_metadata(meta)
    pq.write_table(table, path, **writer_options(table.schema, table.num_rows))


def _cli(module: str, *args: str, fsize: int | None = None, read_only: bool = False) -> subprocess.CompletedProcess:
    """`python -m <module> args` in a fresh process; fsize: the kernel refuses writes past this many bytes;
    read_only: without the root capabilities that bypass file permissions."""
    cmd = [sys.executable, "-m", module, *args]
    if read_only and os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a folder read-only for the command")
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", *cmd]
    limit = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))) if fsize else None
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=100, preexec_fn=limit)


@pytest.fixture()
def no_manifest(tmp_path) -> Path:
    """2 shards x 2 episodes written by write_shard, then manifest.json lost; 16 bytes of shard 1 flipped."""
    folder = tmp_path / "episodes"
    write_synthetic_shards(folder, num_shards=2, episodes_per_shard=2, length=6, size=8)
    (folder / MANIFEST).unlink()
    bad = folder / "shard-00001.parquet"
    clean = _frames(bad)
    _flip(bad)
    assert (_frames(bad) != clean).sum() > 0        # the premise: the damaged file decodes, to other pixels
    return folder


# ---------------------------------------------------------------------------------------------------------------
# (2) flipped bytes without a manifest

def test_flipped_bytes_without_manifest_are_quarantined_by_inspect(no_manifest, capsys):
    assert inspect_main([str(no_manifest), "--no-preview"]) == 1
    printed = capsys.readouterr().out
    assert f"no {MANIFEST}" in printed
    report = json.loads((no_manifest / "inspect" / "report.json").read_text())
    assert [Path(q["path"]).name for q in report["quarantined"]] == ["shard-00001.parquet"]
    reason = report["quarantined"][0]["reason"]
    assert "content checksum of episode synth-s0-e" in reason and "differs from the one written in its footer" in reason
    assert report["manifest"] is False and report["unlisted"] == ["shard-00000.parquet"]
    assert not (no_manifest / MANIFEST).exists()     # inspect reports; it does not invent a manifest


def test_flipped_bytes_without_manifest_are_not_encoded(no_manifest, tmp_path, capsys):
    out = tmp_path / "latents"
    assert encode_main(["--in", str(no_manifest), "--out", str(out), "--backend", "local"]) == 1
    assert "quarantined" in capsys.readouterr().err
    report = json.loads((out / "encode_report.json").read_text())
    assert [q["shard"] for q in report["quarantined"]] == ["shard-00001.parquet"]
    assert "content checksum" in report["quarantined"][0]["reason"]
    assert sorted(Manifest(out).shards) == ["shard-00000.parquet"]   # no wrong pixel written anywhere


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_ray_encode_quarantines_damaged_inputs_by_row_checksums_or_manifest(tmp_path, ray_cluster):
    src, out = tmp_path / "in", tmp_path / "out"
    write_synthetic_shards(src, num_shards=4, episodes_per_shard=2, length=6, size=8)
    old = src / "shard-00002.parquet"          # written before row checksums: the manifest's SHA-256 vouches for it
    _strip_checksums(old)
    Manifest(src).add(old.name, {"rows": 2, "sha256": sha256(old), "bytes": old.stat().st_size})
    for name in ("shard-00001.parquet", "shard-00002.parquet"):
        _flip(src / name)                      # same size, still decodes: only a checksum can tell
    report = run_encode(EncodeConfig(in_dir=str(src), out_dir=str(out), workers=1, batch_size=1))
    reasons = {q["shard"]: q["reason"] for q in report["quarantined"]}
    assert sorted(reasons) == ["shard-00001.parquet", "shard-00002.parquet"]
    assert "content checksum of episode synth-s0-e" in reasons["shard-00001.parquet"]
    assert "checksum differs from the manifest" in reasons["shard-00002.parquet"]
    assert sorted(Manifest(out).shards) == ["shard-00000.parquet", "shard-00003.parquet"]
    assert sorted(Manifest(src).shards) == ["shard-00000.parquet", "shard-00003.parquet"]   # no tool counts them done
    for name in Manifest(out).shards:          # the good shards, exactly
        frames, latents = _frames(src / name), to_numpy(pq.read_table(out / name), "latents")
        assert np.array_equal(make_encoder("identity").decode(latents.reshape(-1, *latents.shape[2:])),
                              frames.reshape(-1, *frames.shape[2:]))


def test_shards_without_checksum_or_manifest_are_refused_naming_the_fix(tmp_path):
    folder = tmp_path / "old"
    write_synthetic_shards(folder, num_shards=1, episodes_per_shard=2, length=6, size=8)
    _strip_checksums(folder / "shard-00000.parquet")
    (folder / MANIFEST).unlink()
    with pytest.raises(SchemaError, match="no manifest.json lists it.*rerun the command that wrote"):
        index_shards(folder)
    with pytest.raises(SchemaError, match="shard-00000.parquet.*no manifest.json lists it"):
        run_encode(EncodeConfig(in_dir=str(folder), out_dir=str(tmp_path / "out"), backend="local"))
    assert (folder / "shard-00000.parquet").exists()          # not known to be bad: refused, not moved
    report = inspect_dir(folder, preview=False)
    assert report["unverified"] == ["shard-00000.parquet"] and report["quarantined"] == []
    # listed in a manifest, the same old shard keeps reading (the manifest's SHA-256 vouches for it)
    p = folder / "shard-00000.parquet"
    Manifest(folder).add(p.name, {"rows": 2, "sha256": sha256(p), "bytes": p.stat().st_size})
    assert len(list(LocalWindowStream(folder, WindowSpec(2, 2, 4, seed=0), epochs=1))) > 0


# ---------------------------------------------------------------------------------------------------------------
# (5) every listed shard read whole, or the run stops naming it

def test_truncated_listed_shard_stops_the_window_stream_naming_it(tmp_path):
    write_synthetic_shards(tmp_path, num_shards=3, episodes_per_shard=2, length=8, size=8)
    cut = tmp_path / "shard-00001.parquet"
    cut.write_bytes(cut.read_bytes()[:-300])
    with pytest.raises(SchemaError, match=r"shard-00001.parquet.*manifest.json lists \d+ bytes.*pipeline.inspect"):
        LocalWindowStream(tmp_path, WindowSpec(2, 4, 2, seed=0))
    cut.unlink()
    with pytest.raises(SchemaError, match="shard-00001.parquet: listed in manifest.json but missing"):
        index_shards(tmp_path)


def test_flipped_bytes_in_a_listed_shard_stop_the_stream_naming_it(tmp_path):
    write_synthetic_shards(tmp_path, num_shards=2, episodes_per_shard=2, length=8, size=8)
    _flip(tmp_path / "shard-00000.parquet")         # same size: only its content is wrong
    with pytest.raises(SchemaError, match="shard-00000.parquet: checksum differs from the manifest"):
        list(LocalWindowStream(tmp_path, WindowSpec(2, 4, 2, seed=0), epochs=1))


# ---------------------------------------------------------------------------------------------------------------
# (6) non-finite latents

def _latent_rows(n: int = 2, nan_row: int | None = None) -> list[dict]:
    rows = []
    for i in range(n):
        ep = synthetic_episode(i, 8, 4, 0, revisit=True)
        z = (ep.pop("frames").transpose(0, 3, 1, 2) / 127.5 - 1).astype(np.float16)   # (T,3,h,w)
        if i == nan_row:
            z[3, 1, 2, 2] = np.nan
        rows.append(dict(ep, latents=z, encoder=json.dumps({"name": "identity"})))
    return rows


def test_write_shard_refuses_non_finite_latents_naming_the_episode(tmp_path):
    with pytest.raises(SchemaError, match=r"episode synth-s0-e1 \(row 1\) has 1 NaN or infinite"):
        write_shard(episodes_to_table(_latent_rows(nan_row=1), "latents"), tmp_path / "z.parquet", "latents")
    assert not list(tmp_path.iterdir())


@pytest.fixture()
def nan_latents(tmp_path) -> Path:
    """A listed latent shard with a NaN in episode synth-s0-e1, as an older or foreign writer left it."""
    folder = tmp_path / "latents"
    folder.mkdir()
    table = episodes_to_table(_latent_rows(nan_row=1), "latents")
    path = folder / "shard-00000.parquet"
    pq.write_table(table, path, **writer_options(table.schema, table.num_rows))
    Manifest(folder).add(path.name, {"rows": 2, "sha256": sha256(path), "bytes": path.stat().st_size})
    return folder


def test_nan_latents_are_named_by_inspect_windows_and_eval_cases(nan_latents):
    name = "shard-00000.parquet"
    with pytest.raises(SchemaError, match=rf"{name}: episode synth-s0-e1 \(row 1\) has 1 NaN or infinite"):
        list(LocalWindowStream(nan_latents, WindowSpec(2, 2, 4, seed=0), epochs=1))
    with pytest.raises(SchemaError, match=rf"{name}: episode synth-s0-e1 \(row 1\) has 1 NaN"):
        build_eval_cases(nan_latents, cases_per_bin=2, max_memory=4, horizon=2, window=2)
    report = inspect_dir(nan_latents, preview=False)
    assert [Path(q["path"]).name for q in report["quarantined"]] == [name]
    assert "synth-s0-e1 (row 1) has 1 NaN" in report["quarantined"][0]["reason"]


def test_encoder_that_outputs_nan_stops_encode_naming_shard_and_episode(tmp_path, capsys):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), block_out_channels=(8,), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=8)
    with torch.no_grad():
        vae.encoder.conv_in.bias[0] = float("nan")  # broken weights: every latent is NaN
    vae.save_pretrained(tmp_path / "vae")
    write_synthetic_shards(tmp_path / "in", num_shards=1, episodes_per_shard=2, length=4, size=8)
    args = ["--in", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--backend", "local",
            "--encoder", "vae", "--vae-path", str(tmp_path / "vae")]
    with pytest.raises(SystemExit) as stop:
        run_cli(encode_main, args)
    assert stop.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "shard-00000.parquet" in err[0] and "episode synth-s0-e0 (row 0)" in err[0]
    assert "NaN or infinite" in err[0] and Manifest(tmp_path / "out").shards == {}


# ---------------------------------------------------------------------------------------------------------------
# (7) partial files, whole causes

def test_encode_removes_stale_partial_shards(tmp_path):
    write_synthetic_shards(tmp_path / "in", num_shards=1, episodes_per_shard=2, length=4, size=8)
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".shard-00000.parquet.tmp4242", out / ".manifest.json.tmp4242"]  # left by a killed write
    for p in stale:
        p.write_bytes(b"PAR1 partial")
    assert run_encode(EncodeConfig(in_dir=str(tmp_path / "in"), out_dir=str(out), backend="local"))["status"] == "ok"
    assert not [p for p in stale if p.exists()]


def test_crash_record_keeps_the_cause_of_a_multi_line_error():
    from ray.exceptions import RayTaskError

    from pipeline.collect import _crash_record

    cause = OSError(28, "No space left on device")
    error = RayTaskError("ShardWorker.render_shard", "Traceback (most recent call last):\n  File \"x.py\", "
                         "line 1, in f\nOSError: [Errno 28] No space left on device", cause).as_instanceof_cause()
    record = _crash_record(3, error, 0, "shard left not-done")
    assert "No space left on device" in record["error"] and "shard left not-done" in record["error"]
    assert record["error"].startswith("RayTaskError(OSError)") and "\n" not in record["error"]
    assert record["message"] == str(error)


def test_full_disk_gives_one_line_naming_the_path_and_leaves_no_partial(tmp_path):
    write_synthetic_shards(tmp_path / "in", num_shards=2, episodes_per_shard=2, length=6, size=16)
    out = tmp_path / "out"
    run = _cli("pipeline.encode", "--in", str(tmp_path / "in"), "--out", str(out), "--backend", "local",
               fsize=8192)
    assert run.returncode == 2, run.stderr
    err = run.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in run.stderr, run.stderr
    assert str(out / "shard-00000.parquet") in err[0] and "File too large" in err[0]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]      # no partial file left


# ---------------------------------------------------------------------------------------------------------------
# (8) exit codes that agree; read-only folders

def test_encode_and_inspect_agree_on_exit_codes_and_ignore_foreign_files(tmp_path):
    src = tmp_path / "a"
    write_synthetic_shards(src, num_shards=3, episodes_per_shard=2, length=12, size=8)
    build_eval_cases(src, cases_per_bin=1, max_memory=4, horizon=2, window=2)   # not a shard: left alone
    cut = src / "shard-00001.parquet"
    cut.write_bytes(cut.read_bytes()[:-200])
    twin = tmp_path / "b"
    shutil.copytree(src, twin)
    out = tmp_path / "out"
    assert encode_main(["--in", str(src), "--out", str(out), "--backend", "local"]) == 1
    assert inspect_main([str(twin), "--no-preview"]) == 1
    report = json.loads((twin / "inspect" / "report.json").read_text())
    assert [Path(q["path"]).name for q in report["quarantined"]] == [cut.name]
    assert report["ignored"] == ["eval_cases.parquet"] and (twin / "eval_cases.parquet").exists()
    for folder in (src, twin):   # the bad shard left the manifest with its file: no tool counts it as done
        assert cut.name not in Manifest(folder).shards and (folder / "quarantine" / cut.name).exists()
    # what is left is clean for both tools
    assert encode_main(["--in", str(src), "--out", str(out), "--backend", "local"]) == 0
    assert inspect_main([str(src), "--no-preview"]) == 0 and inspect_main([str(twin), "--no-preview"]) == 0


def test_read_only_folders_give_one_line_after_what_was_validated(tmp_path):
    folder = tmp_path / "episodes"
    write_synthetic_shards(folder, num_shards=2, episodes_per_shard=2, length=6, size=8)
    folder.chmod(0o555)
    try:
        run = _cli("pipeline.inspect", str(folder), "--no-preview", read_only=True)
        enc = _cli("pipeline.encode", "--in", str(folder), "--out", str(folder / "latents"), "--backend", "local",
                   read_only=True)
    finally:
        folder.chmod(0o755)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "2 valid shards, 4 episodes" in run.stdout
    err = run.stderr.strip().splitlines()
    assert len(err) == 1 and str(folder / "inspect") in err[0] and "Permission denied" in err[0]
    assert enc.returncode == 2 and "Traceback" not in enc.stderr, enc.stderr
    err = enc.stderr.strip().splitlines()
    assert len(err) == 1 and str(folder / "latents") in err[0] and "Permission denied" in err[0]
