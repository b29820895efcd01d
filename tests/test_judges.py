"""training.judges: oracles on real maze exact revisits have the expected shape; aggregation and paired numbers."""
import math

import numpy as np
import pytest

from envs.rollout import rollout
from pipeline.eval_cases import build_eval_cases, load_eval_cases
from pipeline.schema import episodes_to_table
from pipeline.shards import Manifest, write_shard
from training import judges as J


@pytest.fixture(scope="module")
def exact_cases(tmp_path_factory):
    """Real lookback-agent episodes (16x16, 300 frames) and their exact-revisit cases (window 8)."""
    folder = tmp_path_factory.mktemp("lookback")
    rows = []
    for i in range(6):
        ep = rollout("maze", {"height": 16, "width": 16}, "lookback", {}, 300, np.random.default_rng([5, i]))
        rows.append({"episode_id": f"maze-s5-e{i}", "env": "maze", "agent": "lookback", "seed": 5, "episode_index": i,
                     "fps": ep["fps"], "env_config": "{}", **{k: ep[k] for k in ("frames", "actions", "poses",
                                                                                   "scene", "revisit_gap")}})
    Manifest(folder).add("shard-00000.parquet", write_shard(episodes_to_table(rows), folder / "shard-00000.parquet"))
    path = build_eval_cases(folder, cases_per_bin=20, horizon=8, window=8, seed=0, kinds=("exact",))
    return load_eval_cases(path)


def _rates(cases, name, L=0, groups=None):
    rows = J.judge_cases(cases, J.oracle_frames(cases, name, L))
    groups = groups or {"0-16": (0, 16), "16-48": (16, 48), "48-112": (48, 112)}
    hits = {g: [r["retrieved"] for r in rows if lo < r["d"] <= hi] for g, (lo, hi) in groups.items()}
    return {g: float(np.mean(h)) for g, h in hits.items() if h}


def test_oracles_have_the_expected_shape_on_exact_revisits(exact_cases):
    assert {c.gap_bin for c in exact_cases} == {"0-16", "16-48", "48-112"} and len(exact_cases) >= 45
    assert all(v == 1.0 for v in _rates(exact_cases, "ground_truth").values())    # the judge reads the truth
    for L in (4, 16):
        copy = _rates(exact_cases, "copy", L, J.coverage_groups(112, L))
        held, beyond = copy[f"both hold (d <= {L})"], copy[f"only m=112 holds ({L} < d <= 112)"]
        assert held >= 0.9 and beyond <= 0.1, (L, copy)                          # a perfect memory of L frames
    last = _rates(exact_cases, "last_frame", 0, J.coverage_groups(112, 1))
    assert last["only m=112 holds (1 < d <= 112)"] <= 0.1                        # continuity alone
    other = _rates(exact_cases, "other_episode")
    assert max(other.values()) <= 0.1                                            # chance


def test_summary_and_paired_numbers_by_hand():
    rows = [{"case": i, "kind": "exact", "d": d, "bin": b, "dbin": db, "retrieved": ok, "ssim": s, "psnr": p}
            for i, (d, b, db, ok, s, p) in enumerate([(3, "0-16", "2-4", True, 0.9, 30.0),
                                                      (10, "0-16", "8-12", False, 0.5, 20.0),
                                                      (20, "16-48", "16-24", False, 0.1, 10.0)])]
    table = J.summarise(rows)
    r = table["retrieval"]["exact"]
    assert (r["0-16"]["rate"], r["0-16"]["n"], r["16-48"]["rate"], r["48-112"]["n"]) == (0.5, 2, 0.0, 0)
    assert math.isnan(r["48-112"]["rate"]) and r["0-16"]["lo"] < 0.5 < r["0-16"]["hi"]
    assert table["ssim"]["0-16"]["mean"] == pytest.approx(0.7) and table["psnr"]["16-48"]["mean"] == 10.0
    assert list(table["curve"]["exact"]) == ["2-4", "8-12", "16-24"]
    other = [{**row, "retrieved": not row["retrieved"]} for row in rows]
    pairs = J.paired(rows, other, J.coverage_groups(16, 4))
    both, only = pairs["exact"]["both hold (d <= 4)"], pairs["exact"]["only m=16 holds (4 < d <= 16)"]
    assert (both["a_only"], both["b_only"], only["a_only"], only["b_only"]) == (1, 0, 0, 1)
    assert both["p"] == 1.0 and pairs["exact"]["neither holds (d > 16)"]["n"] == 1
    with pytest.raises(ValueError, match="same cases"):
        J.paired(rows, other[:2])
