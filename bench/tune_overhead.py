"""Ray Tune scheduling overhead per trial, and its share of a >= 5-minute trial.

    RAY_AUTH_MODE=disabled python bench/tune_overhead.py --trials 40

Runs N trials of an empty function trainable (one `tune.report` each) one after another and N trials of a
function that sleeps S seconds, then prints: seconds of overhead per trial (wall time per empty trial) and
that overhead as a share of a 300-second trial (the issue's floor: <= 0.2 s and <= 3%).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


def empty(config):
    from ray import tune

    tune.report({"x": config["i"]})


def sleeper(config):
    from ray import tune

    time.sleep(config["sec"])
    tune.report({"x": config["i"]})


def run(trainable, param_space, concurrent, storage):
    from ray import tune

    tuner = tune.Tuner(tune.with_resources(trainable, {"CPU": 0.25}), param_space=param_space,
                       tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=True),
                       run_config=tune.RunConfig(storage_path=storage, name=f"b{time.time_ns()}", verbose=0))
    t0 = time.perf_counter()
    grid = tuner.fit()
    assert not grid.errors, grid.errors
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--sleep-sec", type=float, default=2.0)
    ap.add_argument("--concurrent", type=int, default=4)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import tune

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        run(empty, {"i": tune.grid_search(list(range(2)))}, 1, storage)  # warm-up: worker start, imports
        n = args.trials
        wall_empty = run(empty, {"i": tune.grid_search(list(range(n)))}, args.concurrent, storage)
        wall_sleep = run(sleeper, {"i": tune.grid_search(list(range(n))), "sec": args.sleep_sec}, args.concurrent,
                         storage)
    per_trial = wall_empty / n * args.concurrent  # each slot runs n/concurrent trials back to back
    ideal = n / args.concurrent * args.sleep_sec
    per_trial_sleep = (wall_sleep - ideal) / n * args.concurrent
    print(f"trials: {n}, concurrent: {args.concurrent}")
    print(f"empty trials: {wall_empty:.2f} s wall -> {per_trial:.3f} s overhead per trial per slot")
    print(f"{args.sleep_sec:.1f} s trials: {wall_sleep:.2f} s wall vs {ideal:.2f} s ideal -> "
          f"{per_trial_sleep:.3f} s overhead per trial per slot")
    print(f"overhead share of a 300 s trial: {100 * max(per_trial, per_trial_sleep) / 300:.3f} %")
    ray.shutdown()


if __name__ == "__main__":
    main()
