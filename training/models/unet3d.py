"""3D U-Net backbone (paper App. J): each level stacks basic blocks = ResNet block + spatial attention + temporal
attention (+ cross attention to memory tokens for the `cross_attn` memory); 4 down / 4 up levels at paper scale.

Frames are processed as a sequence (B,S,C,H,W): convolutions and norms per frame, temporal attention causal, so
output frame t depends on input frames <= t only. Conditioning is per frame: `emb` (B,S,D) carries the noise level
and action embeddings and enters every ResNet block through adaptive GroupNorm (scale/shift).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import CrossAttention, MemoryKV, ResBlock, SpatialAttention, TemporalAttention, num_groups


class BasicBlock(nn.Module):
    """ResBlock -> [spatial attention] -> temporal attention -> [cross attention]. x (B,S,C,H,W) -> (B,S,Cout,H,W).

    Cross attention to memory tokens sits only where spatial attention does (low resolutions): at 64x64 every
    pixel attending to 48 x 257 memory tokens would cost more than the rest of the U-Net."""

    def __init__(self, cin: int, cout: int, emb_dim: int, head_dim: int, spatial: bool,
                 token_dim: int | None) -> None:
        super().__init__()
        self.res = ResBlock(cin, cout, emb_dim)
        self.spatial = SpatialAttention(cout, head_dim) if spatial else None
        self.temporal = TemporalAttention(cout, head_dim)
        self.cross = CrossAttention(cout, token_dim, head_dim) if token_dim and spatial else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, key_valid: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None, token_valid: torch.Tensor | None = None,
                memory: MemoryKV | None = None) -> torch.Tensor:
        b, s = x.shape[:2]
        h = self.res(x.flatten(0, 1), emb.flatten(0, 1))  # (B*S, Cout, H, W)
        if self.spatial is not None:
            h = self.spatial(h)
        h = self.temporal(h.view(b, s, *h.shape[1:]), key_valid, memory)
        if self.cross is not None:
            h = self.cross(h, tokens, token_valid, memory)
        return h


class UNet3D(nn.Module):
    """x (B,S,Cin,H,W), emb (B,S,D) -> (B,S,Cout,H,W).

    channels: base width; mult: width multiplier per level (len = number of levels; H,W halve between levels);
    num_res_blocks: basic blocks per down level (up levels get one more, for the extra skip); spatial_levels:
    levels with spatial attention (temporal attention is on every level); token_dim: memory token width for cross
    attention (None = no cross attention).

    memory (layers.MemoryKV, optional): cached keys/values of the memory (prepend: memory frames in front of x on
    the time axis; cross_attn: memory tokens, then `tokens` is unused). While `memory.recording`, x is the memory
    itself: the pass fills memory.kv and returns None (the memory frames' outputs are never used)."""

    def __init__(self, cin: int, cout: int, channels: int, mult: tuple[int, ...], num_res_blocks: int,
                 spatial_levels: tuple[int, ...], emb_dim: int, head_dim: int, token_dim: int | None = None) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cin, channels, 3, padding=1)
        widths = [channels * m for m in mult]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [channels]
        c = channels
        for lvl, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(BasicBlock(c, w, emb_dim, head_dim, lvl in spatial_levels, token_dim))
                c = w
                skips.append(c)
            self.down.append(blocks)
            last = lvl == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            if not last:
                skips.append(c)
        self.mid = nn.ModuleList([BasicBlock(c, c, emb_dim, head_dim, True, token_dim),
                                  BasicBlock(c, c, emb_dim, head_dim, False, None)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for lvl in reversed(range(len(widths))):
            w = widths[lvl]
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(BasicBlock(c + skips.pop(), w, emb_dim, head_dim, lvl in spatial_levels, token_dim))
                c = w
            self.up.append(blocks)
            self.upsample.append(nn.Conv2d(c, c, 3, padding=1) if lvl > 0 else nn.Identity())
        self.norm_out = nn.GroupNorm(num_groups(c), c)
        self.conv_out = nn.Conv2d(c, cout, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, key_valid: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None, token_valid: torch.Tensor | None = None,
                memory: MemoryKV | None = None) -> torch.Tensor | None:
        b, s = x.shape[:2]
        frames = lambda t: t.view(b, s, *t.shape[1:])  # noqa: E731  (B*S,...) -> (B,S,...)
        if memory is not None and memory.recording:
            memory.last = self.up[-1][-1].temporal  # the memory pass needs its keys/values, not its output
        h = frames(self.conv_in(x.flatten(0, 1)))
        hs = [h]
        for lvl, blocks in enumerate(self.down):
            for blk in blocks:
                h = blk(h, emb, key_valid, tokens, token_valid, memory)
                hs.append(h)
            if lvl < len(self.down) - 1:
                h = frames(self.downsample[lvl](h.flatten(0, 1)))
                hs.append(h)
        for blk in self.mid:
            h = blk(h, emb, key_valid, tokens, token_valid, memory)
        for i, blocks in enumerate(self.up):
            for blk in blocks:
                h = blk(torch.cat([h, hs.pop()], 2), emb, key_valid, tokens, token_valid, memory)
            if i < len(self.up) - 1:
                up = F.interpolate(h.flatten(0, 1), scale_factor=2.0, mode="nearest")
                h = frames(self.upsample[i](up))
        if memory is not None and memory.recording:  # every temporal attention has stored its keys/values
            return None
        return frames(self.conv_out(F.silu(self.norm_out(h.flatten(0, 1)))))
