"""Video denoisers with memory (paper Sec. 5, Fig. 5; App. G, J): `ModelConfig`, `PRESETS`, `build_denoiser`.

    from training.models import ModelConfig, build_denoiser
    net = build_denoiser(ModelConfig(preset="tiny", resolution=16, memory="prepend", memory_length=8,
                                     compression="joint", budget=4), seed=0)
    v = net(x, noise_levels, actions, mem_x, mem_actions, mem_mask)   # (B,T,C,H,W) v-prediction

Pure torch (no Ray). Every (memory x compression) combination is one config, not a fork (docs/models.md).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from training.choices import COMPRESSIONS, MEMORIES, MODEL_SIZES

# Architecture per preset. channels: base width; mult: width multiplier per U-Net level (H,W halve between levels;
# "paper" has 4 down / 4 up levels, App. J); res_blocks: basic blocks per down level; spatial_levels: levels with
# spatial attention (temporal attention is on every level); head_dim: attention head width; patch: patch size of
# the memory tokens (compression, cross attention, concat's merge); token_dim / depth: width and number of blocks of
# the compression transformer (also concat's merge transformer); mem_channels: width of the concat memory feature map.
PRESETS: dict[str, dict] = {
    "tiny": dict(channels=16, mult=(1, 2), res_blocks=1, spatial_levels=(1,), head_dim=8, patch=4, token_dim=32,
                 depth=1, mem_channels=16),
    "small": dict(channels=32, mult=(1, 2, 4), res_blocks=1, spatial_levels=(1, 2), head_dim=32, patch=4,
                  token_dim=64, depth=1, mem_channels=32),
    "base": dict(channels=64, mult=(1, 2, 2, 4), res_blocks=2, spatial_levels=(2, 3), head_dim=64, patch=4,
                 token_dim=128, depth=2, mem_channels=64),
    "paper": dict(channels=96, mult=(1, 2, 3, 4), res_blocks=2, spatial_levels=(2, 3), head_dim=64, patch=4,
                  token_dim=256, depth=2, mem_channels=128),
}
assert tuple(PRESETS) == MODEL_SIZES, "training.choices.MODEL_SIZES names the presets"


def _field(default: Any, help: str, choices: list[str] | None = None) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass
class ModelConfig:
    """Shape and memory design of one denoiser. Checked on construction (ValueError names the field)."""

    preset: str = _field("tiny", "architecture size: tiny (CPU tests) | small | base | paper (4 down/4 up, App. J)",
                         list(PRESETS))
    in_channels: int = _field(3, "channels per frame (3 for identity-encoded pixels, 4/16 for VAE latents)")
    resolution: int = _field(64, "frame height = width in pixels/latent cells")
    num_actions: int = _field(7, "number of discrete action ids (maze: 7)")
    memory: str = _field("none", "how past frames enter the denoiser (paper Fig. 5)", list(MEMORIES))
    memory_length: int = _field(16, "memory frames the model reads (paper: 16, 48, 112)")
    compression: str = _field("none", "memory compression network (App. G)", list(COMPRESSIONS))
    budget: int = _field(16, "frames kept after compression (<= memory_length; unused when compression is none)")
    window: int = _field(16, "current frames denoised together (w = Delta = 16 in the paper)")

    def __post_init__(self) -> None:
        for name, valid in (("preset", tuple(PRESETS)), ("memory", MEMORIES), ("compression", COMPRESSIONS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}: expected one of {list(valid)}")
        for name, low in (("in_channels", 1), ("resolution", 1), ("num_actions", 1), ("window", 1),
                          ("memory_length", 0), ("budget", 0)):
            val = getattr(self, name)
            if not isinstance(val, int) or isinstance(val, bool) or val < low:
                raise ValueError(f"ModelConfig.{name}={val!r}: expected an integer >= {low}")
        if self.memory != "none" and self.memory_length < 1:
            raise ValueError(f"ModelConfig.memory_length={self.memory_length}: memory={self.memory!r} needs "
                             f"memory_length >= 1 (or set memory='none')")
        if self.compression != "none":
            if self.memory == "none":
                raise ValueError(f"ModelConfig.compression={self.compression!r} needs a memory structure; "
                                 f"memory='none' has nothing to compress (use one of {list(MEMORIES[1:])})")
            if not 1 <= self.budget <= self.memory_length:
                raise ValueError(f"ModelConfig.budget={self.budget} must be in 1..memory_length="
                                 f"{self.memory_length} (the compressed memory keeps `budget` of the "
                                 f"`memory_length` frames)")
        arch = self.arch
        down = 2 ** (len(arch["mult"]) - 1)
        if self.resolution % down:
            raise ValueError(f"ModelConfig.resolution={self.resolution}: preset {self.preset!r} halves it "
                             f"{len(arch['mult']) - 1} times, so it must be a multiple of {down}")
        uses_patches = self.memory in ("cross_attn", "concat") or self.compression != "none"  # token networks
        if uses_patches and self.resolution % arch["patch"]:
            raise ValueError(f"ModelConfig.resolution={self.resolution}: memory tokens use {arch['patch']}x"
                             f"{arch['patch']} patches (preset {self.preset!r}); use a multiple of {arch['patch']}")

    @property
    def arch(self) -> dict:
        return PRESETS[self.preset]

    @property
    def memory_frames(self) -> int:
        """Frames the denoiser itself sees as memory: budget when compressed, memory_length otherwise, 0 for none."""
        if self.memory == "none":
            return 0
        return self.budget if self.compression != "none" else self.memory_length


def build_denoiser(cfg: ModelConfig, seed: int | None = None) -> torch.nn.Module:
    """The denoiser for `cfg`; with `seed`, its initial weights come from that seed alone (caller's RNG untouched)."""
    from .denoiser import Denoiser

    if seed is None:
        return Denoiser(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Denoiser(cfg)


__all__ = ["COMPRESSIONS", "MEMORIES", "PRESETS", "ModelConfig", "build_denoiser"]
