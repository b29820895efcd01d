"""cluster.yaml is valid for Ray's own cluster-config schema and matches the project's pins."""
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def load():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def pinned_ray_version() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [d for d in deps if d.startswith("ray[")]
    return ray.split("==")[1]


def test_cluster_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load()))  # raises on unknown keys, wrong types, bad head type


def test_schema_check_bites_on_a_typo():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load()
    cfg["setup_comands"] = cfg.pop("setup_commands")
    with pytest.raises(Exception, match="setup_comands"):
        validate_config(prepare_config(cfg))


def test_image_matches_pinned_ray_and_python():
    image = load()["docker"]["image"]
    assert image == f"rayproject/ray:{pinned_ray_version()}-py311-gpu"


def test_node_types_and_collector_resource():
    cfg = load()
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head" and "InstanceMarketOptions" not in types["head"]["node_config"]
    assert types["collector"]["resources"] == {"minerl": 1}
    from pipeline.collect import ENV_RESOURCES

    assert {ENV_RESOURCES["minecraft"]: 1} == types["collector"]["resources"]  # what collect asks, the collector offers
    assert {ENV_RESOURCES["dmlab"]: 1} == types["dmlab_collector"]["resources"]
    setup = " ".join(types["collector"]["worker_setup_commands"])
    assert "openjdk-8" in setup and "xvfb" in setup and "minerl==0.4.4" in setup
    assert any("mlflow server" in c for c in cfg["head_start_ray_commands"])


def test_every_key_is_commented():
    lines = (ROOT / "cluster.yaml").read_text().splitlines()
    uncommented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(- )?([A-Za-z_\"~][\w\"~/.-]*):", line)
        if not m or line.strip().startswith("#"):
            continue
        prev = lines[i - 1].strip() if i else ""
        if "#" not in line and not prev.startswith("#") and not (m.group(2) and lines[i - 1].strip().startswith("- ")):
            uncommented.append(f"line {i + 1}: {line.strip()}")
    assert not uncommented, "keys without a comment:\n" + "\n".join(uncommented)
