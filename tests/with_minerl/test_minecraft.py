"""MineRL adapter (envs/minecraft.py) against the real minerl==0.4.4 Python package, without Java.

Runs in .venv-minerl (Makefile: `make test`): the real spec classes, handlers, Mission XML templating, the
Malmo XSD shipped in the wheel, action -> Malmo command translation and observation handlers. Only Minecraft
itself is replaced, by MineRL's own fake env fed through `_get_fake_malmo_data` (tests/with_minerl/fake_minerl.py).
"""
import importlib.util
import json
import sys
from pathlib import Path

import minerl
import numpy as np
import pytest
from lxml import etree

from envs.engine_agents import rollout_engine
from envs.engine_errors import EngineCrash
from envs.minecraft import MinecraftEnv, minerl_version
from envs.minecraft_spec import ExploreSpec

HERE = Path(__file__).resolve().parent
FAKE = f"{HERE / 'fake_minerl.py'}:make_fake"  # by file path: independent of sys.path
CRASHING = f"{HERE / 'fake_minerl.py'}:make_crashing"
SCHEMAS = Path(minerl.__file__).parent / "Malmo" / "Schemas"
COUNTED = f"{__name__}:counted_engine"  # this module's factory below, found in sys.modules
_spec = importlib.util.spec_from_file_location("fake_minerl", HERE / "fake_minerl.py")
fake_minerl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_minerl)
ENGINES = {"launched": 0, "crash_first": 0}  # reset by the `engines` fixture


def counted_engine(spec):
    """engine_factory that counts Minecraft launches; the first ENGINES["crash_first"] engines die mid-episode."""
    ENGINES["launched"] += 1
    crash = ENGINES["launched"] <= ENGINES["crash_first"]
    return fake_minerl.make_crashing(spec) if crash else fake_minerl.make_fake(spec)


@pytest.fixture
def engines(monkeypatch):
    monkeypatch.setitem(ENGINES, "launched", 0)
    monkeypatch.setitem(ENGINES, "crash_first", 0)
    monkeypatch.setenv("MEMVID_MINERL_ENGINE_FACTORY", COUNTED)
    return ENGINES


def test_imports_without_torch_or_ray():
    assert minerl_version() == "0.4"
    assert "torch" not in sys.modules and "ray" not in sys.modules


def test_spec_xml_is_valid_malmo_mission():
    xml = ExploreSpec(resolution=96, biome=6, caves=True).to_xml()
    schema = etree.XMLSchema(etree.parse(str(SCHEMAS / "Mission.xsd")))
    doc = etree.fromstring(xml.encode())
    schema.assertValid(doc)  # raises DocumentInvalid naming the element at fault
    ns = {"m": "http://ProjectMalmo.microsoft.com"}
    gen = doc.find(".//m:DefaultWorldGenerator", ns)
    opts = json.loads(gen.get("generatorOptions"))
    assert opts["fixedBiome"] == 6 and opts["useCaves"] is True and opts["useVillages"] is False
    assert doc.find(".//m:Time/m:AllowPassageOfTime", ns).text == "false"
    assert doc.find(".//m:AllowSpawning", ns).text == "true"
    assert doc.find(".//m:ObservationFromFullStats", ns) is not None  # poses
    assert doc.find(".//m:VideoProducer/m:Width", ns).text.strip() == "96"


def test_invalid_spec_fails_the_schema():
    """The XSD check bites: a mission with an unknown handler element is rejected."""
    xml = ExploreSpec(resolution=64).to_xml().replace("<CameraCommands/>", "<CameraCommandz/>")
    schema = etree.XMLSchema(etree.parse(str(SCHEMAS / "Mission.xsd")))
    assert not schema.validate(etree.fromstring(xml.encode()))


def test_teco_actions_become_these_malmo_commands():
    env = MinecraftEnv(resolution=32, engine_factory=FAKE)
    keys = "left 0\nback 0\nright 0\n"
    tail = "sneak 0\nsprint 0\nattack 0\n"
    expected = {
        0: f"forward 0\n{keys}jump 1\n{tail}camera 0.0 -20.0",
        1: f"forward 0\n{keys}jump 1\n{tail}camera 0.0 20.0",
        2: f"forward 1\n{keys}jump 1\n{tail}camera 0.0 0.0",
    }
    for action, command in expected.items():
        assert env._engine._process_action("agent_0", env._engine_actions[action]) == command
    env.close()


def test_minerl_drops_unknown_keys_so_actions_are_checked_against_the_space():
    env = MinecraftEnv(resolution=32, engine_factory=FAKE)
    space = env._engine.action_space
    typo = dict(space.noop(), forwad=1)
    assert "forwad" not in env._engine._process_action("agent_0", typo)  # silently dropped by MineRL
    assert typo not in space and {"forward": 1} not in space  # what the adapter's check catches
    bad = dict(space.noop(), camera=np.array([0.0, 400.0], np.float32))
    assert bad not in space
    assert all(a in space for a in env._engine_actions)
    env.close()


def test_observations_and_poses_come_through_the_real_handlers():
    env = MinecraftEnv(resolution=48, engine_factory=FAKE)
    obs, info = env.reset(seed=7)
    assert obs["rgb"].shape == (48, 48, 3) and obs["rgb"].dtype == np.uint8
    assert (obs["rgb"][0] == (100, 150, 255)).all()  # sky on top: the fake's bottom-up frame was flipped back
    sim = env._engine._sim
    assert info["pose"].dtype == np.float32
    np.testing.assert_allclose(info["pose"], [sim["x"], 64.0, sim["z"], 0.0, sim["yaw"]], rtol=1e-5)
    poses = [env.step(a)[4]["pose"] for a in (2, 2, 0, 1, 2, 2)]
    assert len({tuple(p) for p in poses}) == 6  # the scripted world moves every tick
    env.close()


def test_seed_is_sent_before_every_reset():
    env = MinecraftEnv(resolution=16, engine_factory=FAKE)
    first = env.reset(seed=1)[1]["pose"]
    second = env.reset(seed=2)[1]["pose"]
    third = env.reset(seed=1)[1]["pose"]
    assert np.array_equal(first, third) and not np.array_equal(first, second)
    assert env._engine._seed is None  # MineRL cleared it again: the adapter must resend it
    env.close()


def test_crash_becomes_enginecrash_and_reset_rebuilds():
    env = MinecraftEnv(resolution=16, engine_factory=CRASHING)
    env.reset(seed=3)
    env.step(2), env.step(2), env.step(2)
    with pytest.raises(EngineCrash, match="BrokenPipeError") as e:
        env.step(2)
    assert isinstance(e.value.__cause__, BrokenPipeError) and env._engine is None
    obs, info = env.reset(seed=3)  # a fresh engine
    assert env._engine is not None and obs["rgb"].shape == (16, 16, 3)
    env.close()
    env.close()


def test_rollout_engine_minecraft_episode():
    settings = {"resolution": 16, "engine_factory": FAKE}
    ep = rollout_engine("minecraft", settings, "explore", {}, 40, np.random.default_rng([0, 3]))
    assert ep["frames"].shape == (40, 16, 16, 3) and ep["poses"].shape == (40, 5)
    assert ep["actions"].dtype == np.int64 and set(ep["actions"].tolist()) <= {0, 1, 2}
    assert ep["fps"] == 20.0 and ep["env_config"]["minerl_version"] == "0.4"
    assert np.ptp(ep["poses"][:, 0]) > 0  # real poses, not zeros
    again = rollout_engine("minecraft", settings, "explore", {}, 40, np.random.default_rng([0, 3]))
    assert np.array_equal(ep["frames"], again["frames"]) and np.array_equal(ep["actions"], again["actions"])


def test_collect_worker_path_writes_a_valid_shard(tmp_path, monkeypatch):
    """pipeline.collect's worker function (no Ray in this venv) -> a shard that validates; the crashing engine
    -> failures recorded per attempt and no shard."""
    from pipeline.collect import CollectConfig, render_shard
    from pipeline.inspect import inspect_dir
    from pipeline.shards import Manifest, validate_shard

    monkeypatch.setenv("MEMVID_MINERL_ENGINE_FACTORY", FAKE)
    cfg = CollectConfig(env="minecraft", episodes=2, length=12, resolution=16, episodes_per_shard=2,
                        out_dir=str(tmp_path), max_retries=1)
    res = render_shard(cfg, 0)
    assert res["entry"] is not None and res["entry"]["rows"] == 2 and not res["failures"]
    assert validate_shard(tmp_path / res["name"]) is None
    Manifest(tmp_path).add(res["name"], res["entry"])  # what run_collect's driver does with the task's result
    report = inspect_dir(tmp_path, preview=False)
    assert report["quarantined"] == [] and report["envs"] == {"minecraft": 2} and report["frames"] == 24
    monkeypatch.setenv("MEMVID_MINERL_ENGINE_FACTORY", CRASHING)
    res = render_shard(cfg, 0)
    assert res["entry"] is None and len(res["failures"]) == 2  # 1 + max_retries attempts, each recorded
    assert all("EngineCrash" in f["error"] and "Broken pipe" in f["error"] for f in res["failures"])


def shards_of_fresh_engines(cfg, indices) -> dict[int, bytes]:
    """The shards as a fresh engine per episode would write them (pipeline.collect.render_episode)."""
    from pipeline.collect import render_episode, shard_episodes, shard_name
    from pipeline.schema import episodes_to_table
    from pipeline.shards import write_shard

    out = {}
    for index in indices:
        path = Path(cfg.out_dir) / "fresh" / shard_name(index)
        path.parent.mkdir(exist_ok=True)
        write_shard(episodes_to_table([render_episode(cfg, i) for i in shard_episodes(cfg, index)], "frames"), path)
        out[index] = path.read_bytes()
    return out


def test_collect_worker_keeps_one_minecraft_and_writes_a_fresh_engines_bytes(tmp_path, engines):
    """pipeline.collect's worker (the Ray actor's body; no Ray here) launches Minecraft once for 4 episodes in
    2 shards, and its shards are byte for byte those of a fresh Minecraft per episode."""
    from pipeline.collect import CollectConfig, ShardWorker

    cfg = CollectConfig(env="minecraft", episodes=4, length=12, resolution=16, episodes_per_shard=2,
                        out_dir=str(tmp_path), max_retries=1)
    worker = ShardWorker(cfg)
    results = [worker.render_shard(1), worker.render_shard(0)]
    assert engines["launched"] == worker.num_launches == 1 and [r["launches"] for r in results] == [1, 0]
    assert all(r["entry"] is not None and r["failures"] == [] for r in results)
    worker.close()
    fresh = shards_of_fresh_engines(cfg, [0, 1])
    assert engines["launched"] == 1 + 4  # the reference path: one launch per episode
    assert {i: (tmp_path / r["name"]).read_bytes() for i, r in zip([1, 0], results)} == fresh


def test_collect_worker_replaces_a_crashed_minecraft_and_retries_the_episode(tmp_path, engines):
    from pipeline.collect import CollectConfig, ShardWorker

    cfg = CollectConfig(env="minecraft", episodes=2, length=12, resolution=16, episodes_per_shard=2,
                        out_dir=str(tmp_path), max_retries=1)
    engines["crash_first"] = 1  # the first Minecraft breaks its pipe on its 4th tick
    worker = ShardWorker(cfg)
    res = worker.render_shard(0)
    assert res["entry"] is not None and res["launches"] == engines["launched"] == 2
    assert [(f["episode_index"], f["attempt"]) for f in res["failures"]] == [(0, 0)]
    assert "EngineCrash" in res["failures"][0]["error"] and "Broken pipe" in res["failures"][0]["error"]
    worker.close()
    assert (tmp_path / res["name"]).read_bytes() == shards_of_fresh_engines(cfg, [0])[0]  # nothing lost or doubled
