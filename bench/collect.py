"""Collection speed and shard size: render-only and render+write frames/s per core, zstd levels, Ray scaling,
and env launches per episode: a fresh env per episode (the Ray-task collector before issue 15) vs workers that
keep their env (pipeline.collect now).

    flock /tmp/ray.lock .venv/bin/python bench/collect.py                       # 64x64, 300-frame episodes
    flock /tmp/ray.lock .venv/bin/python bench/collect.py --episodes 8 --no-ray # quick, no Ray

Per-core figures are from one process; each is given per wall second and per CPU second of that process
(the second is robust to other load on the machine). The load average is printed beside them. The last
section starts a fresh local Ray for every run, as `python -m pipeline.collect` does, so each run pays its
worker processes' cold start (imports, numba cache, maze textures) once per process, like the CLI.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from pipeline import shards  # noqa: E402
from pipeline.cli import field, parse_config, to_json  # noqa: E402
from pipeline.collect import CollectConfig, ShardWorker, render_episode, run_collect, shard_episodes, shard_name  # noqa: E402
from pipeline.schema import episodes_to_table  # noqa: E402


@dataclass
class BenchConfig:
    resolution: int = field(64, "frame size in pixels")
    length: int = field(300, "frames per episode")
    episodes: int = field(20, "episodes timed per single-process measurement")
    agent: str = field("explore", "maze agent")
    levels: list[int] = field([1, 3, 9], "zstd levels to compare")
    repeat: int = field(3, "repetitions per measurement; the best is reported")
    ray: bool = field(True, "also time run_collect with 1 and 2 workers, and env per episode vs env kept")
    ray_episodes: int = field(40, "episodes per Ray run")
    ray_repeat: int = field(2, "fresh-Ray runs per collector in the env-per-episode vs env-kept comparison")


def timed(fn, repeat: int = 1):
    """(result, best wall s, best CPU s of this process) over `repeat` calls (min: least disturbed by load)."""
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return out, min(walls), min(cpus)


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def shard_with_fresh_envs(cfg: CollectConfig, index: int) -> dict:
    """The collect task before issue 15, for comparison: shard `index` with a fresh env for every episode."""
    rows = [render_episode(cfg, episode) for episode in shard_episodes(cfg, index)]
    shards.write_shard(episodes_to_table(rows, "frames"), Path(cfg.out_dir) / shard_name(index))
    return {"frames": sum(len(r["actions"]) for r in rows), "episodes": len(rows), "launches": len(rows)}


def collect_with_fresh_envs(cfg: CollectConfig) -> dict:
    """Every shard of `cfg` as Ray tasks (1 CPU each, --workers in flight), a fresh env per episode; run_collect's
    summary keys that the comparison prints (no manifest, no retries)."""
    import ray

    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    task = ray.remote(num_cpus=1)(shard_with_fresh_envs)
    queue, pending, totals = list(range(cfg.num_shards)), [], {"frames": 0, "episodes": 0, "launches": 0}
    t0 = time.perf_counter()
    while queue or pending:
        while queue and len(pending) < cfg.workers:
            pending.append(task.remote(cfg, queue.pop(0)))
        [ref], pending = ray.wait(pending, num_returns=1)
        for key, value in ray.get(ref).items():
            totals[key] += value
    return {"frames": totals["frames"], "seconds": time.perf_counter() - t0,
            "launches_per_episode": totals["launches"] / totals["episodes"]}


def compare_env_reuse(b: BenchConfig, tmp: Path) -> None:
    """[5] Same episodes, 2 workers, a fresh local Ray per run: env per episode vs env kept per worker."""
    import ray

    cfg = CollectConfig(episodes=b.ray_episodes, length=b.length, resolution=b.resolution, agent=b.agent,
                        episodes_per_shard=2, workers=2)
    collectors = {"env per episode (Ray tasks, before)": collect_with_fresh_envs,
                  "env kept per worker (actors, now)": run_collect}
    print(f"env per episode vs kept, {b.ray_episodes} episodes, 2 workers, fresh Ray per run, best of {b.ray_repeat}:")
    best = {}
    for rep in range(b.ray_repeat):  # interleaved, so load changes hit both alike
        for k, (name, collect) in enumerate(collectors.items()):
            ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
            try:
                s = collect(dataclasses.replace(cfg, out_dir=str(tmp / f"reuse{k}-{rep}")))
            finally:
                ray.shutdown()
            if name not in best or s["seconds"] < best[name]["seconds"]:
                best[name] = s
    for name, s in best.items():
        print(f"  {name:38s} {s['frames'] / s['seconds']:7,.0f} frames/s  ({s['frames']} frames in "
              f"{s['seconds']:.2f} s)  {s['launches_per_episode']:.3f} env launches/episode")


def main(argv: list[str] | None = None) -> int:
    b, dry_run = parse_config(BenchConfig, argv, description=__doc__)
    if dry_run:
        print(to_json(b))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-collect-"))
    cfg = CollectConfig(episodes=b.episodes, length=b.length, resolution=b.resolution, agent=b.agent,
                        episodes_per_shard=b.episodes, out_dir=str(tmp / "single"))
    print(f"maze {b.resolution}x{b.resolution}, {b.length} frames/episode, agent {b.agent}; "
          f"{os.cpu_count()} cores; {load()}")
    for i in range(3):  # warm-up: numba cache load, textures and room styles loaded on first use, pyarrow init
        episodes_to_table([render_episode(cfg, 10_000 + i)])
    fresh = iter(range(100_000, 10**9, b.episodes))  # new episode indices for every repetition

    # [1] render only: rollout -> shard row
    rows, wall, cpu = timed(lambda: [render_episode(cfg, next(fresh) + i) for i in range(b.episodes)], b.repeat)
    n = b.episodes * b.length
    print(f"render only       {n / wall:9,.0f} frames/s (wall)  {n / cpu:9,.0f} frames/CPU-s   ({n} frames, "
          f"a fresh env per episode: 1 launch/episode)")
    worker = ShardWorker(cfg)  # [1b] the same, on one env kept between episodes (a collect worker's way)
    _, wall, cpu = timed(lambda: [worker.render_episode(next(fresh) + i) for i in range(b.episodes)], b.repeat)
    print(f"render, env kept  {n / wall:9,.0f} frames/s (wall)  {n / cpu:9,.0f} frames/CPU-s   "
          f"({worker.num_launches} launch for {b.episodes * b.repeat} episodes)")
    worker.close()

    # [2] render + table + write (what one collect task does per shard)
    def render_write():
        rs, rwall, rcpu = timed(lambda: [render_episode(cfg, next(fresh) + i) for i in range(b.episodes)])
        table, _, tcpu = timed(lambda: episodes_to_table(rs))
        entry, _, wcpu = timed(lambda: shards.write_shard(table, tmp / "rw.parquet"))
        return entry, (rcpu, tcpu, wcpu)
    (entry, parts), wall, cpu = timed(render_write, b.repeat)
    print(f"render + write    {n / wall:9,.0f} frames/s (wall)  {n / cpu:9,.0f} frames/CPU-s   "
          f"(CPU-s: render {parts[0]:.2f}, table {parts[1]:.2f}, write {parts[2]:.2f}; "
          f"zstd {shards.ZSTD_LEVEL}: {entry['bytes'] / n:,.0f} B/frame on disk, raw {b.resolution ** 2 * 3:,})")

    # [3] zstd levels on the same table (write = write_shard: encode, compress, footer check, sha256)
    table = episodes_to_table(rows)
    raw = table.nbytes
    print(f"zstd levels on {b.episodes} episodes (Arrow in memory {raw / 2**20:.1f} MiB):")
    for level in b.levels:
        p = tmp / f"z{level}.parquet"
        entry, _, wcpu = timed(partial(shards.write_shard, table, p, zstd_level=level), b.repeat)
        _, _, rcpu = timed(partial(pq.read_table, p), b.repeat)
        print(f"  level {level}: {entry['bytes'] / 2**20:7.2f} MiB  ratio {raw / entry['bytes']:5.2f}x  "
              f"{entry['bytes'] / n:7,.0f} B/frame  write {wcpu:5.2f} CPU-s ({n / wcpu:7,.0f} frames/CPU-s)  "
              f"read {rcpu:5.2f} CPU-s")
    # Not the contract, for comparison: frames as one binary blob per episode instead of a tensor column
    # (Parquet stores a fixed_shape_tensor as a LIST of int32-widened bytes with levels per byte).
    blob = table.set_column(table.schema.get_field_index("frames"), "frames",
                            pa.array([r["frames"].tobytes() for r in rows], pa.large_binary()))
    for level in b.levels:
        p = tmp / f"blob{level}.parquet"
        _, _, wcpu = timed(partial(pq.write_table, blob, p, compression="zstd", compression_level=level,
                                   row_group_size=blob.num_rows), b.repeat)
        _, _, rcpu = timed(partial(pq.read_table, p), b.repeat)
        size = p.stat().st_size
        print(f"  [blob] {level}: {size / 2**20:7.2f} MiB  ratio {raw / size:5.2f}x  {size / n:7,.0f} B/frame  "
              f"write {wcpu:5.2f} CPU-s ({n / wcpu:7,.0f} frames/CPU-s)  read {rcpu:5.2f} CPU-s")

    # [4] Ray scaling 1 -> 2 workers (after a warm-up run that starts the worker processes)
    if b.ray:
        import ray

        ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            def run(workers: int, name: str, episodes: int) -> dict:
                c = CollectConfig(episodes=episodes, length=b.length, resolution=b.resolution, agent=b.agent,
                                  episodes_per_shard=2, workers=workers, out_dir=str(tmp / name))
                return run_collect(c)
            run(2, "warm", 4)
            fps = {}
            for workers in (1, 2):
                s = run(workers, f"ray{workers}", b.ray_episodes)
                fps[workers] = s["frames"] / s["seconds"]
                busy = s["task_sec"] / (workers * s["seconds"])  # 1.0 = workers never idle (no Ray overhead)
                print(f"ray {workers} worker(s): {s['frames']} frames in {s['seconds']:.2f} s "
                      f"= {fps[workers]:,.0f} frames/s"
                      f"  (workers busy {busy:.0%} of the time; {s['launches_per_episode']:.3f} env launches/episode)")
            print(f"ray scaling 1 -> 2 workers: {fps[2] / fps[1]:.2f}x   ({load()})")
        finally:
            ray.shutdown()
        compare_env_reuse(b, tmp)
    print(f"({load()}; scratch {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
