"""`ray job submit` to a head started from the project's environment, as the README's cluster section does it: the
dashboard (ray[default]) serves the Jobs API, and a job running from the project's folder imports the project."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_head(temp_dir: str) -> None:
    """Stop the processes of this head only, found by its --temp-dir. (`ray stop` would also stop every other Ray
    on the machine.)"""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and temp_dir.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_ray_job_submit_to_a_local_head():
    temp_dir = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    dashboard = free_port()
    try:
        start = subprocess.run(
            [RAY, "start", "--head", "--num-cpus", "2", "--port", str(free_port()), "--include-dashboard", "true",
             "--dashboard-port", str(dashboard), "--dashboard-agent-listen-port", str(free_port()),
             "--ray-client-server-port", str(free_port()), "--temp-dir", temp_dir, "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=60)
        assert start.returncode == 0, start.stdout + start.stderr
        code = "import ray, pipeline.cli; ray.init(); print('sum', ray.get(ray.remote(lambda: 1 + 2).remote()))"
        job = subprocess.run(
            [RAY, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".", "--",
             sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert job.returncode == 0, job.stdout + job.stderr
        assert "sum 3" in job.stdout and "succeeded" in job.stdout
    finally:
        stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
