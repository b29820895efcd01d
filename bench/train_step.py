"""Training-step speed of a denoiser: training frames/s, peak memory and MFU (model FLOP utilisation).

    python bench/train_step.py                                        # tiny preset, CPU, 4x16x16 clips
    python bench/train_step.py --model-size small --resolution 32 --frames 8 --batch 2
    python bench/train_step.py --device cuda --model-size paper --batch 32 --frames 16 --resolution 64 --bf16 --compile
    python bench/train_step.py --device cuda --model-size paper --memory prepend --memory-length 48 \
        --compression joint --budget 8 --bf16

One step = C1's `Diffusion.training_loss` (random per-frame levels, v-prediction, fused SNR) + backward +
grad-norm clip 1.0 + Adam (App. J) on random clips of the given shape (speed does not depend on data or weights).
frames/s counts current (loss-bearing) frames: batch * frames / step time; memory frames are extra work.
MFU = achieved model FLOP/s / device peak, with model FLOPs = 3 x forward FLOPs from training.cost (meta-device
count: convs, matmuls, attention). Peak: --peak-tflops, else a table by device name (bf16 dense tensor-core
figures, or fp32 without --bf16); on CPU pass --peak-tflops to get an MFU. Timings: median of --steps steps after
--warmup steps (compile happens in warm-up). No Ray.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import sys
import time

if __package__ in (None, ""):  # `python bench/train_step.py` from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from pipeline.cli import field, parse_config, to_json

# dense peak TFLOP/s by (device-name fragment, bf16?) -- vendor datasheets, no sparsity
PEAK_TFLOPS = {("H100", True): 989.0, ("H100", False): 67.0, ("H200", True): 989.0, ("H200", False): 67.0,
               ("A100", True): 312.0, ("A100", False): 19.5, ("L40S", True): 362.0, ("L40S", False): 91.6,
               ("A10", True): 125.0, ("A10", False): 31.2, ("4090", True): 165.0, ("4090", False): 82.6}


@dataclasses.dataclass
class BenchConfig:
    device: str = field("cpu", "torch device: cpu | cuda | cuda:N")
    model_size: str = field("tiny", "model preset (training/models PRESETS)", ["tiny", "small", "base", "paper"],
                            aliases=("--preset",))
    batch: int = field(2, "clips per step")
    frames: int = field(4, "current frames per clip (window w)")
    resolution: int = field(16, "frame height = width")
    channels: int = field(3, "channels per frame (3 pixels; 4/16 VAE latents)")
    memory: str = field("none", "memory structure", ["none", "prepend", "concat", "cross_attn"])
    memory_length: int = field(16, "memory frames per clip (ignored for memory none)")
    compression: str = field("none", "memory compression", ["none", "joint", "modulated"])
    budget: int = field(8, "frames kept by compression")
    compile: bool = field(False, "torch.compile the denoiser")
    bf16: bool = field(False, "bfloat16 autocast (TF32 matmuls on CUDA otherwise)")
    steps: int = field(5, "timed steps")
    warmup: int = field(2, "untimed warm-up steps")
    peak_tflops: float = field(0.0, "device peak TFLOP/s for MFU (0 = look the device up in the table)")
    threads: int = field(0, "CPU intra-op threads (0 = torch default)")
    seed: int = field(0, "seed of weights and data")


def peak_tflops(cfg: BenchConfig, device: torch.device) -> float | None:
    if cfg.peak_tflops > 0:
        return cfg.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for (frag, bf16), value in PEAK_TFLOPS.items():
        if frag in name and bf16 == cfg.bf16:
            return value
    return None


def main(argv=None) -> dict:
    cfg, dry = parse_config(BenchConfig, argv, description=__doc__)
    print(to_json(cfg))
    if dry:
        return {}
    from training.cost import model_cost
    from training.diffusion import Diffusion
    from training.models import ModelConfig, build_denoiser

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    mcfg = ModelConfig(preset=cfg.model_size, in_channels=cfg.channels, resolution=cfg.resolution, memory=cfg.memory,
                       memory_length=cfg.memory_length, compression=cfg.compression,
                       budget=min(cfg.budget, cfg.memory_length), window=cfg.frames)
    cost = model_cost(mcfg, cfg.frames)
    net = build_denoiser(mcfg, seed=cfg.seed).to(device)
    model = torch.compile(net) if cfg.compile else net
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0)
    diffusion = Diffusion(num_timesteps=1000)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    b, t, c, r = cfg.batch, cfg.frames, cfg.channels, cfg.resolution
    batch = {"x": torch.rand(b, t, c, r, r, device=device, generator=g) * 2 - 1,
             "actions": torch.randint(0, 7, (b, t), device=device, generator=g)}
    if cfg.memory != "none":
        m = cfg.memory_length
        batch.update(mem_x=torch.rand(b, m, c, r, r, device=device, generator=g) * 2 - 1,
                     mem_actions=torch.randint(0, 7, (b, m), device=device, generator=g),
                     mem_mask=torch.ones(b, m, dtype=torch.bool, device=device))

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss, _ = diffusion.training_loss(model, batch, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(cfg.warmup):
        step()
    times = []
    for _ in range(cfg.steps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30
        where = f"cuda max_memory_allocated ({torch.cuda.get_device_name(device)})"
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
        where = "process peak RSS"
    achieved = cost["train_flops_per_clip"] * b / sec
    peak = peak_tflops(cfg, device)
    out = {"params_M": cost["params"] / 1e6, "train_gflops_per_frame": cost["train_flops_per_frame"] / 1e9,
           "sec_per_step": sec, "train_frames_per_sec": b * t / sec, "peak_mem_gib": peak_mem,
           "achieved_tflops": achieved / 1e12, "mfu": achieved / (peak * 1e12) if peak else None}
    print(f"preset={cfg.model_size} memory={cfg.memory}/{cfg.memory_length} compression={cfg.compression}/"
          f"{mcfg.budget} B={b} T={t} {c}x{r}x{r} bf16={cfg.bf16} compile={cfg.compile} device={device}")
    print(f"  params {out['params_M']:.2f} M, train {out['train_gflops_per_frame']:.2f} GFLOP/frame (3x forward)")
    print(f"  step {sec * 1e3:.1f} ms (median of {cfg.steps}), {out['train_frames_per_sec']:.1f} training frames/s")
    print(f"  peak memory {peak_mem:.2f} GiB ({where})")
    mfu = f"{out['mfu'] * 100:.2f}% of {peak:.3g} TFLOP/s" if peak else "n/a (pass --peak-tflops)"
    print(f"  achieved {out['achieved_tflops']:.4f} TFLOP/s, MFU {mfu}")
    return out


if __name__ == "__main__":
    main()
