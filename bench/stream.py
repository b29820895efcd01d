"""Window stream throughput vs raw pyarrow on the same shards, and its data-wait share of a tiny training step.

    flock /tmp/ray.lock .venv/bin/python bench/stream.py                 # synthetic 64x64 shards in a temp folder
    flock /tmp/ray.lock .venv/bin/python bench/stream.py --data data/maze --memory 16 --window 16

Figures printed (floors from issues 6 and 15): Ray Data window stream frames/s >= 50% of raw pyarrow frames/s;
data wait <= 5% of a tiny training step. "frames" = current-window frames delivered to the model (float32) for the
streams (delivered frames including memory also printed), frames decoded into numpy for raw pyarrow.
The machine is shared, so raw reads and both streams are timed in alternating rounds on the same files; medians
over the rounds are printed, and each ratio is the median of the per-round ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def raw_pyarrow(data: Path) -> float:
    """frames/s of reading every shard's frames into numpy with pyarrow alone."""
    from pipeline.schema import to_numpy

    start, n = time.perf_counter(), 0
    for p in sorted(data.glob("shard-*.parquet")):
        col = "latents" if "latents" in pq.read_schema(p).names else "frames"
        a = to_numpy(pq.read_table(p, columns=[col]), col)
        n += a.shape[0] * a.shape[1]
    return n / (time.perf_counter() - start)


def stream_rate(batches) -> tuple[float, float, int]:
    """(window frames/s, delivered frames/s incl. valid memory frames, batches). Window frames are the fair
    comparison with raw reads: with samples_per_episode = T // w an epoch holds about one window frame per
    source frame, while memory frames repeat source frames (m / w times)."""
    start, nx, nall, count = time.perf_counter(), 0, 0, 0
    for b in batches:
        nx += int(b["x"].shape[0] * b["x"].shape[1])
        nall += int(b["mem_mask"].sum())
        count += 1
    sec = time.perf_counter() - start
    return nx / sec, (nx + nall) / sec, count


def wait_share(batches, steps: int) -> float:
    """Share of wall time spent waiting for data in a loop of tiny conv training steps."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 32, 3, padding=1), torch.nn.SiLU(),
                                torch.nn.Conv3d(32, 3, 3, padding=1))
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    it, wait, start = iter(batches), 0.0, time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            break
        wait += time.perf_counter() - t0
        x = b["x"].transpose(1, 2)                                   # (B,C,T,H,W)
        loss = (model(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return wait / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="", help="shard folder (default: synthetic 64x64 shards in a temp folder)")
    ap.add_argument("--memory", type=int, default=16)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30, help="training steps for the data-wait share")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of raw read, local stream, Ray stream")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from pipeline.synthetic import write_synthetic_shards
    from pipeline.windows import LocalWindowStream, WindowSpec, ray_collate_fn, ray_window_dataset

    tmp = tempfile.TemporaryDirectory()
    data = Path(args.data) if args.data else Path(tmp.name)
    if not args.data:
        write_synthetic_shards(data, num_shards=4, episodes_per_shard=16, length=64, size=64, seed=0)
    spec = WindowSpec(args.memory, args.window, args.batch_size, seed=0)

    print(f"data: {data} (m={spec.memory_length}, w={spec.window}, batch {spec.batch_size}); "
          f"cpu cores: {os.cpu_count()}, load avg: {os.getloadavg()[0]:.1f}", flush=True)
    import ray
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    from ray.data import DataContext
    DataContext.get_current().enable_progress_bars = False
    list(ray_window_dataset(data, spec).limit(1).iter_batches(batch_size=1))    # warm the workers
    raw_pyarrow(data)                                                            # warm the page cache

    def ray_stream():
        return ray_window_dataset(data, spec).iter_torch_batches(batch_size=spec.batch_size,
                                                                  collate_fn=ray_collate_fn(), prefetch_batches=2)
    rounds = {"raw": [], "local": [], "local_all": [], "ray": [], "ray_all": []}
    for r in range(args.rounds):
        raw = raw_pyarrow(data)
        local, local_all, nb = stream_rate(LocalWindowStream(data, spec, epochs=1))
        ray_rate, ray_all, _ = stream_rate(ray_stream())
        for key, value in zip(rounds, (raw, local, local_all, ray_rate, ray_all)):
            rounds[key].append(value)
        print(f"round {r}: raw {raw:,.0f}, local {local:,.0f} ({local_all:,.0f} with memory), ray {ray_rate:,.0f} "
              f"({ray_all:,.0f}) frames/s; load avg {os.getloadavg()[0]:.1f}", flush=True)
    med = {k: statistics.median(v) for k, v in rounds.items()}
    share = {k: statistics.median([a / b for a, b in zip(rounds[k], rounds["raw"])]) for k in rounds if k != "raw"}
    print(f"raw pyarrow read:           {med['raw']:10,.0f} frames/s (median of {args.rounds} rounds)")
    print(f"LocalWindowStream:          {med['local']:10,.0f} frames/s ({share['local']:.0%} of raw; {nb} batches; "
          f"{med['local_all']:,.0f} frames/s with memory, {share['local_all']:.0%})")
    print(f"Ray Data window stream:     {med['ray']:10,.0f} frames/s ({share['ray']:.0%} of raw; floor 50%; "
          f"{med['ray_all']:,.0f} frames/s with memory, {share['ray_all']:.0%})", flush=True)
    share_local = wait_share(LocalWindowStream(data, spec), args.steps)
    share_ray = wait_share(ray_window_dataset(data, spec).iter_torch_batches(
        batch_size=spec.batch_size, collate_fn=ray_collate_fn(), prefetch_batches=4), args.steps)
    print(f"data wait, tiny train step: local {100 * share_local:.1f}%, ray {100 * share_ray:.1f}% "
          "(floor 5%)", flush=True)
    print(f"load avg at the end: {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
