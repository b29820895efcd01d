"""Shared fixtures. One real local Ray cluster per test module that asks for it (STYLE.md section 9).

The cluster gets more logical CPUs than the machine has cores (num_cpus=4 on 2 cores): with only the real
2, actors or train workers holding every CPU starve Ray Data's read tasks and the job hangs silently.
"""
import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    except ImportError:
        pass
    yield ray
    ray.shutdown()


# Shared by tests/test_train.py and tests/test_faults_train.py; scope="module": each module gets its own.


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on 2 shared cores, 2 threads per process thrash (measured 50x slower backward)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A latent-shard folder of one 24-frame episode (tests/test_train.py: make_latents)."""
    from test_train import make_latents

    return make_latents(tmp_path_factory.mktemp("latents"))


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """One output folder (one mlflow.db) for the module: creating an MLflow store costs seconds."""
    return tmp_path_factory.mktemp("out")
