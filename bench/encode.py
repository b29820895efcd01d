"""Encode throughput: identity and an SD3-shaped AutoencoderKL (randomly initialised), frames/s.

    .venv/bin/python bench/encode.py                       # CPU, small batch (what this machine can do)
    .venv/bin/python bench/encode.py --device cuda --batch 64 --sizes 64 128   # on a GPU box

Issue 6 floors are for one H100 (>= 15k frames/s at 64x64, >= 1.5k at 128x128, VAE encode in float16);
on CPU the figures only show the code path works and how far from those floors a CPU is.
The SD3 VAE shape: block_out_channels (128, 256, 512, 512), 2 layers per block, 16 latent channels,
scaling_factor 1.5305, shift_factor 0.0609, no quant convs (stable-diffusion-3-medium vae/config.json).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

SD3_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
               latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
               use_quant_conv=False, use_post_quant_conv=False)


def rate(encoder, frames: np.ndarray, repeats: int) -> float:
    encoder.encode(frames[:2])                                      # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        encoder.encode(frames)
    return repeats * len(frames) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4, help="frames per encode call")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    import torch
    from diffusers import AutoencoderKL

    from pipeline.encoders import IdentityEncoder, VAEEncoder

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        AutoencoderKL(**SD3_VAE).save_pretrained(tmp)
        vae = VAEEncoder(tmp, args.device, frames_per_call=args.batch)
        params = sum(p.numel() for p in vae.vae.encoder.parameters()) / 1e6
        print(f"device {args.device}, batch {args.batch}, torch threads {torch.get_num_threads()}; "
              f"SD3-shaped VAE encoder {params:.1f} M params, dtype {vae.dtype}")
        for size in args.sizes:
            frames = rng.integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
            big = rng.integers(0, 256, (1024, size, size, 3), dtype=np.uint8)
            ident = rate(IdentityEncoder(), big, args.repeats * 5)
            v = rate(vae, frames, args.repeats)
            z = vae.encode(frames[:1])
            print(f"{size}x{size}: identity {ident:10.0f} frames/s | SD3 VAE encode {v:8.1f} frames/s, "
                  f"latent {tuple(z.shape[1:])} float16")


if __name__ == "__main__":
    main()
