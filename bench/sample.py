"""Meta-ARVDM sampling speed: generated frames/s and peak memory, and latency vs memory length (16/48/112).

    python bench/sample.py                                  # tiny model, CPU, outpainting
    python bench/sample.py --device cuda --preset base --resolution 64 --window 16 --steps 50
    python bench/sample.py --schedule fifo --memory-length 48 --lengths 16 48 112

Builds the denoiser with training.models.build_denoiser (random weights: speed does not depend on them), gives it
`memory_length` ground-truth memory frames, generates `frames` frames, and prints frames/s, seconds per frame,
denoiser calls and peak memory (CUDA: max_memory_allocated; CPU: peak RSS of the process). Then it repeats the
run for each memory length in --lengths with the same schedule and prints the latency per frame and its ratio to
the shortest memory, to show the cost of memory grows at most linearly. Timings are the best of --repeats runs
after one warm-up. No Ray.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import sys
import time

if __package__ in (None, ""):  # `python bench/sample.py` from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from pipeline.cli import field, parse_config, to_json


@dataclasses.dataclass
class SampleBenchConfig:
    device: str = field("cpu", "where to run", ["cpu", "cuda"])
    preset: str = field("tiny", "model preset of training.models (tiny | small | base | paper)")
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
    repeats: int = field(2, "timed runs per setting (best is reported)")
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
    """Best-of-`repeats` wall time of one `sample` call with `memory_length` given and referenced frames."""
    from training.diffusion import Diffusion
    from training.models import ModelConfig, build_denoiser
    from training.sampler import sample
    from training.schedules import build_schedule

    dev = torch.device(cfg.device)
    mem_struct = cfg.memory if memory_length > 0 else "none"
    mcfg = ModelConfig(preset=cfg.preset, in_channels=cfg.channels, resolution=cfg.resolution, memory=mem_struct,
                       memory_length=max(memory_length, 1), compression=cfg.compression if memory_length else "none",
                       budget=min(cfg.budget, max(memory_length, 1)), window=cfg.window)
    net = build_denoiser(mcfg, seed=cfg.seed).to(dev).eval()
    schedule = build_schedule(cfg.schedule, cfg.window, cfg.steps)
    diffusion = Diffusion(1000)
    g = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.channels, cfg.resolution, cfg.resolution)
    mem_x = (torch.rand(cfg.batch, memory_length, *shape, generator=g) * 2 - 1).to(dev) if memory_length else None
    mem_a = torch.randint(0, 7, (cfg.batch, memory_length), generator=g).to(dev) if memory_length else None
    actions = torch.randint(0, 7, (cfg.batch, cfg.frames), generator=g).to(dev)
    calls = [0]

    def counted(*a, **k):
        calls[0] += 1
        return net(*a, **k)

    def null(x, *a, **k):  # the sampler's own cost: reference gathering, noise draws, DDIM updates
        return torch.zeros_like(x)

    def once(model=counted) -> float:
        gen = torch.Generator(device=dev).manual_seed(cfg.seed)
        if cfg.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = sample(model, diffusion, schedule, actions, mem_x, mem_a, memory_length, gen, shape)
        if cfg.device == "cuda":
            torch.cuda.synchronize()
        assert out.shape == (cfg.batch, cfg.frames, *shape)
        return time.perf_counter() - t0

    if cfg.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    once()  # warm-up
    calls[0] = 0
    best = min(once() for _ in range(cfg.repeats))
    num_calls = calls[0] // cfg.repeats
    overhead = min(once(null) for _ in range(cfg.repeats))
    frames = cfg.batch * cfg.frames
    return {"memory_length": memory_length, "sec": best, "frames_per_sec": frames / best,
            "sec_per_frame": best / frames, "denoiser_calls": num_calls,
            "sampler_overhead_sec_per_frame": overhead / frames,
            "peak_mib": _peak_bytes(cfg.device) / 2 ** 20, "schedule": schedule.describe()}


def main(argv=None) -> None:
    cfg, dry_run = parse_config(SampleBenchConfig, argv, description=__doc__)
    print(to_json(cfg))
    if dry_run:
        return
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    head = measure(cfg, cfg.memory_length)
    print(f"\nschedule: {head['schedule']}")
    print(f"device={cfg.device} preset={cfg.preset} memory={cfg.memory}/{cfg.compression} "
          f"res={cfg.resolution} m={cfg.memory_length} batch={cfg.batch} frames={cfg.frames} "
          f"torch_threads={torch.get_num_threads()}")
    print(f"generated frames/s: {head['frames_per_sec']:.3f}  sec/frame: {head['sec_per_frame']:.4f}  "
          f"denoiser calls/run: {head['denoiser_calls']}  peak memory: {head['peak_mib']:.0f} MiB  "
          f"sampler-only sec/frame: {head['sampler_overhead_sec_per_frame']:.5f}")
    if cfg.lengths:
        print("\nlatency vs memory length")
        print("| memory length | sec/frame | ratio to shortest | length ratio | sampler-only sec/frame |")
        print("|---:|---:|---:|---:|---:|")
        rows = [measure(cfg, m) for m in cfg.lengths]
        base = rows[0]
        for r in rows:
            print(f"| {r['memory_length']} | {r['sec_per_frame']:.4f} | {r['sec_per_frame'] / base['sec_per_frame']:.2f} "
                  f"| {r['memory_length'] / max(base['memory_length'], 1):.2f} "
                  f"| {r['sampler_overhead_sec_per_frame']:.5f} |")


if __name__ == "__main__":
    main()
