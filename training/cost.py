"""Cost of a denoiser config: parameters, training FLOPs per clip, sampling FLOPs per generated frame.

    from training.cost import model_cost
    model_cost(ModelConfig(preset="paper", memory="prepend", memory_length=48), sampling_steps=50)

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on one forward pass of a model built on the
`meta` device (no memory, no compute, any preset on a laptop): convolutions, matmuls and attention
(2 FLOPs per multiply-add; norms and pointwise ops are not counted). Training = forward + backward ~ 3 x forward.
Sampling: each denoiser call moves `window` frames (plus their memory, re-read or re-compressed on every call)
one denoising step, and every frame needs `sampling_steps` of them, so a generated frame costs
sampling_steps * forward(window) / window (outpainting with Delta = w; FIFO and diffusion forcing with K = steps
levels spread over the window cost the same per frame). Pure torch; the sweep plots quality against these numbers.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from training.models import ModelConfig


def forward_flops(cfg: ModelConfig, frames: int | None = None, batch: int = 1) -> tuple[int, int]:
    """(FLOPs of one forward pass over `batch` clips of `frames` current frames with a full memory, params)."""
    from training.models.denoiser import Denoiser

    t = cfg.window if frames is None else frames
    r, c = cfg.resolution, cfg.in_channels
    with torch.device("meta"):
        net = Denoiser(cfg)
        x = torch.empty(batch, t, c, r, r)
        levels = torch.empty(batch, t)
        actions = torch.zeros(batch, t, dtype=torch.long)
        m = cfg.memory_length if cfg.memory != "none" else 0
        mem = dict(mem_x=torch.empty(batch, m, c, r, r), mem_actions=torch.zeros(batch, m, dtype=torch.long),
                   mem_mask=torch.ones(batch, m, dtype=torch.bool)) if m else {}
    params = sum(p.numel() for p in net.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, levels, actions, **mem)
    return int(counter.get_total_flops()), int(params)


def model_cost(cfg: ModelConfig, frames: int | None = None, sampling_steps: int = 50) -> dict:
    """dict(params, forward_flops_per_clip, train_flops_per_clip, train_flops_per_frame,
    flops_per_generated_frame, frames, memory_frames, sampling_steps) for clips of `frames` (default cfg.window)."""
    if sampling_steps < 1:
        raise ValueError(f"sampling_steps={sampling_steps}: expected an integer >= 1")
    t = cfg.window if frames is None else frames
    fwd, params = forward_flops(cfg, t)
    return {"params": params, "forward_flops_per_clip": fwd, "train_flops_per_clip": 3 * fwd,
            "train_flops_per_frame": 3 * fwd / t, "flops_per_generated_frame": sampling_steps * fwd / t,
            "frames": t, "memory_frames": cfg.memory_frames, "sampling_steps": sampling_steps}
