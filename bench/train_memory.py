"""Estimate training memory per preset and batch size, without a GPU (printed figures for docs/train.md).

    python bench/train_memory.py                       # presets x batch sizes at 64x64, m=16/48, w=16

Built on torch's `meta` device (shapes only, no memory, no compute): the bytes autograd saves for backward in
one forward pass (saved_tensors_hooks; fp32; bf16 autocast roughly halves the matmul/conv inputs), plus
weights, gradients, Adam's two moments and the EMA copy (5 x 4 bytes per parameter). Not measured on a GPU.
An UPPER bound for activations: off-GPU, scaled_dot_product_attention runs its math kernel, which saves the
(L x L) attention weights; on a GPU the flash / memory-efficient kernels do not, and bf16 halves most of the
rest. Allocator overhead and workspaces come on top.
"""
from __future__ import annotations

import torch

from training.models import ModelConfig
from training.models.denoiser import Denoiser


def estimate(cfg: ModelConfig, batch: int) -> tuple[float, float, int]:
    """(activation GiB, state GiB, params) for one training step of `batch` clips."""
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    r, c, w, m = cfg.resolution, cfg.in_channels, cfg.window, cfg.memory_length
    with torch.device("meta"):
        net = Denoiser(cfg)
        args = (torch.empty(batch, w, c, r, r), torch.empty(batch, w), torch.zeros(batch, w, dtype=torch.long))
        mem = dict(mem_x=torch.empty(batch, m, c, r, r), mem_actions=torch.zeros(batch, m, dtype=torch.long),
                   mem_mask=torch.ones(batch, m, dtype=torch.bool)) if cfg.memory != "none" else {}
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(*args, **mem)
    params = sum(p.numel() for p in net.parameters())
    return saved / 2**30, 20 * params / 2**30, params


def main() -> None:
    print("| preset | memory | m | w | batch | params | activations GiB (fp32) | weights+grad+Adam+EMA GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in ("tiny", "small", "base", "paper"):
        for m in (16, 48):
            for batch in (1, 8):
                cfg = ModelConfig(preset=preset, resolution=64, memory="prepend", memory_length=m, window=16)
                act, state, params = estimate(cfg, batch)
                print(f"| {preset} | prepend | {m} | 16 | {batch} | {params / 1e6:.1f}M | {act:.2f} | {state:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
