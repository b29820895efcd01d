"""Memory compression networks (paper Sec. 5 and App. G, Fig. 12): transformer blocks over the memory frames and
actions, keeping only the outputs of the last `budget` frames ("we only retain the last several frames and tokens").

Both compressors work on patch tokens of the memory frames and return a *frame-like* memory, so every memory
structure (prepend, concat, cross_attn) consumes compressed and raw memory alike:
  frames (B,budget,C,H,W): `budget` raw frames evenly spaced over the clip's valid memory (oldest and newest
  included) plus a learned correction read from the transformer outputs of the last `budget` positions (which see
  all M frames). The correction head is zero-initialised, so an untrained compressor is "subsample the whole
  memory evenly" (it spans as far back as the raw memory), not "keep the last `budget` frames" (which would make
  compression plain truncation until trained); training learns what the skipped frames should add.
  action vectors (B,budget,D): those of the kept frames (joint: plus a learned correction);
  mask (B,budget) = mem_mask at the kept positions.

- joint (App. G, Fig. 12 left): each frame is S patch tokens plus one action token; blocks of spatial attention
  (within a frame, over its S+1 tokens), causal temporal attention (over memory frames, per token slot) and a
  feed-forward act on the concatenation; the output is compressed frames *and* compressed actions.
- modulated (Fig. 12 right): the action embedding modulates the frame tokens (adaptive LayerNorm scale/shift)
  before every attention / feed-forward; frame tokens only; the kept frames keep their own action embeddings.
Masked (padding) memory frames are zeroed and excluded as attention keys, so their content has no effect.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import attention, num_heads, rope


class _Attn(nn.Module):
    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.heads = num_heads(dim, head_dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor, causal: bool = False, key_valid: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over token sequences t (N,S,D) -> (N,S,D)."""
        n, s, d = t.shape
        q, k, v = self.qkv(t).view(n, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if positions is not None:
            q, k = rope(q, positions), rope(k, positions)
        o = attention(q, k, v, causal=causal, key_valid=key_valid)
        return self.proj(o.transpose(1, 2).reshape(n, s, d))


class CompressBlock(nn.Module):
    """Spatial attention, causal temporal attention and feed-forward over tokens (B,M,P,D) (P tokens per frame).
    With `modulated`, every sub-layer's LayerNorm is scaled/shifted by the per-frame action vector (B,M,D)."""

    def __init__(self, dim: int, head_dim: int, modulated: bool) -> None:
        super().__init__()
        self.norms = nn.ModuleList([nn.LayerNorm(dim, elementwise_affine=not modulated) for _ in range(3)])
        self.spatial = _Attn(dim, head_dim)
        self.temporal = _Attn(dim, head_dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.mod = nn.Linear(dim, 6 * dim) if modulated else None

    def forward(self, x: torch.Tensor, valid: torch.Tensor, act: torch.Tensor | None = None) -> torch.Tensor:
        b, m, p, d = x.shape
        if self.mod is not None:
            mods = self.mod(nn.functional.silu(act))[:, :, None].chunk(6, -1)  # 6 x (B,M,1,D)
        def norm(i: int, t: torch.Tensor) -> torch.Tensor:  # noqa: E306
            t = self.norms[i](t)
            return t * (1 + mods[2 * i]) + mods[2 * i + 1] if self.mod is not None else t
        x = x + self.spatial(norm(0, x).reshape(b * m, p, d)).view(b, m, p, d)
        t = norm(1, x).transpose(1, 2).reshape(b * p, m, d)  # (B*P, M, D): one sequence per token slot
        t = self.temporal(t, causal=True, key_valid=valid, positions=torch.arange(m, device=x.device))
        x = x + t.view(b, p, m, d).transpose(1, 2)
        return x + self.ff(norm(2, x))


class Compressor(nn.Module):
    """compress(mem_x (B,M,C,H,W), act (B,M,D), valid (B,M)) -> (frames (B,K,C,H,W), act (B,K,D), valid (B,K)),
    K = budget <= M. mode: "joint" | "modulated" (App. G)."""

    def __init__(self, mode: str, in_channels: int, resolution: int, patch: int, dim: int, depth: int,
                 head_dim: int, act_dim: int, budget: int) -> None:
        super().__init__()
        self.mode, self.patch, self.budget = mode, patch, budget
        self.num_patches = (resolution // patch) ** 2
        pdim = in_channels * patch * patch
        self.embed = nn.Linear(pdim, dim)
        self.pos = nn.Parameter(torch.randn(self.num_patches, dim) * 0.02)
        self.act_in = nn.Linear(act_dim, dim)
        self.blocks = nn.ModuleList([CompressBlock(dim, head_dim, mode == "modulated") for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, pdim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.act_out = nn.Linear(dim, act_dim) if mode == "joint" else None

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:  # (B,M,C,H,W) -> (B,M,P,C*p*p)
        b, m, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, m, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(b, m, (h // p) * (w // p), c * p * p)

    def _unpatchify(self, t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:  # (B,K,P,C*p*p) -> (B,K,C,H,W)
        b, k = t.shape[:2]
        c, h, w = shape
        p = self.patch
        t = t.reshape(b, k, h // p, w // p, c, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return t.reshape(b, k, c, h, w)

    def kept_indices(self, valid: torch.Tensor) -> torch.Tensor:
        """(B,budget) memory positions whose raw frames (and actions) are the base of the compressed memory: evenly
        spaced over each clip's n valid frames, oldest and newest included (n >= budget); the last `budget`
        positions when n < budget. Valid frames are the last n (the memory is left-padded)."""
        (b, m), keep = valid.shape, self.budget
        if keep == 1:
            return torch.full((b, 1), m - 1, device=valid.device)
        n = valid.sum(1).clamp(min=keep)[:, None]  # (B,1): the span to cover, at least `budget` slots
        j = torch.arange(keep, device=valid.device)[None]
        return (m - n) + j * (n - 1) // (keep - 1)  # (B,K); K = M: every position (no compression)

    def forward(self, mem_x: torch.Tensor, act: torch.Tensor,
                valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, m = mem_x.shape[:2]
        keep = self.budget
        vf = valid.to(mem_x.dtype)
        tokens = (self.embed(self._patchify(mem_x)) + self.pos) * vf[:, :, None, None]  # (B,M,P,D)
        a = self.act_in(act) * vf[:, :, None]  # (B,M,D)
        idx = self.kept_indices(valid)  # (B,K)
        rows = torch.arange(b, device=idx.device)[:, None]
        if self.mode == "joint":
            x = torch.cat([tokens, a[:, :, None]], 2)  # (B,M,P+1,D): frame tokens + action token
            for blk in self.blocks:
                x = blk(x, valid)
            x = self.norm(x[:, -keep:])  # outputs of the last `budget` positions: they see all M frames
            frames_t, act_k = x[:, :, :-1], self.act_out(x[:, :, -1]) + act[rows, idx]
        else:
            x = tokens
            for blk in self.blocks:
                x = blk(x, valid, a)
            frames_t, act_k = self.norm(x[:, -keep:]), act[rows, idx]
        frames = mem_x[rows, idx] + self._unpatchify(self.head(frames_t), mem_x.shape[2:])
        v = valid[rows, idx]
        return frames * v[:, :, None, None, None].to(frames.dtype), act_k * v[:, :, None].to(act_k.dtype), v
