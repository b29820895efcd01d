"""pipeline.schema + shards: the binary frames layout (schema version 2), which pyarrow alone reads back,
byte-identical rewrites, errors that name the column, and version 1 shards (frames as a fixed_shape_tensor) still
read by every reader: windows, inspect, encode (a folder mixing both versions; the Ray backend's case is in
test_encode.py)."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.encode import EncodeConfig, run_encode
from pipeline.inspect import inspect_dir
from pipeline.schema import (
    SCHEMA_VERSION,
    SchemaError,
    check_table,
    episodes_to_table,
    schema_version,
    tensor_shape,
    to_numpy,
)
from pipeline.shards import Manifest, load_shard, sha256, validate_shard, write_shard
from pipeline.synthetic import synthetic_episode, write_synthetic_shards
from pipeline.windows import LocalWindowStream, WindowSpec

pytestmark = pytest.mark.timeout(180)


def _rows(n=3, length=6, size=8, seed=0):
    return [synthetic_episode(i, length, size, seed, revisit=True) for i in range(n)]


def _as_version1(table: pa.Table) -> pa.Table:
    """The same episodes in the layout written before schema version 2: frames as an arrow.fixed_shape_tensor."""
    idx = table.schema.get_field_index("frames")
    frames = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(to_numpy(table, "frames")))
    table = table.set_column(idx, pa.field("frames", frames.type, nullable=False), frames)
    return table.replace_schema_metadata({**table.schema.metadata, b"memvid.schema_version": b"1"})


def _write_version1(table: pa.Table, path) -> dict:
    """What the old write_shard did (options inline), listed like any shard."""
    pq.write_table(_as_version1(table), path, compression="zstd", compression_level=3, row_group_size=table.num_rows,
                   use_dictionary=["episode_id", "env", "agent", "seed", "episode_index", "fps", "env_config"],
                   write_statistics=False)
    return {"rows": table.num_rows, "sha256": sha256(path), "bytes": path.stat().st_size}


def test_frames_are_one_fixed_size_binary_value_per_episode_that_pyarrow_alone_reads(tmp_path):
    rows = _rows()
    write_shard(episodes_to_table(rows), tmp_path / "s.parquet")
    leaf = pq.ParquetFile(tmp_path / "s.parquet").schema.column(7)
    assert (leaf.name, leaf.physical_type, leaf.max_repetition_level) == ("frames", "FIXED_LEN_BYTE_ARRAY", 0)
    # pyarrow alone, no project code: the bytes and the field metadata give the (N, T, H, W, 3) array back
    table = pq.read_table(tmp_path / "s.parquet")
    meta = json.loads(table.schema.field("frames").metadata[b"memvid.tensor"])
    assert meta == {"dtype": "uint8", "shape": [6, 8, 8, 3]}
    col = table.column("frames").combine_chunks()
    plain = np.frombuffer(col.buffers()[1], meta["dtype"]).reshape(-1, *meta["shape"])
    expected = np.stack([r["frames"] for r in rows])
    np.testing.assert_array_equal(plain, expected)
    np.testing.assert_array_equal(to_numpy(table, "frames"), expected)
    np.testing.assert_array_equal(to_numpy(table.slice(1, 2), "frames"), expected[1:3])  # a slice keeps its offset
    assert tensor_shape(table.schema, "frames") == (6, 8, 8, 3) and tensor_shape(table.schema, "poses") == (6, 5)
    assert schema_version(table.schema) == SCHEMA_VERSION == 2


def test_rewrite_is_byte_identical_and_other_episodes_differ(tmp_path):
    a, b, c = (write_shard(episodes_to_table(r), tmp_path / f"{k}.parquet") for k, r in
               (("a", _rows()), ("b", _rows()), ("c", _rows(seed=1))))
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes() and a == b
    assert c["sha256"] != a["sha256"]


def test_bad_binary_frames_are_refused_naming_the_column(tmp_path):
    table = episodes_to_table(_rows())
    idx = table.schema.get_field_index("frames")
    field = table.schema.field("frames")
    wrong_shape = field.with_metadata({b"memvid.tensor": b'{"dtype":"uint8","shape":[6,8,8,4]}'})
    no_meta = field.remove_metadata()
    for bad, message in ((wrong_shape, "column 'frames': 1152 bytes per row, but shape [6, 8, 8, 4] of uint8 "
                                       "needs 1536"),
                         (no_meta, "column 'frames': type fixed_size_binary[1152], expected fixed_size_binary with "
                                   "memvid.tensor metadata")):
        broken = table.set_column(idx, bad, table.column("frames"))
        assert message in "; ".join(map(str, check_table(broken)))
        with pytest.raises(SchemaError, match="refusing to write an invalid shard"):
            write_shard(broken, tmp_path / "bad.parquet")
    newer = table.replace_schema_metadata({**table.schema.metadata, b"memvid.schema_version": b"3"})
    assert "3 is not one this code reads (1, 2); update the code" in str(check_table(newer)[0])
    with pytest.raises(SchemaError, match="refusing to write schema version 1; build the table with "
                                          "pipeline.schema.episodes_to_table"):
        write_shard(_as_version1(table), tmp_path / "v1.parquet")
    assert not list(tmp_path.glob("*.parquet")) and not list(tmp_path.glob(".*"))


@pytest.fixture()
def mixed(tmp_path):
    """shard 0 in schema version 1 (as written before issue 15), shard 1 in version 2; and the all-v2 twin."""
    new, mixed = tmp_path / "new", tmp_path / "mixed"
    write_synthetic_shards(new, num_shards=2, episodes_per_shard=3, length=24, size=8, seed=1)
    write_synthetic_shards(mixed, num_shards=2, episodes_per_shard=3, length=24, size=8, seed=1)
    old = mixed / "shard-00000.parquet"
    Manifest(mixed).add(old.name, _write_version1(pq.read_table(old), old))
    return new, mixed


def test_version1_shards_keep_reading(mixed):
    new, mixed = mixed
    old = mixed / "shard-00000.parquet"
    assert schema_version(pq.read_schema(old)) == 1 and validate_shard(old, expected_sha256=sha256(old)) is None
    for col in ("frames", "actions", "poses"):
        np.testing.assert_array_equal(to_numpy(load_shard(old), col), to_numpy(pq.read_table(new / old.name), col))
    spec = WindowSpec(memory_length=5, window=4, batch_size=4, seed=3)
    a, b = list(LocalWindowStream(new, spec, epochs=1)), list(LocalWindowStream(mixed, spec, epochs=1))
    assert len(a) == len(b) and all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    report = inspect_dir(mixed, preview=True)
    assert report["quarantined"] == [] and report["shards_valid"] == 2 and report["frames"] == 6 * 24


def _latents(folder):
    return {eid: z for p in Manifest(folder).done_paths() for eid, z in
            zip(pq.read_table(p).column("episode_id").to_pylist(), to_numpy(pq.read_table(p), "latents"))}


def test_encode_reads_a_mixed_folder_locally(mixed, tmp_path):
    new, mixed = mixed
    for folder in (new, mixed):
        assert run_encode(EncodeConfig(in_dir=str(folder), out_dir=str(tmp_path / f"{folder.name}-lat"),
                                       backend="local"))["status"] == "ok"
    a, b = _latents(tmp_path / "new-lat"), _latents(tmp_path / "mixed-lat")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    for name in ("shard-00000.parquet", "shard-00001.parquet"):    # outputs are version 2 whatever the input
        assert (tmp_path / "new-lat" / name).read_bytes() == (tmp_path / "mixed-lat" / name).read_bytes()
