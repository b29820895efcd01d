"""Render episodes into Parquet shards on a pool of Ray actors that keep their env between episodes, resumably.

    python -m pipeline.collect --env maze --dry-run                 # print the resolved config
    python -m pipeline.collect --env maze                           # laptop: starts a local Ray
    python -m pipeline.collect --env maze --episodes 6 --length 8 --resolution 16 --out-dir /tmp/tiny
    python -m pipeline.collect --env minecraft --address auto --workers 32 --out-dir /shared/data/minecraft

Shard i holds episodes i*K .. i*K+K-1 (K = --episodes-per-shard); episode i of seed s is rendered from
`numpy.random.default_rng([s, i])` alone, so shard bytes depend neither on --workers nor on retries or order.
Running the same command again skips the shards listed in <out>/manifest.json and renders the rest.
Workers: --workers actors (`ShardWorker`, 1 CPU and the env's custom resource each) take one shard at a time;
each builds its env once (a Minecraft launch is about a minute) and resets it with every episode's seed, which
gives the bytes a fresh env would. Engine crashes are expected (dmlab, minecraft): each episode is tried up to
1 + --max-retries times (the worker's env replaced each time, the partial episode dropped); a worker process
that dies is replaced by a new one and its shard retried up to --max-retries times. Every failure is appended to
<out>/failures.jsonl, and a shard that keeps failing is left not-done for the next run. Workers write shards
themselves, so on a multi-node cluster --out-dir must be a path every node sees (shared or network storage).
"""
from __future__ import annotations

import dataclasses
import faulthandler
import json
import os
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cli import field, parse_config, run_cli, to_json
from pipeline.schema import episodes_to_table
from pipeline.shards import Manifest, check_config, error_line, write_shard

ENV_CHOICES = ("maze", "dmlab", "minecraft")
# Custom Ray resource a node must advertise to run episodes of an env (cluster.yaml's collector node types
# start Ray with e.g. `ray start --resources='{"minerl": 1}'`); maze runs on any CPU.
ENV_RESOURCES: dict[str, str | None] = {"maze": None, "dmlab": "dmlab", "minecraft": "minerl"}
# Fields that do not change the data; left out of <out>/config.json.
RUN_ONLY_FIELDS = ("out_dir", "workers", "address", "max_retries", "episode_timeout_sec")
FAILURES = "failures.jsonl"


@dataclass
class CollectConfig:
    env: str = field("maze", "environment to render", choices=list(ENV_CHOICES))
    episodes: int = field(1000, "number of episodes in the run")
    length: int = field(300, "frames per episode (T)")
    resolution: int = field(64, "frame height and width in pixels (square)")
    maze_size: int = field(9, "maze side in cells incl. the outer wall (odd, >= 5; maze only; TECO: 9)")
    agent: str = field("explore", "policy that chooses the actions (see envs.rollout.AGENTS)")
    seed: int = field(0, "run seed; episode i uses numpy.random.default_rng([seed, i])")
    out_dir: str = field("", "output folder (default: data/<env>)", aliases=("--out",))
    workers: int = field(2, "worker actors, each keeping one env and rendering one shard at a time (1 CPU each)")
    episodes_per_shard: int = field(20, "episodes per Parquet shard (K)")
    address: str = field("", "Ray cluster to join ('auto' or host:port); empty starts a local Ray")
    max_retries: int = field(2, "retries of a failing episode (new env each time) and of a shard whose worker died")
    episode_timeout_sec: float = field(600.0, "seconds one episode may take before it counts as failed")

    def __post_init__(self) -> None:
        if self.env not in ENV_CHOICES:
            raise ValueError(f"--env: unknown env {self.env!r}; choose one of {', '.join(ENV_CHOICES)}")
        for name in ("episodes", "length", "resolution", "maze_size", "workers", "episodes_per_shard"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}")
        if self.max_retries < 0:
            raise ValueError(f"--max-retries: expected an integer >= 0, got {self.max_retries}")
        if self.episode_timeout_sec < 0:
            raise ValueError("--episode-timeout-sec: expected seconds >= 0 (0 = no limit), "
                             f"got {self.episode_timeout_sec}")
        from envs.rollout import AGENTS

        agents = AGENTS.get(self.env, ())
        if self.agent not in agents:
            raise ValueError(f"--agent: {self.agent!r} is not an agent of env {self.env!r}; "
                             f"choose one of {', '.join(agents)}")
        if not self.out_dir:
            self.out_dir = str(Path("data") / self.env)

    @property
    def num_shards(self) -> int:
        return -(-self.episodes // self.episodes_per_shard)

    def env_settings(self) -> dict:
        """Keyword settings for envs.make_env / rollout (resolved values land in each row's env_config)."""
        if self.env == "maze":
            return {"size": self.maze_size, "height": self.resolution, "width": self.resolution}
        return {"resolution": self.resolution}

    def data_config(self) -> dict:
        """The fields that define the data; saved as <out>/config.json and compared on reruns."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUN_ONLY_FIELDS}


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def shard_episodes(cfg: CollectConfig, index: int) -> range:
    """Episode indices of shard `index`: partitioning by episode index, never by worker."""
    return range(index * cfg.episodes_per_shard, min(cfg.episodes, (index + 1) * cfg.episodes_per_shard))


def check_env_settings(cfg: CollectConfig) -> None:
    """Check the maze settings here, so sizes labmaze rejects fail naming the flag before Ray starts
    (dmlab/minecraft engines may live on other nodes only, so they are checked where they run)."""
    if cfg.env != "maze":
        return
    from envs.maze import parse_settings

    try:
        parse_settings(cfg.env_settings())
    except ValueError as e:
        flag = "--maze-size" if "setting size=" in str(e) else "--resolution"
        raise ValueError(f"{flag}: {e}") from e


# ---------------------------------------------------------------------------------------------------------------
# Worker side: a ShardWorker (one env) renders and writes shards; the Ray actor wraps it.

class EpisodeTimeout(Exception):
    pass


@contextmanager
def _deadline(seconds: float):
    """Raise EpisodeTimeout after `seconds` (SIGALRM; works while Python code runs). As a last resort a C-level
    watchdog (faulthandler) kills the process at 2x+30 s, for engines stuck in C holding the GIL; the driver
    then replaces the worker and retries its shard (see _render_on_workers)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise EpisodeTimeout(f"episode ran past --episode-timeout-sec {seconds:g}")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(2 * seconds + 30, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        faulthandler.cancel_dump_traceback_later()


def _targets(fault: dict | None, shard: int, episode: int) -> bool:
    return bool(fault) and fault.get("shard") == shard and fault.get("episode_index", episode) == episode


def _inject_fault(fault: dict | None, shard: int, episode: int, attempt: int) -> None:
    """Test hook (run_collect(..., fault=...)): fail on a chosen shard/episode. modes: exit (kill the worker
    process; every attempt, or only while the file `once_file` does not exist, which it then creates), raise,
    hang; `attempts` = how many attempts fail; `timeout_sec` overrides --episode-timeout-sec on the faulty ones."""
    if not _targets(fault, shard, episode):
        return
    if fault["mode"] == "exit":
        once = fault.get("once_file")
        if once and os.path.exists(once):
            return
        if once:
            Path(once).touch()
        os._exit(17)
    if attempt < fault.get("attempts", 1 << 30):
        if fault["mode"] == "raise":
            raise RuntimeError(f"injected fault in episode {episode}")
        if fault["mode"] == "hang":
            time.sleep(3600)


class ShardWorker:
    """One collect worker: owns one env (an envs.rollout.EpisodePlayer, built on the first episode) and renders
    shards episode by episode on it. run_collect runs one per Ray actor; it works as is without Ray.

    `num_launches` counts env builds: 1 while no episode fails; a failed attempt closes the env, so the next
    episode launches a new one."""

    def __init__(self, cfg: CollectConfig, worker_index: int = 0):
        from envs.rollout import EpisodePlayer

        self.cfg, self.worker_index = cfg, worker_index
        self.player = EpisodePlayer(cfg.env, cfg.env_settings(), cfg.agent)

    @property
    def num_launches(self) -> int:
        return self.player.num_launches

    def render_episode(self, index: int, attempt: int = 0, fault: dict | None = None) -> dict:
        """One shard row for episode `index`, drawn from default_rng([seed, index]) alone (the env is reset from
        it, so what earlier episodes did to the env does not matter)."""
        cfg = self.cfg
        shard = index // cfg.episodes_per_shard
        faulty = _targets(fault, shard, index) and attempt < fault.get("attempts", 1 << 30)
        # The short test timeout applies to the faulty attempts only: a retry pays a new env (textures, engine).
        timeout = fault.get("timeout_sec", cfg.episode_timeout_sec) if faulty else cfg.episode_timeout_sec
        rng = np.random.default_rng([cfg.seed, index])
        with _deadline(timeout):  # covers the env launch when this episode needs one
            _inject_fault(fault, shard, index, attempt)
            ep = self.player.play(cfg.length, rng)
        if ep["frames"].shape[0] != cfg.length:
            raise RuntimeError(f"rollout returned {ep['frames'].shape[0]} frames, expected --length {cfg.length}")
        return {
            "episode_id": f"{cfg.env}-s{cfg.seed}-e{index}", "env": cfg.env, "agent": cfg.agent,
            "seed": cfg.seed, "episode_index": index, "fps": float(ep["fps"]),
            "env_config": json.dumps(ep["env_config"], sort_keys=True, default=str),
            "frames": ep["frames"], "actions": ep["actions"], "poses": ep["poses"], "scene": ep["scene"],
            "revisit_gap": ep["revisit_gap"],
        }

    def render_shard(self, index: int, fault: dict | None = None) -> dict:
        """Render shard `index` and write it atomically to <out>/shard-XXXXX.parquet.

        Returns {"index", "name", "entry" (manifest entry, or None when an episode kept failing), "failures"
        (list of records for failures.jsonl), "fatal" (message when the engine is missing), "episodes" (rendered),
        "frames" (written), "launches" (env builds during this call), "worker", "render_sec", "write_sec"}."""
        name = shard_name(index)
        launches0 = self.num_launches
        result = {"index": index, "name": name, "entry": None, "failures": [], "fatal": None, "episodes": 0,
                  "frames": 0, "launches": 0, "worker": self.worker_index, "render_sec": 0.0, "write_sec": 0.0}
        rows = self._render_rows(index, fault, result)
        result["launches"] = self.num_launches - launches0
        if rows is None:
            return result
        t1 = time.perf_counter()
        result["entry"] = write_shard(episodes_to_table(rows, "frames"), Path(self.cfg.out_dir) / name)
        result["write_sec"] = time.perf_counter() - t1
        result["frames"] = sum(len(r["actions"]) for r in rows)
        return result

    def _render_rows(self, index: int, fault: dict | None, result: dict) -> list[dict] | None:
        """The rows of shard `index`, or None (result["fatal"] or result["failures"] say why)."""
        rows, t0 = [], time.perf_counter()
        try:
            for episode in shard_episodes(self.cfg, index):
                for attempt in range(self.cfg.max_retries + 1):
                    try:
                        rows.append(self.render_episode(episode, attempt, fault))
                        result["episodes"] += 1
                        break
                    except ImportError as e:  # envs.engine_errors.EngineMissing: retrying cannot help
                        result["fatal"] = f"{type(e).__name__}: {e}"
                        return None
                    except Exception as e:  # an engine crash or timeout: drop the partial episode, new env, retry
                        self.player.close()  # (already closed when the env raised; not when the fault hook did)
                        result["failures"].append({"shard": shard_name(index), "episode_index": episode,
                                                   "attempt": attempt, "worker": self.worker_index,
                                                   "error": f"{type(e).__name__}: {e}",
                                                   "where": traceback.format_exc(limit=-3)})
                else:
                    return None
            return rows
        finally:
            result["render_sec"] = time.perf_counter() - t0

    def close(self) -> None:
        """Release the env (e.g. kill the Minecraft JVM)."""
        self.player.close()


def render_episode(cfg: CollectConfig, index: int, attempt: int = 0, fault: dict | None = None) -> dict:
    """One shard row for episode `index` on a fresh env (closed afterwards): the reference the workers match."""
    worker = ShardWorker(cfg)
    try:
        return worker.render_episode(index, attempt, fault)
    finally:
        worker.close()


def render_shard(cfg: CollectConfig, index: int, fault: dict | None = None) -> dict:
    """Shard `index` rendered and written by a one-off ShardWorker (one env for the shard); see
    ShardWorker.render_shard for the result."""
    worker = ShardWorker(cfg)
    try:
        return worker.render_shard(index, fault)
    finally:
        worker.close()


# ---------------------------------------------------------------------------------------------------------------
# Driver side: plan, launch, record.

def _append_failures(out: Path, records: list[dict]) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(out / FAILURES, "a") as f:
        for rec in records:
            f.write(json.dumps({"time": stamp, **rec}, sort_keys=True, default=str) + "\n")


def _connect(cfg: CollectConfig) -> bool:
    """Join --address, or start a local Ray (unless one is up already); True when we started it."""
    from pipeline.console import start_ray

    if cfg.address:
        return start_ray(cfg.address, log_to_driver=False)
    # More logical CPUs than worker actors, so the driver and Ray's own tasks are never starved (stack-facts 2b).
    resource = ENV_RESOURCES[cfg.env]
    return start_ray(num_cpus=max(cfg.workers + 1, os.cpu_count() or 1),
                     resources={resource: cfg.workers} if resource else None, log_to_driver=False)


def _check_resources(cfg: CollectConfig) -> None:
    import ray

    resource = ENV_RESOURCES[cfg.env]
    if resource and ray.cluster_resources().get(resource, 0) < 1:
        raise RuntimeError(
            f"--env {cfg.env}: no node of the Ray cluster advertises the custom resource {resource!r}, so none can "
            f"run {cfg.env} episodes. Start the collector nodes with `ray start --resources='{{\"{resource}\": 1}}'` "
            f"(cluster.yaml: the {cfg.env} collector node type does this), then rerun the same command.")


def _crash_record(index: int, error: BaseException, attempt: int, outcome: str) -> dict:
    """failures.jsonl record of a shard whose worker call failed outside the episodes (the process died: killed,
    OOM, segfault, watchdog; or the shard write raised); `attempt` counts the shard's tries."""
    return {"shard": shard_name(index), "episode_index": None, "attempt": attempt,
            "error": f"{error_line(error)} ({outcome})", "message": str(error)}  # a Ray error's cause is its last line


def _start_worker(cfg: CollectConfig, slot: int):
    """A ShardWorker actor for pool slot `slot`: 1 CPU and the env's custom resource. Ray neither restarts it nor
    re-sends a call it lost: the driver replaces a dead one and retries its shard, so every death is logged and
    retries are counted per shard. (With max_restarts > 0 and max_task_retries=0, a call sent while Ray restarts
    the actor fails at once with ActorUnavailableError, which would charge a death to an innocent shard.)"""
    import ray

    opts = dict(num_cpus=1, max_restarts=0, max_task_retries=0)
    resource = ENV_RESOURCES[cfg.env]
    if resource:
        opts["resources"] = {resource: 1}
    return ray.remote(ShardWorker).options(**opts).remote(cfg, slot)


def _stop_workers(workers: list, timeout_sec: float = 60.0) -> None:
    """Close every worker's env (a clean engine exit), then end the actors."""
    import ray

    workers = [w for w in workers if w is not None]
    try:
        ray.get([w.close.remote() for w in workers], timeout=timeout_sec)
    except Exception:  # a dead or stuck worker: killing it below ends its engine's parent process
        pass
    for w in workers:
        ray.kill(w)


def _record(res: dict, out: Path, manifest: Manifest, summary: dict) -> None:
    """Book one finished worker call: failures to failures.jsonl, the shard into the manifest (or `failed`)."""
    summary["task_sec"] += res["render_sec"] + res["write_sec"]  # wall s inside the workers
    summary["episodes_rendered"] += res["episodes"]
    summary["env_launches"] += res["launches"]
    if res["failures"]:
        _append_failures(out, res["failures"])
        summary["failures_logged"] += len(res["failures"])
    if res["entry"] is None:
        summary["failed"].append(res["name"])
        return
    manifest.add(res["name"], res["entry"])
    summary["written"] += 1
    summary["frames"] += res["frames"]


def _render_on_workers(cfg: CollectConfig, workers: list, todo: list[int], fault: dict | None, out: Path,
                       manifest: Manifest, summary: dict, bar) -> None:
    """Hand shards to idle workers, one at a time each, until every shard is written or given up. A worker whose
    process died is replaced in `workers` (same slot, when that slot gets its next shard) and its shard retried
    up to --max-retries times, on whichever worker is idle first."""
    import ray

    queue, idle, pending, deaths = list(todo), list(range(len(workers))), {}, {}
    t0 = time.perf_counter()
    while queue or pending:
        while queue and idle:  # one shard per worker at a time: a dead worker loses only its own shard
            slot, index = idle.pop(0), queue.pop(0)
            if workers[slot] is None:  # replace a dead worker only when there is work for it
                workers[slot] = _start_worker(cfg, slot)
            pending[workers[slot].render_shard.remote(index, fault)] = (slot, index)
        [ref], _ = ray.wait(list(pending), num_returns=1)
        slot, index = pending.pop(ref)
        try:
            res = ray.get(ref)
            idle.insert(0, slot)  # live workers first: their env is up
        except ray.exceptions.RayActorError as e:  # the worker process died: the shard again, on another worker
            ray.kill(workers[slot])
            workers[slot] = None
            idle.append(slot)
            summary["workers_lost"] += 1
            deaths[index] = deaths.get(index, 0) + 1
            retry = deaths[index] <= cfg.max_retries
            outcome = "worker lost, shard " + ("retried" if retry else "left not-done")
            _append_failures(out, [_crash_record(index, e, deaths[index] - 1, outcome)])
            summary["failures_logged"] += 1
            if retry:
                queue.insert(0, index)
            else:
                summary["failed"].append(shard_name(index))
            continue
        except Exception as e:  # an error outside the episodes (e.g. writing the shard): not retried
            idle.insert(0, slot)
            _append_failures(out, [_crash_record(index, e, 0, "shard left not-done")])
            summary["failures_logged"] += 1
            summary["failed"].append(shard_name(index))
            continue
        if res["fatal"]:
            raise RuntimeError(f"--env {cfg.env}: the engine cannot run on a worker node: {res['fatal']}")
        _record(res, out, manifest, summary)
        if res["entry"] is not None:
            bar.update(len(shard_episodes(cfg, index)),
                       postfix=f"{summary['frames'] / (time.perf_counter() - t0):,.0f} frames/s, "
                               f"{summary['env_launches'] / max(summary['episodes_rendered'], 1):.3f} launches/ep")


def run_collect(cfg: CollectConfig, progress: bool = False, fault: dict | None = None) -> dict:
    """Render every shard of `cfg` that is not done yet; returns a summary dict: shards written, skipped and failed,
    frames and frames_per_sec, workers (actors started), episodes_rendered, env_launches, launches_per_episode,
    workers_lost (worker processes that died), failures_logged, task_sec (wall seconds inside the workers).

    `fault` is a test hook passed to the workers (see _inject_fault)."""
    check_env_settings(cfg)
    out = Path(cfg.out_dir).resolve()
    # refuses a folder that holds another config, before any work
    check_config(out, cfg.data_config(), flag_hint="--out-dir")
    manifest = Manifest(out)
    for stale in out.glob(".shard-*.parquet.tmp*"):  # left by workers killed mid-write; never a shard
        stale.unlink(missing_ok=True)
    todo = [i for i in range(cfg.num_shards) if not manifest.is_done(shard_name(i))]
    summary = {"out_dir": str(out), "num_shards": cfg.num_shards, "skipped": cfg.num_shards - len(todo), "written": 0,
               "failed": [], "failures_logged": 0, "frames": 0, "seconds": 0.0, "frames_per_sec": 0.0,
               "task_sec": 0.0, "workers": 0, "episodes_rendered": 0, "env_launches": 0,
               "launches_per_episode": 0.0, "workers_lost": 0}
    if not todo:
        return summary

    import ray

    from pipeline.console import progress as progress_bar

    wcfg = dataclasses.replace(cfg, out_dir=str(out))  # workers may run in another cwd
    started = _connect(cfg)
    t0 = time.perf_counter()
    workers, finished = [], False
    done_eps = sum(len(shard_episodes(cfg, i)) for i in set(range(cfg.num_shards)) - set(todo))
    bar = progress_bar(cfg.episodes, f"collect {cfg.env}", unit="ep", initial=done_eps, enabled=progress)
    try:
        _check_resources(cfg)
        workers = [_start_worker(wcfg, slot) for slot in range(min(cfg.workers, len(todo)))]
        summary["workers"] = len(workers)
        _render_on_workers(wcfg, workers, todo, fault, out, manifest, summary, bar)
        finished = True
    finally:
        bar.close()
        if workers:  # after an error, workers may be mid-shard: their close() would wait behind it
            _stop_workers(workers, timeout_sec=60.0 if finished else 2.0)
        if started:
            ray.shutdown()
    summary["seconds"] = time.perf_counter() - t0
    summary["frames_per_sec"] = summary["frames"] / max(summary["seconds"], 1e-9)
    summary["launches_per_episode"] = summary["env_launches"] / max(summary["episodes_rendered"], 1)
    summary["failed"].sort()
    return summary


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cfg, dry_run = parse_config(CollectConfig, argv, description=__doc__)
    try:
        check_env_settings(cfg)
        print(to_json(cfg))
        if dry_run:
            return 0
        summary = run_collect(cfg, progress=True)
    except (ValueError, RuntimeError) as e:
        print(f"pipeline.collect: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    if summary["failed"]:
        print(f"pipeline.collect: {len(summary['failed'])} shard(s) not done ({', '.join(summary['failed'])}); "
              f"see {Path(summary['out_dir']) / FAILURES}; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
