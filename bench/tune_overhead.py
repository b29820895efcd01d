"""Ray Tune scheduling overhead per trial, and its share of a >= 5-minute trial.

    RAY_AUTH_MODE=disabled python bench/tune_overhead.py --trials 40

Runs N and 2N trials of an empty function trainable (one `tune.report` each) and N trials that sleep S seconds,
then prints the scheduling overhead per trial (the slope between N and 2N, so Tuner.fit's fixed start/end cost is
separate) and that overhead as a share of a 300-second trial (the issue's floor: <= 0.2 s and <= 3%).
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
        # Per-trial cost as a slope (N vs 2N empty trials), so the fixed cost of starting/ending a Tuner.fit
        # (experiment state, result printing) is not charged to the trials.
        wall_n = run(empty, {"i": tune.grid_search(list(range(n)))}, args.concurrent, storage)
        wall_2n = run(empty, {"i": tune.grid_search(list(range(2 * n)))}, args.concurrent, storage)
        wall_sleep = run(sleeper, {"i": tune.grid_search(list(range(n))), "sec": args.sleep_sec}, args.concurrent,
                         storage)
    per_trial = (wall_2n - wall_n) / n  # wall seconds each extra trial adds (all slots together)
    per_trial_slot = per_trial * args.concurrent
    fixed = wall_n - per_trial * n
    ideal = n / args.concurrent * args.sleep_sec
    print(f"trials: {n} and {2 * n} empty, concurrent: {args.concurrent}; fixed cost of one Tuner.fit: {fixed:.2f} s")
    print(f"scheduling overhead per trial: {per_trial:.3f} s of wall time ({per_trial_slot:.3f} s per slot)")
    sleep_slot = (wall_sleep - ideal) / n * args.concurrent  # includes Tuner.fit's fixed cost, spread over n
    print(f"{args.sleep_sec:.1f} s trials: {wall_sleep:.2f} s wall vs {ideal:.2f} s ideal -> {sleep_slot:.3f} s "
          f"overhead per trial per slot (upper bound: Tuner.fit start/end included)")
    worst = max(per_trial_slot, sleep_slot)
    print(f"overhead share of a 300 s trial: {100 * worst / 300:.3f} % (from the larger of the two figures)")
    ray.shutdown()


if __name__ == "__main__":
    main()
