"""What the tools print: a progress bar on a terminal, plain lines in a log, and a local Ray that says what matters.

    with progress(len(todo), "encode", unit="frame") as bar:
        for shard in todo:
            ...
            bar.update(frames, postfix=f"{shard.name}")
            bar.write(f"[encode] quarantined {shard.name}: {why}")   # a line of its own, above the bar

On a terminal (the bar's stream is a TTY) the bar is a tqdm bar with rate and ETA, redrawn in place, coloured.
Anywhere else (a log file, a pipe, a Ray worker, whose output the driver forwards line by line) there is no
carriage return and no colour code: one plain line every `every_sec` seconds and one at the end.

`start_ray` starts a local Ray with its dashboard (and prints its URL) or joins --address. With the dashboard off,
Ray has no State API server, and Ray Train's PlacementGroupCleaner, which polls the state of the Train controller
through it every second, logs "Failed to query Ray Train Controller actor state" for as long as training runs.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import TextIO

PLAIN_EVERY_SEC = 10.0
RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")


def is_terminal(stream: TextIO | None = None) -> bool:
    """True when `stream` (default stderr) is an interactive terminal that accepts colour."""
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a file
        return False
    return tty and os.environ.get("TERM") != "dumb" and "NO_COLOR" not in os.environ


def emit(line: str, stream: TextIO | None = None) -> None:
    """Print one line (default stdout), above any progress bar. Written to the stream, not with print(): in Ray
    Train workers (Ray 2.60) print() is patched and, since Ray wraps the worker's stdout, each line would reach the
    driver twice."""
    from tqdm import tqdm

    stream = stream or sys.stdout
    tqdm.write(line, file=stream)
    stream.flush()


def _duration(sec: float) -> str:
    sec = int(round(sec))
    h, rest = divmod(sec, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """A progress bar (tqdm) on a terminal, periodic plain lines elsewhere. Use `progress()` to make one.

    every_sec: seconds between plain lines, and one at close (0: no plain lines; the caller prints its own status
    lines, above the bar on a terminal)."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 every_sec: float = PLAIN_EVERY_SEC, stream: TextIO | None = None, enabled: bool = True):
        self.total, self.desc, self.unit, self.n, self.initial = total, desc, unit, initial, initial
        self.every_sec, self.enabled, self.postfix = every_sec, enabled, ""
        self.stream = stream or sys.stderr
        self._start = self._last = time.monotonic()
        self._printed_n: int | None = None
        self._bar = None
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream,
                             dynamic_ncols=True, mininterval=0.5, colour="green")

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.n += n
        if postfix is not None:
            self.postfix = postfix
        if self._bar is not None:
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)
        elif self.enabled and self.every_sec and time.monotonic() - self._last >= self.every_sec:
            self._plain_line()

    def write(self, line: str) -> None:
        """A line of its own on stdout (above the bar on a terminal)."""
        emit(line)

    def line(self) -> str:
        """The plain status line: done/total, percent, elapsed, rate, ETA, postfix."""
        elapsed = time.monotonic() - self._start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n}/{self.total if self.total is not None else '?'} {self.unit}"]
        if self.total:
            parts.append(f"({100 * self.n / self.total:.0f}%)")
        parts.append(f"in {_duration(elapsed)}, {rate:.3g} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts[-1] += f", eta {_duration((self.total - self.n) / rate)}"
        return " ".join(parts) + (f"; {self.postfix}" if self.postfix else "")

    def _plain_line(self) -> None:
        self._last = time.monotonic()
        self._printed_n = self.n
        emit(self.line(), self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.every_sec and self._printed_n != self.n and self.n != self.initial:
            self._plain_line()
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str = "it", initial: int = 0, every_sec: float = PLAIN_EVERY_SEC,
             enabled: bool = True) -> Progress:
    """A progress bar on stderr: tqdm on a terminal, a plain line every `every_sec` seconds elsewhere."""
    return Progress(total, desc, unit, initial, every_sec, enabled=enabled)


# ------------------------------------------------------------------------------------------------------------ Ray

def quiet_ray() -> None:
    """Before a local Ray starts: no colour codes in forwarded worker lines unless stdout is a terminal; Ray Data
    logs warnings to the console (everything still goes to <session>/logs/ray-data/ray-data.log). Environment
    variables, so the worker processes the local Ray starts inherit them; a variable already set is kept."""
    if not is_terminal(sys.stdout):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(RAY_DATA_LOGGING))
    # Logged by Ray Train's own DatasetManager on every fit (Ray 2.60), not by anything this project sets.
    warnings.filterwarnings("ignore", message=r".*ExecutionOptions\.exclude_resources.*")


def _not_progress_note(record) -> bool:
    return not record.getMessage().startswith("Progress bars disabled")


def quiet_ray_data() -> None:
    """In this process: Ray Data's console logging at WARNING, and its own progress bars off (the tools draw
    theirs) without the warning Ray Data logs about that."""
    import logging

    from ray.data import DataContext

    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console" or type(handler).__name__ == "PlainRayHandler":
            handler.setLevel(logging.WARNING)
            if _not_progress_note not in handler.filters:
                handler.addFilter(_not_progress_note)
    DataContext.get_current().enable_progress_bars = False


def quiet_ray_train_worker() -> None:
    """In a Ray Train worker: no "Reporting training result N: TrainingReport(...)" line per checkpoint. Ray 2.60
    logs it at INFO to a logger named after its source file, so RunConfig's LoggingConfig does not reach it."""
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: its lines stay
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ray(address: str = "", num_cpus: int | None = None, **kwargs) -> bool:
    """Join the cluster at `address` (or $RAY_ADDRESS), or start a local Ray with its dashboard (URL printed);
    nothing when Ray is up already. Returns True when this call connected or started Ray (the caller then calls
    ray.shutdown()).

    A local Ray gets its GCS port from us, and its workers get RAY_ADDRESS: code in a worker that looks the cluster
    up without an address (Ray Train's PlacementGroupCleaner, through the State API) otherwise fails with "Found
    multiple active Ray instances" whenever another Ray runs on the same machine."""
    import ray

    if ray.is_initialized():
        return False
    quiet_ray()
    kwargs.setdefault("configure_logging", False)
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None, **kwargs)
        quiet_ray_data()
        return True
    port = int(os.environ.get("RAY_GCS_SERVER_PORT") or _free_port())
    runtime_env = dict(kwargs.pop("runtime_env", None) or {})
    runtime_env["env_vars"] = {"RAY_ADDRESS": f"127.0.0.1:{port}", **runtime_env.get("env_vars", {})}
    before = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read by ray.init when it starts the GCS
    try:
        context = ray.init(num_cpus=num_cpus, include_dashboard=True, runtime_env=runtime_env, **kwargs)
    finally:
        if before is None:
            del os.environ["RAY_GCS_SERVER_PORT"]
    if context.dashboard_url:
        emit(f"Ray dashboard: http://{context.dashboard_url}")
    quiet_ray_data()
    return True
