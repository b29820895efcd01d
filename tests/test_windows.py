"""pipeline.windows: window contents, padding, resume equality, rank sharding, Ray path == local path."""
import itertools

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.encode import EncodeConfig, run_encode
from pipeline.schema import to_numpy
from pipeline.synthetic import write_synthetic_shards
from pipeline.windows import LocalWindowStream, WindowSpec, collate, ray_collate_fn, ray_window_dataset


@pytest.fixture()
def data(tmp_path):
    # shard 0 and 1: T=24; shard 2: T=5 (shorter than the window: skipped and counted)
    write_synthetic_shards(tmp_path, num_shards=2, episodes_per_shard=3, length=24, size=8, seed=1)
    short = tmp_path / "short"
    write_synthetic_shards(short, num_shards=1, episodes_per_shard=2, length=5, size=8, seed=2)
    (short / "shard-00000.parquet").rename(tmp_path / "shard-00002.parquet")
    from pipeline.shards import Manifest, sha256
    p = tmp_path / "shard-00002.parquet"
    Manifest(tmp_path).add(p.name, {"rows": 2, "sha256": sha256(p), "bytes": p.stat().st_size})
    return tmp_path


def _episodes(folder):
    out = {}
    for i in range(2):
        t = pq.read_table(folder / f"shard-{i:05d}.parquet")
        for k, (f, a) in enumerate(zip(to_numpy(t, "frames"), to_numpy(t, "actions"))):
            out[i * 3 + k] = (f, a)
    return out


def _take(stream, n):
    return list(itertools.islice(iter(stream), n))


def _same(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def test_windows_content_padding_and_skips(data):
    spec = WindowSpec(memory_length=12, window=6, batch_size=4, seed=0)
    stream = LocalWindowStream(data, spec, epochs=1)
    assert stream.num_skipped_episodes == 2
    batches = list(stream)
    assert sum(len(b["x"]) for b in batches) == 6 * (24 // 6)
    b = batches[0]
    assert b["mem_x"].shape == (4, 12, 3, 8, 8) and b["x"].shape == (4, 6, 3, 8, 8)
    assert b["mem_x"].dtype == torch.float32 and b["actions"].dtype == torch.int64 and b["mem_mask"].dtype == torch.bool
    episodes = _episodes(data)
    # every sample's current window is a contiguous run of some episode, memory is the frames before it
    for b in batches:
        for x, acts, mem, mask in zip(b["x"], b["actions"], b["mem_x"], b["mem_mask"]):
            pix = ((x.permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy()
            hits = [(e, t0) for e, (f, _) in episodes.items() for t0 in range(24 - 5) if np.array_equal(f[t0:t0 + 6], pix)]
            assert len(hits) == 1
            e, t0 = hits[0]
            assert t0 >= 12                                 # full memory: T >= m + w here
            assert torch.equal(acts, torch.tensor(episodes[e][1][t0:t0 + 6]))
            n_valid = min(12, t0)
            assert mask.sum() == n_valid and not mask[: 12 - n_valid].any()
            assert (mem[: 12 - n_valid] == 0).all()


def test_short_history_left_padded(data):
    spec = WindowSpec(memory_length=30, window=6, batch_size=64, seed=3)   # m + w > T = 24: always padded
    b = next(iter(LocalWindowStream(data, spec)))
    pad = ~b["mem_mask"]
    assert pad[:, :12].all() and (b["mem_x"][pad] == 0).all() and (b["mem_actions"][pad] == 0).all()


def test_resume_gives_the_next_batches(data):
    spec = WindowSpec(memory_length=4, window=4, batch_size=5, seed=7)
    full = _take(LocalWindowStream(data, spec), 9)       # crosses an epoch boundary (36 samples / 5)
    assert all(len(b["x"]) == 5 for b in full)          # batch 8 holds the last sample of epoch 0 and 4 of epoch 1
    first = LocalWindowStream(data, spec)
    head = _take(first, 4)
    state = first.state_dict()
    resumed = LocalWindowStream(data, spec)
    resumed.load_state_dict(state)
    assert _same(head + _take(resumed, 5), full)
    other = _take(LocalWindowStream(data, WindowSpec(4, 4, 5, seed=8)), 2)
    assert not _same(other, full[:2])
    with pytest.raises(ValueError, match="seed"):
        LocalWindowStream(data, WindowSpec(4, 4, 5, seed=8)).load_state_dict(state)


def test_ranks_partition_the_epoch(data):
    spec = WindowSpec(memory_length=2, window=4, batch_size=3, seed=0)
    one = torch.cat([b["x"] for b in LocalWindowStream(data, spec, epochs=1)])
    parts = [torch.cat([b["x"] for b in LocalWindowStream(data, spec, rank=r, world_size=2, epochs=1)]) for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == len(one) // 2
    assert torch.equal(torch.stack([parts[0], parts[1]], 1).reshape(one.shape), one)


def test_latent_shards_give_the_same_windows(data, tmp_path):
    run_encode(EncodeConfig(in_dir=str(data), out_dir=str(tmp_path / "lat"), backend="local"))
    spec = WindowSpec(memory_length=5, window=3, batch_size=4, seed=2)
    px, lat = _take(LocalWindowStream(data, spec), 3), _take(LocalWindowStream(tmp_path / "lat", spec), 3)
    for a, b in zip(px, lat):
        assert torch.allclose(a["x"], b["x"], atol=1e-3) and torch.allclose(a["mem_x"], b["mem_x"], atol=1e-3)
        assert torch.equal(a["mem_mask"], b["mem_mask"])


@pytest.mark.timeout(180)
def test_ray_path_matches_local_and_resumes(data, ray_cluster):
    spec = WindowSpec(memory_length=6, window=4, batch_size=4, seed=5)
    local = _take(LocalWindowStream(data, spec, epochs=1), 100)
    ds = ray_window_dataset(data, spec, epoch=0)
    ray_batches = [collate(b) for b in ds.iter_batches(batch_size=spec.batch_size, batch_format="numpy")]
    assert _same(ray_batches, local)
    torch_batches = list(ds.iter_torch_batches(batch_size=spec.batch_size, collate_fn=ray_collate_fn()))
    assert _same(torch_batches, local)
    # resume from a saved position (sample index 2 batches into epoch 0) over two epochs: the batches cross the
    # epoch end exactly as the local stream's do (24 samples per epoch, batch 5)
    spec5 = WindowSpec(memory_length=6, window=4, batch_size=5, seed=5)
    stream = LocalWindowStream(data, spec5)
    _take(stream, 2)
    expected = _take(stream, 8)
    resumed = ray_window_dataset(data, spec5, epoch=0, start=2 * spec5.batch_size, num_epochs=2)
    tail = [collate(b) for b in resumed.iter_batches(batch_size=spec5.batch_size, batch_format="numpy")]
    assert _same(tail[:8], expected)
