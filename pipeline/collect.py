"""Render episodes with Ray tasks into Parquet shards (one shard of K episodes per task), resumably.

    python -m pipeline.collect --env maze --dry-run                 # print the resolved config
    python -m pipeline.collect --env maze                           # laptop: starts a local Ray
    python -m pipeline.collect --env maze --episodes 6 --length 8 --resolution 16 --out /tmp/tiny
    python -m pipeline.collect --env minecraft --address auto --workers 32 --out /shared/data/minecraft

Shard i holds episodes i*K .. i*K+K-1 (K = --episodes-per-shard); episode i of seed s is rendered from
`numpy.random.default_rng([s, i])` alone, so shard bytes depend neither on --workers nor on retries or order.
Running the same command again skips the shards listed in <out>/manifest.json and renders the rest.
Engine crashes are expected (dmlab, minecraft): each episode is tried up to 1 + --max-retries times (a fresh
env each time, the partial episode dropped), every failure is appended to <out>/failures.jsonl, and a shard
whose episode keeps failing is left not-done for the next run. Workers write shards themselves, so on a
multi-node cluster --out must be a path every node sees (shared or network storage).
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

from pipeline.cli import field, parse_config, to_json
from pipeline.schema import episodes_to_table
from pipeline.shards import Manifest, check_config, write_shard

ENV_CHOICES = ("maze", "dmlab", "minecraft")
# Custom Ray resource a node must advertise to run episodes of an env (cluster.yaml's collector node types
# start Ray with e.g. `ray start --resources='{"minerl": 1}'`); maze runs on any CPU.
ENV_RESOURCES: dict[str, str | None] = {"maze": None, "dmlab": "dmlab", "minecraft": "minerl"}
# Fields that do not change the data; left out of <out>/config.json.
RUN_ONLY_FIELDS = ("out", "workers", "address", "max_retries", "episode_timeout_sec")
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
    out: str = field("", "output folder (default: data/<env>)")
    workers: int = field(2, "shards rendered at once (Ray tasks in flight, 1 CPU each)")
    episodes_per_shard: int = field(20, "episodes per Parquet shard (K)")
    address: str = field("", "Ray cluster to join ('auto' or host:port); empty starts a local Ray")
    max_retries: int = field(2, "retries of a failing episode (fresh env each time) and of a crashed task")
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
            raise ValueError(f"--episode-timeout-sec: expected seconds >= 0 (0 = no limit), got {self.episode_timeout_sec}")
        from envs.rollout import AGENTS

        agents = AGENTS.get(self.env, ())
        if self.agent not in agents:
            raise ValueError(f"--agent: {self.agent!r} is not an agent of env {self.env!r}; choose one of {', '.join(agents)}")
        if not self.out:
            self.out = str(Path("data") / self.env)

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
# Worker side: one Ray task renders and writes one shard.

class EpisodeTimeout(Exception):
    pass


@contextmanager
def _deadline(seconds: float):
    """Raise EpisodeTimeout after `seconds` (SIGALRM; works while Python code runs). As a last resort a C-level
    watchdog (faulthandler) kills the process at 2x+30 s, for engines stuck in C holding the GIL; Ray then
    reports the task's worker as crashed and the shard stays not-done."""
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
    process, every attempt), raise, hang; `attempts` = how many attempts fail; `timeout_sec` overrides
    --episode-timeout-sec on the faulty attempts."""
    if not _targets(fault, shard, episode):
        return
    if fault["mode"] == "exit":
        os._exit(17)
    if attempt < fault.get("attempts", 1 << 30):
        if fault["mode"] == "raise":
            raise RuntimeError(f"injected fault in episode {episode}")
        if fault["mode"] == "hang":
            time.sleep(3600)


def render_episode(cfg: CollectConfig, index: int, attempt: int = 0, fault: dict | None = None) -> dict:
    """One shard row for episode `index`, drawn from default_rng([seed, index]) alone."""
    from envs.rollout import rollout

    shard = index // cfg.episodes_per_shard
    faulty = _targets(fault, shard, index) and attempt < fault.get("attempts", 1 << 30)
    # The short test timeout applies to the faulty attempts only: a retry may pay a cold env start (textures).
    timeout = fault.get("timeout_sec", cfg.episode_timeout_sec) if faulty else cfg.episode_timeout_sec
    rng = np.random.default_rng([cfg.seed, index])
    with _deadline(timeout):
        _inject_fault(fault, shard, index, attempt)
        ep = rollout(cfg.env, cfg.env_settings(), cfg.agent, {}, cfg.length, rng)
    if ep["frames"].shape[0] != cfg.length:
        raise RuntimeError(f"rollout returned {ep['frames'].shape[0]} frames, expected --length {cfg.length}")
    return {
        "episode_id": f"{cfg.env}-s{cfg.seed}-e{index}", "env": cfg.env, "agent": cfg.agent,
        "seed": cfg.seed, "episode_index": index, "fps": float(ep["fps"]),
        "env_config": json.dumps(ep["env_config"], sort_keys=True, default=str),
        "frames": ep["frames"], "actions": ep["actions"], "poses": ep["poses"], "scene": ep["scene"],
        "revisit_gap": ep["revisit_gap"],
    }


def render_shard(cfg: CollectConfig, index: int, fault: dict | None = None) -> dict:
    """Render shard `index` and write it atomically to <out>/shard-XXXXX.parquet.

    Returns {"index", "name", "entry" (manifest entry, or None when an episode kept failing), "failures"
    (list of records for failures.jsonl), "fatal" (message when the engine is missing), "frames",
    "render_sec", "write_sec"}."""
    name = shard_name(index)
    result = {"index": index, "name": name, "entry": None, "failures": [], "fatal": None, "frames": 0,
              "render_sec": 0.0, "write_sec": 0.0}
    rows = []
    t0 = time.perf_counter()
    for episode in shard_episodes(cfg, index):
        for attempt in range(cfg.max_retries + 1):
            try:
                rows.append(render_episode(cfg, episode, attempt, fault))
                break
            except ImportError as e:  # envs.engine_errors.EngineMissing: retrying cannot help
                result["fatal"] = f"{type(e).__name__}: {e}"
                return result
            except Exception as e:  # an engine crash: drop the partial episode, rebuild, retry
                result["failures"].append({"shard": name, "episode_index": episode, "attempt": attempt,
                                           "error": f"{type(e).__name__}: {e}",
                                           "where": traceback.format_exc(limit=-3)})
        else:
            result["render_sec"] = time.perf_counter() - t0
            return result
    result["render_sec"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    result["entry"] = write_shard(episodes_to_table(rows, "frames"), Path(cfg.out) / name)
    result["write_sec"] = time.perf_counter() - t1
    result["frames"] = sum(len(r["actions"]) for r in rows)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Driver side: plan, launch, record.

def _append_failures(out: Path, records: list[dict]) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(out / FAILURES, "a") as f:
        for rec in records:
            f.write(json.dumps({"time": stamp, **rec}, sort_keys=True, default=str) + "\n")


def _connect(cfg: CollectConfig) -> bool:
    """Join --address, or start a local Ray (unless one is up already); True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    opts = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if cfg.address:
        ray.init(address=cfg.address, **opts)
        return True
    # More logical CPUs than in-flight tasks, so the driver and Ray's own tasks are never starved (stack-facts 2b).
    resource = ENV_RESOURCES[cfg.env]
    ray.init(num_cpus=max(cfg.workers + 1, os.cpu_count() or 1),
             resources={resource: cfg.workers} if resource else None, **opts)
    return True


def _check_resources(cfg: CollectConfig) -> None:
    import ray

    resource = ENV_RESOURCES[cfg.env]
    if resource and ray.cluster_resources().get(resource, 0) < 1:
        raise RuntimeError(
            f"--env {cfg.env}: no node of the Ray cluster advertises the custom resource {resource!r}, so none can "
            f"run {cfg.env} episodes. Start the collector nodes with `ray start --resources='{{\"{resource}\": 1}}'` "
            f"(cluster.yaml: the {cfg.env} collector node type does this), then rerun the same command.")


def _crash_result(index: int, error: BaseException) -> dict:
    """What a shard whose worker died (killed, OOM, segfault, watchdog) even after Ray's retries reports."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return {"index": index, "name": shard_name(index), "entry": None, "fatal": None, "frames": 0,
            "failures": [{"shard": shard_name(index), "episode_index": None, "attempt": None,
                          "error": f"{type(error).__name__}: {first}"}]}


def run_collect(cfg: CollectConfig, progress: bool = False, fault: dict | None = None) -> dict:
    """Render every shard of `cfg` that is not done yet; returns a summary dict (see the keys below).

    `fault` is a test hook passed to the workers (see _inject_fault)."""
    check_env_settings(cfg)
    out = Path(cfg.out).resolve()
    check_config(out, cfg.data_config())  # refuses a folder that holds another config, before any work
    manifest = Manifest(out)
    for stale in out.glob(".shard-*.parquet.tmp*"):  # left by workers killed mid-write; never a shard
        stale.unlink(missing_ok=True)
    todo = [i for i in range(cfg.num_shards) if not manifest.is_done(shard_name(i))]
    summary = {"out": str(out), "num_shards": cfg.num_shards, "skipped": cfg.num_shards - len(todo), "written": 0,
               "failed": [], "failures_logged": 0, "frames": 0, "seconds": 0.0, "frames_per_sec": 0.0,
               "task_sec": 0.0}
    if not todo:
        return summary

    import ray
    from tqdm import tqdm

    wcfg = dataclasses.replace(cfg, out=str(out))  # workers may run in another cwd
    started = _connect(cfg)
    t0 = time.perf_counter()
    try:
        _check_resources(cfg)
        resource = ENV_RESOURCES[cfg.env]
        opts = dict(num_cpus=1, max_retries=cfg.max_retries, retry_exceptions=False)
        if resource:
            opts["resources"] = {resource: 1}
        task = ray.remote(render_shard).options(**opts)
        pending_set = set(todo)
        done_eps = sum(len(shard_episodes(cfg, i)) for i in range(cfg.num_shards) if i not in pending_set)
        bar = tqdm(total=cfg.episodes, initial=done_eps, unit="ep", disable=not progress, file=sys.stderr,
                   mininterval=1.0, desc=f"collect {cfg.env}")
        queue, pending = list(todo), {}
        while queue or pending:
            while queue and len(pending) < cfg.workers:  # shards in flight = --workers
                index = queue.pop(0)
                pending[task.remote(wcfg, index, fault)] = index
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                index = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as e:
                    res = _crash_result(index, e)
                summary["task_sec"] += res.get("render_sec", 0.0) + res.get("write_sec", 0.0)  # wall s inside tasks
                if res["failures"]:
                    _append_failures(out, res["failures"])
                    summary["failures_logged"] += len(res["failures"])
                if res["fatal"]:
                    bar.close()
                    for other in pending:
                        ray.cancel(other, force=True)
                    raise RuntimeError(f"--env {cfg.env}: the engine cannot run on a worker node: {res['fatal']}")
                if res["entry"] is None:
                    summary["failed"].append(res["name"])
                    continue
                manifest.add(res["name"], res["entry"])
                summary["written"] += 1
                summary["frames"] += res["frames"]
                bar.update(len(shard_episodes(cfg, index)))
                bar.set_postfix_str(f"{summary['frames'] / (time.perf_counter() - t0):,.0f} frames/s")
        bar.close()
    finally:
        if started:
            ray.shutdown()
    summary["seconds"] = time.perf_counter() - t0
    summary["frames_per_sec"] = summary["frames"] / max(summary["seconds"], 1e-9)
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
              f"see {Path(summary['out']) / FAILURES}; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
