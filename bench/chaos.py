"""Chaos suite: SIGKILL drivers, Ray workers and whole Ray nodes at seeded random moments, rerun, compare.

    .venv/bin/python bench/chaos.py --scenarios all --seed 0         # every scenario (about 12 min on 2 cores)
    .venv/bin/python bench/chaos.py --quick                          # the short set tests/test_chaos.py runs
    .venv/bin/python bench/chaos.py --scenarios collect-driver,encode-node --keep /tmp/chaos

Each scenario runs a real command line (`python -m pipeline.collect ...`, `pipeline.encode`, `training.train`,
`tuning.sweep_budget`) as a subprocess in its own process group:
  [1] once uninterrupted: the reference;
  [2] again in a fresh folder, while the harness SIGKILLs, at moments drawn from `numpy.random.default_rng(seed)`,
      the driver's whole process tree (the driver and the local Ray it started), or Ray worker processes
      (`ray::ShardWorker`, `ray::MapWorker`, `ray::RayTrainWorker`), or a whole worker node of a simulated
      multi-node cluster (`ray.cluster_utils.Cluster`: a head without CPUs and 2 worker nodes);
  [3] the same command rerun until it exits 0 (at most --max-reruns times);
then it checks the promises of docs/reliability.md: every episode once (episode_id in the shards vs the manifest),
shard bytes equal to the reference, final checkpoint tensors equal to the reference (weights, EMA, Adam moments,
step, data position), MLflow runs neither duplicated nor left RUNNING. A kill drawn after the command already
finished does not count. Prints `scenario | kills | reruns | outcome`; exits 1 when any scenario fails.
Ray starts under this harness need the machine to themselves on 2 cores: `flock /tmp/ray.lock` around it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
       "MLFLOW_ENABLE_ASYNC_LOGGING": "false", "RAY_DEDUP_LOGS": "0", "PYTHONPATH": str(ROOT)}
COLLECT = ["--env", "maze", "--episodes", "12", "--length", "24", "--resolution", "16", "--episodes-per-shard", "2",
           "--workers", "2", "--seed", "0"]
TRAIN = ["--model-size", "tiny", "--memory", "prepend", "--memory-length", "4", "--budget", "4", "--window", "4",
         "--batch-size", "4", "--steps", "8", "--log-every", "1", "--checkpoint-every", "2", "--lr", "1e-3",
         "--seed", "3", "--name", "chaos"]
SWEEP = ["--grid", "full", "--structures", "prepend", "--memory-lengths", "4", "8", "--compressions", "none",
         "--steps", "4", "--batch-size", "2", "--window", "4", "--probe-max-steps", "5", "--max-concurrent-trials", "1"]


# ---------------------------------------------------------------------------------------------------------------
# Processes: the tree under a pid, read from /proc (no psutil in the project's environment).

def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(entry)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd.strip())
    return table


def descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every process below `pid` (children, their children, ...)."""
    table, found, frontier = _process_table(), {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, cmd) in table.items():
            if ppid == parent and child not in found:
                found[child] = cmd
                frontier.append(child)
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver's process group and every process below it (the local Ray it started: gcs, raylet,
    workers), as a machine losing power or the OOM killer would: nothing gets to clean up."""
    pids = list(descendants(proc.pid))
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


# ---------------------------------------------------------------------------------------------------------------
# Running a command under kills

@dataclass
class Attempt:
    returncode: int
    killed: int  # kills the plan made during this attempt
    log: str


@dataclass
class Outcome:
    scenario: str
    kills: int = 0
    reruns: int = 0
    ok: bool = False
    reason: str = ""
    seconds: float = 0.0
    logs: list[str] = field(default_factory=list)


class Runner:
    """Starts a command line in its own process group with the harness's environment; logs under `logs`."""

    def __init__(self, logs: Path, extra_env: dict | None = None):
        self.logs, self.num = logs, 0
        self.env = {**os.environ, **ENV, **(extra_env or {})}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, args: list[str]) -> tuple[subprocess.Popen, Path]:
        self.num += 1
        log = self.logs / f"{self.num:02d}.log"
        with open(log, "w") as f:
            f.write("$ " + " ".join(args) + "\n")
            f.flush()
            proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=self.env, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        return proc, log

    def run(self, args: list[str], timeout_sec: float = 600, on_start: Callable | None = None) -> Attempt:
        """Run to the end; `on_start(proc)` (a kill plan) runs while it does and says whether it killed."""
        proc, log = self.start(args)
        killed = False
        try:
            killed = on_start(proc) if on_start else 0
            proc.wait(timeout=timeout_sec)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            return Attempt(-9, killed, log.read_text() + f"\n[chaos] timed out after {timeout_sec:g} s")
        finally:
            if proc.poll() is None:
                kill_tree(proc)
        with open(log, "a") as f:
            f.write(f"\n[chaos] exit status {proc.returncode}; {killed} kill(s) during this attempt\n")
        return Attempt(proc.returncode, killed, log.read_text())


def wait_alive(proc: subprocess.Popen, seconds: float) -> bool:
    """Sleep `seconds` unless the process ends first; True when it is still running."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return proc.poll() is None


def wait_progress(proc: subprocess.Popen, out: Path, glob: str) -> float | None:
    """Wait until a new file matching `glob` appears under `out` (the command made progress: a shard, a
    checkpoint); returns the monotonic time it did, None when the command ended first."""
    before = set(out.glob(glob))
    while proc.poll() is None:
        if set(out.glob(glob)) - before:
            return time.monotonic()
        time.sleep(0.05)
    return None


def kill_driver_after(out: Path, glob: str, seconds: float) -> Callable:
    """A plan: once the attempt has written something new (`glob` under `out`), wait `seconds`, then SIGKILL
    the driver's tree. Every kill thus lands after progress, while work is left, so each attempt gets further."""
    def plan(proc: subprocess.Popen) -> int:
        if wait_progress(proc, out, glob) is None or not wait_alive(proc, seconds):
            return 0
        kill_tree(proc)
        return 1
    return plan


def find_workers(root_pid: int, pattern: str) -> list[int]:
    """pids of the Ray worker processes below `root_pid` whose title (`ray::ShardWorker...`) contains `pattern`."""
    return sorted(pid for pid, cmd in descendants(root_pid).items() if cmd.startswith("ray::") and pattern in cmd)


def kill_workers(pattern: str, delays: list[float]) -> Callable:
    """A plan that, for each delay, waits until a `ray::<pattern>` process runs below the driver, waits `delay`
    more seconds and SIGKILLs it (the first by pid). Returns how many it killed."""
    def plan(proc: subprocess.Popen) -> int:
        done = 0
        for delay in delays:
            targets = []
            while proc.poll() is None and not targets:
                targets = find_workers(proc.pid, pattern)
                time.sleep(0.1)
            if not targets or not wait_alive(proc, delay):
                break
            targets = find_workers(proc.pid, pattern)
            for pid in targets[:1]:
                try:
                    os.kill(pid, signal.SIGKILL)
                    done += 1
                except ProcessLookupError:
                    pass
            time.sleep(1.0)  # let Ray notice before the next kill
        return done
    return plan


def run_with_kills(runner: Runner, args: list[str], plans: list[Callable], max_reruns: int,
                   outcome: Outcome) -> bool:
    """Run once per kill plan (each attempt killed by its plan, or ending by itself), then rerun without kills
    until the command exits 0. Counts in `outcome` the kills that landed and the reruns (attempts after the
    first); True when the command finished."""
    last = None
    for i, plan in enumerate(plans):
        outcome.reruns += i > 0
        last = runner.run(args, on_start=plan)
        outcome.kills += int(last.killed)
        if last.returncode == 0:  # finished (a worker kill it survived, or a kill drawn after its end)
            return True
    for _ in range(max_reruns):
        outcome.reruns += 1
        last = runner.run(args)
        if last.returncode == 0:
            return True
    outcome.reason = f"still exit {last.returncode} after {outcome.reruns} rerun(s): " + _last_error(last.log)
    return False


def _last_error(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower():
            return ln[:300]
    return (lines[-1] if lines else "no output")[:300]


# ---------------------------------------------------------------------------------------------------------------
# Invariants

def file_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shard-*.parquet"))}


def check_shards(got: Path, want: Path) -> list[str]:
    """Every episode once, every shard listed and byte-identical to the reference, no stray temp files."""
    import pyarrow.parquet as pq

    problems = []
    manifest = json.loads((got / "manifest.json").read_text())["shards"]
    digests, ref = file_digests(got), file_digests(want)
    if set(manifest) != set(digests):
        problems.append(f"manifest lists {sorted(manifest)}, folder holds {sorted(digests)}")
    if digests != ref:
        differ = sorted(n for n in set(digests) | set(ref) if digests.get(n) != ref.get(n))
        problems.append(f"shards differ from the uninterrupted run: {differ}")
    ids = [i for name in sorted(digests) for i in pq.read_table(got / name, columns=["episode_id"])["episode_id"]
           .to_pylist()]
    want_ids = [i for name in sorted(ref) for i in pq.read_table(want / name, columns=["episode_id"])["episode_id"]
                .to_pylist()]
    if len(ids) != len(set(ids)):
        problems.append(f"duplicated episodes: {sorted({i for i in ids if ids.count(i) > 1})}")
    if set(ids) != set(want_ids):
        problems.append(f"episodes lost: {sorted(set(want_ids) - set(ids))}; extra: {sorted(set(ids) - set(want_ids))}")
    rows = sum(e["rows"] for e in manifest.values())
    if rows != len(ids):
        problems.append(f"manifest counts {rows} episodes, shards hold {len(ids)}")
    stray = [p.name for p in got.iterdir() if ".tmp" in p.name]
    if stray:
        problems.append(f"partial files left: {stray}")
    return problems


def latest_checkpoints(out: Path) -> dict[str, Path]:
    """run folder (relative to `out`) -> its newest checkpoint folder."""
    from training import checkpoint as ckpt

    newest: dict[str, Path] = {}
    for folder in sorted(out.rglob(ckpt.FOLDER_GLOB)):
        if (folder / ckpt.CKPT_FILE).exists():
            newest[str(folder.parent.relative_to(out))] = folder  # sorted: the last one is the newest step
    return newest


def check_checkpoints(got: Path, want: Path) -> list[str]:
    """The newest checkpoint of every run equal, tensor for tensor, to the uninterrupted run's."""
    import torch

    from training import checkpoint as ckpt

    problems, mine, ref = [], latest_checkpoints(got), latest_checkpoints(want)
    if set(mine) != set(ref) or not ref:
        return [f"runs with checkpoints: {sorted(mine)}, uninterrupted: {sorted(ref)}"]
    for run, folder in ref.items():
        if mine[run].name != folder.name:
            problems.append(f"{run}: newest checkpoint {mine[run].name}, uninterrupted {folder.name}")
            continue
        a, b = ckpt.load_checkpoint(mine[run]), ckpt.load_checkpoint(folder)
        if (a["step"], a["data_position"]) != (b["step"], b["data_position"]):
            problems.append(f"{run}: step/data position {a['step']}/{a['data_position']} vs "
                            f"{b['step']}/{b['data_position']}")
        for part in ("model", "ema"):
            for name, tensor in b[part].items():
                if not torch.equal(a[part][name], tensor):
                    problems.append(f"{run}: {part}.{name} differs")
                    break
        for i, moments in b["optimizer"]["state"].items():
            if any(not torch.equal(a["optimizer"]["state"][i][k], t) for k, t in moments.items()):
                problems.append(f"{run}: Adam state {i} differs")
                break
    return problems


def check_mlflow(out: Path, want: Path) -> list[str]:
    """Same run names as the uninterrupted run, each once, none left RUNNING."""
    from mlflow import MlflowClient

    def runs(folder: Path) -> list:
        client = MlflowClient(f"sqlite:///{folder.resolve()}/mlflow.db")
        exps = [e.experiment_id for e in client.search_experiments()]
        return client.search_runs(exps, max_results=1000) if exps else []

    def names(found: list, folder: Path) -> list[str]:  # a sweep's parent run is named after its folder
        return sorted("<out>" if r.info.run_name == folder.name else r.info.run_name for r in found)

    problems, mine, ref = [], runs(out), runs(want)
    if names(mine, out) != names(ref, want):
        problems.append(f"MLflow runs {names(mine, out)}, uninterrupted: {names(ref, want)}")
    dangling = [f"{r.info.run_name} ({r.info.status})" for r in mine if r.info.status != "FINISHED"]
    if dangling:
        problems.append(f"MLflow runs not FINISHED: {dangling}")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Scenarios

class Chaos:
    """One chaos session: a work folder, the seeded RNG, references built once and shared between scenarios."""

    def __init__(self, work: Path, seed: int, max_reruns: int = 4):
        self.work, self.rng, self.max_reruns = work, np.random.default_rng(seed), max_reruns
        self.refs: dict[str, tuple[Path, float]] = {}  # key -> (output folder, seconds from first output to end)

    def folder(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def reference(self, key: str, make_args: Callable[[Path], list[str]]) -> tuple[Path, float]:
        """The uninterrupted run, made once per command: (output folder, seconds from its first output file,
        PROGRESS[key], to its end: the span in which kills land)."""
        if key not in self.refs:
            out = self.folder(f"ref-{key}")
            first = {}

            def watch(proc):
                first["t"] = wait_progress(proc, out, PROGRESS[key])
                return 0
            attempt = Runner(self.work / "logs" / f"ref-{key}").run(make_args(out), on_start=watch)
            if attempt.returncode != 0:
                raise RuntimeError(f"the uninterrupted {key} run failed (exit {attempt.returncode}): "
                                   f"{_last_error(attempt.log)}; log in {self.work / 'logs' / ('ref-' + key)}")
            self.refs[key] = (out, time.monotonic() - (first["t"] or time.monotonic()))
        return self.refs[key]

    def moments(self, num: int, span: float) -> list[float]:
        """`num` delays after an attempt's first new output, uniform over 0-30% of the reference's span."""
        return [float(x) for x in self.rng.uniform(0.0, 0.3, num) * span]

    # --- data preparation (in process, not under test) ---

    def episodes(self) -> Path:
        return self.reference("collect", lambda out: ["-m", "pipeline.collect", *COLLECT, "--out-dir", str(out)])[0]

    def latents(self) -> Path:
        """Synthetic revisit episodes encoded with the identity encoder, with evaluation cases: what train and
        sweep read (built in process; the sweep's rollouts need 72-frame episodes)."""
        folder = self.work / "train-latents"
        if not (folder / "manifest.json").exists():
            from pipeline.encode import EncodeConfig, run_encode
            from pipeline.eval_cases import build_eval_cases, build_rollout_cases
            from pipeline.synthetic import write_synthetic_shards

            shutil.rmtree(self.work / "train-episodes", ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
            write_synthetic_shards(self.work / "train-episodes", num_shards=1, episodes_per_shard=3, length=72,
                                   size=8, seed=2)
            run_encode(EncodeConfig(in_dir=str(self.work / "train-episodes"), out_dir=str(folder), backend="local"))
            build_eval_cases(folder, cases_per_bin=1, max_memory=8, horizon=4, seed=0, window=4)
            build_rollout_cases(folder, num_cases=1, max_memory=8, horizon=64, seed=0)
        return folder

    # --- the scenario kinds ---

    def driver_kills(self, name: str, key: str, make_args: Callable[[Path], list[str]], num_kills: int,
                     checks: list[Callable[[Path, Path], list[str]]]) -> Outcome:
        outcome = Outcome(name)
        want, span = self.reference(key, make_args)
        out = self.folder(name)
        plans = [kill_driver_after(out, PROGRESS[key], t) for t in self.moments(num_kills, span)]
        if run_with_kills(Runner(self.work / "logs" / name), make_args(out), plans, self.max_reruns, outcome):
            if not outcome.kills:
                outcome.reason = "every kill moment fell after the command had finished"
                return outcome
            self._judge(outcome, [c(out, want) for c in checks])
        return outcome

    def worker_kills(self, name: str, key: str, make_args: Callable[[Path], list[str]], pattern: str,
                     num_kills: int, checks: list[Callable[[Path, Path], list[str]]]) -> Outcome:
        outcome = Outcome(name)
        want, _ = self.reference(key, make_args)
        out = self.folder(name)
        delays = [float(x) for x in self.rng.uniform(0.0, 1.5, num_kills)]
        if run_with_kills(Runner(self.work / "logs" / name), make_args(out), [kill_workers(pattern, delays)],
                          self.max_reruns, outcome):
            if outcome.kills < num_kills:
                outcome.reason = f"only {outcome.kills} of {num_kills} `ray::{pattern}` kills landed before the end"
                return outcome
            self._judge(outcome, [c(out, want) for c in checks])
        return outcome

    def node_loss(self, name: str, key: str, make_args: Callable[[Path], list[str]], pattern: str,
                  checks: list[Callable[[Path, Path], list[str]]]) -> Outcome:
        """A head without CPUs and 2 worker nodes (2 CPUs each) on this machine; the command joins it with
        --address; the worker node that runs a `ray::<pattern>` process is removed (its raylet and workers
        killed) after a seeded delay; the command, rerun if it fails, must finish with the same output."""
        from ray.cluster_utils import Cluster

        outcome = Outcome(name)
        want, _ = self.reference(key, make_args)
        out = self.folder(name)
        os.environ.update(ENV)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False},
                          shutdown_at_exit=True)
        try:
            nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]
            delay = float(self.rng.uniform(0.0, 1.5))

            def remove_a_node(proc: subprocess.Popen) -> int:
                targets = []
                while proc.poll() is None and not targets:
                    targets = find_workers(os.getpid(), pattern)
                    time.sleep(0.1)
                if not targets or not wait_alive(proc, delay):
                    return 0
                table = _process_table()
                parents = {table.get(pid, (0, ""))[0] for pid in find_workers(os.getpid(), pattern)}
                hosting = [n for n in nodes if n.all_processes["raylet"][0].process.pid in parents] or nodes
                cluster.remove_node(hosting[0], allow_graceful=False)
                return 1

            args = make_args(out) + ["--address", cluster.address]
            if run_with_kills(Runner(self.work / "logs" / name), args, [remove_a_node], self.max_reruns, outcome):
                if not outcome.kills:
                    outcome.reason = f"no `ray::{pattern}` process ran on a worker node before the end"
                    return outcome
                self._judge(outcome, [c(out, want) for c in checks])
        finally:
            cluster.shutdown()
        return outcome

    @staticmethod
    def _judge(outcome: Outcome, problem_lists: list[list[str]]) -> None:
        problems = [p for ps in problem_lists for p in ps]
        outcome.ok = not problems
        outcome.reason = "; ".join(problems)[:600] if problems else "invariants hold"


def collect_args(out: Path) -> list[str]:
    return ["-m", "pipeline.collect", *COLLECT, "--out-dir", str(out)]


def encode_args(chaos: Chaos, backend: str = "ray") -> Callable[[Path], list[str]]:
    episodes = chaos.episodes()
    return lambda out: ["-m", "pipeline.encode", "--in-dir", str(episodes), "--out-dir", str(out), "--backend", backend,
                        "--batch-size", "1"]


def train_args(chaos: Chaos, backend: str, workers: int = 1) -> Callable[[Path], list[str]]:
    data = chaos.latents()
    return lambda out: ["-m", "training.train", *TRAIN, "--data-dir", str(data), "--out-dir", str(out),
                        "--backend", backend, "--num-workers", str(workers)]


def sweep_args(chaos: Chaos) -> Callable[[Path], list[str]]:
    data = chaos.latents()
    return lambda out: ["-m", "tuning.sweep_budget", *SWEEP, "--data-dir", str(data), "--out-dir", str(out)]


TRAIN_CHECKS = [check_checkpoints, check_mlflow]
# What counts as progress of each command (files under its output folder): kills land after the first new one.
PROGRESS = {"collect": "shard-*.parquet", "encode": "shard-*.parquet", "train-local": "**/checkpoint_0*",
            "train-ray1": "**/checkpoint_0*", "train-ray2": "**/checkpoint_0*", "sweep": "trials/**/checkpoint_0*"}
SCENARIOS: dict[str, Callable[[Chaos], Outcome]] = {
    "collect-driver": lambda c: c.driver_kills("collect-driver", "collect", collect_args, 2, [check_shards]),
    "collect-worker": lambda c: c.worker_kills("collect-worker", "collect", collect_args, "ShardWorker", 2,
                                               [check_shards]),
    "encode-driver": lambda c: c.driver_kills("encode-driver", "encode", encode_args(c), 2, [check_shards]),
    "encode-worker": lambda c: c.worker_kills("encode-worker", "encode", encode_args(c), "MapWorker", 1,
                                              [check_shards]),
    "train-local-driver": lambda c: c.driver_kills("train-local-driver", "train-local", train_args(c, "local"), 2,
                                                   TRAIN_CHECKS),
    "train-ray1-driver": lambda c: c.driver_kills("train-ray1-driver", "train-ray1", train_args(c, "ray", 1), 2,
                                                  TRAIN_CHECKS),
    "train-ray1-worker": lambda c: c.worker_kills("train-ray1-worker", "train-ray1", train_args(c, "ray", 1),
                                                  "RayTrainWorker", 1, TRAIN_CHECKS),
    "train-ray2-driver": lambda c: c.driver_kills("train-ray2-driver", "train-ray2", train_args(c, "ray", 2), 1,
                                                  TRAIN_CHECKS),
    "train-ray2-worker": lambda c: c.worker_kills("train-ray2-worker", "train-ray2", train_args(c, "ray", 2),
                                                  "RayTrainWorker", 1, TRAIN_CHECKS),
    "sweep-driver": lambda c: c.driver_kills("sweep-driver", "sweep", sweep_args(c), 2, TRAIN_CHECKS),
    "collect-node": lambda c: c.node_loss("collect-node", "collect", collect_args, "ShardWorker", [check_shards]),
    "encode-node": lambda c: c.node_loss("encode-node", "encode", encode_args(c), "MapWorker", [check_shards]),
}
QUICK = ["collect-driver", "train-local-driver", "encode-worker"]


def run_scenarios(names: list[str], seed: int, work: Path, max_reruns: int = 4) -> list[Outcome]:
    """Run the named scenarios in order (one seeded RNG for all); returns one Outcome each."""
    chaos, outcomes = Chaos(work, seed, max_reruns), []
    for name in names:
        t0 = time.monotonic()
        try:
            outcome = SCENARIOS[name](chaos)
        except Exception as e:  # a reference run or a check that crashed: the scenario fails, the suite goes on
            outcome = Outcome(name, reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400])
        outcome.seconds = time.monotonic() - t0
        outcomes.append(outcome)
        print(f"[chaos] {format_row(outcome)}", flush=True)
    return outcomes


def format_row(o: Outcome) -> str:
    return f"| {o.scenario} | {o.kills} | {o.reruns} | {'PASS' if o.ok else 'FAIL'}: {o.reason} | {o.seconds:.0f} |"


def table(outcomes: list[Outcome]) -> str:
    lines = ["| scenario | kills | reruns | outcome | seconds |", "|---|---|---|---|---|"]
    return "\n".join(lines + [format_row(o) for o in outcomes])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="all", help=f"'all' or a comma-separated list of {', '.join(SCENARIOS)}")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--max-reruns", type=int, default=4, help="reruns allowed after the kills")
    ap.add_argument("--keep", default="", help="work folder to keep (default: a temp folder, removed at the end)")
    args = ap.parse_args(argv)
    names = QUICK if args.quick else list(SCENARIOS) if args.scenarios == "all" else args.scenarios.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"--scenarios: unknown {unknown}; choose from {', '.join(SCENARIOS)}")
    os.environ.update(ENV)
    work = Path(args.keep or tempfile.mkdtemp(prefix="chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        outcomes = run_scenarios(names, args.seed, work, args.max_reruns)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table(outcomes))
    failed = [o.scenario for o in outcomes if not o.ok]
    if failed:
        print(f"chaos: {len(failed)} scenario(s) failed: {', '.join(failed)}"
              + ("" if args.keep else "; rerun with --keep DIR to keep their logs"), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
