"""Frame encoders for latent shards: `identity` (pixels in [-1, 1]) and a diffusers `AutoencoderKL` from a folder.

Both map uint8 frames (N, H, W, 3) to float16 latents (N, C, h, w) and back. The paper's DMLab runs are
pixel-space (`identity`); its Minecraft runs use the VAE of stable-diffusion-3-medium (paper App. J), whose
config carries `scaling_factor` 1.5305 and `shift_factor` 0.0609: latents = (z - shift) * scale.

    enc = make_encoder("vae", vae_path="weights/sd3-vae", device="cuda")
    z = enc.encode(frames)          # (N, H, W, 3) uint8 -> (N, 16, H/8, W/8) float16
    frames = enc.decode(z)          # -> (N, H, W, 3) uint8
    dec = encoder_from_json(row["encoder"])   # rebuild the encoder a latent shard names, for evaluation

This module imports torch/diffusers only inside the VAE encoder, and never ray.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.schema import pixels_to_unit, unit_to_pixels

ENCODER_NAMES = ("identity", "vae")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def frames_to_unit(frames: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    return pixels_to_unit(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))


def unit_to_frames(x: np.ndarray) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3), rounded and clipped."""
    return unit_to_pixels(x).transpose(0, 2, 3, 1).copy()


class IdentityEncoder:
    """latents = frames / 127.5 - 1 as float16 (N, 3, H, W); float16 keeps every uint8 level exactly recoverable."""

    name = "identity"
    version = 1

    def __init__(self, device: str = "cpu"):
        self.device = device

    def encode(self, frames: np.ndarray) -> np.ndarray:
        return frames_to_unit(frames).astype(np.float16)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return unit_to_frames(latents)

    def info(self, frame_shape: tuple[int, int]) -> dict:
        h, w = frame_shape
        return {"name": self.name, "version": self.version, "scale": 1.0 / 127.5, "shift": -1.0,
                "latent_shape": [3, h, w]}


class VAEEncoder:
    """A diffusers `AutoencoderKL` loaded once from a local folder (`from_pretrained`); no download ever.

    encode uses the posterior mean (deterministic, so reruns give the same bytes); latents are
    (z - shift_factor) * scaling_factor with both factors read from the folder's config.json (SD3 convention).
    """

    name = "vae"
    version = 1

    def __init__(self, path: str, device: str = "cpu", frames_per_call: int = 64):
        import torch
        from diffusers import AutoencoderKL

        folder = check_vae_folder(path)
        self.path = str(folder.resolve())
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.vae = AutoencoderKL.from_pretrained(self.path, torch_dtype=self.dtype).to(self.device).eval()
        cfg = self.vae.config
        self.scale = float(cfg.scaling_factor if cfg.scaling_factor is not None else 1.0)
        self.shift = float(getattr(cfg, "shift_factor", None) or 0.0)
        self.latent_channels = int(cfg.latent_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.frames_per_call = frames_per_call

    def encode(self, frames: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(frames), self.frames_per_call):
                x = torch.from_numpy(frames_to_unit(frames[i:i + self.frames_per_call]))  # (n,3,H,W)
                x = x.to(self.device, self.dtype)
                z = self.vae.encode(x).latent_dist.mean                                  # (n,C,h,w)
                out.append(((z.float() - self.shift) * self.scale).half().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.latent_channels, 0, 0), np.float16)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(latents), self.frames_per_call):
                z = torch.from_numpy(np.asarray(latents[i:i + self.frames_per_call], dtype=np.float32))
                z = (z / self.scale + self.shift).to(self.device, self.dtype)
                x = self.vae.decode(z).sample.float().cpu().numpy()                      # (n,3,H,W)
                out.append(unit_to_frames(x))
        return np.concatenate(out)

    def info(self, frame_shape: tuple[int, int]) -> dict:
        h, w = frame_shape
        return {"name": self.name, "version": self.version, "scale": self.scale, "shift": self.shift,
                "latent_shape": [self.latent_channels, h // self.downsample, w // self.downsample],
                "path": self.path}


def check_vae_folder(path: str | None) -> Path:
    """The VAE folder, or a FileNotFoundError that says what to put where."""
    hint = ("--vae-path must be a local diffusers AutoencoderKL folder holding config.json and "
            f"{WEIGHT_FILES[0]} (e.g. the vae/ subfolder of stabilityai/stable-diffusion-3-medium-diffusers, "
            "saved with AutoencoderKL.save_pretrained or copied from the Hugging Face repository); "
            "nothing is downloaded")
    if not path:
        raise FileNotFoundError(f"--encoder vae needs --vae-path. {hint}")
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no VAE config at {folder / 'config.json'}. {hint}")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise FileNotFoundError(f"no VAE weights in {folder} (looked for {', '.join(WEIGHT_FILES)}). {hint}")
    return folder


def make_encoder(name: str, vae_path: str | None = None, device: str = "cpu"):
    """The encoder called `name` (one of ENCODER_NAMES)."""
    if name == "identity":
        return IdentityEncoder(device)
    if name == "vae":
        return VAEEncoder(vae_path, device)
    raise ValueError(f"--encoder {name!r} is unknown; valid: {', '.join(ENCODER_NAMES)}")


def encoder_from_json(encoder_json: str | dict, device: str = "cpu"):
    """Rebuild the encoder that a latent shard's `encoder` column names (to decode latents back to frames)."""
    info = json.loads(encoder_json) if isinstance(encoder_json, str) else encoder_json
    return make_encoder(info["name"], info.get("path"), device)
