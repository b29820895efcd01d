"""The MineRL adapter in the main venv, where minerl cannot be installed: a clear failure, and the pieces that
need no MineRL (TECO's explorer, the display check). The adapter itself is tested in tests/with_minerl/."""
import subprocess
import sys

import numpy as np
import pytest

from envs import make_env
from envs.engine_agents import FORWARD, MinecraftExplorer
from envs.engine_errors import EngineMissing
from envs.minecraft import check_display


def test_missing_minerl_says_how_to_install():
    with pytest.raises(EngineMissing) as e:
        make_env("minecraft", resolution=64)
    msg = str(e.value)
    for needle in ("openjdk-8-jdk", "minerl==0.4.4", "numpy<1.24", "cluster.yaml", "`collector`", '{"minerl": 1}'):
        assert needle in msg, needle


def test_envs_import_without_torch_or_ray():
    code = ("import sys, envs, envs.rollout, envs.dmlab, envs.minecraft, envs.engine_agents; "
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_display_fails_with_headless_instructions(monkeypatch, tmp_path):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("MINERL_HEADLESS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no xvfb-run
    with pytest.raises(EngineMissing, match="MINERL_HEADLESS=1.*xvfb-run -a"):
        check_display("0.4")
    with pytest.raises(EngineMissing, match="xvfb-run -a"):
        check_display("1.0")
    (tmp_path / "xvfb-run").write_text("#!/bin/sh\n")
    (tmp_path / "xvfb-run").chmod(0o755)
    check_display("0.4")  # xvfb present: MineRL 0.4 is switched to headless
    import os

    assert os.environ["MINERL_HEADLESS"] == "1"


def test_teco_minecraft_explorer_statistics():
    agent = MinecraftExplorer(np.random.default_rng(0))
    agent.reset({}, {})
    acts = np.array([agent.act({}, {}) for _ in range(6000)])
    run, longest = 0, 0
    for a in acts:
        run = run + 1 if a == FORWARD else 0
        longest = max(longest, run)
    assert longest == 50  # forward forced off after 50 in a row (and reached: p=0.9 runs are long)
    changes = np.nonzero(acts[1:] != acts[:-1])[0] + 1
    forced = [i for i in changes if i % 5 != 0]
    assert all(acts[i] != FORWARD and acts[i - 1] == FORWARD for i in forced)  # only forced turns break blocks of 5
    assert 0.8 < (acts == FORWARD).mean() < 0.92
    same = MinecraftExplorer(np.random.default_rng(0))
    assert [same.act({}, {}) for _ in range(6000)] == acts.tolist()
