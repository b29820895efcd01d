"""Meta-ARVDM sampling speed, with and without the sampler's memory cache: generated frames/s, peak memory, and
latency vs memory length (16/48/112).

    python bench/sample.py --threads 1                      # tiny model, CPU, outpainting, both paths
    python bench/sample.py --threads 1 --steps 16 --frames 8 --lengths 16 48 112   # the issue-15 floors
    python bench/sample.py --device cuda --model-size base --resolution 64 --window 16 --steps 50
    python bench/sample.py --schedule fifo --memory-length 48 --lengths 16 48 112 --cache on

Builds the denoiser with training.models.build_denoiser (random weights plus small noise, so the output depends on
the memory and the two paths' difference means something; speed does not depend on the weights), gives it
`memory_length` ground-truth memory frames, generates `frames` frames, and prints frames/s, seconds per frame,
denoiser calls, memory encodes and peak memory (CUDA: max_memory_allocated; CPU: peak RSS of the process) for the
cached path (`sample(cache_memory=True)`: memory encoded once per AR step) and the uncached one (memory re-read
by every denoiser call), their speed-up and their largest output difference. Then the same for each memory length
in --lengths, with per-frame latency and its ratio to the shortest memory for both paths. Timings are the median
of --repeats runs per path, the paths alternating, after one warm-up denoiser call per path; on CPU also the
process CPU seconds (steadier than wall time on a shared machine: time taken by other jobs is not counted) and
the median ratio of adjacent cached/uncached runs. No Ray.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import sys
import time

if __package__ in (None, ""):  # `python bench/sample.py` from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from pipeline.cli import field, parse_config, to_json

PATHS = {"both": (True, False), "on": (True,), "off": (False,)}  # --cache -> sample(cache_memory=...) values


@dataclasses.dataclass
class SampleBenchConfig:
    device: str = field("cpu", "where to run", ["cpu", "cuda"])
    model_size: str = field("tiny", "model preset of training.models (tiny | small | base | paper)",
                            aliases=("--preset",))
    memory: str = field("prepend", "memory structure (none | prepend | concat | cross_attn)")
    compression: str = field("none", "memory compression (none | joint | modulated)")
    budget: int = field(8, "frames kept by compression")
    resolution: int = field(32, "frame height = width")
    channels: int = field(3, "channels per frame (3 pixels, 4/16 VAE latents)")
    window: int = field(8, "effective window w")
    schedule: str = field("outpainting", "schedule preset", ["outpainting", "fifo", "df_pyramid", "df_chunked"])
    steps: int = field(4, "outpainting: denoising steps; df_*: sub-steps per AR step; fifo: ignored")
    memory_length: int = field(16, "reference frames for the headline run")
    frames: int = field(16, "frames generated per run")
    batch: int = field(1, "videos generated together")
    lengths: list[int] = field([16, 48, 112], "memory lengths for the latency sweep (empty: skip)")
    repeats: int = field(3, "timed runs per setting and path (the median is reported)")
    cache: str = field("both", "sampler memory cache: both (cached and uncached side by side) | on | off",
                       list(PATHS))
    threads: int = field(0, "torch CPU threads (0: leave torch's default)")
    seed: int = field(0, "seed for weights, memory frames, actions and sampling noise")

    def __post_init__(self):
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch.cuda.is_available() is False; use --device cpu")
        for name in ("window", "frames", "batch", "repeats", "steps", "resolution"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")


def _peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def measure(cfg: SampleBenchConfig, memory_length: int) -> dict:
    """Median-of-`repeats` wall time of one `sample` call with `memory_length` given and referenced frames, for
    each memory-cache path of `cfg.cache` (runs alternate between the paths, so load drift hits both alike)."""
    from training.diffusion import Diffusion
    from training.models import ModelConfig, build_denoiser
    from training.sampler import sample
    from training.schedules import build_schedule

    dev = torch.device(cfg.device)
    mem_struct = cfg.memory if memory_length > 0 else "none"
    mcfg = ModelConfig(preset=cfg.model_size, in_channels=cfg.channels, resolution=cfg.resolution, memory=mem_struct,
                       memory_length=max(memory_length, 1), compression=cfg.compression if memory_length else "none",
                       budget=min(cfg.budget, max(memory_length, 1)), window=cfg.window)
    net = build_denoiser(mcfg, seed=cfg.seed)
    with torch.no_grad():  # zero-initialised output layers make a fresh net output 0 whatever its memory: perturb
        noise = torch.Generator().manual_seed(cfg.seed + 1)
        for p in net.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=noise))
    net = net.to(dev).eval()
    schedule = build_schedule(cfg.schedule, cfg.window, cfg.steps)
    diffusion = Diffusion(1000)
    g = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.channels, cfg.resolution, cfg.resolution)
    mem_x = (torch.rand(cfg.batch, memory_length, *shape, generator=g) * 2 - 1).to(dev) if memory_length else None
    mem_a = torch.randint(0, 7, (cfg.batch, memory_length), generator=g).to(dev) if memory_length else None
    actions = torch.randint(0, 7, (cfg.batch, cfg.frames), generator=g).to(dev)
    counts = {"calls": 0, "encodes": 0}

    class Counted(torch.nn.Module):  # offers encode_memory like the denoiser, so the sampler may cache
        def forward(self, *a, **k):
            counts["calls"] += 1
            return net(*a, **k)

        def encode_memory(self, *a):
            counts["encodes"] += 1
            return net.encode_memory(*a)

    def null(x, *a, **k):  # the sampler's own cost: reference gathering, noise draws, DDIM updates
        return torch.zeros_like(x)

    def sync():
        if cfg.device == "cuda":
            torch.cuda.synchronize()

    def once(model, cached: bool) -> tuple[float, float, torch.Tensor]:
        """(wall seconds, CPU seconds of this process, frames) of one sample call."""
        gen = torch.Generator(device=dev).manual_seed(cfg.seed)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        out = sample(model, diffusion, schedule, actions, mem_x, mem_a, memory_length, gen, shape,
                     cache_memory=cached)
        sync()
        assert out.shape == (cfg.batch, cfg.frames, *shape)
        return time.perf_counter() - t0, time.process_time() - c0, out

    if cfg.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():  # warm-up: one denoiser call per path at the run's shapes (allocator, kernels)
        x = torch.zeros(cfg.batch, cfg.window, *shape, device=dev)
        lv, acts = torch.zeros(cfg.batch, cfg.window, device=dev), actions[:, :1].expand(-1, cfg.window)
        net(x, lv, acts, mem_x, mem_a)
        if memory_length:
            net(x, lv, acts, memory_cache=net.encode_memory(mem_x, mem_a))
    paths = PATHS[cfg.cache]
    walls: dict[bool, list[float]] = {p: [] for p in paths}
    cpus: dict[bool, list[float]] = {p: [] for p in paths}
    outs, calls = {}, {}
    for _ in range(cfg.repeats):
        for p in paths:
            counts.update(calls=0, encodes=0)
            wall, cpu, outs[p] = once(Counted(), p)
            walls[p].append(wall)
            cpus[p].append(cpu)
            calls[p] = dict(counts)
    overhead = statistics.median(once(null, False)[0] for _ in range(cfg.repeats))
    frames = cfg.batch * cfg.frames
    row = {"memory_length": memory_length, "sampler_overhead_sec_per_frame": overhead / frames,
           "peak_mib": _peak_bytes(cfg.device) / 2 ** 20, "schedule": schedule.describe()}
    for p in paths:
        sec = statistics.median(walls[p])
        row["cached" if p else "uncached"] = {
            "sec": sec, "sec_per_frame": sec / frames, "frames_per_sec": frames / sec, "runs_sec": walls[p],
            "cpu_sec_per_frame": statistics.median(cpus[p]) / frames, **calls[p]}
    if len(paths) == 2:
        row["max_abs_diff"] = float((outs[True] - outs[False]).abs().max())
        # adjacent runs of the two paths share the machine's load of the moment: their ratio is the steadier figure
        row["paired_speedup"] = statistics.median(u / c for c, u in zip(walls[True], walls[False]))
    return row


def _fmt(row: dict, key: str, base: dict | None = None, unit: str = "sec_per_frame") -> str:
    if key not in row:
        return "-"
    v = row[key][unit]
    return f"{v:.4f}" if base is None else f"{v / base[key][unit]:.2f}"


def main(argv=None) -> None:
    cfg, dry_run = parse_config(SampleBenchConfig, argv, description=__doc__)
    print(to_json(cfg))
    if dry_run:
        return
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    lengths = list(dict.fromkeys([cfg.memory_length, *cfg.lengths]))
    rows = {}
    for m in lengths:  # print as we go: long sweeps on a shared CPU take minutes
        rows[m] = measure(cfg, m)
        r = rows[m]
        runs = {k: " ".join(f"{t:.2f}" for t in r[k]["runs_sec"]) for k in ("cached", "uncached") if k in r}
        print(f"[m={m}] " + "  ".join(f"{k}: {r[k]['sec_per_frame']:.4f} s/frame (runs, s: {v})"
                                       for k, v in runs.items()), flush=True)
    cpu = cfg.device == "cpu"  # CPU seconds of the process: what a 1-thread run costs, minus time other jobs took
    head = rows[cfg.memory_length]
    print(f"\nschedule: {head['schedule']}")
    print(f"device={cfg.device} preset={cfg.model_size} memory={cfg.memory}/{cfg.compression} "
          f"res={cfg.resolution} m={cfg.memory_length} batch={cfg.batch} frames={cfg.frames} "
          f"torch_threads={torch.get_num_threads()} median of {cfg.repeats} runs per path")
    for key in ("cached", "uncached"):
        if key in head:
            r = head[key]
            print(f"{key:>8}: generated frames/s {r['frames_per_sec']:.3f}  sec/frame {r['sec_per_frame']:.4f}  "
                  + (f"cpu sec/frame {r['cpu_sec_per_frame']:.4f}  " if cpu else "")
                  + f"denoiser calls/run {r['calls']}  memory encodes/run {r['encodes']}")
    if "max_abs_diff" in head:
        c, u = head["cached"], head["uncached"]
        print(f"speed-up (uncached / cached): {u['sec'] / c['sec']:.2f}x wall (medians), "
              f"{head['paired_speedup']:.2f}x median of paired runs"
              + (f", {u['cpu_sec_per_frame'] / c['cpu_sec_per_frame']:.2f}x cpu" if cpu else "")
              + f"  max |cached - uncached| {head['max_abs_diff']:.2e}")
    print(f"peak memory: {head['peak_mib']:.0f} MiB  "
          f"sampler-only sec/frame: {head['sampler_overhead_sec_per_frame']:.5f}")
    if len(cfg.lengths) > 1:
        base = rows[cfg.lengths[0]]
        print("\nlatency vs memory length (ratios to the shortest)")
        units = ["sec_per_frame"] + (["cpu_sec_per_frame"] if cpu else [])
        print("| memory length | clock | cached sec/frame | uncached sec/frame | speed-up | cached ratio "
              "| uncached ratio | length ratio | sampler-only sec/frame |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for m in cfg.lengths:
            r = rows[m]
            for unit in units:
                speed = (f"{r['uncached'][unit] / r['cached'][unit]:.2f}x" if "max_abs_diff" in r else "-")
                print(f"| {m} | {unit.split('_')[0].replace('sec', 'wall')} | {_fmt(r, 'cached', unit=unit)} "
                      f"| {_fmt(r, 'uncached', unit=unit)} | {speed} | {_fmt(r, 'cached', base, unit)} "
                      f"| {_fmt(r, 'uncached', base, unit)} | {m / max(base['memory_length'], 1):.2f} "
                      f"| {r['sampler_overhead_sec_per_frame']:.5f} |")


if __name__ == "__main__":
    main()
