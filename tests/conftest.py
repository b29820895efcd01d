"""Shared fixtures. One real local Ray cluster per test module that asks for it (STYLE.md section 9).

The cluster gets more logical CPUs than the machine has cores (num_cpus=4 on 2 cores): with only the real
2, actors or train workers holding every CPU starve Ray Data's read tasks and the job hangs silently.
"""
import os

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
