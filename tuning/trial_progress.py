"""The sweep's progress: trials finished of all, with how many run and how many failed (a Ray Tune callback).

Replaces Tune's own status table (RunConfig(verbose=0)): on a terminal a bar, in a log one plain line every
10 s, and a line of its own per finished or failed trial (pipeline/console.py).
"""
from __future__ import annotations

from ray.tune import Callback

from pipeline.console import Progress, emit, progress
from tuning.grid import Combo


def trial_name(trial) -> str:
    try:
        return Combo(**trial.config["combo"]).name
    except (AttributeError, KeyError, TypeError):
        return str(trial)


class TrialProgress(Callback):
    def __init__(self, num_trials: int):
        self.num_trials = num_trials
        self._bar: Progress | None = None

    def __getstate__(self) -> dict:  # Tune pickles its RunConfig into tuner.pkl; a live bar is not picklable
        return {"num_trials": self.num_trials, "_bar": None}

    def _show(self, trials: list, trial, status: str, line: str = "") -> None:
        """status: what `trial` is now (Tune may not have set trial.status yet when it calls back)."""
        states = [status if t is trial else t.status for t in trials]
        running, failed = states.count("RUNNING"), states.count("ERROR")
        finished = states.count("TERMINATED") + failed
        if self._bar is None:
            self._bar = progress(self.num_trials, "sweep", unit="trial", initial=finished)
        if line:
            emit(line)
        self._bar.update(finished - self._bar.n, postfix=f"{running} running, {failed} failed")

    def on_trial_start(self, iteration, trials, trial, **info):
        self._show(trials, trial, "RUNNING")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._show(trials, trial, "TERMINATED", f"[sweep] trial {trial_name(trial)} finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._show(trials, trial, "ERROR",
                   f"[sweep] trial {trial_name(trial)} failed (why: trials/{trial_name(trial)}.json)")

    def on_experiment_end(self, trials, **info):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
