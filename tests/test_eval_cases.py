"""pipeline.eval_cases: seeded, balanced, reproducible retrieval cases; rollout cases; clear errors."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.eval_cases import build_eval_cases, build_rollout_cases, load_eval_cases, main
from pipeline.schema import to_numpy
from pipeline.synthetic import write_synthetic_shards


@pytest.fixture()
def revisit_data(tmp_path):
    write_synthetic_shards(tmp_path / "d", num_shards=2, episodes_per_shard=3, length=120, size=8, seed=4)
    return tmp_path / "d"


def _episode(folder, episode_id):
    for path in sorted(folder.glob("shard-*.parquet")):
        t = pq.read_table(path)
        ids = t.column("episode_id").to_pylist()
        if episode_id in ids:
            i = ids.index(episode_id)
            return {c: to_numpy(t, c)[i] for c in ("frames", "actions", "scene", "revisit_gap")}
    raise KeyError(episode_id)


def test_cases_reproducible_balanced_and_correct(revisit_data, tmp_path):
    path = build_eval_cases(revisit_data, num_cases=9, max_memory=112, horizon=16, seed=0)
    assert path == revisit_data / "eval_cases.parquet"
    first = path.read_bytes()
    build_eval_cases(revisit_data, num_cases=9, max_memory=112, horizon=16, seed=0)
    assert path.read_bytes() == first                                    # identical across reruns
    other = build_eval_cases(revisit_data, tmp_path / "other.parquet", num_cases=9, seed=1)
    assert [c.start for c in load_eval_cases(other)] != [c.start for c in load_eval_cases(path)]
    cases = load_eval_cases(path)
    assert len(cases) == 9
    assert sorted(c.gap_bin for c in cases) == ["0-16"] * 3 + ["16-48"] * 3 + ["48-112"] * 3
    for c in cases:
        ep = _episode(revisit_data, c.episode_id)
        s, n, r = c.start, len(c.actions), c.revisit_t - c.start
        assert 1 <= r < c.gap and s >= 1 and n == min(16, 120 - s) and r < n
        assert c.revisit_gap[r] == c.gap == ep["revisit_gap"][c.revisit_t]      # the revisit frame is generated
        assert np.array_equal(c.actions, ep["actions"][s:s + n])
        assert np.array_equal(c.target_scene, ep["scene"][s:s + n])
        px = np.rint((c.target_x.transpose(0, 2, 3, 1) + 1) * 127.5).astype(np.uint8)
        assert np.array_equal(px, ep["frames"][s:s + n])
        assert c.memory_x.shape == (112, 3, 8, 8) and c.memory_x.dtype == np.float32
        valid = min(112, s)
        assert c.memory_mask.sum() == valid and not c.memory_mask[:112 - valid].any()
        assert (c.memory_x[:112 - valid] == 0).all()
        mem = np.rint((c.memory_x[112 - valid:].transpose(0, 2, 3, 1) + 1) * 127.5).astype(np.uint8)
        assert np.array_equal(mem, ep["frames"][s - valid:s])
        assert np.array_equal(c.memory_actions[112 - valid:], ep["actions"][s - valid:s])


def test_rollout_cases_and_cli(revisit_data):
    path = build_rollout_cases(revisit_data, num_cases=4, max_memory=32, horizon=64, seed=0)
    cases = load_eval_cases(path)
    assert len(cases) == 4 and len({c.episode_id for c in cases}) == 4
    assert all(c.target_x.shape == (64, 3, 8, 8) and c.kind == "rollout" and c.memory_mask.all() for c in cases)
    main(["--data-dir", str(revisit_data), "--num-cases", "3", "--rollout-cases", "2", "--rollout-horizon", "40"])
    assert len(load_eval_cases(revisit_data / "eval_cases.parquet")) == 3
    assert len(load_eval_cases(revisit_data / "rollout_cases.parquet")) == 2


def test_no_revisit_data_names_the_folder(tmp_path):
    write_synthetic_shards(tmp_path / "explore", num_shards=1, episodes_per_shard=2, length=40, size=8, revisit=False)
    with pytest.raises(ValueError, match=r"explore.*--agent revisit"):
        build_eval_cases(tmp_path / "explore", num_cases=4)
    with pytest.raises(FileNotFoundError, match="pipeline.eval_cases"):
        load_eval_cases(tmp_path / "explore" / "eval_cases.parquet")
