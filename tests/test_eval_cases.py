"""pipeline.eval_cases: seeded, balanced, reproducible retrieval cases; rollout cases; clear errors."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.eval_cases import build_eval_cases, build_rollout_cases, d_bin, gap_bin, load_eval_cases, main
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
            return {c: to_numpy(t, c)[i] for c in ("frames", "actions", "scene", "poses", "revisit_gap")}
    raise KeyError(episode_id)


def test_bins_on_d():
    assert [gap_bin(d) for d in (0, 1, 16, 17, 48, 49, 112, 113)] == [None, "0-16", "0-16", "16-48", "16-48",
                                                                     "48-112", "48-112", None]
    assert d_bin(1) == "0-1" and d_bin(5) == "4-8" and d_bin(16) == "12-16" and d_bin(113) is None


def test_cases_reproducible_binned_by_d_and_correct(revisit_data, tmp_path):
    path = build_eval_cases(revisit_data, cases_per_bin=3, max_memory=112, horizon=16, seed=0)
    assert path == revisit_data / "eval_cases.parquet"
    first = path.read_bytes()
    build_eval_cases(revisit_data, cases_per_bin=3, max_memory=112, horizon=16, seed=0)
    assert path.read_bytes() == first                                    # identical across reruns
    other = build_eval_cases(revisit_data, tmp_path / "other.parquet", cases_per_bin=3, seed=1)
    assert [c.start for c in load_eval_cases(other)] != [c.start for c in load_eval_cases(path)]
    cases = load_eval_cases(path)
    for kind in ("revisit", "exact"):
        mine = [c for c in cases if c.kind == kind]
        assert {c.gap_bin for c in mine} == {"0-16", "16-48", "48-112"}, kind
        assert all(sum(c.gap_bin == b for c in mine) <= 3 for b in ("0-16", "16-48", "48-112"))
    for c in cases:
        ep = _episode(revisit_data, c.episode_id)
        s, n, t = c.start, len(c.actions), c.revisit_t
        r = t - s
        assert n == min(16, 120 - s) and 0 <= r < n and c.d == c.gap - r >= 1 and s >= 1
        source = t - c.gap                                                # what the judged frames show, last seen
        assert s - source == c.d and 112 - c.d >= 0
        assert np.array_equal(c.memory[112 - c.d], ep["frames"][source])  # memory index M - d holds the source
        assert c.judged[r] and not c.judged[:r].any()
        if c.kind == "exact":
            assert c.judged.sum() == 1 and np.array_equal(ep["frames"][t], ep["frames"][source])
            assert np.array_equal(ep["poses"][t], ep["poses"][source])
        else:
            assert c.revisit_gap[r] == c.gap == ep["revisit_gap"][t] and r >= 1
            j = np.flatnonzero(c.judged)                                  # one visit: gaps count up from g
            assert np.array_equal(c.revisit_gap[j], c.gap + j - r) and np.all(np.diff(j) == 1)
        assert np.array_equal(c.actions, ep["actions"][s:s + n])
        assert np.array_equal(c.target_scene, ep["scene"][s:s + n]) and np.array_equal(c.target, ep["frames"][s:s + n])
        px = np.rint((c.target_x.transpose(0, 2, 3, 1) + 1) * 127.5).astype(np.uint8)
        assert np.array_equal(px, ep["frames"][s:s + n])
        assert c.memory_x.shape == (112, 3, 8, 8) and c.memory_x.dtype == np.float32
        valid = min(112, s)
        assert c.memory_mask.sum() == valid and not c.memory_mask[:112 - valid].any()
        assert (c.memory_x[:112 - valid] == 0).all() and (c.memory_scene[:112 - valid] == -1).all()
        assert np.array_equal(c.memory[112 - valid:], ep["frames"][s - valid:s])
        assert np.array_equal(c.memory_poses[112 - valid:], ep["poses"][s - valid:s])
        assert np.array_equal(c.memory_actions[112 - valid:], ep["actions"][s - valid:s])


def test_old_case_files_are_refused(revisit_data):
    path = build_eval_cases(revisit_data, cases_per_bin=1)
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({b"memvid.eval_cases": b'{"seed": 0}'}), path)
    with pytest.raises(ValueError, match="format 1.*rebuild them"):
        load_eval_cases(path)


def test_rollout_cases_and_cli(revisit_data):
    path = build_rollout_cases(revisit_data, num_cases=4, max_memory=32, horizon=64, seed=0)
    cases = load_eval_cases(path)
    assert len(cases) == 4 and len({c.episode_id for c in cases}) == 4
    assert all(c.target_x.shape == (64, 3, 8, 8) and c.kind == "rollout" and c.memory_mask.all() for c in cases)
    main(["--data-dir", str(revisit_data), "--cases-per-bin", "1", "--kinds", "exact", "--rollout-cases", "2",
          "--rollout-horizon", "40"])
    assert [c.kind for c in load_eval_cases(revisit_data / "eval_cases.parquet")] == ["exact"] * 3
    assert len(load_eval_cases(revisit_data / "rollout_cases.parquet")) == 2


def test_no_revisit_data_names_the_folder(tmp_path):
    write_synthetic_shards(tmp_path / "explore", num_shards=1, episodes_per_shard=2, length=40, size=8, revisit=False)
    with pytest.raises(ValueError, match=r"explore.*--agent revisit"):
        build_eval_cases(tmp_path / "explore", cases_per_bin=4)
    with pytest.raises(FileNotFoundError, match="pipeline.eval_cases"):
        load_eval_cases(tmp_path / "explore" / "eval_cases.parquet")
