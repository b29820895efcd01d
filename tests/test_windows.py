"""pipeline.windows: window contents, padding, resume equality, rank sharding, Ray path == local path; revisit-biased
windows and memory dropout (seeded, today's order when off, revisits in reach, cut memory = padding)."""
import dataclasses
import itertools
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.encode import EncodeConfig, run_encode
from pipeline.schema import to_numpy
from pipeline.synthetic import write_synthetic_shards
from pipeline.windows import (
    LocalWindowStream,
    ShardCache,
    WindowSpec,
    collate,
    epoch_samples,
    index_shards,
    make_windows,
    rank_batches,
    ray_collate_fn,
    ray_rank_datasets,
    ray_window_dataset,
    reach_stats,
)


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


@pytest.fixture(scope="module")
def maze(tmp_path_factory):
    """Real maze revisit-agent episodes (2 shards x 2 episodes x 96 frames, 8x8): room and exact revisits."""
    from envs.rollout import rollout
    from pipeline.schema import episodes_to_table
    from pipeline.shards import Manifest, write_shard

    folder = tmp_path_factory.mktemp("maze")
    for s in range(2):
        rows = []
        for i in (2 * s, 2 * s + 1):
            ep = rollout("maze", {"size": 9, "height": 8, "width": 8}, "revisit", {}, 96, np.random.default_rng([1, i]))
            rows.append(dict(episode_id=f"maze-s1-e{i}", env="maze", agent="revisit", seed=1, episode_index=i,
                             fps=ep["fps"], env_config=json.dumps(ep["env_config"], default=str),
                             **{k: ep[k] for k in ("frames", "actions", "poses", "scene", "revisit_gap")}))
        name = f"shard-{s:05d}.parquet"
        Manifest(folder).add(name, write_shard(episodes_to_table(rows), folder / name))
    return folder


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
            hits = [(e, t0) for e, (f, _) in episodes.items() for t0 in range(24 - 5)
                    if np.array_equal(f[t0:t0 + 6], pix)]
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


def test_collate_pixels_match_the_reference_conversion_exactly(data):
    # two code paths agree: collate's ufunc passes vs a 256-entry table of k / 127.5 - 1 in float32 (the formula the
    # identity encoder and evaluation use), and channels-first rows vs the stored (T, H, W, 3) frames
    table = np.arange(256, dtype=np.float32) / 127.5 - 1.0
    levels = np.arange(256, dtype=np.uint8).reshape(1, 1, 1, 16, 16)
    got = collate({"mem_x": levels, "x": levels, "mem_mask": np.ones((1, 1), bool),
                   "mem_actions": np.zeros((1, 1), np.int64), "actions": np.zeros((1, 1), np.int64)})
    assert got["x"].dtype == torch.float32 and np.array_equal(got["x"].numpy(), table[levels])
    spec = WindowSpec(memory_length=3, window=2, batch_size=4, seed=0)
    shards = index_shards(data)
    samples = epoch_samples(shards, spec, 0)[:6]
    rows = make_windows(shards, samples, spec, ShardCache())
    for (si, row, t0, _), x in zip(samples, rows["x"]):
        frames = to_numpy(pq.read_table(shards[si].path), "frames")[row]     # (T, H, W, 3)
        assert np.array_equal(x, frames[t0:t0 + 2].transpose(0, 3, 1, 2))   # (w, 3, H, W)


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
    # epoch end exactly as the local stream's do (38 samples per epoch, batch 5)
    spec5 = WindowSpec(memory_length=6, window=4, batch_size=5, seed=5)
    stream = LocalWindowStream(data, spec5)
    _take(stream, 2)
    expected = _take(stream, 8)
    resumed = ray_window_dataset(data, spec5, epoch=0, start=2 * spec5.batch_size, num_epochs=2)
    tail = [collate(b) for b in resumed.iter_batches(batch_size=spec5.batch_size, batch_format="numpy")]
    assert _same(tail[:8], expected)
    # two data-parallel workers, each its own dataset: worker r's batch k is batch 2k + r of the one-worker order,
    # so the two together train on exactly the batches one worker would, whatever Ray's scheduling
    ranks = ray_rank_datasets(data, spec5, epoch=0, start=2 * spec5.batch_size, num_epochs=2, ranks=2)
    per_rank = [[collate(b) for b in ds.iter_batches(batch_size=spec5.batch_size, batch_format="numpy")][:4]
                for ds in ranks]
    assert _same([per_rank[k % 2][k // 2] for k in range(8)], expected)


def test_rank_batches_deals_whole_steps():
    samples = np.arange(23 * 4).reshape(23, 4)  # 23 samples, batch 3, 2 ranks: 3 whole steps of 6
    r0, r1 = rank_batches(samples, 3, 0, 2), rank_batches(samples, 3, 1, 2)
    assert r0[:, 0].tolist() == [0, 4, 8, 24, 28, 32, 48, 52, 56] and len(r1) == 9
    assert r1[:3, 0].tolist() == [12, 16, 20]
    assert rank_batches(samples, 3, 0, 1) is samples
    with pytest.raises(ValueError, match="rank must be in"):
        rank_batches(samples, 3, 2, 2)


# ---------------------------------------------------------------------------------------------------------------
# revisit-biased windows and memory dropout


def _legacy_samples(shards, spec, epoch):
    """epoch_samples as it was before revisit_share/memory_dropout (rank 0 of 1): pins the data order of old runs."""
    rng = np.random.default_rng([spec.seed, epoch])
    parts = []
    for si in rng.permutation(len(shards)):
        info = shards[si]
        if info.length < spec.window:
            continue
        rows = np.repeat(np.arange(info.num_rows), spec.samples_per_episode or max(1, info.length // spec.window))
        t0 = rng.integers(min(spec.memory_length, info.length - spec.window), info.length - spec.window + 1, len(rows))
        parts.append(np.stack([np.full(len(rows), si), rows, t0], 1)[rng.permutation(len(rows))])
    return np.concatenate(parts)


def _in_reach(folder, samples, m, w):
    """Per sample: a revisit frame (room: t - revisit_gap[t]; exact: same pose) in the window whose source lies in the
    memory, straight from the shard columns (not through pipeline.windows' candidate code)."""
    from envs.agents import exact_revisit_sources

    shards, columns, hits = index_shards(folder), {}, []
    for si, row, t0, _ in samples:
        if si not in columns:
            t = pq.read_table(shards[si].path, columns=["revisit_gap", "poses"])
            columns[si] = (to_numpy(t, "revisit_gap"), to_numpy(t, "poses"))
        gap, exact = columns[si][0][row], exact_revisit_sources(columns[si][1][row])
        sources = [(t, t - gap[t]) for t in range(t0, t0 + w) if gap[t] >= 0]
        sources += [(t, exact[t]) for t in range(t0, t0 + w) if exact[t] >= 0]
        hits.append(any(t0 - m <= src < t0 for _, src in sources))
    return np.array(hits)


def test_options_off_keep_todays_order_and_counts_never_change(data, maze):
    spec = WindowSpec(memory_length=6, window=4, batch_size=5, seed=3)
    for folder in (data, maze):
        shards = index_shards(folder)
        for epoch in (0, 1):
            got = epoch_samples(shards, spec, epoch)
            assert np.array_equal(got[:, :3], _legacy_samples(shards, spec, epoch)) and (got[:, 3] == 6).all()
        for share, dropout in ((0.5, 0.5), (1.0, 1.0), (0.3, 0.0)):
            other = dataclasses.replace(spec, revisit_share=share, memory_dropout=dropout)
            assert len(epoch_samples(shards, other, 0)) == len(got)


def test_revisit_and_dropout_sampling_is_seeded(maze):
    shards = index_shards(maze)
    spec = WindowSpec(memory_length=16, window=8, batch_size=4, seed=1, revisit_share=0.5, memory_dropout=0.5)
    a = epoch_samples(shards, spec, 0)
    assert np.array_equal(a, epoch_samples(shards, spec, 0))
    assert not np.array_equal(a, epoch_samples(shards, dataclasses.replace(spec, seed=2), 0))
    assert not np.array_equal(a, epoch_samples(shards, spec, 1))
    ranks = [epoch_samples(shards, spec, 0, r, 2) for r in (0, 1)]  # ranks split the one seeded list
    assert np.array_equal(np.stack(ranks, 1).reshape(-1, 4), a[: 2 * len(ranks[0])])


def test_revisit_share_puts_revisits_in_reach(maze):
    m, w = 16, 8
    shares = {}
    for share in (0.0, 0.5, 1.0):
        spec = WindowSpec(memory_length=m, window=w, batch_size=4, seed=0, revisit_share=share)
        measured = _in_reach(maze, epoch_samples(index_shards(maze), spec, 0), m, w).mean()
        stats = reach_stats(maze, spec)
        assert stats["in_reach"] == pytest.approx(measured) and stats["in_reach_kept"] == stats["in_reach"]
        assert share == 0 or stats["in_reach_room"] > 0 and stats["in_reach_exact"] > 0  # both kinds are drawn
        shares[share] = measured
    assert shares[0.0] < 0.5 <= shares[0.5] and shares[1.0] == 1.0  # ceil(share * n) per shard: at least the share


def test_memory_dropout_cuts_memory_into_padding(data):
    shards = index_shards(data)
    for m in (6, 30):                                    # 30 > T - w: cuts combine with left padding
        spec = WindowSpec(memory_length=m, window=6, batch_size=4, seed=4)
        full = epoch_samples(shards, spec, 0)
        cut = epoch_samples(shards, dataclasses.replace(spec, memory_dropout=1.0), 0)
        assert np.array_equal(full[:, :3], cut[:, :3])   # the same windows; only keep differs
        assert set(cut[:, 3]) <= set(range(1, m + 1))
        if m == 6:
            assert set(cut[:, 3]) == set(range(1, m + 1))  # every memory length 1..m occurs
        a, b = make_windows(shards, full, spec, ShardCache()), make_windows(shards, cut, spec, ShardCache())
        kept = np.arange(m)[None] >= m - cut[:, 3:4]
        assert np.array_equal(b["mem_mask"], a["mem_mask"] & kept)
        assert np.array_equal(b["x"], a["x"]) and np.array_equal(b["actions"], a["actions"])
        assert (b["mem_x"][~kept] == 0).all() and (b["mem_actions"][~kept] == 0).all()
        assert np.array_equal(b["mem_x"][kept], a["mem_x"][kept])
    half = epoch_samples(shards, WindowSpec(6, 4, 4, seed=0, memory_dropout=0.5), 0)
    assert 0 < (half[:, 3] < 6).sum() <= np.ceil(0.5 * len(half))


def test_bad_shares_are_refused_naming_the_flag(capsys):
    from training.train import TrainConfig, main

    with pytest.raises(ValueError, match=r"revisit_share \(--revisit-share\) 1.5: expected a share in \[0, 1\]"):
        WindowSpec(4, 4, 4, seed=0, revisit_share=1.5)
    with pytest.raises(ValueError, match=r"--memory-dropout\) -0.1"):
        TrainConfig(memory_dropout=-0.1)
    with pytest.raises(SystemExit):
        main(["--revisit-share", "1.5", "--dry-run"])
    assert "--revisit-share) 1.5: expected a share in [0, 1]" in capsys.readouterr().err


def test_resume_with_revisits_and_dropout(data):
    spec = WindowSpec(memory_length=6, window=4, batch_size=5, seed=5, revisit_share=0.5, memory_dropout=0.5)
    full = _take(LocalWindowStream(data, spec), 10)      # 38 samples per epoch: batch 8 crosses the epoch end
    first = LocalWindowStream(data, spec)
    assert first.samples_per_epoch() == 6 * 6 + 2        # the T=5 episodes give one window of 4 each
    head = _take(first, 2)
    state = first.state_dict()
    resumed = LocalWindowStream(data, spec)
    resumed.load_state_dict(state)
    assert _same(head + _take(resumed, 8), full)
    plain = _take(LocalWindowStream(data, dataclasses.replace(spec, memory_dropout=0.0)), 10)
    assert not _same(plain, full)                        # dropout reached the batches (same windows otherwise)
    with pytest.raises(ValueError, match="revisit_share"):
        LocalWindowStream(data, dataclasses.replace(spec, revisit_share=0.0)).load_state_dict(state)


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_ray_path_matches_local_with_revisits_and_dropout(data, ray_cluster):
    spec = WindowSpec(memory_length=6, window=4, batch_size=5, seed=5, revisit_share=0.5, memory_dropout=0.5)
    stream = LocalWindowStream(data, spec)
    _take(stream, 2)
    expected = _take(stream, 8)                          # samples 10..49: across the end of epoch 0 (38 samples)
    ds = ray_window_dataset(data, spec, epoch=0, start=2 * spec.batch_size, num_epochs=2)
    tail = [collate(b) for b in ds.iter_batches(batch_size=spec.batch_size, batch_format="numpy")]
    assert _same(tail[:8], expected)
