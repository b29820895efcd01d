"""The short chaos suite (bench/chaos.py --quick): real command lines SIGKILLed at seeded moments, then rerun.

- pipeline.collect: its driver and the local Ray it started killed twice after a shard was written;
- training.train --backend local: its driver killed after a checkpoint;
- pipeline.encode on Ray: one encoder actor process (`ray::MapWorker`) killed mid-run.
Each must finish when rerun, with every episode once, shard bytes and checkpoint tensors equal to an uninterrupted
run and MLflow runs neither duplicated nor RUNNING. The full suite (Ray Train with 1 and 2 workers, sweep, node
loss) is `python bench/chaos.py --scenarios all`. Run under `flock /tmp/ray.lock` (each command starts a Ray).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# bench/ is not a package: load the harness from its file (bench/ on sys.path would shadow names like `collect`).
_spec = importlib.util.spec_from_file_location("chaos", ROOT / "bench" / "chaos.py")
chaos = importlib.util.module_from_spec(_spec)
sys.modules["chaos"] = chaos  # dataclasses look their module up by name
_spec.loader.exec_module(chaos)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chaos")


@pytest.fixture(scope="module")
def session(work) -> chaos.Chaos:
    return chaos.Chaos(work, seed=0, max_reruns=3)


def assert_passed(outcome: chaos.Outcome, work: Path, min_kills: int) -> None:
    logs = work / "logs" / outcome.scenario
    assert outcome.kills >= min_kills, f"{outcome.scenario}: {outcome.kills} kills landed; logs in {logs}"
    assert outcome.ok, f"{outcome.scenario}: {outcome.reason}; logs in {logs}"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_collect_survives_driver_kills(session, work):
    outcome = chaos.SCENARIOS["collect-driver"](session)
    assert_passed(outcome, work, min_kills=1)
    assert outcome.reruns >= 1


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_encode_survives_a_killed_ray_worker(session, work):
    outcome = chaos.SCENARIOS["encode-worker"](session)
    assert_passed(outcome, work, min_kills=1)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_local_training_survives_driver_kills(session, work):
    outcome = chaos.SCENARIOS["train-local-driver"](session)
    assert_passed(outcome, work, min_kills=1)


def test_the_checks_catch_a_lost_episode_and_a_changed_tensor(tmp_path):
    """The invariants can fail: a shard dropped from a copy of a folder, a tensor changed in a checkpoint."""
    import json
    import shutil

    import torch

    from pipeline.synthetic import write_synthetic_shards
    from training import checkpoint as ckpt

    want = tmp_path / "want"
    write_synthetic_shards(want, num_shards=2, episodes_per_shard=2, length=8, size=8)
    got = tmp_path / "got"
    shutil.copytree(want, got)
    assert chaos.check_shards(got, want) == []
    (got / "shard-00001.parquet").unlink()
    manifest = json.loads((got / "manifest.json").read_text())
    del manifest["shards"]["shard-00001.parquet"]
    (got / "manifest.json").write_text(json.dumps(manifest))
    problems = chaos.check_shards(got, want)
    assert any(p.startswith("episodes lost: ") for p in problems), problems

    state = {"format": ckpt.FORMAT, "step": 2, "data_position": {"index": 8}, "ema": {"w": torch.zeros(3)},
             "optimizer": {"state": {}}}
    for root, value in (("a", 0.0), ("b", 1e-7)):
        ckpt.save_checkpoint({**state, "model": {"w": torch.full((3,), value)}},
                             tmp_path / root / "run" / ckpt.checkpoint_dir_name(2))
    assert chaos.check_checkpoints(tmp_path / "a", tmp_path / "a") == []
    assert chaos.check_checkpoints(tmp_path / "b", tmp_path / "a") == ["run: model.w differs"]
